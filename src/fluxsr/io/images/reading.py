"""Reading images: :func:`read_image` decodes a file keeping 16-bit precision, alpha, grayness, the ICC profile and
EXIF, applies the EXIF orientation and refuses bad input (over the pixel cap, not an image, truncated) with one
:class:`~fluxsr.io.images.formats.ImageError` line naming the file; :func:`pil_to_tensor` does the same for a PIL image."""

from __future__ import annotations

import io
import re
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageCms, UnidentifiedImageError

from .formats import ORIENTATION_TAG, READ_FORMATS, ImageError
from .paths import file_kind


@dataclass(frozen=True, eq=False)
class LoadedImage:
    """A decoded image: ``rgb`` float32 (3,H,W) in [0,1], ``alpha`` float32 (1,H,W) or None, plus what to write back.

    ``exif`` has its orientation reset to 1 because the orientation is already applied to the pixels.
    ``format`` is the decoder PIL used (the content's format, whatever the extension says). ``frames`` counts the
    frames or pages in the file; only the first is decoded (:func:`first_frame_note`).
    """

    path: Path
    rgb: torch.Tensor
    alpha: torch.Tensor | None
    is_gray: bool
    bit_depth: int
    icc_profile: bytes | None
    exif: bytes | None
    format: str
    frames: int = 1

    @property
    def height(self) -> int:
        """Height in pixels."""
        return int(self.rgb.shape[-2])

    @property
    def width(self) -> int:
        """Width in pixels."""
        return int(self.rgb.shape[-1])


MAX_PIXELS = 16384 * 16384
"""Default cap on the pixels of an input (checked from its header, before decoding) and of an output (checked
before any upscaling): ``fluxsr upscale --max-pixels``, ``UpscaleOptions.max_pixels``. x4 of a 4096 x 4096 photo."""


def pixel_limit(max_pixels: int | None) -> int | None:
    """The pixel cap in force: ``max_pixels``, or PIL's ``Image.MAX_IMAGE_PIXELS`` (None there means no cap)."""
    return max_pixels if max_pixels is not None else Image.MAX_IMAGE_PIXELS


def check_pixels(path: Path, size: tuple[int, int], max_pixels: int | None) -> None:
    """Raise :class:`ImageError` when ``size`` (width, height) holds more pixels than the cap allows."""
    limit = pixel_limit(max_pixels)
    pixels = size[0] * size[1]
    if limit is not None and pixels > limit:
        raise ImageError(path, f"{size[0]}x{size[1]} = {pixels} pixels is over the limit of {limit} pixels")


def raw_mode(im: Image.Image) -> str:
    """The decoder's raw mode of a not-yet-loaded PIL image (e.g. ``'RGB;16B'``), '' when unknown."""
    if not im.tile:
        return ""
    args = im.tile[0][3]
    return str(args[0] if isinstance(args, tuple) else args)


def is_deep_color(im: Image.Image) -> bool:
    """True for 16-bit images with several channels, which PIL would cut to 8 bits on load."""
    return im.mode in ("RGB", "RGBA", "LA") and ";16" in raw_mode(im)


def orientation_of(im: Image.Image) -> int:
    """EXIF orientation 1..8 of a PIL image; 1 when missing or unreadable."""
    try:
        value = int(im.getexif().get(ORIENTATION_TAG, 1))
    except Exception:
        return 1
    return value if 1 <= value <= 8 else 1


def exif_without_orientation(exif: bytes | None) -> bytes | None:
    """EXIF bytes with the orientation tag set to 1; None when absent or unparsable."""
    if not exif:
        return None
    try:
        parsed = Image.Exif()
        parsed.load(exif)
        if ORIENTATION_TAG in parsed:
            parsed[ORIENTATION_TAG] = 1
        return parsed.tobytes()
    except Exception:
        return None


