"""``fluxsr upscale`` (images or folders, one step, optionally over several processes) and ``fluxsr demo`` (a
folder with bicubic and fluxsr, and a side-by-side sheet)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

import torch

from ..data.datasets import load_lr_only
from ..evaluation.benchmark import run_benchmark
from ..inference.color import COLOR_FIXES
from ..inference.fastpath import FastPath, sdpa_context
from ..inference.pipeline import UpscaleOptions
from ..inference.upscale import (
    Backend,
    BatchOptions,
    BicubicBackend,
    bind_local_gpu,
    make_backend,
    process_rank,
    status_counts,
    sum_over_processes,
    upscale_paths,
    write_log,
)
from ..io.images import MAX_PIXELS
from ..webapp import default_examples_dir
from .options import (
    add_fast_path_arguments,
    add_model_arguments,
    add_tile_arguments,
    fast_path_from_args,
    non_negative_int,
    pipeline_from_args,
    positive_int,
    positive_number,
)

MODEL_FLAGS = ("model", "flux", "ae", "prompt_embeds", "lora", "t_l")
"""Model options that only the fluxsr backend takes."""

# -- upscale -----------------------------------------------------------------------------------------------------


def upscale_settings(args: argparse.Namespace) -> tuple[UpscaleOptions, BatchOptions, FastPath]:
    """The run's settings, every one checked before anything loads."""
    opts = UpscaleOptions(
        args.scale, args.long_side, args.color_fix, args.tile, args.overlap, args.tile_batch, args.max_pixels
    )
    batch = BatchOptions(args.suffix, args.ext, args.overwrite, args.max_pixels, args.fidelity_map)
    given = [f"--{k.replace('_', '-')}" for k in MODEL_FLAGS if getattr(args, k) is not None]
    if args.backend != "fluxsr" and given:
        raise ValueError(f"{', '.join(given)}: model options apply to --backend fluxsr, not {args.backend}")
    if args.json is not None and args.json.is_dir():
        raise ValueError(f"--json {args.json}: is a folder; give a file name")
    return opts, batch, fast_path_from_args(args)


def upscale_backend(args: argparse.Namespace, fast: FastPath, say: Callable[[str], None]) -> Backend:
    """The backend ``--backend`` names; the fluxsr one with the speed switches applied."""
    if args.backend == "fluxsr":
        return pipeline_from_args(args, lambda line: say(f"note: {line}"), fast=fast, dynamic_shapes=True)
    if fast.enabled:
        say(f"note: the speed flags apply to the fluxsr backend only, not {args.backend}")
    return make_backend(args.backend, device=args.device)


def cmd_upscale(args: argparse.Namespace) -> int:
    """Upscale, count what each process did, and say it in one line (the first process only)."""
    opts, batch, fast = upscale_settings(args)
    torch.manual_seed(args.seed)
    rank, world = process_rank()
    say = (lambda line: print(line, file=sys.stderr)) if rank == 0 else (lambda line: None)
    counts = [0, 0, 1]  # ok, skipped, failed: a process that stops early counts as a failure
    try:
        bind_local_gpu()  # one GPU per process under accelerate launch / torchrun
        backend = upscale_backend(args, fast, say)
        with sdpa_context(fast.sdpa):
            results = upscale_paths(
                backend,
                args.inputs,
                args.output,
                opts,
                batch,
                progress=not args.quiet,
                rank=rank,
                world=world,
            )
        counts = list(status_counts(results).values())
        if args.json:
            log = args.json if world == 1 else args.json.with_suffix(f".rank{rank}.json")
            settings = {k: v for k, v in vars(args).items() if k != "func"} | {"fp8": fast.fp8}
            write_log(results, log, settings)
    except BaseException as error:
        if world > 1:  # said now: the other processes may take hours to reach the end
            reason = str(error) or type(error).__name__  # KeyboardInterrupt has no text
            print(f"error (process {rank}): {reason}; waiting for the other processes", file=sys.stderr)
        raise
    finally:
        ok, skipped, failed = sum_over_processes(counts, world)  # waits for every process's share
    processes = f" ({world} processes)" if world > 1 else ""
    say(f"{ok} upscaled, {skipped} skipped, {failed} failed{processes} -> {args.output}")
    return 1 if failed else 0


