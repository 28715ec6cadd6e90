"""Bicubic resizing: the plain interpolation baseline row."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def bicubic_upscale(rgb: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Resize ``rgb`` ((C, H, W) or (B, C, H, W), float in [0, 1]) to ``size = (height, width)`` with bicubic.

    Antialiasing is switched on only when one side shrinks (for pure upscaling torch's antialiased kernel would
    change the cubic coefficient); the result is clamped to [0, 1] and keeps the input's rank and dtype.
    """
    if rgb.ndim not in (3, 4):
        raise ValueError(f"expected (C, H, W) or (B, C, H, W), got {tuple(rgb.shape)}")
    if not rgb.is_floating_point():
        raise TypeError(f"expected a float tensor in [0, 1], got {rgb.dtype}")
    height, width = int(size[0]), int(size[1])
    if height < 1 or width < 1:
        raise ValueError(f"invalid size {size}")
    batch = rgb if rgb.ndim == 4 else rgb[None]
    downscale = height < batch.shape[-2] or width < batch.shape[-1]
    out = F.interpolate(batch, size=(height, width), mode="bicubic", align_corners=False, antialias=downscale)
    out = out.clamp(0, 1)
    return out if rgb.ndim == 4 else out[0]
