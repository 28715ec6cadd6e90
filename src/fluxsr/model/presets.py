"""Model presets: the FLUX.1-dev and tiny configurations, building a transformer or VAE from a config, and the
random-weight models ``tiny`` (tests on CPU) and ``flux-dev-random`` (speed and memory benchmarks)."""

from __future__ import annotations

from pathlib import Path

import torch

from .model import FluxSRModel, ModelSpec, TextCond

BUNDLED_MODEL = Path(__file__).resolve().parents[1] / "assets" / "model"
PRESETS = ("bundled", "tiny", "flux-dev-random")

FLUX_DEV_TRANSFORMER = dict(
    patch_size=1,
    in_channels=64,
    num_layers=19,
    num_single_layers=38,
    attention_head_dim=128,
    num_attention_heads=24,
    joint_attention_dim=4096,
    pooled_projection_dim=768,
    guidance_embeds=True,
    axes_dims_rope=(16, 56, 56),
)
FLUX_VAE = dict(
    in_channels=3,
    out_channels=3,
    latent_channels=16,
    block_out_channels=(128, 256, 512, 512),
    layers_per_block=2,
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    norm_num_groups=32,
    use_quant_conv=False,
    use_post_quant_conv=False,
    scaling_factor=0.3611,
    shift_factor=0.1159,
)
TINY_TRANSFORMER = dict(
    FLUX_DEV_TRANSFORMER,
    num_layers=1,
    num_single_layers=1,
    attention_head_dim=16,
    num_attention_heads=2,
    joint_attention_dim=32,
    pooled_projection_dim=32,
    axes_dims_rope=(4, 6, 6),
)
TINY_VAE = dict(FLUX_VAE, block_out_channels=(8, 16, 16, 16), layers_per_block=1, norm_num_groups=4)
TINY_TEXT_LEN = 8


def build_transformer(config: dict, *, meta: bool = False):
    """A FluxTransformer2DModel from a config dict; ``meta=True`` allocates no memory (shapes only)."""
    from diffusers import FluxTransformer2DModel

    if meta:
        from accelerate import init_empty_weights

        with init_empty_weights():
            return FluxTransformer2DModel(**config)
    return FluxTransformer2DModel(**config)


def build_vae(config: dict, *, meta: bool = False):
    """An AutoencoderKL from a config dict (the FLUX layout by default: 16 latent channels, no quant convs);
    ``meta=True`` allocates no memory (shapes only)."""
    from diffusers import AutoencoderKL

    if meta:
        from accelerate import init_empty_weights

        with init_empty_weights():
            return AutoencoderKL(**config)
    return AutoencoderKL(**config)


def random_cond(transformer, text_len: int, seed: int = 0) -> TextCond:
    """Random text conditioning of the right shapes (for random-weight models: tests, benchmarks)."""
    g = torch.Generator().manual_seed(seed)
    cfg = transformer.config
    return TextCond(
        torch.randn(1, text_len, cfg.joint_attention_dim, generator=g),
        torch.randn(1, cfg.pooled_projection_dim, generator=g),
        prompt="<random>",
    )


def build_tiny(seed: int = 0) -> FluxSRModel:
    """The ``tiny`` preset: FLUX-architecture transformer and VAE with random weights, for tests on CPU."""
    torch.manual_seed(seed)
    transformer = build_transformer(TINY_TRANSFORMER)
    vae = build_vae(TINY_VAE)
    return FluxSRModel(
        transformer,
        vae,
        random_cond(transformer, TINY_TEXT_LEN, seed),
        ModelSpec(
            name="tiny",
            description="random-weight tiny FLUX (tests only)",
            note="tiny test model, random or briefly trained weights: not a real upscale",
        ),
    )


def init_random(module: torch.nn.Module) -> torch.nn.Module:
    """Default PyTorch initialisation, run where the (empty) parameters already live; norm scales set to 1."""
    with torch.no_grad():
        for mod in module.modules():
            if hasattr(mod, "reset_parameters") and mod is not module:
                mod.reset_parameters()
            elif "norm" in type(mod).__name__.lower() and getattr(mod, "weight", None) is not None:
                mod.weight.fill_(1.0)
    return module


def build_random_flux(device="cpu", dtype=torch.bfloat16, text_len: int = 512, seed: int = 0) -> FluxSRModel:
    """The ``flux-dev-random`` preset: FLUX.1-dev-shaped transformer (11.9 B parameters) and VAE with random
    weights, allocated directly on ``device`` in ``dtype`` (no CPU copy): dense cost does not depend on the values,
    so this measures GPU speed and memory without the real weights."""
    torch.manual_seed(seed)
    parts = []
    for part in (build_transformer(FLUX_DEV_TRANSFORMER, meta=True), build_vae(FLUX_VAE, meta=True)):
        parts.append(init_random(part.to(dtype).to_empty(device=device)))
    transformer, vae = parts
    cond = random_cond(transformer, text_len, seed).to(device, dtype)
    return FluxSRModel(
        transformer, vae, cond, ModelSpec(name="flux-dev-random", note="random weights (benchmarks)")
    )
