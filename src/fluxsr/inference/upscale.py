"""Upscale files and folders with any backend (fluxsr, bicubic, Real-ESRGAN): the batch behind ``fluxsr upscale``.

Per file: read (EXIF orientation, 16-bit, grey, alpha, ICC) -> backend on RGB -> alpha upscaled apart (bicubic) ->
write with the input's bit depth, grey/colour, ICC and EXIF. A file that fails is reported in one line and the batch
goes on; finished outputs are skipped on a rerun; under ``accelerate launch`` / torchrun (or any RANK/WORLD_SIZE
environment, e.g. a job array) each process takes every WORLD_SIZE-th file, so each file is done exactly once;
launched processes also wait for each other at the end (:func:`sum_over_processes`).
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Protocol

import torch
from torch import Tensor

from ..baselines.realesrgan import RealESRGAN
from ..io.guards import real_path
from ..io.images import (
    IMAGE_EXTENSIONS,
    MAX_PIXELS,
    READ_FORMATS,
    ImageError,
    file_kind,
    first_frame_note,
    format_for,
    may_have_alpha,
    output_path,
    read_image,
    resize,
    scan_images,
    sniff_format,
    unsupported_reason,
    write_image,
    write_like,
)
from . import oom
from .fidelity import fidelity_map, fidelity_path
from .pipeline import NonFiniteOutputError, UpscaleOptions, resolve_device


class Backend(Protocol):
    """Anything that upscales one RGB tensor (3, h, w) in [0, 1] to the size ``opts`` asks for."""

    name: str

    def upscale_tensor(self, rgb: Tensor, opts: UpscaleOptions) -> Tensor: ...


@dataclass
class BicubicBackend:
    """The bicubic baseline (antialiased when shrinking)."""

    name: str = "bicubic"

    def upscale_tensor(self, rgb: Tensor, opts: UpscaleOptions) -> Tensor:
        size = opts.size_for(*rgb.shape[-2:])
        return resize(rgb.float(), size)


@dataclass
class RealESRGANBackend:
    """Real-ESRGAN x4plus (converted from its ncnn release), resized to the requested size like ``--outscale``."""

    device: str = "cpu"
    tile: int = 256
    name: str = "realesrgan"

    def __post_init__(self):
        self.net = RealESRGAN(device=self.device, tile=self.tile)

    def upscale_tensor(self, rgb: Tensor, opts: UpscaleOptions) -> Tensor:
        size = opts.size_for(*rgb.shape[-2:])
        with torch.inference_mode():
            out = self.net(rgb.float()).float().cpu()
        return out if tuple(out.shape[-2:]) == size else resize(out, size)


def make_backend(backend: str, device=None) -> Backend:
    """A baseline backend: ``bicubic`` or ``realesrgan`` (on ``device``). FluxSR itself loads through
    :func:`fluxsr.inference.loading.load_pipeline`."""
    if backend == "bicubic":
        return BicubicBackend()
    if backend == "realesrgan":
        return RealESRGANBackend(device=str(resolve_device(device)))
    raise ValueError(f"unknown baseline backend {backend!r}: choose bicubic or realesrgan")


@dataclass
class BatchOptions:
    """File handling for a batch.

    suffix: appended to each output's stem (``photo.png`` -> ``photo<suffix>.png``); no path separators.
    ext: output extension, or ``auto`` to keep the input's (png when alpha meets jpg/bmp).
    overwrite: replace existing outputs; otherwise existing outputs are skipped (a rerun resumes).
    max_pixels: inputs with more pixels are refused before decoding (decompression bombs); outputs are capped by
        ``UpscaleOptions.max_pixels`` (the CLI gives both ``--max-pixels``).
    fidelity_map: also write ``<output stem>_fidelity.png`` next to each output (:mod:`fluxsr.inference.fidelity`).
    """

    suffix: str = ""
    ext: str = "auto"
    overwrite: bool = False
    max_pixels: int = MAX_PIXELS
    fidelity_map: bool = False

    def __post_init__(self):
        if any(sep and sep in self.suffix for sep in ("/", os.sep, os.altsep)):
            raise ValueError(f"suffix must not contain a path separator, got {self.suffix!r}")


@dataclass
class FileResult:
    input: str
    output: str | None
    status: str  # ok | skipped | failed
    error: str | None = None
    seconds: float = 0.0
    in_size: tuple[int, int] | None = None
    out_size: tuple[int, int] | None = None
    stages: dict[str, float] = field(default_factory=dict)
    note: str | None = None  # said about an ok file, e.g. only the first frame of an animated WebP was used


def shard(items: list, rank: int, world: int) -> list:
    """This process's share of ``items``: every ``world``-th item from index ``rank`` (disjoint, complete)."""
    return items[rank::world]


