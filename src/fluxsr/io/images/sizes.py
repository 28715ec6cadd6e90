"""Output sizes and resizing: :func:`target_size` (scale or long side), the output pixel cap, :func:`resize`."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def target_size(h: int, w: int, scale: float | None = None, long_side: int | None = None) -> tuple[int, int]:
    """(H, W) after scaling by ``scale`` or to a longer side of ``long_side`` (one of them, or neither: unchanged).

    Sizes round to nearest with halves going up (12.5 -> 13) and are at least 1.
    """
    if h < 1 or w < 1:
        raise ValueError(f"image size must be positive, got {h}x{w}")
    if scale is not None and long_side is not None:
        raise ValueError("give scale or long_side, not both")
    if long_side is not None:
        if long_side < 1:
            raise ValueError(f"long_side must be >= 1, got {long_side}")
        scale = long_side / max(h, w)
    if scale is None:
        return h, w
    if not (math.isfinite(scale) and scale > 0):
        raise ValueError(f"scale must be a positive number, got {scale}")
    out_h, out_w = h * scale + 0.5, w * scale + 0.5
    if not (math.isfinite(out_h) and math.isfinite(out_w)):
        raise ValueError(f"scale {scale:g} is too large: a {w}x{h} image would be infinitely large")
    return max(1, math.floor(out_h)), max(1, math.floor(out_w))


def check_output_pixels(size: tuple[int, int], max_pixels: int | None) -> None:
    """ValueError (one line) when an output of ``size`` (H, W) holds more than ``max_pixels`` pixels (None: no cap)."""
    h, w = size
    if max_pixels is not None and h * w > max_pixels:
        raise ValueError(
            f"the output would be {pixel_count(w)}x{pixel_count(h)} = {pixel_count(h * w)} pixels, over the limit "
            f"of {max_pixels} (--max-pixels); use a smaller scale or long side"
        )


def pixel_count(n: int) -> str:
    """A pixel count or side for people: exact up to 15 digits, else roughly (``about 3e302``)."""
    digits = str(n)
    return digits if len(digits) <= 15 else f"about {digits[0]}e{len(digits) - 1}"


def resize(
    image: torch.Tensor, size: tuple[int, int], mode: str = "bicubic", antialias: bool = True
) -> torch.Tensor:
    """Resize a (C,H,W) or (B,C,H,W) float tensor to ``size`` (H, W), clamped to [0,1].

    ``antialias`` applies only when shrinking with bilinear/bicubic (PyTorch's antialiased kernels differ from the
    plain ones even when enlarging, so they are not used there).
    """
    if image.ndim not in (3, 4):
        raise ValueError(f"expected (C,H,W) or (B,C,H,W), got shape {tuple(image.shape)}")
    batch = image if image.ndim == 4 else image[None]
    height, width = (int(s) for s in size)
    shrinking = height < batch.shape[-2] or width < batch.shape[-1]
    smooth = mode in ("bilinear", "bicubic")
    out = F.interpolate(
        batch,
        size=(height, width),
        mode=mode,
        align_corners=False if smooth else None,
        antialias=antialias and shrinking and smooth,
    ).clamp(0, 1)
    return out if image.ndim == 4 else out[0]
