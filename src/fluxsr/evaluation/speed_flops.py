"""The FLOP floor of the speed bench (``fluxsr bench``): matmul FLOPs of the FLUX transformer blocks (all linears,
attention ``QK^T`` and ``AV``) counted from the config and the tokens of every tile the pipeline runs, and the
time they take at a given peak TFLOP/s."""

from __future__ import annotations

from ..inference.tiling import latent_tiles, snapped, tile_count


def _linear(tokens: int, fan_in: int, fan_out: int) -> int:
    return 2 * tokens * fan_in * fan_out


def transformer_flops(config, img_tokens: int, txt_tokens: int, mlp_ratio: float = 4.0) -> dict[str, int]:
    """Matmul FLOPs of one FluxTransformer2DModel forward (batch 1): ``linear``, ``attention`` and ``total``.

    Linears: patch and text embedders, time/guidance/pooled-text MLPs, per double block AdaLN-Zero (x2), q/k/v,
    output projections and the 4x MLP of both streams, per single block AdaLN, q/k/v, MLP in and the fused output
    projection ``(D + 4D) -> D``, then the final AdaLN and projection. Attention: ``QK^T`` and ``AV`` over the
    joint sequence, ``4 N^2 D`` per block. Elementwise work (norms, RoPE, GELU, softmax) is not counted.
    """
    c = dict(config)
    d = c["num_attention_heads"] * c["attention_head_dim"]
    mlp = int(d * mlp_ratio)
    n = img_tokens + txt_tokens
    out_ch = (c.get("out_channels") or c["in_channels"]) * c.get("patch_size", 1) ** 2
    vec = _linear(1, 256, d) + _linear(1, d, d)  # timestep MLP on a 256-channel sinusoidal embedding
    vec *= 2 if c.get("guidance_embeds") else 1
    vec += _linear(1, c["pooled_projection_dim"], d) + _linear(1, d, d)
    embed = _linear(img_tokens, c["in_channels"], d) + _linear(txt_tokens, c["joint_attention_dim"], d) + vec
    stream = sum(
        _linear(t, d, 3 * d) + _linear(t, d, d) + _linear(t, d, mlp) + _linear(t, mlp, d)
        for t in (img_tokens, txt_tokens)
    )
    double = 2 * _linear(1, d, 6 * d) + stream
    single = _linear(1, d, 3 * d) + _linear(n, d, 3 * d) + _linear(n, d, mlp) + _linear(n, d + mlp, d)
    final = _linear(1, d, 2 * d) + _linear(img_tokens, d, out_ch)
    blocks = c["num_layers"] + c["num_single_layers"]
    linear = embed + c["num_layers"] * double + c["num_single_layers"] * single + final
    attention = blocks * 4 * n * n * d
    return {"linear": linear, "attention": attention, "total": linear + attention}


def tile_tokens(out_hw: tuple[int, int], tile: int, overlap: int, vae_scale: int = 8) -> list[int]:
    """Image tokens of every transformer tile the pipeline runs for an output of ``out_hw`` (same tiling rules)."""
    m = vae_scale * 2
    lh, lw = (-(-s // m) * m // vae_scale for s in out_hw)
    spec = latent_tiles(snapped(tile, overlap, m), vae_scale)
    per_tile = (min(spec.tile, lh) // 2) * (min(spec.tile, lw) // 2)
    return [per_tile] * tile_count((lh, lw), spec)


def analytic_floor(
    config,
    out_hw: tuple[int, int],
    tile: int,
    overlap: int,
    text_len: int,
    peak_tflops: float,
    forwards: int = 1,
    vae_scale: int = 8,
) -> dict[str, float]:
    """FLOP floor of the transformer stage: TFLOP over all tiles (x ``forwards`` steps) and ms at ``peak_tflops``."""
    tokens = tile_tokens(out_hw, tile, overlap, vae_scale)
    flops = forwards * sum(transformer_flops(config, t, text_len)["total"] for t in tokens)
    return {
        "tflop": flops / 1e12,
        "floor_ms": flops / (peak_tflops * 1e12) * 1e3,
        "tiles": len(tokens),
        "tokens_per_tile": tokens[0] + text_len,
    }
