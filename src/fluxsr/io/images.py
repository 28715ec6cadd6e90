"""Image I/O for the upscaler: find, read, write and resize images without losing what the file holds.

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

from __future__ import annotations

import errno
import io
import math
import os
import re
import stat
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageCms, UnidentifiedImageError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")
"""Extensions :func:`find_images` picks up (compared lower-case)."""

FORMAT_BY_EXTENSION = {
    ".png": "PNG",
    ".jpg": "JPEG",
    ".jpeg": "JPEG",
    ".webp": "WEBP",
    ".bmp": "BMP",
    ".tif": "TIFF",
    ".tiff": "TIFF",
}
READ_FORMATS = ("PNG", "JPEG", "WEBP", "BMP", "DIB", "TIFF")
"""PIL decoders :func:`read_image` allows (JPEG covers camera MPO); the content decides, not the extension."""

ORIENTATION_TAG = 0x0112
ICC_TAG = 34675


class ImageError(Exception):
    """A file that cannot be read or written; ``str()`` is one line: ``<path>: <reason>``.

    ``ImageError(message)`` with no reason keeps ``message`` as the text, so pickling and DataLoader workers
    (which rebuild exceptions from their text) give back the same line.
    """

    def __init__(self, path: Path | str, reason: str = "") -> None:
        self.path = Path(path)
        self.reason = " ".join(str(reason).split())
        super().__init__(f"{self.path}: {self.reason}" if self.reason else " ".join(str(path).split()))


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


# ----------------------------------------------------------------------------------------------------- finding


@dataclass
class ImageScan:
    """What :func:`scan_images` found under one path.

    ``images``: regular files with an image extension (sorted; a file given by name counts whatever its name).
    ``ignored``: other regular files, passed over for their extension (hidden entries are not counted).
    ``problems``: one :class:`ImageError` per entry that may hold images but cannot be read: a named pipe or other
    special file, a broken symbolic link, a symbolic link loop, a folder that cannot be listed.
    ``notes``: folder links not followed because their folder is searched already or holds them (a loop); nothing
    is missed.
    """

    images: list[Path] = field(default_factory=list)
    ignored: list[Path] = field(default_factory=list)
    problems: list[ImageError] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def find_images(path: Path, exclude: Path | None = None) -> list[Path]:
    """``[path]`` for a file; for a folder every image below it (:func:`scan_images`), with the entries named like
    images that cannot be read (a named pipe, a broken link), so that reading them reports them, never opening a
    pipe (:func:`read_image`). ``FileNotFoundError`` when ``path`` is neither a regular file nor a folder."""
    scan = scan_existing(path, exclude)
    unreadable = [p.path for p in scan.problems if p.path.suffix.lower() in IMAGE_EXTENSIONS]
    return sorted(scan.images + unreadable)


def scan_existing(path: Path, exclude: Path | None = None) -> ImageScan:
    """:func:`scan_images` of a path that must be a regular file or a folder (``FileNotFoundError`` otherwise)."""
    path = Path(path)
    scan = scan_images(path, exclude)
    if scan.problems and not path.is_dir():
        raise FileNotFoundError(2, scan.problems[0].reason, str(path))
    return scan


def file_kind(mode: int) -> str:
    """What a ``st_mode`` is, in words: ``file``, ``folder``, ``named pipe``, ``socket``, ``device``..."""
    kinds = [
        (stat.S_ISREG, "file"),
        (stat.S_ISDIR, "folder"),
        (stat.S_ISFIFO, "named pipe"),
        (stat.S_ISSOCK, "socket"),
        (stat.S_ISCHR, "character device"),
        (stat.S_ISBLK, "block device"),
    ]
    return next((name for test, name in kinds if test(mode)), "special file")


def stat_or_reason(path: Path) -> tuple[os.stat_result | None, str]:
    """``path``'s stat (links followed) and '', or None and why it cannot be reached (a broken link, a loop...)."""
    try:
        return path.stat(), ""
    except OSError as error:
        if not path.is_symlink():
            missing = error.errno == errno.ENOENT
            return None, "no such file or folder" if missing else f"cannot read ({error.strerror or error})"
        if error.errno == errno.ELOOP:
            return None, "symbolic link loop (the link leads back to itself)"
        if error.errno == errno.ENOENT:
            return None, f"broken symbolic link (its target {os.readlink(path)} does not exist)"
        return None, f"symbolic link that cannot be followed ({error.strerror or error})"


def scan_images(path: Path, exclude: Path | None = None) -> ImageScan:
    """Images under ``path``: a regular file itself, or every regular image file below a folder (recursive,
    hidden entries skipped, folder links followed), never entering the folder ``exclude`` (an output folder inside
    the input folder) nor a folder twice. Never raises: what cannot be read is an :class:`ImageScan` problem."""
    path = Path(path)
    scan = ImageScan()
    info, reason = stat_or_reason(path)
    if info is not None and stat.S_ISDIR(info.st_mode):
        walk_folder(path, exclude, scan)
    elif info is not None and stat.S_ISREG(info.st_mode):
        scan.images.append(path)
    else:
        scan.problems.append(ImageError(path, reason or f"not a regular file ({file_kind(info.st_mode)})"))
    scan.images.sort()
    scan.ignored.sort()
    scan.problems.sort(key=lambda problem: problem.path)
    return scan


