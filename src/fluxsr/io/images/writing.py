"""Writing images: :func:`write_image` encodes float pixels atomically in the format the extension names (what each
format keeps: :mod:`fluxsr.io.images`), never NaN/Inf; :func:`tensor_to_pil` gives a PIL image."""

from __future__ import annotations

import struct
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch
from PIL import Image

from ..cache import write_atomic as write_file_atomic
from .formats import FORMAT_BY_EXTENSION, ICC_TAG, IMAGE_EXTENSIONS, ImageError
from .reading import LoadedImage, exif_without_orientation, icc_color_space
from .sizes import resize


def quantize(x: torch.Tensor, bit_depth: int) -> torch.Tensor:
    """Float values in [0,1] (clamped) to ``torch.uint8`` (8) or ``torch.uint16`` (16), rounding half to even."""
    if bit_depth not in (8, 16):
        raise ValueError(f"bit_depth must be 8 or 16, got {bit_depth}")
    if not torch.isfinite(x).all():
        raise ValueError("cannot quantize NaN/Inf values")
    top = 255 if bit_depth == 8 else 65535
    values = x.detach().to(device="cpu", dtype=torch.float32).clamp(0, 1).mul(top).round()
    return values.to(torch.uint8 if bit_depth == 8 else torch.uint16)


def format_for(path: Path) -> str:
    """PIL format name for ``path``'s extension; :class:`ImageError` for extensions this module cannot write."""
    file_format = FORMAT_BY_EXTENSION.get(Path(path).suffix.lower())
    if file_format is None:
        raise ImageError(
            path, f"cannot write {Path(path).suffix or 'extension-less'} files; use one of {IMAGE_EXTENSIONS}"
        )
    return file_format


def as_planes(path: Path, x: torch.Tensor, channels: tuple[int, ...], what: str) -> torch.Tensor:
    """``x`` as a CPU float (C,H,W) tensor, accepting (H,W) for one channel; :class:`ImageError` on other shapes."""
    x = x.detach().to("cpu", torch.float32)
    if x.ndim == 2 and 1 in channels:
        x = x[None]
    if x.ndim != 3 or x.shape[0] not in channels:
        raise ImageError(path, f"{what} must have shape (C,H,W) with C in {channels}, got {tuple(x.shape)}")
    return x


def png_chunk(kind: bytes, data: bytes) -> bytes:
    """One PNG chunk: length, type, data, CRC."""
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png16_bytes(array: np.ndarray, icc: bytes | None, exif: bytes | None) -> bytes:
    """A 16-bit PNG of (H,W,C) uint16 pixels (C = 1 gray, 2 gray+alpha, 3 RGB, 4 RGBA) with ICC and EXIF chunks."""
    height, width, channels = array.shape
    color_type = {1: 0, 2: 4, 3: 2, 4: 6}[channels]
    rows = array.astype(">u2").reshape(height, -1).view(np.uint8)
    step = 2 * channels
    filtered = rows.copy()
    filtered[:, step:] = rows[:, step:] - rows[:, :-step]  # "Sub" filter, uint8 arithmetic wraps as PNG wants
    scanlines = np.concatenate([np.ones((height, 1), np.uint8), filtered], axis=1)
    out = b"\x89PNG\r\n\x1a\n" + png_chunk(
        b"IHDR", struct.pack(">IIBBBBB", width, height, 16, color_type, 0, 0, 0)
    )
    if icc:
        out += png_chunk(b"iCCP", b"ICC Profile\x00\x00" + zlib.compress(icc))
    if exif:
        out += png_chunk(b"eXIf", exif.removeprefix(b"Exif\x00\x00"))
    out += png_chunk(b"IDAT", zlib.compress(scanlines.tobytes(), 6))
    return out + png_chunk(b"IEND", b"")


