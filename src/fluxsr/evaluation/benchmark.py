"""Quality benchmark (``fluxsr benchmark``): run upscalers on a data set's LR images, score their outputs
(:mod:`fluxsr.evaluation.scoring`) and write the tables and figures. Not to be confused with the speed bench
(``fluxsr bench``, the ``speed_*`` modules), which times the stages of one-step FluxSR and its baselines."""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace
from pathlib import Path

from ..data.datasets import Dataset, ImagePair
from ..inference.pipeline import UpscaleOptions
from ..inference.upscale import BatchOptions, make_backend, run_jobs
from ..io.cache import MissingWeightsError
from ..io.guards import check_inputs_apart
from ..io.images import ImageError
from .benchmark_result import BenchmarkResult, MethodRun
from .figures import bar_chart, comparison_sheet
from .metric_set import (
    DEFAULT_METRICS,
    Metric,
    build_metrics,
    default_metric_names,
    effective_protocol,
    needs_reference,
    parse_metric_names,
)
from .protocol import Protocol
from .reports import benchmark_csv, benchmark_json, benchmark_markdown, write_json, write_text
from .scoring import EvalReport, evaluate_items, load_rgb

BACKENDS = ("bicubic", "realesrgan", "fluxsr")


def slug(name: str) -> str:
    """A folder name for a method: ``fluxsr:tiny`` -> ``fluxsr-tiny``."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-") or "method"


def backend_note(backend) -> str:
    """The model's note (e.g. that ``tiny`` has random weights), or ''."""
    spec = getattr(getattr(backend, "model", None), "spec", None)
    return str(getattr(spec, "note", "") or "")


def backend_factories(
    names: str | Sequence[str], fluxsr: Callable[[], object], device: str | None = None
) -> dict[str, Callable[[], object]]:
    """Constructors for ``bicubic``, ``realesrgan`` (:func:`fluxsr.inference.upscale.make_backend`) and ``fluxsr`` (the given
    ``fluxsr`` callable, so the CLI loads the model exactly as ``fluxsr upscale`` does); ValueError for others."""
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


def run_benchmark(  # noqa: PLR0913 (public Python API, docs/architecture.md)
    dataset: Dataset,
    factories: dict[str, Callable[[], object]],
    out: Path,
    metric_names: Sequence[str] | None = None,
    protocol: str = "fluxsr",
    *,
    opts: UpscaleOptions | None = None,
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
    opts = opts or UpscaleOptions()
    out = Path(out)
    int_scale = max(1, round(opts.scale))
    metrics, notes = benchmark_metrics(
        dataset, metric_names, protocol, int_scale, crop_border, device, period
    )
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
            run.report = score_run(run, dataset.pairs, metrics, proto, int_scale, progress)
            problems += run.failures + run.report.problems
        runs.append(run)
    result = BenchmarkResult(
        dataset, metrics, runs, proto.name, proto.border(int_scale), opts.scale, device, problems, notes
    )
    write_benchmark(result, out, sheet_images, sheet_crop)
    return result


def benchmark_metrics(
    dataset: Dataset,
    metric_names: Sequence[str] | None,
    protocol: str,
    scale: int,
    crop_border: int | None,
    device: str,
    period: int | None,
) -> tuple[list[Metric], list[str]]:
    """The metrics of a benchmark and notes: :func:`default_metric_names` when ``metric_names`` is None (without
    ground truth the full-reference defaults are dropped with a note), none for an empty list (upscale and compare
    only, ``fluxsr demo``); ValueError for full-reference names on a data set without ground truth."""
    if metric_names is None:
        names = default_metric_names(dataset.has_hr)
    else:
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
    if not names:
        return [], notes
    metrics, metric_notes = build_metrics(
        names, protocol, scale=scale, crop_border=crop_border, device=device, period=period
    )
    return metrics, notes + metric_notes


def score_run(
    run: MethodRun,
    pairs: Sequence[ImagePair],
    metrics: Sequence[Metric],
    proto: Protocol,
    scale: int,
    progress: bool = False,
) -> EvalReport:
    """Score one method's outputs against the pairs' HR images (no-reference metrics only where there is none)."""
    items = [(p.name, run.outputs[p.name], p.hr, p.lr) for p in pairs if p.name in run.outputs]
    images, errors = evaluate_items(items, metrics, progress)
    return EvalReport(list(metrics), images, errors, [], proto.name, proto.border(scale), scale)


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
