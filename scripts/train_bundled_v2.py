#!/usr/bin/env python3
"""Bundled model v2 (issue 14): continue the v1 student on the CPU (or a GPU), resumably, with fluxsr's commands.

    python scripts/train_bundled_v2.py --data ../shared/data --run runs/bundled2 [--max-steps N]

The v1 teacher's weights were not kept, so the pairs are the training photos inverted through the v1 student
itself (configs/bundled-v2.yaml explains why that is enough for FTD). Stages: copy the v1 model (the base) ->
gen-pairs (resumes: finished pairs are skipped) -> train (resumes from the latest checkpoint in RUN/student).
Pick the checkpoint by held-out numbers (scripts/heldout_checkpoints.py) and export it; nothing is installed here.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

from train_bundled import ROOT, link_photos, training_photos

from fluxsr.training.checkpoints import finished_checkpoints

V1 = ROOT / "src" / "fluxsr" / "assets" / "model"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, required=True, help="folder with BSD100/HR and Urban100_subset40/HR")
    ap.add_argument("--run", type=Path, default=ROOT / "runs" / "bundled2")
    ap.add_argument("--config", type=Path, default=ROOT / "configs" / "bundled-v2.yaml")
    ap.add_argument("--base", type=Path, default=V1, help="the model to continue (default: the bundled v1)")
    ap.add_argument(
        "--max-steps", type=int, default=None, help="stop after this many steps (schedule unchanged)"
    )
    ap.add_argument("--set", action="append", default=[], help="extra recipe overrides")
    args = ap.parse_args()

    run_dir = args.run.resolve()
    base = run_dir / "base"
    if not base.exists():  # a copy: installing v2 later must not change the base of a resumed run
        shutil.copytree(args.base, base)
    photos = link_photos(training_photos(args.data, run_dir), run_dir / "photos" / "all")
    sets = [f"model.base={base}", f"pairs.photos={photos}", *args.set]
    common = ["--config", str(args.config), *[f"--set={x}" for x in sets]]
    cli = [sys.executable, "-m", "fluxsr.cli"]
    subprocess.run([*cli, "gen-pairs", *common, "--out", str(run_dir / "pairs")], check=True)
    student = run_dir / "student"
    train = [*cli, "train", *common, "--pairs", str(run_dir / "pairs"), "--out", str(student)]
    if finished_checkpoints(student / "checkpoints"):
        train.append("--resume")
    if args.max_steps is not None:
        train += ["--max-steps", str(args.max_steps)]
    subprocess.run(train, check=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
