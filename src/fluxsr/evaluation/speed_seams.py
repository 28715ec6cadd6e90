"""The seam columns of the speed bench (``fluxsr bench --seams``): each row's output on the bench input scored with
:func:`fluxsr.evaluation.seams.seam_scores` at the FluxSR model's tiles (the bench's ``--tile``/``--overlap`` or the
model's defaults). FluxSR and teacher rows are also run once untiled (one tile over the whole image) for the
tiled-vs-untiled PSNR, where that fits in memory; bicubic is never tiled, so it only has the ratio (~1 expected:
the spread the content alone gives). These runs happen after the timed ones and are not timed."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from ..inference import oom
from ..inference.pipeline import FluxSRPipeline, UpscaleOptions
from ..inference.tiling import TileSpec, snapped
from ..io.images import read_image, resize
from .seams import seam_scores
from .speed_config import BenchConfig


def pipeline_tiles(pipe: FluxSRPipeline, opts: UpscaleOptions, planned: int | None = None) -> TileSpec:
    """The pixel tiles of ``pipe`` for ``opts``: the ``planned`` tile (the memory plan's), else the asked or the
    model's; the asked or the model's overlap, at most half the tile (as the pipeline does)."""
    tile = planned or opts.tile or pipe.model.spec.tile
    overlap = pipe.model.spec.overlap if opts.overlap is None else min(opts.overlap, tile // 2)
    return snapped(tile, overlap, pipe.model.multiple)


def untiled_output(pipe: FluxSRPipeline, rgb: torch.Tensor, opts: UpscaleOptions) -> torch.Tensor | None:
    """``pipe``'s output with one tile over the whole (padded) image, or None when that does not fit in memory
    (the planner chose smaller tiles, or it ran out of memory)."""
    m = pipe.model.multiple
    side = max(-(-int(s * opts.scale) // m) * m for s in rgb.shape[-2:])
    try:
        out = pipe.upscale_tensor(rgb, replace(opts, tile=side, overlap=0, tile_batch=1))
    except (RuntimeError, MemoryError) as e:
        if not oom.is_oom(e):
            raise
        oom.free_cached(pipe.device)
        return None
    return out if pipe.plan is None or pipe.plan.tile >= side else None


def pipeline_seams(pipe: FluxSRPipeline, cfg: BenchConfig, img_path: Path, ctx) -> dict[str, Any]:
    """Seam columns of a FluxSR or teacher row: the ratio of its tiled output and the tiled-vs-untiled PSNR."""
    rgb, opts = read_image(img_path).rgb, cfg.upscale_options()
    with ctx():
        tiled = pipe.upscale_tensor(rgb, opts)
        spec = pipeline_tiles(pipe, opts, pipe.plan.tile if pipe.plan else None)
        untiled = untiled_output(pipe, rgb, opts)
    return {**seam_scores(tiled, spec, untiled), "seam_tile": spec.tile, "seam_overlap": spec.overlap}


def bicubic_seams(pipe: FluxSRPipeline | None, cfg: BenchConfig, img_path: Path, size: int) -> dict[str, Any]:
    """Seam columns of the bicubic row at the FluxSR model's tiles (none without a loaded model)."""
    if pipe is None:
        return {"seam_ratio": None, "tiled_psnr": None}
    rgb = read_image(img_path).rgb
    spec = pipeline_tiles(pipe, cfg.upscale_options())
    out = resize(rgb, (size, size))
    return {**seam_scores(out, spec), "seam_tile": spec.tile, "seam_overlap": spec.overlap}
