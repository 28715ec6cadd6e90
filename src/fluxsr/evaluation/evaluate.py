"""Score SR results (``fluxsr eval``) and compare upscalers on a data set (``fluxsr benchmark``).

Metrics (names as on the command line; arrows say which way is better):

- full reference: ``psnr`` up, ``ssim`` up (computed by :mod:`fluxsr.evaluation.metrics` under a protocol, with its crop border
  and Y channel), ``lpips`` down (AlexNet, pyiqa's default), ``lpips-vgg`` down, ``dists`` down, all with the real
  weights from ``fluxsr weights fetch``; ``periodic`` down (:func:`fluxsr.evaluation.metrics.periodic_score`: a token grid's
  spectral peaks relative to the reference's, ~1 when none; ``period`` px, default the bundled model's 8);
- no reference: ``niqe`` down (pyiqa's algorithm, built in); ``musiq``, ``maniqa-koniq``, ``maniqa-pipal``,
  ``topiq-nr``, ``clipiqa``, ``qalign`` (all up) through pyiqa when it is importable -- an optional extra; without it
  they are skipped with one note.

Images are read with :func:`fluxsr.io.images.read_image` (EXIF orientation applied, grey as RGB, alpha dropped, 16-bit
kept). The crop border applies to PSNR/SSIM only; LPIPS, DISTS and no-reference metrics see the whole image.
Problems (missing partners, size mismatches, unreadable files, a metric failing on one image) are collected by
name, never dropped silently; the rest is still scored.
"""

from __future__ import annotations

import csv
import functools
import io
import json
import math
import re
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ..data.datasets import Dataset, ImagePair, match_files, relative_name
from ..io.cache import MissingWeightsError
from ..io.guards import check_inputs_apart
from ..io.images import ImageError, find_images, quantize, read_image, resize, scan_images, target_size

FULL_REFERENCE = ("psnr", "ssim", "lpips", "lpips-vgg", "dists", "periodic")
BUILTIN_NO_REFERENCE = ("niqe",)
PYIQA_NAMES = {
    "musiq": "musiq",
    "maniqa-koniq": "maniqa",
    "maniqa-pipal": "maniqa-pipal",
    "topiq-nr": "topiq_nr",
    "clipiqa": "clipiqa",
    "qalign": "qalign",
}
"""Our metric name -> pyiqa's ``create_metric`` name (pyiqa's ``maniqa`` is the KonIQ-trained model)."""
BACKENDS = ("bicubic", "realesrgan", "fluxsr")
ALL_METRICS = FULL_REFERENCE + BUILTIN_NO_REFERENCE + tuple(PYIQA_NAMES)
LOWER_IS_BETTER = frozenset({"lpips", "lpips-vgg", "dists", "niqe", "periodic"})
DEFAULT_METRICS = ("psnr", "ssim", "lpips", "dists", "niqe")
CAPTION_FIRST = ("psnr", "lpips", "dists", "niqe")
"""Scores preferred under the comparison sheet's crops (two are shown)."""
DIGITS = {"psnr": 2, "niqe": 3, "musiq": 2, "qalign": 3, "periodic": 3}
"""Decimals shown in Markdown tables (4 for anything else); CSV and JSON keep full precision."""


# ---------------------------------------------------------------------------------------------------- metrics


@dataclass(frozen=True)
class Metric:
    """A named score ``score(pred, gt)`` of (3, H, W) float images in [0, 1]; ``gt`` is None for no-reference."""

    name: str
    reference: bool
    lower_better: bool
    score: Callable[[Tensor, Tensor | None], float]

    @property
    def arrow(self) -> str:
        """``↓`` when lower is better, else ``↑``."""
        return "↓" if self.lower_better else "↑"


def parse_metric_names(text: str | Sequence[str]) -> list[str]:
    """``"psnr, SSIM,lpips"`` -> ``["psnr", "ssim", "lpips"]`` (order kept, duplicates dropped); ValueError for
    unknown names."""
    items = text.split(",") if isinstance(text, str) else list(text)
    names = list(dict.fromkeys(n.strip().lower() for n in items if n.strip()))
    unknown = [n for n in names if n not in ALL_METRICS]
    if unknown:
        raise ValueError(f"unknown metric(s) {', '.join(unknown)}; known: {', '.join(ALL_METRICS)}")
    if not names:
        raise ValueError("no metrics given")
    return names