def process_rank() -> tuple[int, int]:
    """(rank, world size) from the launcher's environment (``accelerate launch``, torchrun): (0, 1) otherwise."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def sum_over_processes(counts: list[int], world: int) -> list[int]:
    """``counts`` summed over the ``world`` launched processes; also a barrier (every process has finished its
    share), so that one process ending with a failure does not make the launcher stop the others mid-batch.

    A gloo process group (CPU tensors, any machine) from the launcher's environment, made and torn down here; it
    waits up to 72 hours for the slowest process (shares of a large folder may finish hours apart).

    Only processes started together by an elastic launcher (``TORCHELASTIC_RUN_ID``: ``accelerate launch``,
    torchrun) wait; shares run by hand with RANK / WORLD_SIZE (a job array) keep their own counts. If the
    rendezvous fails (a peer died, no route between nodes), that is a note and the counts stay this process's.
    """
    if world == 1 or "TORCHELASTIC_RUN_ID" not in os.environ:
        return list(counts)
    import datetime

    import torch.distributed as dist

    try:
        if not dist.is_initialized():
            dist.init_process_group("gloo", timeout=datetime.timedelta(hours=72))
        total = torch.tensor(counts, dtype=torch.int64)
        dist.all_reduce(total)
        dist.destroy_process_group()
        return total.tolist()
    except (RuntimeError, ValueError, OSError) as e:  # torch.distributed's errors derive from RuntimeError
        print(
            f"note: could not wait for the other processes ({' '.join(str(e).split())[:300]}); the counts "
            f"below are this process's",
            file=sys.stderr,
        )
        return list(counts)


def bind_local_gpu() -> int | None:
    """Under a launcher (``LOCAL_RANK`` set) on a machine with GPUs, make ``cuda`` mean this process's own GPU
    (``LOCAL_RANK`` modulo the GPUs visible) so that N processes do not all load onto GPU 0; returns its index."""
    local = os.environ.get("LOCAL_RANK")
    if local is None or not torch.cuda.is_available():
        return None
    index = int(local) % torch.cuda.device_count()
    torch.cuda.set_device(index)
    return index


def upscale_one(
    backend: Backend, src: Path, dst: Path, opts: UpscaleOptions, batch: BatchOptions
) -> FileResult:
    """Upscale ``src`` into ``dst``; never raises for a bad file (the result says what went wrong)."""
    start = time.perf_counter()
    try:
        img = read_image(src, batch.max_pixels, check_size=opts.size_for)  # output cap before decoding
        rgb = backend.upscale_tensor(img.rgb, opts)
        write_like(dst, rgb, img)
        if batch.fidelity_map:
            write_image(fidelity_path(dst), fidelity_map(rgb, img.rgb))
    except (ImageError, NonFiniteOutputError, ValueError, OSError) as e:
        return failure(src, e, time.perf_counter() - start)
    except Exception as e:  # out of memory even at the smallest tile: this file fails, the batch goes on
        if not oom.is_oom(e):
            raise
        oom.free_cached(getattr(backend, "device", "cpu"))
        return failure(
            src,
            f"out of memory ({type(e).__name__}); try a smaller --max-memory or --tile, or fewer "
            f"--max-pixels",
            time.perf_counter() - start,
        )
    return FileResult(
        str(src),
        str(dst),
        "ok",
        None,
        time.perf_counter() - start,
        (img.height, img.width),
        tuple(rgb.shape[-2:]),
        dict(getattr(backend, "timings", {})),
        first_frame_note(img),
    )


def failure(src: Path, error: BaseException | str, seconds: float = 0.0) -> FileResult:
    """A failed result whose error is one line naming ``src``."""
    if isinstance(error, OSError) and not isinstance(error, ImageError):
        error = error.strerror or error
    text = " ".join(str(error).split())
    return FileResult(str(src), None, "failed", text if str(src) in text else f"{src}: {text}", seconds)


def destination(src: Path, root: Path, out_dir: Path, batch: BatchOptions) -> Path:
    """Where ``src`` goes; with ``ext`` auto, a jpg/bmp whose header announces alpha goes to png (alpha kept)."""
    alpha = batch.ext.lower().lstrip(".") == "auto" and src.suffix.lower() in (".jpg", ".jpeg", ".bmp")
    return output_path(src, root, out_dir, batch.suffix, batch.ext, has_alpha=alpha and may_have_alpha(src))


def find_jobs(
    inputs: list[Path], out_dir: Path, batch: BatchOptions, note=print
) -> tuple[list[tuple[Path, Path]], list[FileResult]]:
    """(source, destination) pairs for ``inputs`` and a failed result per input that cannot be read (missing, a
    named pipe, a broken link, a folder that cannot be listed: :func:`fluxsr.io.images.scan_images`), per clash
    (:func:`_outputs_that_are_inputs`, :func:`_one_job_per_output`), or one when no image at all was found. Files
    under ``out_dir`` are not taken as sources when it lies inside an input folder. ``note`` gets one line per
    input folder with files passed over for their extension, and one per folder link not followed."""
    jobs: list[tuple[Path, Path]] = []
    results: list[FileResult] = []
    for root in map(Path, inputs):
        scan = scan_images(root, exclude=out_dir)  # earlier outputs under the input folder are not inputs
        results += [failure(problem.path, problem) for problem in scan.problems]
        for line in scan.notes:
            note(f"note: {line}")
        if scan.ignored:
            kinds = ", ".join(sorted({p.suffix.lower() or "no extension" for p in scan.ignored}))
            note(
                f"note: {root}: ignored {len(scan.ignored)} file(s) with unsupported extensions ({kinds}); "
                f"images are {' '.join(IMAGE_EXTENSIONS)}"
            )
        jobs += [(src, destination(src, root, out_dir, batch)) for src in scan.images]
    real = resolved({path for job in jobs for path in job})
    jobs, clashes = _outputs_that_are_inputs(jobs, real)
    results += clashes
    jobs, clashes = _one_job_per_output(jobs, real)
    results += clashes
    if not jobs and not results:
        names = ", ".join(map(str, inputs))
        results.append(FileResult(names, None, "failed", f"no images found under {names}"))
    return jobs, results


def resolved(paths: set[Path]) -> dict[Path, Path]:
    """Each path with its links resolved (:func:`fluxsr.io.guards.real_path`), each resolved once."""
    return {path: real_path(path) for path in paths}


def _outputs_that_are_inputs(
    jobs: list[tuple[Path, Path]], real: dict[Path, Path]
) -> tuple[list[tuple[Path, Path]], list[FileResult]]:
    """Jobs without those whose output is another job's source (``-o`` = the input folder with ``--ext png`` and
    ``a.jpg``, ``a.png``; or ``--suffix _x4`` and ``a.png``, ``a_x4.png``), and a failure for both files of each
    such clash, naming the other: the output would replace an input photo, and the input may be an earlier output
    (fluxsr cannot tell which), so neither runs. ``real``: each path with its links resolved."""
    sources = {real[src]: src for src, _ in jobs}
    refused: dict[Path, FileResult] = {}
    for src, dst in jobs:
        other = sources.get(real[dst])
        if other is None or real[dst] == real[src]:
            continue  # output = input itself is check_job's "would overwrite the input"
        hint = "write to another folder with -o (or another --suffix/--ext)"
        reasons = {
            src: f"its output {dst} is an input too; not overwritten: {hint}",
            other: f"not upscaled: it is also the output name of {src} (an earlier output?); {hint}",
        }
        for path, reason in reasons.items():
            refused.setdefault(real[path], failure(path, ImageError(path, reason)))
    kept = [(src, dst) for src, dst in jobs if real[src] not in refused]
    return kept, list(refused.values())


def _one_job_per_output(
    jobs: list[tuple[Path, Path]], real: dict[Path, Path]
) -> tuple[list[tuple[Path, Path]], list[FileResult]]:
    """Each output written by one job and each source read by one: a file met twice (given twice, under two given
    folders, or beside a link to it) runs once, at its first place that is not a link; a second source for an
    output that an earlier one writes (``a.jpg`` and ``a.png`` with ``--ext png``) is a failure naming both.
    Decided here, before the jobs are split across processes, so every run makes the same choice."""
    place = _reading_places(jobs, real)
    kept, clashes, writer = [], [], {}
    for index, (src, dst) in enumerate(jobs):
        key = real[dst]
        if place[real[src]] != index:
            continue
        if key not in writer:
            writer[key] = src
            kept.append((src, dst))
        else:
            clashes.append(
                failure(
                    src,
                    f"same output {dst} as {writer[key]}; rename one of them, or drop --ext "
                    "(auto keeps each input's extension)",
                )
            )
    return kept, clashes


def _reading_places(jobs: list[tuple[Path, Path]], real: dict[Path, Path]) -> dict[Path, int]:
    """For each source file (by its real path), the index of the job that reads it: its first place in ``jobs``
    that is not a link to it, or its first place when all are links."""
    place: dict[Path, int] = {}
    for index, (src, _) in enumerate(jobs):
        first = place.setdefault(real[src], index)
        if jobs[first][0].is_symlink() and not src.is_symlink():
            place[real[src]] = index
    return place


def check_job(src: Path, dst: Path, batch: BatchOptions) -> FileResult | None:
    """Why ``src`` -> ``dst`` is not run (failed or skipped), or None to run it; nothing is decoded.

    Checked in this order: output = input, unsupported content behind an unusual extension (``anim.gif``), an
    output extension nothing can be written in (``pic.gif.txt``), an output name taken by a folder (or another
    non-file), an existing output.
    """
    try:
        if real_path(dst) == real_path(src):
            return failure(src, "output would overwrite the input")
        if src.suffix.lower() not in IMAGE_EXTENSIONS and (kind := sniff_format(src)) not in READ_FORMATS:
            return failure(src, unsupported_reason(kind))
        format_for(dst)
        if dst.exists() and not dst.is_file():
            return failure(
                src, f"output {dst} is a {file_kind(dst.stat().st_mode)}; move it or use another -o"
            )
        if dst.exists() and not batch.overwrite:
            return FileResult(str(src), str(dst), "skipped", "output exists (use --overwrite)")
    except ImageError as e:
        return failure(src, f"{e.reason}; choose one with --ext")
    except OSError as e:
        return failure(src, e)
    return None


def upscale_paths(
    backend: Backend,
    inputs: list[Path],
    out_dir: Path,
    opts: UpscaleOptions,
    batch: BatchOptions,
    *,
    progress: bool = True,
    rank: int = 0,
    world: int = 1,
) -> list[FileResult]:
    """Upscale every image under ``inputs`` (files or folders, recursive) into ``out_dir``, mirroring folders.

    Jobs come from :func:`find_jobs`; a job is checked (:func:`check_job`) before anything is decoded.
    """
    jobs, results = find_jobs(
        inputs, out_dir, batch, lambda line: print(line, file=sys.stderr) if rank == 0 else None
    )
    results = shard(results, rank, world)
    for r in results:
        print(f"error: {r.error}", file=sys.stderr)
    return results + run_jobs(backend, shard(jobs, rank, world), opts, batch, progress=progress)


def run_jobs(
    backend: Backend,
    jobs: list[tuple[Path, Path]],
    opts: UpscaleOptions,
    batch: BatchOptions,
    *,
    progress: bool | str = True,
) -> list[FileResult]:
    """Run (source, destination) jobs in order, one result each: :func:`check_job`, then :func:`upscale_one`;
    failures and notes are printed as they happen, with a progress bar on a terminal (``progress="always"``:
    anywhere). Temporary files that killed runs left in an output folder are removed on the first write there
    (:func:`fluxsr.io.cache.write_atomic`)."""
    results: list[FileResult] = []
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(
            total=len(jobs),
            unit="img",
            desc=getattr(backend, "name", "upscale"),
            file=sys.stderr,
            disable=not sys.stderr.isatty() and progress != "always",
        )
    try:
        for src, dst in jobs:
            results.append(check_job(src, dst, batch) or upscale_one(backend, src, dst, opts, batch))
            if results[-1].status == "failed":
                print(f"error: {results[-1].error}", file=sys.stderr)
            elif results[-1].note:
                print(f"note: {results[-1].note}", file=sys.stderr)
            if bar is not None:
                bar.update(1)
    finally:  # Ctrl-C included: the bar's line is ended before the one-line message
        if bar is not None:
            bar.close()
    return results


def status_counts(results: list[FileResult]) -> dict[str, int]:
    """How many results are ``ok``, ``skipped`` and ``failed`` (in that order)."""
    return {s: sum(r.status == s for r in results) for s in ("ok", "skipped", "failed")}


def write_log(results: list[FileResult], path: Path, settings: dict) -> None:
    """JSON run log: settings (JSON values; paths and other objects as strings), per-file results and counts."""
    counts = status_counts(results)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        json.dumps(
            {"settings": settings, "counts": counts, "files": [asdict(r) for r in results]},
            indent=2,
            default=str,
        )
        + "\n"
    )
