"""The FluxSR model: :class:`FluxSRModel` (FLUX transformer + FLUX-layout VAE + cached text conditioning, with
its latent normalisation), its :class:`ModelSpec`, and running the transformer (:func:`velocity`).

Building one from a preset is :mod:`.presets`, reading one from disk :mod:`.loader` (fluxsr model folders in
:mod:`.folders`, FLUX.1-dev in :mod:`.flux_dev`), LoRA :mod:`.lora`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from ..io.cache import DamagedFileError, atomic_save_safetensors, read_json, read_safetensors
from ..io.config import from_dict
from ..io.hub import SPEC_EXPECTED, SPEC_FILE
from . import attention
from .flow import img_ids, pack, txt_ids, unpack


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
        return from_dict(cls, d)

    @classmethod
    def read(cls, folder: Path) -> ModelSpec:
        """The spec in ``folder/fluxsr.json``; a damaged or wrong file is one ValueError line naming it."""
        file = Path(folder) / SPEC_FILE
        data = read_json(file, expected=SPEC_EXPECTED)
        if not isinstance(data, dict):
            raise DamagedFileError(f"{file}: expected {SPEC_EXPECTED}, got a JSON {type(data).__name__}")
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
    """The parts of a one-step FluxSR model, ready to run.

    execution_device: where the parts compute when offload hooks keep their weights in CPU RAM
    (:mod:`fluxsr.inference.offload`); None: where their weights are.
    """

    transformer: torch.nn.Module
    vae: torch.nn.Module
    cond: TextCond
    spec: ModelSpec = field(default_factory=ModelSpec)
    execution_device: torch.device | None = None

    def device_for(self, part: torch.nn.Module) -> torch.device:
        """The device ``part`` (the transformer or the VAE) computes on: :attr:`execution_device` or its weights'."""
        return self.execution_device or next(part.parameters()).device

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
        on the VAE's device (:meth:`device_for`) and in its dtype."""
        dtype = next(self.vae.parameters()).dtype
        return self.vae.encode(x.to(self.device_for(self.vae), dtype) * 2 - 1).latent_dist.mode()

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
        return (vae.decode(z.to(self.device_for(vae), next(vae.parameters()).dtype)).sample + 1) / 2


def move(module: torch.nn.Module, device, dtype) -> torch.nn.Module:
    """``module.to(device, dtype)``, casting only when the dtype differs (diffusers warns on every cast). A CPU
    device with an index (accelerate's ``cpu:0``) is the plain CPU: ``.to("cpu:0")`` would copy every weight,
    memory-mapped ones included, although CPU tensors have no index."""
    device = torch.device(device)
    if device.type == "cpu":
        device = torch.device("cpu")
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
