"""LR consistency: an upscaled image shrunk back to its input's size, compared with that input.

Real detail survives a downscale; invented or lost content does not. One definition serves ``fluxsr eval``'s
``lr_psnr``, ``fluxsr upscale --fidelity-map`` and the fidelity view of ``fluxsr serve``:

- downscale (:func:`downscale_to_input`): :func:`fluxsr.io.images.resize` with ``mode="bicubic"`` and
  ``antialias=True``, i.e. PyTorch's antialiased bicubic (Keys cubic, a = -0.5, stretched by the scale: 4 / scale
  taps, weights cut at the image border and renormalised, as PIL's), clamped to [0, 1], in float64;
- compared on RGB (all three channels: a colour shift is a disagreement too), no border crop, no 8-bit rounding of
  the shrunk output; the LR input as read from its file;
- :func:`lr_psnr`: ``10 log10(1 / MSE)`` over all pixels and channels (dB, higher = more faithful, inf = identical);
- :func:`fidelity_map`: per LR pixel ``10 log10(1 / e)`` with ``e`` the squared error averaged over the channels,
  coloured on a fixed scale from :data:`MAP_DB_HIGH` (black: agrees) to :data:`MAP_DB_LOW` (white: disagrees) and
  enlarged to the output's size by nearest neighbour (each LR pixel becomes a ``scale x scale`` block).
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import Tensor

from ..io.images import resize

MAP_DB_LOW = 20.0
"""Local PSNR (dB) at and below which the fidelity map is white (strong disagreement)."""

MAP_DB_HIGH = 50.0
"""Local PSNR (dB) at and above which the fidelity map is black (agreement at the level of 8-bit noise)."""

HEAT_STOPS = (
    (0.0, (0.0, 0.0, 0.0)),
    (0.25, (0.35, 0.0, 0.55)),
    (0.5, (0.85, 0.1, 0.15)),
    (0.75, (1.0, 0.7, 0.0)),
    (1.0, (1.0, 1.0, 1.0)),
)
"""Colour stops of the heat map (position on the scale from agree to disagree, RGB): black, purple, red, yellow,
white; linear in between."""


def check_lr_size(out_hw: tuple[int, int], lr_hw: tuple[int, int], scale: float | None = None) -> None:
    """ValueError (one line) unless the output is an integer multiple of the input on both sides, the same on both,
    and (when given) equal to ``scale``."""
    (oh, ow), (lh, lw) = out_hw, lr_hw
    size = f"the output is {ow}x{oh} but the input is {lw}x{lh}"
    if oh % lh or ow % lw or oh // lh != ow // lw:
        raise ValueError(f"{size}: not the same integer multiple on both sides")
    if scale is not None and oh // lh != scale:
        raise ValueError(f"{size}: x{oh // lh}, not x{scale:g}")


def downscale_to_input(output: Tensor, lr_hw: tuple[int, int]) -> Tensor:
    """``output`` ((C, H, W) or (B, C, H, W) in [0, 1]) shrunk to ``lr_hw`` = (h, w) with the module's resize."""
    return resize(output, lr_hw, mode="bicubic", antialias=True)


def lr_error(output: Tensor, lr: Tensor) -> Tensor:
    """Per-pixel squared error (h, w), averaged over channels, between ``output`` (3, H, W) resized to the size of
    ``lr`` (3, h, w) and ``lr``; float64, on ``lr``'s device."""
    small = downscale_to_input(output.to(lr.device, torch.float64), tuple(lr.shape[-2:]))
    return ((small - lr.to(torch.float64)) ** 2).mean(dim=0)


def lr_psnr(output: Tensor, lr: Tensor, scale: float | None = None) -> float:
    """PSNR (dB) of the shrunk ``output`` against its input ``lr`` (both (3, ., .) in [0, 1]); +inf when equal.
    With ``scale`` the output must be exactly ``scale`` times the input (ValueError otherwise)."""
    check_lr_size(tuple(output.shape[-2:]), tuple(lr.shape[-2:]), scale)
    mse = float(lr_error(output, lr).mean())
    return math.inf if mse == 0 else 10.0 * math.log10(1.0 / mse)


def heat_colours(level: Tensor) -> Tensor:
    """(h, w) levels in [0, 1] (0 agree, 1 disagree) -> (3, h, w) RGB of :data:`HEAT_STOPS`."""
    pos = torch.tensor([p for p, _ in HEAT_STOPS], dtype=level.dtype)
    rgb = torch.tensor([c for _, c in HEAT_STOPS], dtype=level.dtype)
    level = level.clamp(0.0, 1.0)
    hi = torch.searchsorted(pos, level.contiguous(), right=True).clamp(1, len(pos) - 1)
    t = ((level - pos[hi - 1]) / (pos[hi] - pos[hi - 1]))[..., None]
    return (rgb[hi - 1] * (1 - t) + rgb[hi] * t).permute(2, 0, 1)


def local_psnr(error: Tensor) -> Tensor:
    """Per-pixel ``10 log10(1 / e)`` of a squared-error map (inf where e = 0)."""
    return 10.0 * torch.log10(1.0 / error)


def fidelity_map(output: Tensor, lr: Tensor) -> Tensor:
    """The heat map (3, H, W) float32 in [0, 1] at the output's size: where ``output`` disagrees with its input
    ``lr`` after the downscale (scale and colours in the module docstring). Any output size works (the output is
    resized to the input's); only :func:`lr_psnr` insists on an integer scale."""
    db = local_psnr(lr_error(output, lr))
    level = ((MAP_DB_HIGH - db) / (MAP_DB_HIGH - MAP_DB_LOW)).nan_to_num(0.0, posinf=1.0, neginf=0.0)
    heat = heat_colours(level.float())
    return torch.nn.functional.interpolate(heat[None], size=tuple(output.shape[-2:]), mode="nearest")[0]


def fidelity_path(output: Path) -> Path:
    """Where the fidelity map of ``output`` goes: ``<stem>_fidelity.png`` in the same folder."""
    return Path(output).with_name(f"{Path(output).stem}_fidelity.png")