def walk_folder(top: Path, exclude: Path | None, scan: ImageScan) -> None:
    """Add what lies below the folder ``top`` to ``scan``, not entering the folder ``exclude`` (unless it is ``top``).
    Links to folders are followed once every real folder is searched, so that a folder and a link to it give the
    folder's own paths; a folder is searched once."""
    skip = stat_or_reason(Path(exclude))[0] if exclude is not None else None
    skipped = (skip.st_dev, skip.st_ino) if skip is not None else None
    seen: set[tuple[int, int]] = set()
    folders, links = [top], []
    while folders or links:
        folder = folders.pop() if folders else links.pop(0)
        info, reason = stat_or_reason(folder)
        if info is None:  # gone since it was listed
            scan.problems.append(ImageError(folder, reason))
            continue
        key = (info.st_dev, info.st_ino)
        if folder != top and folder.is_symlink() and (note := link_note(folder, key in seen, top)):
            scan.notes.append(note)
            continue
        if key == skipped and folder != top:
            continue
        if key not in seen:
            seen.add(key)
            list_folder(folder, scan, folders, links)


def link_note(link: Path, searched: bool, top: Path) -> str | None:
    """Why the folder link ``link`` below ``top`` is not followed (its folder is ``searched`` already, or holds
    ``top``: a loop), or None to follow it."""
    target = os.path.realpath(link)
    if searched:
        return f"{link}: link to {target}, searched already; not followed"
    if (os.path.realpath(top) + os.sep).startswith(target.rstrip(os.sep) + os.sep):
        return f"{link}: link to {target}, a folder that holds it (a loop); not followed"
    return None


def entry_mode(entry: os.DirEntry) -> tuple[int | None, str]:
    """The type bits (``st_mode``) of a folder entry with links followed, and ''; or None and why it cannot be
    reached (:func:`stat_or_reason`). Plain files and folders need no extra system call."""
    if entry.is_file(follow_symlinks=False):
        return stat.S_IFREG, ""
    if entry.is_dir(follow_symlinks=False):
        return stat.S_IFDIR, ""
    info, reason = stat_or_reason(Path(entry.path))
    return (info.st_mode if info is not None else None), reason


def list_folder(folder: Path, scan: ImageScan, folders: list[Path], links: list[Path]) -> None:
    """Sort the visible entries of ``folder`` into ``scan`` (images, ignored files, problems) and into the
    ``folders`` and folder ``links`` still to search; a folder that cannot be listed is a problem."""
    try:
        with os.scandir(folder) as listing:
            entries = sorted(listing, key=lambda e: e.name)
    except OSError as error:
        scan.problems.append(ImageError(folder, f"cannot list this folder ({error.strerror or error})"))
        return
    for entry in entries:
        if entry.name.startswith("."):
            continue
        child = Path(entry.path)
        mode, reason = entry_mode(entry)
        if mode is None:
            scan.problems.append(ImageError(child, reason))
        elif stat.S_ISDIR(mode):
            (links if entry.is_symlink() else folders).append(child)
        elif stat.S_ISREG(mode):
            (scan.images if child.suffix.lower() in IMAGE_EXTENSIONS else scan.ignored).append(child)
        else:
            scan.problems.append(ImageError(child, f"not a regular file ({file_kind(mode)})"))


# ----------------------------------------------------------------------------------------------------- reading


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


