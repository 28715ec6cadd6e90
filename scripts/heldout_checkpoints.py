#!/usr/bin/env python3
"""Score a run's checkpoints on a few held-out images, so a stage can stop when it stops improving (issue 14).

    python scripts/heldout_checkpoints.py --run runs/bundled2/student --base runs/bundled2/base \
        --dataset VAL --csv docs/bundled/v2_heldout_curve.csv [--every 100]

Each checkpoint ``RUN/checkpoints/step_N`` not yet in the CSV becomes a model folder (``RUN/models/step_N``: the
base folder with the checkpoint's transformer weights) and goes through ``fluxsr benchmark --backends fluxsr``
(psnr, ssim, lpips, periodic); step 0 is the base itself. One CSV row per checkpoint (appended).
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
from pathlib import Path

from fluxsr.training.checkpoints import finished_checkpoints

METRICS = ("psnr", "ssim", "lpips", "periodic")


def checkpoint_model(base: Path, checkpoint: Path, out: Path) -> Path:
    """A fluxsr model folder: ``base`` with the transformer weights of ``checkpoint`` (a full fine-tuning run, as the
    bundled recipes are; a LoRA run's model is its exported final/ folder)."""
    from fluxsr.io.cache import read_safetensors
    from fluxsr.model.folders import save_model_folder
    from fluxsr.model.loader import load_model
    from fluxsr.training.checkpoints import load_trainable

    if not (out / "fluxsr.json").is_file():
        model = load_model(str(base))
        weights, _ = read_safetensors(checkpoint / "trainable.safetensors")
        load_trainable(model.transformer, weights, lora=False, source=checkpoint)
        save_model_folder(model, out)
    return out


def score(model: Path, dataset: Path, out: Path) -> dict[str, float]:
    """Mean scores of ``fluxsr benchmark --backends fluxsr --model MODEL`` on ``dataset``."""
    cmd = [sys.executable, "-m", "fluxsr.cli", "benchmark", "--dataset", str(dataset), "--backends", "fluxsr"]
    cmd += [
        "--model",
        str(model),
        "--metrics",
        ",".join(METRICS),
        "--out",
        str(out),
        "--sheet-images",
        "0",
        "-q",
    ]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return json.loads((out / "benchmark.json").read_text())["methods"][0]["mean"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", type=Path, required=True, help="a `fluxsr train` run folder")
    ap.add_argument("--base", type=Path, required=True, help="the model folder the run started from")
    ap.add_argument("--dataset", type=Path, required=True, help="held-out lr/ + hr/ (fluxsr make-testset)")
    ap.add_argument("--csv", type=Path, required=True)
    ap.add_argument("--every", type=int, default=1, help="score only steps that are multiples of this")
    args = ap.parse_args()

    done = set()
    if args.csv.is_file():
        done = {int(r["step"]) for r in csv.DictReader(args.csv.open())}
    todo = [(0, args.base)] if 0 not in done else []
    for ck in finished_checkpoints(args.run / "checkpoints"):
        step = int(ck.name.split("_")[1])
        if step not in done and step % args.every == 0:
            todo.append((step, ck))
    for step, src in todo:
        model = src if step == 0 else checkpoint_model(args.base, src, args.run / "models" / src.name)
        mean = score(model, args.dataset, args.run / "heldout" / f"step_{step:07d}")
        new = not args.csv.is_file()
        args.csv.parent.mkdir(parents=True, exist_ok=True)
        with args.csv.open("a", newline="") as f:
            w = csv.writer(f)
            if new:
                w.writerow(["step", *METRICS])
            w.writerow([step, *(f"{mean[m]:.4f}" for m in METRICS)])
        print(step, {m: round(mean[m], 4) for m in METRICS}, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
