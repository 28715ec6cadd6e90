"""The key mapping between Black Forest Labs (BFL) single files and diffusers: the FLUX transformer both ways, and
the VAE from diffusers to LDM names (diffusers' own converter does LDM -> diffusers). Every dimension is read from
the tensors, so it works for any size, the tiny test models included."""

from __future__ import annotations

import re

import torch
from torch import Tensor


def _keys(modules: list[tuple[str, str]], params: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """Full (diffusers, BFL) key pairs: each module's weight and bias, plus single parameters."""
    return [(f"{d}.{p}", f"{b}.{p}") for d, b in modules for p in ("weight", "bias")] + params


# (diffusers, BFL) names inside a double block, a single block and at the top; fused q/k/v are split apart.
_DOUBLE_KEYS = _keys(
    [
        ("norm1.linear", "img_mod.lin"),
        ("norm1_context.linear", "txt_mod.lin"),
        ("ff.net.0.proj", "img_mlp.0"),
        ("ff.net.2", "img_mlp.2"),
        ("ff_context.net.0.proj", "txt_mlp.0"),
        ("ff_context.net.2", "txt_mlp.2"),
        ("attn.to_out.0", "img_attn.proj"),
        ("attn.to_add_out", "txt_attn.proj"),
    ],
    [
        ("attn.norm_q.weight", "img_attn.norm.query_norm.scale"),
        ("attn.norm_k.weight", "img_attn.norm.key_norm.scale"),
        ("attn.norm_added_q.weight", "txt_attn.norm.query_norm.scale"),
        ("attn.norm_added_k.weight", "txt_attn.norm.key_norm.scale"),
    ],
)
_DOUBLE_QKV = {
    "img_attn": ("attn.to_q", "attn.to_k", "attn.to_v"),
    "txt_attn": ("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"),
}
_SINGLE_KEYS = _keys(
    [("norm.linear", "modulation.lin"), ("proj_out", "linear2")],
    [("attn.norm_q.weight", "norm.query_norm.scale"), ("attn.norm_k.weight", "norm.key_norm.scale")],
)
_SINGLE_LINEAR1 = ("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp")
_TOP_KEYS = _keys(
    [
        ("time_text_embed.timestep_embedder.linear_1", "time_in.in_layer"),
        ("time_text_embed.timestep_embedder.linear_2", "time_in.out_layer"),
        ("time_text_embed.text_embedder.linear_1", "vector_in.in_layer"),
        ("time_text_embed.text_embedder.linear_2", "vector_in.out_layer"),
        ("time_text_embed.guidance_embedder.linear_1", "guidance_in.in_layer"),
        ("time_text_embed.guidance_embedder.linear_2", "guidance_in.out_layer"),
        ("context_embedder", "txt_in"),
        ("x_embedder", "img_in"),
        ("proj_out", "final_layer.linear"),
    ],
    [],
)
# The final AdaLayerNorm stores (shift, scale) in BFL and (scale, shift) in diffusers.
_FINAL_NORM = _keys([("norm_out.linear", "final_layer.adaLN_modulation.1")], [])


def _swap_halves(t: Tensor) -> Tensor:
    a, b = t.chunk(2, dim=0)
    return torch.cat([b, a], dim=0)


def block_indices(keys, prefix: str) -> list[int]:
    return sorted({int(k[len(prefix) + 1 :].split(".")[0]) for k in keys if k.startswith(prefix + ".")})


def bfl_to_diffusers(sd: dict[str, Tensor]) -> dict[str, Tensor]:
    """Map a Black Forest Labs FLUX transformer state dict to diffusers names (any size; dims from the tensors)."""
    sd = {k.removeprefix("model.diffusion_model."): v for k, v in sd.items()}
    out = {d: sd[b] for d, b in _TOP_KEYS if b in sd}
    out.update({d: _swap_halves(sd[b]) for d, b in _FINAL_NORM})
    inner = sd["img_in.weight"].shape[0]
    for i in block_indices(sd, "double_blocks"):
        src, dst = f"double_blocks.{i}.", f"transformer_blocks.{i}."
        out.update({dst + d: sd[src + b] for d, b in _DOUBLE_KEYS})
        for stream, names in _DOUBLE_QKV.items():
            for p in ("weight", "bias"):
                out.update(
                    {
                        f"{dst}{n}.{p}": t
                        for n, t in zip(names, sd[f"{src}{stream}.qkv.{p}"].chunk(3), strict=True)
                    }
                )
    for i in block_indices(sd, "single_blocks"):
        src, dst = f"single_blocks.{i}.", f"single_transformer_blocks.{i}."
        out.update({dst + d: sd[src + b] for d, b in _SINGLE_KEYS})
        for p in ("weight", "bias"):
            w = sd[f"{src}linear1.{p}"]
            parts = w.split([inner, inner, inner, w.shape[0] - 3 * inner])
            out.update({f"{dst}{n}.{p}": t for n, t in zip(_SINGLE_LINEAR1, parts, strict=True)})
    return out


def diffusers_to_bfl(sd: dict[str, Tensor]) -> dict[str, Tensor]:
    """Inverse of :func:`bfl_to_diffusers`: a diffusers FLUX transformer with BFL single-file names (for export)."""
    out = {b: sd[d] for d, b in _TOP_KEYS if d in sd}
    out.update({b: _swap_halves(sd[d]) for d, b in _FINAL_NORM})
    for i in block_indices(sd, "transformer_blocks"):
        src, dst = f"transformer_blocks.{i}.", f"double_blocks.{i}."
        out.update({dst + b: sd[src + d] for d, b in _DOUBLE_KEYS})
        for stream, names in _DOUBLE_QKV.items():
            for p in ("weight", "bias"):
                out[f"{dst}{stream}.qkv.{p}"] = torch.cat([sd[f"{src}{n}.{p}"] for n in names])
    for i in block_indices(sd, "single_transformer_blocks"):
        src, dst = f"single_transformer_blocks.{i}.", f"single_blocks.{i}."
        out.update({dst + b: sd[src + d] for d, b in _SINGLE_KEYS})
        for p in ("weight", "bias"):
            out[f"{dst}linear1.{p}"] = torch.cat([sd[f"{src}{n}.{p}"] for n in _SINGLE_LINEAR1])
    return out


def vae_to_ldm(sd: dict[str, Tensor], num_blocks: int) -> dict[str, Tensor]:
    """A diffusers AutoencoderKL state dict with LDM/BFL ``ae.safetensors`` names (inverse of diffusers' converter).

    ``num_blocks`` is ``len(block_out_channels)``: LDM numbers the decoder's up blocks in reverse.
    """
    rules = [
        (r"^encoder\.down_blocks\.(\d+)\.resnets\.", lambda m: f"encoder.down.{m[1]}.block."),
        (r"^encoder\.down_blocks\.(\d+)\.downsamplers\.0\.", lambda m: f"encoder.down.{m[1]}.downsample."),
        (
            r"^decoder\.up_blocks\.(\d+)\.resnets\.",
            lambda m: f"decoder.up.{num_blocks - 1 - int(m[1])}.block.",
        ),
        (
            r"^decoder\.up_blocks\.(\d+)\.upsamplers\.0\.",
            lambda m: f"decoder.up.{num_blocks - 1 - int(m[1])}.upsample.",
        ),
        (r"\.mid_block\.resnets\.(\d+)\.", lambda m: f".mid.block_{int(m[1]) + 1}."),
        (r"\.mid_block\.attentions\.0\.", lambda m: ".mid.attn_1."),
        (r"conv_shortcut", lambda m: "nin_shortcut"),
        (r"conv_norm_out", lambda m: "norm_out"),
        (r"attn_1\.group_norm", lambda m: "attn_1.norm"),
        (r"attn_1\.to_out\.0", lambda m: "attn_1.proj_out"),
        (r"attn_1\.to_([qkv])\.", lambda m: f"attn_1.{m[1]}."),
    ]
    out = {}
    for key, t in sd.items():
        for pattern, repl in rules:
            key = re.sub(pattern, repl, key)
        if ".attn_1." in key and key.endswith("weight") and t.ndim == 2:
            t = t[:, :, None, None]  # LDM stores the attention projections as 1x1 convolutions
        out[key] = t
    return out
