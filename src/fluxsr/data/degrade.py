"""Real-ESRGAN second-order degradation, batched in torch, used to synthesise LR training inputs.

The pipeline follows Real-ESRGAN (Wang et al., 2021, ``realesrgan_x4plus`` training options)::

    blur(k1) -> random resize -> Gaussian|Poisson noise -> JPEG            (first order)
    blur(k2, p=0.8) -> random resize -> Gaussian|Poisson noise             (second order)
    [resize to H/s -> sinc -> JPEG]  or  [JPEG -> resize to H/s -> sinc]   (final, 50/50)
    clamp, round to 8-bit levels

Per-sample parameters (blur kernels, noise kind/sigma/scale/gray, JPEG quality, whether the second blur is
applied) are drawn independently for every image of the batch. Choices that set a tensor's shape or that
Real-ESRGAN makes once per batch (resize factor and mode of each stage, the final mode and order) are drawn
once per call. All randomness comes from the given ``torch.Generator``: the same seed gives bit-identical
output on the same device. Noise is drawn on the generator's device, then moved to the image's device.

JPEG is a real encode/decode round trip with OpenCV (libjpeg, 4:2:0 chroma) on the CPU, one image at a
time, at an integer quality; it has no gradient, which the degradation does not need.

Deviations from Real-ESRGAN: no USM sharpening of the HR (pass a sharpened HR if wanted); Poisson noise uses
a fixed 256 photon levels per unit intensity (Real-ESRGAN uses the next power of two above the number of
distinct 8-bit levels in the image, which is 256 for most natural crops); JPEG qualities are integers
drawn uniformly from the inclusive range; blur falls back to replicate padding on images not larger than
the kernel radius (where Real-ESRGAN's reflect padding would fail).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..io.config import from_dict, read_yaml_mapping
from ..io.guards import check_inputs_apart
from ..io.images import read_image, write_image

KERNEL_TYPES = ("iso", "aniso", "generalized_iso", "generalized_aniso", "plateau_iso", "plateau_aniso")
RESIZE_MODES = ("area", "bilinear", "bicubic")
POISSON_LEVELS = 256
_GRAY_WEIGHTS = (0.299, 0.587, 0.114)


@dataclass
class DegradationConfig:
    """Parameters of the degradation; defaults are Real-ESRGAN's ``train_realesrgan_x4plus.yml``.

    Ranges are ``(low, high)``; ``resize_prob*`` are the probabilities of ``(up, down, keep)``.
    Load from YAML with :meth:`from_yaml` (keys under ``degradation:``) or from a dict with :meth:`from_dict`.
    """

    # ---- first order
    resize_prob: tuple[float, float, float] = (0.2, 0.7, 0.1)
    """Probabilities of up-, down-scaling or keeping the size in the first resize."""
    resize_range: tuple[float, float] = (0.15, 1.5)
    """Scale factor range of the first resize (down draws in [low, 1], up in [1, high])."""
    gaussian_noise_prob: float = 0.5
    """Probability of Gaussian (else Poisson) noise in the first stage."""
    noise_range: tuple[float, float] = (1.0, 30.0)
    """Gaussian noise sigma range, in 0-255 units."""
    poisson_scale_range: tuple[float, float] = (0.05, 3.0)
    """Poisson noise scale range (multiplies the shot noise)."""
    gray_noise_prob: float = 0.4
    """Probability that the first-stage noise is gray (identical on all channels)."""
    jpeg_range: tuple[float, float] = (30, 95)
    """JPEG quality range of the first stage (inclusive, drawn as integers)."""
    # ---- second order
    second_blur_prob: float = 0.8
    """Probability of applying the second blur."""
    resize_prob2: tuple[float, float, float] = (0.3, 0.4, 0.3)
    """Probabilities of up, down, keep in the second resize."""
    resize_range2: tuple[float, float] = (0.3, 1.2)
    """Scale range of the second resize, relative to the final LR size."""
    gaussian_noise_prob2: float = 0.5
    """Probability of Gaussian (else Poisson) noise in the second stage."""
    noise_range2: tuple[float, float] = (1.0, 25.0)
    """Second-stage Gaussian sigma range, in 0-255 units."""
    poisson_scale_range2: tuple[float, float] = (0.05, 2.5)
    """Second-stage Poisson scale range."""
    gray_noise_prob2: float = 0.4
    """Probability that the second-stage noise is gray."""
    jpeg_range2: tuple[float, float] = (30, 95)
    """JPEG quality range of the final stage (inclusive, drawn as integers)."""
    # ---- first blur kernel
    blur_kernel_size: int = 21
    """Largest kernel size; every kernel is zero-padded to this size."""
    min_kernel_size: int = 7
    """Smallest kernel size; sizes are drawn uniformly among odd sizes in [min, blur_kernel_size]."""
    kernel_list: tuple[str, ...] = KERNEL_TYPES
    """Kernel families of the first blur (names in ``KERNEL_TYPES``)."""
    kernel_prob: tuple[float, ...] = (0.45, 0.25, 0.12, 0.03, 0.12, 0.03)
    """Probability of each family in ``kernel_list``."""
    sinc_prob: float = 0.1
    """Probability that the first kernel is a circular-lowpass sinc instead."""
    blur_sigma: tuple[float, float] = (0.2, 3.0)
    """Gaussian sigma range (both axes) of the first kernel, in pixels."""
    betag_range: tuple[float, float] = (0.5, 4.0)
    """Shape exponent range of generalized Gaussian kernels."""
    betap_range: tuple[float, float] = (1.0, 2.0)
    """Shape exponent range of plateau kernels."""
    # ---- second blur kernel
    kernel_list2: tuple[str, ...] = KERNEL_TYPES
    """Kernel families of the second blur."""
    kernel_prob2: tuple[float, ...] = (0.45, 0.25, 0.12, 0.03, 0.12, 0.03)
    """Probability of each family in ``kernel_list2``."""
    sinc_prob2: float = 0.1
    """Probability that the second kernel is a sinc."""
    blur_sigma2: tuple[float, float] = (0.2, 1.5)
    """Gaussian sigma range of the second kernel."""
    betag_range2: tuple[float, float] = (0.5, 4.0)
    """Generalized Gaussian exponent range of the second kernel."""
    betap_range2: tuple[float, float] = (1.0, 2.0)
    """Plateau exponent range of the second kernel."""
    # ---- final stage
    final_sinc_prob: float = 0.8
    """Probability of the final sinc filter (else identity)."""
    scale: int = 4
    """Super-resolution factor: the LR is H/scale x W/scale."""

    def __post_init__(self) -> None:
        """Coerce sequences to tuples and check every value."""
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, list):
                setattr(self, f.name, tuple(value))
        for name in ("resize_prob", "resize_prob2"):
            _check_probs(name, getattr(self, name), 3)
        for name in (
            "gaussian_noise_prob",
            "gray_noise_prob",
            "second_blur_prob",
            "gaussian_noise_prob2",
            "gray_noise_prob2",
            "sinc_prob",
            "sinc_prob2",
            "final_sinc_prob",
        ):
            p = getattr(self, name)
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"{name}={p} is not a probability")
        for name in (
            "resize_range",
            "resize_range2",
            "noise_range",
            "noise_range2",
            "poisson_scale_range",
            "poisson_scale_range2",
            "jpeg_range",
            "jpeg_range2",
            "blur_sigma",
            "blur_sigma2",
            "betag_range",
            "betap_range",
            "betag_range2",
            "betap_range2",
        ):
            lo, hi = _check_range(name, getattr(self, name))
            if name.startswith("jpeg") and not 1 <= lo <= hi <= 100:
                raise ValueError(f"{name}={(lo, hi)} must lie in [1, 100]")
            if (name.startswith("resize") or name.startswith("blur") or name.startswith("beta")) and lo <= 0:
                raise ValueError(f"{name}={(lo, hi)} must be positive")
        for lst, prob in (("kernel_list", "kernel_prob"), ("kernel_list2", "kernel_prob2")):
            names = getattr(self, lst)
            bad = [k for k in names if k not in KERNEL_TYPES]
            if bad or not names:
                raise ValueError(f"{lst} has unknown kernel type(s) {bad}; known: {KERNEL_TYPES}")
            _check_probs(prob, getattr(self, prob), len(names))
        k0, k1 = self.min_kernel_size, self.blur_kernel_size
        if k0 % 2 == 0 or k1 % 2 == 0 or not 1 <= k0 <= k1:
            raise ValueError(
                f"kernel sizes must be odd with 1 <= min_kernel_size <= blur_kernel_size, got {k0}, {k1}"
            )
        if int(self.scale) != self.scale or self.scale < 1:
            raise ValueError(f"scale must be a positive integer, got {self.scale}")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> DegradationConfig:
        """Build from a flat mapping, or from one holding it under ``degradation``; unknown keys raise ValueError."""
        if "degradation" in d:
            d = d["degradation"] or {}
        return from_dict(cls, dict(d), "degradation")  # typed: unknown keys and wrong types name the field

    @classmethod
    def from_yaml(cls, path: str | Path) -> DegradationConfig:
        """Load from a YAML file (keys under ``degradation:``, or at top level)."""
        return cls.from_dict(read_yaml_mapping(Path(path)))

    def stage_kernel_settings(
        self, stage: int
    ) -> tuple[
        tuple[str, ...],
        tuple[float, ...],
        float,
        tuple[float, float],
        tuple[float, float],
        tuple[float, float],
    ]:
        """``(kernel_list, kernel_prob, sinc_prob, blur_sigma, betag_range, betap_range)`` of blur stage 1 or 2."""
        if stage == 1:
            return (
                self.kernel_list,
                self.kernel_prob,
                self.sinc_prob,
                self.blur_sigma,
                self.betag_range,
                self.betap_range,
            )
        if stage == 2:
            return (
                self.kernel_list2,
                self.kernel_prob2,
                self.sinc_prob2,
                self.blur_sigma2,
                self.betag_range2,
                self.betap_range2,
            )
        raise ValueError(f"stage must be 1 or 2, got {stage}")


def _check_probs(name: str, probs: Sequence[float], n: int) -> None:
    """Raise unless ``probs`` has ``n`` non-negative entries summing to 1."""
    if len(probs) != n or any(p < 0 for p in probs) or abs(sum(probs) - 1.0) > 1e-6:
        raise ValueError(f"{name}={tuple(probs)} must be {n} non-negative probabilities summing to 1")


def _check_range(name: str, rng: Sequence[float]) -> tuple[float, float]:
    """Return ``(low, high)`` or raise unless ``rng`` is an ordered pair."""
    if len(rng) != 2 or rng[0] > rng[1]:
        raise ValueError(f"{name}={tuple(rng)} must be a (low, high) pair with low <= high")
    return float(rng[0]), float(rng[1])


# ----------------------------------------------------------------------------- random draws


def _rand(generator: torch.Generator, *shape: int) -> Tensor:
    """Uniform [0, 1) float64 numbers from ``generator``, returned on the CPU."""
    return torch.rand(shape, generator=generator, device=generator.device, dtype=torch.float64).cpu()


def _categorical(u: Tensor, probs: Sequence[float]) -> Tensor:
    """Map uniforms ``u`` to category indices with probabilities ``probs`` (inverse CDF)."""
    cdf = torch.tensor(probs, dtype=torch.float64).cumsum(0)
    cdf = cdf / cdf[-1]
    return torch.searchsorted(cdf, u.contiguous(), right=True).clamp(max=len(probs) - 1)


def _between(u: Tensor, lo: float, hi: float) -> Tensor:
    """Scale uniforms ``u`` to ``[lo, hi)``."""
    return lo + u * (hi - lo)


# ----------------------------------------------------------------------------- kernels


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
    u = _rand(generator, batch, 10)
    ksize = _kernel_sizes(u[:, 0], cfg)
    is_sinc = u[:, 1] < sinc_p
    omega = torch.where(
        ksize < 13, _between(u[:, 2], math.pi / 3, math.pi), _between(u[:, 2], math.pi / 5, math.pi)
    )
    names = [kinds[i] for i in _categorical(u[:, 3], probs).tolist()]
    iso = torch.tensor([n.endswith("iso") and not n.endswith("aniso") for n in names])
    gen = torch.tensor([n.startswith("generalized") for n in names])
    plat = torch.tensor([n.startswith("plateau") for n in names])
    sx = _between(u[:, 4], *sigma)
    sy = torch.where(iso, sx, _between(u[:, 5], *sigma))
    theta = torch.where(iso, torch.zeros_like(sx), _between(u[:, 6], -math.pi, math.pi))
    low = u[:, 7] < 0.5
    beta_g = torch.where(low, _between(u[:, 8], betag[0], 1.0), _between(u[:, 8], 1.0, betag[1]))
    beta_p = torch.where(low, _between(u[:, 9], betap[0], 1.0), _between(u[:, 9], 1.0, betap[1]))
    beta = torch.where(gen, beta_g, torch.where(plat, beta_p, torch.ones_like(sx)))
    blur = bivariate_kernel(sx, sy, theta, beta, plat, ksize, size)
    sinc = sinc_kernel(omega, ksize, size)
    return torch.where(is_sinc.reshape(-1, 1, 1), sinc, blur).float()


def final_sinc_kernel(batch: int, cfg: DegradationConfig, generator: torch.Generator) -> Tensor:
    """Draw the final-stage kernels: with ``final_sinc_prob`` a sinc (cutoff in [pi/3, pi]), else identity."""
    u = _rand(generator, batch, 3)
    ksize = _kernel_sizes(u[:, 1], cfg)
    sinc = sinc_kernel(_between(u[:, 2], math.pi / 3, math.pi), ksize, cfg.blur_kernel_size)
    use = (u[:, 0] < cfg.final_sinc_prob).reshape(-1, 1, 1)
    return torch.where(use, sinc, pulse_kernel(batch, cfg.blur_kernel_size)).float()


# ----------------------------------------------------------------------------- image operations


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
    u = _rand(generator, 3)
    kind = int(_categorical(u[:1], resize_prob)[0])
    lo, hi = resize_range
    scale = (1.0 + float(u[1]) * (hi - 1.0), lo + float(u[1]) * (1.0 - lo), 1.0)[kind]
    return scale, RESIZE_MODES[min(int(float(u[2]) * 3), 2)]


def random_resize(
    img: Tensor,
    resize_prob: Sequence[float],
    resize_range: Sequence[float],
    generator: torch.Generator,
    base_size: tuple[int, int] | None = None,
) -> Tensor:
    """Resize the batch by a random factor of ``base_size`` (default: its own size) with a random mode."""
    scale, mode = draw_resize(resize_prob, resize_range, generator)
    h, w = base_size if base_size is not None else img.shape[-2:]
    return resize(img, (int(h * scale), int(w * scale)), mode)


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


# ----------------------------------------------------------------------------- the pipeline


@dataclass
class StageParams:
    """Drawn parameters of one degradation order (tensors are per sample, on the CPU)."""

    kernel: Tensor
    """(B, K, K) blur kernels; identity where the blur is skipped."""
    scale: float
    """Resize factor (of the HR size in stage 1, of the LR size in stage 2), shared by the batch."""
    mode: str
    """Resize interpolation mode, shared by the batch."""
    sigma: Tensor
    """(B,) Gaussian sigma in 0-255 units; 0 where the sample gets Poisson noise."""
    poisson: Tensor
    """(B,) Poisson scale; 0 where the sample gets Gaussian noise."""
    gray: Tensor
    """(B,) bool: the noise is gray."""
    quality: Tensor
    """(B,) int JPEG quality: stage 1's JPEG, or the final JPEG for stage 2."""


