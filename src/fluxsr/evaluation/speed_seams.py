"""The seam columns of the speed bench (``fluxsr bench --seams``): each row's output on the bench input scored with
:func:`fluxsr.evaluation.seams.seam_scores` at the FluxSR model's tiles (the bench's ``--tile``/``--overlap`` or the
model's defaults). FluxSR and teacher rows score the output of their last timed run, at the tiles it ran with, and
are run once more untiled (one tile over the whole image) for the tiled-vs-untiled PSNR, where that fits in memory;
bicubic is never tiled, so it only has the ratio (~1 expected: the spread the content alone gives). The untiled run
happens after the timed ones and is not timed."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from ..inference import oom
from ..inference.pipeline import FluxSRPipeline, UpscaleOptions
from ..io.images import read_image, resize
from .seams import seam_scores
from .speed_config import BenchConfig


def untiled_output(pipe: FluxSRPipeline, rgb: torch.Tensor, opts: UpscaleOptions) -> torch.Tensor | None:
    """``pipe``'s output with one tile over the whole (padded) image, or None when that does not fit in memory
    (the planner chose smaller tiles, or it ran out of memory)."""
    m = pipe.model.multiple
    side = max(-(-s // m) * m for s in opts.size_for(*rgb.shape[-2:]))
    try:
        out = pipe.upscale_tensor(rgb, replace(opts, tile=side, overlap=0, tile_batch=1))
    except (RuntimeError, MemoryError) as e:
        if not oom.is_oom(e):
            raise
        oom.free_cached(pipe.device)
        return None
    return out if pipe.plan is None or pipe.plan.tile >= side else None


def pipeline_seams(
    pipe: FluxSRPipeline, cfg: BenchConfig, img_path: Path, tiled: torch.Tensor, ctx
) -> dict[str, Any]:
    """Seam columns of a FluxSR or teacher row from ``tiled``, its last timed output (``pipe.tiles`` are the tiles
    it ran with): the ratio, and the PSNR against one untiled run."""
    spec = pipe.tiles
    with ctx():
        untiled = untiled_output(pipe, read_image(img_path).rgb, cfg.upscale_options())
    return {**seam_scores(tiled, spec, untiled), "seam_tile": spec.tile, "seam_overlap": spec.overlap}


def bicubic_seams(pipe: FluxSRPipeline | None, cfg: BenchConfig, img_path: Path, size: int) -> dict[str, Any]:
    """Seam columns of the bicubic row at the FluxSR model's tiles (none without a loaded model)."""
    if pipe is None:
        return {"seam_ratio": None, "tiled_psnr": None}
    spec = pipe.pixel_tiles(cfg.upscale_options())
    out = resize(read_image(img_path).rgb, (size, size))
    return {**seam_scores(out, spec), "seam_tile": spec.tile, "seam_overlap": spec.overlap}
