"""FLUX attention with one rotary embedding per sample: several tiles of one image in one forward pass.

diffusers' ``FluxTransformer2DModel`` takes one set of position ids for the whole batch, but each tile of a tiled
image sits at its own place in the whole image (:func:`fluxsr.model.flow.img_ids` with the tile's offset), and FLUX's
image-text attention depends on that absolute place (text tokens sit at position 0). :class:`TileAttnProcessor`
replaces the attention processors: given ``tile_rope`` (per-sample cos/sin, through ``joint_attention_kwargs``) it
rotates every sample's queries and keys by its own positions; without it, it is diffusers' processor unchanged.

Rotary embedding as in FLUX (pairs of channels are complex numbers): ``rope(x) = x * cos + rot(x) * sin`` with
``rot(x)[2i] = -x[2i+1]``, ``rot(x)[2i+1] = x[2i]``, in float32.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor


def rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate ``x`` (B, S, H, D) by per-sample angles: ``cos``/``sin`` (B, S, D), channel pairs as complex numbers."""
    xf = x.float()
    pairs = rearrange(xf, "... (d two) -> ... d two", two=2)
    rotated = torch.stack((-pairs[..., 1], pairs[..., 0]), dim=-1).flatten(-2)
    return (xf * cos[:, :, None] + rotated * sin[:, :, None]).to(x.dtype)


def tile_rope(pos_embed: torch.nn.Module, ids: Tensor) -> tuple[Tensor, Tensor]:
    """Per-sample (cos, sin), each (B, S, D), from position ids (B, S, 3) through the transformer's ``pos_embed``."""
    b = ids.shape[0]
    cos, sin = pos_embed(rearrange(ids, "b s c -> (b s) c"))
    return rearrange(cos, "(b s) d -> b s d", b=b), rearrange(sin, "(b s) d -> b s d", b=b)


def _heads(x: Tensor, head_dim: int) -> Tensor:
    return rearrange(x, "b s (h d) -> b s h d", d=head_dim)


class TileAttnProcessor:
    """diffusers' FLUX attention processor, plus per-sample rotary embeddings when ``tile_rope`` is given.

    Joint blocks (text and image streams): text queries/keys/values are prepended to the image ones, as in FLUX;
    single blocks get the already concatenated sequence. ``tile_rope`` covers the whole sequence (text first).
    Without ``tile_rope`` it calls the diffusers processor it holds (imported when the first one is made, as the
    model layer imports diffusers only where it builds or loads a model: ``fluxsr --help`` does not pay for it);
    diffusers' attention-backend settings reach that processor.
    """

    def __init__(self):
        from diffusers.models.transformers.transformer_flux import FluxAttnProcessor

        self.plain = FluxAttnProcessor()

    @property
    def _attention_backend(self):
        return self.plain._attention_backend

    @_attention_backend.setter
    def _attention_backend(self, value) -> None:
        self.plain._attention_backend = value

    @property
    def _parallel_config(self):
        return self.plain._parallel_config

    @_parallel_config.setter
    def _parallel_config(self, value) -> None:
        self.plain._parallel_config = value

    def __call__(
        self,
        attn,
        hidden_states: Tensor,
        encoder_hidden_states: Tensor | None = None,
        attention_mask: Tensor | None = None,
        image_rotary_emb=None,
        tile_rope: tuple[Tensor, Tensor] | None = None,
    ):
        if tile_rope is None:
            return self.plain(attn, hidden_states, encoder_hidden_states, attention_mask, image_rotary_emb)
        d = attn.head_dim
        q = attn.norm_q(_heads(attn.to_q(hidden_states), d))
        k = attn.norm_k(_heads(attn.to_k(hidden_states), d))
        v = _heads(attn.to_v(hidden_states), d)
        if encoder_hidden_states is not None:
            q = torch.cat((attn.norm_added_q(_heads(attn.add_q_proj(encoder_hidden_states), d)), q), dim=1)
            k = torch.cat((attn.norm_added_k(_heads(attn.add_k_proj(encoder_hidden_states), d)), k), dim=1)
            v = torch.cat((_heads(attn.add_v_proj(encoder_hidden_states), d), v), dim=1)
        cos, sin = tile_rope
        q, k = rope(q, cos, sin), rope(k, cos, sin)
        out = F.scaled_dot_product_attention(
            *(rearrange(a, "b s h d -> b h s d") for a in (q, k, v)), attn_mask=attention_mask
        )
        out = rearrange(out, "b h s d -> b s (h d)").to(q.dtype)
        if encoder_hidden_states is None:
            return out
        txt, img = out.split((encoder_hidden_states.shape[1], hidden_states.shape[1]), dim=1)
        return attn.to_out[1](attn.to_out[0](img.contiguous())), attn.to_add_out(txt.contiguous())


def install(transformer: torch.nn.Module) -> None:
    """Give every attention module of a diffusers FLUX transformer a :class:`TileAttnProcessor` (idempotent)."""
    if not installed(transformer):
        transformer.set_attn_processor(TileAttnProcessor())


def installed(transformer: torch.nn.Module) -> bool:
    """True when every attention module already runs :class:`TileAttnProcessor`."""
    return all(isinstance(p, TileAttnProcessor) for p in transformer.attn_processors.values())
