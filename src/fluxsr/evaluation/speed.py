"""``fluxsr bench``: per-stage latency and peak memory of one-step FluxSR, Real-ESRGAN x4plus and the multi-step
teacher, on one machine in one run, over a grid of output sizes.

Every row runs ``warmup`` untimed calls, then ``repeat`` timed ones, and reports the median of each stage (read,
resize, encode, transformer, decode, colour fix, write), the GPU work (resize .. colour fix), the whole call and
the peak memory (CUDA ``max_memory_allocated``, or the CPU process's peak RSS). The analytic column is the FLOP
floor of the transformer: matmul FLOPs of the FLUX blocks (all linears, attention ``QK^T`` and ``AV``) counted from
the config and the tokens of every tile, divided by ``peak_tflops``.

Models: ``tiny``, the bundled model (``None``), a path (see :func:`fluxsr.model.models.load_model`) or
``flux-dev-random``: the FLUX.1-dev transformer and FLUX VAE shapes with random weights made directly on the device
(meta init, ``to_empty``, in-place random init), with random text conditioning of ``text_len`` tokens. Dense bf16
cost does not depend on the values.
"""

from __future__ import annotations

import json
import math
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..inference import memory
from ..inference.fastpath import FastPath, apply_fast_path, sdpa_context
from ..inference.pipeline import FluxSRPipeline, UpscaleOptions, default_dtype, resolve_device, sync
from ..inference.pipeline import timed as stage
from ..inference.tiling import latent_tiles, snapped, tile_count, tiled_map
from ..model.flow import denoise
from ..model.models import FluxSRModel, load_model, velocity

STAGES = ("read", "resize", "encode", "transformer", "decode", "color_fix", "write")
GPU_STAGES = ("resize", "encode", "transformer", "decode", "color_fix", "net")  # device work, no file I/O
ROWS = ("fluxsr", "teacher", "realesrgan", "bicubic")
RANDOM_FLUX = "flux-dev-random"

# ----------------------------------------------------------------------------------------------------------------
# Settings
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class BenchConfig:
    """Everything ``fluxsr bench`` measures; see ``fluxsr bench --help`` for each field."""

    model: str | None = None
    sizes: tuple[int, ...] = (512, 1024, 2048, 4096)
    repeat: int = 3
    warmup: int = 1
    device: str | None = None
    dtype: torch.dtype | None = None
    rows: tuple[str, ...] = ROWS
    text_len: int = 512
    teacher_steps: int = 28
    teacher_run_steps: int | None = None
    teacher_max_size: int | None = 1024
    baseline_max_size: int | None = None
    esrgan_tile: int = 512
    esrgan_weights: str = "auto"
    tile: int | None = None
    overlap: int | None = None
    tile_batch: int = 1
    color_fix: str = "wavelet"
    write_ext: str = "png"
    max_memory: int | None = None
    peak_tflops: float = 790.0
    analytic: bool = True
    fast: FastPath = field(default_factory=FastPath)
    seed: int = 0

    def __post_init__(self) -> None:
        bad = [s for s in self.sizes if s < 16 or s % 4]
        if not self.sizes or bad:
            raise ValueError(
                f"--sizes: output sizes must be multiples of 4, at least 16 (the input is size/4): "
                f"got {list(self.sizes) or 'none'}"
            )
        if not self.rows:
            raise ValueError(f"--rows: nothing to run; choose from {','.join(ROWS)}")
        unknown = sorted(set(self.rows) - set(ROWS))
        if unknown:
            raise ValueError(f"unknown rows {unknown}: choose from {ROWS}")
        if self.repeat < 1 or self.warmup < 0:
            raise ValueError(f"--repeat must be >= 1 and --warmup >= 0 (got {self.repeat}, {self.warmup})")
        if self.teacher_steps < 1 or not 1 <= (self.teacher_run_steps or 1) <= self.teacher_steps:
            raise ValueError(
                f"--teacher-steps must be >= 1 and --teacher-run-steps between 1 and it (got "
                f"{self.teacher_steps}, {self.teacher_run_steps})"
            )
        if not (math.isfinite(self.peak_tflops) and self.peak_tflops > 0):
            raise ValueError(f"--peak-tflops must be a positive number (got {self.peak_tflops})")
        if self.text_len < 1 or self.esrgan_tile < 0:
            raise ValueError(
                f"--text-len must be >= 1 and --esrgan-tile >= 0 (got {self.text_len}, {self.esrgan_tile})"
            )
        self.upscale_options()  # --tile, --overlap, --tile-batch: refused now, not at the first row

    def upscale_options(self) -> UpscaleOptions:
        """The pipeline settings of every row (x4: the input is size/4)."""
        return UpscaleOptions(
            scale=4.0,
            color_fix=self.color_fix,
            tile=self.tile,
            overlap=self.overlap,
            tile_batch=self.tile_batch,
        )


