"""The command-line side of the speed bench (``fluxsr bench``): its options and the command body. The bench itself
lives in the ``speed_*`` modules (:mod:`fluxsr.evaluation.speed_run` runs it); it times upscalers, while the quality
benchmark (``fluxsr benchmark``, :mod:`fluxsr.evaluation.benchmark`) scores their outputs. These functions move to
``cli/`` with the rest of the command line (issue #12).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from ..inference import memory
from ..inference.fastpath import add_fast_path_arguments, fast_path_from_args
from ..inference.pipeline import resolve_device
from ..inference.tiling import tile_edge, tile_overlap
from .speed_config import RANDOM_FLUX, ROWS, BenchConfig
from .speed_report import to_markdown, write_json
from .speed_run import run_bench


def _csv(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def _sizes(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(s) for s in _csv(text))
    except ValueError:
        raise ValueError(f"--sizes {text!r}: give whole numbers separated by commas, e.g. 512,1024") from None


def add_bench_arguments(p) -> None:
    """``fluxsr bench`` options."""
    p.add_argument(
        "--model",
        default=None,
        help=f"'bundled' (default), 'tiny', '{RANDOM_FLUX}' (FLUX.1-dev shapes, random weights, made on "
        "the device) or a model folder / FLUX.1-dev path",
    )
    p.add_argument("--random-weights", action="store_true", help=f"same as --model {RANDOM_FLUX}")
    p.add_argument(
        "--sizes",
        default="512,1024,2048,4096",
        help="output sizes (square, x4 from size/4; default 512,1024,2048,4096: long on a CPU)",
    )
    p.add_argument("--repeat", type=int, default=3, help="timed runs per row (median reported; default 3)")
    p.add_argument("--warmup", type=int, default=1, help="untimed runs first (compilation, cuDNN autotune)")
    p.add_argument("--rows", default=",".join(ROWS), help=f"rows to run (default: all of {','.join(ROWS)})")
    p.add_argument("--device", default=None)
    p.add_argument(
        "--dtype", choices=("bf16", "fp32", "fp16"), default=None, help="default: bf16 CUDA, fp32 CPU"
    )
    p.add_argument(
        "--text-len", type=int, default=512, help=f"T5 tokens of {RANDOM_FLUX}'s cached embeddings"
    )
    p.add_argument("--teacher-steps", type=int, default=28, help="teacher Euler steps to report")
    p.add_argument(
        "--teacher-run-steps",
        type=int,
        default=None,
        help="steps actually run (transformer time scaled linearly to --teacher-steps)",
    )
    p.add_argument(
        "--teacher-max-size", type=int, default=1024, help="largest output size for teacher rows (0: all)"
    )
    p.add_argument(
        "--baseline-max-size",
        type=int,
        default=None,
        help="largest output size for Real-ESRGAN rows (default: all on CUDA, 1024 on CPU)",
    )
    p.add_argument(
        "--esrgan-tile", type=int, default=512, help="Real-ESRGAN tile in input pixels (0: whole image)"
    )
    p.add_argument(
        "--esrgan-weights",
        choices=("auto", "cached", "random"),
        default="auto",
        help=f"Real-ESRGAN weights: cached (row skipped without them), random (same cost), auto (cached, "
        f"else random with --model {RANDOM_FLUX}, else skipped)",
    )
    p.add_argument(
        "--tile", type=tile_edge, default=None, help="tile in output pixels, >= 1 (default: the model's)"
    )
    p.add_argument(
        "--overlap",
        type=tile_overlap,
        default=None,
        help="tile overlap in output pixels, 0 to half the tile (default: the model's)",
    )
    p.add_argument(
        "--tile-batch", type=int, default=1, help="tiles per forward pass, >= 0 (0: as many as memory allows)"
    )
    p.add_argument("--color-fix", choices=("wavelet", "adain", "none"), default="wavelet")
    p.add_argument(
        "--write-ext",
        choices=("png", "jpg", "webp", "tif", "bmp"),
        default="png",
        help="output format of the write stage (png of a 4096^2 noise-like image takes seconds)",
    )
    p.add_argument(
        "--max-memory",
        type=memory.memory_size,
        default=None,
        help="memory cap for the planner, e.g. 40GiB (weights included)",
    )
    p.add_argument(
        "--peak-tflops",
        type=float,
        default=790.0,
        help="peak TFLOP/s for the FLOP floor (790: measured bf16 matmul ceiling of an H200/H100)",
    )
    p.add_argument(
        "--analytic",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="FLOP floor columns at --peak-tflops (default: on for CUDA, off on the CPU, where a GPU's "
        "peak means nothing)",
    )
    add_fast_path_arguments(p)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, default=None, help="write results here (updated after every row)")
    p.add_argument("--markdown", type=Path, default=None, help="write the table here (also printed)")


def config_from_args(args) -> BenchConfig:
    """A :class:`BenchConfig` from parsed ``fluxsr bench`` arguments."""
    dtypes = {"bf16": torch.bfloat16, "fp32": torch.float32, "fp16": torch.float16}
    device = resolve_device(args.device)
    for path, flag in ((args.json, "--json"), (args.markdown, "--markdown")):
        if path is not None and Path(path).is_dir():
            raise ValueError(f"{flag} {path}: is a folder; give a file name")
    model = args.model
    if args.random_weights:
        if model not in (None, RANDOM_FLUX):
            raise ValueError(f"--random-weights means --model {RANDOM_FLUX}, not {model}")
        model = RANDOM_FLUX
    baseline_max = (
        args.baseline_max_size
        if args.baseline_max_size is not None
        else (None if device.type == "cuda" else 1024)
    )
    return BenchConfig(
        model=model,
        sizes=_sizes(args.sizes),
        repeat=args.repeat,
        warmup=args.warmup,
        device=str(device),
        dtype=dtypes[args.dtype] if args.dtype else None,
        rows=tuple(_csv(args.rows)),
        text_len=args.text_len,
        teacher_steps=args.teacher_steps,
        teacher_run_steps=args.teacher_run_steps,
        teacher_max_size=args.teacher_max_size or None,
        baseline_max_size=baseline_max or None,
        esrgan_tile=args.esrgan_tile,
        esrgan_weights=args.esrgan_weights,
        tile=args.tile,
        overlap=args.overlap,
        tile_batch=args.tile_batch,
        color_fix=args.color_fix,
        write_ext=args.write_ext,
        max_memory=args.max_memory,
        peak_tflops=args.peak_tflops,
        seed=args.seed,
        analytic=args.analytic if args.analytic is not None else device.type == "cuda",
        fast=fast_path_from_args(args),
    )


def cmd_bench(args) -> int:
    """Run the benchmark, print the Markdown table, write JSON/Markdown files if asked."""
    cfg = config_from_args(args)
    result = run_bench(cfg, on_row=(lambda r: write_json(r, args.json)) if args.json else None)
    table = to_markdown(result)
    print(table)
    if args.json:
        write_json(result, args.json)
    if args.markdown:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text(table)
    return 1 if any("error" in r for r in result["rows"]) else 0
