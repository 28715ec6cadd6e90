"""Seam score: how visible the tile boundaries of a tiled upscale are (``fluxsr bench --seams``).

- :func:`seam_ratio`: the mean gradient energy across the tile-boundary lines of an image against the mean across
  the other lines at the same offset of the tiles' alignment period (1.0: the boundaries cannot be told from the
  rest; above 1: they show). A line ``j`` lies between pixel rows (or columns) ``j - 1`` and ``j``; its energy is
  the squared step across it, averaged over the line's length and the channels. The boundary lines of two
  neighbouring tiles are the edges of their shared band: the first pixel of the later tile and the first pixel
  after the earlier one (one line when they do not overlap). Tile starts and edges are multiples of
  ``spec.align`` (the model's multiple: 8 px for the bundled model, 16 for FLUX.1-dev; the x4 pixel phase and the
  token grid repeat with it), so the reference is every other line at a multiple of ``spec.align``: the same phase
  of those grids, elsewhere. On one photo the content alone spreads the ratio (0.65 to 1.2 for bicubic on the
  example photos at the bundled model's tiles, docs/performance.md): only a ratio well above that is a seam.
- :func:`seam_scores`: that ratio on the tiled output and, where an untiled output of the same input is given,
  the PSNR between the two (inf: tiling changes nothing).

The tile geometry is the pipeline's (:func:`fluxsr.inference.tiling.tile_starts`, in output pixels): pass the
pixel :class:`fluxsr.inference.tiling.TileSpec` the pipeline used.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..inference.tiling import TileSpec, tile_starts
from .psnr_ssim import psnr


def seam_lines(size: int, spec: TileSpec) -> list[int]:
    """The boundary lines (see the module docstring) of tiles of ``spec`` along one side of ``size`` pixels: the
    tiles are cut on ``size`` rounded up to ``spec.align`` (the pipeline pads so), lines past ``size`` dropped."""
    padded = -(-size // spec.align) * spec.align
    starts = tile_starts(padded, spec.tile, spec.overlap, spec.align)
    lines = {j for a, b in zip(starts, starts[1:], strict=False) for j in (b, a + spec.tile)}
    return sorted(j for j in lines if 0 < j < size)


def reference_lines(size: int, spec: TileSpec) -> list[int]:
    """Lines at multiples of ``spec.align`` that are not boundary lines (the same phase elsewhere)."""
    seams = set(seam_lines(size, spec))
    return [j for j in range(spec.align, size, spec.align) if j not in seams]


def line_energy(image: Tensor, dim: int) -> Tensor:
    """Energy across each line perpendicular to ``dim`` (-2: rows, -1: columns) of a (C, H, W) image, float64:
    entry ``j - 1`` is the mean over channels and the line's length of ``(x[j] - x[j - 1])^2``."""
    x = image.to(torch.float64)
    step = torch.diff(x, dim=dim) ** 2
    other = -1 if dim == -2 else -2
    return step.mean(dim=(0, other))


def seam_ratio(image: Tensor, spec: TileSpec) -> float | None:
    """Mean energy across the tile-boundary lines / mean energy across the reference lines (both directions pooled)
    of a (C, H, W) image tiled with ``spec``; None when one tile covers it (no boundary)."""
    seam, rest = [], []
    for dim in (-2, -1):
        energy = line_energy(image, dim)
        size = image.shape[dim]
        seam += [energy[j - 1] for j in seam_lines(size, spec)]
        rest += [energy[j - 1] for j in reference_lines(size, spec)]
    if not seam or not rest:
        return None
    num, den = float(torch.stack(seam).mean()), float(torch.stack(rest).mean())
    if den == 0:
        return 1.0 if num == 0 else math.inf
    return num / den


def seam_scores(tiled: Tensor, spec: TileSpec, untiled: Tensor | None = None) -> dict[str, float | None]:
    """``seam_ratio`` of ``tiled`` and ``tiled_psnr`` (dB) against ``untiled`` (None when not given)."""
    return {
        "seam_ratio": seam_ratio(tiled, spec),
        "tiled_psnr": None if untiled is None else float(psnr(tiled.clamp(0, 1), untiled.clamp(0, 1))),
    }
