"""What a quality benchmark (``fluxsr benchmark``, :mod:`fluxsr.evaluation.benchmark`) measured: one
:class:`MethodRun` per upscaler and the :class:`BenchmarkResult` that the reports and figures are drawn from."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..data.datasets import Dataset
from .metric_set import Metric
from .scoring import EvalReport


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
