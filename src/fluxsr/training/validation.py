"""Validation during training: fixed degraded inputs upscaled through :class:`FluxSRPipeline` (what users run),
saved with their PSNR; and the start-of-run check of ``train.validation_images``."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import torch

from ..data.degrade import degrade_to_input
from ..evaluation.psnr_ssim import psnr
from ..inference.pipeline import FluxSRPipeline, UpscaleOptions
from ..io.config import ConfigError
from ..io.images import find_images, read_image, resize, write_image
from ..model.model import FluxSRModel
from .pairs import load_pair
from .recipe import Recipe


def check_validation_images(recipe: Recipe) -> None:
    """``train.validation_images`` must exist and every image in it must load (fail at start, not at step N)."""
    src = recipe.train.validation_images
    if not src:
        return
    if not Path(src).exists():
        raise ConfigError(f"train.validation_images: {src} not found")
    paths = find_images(Path(src))
    if not paths:
        raise ConfigError(f"train.validation_images: no images in {src}")
    for path in paths:
        read_image(path)  # ImageError naming the file


@torch.no_grad()
def validate(
    model: FluxSRModel,
    transformer,
    recipe: Recipe,
    pairs_dir: Path,
    indices: list[int],
    out: Path,
    *,
    t_l: float | None = None,
) -> dict:
    """Upscale fixed degraded inputs (the first two pairs, seed 0; or ``train.validation_images``) and save them.

    ``t_l``: the T_L to run at (the effective one used in training; default: the model's).

    Returns PSNR (dB) per pair input against its x0, written to ``out/metrics.json``.
    """
    out.mkdir(parents=True, exist_ok=True)
    was_training = transformer.training
    transformer.eval()
    spec = model.spec if t_l is None else replace(model.spec, t_l=t_l)
    pipe = FluxSRPipeline(
        replace(model, transformer=transformer, spec=spec),
        next(transformer.parameters()).device,
        next(model.vae.parameters()).dtype,
        prepare=False,
    )
    scores = {}
    if recipe.train.validation_images:
        for path in find_images(Path(recipe.train.validation_images)):
            write_image(out / f"{path.stem}.png", pipe.upscale_tensor(read_image(path).rgb))
    else:
        for i in indices[:2]:
            x0 = load_pair(pairs_dir, i)["image"]
            lr, _ = degrade_to_input(x0[None], recipe.degradation, torch.Generator().manual_seed(0))
            sr = pipe.upscale_tensor(lr[0], UpscaleOptions(scale=x0.shape[-1] / lr.shape[-1]))
            sr = resize(sr[None], tuple(x0.shape[-2:]))[0]
            write_image(out / f"{i:06d}_lr.png", lr[0])
            write_image(out / f"{i:06d}_sr.png", sr)
            scores[str(i)] = float(psnr(sr, x0, crop_border=0, y_channel=True))
    (out / "metrics.json").write_text(json.dumps({"psnr_y": scores}, indent=2))
    transformer.train(was_training)
    return scores
