"""Settings of the speed bench (``fluxsr bench``): which rows (fluxsr, teacher, realesrgan, bicubic) at which
output sizes, how often, on which device. The speed bench times upscalers; the quality benchmark
(``fluxsr benchmark``, :mod:`fluxsr.evaluation.benchmark`) scores their outputs."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..inference.fastpath import FastPath
from ..inference.pipeline import UpscaleOptions

STAGES = ("read", "resize", "encode", "transformer", "decode", "color_fix", "write")

GPU_STAGES = ("resize", "encode", "transformer", "decode", "color_fix", "net")  # device work, no file I/O

ROWS = ("fluxsr", "teacher", "realesrgan", "bicubic")

RANDOM_FLUX = "flux-dev-random"


@dataclass
class BenchConfig:
    """Everything ``fluxsr bench`` measures; see ``fluxsr bench --help`` for each field."""

    model: str | None = None
    sizes: tuple[int, ...] = (512, 1024, 2048, 4096)
    repeat: int = 3
    warmup: int = 1
    device: str | None = None
    dtype: torch.dtype | None = None
    rows: tuple[str, ...] = ROWS
    text_len: int = 512
    teacher_steps: int = 28
    teacher_run_steps: int | None = None
    teacher_max_size: int | None = 1024
    baseline_max_size: int | None = None
    esrgan_tile: int = 512
    esrgan_weights: str = "auto"
    tile: int | None = None
    overlap: int | None = None
    tile_batch: int = 1
    color_fix: str = "wavelet"
    write_ext: str = "png"
    max_memory: int | None = None
    peak_tflops: float = 790.0
    analytic: bool = True
    fast: FastPath = field(default_factory=FastPath)
    seed: int = 0
    seams: bool = False
    photo: Path | None = None

    def __post_init__(self) -> None:
        bad = [s for s in self.sizes if s < 16 or s % 4]
        if not self.sizes or bad:
            raise ValueError(
                f"--sizes: output sizes must be multiples of 4, at least 16 (the input is size/4): "
                f"got {list(self.sizes) or 'none'}"
            )
        if not self.rows:
            raise ValueError(f"--rows: nothing to run; choose from {','.join(ROWS)}")
        unknown = sorted(set(self.rows) - set(ROWS))
        if unknown:
            raise ValueError(f"unknown rows {unknown}: choose from {ROWS}")
        if self.repeat < 1 or self.warmup < 0:
            raise ValueError(f"--repeat must be >= 1 and --warmup >= 0 (got {self.repeat}, {self.warmup})")
        if self.teacher_steps < 1 or not 1 <= (self.teacher_run_steps or 1) <= self.teacher_steps:
            raise ValueError(
                f"--teacher-steps must be >= 1 and --teacher-run-steps between 1 and it (got "
                f"{self.teacher_steps}, {self.teacher_run_steps})"
            )
        if not (math.isfinite(self.peak_tflops) and self.peak_tflops > 0):
            raise ValueError(f"--peak-tflops must be a positive number (got {self.peak_tflops})")
        if self.text_len < 1 or self.esrgan_tile < 0:
            raise ValueError(
                f"--text-len must be >= 1 and --esrgan-tile >= 0 (got {self.text_len}, {self.esrgan_tile})"
            )
        self.upscale_options()  # --tile, --overlap, --tile-batch: refused now, not at the first row

    def upscale_options(self) -> UpscaleOptions:
        """The pipeline settings of every row (x4: the input is size/4)."""
        return UpscaleOptions(
            scale=4.0,
            color_fix=self.color_fix,
            tile=self.tile,
            overlap=self.overlap,
            tile_batch=self.tile_batch,
        )


def config_dict(cfg: BenchConfig) -> dict[str, Any]:
    d = asdict(cfg)
    d["dtype"] = str(cfg.dtype).removeprefix("torch.") if cfg.dtype else None
    d["photo"] = str(cfg.photo) if cfg.photo else None
    return d