def needs_reference(name: str) -> bool:
    """True for full-reference metrics (they need ground truth)."""
    return name in FULL_REFERENCE


def effective_protocol(protocol: str, crop_border: int | None):
    """The :class:`fluxsr.evaluation.metrics.Protocol` named ``protocol``, with ``crop_border`` overriding its own if given."""
    from .metrics import get_protocol

    p = get_protocol(protocol)
    if crop_border is not None:
        if crop_border < 0:
            raise ValueError("crop border must be >= 0")
        p = replace(p, crop_border=crop_border)
    return p


def _network_metric(name: str, net: torch.nn.Module, device: str) -> Metric:
    """Wrap a frozen distance network ``net(a, b) -> (B,)`` (LPIPS, DISTS) as a full-reference metric."""

    def score(pred: Tensor, gt: Tensor | None) -> float:
        with torch.inference_mode():
            return float(net(pred[None].float().to(device), gt[None].float().to(device))[0])

    return Metric(name, True, True, score)


@functools.lru_cache(maxsize=6)
def load_network(name: str, device: str) -> torch.nn.Module:
    """The frozen LPIPS-alex (``lpips``), LPIPS-vgg or DISTS network with real weights, loaded once per device."""
    if name == "dists":
        from ..losses.dists import load_dists

        return load_dists(device)
    from ..losses.lpips import load_lpips

    return load_lpips("alex" if name == "lpips" else "vgg", device)


def _builtin_metric(name: str, protocol, scale: int, device: str, period: int) -> Metric:
    """One of psnr, ssim, lpips, lpips-vgg, dists, periodic, niqe (network weights from the cache)."""
    from . import metrics as M

    if name == "psnr":
        return Metric(name, True, False, lambda p, g: float(M.protocol_psnr(p, g, protocol, scale=scale)))
    if name == "ssim":
        return Metric(name, True, False, lambda p, g: float(M.protocol_ssim(p, g, protocol, scale=scale)))
    if name in ("lpips", "lpips-vgg", "dists"):
        return _network_metric(name, load_network(name, device), device)
    if name == "periodic":
        return Metric(name, True, True, lambda p, g: float(M.periodic_score(p, g, period, scale=scale)))
    if name == "niqe":
        params = M.load_niqe_params()
        return Metric(name, False, True, lambda p, _g: float(M.protocol_niqe(p, protocol, params=params)))
    raise ValueError(f"{name} is not a built-in metric")


def _pyiqa_metrics(names: list[str], device: str) -> tuple[list[Metric], list[str]]:
    """Learned no-reference metrics through pyiqa, or ([], one note) when pyiqa cannot be imported."""
    if not names:
        return [], []
    try:
        import pyiqa
    except Exception as e:  # ImportError, or a broken torchvision underneath
        return [], [
            f"pyiqa is not importable ({type(e).__name__}: {e}): skipped {', '.join(names)} "
            "(optional extra: pip install 'fluxsr[iqa]', needs torchvision)"
        ]
    out = []
    for name in names:
        net = pyiqa.create_metric(PYIQA_NAMES[name], device=torch.device(device), as_loss=False)

        def score(pred: Tensor, _gt: Tensor | None, net=net) -> float:
            with torch.inference_mode():
                return float(torch.as_tensor(net(pred[None].float().to(device))).mean())

        out.append(Metric(name, False, bool(getattr(net, "lower_better", False)), score))
    return out, []


