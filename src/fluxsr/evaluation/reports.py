"""Tables and files of the quality scores: ``fluxsr eval``'s report (Markdown, JSON, CSV) and ``fluxsr benchmark``'s
method table (benchmark.md / .csv / .json). Markdown rounds (:data:`DIGITS`); CSV and JSON keep full precision."""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Sequence
from pathlib import Path

import torch

from .benchmark_result import BenchmarkResult
from .metric_set import Metric
from .scoring import EvalReport

DIGITS = {"psnr": 2, "niqe": 3, "musiq": 2, "qalign": 3, "periodic": 3}
"""Decimals shown in Markdown tables (4 for anything else); CSV and JSON keep full precision."""


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
                "lr": s.lr,
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
