"""Image I/O for the upscaler: find, read, write and resize images without losing what the file holds.

Modules: :mod:`.formats` (extensions, :class:`ImageError`), :mod:`.paths` (finding images, naming outputs),
:mod:`.reading` (:func:`read_image`), :mod:`.writing` (:func:`write_image`), :mod:`.sizes` (:func:`resize`).

Reading keeps 16-bit precision (PNG/TIFF), alpha, grayness, the ICC profile and EXIF, applies the EXIF orientation
and refuses bad input with one :class:`ImageError` line naming the file. Writing is atomic and never writes NaN/Inf.

Formats: png, jpg/jpeg, webp, bmp, tif/tiff. What each keeps on write (the rest is dropped silently):

- png: alpha, 16-bit, gray, ICC, EXIF.
- tiff: alpha, 16-bit, gray, ICC; EXIF at 8 bits only; 16-bit gray+alpha is stored as RGBA (PIL cannot open it).
  8-bit TIFF is uncompressed (libtiff refuses EXIF sub-IFDs), 16-bit TIFF is deflate-compressed.
- webp: alpha, ICC, EXIF; 8-bit, gray is written as RGB.
- jpeg: gray, ICC, EXIF; 8-bit, no alpha (4:4:4 chroma).
- bmp: gray; 8-bit, no alpha, no metadata.

An ICC profile is only embedded when its colour space (RGB or GRAY) matches the written pixels.
"""

from .formats import FORMAT_BY_EXTENSION, IMAGE_EXTENSIONS, READ_FORMATS, ImageError
from .paths import ImageScan, file_kind, find_images, output_path, scan_existing, scan_images
from .reading import (
    MAX_PIXELS,
    LoadedImage,
    first_frame_note,
    may_have_alpha,
    pil_to_tensor,
    read_image,
    sniff_format,
    unsupported_reason,
)
from .sizes import check_output_pixels, resize, target_size
from .writing import format_for, quantize, tensor_to_pil, write_image, write_like

__all__ = [
    "FORMAT_BY_EXTENSION",
    "IMAGE_EXTENSIONS",
    "MAX_PIXELS",
    "READ_FORMATS",
    "ImageError",
    "ImageScan",
    "LoadedImage",
    "check_output_pixels",
    "file_kind",
    "find_images",
    "first_frame_note",
    "format_for",
    "may_have_alpha",
    "output_path",
    "pil_to_tensor",
    "quantize",
    "read_image",
    "resize",
    "scan_existing",
    "scan_images",
    "sniff_format",
    "target_size",
    "tensor_to_pil",
    "unsupported_reason",
    "write_image",
    "write_like",
]