def build_metrics(
    names: Sequence[str],
    protocol: str = "fluxsr",
    *,
    scale: int = 4,
    crop_border: int | None = None,
    device: str = "cpu",
    period: int | None = None,
) -> tuple[list[Metric], list[str]]:
    """Ready-to-call metrics for ``names`` (order kept) and notes about skipped ones; ``period``: the grid of the
    ``periodic`` score in pixels (default :data:`fluxsr.evaluation.metrics.DEFAULT_PERIOD`).

    Raises :class:`fluxsr.io.cache.MissingWeightsError` when LPIPS/DISTS/NIQE parameters are not fetched yet, and
    ValueError for a scale that is not an integer >= 1.
    """
    if not (math.isfinite(scale) and scale >= 1 and scale == round(scale)):
        raise ValueError(f"scale must be an integer >= 1, got {scale!r}")
    proto = effective_protocol(protocol, crop_border)
    names = parse_metric_names(names)
    from .metrics import DEFAULT_PERIOD

    period = DEFAULT_PERIOD if period is None else period
    if period < 2:
        raise ValueError(f"period must be >= 2 pixels, got {period}")
    built = {n: _builtin_metric(n, proto, scale, device, period) for n in names if n not in PYIQA_NAMES}
    learned, notes = _pyiqa_metrics([n for n in names if n in PYIQA_NAMES], device)
    built.update({m.name: m for m in learned})
    return [built[n] for n in names if n in built], notes


# ---------------------------------------------------------------------------------------------------- scoring


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


def evaluate_dirs(
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


# ---------------------------------------------------------------------------------------------------- formatting


def format_value(name: str, value: float | None) -> str:
    """A score for a Markdown table: fixed decimals (:data:`DIGITS`), ``inf``, or ``–`` when missing."""
    if value is None:
        return "–"
    if not math.isfinite(value):
        return str(value)
    return f"{value:.{DIGITS.get(name, 4)}f}"


def json_number(value: float | None) -> float | str | None:
    """JSON-safe number: non-finite values become the strings ``"inf"``, ``"-inf"``, ``"nan"``."""
    if value is None or math.isfinite(value):
        return value
    return str(value)


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]], numeric_from: int = 1) -> str:
    """A GitHub Markdown table; columns from ``numeric_from`` on are right-aligned."""
    align = ["---" if i < numeric_from else "---:" for i in range(len(header))]
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(align) + " |"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def mean_cell(name: str, value: float | None, count: int, n: int, bold: bool = True) -> str:
    """A (bold) mean for a Markdown table, followed by ``(n=count)`` when fewer than ``n`` images have the metric."""
    cell = f"**{format_value(name, value)}**" if bold else format_value(name, value)
    return cell if count == n else f"{cell} (n={count})"


def report_markdown(report: EvalReport) -> str:
    """Per-image scores and a bold mean row, one column per metric (with its arrow). The mean row's ``n`` counts
    the images with at least one score; a metric that failed on some of them shows its own count."""
    names = report.metric_names
    header = ["image"] + [f"{m.name} {m.arrow}" for m in report.metrics]
    rows = [[s.name] + [format_value(n, s.scores.get(n)) for n in names] for s in report.images]
    mean, counts, n = report.mean(), report.counts(), report.n_scored
    rows.append([f"**mean** (n={n})"] + [mean_cell(m, mean.get(m), counts[m], n) for m in names])
    return markdown_table(header, rows)


def metric_info(metrics: Sequence[Metric]) -> list[dict]:
    """[{name, lower_better, reference}] for JSON files."""
    return [{"name": m.name, "lower_better": m.lower_better, "reference": m.reference} for m in metrics]


def report_json(report: EvalReport) -> dict:
    """The JSON document of ``fluxsr eval --json``: settings, per-image scores, ``mean`` keyed by metric, problems.
    ``count`` is the number of images with at least one score, ``counts`` the number per metric."""
    return {
        "protocol": report.protocol,
        "crop_border": report.crop_border,
        "scale": report.scale,
        "metrics": metric_info(report.metrics),
        "count": report.n_scored,
        "counts": report.counts(),
        "images": [
            {
                "name": s.name,
                "pred": s.pred,
                "gt": s.gt,
                "scores": {k: json_number(v) for k, v in s.scores.items()},
            }
            for s in report.images
        ],
        "mean": {k: json_number(v) for k, v in report.mean().items()},
        "problems": report.problems,
        "notes": report.notes,
    }


