"""Build and load the FluxSR components: FLUX transformer, FLUX-layout VAE, cached text conditioning, LoRA.

A fluxsr *model folder* holds::

    fluxsr.json                  # ModelSpec: T_L, guidance, ... (what inference needs besides weights)
    transformer/                 # diffusers FluxTransformer2DModel (config.json + safetensors)
    vae/                         # diffusers AutoencoderKL in the FLUX layout
    prompt_embeds.safetensors    # cached T5 / CLIP embeddings: text encoders never load at inference
    lora.safetensors             # optional: a FluxSR LoRA applied on top of transformer/

FLUX.1-dev itself can be read from a diffusers folder (``transformer/``, ``vae/``) or from Black Forest Labs single
files (``flux1-dev.safetensors`` + ``ae.safetensors``); the BFL key mapping here reads every dimension from the
tensors, so it works for any size, the tiny test models included.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from ..io.cache import (
    DamagedFileError,
    atomic_save_safetensors,
    read_json,
    read_safetensors,
    safetensors_header,
)
from ..io.hub import base_path, hub_model_path

SPEC_FILE = "fluxsr.json"
EMBEDS_FILE = "prompt_embeds.safetensors"
LORA_FILE = "lora.safetensors"


# ----------------------------------------------------------------------------------------------------------------
# Specs
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class ModelSpec:
    """What inference needs besides the weights (stored as ``fluxsr.json`` in a model folder).

    t_l: flow time assigned to the LR latent; one step goes from ``t_l`` to 0 (docs/method.md, section 3).
    guidance: value given to FLUX's guidance embedding (ignored by models without one).
    name / description: shown by the CLI and the web demo.
    note: a sentence the CLI prints when this model is used (e.g. "small demo model").
    tile / overlap: default tile edge and overlap in output pixels (small models run faster on small tiles).
    base / ae: for a LoRA-only folder (no ``transformer/``): the FLUX.1-dev weights the LoRA applies to
        (a diffusers folder or flux1-dev.safetensors, and its ae.safetensors), absolute or relative to the folder.
    """

    t_l: float = 0.25
    guidance: float = 1.0
    name: str = "fluxsr"
    description: str = ""
    note: str = ""
    base: str = ""
    ae: str = ""
    tile: int = 1024
    overlap: int = 128

    def __post_init__(self) -> None:
        if not (isinstance(self.t_l, int | float) and 0 < self.t_l < 1):
            raise ValueError(f"t_l must be strictly between 0 and 1 (got {self.t_l})")
        if not (isinstance(self.guidance, int | float) and math.isfinite(self.guidance)):
            raise ValueError(f"guidance must be a finite number (got {self.guidance})")
        if self.tile < 1 or self.overlap < 0:
            raise ValueError(f"tile must be >= 1 and overlap >= 0 (got {self.tile}, {self.overlap})")

    @classmethod
    def from_dict(cls, d: dict) -> ModelSpec:
        """Typed read of ``fluxsr.json``: unknown keys and wrong types raise, naming the field."""
        from ..io.config import from_dict

        return from_dict(cls, d)

    @classmethod
    def read(cls, folder: Path) -> ModelSpec:
        """The spec in ``folder/fluxsr.json``; a damaged or wrong file is one ValueError line naming it."""
        file = Path(folder) / SPEC_FILE
        want = "a JSON object of model settings (t_l, guidance, name, ...)"
        data = read_json(file, expected=want)
        if not isinstance(data, dict):
            raise DamagedFileError(f"{file}: expected {want}, got a JSON {type(data).__name__}")
        try:
            return cls.from_dict(data)
        except ValueError as e:
            raise ValueError(f"{file}: {e}") from None


@dataclass
class TextCond:
    """Cached text conditioning: T5 sequence embeddings (1, L, D) and pooled CLIP embedding (1, P)."""

    prompt_embeds: Tensor
    pooled_embeds: Tensor
    prompt: str = ""

    def to(self, device=None, dtype=None) -> TextCond:
        return TextCond(
            self.prompt_embeds.to(device, dtype), self.pooled_embeds.to(device, dtype), self.prompt
        )

    def save(self, path: Path) -> None:
        atomic_save_safetensors(
            {"prompt_embeds": self.prompt_embeds, "pooled_prompt_embeds": self.pooled_embeds},
            path,
            metadata={"prompt": self.prompt},
        )

    @classmethod
    def load(cls, path: Path) -> TextCond:
        state, meta = read_safetensors(Path(path))
        missing = [k for k in ("prompt_embeds", "pooled_prompt_embeds") if k not in state]
        if missing:
            raise ValueError(
                f"{path}: not prompt embeddings (no {', '.join(missing)}); write them with "
                "`fluxsr embed-prompt`"
            )
        return cls(state["prompt_embeds"], state["pooled_prompt_embeds"], meta.get("prompt", ""))

    def check_fits(self, transformer, source: Path | str) -> None:
        """ValueError unless these embeddings have the widths ``transformer`` expects (T5 and pooled CLIP)."""
        cfg = transformer.config
        got = (self.prompt_embeds.shape[-1], self.pooled_embeds.shape[-1])
        if got != (cfg.joint_attention_dim, cfg.pooled_projection_dim):
            raise ValueError(
                f"{source}: prompt embeddings of widths {got} do not fit this transformer (expects "
                f"{cfg.joint_attention_dim}, {cfg.pooled_projection_dim}); embed the prompt with this "
                "model's text encoders (`fluxsr embed-prompt`)"
            )


@dataclass
class FluxSRModel:
    """The parts of a one-step FluxSR model, ready to run."""

    transformer: torch.nn.Module
    vae: torch.nn.Module
    cond: TextCond
    spec: ModelSpec = field(default_factory=ModelSpec)

    @property
    def vae_scale(self) -> int:
        """Pixels per latent pixel (8 for FLUX)."""
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def multiple(self) -> int:
        """Image sizes must be multiples of this (VAE factor x 2x2 token packing): 16 for FLUX."""
        return self.vae_scale * 2

    def vae_latent(self, x: Tensor) -> Tensor:
        """Images (B, 3, H, W) in [0, 1] -> the VAE posterior's mean ``E(2x - 1)``, before normalisation; computed
        on the VAE's device and in its dtype."""
        weight = next(self.vae.parameters())
        return self.vae.encode(x.to(weight.device, weight.dtype) * 2 - 1).latent_dist.mode()

    def normalize(self, z: Tensor) -> Tensor:
        """VAE latents -> the transformer's latent space: ``(z - shift) * scale``."""
        return (z - self.vae.config.shift_factor) * self.vae.config.scaling_factor

    def encode(self, x: Tensor) -> Tensor:
        """Images (B, 3, H, W) in [0, 1] -> normalised latents ``(mean(E(2x - 1)) - shift) * scale``."""
        return self.normalize(self.vae_latent(x))

    def decode(self, z: Tensor) -> Tensor:
        """Normalised latents -> images in [0, 1] (not clamped): ``(D(z / scale + shift) + 1) / 2``."""
        vae = self.vae
        z = z / vae.config.scaling_factor + vae.config.shift_factor
        return (vae.decode(z.to(next(vae.parameters()).dtype)).sample + 1) / 2


