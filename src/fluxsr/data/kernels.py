"""Real-ESRGAN blur kernels: generalized-Gaussian and plateau families (isotropic or rotated anisotropic), 2-D sinc
low-pass kernels and identity pulses, built in float64 and batched, and the random kernels of each blur stage."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .degradation_config import DegradationConfig
from .random_draws import between, categorical, uniform


def _grid(size: int) -> tuple[Tensor, Tensor]:
    """Centred float64 pixel coordinates ``(x, y)`` of a ``size x size`` kernel (x along columns)."""
    ax = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    yy, xx = torch.meshgrid(ax, ax, indexing="ij")
    return xx, yy


def _finish(kernel: Tensor, kernel_size: Tensor, size: int) -> Tensor:
    """Zero a ``(B, size, size)`` kernel outside its central ``kernel_size`` square and normalise to sum 1."""
    xx, yy = _grid(size)
    half = (kernel_size.to(torch.float64).reshape(-1, 1, 1) - 1) / 2
    kernel = kernel * ((xx.abs() <= half) & (yy.abs() <= half))
    return kernel / kernel.sum(dim=(-2, -1), keepdim=True)


def _batch(*values: Tensor | float | int) -> list[Tensor]:
    """Broadcast scalars / 1-D values to a common float64 batch vector."""
    return list(
        torch.broadcast_tensors(*(torch.as_tensor(v, dtype=torch.float64).reshape(-1) for v in values))
    )


def bivariate_kernel(
    sigma_x: Tensor | float,
    sigma_y: Tensor | float,
    theta: Tensor | float,
    beta: Tensor | float = 1.0,
    plateau: Tensor | bool = False,
    kernel_size: Tensor | int = 21,
    size: int = 21,
) -> Tensor:
    """Batch of anisotropic Gaussian-family kernels, ``(B, size, size)`` float64, each summing to 1.

    With ``Q = x^T Sigma^-1 x`` (``Sigma`` the covariance of axes ``sigma_x, sigma_y`` rotated by ``theta``):
    generalized Gaussian ``exp(-Q^beta / 2)`` (plain Gaussian at ``beta=1``), plateau ``1 / (1 + Q^beta)``.
    Each kernel is ``kernel_size x kernel_size`` (odd), zero-padded to ``size``.
    """
    sx, sy, th, be, pl, ks = _batch(sigma_x, sigma_y, theta, beta, plateau, kernel_size)
    xx, yy = _grid(size)
    c, s = th.cos().reshape(-1, 1, 1), th.sin().reshape(-1, 1, 1)
    u, v = c * xx + s * yy, -s * xx + c * yy
    q = (u / sx.reshape(-1, 1, 1)) ** 2 + (v / sy.reshape(-1, 1, 1)) ** 2
    qb = q ** be.reshape(-1, 1, 1)
    kernel = torch.where(pl.reshape(-1, 1, 1) > 0, 1.0 / (1.0 + qb), torch.exp(-0.5 * qb))
    return _finish(kernel, ks, size)


def sinc_kernel(omega_c: Tensor | float, kernel_size: Tensor | int = 21, size: int = 21) -> Tensor:
    """Batch of circular low-pass (2-D sinc, Bessel ``J1``) kernels with cutoff ``omega_c`` rad/pixel.

    ``k(r) = omega_c * J1(omega_c * r) / (2 pi r)``, ``k(0) = omega_c^2 / (4 pi)``, cropped to ``kernel_size``,
    zero-padded to ``size`` and normalised to sum 1. Returns ``(B, size, size)`` float64.
    """
    w, ks = _batch(omega_c, kernel_size)
    xx, yy = _grid(size)
    r = torch.hypot(xx, yy)
    w = w.reshape(-1, 1, 1)
    r_safe = torch.where(r > 0, r, torch.ones_like(r))
    kernel = torch.where(
        r > 0, w * torch.special.bessel_j1(w * r_safe) / (2 * math.pi * r_safe), w**2 / (4 * math.pi)
    )
    return _finish(kernel, ks, size)


def pulse_kernel(batch: int, size: int = 21) -> Tensor:
    """``(batch, size, size)`` identity kernels (a 1 at the centre)."""
    kernel = torch.zeros(batch, size, size, dtype=torch.float64)
    kernel[:, size // 2, size // 2] = 1.0
    return kernel


def _kernel_sizes(u: Tensor, cfg: DegradationConfig) -> Tensor:
    """Map uniforms to odd kernel sizes in ``[cfg.min_kernel_size, cfg.blur_kernel_size]``."""
    choices = torch.arange(cfg.min_kernel_size, cfg.blur_kernel_size + 1, 2)
    return choices[(u * len(choices)).long().clamp(max=len(choices) - 1)]


def random_kernel(batch: int, cfg: DegradationConfig, generator: torch.Generator, stage: int = 1) -> Tensor:
    """Draw ``batch`` Real-ESRGAN blur kernels for blur ``stage`` (1 or 2): ``(batch, K, K)`` float32, sum 1.

    Per kernel: an odd size in [min, max]; with ``sinc_prob`` a sinc with cutoff in [pi/3, pi] (size < 13)
    or [pi/5, pi]; otherwise a family from ``kernel_list`` with sigmas in ``blur_sigma`` (equal and unrotated
    for ``*iso``), rotation in [-pi, pi], and beta drawn half the time below 1 and half above 1.
    """
    kinds, probs, sinc_p, sigma, betag, betap = cfg.stage_kernel_settings(stage)
    size = cfg.blur_kernel_size
    u = uniform(generator, batch, 10)
    ksize = _kernel_sizes(u[:, 0], cfg)
    is_sinc = u[:, 1] < sinc_p
    omega = torch.where(
        ksize < 13, between(u[:, 2], math.pi / 3, math.pi), between(u[:, 2], math.pi / 5, math.pi)
    )
    names = [kinds[i] for i in categorical(u[:, 3], probs).tolist()]
    iso = torch.tensor([n.endswith("iso") and not n.endswith("aniso") for n in names])
    gen = torch.tensor([n.startswith("generalized") for n in names])
    plat = torch.tensor([n.startswith("plateau") for n in names])
    sx = between(u[:, 4], *sigma)
    sy = torch.where(iso, sx, between(u[:, 5], *sigma))
    theta = torch.where(iso, torch.zeros_like(sx), between(u[:, 6], -math.pi, math.pi))
    low = u[:, 7] < 0.5
    beta_g = torch.where(low, between(u[:, 8], betag[0], 1.0), between(u[:, 8], 1.0, betag[1]))
    beta_p = torch.where(low, between(u[:, 9], betap[0], 1.0), between(u[:, 9], 1.0, betap[1]))
    beta = torch.where(gen, beta_g, torch.where(plat, beta_p, torch.ones_like(sx)))
    blur = bivariate_kernel(sx, sy, theta, beta, plat, ksize, size)
    sinc = sinc_kernel(omega, ksize, size)
    return torch.where(is_sinc.reshape(-1, 1, 1), sinc, blur).float()


def final_sinc_kernel(batch: int, cfg: DegradationConfig, generator: torch.Generator) -> Tensor:
    """Draw the final-stage kernels: with ``final_sinc_prob`` a sinc (cutoff in [pi/3, pi]), else identity."""
    u = uniform(generator, batch, 3)
    ksize = _kernel_sizes(u[:, 1], cfg)
    sinc = sinc_kernel(between(u[:, 2], math.pi / 3, math.pi), ksize, cfg.blur_kernel_size)
    use = (u[:, 0] < cfg.final_sinc_prob).reshape(-1, 1, 1)
    return torch.where(use, sinc, pulse_kernel(batch, cfg.blur_kernel_size)).float()