def report_csv(report: EvalReport) -> str:
    """CSV text: ``image,pred,gt,<metrics...>`` per image, then a row whose image is ``mean`` and one whose image
    is ``count`` (images averaged per metric)."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    names = report.metric_names
    w.writerow(["image", "pred", "gt", *names])
    for s in report.images:
        w.writerow([s.name, s.pred, s.gt or "", *(_csv_value(s.scores.get(n)) for n in names)])
    mean = report.mean()
    w.writerow(["mean", "", "", *(_csv_value(mean.get(n)) for n in names)])
    counts = report.counts()
    w.writerow(["count", "", "", *(counts[n] for n in names)])
    return buf.getvalue()


def _csv_value(value: float | None) -> str:
    return "" if value is None else repr(float(value))


def write_text(path: Path, text: str) -> Path:
    """Write ``text`` to ``path`` (parents created)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def write_json(path: Path, obj: dict) -> Path:
    """Write ``obj`` as indented JSON (strict: no NaN/Infinity literals)."""
    return write_text(path, json.dumps(obj, indent=2, allow_nan=False, default=str) + "\n")


# ---------------------------------------------------------------------------------------------------- benchmark


@dataclass
class MethodRun:
    """One backend's run: outputs, timings (load, upscaling wall time) and its scores."""

    key: str
    name: str
    note: str = ""
    out_dir: Path | None = None
    outputs: dict[str, Path] = field(default_factory=dict)
    load_s: float = 0.0
    wall_s: float = 0.0
    failures: list[str] = field(default_factory=list)
    report: EvalReport | None = None
    skipped: str | None = None

    @property
    def n_images(self) -> int:
        """Images upscaled."""
        return len(self.outputs)

    @property
    def s_per_image(self) -> float | None:
        """Upscaling wall time (read, upscale, write) per image, or None when nothing ran."""
        return self.wall_s / self.n_images if self.n_images else None

    @property
    def label(self) -> str:
        """Name plus the model note's first clause, e.g. ``fluxsr:tiny (tiny test model, random or briefly trained weights)``."""
        return f"{self.name} ({self.note.split(':')[0]})" if self.note else self.name


@dataclass
class BenchmarkResult:
    """Everything ``fluxsr benchmark`` measured, and the files it wrote."""

    dataset: Dataset
    metrics: list[Metric]
    runs: list[MethodRun]
    protocol: str
    crop_border: int
    scale: float
    device: str
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    files: dict[str, Path] = field(default_factory=dict)


def slug(name: str) -> str:
    """A folder name for a method: ``fluxsr:tiny`` -> ``fluxsr-tiny``."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-") or "method"


def backend_note(backend) -> str:
    """The model's note (e.g. that ``tiny`` has random weights), or ''."""
    spec = getattr(getattr(backend, "model", None), "spec", None)
    return str(getattr(spec, "note", "") or "")


def default_metric_names(has_hr: bool) -> list[str]:
    """:data:`DEFAULT_METRICS` with ground truth, else the no-reference ones among them."""
    return [n for n in DEFAULT_METRICS if has_hr or not needs_reference(n)]


def backend_factories(
    names: str | Sequence[str], fluxsr: Callable[[], object], device: str | None = None
) -> dict[str, Callable[[], object]]:
    """Constructors for ``bicubic``, ``realesrgan`` (:func:`fluxsr.inference.upscale.make_backend`) and ``fluxsr`` (the given
    ``fluxsr`` callable, so the CLI loads the model exactly as ``fluxsr upscale`` does); ValueError for others."""
    from ..inference.upscale import make_backend

    items = names.split(",") if isinstance(names, str) else list(names)
    keys = list(dict.fromkeys(n.strip().lower() for n in items if n.strip()))
    unknown = [k for k in keys if k not in BACKENDS]
    if unknown or not keys:
        raise ValueError(
            f"unknown backend(s) {', '.join(unknown) or '(none given)'}; choose from {', '.join(BACKENDS)}"
        )
    return {k: fluxsr if k == "fluxsr" else (lambda k=k: make_backend(k, device=device)) for k in keys}


def warm_up(backend, pairs: Sequence[ImagePair], opts) -> None:
    """Upscale the first LR once, untimed (lazy imports, allocator and kernel caches); errors are left to the run."""
    if not pairs or pairs[0].lr is None:
        return
    try:
        backend.upscale_tensor(load_rgb(pairs[0].lr), opts)
    except (ImageError, ValueError, RuntimeError):
        pass