def add_upscale(sub) -> None:
    """``fluxsr upscale``."""
    p = sub.add_parser("upscale", help="upscale images or folders (one step)")
    p.add_argument("inputs", nargs="+", type=Path, help="image files or folders (searched recursively)")
    p.add_argument(
        "-o", "--output", type=Path, default=Path("outputs"), help="output folder (default: outputs)"
    )
    p.add_argument("--backend", choices=("fluxsr", "bicubic", "realesrgan"), default="fluxsr")
    size = p.add_mutually_exclusive_group()
    size.add_argument(
        "-s",
        "--scale",
        type=positive_number,
        default=4.0,
        help="output/input size ratio (float > 0, default 4)",
    )
    size.add_argument(
        "--long-side", type=int, default=None, help="longer output side in pixels instead of --scale"
    )
    p.add_argument("--color-fix", choices=COLOR_FIXES, default="wavelet")
    add_tile_arguments(p, "")
    p.add_argument(
        "--tile-batch",
        type=non_negative_int,
        default=1,
        help="tiles per forward pass, each at its own position (default 1; 0: as many as memory allows, "
        "up to 4)",
    )
    add_output_arguments(p)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, default=None, help="write a JSON run log here")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    add_model_arguments(p)
    add_fast_path_arguments(p)
    p.set_defaults(func=cmd_upscale)


def add_output_arguments(p: argparse.ArgumentParser) -> None:
    """``--suffix``, ``--ext``, ``--overwrite`` and ``--max-pixels`` of ``fluxsr upscale``."""
    p.add_argument("--suffix", default="", help="added to output file stems")
    p.add_argument(
        "--ext", default="auto", help="output format: auto (same as input), png, jpg, webp, tif, bmp"
    )
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs (default: skip them)")
    p.add_argument(
        "--fidelity-map",
        action="store_true",
        help="also write <output>_fidelity.png: where the output, shrunk to the input's size, disagrees with "
        "the input (black >= 50 dB local PSNR, white <= 20 dB; README)",
    )
    p.add_argument(
        "--max-pixels",
        type=positive_int,
        default=MAX_PIXELS,
        help=f"refuse inputs (before decoding) and outputs (before upscaling) with more pixels (default "
        f"{MAX_PIXELS} = 16384 x 16384)",
    )


# -- demo --------------------------------------------------------------------------------------------------------


def demo_folder(args: argparse.Namespace) -> Path:
    """The folder to upscale: the one given, else the examples (``./examples`` or the source checkout's)."""
    if args.out.exists() and not args.out.is_dir():
        raise ValueError(f"--out {args.out}: is a file; give a folder")
    folder = args.folder if args.folder is not None else default_examples_dir()
    if folder is None:
        raise FileNotFoundError(
            "no examples folder here (./examples or the source checkout's); give a folder"
        )
    return folder


def cmd_demo(args: argparse.Namespace) -> int:
    """Bicubic and fluxsr on every image of a folder, and the side-by-side sheet."""
    opts = UpscaleOptions(scale=args.scale)
    folder = demo_folder(args)
    dataset = load_lr_only(folder, exclude=args.out)  # a rerun must not upscale the last run's outputs
    if not dataset.pairs:
        raise FileNotFoundError(f"no images to upscale under {folder}")
    factories = {"bicubic": BicubicBackend, "fluxsr": lambda: pipeline_from_args(args)}
    result = run_benchmark(
        dataset, factories, args.out, [], opts=opts, sheet_images=len(dataset.pairs), progress=not args.quiet
    )
    for run in result.runs:
        done = f"{run.n_images} images in {run.out_dir} ({run.s_per_image or 0:.2f} s/image)"
        print(f"{run.label}: {run.skipped or done}")
    for problem in result.problems:  # unreadable files, duplicate names, failed methods
        print(f"error: {problem}", file=sys.stderr)
    if result.files.get("sheet"):
        print(f"side-by-side sheet: {result.files['sheet']}")
    return 1 if result.problems else 0


def add_demo(sub) -> None:
    """``fluxsr demo``."""
    p = sub.add_parser("demo", help="upscale a folder with bicubic and fluxsr and write a side-by-side sheet")
    p.add_argument(
        "folder",
        type=Path,
        nargs="?",
        default=None,
        help="images (default: ./examples, else the examples of the fluxsr source checkout)",
    )
    p.add_argument("--out", type=Path, default=Path("outputs/demo"))
    p.add_argument(
        "-s", "--scale", type=positive_number, default=4.0, help="output/input size ratio (float > 0)"
    )
    p.add_argument("-q", "--quiet", action="store_true")
    add_model_arguments(p)
    p.set_defaults(func=cmd_demo)
