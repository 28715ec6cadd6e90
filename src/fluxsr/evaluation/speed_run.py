"""The speed bench (``fluxsr bench``): every requested row at every size on one machine in one run, with the
environment the numbers belong to, the FLOP floor of the FluxSR and teacher rows and, on CUDA, the measured
constants of the memory plan's cost model. A failing row is recorded and never stops the run.

Models: ``tiny``, the bundled model (``None``), a path (see :func:`fluxsr.model.loader.load_model`) or
``flux-dev-random``: the FLUX.1-dev transformer and FLUX VAE shapes with random weights made directly on the device
(meta init, ``to_empty``, in-place random init), with random text conditioning of ``text_len`` tokens. Dense bf16
cost does not depend on the values.
"""

from __future__ import annotations

import platform
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Any

import torch

from ..inference import memory, oom
from ..inference.fastpath import apply_fast_path, sdpa_context
from ..inference.pipeline import FluxSRPipeline, default_dtype, resolve_device
from ..io.cache import MissingWeightsError
from ..model.loader import load_model
from ..model.model import FluxSRModel
from .speed_config import RANDOM_FLUX, BenchConfig, config_dict
from .speed_flops import analytic_floor
from .speed_report import format_row
from .speed_rows import (
    TeacherPipeline,
    bench_bicubic,
    bench_pipeline,
    bench_realesrgan,
    make_input,
    photo_input,
)
from .speed_seams import bicubic_seams, pipeline_seams


def device_name(device: torch.device) -> str:
    """GPU name, or the CPU model and thread count."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    cpu = platform.processor() or "cpu"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu} ({torch.get_num_threads()} threads)"


def environment(device: torch.device, dtype: torch.dtype) -> dict[str, Any]:
    """Versions and hardware the numbers belong to."""
    env = {
        "device": str(device),
        "device_name": device_name(device),
        "dtype": str(dtype).removeprefix("torch."),
        "torch": torch.__version__,
        "diffusers": version("diffusers"),
        "python": platform.python_version(),
        "cuda": torch.version.cuda,
        "threads": torch.get_num_threads(),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        env.update(
            gpu_memory_bytes=props.total_memory,
            sm_count=props.multi_processor_count,
            cudnn=torch.backends.cudnn.version(),
        )
    return env


def _weight_bytes(model: FluxSRModel) -> int:
    return sum(
        p.numel() * p.element_size() for part in (model.transformer, model.vae) for p in part.parameters()
    )


def _calibration(row: dict, weights: int, tile_px: int, dtype_bytes: int, tokens: int, inner: int) -> dict:
    """Measured cost-model constants (:class:`fluxsr.inference.memory.CostModel`) from one row's stage peaks."""
    peaks = row.get("stage_peak_bytes") or {}
    out = {}
    for st, key in (("encode", "encode_per_px"), ("decode", "decode_per_px")):
        if st in peaks:
            out[key] = round((peaks[st] - weights) / (tile_px * dtype_bytes), 1)
    if "transformer" in peaks:
        out["transformer_per_token_dim"] = round(
            (peaks["transformer"] - weights) / (tokens * inner * dtype_bytes), 2
        )
    return out


def _add_analytic(row: dict, model: FluxSRModel, cfg: BenchConfig, forwards: int) -> None:
    """Fill the analytic columns of a FluxSR/teacher row (FLOP floor and the measured transformer's ratio)."""
    tcfg = model.transformer.config
    spec = model.spec
    tile = row.get("tile") or spec.tile
    overlap = cfg.overlap if cfg.overlap is not None else spec.overlap
    text = int(model.cond.prompt_embeds.shape[1])
    a = analytic_floor(
        tcfg, (row["size"], row["size"]), tile, overlap, text, cfg.peak_tflops, forwards, model.vae_scale
    )
    row["analytic"] = a
    measured = row["stages_ms"].get("transformer")
    row["x_floor"] = measured / a["floor_ms"] if measured and a["floor_ms"] > 0 else None


def _scale_teacher(row: dict, factor: float) -> None:
    """Scale a teacher row measured with fewer steps to the reported number (transformer stage only, linear).

    The process CPU time and the first (warm-up) call cannot be split by stage: on a scaled row they move to
    ``run_cpu_ms`` / ``run_first_call_s`` (what the steps actually run cost) and ``cpu_ms`` / ``first_call_s`` are
    None, so no column mixes scaled and unscaled numbers."""
    if factor == 1.0:
        return
    st = row["stages_ms"]
    extra = st["transformer"] * (factor - 1)
    st["transformer"] *= factor
    row["total_ms"] += extra
    row["gpu_work_ms"] = (row["gpu_work_ms"] or 0.0) + extra
    row["run_cpu_ms"], row["cpu_ms"] = row["cpu_ms"], None
    row["run_first_call_s"], row["first_call_s"] = row["first_call_s"], None