def orient(array: np.ndarray, orientation: int) -> np.ndarray:
    """Apply an EXIF orientation to an (H,W,...) array, as ``PIL.ImageOps.exif_transpose`` would."""
    ops: dict[int, Callable[[np.ndarray], np.ndarray]] = {
        1: lambda a: a,
        2: lambda a: a[:, ::-1],
        3: lambda a: a[::-1, ::-1],
        4: lambda a: a[::-1],
        5: lambda a: a.swapaxes(0, 1),
        6: lambda a: a.swapaxes(0, 1)[:, ::-1],
        7: lambda a: a.swapaxes(0, 1)[::-1, ::-1],
        8: lambda a: a.swapaxes(0, 1)[::-1],
    }
    return np.ascontiguousarray(ops[orientation](array))


def icc_color_space(icc: bytes | None) -> str | None:
    """The data colour space an ICC profile declares (``'RGB'``, ``'GRAY'``, ``'CMYK'``...), None if not a profile."""
    if not icc or len(icc) < 20:
        return None
    return icc[16:20].decode("latin-1").strip() or None


def cmyk_to_rgb(im: Image.Image, icc: bytes | None) -> Image.Image:
    """CMYK to sRGB through the embedded profile when there is one, PIL's naive formula otherwise."""
    if icc:
        try:
            source = ImageCms.ImageCmsProfile(io.BytesIO(icc))
            return ImageCms.profileToProfile(im, source, ImageCms.createProfile("sRGB"), outputMode="RGB")
        except Exception:
            pass
    return im.convert("RGB")


