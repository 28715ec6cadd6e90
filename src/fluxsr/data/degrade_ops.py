"""The image operations of the degradation on (B, C, H, W) batches: per-sample blur, resize (and its random draw),
Gaussian and Poisson noise (colour or gray per sample), and a real JPEG round trip with OpenCV."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .degradation_config import RESIZE_MODES
from .random_draws import categorical, uniform

POISSON_LEVELS = 256
_GRAY_WEIGHTS = (0.299, 0.587, 0.114)


def _all_pulses(kernel: Tensor) -> bool:
    """Whether every ``(B, K, K)`` kernel is the identity pulse."""
    c = kernel.shape[-1] // 2
    return bool((kernel[:, c, c] == 1).all()) and int(kernel.count_nonzero()) == kernel.shape[0]


def apply_blur(img: Tensor, kernel: Tensor) -> Tensor:
    """Filter ``(B, C, H, W)`` images with per-sample ``(B, K, K)`` (or one ``(K, K)``) kernels.

    Grouped ``conv2d`` (correlation, as in BasicSR's ``filter2D``; the kernels are point-symmetric) with
    reflect padding, or replicate padding when the image is not larger than the kernel radius.
    """
    b, c, h, w = img.shape
    if kernel.dim() == 2:
        kernel = kernel.expand(b, -1, -1)
    if kernel.shape[0] != b:
        raise ValueError(f"{kernel.shape[0]} kernels for a batch of {b}")
    k = kernel.shape[-1]
    p = k // 2
    if _all_pulses(kernel):
        return img
    mode = "reflect" if p < h and p < w else "replicate"
    x = F.pad(img, (p, p, p, p), mode=mode).reshape(1, b * c, h + 2 * p, w + 2 * p)
    weight = kernel.to(img).repeat_interleave(c, dim=0).unsqueeze(1)
    return F.conv2d(x, weight, groups=b * c).reshape(b, c, h, w)


def resize(img: Tensor, size: tuple[int, int], mode: str) -> Tensor:
    """Resize to ``size`` with ``mode`` in ``RESIZE_MODES`` (no antialiasing, as Real-ESRGAN)."""
    if mode not in RESIZE_MODES:
        raise ValueError(f"resize mode {mode!r} not in {RESIZE_MODES}")
    size = (max(1, int(size[0])), max(1, int(size[1])))
    if mode == "area":
        return F.interpolate(img, size=size, mode="area")
    return F.interpolate(img, size=size, mode=mode, align_corners=False)


def draw_resize(
    resize_prob: Sequence[float], resize_range: Sequence[float], generator: torch.Generator
) -> tuple[float, str]:
    """Draw ``(scale, mode)``: up in [1, high], down in [low, 1] or keep (1), by ``resize_prob``; mode uniform."""
    u = uniform(generator, 3)
    kind = int(categorical(u[:1], resize_prob)[0])
    lo, hi = resize_range
    scale = (1.0 + float(u[1]) * (hi - 1.0), lo + float(u[1]) * (1.0 - lo), 1.0)[kind]
    return scale, RESIZE_MODES[min(int(float(u[2]) * 3), 2)]


def _per_sample(value: Tensor | float | bool, batch: int, dtype: torch.dtype) -> Tensor:
    """A length-``batch`` CPU vector from a scalar or a length-B vector."""
    return torch.as_tensor(value).detach().cpu().to(dtype).reshape(-1).expand(batch)


def to_gray(img: Tensor) -> Tensor:
    """ITU-R 601 luma ``(B, 1, H, W)`` of RGB images."""
    r, g, b = img.unbind(1)
    return (_GRAY_WEIGHTS[0] * r + _GRAY_WEIGHTS[1] * g + _GRAY_WEIGHTS[2] * b).unsqueeze(1)


def _add_noise(
    img: Tensor,
    strength: Tensor | float,
    gray: Tensor | bool,
    clip: bool,
    color_fn: Callable[[Tensor], Tensor],
    gray_fn: Callable[[Tensor], Tensor],
) -> Tensor:
    """Add ``strength * noise`` per sample: ``color_fn(img[i])`` or, for gray samples, ``gray_fn(img[i])``
    shared by all channels. Noise is drawn only for the samples with non-zero strength."""
    b = img.shape[0]
    amount = _per_sample(strength, b, torch.float64)
    is_gray = _per_sample(gray, b, torch.bool)
    noise = torch.zeros_like(img)
    for select, fn in ((~is_gray, color_fn), (is_gray, gray_fn)):
        idx = ((amount > 0) & select).nonzero().flatten().to(img.device)
        if len(idx):
            noise[idx] = fn(img[idx]).expand(-1, img.shape[1], -1, -1)
    out = img + noise * amount.to(device=img.device, dtype=img.dtype).reshape(-1, 1, 1, 1)
    return out.clamp(0, 1) if clip else out


def _randn_like(img: Tensor, generator: torch.Generator) -> Tensor:
    """Standard normal noise shaped like ``img``, drawn on the generator's device."""
    return torch.randn(img.shape, generator=generator, device=generator.device, dtype=img.dtype).to(
        img.device
    )


def add_gaussian_noise(
    img: Tensor, sigma: Tensor | float, gray: Tensor | bool, generator: torch.Generator, clip: bool = True
) -> Tensor:
    """Add N(0, (sigma/255)^2) noise; ``sigma`` (0-255 units) and ``gray`` are scalars or per-sample (B,).

    Gray samples get one noise plane shared by all channels. Clamped to [0, 1] when ``clip``.
    """
    return _add_noise(
        img,
        torch.as_tensor(sigma) / 255.0,
        gray,
        clip,
        lambda x: _randn_like(x, generator),
        lambda x: _randn_like(x[:, :1], generator),
    )


def _shot_noise(img: Tensor, generator: torch.Generator) -> Tensor:
    """Poisson noise of an image rounded to 8-bit levels, with ``POISSON_LEVELS`` photons per unit intensity."""
    q = (img * 255.0).round().clamp(0, 255) / 255.0
    rate = (q * POISSON_LEVELS).to(generator.device)
    return torch.poisson(rate, generator=generator).to(img.device) / POISSON_LEVELS - q


def add_poisson_noise(
    img: Tensor, scale: Tensor | float, gray: Tensor | bool, generator: torch.Generator, clip: bool = True
) -> Tensor:
    """Add Poisson (shot) noise times ``scale``; ``scale`` and ``gray`` are scalars or per-sample (B,).

    The noise of a pixel of intensity ``I`` has variance ``scale^2 * I / 256``. Gray samples draw the noise
    on the luma and share it across channels. Clamped to [0, 1] when ``clip``.
    """
    return _add_noise(
        img,
        scale,
        gray,
        clip,
        lambda x: _shot_noise(x, generator),
        lambda x: _shot_noise(to_gray(x), generator),
    )


def jpeg_compress(img: Tensor, quality: Tensor | Sequence[int] | int) -> Tensor:
    """JPEG encode/decode each RGB image of the batch at its integer ``quality`` (1-100) with OpenCV.

    Runs on the CPU (the result returns to ``img``'s device and dtype); input is clamped and quantised to
    8 bits first. Not differentiable.
    """
    b = img.shape[0]
    q = torch.as_tensor(quality).reshape(-1).expand(b).round().long().tolist()
    arr = (img.detach().float().clamp(0, 1) * 255.0).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    out = np.empty_like(arr)
    for i in range(b):
        if not 1 <= q[i] <= 100:
            raise ValueError(f"JPEG quality {q[i]} outside [1, 100]")
        bgr = np.ascontiguousarray(arr[i, :, :, ::-1])
        ok, buf = cv2.imencode(".jpg", bgr, [int(cv2.IMWRITE_JPEG_QUALITY), int(q[i])])
        if not ok:
            raise RuntimeError("OpenCV failed to encode JPEG")
        out[i] = cv2.imdecode(buf, cv2.IMREAD_COLOR)[:, :, ::-1]
    return torch.from_numpy(out).permute(0, 3, 1, 2).to(device=img.device, dtype=img.dtype) / 255.0
