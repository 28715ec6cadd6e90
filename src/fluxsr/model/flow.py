"""Rectified-flow and Flow Trajectory Distillation (FTD) math, as small pure functions.

Convention (FLUX / SD3): ``x_t = (1 - t) * x_0 + t * eps`` with ``t`` in [0, 1], ``t = 0`` data and ``t = 1`` noise,
velocity ``u = eps - x_0``. Latents are (B, C, h, w) VAE latents; the transformer sees them packed 2x2 into tokens
(B, h/2 * w/2, 4C). FTD notation follows docs/method.md: ``T_L`` is the flow time assigned to the low-resolution (LR)
latent ``z_L``, ``z_0`` the teacher's clean latent and ``eps`` its noise.

Nothing here touches files, models or devices beyond the tensors it is given.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from einops import rearrange
from torch import Tensor

# ----------------------------------------------------------------------------------------------------------------
# Latent packing and position ids
# ----------------------------------------------------------------------------------------------------------------


def pack(z: Tensor) -> Tensor:
    """Pack latents (B, C, h, w) into 2x2 patch tokens (B, h/2 * w/2, 4C), channel order (c, ph, pw) as FLUX."""
    return rearrange(z, "b c (h ph) (w pw) -> b (h w) (c ph pw)", ph=2, pw=2)


def unpack(x: Tensor, h: int, w: int) -> Tensor:
    """Inverse of :func:`pack`: tokens (B, h/2 * w/2, 4C) back to latents (B, C, h, w) for latent size h x w."""
    return rearrange(x, "b (h w) (c ph pw) -> b c (h ph) (w pw)", h=h // 2, w=w // 2, ph=2, pw=2)


def img_ids(h: int, w: int, offset: tuple[int, int] = (0, 0), device=None, dtype=torch.float32) -> Tensor:
    """Position ids (h/2 * w/2, 3) of the tokens of an h x w latent tile placed at latent ``offset`` (row, col).

    Column 0 is 0 (the text/image axis), columns 1 and 2 are the token's row and column in the WHOLE image,
    so every tile of a tiled image is rotary-embedded at its true place (``offset`` must be even).
    """
    if h % 2 or w % 2 or offset[0] % 2 or offset[1] % 2:
        raise ValueError(f"latent size {h}x{w} and offset {offset} must be even")
    rows = torch.arange(h // 2, device=device, dtype=dtype) + offset[0] // 2
    cols = torch.arange(w // 2, device=device, dtype=dtype) + offset[1] // 2
    ids = torch.zeros(h // 2, w // 2, 3, device=device, dtype=dtype)
    ids[..., 1] = rows[:, None]
    ids[..., 2] = cols[None, :]
    return rearrange(ids, "h w c -> (h w) c")


def txt_ids(n: int, device=None, dtype=torch.float32) -> Tensor:
    """Position ids (n, 3) of n text tokens: all zeros, as in FLUX."""
    return torch.zeros(n, 3, device=device, dtype=dtype)


# ----------------------------------------------------------------------------------------------------------------
# Time schedule
# ----------------------------------------------------------------------------------------------------------------


def time_shift(mu: float, sigma: float, t: Tensor | float) -> Tensor | float:
    """FLUX's resolution-dependent shift: ``t' = e^mu / (e^mu + (1/t - 1)^sigma)`` (identity at mu = 0, sigma = 1)."""
    if isinstance(t, Tensor):
        return math.exp(mu) / (math.exp(mu) + (1 / t - 1) ** sigma)
    if t <= 0:
        return 0.0
    return math.exp(mu) / (math.exp(mu) + (1 / t - 1) ** sigma)


def shift_mu(
    image_seq_len: int,
    base_shift: float = 0.5,
    max_shift: float = 1.15,
    base_len: int = 256,
    max_len: int = 4096,
) -> float:
    """Linear ``mu`` in the number of image tokens: ``base_shift`` at ``base_len`` tokens, ``max_shift`` at ``max_len``."""
    slope = (max_shift - base_shift) / (max_len - base_len)
    return base_shift + slope * (image_seq_len - base_len)


def get_schedule(
    num_steps: int, image_seq_len: int, base_shift: float = 0.5, max_shift: float = 1.15, shift: bool = True
) -> list[float]:
    """Times from 1 (noise) down to 0 (data), ``num_steps + 1`` values, shifted as FLUX.1-dev when ``shift``."""
    ts = torch.linspace(1, 0, num_steps + 1)
    if shift:
        mu = shift_mu(image_seq_len, base_shift, max_shift)
        ts = torch.tensor([time_shift(mu, 1.0, float(t)) for t in ts])
    return ts.tolist()


def get_noise(shape: tuple[int, ...], seed: int, device=None, dtype=torch.float32) -> Tensor:
    """Standard normal noise of ``shape``, drawn on the CPU from ``seed`` so it is identical on every device."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g, dtype=torch.float32).to(device=device, dtype=dtype)


# ----------------------------------------------------------------------------------------------------------------
# Sampling (the teacher) and inversion (real photos -> noise)
# ----------------------------------------------------------------------------------------------------------------

Velocity = Callable[[Tensor, float], Tensor]


