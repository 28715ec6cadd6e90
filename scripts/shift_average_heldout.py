#!/usr/bin/env python3
"""The half-token shift average (scripts/diagnose_grid.py) vs the default pipeline on a held-out set, x4.

    python scripts/shift_average_heldout.py --dataset HELD_OUT [--model bundled]

HELD_OUT holds lr/ + hr/ (fluxsr make-testset). Both outputs are 8-bit quantised; the shift average gets the
wavelet colour fix like the default. Prints mean PSNR-Y (fluxsr protocol), LPIPS-Alex and periodic (8 px).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from diagnose_grid import shift_averaged

from fluxsr.evaluation.metric_set import load_network
from fluxsr.evaluation.periodic import periodic_score
from fluxsr.evaluation.protocol import protocol_psnr
from fluxsr.inference.color import color_fix
from fluxsr.inference.pipeline import FluxSRPipeline, UpscaleOptions
from fluxsr.io.images import find_images, read_image, resize


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", type=Path, required=True)
    ap.add_argument("--model", default="bundled")
    args = ap.parse_args()
    pipe = FluxSRPipeline.from_pretrained(args.model, "cpu", torch.float32)
    lpips = load_network("lpips", "cpu")
    one = UpscaleOptions(tile=1 << 14, overlap=0)
    hrs = sorted(find_images(args.dataset / "hr"))
    totals: dict[str, list[float]] = {}
    for path in hrs:
        hr = read_image(path).rgb.float()
        lr = read_image(args.dataset / "lr" / path.name).rgb.float()
        ref = resize(lr[None], tuple(hr.shape[-2:]))
        with torch.inference_mode():
            shifted = color_fix(shift_averaged(pipe, ref, one)[None], ref, "wavelet")[0].clamp(0, 1)
            for name, out in {"default": pipe.upscale_tensor(lr), "shift average": shifted}.items():
                out = (out * 255).round() / 255
                t = totals.setdefault(name, [0.0, 0.0, 0.0])
                t[0] += float(protocol_psnr(out, hr)) / len(hrs)
                t[1] += float(lpips(out[None], hr[None])[0]) / len(hrs)
                t[2] += float(periodic_score(out, hr)) / len(hrs)
    for name, (p, lp, per) in totals.items():
        print(f"{name}: psnr {p:.2f} lpips {lp:.4f} periodic {per:.2f} ({len(hrs)} images)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
