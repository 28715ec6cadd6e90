"""Data-loss guards shared by the commands that write or clear files: no output lands on, or clears, an input.

A command lists what it reads (``--hr``, a data set's images, recipe paths) and what it writes, replaces or clears
(files, or folders it writes into or empties); :func:`check_inputs_apart` refuses the run, before anything is
written, when an input is one of those outputs or lies inside one. Paths are compared with links resolved (a link
loop resolves as far as it goes), and two existing paths that are one file (a hard link) count as the same.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path


def real_path(path: Path) -> Path:
    """``path`` with links resolved as far as they go (a link loop does not raise, unlike ``Path.resolve``)."""
    return Path(os.path.realpath(path))


def identity(path: Path) -> tuple[int, int] | None:
    """(device, inode) of an existing path (links followed), else None: two paths with one identity are one file."""
    try:
        st = os.stat(path)
    except OSError:  # does not exist (yet)
        return None
    return st.st_dev, st.st_ino


def check_inputs_apart(
    inputs: Iterable[tuple[str, Path]], outputs: Iterable[tuple[Path, str]], advice: str
) -> None:
    """Refuse (ValueError, one line naming both) an input that is, or lies inside, an output.

    inputs: (what the user calls it, e.g. ``"--hr"``, path) pairs.
    outputs: (path, what the command does to it, e.g. ``"make-testset writes into and --overwrite clears"``).
    advice: how to get out of it, e.g. ``"choose an --out that holds none of the inputs"``.
    Each path is resolved and stat-ed once (a data set's thousands of images against a few outputs).
    """
    targets = [(real_path(dst), identity(dst), dst, action) for dst, action in outputs]
    for label, src in inputs:
        real, ident = real_path(src), identity(src)
        for root, root_ident, dst, action in targets:
            same = real == root or (ident is not None and ident == root_ident)
            if same or root in real.parents:
                relation = "is" if same else "lies inside"
                raise ValueError(f"{label} {src} {relation} {dst}, which {action}; {advice}")
