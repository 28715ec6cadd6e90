"""Overlapping tiles with feathered blending, for every stage of the pipeline (VAE encode, transformer, VAE decode).

One function, :func:`tiled_map`, splits a (B, C, H, W) tensor into overlapping tiles, runs a function on them (one
or several at a time) with each tile's offset (so the transformer can give each tile the position ids of its place
in the whole image), and blends the outputs with weights that ramp linearly across the overlaps. A function may
change resolution by a fixed factor (1/8 for the VAE encoder, 8 for the decoder, 1 for the transformer).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction

import torch
from torch import Tensor


@dataclass(frozen=True)
class TileSpec:
    """Tile edge and overlap in the INPUT units of a stage; ``align`` is the grid every tile start snaps to."""

    tile: int
    overlap: int
    align: int = 1

    def __post_init__(self):
        if self.tile <= 0 or self.overlap < 0 or self.overlap >= self.tile:
            raise ValueError(f"need 0 <= overlap < tile, got tile={self.tile} overlap={self.overlap}")


def check_tile_overlap(tile: int | None, overlap: int | None) -> None:
    """ValueError unless ``tile >= 1`` and ``0 <= overlap <= tile // 2`` (in output pixels; None: not given, the
    model's default): the ranges ``--tile`` and ``--overlap`` accept. :func:`snapped` would quietly cut a larger
    overlap to half the tile."""
    if tile is not None and tile < 1:
        raise ValueError(f"tile must be >= 1 output pixel, got {tile}")
    if overlap is not None and overlap < 0:
        raise ValueError(f"overlap must be >= 0, got {overlap}")
    if tile is not None and overlap is not None and overlap > tile // 2:
        raise ValueError(
            f"overlap {overlap} is more than half the tile {tile}: give 0 <= overlap <= {tile // 2} "
            "(--overlap at most half of --tile)"
        )


def snapped(tile: int, overlap: int, multiple: int) -> TileSpec:
    """The spec for a tile and overlap asked in pixels, both snapped down to ``multiple``.

    The overlap is capped at half the tile, so a tile halved after an out-of-memory error (overlap unchanged) still
    advances by at least half its edge instead of creeping forward by ``multiple``.
    """
    tile = max(multiple, tile // multiple * multiple)
    return TileSpec(tile, max(0, min(overlap, tile // 2) // multiple * multiple), multiple)


def latent_tiles(pixel: TileSpec, vae_scale: int) -> TileSpec:
    """The same tiles in latent units, starting on even latents (the transformer's 2x2 patches)."""
    return TileSpec(pixel.tile // vae_scale, pixel.overlap // vae_scale, 2)


def tile_starts(size: int, tile: int, overlap: int, align: int = 1) -> list[int]:
    """Starts of tiles of edge ``tile`` covering [0, size) with at least ``overlap`` shared; last tile ends at size.

    A single tile at 0 when ``tile >= size``. Starts are multiples of ``align``, so ``size`` must be one too (pad
    first): otherwise the last pixels would be left uncovered, and that is a ValueError.
    """
    if size % align:
        raise ValueError(
            f"tiling: size {size} is not a multiple of {align}; pad the input to a multiple first"
        )
    if tile >= size:
        return [0]
    stride = max(align, (tile - overlap) // align * align)
    starts = list(range(0, size - tile, stride))
    last = (size - tile) // align * align
    if not starts or starts[-1] != last:
        starts.append(last)
    return starts


def ramp(n: int, overlap_before: int, overlap_after: int, device=None) -> Tensor:
    """1-D blending weights of length ``n``: linear ramps up over the first and down over the last overlaps.

    ``w(d) = (d + 0.5) / overlap`` at distance ``d`` from a shared edge, capped at 1; edges on the image border
    (overlap 0) keep weight 1.
    """
    w = torch.ones(n, device=device)
    d = torch.arange(n, device=device, dtype=torch.float32)
    if overlap_before > 0:
        w = torch.minimum(w, (d + 0.5) / overlap_before)
    if overlap_after > 0:
        w = torch.minimum(w, (n - 1 - d + 0.5) / overlap_after)
    return w


def tiled_map(
    fn: Callable[[Tensor, list[tuple[int, int]]], Tensor],
    x: Tensor,
    spec: TileSpec,
    scale: Fraction | int = 1,
    out_channels: int | None = None,
    batch: int = 1,
) -> Tensor:
    """Apply ``fn(tiles, offsets)`` over overlapping tiles of ``x`` (B, C, H, W) and blend the results.

    Up to ``batch`` tiles go through ``fn`` together: ``tiles`` is (n * B, C, h, w), tile-major (the B samples of
    the first tile, then of the second, ...), and ``offsets`` holds each tile's (y0, x0). ``fn`` returns
    (n * B, C', h * scale, w * scale). All tiles have the same size, so batches stack. With one tile covering ``x``
    this is exactly ``fn(x, [(0, 0)])``. The output accumulates on the device of ``fn``'s output in float32.
    """
    scale = Fraction(scale)
    b, _, h, w = x.shape
    ys, xs = (
        tile_starts(h, spec.tile, spec.overlap, spec.align),
        tile_starts(w, spec.tile, spec.overlap, spec.align),
    )
    if len(ys) == 1 and len(xs) == 1:
        return fn(x, [(0, 0)])
    th, tw = min(spec.tile, h), min(spec.tile, w)
    grid = [(iy, ix) for iy in range(len(ys)) for ix in range(len(xs))]
    out = weight = None
    for first in range(0, len(grid), max(1, batch)):
        chunk = grid[first : first + max(1, batch)]
        offsets = [(ys[iy], xs[ix]) for iy, ix in chunk]
        tiles = torch.cat([x[:, :, y0 : y0 + th, x0 : x0 + tw] for y0, x0 in offsets])
        results = fn(tiles, offsets).float().split(b)
        for (iy, ix), (y0, x0), res in zip(chunk, offsets, results, strict=True):
            if out is None:
                out = torch.zeros(
                    b, out_channels or res.shape[1], int(h * scale), int(w * scale), device=res.device
                )
                weight = torch.zeros(1, 1, out.shape[2], out.shape[3], device=res.device)
            oy, ox, oh, ow = int(y0 * scale), int(x0 * scale), res.shape[2], res.shape[3]
            over_top = (ys[iy - 1] + th - y0) if iy > 0 else 0
            over_bottom = (y0 + th - ys[iy + 1]) if iy + 1 < len(ys) else 0
            over_left = (xs[ix - 1] + tw - x0) if ix > 0 else 0
            over_right = (x0 + tw - xs[ix + 1]) if ix + 1 < len(xs) else 0
            wy = ramp(oh, int(over_top * scale), int(over_bottom * scale), res.device)
            wx = ramp(ow, int(over_left * scale), int(over_right * scale), res.device)
            wt = wy[:, None] * wx[None, :]
            out[:, :, oy : oy + oh, ox : ox + ow] += res * wt
            weight[:, :, oy : oy + oh, ox : ox + ow] += wt
    return out / weight


def tile_count(size_hw: tuple[int, int], spec: TileSpec) -> int:
    """How many tiles :func:`tiled_map` cuts an (H, W) input into."""
    return len(tile_starts(size_hw[0], spec.tile, spec.overlap, spec.align)) * len(
        tile_starts(size_hw[1], spec.tile, spec.overlap, spec.align)
    )