@dataclass
class DegradationParams:
    """Every random choice of one :func:`degrade` call."""

    first: StageParams
    second: StageParams
    final_kernel: Tensor
    """(B, K, K) final sinc kernels, identity where not applied."""
    final_mode: str
    """Interpolation mode of the resize to the LR size."""
    sinc_then_jpeg: bool
    """True: [resize, sinc, JPEG]; False: [JPEG, resize, sinc]."""


def _draw_noise(
    batch: int,
    gaussian_prob: float,
    sigma_range: Sequence[float],
    poisson_range: Sequence[float],
    gray_prob: float,
    generator: torch.Generator,
) -> tuple[Tensor, Tensor, Tensor]:
    """Per-sample ``(sigma, poisson_scale, gray)``, exactly one of sigma/poisson non-zero per sample."""
    u = _rand(generator, batch, 4)
    use_gauss = u[:, 0] < gaussian_prob
    sigma = torch.where(use_gauss, _between(u[:, 1], *sigma_range), torch.zeros(batch, dtype=torch.float64))
    poisson = torch.where(
        use_gauss, torch.zeros(batch, dtype=torch.float64), _between(u[:, 2], *poisson_range)
    )
    return sigma.float(), poisson.float(), u[:, 3] < gray_prob


def _draw_quality(batch: int, jpeg_range: Sequence[float], generator: torch.Generator) -> Tensor:
    """Per-sample integer JPEG qualities, uniform in the inclusive ``jpeg_range`` (ends rounded inwards)."""
    lo, hi = math.ceil(jpeg_range[0]), math.floor(jpeg_range[1])
    return torch.randint(lo, hi + 1, (batch,), generator=generator, device=generator.device).cpu()


