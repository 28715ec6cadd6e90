"""Evaluation: image-quality metrics and protocols, scoring folders (``fluxsr eval``), the quality benchmark
(``fluxsr benchmark``: upscale a data set and score it), the speed bench (``fluxsr bench``: time each stage) and the
reference weights they use.

- metrics: :mod:`.metric_inputs` (shapes, 8-bit, crop, luma), :mod:`.psnr_ssim`, :mod:`.niqe` (the module; the
  function is ``niqe.niqe``), :mod:`.imresize` (MATLAB bicubic), :mod:`.periodic` (token-grid artefacts),
  :mod:`.protocol` (how a published number is computed), :mod:`.metric_set` (metrics by command-line name);
- quality: :mod:`.scoring` (``fluxsr eval``), :mod:`.benchmark` (``fluxsr benchmark``), :mod:`.benchmark_result`,
  :mod:`.reports` (Markdown / CSV / JSON), :mod:`.figures` (bar chart, comparison sheet);
- speed (``fluxsr bench``): :mod:`.speed_config`, :mod:`.speed_rows`, :mod:`.speed_run`, :mod:`.speed_flops`,
  :mod:`.speed_report`, :mod:`.speed` (its command line);
- :mod:`.weights`: ``fluxsr weights fetch`` (LPIPS, DISTS, NIQE, Real-ESRGAN).
"""

from .benchmark import backend_factories, run_benchmark, write_benchmark
from .benchmark_result import BenchmarkResult, MethodRun
from .imresize import imresize_matlab
from .metric_set import ALL_METRICS, DEFAULT_METRICS, Metric, build_metrics, parse_metric_names
from .niqe import load_niqe_params
from .periodic import periodic_score
from .protocol import (
    PROTOCOLS,
    Protocol,
    full_reference,
    get_protocol,
    protocol_niqe,
    protocol_psnr,
    protocol_ssim,
)
from .psnr_ssim import psnr, pyiqa_psnr, pyiqa_ssim, ssim
from .reports import report_csv, report_json, report_markdown
from .scoring import EvalReport, ImageScore, evaluate_dirs
from .speed_config import BenchConfig
from .speed_run import run_bench
from .weights import FETCHERS, fetch_all

__all__ = [
    "ALL_METRICS",
    "DEFAULT_METRICS",
    "FETCHERS",
    "PROTOCOLS",
    "BenchConfig",
    "BenchmarkResult",
    "EvalReport",
    "ImageScore",
    "MethodRun",
    "Metric",
    "Protocol",
    "backend_factories",
    "build_metrics",
    "evaluate_dirs",
    "fetch_all",
    "full_reference",
    "get_protocol",
    "imresize_matlab",
    "load_niqe_params",
    "parse_metric_names",
    "periodic_score",
    "protocol_niqe",
    "protocol_psnr",
    "protocol_ssim",
    "psnr",
    "pyiqa_psnr",
    "pyiqa_ssim",
    "report_csv",
    "report_json",
    "report_markdown",
    "run_bench",
    "run_benchmark",
    "ssim",
    "write_benchmark",
]
