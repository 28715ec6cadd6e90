"""Out-of-memory errors: recognising them (CUDA's, Python's, the CPU allocator's) and the retry loop. What to
shrink after one is the memory plan's decision (:meth:`fluxsr.inference.memory.MemoryPlan.after_oom`); this module
only runs the attempts."""

from __future__ import annotations

import gc
from collections.abc import Callable
from typing import TypeVar

import torch

OOM_ERRORS: tuple[type[BaseException], ...] = (torch.cuda.OutOfMemoryError, MemoryError)


def is_oom(error: BaseException) -> bool:
    """True for an out-of-memory error: CUDA's, Python's ``MemoryError``, or a plain ``RuntimeError`` that says so
    (PyTorch's CPU allocator: "can't allocate memory"; some CUDA libraries: "CUDA error: out of memory")."""
    text = str(error).lower()
    return isinstance(error, OOM_ERRORS) or (
        isinstance(error, RuntimeError) and ("can't allocate memory" in text or "out of memory" in text)
    )


T = TypeVar("T")


def free_cached(device: torch.device | str) -> None:
    """Give PyTorch's cached, unused device blocks back after an OOM (a no-op on the CPU)."""
    gc.collect()
    if torch.device(device).type == "cuda":
        torch.cuda.empty_cache()


def run_with_oom_retry(
    attempt: Callable[[], T], after_oom: Callable[[BaseException], bool], device: torch.device | str = "cpu"
) -> T:
    """``attempt()``, again after each out-of-memory error (:func:`is_oom`) for which ``after_oom(error)`` made a
    smaller plan (typically :meth:`MemoryPlan.after_oom`); re-raised when it returns False."""
    while True:
        try:
            return attempt()
        except Exception as error:
            if not is_oom(error) or not after_oom(error):
                raise
        free_cached(device)  # outside the except block: the traceback no longer pins the failed tensors