# ----------------------------------------------------------------------------------------------------------------
# FLOP floor of the FLUX transformer
# ----------------------------------------------------------------------------------------------------------------


def _linear(tokens: int, fan_in: int, fan_out: int) -> int:
    return 2 * tokens * fan_in * fan_out


def transformer_flops(config, img_tokens: int, txt_tokens: int, mlp_ratio: float = 4.0) -> dict[str, int]:
    """Matmul FLOPs of one FluxTransformer2DModel forward (batch 1): ``linear``, ``attention`` and ``total``.

    Linears: patch and text embedders, time/guidance/pooled-text MLPs, per double block AdaLN-Zero (x2), q/k/v,
    output projections and the 4x MLP of both streams, per single block AdaLN, q/k/v, MLP in and the fused output
    projection ``(D + 4D) -> D``, then the final AdaLN and projection. Attention: ``QK^T`` and ``AV`` over the
    joint sequence, ``4 N^2 D`` per block. Elementwise work (norms, RoPE, GELU, softmax) is not counted.
    """
    c = dict(config)
    d = c["num_attention_heads"] * c["attention_head_dim"]
    mlp = int(d * mlp_ratio)
    n = img_tokens + txt_tokens
    out_ch = (c.get("out_channels") or c["in_channels"]) * c.get("patch_size", 1) ** 2
    vec = _linear(1, 256, d) + _linear(1, d, d)  # timestep MLP on a 256-channel sinusoidal embedding
    vec *= 2 if c.get("guidance_embeds") else 1
    vec += _linear(1, c["pooled_projection_dim"], d) + _linear(1, d, d)
    embed = _linear(img_tokens, c["in_channels"], d) + _linear(txt_tokens, c["joint_attention_dim"], d) + vec
    stream = sum(
        _linear(t, d, 3 * d) + _linear(t, d, d) + _linear(t, d, mlp) + _linear(t, mlp, d)
        for t in (img_tokens, txt_tokens)
    )
    double = 2 * _linear(1, d, 6 * d) + stream
    single = _linear(1, d, 3 * d) + _linear(n, d, 3 * d) + _linear(n, d, mlp) + _linear(n, d + mlp, d)
    final = _linear(1, d, 2 * d) + _linear(img_tokens, d, out_ch)
    blocks = c["num_layers"] + c["num_single_layers"]
    linear = embed + c["num_layers"] * double + c["num_single_layers"] * single + final
    attention = blocks * 4 * n * n * d
    return {"linear": linear, "attention": attention, "total": linear + attention}


