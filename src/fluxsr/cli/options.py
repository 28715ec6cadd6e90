"""What several commands share: the argument types (one copy each), the model options and the pipeline they name,
the tile options, the speed flags, the device.

An argument type refuses a bad value with one line (``argument --tile: tile must be >= 1 output pixel, got -5``)
before anything loads.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import TypeVar

import torch

from ..inference.fastpath import COMPILE_MODES, SDPA_BACKENDS, FastPath
from ..inference.loading import ModelChoice, load_pipeline
from ..inference.memory import parse_bytes
from ..inference.pipeline import FluxSRPipeline, resolve_device
from ..inference.placement import OFFLOAD_CHOICES
from ..inference.quantize import QUANTIZE_MODES
from ..inference.tiling import check_tile_overlap

T = TypeVar("T")
R = TypeVar("R")

TORCH_DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32, "fp16": torch.float16}
"""``--dtype`` names (the order of ``fluxsr bench``'s choices; the model options list them sorted)."""

# -- argument types ----------------------------------------------------------------------------------------------


def integer(text: str) -> int:
    """A whole number, or a one-line error."""
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None


def number(text: str) -> float:
    """A number, or a one-line error."""
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None


def as_argument_error(parse: Callable[[T], R], value: T) -> R:
    """``parse(value)``, its ValueError turned into the argument's one-line error."""
    try:
        return parse(value)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _at_least(text: str, low: int) -> int:
    value = integer(text)
    if value < low:
        raise argparse.ArgumentTypeError(f"must be >= {low}, got {value}")
    return value


def positive_int(text: str) -> int:
    """An integer >= 1."""
    return _at_least(text, 1)


def non_negative_int(text: str) -> int:
    """An integer >= 0."""
    return _at_least(text, 0)


def positive_number(text: str) -> float:
    """A finite number > 0 (``--scale``: the output size is capped by ``--max-pixels`` where there is one)."""
    value = number(text)
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text}")
    return value


def open_unit(text: str) -> float:
    """A number strictly between 0 and 1."""
    value = number(text)
    if not 0 < value < 1:  # NaN fails too
        raise argparse.ArgumentTypeError(f"must be strictly between 0 and 1, got {text}")
    return value


def port(text: str) -> int:
    """A TCP port number, 0 to 65535."""
    value = integer(text)
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be in 0..65535, got {value}")
    return value


def memory_size(text: str) -> int:
    """Bytes from ``40GiB``, ``512MiB``, ``8G`` (:func:`fluxsr.inference.memory.parse_bytes`)."""
    return as_argument_error(parse_bytes, text)


def tile_edge(text: str) -> int:
    """A tile edge in output pixels, >= 1 (:func:`fluxsr.inference.tiling.check_tile_overlap`)."""
    value = integer(text)
    as_argument_error(lambda v: check_tile_overlap(v, None), value)
    return value


def tile_overlap(text: str) -> int:
    """A tile overlap in output pixels, >= 0 (at most half the tile: checked with the tile)."""
    value = integer(text)
    as_argument_error(lambda v: check_tile_overlap(None, v), value)
    return value


# -- shared options -----------------------------------------------------------------------------------------------