@dataclass
class BenchRun:
    """What every row of one ``fluxsr bench`` run shares: the settings, device, dtype and loaded pipelines."""

    cfg: BenchConfig
    device: torch.device
    dtype: torch.dtype
    pipe: FluxSRPipeline | None = None
    teacher: TeacherPipeline | None = None

    @property
    def label(self) -> str:
        """The fast-path switches in a row name (empty when none is on)."""
        return self.cfg.fast.label()

    def ctx(self):
        """The attention-kernel context every pipeline call runs in."""
        return sdpa_context(self.cfg.fast.sdpa)


def load_pipeline(
    cfg: BenchConfig, device: torch.device, dtype: torch.dtype, env: dict[str, Any], notes: list[str]
) -> FluxSRPipeline:
    """The FluxSR pipeline of the fluxsr and teacher rows, with the fast path applied; the model and its build time
    go into ``env``, notes about the settings into ``notes``."""
    start = time.perf_counter()
    # flux-dev-random is made directly on the device (no CPU copy of 11.9 B parameters); others load on the CPU
    model = load_model(cfg.model, device=device, dtype=dtype, text_len=cfg.text_len)
    pipe = FluxSRPipeline(model, device, dtype, allow_fp16=True, max_memory=cfg.max_memory)
    env.update(
        model=model.spec.name,
        model_build_s=round(time.perf_counter() - start, 2),
        weight_bytes=_weight_bytes(model),
        text_len=int(model.cond.prompt_embeds.shape[1]),
    )
    if cfg.model != RANDOM_FLUX and cfg.text_len != 512:
        notes.append("--text-len applies to flux-dev-random only; other models use their stored embeddings")
    notes += apply_fast_path(pipe.model, cfg.fast)
    return pipe


def make_teacher(pipe: FluxSRPipeline, cfg: BenchConfig, notes: list[str]) -> TeacherPipeline:
    """The teacher of the teacher rows: ``--teacher-run-steps`` (default ``--teacher-steps``) Euler steps."""
    run_steps = cfg.teacher_run_steps or cfg.teacher_steps
    if run_steps != cfg.teacher_steps:
        notes.append(
            f"teacher: {run_steps} Euler steps run, transformer time scaled linearly to "
            f"{cfg.teacher_steps} steps (its cpu_ms and first_call_s are reported as run_cpu_ms, "
            f"run_first_call_s)"
        )
    return TeacherPipeline(pipe, run_steps)


def run_bench(
    cfg: BenchConfig,
    on_row: Callable[[dict], None] | None = None,
    log: Callable[[str], None] = lambda s: print(s, file=sys.stderr),
) -> dict[str, Any]:
    """Run every requested row at every size; ``on_row(result_so_far)`` after each row (for partial JSON)."""
    device = resolve_device(cfg.device)
    dtype = cfg.dtype or default_dtype(device)
    torch.manual_seed(cfg.seed)
    result: dict[str, Any] = {
        "env": environment(device, dtype),
        "config": config_dict(cfg),
        "rows": [],
        "notes": [],
    }
    run = BenchRun(cfg, device, dtype)
    if {"fluxsr", "teacher"} & set(cfg.rows) or cfg.seams:  # --seams: the model's tiles for every row
        run.pipe = load_pipeline(cfg, device, dtype, result["env"], result["notes"])
    if "teacher" in cfg.rows:
        run.teacher = make_teacher(run.pipe, cfg, result["notes"])
    with tempfile.TemporaryDirectory(prefix="fluxsr-bench-") as tmp:
        for size in cfg.sizes:
            img_path = bench_input(cfg, Path(tmp) / f"in_{size}.png", size)
            out_path = Path(tmp) / f"out_{size}.{cfg.write_ext}"
            for name in cfg.rows:
                row = _run_row(run, name, size, img_path, out_path, log)
                result["rows"].append(row)
                log(format_row(row))
                if on_row is not None:
                    on_row(result)
    return result


def bench_input(cfg: BenchConfig, path: Path, size: int) -> Path:
    """The input of every row at ``size``: the ``photo``'s centre (:func:`photo_input`) or a smooth random image."""
    return photo_input(cfg.photo, path, size) if cfg.photo else make_input(path, size, cfg.seed)