def tile_tokens(out_hw: tuple[int, int], tile: int, overlap: int, vae_scale: int = 8) -> list[int]:
    """Image tokens of every transformer tile the pipeline runs for an output of ``out_hw`` (same tiling rules)."""
    m = vae_scale * 2
    lh, lw = (-(-s // m) * m // vae_scale for s in out_hw)
    spec = latent_tiles(snapped(tile, overlap, m), vae_scale)
    per_tile = (min(spec.tile, lh) // 2) * (min(spec.tile, lw) // 2)
    return [per_tile] * tile_count((lh, lw), spec)


def analytic_floor(
    config,
    out_hw: tuple[int, int],
    tile: int,
    overlap: int,
    text_len: int,
    peak_tflops: float,
    forwards: int = 1,
    vae_scale: int = 8,
) -> dict[str, float]:
    """FLOP floor of the transformer stage: TFLOP over all tiles (x ``forwards`` steps) and ms at ``peak_tflops``."""
    tokens = tile_tokens(out_hw, tile, overlap, vae_scale)
    flops = forwards * sum(transformer_flops(config, t, text_len)["total"] for t in tokens)
    return {
        "tflop": flops / 1e12,
        "floor_ms": flops / (peak_tflops * 1e12) * 1e3,
        "tiles": len(tokens),
        "tokens_per_tile": tokens[0] + text_len,
    }


# ----------------------------------------------------------------------------------------------------------------
# The multi-step teacher
# ----------------------------------------------------------------------------------------------------------------


class TeacherPipeline(FluxSRPipeline):
    """The pipeline with its one step replaced by ``steps`` Euler steps of the same transformer, from ``T_L`` to 0,
    tiled the same way: what a multi-step sampler with this model costs (each step is one forward per tile)."""

    def __init__(self, pipe: FluxSRPipeline, steps: int):
        super().__init__(pipe.model, pipe.device, pipe.dtype, allow_fp16=True, prepare=False)
        self.steps = steps
        self.max_memory = pipe.max_memory

    def transform(self, z_l, opts: UpscaleOptions):
        """``steps`` Euler steps of the transformer's velocity on every latent tile."""
        t_l = self.model.spec.t_l
        times = torch.linspace(t_l, 0, self.steps + 1).tolist()

        def run(tiles, offsets):
            return denoise(lambda z, t: velocity(self.model, z, t, offsets).float(), tiles.float(), times)

        return tiled_map(run, z_l, self._latent_tiles(opts), 1, batch=self._batch(opts))


# ----------------------------------------------------------------------------------------------------------------
# Measuring
# ----------------------------------------------------------------------------------------------------------------


RunOnce = Callable[[], tuple[dict[str, float], dict[str, int]]]


def measure(run_once: RunOnce, device: torch.device, warmup: int, repeat: int) -> dict[str, Any]:
    """Warm up, then time ``repeat`` calls of ``run_once`` (returning stage seconds and stage peak bytes).

    Returns median ms per stage, median total ms, median CPU time of the process per call (all threads: on a
    shared CPU it moves less than wall time), the first warm-up's seconds (compilation shows here), the
    largest peak memory seen in any timed call (bytes) and that peak above what was in use when the call started
    (activations and temporaries: on CUDA the weights of every loaded model count in the absolute peak).
    """
    warm_s = []
    for _ in range(warmup):
        start = time.perf_counter()
        run_once()
        sync(device)
        warm_s.append(time.perf_counter() - start)
    runs, totals, cpu, peaks, above = [], [], [], [], []
    for _ in range(max(1, repeat)):
        in_use = memory.current_bytes(device)
        memory.reset_peak(device)
        start, start_cpu = time.perf_counter(), time.process_time()
        times, stage_peaks = run_once()
        sync(device)
        totals.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
        peaks.append(max([memory.read_peak(device), *stage_peaks.values()]))
        above.append(peaks[-1] - in_use)
        runs.append(times)
    stages = {k: statistics.median(r[k] for r in runs) * 1e3 for k in runs[0]}
    work = [sum(v for k, v in r.items() if k in GPU_STAGES) for r in runs]
    return {
        "stages_ms": stages,
        "total_ms": statistics.median(totals) * 1e3,
        "cpu_ms": statistics.median(cpu) * 1e3,
        "gpu_work_ms": statistics.median(work) * 1e3 if any(k in GPU_STAGES for k in runs[0]) else None,
        "peak_bytes": max(peaks),
        "peak_above_start_bytes": max(above),
        "first_call_s": warm_s[0] if warm_s else None,
        "repeat": len(runs),
    }


def make_input(path: Path, size: int, seed: int = 0) -> Path:
    """A smooth random RGB PNG of ``size``/4 pixels square (the x4 input for an output of ``size``)."""
    from ..io.images import resize, write_image

    g = torch.Generator().manual_seed(seed)
    small = torch.rand(1, 3, max(2, size // 32), max(2, size // 32), generator=g)
    rgb = resize(small, (size // 4, size // 4))[0]
    rgb = (rgb + 0.05 * torch.rand(rgb.shape, generator=g)).clamp(0, 1)
    return write_image(path, rgb)


def _row(name: str, size: int, result: dict[str, Any], **extra) -> dict[str, Any]:
    return {"row": name, "size": size, "in_size": size // 4, **result, **extra}


def _io_run(
    img_path: Path, out_path: Path, device: torch.device, body: Callable[[Any, dict[str, float]], Any]
) -> tuple[dict[str, float], dict[str, int]]:
    """read -> ``body(image, times)`` -> write, with the read and write stages timed."""
    from ..io.images import read_image, write_image

    times: dict[str, float] = {}
    with stage(times, "read", device):
        img = read_image(img_path)
    out, peaks = body(img, times)
    with stage(times, "write", device):
        write_image(out_path, out)
    return times, peaks


def bench_pipeline(
    pipe: FluxSRPipeline, cfg: BenchConfig, size: int, img_path: Path, out_path: Path, name: str, ctx
) -> dict[str, Any]:
    """One row for ``pipe`` (one-step FluxSR or the teacher): read, the pipeline's stages, write."""
    opts = cfg.upscale_options()

    def body(img, times):
        with ctx():
            out = pipe.upscale_tensor(img.rgb, opts)
        times.update(pipe.timings)
        return out, dict(pipe.peaks)

    result = measure(
        lambda: _io_run(img_path, out_path, pipe.device, body), pipe.device, cfg.warmup, cfg.repeat
    )
    plan = pipe.plan
    return _row(
        name,
        size,
        result,
        tile=plan.tile if plan else None,
        tile_batch=plan.batch if plan else None,
        plan=plan.describe() if plan else None,
        retries=list(plan.retries) if plan else [],
        stage_peak_bytes=dict(pipe.peaks),
    )


def bench_realesrgan(
    cfg: BenchConfig,
    device: torch.device,
    dtype: torch.dtype,
    size: int,
    img_path: Path,
    out_path: Path,
    random_weights: bool = False,
) -> dict[str, Any]:
    """Real-ESRGAN x4plus (fluxsr's RRDBNet port) on the same device and dtype; the network is one stage.

    ``random_weights`` runs the same architecture untrained (same cost; for random-weight benchmarks on machines
    without the converted weights)."""
    from ..baselines.realesrgan import RealESRGAN
    from ..baselines.rrdbnet import RRDBNet

    net = RealESRGAN(
        device=device, dtype=dtype, tile=cfg.esrgan_tile or None, model=RRDBNet() if random_weights else None
    )

    def body(img, times):
        with stage(times, "net", device):
            out = net(img.rgb.to(device))
        return out.cpu(), {}

    result = measure(lambda: _io_run(img_path, out_path, device, body), device, cfg.warmup, cfg.repeat)
    return _row(
        "realesrgan" + (" (random weights)" if random_weights else ""),
        size,
        result,
        tile=cfg.esrgan_tile or None,
        tile_unit="input px",
    )


def bench_bicubic(cfg: BenchConfig, device: torch.device, size: int, img_path: Path, out_path: Path) -> dict:
    """Bicubic x4 on the device: the floor of any upscaler (I/O and one resize)."""
    from ..io.images import resize

    def body(img, times):
        with stage(times, "resize", device):
            out = resize(img.rgb.to(device), (size, size))
        return out.cpu(), {}

    return _row(
        "bicubic",
        size,
        measure(lambda: _io_run(img_path, out_path, device, body), device, cfg.warmup, cfg.repeat),
    )


# ----------------------------------------------------------------------------------------------------------------
# Environment
# ----------------------------------------------------------------------------------------------------------------


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
    import diffusers

    env = {
        "device": str(device),
        "device_name": device_name(device),
        "dtype": str(dtype).removeprefix("torch."),
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
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


# ----------------------------------------------------------------------------------------------------------------
# The benchmark
# ----------------------------------------------------------------------------------------------------------------


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
        "config": _config_dict(cfg),
        "rows": [],
        "notes": [],
    }
    notes = result["notes"]
    pipe = teacher = None
    if {"fluxsr", "teacher"} & set(cfg.rows):
        start = time.perf_counter()
        # flux-dev-random is made directly on the device (no CPU copy of 11.9 B parameters); others load on the CPU
        model = load_model(cfg.model, device=device, dtype=dtype, text_len=cfg.text_len)
        pipe = FluxSRPipeline(model, device, dtype, allow_fp16=True)
        pipe.max_memory = cfg.max_memory
        pipe.name = f"fluxsr:{model.spec.name}"
        result["env"].update(
            model=model.spec.name,
            model_build_s=round(time.perf_counter() - start, 2),
            weight_bytes=_weight_bytes(model),
            text_len=int(model.cond.prompt_embeds.shape[1]),
        )
        if cfg.model != RANDOM_FLUX and cfg.text_len != 512:
            notes.append(
                "--text-len applies to flux-dev-random only; other models use their stored embeddings"
            )
        notes += apply_fast_path(pipe.model, cfg.fast)
    if "teacher" in cfg.rows:
        run_steps = cfg.teacher_run_steps or cfg.teacher_steps
        teacher = TeacherPipeline(pipe, run_steps)
        if run_steps != cfg.teacher_steps:
            notes.append(
                f"teacher: {run_steps} Euler steps run, transformer time scaled linearly to "
                f"{cfg.teacher_steps} steps (its cpu_ms and first_call_s are reported as run_cpu_ms, "
                f"run_first_call_s)"
            )

    def ctx():
        return sdpa_context(cfg.fast.sdpa)

    label = cfg.fast.label()
    with tempfile.TemporaryDirectory(prefix="fluxsr-bench-") as tmp:
        for size in cfg.sizes:
            img_path = make_input(Path(tmp) / f"in_{size}.png", size, cfg.seed)
            out_path = Path(tmp) / f"out_{size}.{cfg.write_ext}"
            for name in cfg.rows:
                row = _run_row(
                    name, size, cfg, device, dtype, pipe, teacher, img_path, out_path, ctx, label, log
                )
                if row is None:
                    continue
                result["rows"].append(row)
                log(format_row(row))
                if on_row is not None:
                    on_row(result)
    return result


def _skip(name: str, size: int, why: str) -> dict[str, Any]:
    return {"row": name, "size": size, "in_size": size // 4, "skipped": why}


def _run_row(
    name: str,
    size: int,
    cfg: BenchConfig,
    device,
    dtype,
    pipe,
    teacher,
    img_path: Path,
    out_path: Path,
    ctx,
    label: str,
    log,
) -> dict[str, Any] | None:
    """One row, or a ``skipped``/``error`` entry: a failing row never stops the benchmark."""
    try:
        if name == "fluxsr":
            row = bench_pipeline(
                pipe, cfg, size, img_path, out_path, f"fluxsr:{pipe.model.spec.name}{label}", ctx
            )
            if cfg.analytic:
                _add_analytic(row, pipe.model, cfg, 1)
            if device.type == "cuda" and row.get("stage_peak_bytes") and row.get("tile"):
                tile_px = min(row["tile"], size) ** 2
                per_pass = row.get("tile_batch") or 1  # the plan's tiles per pass (never more than the tiles)
                tcfg = pipe.model.transformer.config
                row["calibration"] = _calibration(
                    row,
                    _weight_bytes(pipe.model),
                    tile_px * per_pass,
                    torch.empty((), dtype=dtype).element_size(),
                    memory.ModelDims.from_model(pipe.model).tokens(tile_px) * per_pass,
                    tcfg.num_attention_heads * tcfg.attention_head_dim,
                )
            return row
        if name == "teacher":
            if cfg.teacher_max_size and size > cfg.teacher_max_size:
                return _skip(name, size, f"teacher rows only up to --teacher-max-size {cfg.teacher_max_size}")
            row = bench_pipeline(
                teacher, cfg, size, img_path, out_path, f"teacher:{cfg.teacher_steps}-step{label}", ctx
            )
            row.update(teacher_steps=cfg.teacher_steps, teacher_run_steps=teacher.steps)
            _scale_teacher(row, cfg.teacher_steps / teacher.steps)
            if cfg.analytic:
                _add_analytic(row, teacher.model, cfg, cfg.teacher_steps)
            return row
        if name == "realesrgan":
            if cfg.baseline_max_size and size > cfg.baseline_max_size:
                return _skip(
                    name, size, f"Real-ESRGAN only up to --baseline-max-size {cfg.baseline_max_size}"
                )
            from ..io.cache import MissingWeightsError

            if cfg.esrgan_weights == "random":
                return bench_realesrgan(cfg, device, dtype, size, img_path, out_path, random_weights=True)
            try:
                return bench_realesrgan(cfg, device, dtype, size, img_path, out_path)
            except MissingWeightsError as e:
                if cfg.esrgan_weights == "auto" and cfg.model == RANDOM_FLUX:
                    return bench_realesrgan(cfg, device, dtype, size, img_path, out_path, random_weights=True)
                return _skip(name, size, f"weights not cached ({e})")
        return bench_bicubic(cfg, device, size, img_path, out_path)  # rows are checked by BenchConfig
    except (RuntimeError, MemoryError, ValueError, NotImplementedError) as e:
        log(f"{name} @ {size}: {type(e).__name__}: {e}")
        memory.free_cached(device)
        return {
            "row": name,
            "size": size,
            "in_size": size // 4,
            "error": f"{type(e).__name__}: {str(e)[:500]}",
        }


def _config_dict(cfg: BenchConfig) -> dict[str, Any]:
    d = asdict(cfg)
    d["dtype"] = str(cfg.dtype).removeprefix("torch.") if cfg.dtype else None
    return d


# ----------------------------------------------------------------------------------------------------------------
# Reports
# ----------------------------------------------------------------------------------------------------------------

COLUMNS = ("read", "resize", "encode", "transformer", "decode", "color_fix", "net", "write")


def _ms(v: float | None) -> str:
    return "" if v is None else (f"{v:.0f}" if v >= 100 else f"{v:.1f}")


def format_row(row: dict) -> str:
    """One log line per row."""
    head = f"{row['row']} @ {row['in_size']}->{row['size']}"
    if "skipped" in row or "error" in row:
        return f"{head}: {row.get('skipped') or row.get('error')}"
    st = " ".join(f"{k} {_ms(v)}" for k, v in row["stages_ms"].items())
    return f"{head}: {st} | total {_ms(row['total_ms'])} ms, peak {memory.format_bytes(row['peak_bytes'])}"


def to_markdown(result: dict[str, Any]) -> str:
    """The environment, notes and one table (ms, medians) of every row."""
    env = result["env"]
    lines = [
        f"Device: {env['device_name']} ({env['device']}), dtype {env['dtype']}, torch {env['torch']}, "
        f"diffusers {env['diffusers']}, python {env['python']}"
        + (
            f", model {env['model']} ({env['weight_bytes'] / 1e9:.2f} GB weights, text {env['text_len']} tokens)"
            if "model" in env
            else ""
        ),
        f"Medians of {result['config']['repeat']} runs after {result['config']['warmup']} warm-up; FLOP floor at "
        f"{result['config']['peak_tflops']:g} TFLOP/s.",
        "",
    ]
    lines += [f"- {n}" for n in result["notes"]] + ([""] if result["notes"] else [])
    head = [
        "size",
        "row",
        "tile",
        *(f"{c} (ms)" for c in COLUMNS),
        "GPU work (ms)",
        "total (ms)",
        "peak",
        "peak - start",
        "floor (ms)",
        "x floor",
    ]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in result["rows"]:
        size = f"{row['in_size']}->{row['size']}"
        if "skipped" in row or "error" in row:
            lines.append(
                f"| {size} | {row['row']} | "
                + (row.get("skipped") or row.get("error"))[:120]
                + " |" * (len(head) - 2)
            )
            continue
        st, a = row["stages_ms"], row.get("analytic") or {}
        tile = (
            f"{row['tile']}"
            + (f" x{row['tile_batch']}" if (row.get("tile_batch") or 1) > 1 else "")
            + (" (input)" if row.get("tile_unit") == "input px" else "")
            if row.get("tile")
            else ""
        )
        cells = [
            size,
            row["row"],
            tile,
            *(_ms(st.get(c)) for c in COLUMNS),
            _ms(row.get("gpu_work_ms")),
            _ms(row["total_ms"]),
            memory.format_bytes(row["peak_bytes"]),
            memory.format_bytes(row["peak_above_start_bytes"]),
            f"{a['floor_ms']:.3g}" if a else "",
            f"{row['x_floor']:.3g}" if row.get("x_floor") else "",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_json(result: dict[str, Any], path: Path) -> None:
    """Write the result as JSON (atomically, so a partial run always leaves a readable file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(result, indent=2, default=str) + "\n")
    tmp.replace(path)
