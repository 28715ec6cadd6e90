"""Pretraining the parts FLUX.1-dev would provide, for small FluxSR models (the bundled model).

FLUX.1-dev weights cannot ship, so the bundled model re-creates the whole FluxSR setting at small scale with fluxsr's
own commands: ``fluxsr train-vae`` (a FLUX-layout AutoencoderKL), ``fluxsr train-teacher`` (a small
FluxTransformer2DModel trained as a rectified-flow model on that VAE's latents), then the usual ``gen-pairs`` and
``train``. The rectified-flow objective (docs/method.md, section 2): ``x_t = (1 - t) z0 + t eps``, predict
``u = eps - z0``, with ``t`` drawn logit-normally as in SD3/FLUX training.
"""

from __future__ import annotations

import csv
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from ..io.config import ConfigError, check_range
from ..io.images import ImageError, find_images, read_image, resize
from ..losses.lpips import load_lpips
from ..model.flow import interpolate, logit_normal_t, pair_velocity
from ..model.folders import save_model_folder
from ..model.model import FluxSRModel, ModelSpec, TextCond, setup_cuda_training, velocity
from ..model.presets import build_transformer, build_vae


@dataclass
class VAESection:
    """A small FLUX-layout VAE (``fluxsr train-vae``).

    block_out_channels: one entry per level; the downsampling factor is 2^(levels-1). Default (32, 64, 128):
        factor 4 with 16 latent channels keeps reconstruction near-lossless after a short CPU training, where
        FLUX's factor 8 would blur (docs/bundled-model.md measures both).
    mid_attention: FLUX's VAE has a self-attention block at the lowest level; off by default here because at
        factor 4 it would attend over (H/4 * W/4)^2 pairs.
    kl / lpips: loss weights besides L1 (LPIPS-VGG, the real weights).
    time_limit: stop after this many seconds (0: run all steps); the log says how many steps ran.
    """

    block_out_channels: tuple[int, ...] = (32, 64, 128)
    latent_channels: int = 16
    layers_per_block: int = 1
    norm_num_groups: int = 16
    mid_attention: bool = False
    steps: int = 2000
    batch_size: int = 8
    crop: int = 128
    lr: float = 1e-3
    kl: float = 1e-6
    lpips: float = 0.1
    seed: int = 0
    time_limit: float = 0.0

    def __post_init__(self) -> None:
        positive, non_negative = (">", 0), (">=", 0)
        check_range(
            "pretrain.vae",
            self,
            latent_channels=positive,
            layers_per_block=positive,
            norm_num_groups=positive,
            steps=positive,
            batch_size=positive,
            crop=positive,
            lr=positive,
            kl=non_negative,
            lpips=non_negative,
            time_limit=non_negative,
        )
        if not self.block_out_channels:
            raise ConfigError("pretrain.vae.block_out_channels: needs at least one level")


@dataclass
class TeacherSection:
    """A small FluxTransformer2DModel trained as a rectified-flow model (``fluxsr train-teacher``).
    time_limit: stop after this many seconds (0: run all steps)."""

    num_layers: int = 2
    num_single_layers: int = 4
    attention_head_dim: int = 32
    num_attention_heads: int = 4
    axes_dims_rope: tuple[int, int, int] = (8, 12, 12)
    text_dim: int = 64
    text_len: int = 4
    steps: int = 3000
    batch_size: int = 8
    crop: int = 128
    lr: float = 5e-4
    seed: int = 0
    time_limit: float = 0.0

    def __post_init__(self) -> None:
        positive, non_negative = (">", 0), (">=", 0)
        check_range(
            "pretrain.teacher",
            self,
            num_layers=positive,
            attention_head_dim=positive,
            num_attention_heads=positive,
            text_dim=positive,
            text_len=positive,
            steps=positive,
            batch_size=positive,
            crop=positive,
            lr=positive,
            num_single_layers=non_negative,
            time_limit=non_negative,
        )


@dataclass
class PretrainSection:
    """Photos for pretraining (folders, searched recursively; see docs/bundled-model.md for their sources)."""

    photos: list[str] = field(default_factory=list)
    vae: VAESection = field(default_factory=VAESection)
    teacher: TeacherSection = field(default_factory=TeacherSection)
    max_side: int = 512

    def __post_init__(self) -> None:
        check_range("pretrain", self, max_side=(">", 0))


