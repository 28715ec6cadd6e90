"""Figures of a quality benchmark (``fluxsr benchmark``): the bar chart of the mean scores and the comparison sheet
of crops (LR, each method, HR). matplotlib is imported lazily (Agg canvas, no pyplot)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ..data.datasets import ImagePair
from ..io.images import ImageError, quantize, resize, target_size
from .benchmark_result import BenchmarkResult, MethodRun
from .metric_set import Metric
from .reports import format_value
from .scoring import load_rgb

CAPTION_FIRST = ("psnr", "lpips", "dists", "niqe")
"""Scores preferred under the comparison sheet's crops (two are shown)."""


def _save_figure(fig, path: Path) -> Path:
    """Lay out and write a (pyplot-free) figure, creating the folder; returns ``path``."""
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path


def _figure(width: float, height: float):
    """A matplotlib Figure on the Agg canvas (no pyplot, no global state)."""
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=110)


def bar_chart(result: BenchmarkResult, path: Path) -> Path:
    """One bar panel per metric plus seconds/image; each bar labelled with its value."""
    runs = [r for r in result.runs if r.report is not None]
    panels = [
        (f"{m.name} {m.arrow}", m.name, [r.report.mean().get(m.name) for r in runs]) for m in result.metrics
    ]
    panels.append(("seconds / image ↓", "s", [r.s_per_image for r in runs]))
    fig = _figure(max(6.0, 2.8 * len(panels)), 4.0)
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    colors = [f"C{i}" for i in range(len(runs))]
    labels = [r.label.replace(" (", "\n(") for r in runs]
    for ax, (title, name, values) in zip(axes, panels, strict=True):
        heights = [v if v is not None and math.isfinite(v) else 0.0 for v in values]
        bars = ax.bar(range(len(runs)), heights, color=colors)
        for bar, v in zip(bars, values, strict=True):
            text = "–" if v is None else (format_value(name, v) if name != "s" else f"{v:.2f}")
            ax.annotate(
                text,
                (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                ha="center",
                va="bottom",
                fontsize=8,
                xytext=(0, 2),
                textcoords="offset points",
            )
        ax.set_title(title, fontsize=10)
        ax.set_xticks(range(len(runs)), labels, fontsize=7, rotation=20, ha="right")
        ax.margins(y=0.15)
    fig.suptitle(
        f"{result.dataset.name}: {len(result.dataset.pairs)} images, x{result.scale:g}, "
        f"protocol {result.protocol}",
        fontsize=11,
    )
    return _save_figure(fig, path)


def busiest_window(img: Tensor, size: int, step: int) -> tuple[int, int]:
    """(top, left), multiples of ``step``, of the ``size`` x ``size`` window of (3, H, W) ``img`` with the most
    gradient energy (sum of |dx| + |dy| of the mean channel); ties go to the first in raster order."""
    g = img.float().mean(0)
    energy = torch.zeros_like(g)
    energy[:, 1:] += (g[:, 1:] - g[:, :-1]).abs()
    energy[1:, :] += (g[1:, :] - g[:-1, :]).abs()
    h, w = g.shape
    size_h, size_w = min(size, h), min(size, w)
    c = torch.nn.functional.pad(energy.double().cumsum(0).cumsum(1), (1, 0, 1, 0))
    tops = torch.arange(0, h - size_h + 1, step)
    lefts = torch.arange(0, w - size_w + 1, step)
    t, l_ = tops[:, None], lefts[None, :]
    sums = c[t + size_h, l_ + size_w] - c[t, l_ + size_w] - c[t + size_h, l_] + c[t, l_]
    idx = int(torch.argmax(sums.flatten()))
    return int(tops[idx // len(lefts)]), int(lefts[idx % len(lefts)])


def _crop(img: Tensor | None, top: int, left: int, size: int) -> np.ndarray | None:
    """HWC uint8 crop (clipped to the image), or None."""
    if img is None:
        return None
    return quantize(img[:, top : top + size, left : left + size], 8).permute(1, 2, 0).numpy()


def _try_load(path: Path | None) -> Tensor | None:
    try:
        return load_rgb(path) if path is not None else None
    except ImageError:
        return None


def _score_caption(run: MethodRun, name: str, metrics: Sequence[Metric]) -> str:
    """``psnr 24.31 · lpips 0.3120`` for one image: two of its scores, :data:`CAPTION_FIRST` preferred."""
    if run.report is None:
        return ""
    scores = next((s.scores for s in run.report.images if s.name == name), {})
    rank = {n: i for i, n in enumerate(CAPTION_FIRST)}
    order = sorted(metrics, key=lambda m: rank.get(m.name, len(rank)))
    shown = [m for m in order if m.name in scores][:2]
    return " · ".join(f"{m.name} {format_value(m.name, scores[m.name])}" for m in shown)


def comparison_sheet(result: BenchmarkResult, path: Path, n_images: int = 4, crop: int | None = None) -> Path:
    """Rows of crops per image: full image with the crop box | LR (nearest) | each method | HR.

    The crop (``crop`` HR pixels, default 128, a multiple of the scale) is the window with the most detail in the
    HR (or in the LR when there is none), aligned so the LR crop covers exactly the same area (at a non-integer
    scale the LR is enlarged to the output's size with nearest-neighbour sampling, so crops align at any pixel).
    """
    integer = float(result.scale).is_integer()
    s = max(1, int(result.scale)) if integer else 1
    crop = (crop or 128) // s * s or s
    runs = [r for r in result.runs if r.outputs]
    pairs = [p for p in result.dataset.pairs if any(p.name in r.outputs for r in runs)][:n_images]
    columns = ["full image", "LR (nearest)"] + [r.label.replace(" (", "\n(") for r in runs]
    has_hr = any(p.hr is not None for p in pairs)
    if has_hr:
        columns.append("HR (ground truth)")
    fig = _figure(2.3 * len(columns), 2.55 * len(pairs) + 0.5)
    axes = fig.subplots(len(pairs), len(columns), squeeze=False)
    for row, pair in zip(axes, pairs, strict=True):
        _sheet_row(row, pair, runs, result, crop, s, has_hr)
    for ax, title in zip(axes[0], columns, strict=True):
        ax.set_title(title, fontsize=9)
    fig.suptitle(
        f"{result.dataset.name}: {crop}px crops of the x{result.scale:g} results "
        f"(red box in the first column)",
        fontsize=10,
    )
    return _save_figure(fig, path)


def _sheet_row(
    row, pair: ImagePair, runs: Sequence[MethodRun], result: BenchmarkResult, crop: int, s: int, has_hr: bool
) -> None:
    """One image's row of the comparison sheet: the crop window (a multiple of ``s``) and its panels."""
    lr, hr = _try_load(pair.lr), _try_load(pair.hr)
    # nearest-neighbour to the output's size (at an integer scale: each LR pixel repeated s x s times)
    lr_up = (
        None if lr is None else resize(lr, target_size(*lr.shape[-2:], result.scale), mode="nearest-exact")
    )
    ref = hr if hr is not None else lr_up
    if ref is None:
        for ax in row:
            ax.set_axis_off()
        row[0].set_title(f"{pair.name}: unreadable", fontsize=8)
        return
    size = min(crop, ref.shape[-2], ref.shape[-1]) // s * s or min(ref.shape[-2:])
    top, left = busiest_window(ref, size, s)
    panels = [(_crop(ref, 0, 0, max(ref.shape[-2:])), ""), (_crop(lr_up, top, left, size), "")]
    panels += [
        (
            _crop(_try_load(r.outputs.get(pair.name)), top, left, size),
            _score_caption(r, pair.name, result.metrics),
        )
        for r in runs
    ]
    if has_hr:
        panels.append((_crop(hr, top, left, size), ""))
    for ax, (img, caption) in zip(row, panels, strict=True):
        ax.set_xticks([])
        ax.set_yticks([])
        if img is None:
            ax.text(0.5, 0.5, "missing", ha="center", va="center", transform=ax.transAxes)
        else:
            ax.imshow(img, interpolation="nearest")
        ax.set_xlabel(caption, fontsize=7)
    _mark_window(row[0], top, left, size)
    row[0].set_ylabel(pair.name, fontsize=9)


def _mark_window(ax, top: int, left: int, size: int) -> None:
    """The red box of the crop window on the full image."""
    from matplotlib.patches import Rectangle

    ax.add_patch(Rectangle((left - 0.5, top - 0.5), size, size, fill=False, edgecolor="red", lw=1.5))
