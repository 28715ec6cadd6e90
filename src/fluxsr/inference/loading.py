"""A pipeline from what a user chose: the model (bundled, a model folder, FLUX.1-dev as a diffusers folder or a BFL
single file, plus a LoRA), the device and dtype, the speed switches and the memory cap.

One function, :func:`load_pipeline`, serves every front end: the command line (``fluxsr upscale``, ``demo``,
``benchmark``, ``serve``) and the ComfyUI loader node. Each front end turns its own widgets or flags into a
:class:`ModelChoice` and prints the notes it is handed its own way.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from ..model.loader import load_model
from ..model.model import FluxSRModel
from .fastpath import FastPath, apply_fast_path
from .pipeline import FluxSRPipeline


@dataclass(frozen=True)
class ModelChoice:
    """What to load and where to run it.

    model: ``None`` or ``"bundled"`` (the small model inside the package), ``"tiny"``, a fluxsr model folder, a
        diffusers FLUX.1-dev folder or a ``flux1-dev.safetensors`` file (:func:`fluxsr.model.loader.load_model`).
    flux: FLUX.1-dev weights named apart from ``model`` (the command line's ``--flux``); not both.
    ae: ``ae.safetensors`` for a single-file FLUX (default: the one beside it).
    prompt_embeds: cached prompt embeddings (``fluxsr embed-prompt``; default: beside the weights).
    lora, lora_scale, merge_lora: a FluxSR LoRA file, its strength, merged into the weights or kept apart.
    t_l: overrides the model's T_L (strictly between 0 and 1).
    device, dtype, allow_fp16: where to run (default: CUDA if available, bf16 there, fp32 elsewhere); fp16 only
        when allowed (FLUX overflows to black images in it).
    max_memory: memory cap of the tile planner in bytes, weights included (None: what is free).
    fast: the GPU speed switches applied after the load; ``dynamic_shapes`` lets torch.compile turn to one
        dynamic-shape graph (a folder of images of many sizes) instead of one graph per tile shape.
    """

    model: str | Path | None = None
    flux: Path | None = None
    ae: Path | None = None
    prompt_embeds: Path | None = None
    lora: Path | None = None
    lora_scale: float = 1.0
    merge_lora: bool = True
    t_l: float | None = None
    device: str | torch.device | None = None
    dtype: torch.dtype | None = None
    allow_fp16: bool = False
    max_memory: int | None = None
    fast: FastPath = field(default_factory=FastPath)
    dynamic_shapes: bool = False


def load_chosen_model(choice: ModelChoice, dtype: torch.dtype | None = None) -> FluxSRModel:
    """The model that ``choice`` names, on the CPU, read straight into ``dtype``, its T_L overridden if asked."""
    if choice.flux is not None and choice.model is not None:
        raise ValueError("give --model or --flux, not both")
    model = load_model(
        choice.flux or choice.model,
        ae=choice.ae,
        prompt_embeds=choice.prompt_embeds,
        lora=choice.lora,
        lora_scale=choice.lora_scale,
        merge_lora=choice.merge_lora,
        dtype=dtype,
    )
    if choice.t_l is not None:
        model.spec = replace(model.spec, t_l=choice.t_l)
    return model


def load_pipeline(choice: ModelChoice, note: Callable[[str], None] | None = None) -> FluxSRPipeline:
    """The pipeline ``choice`` asks for; ``note`` hears each line worth telling the user (the model's note, a
    speed switch that was skipped and why).

    The device and dtype are checked before the (possibly minutes-long) load; the speed switches are applied
    after the model is on its device.
    """
    tell = note or (lambda line: None)
    device, dtype = FluxSRPipeline.settings(choice.device, choice.dtype, choice.allow_fp16)
    pipe = FluxSRPipeline(load_chosen_model(choice, dtype), device, dtype, allow_fp16=choice.allow_fp16)
    pipe.max_memory = choice.max_memory
    pipe.name = f"fluxsr:{pipe.model.spec.name}"
    if pipe.model.spec.note:
        tell(pipe.model.spec.note)
    for line in apply_fast_path(pipe.model, choice.fast, static_shapes=not choice.dynamic_shapes):
        tell(line)
    return pipe