def _skip(name: str, size: int, why: str) -> dict[str, Any]:
    return {"row": name, "size": size, "in_size": size // 4, "skipped": why}


def _fluxsr_row(run: BenchRun, size: int, img_path: Path, out_path: Path) -> dict[str, Any]:
    """The one-step FluxSR row, with its FLOP floor and (CUDA) the cost model's constants from its stage peaks."""
    cfg, pipe = run.cfg, run.pipe
    row, out = bench_pipeline(
        pipe, cfg, size, img_path, out_path, f"fluxsr:{pipe.model.spec.name}{run.label}", run.ctx
    )
    if cfg.seams:
        row.update(pipeline_seams(pipe, cfg, img_path, out, run.ctx))
    if cfg.analytic:
        _add_analytic(row, pipe.model, cfg, 1)
    if run.device.type == "cuda" and row.get("stage_peak_bytes") and row.get("tile"):
        tile_px = min(row["tile"], size) ** 2
        per_pass = row.get("tile_batch") or 1  # the plan's tiles per pass (never more than the tiles)
        tcfg = pipe.model.transformer.config
        row["calibration"] = _calibration(
            row,
            _weight_bytes(pipe.model),
            tile_px * per_pass,
            run.dtype.itemsize,
            memory.ModelDims.from_model(pipe.model).tokens(tile_px) * per_pass,
            tcfg.num_attention_heads * tcfg.attention_head_dim,
        )
    return row


def _teacher_row(run: BenchRun, size: int, img_path: Path, out_path: Path) -> dict[str, Any]:
    """The multi-step teacher row (skipped above ``--teacher-max-size``), scaled to ``--teacher-steps``."""
    cfg, teacher = run.cfg, run.teacher
    if cfg.teacher_max_size and size > cfg.teacher_max_size:
        return _skip("teacher", size, f"teacher rows only up to --teacher-max-size {cfg.teacher_max_size}")
    name = f"teacher:{cfg.teacher_steps}-step{run.label}"
    row, out = bench_pipeline(teacher, cfg, size, img_path, out_path, name, run.ctx)
    if cfg.seams:
        row.update(pipeline_seams(teacher, cfg, img_path, out, run.ctx))
    row.update(teacher_steps=cfg.teacher_steps, teacher_run_steps=teacher.steps)
    _scale_teacher(row, cfg.teacher_steps / teacher.steps)
    if cfg.analytic:
        _add_analytic(row, teacher.model, cfg, cfg.teacher_steps)
    return row


def _realesrgan_row(run: BenchRun, size: int, img_path: Path, out_path: Path) -> dict[str, Any]:
    """The Real-ESRGAN row: cached weights, or random ones (``--esrgan-weights``), or skipped."""
    cfg, device, dtype = run.cfg, run.device, run.dtype
    if cfg.baseline_max_size and size > cfg.baseline_max_size:
        return _skip(
            "realesrgan", size, f"Real-ESRGAN only up to --baseline-max-size {cfg.baseline_max_size}"
        )
    if cfg.esrgan_weights == "random":
        return bench_realesrgan(cfg, device, dtype, size, img_path, out_path, random_weights=True)
    try:
        return bench_realesrgan(cfg, device, dtype, size, img_path, out_path)
    except MissingWeightsError as e:
        if cfg.esrgan_weights == "auto" and cfg.model == RANDOM_FLUX:
            return bench_realesrgan(cfg, device, dtype, size, img_path, out_path, random_weights=True)
        return _skip("realesrgan", size, f"weights not cached ({e})")


def _bicubic_row(run: BenchRun, size: int, img_path: Path, out_path: Path) -> dict[str, Any]:
    """The bicubic row, with its seam columns at the FluxSR model's tiles under ``--seams``."""
    row = bench_bicubic(run.cfg, run.device, size, img_path, out_path)
    if run.cfg.seams:
        row.update(bicubic_seams(run.pipe, run.cfg, img_path, size))
    return row


ROW_RUNNERS: dict[str, Callable[[BenchRun, int, Path, Path], dict[str, Any]]] = {
    "fluxsr": _fluxsr_row,
    "teacher": _teacher_row,
    "realesrgan": _realesrgan_row,
    "bicubic": _bicubic_row,
}
"""Each row of :data:`fluxsr.evaluation.speed_config.ROWS` and the function that measures it."""


def _run_row(
    run: BenchRun, name: str, size: int, img_path: Path, out_path: Path, log: Callable[[str], None]
) -> dict[str, Any]:
    """One row, or a ``skipped``/``error`` entry: a failing row never stops the benchmark."""
    try:
        return ROW_RUNNERS[name](run, size, img_path, out_path)  # rows are checked by BenchConfig
    except (RuntimeError, MemoryError, ValueError, NotImplementedError) as e:
        log(f"{name} @ {size}: {type(e).__name__}: {e}")
        oom.free_cached(run.device)
        return {
            "row": name,
            "size": size,
            "in_size": size // 4,
            "error": f"{type(e).__name__}: {str(e)[:500]}",
        }