# ----------------------------------------------------------------------------------------------------------------
# Configurations
# ----------------------------------------------------------------------------------------------------------------

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
    patch_size=1,
    in_channels=64,
    num_layers=1,
    num_single_layers=1,
    attention_head_dim=16,
    num_attention_heads=2,
    joint_attention_dim=32,
    pooled_projection_dim=32,
    guidance_embeds=True,
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


def _init_random(module: torch.nn.Module) -> torch.nn.Module:
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
        parts.append(_init_random(part.to(dtype).to_empty(device=device)))
    transformer, vae = parts
    cond = random_cond(transformer, text_len, seed).to(device, dtype)
    return FluxSRModel(
        transformer, vae, cond, ModelSpec(name="flux-dev-random", note="random weights (benchmarks)")
    )


# ----------------------------------------------------------------------------------------------------------------
# Model folders (fluxsr's own format)
# ----------------------------------------------------------------------------------------------------------------


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
    path: Path, *, lora_scale: float = 1.0, merge_lora: bool = True, dtype: torch.dtype | None = None
) -> FluxSRModel:
    """Load a fluxsr model folder on the CPU in ``dtype`` (default float32; move with :func:`to_device`)."""
    from diffusers import AutoencoderKL, FluxTransformer2DModel

    path = Path(path)
    if not is_model_folder(path):
        raise FileNotFoundError(f"{path} is not a fluxsr model folder (no {SPEC_FILE})")
    spec = ModelSpec.read(path)
    cond = TextCond.load(path / EMBEDS_FILE)
    if (path / "transformer").is_dir():
        model = FluxSRModel(
            pretrained(FluxTransformer2DModel, path / "transformer", dtype),
            pretrained(AutoencoderKL, path / "vae", dtype),
            cond,
            spec,
        )
    elif spec.base:
        base = base_path(path, spec.base)  # an absolute base stays absolute; a Hub repo id is fetched
        if is_model_folder(base):  # a LoRA on a model folder (itself possibly with a LoRA)
            model = load_model_folder(base, dtype=dtype)
            model.cond, model.spec = cond, spec
        elif base.is_dir():
            model = load_flux_diffusers(base, cond, spec, dtype)
        else:
            ae = path / Path(spec.ae).expanduser() if spec.ae else base.parent / "ae.safetensors"
            model = load_flux_single_file(base, ae, cond, spec, dtype)
    else:
        raise FileNotFoundError(f"{path}: no transformer/ folder and no 'base' in {SPEC_FILE}")
    if (path / LORA_FILE).is_file():
        apply_lora(model.transformer, path / LORA_FILE, scale=lora_scale, merge=merge_lora)
    return model