def run_method(
    key: str,
    factory: Callable[[], object],
    pairs: Sequence[ImagePair],
    out_dir: Path,
    opts,
    progress: bool = False,
    warmup: bool = True,
) -> MethodRun:
    """Build a backend and upscale every pair's LR into ``out_dir/<pair name>.png`` (so sub-folders of the data set
    are mirrored and equal stems in different folders stay apart; names must be unique) with
    :func:`fluxsr.inference.upscale.run_jobs`, the code behind ``fluxsr upscale``. ``load_s`` covers building it and
    (``warmup``) one untimed warm-up image; ``wall_s`` the batch (read, upscale, write). A backend that cannot be
    built (missing weights, ...) gives a skipped run."""
    from ..inference.upscale import BatchOptions, run_jobs

    start = time.perf_counter()
    try:
        backend = factory()
    except (MissingWeightsError, FileNotFoundError, ValueError, ImportError, RuntimeError) as e:
        return MethodRun(key, key, skipped=f"{key}: skipped, cannot load it ({e})")
    if warmup:
        warm_up(backend, pairs, opts)
    load_s = time.perf_counter() - start
    name = str(getattr(backend, "name", key))
    todo = [p for p in pairs if p.lr is not None]
    start = time.perf_counter()
    results = run_jobs(
        backend,
        [(Path(p.lr), Path(out_dir) / f"{p.name}.png") for p in todo],
        opts,
        BatchOptions(ext="png", overwrite=True),
        progress=progress,
    )
    wall_s = time.perf_counter() - start
    outputs = {p.name: Path(r.output) for p, r in zip(todo, results, strict=True) if r.status == "ok"}
    failures = [f"{name}: {r.error}" for r in results if r.status == "failed"]
    return MethodRun(key, name, backend_note(backend), out_dir, outputs, load_s, wall_s, failures)


def unique_pairs(pairs: Sequence[ImagePair]) -> tuple[list[ImagePair], list[str]]:
    """``pairs`` without those whose name (compared case-insensitively, as file systems may) was already taken,
    and one problem line per dropped pair: their outputs would overwrite each other."""
    seen: dict[str, ImagePair] = {}
    kept, problems = [], []
    for p in pairs:
        first = seen.setdefault(p.name.lower(), p)
        if first is p:
            kept.append(p)
        else:
            problems.append(f"duplicate name {p.name!r}: {p.lr} skipped, {first.lr} has the same output name")
    return kept, problems


def check_outputs_apart(pairs: Sequence[ImagePair], out: Path, keys: Iterable[str]) -> None:
    """Refuse (ValueError) a run whose outputs would replace one of the data set's images: an image inside a
    method's output folder ``out/<method>`` (written with overwrite) or one of the report's images in ``out``."""
    check_inputs_apart(
        [("input", Path(f)) for p in pairs for f in (p.lr, p.hr) if f is not None],
        [(out / slug(key), "this run writes its outputs into (replacing what is there)") for key in keys]
        + [(out / name, "this run replaces") for name in ("comparison.png", "benchmark_chart.png")],
        "choose an --out that holds none of the images",
    )