def sample_params(batch: int, cfg: DegradationConfig, generator: torch.Generator) -> DegradationParams:
    """Draw all parameters of one degradation of ``batch`` images from ``generator``."""
    k1 = random_kernel(batch, cfg, generator, stage=1)
    s1, m1 = draw_resize(cfg.resize_prob, cfg.resize_range, generator)
    n1 = _draw_noise(
        batch,
        cfg.gaussian_noise_prob,
        cfg.noise_range,
        cfg.poisson_scale_range,
        cfg.gray_noise_prob,
        generator,
    )
    q1 = _draw_quality(batch, cfg.jpeg_range, generator)
    k2 = random_kernel(batch, cfg, generator, stage=2)
    skip = (_rand(generator, batch) >= cfg.second_blur_prob).reshape(-1, 1, 1)
    k2 = torch.where(skip, pulse_kernel(batch, cfg.blur_kernel_size).float(), k2)
    s2, m2 = draw_resize(cfg.resize_prob2, cfg.resize_range2, generator)
    n2 = _draw_noise(
        batch,
        cfg.gaussian_noise_prob2,
        cfg.noise_range2,
        cfg.poisson_scale_range2,
        cfg.gray_noise_prob2,
        generator,
    )
    q2 = _draw_quality(batch, cfg.jpeg_range2, generator)
    sinc = final_sinc_kernel(batch, cfg, generator)
    u = _rand(generator, 2)
    return DegradationParams(
        first=StageParams(k1, s1, m1, *n1, q1),
        second=StageParams(k2, s2, m2, *n2, q2),
        final_kernel=sinc,
        final_mode=RESIZE_MODES[min(int(float(u[0]) * 3), 2)],
        sinc_then_jpeg=bool(u[1] < 0.5),
    )