def tiff16_bytes(array: np.ndarray, icc: bytes | None) -> bytes:
    """A little-endian, deflate-compressed 16-bit TIFF of (H,W,C) uint16 pixels (gray, gray+alpha, RGB, RGBA)."""
    height, width, channels = array.shape
    predicted = array.astype(np.uint16)
    # horizontal predictor; uint16 arithmetic wraps as TIFF wants
    predicted[:, 1:] = array[:, 1:] - array[:, :-1]
    strip = zlib.compress(predicted.astype("<u2").tobytes(), 6)
    bits = struct.pack(f"<{channels}H", *[16] * channels)
    entries = [
        (256, 4, 1, width),
        (257, 4, 1, height),
        (258, 3, channels, bits),
        (259, 3, 1, 8),
        (262, 3, 1, 1 if channels <= 2 else 2),
        (273, 4, 1, None),
        (277, 3, 1, channels),
        (278, 4, 1, height),
        (279, 4, 1, len(strip)),
        (284, 3, 1, 1),
        (317, 3, 1, 2),
    ]
    if channels in (2, 4):
        entries.append((338, 3, 1, 2))
    if icc:
        entries.append((ICC_TAG, 7, len(icc), icc))
    padded = [v + b"\0" * (len(v) % 2) for *_, v in entries if isinstance(v, bytes) and len(v) > 4]
    data_at = 8 + 2 + 12 * len(entries) + 4
    strip_at = data_at + sum(len(b) for b in padded)
    ifd, blobs = b"", b""
    for tag, kind, count, value in entries:
        if value is None:
            value = strip_at
        if isinstance(value, bytes) and len(value) > 4:
            field = struct.pack("<I", data_at + len(blobs))
            blobs += value + b"\0" * (len(value) % 2)
        elif isinstance(value, bytes):
            field = value.ljust(4, b"\0")
        else:
            field = struct.pack("<H2x" if kind == 3 else "<I", value)
        ifd += struct.pack("<HHI", tag, kind, count) + field
    header = b"II" + struct.pack("<HI", 42, 8) + struct.pack("<H", len(entries)) + ifd + b"\0\0\0\0"
    return header + blobs + strip


def pil_save_options(file_format: str, icc: bytes | None, exif: bytes | None, quality: int) -> dict:
    """Keyword arguments for ``PIL.Image.save`` in ``file_format``, metadata included where it fits."""
    options: dict = {}
    if file_format in ("PNG", "JPEG", "WEBP", "TIFF") and icc:
        options["icc_profile"] = icc
    if (
        file_format in ("PNG", "JPEG", "WEBP", "TIFF")
        and exif
        and (file_format != "JPEG" or len(exif) <= 65000)
    ):
        options["exif"] = exif
    if file_format == "JPEG":
        options.update(quality=quality, subsampling=0)
    if file_format == "WEBP":
        options.update(quality=quality, lossless=quality >= 100, exact=True, method=4)
    if file_format == "PNG":
        options["compress_level"] = 6
    return options


