"""Score SR results against ground truth and/or their LR inputs (``fluxsr eval``): pair the folders, score each
image with a metric set (:mod:`fluxsr.evaluation.metric_set`), collect the per-image scores in an
:class:`EvalReport`.

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
    needs_lr,
    needs_reference,
    parse_metric_names,
)


@dataclass
class ImageScore:
    """Scores of one prediction (``gt`` None for no-reference only; ``lr`` the LR input when given)."""

    name: str
    pred: str
    gt: str | None
    scores: dict[str, float] = field(default_factory=dict)
    lr: str | None = None


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
    pred: Tensor, gt: Tensor | None, metrics: Sequence[Metric], name: str, lr: Tensor | None = None
) -> tuple[dict, list[str]]:
    """{metric: value} for one image (full-reference metrics only when ``gt`` is given, LR metrics only when ``lr``
    is) and per-metric errors."""
    scores, problems = {}, []
    for m in metrics:
        if (m.reference and gt is None) or (m.against_lr and lr is None):
            continue
        try:
            scores[m.name] = m.score(pred, lr if m.against_lr else gt)
        except (ValueError, RuntimeError) as e:
            problems.append(f"{name}: {m.name} failed: {e}")
    return scores, problems


def evaluate_items(
    items: Sequence[tuple[str, Path, Path | None, Path | None]],
    metrics: Sequence[Metric],
    progress: bool = False,
) -> tuple[list[ImageScore], list[str]]:
    """Score (name, prediction, ground truth or None, LR input or None) items; unreadable files and size mismatches
    with the ground truth become problems (one line naming the files) and the item is skipped, the others are still
    scored; a prediction that is not ``scale`` times its LR input is one problem line of its LR metrics."""
    images, problems = [], []
    wants_lr = any(
        m.against_lr for m in metrics
    )  # the LR inputs are decoded only for a metric that reads them
    bar = _progress(len(items), "scoring", progress)
    for name, pred_path, gt_path, lr_path in items:
        if bar is not None:
            bar.update(1)
        try:
            pred = load_rgb(pred_path)
            gt = load_rgb(gt_path) if gt_path is not None else None
            lr = load_rgb(lr_path) if lr_path is not None and wants_lr else None
        except ImageError as e:
            problems.append(f"unreadable: {e}")
            continue
        if gt is not None and pred.shape != gt.shape:
            problems.append(f"size mismatch: {pred_path} is {_size(pred)} but {gt_path} is {_size(gt)}")
            continue
        scores, errors = score_images(pred, gt, metrics, str(pred_path), lr)
        problems += errors
        images.append(ImageScore(name, str(pred_path), _text(gt_path), scores, _text(lr_path)))
    if bar is not None:
        bar.close()
    return images, problems


def _text(path: Path | None) -> str | None:
    return None if path is None else str(path)


def _progress(total: int, desc: str, enabled: bool):
    """A tqdm bar on stderr, or None."""
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="img", file=sys.stderr, disable=not sys.stderr.isatty())


def check_report_files(
    pred_dir: Path, gt_dir: Path | None, files: dict[str, Path | None], lr_dir: Path | None = None
) -> None:
    """Refuse (ValueError) a report file (``{"--json": path, ...}``) that is one of the images to be scored; only an
    existing file can be one, so the folders are walked only when a report file exists already."""
    existing = [
        (path, f"{flag} would replace") for flag, path in files.items() if path is not None and path.exists()
    ]
    if not existing:
        return
    images = [p for d in (pred_dir, gt_dir, lr_dir) if d is not None for p in scan_images(Path(d)).images]
    check_inputs_apart([("image", p) for p in images], existing, "give the report a new file name")


def partners(preds: list[Path], pred_dir: Path, other_dir: Path | None, role: str) -> tuple[dict, list[str]]:
    """{prediction: its partner under ``other_dir``} paired by name (:func:`fluxsr.data.datasets.match_files`) and
    one problem line per file left over; ({}, []) without ``other_dir``."""
    if other_dir is None:
        return {}, []
    m = match_files(preds, find_images(Path(other_dir)), pred_dir, Path(other_dir))
    return dict(m.pairs), m.problems("prediction", role)


def eval_items(
    pred_dir: Path, gt_dir: Path | None, lr_dir: Path | None
) -> tuple[list[tuple[str, Path, Path | None, Path | None]], list[str]]:
    """(name, prediction, ground truth, LR input) for each prediction that has every partner asked for, and one
    problem line per file without one."""
    preds = find_images(pred_dir)
    problems: list[str] = [] if preds else [f"no images found under {pred_dir}"]
    gts, gt_problems = partners(preds, pred_dir, gt_dir, "ground truth")
    lrs, lr_problems = partners(preds, pred_dir, lr_dir, "LR input")
    items = [
        (relative_name(p, pred_dir), p, gts.get(p), lrs.get(p))
        for p in preds
        if (gt_dir is None or p in gts) and (lr_dir is None or p in lrs)
    ]
    return items, problems + gt_problems + lr_problems


def check_metric_inputs(names: Sequence[str], has_gt: bool, has_lr: bool) -> None:
    """ValueError (one line) for full-reference metrics without ground truth or LR metrics without LR inputs."""
    if not has_gt and (fr := [n for n in names if needs_reference(n)]):
        raise ValueError(
            f"{', '.join(fr)} need ground truth (--gt); without it use no-reference metrics (niqe, ...)"
        )
    if not has_lr and (lr := [n for n in names if needs_lr(n)]):
        raise ValueError(f"{', '.join(lr)} need the LR inputs (--lr)")


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
    lr_dir: Path | None = None,
) -> EvalReport:
    """Pair the images under ``pred_dir`` with those under ``gt_dir`` and/or ``lr_dir`` (see
    :func:`fluxsr.data.datasets.match_files`) and score them. Without ``gt_dir`` only no-reference and LR metrics are
    allowed, without ``lr_dir`` no LR metric (ValueError otherwise); the default metrics are :data:`DEFAULT_METRICS`
    (their no-reference part without ``gt_dir``), plus ``lr_psnr`` with ``lr_dir``."""
    has_gt, has_lr = gt_dir is not None, lr_dir is not None
    names = parse_metric_names(metric_names) if metric_names else default_metric_names(has_gt, has_lr)
    check_metric_inputs(names, has_gt, has_lr)
    items, problems = eval_items(Path(pred_dir), gt_dir, lr_dir)
    metrics, notes = build_metrics(
        names, protocol, scale=scale, crop_border=crop_border, device=device, period=period
    )
    images, errors = evaluate_items(items, metrics, progress)
    proto = effective_protocol(protocol, crop_border)
    return EvalReport(metrics, images, problems + errors, notes, proto.name, proto.border(scale), scale)
