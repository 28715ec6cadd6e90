"""One training step of FluxSR (docs/method.md, sections 3-6), and the deterministic batches it reads.

Per micro-batch::

    x0, eps, z0      <- pairs (same random crop, aligned to the latent grid)            load_batch
    xL_up            <- Real-ESRGAN degradation of x0, resized back to x0's size         (seeded)
    t ~ U[T_L, 1]    <- the FTD branch's times                                           (seeded)
    zL               <- E(xL_up)                                                         training_step (frozen VAE)
    SR branch:  zH = zL - T_L * v(zL, T_L);  xH = D(zH)  -> MSE(xH, x0) + TV-LPIPS(xH, x0) + ADL(hooked blocks)
    FTD branch: z_t = path(zL, eps, t);  L_FTD(v(z_t, t))
    L = ftd * L_FTD + mse * MSE + lpips * TV-LPIPS + adl * L_ADL  -> backward, clip, optimiser step

All randomness (data order, crops, degradation, FTD times) is derived from (seed, micro-batch index, rank), so a
resumed run sees exactly the data and noise an uninterrupted one would.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import reduce
from operator import add
from pathlib import Path

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from torch import Tensor, nn

from ..data.degradation_config import DegradationConfig
from ..data.degrade import degrade_to_input
from ..losses.adl import ADLCollector
from ..losses.tv_lpips import TVLPIPS
from ..model.flow import ftd_loss, ftd_point, one_step, sample_ftd_t
from ..model.model import FluxSRModel, model_time, velocity
from .pairs import load_pair
from .recipe import LossSection

TERMS = ("ftd", "mse", "lpips", "adl")


# ----------------------------------------------------------------------------------------------------------------
# Deterministic data order and randomness
# ----------------------------------------------------------------------------------------------------------------


def sample_generator(seed: int, micro: int, rank: int) -> torch.Generator:
    """CPU generator for micro-batch ``micro`` on process ``rank``: independent of how the run was split up."""
    return torch.Generator().manual_seed(((seed * 1_000_003 + micro) * 1009 + rank) % (2**63 - 1))


def batch_indices(n: int, micro: int, batch: int, rank: int, world: int, seed: int) -> list[int]:
    """Positions in the list of pairs for micro-batch ``micro`` of process ``rank``: a fresh permutation each epoch."""
    out = []
    for j in range(batch):
        pos = (micro * world + rank) * batch + j
        epoch, k = divmod(pos, n)
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 7919 + epoch))
        out.append(int(perm[k]))
    return out


def aligned_crop(pair: dict, crop: int, align: int, vae_scale: int, g: torch.Generator) -> dict:
    """Same random crop of the image and both latents; offsets on the ``align``-pixel grid (16 for FLUX)."""
    h, w = pair["image"].shape[-2:]
    if crop <= 0 or crop >= min(h, w):
        return pair
    top = int(torch.randint(0, (h - crop) // align + 1, (1,), generator=g)) * align
    left = int(torch.randint(0, (w - crop) // align + 1, (1,), generator=g)) * align
    lt, ll, lc = top // vae_scale, left // vae_scale, crop // vae_scale
    return {
        "image": pair["image"][:, top : top + crop, left : left + crop],
        "eps": pair["eps"][..., lt : lt + lc, ll : ll + lc],
        "z0": pair["z0"][..., lt : lt + lc, ll : ll + lc],
    }


@dataclass(frozen=True)
class Batch:
    """One micro-batch on the device: the HR target ``x0`` (B, 3, H, W) in [0, 1], its degraded input resized back
    to x0's size ``lr_up``, the pair latents ``eps`` and ``z0`` (B, C, h, w) and the FTD times ``t`` (B,) in
    [T_L, 1]. ``step`` names the optimiser step in error messages."""

    x0: Tensor
    lr_up: Tensor
    eps: Tensor
    z0: Tensor
    t: Tensor
    step: int = 0


@dataclass(frozen=True)
class BatchSource:
    """Where micro-batches come from: the pairs, the crop and degradation, the seed and this process's place."""

    pairs_dir: Path
    indices: list[int]
    batch_size: int
    crop: int
    align: int
    vae_scale: int
    degradation: DegradationConfig
    seed: int
    rank: int = 0
    world: int = 1


def load_batch(src: BatchSource, micro: int, step: int, t_l: float, device) -> Batch:
    """Micro-batch ``micro``: its pairs, one crop each, the degradation and the FTD times, all seeded by
    (seed, micro, rank) in that order."""
    g = sample_generator(src.seed, micro, src.rank)
    picks = batch_indices(len(src.indices), micro, src.batch_size, src.rank, src.world, src.seed)
    items = [
        aligned_crop(load_pair(src.pairs_dir, src.indices[i]), src.crop, src.align, src.vae_scale, g)
        for i in picks
    ]
    x0 = torch.stack([it["image"] for it in items]).to(device)
    eps = torch.cat([it["eps"] for it in items]).to(device)
    z0 = torch.cat([it["z0"] for it in items]).to(device)
    _, lr_up = degrade_to_input(x0, src.degradation, g)
    t = sample_ftd_t(x0.shape[0], t_l, g, device)
    return Batch(x0=x0, lr_up=lr_up, eps=eps, z0=z0, t=t, step=step)