def decode_deep(path: Path, gray: bool) -> np.ndarray:
    """Decode a 16-bit multi-channel PNG/TIFF with OpenCV into (H,W,C) RGB(A) or gray+alpha, orientation untouched."""
    try:
        import cv2
    except ImportError as error:
        raise ImageError(
            path, "16-bit colour images need OpenCV: pip install opencv-python-headless"
        ) from error
    array = cv2.imdecode(np.fromfile(path, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
    if array is None:
        raise ImageError(path, "OpenCV could not decode this 16-bit image")
    if array.ndim == 2:
        array = array[..., None]
    channels = array.shape[2]
    if channels in (3, 4):
        array = array[..., [2, 1, 0, 3][:channels]]
    if gray and channels == 4:
        array = array[..., [0, 3]]
    return array


GRAY_MODES = ("L", "LA", "I;16", "I;16L", "I;16B", "I;16N", "I", "F")
"""PIL modes whose pixels are grayscale (with or without alpha, 8, 16 or 32 bits)."""


def supported_mode_image(path: Path, im: Image.Image) -> Image.Image:
    """``im`` in a mode :func:`pil_pixels` reads as it is: palette, 1-bit, premultiplied, padded, YCbCr and CMYK
    images are converted (transparency becomes alpha); an unknown mode is an :class:`ImageError`."""
    mode = im.mode
    transparent = "transparency" in im.info
    if mode == "1":
        return im.convert("L")
    if mode == "P":
        return im.convert("RGBA" if transparent or im.palette.mode == "RGBA" else "RGB")
    if mode == "PA" or mode == "RGBa" or (mode in ("RGB", "RGBX") and transparent):
        return im.convert("RGBA")
    if mode == "La" or (mode == "L" and transparent):
        return im.convert("LA")
    if mode in ("RGBX", "YCbCr"):
        return im.convert("RGB")
    if mode == "CMYK":
        return cmyk_to_rgb(im, im.info.get("icc_profile"))
    if mode not in (*GRAY_MODES, "RGB", "RGBA"):
        raise ImageError(path, f"unsupported pixel mode {mode!r}")
    return im


def check_wide_range(path: Path, mode: str, array: np.ndarray) -> None:
    """Refuse 32-bit integer ('I') pixels outside 0..65535 and float ('F') pixels outside 0..1 (or not finite)."""
    if mode == "I" and array.size and (array.min() < 0 or array.max() > 65535):
        raise ImageError(path, "unsupported 32-bit integer pixels outside 0..65535")
    if (
        mode == "F"
        and array.size
        and not (np.isfinite(array).all() and array.min() >= 0 and array.max() <= 1)
    ):
        raise ImageError(path, "unsupported float pixels outside 0..1 (or NaN/Inf)")


def pil_pixels(path: Path, im: Image.Image) -> tuple[np.ndarray, bool, str]:
    """Pixels of a loaded PIL image as (H,W,C) integers or floats, whether it is gray, and the mode it came from.

    Palette, 1-bit, premultiplied and CMYK images are converted; 32-bit integer ('I') and float ('F') grayscale are
    accepted only inside 0..65535 and 0..1 respectively and are then treated as 16-bit.
    """
    mode = im.mode
    im = supported_mode_image(path, im)
    array = np.asarray(im)
    check_wide_range(path, mode, array)
    if array.ndim == 2:
        array = array[..., None]
    return array, im.mode in GRAY_MODES, mode


def to_unit_float(array: np.ndarray, mode: str) -> tuple[np.ndarray, int]:
    """(H,W,C) pixels as float32 in [0,1] and their bit depth (8 or 16)."""
    if array.dtype == np.uint8:
        return array.astype(np.float32) / 255.0, 8
    if mode == "F":
        return array.astype(np.float32), 16
    return array.astype(np.float32) / 65535.0, 16


def check_regular_file(path: Path) -> None:
    """Refuse (:class:`ImageError`) what is not a non-empty regular file: a named pipe would block the read."""
    info = path.stat()
    if not stat.S_ISREG(info.st_mode):
        raise ImageError(path, f"is a {file_kind(info.st_mode)}, not an image file")
    if info.st_size == 0:
        raise ImageError(path, "empty file (0 bytes)")


def check_header(
    path: Path, im: Image.Image, max_pixels: int | None, check_size: Callable[[int, int], object] | None
) -> None:
    """The pixel limit and ``check_size(height, width)`` on the header's size, before any decoding."""
    check_pixels(path, im.size, max_pixels)
    if check_size is not None:
        try:
            check_size(im.height, im.width)
        except ValueError as refused:
            raise ImageError(path, str(refused)) from None


def load_data(path: Path, im: Image.Image) -> tuple[bool, bool]:
    """Decode an opened image's data (:class:`ImageError` when corrupt or truncated); returns whether it is deep
    colour (:func:`is_deep_color`) and whether its raw mode is gray with alpha, both read before the load."""
    deep, deep_gray = is_deep_color(im), raw_mode(im).startswith("LA")
    try:
        im.load()
    except Exception as error:
        raise ImageError(
            path, f"corrupt or truncated image data ({type(error).__name__}: {error})"
        ) from error
    return deep, deep_gray


def loaded_pixels(path: Path, im: Image.Image, deep: bool, deep_gray: bool) -> tuple[np.ndarray, bool, str]:
    """A loaded image's (H,W,C) pixels, whether it is gray and its mode (:func:`decode_deep` or :func:`pil_pixels`)."""
    if deep:
        return decode_deep(path, deep_gray), deep_gray, im.mode
    return pil_pixels(path, im)


def read_error(path: Path, error: Exception, max_pixels: int | None) -> ImageError:
    """The one-line :class:`ImageError` for an error PIL or the file system raised while reading ``path``."""
    if isinstance(
        error, Image.DecompressionBombError
    ):  # PIL refuses past twice its limit, before check_pixels
        found = re.search(r"\((\d+) pixels\)", str(error))
        pixels = f"{found.group(1)} pixels" if found else "too many pixels"
        limit = min(pixel_limit(max_pixels) or Image.MAX_IMAGE_PIXELS * 2, Image.MAX_IMAGE_PIXELS * 2)
        return ImageError(path, f"{pixels} is over the limit of {limit} pixels")
    if isinstance(error, UnidentifiedImageError):
        return ImageError(path, unsupported_reason(sniff_format(path)))
    if isinstance(error, OSError):
        return ImageError(path, f"cannot read file ({error.strerror or error})")
    return ImageError(path, f"corrupt image header ({type(error).__name__}: {error})")


def read_image(
    path: Path, max_pixels: int | None = None, check_size: Callable[[int, int], object] | None = None
) -> LoadedImage:
    """Decode ``path`` fully into a :class:`LoadedImage`, or raise :class:`ImageError` saying why not.

    The pixel count is checked from the header before any decoding (``max_pixels``, or PIL's
    ``Image.MAX_IMAGE_PIXELS`` when None); PIL's own decompression-bomb error is reported the same way.
    ``check_size(height, width)``, when given, also runs on the header's size before decoding (e.g. the output-size
    cap of an upscale); a ValueError it raises becomes the ImageError.
    Truncated files are errors (``ImageFile.LOAD_TRUNCATED_IMAGES`` is left as PIL ships it, False).
    """
    path = Path(path)
    try:
        check_regular_file(path)
        with Image.open(path, formats=READ_FORMATS) as im:
            check_header(path, im, max_pixels, check_size)
            frames = int(getattr(im, "n_frames", 1))
            deep, deep_gray = load_data(path, im)
            orientation = orientation_of(im)
            exif = exif_without_orientation(im.info.get("exif"))
            # CMYK pixels become sRGB: a CMYK profile would be wrong on them
            icc = None if im.mode == "CMYK" else im.info.get("icc_profile") or None
            array, is_gray, mode = loaded_pixels(path, im, deep, deep_gray)
            file_format = im.format or "unknown"
    except ImageError:
        raise
    except Exception as error:
        raise read_error(path, error, max_pixels) from error
    pixels, bit_depth = to_unit_float(orient(array, orientation), mode)
    rgb, alpha = split_planes(pixels, is_gray)
    return LoadedImage(path, rgb, alpha, is_gray, bit_depth, icc, exif, file_format, frames)


def first_frame_note(image: LoadedImage) -> str | None:
    """One line when only the first of several pictures in the file was read: an animated WebP or PNG, a
    multi-page TIFF. None otherwise, camera MPO files included (their extra frames are previews of the same
    photo)."""
    kinds = {"WEBP": "animated WebP", "PNG": "animated PNG", "TIFF": "multi-page TIFF"}
    if image.frames < 2 or image.format not in kinds:
        return None
    unit = "pages" if image.format == "TIFF" else "frames"
    return f"{image.path}: {kinds[image.format]} with {image.frames} {unit}; only the first was used"


def split_planes(pixels: np.ndarray, is_gray: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(H,W,C) floats as an rgb (3,H,W) tensor (gray repeated) and alpha (1,H,W) or None."""
    tensor = torch.from_numpy(np.ascontiguousarray(pixels.transpose(2, 0, 1)))
    color = 1 if is_gray else 3
    rgb = tensor[:color].expand(3, -1, -1).contiguous()
    alpha = tensor[color : color + 1].contiguous() if tensor.shape[0] > color else None
    return rgb, alpha


def sniff_format(path: Path) -> str | None:
    """The format name any PIL decoder recognises in ``path`` (e.g. ``'GIF'``), None when none does."""
    try:
        with Image.open(path) as im:
            return im.format
    except Exception:
        return None


def unsupported_reason(file_format: str | None) -> str:
    """Why content of ``file_format`` (a PIL format name, None when no decoder knows it) is refused."""
    if file_format:
        return f"unsupported format {file_format} (supported: PNG, JPEG, WebP, BMP, TIFF)"
    return "not an image (content is not PNG, JPEG, WebP, BMP or TIFF)"


def may_have_alpha(path: Path) -> bool:
    """Whether ``path``'s header announces an alpha channel or transparency (False when it cannot be opened)."""
    try:
        with Image.open(path, formats=READ_FORMATS) as im:
            palette = im.palette.mode if im.mode == "P" and im.palette else ""
            return (
                im.mode in ("RGBA", "RGBa", "LA", "La", "PA")
                or "transparency" in im.info
                or palette == "RGBA"
            )
    except Exception:
        return False


def pil_to_tensor(im: Image.Image) -> tuple[torch.Tensor, torch.Tensor | None, bool]:
    """A PIL image as (rgb (3,H,W) float in [0,1], alpha (1,H,W) or None, is_gray); for the Python API.

    Pixels go the way :func:`read_image` takes them (16-bit, 32-bit integer and float gray included), so the API
    and the command agree; unsupported modes raise :class:`ImageError`. EXIF orientation is not applied.
    """
    array, is_gray, mode = pil_pixels(Path(f"<PIL {im.mode} image>"), im)
    rgb, alpha = split_planes(to_unit_float(array, mode)[0], is_gray)
    return rgb, alpha, is_gray
