"""Upscale files and folders with any backend (fluxsr, bicubic, Real-ESRGAN): the batch behind ``fluxsr upscale``.

Per file: read (EXIF orientation, 16-bit, grey, alpha, ICC) -> backend on RGB -> alpha upscaled apart (bicubic) ->
write with the input's bit depth, grey/colour, ICC and EXIF. A file that fails is reported in one line and the batch
goes on; finished outputs are skipped on a rerun; under ``accelerate launch`` (or any RANK/WORLD_SIZE environment)
each process takes every WORLD_SIZE-th file, so each file is done exactly once.
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Protocol

import torch
from torch import Tensor

from .images import ImageError, find_images, output_path, read_image, resize, target_size, write_image
from .pipeline import NonFiniteOutputError, UpscaleOptions


class Backend(Protocol):
    """Anything that upscales one RGB tensor (3, h, w) in [0, 1] to the size ``opts`` asks for."""

    name: str

    def upscale_tensor(self, rgb: Tensor, opts: UpscaleOptions) -> Tensor: ...


@dataclass
class BicubicBackend:
    """The bicubic baseline (antialiased when shrinking)."""

    name: str = "bicubic"

    def upscale_tensor(self, rgb: Tensor, opts: UpscaleOptions) -> Tensor:
        size = target_size(*rgb.shape[-2:], None if opts.long_side else opts.scale, opts.long_side)
        return resize(rgb.float(), size)


@dataclass
class RealESRGANBackend:
    """Real-ESRGAN x4plus (converted from its ncnn release), resized to the requested size like ``--outscale``."""

    device: str = "cpu"
    tile: int = 256
    name: str = "realesrgan"

    def __post_init__(self):
        from .baselines.realesrgan import RealESRGAN

        self.net = RealESRGAN(device=self.device, tile=self.tile)

    def upscale_tensor(self, rgb: Tensor, opts: UpscaleOptions) -> Tensor:
        size = target_size(*rgb.shape[-2:], None if opts.long_side else opts.scale, opts.long_side)
        with torch.inference_mode():
            out = self.net(rgb.float()).float().cpu()
        return out if tuple(out.shape[-2:]) == size else resize(out, size)


def make_backend(backend: str, **fluxsr_kwargs) -> Backend:
    """``fluxsr`` (kwargs go to :meth:`FluxSRPipeline.from_pretrained`), ``bicubic`` or ``realesrgan``."""
    if backend == "fluxsr":
        from .pipeline import FluxSRPipeline

        pipe = FluxSRPipeline.from_pretrained(**fluxsr_kwargs)
        pipe.name = f"fluxsr:{pipe.model.spec.name}"
        return pipe
    if backend == "bicubic":
        return BicubicBackend()
    if backend == "realesrgan":
        device = fluxsr_kwargs.get("device") or ("cuda" if torch.cuda.is_available() else "cpu")
        return RealESRGANBackend(device=str(device))
    raise ValueError(f"unknown backend {backend!r}: choose fluxsr, bicubic or realesrgan")


@dataclass
class BatchOptions:
    """File handling for a batch.

    suffix: appended to each output's stem (``photo.png`` -> ``photo<suffix>.png``).
    ext: output extension, or ``auto`` to keep the input's (png when alpha meets jpg/bmp).
    overwrite: replace existing outputs; otherwise existing outputs are skipped (a rerun resumes).
    max_pixels: inputs with more pixels are refused before decoding (decompression bombs).
    """

    suffix: str = ""
    ext: str = "auto"
    overwrite: bool = False
    max_pixels: int = 64_000_000


@dataclass
class FileResult:
    input: str
    output: str | None
    status: str  # ok | skipped | failed
    error: str | None = None
    seconds: float = 0.0
    in_size: tuple[int, int] | None = None
    out_size: tuple[int, int] | None = None
    stages: dict[str, float] = field(default_factory=dict)


def shard(items: list, rank: int, world: int) -> list:
    """This process's share of ``items``: every ``world``-th item from index ``rank`` (disjoint, complete)."""
    return items[rank::world]


def process_rank() -> tuple[int, int]:
    """(rank, world size) from the launcher's environment (``accelerate launch``, torchrun): (0, 1) otherwise."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def upscale_one(backend: Backend, src: Path, dst: Path, opts: UpscaleOptions, batch: BatchOptions) -> FileResult:
    """Upscale ``src`` into ``dst``; never raises for a bad file (the result says what went wrong)."""
    start = time.perf_counter()
    try:
        img = read_image(src, batch.max_pixels)
        rgb = backend.upscale_tensor(img.rgb, opts)
        alpha = resize(img.alpha[None].float(), tuple(rgb.shape[-2:]))[0] if img.alpha is not None else None
        write_image(dst, rgb, alpha, is_gray=img.is_gray, bit_depth=img.bit_depth, icc_profile=img.icc_profile,
                    exif=img.exif)
    except (ImageError, NonFiniteOutputError, ValueError) as e:
        return FileResult(str(src), None, "failed", str(e) if str(src) in str(e) else f"{src}: {e}",
                          time.perf_counter() - start)
    return FileResult(str(src), str(dst), "ok", None, time.perf_counter() - start, (img.height, img.width),
                      tuple(rgb.shape[-2:]), dict(getattr(backend, "timings", {})))


def upscale_paths(backend: Backend, inputs: list[Path], out_dir: Path, opts: UpscaleOptions,
                  batch: BatchOptions, *, progress: bool = True, rank: int = 0, world: int = 1) -> list[FileResult]:
    """Upscale every image under ``inputs`` (files or folders, recursive) into ``out_dir``, mirroring folders."""
    jobs: list[tuple[Path, Path]] = []
    results: list[FileResult] = []
    for root in map(Path, inputs):
        if not root.exists():
            results.append(FileResult(str(root), None, "failed", f"{root}: no such file or folder"))
            continue
        for src in find_images(root):
            jobs.append((src, output_path(src, root, out_dir, batch.suffix, batch.ext)))
    results = shard(results, rank, world)
    for r in results:
        print(f"error: {r.error}", file=sys.stderr)
    jobs = shard(jobs, rank, world)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(jobs), unit="img", desc=getattr(backend, "name", "upscale"), file=sys.stderr,
                   disable=not sys.stderr.isatty() and progress != "always")
    for src, dst in jobs:
        if dst.exists() and not batch.overwrite:
            results.append(FileResult(str(src), str(dst), "skipped", "output exists (use --overwrite)"))
        elif dst.resolve() == src.resolve():
            results.append(FileResult(str(src), None, "failed", f"{src}: output would overwrite the input"))
        else:
            results.append(upscale_one(backend, src, dst, opts, batch))
        if results[-1].status == "failed":
            print(f"error: {results[-1].error}", file=sys.stderr)
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    return results


def write_log(results: list[FileResult], path: Path, settings: dict) -> None:
    """JSON run log: settings, per-file results and counts."""
    counts = {s: sum(r.status == s for r in results) for s in ("ok", "skipped", "failed")}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"settings": settings, "counts": counts,
                                "files": [asdict(r) for r in results]}, indent=2, default=str) + "\n")
