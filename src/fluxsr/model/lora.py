"""FluxSR LoRA with peft: attach a trainable LoRA, read its weights, save them with their config, and apply a
saved LoRA (merged into the weights, or active beside the LoRAs already there)."""

from __future__ import annotations

import json
import re
from pathlib import Path

from torch import Tensor

from ..io.cache import atomic_save_safetensors, read_safetensors

DEFAULT_LORA_TARGETS = (
    "to_q",
    "to_k",
    "to_v",
    "to_out.0",
    "add_q_proj",
    "add_k_proj",
    "add_v_proj",
    "to_add_out",
    "ff.net.0.proj",
    "ff.net.2",
    "ff_context.net.0.proj",
    "ff_context.net.2",
    "proj_mlp",
    "proj_out",
)


def add_lora(
    transformer,
    rank: int,
    alpha: float,
    targets: tuple[str, ...] = DEFAULT_LORA_TARGETS,
    adapter: str = "fluxsr",
) -> dict:
    """Attach a trainable LoRA to ``transformer`` with peft; returns the LoRA config dict (stored with the weights).

    Targets are module-name suffixes; the top-level ``proj_out`` is excluded so only block projections adapt.
    """
    from peft import LoraConfig

    pattern = (
        r".*(transformer_blocks|single_transformer_blocks)\.\d+\.(attn\.)?("
        + "|".join(re.escape(t) for t in targets)
        + r")$"
    )
    cfg = dict(r=rank, lora_alpha=alpha, target_modules=pattern, init_lora_weights=True)
    transformer.add_adapter(LoraConfig(**cfg), adapter_name=adapter)
    return cfg


def lora_state_dict(transformer, adapter: str = "fluxsr") -> dict[str, Tensor]:
    """The LoRA weights of ``adapter`` (peft names without the adapter suffix)."""
    from peft import get_peft_model_state_dict

    return {
        k: v.detach().cpu() for k, v in get_peft_model_state_dict(transformer, adapter_name=adapter).items()
    }


def save_lora(state: dict[str, Tensor], config: dict, path: Path) -> None:
    """Save LoRA weights as safetensors, with the LoRA config as JSON metadata (``lora_config``)."""
    atomic_save_safetensors(
        state, Path(path), metadata={"lora_config": json.dumps(config), "format": "fluxsr-lora"}
    )


def apply_lora(
    transformer, path: Path, *, scale: float = 1.0, merge: bool = False, adapter: str = "fluxsr"
) -> None:
    """Load a FluxSR LoRA file onto ``transformer`` as ``adapter``; ``merge=True`` folds it into the base weights
    (faster). Unmerged, every unmerged LoRA on the transformer stays active, each at ``scale``."""
    from peft import LoraConfig, set_peft_model_state_dict

    state, meta = read_safetensors(Path(path))
    if "lora_config" not in meta:
        raise ValueError(f"{path}: not a fluxsr LoRA file (no 'lora_config' metadata)")
    cfg = json.loads(meta["lora_config"])
    active = list(transformer.active_adapters()) if getattr(transformer, "peft_config", None) else []
    grads = {n: p.requires_grad for n, p in transformer.named_parameters()}  # before peft switches adapters
    transformer.add_adapter(LoraConfig(**cfg), adapter_name=adapter)
    try:
        result = set_peft_model_state_dict(transformer, state, adapter_name=adapter)
    except RuntimeError as e:  # size mismatches: a LoRA trained on another transformer
        first = next(
            (line for line in str(e).splitlines() if "size mismatch" in line), str(e).splitlines()[0]
        )
        raise ValueError(
            f"{path}: LoRA shapes do not match this transformer ({first.strip()[:200]})"
        ) from None
    missing = [k for k in getattr(result, "unexpected_keys", []) if "lora" in k]
    if missing:
        raise ValueError(
            f"{path}: {len(missing)} LoRA tensors do not match this transformer, e.g. {missing[0]}"
        )
    if merge:
        transformer.fuse_lora(lora_scale=scale, adapter_names=[adapter])
        transformer.unload_lora()
    else:
        _activate_alongside(transformer, active, adapter, scale, grads)


def _activate_alongside(
    transformer, active: list[str], adapter: str, scale: float, grads: dict[str, bool]
) -> None:
    """Adding an adapter makes it the only active one: make ``active`` (the adapters active before, with their
    scales untouched) and ``adapter`` (at ``scale``, frozen) active together; other parameters get back their
    ``requires_grad`` from ``grads`` (taken before the adapter was added)."""
    from peft.tuners.lora import LoraLayer

    for module in transformer.modules():
        if isinstance(module, LoraLayer):
            module.set_adapter([*active, adapter])  # names a layer lacks are skipped in its forward
            if adapter in module.lora_A:
                module.set_scale(adapter, scale)
    for n, p in transformer.named_parameters():  # peft marks the active adapters trainable: undo that
        p.requires_grad_(grads.get(n, False))
