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

The settings are :mod:`.degradation_config`, the kernels :mod:`.kernels`, the image operations
:mod:`.degrade_ops`; this module draws the parameters of one call and runs the two orders.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from ..io.guards import check_inputs_apart
from ..io.images import read_image, write_image
from .degradation_config import RESIZE_MODES, DegradationConfig
from .degrade_ops import add_gaussian_noise, add_poisson_noise, apply_blur, draw_resize, jpeg_compress, resize
from .kernels import final_sinc_kernel, pulse_kernel, random_kernel
from .random_draws import between, uniform


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
    u = uniform(generator, batch, 4)
    use_gauss = u[:, 0] < gaussian_prob
    sigma = torch.where(use_gauss, between(u[:, 1], *sigma_range), torch.zeros(batch, dtype=torch.float64))
    poisson = torch.where(
        use_gauss, torch.zeros(batch, dtype=torch.float64), between(u[:, 2], *poisson_range)
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
    skip = (uniform(generator, batch) >= cfg.second_blur_prob).reshape(-1, 1, 1)
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
    u = uniform(generator, 2)
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
