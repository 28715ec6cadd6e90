"""Memory probes: the peak memory of a stretch of code and what the machine has free, on CUDA and on the CPU.

:func:`reset_peak` / :func:`read_peak` bracket a stretch of code: ``torch.cuda.max_memory_allocated`` on CUDA, the
process's peak RSS (``VmHWM``, reset through ``/proc/self/clear_refs``; no psutil) on the CPU.
:func:`cpu_available` reads ``MemAvailable``. The memory planner (:mod:`fluxsr.inference.memory`) budgets with them.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

import torch

_PROC = Path("/proc/self")


def _status_kib(key: str) -> int | None:
    """A ``kB`` field of ``/proc/self/status`` (``VmHWM``, ``VmRSS``) in KiB, or None off Linux."""
    try:
        text = (_PROC / "status").read_text()
    except OSError:
        return None
    m = re.search(rf"^{key}:\s+(\d+)\s+kB", text, re.M)
    return int(m.group(1)) if m else None


def cpu_rss() -> int:
    """Current resident set size of this process in bytes (0 where /proc is missing)."""
    return (_status_kib("VmRSS") or 0) * 1024


def reset_peak(device: torch.device | str) -> None:
    """Start a new peak-memory window on ``device`` (CUDA allocator stats, or the process's RSS high-water mark)."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    try:
        (_PROC / "clear_refs").write_text("5")  # Linux >= 4.0: reset VmHWM to the current RSS
    except OSError:
        pass  # the peak then covers the whole process lifetime (resource.getrusage semantics)


def read_peak(device: torch.device | str) -> int:
    """Peak bytes since :func:`reset_peak`: CUDA ``max_memory_allocated``, or the CPU process's peak RSS."""
    device = torch.device(device)
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    hwm = _status_kib("VmHWM")
    if hwm is not None:
        return hwm * 1024
    import resource  # Unix only: the fallback where /proc is missing

    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * (1 if sys.platform == "darwin" else 1024)


def current_bytes(device: torch.device | str) -> int:
    """Bytes in use now: CUDA ``memory_allocated``, or the CPU process's RSS."""
    device = torch.device(device)
    return int(torch.cuda.memory_allocated(device)) if device.type == "cuda" else cpu_rss()


def cpu_available() -> int:
    """Bytes the CPU can still give this process: ``MemAvailable`` from /proc/meminfo (else total physical)."""
    try:
        m = re.search(r"^MemAvailable:\s+(\d+)\s+kB", Path("/proc/meminfo").read_text(), re.M)
        if m:
            return int(m.group(1)) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
