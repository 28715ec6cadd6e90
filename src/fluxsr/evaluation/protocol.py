"""Evaluation protocols: how a PSNR / SSIM / NIQE number for x4 SR is computed (quantisation, crop, luma, definition).

Inputs are float tensors in [0, 1], shaped (3, H, W) or (B, 3, H, W) (1-channel images are accepted too and are used
as their own luma). A (C, H, W) input gives a 0-d result, a batch gives shape (B,). Everything is computed in float64.

Two evaluation protocols are registered in :data:`PROTOCOLS` (see :class:`Protocol`):

``fluxsr`` (default) -- the classic SR-paper / BasicSR convention:
  1. both images are quantised to 8 bits, ``round(clamp(x, 0, 1) * 255) / 255``, i.e. the values of the saved PNGs;
  2. ``crop_border = scale`` pixels are removed on every side (4 for x4);
  3. PSNR and SSIM are computed on the BT.601 luma ``Y = 16 + (65.481 R + 128.553 G + 24.966 B)`` (0..255 scale,
     R, G, B in [0, 1]), in float64 and *not* rounded;
  4. PSNR = 10 log10(255^2 / MSE), +inf for identical images (no epsilon);
  5. SSIM = Wang et al. 2004: 11x11 Gaussian window (sigma 1.5), 'valid' filtering, C1 = (0.01 * 255)^2,
     C2 = (0.03 * 255)^2 -- the MATLAB ``ssim_index`` / BasicSR ``calculate_ssim`` (without MATLAB's downsampling);
  6. NIQE as pyiqa's ``niqe`` (see 8.), so no-reference numbers compare with published ones.

``pyiqa`` -- exactly ``pyiqa.create_metric('psnr'|'ssim', test_y_channel=True, color_space='ycbcr')`` (pyiqa 0.1.16),
  which is what OSEDiff-style one-step SR papers report:
  7. no border crop; 8-bit quantisation as when pyiqa reads the saved PNG files;
     PSNR: Y = rgb2ycbcr(x)[0] (values in [16/255, 235/255]), not rounded,
     PSNR = 10 log10(1 / (MSE + 1e-8)), so identical images give 80 dB (pyiqa's epsilon), not inf;
     SSIM: Y * 255 rounded to integers, then float64; the contrast-structure term is clamped at 0 (``relu(cs)``)
     before the product.
  8. NIQE (both protocols): pyiqa's ``niqe`` -- luma of *YIQ* (0.299 R + 0.587 G + 0.114 B, x255, rounded),
     no crop; see :func:`niqe`.
  pyiqa computes the luma in float32, and the rounding of its float32 error decides exact .5 ties differently on
  different machines; fluxsr computes every luma with :func:`luma255`, which is exact for 8-bit input, so its values
  are the same everywhere (and within 1e-2 NIQE / 1e-4 SSIM of any machine's pyiqa; docs/evaluation.md).

The pieces: :mod:`fluxsr.evaluation.metric_inputs` (quantisation, crop, luma), :mod:`fluxsr.evaluation.psnr_ssim`,
:mod:`fluxsr.evaluation.niqe` (and its parameters).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from .metric_inputs import Tensor, quantize_8bit
from .niqe import niqe
from .psnr_ssim import psnr, pyiqa_psnr, pyiqa_ssim, ssim


@dataclass(frozen=True)
class Protocol:
    """How a benchmark number is computed. ``crop_border=None`` means "the SR scale" (4 for x4).

    ``flavour`` picks the PSNR/SSIM implementation: ``"basicsr"`` (:func:`psnr` / :func:`ssim`) or ``"pyiqa"``
    (:func:`pyiqa_psnr` / :func:`pyiqa_ssim`). ``quantize`` rounds both images to 8 bits first.
    """

    name: str
    description: str
    quantize: bool
    y_channel: bool
    crop_border: int | None
    flavour: str
    niqe_color_space: str = "yiq"

    def border(self, scale: int) -> int:
        """Pixels cropped on each side for an x``scale`` result."""
        return scale if self.crop_border is None else self.crop_border


PROTOCOLS: dict[str, Protocol] = {
    "fluxsr": Protocol(
        name="fluxsr",
        description="8-bit quantised, BT.601 Y (float, unrounded), crop = scale, PSNR inf if identical, "
        "Wang/MATLAB SSIM (valid, no downsampling); NIQE as pyiqa (YIQ luma)",
        quantize=True,
        y_channel=True,
        crop_border=None,
        flavour="basicsr",
    ),
    "pyiqa": Protocol(
        name="pyiqa",
        description="pyiqa psnr/ssim with test_y_channel=True, color_space='ycbcr', no crop (80 dB cap via eps=1e-8, "
        "rounded Y and relu(cs) in SSIM); 8-bit quantised like saved PNGs; NIQE = pyiqa 'niqe'",
        quantize=True,
        y_channel=True,
        crop_border=0,
        flavour="pyiqa",
    ),
}

DEFAULT_PROTOCOL = "fluxsr"


def get_protocol(protocol: str | Protocol) -> Protocol:
    """Look a protocol up by name (or pass a :class:`Protocol` through)."""
    if isinstance(protocol, Protocol):
        return protocol
    try:
        return PROTOCOLS[protocol]
    except KeyError:
        raise KeyError(f"unknown protocol {protocol!r}; known: {sorted(PROTOCOLS)}") from None


def _prepare(x: Tensor, p: Protocol) -> Tensor:
    return quantize_8bit(x.to(torch.float64)) if p.quantize else x


def _under_protocol(
    ours: Callable, theirs: Callable, sr: Tensor, hr: Tensor, protocol: str | Protocol, scale: int
) -> Tensor:
    """A full-reference metric under a protocol: quantised if it says so, cropped by its border, then fluxsr's
    definition (``ours``, with its Y-channel choice) or pyiqa's (``theirs``)."""
    p = get_protocol(protocol)
    a, b = _prepare(sr, p), _prepare(hr, p)
    if p.flavour == "pyiqa":
        return theirs(a, b, crop_border=p.border(scale))
    return ours(a, b, crop_border=p.border(scale), y_channel=p.y_channel)