def run_benchmark(
    dataset: Dataset,
    factories: dict[str, Callable[[], object]],
    out: Path,
    metric_names: Sequence[str] | None = None,
    protocol: str = "fluxsr",
    *,
    opts=None,
    crop_border: int | None = None,
    device: str = "cpu",
    sheet_images: int = 4,
    sheet_crop: int | None = None,
    progress: bool = False,
    period: int | None = None,
) -> BenchmarkResult:
    """Run each backend on the data set's LR images, score the outputs and write the report files.

    ``factories`` maps a backend key to a zero-argument constructor (timed as ``load_s``). Metrics are built
    first, so missing metric weights fail before anything is upscaled. Without ground truth, full-reference
    metrics named in ``metric_names`` are a ValueError (nothing is run); the default metrics drop them with a
    note. Pairs whose names clash are skipped with a problem; an image that an output would replace is a
    ValueError before anything runs (:func:`check_outputs_apart`). Writes under ``out``: ``<method>/`` outputs
    (mirroring the data set's sub-folders), ``benchmark.md``, ``benchmark.csv``, ``benchmark.json``,
    ``benchmark_chart.png`` and ``comparison.png``.
    """
    from ..inference.pipeline import UpscaleOptions

    opts = opts or UpscaleOptions()
    out = Path(out)
    if metric_names is None:
        names = default_metric_names(dataset.has_hr)
    else:  # an empty list: upscale and compare only (fluxsr demo)
        names = parse_metric_names(metric_names) if metric_names else []
    notes: list[str] = []
    if dataset.pairs and not dataset.has_hr and (fr := [n for n in names if needs_reference(n)]):
        raise ValueError(
            f"{', '.join(fr)} need ground truth, but {dataset.name} ({dataset.layout} layout, "
            f"{dataset.root}) has none; use no-reference metrics (niqe, ...) or a data set with HR"
        )
    if not dataset.has_hr and metric_names is None:
        fr = [n for n in DEFAULT_METRICS if needs_reference(n)]
        notes.append(f"{dataset.name} has no ground truth: skipped {', '.join(fr)}")
    int_scale = max(1, round(opts.scale))
    metrics, metric_notes = (
        build_metrics(names, protocol, scale=int_scale, crop_border=crop_border, device=device, period=period)
        if names
        else ([], [])
    )
    notes += metric_notes
    proto = effective_protocol(protocol, crop_border)
    pairs, duplicates = unique_pairs(dataset.pairs)
    check_outputs_apart(pairs, out, factories)
    dataset = replace(dataset, pairs=pairs)
    problems = list(dataset.problems) + duplicates
    if not pairs:
        problems.append(f"no images found under {dataset.root}")
    runs = []
    for key, factory in factories.items():
        run = run_method(key, factory, dataset.pairs, out / slug(key), opts, progress)
        if run.skipped:
            problems.append(run.skipped)
        else:
            items = [(p.name, run.outputs[p.name], p.hr) for p in dataset.pairs if p.name in run.outputs]
            images, errors = evaluate_items(items, metrics, progress)
            run.report = EvalReport(
                metrics, images, errors, [], proto.name, proto.border(int_scale), int_scale
            )
            problems += run.failures + errors
        runs.append(run)
    result = BenchmarkResult(
        dataset, metrics, runs, proto.name, proto.border(int_scale), opts.scale, device, problems, notes
    )
    write_benchmark(result, out, sheet_images, sheet_crop)
    return result


def benchmark_rows(result: BenchmarkResult) -> list[dict]:
    """One dict per method: key, name, note, mean scores, images scored per metric (``counts``), images,
    load/wall seconds, seconds per image."""
    rows = []
    for r in result.runs:
        rows.append(
            {
                "key": r.key,
                "name": r.name,
                "label": r.label,
                "note": r.note,
                "skipped": r.skipped,
                "mean": r.report.mean() if r.report else {},
                "counts": r.report.counts() if r.report else {},
                "images": r.n_images,
                "load_s": r.load_s,
                "wall_s": r.wall_s,
                "s_per_image": r.s_per_image,
            }
        )
    return rows


def benchmark_markdown(result: BenchmarkResult) -> str:
    """The method table (mean scores, images, load s, wall s, s/image) with a header line and notes."""
    ds = result.dataset
    header = (
        ["method"]
        + [f"{m.name} {m.arrow}" for m in result.metrics]
        + ["images", "load s", "wall s", "s/image"]
    )
    rows = []
    for row in benchmark_rows(result):
        if row["skipped"]:
            rows.append([row["key"]] + ["–"] * (len(header) - 1))
            continue
        spi = row["s_per_image"]
        counts = row["counts"]
        rows.append(
            [row["label"]]
            + [
                mean_cell(m.name, row["mean"].get(m.name), counts.get(m.name), row["images"], bold=False)
                for m in result.metrics
            ]
            + [
                str(row["images"]),
                f"{row['load_s']:.2f}",
                f"{row['wall_s']:.2f}",
                "–" if spi is None else f"{spi:.3f}",
            ]
        )
    lines = [
        f"Data set: {ds.name} ({ds.layout}, {len(ds.pairs)} images, "
        f"{'with' if ds.has_hr else 'without'} ground truth); x{result.scale:g}; protocol {result.protocol} "
        f"(PSNR/SSIM crop border {result.crop_border}); device {result.device}; torch {torch.__version__}.",
        "",
        markdown_table(header, rows),
    ]
    extra = [f"- {r.label}: {r.note}" for r in result.runs if r.note] + [f"- {n}" for n in result.notes]
    extra += [f"- problem: {p}" for p in result.problems]
    if extra:
        lines += ["", *extra]
    return "\n".join(lines) + "\n"


