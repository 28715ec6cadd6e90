"""Image paths: finding the images under a path (:func:`scan_images`, :func:`find_images`: special files, broken
links and link loops reported, never opened) and naming each output (:func:`output_path`)."""

from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

from .formats import FORMAT_BY_EXTENSION, IMAGE_EXTENSIONS, ImageError


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