def move(module: torch.nn.Module, device, dtype) -> torch.nn.Module:
    """``module.to(device, dtype)``, casting only when the dtype differs (diffusers warns on every cast)."""
    if next(module.parameters()).dtype == dtype:
        return module.to(device=device)
    return module.to(device=device, dtype=dtype)


def setup_cuda_training() -> None:
    """CUDA settings for training: TF32 matmuls, and no cuDNN attention (it crashes in FLUX's backward pass on
    Hopper, gpu-notes.md), so SDPA uses flash or memory-efficient kernels."""
    if torch.cuda.is_available():
        torch.backends.cuda.enable_cudnn_sdp(False)
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


def to_device(model: FluxSRModel, device, dtype) -> FluxSRModel:
    """Move all parts to ``device``; the transformer and conditioning take ``dtype``, the VAE too."""
    for part in (model.transformer, model.vae):
        move(part, device, dtype).eval().requires_grad_(False)
    model.cond = model.cond.to(device, dtype)
    return model


# ----------------------------------------------------------------------------------------------------------------
# FLUX.1-dev: diffusers folders and Black Forest Labs single files
# ----------------------------------------------------------------------------------------------------------------


def pretrained(cls, folder: Path, dtype: torch.dtype | None = None):
    """``cls.from_pretrained(folder)`` from local safetensors only, straight into ``dtype`` (default: float32):
    diffusers builds the model on the meta device and assigns each tensor as it is read, cast to ``dtype``, so a
    bf16 FLUX.1-dev is never materialised in float32 on the host (scripts/measure_load_rss.py). A missing
    ``config.json`` or weights that exist only as pickles (``.bin``, never loaded by fluxsr) are a
    FileNotFoundError naming the folder."""
    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"{folder}/config.json is missing: not a diffusers {cls.__name__} folder")
    weights = sorted(folder.glob("*.safetensors"))
    if not weights:
        pickles = sorted(p.name for p in folder.glob("*.bin"))
        raise FileNotFoundError(
            f"{folder}: no .safetensors weights"
            + (
                f" ({', '.join(pickles[:3])} are pickles, which fluxsr never loads: convert them to safetensors)"
                if pickles
                else ""
            )
        )
    for file in weights:  # a cut-short file: one line naming it, not diffusers' traceback
        safetensors_header(file)
    return cls.from_pretrained(
        folder,
        local_files_only=True,
        use_safetensors=True,
        torch_dtype=dtype or torch.float32,
        low_cpu_mem_usage=True,
    )


def check_flux_folder(path: Path) -> None:
    """FileNotFoundError unless ``path`` holds a diffusers FLUX transformer and VAE (their config.json)."""
    for sub in ("transformer", "vae"):
        if not (path / sub / "config.json").is_file():
            hint = "" if (path / "vae").is_dir() else " (a training run's model is its final/ folder)"
            raise FileNotFoundError(
                f"{path} is neither a fluxsr model folder (no {SPEC_FILE}) nor a diffusers FLUX "
                f"folder ({sub}/config.json is missing){hint}"
            )


FLUX_FILE_KINDS = (
    "a fluxsr model folder, a diffusers FLUX folder or a Black Forest Labs flux1-dev.safetensors"
)


