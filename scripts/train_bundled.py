#!/usr/bin/env python3
"""Reproduce the bundled model from a fresh clone with fluxsr's own commands, recording wall time and hardware.

    python scripts/train_bundled.py --data ../shared/data --run runs/bundled [--smoke] [--install]

Stages: train-vae -> train-teacher -> gen-pairs (photo inversion) -> train (FTD + MSE + TV-LPIPS + ADL) -> export.
Training photos: BSD100 HR (100), Urban100 img_001-040 HR (40) and the photos bundled with scikit-image; the
evaluation photos (Kodak24, Set5, Set14, RealSRSet, RealSet65, Real-ESRGAN inputs) are never used. ``--smoke`` runs
every stage for a few steps only (a check that the chain works). ``--install`` copies RUN/student/final into
src/fluxsr/assets/model. The report goes to RUN/report.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SKIMAGE_PHOTOS = (
    "astronaut",
    "coffee",
    "chelsea",
    "rocket",
    "motorcycle_left",
    "hubble_deep_field",
    "immunohistochemistry",
    "colorwheel",
)


def export_skimage_photos(out: Path) -> Path:
    """The RGB photos that ship inside scikit-image, as PNG files."""
    import numpy as np
    import skimage.data as data
    from PIL import Image

    out.mkdir(parents=True, exist_ok=True)
    for name in SKIMAGE_PHOTOS:
        try:
            img = getattr(data, name)()
        except Exception as e:  # some images are downloads; skip those
            print(f"skip skimage {name}: {e}", file=sys.stderr)
            continue
        if img.ndim == 3 and img.shape[2] >= 3:
            Image.fromarray(np.asarray(img)[:, :, :3]).save(out / f"{name}.png")
    return out


def training_photos(data: Path, run_dir: Path) -> list[str]:
    """The training photo folders: BSD100 HR, Urban100 img_001-040 HR and the scikit-image photos."""
    return [
        str(data / "BSD100" / "HR"),
        str(data / "Urban100_subset40" / "HR"),
        str(export_skimage_photos(run_dir / "photos" / "skimage")),
    ]


def link_photos(folders: list[str], out: Path) -> Path:
    """One flat folder of links for photo pairs (sorted names: BSD100_, Urban1_, photos_ prefixes)."""
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    for folder in folders:
        for p in sorted(Path(folder).iterdir()):
            (out / f"{Path(folder).parent.name[:6]}_{p.name}").symlink_to(p.resolve())
    return out


def hardware() -> dict:
    import torch

    info = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "cuda": torch.cuda.is_available(),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def run(stage: str, args: list[str], report: dict) -> None:
    cmd = [sys.executable, "-m", "fluxsr.cli", *args]
    print("+", " ".join(cmd), file=sys.stderr, flush=True)
    tic = time.perf_counter()
    subprocess.run(cmd, check=True)
    report["stages"][stage] = round(time.perf_counter() - tic, 1)
    print(f"[{stage}] {report['stages'][stage]} s", file=sys.stderr, flush=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, required=True, help="folder with BSD100/HR and Urban100_subset40/HR")
    ap.add_argument("--run", type=Path, default=ROOT / "runs" / "bundled")
    ap.add_argument("--config", type=Path, default=ROOT / "configs" / "bundled.yaml")
    ap.add_argument(
        "--smoke", action="store_true", help="a few steps per stage (checks the chain, not a model)"
    )
    ap.add_argument(
        "--scale", type=float, default=1.0, help="multiply every stage's steps (longer/shorter run)"
    )
    ap.add_argument("--install", action="store_true", help="copy the result into src/fluxsr/assets/model")
    ap.add_argument("--set", action="append", default=[], help="extra recipe overrides")
    args = ap.parse_args()

    from fluxsr.training.recipe import load_recipe

    run_dir = args.run.resolve()
    photos = training_photos(args.data, run_dir)
    pairs_photos = link_photos(photos, run_dir / "photos" / "all")
    recipe = load_recipe(args.config)
    s = 0.002 if args.smoke else args.scale

    def steps(n: int) -> int:
        return max(2, int(n * s))

    sets = [
        f"pretrain.photos={json.dumps(photos)}",
        f"model.base={run_dir / 'teacher'}",
        f"pairs.photos={pairs_photos}",
        f"pretrain.vae.steps={steps(recipe.pretrain.vae.steps)}",
        f"pretrain.teacher.steps={steps(recipe.pretrain.teacher.steps)}",
        f"train.steps={steps(recipe.train.steps)}",
    ]
    if args.smoke:
        sets += [
            "pairs.count=4",
            "pairs.steps=2",
            "pretrain.vae.batch_size=2",
            "pretrain.teacher.batch_size=2",
            "train.batch_size=2",
            "train.validate_every=2",
            "train.checkpoint_every=2",
        ]
    sets += args.set
    common = ["--config", str(args.config), *[f"--set={x}" for x in sets]]
    report = {"hardware": hardware(), "overrides": sets, "stages": {}, "smoke": args.smoke}
    tic = time.perf_counter()
    run("train-vae", ["train-vae", *common, "--out", str(run_dir / "vae")], report)
    run(
        "train-teacher",
        ["train-teacher", *common, "--vae", str(run_dir / "vae"), "--out", str(run_dir / "teacher")],
        report,
    )
    run("gen-pairs", ["gen-pairs", *common, "--out", str(run_dir / "pairs")], report)
    run(
        "train",
        ["train", *common, "--pairs", str(run_dir / "pairs"), "--out", str(run_dir / "student")],
        report,
    )
    report["total_seconds"] = round(time.perf_counter() - tic, 1)
    (run_dir / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    if args.install:
        dest = ROOT / "src" / "fluxsr" / "assets" / "model"
        shutil.rmtree(dest, ignore_errors=True)
        shutil.copytree(run_dir / "student" / "final", dest)
        shutil.copy(run_dir / "report.json", dest / "train_report.json")
        print(f"installed into {dest}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