def write_atomic(path: Path, write: Callable[[BinaryIO], None]) -> None:
    """:func:`fluxsr.io.cache.write_atomic` (temp file beside ``path``, then a rename: never a half file), with any
    ``OSError`` (folder not writable, a file where a folder should be, name too long...) turned into an
    :class:`ImageError` naming ``path``.
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ImageError(
            path, f"cannot create folder {error.filename} ({error.strerror or error})"
        ) from error
    try:
        write_file_atomic(path, write)
    except OSError as error:
        raise ImageError(path, f"cannot write file ({error.strerror or error})") from error


def write_image(
    path: Path,
    rgb: torch.Tensor,
    alpha: torch.Tensor | None = None,
    *,
    is_gray: bool = False,
    bit_depth: int = 8,
    icc_profile: bytes | None = None,
    exif: bytes | None = None,
    quality: int = 95,
) -> Path:
    """Write float pixels in [0,1] (clamped) to ``path`` atomically, in the format its extension names.

    ``rgb`` is (3,H,W) or (1,H,W); with ``is_gray`` the channel mean is written as 8/16-bit gray. ``alpha`` is
    (1,H,W) or (H,W). ``bit_depth=16`` gives 16-bit PNG/TIFF and falls back to 8 bits elsewhere. Alpha is dropped
    for jpeg/bmp, EXIF orientation is written as 1, an ICC profile only when its colour space matches the pixels.
    NaN/Inf anywhere raises :class:`ImageError` and nothing is written. Returns ``path``.
    """
    path = Path(path)
    file_format = format_for(path)
    if bit_depth not in (8, 16):
        raise ImageError(path, f"bit_depth must be 8 or 16, got {bit_depth}")
    color = as_planes(path, rgb, (1, 3), "rgb")
    planes = [color] + ([as_planes(path, alpha, (1,), "alpha")] if alpha is not None else [])
    if any(not torch.isfinite(p).all() for p in planes):
        raise ImageError(path, "refusing to write NaN/Inf pixel values")
    if any(p.shape[1:] != color.shape[1:] for p in planes):
        raise ImageError(
            path, f"alpha size {tuple(planes[-1].shape[1:])} differs from rgb size {tuple(color.shape[1:])}"
        )
    gray = (is_gray or color.shape[0] == 1) and file_format != "WEBP"
    color = color.mean(0, keepdim=True) if gray else color.expand(3, -1, -1)
    keep_alpha = alpha is not None and file_format in ("PNG", "WEBP", "TIFF")
    depth = 16 if bit_depth == 16 and file_format in ("PNG", "TIFF") else 8
    pixels = (
        quantize(torch.cat([color] + planes[1:] if keep_alpha else [color]), depth).permute(1, 2, 0).numpy()
    )
    icc = icc_profile if icc_color_space(icc_profile) == ("GRAY" if gray else "RGB") else None
    exif = exif_without_orientation(exif)
    if depth == 16 and file_format == "TIFF" and pixels.shape[2] == 2:
        pixels = pixels[..., [0, 0, 0, 1]]  # PIL cannot open 16-bit gray+alpha TIFF: store it as RGBA
        icc = icc_profile if icc_color_space(icc_profile) == "RGB" else None
    if depth == 16:
        data = png16_bytes(pixels, icc, exif) if file_format == "PNG" else tiff16_bytes(pixels, icc)
        write_atomic(path, lambda handle: handle.write(data))
        return path
    image = Image.fromarray(pixels[..., 0] if pixels.shape[2] == 1 else pixels)
    options = pil_save_options(file_format, icc, exif, quality)
    write_atomic(path, lambda handle: image.save(handle, format=file_format, **options))
    return path


def write_like(path: Path, rgb: torch.Tensor, source: LoadedImage) -> Path:
    """Write an upscale ``rgb`` of ``source`` keeping what the source had: its alpha (resized bicubic to ``rgb``),
    greyness, bit depth, ICC profile and EXIF (:func:`write_image`). Returns ``path``."""
    alpha = source.alpha
    if alpha is not None:
        alpha = resize(alpha[None].float(), tuple(rgb.shape[-2:]))[0]
    return write_image(
        path,
        rgb,
        alpha,
        is_gray=source.is_gray,
        bit_depth=source.bit_depth,
        icc_profile=source.icc_profile,
        exif=source.exif,
    )


def tensor_to_pil(rgb: torch.Tensor, alpha: torch.Tensor | None = None, is_gray: bool = False) -> Image.Image:
    """Inverse of :func:`pil_to_tensor` (8 bit): RGB/RGBA, or L/LA when ``is_gray`` (BT.601 luma)."""
    x = rgb.float().clamp(0, 1)
    if is_gray:
        x = 0.299 * x[0:1] + 0.587 * x[1:2] + 0.114 * x[2:3]
    if alpha is not None:
        x = torch.cat([x, alpha.float().clamp(0, 1)])
    arr = quantize(x, 8).permute(1, 2, 0).numpy()
    mode = {1: "L", 2: "LA", 3: "RGB", 4: "RGBA"}[arr.shape[2]]
    return Image.fromarray(arr[:, :, 0] if mode == "L" else arr, mode)
