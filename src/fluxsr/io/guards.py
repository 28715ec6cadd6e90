"""Data-loss guards shared by the commands that write or clear files: no output lands on, or clears, an input.

A command lists what it reads (``--hr``, a data set's images, recipe paths) and what it writes, replaces or clears
(files, or folders it writes into or empties); :func:`check_inputs_apart` refuses the run, before anything is
written, when an input is one of those outputs or lies inside one. Paths are compared with links resolved, and two
existing paths that are one file (a hard link) count as the same.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path


def same_file(a: Path, b: Path) -> bool:
    """True when ``a`` and ``b`` name one file or folder: equal after resolving links, or (both existing) one
    inode, as a hard link is."""
    if Path(a).resolve() == Path(b).resolve():
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist (yet)
        return False


def is_inside(path: Path, folder: Path) -> bool:
    """True when ``path`` is ``folder`` (:func:`same_file`) or lies below it, links resolved."""
    return same_file(path, folder) or Path(folder).resolve() in Path(path).resolve().parents


def check_inputs_apart(
    inputs: Iterable[tuple[str, Path]], outputs: Iterable[tuple[Path, str]], advice: str
) -> None:
    """Refuse (ValueError, one line naming both) an input that is, or lies inside, an output.

    inputs: (what the user calls it, e.g. ``"--hr"``, path) pairs.
    outputs: (path, what the command does to it, e.g. ``"make-testset writes into and --overwrite clears"``).
    advice: how to get out of it, e.g. ``"choose an --out that holds none of the inputs"``.
    """
    outputs = list(outputs)
    for label, src in inputs:
        for dst, action in outputs:
            if is_inside(src, dst):
                relation = "is" if same_file(src, dst) else "lies inside"
                raise ValueError(f"{label} {src} {relation} {dst}, which {action}; {advice}")