def protocol_psnr(
    sr: Tensor, hr: Tensor, protocol: str | Protocol = DEFAULT_PROTOCOL, *, scale: int = 4
) -> Tensor:
    """PSNR (dB) of ``sr`` against ``hr`` under a protocol (see :data:`PROTOCOLS`)."""
    return _under_protocol(psnr, pyiqa_psnr, sr, hr, protocol, scale)


def protocol_ssim(
    sr: Tensor, hr: Tensor, protocol: str | Protocol = DEFAULT_PROTOCOL, *, scale: int = 4
) -> Tensor:
    """SSIM of ``sr`` against ``hr`` under a protocol (see :data:`PROTOCOLS`)."""
    return _under_protocol(ssim, pyiqa_ssim, sr, hr, protocol, scale)


def protocol_niqe(
    x: Tensor, protocol: str | Protocol = DEFAULT_PROTOCOL, *, params: tuple[Tensor, Tensor] | None = None
) -> Tensor:
    """NIQE of ``x`` under a protocol: quantised if the protocol says so, never cropped, pyiqa's algorithm."""
    p = get_protocol(protocol)
    return niqe(_prepare(x, p), color_space=p.niqe_color_space, params=params)


METRIC_FUNCTIONS: dict[str, Callable[..., Tensor]] = {"psnr": protocol_psnr, "ssim": protocol_ssim}
"""Full-reference metrics by name, each ``f(sr, hr, protocol, *, scale)``."""


def full_reference(
    sr: Tensor, hr: Tensor, protocol: str | Protocol = DEFAULT_PROTOCOL, *, scale: int = 4
) -> dict[str, float]:
    """{"psnr": dB, "ssim": value} of one (3, H, W) pair under a protocol, as Python floats."""
    return {name: float(fn(sr, hr, protocol, scale=scale)) for name, fn in METRIC_FUNCTIONS.items()}
