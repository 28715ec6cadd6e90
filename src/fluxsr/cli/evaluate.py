"""The quality commands: ``eval`` (score a folder of results), ``make-testset`` (reproducible LR/HR pairs) and
``benchmark`` (run bicubic / Real-ESRGAN / fluxsr on a data set, score, chart, compare). Speed is ``fluxsr bench``
(:mod:`fluxsr.cli.bench`)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from ..data.datasets import load_dataset
from ..data.degradation_config import DegradationConfig
from ..data.testset import make_testset
from ..evaluation.benchmark import backend_factories, run_benchmark
from ..evaluation.protocol import PROTOCOLS
from ..evaluation.reports import (
    benchmark_markdown,
    report_csv,
    report_json,
    report_markdown,
    write_json,
    write_text,
)
from ..evaluation.scoring import check_report_files, evaluate_dirs
from ..inference.color import COLOR_FIXES
from ..inference.pipeline import UpscaleOptions
from .options import (
    add_model_arguments,
    add_tile_arguments,
    device_from_args,
    non_negative_int,
    pipeline_from_args,
    positive_int,
    positive_number,
)


def print_notes(notes: list[str], problems: list[str]) -> None:
    """``note: ...`` and ``error: ...`` lines on stderr."""
    for line in notes:
        print(f"note: {line}", file=sys.stderr)
    for line in problems:
        print(f"error: {line}", file=sys.stderr)


# -- eval --------------------------------------------------------------------------------------------------------


def cmd_eval(args: argparse.Namespace) -> int:
    """Score, print the table, write the report files asked for."""
    check_report_files(args.pred, args.gt, {"--json": args.json, "--csv": args.csv}, args.lr)
    report = evaluate_dirs(
        args.pred,
        args.gt,
        args.metrics,
        args.protocol,
        scale=args.scale,
        crop_border=args.crop_border,
        device=device_from_args(args),
        progress=not args.quiet,
        period=args.period,
        lr_dir=args.lr,
    )
    print(report_markdown(report))
    if args.json:
        write_json(args.json, report_json(report))
    if args.csv:
        write_text(args.csv, report_csv(report))
    print_notes(report.notes, report.problems)
    print(f"{report.n_scored} image(s) scored, {len(report.problems)} problem(s)", file=sys.stderr)
    return 1 if report.problems or not report.n_scored else 0


def add_protocol_arguments(p: argparse.ArgumentParser) -> None:
    """``--metrics``, ``--protocol``, ``--crop-border`` and ``--period`` (eval and benchmark)."""
    p.add_argument(
        "--metrics",
        default=None,
        help="comma-separated: psnr,ssim,lpips,lpips-vgg,dists,periodic,niqe, lr_psnr (with --lr) and (with pyiqa "
        "installed) musiq,maniqa-koniq,maniqa-pipal,topiq-nr,clipiqa,qalign (default: psnr,ssim,lpips,dists,niqe; "
        "niqe only without ground truth; plus lr_psnr with --lr)",
    )
    p.add_argument(
        "--protocol",
        choices=sorted(PROTOCOLS),
        default="fluxsr",
        help="how PSNR/SSIM are computed (docs/evaluation.md)",
    )
    p.add_argument(
        "--crop-border",
        type=non_negative_int,
        default=None,
        help="pixels removed on each side for PSNR/SSIM, >= 0 (default: the protocol's, = scale for fluxsr)",
    )
    p.add_argument(
        "--period",
        type=int,
        default=None,
        help="grid of the 'periodic' metric in output pixels: the model's token edge (default 8, the bundled "
        "model's; 16 for FLUX.1-dev)",
    )


def add_eval(sub) -> None:
    """``fluxsr eval``."""
    p = sub.add_parser(
        "eval", help="score SR results against ground truth (PSNR, SSIM, LPIPS, DISTS, NIQE, ...)"
    )
    p.add_argument("--pred", type=Path, required=True, help="folder of results (searched recursively)")
    p.add_argument(
        "--gt", type=Path, default=None, help="folder of ground truth; paired by name (docs/evaluation.md)"
    )
    p.add_argument(
        "--lr",
        type=Path,
        default=None,
        help="folder of the LR inputs, paired by name: lr_psnr = PSNR of each result shrunk to its input's size "
        "(antialiased bicubic) against that input (docs/evaluation.md)",
    )
    add_protocol_arguments(p)
    p.add_argument(
        "--scale",
        type=positive_int,
        default=4,
        help="SR scale, >= 1 (sets the fluxsr protocol's crop border)",
    )
    p.add_argument("--json", type=Path, default=None, help="write per-image scores and means as JSON")
    p.add_argument("--csv", type=Path, default=None, help="write per-image scores and means as CSV")
    p.add_argument("--device", default=None, help="for LPIPS/DISTS/pyiqa (default: cuda if available)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_eval)


# -- make-testset ------------------------------------------------------------------------------------------------


def cmd_make_testset(args: argparse.Namespace) -> int:
    """Write the pairs and the manifest; problems are one line each."""
    cfg = DegradationConfig.from_yaml(args.degradation) if args.degradation else None
    result = make_testset(args.hr, args.out, args.seed, args.scale, args.crop, cfg, overwrite=args.overwrite)
    print_notes([], result.problems)
    if result.manifest is not None:
        print(
            f"{len(result.items)} pair(s) -> {args.out}/hr, {args.out}/lr; manifest {result.manifest}",
            file=sys.stderr,
        )
    return 1 if result.problems else 0


def add_make_testset(sub) -> None:
    """``fluxsr make-testset``."""
    p = sub.add_parser(
        "make-testset", help="reproducible LR/HR pairs from HR photos with the training degradation"
    )
    p.add_argument("--hr", type=Path, nargs="+", required=True, help="HR image files or folders")
    p.add_argument("--out", type=Path, required=True, help="writes OUT/hr, OUT/lr and OUT/manifest.json")
    p.add_argument(
        "--seed", type=int, required=True, help="set seed; each image's seed derives from it and its name"
    )
    p.add_argument(
        "--scale", type=positive_int, default=4, help="LR = HR / scale, an integer >= 1 (default 4)"
    )
    p.add_argument(
        "--crop",
        type=positive_int,
        default=None,
        help="centre-crop HR to CROP x CROP (a multiple of --scale)",
    )
    p.add_argument(
        "--degradation",
        type=Path,
        default=None,
        help="degradation YAML (default: Real-ESRGAN's, as configs/degradation.yaml)",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="first delete the pairs an earlier make-testset listed in OUT/manifest.json (never other files; "
        "default: refuse a non-empty OUT/hr or OUT/lr)",
    )
    p.set_defaults(func=cmd_make_testset)


# -- benchmark (quality) -----------------------------------------------------------------------------------------


def cmd_benchmark(args: argparse.Namespace) -> int:
    """Run every backend on the data set, score, print the table and where the files went."""
    opts = UpscaleOptions(
        args.scale, None, args.color_fix, args.tile, args.overlap
    )  # bad settings fail first
    torch.manual_seed(args.seed)
    dataset = load_dataset(args.dataset, args.layout, scale=max(1, round(args.scale)))
    factories = backend_factories(args.backends, lambda: pipeline_from_args(args), args.device)
    result = run_benchmark(
        dataset,
        factories,
        args.out,
        args.metrics,
        args.protocol,
        opts=opts,
        crop_border=args.crop_border,
        device=device_from_args(args),
        sheet_images=args.sheet_images,
        sheet_crop=args.sheet_crop,
        progress=not args.quiet,
        period=args.period,
    )
    print(benchmark_markdown(result))
    print_notes(result.notes, result.problems)
    for kind, path in result.files.items():
        print(f"{kind}: {path}", file=sys.stderr)
    return 1 if result.problems else 0


def add_benchmark(sub) -> None:
    """``fluxsr benchmark``."""
    p = sub.add_parser(
        "benchmark", help="run bicubic / Real-ESRGAN / fluxsr on a data set, score, chart, compare"
    )
    p.add_argument(
        "--dataset",
        type=Path,
        required=True,
        help="lr/ + hr/ (make-testset), lq/ + gt/, RealSR, DRealSR, HR/ + LR_bicubic/X4/ (Set5, "
        "Set14, ...) or an LR-only folder",
    )
    p.add_argument(
        "--layout", default="auto", help="auto, pairs, stablesr, realsr, drealsr, classic, lr-only"
    )
    p.add_argument(
        "--backends",
        default="bicubic,realesrgan,fluxsr",
        help="comma-separated, run in this order (default: bicubic,realesrgan,fluxsr)",
    )
    p.add_argument("--out", type=Path, required=True, help="outputs per backend, tables, chart and sheet")
    add_protocol_arguments(p)
    p.add_argument(
        "-s", "--scale", type=positive_number, default=4.0, help="output/input size ratio (float > 0)"
    )
    p.add_argument("--color-fix", choices=COLOR_FIXES, default="wavelet")
    add_tile_arguments(p, "fluxsr ")
    p.add_argument("--sheet-images", type=int, default=4, help="rows of the comparison sheet (0: none)")
    p.add_argument("--sheet-crop", type=int, default=128, help="crop size in output pixels on the sheet")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    add_model_arguments(p)
    p.set_defaults(func=cmd_benchmark)
