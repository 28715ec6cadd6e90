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
    offload, quantize: where the weights wait and how they are stored (``auto``/``none``/``model``/``blocks``;
        ``none``/``int8``/``fp8``: :mod:`fluxsr.inference.placement`); ``quantize`` is checked before the load.
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
    offload: str = "auto"
    quantize: str = "none"
    fast: FastPath = field(default_factory=FastPath)
    dynamic_shapes: bool = False


def load_pipeline(choice: ModelChoice, note: Callable[[str], None] | None = None) -> FluxSRPipeline:
    """The pipeline ``choice`` asks for (:meth:`FluxSRPipeline.from_pretrained`, which checks the device, dtype and
    quantisation before the possibly minutes-long load), its T_L overridden if asked; ``note`` hears each line
    worth telling the user (the model's note, a speed switch that was skipped and why). The speed switches are
    applied after the model is on its device."""
    tell = note or (lambda line: None)
    if choice.flux is not None and choice.model is not None:
        raise ValueError("give --model or --flux, not both")
    if choice.quantize != "none" and choice.fast.fp8:
        raise ValueError(f"--quantize {choice.quantize} and --fp8 both quantise the transformer: give one")
    pipe = FluxSRPipeline.from_pretrained(
        choice.flux or choice.model,
        choice.device,
        choice.dtype,
        allow_fp16=choice.allow_fp16,
        offload=choice.offload,
        quantize=choice.quantize,
        max_memory=choice.max_memory,
        ae=choice.ae,
        prompt_embeds=choice.prompt_embeds,
        lora=choice.lora,
        lora_scale=choice.lora_scale,
        merge_lora=choice.merge_lora,
    )
    if choice.t_l is not None:
        pipe.model.spec = replace(pipe.model.spec, t_l=choice.t_l)
    if pipe.model.spec.note:
        tell(pipe.model.spec.note)
    for line in apply_fast_path(pipe.model, choice.fast, static_shapes=not choice.dynamic_shapes):
        tell(line)
    return pipe