def denoise(velocity: Velocity, z: Tensor, timesteps: list[float]) -> Tensor:
    """Euler integration of ``dz/dt = v(z, t)`` along ``timesteps`` (decreasing: noise -> data).

    ``z_{t_{i+1}} = z_{t_i} + (t_{i+1} - t_i) * v(z_{t_i}, t_i)``.
    """
    for t_cur, t_next in zip(timesteps[:-1], timesteps[1:], strict=True):
        z = z + (t_next - t_cur) * velocity(z, t_cur)
    return z


def invert(velocity: Velocity, z0: Tensor, timesteps: list[float]) -> Tensor:
    """Run the same ODE backwards (data -> noise) with Euler steps: ``timesteps`` given decreasing, used reversed.

    ``z_{t_i} = z_{t_{i+1}} + (t_i - t_{i+1}) * v(z_{t_{i+1}}, t_{i+1})``. Returns the noise the teacher would map
    (approximately, up to discretisation error) back to ``z0``.
    """
    rev = list(reversed(timesteps))
    for t_cur, t_next in zip(rev[:-1], rev[1:], strict=True):
        z0 = z0 + (t_next - t_cur) * velocity(z0, t_cur)
    return z0


# ----------------------------------------------------------------------------------------------------------------
# Flow Trajectory Distillation (docs/method.md, section 3)
# ----------------------------------------------------------------------------------------------------------------


def _bcast(t: Tensor | float, like: Tensor) -> Tensor | float:
    """Reshape a per-sample time (B,) so it broadcasts against ``like`` (B, ...)."""
    if isinstance(t, Tensor) and t.ndim == 1:
        return t.view(-1, *([1] * (like.ndim - 1)))
    return t


def interpolate(z0: Tensor, eps: Tensor, t: Tensor | float) -> Tensor:
    """Point on the straight rectified-flow path from data to noise: ``x_t = (1 - t) * z_0 + t * eps``."""
    t = _bcast(t, z0)
    return (1 - t) * z0 + t * eps


def logit_normal_t(batch: int, generator: torch.Generator | None = None) -> Tensor:
    """Training times ``t = sigmoid(n)``, ``n ~ N(0, 1)``: the SD3/FLUX logit-normal density (more weight at mid
    times), one per sample, drawn on the CPU."""
    return torch.sigmoid(torch.randn(batch, generator=generator))


def ftd_point(z_l: Tensor, eps: Tensor, t: Tensor | float, t_l: float) -> Tensor:
    """Point on the straight path from ``z_L`` (at ``t = T_L``) to ``eps`` (at ``t = 1``).

    ``z_t = (1 - t) / (1 - T_L) * z_L + (t - T_L) / (1 - T_L) * eps``, for ``t`` in [T_L, 1].
    """
    t = _bcast(t, z_l)
    return (1 - t) / (1 - t_l) * z_l + (t - t_l) / (1 - t_l) * eps


def pair_velocity(eps: Tensor, z0: Tensor) -> Tensor:
    """Straight teacher-pair velocity ``u = eps - z_0``."""
    return eps - z0


def lr_velocity(eps: Tensor, z_l: Tensor, t_l: float) -> Tensor:
    """Noise-to-LR velocity ``u_L = (eps - z_L) / (1 - T_L)``."""
    return (eps - z_l) / (1 - t_l)


def sr_velocity(z_l: Tensor, z0: Tensor, t_l: float) -> Tensor:
    """LR-to-HR velocity ``u_SR = (z_L - z_0) / T_L``: the oracle the one-step student parameterises."""
    return (z_l - z0) / t_l


def implied_velocity(u: Tensor, v_theta: Tensor, t_l: float) -> Tensor:
    """Velocity implied by the student: ``v_phi = (u - T_L * v_theta) / (1 - T_L)``.

    From ``u = (1 - T_L) u_L + T_L u_SR``: replacing ``u_SR`` by the student's ``v_theta`` and solving for ``u_L``.
    """
    return (u - t_l * v_theta) / (1 - t_l)


def ftd_loss(v_theta: Tensor, z_l: Tensor, z0: Tensor, eps: Tensor, t_l: float) -> Tensor:
    """FTD loss ``|| v_phi - (eps - z_L) / (1 - T_L) ||^2`` (mean over all elements).

    Reconstructed from the paper's method figure (not read verbatim, see docs/method.md): it equals
    ``(T_L / (1 - T_L))^2 * || v_theta - (z_L - z_0) / T_L ||^2`` and is exactly 0 for the oracle
    ``v_theta = u_SR`` at every ``t``. ``v_theta`` is the student's output at ``z_t`` (see :func:`ftd_point`).
    """
    v_phi = implied_velocity(pair_velocity(eps, z0), v_theta, t_l)
    return torch.mean((v_phi - lr_velocity(eps, z_l, t_l)) ** 2)


def one_step(z_l: Tensor, v_theta: Tensor, t_l: float) -> Tensor:
    """One-step super-resolution: ``z_H = z_L - T_L * v_theta(z_L, T_L)`` (an Euler step from T_L to 0)."""
    return z_l - t_l * v_theta


def sample_ftd_t(batch: int, t_l: float, generator: torch.Generator | None = None, device=None) -> Tensor:
    """Times ``t ~ U[T_L, 1]`` for the FTD branch, one per sample (drawn on the CPU for reproducibility)."""
    u = torch.rand(batch, generator=generator)
    return (t_l + (1 - t_l) * u).to(device)