def check_flux_file(path: Path) -> None:
    """ValueError naming ``path`` unless it is a safetensors file holding a Black Forest Labs FLUX transformer
    (``img_in.weight``); reads the header only."""
    try:
        names, _ = safetensors_header(path)
    except DamagedFileError as e:
        raise DamagedFileError(f"{e}; expected {FLUX_FILE_KINDS}") from None
    if not any(k.removeprefix("model.diffusion_model.") == "img_in.weight" for k in names):
        raise ValueError(
            f"{path}: not a Black Forest Labs FLUX transformer file (no img_in.weight); "
            "a diffusers folder or a fluxsr model folder is loaded by its folder"
        )


def load_flux_diffusers(
    path: Path, cond: TextCond, spec: ModelSpec | None = None, dtype: torch.dtype | None = None
) -> FluxSRModel:
    """FLUX.1-dev from a local diffusers folder (``transformer/``, ``vae/``; text encoders are not loaded), read
    straight into ``dtype`` (default float32; see :func:`pretrained`)."""
    from diffusers import AutoencoderKL, FluxTransformer2DModel

    path = Path(path)
    check_flux_folder(path)
    return FluxSRModel(
        pretrained(FluxTransformer2DModel, path / "transformer", dtype),
        pretrained(AutoencoderKL, path / "vae", dtype),
        cond,
        spec or ModelSpec(name=f"flux:{path.name}"),
    )


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


def _block_indices(keys, prefix: str) -> list[int]:
    return sorted({int(k[len(prefix) + 1 :].split(".")[0]) for k in keys if k.startswith(prefix + ".")})


def bfl_to_diffusers(sd: dict[str, Tensor]) -> dict[str, Tensor]:
    """Map a Black Forest Labs FLUX transformer state dict to diffusers names (any size; dims from the tensors)."""
    sd = {k.removeprefix("model.diffusion_model."): v for k, v in sd.items()}
    out = {d: sd[b] for d, b in _TOP_KEYS if b in sd}
    out.update({d: _swap_halves(sd[b]) for d, b in _FINAL_NORM})
    inner = sd["img_in.weight"].shape[0]
    for i in _block_indices(sd, "double_blocks"):
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
    for i in _block_indices(sd, "single_blocks"):
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
    for i in _block_indices(sd, "transformer_blocks"):
        src, dst = f"transformer_blocks.{i}.", f"double_blocks.{i}."
        out.update({dst + b: sd[src + d] for d, b in _DOUBLE_KEYS})
        for stream, names in _DOUBLE_QKV.items():
            for p in ("weight", "bias"):
                out[f"{dst}{stream}.qkv.{p}"] = torch.cat([sd[f"{src}{n}.{p}"] for n in names])
    for i in _block_indices(sd, "single_transformer_blocks"):
        src, dst = f"single_transformer_blocks.{i}.", f"single_blocks.{i}."
        out.update({dst + b: sd[src + d] for d, b in _SINGLE_KEYS})
        for p in ("weight", "bias"):
            out[f"{dst}linear1.{p}"] = torch.cat([sd[f"{src}{n}.{p}"] for n in _SINGLE_LINEAR1])
    return out


def transformer_config_from_bfl(sd: dict[str, Tensor], metadata: dict[str, str] | None = None) -> dict:
    """Infer a FluxTransformer2DModel config from BFL tensors (rotary axes from metadata unless head dim is 128)."""
    sd = {k.removeprefix("model.diffusion_model."): v for k, v in sd.items()}
    inner, in_ch = sd["img_in.weight"].shape
    head = sd["double_blocks.0.img_attn.norm.query_norm.scale"].shape[0]
    meta = metadata or {}
    if "axes_dims_rope" in meta:
        axes = tuple(json.loads(meta["axes_dims_rope"]))
    elif head == 128:
        axes = (16, 56, 56)
    else:
        raise ValueError(
            f"head dim {head}: rotary axes unknown; store 'axes_dims_rope' in the file's metadata"
        )
    return dict(
        patch_size=1,
        in_channels=in_ch,
        num_layers=len(_block_indices(sd, "double_blocks")),
        num_single_layers=len(_block_indices(sd, "single_blocks")),
        attention_head_dim=head,
        num_attention_heads=inner // head,
        joint_attention_dim=sd["txt_in.weight"].shape[1],
        pooled_projection_dim=sd["vector_in.in_layer.weight"].shape[1],
        guidance_embeds="guidance_in.in_layer.weight" in sd,
        axes_dims_rope=axes,
    )