def _noise(img: Tensor, stage: StageParams, generator: torch.Generator) -> Tensor:
    """Apply the stage's Gaussian or Poisson noise (per sample; the other one has zero strength)."""
    img = add_gaussian_noise(img, stage.sigma, stage.gray, generator)
    return add_poisson_noise(img, stage.poisson, stage.gray, generator)


def _check_hr(hr: Tensor, scale: int) -> None:
    """Raise ValueError unless ``hr`` is a float (B, 3, H, W) batch with H, W multiples of ``scale``."""
    if hr.dim() != 4 or hr.shape[1] != 3 or not hr.is_floating_point():
        raise ValueError(f"expected a float (B, 3, H, W) tensor, got {tuple(hr.shape)} {hr.dtype}")
    h, w = hr.shape[-2:]
    if h % scale or w % scale:
        raise ValueError(f"HR size {h}x{w} is not a multiple of scale {scale}")


@torch.no_grad()
def apply_degradation(
    hr: Tensor, params: DegradationParams, cfg: DegradationConfig, generator: torch.Generator
) -> Tensor:
    """Degrade ``hr`` with drawn ``params`` (noise samples still come from ``generator``); returns the LR."""
    s = int(cfg.scale)
    _check_hr(hr, s)
    if params.first.kernel.shape[0] != hr.shape[0]:
        raise ValueError(f"params drawn for {params.first.kernel.shape[0]} images, got {hr.shape[0]}")
    h, w = hr.shape[-2:]
    lr_size = (h // s, w // s)
    out = hr.float()
    p1, p2 = params.first, params.second
    out = apply_blur(out, p1.kernel)
    out = resize(out, (int(h * p1.scale), int(w * p1.scale)), p1.mode)
    out = _noise(out, p1, generator)
    out = jpeg_compress(out, p1.quality)
    out = apply_blur(out, p2.kernel)
    out = resize(out, (int(h / s * p2.scale), int(w / s * p2.scale)), p2.mode)
    out = _noise(out, p2, generator)
    if params.sinc_then_jpeg:
        out = apply_blur(resize(out, lr_size, params.final_mode), params.final_kernel)
        out = jpeg_compress(out, p2.quality)
    else:
        out = jpeg_compress(out, p2.quality)
        out = apply_blur(resize(out, lr_size, params.final_mode), params.final_kernel)
    return ((out * 255.0).round().clamp(0, 255) / 255.0).to(hr.dtype)


def degrade(hr: Tensor, cfg: DegradationConfig, generator: torch.Generator) -> Tensor:
    """Real-ESRGAN second-order degradation of ``hr`` (B, 3, H, W) in [0, 1] -> LR (B, 3, H/s, W/s).

    Runs on ``hr``'s device; H and W must be multiples of ``cfg.scale`` (ValueError otherwise). The LR is
    quantised to 8-bit levels. Same generator state -> bit-identical output.
    """
    _check_hr(hr, int(cfg.scale))
    return apply_degradation(hr, sample_params(hr.shape[0], cfg, generator), cfg, generator)


def degrade_to_input(hr: Tensor, cfg: DegradationConfig, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """``(lr, lr_up)``: the degraded LR and its bicubic upsampling back to the HR size, clamped to [0, 1]."""
    lr = degrade(hr, cfg, generator)
    lr_up = F.interpolate(lr, size=hr.shape[-2:], mode="bicubic", align_corners=False).clamp(0, 1)
    return lr, lr_up


def degrade_file(
    in_path: str | Path,
    out_path: str | Path,
    seed: int,
    cfg: DegradationConfig | None = None,
    upsample: bool = False,
) -> Path:
    """Degrade one image file and save the LR (or, with ``upsample``, the bicubic LR at HR size).

    The HR is cropped at the bottom/right to a multiple of ``cfg.scale``. Save to a lossless format (PNG):
    a JPEG ``out_path`` would compress once more. An ``out_path`` that is the input file (also through a link or a
    hard link) is a ValueError: the photo would be replaced by its degraded copy.
    """
    check_inputs_apart(  # both are files: the output may only be refused for being the input
        [("output", Path(out_path))],
        [(Path(in_path), "is the input (degrade would replace the photo)")],
        "give the degraded copy another name",
    )
    cfg = cfg or DegradationConfig()
    s = int(cfg.scale)
    rgb = read_image(Path(in_path)).rgb  # 16-bit, grey, CMYK and EXIF orientation handled; alpha dropped
    h, w = (rgb.shape[-2] // s) * s, (rgb.shape[-1] // s) * s
    if h == 0 or w == 0:
        raise ValueError(f"{in_path}: image {rgb.shape[-1]}x{rgb.shape[-2]} is smaller than scale {s}")
    hr = rgb[None, :, :h, :w].float()
    lr, lr_up = degrade_to_input(hr, cfg, torch.Generator().manual_seed(seed))
    return write_image(Path(out_path), (lr_up if upsample else lr)[0])
