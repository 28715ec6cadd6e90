"""Lazy package faces: a folder's ``__init__`` names its public interface without importing it.

Each subpackage states its interface as a table from public name to the submodule that defines it; a name is
imported the first time it is read (``from fluxsr.evaluation import evaluate_dirs``), so importing one light module
of a folder (a config dataclass, an argument type) does not load torch and diffusers through the folder's face.
"""

from __future__ import annotations

from collections.abc import Callable
from importlib import import_module


def lazy_face(package: str, table: dict[str, str]) -> tuple[Callable[[str], object], list[str]]:
    """(``__getattr__``, ``__all__``) for ``package``: ``table`` maps each public name to the submodule (relative
    to ``package``) that defines it."""

    def __getattr__(name: str) -> object:
        if name in table:
            return getattr(import_module(f".{table[name]}", package), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return __getattr__, sorted(table)
