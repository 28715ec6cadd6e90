"""The student a run trains and what it exports: the base model with its trainable part (LoRA or every
transformer weight, frozen VAE), the TV-LPIPS loss network, and the ``RUN/final`` model folder."""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, replace
from pathlib import Path

import torch

from ..losses.lpips import LPIPS, load_lpips
from ..losses.tv_lpips import TVLPIPS
from ..model.folders import save_model_folder
from ..model.loader import load_model
from ..model.lora import add_lora, lora_state_dict, save_lora
from ..model.model import FluxSRModel, ModelSpec, move
from .recipe import Recipe


def build_student(
    recipe: Recipe, device=None, dtype=None, widen_later: bool = False
) -> tuple[FluxSRModel, bool]:
    """Base model with its trainable part (LoRA via peft, or every transformer weight); VAE frozen. A LoRA trains
    on a frozen base read in ``dtype`` (the mixed-precision dtype); full fine-tuning keeps float32 master weights,
    which with ``widen_later`` are read as stored (a bf16 base stays memory-mapped, shared by the node's processes)
    and widened as :func:`fluxsr.training.loop.place_student` moves them to the device."""
    m = recipe.model
    lora = recipe.train.lora_rank > 0
    model = load_model(
        m.base,
        ae=Path(m.ae) if m.ae else None,
        prompt_embeds=Path(m.prompt_embeds) if m.prompt_embeds else None,
        device=device,
        dtype=dtype if lora else torch.float32,
        text_len=recipe.pairs.text_len,
        widen_later=widen_later and not lora,
    )
    model.spec = replace(model.spec, t_l=m.t_l, guidance=m.guidance)
    model.vae.requires_grad_(False).eval()
    model.transformer.requires_grad_(False)
    if lora:
        add_lora(
            model.transformer, recipe.train.lora_rank, recipe.train.lora_alpha, recipe.train.lora_targets
        )
    else:
        model.transformer.requires_grad_(True)
    return model, lora


def build_lpips(recipe: Recipe, device) -> TVLPIPS:
    """TV-LPIPS with ``loss.lpips_net``'s weights ('random-vgg': a seeded random VGG, for tests)."""
    net = recipe.loss.lpips_net
    if net == "random-vgg":
        torch.manual_seed(0)
        lp = LPIPS("vgg").to(device)
    else:
        lp = load_lpips(net, device)
    return TVLPIPS(lp, recipe.loss.tv_gamma).to(device)


def export(model: FluxSRModel, transformer, recipe: Recipe, lora: bool, out: Path, *, t_l: float) -> Path:
    """Write a fluxsr model folder that ``fluxsr upscale --model`` loads directly.

    Small bases (and ``export.merge_lora``): a self-contained folder with the LoRA merged into the transformer.
    FLUX.1-dev-sized bases: ``lora.safetensors`` + cached embeddings + ``fluxsr.json`` pointing at the base weights.
    """
    ex = recipe.export
    spec = ModelSpec(
        t_l=t_l,
        guidance=recipe.model.guidance,
        name=ex.name or f"fluxsr-{Path(recipe.model.base).name}",
        description=ex.description,
        note=ex.note or model.spec.note,
        tile=ex.tile,
        overlap=ex.overlap,
    )
    big = sum(p.numel() for p in transformer.parameters()) > 1e9
    shutil.rmtree(out, ignore_errors=True)
    if lora and big and not recipe.export.merge_lora:
        out.mkdir(parents=True)
        cfg = {
            "r": recipe.train.lora_rank,
            "lora_alpha": recipe.train.lora_alpha,
            "target_modules": transformer.peft_config["fluxsr"].target_modules,
            "init_lora_weights": True,
        }
        if isinstance(cfg["target_modules"], set):
            cfg["target_modules"] = sorted(cfg["target_modules"])
        save_lora(lora_state_dict(transformer), cfg, out / "lora.safetensors")
        model.cond.to("cpu", torch.float32).save(out / "prompt_embeds.safetensors")
        base = str(Path(recipe.model.base).resolve())
        spec = replace(spec, base=base, ae=str(Path(recipe.model.ae).resolve()) if recipe.model.ae else "")
        (out / "fluxsr.json").write_text(json.dumps(asdict(spec), indent=2) + "\n")
        return out
    tr = transformer
    if lora:
        tr.fuse_lora(adapter_names=["fluxsr"])
        tr.unload_lora()
    tr = move(tr, "cpu", torch.float32)
    if tr.is_gradient_checkpointing:
        tr.disable_gradient_checkpointing()
    save_model_folder(
        FluxSRModel(tr, move(model.vae, "cpu", torch.float32), model.cond.to("cpu", torch.float32), spec), out
    )
    return out
