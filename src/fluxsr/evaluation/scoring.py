"""Score SR results against ground truth (``fluxsr eval``): pair two folders, score each image with a metric set
(:mod:`fluxsr.evaluation.metric_set`), collect the per-image scores in an :class:`EvalReport`.

Images are read with :func:`fluxsr.io.images.read_image` (EXIF orientation applied, grey as RGB, alpha dropped, 16-bit
kept). The crop border applies to PSNR/SSIM only; LPIPS, DISTS and no-reference metrics see the whole image.
Problems (missing partners, size mismatches, unreadable files, a metric failing on one image) are collected by
name, never dropped silently; the rest is still scored.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from torch import Tensor

from ..data.datasets import match_files, relative_name
from ..io.guards import check_inputs_apart
from ..io.images import ImageError, find_images, read_image, scan_images
from .metric_set import (
    Metric,
    build_metrics,
    default_metric_names,
    effective_protocol,
    needs_reference,
    parse_metric_names,
)


@dataclass
class ImageScore:
    """Scores of one prediction (``gt`` None for no-reference only)."""

    name: str
    pred: str
    gt: str | None
    scores: dict[str, float] = field(default_factory=dict)


@dataclass
class EvalReport:
    """Per-image scores, problems (one line each, naming the file) and notes for a set of metrics."""

    metrics: list[Metric]
    images: list[ImageScore]
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    protocol: str = "fluxsr"
    crop_border: int = 4
    scale: int = 4

    @property
    def metric_names(self) -> list[str]:
        """Metric names, in order."""
        return [m.name for m in self.metrics]

    @property
    def n_scored(self) -> int:
        """Images with at least one score (an image on which every metric failed does not count)."""
        return sum(1 for s in self.images if s.scores)

    def counts(self) -> dict[str, int]:
        """Number of images that have each metric (less than :attr:`n_scored` where it failed on some)."""
        return {n: sum(1 for s in self.images if n in s.scores) for n in self.metric_names}

    def mean(self) -> dict[str, float]:
        """Mean of each metric over the images that have it (inf stays inf); metrics with no value are left out."""
        out = {}
        for name in self.metric_names:
            values = [s.scores[name] for s in self.images if name in s.scores]
            if values:
                out[name] = float(np.mean(values))
        return out


def load_rgb(path: Path) -> Tensor:
    """(3, H, W) float32 in [0, 1] of an image file; :class:`fluxsr.io.images.ImageError` naming it on failure."""
    return read_image(Path(path)).rgb


def _size(x: Tensor) -> str:
    return f"{x.shape[-1]}x{x.shape[-2]}"


def score_images(
    pred: Tensor, gt: Tensor | None, metrics: Sequence[Metric], name: str
) -> tuple[dict, list[str]]:
    """{metric: value} for one image (full-reference metrics only when ``gt`` is given) and per-metric errors."""
    scores, problems = {}, []
    for m in metrics:
        if m.reference and gt is None:
            continue
        try:
            scores[m.name] = m.score(pred, gt)
        except (ValueError, RuntimeError) as e:
            problems.append(f"{name}: {m.name} failed: {e}")
    return scores, problems


def evaluate_items(
    items: Sequence[tuple[str, Path, Path | None]], metrics: Sequence[Metric], progress: bool = False
) -> tuple[list[ImageScore], list[str]]:
    """Score (name, prediction, ground truth or None) items; unreadable files and size mismatches become problems
    (one line naming the files) and the item is skipped, the others are still scored."""
    images, problems = [], []
    bar = _progress(len(items), "scoring", progress)
    for name, pred_path, gt_path in items:
        if bar is not None:
            bar.update(1)
        try:
            pred = load_rgb(pred_path)
            gt = load_rgb(gt_path) if gt_path is not None else None
        except ImageError as e:
            problems.append(f"unreadable: {e}")
            continue
        if gt is not None and pred.shape != gt.shape:
            problems.append(f"size mismatch: {pred_path} is {_size(pred)} but {gt_path} is {_size(gt)}")
            continue
        scores, errors = score_images(pred, gt, metrics, str(pred_path))
        problems += errors
        images.append(ImageScore(name, str(pred_path), None if gt_path is None else str(gt_path), scores))
    if bar is not None:
        bar.close()
    return images, problems


def _progress(total: int, desc: str, enabled: bool):
    """A tqdm bar on stderr, or None."""
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="img", file=sys.stderr, disable=not sys.stderr.isatty())


def check_report_files(pred_dir: Path, gt_dir: Path | None, files: dict[str, Path | None]) -> None:
    """Refuse (ValueError) a report file (``{"--json": path, ...}``) that is one of the images to be scored; only an
    existing file can be one, so the folders are walked only when a report file exists already."""
    existing = [
        (path, f"{flag} would replace") for flag, path in files.items() if path is not None and path.exists()
    ]
    if not existing:
        return
    images = [p for d in (pred_dir, gt_dir) if d is not None for p in scan_images(Path(d)).images]
    check_inputs_apart([("image", p) for p in images], existing, "give the report a new file name")


def evaluate_dirs(  # noqa: PLR0913 (public Python API, docs/architecture.md)
    pred_dir: Path,
    gt_dir: Path | None,
    metric_names: str | Sequence[str] | None = None,
    protocol: str = "fluxsr",
    *,
    scale: int = 4,
    crop_border: int | None = None,
    device: str = "cpu",
    progress: bool = False,
    period: int | None = None,
) -> EvalReport:
    """Pair the images under ``pred_dir`` with those under ``gt_dir`` (see :func:`fluxsr.data.datasets.match_files`)
    and score them. Without ``gt_dir`` only no-reference metrics are allowed (ValueError otherwise); the default
    metrics are :data:`DEFAULT_METRICS` (their no-reference part without ``gt_dir``)."""
    names = parse_metric_names(metric_names) if metric_names else default_metric_names(gt_dir is not None)
    if gt_dir is None and (fr := [n for n in names if needs_reference(n)]):
        raise ValueError(
            f"{', '.join(fr)} need ground truth (--gt); without it use no-reference metrics (niqe, ...)"
        )
    pred_dir = Path(pred_dir)
    preds = find_images(pred_dir)
    problems: list[str] = [] if preds else [f"no images found under {pred_dir}"]
    if gt_dir is None:
        items = [(relative_name(p, pred_dir), p, None) for p in preds]
    else:
        gt_dir = Path(gt_dir)
        m = match_files(preds, find_images(gt_dir), pred_dir, gt_dir)
        items = [(relative_name(a, pred_dir), a, b) for a, b in m.pairs]
        problems += m.problems("prediction", "ground truth")
    metrics, notes = build_metrics(
        names, protocol, scale=scale, crop_border=crop_border, device=device, period=period
    )
    images, errors = evaluate_items(items, metrics, progress)
    proto = effective_protocol(protocol, crop_border)
    return EvalReport(metrics, images, problems + errors, notes, proto.name, proto.border(scale), scale)