def pil_pixels(path: Path, im: Image.Image) -> tuple[np.ndarray, bool, str]:
    """Pixels of a loaded PIL image as (H,W,C) integers or floats, whether it is gray, and the mode it came from.

    Palette, 1-bit, premultiplied and CMYK images are converted; 32-bit integer ('I') and float ('F') grayscale are
    accepted only inside 0..65535 and 0..1 respectively and are then treated as 16-bit.
    """
    mode = im.mode
    transparent = "transparency" in im.info
    if mode == "1":
        im = im.convert("L")
    elif mode == "P":
        im = im.convert("RGBA" if transparent or im.palette.mode == "RGBA" else "RGB")
    elif mode == "PA" or mode == "RGBa" or (mode in ("RGB", "RGBX") and transparent):
        im = im.convert("RGBA")
    elif mode == "La" or (mode == "L" and transparent):
        im = im.convert("LA")
    elif mode in ("RGBX", "YCbCr"):
        im = im.convert("RGB")
    elif mode == "CMYK":
        im = cmyk_to_rgb(im, im.info.get("icc_profile"))
    elif mode not in ("L", "LA", "RGB", "RGBA", "I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        raise ImageError(path, f"unsupported pixel mode {mode!r}")
    array = np.asarray(im)
    if mode == "I" and array.size and (array.min() < 0 or array.max() > 65535):
        raise ImageError(path, "unsupported 32-bit integer pixels outside 0..65535")
    if (
        mode == "F"
        and array.size
        and not (np.isfinite(array).all() and array.min() >= 0 and array.max() <= 1)
    ):
        raise ImageError(path, "unsupported float pixels outside 0..1 (or NaN/Inf)")
    if array.ndim == 2:
        array = array[..., None]
    return array, im.mode in ("L", "LA", "I;16", "I;16L", "I;16B", "I;16N", "I", "F"), mode


def to_unit_float(array: np.ndarray, mode: str) -> tuple[np.ndarray, int]:
    """(H,W,C) pixels as float32 in [0,1] and their bit depth (8 or 16)."""
    if array.dtype == np.uint8:
        return array.astype(np.float32) / 255.0, 8
    if mode == "F":
        return array.astype(np.float32), 16
    return array.astype(np.float32) / 65535.0, 16


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
        info = path.stat()
        if not stat.S_ISREG(info.st_mode):  # a named pipe would block the read forever
            raise ImageError(path, f"is a {file_kind(info.st_mode)}, not an image file")
        if info.st_size == 0:
            raise ImageError(path, "empty file (0 bytes)")
        with Image.open(path, formats=READ_FORMATS) as im:
            check_pixels(path, im.size, max_pixels)
            if check_size is not None:
                try:
                    check_size(im.height, im.width)
                except ValueError as refused:
                    raise ImageError(path, str(refused)) from None
            frames = int(getattr(im, "n_frames", 1))
            deep, deep_gray = is_deep_color(im), raw_mode(im).startswith("LA")
            try:
                im.load()
            except Exception as error:
                raise ImageError(
                    path, f"corrupt or truncated image data ({type(error).__name__}: {error})"
                ) from error
            orientation = orientation_of(im)
            exif = exif_without_orientation(im.info.get("exif"))
            icc = im.info.get("icc_profile") or None
            if deep:
                array, is_gray, mode = decode_deep(path, deep_gray), deep_gray, im.mode
            else:
                array, is_gray, mode = pil_pixels(path, im)
            if im.mode == "CMYK":
                icc = None  # pixels are sRGB now; a CMYK profile would be wrong on them
            file_format = im.format or "unknown"
    except ImageError:
        raise
    except Image.DecompressionBombError as error:  # PIL refuses past twice its own limit, before check_pixels
        found = re.search(r"\((\d+) pixels\)", str(error))
        pixels = f"{found.group(1)} pixels" if found else "too many pixels"
        limit = min(pixel_limit(max_pixels) or Image.MAX_IMAGE_PIXELS * 2, Image.MAX_IMAGE_PIXELS * 2)
        raise ImageError(path, f"{pixels} is over the limit of {limit} pixels") from error
    except UnidentifiedImageError as error:
        raise ImageError(path, unsupported_reason(sniff_format(path))) from error
    except OSError as error:
        raise ImageError(path, f"cannot read file ({error.strerror or error})") from error
    except Exception as error:
        raise ImageError(path, f"corrupt image header ({type(error).__name__}: {error})") from error
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


# ----------------------------------------------------------------------------------------------------- writing


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
    from .cache import write_atomic as write_file_atomic

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


# ----------------------------------------------------------------------------------------------------- naming


def output_path(
    src: Path, input_root: Path, out_dir: Path, suffix: str, ext: str | None, *, has_alpha: bool = False
) -> Path:
    """Where the result for ``src`` goes: its path below ``input_root`` mirrored under ``out_dir``.

    The name is ``stem + suffix`` plus ``'.' + ext``; ``ext`` None or ``'auto'`` keeps the source extension, except
    that an image with alpha whose source extension cannot hold it (jpg/jpeg/bmp) becomes ``.png``.
    ``input_root`` may be ``src`` itself (single-file input). ``ValueError`` if ``src`` is not below it.
    """
    src, input_root = Path(src), Path(input_root)
    relative = Path(src.name) if src == input_root else src.relative_to(input_root)
    if ext is None or ext.lower().lstrip(".") == "auto":
        extension = src.suffix
        if has_alpha and extension.lower() in (".jpg", ".jpeg", ".bmp"):
            extension = ".png"
    else:
        extension = "." + ext.lstrip(".")
        if extension.lower() not in FORMAT_BY_EXTENSION:
            raise ValueError(f"unsupported output extension {ext!r}; use one of {IMAGE_EXTENSIONS}")
    return Path(out_dir) / relative.parent / f"{src.stem}{suffix}{extension}"


# ----------------------------------------------------------------------------------------------------- resizing


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


# ----------------------------------------------------------------------------------------------------- PIL objects


def pil_to_tensor(im: Image.Image) -> tuple[torch.Tensor, torch.Tensor | None, bool]:
    """A PIL image as (rgb (3,H,W) float in [0,1], alpha (1,H,W) or None, is_gray); for the Python API.

    Pixels go the way :func:`read_image` takes them (16-bit, 32-bit integer and float gray included), so the API
    and the command agree; unsupported modes raise :class:`ImageError`. EXIF orientation is not applied.
    """
    array, is_gray, mode = pil_pixels(Path(f"<PIL {im.mode} image>"), im)
    rgb, alpha = split_planes(to_unit_float(array, mode)[0], is_gray)
    return rgb, alpha, is_gray


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