def vae_config_from_ldm(sd: dict[str, Tensor], metadata: dict[str, str] | None = None) -> dict:
    """Infer an AutoencoderKL config (FLUX layout) from an LDM/BFL ``ae.safetensors`` state dict."""
    downs = _block_indices(sd, "encoder.down")
    chans = tuple(sd[f"encoder.down.{i}.block.0.conv1.weight"].shape[0] for i in downs)
    per_block = len({k.split(".")[4] for k in sd if k.startswith("encoder.down.0.block.")})
    meta = metadata or {}
    return dict(
        FLUX_VAE,
        in_channels=sd["encoder.conv_in.weight"].shape[1],
        out_channels=sd["decoder.conv_out.weight"].shape[0],
        latent_channels=sd["encoder.conv_out.weight"].shape[0] // 2,
        block_out_channels=chans,
        layers_per_block=per_block,
        down_block_types=("DownEncoderBlock2D",) * len(chans),
        up_block_types=("UpDecoderBlock2D",) * len(chans),
        norm_num_groups=int(meta.get("norm_num_groups", 32)),
        use_quant_conv="quant_conv.weight" in sd,
        use_post_quant_conv="post_quant_conv.weight" in sd,
        scaling_factor=float(meta.get("scaling_factor", FLUX_VAE["scaling_factor"])),
        shift_factor=float(meta.get("shift_factor", FLUX_VAE["shift_factor"])),
    )


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


def cast_state(state: dict[str, Tensor], dtype: torch.dtype) -> dict[str, Tensor]:
    """The floating tensors of ``state`` in ``dtype``, cast one at a time and taken out of ``state`` as they go,
    so a cast holds at most the original plus one converted tensor beyond the result (no copy when the dtype is
    already right)."""
    out = {}
    for key in list(state):
        t = state.pop(key)
        out[key] = t.to(dtype) if t.is_floating_point() else t
    return out


def load_flux_single_file(
    transformer_file: Path,
    ae_file: Path,
    cond: TextCond,
    spec: ModelSpec | None = None,
    dtype: torch.dtype | None = None,
) -> FluxSRModel:
    """FLUX.1-dev from Black Forest Labs single files (``flux1-dev.safetensors`` and ``ae.safetensors``) in
    ``dtype`` (default float32): both models are built on the meta device and take the file's tensors by assignment
    (:func:`cast_state`), so a bf16 file loaded in bf16 is held once."""
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

    if not Path(ae_file).is_file():
        raise FileNotFoundError(
            f"{ae_file} not found: the FLUX autoencoder of {transformer_file} (pass --ae FILE)"
        )
    check_flux_file(transformer_file)
    sd, meta = read_safetensors(transformer_file)
    dtype = dtype or torch.float32
    transformer = build_transformer(transformer_config_from_bfl(sd, meta), meta=True)
    state = bfl_to_diffusers(sd)
    del sd
    transformer.load_state_dict(cast_state(state, dtype), strict=True, assign=True)
    ae, ae_meta = read_safetensors(ae_file)
    vae_cfg = vae_config_from_ldm(ae, ae_meta)
    vae = build_vae(vae_cfg, meta=True)
    vae.load_state_dict(cast_state(convert_ldm_vae_checkpoint(ae, vae_cfg), dtype), strict=True, assign=True)
    return FluxSRModel(transformer, vae, cond, spec or ModelSpec(name=f"flux:{Path(transformer_file).name}"))


# ----------------------------------------------------------------------------------------------------------------
# LoRA (peft)
# ----------------------------------------------------------------------------------------------------------------

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


# ----------------------------------------------------------------------------------------------------------------
# Running the transformer, and finding a model from a name
# ----------------------------------------------------------------------------------------------------------------


def model_time(t: Tensor, dtype: torch.dtype) -> Tensor:
    """The flow time a FluxTransformer2DModel in ``dtype`` actually conditions on, as float32.

    diffusers multiplies the timestep by 1000 in the hidden states' dtype; in bf16 that puts ``t`` on a coarse grid
    (0.6947 -> 0.696). Training builds its noisy input from this time, so input and timestep agree."""
    return (t.to(dtype) * 1000).to(dtype).float() / 1000


