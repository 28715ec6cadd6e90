"""Evaluation: image-quality metrics and protocols, scoring folders (``fluxsr eval``), the quality benchmark
(``fluxsr benchmark``: upscale a data set and score it), the speed bench (``fluxsr bench``: time each stage) and the
reference weights they use.

- metrics: :mod:`.metric_inputs` (shapes, 8-bit, crop, luma), :mod:`.psnr_ssim`, :mod:`.niqe` (the module; the
  function is ``niqe.niqe``), :mod:`.imresize` (MATLAB bicubic), :mod:`.periodic` (token-grid artefacts),
  :mod:`.protocol` (how a published number is computed), :mod:`.metric_set` (metrics by command-line name; ``lr_psnr``
  is :func:`fluxsr.inference.fidelity.lr_psnr`), :mod:`.seams` (how visible tile boundaries are);
- quality: :mod:`.scoring` (``fluxsr eval``), :mod:`.benchmark` (``fluxsr benchmark``), :mod:`.benchmark_result`,
  :mod:`.reports` (Markdown / CSV / JSON), :mod:`.figures` (bar chart, comparison sheet);
- speed (``fluxsr bench``): :mod:`.speed_config`, :mod:`.speed_rows`, :mod:`.speed_run`, :mod:`.speed_flops`,
  :mod:`.speed_report`, :mod:`.speed_seams` (``--seams``) (its command line is :mod:`fluxsr.cli.bench`);
- :mod:`.weights`: ``fluxsr weights fetch`` (LPIPS, DISTS, NIQE, Real-ESRGAN).
"""

from ..lazy import lazy_face

__getattr__, __all__ = lazy_face(
    __name__,
    {
        "backend_factories": "benchmark",
        "run_benchmark": "benchmark",
        "write_benchmark": "benchmark",
        "BenchmarkResult": "benchmark_result",
        "MethodRun": "benchmark_result",
        "imresize_matlab": "imresize",
        "ALL_METRICS": "metric_set",
        "DEFAULT_METRICS": "metric_set",
        "Metric": "metric_set",
        "build_metrics": "metric_set",
        "parse_metric_names": "metric_set",
        "load_niqe_params": "niqe",
        "periodic_score": "periodic",
        "PROTOCOLS": "protocol",
        "Protocol": "protocol",
        "full_reference": "protocol",
        "get_protocol": "protocol",
        "protocol_niqe": "protocol",
        "protocol_psnr": "protocol",
        "protocol_ssim": "protocol",
        "psnr": "psnr_ssim",
        "pyiqa_psnr": "psnr_ssim",
        "pyiqa_ssim": "psnr_ssim",
        "ssim": "psnr_ssim",
        "report_csv": "reports",
        "report_json": "reports",
        "report_markdown": "reports",
        "seam_ratio": "seams",
        "seam_scores": "seams",
        "EvalReport": "scoring",
        "ImageScore": "scoring",
        "evaluate_dirs": "scoring",
        "BenchConfig": "speed_config",
        "run_bench": "speed_run",
        "FETCHERS": "weights",
        "fetch_all": "weights",
    },
)
