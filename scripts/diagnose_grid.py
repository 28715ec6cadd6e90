#!/usr/bin/env python3
"""Where does the bundled model's grid come from? Score one model's stages and settings on held-out pairs.

    python scripts/diagnose_grid.py --dataset HELD_OUT (lr/ + hr/ from fluxsr make-testset) [--model M] [--csv F]

Variants per image (all x4 to the HR size): ``bicubic`` (the pipeline's own resize of the LR input), ``vae(hr)``
(the HR image through the VAE alone: the VAE's fidelity bound), ``vae(bicubic)`` (the resized input through the
VAE, no transformer), ``model`` (default settings), ``model, no colour fix``, ``model, tile 128`` (more tile seams),
``model, one tile`` and ``model, half-token shift average`` (:func:`shift_averaged`). Scores: PSNR-Y (fluxsr protocol), ``periodic`` at the token period (8 px) and at the VAE's
4 px period (no x4 exclusion, so bicubic's own 4-px interpolation phase also shows there). Means are printed as a
Markdown table (and written to ``--csv``).
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import torch

from fluxsr.evaluation.periodic import periodic_score
from fluxsr.evaluation.protocol import protocol_psnr
from fluxsr.inference.pipeline import FluxSRPipeline, UpscaleOptions
from fluxsr.io.images import find_images, read_image, resize

COLUMNS = ("psnr", "periodic8", "periodic4")


def scores(sr: torch.Tensor, hr: torch.Tensor) -> dict[str, float]:
    sr = sr.clamp(0, 1)
    return {
        "psnr": float(protocol_psnr(sr, hr)),
        "periodic8": float(periodic_score(sr, hr, 8, scale=4)),
        "periodic4": float(periodic_score(sr, hr, 4, scale=1)),
    }


@torch.inference_mode()
def variants(pipe: FluxSRPipeline, lr: torch.Tensor, hr: torch.Tensor) -> dict[str, torch.Tensor]:
    """The outputs compared for one image (see the module docstring)."""
    h, w = hr.shape[-2:]
    one = UpscaleOptions(tile=1 << 14, overlap=0)
    ref = resize(lr[None].float(), (h, w))
    return {
        "bicubic": ref[0],
        "vae(hr)": pipe.decode(pipe.encode(hr[None], one), one)[0],
        "vae(bicubic)": pipe.decode(pipe.encode(ref, one), one)[0],
        "model": pipe.upscale_tensor(lr, UpscaleOptions()),
        "model, no colour fix": pipe.upscale_tensor(lr, UpscaleOptions(color_fix="none")),
        "model, tile 128": pipe.upscale_tensor(lr, UpscaleOptions(tile=128, overlap=16)),
        "model, one tile": pipe.upscale_tensor(lr, one),
        "model, half-token shift average": shift_averaged(pipe, ref, one),
    }


def shift_averaged(pipe: FluxSRPipeline, ref: torch.Tensor, opts: UpscaleOptions) -> torch.Tensor:
    """A measurement, not a pipeline option: the mean of the one-step outputs computed on the LR latent rolled by
    (0, 0), (0, 1), (1, 0) and (1, 1) latent pixels (half a token, 4 px) and rolled back. A fixed token-periodic
    pattern's odd harmonics cancel in that mean, so what it removes from ``periodic`` is a grid tied to the
    token positions. No colour fix (compare with ``model, no colour fix``)."""
    z_l = pipe.encode(ref, opts).float()
    shifts = ((0, 0), (0, 1), (1, 0), (1, 1))
    z_h = [pipe.transform(z_l.roll(s, (-2, -1)), opts).roll((-s[0], -s[1]), (-2, -1)) for s in shifts]
    return pipe.decode(torch.stack(z_h).mean(0), opts)[0]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", type=Path, required=True)
    ap.add_argument("--model", default="bundled")
    ap.add_argument("--csv", type=Path, default=None)
    args = ap.parse_args()

    pipe = FluxSRPipeline.from_pretrained(args.model, "cpu", torch.float32)
    totals: dict[str, dict[str, float]] = {}
    hrs = sorted(find_images(args.dataset / "hr"))
    for path in hrs:
        hr = read_image(path).rgb.float()
        lr = read_image(args.dataset / "lr" / path.name).rgb.float()
        for name, out in variants(pipe, lr, hr).items():
            for k, v in scores(out, hr).items():
                totals.setdefault(name, dict.fromkeys(COLUMNS, 0.0))[k] += v / len(hrs)
        print(path.name, file=sys.stderr, flush=True)
    print(f"| variant ({args.model}, {len(hrs)} images) | PSNR-Y | periodic 8 px | periodic 4 px |")
    print("|---|---:|---:|---:|")
    for name, t in totals.items():
        print(f"| {name} | {t['psnr']:.2f} | {t['periodic8']:.3f} | {t['periodic4']:.3f} |")
    if args.csv:
        with args.csv.open("w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["variant", *COLUMNS])
            for name, t in totals.items():
                w.writerow([name, *(f"{t[c]:.4f}" for c in COLUMNS)])
    return 0


if __name__ == "__main__":
    sys.exit(main())
