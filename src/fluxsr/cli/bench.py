"""``fluxsr bench``: speed (per-stage latency and peak memory of one-step FluxSR, Real-ESRGAN and the multi-step
teacher; :mod:`fluxsr.evaluation.speed_run`). Quality is ``fluxsr benchmark`` (:mod:`fluxsr.cli.evaluate`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..evaluation.speed_config import RANDOM_FLUX, ROWS, BenchConfig
from ..evaluation.speed_report import to_markdown, write_json
from ..evaluation.speed_run import run_bench
from ..inference.color import COLOR_FIXES
from ..inference.pipeline import resolve_device
from .options import (
    TORCH_DTYPES,
    add_fast_path_arguments,
    fast_path_from_args,
    memory_size,
    tile_edge,
    tile_overlap,
    torch_dtype,
)


def comma_list(text: str) -> list[str]:
    """``"a, b,,c"`` -> ``["a", "b", "c"]``."""
    return [t.strip() for t in text.split(",") if t.strip()]


def sizes(text: str) -> tuple[int, ...]:
    """``--sizes``: whole numbers separated by commas."""
    try:
        return tuple(int(s) for s in comma_list(text))
    except ValueError:
        raise ValueError(f"--sizes {text!r}: give whole numbers separated by commas, e.g. 512,1024") from None


def add_bench_arguments(p: argparse.ArgumentParser) -> None:
    """``fluxsr bench`` options, in the order of its help."""
    add_grid_arguments(p)
    add_row_arguments(p)
    add_pipeline_arguments(p)
    add_fast_path_arguments(p)
    add_seam_arguments(p)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, default=None, help="write results here (updated after every row)")
    p.add_argument("--markdown", type=Path, default=None, help="write the table here (also printed)")


def add_seam_arguments(p: argparse.ArgumentParser) -> None:
    """``--seams`` and ``--photo``."""
    p.add_argument(
        "--seams",
        action="store_true",
        help="also score how visible the tile boundaries are (seam ratio, 1.0 = invisible; tiled vs untiled "
        "PSNR) on each fluxsr, teacher and bicubic output, at the model's tiles (docs/performance.md)",
    )
    p.add_argument(
        "--photo",
        type=Path,
        default=None,
        help="a real photo as every row's input (its centre square at size/4) instead of a smooth random image",
    )


def add_grid_arguments(p: argparse.ArgumentParser) -> None:
    """The model, the sizes, repeats and rows, the device and dtype."""
    p.add_argument(
        "--model",
        default=None,
        help=f"'bundled' (default), 'tiny', '{RANDOM_FLUX}' (FLUX.1-dev shapes, random weights, made on "
        "the device), a model folder / FLUX.1-dev path or a Hugging Face repo id org/name[@revision]",
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
    p.add_argument("--dtype", choices=tuple(TORCH_DTYPES), default=None, help="default: bf16 CUDA, fp32 CPU")
    p.add_argument(
        "--text-len", type=int, default=512, help=f"T5 tokens of {RANDOM_FLUX}'s cached embeddings"
    )


def add_row_arguments(p: argparse.ArgumentParser) -> None:
    """What the teacher and Real-ESRGAN rows run."""
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


def add_pipeline_arguments(p: argparse.ArgumentParser) -> None:
    """Tiles, colour fix, output format, memory cap and the FLOP floor."""
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
    p.add_argument("--color-fix", choices=COLOR_FIXES, default="wavelet")
    p.add_argument(
        "--write-ext",
        choices=("png", "jpg", "webp", "tif", "bmp"),
        default="png",
        help="output format of the write stage (png of a 4096^2 noise-like image takes seconds)",
    )
    p.add_argument(
        "--max-memory",
        type=memory_size,
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


def bench_model(args: argparse.Namespace) -> str | None:
    """``--model``, with ``--random-weights`` as another name for the FLUX-shaped random model."""
    if not args.random_weights:
        return args.model
    if args.model not in (None, RANDOM_FLUX):
        raise ValueError(f"--random-weights means --model {RANDOM_FLUX}, not {args.model}")
    return RANDOM_FLUX


def config_from_args(args: argparse.Namespace) -> BenchConfig:
    """A :class:`~fluxsr.evaluation.speed_config.BenchConfig` from parsed ``fluxsr bench`` arguments."""
    device = resolve_device(args.device)
    for path, flag in ((args.json, "--json"), (args.markdown, "--markdown")):
        if path is not None and Path(path).is_dir():
            raise ValueError(f"{flag} {path}: is a folder; give a file name")
    model = bench_model(args)
    baseline_max = args.baseline_max_size
    if baseline_max is None:
        baseline_max = None if device.type == "cuda" else 1024
    return BenchConfig(
        model=model,
        sizes=sizes(args.sizes),
        repeat=args.repeat,
        warmup=args.warmup,
        device=str(device),
        dtype=torch_dtype(args.dtype),
        rows=tuple(comma_list(args.rows)),
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
        seams=args.seams,
        photo=args.photo,
        analytic=args.analytic if args.analytic is not None else device.type == "cuda",
        fast=fast_path_from_args(args),
    )


def cmd_bench(args: argparse.Namespace) -> int:
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


def add_bench(sub) -> None:
    """``fluxsr bench``."""
    p = sub.add_parser(
        "bench", help="per-stage latency and peak memory vs Real-ESRGAN and the multi-step teacher"
    )
    add_bench_arguments(p)
    p.set_defaults(func=cmd_bench)
