"""What one request may ask for, checked: the upload, the scale, the tile, the colour fix and the output budget, each
refused with a one-line ``gr.Error`` (shown to the user as a toast, no traceback in the log)."""

from __future__ import annotations

import math
import os
import re
from pathlib import Path
from typing import Any, NoReturn

from ..inference.color import COLOR_FIXES
from ..io.images import ImageError, LoadedImage, read_image, target_size

MIN_SCALE, MAX_SCALE = 1.0, 8.0
MIN_TILE, MAX_TILE = 64, 4096
MESSAGE_CHARS = 300

# ----------------------------------------------------------------------------------------------------- messages


def import_gradio():
    """Import Gradio (the ``serve`` extra) on first use."""
    try:
        import gradio
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise RuntimeError("fluxsr serve needs Gradio: pip install 'fluxsr[serve]'") from error
    return gradio


def one_line(text: str, limit: int = MESSAGE_CHARS) -> str:
    """``text`` on one line (whitespace collapsed), cut to ``limit`` characters."""
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[: limit - 1] + "…"


def fail(message: str) -> NoReturn:
    """Raise ``gr.Error`` with a one-line message (shown to the user as a toast; no traceback in the log)."""
    raise import_gradio().Error(one_line(message), print_exception=False)


def megapixels(pixels: int) -> str:
    """``4194304`` -> ``'4.19 MP'``."""
    return f"{pixels / 1e6:.2f} MP"


def seconds(value: float) -> str:
    """A duration for people: ``'0.42 s'``, ``'12.3 s'``."""
    return f"{value:.2f} s" if value < 10 else f"{value:.1f} s"


# ----------------------------------------------------------------------------------------------------- inputs


def upload_path(file: Any) -> Path:
    """The local path of what Gradio hands a handler: a path string, a ``FileData``-like object or dict."""
    if file is None or file == "":
        fail("Upload an image first (PNG, JPEG, WebP, BMP or TIFF), or click an example.")
    if isinstance(file, (str, os.PathLike)):
        return Path(file)
    if isinstance(file, dict) and file.get("path"):
        return Path(file["path"])
    for attribute in ("path", "name"):
        value = getattr(file, attribute, None)
        if isinstance(value, (str, os.PathLike)) and str(value):
            return Path(value)
    fail(f"Unexpected upload value of type {type(file).__name__}.")


def check_scale(scale: Any, max_scale: float = MAX_SCALE) -> float:
    """The scale as a float in [1, max_scale], or ``gr.Error``."""
    try:
        value = float(scale)
    except (TypeError, ValueError):
        fail(f"Scale must be a number, got {scale!r}.")
    if not (math.isfinite(value) and MIN_SCALE <= value <= max_scale):
        fail(f"Scale must be between {MIN_SCALE:g} and {max_scale:g}, got {value:g}.")
    return value


def check_tile(tile: Any) -> int:
    """The tile edge as an int in [MIN_TILE, MAX_TILE], or ``gr.Error``."""
    try:
        value = int(round(float(tile)))
    except (TypeError, ValueError, OverflowError):
        fail(f"Tile size must be a number of pixels, got {tile!r}.")
    if not MIN_TILE <= value <= MAX_TILE:
        fail(f"Tile size must be between {MIN_TILE} and {MAX_TILE} pixels, got {value}.")
    return value


def check_color_fix(name: Any) -> str:
    """One of :data:`COLOR_FIXES`, or ``gr.Error``."""
    if name not in COLOR_FIXES:
        fail(f"Colour fix must be one of {', '.join(COLOR_FIXES)}, got {name!r}.")
    return str(name)


def read_upload(path: Path, max_pixels: int) -> LoadedImage:
    """Decode an uploaded image, refusing more than ``max_pixels`` before decoding; ``gr.Error`` names the file."""
    try:
        return read_image(path, max_pixels)
    except ImageError as error:
        fail(f"{path.name}: {error.reason or error}")


def output_size(image: LoadedImage, scale: float) -> tuple[int, int]:
    """(height, width) of the upscaled image."""
    return target_size(image.height, image.width, scale)


def largest_scale(image: LoadedImage, max_pixels: int) -> float:
    """The largest scale (2 decimals, rounded down) whose output fits ``max_pixels`` (output sizes round to the
    nearest pixel, so the square-root bound is lowered until the rounded size fits)."""
    s = math.floor(math.sqrt(max_pixels / (image.height * image.width)) * 100) / 100
    while s > 0.01 and math.prod(output_size(image, s)) > max_pixels:
        s = round(s - 0.01, 2)
    return s


def check_budget(name: str, image: LoadedImage, scale: float, max_pixels: int) -> tuple[int, int]:
    """The output (height, width), or ``gr.Error`` when it is over the per-request pixel budget."""
    out_h, out_w = output_size(image, scale)
    if out_h * out_w > max_pixels:
        fail(
            f"{name}: the output would be {out_w}x{out_h} = {megapixels(out_h * out_w)}, over this server's "
            f"budget of {megapixels(max_pixels)} per request; use a scale of at most "
            f"{largest_scale(image, max_pixels):g} or a smaller image."
        )
    return out_h, out_w


def overlap_for(tile: int, model_overlap: int) -> int:
    """Tile overlap in output pixels: the model's (what ``fluxsr upscale`` uses), at most a quarter of the tile."""
    return min(model_overlap, tile // 4)


def safe_stem(path: Path) -> str:
    """A file-name-safe stem for the download (``'my photo (1).jpg'`` -> ``'my_photo_1'``)."""
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", path.stem).strip("._")[:64]
    return stem or "image"