def benchmark_csv(result: BenchmarkResult) -> str:
    """CSV: ``method,label,<metrics...>,images,load_s,wall_s,s_per_image`` one row per method."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    names = [m.name for m in result.metrics]
    w.writerow(["method", "label", *names, "images", "load_s", "wall_s", "s_per_image"])
    for row in benchmark_rows(result):
        spi = row["s_per_image"]
        w.writerow(
            [
                row["name"],
                row["label"],
                *(_csv_value(row["mean"].get(n)) for n in names),
                row["images"],
                f"{row['load_s']:.4f}",
                f"{row['wall_s']:.4f}",
                "" if spi is None else f"{spi:.4f}",
            ]
        )
    return buf.getvalue()


def benchmark_json(result: BenchmarkResult) -> dict:
    """Settings, data set, and per method: mean scores, per-image scores, timings, failures."""
    ds = result.dataset
    methods = []
    for r, row in zip(result.runs, benchmark_rows(result), strict=True):
        row["mean"] = {k: json_number(v) for k, v in row["mean"].items()}
        row["output_dir"] = str(r.out_dir) if r.out_dir else None
        row["per_image"] = report_json(r.report)["images"] if r.report else []
        row["failures"] = r.failures
        methods.append(row)
    return {
        "dataset": {
            "name": ds.name,
            "layout": ds.layout,
            "root": str(ds.root),
            "images": len(ds.pairs),
            "has_hr": ds.has_hr,
        },
        "protocol": result.protocol,
        "crop_border": result.crop_border,
        "scale": result.scale,
        "device": result.device,
        "torch": torch.__version__,
        "metrics": metric_info(result.metrics),
        "methods": methods,
        "problems": result.problems,
        "notes": result.notes,
    }


def write_benchmark(
    result: BenchmarkResult, out: Path, sheet_images: int = 4, sheet_crop: int | None = None
) -> dict[str, Path]:
    """Write benchmark.md/.csv/.json, the bar chart and the comparison sheet under ``out``."""
    out = Path(out)
    files = {
        "markdown": write_text(out / "benchmark.md", benchmark_markdown(result)),
        "csv": write_text(out / "benchmark.csv", benchmark_csv(result)),
        "json": write_json(out / "benchmark.json", benchmark_json(result)),
        "chart": bar_chart(result, out / "benchmark_chart.png"),
    }
    if sheet_images > 0 and any(r.outputs for r in result.runs):
        files["sheet"] = comparison_sheet(result, out / "comparison.png", sheet_images, sheet_crop)
    result.files = files
    return files


# ---------------------------------------------------------------------------------------------------- figures


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
        lr, hr = _try_load(pair.lr), _try_load(pair.hr)
        # nearest-neighbour to the output's size (at an integer scale: each LR pixel repeated s x s times)
        lr_up = (
            None
            if lr is None
            else resize(lr, target_size(*lr.shape[-2:], result.scale), mode="nearest-exact")
        )
        ref = hr if hr is not None else lr_up
        if ref is None:
            for ax in row:
                ax.set_axis_off()
            row[0].set_title(f"{pair.name}: unreadable", fontsize=8)
            continue
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
        for i, (ax, (img, caption)) in enumerate(zip(row, panels, strict=True)):
            ax.set_xticks([])
            ax.set_yticks([])
            if img is None:
                ax.text(0.5, 0.5, "missing", ha="center", va="center", transform=ax.transAxes)
            else:
                ax.imshow(img, interpolation="nearest")
            if i == 0:
                from matplotlib.patches import Rectangle

                ax.add_patch(
                    Rectangle((left - 0.5, top - 0.5), size, size, fill=False, edgecolor="red", lw=1.5)
                )
                ax.set_ylabel(pair.name, fontsize=9)
            ax.set_xlabel(caption, fontsize=7)
    for ax, title in zip(axes[0], columns, strict=True):
        ax.set_title(title, fontsize=9)
    fig.suptitle(
        f"{result.dataset.name}: {crop}px crops of the x{result.scale:g} results "
        f"(red box in the first column)",
        fontsize=10,
    )
    return _save_figure(fig, path)
