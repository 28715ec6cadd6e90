"""Image formats fluxsr reads and writes, and :class:`ImageError`, the one-line error naming a file."""

from __future__ import annotations

from pathlib import Path

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
