"""fluxsr model folders (the format :func:`save_model_folder` writes and ``fluxsr`` loads by name)::

    fluxsr.json                  # ModelSpec: T_L, guidance, ... (what inference needs besides weights)
    transformer/                 # diffusers FluxTransformer2DModel (config.json + safetensors)
    vae/                         # diffusers AutoencoderKL in the FLUX layout
    prompt_embeds.safetensors    # cached T5 / CLIP embeddings: text encoders never load at inference
    lora.safetensors             # optional: a FluxSR LoRA applied on top of transformer/

A LoRA-only folder has no ``transformer/``: its spec's ``base`` (and ``ae``) name the weights the LoRA applies to.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import torch

from ..io.hub import EMBEDS_FILE, LORA_FILE, SPEC_FILE, base_path
from .flux_dev import check_flux, check_flux_folder, load_flux, pretrained_parts
from .lora import apply_lora, save_lora
from .model import FluxSRModel, ModelSpec, TextCond


def save_model_folder(
    model: FluxSRModel, path: Path, *, lora_state: dict | None = None, lora_config: dict | None = None
) -> Path:
    """Write ``model`` as a fluxsr model folder (see module docstring). Returns ``path``."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    model.transformer.save_pretrained(path / "transformer", safe_serialization=True)
    model.vae.save_pretrained(path / "vae", safe_serialization=True)
    model.cond.save(path / EMBEDS_FILE)
    if lora_state is not None:
        save_lora(lora_state, lora_config or {}, path / LORA_FILE)
    (path / SPEC_FILE).write_text(json.dumps(asdict(model.spec), indent=2) + "\n")
    return path


def is_model_folder(path: Path) -> bool:
    """True for a fluxsr model folder (it has ``fluxsr.json``)."""
    return (Path(path) / SPEC_FILE).is_file()


def is_model_dir(path: Path) -> bool:
    """True for a folder :func:`load_model` loads: a fluxsr model folder or a diffusers FLUX folder."""
    path = Path(path)
    if is_model_folder(path):
        return True
    try:
        check_flux_folder(path)
    except FileNotFoundError:
        return False
    return True


def load_model_folder(
    path: Path,
    *,
    lora_scale: float = 1.0,
    merge_lora: bool = True,
    dtype: torch.dtype | None = None,
    widen_later: bool = False,
) -> FluxSRModel:
    """Load a fluxsr model folder on the CPU in ``dtype`` (default float32; ``widen_later``: see
    :func:`fluxsr.model.flux_dev.read_dtype`; move with :func:`to_device`)."""
    path = Path(path)
    if not is_model_folder(path):
        raise FileNotFoundError(f"{path} is not a fluxsr model folder (no {SPEC_FILE})")
    spec = ModelSpec.read(path)
    cond = TextCond.load(path / EMBEDS_FILE)
    if (path / "transformer").is_dir():
        model = FluxSRModel(*pretrained_parts(path, dtype, widen_later), cond, spec)
    elif spec.base:
        base = base_path(path, spec.base)  # an absolute base stays absolute; a Hub repo id is fetched
        if is_model_folder(base):  # a LoRA on a model folder (itself possibly with a LoRA)
            model = load_model_folder(base, dtype=dtype, widen_later=widen_later)
            model.cond, model.spec = cond, spec
        else:
            check_flux(base)
            ae = path / Path(spec.ae).expanduser() if spec.ae else None
            model = load_flux(base, cond, spec, dtype, ae, widen_later)
    else:
        raise FileNotFoundError(f"{path}: no transformer/ folder and no 'base' in {SPEC_FILE}")
    if (path / LORA_FILE).is_file():
        apply_lora(model.transformer, path / LORA_FILE, scale=lora_scale, merge=merge_lora)
    return model
