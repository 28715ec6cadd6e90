#!/usr/bin/env python3
"""Pin what a refactor must not change, through the command line only (so the pin survives any module layout).

    python scripts/pin_outputs.py --write pins.json     # before moving code
    python scripts/pin_outputs.py --check pins.json     # after: exit 1 and name what differs

Pinned, on the CPU in float32 with one thread (the thread count changes the order of some float sums):
  1. ``fluxsr upscale`` with the bundled model on two example images: sha256 of the output pixels and of the file;
  2. the tiny training chain (``gen-pairs`` then ``train`` with configs/tiny.yaml, random-weight LPIPS so nothing
     needs fetching): the step, loss and lr columns of log.csv and a sha256 of every tensor of the final model folder.
The pins hold on one machine with one set of package versions (constraints.txt); they are a before/after check,
not a test: the suite checks behaviour, this checks bit-identity across a refactor.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ("Lincoln.png", "oldphoto2.png")
TINY_CHAIN = [
    "pairs.count=4",
    "pairs.resolution=32",
    "pairs.steps=2",
    "train.steps=8",
    "train.batch_size=2",
    "train.checkpoint_every=4",
    "train.validate_every=0",
    "loss.lpips_net=random-vgg",
]
PINNED_COLUMNS = ("step", "loss", "ftd", "mse", "lpips", "adl", "lr")  # not speed, memory or new diagnostics


def fluxsr(*args: str) -> None:
    """Run the fluxsr command line in a one-thread, offline environment; raise on failure."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    subprocess.run(
        [sys.executable, "-m", "fluxsr.cli", *args], check=True, env=env, stdout=subprocess.DEVNULL
    )


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def pixels_sha256(path: Path) -> str:
    import numpy as np
    from PIL import Image

    with Image.open(path) as im:
        return sha256(np.ascontiguousarray(np.asarray(im)).tobytes())


def tensors_sha256(folder: Path) -> dict[str, str]:
    """sha256 over the sorted (name, dtype, shape, bytes) of every tensor in every safetensors file of a folder."""
    import torch
    from safetensors.torch import load_file

    out = {}
    for f in sorted(folder.rglob("*.safetensors")):
        h = hashlib.sha256()
        for name, t in sorted(load_file(str(f)).items()):
            h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
            h.update(t.contiguous().view(-1).view(dtype=torch.uint8).numpy().tobytes())
        out[str(f.relative_to(folder))] = h.hexdigest()
    return out


def pin_upscale(work: Path) -> dict:
    out = work / "upscaled"
    fluxsr("upscale", *(str(ROOT / "examples" / n) for n in EXAMPLES), "-o", str(out), "--device", "cpu")
    pins = {}
    for name in EXAMPLES:
        path = out / name
        pins[name] = {"pixels": pixels_sha256(path), "file": sha256(path.read_bytes())}
    return pins


def pin_training(work: Path) -> dict:
    recipe = ["--config", str(ROOT / "configs" / "tiny.yaml"), *(f"--set={s}" for s in TINY_CHAIN), "-q"]
    fluxsr("gen-pairs", *recipe, "--out", str(work / "pairs"), "--device", "cpu")
    fluxsr("train", *recipe, "--pairs", str(work / "pairs"), "--out", str(work / "run"))
    with (work / "run" / "log.csv").open() as f:
        rows = [{k: row[k] for k in PINNED_COLUMNS} for row in csv.DictReader(f)]
    return {"losses": rows, "final": tensors_sha256(work / "run" / "final")}


def collect() -> dict:
    import torch

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        return {
            "torch": torch.__version__,
            "upscale": pin_upscale(work),
            "training": pin_training(work),
        }


def differences(old: dict, new: dict, where: str = "") -> list[str]:
    """Paths at which two nested pin records differ."""
    if isinstance(old, dict) and isinstance(new, dict):
        keys = sorted(set(old) | set(new))
        return [d for k in keys for d in differences(old.get(k), new.get(k), f"{where}/{k}")]
    if isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        return [
            d
            for i, (a, b) in enumerate(zip(old, new, strict=True))
            for d in differences(a, b, f"{where}[{i}]")
        ]
    return [] if old == new else [f"{where}: {old!r} -> {new!r}"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    mode = ap.add_mutually_exclusive_group(required=True)
    mode.add_argument("--write", type=Path, help="record the pins in this JSON file")
    mode.add_argument("--check", type=Path, help="compare with the pins in this JSON file")
    args = ap.parse_args()
    pins = collect()
    if args.write:
        args.write.write_text(json.dumps(pins, indent=1) + "\n")
        print(f"wrote {args.write}")
        return 0
    diff = differences(json.loads(args.check.read_text()), pins)
    for line in diff:
        print(line)
    print("identical" if not diff else f"{len(diff)} differences")
    return 1 if diff else 0


if __name__ == "__main__":
    sys.exit(main())
