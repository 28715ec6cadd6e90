"""What every image-quality metric does to its inputs first: batch shapes, 8-bit quantisation, border crops and luma.

Inputs are float tensors in [0, 1], shaped (3, H, W) or (B, 3, H, W) (1-channel images are used as their own luma);
everything is computed in float64. :func:`luma255` / :func:`rounded_luma255` are pyiqa's lumas, computed so that they
are the same on every machine; :func:`load_image` / :func:`array_to_tensor` read 8- and 16-bit files losslessly.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

Tensor = torch.Tensor


def as_batch(x: Tensor) -> tuple[Tensor, bool]:
    """Return ``x`` as a float64 (B, C, H, W) tensor and whether the input was unbatched (C, H, W)."""
    if x.ndim == 3:
        return x.unsqueeze(0).to(torch.float64), True
    if x.ndim == 4:
        return x.to(torch.float64), False
    raise ValueError(f"expected (C, H, W) or (B, C, H, W), got shape {tuple(x.shape)}")


def unbatch(values: Tensor, single: bool) -> Tensor:
    """Per-image results (B,) -> 0-d tensor when the input had no batch dimension."""
    return values[0] if single else values


def quantize_8bit(x: Tensor) -> Tensor:
    """Values an 8-bit file would store: ``round(clamp(x, 0, 1) * 255) / 255`` (round half to even)."""
    return torch.round(x.clamp(0.0, 1.0) * 255.0) / 255.0


def crop(x: Tensor, border: int) -> Tensor:
    """Remove ``border`` pixels from each side of the last two dimensions (no-op for 0)."""
    if border < 0:
        raise ValueError("crop_border must be >= 0")
    if border == 0:
        return x
    if 2 * border >= min(x.shape[-2:]):
        raise ValueError(f"crop_border={border} leaves nothing of a {tuple(x.shape[-2:])} image")
    return x[..., border:-border, border:-border]


def crop_pair(a: Tensor, b: Tensor, border: int) -> tuple[Tensor, Tensor]:
    """:func:`crop` applied to both images."""
    return crop(a, border), crop(b, border)


def check_pair(a: Tensor, b: Tensor) -> None:
    if a.shape != b.shape:
        raise ValueError(f"images differ in shape: {tuple(a.shape)} vs {tuple(b.shape)}")


def rgb_to_y(x: Tensor) -> Tensor:
    """BT.601 luma in [0, 1]: ``Y = 16/255 + (65.481 R + 128.553 G + 24.966 B) / 255`` for R, G, B in [0, 1].

    Input (..., 3, H, W); output (..., 1, H, W) in float64. This is MATLAB's ``rgb2ycbcr`` Y (in [16/255, 235/255]).
    """
    x = x.to(torch.float64)
    r, g, b = x[..., 0:1, :, :], x[..., 1:2, :, :], x[..., 2:3, :, :]
    return (16.0 + 65.481 * r + 128.553 * g + 24.966 * b) / 255.0


def luma(x: Tensor, y_channel: bool) -> Tensor:
    """``rgb_to_y(x)`` for 3-channel input when ``y_channel``; 1-channel input (and y_channel=False) pass through."""
    return rgb_to_y(x) if (y_channel and x.shape[-3] == 3) else x.to(torch.float64)


def luma255(x: Tensor, color_space: str = "ycbcr") -> Tensor:
    """Luma of (B, 3, H, W) RGB in [0, 1] on the 0..255 scale, float64, the same on every machine.

    ycbcr (BT.601, pyiqa ``to_y_channel``): ``Y = 16 + (65481 r + 128553 g + 24966 b) / 255000``; yiq (pyiqa's NIQE
    default): ``Y = (299 r + 587 g + 114 b) / 1000``, with r, g, b the 0..255 levels ``x * 255``. Levels within 1e-4 of
    an integer (8-bit images, also after a float32 round trip) are snapped to it, so for 8-bit input the numerators
    are exact integers and the one division is correctly rounded: an exact .5 (they occur: yiq r = g = 0, b = 250 gives 28.5)
    stays exactly .5 and ``torch.round`` sends it to the even level on any machine.

    Why not pyiqa's float32 matmul: its rounding error (~1e-5 levels) decides on which side those exact ties fall,
    and that depends on the BLAS kernel (CPU model, instruction set), so pyiqa's rounded luma, and every metric that
    rounds it (SSIM, NIQE), differ between machines (NIQE by up to ~1e-2 on the skimage photos; docs/evaluation.md).
    """
    lv = x.to(torch.float64) * 255.0
    level = torch.round(lv)
    lv = torch.where((lv - level).abs() < 1e-4, level, lv)
    r, g, b = lv[:, 0:1], lv[:, 1:2], lv[:, 2:3]
    if color_space == "ycbcr":
        return 16.0 + (65481.0 * r + 128553.0 * g + 24966.0 * b) / 255000.0
    if color_space == "yiq":
        return (299.0 * r + 587.0 * g + 114.0 * b) / 1000.0
    raise ValueError(f"unknown color space {color_space!r}")


def rounded_luma255(x: Tensor, color_space: str = "yiq") -> Tensor:
    """Integer luma 0..255 that pyiqa's SSIM and NIQE score: 3-channel -> ``round(luma255(x))`` (ties to even, the
    same on every machine), 1-channel -> ``round(x * 255)``. Returns float64 (B, 1, H, W)."""
    if x.shape[1] == 3:
        return torch.round(luma255(x, color_space))
    return torch.round(x.to(torch.float64) * 255)


def array_to_tensor(array: np.ndarray) -> Tensor:
    """HWC / HW numpy image -> (C, H, W) float64 in [0, 1].

    uint8 is divided by 255, uint16 by 65535 (so 16-bit ``v * 257`` equals 8-bit ``v`` exactly); float arrays are
    taken as already in [0, 1]. An alpha channel (4th) is dropped.
    """
    if array.dtype == np.uint8:
        x = array.astype(np.float64) / 255.0
    elif array.dtype == np.uint16:
        x = array.astype(np.float64) / 65535.0
    elif np.issubdtype(array.dtype, np.floating):
        x = array.astype(np.float64)
    else:
        raise TypeError(f"unsupported image dtype {array.dtype}")
    if x.ndim == 2:
        x = x[:, :, None]
    return torch.from_numpy(np.ascontiguousarray(x[:, :, :3].transpose(2, 0, 1)))


def _png_bit_depth(path: Path) -> int | None:
    """Bit depth from a PNG header (byte 24 of the file), or None for other formats."""
    with open(path, "rb") as f:
        head = f.read(25)
    return head[24] if head[:8] == b"\x89PNG\r\n\x1a\n" and len(head) == 25 else None


def load_image(path: str | Path) -> Tensor:
    """Read an 8- or 16-bit image file as (C, H, W) float64 in [0, 1] (RGB order, alpha dropped, gray kept 1-ch).

    Uses OpenCV when installed (keeps 16-bit RGB); otherwise PIL, which keeps 16-bit only for grayscale and would
    silently truncate 16-bit RGB PNGs -- that case raises instead.
    """
    path = Path(path)
    try:
        import cv2
    except ImportError:
        cv2 = None
    if cv2 is not None:
        arr = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        if arr is None:
            raise ValueError(f"cannot read image {path}")
        if arr.ndim == 3:
            arr = arr[:, :, [2, 1, 0, 3][: arr.shape[2]]] if arr.shape[2] == 4 else arr[:, :, ::-1]
        return array_to_tensor(arr)
    from PIL import Image

    with Image.open(path) as im:
        if im.mode in ("I;16", "I;16B", "I;16L", "I"):
            return array_to_tensor(np.asarray(im).astype(np.uint16))
        if _png_bit_depth(path) == 16:
            raise ValueError(
                f"{path}: 16-bit colour PNG needs opencv-python(-headless) to be read losslessly"
            )
        return array_to_tensor(np.asarray(im.convert("L" if im.mode in ("L", "LA", "1") else "RGB")))