def load_photos(folders: list[str], max_side: int) -> list[Tensor]:
    """All photos under ``folders`` as RGB tensors, shrunk so the longer side is at most ``max_side``.

    An unreadable photo is skipped with a one-line warning; the number skipped is reported at the end."""
    out, skipped = [], 0
    for folder in folders:
        for path in find_images(Path(folder)):
            try:
                rgb = read_image(path).rgb
            except ImageError as e:
                print(f"warning: skipping unreadable photo {e}", file=sys.stderr)
                skipped += 1
                continue
            h, w = rgb.shape[-2:]
            if max(h, w) > max_side:
                s = max_side / max(h, w)
                rgb = resize(rgb, (max(1, round(h * s)), max(1, round(w * s))))
            out.append(rgb)
    if skipped:
        print(f"warning: skipped {skipped} unreadable photo(s); using {len(out)}", file=sys.stderr)
    if not out:
        raise FileNotFoundError(f"pretrain.photos: no readable images in {folders}")
    return out


def random_crops(photos: list[Tensor], n: int, size: int, g: torch.Generator) -> Tensor:
    """``n`` random ``size``^2 crops (random photo, place and horizontal flip); small photos are upscaled first."""
    crops = []
    for _ in range(n):
        img = photos[int(torch.randint(len(photos), (1,), generator=g))]
        h, w = img.shape[-2:]
        if min(h, w) < size:
            s = size / min(h, w)
            img = resize(img, (max(size, round(h * s)), max(size, round(w * s))))
            h, w = img.shape[-2:]
        top = int(torch.randint(h - size + 1, (1,), generator=g))
        left = int(torch.randint(w - size + 1, (1,), generator=g))
        crop = img[:, top : top + size, left : left + size]
        if torch.rand(1, generator=g) < 0.5:
            crop = crop.flip(-1)
        crops.append(crop)
    return torch.stack(crops)


def _optimizer(module: torch.nn.Module, lr: float, steps: int):
    """AdamW with 100 warm-up steps and a square-root decay to 0 at ``steps``; returns ``update(loss)``, one
    optimiser step (backward, gradient norm clipped to 1, step, schedule)."""
    params = [p for p in module.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 100) * (1 - s / steps) ** 0.5)

    def update(loss: Tensor) -> None:
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()

    return update


def _loop(name: str, steps: int, step_fn, out: Path, progress: bool, time_limit: float = 0.0) -> int:
    """Run ``step_fn(step) -> dict of floats`` ``steps`` times (or until ``time_limit`` seconds) with a progress
    bar and a CSV log in ``out``; returns the number of steps run."""
    from tqdm import tqdm

    out.mkdir(parents=True, exist_ok=True)
    log = (out / "log.csv").open("w", newline="")
    writer = None
    tic = time.perf_counter()
    for step in tqdm(range(steps), desc=name, disable=not progress, file=sys.stderr):
        values = step_fn(step)
        if writer is None:
            writer = csv.writer(log)
            writer.writerow(["step", *values, "seconds"])
        elapsed = time.perf_counter() - tic
        last = step == steps - 1 or (time_limit > 0 and elapsed > time_limit)
        if step % 10 == 0 or last:
            writer.writerow([step + 1, *(f"{v:.6g}" for v in values.values()), f"{elapsed:.1f}"])
            log.flush()
        if last:
            break
    log.close()
    return step + 1


def vae_config(cfg: VAESection) -> dict:
    n = len(cfg.block_out_channels)
    return dict(
        in_channels=3,
        out_channels=3,
        latent_channels=cfg.latent_channels,
        block_out_channels=cfg.block_out_channels,
        layers_per_block=cfg.layers_per_block,
        down_block_types=("DownEncoderBlock2D",) * n,
        up_block_types=("UpDecoderBlock2D",) * n,
        norm_num_groups=cfg.norm_num_groups,
        use_quant_conv=False,
        use_post_quant_conv=False,
        mid_block_add_attention=cfg.mid_attention,
        scaling_factor=1.0,
        shift_factor=0.0,
    )