def add_model_arguments(p: argparse.ArgumentParser) -> None:
    """The ``model`` group: which weights, LoRA, T_L, device, dtype, memory cap."""
    g = p.add_argument_group("model")
    g.add_argument(
        "--model",
        default=None,
        help="'bundled' (default), 'tiny', a fluxsr model folder, a diffusers FLUX.1-dev folder, a "
        "flux1-dev.safetensors file, or a Hugging Face repo id org/name[@revision] of such a folder",
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
    g.add_argument("--t-l", type=open_unit, default=None, help="override the model's T_L (between 0 and 1)")
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
    g.add_argument(
        "--offload",
        choices=OFFLOAD_CHOICES,
        default="auto",
        help="keep weights in CPU RAM until they run: 'model' (transformer or VAE on the GPU at a time), 'blocks' "
        "(one transformer block at a time, prefetched); auto: the least that fits --max-memory / free memory",
    )
    g.add_argument(
        "--quantize",
        choices=QUANTIZE_MODES,
        default="none",
        help="weight-only quantisation of the transformer (torchao: pip install 'fluxsr[quant]'): int8 (CPU, "
        "CUDA), fp8 (CUDA compute capability 8.9+)",
    )


def add_tile_arguments(p: argparse.ArgumentParser, which: str) -> None:
    """``--tile`` and ``--overlap`` (``which``: the backend they apply to, in the help), with their ranges."""
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


def add_fast_path_arguments(p: argparse.ArgumentParser) -> None:
    """The speed flags, one argument group (``fluxsr bench`` and ``fluxsr upscale``)."""
    g = p.add_argument_group("speed (GPU)")
    g.add_argument("--sdpa", choices=SDPA_BACKENDS, default="auto", help="attention kernel")
    how = g.add_mutually_exclusive_group()
    how.add_argument(
        "--compile",
        dest="compile",
        action="store_const",
        const="regional",
        default="",
        help="regional torch.compile: the transformer's repeated blocks (first image takes minutes)",
    )
    how.add_argument(
        "--compile-full",
        dest="compile",
        action="store_const",
        const="full",
        help="torch.compile the whole transformer instead",
    )
    g.add_argument(
        "--compile-mode",
        choices=COMPILE_MODES,
        default="default",
        help="torch.compile mode of the transformer (reduce-overhead: CUDA graphs); --compile-vae always "
        "uses the default mode",
    )
    g.add_argument("--compile-vae", action="store_true", help="torch.compile the VAE encoder and decoder")
    g.add_argument("--channels-last-vae", action="store_true", help="VAE in channels-last layout")
    g.add_argument(
        "--fp8", action="store_true", help="float8 transformer linears via torchao (if importable)"
    )


# -- from parsed arguments ----------------------------------------------------------------------------------------


def fast_path_from_args(args: argparse.Namespace) -> FastPath:
    """The switches from parsed flags; ``--compile-mode`` without ``--compile``/``--compile-full`` is an error."""
    if args.compile_mode != "default" and not args.compile:
        raise ValueError("--compile-mode needs --compile or --compile-full")
    return FastPath(
        args.sdpa, args.compile, args.compile_vae, args.channels_last_vae, args.fp8, args.compile_mode
    )


def torch_dtype(name: str | None) -> torch.dtype | None:
    """``bf16`` -> ``torch.bfloat16``; None stays None (the device's default)."""
    return TORCH_DTYPES[name] if name else None


def device_from_args(args: argparse.Namespace) -> str:
    """``--device`` (checked to exist here), or CUDA when available, else the CPU."""
    return str(resolve_device(args.device))


def model_choice(args: argparse.Namespace) -> ModelChoice:
    """The :class:`~fluxsr.inference.loading.ModelChoice` that the model options name."""
    return ModelChoice(
        model=args.model,
        flux=args.flux,
        ae=args.ae,
        prompt_embeds=args.prompt_embeds,
        lora=args.lora,
        lora_scale=args.lora_scale,
        merge_lora=not args.no_merge_lora,
        t_l=args.t_l,
        device=args.device,
        dtype=torch_dtype(args.dtype),
        allow_fp16=args.force_fp16,
        max_memory=args.max_memory,
        offload=args.offload,
        quantize=args.quantize,
    )


def print_note(line: str) -> None:
    """``note: ...`` on stderr."""
    print(f"note: {line}", file=sys.stderr)


def pipeline_from_args(
    args: argparse.Namespace, note: Callable[[str], None] = print_note, **changes
) -> FluxSRPipeline:
    """Load the pipeline the model options name (``changes``: other :class:`ModelChoice` fields, e.g. the speed
    switches); its notes go to ``note``."""
    return load_pipeline(replace(model_choice(args), **changes), note)
