"""Find a model from a name or path: the presets, a fluxsr model folder, or FLUX.1-dev weights (a diffusers
folder or a Black Forest Labs single file) with their cached prompt embeddings, plus an optional user LoRA."""

from __future__ import annotations

from pathlib import Path

import torch

from ..io.hub import EMBEDS_FILE, LORA_FILE, hub_model_path
from .flux_dev import check_flux, load_flux
from .folders import is_model_folder, load_model_folder
from .lora import apply_lora
from .model import FluxSRModel, ModelSpec, TextCond
from .presets import BUNDLED_MODEL, PRESETS, build_random_flux, build_tiny


def load_model(  # noqa: PLR0913 (public Python API, docs/architecture.md)
    name: str | Path | None = None,
    *,
    ae: Path | None = None,
    prompt_embeds: Path | None = None,
    lora: Path | None = None,
    lora_scale: float = 1.0,
    merge_lora: bool = True,
    spec: ModelSpec | None = None,
    device=None,
    dtype=None,
    text_len: int = 512,
    widen_later: bool = False,
) -> FluxSRModel:
    """Resolve a model name or path to a :class:`FluxSRModel` on the CPU, its weights read straight into ``dtype``
    (default float32: no float32 copy of a bf16 FLUX.1-dev when ``dtype=torch.bfloat16``); read as stored, they stay
    views of the memory-mapped files, one page-cache copy shared by a node's processes. ``widen_later``: weights
    stored narrower than ``dtype`` are read as stored, for the caller to widen on its move to the device
    (:func:`fluxsr.model.flux_dev.read_dtype`); a LoRA is then merged in the stored dtype.

    - ``None`` or ``"bundled"``: the small model shipped inside the package;
    - ``"tiny"``: random-weight tiny FLUX (tests);
    - ``"flux-dev-random"``: FLUX.1-dev-shaped random weights made on ``device`` in ``dtype`` with ``text_len``
      text tokens (benchmarks; the only preset not returned in fp32 on the CPU);
    - a fluxsr model folder (has ``fluxsr.json``);
    - a diffusers FLUX.1-dev folder (``transformer/``, ``vae/``) with ``prompt_embeds`` (default: the folder's
      ``prompt_embeds.safetensors``, written by ``fluxsr embed-prompt``);
    - a BFL single file ``flux1-dev.safetensors`` with ``ae`` (default: ``ae.safetensors`` beside it);
    - a Hugging Face repo id ``org/name[@revision]`` of one of these folders (:mod:`fluxsr.io.hub`).
    ``lora`` adds a FluxSR LoRA file (merged into the weights unless ``merge_lora=False``). Paths may start with
    ``~``. ``ae`` / ``prompt_embeds`` given where they would not be used, or a ``lora_scale`` with no LoRA to
    scale, are a ValueError rather than silently ignored.
    """
    name = hub_model_path(name, PRESETS)  # a Hub repo id -> its cached snapshot; a local path wins
    ae, prompt_embeds, lora = (Path(p).expanduser() if p else None for p in (ae, prompt_embeds, lora))
    key = "bundled" if name is None else str(name)
    path = None if key in PRESETS else Path(name).expanduser()
    if path is not None and not path.exists():
        raise FileNotFoundError(f"model {name!r}: no such file or folder (or preset: {', '.join(PRESETS)})")
    folder = (
        BUNDLED_MODEL if key == "bundled" else path if path is not None and is_model_folder(path) else None
    )
    check_load_arguments(key, path, folder, ae, prompt_embeds, lora, lora_scale)
    if key == "tiny":
        model = build_tiny()
    elif key == "flux-dev-random":
        model = build_random_flux(device or "cpu", dtype or torch.float32, text_len)
    elif key == "bundled" and not is_model_folder(BUNDLED_MODEL):
        raise FileNotFoundError("the bundled model is not installed with this copy of fluxsr")
    elif folder is not None:
        model = load_model_folder(
            folder, lora_scale=lora_scale, merge_lora=merge_lora, dtype=dtype, widen_later=widen_later
        )
    else:
        model = load_flux_with_embeds(path, prompt_embeds, spec, dtype, ae, widen_later)
    if spec is not None:
        model.spec = spec
    if lora is not None:  # its own adapter name: a model folder may already carry a LoRA named "fluxsr"
        apply_lora(model.transformer, lora, scale=lora_scale, merge=merge_lora, adapter="user")
    return model


def check_load_arguments(
    key: str,
    path: Path | None,
    folder: Path | None,
    ae: Path | None,
    prompt_embeds: Path | None,
    lora: Path | None,
    lora_scale: float,
) -> None:
    """ValueError for an ``ae`` / ``prompt_embeds`` given where :func:`load_model` would not use it, or a
    ``lora_scale`` with no LoRA to scale (no ``lora`` and no ``lora.safetensors`` kept in the model folder)."""
    if ae is not None and not (path is not None and path.is_file()):
        raise ValueError(
            f"an autoencoder file (--ae, recipe model.ae) applies to a Black Forest Labs single file "
            f"(flux1-dev.safetensors) only, not to {key}"
        )
    if prompt_embeds is not None and (path is None or folder is not None):
        raise ValueError(
            f"prompt embeddings (--prompt-embeds, recipe model.prompt_embeds) apply to FLUX.1-dev "
            f"weights (a diffusers folder or a single file); {key} carries its own"
        )
    if lora_scale != 1.0 and lora is None and not (folder is not None and (folder / LORA_FILE).is_file()):
        raise ValueError(
            "--lora-scale: there is no LoRA to scale (give --lora FILE; a model folder's LoRA counts "
            "only when it is kept as lora.safetensors, not merged)"
        )


def load_flux_with_embeds(
    path: Path,
    prompt_embeds: Path | None,
    spec: ModelSpec | None,
    dtype: torch.dtype | None,
    ae: Path | None,
    widen_later: bool = False,
) -> FluxSRModel:
    """FLUX.1-dev weights at ``path`` (a diffusers folder or a BFL single file) with the prompt embeddings
    ``prompt_embeds`` (default: ``prompt_embeds.safetensors`` beside the weights): the weights are checked first
    (a wrong folder or file is the first thing to say), then the embeddings, then the weights are read."""
    check_flux(path)
    embeds = prompt_embeds or (path if path.is_dir() else path.parent) / EMBEDS_FILE
    if not embeds.is_file():
        raise FileNotFoundError(
            f"{embeds} not found: compute the prompt embeddings once with "
            f"`fluxsr embed-prompt --flux DIR --out {embeds}` (or pass --prompt-embeds FILE)"
        )
    cond = TextCond.load(embeds)
    model = load_flux(path, cond, spec, dtype, ae, widen_later)
    cond.check_fits(model.transformer, embeds)
    return model
