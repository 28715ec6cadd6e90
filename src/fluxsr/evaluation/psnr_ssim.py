"""Full-reference PSNR and SSIM: the BasicSR / MATLAB definitions (:func:`psnr`, :func:`ssim`) and pyiqa 0.1.16's
(:func:`pyiqa_psnr`, :func:`pyiqa_ssim`; archs/psnr_arch.py, ssim_arch.py, utils/color_util.py). Which one a
benchmark number uses, with which crop and quantisation, is a protocol (:mod:`fluxsr.evaluation.protocol`).

Inputs are float tensors in [0, 1], (3, H, W) -> 0-d result, (B, 3, H, W) -> shape (B,); float64 throughout.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .metric_inputs import Tensor, as_batch, check_pair, crop_pair, luma, luma255, rounded_luma255, unbatch


def mse(a: Tensor, b: Tensor) -> Tensor:
    """Per-image mean squared error over (C, H, W) of two (B, C, H, W) tensors: ``mean((a - b)^2)``."""
    return ((a.to(torch.float64) - b.to(torch.float64)) ** 2).mean(dim=(1, 2, 3))


def psnr_from_mse(err: Tensor, data_range: float = 1.0, eps: float = 0.0) -> Tensor:
    """``PSNR = 10 log10(data_range^2 / (MSE + eps))``; with eps = 0 an MSE of 0 gives +inf."""
    return 10.0 * torch.log10(data_range**2 / (err + eps))


def psnr(
    a: Tensor, b: Tensor, *, crop_border: int = 0, y_channel: bool = False, data_range: float = 1.0
) -> Tensor:
    """PSNR in dB between ``a`` and ``b`` (values in [0, data_range]); +inf when they are identical.

    ``y_channel`` uses the BT.601 luma (:func:`rgb_to_y`, unrounded); ``crop_border`` pixels are removed on each side
    first. ``PSNR = 10 log10(data_range^2 / MSE)``, MSE over all remaining pixels and channels, per image.
    """
    check_pair(a, b)
    a4, single = as_batch(a)
    b4, _ = as_batch(b)
    a4, b4 = crop_pair(a4, b4, crop_border)
    if y_channel:
        a4, b4 = luma(a4 / data_range, True) * data_range, luma(b4 / data_range, True) * data_range
    return unbatch(psnr_from_mse(mse(a4, b4), data_range), single)


def gaussian_window(size: int = 11, sigma: float = 1.5) -> Tensor:
    """MATLAB ``fspecial('gaussian', size, sigma)``: ``h = exp(-(x^2 + y^2) / (2 sigma^2))`` on the centred grid,
    entries below ``eps * max(h)`` set to 0, normalised to sum 1. Float64, shape (size, size)."""
    r = (size - 1) / 2.0
    t = torch.arange(size, dtype=torch.float64) - r
    h = torch.exp(-(t[:, None] ** 2 + t[None, :] ** 2) / (2.0 * sigma * sigma))
    h[h < torch.finfo(torch.float64).eps * h.max()] = 0.0
    return h / h.sum()


def gaussian_kernel_1d(size: int = 11, sigma: float = 1.5) -> Tensor:
    """Normalised 1-D Gaussian ``g_i = exp(-t_i^2 / (2 sigma^2)) / sum``, ``t = -(size-1)/2 .. (size-1)/2``; its outer
    product with itself is :func:`gaussian_window` (when fspecial's eps threshold zeroes nothing)."""
    t = torch.arange(size, dtype=torch.float64) - (size - 1) / 2.0
    g = torch.exp(-(t**2) / (2.0 * sigma * sigma))
    return g / g.sum()


def filter_valid(x: Tensor, kernel: Tensor) -> Tensor:
    """Correlate each channel of (B, C, H, W) ``x`` with the separable window ``outer(kernel, kernel)`` (1-D
    ``kernel`` of length k), 'valid' region only: output (B, C, H-k+1, W-k+1). Two 1-D passes (float64 2-D
    convolution is ~10x slower on CPU); equal to the 2-D correlation up to float64 rounding."""
    c, k = x.shape[1], kernel.numel()
    kern = kernel.to(x.dtype)
    x = F.conv2d(x, kern.view(1, 1, k, 1).expand(c, 1, k, 1), groups=c)
    return F.conv2d(x, kern.view(1, 1, 1, k).expand(c, 1, 1, k), groups=c)


def ssim_map(x: Tensor, y: Tensor, kernel: Tensor, c1: float, c2: float, clamp_cs: bool = False) -> Tensor:
    """SSIM map ``l * cs`` with ``l = (2 mu_x mu_y + C1) / (mu_x^2 + mu_y^2 + C1)`` and
    ``cs = (2 s_xy + C2) / (s_x^2 + s_y^2 + C2)``; means/variances are weighted by the separable window
    ``outer(kernel, kernel)`` ('valid', :func:`filter_valid`).
    ``clamp_cs`` replaces cs by max(cs, 0) (pyiqa)."""
    mu_x, mu_y = filter_valid(x, kernel), filter_valid(y, kernel)
    s_xx = filter_valid(x * x, kernel) - mu_x**2
    s_yy = filter_valid(y * y, kernel) - mu_y**2
    s_xy = filter_valid(x * y, kernel) - mu_x * mu_y
    cs = (2.0 * s_xy + c2) / (s_xx + s_yy + c2)
    if clamp_cs:
        cs = cs.clamp_min(0.0)
    return (2.0 * mu_x * mu_y + c1) / (mu_x**2 + mu_y**2 + c1) * cs


def ssim(a: Tensor, b: Tensor, *, crop_border: int = 0, y_channel: bool = False) -> Tensor:
    """SSIM (Wang et al. 2004) as MATLAB ``ssim_index`` / BasicSR ``calculate_ssim``, per image.

    Images in [0, 1] are scaled to 0..255 (luma :func:`rgb_to_y` when ``y_channel``, unrounded), ``crop_border``
    removed, then the mean of :func:`ssim_map` with an 11x11 Gaussian window (sigma 1.5), 'valid' filtering,
    ``C1 = (0.01 * 255)^2``, ``C2 = (0.03 * 255)^2``; for several channels the mean over channels.
    """
    check_pair(a, b)
    a4, single = as_batch(a)
    b4, _ = as_batch(b)
    a4, b4 = crop_pair(a4, b4, crop_border)
    x, y = luma(a4, y_channel) * 255.0, luma(b4, y_channel) * 255.0
    m = ssim_map(x, y, gaussian_kernel_1d(11, 1.5), (0.01 * 255) ** 2, (0.03 * 255) ** 2)
    return unbatch(m.mean(dim=(1, 2, 3)), single)


def pyiqa_psnr(a: Tensor, b: Tensor, *, crop_border: int = 0) -> Tensor:
    """pyiqa ``psnr`` with ``test_y_channel=True, color_space='ycbcr'``: Y in [0, 1] (unrounded; :func:`luma255`
    in float64 where pyiqa uses float32, a difference below 1e-5 dB), ``PSNR = 10 log10(1 / (MSE + 1e-8))`` -- 80 dB
    for identical images."""
    check_pair(a, b)
    a4, single = as_batch(a)
    b4, _ = as_batch(b)
    a4, b4 = crop_pair(a4, b4, crop_border)
    if a4.shape[1] == 3:
        a4, b4 = luma255(a4) / 255.0, luma255(b4) / 255.0
    return unbatch(psnr_from_mse(mse(a4, b4), 1.0, eps=1e-8), single)


def pyiqa_ssim(a: Tensor, b: Tensor, *, crop_border: int = 0) -> Tensor:
    """pyiqa ``ssim`` with ``test_y_channel=True, color_space='ycbcr'`` (downsample=False):
    ``Y255 = round(Y * 255)`` (:func:`luma255`, ties to even), 11x11 sigma-1.5 Gaussian, 'valid' filtering,
    C1 = (0.01*255)^2, C2 = (0.03*255)^2, ``ssim_map = l * max(cs, 0)``, mean. (pyiqa's window is the float32-rounded
    2-D fspecial; the exact separable float64 window used here moves SSIM by < 1e-6: 5e-7 at most on Set5+Set14.)"""
    check_pair(a, b)
    a4, single = as_batch(a)
    b4, _ = as_batch(b)
    a4, b4 = crop_pair(a4, b4, crop_border)
    x, y = rounded_luma255(a4, "ycbcr"), rounded_luma255(b4, "ycbcr")
    m = ssim_map(x, y, gaussian_kernel_1d(11, 1.5), (0.01 * 255) ** 2, (0.03 * 255) ** 2, clamp_cs=True)
    return unbatch(m.mean(dim=(1, 2, 3)), single)
