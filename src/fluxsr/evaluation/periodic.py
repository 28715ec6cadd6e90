"""Periodic artefacts: how much a result's edge map repeats on a ``period``-pixel grid (the model's tokens, tile
seams) compared with the reference's (:func:`periodic_score`, the ``periodic`` metric; docs/evaluation.md)."""

from __future__ import annotations

import torch

from .metric_inputs import Tensor, check_pair, crop, luma

DEFAULT_PERIOD = 8
"""The bundled model's token edge in pixels (x4 VAE, 2x2 packing); FLUX.1-dev's is 16 (x8 VAE)."""

BACKGROUND_RADIUS = 3
"""Bins on each side of a grid bin whose mean power (its 3x3 centre left out) is the local background."""


def grid_bins(h: int, w: int, period: int, scale: int = 1) -> Tensor:
    """(H, W) bool mask of the DFT bins of a ``period``-pixel grid: (a/period, b/period) cycles per pixel for a, b
    in 0..period-1 (the fundamental and every harmonic, both axes), at bins (a H/period, b W/period).

    Left out: DC, and the bins that are also frequencies of a ``scale``-pixel grid (``a scale`` and ``b scale`` both
    multiples of ``period``): every x``scale`` upscaler, bicubic included, repeats its interpolation phase every
    ``scale`` output pixels, which is not a token artefact. H and W must be multiples of ``period``."""
    if period < 2 or h % period or w % period:
        raise ValueError(f"period {period}: needs >= 2 and to divide the image size {h}x{w}")
    a = torch.arange(period)
    on_scale = (a * scale) % period == 0
    keep = ~(on_scale[:, None] & on_scale[None, :])
    mask = torch.zeros(h, w, dtype=torch.bool)
    mask[:: h // period, :: w // period] = keep
    return mask


def edge_map(y: Tensor) -> Tensor:
    """``|y - y shifted by one column| + |y - y shifted by one row|`` of a (..., H, W) image (circular; the Hann
    window of :func:`edge_spectrum` suppresses the wrapped first row and column). Block edges, grid lines and a
    texture repeated in every token all make this map periodic, even when the blocks' own values are random."""
    return (y - y.roll(1, -1)).abs() + (y - y.roll(1, -2)).abs()


def edge_spectrum(y: Tensor) -> Tensor:
    """Power spectrum ``|FFT|^2 / (H W)`` of the (..., H, W) image's :func:`edge_map`, mean removed, under a 2-D
    Hann window (the borders do not leak onto the axes)."""
    h, w = y.shape[-2:]
    e = edge_map(y.to(torch.float64))
    e = e - e.mean(dim=(-2, -1), keepdim=True)
    win = torch.outer(torch.hann_window(h, dtype=torch.float64), torch.hann_window(w, dtype=torch.float64))
    return torch.fft.fft2(e * win).abs().square() / (h * w)


def local_background(power: Tensor, mask: Tensor, radius: int = BACKGROUND_RADIUS) -> Tensor:
    """At each ``mask`` bin, the mean neighbour power over the (2 radius + 1)^2 square around it, less its 3x3 centre
    (the Hann window's main lobe), circularly. ``power`` (..., H, W), ``mask`` (H, W) bool; returns (..., bins).
    Only the masked bins' neighbourhoods are read (at most ``period^2`` of them, not the whole spectrum)."""
    h, w = power.shape[-2:]
    k = torch.ones(2 * radius + 1, 2 * radius + 1, dtype=power.dtype)
    k[radius - 1 : radius + 2, radius - 1 : radius + 2] = 0
    rows, cols = mask.nonzero(as_tuple=True)
    offsets = torch.arange(-radius, radius + 1)
    r = (rows[:, None] + offsets) % h  # (bins, 2 radius + 1)
    c = (cols[:, None] + offsets) % w
    around = power[..., r[:, :, None], c[:, None, :]]  # (..., bins, 2 radius + 1, 2 radius + 1)
    return (around * (k / k.sum())).sum(dim=(-2, -1))


def grid_peakiness(y: Tensor, period: int, scale: int = 1) -> Tensor:
    """How far the (..., H, W) image's :func:`edge_spectrum` stands out at the grid bins (:func:`grid_bins`) from
    its :func:`local_background` there: ``sum power / sum background`` over those bins, ~1 for a smooth spectrum
    (exactly 1 for a flat image: both sums get 1e-30 added). Shape (...)."""
    mask = grid_bins(*y.shape[-2:], period, scale)
    power = edge_spectrum(y)
    return (power[..., mask].sum(-1) + 1e-30) / (local_background(power, mask).sum(-1) + 1e-30)


def periodic_peakiness(
    x: Tensor, period: int = DEFAULT_PERIOD, *, scale: int = 4, crop_border: int = 0
) -> Tensor:
    """:func:`grid_peakiness` of one side of :func:`periodic_score`: the (B, C, H, W) or (C, H, W) image's BT.601
    luma, ``crop_border`` pixels off each side, cut from the top left (keeping the grid's phase) to multiples of
    ``period``. ValueError for an image with fewer than 8 periods per side. Shape (..., 1)."""
    y = crop(luma(x, True), crop_border)
    h, w = y.shape[-2:]
    if min(h, w) < 8 * period:
        raise ValueError(f"a {h}x{w} image is too small for a period of {period} px (needs {8 * period})")
    h, w = h - h % period, w - w % period
    return grid_peakiness(y[..., :h, :w], period, scale)


def periodic_score(
    sr: Tensor,
    hr: Tensor,
    period: int = DEFAULT_PERIOD,
    *,
    scale: int = 4,
    crop_border: int = 0,
    reference: Tensor | None = None,
) -> Tensor:
    """Periodic-artefact score: the result's :func:`grid_peakiness` over the reference's (see docs/evaluation.md).

    Both images (BT.601 luma) lose ``crop_border`` pixels per side and are cut from the top left (keeping the grid's
    phase) to multiples of ``period``. The edge map's spectrum at the ``period``-pixel grid frequencies and their
    harmonics is compared with its neighbouring frequencies, in each image, and the two are divided: a result that
    is as (non-)periodic as the reference scores ~1, noise and blur keep it near 1, a ``period``-pixel grid, blocks
    or stripes (tokens, tile seams) raise it. An image needs at least 8 periods per side. ``reference``: ``hr``'s
    :func:`periodic_peakiness` with the same settings, when the caller has it already (one reference, several
    results).
    """
    check_pair(sr, hr)
    num = periodic_peakiness(sr, period, scale=scale, crop_border=crop_border)
    den = (
        periodic_peakiness(hr, period, scale=scale, crop_border=crop_border)
        if reference is None
        else reference
    )
    return (num / den).squeeze(-1)
