"""Timing one row of the speed bench (``fluxsr bench``): one upscaler at one output size, ``warmup`` untimed calls
then ``repeat`` timed ones, the median of each stage (read, resize, encode, transformer, decode, colour fix,
write) and the peak memory. Rows: one-step FluxSR and the multi-step teacher (:class:`TeacherPipeline`),
Real-ESRGAN x4plus and bicubic."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..baselines.realesrgan import RealESRGAN
from ..baselines.rrdbnet import RRDBNet
from ..inference import probes
from ..inference.pipeline import FluxSRPipeline, UpscaleOptions, sync
from ..inference.pipeline import timed as stage
from ..inference.tiling import tiled_map
from ..io.images import read_image, resize, write_image
from ..model.flow import denoise
from ..model.model import velocity
from .speed_config import GPU_STAGES, BenchConfig


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
        in_use = probes.current_bytes(device)
        probes.reset_peak(device)
        start, start_cpu = time.perf_counter(), time.process_time()
        times, stage_peaks = run_once()
        sync(device)
        totals.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
        peaks.append(max([probes.read_peak(device), *stage_peaks.values()]))
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
    g = torch.Generator().manual_seed(seed)
    small = torch.rand(1, 3, max(2, size // 32), max(2, size // 32), generator=g)
    rgb = resize(small, (size // 4, size // 4))[0]
    rgb = (rgb + 0.05 * torch.rand(rgb.shape, generator=g)).clamp(0, 1)
    return write_image(path, rgb)


def photo_input(photo: Path, path: Path, size: int) -> Path:
    """The x4 input for an output of ``size`` from a real photo: its centre square, resized to ``size``/4 pixels
    (antialiased bicubic when shrinking; an exact crop when the photo's shorter side is ``size``/4)."""
    rgb = read_image(photo).rgb
    h, w = rgb.shape[-2:]
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    square = rgb[:, top : top + side, left : left + side]
    return write_image(path, square if side == size // 4 else resize(square, (size // 4, size // 4)))


def row_result(name: str, size: int, result: dict[str, Any], **extra) -> dict[str, Any]:
    """A row of the result: its name, output and input size, what :func:`measure` returned and ``extra``."""
    return {"row": name, "size": size, "in_size": size // 4, **result, **extra}


def _io_run(
    img_path: Path, out_path: Path, device: torch.device, body: Callable[[Any, dict[str, float]], Any]
) -> tuple[dict[str, float], dict[str, int]]:
    """read -> ``body(image, times)`` -> write, with the read and write stages timed."""
    times: dict[str, float] = {}
    with stage(times, "read", device):
        img = read_image(img_path)
    out, peaks = body(img, times)
    with stage(times, "write", device):
        write_image(out_path, out)
    return times, peaks


def bench_pipeline(
    pipe: FluxSRPipeline, cfg: BenchConfig, size: int, img_path: Path, out_path: Path, name: str, ctx
) -> tuple[dict[str, Any], Tensor]:
    """One row for ``pipe`` (one-step FluxSR or the teacher): read, the pipeline's stages, write; with the last
    timed run's output (the seam columns score it: :func:`fluxsr.evaluation.speed_seams.pipeline_seams`)."""
    opts = cfg.upscale_options()
    last: list[Tensor] = []

    def body(img, times):
        with ctx():
            out = pipe.upscale_tensor(img.rgb, opts)
        times.update(pipe.timings)
        last[:] = [out]
        return out, dict(pipe.peaks)

    result = measure(
        lambda: _io_run(img_path, out_path, pipe.device, body), pipe.device, cfg.warmup, cfg.repeat
    )
    plan = pipe.plan
    row = row_result(
        name,
        size,
        result,
        tile=plan.tile if plan else None,
        tile_batch=plan.batch if plan else None,
        plan=plan.describe() if plan else None,
        retries=list(plan.retries) if plan else [],
        stage_peak_bytes=dict(pipe.peaks),
    )
    return row, last[0]


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
    net = RealESRGAN(
        device=device, dtype=dtype, tile=cfg.esrgan_tile or None, model=RRDBNet() if random_weights else None
    )

    def body(img, times):
        with stage(times, "net", device):
            out = net(img.rgb.to(device))
        return out.cpu(), {}

    result = measure(lambda: _io_run(img_path, out_path, device, body), device, cfg.warmup, cfg.repeat)
    return row_result(
        "realesrgan" + (" (random weights)" if random_weights else ""),
        size,
        result,
        tile=cfg.esrgan_tile or None,
        tile_unit="input px",
    )


def bench_bicubic(cfg: BenchConfig, device: torch.device, size: int, img_path: Path, out_path: Path) -> dict:
    """Bicubic x4 on the device: the floor of any upscaler (I/O and one resize)."""

    def body(img, times):
        with stage(times, "resize", device):
            out = resize(img.rgb.to(device), (size, size))
        return out.cpu(), {}

    return row_result(
        "bicubic",
        size,
        measure(lambda: _io_run(img_path, out_path, device, body), device, cfg.warmup, cfg.repeat),
    )