def train_vae(pre: PretrainSection, out: Path, *, device="cpu", progress: bool = True):
    """Train the VAE on random photo crops: L1 + lpips * LPIPS-VGG + kl * KL; then set FLUX-style latent
    normalisation (``shift_factor`` = latent mean, ``scaling_factor`` = 1 / latent std over training crops)."""
    cfg = pre.vae
    setup_cuda_training()
    torch.manual_seed(cfg.seed)
    photos = load_photos(pre.photos, pre.max_side)
    vae = build_vae(vae_config(cfg)).to(device).train()
    lpips = load_lpips("vgg", device) if cfg.lpips > 0 else None
    update = _optimizer(vae, cfg.lr, cfg.steps)
    g = torch.Generator().manual_seed(cfg.seed)

    def step(i: int) -> dict:
        x = random_crops(photos, cfg.batch_size, cfg.crop, g).to(device)
        post = vae.encode(x * 2 - 1).latent_dist
        rec = (vae.decode(post.sample(generator=None)).sample + 1) / 2
        l1 = (rec - x).abs().mean()
        kl = post.kl().mean() / x[0].numel()
        lp = lpips(rec, x).mean() if lpips is not None else rec.new_zeros(())
        loss = l1 + cfg.lpips * lp + cfg.kl * kl
        update(loss)
        psnr = -10 * torch.log10(F.mse_loss(rec.detach().clamp(0, 1), x))
        return {
            "loss": loss.item(),
            "l1": l1.item(),
            "lpips": lp.item(),
            "kl": kl.item(),
            "psnr": psnr.item(),
        }

    _loop("vae", cfg.steps, step, Path(out), progress, cfg.time_limit)
    vae.eval()
    with torch.no_grad():
        lat = torch.cat(
            [
                vae.encode(
                    random_crops(photos, cfg.batch_size, cfg.crop, g).to(device) * 2 - 1
                ).latent_dist.mode()
                for _ in range(8)
            ]
        )
    vae.register_to_config(shift_factor=float(lat.mean()), scaling_factor=float(1 / lat.std()))
    vae.to("cpu").save_pretrained(Path(out) / "vae", safe_serialization=True)
    return vae


def teacher_config(cfg: TeacherSection, latent_channels: int) -> dict:
    return dict(
        patch_size=1,
        in_channels=latent_channels * 4,
        num_layers=cfg.num_layers,
        num_single_layers=cfg.num_single_layers,
        attention_head_dim=cfg.attention_head_dim,
        num_attention_heads=cfg.num_attention_heads,
        joint_attention_dim=cfg.text_dim,
        pooled_projection_dim=cfg.text_dim,
        guidance_embeds=True,
        axes_dims_rope=cfg.axes_dims_rope,
    )


def train_teacher(
    pre: PretrainSection, vae_dir: Path, out: Path, *, device="cpu", progress: bool = True
) -> Path:
    """Train a small FLUX transformer as a rectified-flow model on the VAE's normalised latents of photo crops.

    Unconditional: the text conditioning is one fixed random embedding (the "empty prompt" of this model), stored
    with it. Writes a fluxsr model folder (the teacher, and the student's starting point) to ``out``.
    """
    from diffusers import AutoencoderKL

    cfg = pre.teacher
    setup_cuda_training()
    torch.manual_seed(cfg.seed)
    vae = AutoencoderKL.from_pretrained(Path(vae_dir) / "vae", local_files_only=True).to(device).eval()
    vae.requires_grad_(False)
    tr = build_transformer(teacher_config(cfg, vae.config.latent_channels)).to(device).train()
    gc = torch.Generator().manual_seed(cfg.seed + 1)
    cond = TextCond(
        torch.randn(1, cfg.text_len, cfg.text_dim, generator=gc),
        torch.randn(1, cfg.text_dim, generator=gc),
        prompt="",
    )
    model = FluxSRModel(tr, vae, cond.to(device), ModelSpec(name="teacher"))
    photos = load_photos(pre.photos, pre.max_side)
    update = _optimizer(tr, cfg.lr, cfg.steps)
    g = torch.Generator().manual_seed(cfg.seed)

    def step(i: int) -> dict:
        x = random_crops(photos, cfg.batch_size, cfg.crop, g).to(device)
        with torch.no_grad():
            z0 = (
                vae.encode(x * 2 - 1).latent_dist.mode() - vae.config.shift_factor
            ) * vae.config.scaling_factor
        eps = torch.randn(z0.shape, generator=g).to(device)
        t = logit_normal_t(z0.shape[0], g).to(device)
        loss = F.mse_loss(velocity(model, interpolate(z0, eps, t), t), pair_velocity(eps, z0))
        update(loss)
        return {"loss": loss.item()}

    _loop("teacher", cfg.steps, step, Path(out), progress, cfg.time_limit)
    tr.eval()
    save_model_folder(FluxSRModel(tr.to("cpu"), vae.to("cpu"), cond, ModelSpec(name="teacher")), Path(out))
    return Path(out)