# ----------------------------------------------------------------------------------------------------------------
# The training step
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class Trainer:
    """What a training step works with. ``net`` is the transformer as the accelerator prepared it (the model's own
    transformer when not prepared); ``trainable`` its parameters that train (the prepared ones: FSDP replaces
    them); ``model_dtype`` the dtype the transformer runs in; ``tv_lpips`` / ``adl`` are None when their weight
    is 0."""

    model: FluxSRModel
    net: nn.Module
    optimizer: torch.optim.Optimizer
    acc: Accelerator
    weights: LossSection
    t_l: float
    trainable: list[nn.Parameter]
    model_dtype: torch.dtype
    tv_lpips: TVLPIPS | None = None
    adl: ADLCollector | None = None
    max_grad_norm: float = 0.0


def sr_branch(tr: Trainer, z_l: Tensor, x0: Tensor) -> dict[str, Tensor]:
    """One step from zL, decoded and compared with x0: MSE, TV-LPIPS and ADL (zero when their weight is 0)."""
    v_l = velocity(tr.model, z_l, tr.t_l, net=tr.net).float()
    x_h = tr.model.decode(one_step(z_l, v_l, tr.t_l)).float()
    parts = {"mse": F.mse_loss(x_h, x0)}
    parts["lpips"] = tr.tv_lpips(x_h, x0).mean() if tr.tv_lpips is not None else x_h.new_zeros(())
    parts["adl"] = tr.adl.loss() if tr.adl is not None else x_h.new_zeros(())
    return parts


def ftd_branch(tr: Trainer, z_l: Tensor, batch: Batch) -> Tensor:
    """L_FTD of the student at the batch's times on the path from zL to eps (not counted by ADL)."""
    t = model_time(batch.t, tr.model_dtype)
    if tr.adl is not None:
        tr.adl.enabled = False
    v_t = velocity(tr.model, ftd_point(z_l, batch.eps, t, tr.t_l), t, net=tr.net).float()
    if tr.adl is not None:
        tr.adl.enabled = True
    return ftd_loss(v_t, z_l, batch.z0, batch.eps, tr.t_l)


def weighted_loss(parts: dict[str, Tensor], weights: LossSection) -> Tensor:
    """``ftd * L_FTD + mse * MSE + lpips * TV-LPIPS + adl * L_ADL``, summed in that order."""
    return reduce(add, (getattr(weights, name) * parts[name] for name in TERMS))


def term_grad_norms(
    parts: dict[str, Tensor], weights: LossSection, params: list[nn.Parameter]
) -> dict[str, float]:
    """``gn_<term>``: the L2 norm over ``params`` of the gradient of each weighted term, ``weight * term``, one
    backward pass each (the graph is kept for the step's own backward; ``.grad`` is not touched). A term with
    weight 0 costs nothing and is reported as 0."""
    out = {}
    for name in TERMS:
        weighted = getattr(weights, name) * parts[name]
        if getattr(weights, name) == 0 or not weighted.requires_grad:
            out[f"gn_{name}"] = 0.0
            continue
        grads = torch.autograd.grad(weighted, params, retain_graph=True, allow_unused=True)
        out[f"gn_{name}"] = float(
            torch.stack([g.float().pow(2).sum() for g in grads if g is not None]).sum().sqrt()
        )
    return out


def training_step(tr: Trainer, batch: Batch, *, grad_norms: bool = False) -> dict[str, float]:
    """SR branch + FTD branch + weighted loss on one micro-batch, then backward, gradient clipping (at the last
    micro-batch of an accumulation) and the optimiser step. Returns the loss terms: ``loss`` (the weighted sum),
    ``ftd``, ``mse``, ``lpips`` and ``adl``, and with ``grad_norms`` each weighted term's gradient norm
    (:func:`term_grad_norms`, ``gn_ftd``...). A loss that is not finite is a FloatingPointError naming the step."""
    with torch.no_grad():
        z_l = tr.model.encode(batch.lr_up).float()
    with tr.acc.accumulate(tr.net), tr.acc.autocast():
        parts = sr_branch(tr, z_l, batch.x0)
        parts["ftd"] = ftd_branch(tr, z_l, batch)
        loss = weighted_loss(parts, tr.weights)
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f"step {batch.step}: loss is {loss.item()} ({ {k: float(v) for k, v in parts.items()} })"
            )
        norms = term_grad_norms(parts, tr.weights, tr.trainable) if grad_norms else {}
        tr.acc.backward(loss)
        if tr.acc.sync_gradients and tr.max_grad_norm > 0:
            tr.acc.clip_grad_norm_(tr.net.parameters(), tr.max_grad_norm)  # FSDP clips only the whole net's
        tr.optimizer.step()
        tr.optimizer.zero_grad(set_to_none=True)
    return {"loss": loss.item(), **{name: val.item() for name, val in parts.items()}, **norms}