def velocity(
    model: FluxSRModel,
    z: Tensor,
    t: float | Tensor,
    offset: tuple[int, int] | list[tuple[int, int]] = (0, 0),
    guidance: float | None = None,
    net: torch.nn.Module | None = None,
) -> Tensor:
    """The transformer's velocity for latents ``z`` (B, C, h, w) at flow time ``t`` (a float or one per sample).

    Tokens get position ids of a tile placed at latent ``offset`` in the whole image. A list of n offsets puts n
    tiles in one forward pass: ``z`` holds them stacked tile-major (B/n consecutive samples per tile), and each gets
    its own rotary embedding (:mod:`fluxsr.model.attention`, installed on first use). Text conditioning is the model's
    cached embeddings; ``guidance`` defaults to the model spec's value. ``net`` runs the forward instead of
    ``model.transformer`` (a DDP/FSDP-wrapped copy of it in training).
    """
    from .flow import img_ids, pack, txt_ids, unpack

    b, _, h, w = z.shape
    tr = model.transformer
    dtype = next(tr.parameters()).dtype
    t = (
        torch.as_tensor(t, device=z.device, dtype=dtype).expand(b)
        if not isinstance(t, Tensor) or t.ndim == 0
        else t.to(device=z.device, dtype=dtype)
    )
    g = None
    if tr.config.guidance_embeds:
        g = torch.full(
            (b,), model.spec.guidance if guidance is None else guidance, device=z.device, dtype=dtype
        )
    cond = model.cond
    single = len(offset) == 2 and not isinstance(offset[0], (tuple, list))  # (y, x), not a list of them
    offsets = [(int(offset[0]), int(offset[1]))] if single else [(int(y), int(x)) for y, x in offset]
    if b % len(offsets):
        raise ValueError(f"{len(offsets)} tile offsets for a batch of {b}")
    # ids stay float32: bf16 has 8 significant bits, so positions past 256 (images past 4096 px) would round
    txt = txt_ids(cond.prompt_embeds.shape[1], z.device)
    extra = None
    if len(set(offsets)) > 1:
        from . import attention

        attention.install(tr)
        ids = torch.stack([torch.cat((txt, img_ids(h, w, o, z.device))) for o in offsets])
        extra = {"tile_rope": attention.tile_rope(tr.pos_embed, ids.repeat_interleave(b // len(offsets), 0))}
    out = (net or tr)(
        hidden_states=pack(z.to(dtype)),
        encoder_hidden_states=cond.prompt_embeds.to(z.device, dtype).expand(b, -1, -1),
        pooled_projections=cond.pooled_embeds.to(z.device, dtype).expand(b, -1),
        timestep=t,
        img_ids=img_ids(h, w, offsets[0], z.device),
        txt_ids=txt,
        guidance=g,
        joint_attention_kwargs=extra,
        return_dict=False,
    )[0]
    return unpack(out, h, w).to(z.dtype)


BUNDLED_MODEL = Path(__file__).resolve().parents[1] / "assets" / "model"
PRESETS = ("bundled", "tiny", "flux-dev-random")


def load_model(
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
) -> FluxSRModel:
    """Resolve a model name or path to a :class:`FluxSRModel` on the CPU, its weights read straight into ``dtype``
    (default float32: no float32 copy of a bf16 FLUX.1-dev when ``dtype=torch.bfloat16``).

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
    if key == "tiny":
        model = build_tiny()
    elif key == "flux-dev-random":
        model = build_random_flux(device or "cpu", dtype or torch.float32, text_len)
    elif key == "bundled" and not is_model_folder(BUNDLED_MODEL):
        raise FileNotFoundError("the bundled model is not installed with this copy of fluxsr")
    elif folder is not None:
        model = load_model_folder(folder, lora_scale=lora_scale, merge_lora=merge_lora, dtype=dtype)
    else:
        if path.is_dir():
            check_flux_folder(path)  # before the embeddings: a wrong folder or file is the first thing to say
        else:
            check_flux_file(path)
        embeds = prompt_embeds or (path if path.is_dir() else path.parent) / EMBEDS_FILE
        if not embeds.is_file():
            raise FileNotFoundError(
                f"{embeds} not found: compute the prompt embeddings once with "
                f"`fluxsr embed-prompt --flux DIR --out {embeds}` (or pass --prompt-embeds FILE)"
            )
        cond = TextCond.load(embeds)
        if path.is_dir():
            model = load_flux_diffusers(path, cond, spec, dtype)
        else:
            model = load_flux_single_file(path, ae or path.parent / "ae.safetensors", cond, spec, dtype)
        cond.check_fits(model.transformer, embeds)
    if spec is not None:
        model.spec = spec
    if lora is not None:  # its own adapter name: a model folder may already carry a LoRA named "fluxsr"
        apply_lora(model.transformer, lora, scale=lora_scale, merge=merge_lora, adapter="user")
    return model
