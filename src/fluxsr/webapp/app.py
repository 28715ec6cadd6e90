"""``fluxsr serve``: a small Gradio web demo of the one-step upscaler, safe to leave running on a shared machine.

Upload an image (or click an example), pick the scale, colour fix and tile size, and compare the result with bicubic
on a before/after slider; the full-resolution PNG is offered as a download. The page shows the model, the device
and the time each request took.

What keeps a shared machine alive:

- a pixel budget per request on the OUTPUT size (``--max-pixels``), checked before any model work; inputs are also
  refused above it before decoding (decompression bombs);
- one job at a time: every upscale goes through Gradio's queue (``default_concurrency_limit=1``), which shows each
  waiting user their position; the queue itself is bounded (``--queue-size``);
- an upload size cap (``--max-upload-mb``, Gradio's ``max_file_size``);
- files: results are written to a per-app temporary folder (Gradio's cache lives in it too when started through
  :func:`run_server`), ``allowed_paths`` is empty and ``/file=<url>`` requests, which Gradio would otherwise fetch
  from the internet on the caller's behalf, are refused;
- it binds to 127.0.0.1 unless ``--host`` says otherwise, never opens a share link and sends no analytics;
- a bad upload (not an image, truncated, too large, bad settings) is answered with a one-line message, never a
  stack trace, and the server keeps serving (a non-numeric scale sent to the API directly is refused by Gradio's
  slider before the handler runs: the caller gets Gradio's generic error and the server log its traceback).

The handlers (:meth:`Upscaler.inspect`, :meth:`Upscaler.upscale`) are plain methods, testable without a server.
Gradio is imported lazily, so ``fluxsr --help`` works without the ``serve`` extra.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import shutil
import signal
import sys
import tempfile
import time
import traceback
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from ..inference.color import COLOR_FIXES
from ..io.images import IMAGE_EXTENSIONS, ImageError, LoadedImage, read_image, resize, scan_images, target_size

if TYPE_CHECKING:  # pragma: no cover
    import gradio as gr
    from PIL import Image

    from ..inference.pipeline import FluxSRPipeline

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 7860
DEFAULT_MAX_PIXELS = 2048 * 2048
DEFAULT_MAX_UPLOAD_MB = 20.0
DEFAULT_QUEUE_SIZE = 16
MIN_SCALE, MAX_SCALE = 1.0, 8.0
MIN_TILE, MAX_TILE = 64, 4096
MAX_EXAMPLES = 12
KEEP_RESULTS = 8
PREVIEW_SIDE = 512
MESSAGE_CHARS = 300
REMOTE_FILE = re.compile(r"/file=\s*[a-z][a-z0-9+.-]*:", re.IGNORECASE)


@dataclass(frozen=True)
class ServeLimits:
    """What one request may ask for.

    max_pixels: output pixels per request (width x height of the upscaled image).
    max_upload_mb: upload size cap in MB (enforced by Gradio at upload time; shown on the page).
    queue_size: jobs that may wait in the queue; more are refused with "queue full".
    max_scale: largest scale the page and the handler accept.
    """

    max_pixels: int = DEFAULT_MAX_PIXELS
    max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB
    queue_size: int = DEFAULT_QUEUE_SIZE
    max_scale: float = MAX_SCALE


# ----------------------------------------------------------------------------------------------------- messages


def _gradio():
    """Import Gradio (the ``serve`` extra) on first use."""
    try:
        import gradio
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise RuntimeError("fluxsr serve needs Gradio: pip install 'fluxsr[serve]'") from error
    return gradio


def one_line(text: str, limit: int = MESSAGE_CHARS) -> str:
    """``text`` on one line (whitespace collapsed), cut to ``limit`` characters."""
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[: limit - 1] + "…"


def fail(message: str) -> NoReturn:
    """Raise ``gr.Error`` with a one-line message (shown to the user as a toast; no traceback in the log)."""
    raise _gradio().Error(one_line(message), print_exception=False)


def megapixels(pixels: int) -> str:
    """``4194304`` -> ``'4.19 MP'``."""
    return f"{pixels / 1e6:.2f} MP"


def seconds(value: float) -> str:
    """A duration for people: ``'0.42 s'``, ``'12.3 s'``."""
    return f"{value:.2f} s" if value < 10 else f"{value:.1f} s"


# ----------------------------------------------------------------------------------------------------- inputs


def upload_path(file: Any) -> Path:
    """The local path of what Gradio hands a handler: a path string, a ``FileData``-like object or dict."""
    if file is None or file == "":
        fail("Upload an image first (PNG, JPEG, WebP, BMP or TIFF), or click an example.")
    if isinstance(file, (str, os.PathLike)):
        return Path(file)
    if isinstance(file, dict) and file.get("path"):
        return Path(file["path"])
    for attribute in ("path", "name"):
        value = getattr(file, attribute, None)
        if isinstance(value, (str, os.PathLike)) and str(value):
            return Path(value)
    fail(f"Unexpected upload value of type {type(file).__name__}.")


def check_scale(scale: Any, max_scale: float = MAX_SCALE) -> float:
    """The scale as a float in [1, max_scale], or ``gr.Error``."""
    try:
        value = float(scale)
    except (TypeError, ValueError):
        fail(f"Scale must be a number, got {scale!r}.")
    if not (math.isfinite(value) and MIN_SCALE <= value <= max_scale):
        fail(f"Scale must be between {MIN_SCALE:g} and {max_scale:g}, got {value:g}.")
    return value


def check_tile(tile: Any) -> int:
    """The tile edge as an int in [MIN_TILE, MAX_TILE], or ``gr.Error``."""
    try:
        value = int(round(float(tile)))
    except (TypeError, ValueError, OverflowError):
        fail(f"Tile size must be a number of pixels, got {tile!r}.")
    if not MIN_TILE <= value <= MAX_TILE:
        fail(f"Tile size must be between {MIN_TILE} and {MAX_TILE} pixels, got {value}.")
    return value


def check_color_fix(name: Any) -> str:
    """One of :data:`COLOR_FIXES`, or ``gr.Error``."""
    if name not in COLOR_FIXES:
        fail(f"Colour fix must be one of {', '.join(COLOR_FIXES)}, got {name!r}.")
    return str(name)


def read_upload(path: Path, max_pixels: int) -> LoadedImage:
    """Decode an uploaded image, refusing more than ``max_pixels`` before decoding; ``gr.Error`` names the file."""
    try:
        return read_image(path, max_pixels)
    except ImageError as error:
        fail(f"{path.name}: {error.reason or error}")


def output_size(image: LoadedImage, scale: float) -> tuple[int, int]:
    """(height, width) of the upscaled image."""
    return target_size(image.height, image.width, scale)


def largest_scale(image: LoadedImage, max_pixels: int) -> float:
    """The largest scale (2 decimals, rounded down) whose output fits ``max_pixels`` (output sizes round to the
    nearest pixel, so the square-root bound is lowered until the rounded size fits)."""
    s = math.floor(math.sqrt(max_pixels / (image.height * image.width)) * 100) / 100
    while s > 0.01 and math.prod(output_size(image, s)) > max_pixels:
        s = round(s - 0.01, 2)
    return s


def check_budget(name: str, image: LoadedImage, scale: float, max_pixels: int) -> tuple[int, int]:
    """The output (height, width), or ``gr.Error`` when it is over the per-request pixel budget."""
    out_h, out_w = output_size(image, scale)
    if out_h * out_w > max_pixels:
        fail(
            f"{name}: the output would be {out_w}x{out_h} = {megapixels(out_h * out_w)}, over this server's "
            f"budget of {megapixels(max_pixels)} per request; use a scale of at most "
            f"{largest_scale(image, max_pixels):g} or a smaller image."
        )
    return out_h, out_w


def overlap_for(tile: int, model_overlap: int) -> int:
    """Tile overlap in output pixels: the model's (what ``fluxsr upscale`` uses), at most a quarter of the tile."""
    return min(model_overlap, tile // 4)


def safe_stem(path: Path) -> str:
    """A file-name-safe stem for the download (``'my photo (1).jpg'`` -> ``'my_photo_1'``)."""
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", path.stem).strip("._")[:64]
    return stem or "image"


# ----------------------------------------------------------------------------------------------------- handlers


class Upscaler:
    """The app's handlers around one pipeline: plain methods, testable without a server.

    Results go to ``workdir/results/<request>/``; only the last ``keep`` request folders are kept.
    """

    def __init__(
        self,
        pipeline: FluxSRPipeline,
        workdir: Path,
        limits: ServeLimits | None = None,
        keep: int = KEEP_RESULTS,
    ) -> None:
        self.pipeline = pipeline
        self.limits = limits or ServeLimits()
        self.results = Path(workdir) / "results"
        self.results.mkdir(parents=True, exist_ok=True)
        self.keep = max(2, keep)

    # -- text ---------------------------------------------------------------------------------------------------

    def model_line(self) -> str:
        """``'**tiny** on **cpu** (float32)'``."""
        dtype = str(self.pipeline.dtype).removeprefix("torch.")
        return f"**{self.pipeline.model.spec.name}** on **{self.pipeline.device}** ({dtype})"

    def describe(self) -> str:
        """The page header: what this is, model and device, the limits in force."""
        spec = self.pipeline.model.spec
        lines = [
            "## FluxSR: one-step real-world super-resolution",
            f"Model {self.model_line()}" + (f": {spec.description}" if spec.description else "") + ".",
        ]
        if spec.note:
            lines.append(f"*Note: {spec.note}.*".replace("..", "."))
        lines.append(
            f"Limits: output up to {megapixels(self.limits.max_pixels)} per request, uploads up to "
            f"{self.limits.max_upload_mb:g} MB, one job at a time (others wait in the queue and see "
            "their position)."
        )
        return "\n\n".join(lines)

    # -- upload preview -----------------------------------------------------------------------------------------

    def inspect(self, file: Any, scale: Any) -> tuple[Image.Image | None, str]:
        """On upload or scale change: a thumbnail and one line of sizes, or a warning; never raises."""
        gr = _gradio()
        if file is None or file == "":
            return None, "Upload an image (PNG, JPEG, WebP, BMP or TIFF) or click an example below."
        try:
            path = upload_path(file)
            image = read_upload(path, self.limits.max_pixels)
            scale = check_scale(scale, self.limits.max_scale)
            out_h, out_w = output_size(image, scale)
        except gr.Error as error:
            return None, f"⚠️ {error.message}"
        text = f"{path.name}: {image.width}x{image.height} → {out_w}x{out_h} ({megapixels(out_h * out_w)})"
        if out_h * out_w > self.limits.max_pixels:
            text += (
                f". ⚠️ Over this server's budget of {megapixels(self.limits.max_pixels)}: use a scale of at "
                f"most {largest_scale(image, self.limits.max_pixels):g}."
            )
        return thumbnail(image), text

    # -- the job ------------------------------------------------------------------------------------------------

    def upscale(self, file: Any, scale: Any, color_fix: Any, tile: Any) -> tuple[tuple[str, str], str, str]:
        """Upscale one upload: ((bicubic PNG, fluxsr PNG) for the slider, fluxsr PNG to download, info markdown).

        Raises ``gr.Error`` with a one-line message for anything that goes wrong; unexpected errors are logged
        with their traceback on the server and reported in one line.
        """
        gr = _gradio()
        try:
            return self._upscale(file, scale, color_fix, tile)
        except gr.Error:
            raise
        except Exception as error:
            from ..inference.memory import is_oom

            if is_oom(error):
                fail("Out of memory: try a smaller tile size, a smaller scale or a smaller image.")
            traceback.print_exc()
            fail(f"Internal error ({type(error).__name__}): {error}")

    def _upscale(self, file: Any, scale: Any, color_fix: Any, tile: Any) -> tuple[tuple[str, str], str, str]:
        """:meth:`upscale` without the last-resort error handling."""
        from ..inference.pipeline import NonFiniteOutputError, UpscaleOptions

        path = upload_path(file)
        scale, tile, color_fix = (
            check_scale(scale, self.limits.max_scale),
            check_tile(tile),
            check_color_fix(color_fix),
        )
        image = read_upload(path, self.limits.max_pixels)
        out_h, out_w = check_budget(path.name, image, scale, self.limits.max_pixels)
        opts = UpscaleOptions(
            scale=scale,
            color_fix=color_fix,
            tile=tile,
            overlap=overlap_for(tile, self.pipeline.model.spec.overlap),
            max_pixels=self.limits.max_pixels,
        )
        start = time.perf_counter()
        try:
            rgb = self.pipeline.upscale_tensor(image.rgb, opts)
        except NonFiniteOutputError as error:
            fail(str(error))
        model_s = time.perf_counter() - start
        folder = self.new_folder()
        name = f"{safe_stem(path)}_x{scale:g}"
        result = self.write(folder / f"{name}_fluxsr.png", rgb, image)
        bicubic = self.write(folder / f"{name}_bicubic.png", bicubic_upscale(image, opts), image)
        total_s = time.perf_counter() - start
        info = self.report(image, (out_h, out_w), opts, model_s, total_s)
        return (str(bicubic), str(result)), str(result), info

    def report(
        self, image: LoadedImage, out_hw: tuple[int, int], opts: Any, model_s: float, total_s: float
    ) -> str:
        """The info markdown shown under the result."""
        stages = ", ".join(f"{k.replace('_', ' ')} {seconds(v)}" for k, v in self.pipeline.timings.items())
        plan = self.pipeline.plan
        tile = f"tile {plan.tile if plan else opts.tile}"
        if plan and plan.tile < opts.tile:
            tile += f" (asked {opts.tile}; lowered to fit memory)"
        return (
            f"{self.model_line()} · {image.width}x{image.height} → {out_hw[1]}x{out_hw[0]} "
            f"(x{opts.scale:g}, colour fix {opts.color_fix}, {tile})\n\n"
            f"**Time {seconds(total_s)}**: model {seconds(model_s)} ({stages}); bicubic and PNGs "
            f"{seconds(total_s - model_s)}."
        )

    # -- files --------------------------------------------------------------------------------------------------

    def new_folder(self) -> Path:
        """A fresh folder for one request's files; older ones beyond ``keep`` are removed."""
        folder = self.results / f"{time.time_ns():020d}-{uuid.uuid4().hex[:8]}"
        folder.mkdir()
        for old in sorted(p for p in self.results.iterdir() if p.is_dir())[: -self.keep]:
            shutil.rmtree(old, ignore_errors=True)
        return folder

    @staticmethod
    def write(path: Path, rgb: Any, image: LoadedImage) -> Path:
        """Write ``rgb`` as PNG keeping the input's alpha (upscaled bicubic), greyness, bit depth, ICC and EXIF."""
        from ..io.images import write_image

        alpha = (
            resize(image.alpha[None].float(), tuple(rgb.shape[-2:]))[0] if image.alpha is not None else None
        )
        return write_image(
            path,
            rgb,
            alpha,
            is_gray=image.is_gray,
            bit_depth=image.bit_depth,
            icc_profile=image.icc_profile,
            exif=image.exif,
        )


def bicubic_upscale(image: LoadedImage, opts: Any):
    """The bicubic baseline at the output size (what the slider compares against)."""
    from ..inference.upscale import BicubicBackend

    return BicubicBackend().upscale_tensor(image.rgb, opts)


def thumbnail(image: LoadedImage, side: int = PREVIEW_SIDE) -> Image.Image:
    """A PIL preview of ``image`` whose longer side is at most ``side`` pixels."""
    from ..io.images import tensor_to_pil

    factor = min(1.0, side / max(image.height, image.width))
    size = (max(1, round(image.height * factor)), max(1, round(image.width * factor)))
    rgb = resize(image.rgb, size) if factor < 1 else image.rgb
    alpha = None
    if image.alpha is not None:
        alpha = resize(image.alpha, size) if factor < 1 else image.alpha
    return tensor_to_pil(rgb, alpha, image.is_gray)


# ----------------------------------------------------------------------------------------------------- examples


def default_examples_dir() -> Path | None:
    """The first existing examples folder: packaged ``fluxsr/assets/examples``, ``./examples``, the repo's."""
    candidates = [
        Path(__file__).resolve().parents[1] / "assets" / "examples",
        Path.cwd() / "examples",
        Path(__file__).resolve().parents[3] / "examples",
    ]
    return next((c for c in candidates if c.is_dir()), None)


def list_examples(folder: Path | None, max_bytes: int, limit: int = MAX_EXAMPLES) -> list[Path]:
    """Image files in ``folder`` (recursive, sorted) no larger than ``max_bytes``, at most ``limit`` of them; entries
    that cannot be read (a broken link, a named pipe) are left out."""
    if folder is None or not Path(folder).is_dir():
        return []
    images = sorted(scan_images(Path(folder)).images)
    return [p for p in images if p.stat().st_size <= max_bytes][:limit]


# ----------------------------------------------------------------------------------------------------- the app


class BlockRemoteFiles:
    """ASGI middleware refusing ``/file=<scheme>:...`` requests: Gradio would fetch such URLs for the caller."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        """Answer 403 to remote-file requests, pass everything else on."""
        if scope.get("type") == "http" and REMOTE_FILE.search(scope.get("path", "")):
            await send(
                {
                    "type": "http.response.start",
                    "status": 403,
                    "headers": [(b"content-type", b"text/plain; charset=utf-8")],
                }
            )
            await send({"type": "http.response.body", "body": b"remote files are not served\n"})
            return
        await self.app(scope, receive, send)


def build_app(
    pipeline: FluxSRPipeline,
    examples_dir: Path | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB,
    *,
    workdir: Path | None = None,
    queue_size: int = DEFAULT_QUEUE_SIZE,
) -> gr.Blocks:
    """The Gradio app (queued, one job at a time). ``examples_dir`` None: :func:`default_examples_dir`.

    ``workdir`` (default: a new temporary folder) receives the results. The :class:`Upscaler` is available as
    ``app.fluxsr_upscaler``.
    """
    gr = _gradio()
    workdir = Path(workdir) if workdir is not None else Path(tempfile.mkdtemp(prefix="fluxsr-serve-"))
    limits = ServeLimits(max_pixels, max_upload_mb, queue_size)
    upscaler = Upscaler(pipeline, workdir, limits)
    examples = list_examples(
        examples_dir if examples_dir is not None else default_examples_dir(), int(max_upload_mb * 2**20)
    )
    with gr.Blocks(title="FluxSR", analytics_enabled=False, delete_cache=(900, 3600)) as demo:
        gr.Markdown(upscaler.describe(), elem_id="about")
        with gr.Row():
            with gr.Column(scale=1, min_width=300):
                upload = gr.File(
                    label="Low-quality image",
                    file_types=list(IMAGE_EXTENSIONS),
                    type="filepath",
                    elem_id="upload",
                )
                preview = gr.Image(
                    label="Input", interactive=False, height=220, buttons=["fullscreen"], elem_id="preview"
                )
                plan = gr.Markdown(upscaler.inspect(None, 4)[1], elem_id="plan")
                scale = gr.Slider(
                    MIN_SCALE,
                    limits.max_scale,
                    value=4,
                    step=0.25,
                    label="Scale (output / input)",
                    elem_id="scale",
                )
                color_fix = gr.Radio(
                    list(COLOR_FIXES), value="wavelet", label="Colour fix", elem_id="color-fix"
                )
                tile = gr.Slider(
                    256,
                    2048,
                    value=min(2048, max(256, pipeline.model.spec.tile)),
                    step=64,
                    label="Tile size (output pixels)",
                    elem_id="tile",
                )  # the model's default tile
                run = gr.Button("Upscale", variant="primary", elem_id="run")
            with gr.Column(scale=2, min_width=400):
                slider = gr.ImageSlider(
                    label="Bicubic ◀ ▶ FluxSR (both at output size)",
                    type="filepath",
                    format="png",
                    elem_id="compare",
                    max_height=640,
                )
                download = gr.File(label="Full-resolution PNG", interactive=False, elem_id="download")
                info = gr.Markdown(elem_id="info")
        if examples:
            gr.Examples(
                [[str(p)] for p in examples],
                inputs=[upload],
                label="Examples: click one, then Upscale",
                example_labels=[p.name for p in examples],
            )
        look = {
            "fn": upscaler.inspect,
            "inputs": [upload, scale],
            "outputs": [preview, plan],
            "concurrency_limit": 2,
            "concurrency_id": "inspect",
            "show_progress": "hidden",
            "api_visibility": "private",
        }
        upload.change(**look)
        scale.release(**look)
        run.click(
            upscaler.upscale,
            [upload, scale, color_fix, tile],
            [slider, download, info],
            concurrency_limit=1,
            concurrency_id="upscale",
            api_name="upscale",
        )
    demo.queue(default_concurrency_limit=1, max_size=queue_size)
    demo.fluxsr_upscaler = upscaler
    return demo


def launch(
    demo: gr.Blocks,
    host: str = DEFAULT_HOST,
    port: int | None = DEFAULT_PORT,
    max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB,
    *,
    block: bool = True,
) -> Any:
    """Serve ``demo``: no share link, no extra allowed paths, upload cap, remote ``/file=`` requests refused.

    No server-side rendering (no Node), no PWA, no MCP server and no run history (it would point at pruned files).
    """
    from starlette.middleware import Middleware

    return demo.launch(
        server_name=host,
        server_port=port,
        share=False,
        inbrowser=False,
        allowed_paths=[],
        max_file_size=int(max_upload_mb * 2**20),
        show_error=False,
        ssr_mode=False,
        pwa=False,
        mcp_server=False,
        run_history=False,
        prevent_thread_lock=not block,
        app_kwargs={"middleware": [Middleware(BlockRemoteFiles)]},
    )


# ----------------------------------------------------------------------------------------------------- command


def add_serve_arguments(p: argparse.ArgumentParser) -> None:
    """The server's own options (the model options come from the CLI's shared group)."""
    g = p.add_argument_group("server")
    g.add_argument(
        "--host",
        default=DEFAULT_HOST,
        help="address to bind (default 127.0.0.1: this machine only; 0.0.0.0 opens it to the network)",
    )
    g.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT})")
    g.add_argument(
        "--max-pixels",
        type=int,
        default=DEFAULT_MAX_PIXELS,
        help=f"largest OUTPUT (width x height) per request (default {DEFAULT_MAX_PIXELS})",
    )
    g.add_argument(
        "--max-upload-mb",
        type=float,
        default=DEFAULT_MAX_UPLOAD_MB,
        help=f"upload size cap in MB (default {DEFAULT_MAX_UPLOAD_MB:g})",
    )
    g.add_argument(
        "--queue-size",
        type=int,
        default=DEFAULT_QUEUE_SIZE,
        help=f"jobs allowed to wait in the queue (default {DEFAULT_QUEUE_SIZE})",
    )
    g.add_argument(
        "--examples",
        type=Path,
        default=None,
        help="folder of example images (default: the package's or ./examples when present)",
    )


def check_server_args(args: argparse.Namespace) -> None:
    """``ValueError`` for limits that make no sense."""
    if args.max_pixels < 1:
        raise ValueError(f"--max-pixels must be positive, got {args.max_pixels}")
    if not args.max_upload_mb > 0:
        raise ValueError(f"--max-upload-mb must be positive, got {args.max_upload_mb}")
    if args.queue_size < 1:
        raise ValueError(f"--queue-size must be at least 1, got {args.queue_size}")
    if not 0 <= args.port <= 65535:
        raise ValueError(f"--port must be in 0..65535, got {args.port}")


def stop_on_sigterm() -> None:
    """Turn SIGTERM into KeyboardInterrupt so Gradio closes and the temporary folder is removed."""

    def interrupt(_signum, _frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)


def run_server(args: argparse.Namespace) -> int:
    """``fluxsr serve``: load the model from the CLI's model options, build the app, serve until interrupted."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    check_server_args(args)
    from ..cli.commands import _pipeline

    pipe = _pipeline(args)
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(
            f"warning: serving on {args.host}: anyone who can reach this machine can use the demo",
            file=sys.stderr,
        )
    with tempfile.TemporaryDirectory(prefix="fluxsr-serve-") as tmp:
        workdir = Path(tmp)
        os.environ["GRADIO_TEMP_DIR"] = str(workdir / "gradio")
        os.environ["GRADIO_EXAMPLES_CACHE"] = str(workdir / "examples-cache")
        print(f"fluxsr serve: temporary folder {workdir}", file=sys.stderr, flush=True)
        demo = build_app(
            pipe,
            args.examples,
            args.max_pixels,
            args.max_upload_mb,
            workdir=workdir,
            queue_size=args.queue_size,
        )
        stop_on_sigterm()
        try:
            launch(demo, args.host, args.port, args.max_upload_mb)
        except OSError as error:
            print(f"error: cannot serve on {args.host}:{args.port}: {one_line(str(error))}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            demo.close()
    return 0


def build_parser() -> argparse.ArgumentParser:
    """``python -m fluxsr.webapp``'s parser: the same options as ``fluxsr serve``."""
    from ..cli.commands import _model_args

    parser = argparse.ArgumentParser(prog="fluxsr serve", description="FluxSR web demo (Gradio).")
    add_serve_arguments(parser)
    _model_args(parser)
    return parser


def serve(argv: list[str] | None = None) -> int:
    """Parse ``argv`` like ``fluxsr serve`` and run the server (what ``python -m fluxsr.webapp`` does)."""
    args = build_parser().parse_args(argv)
    try:
        return run_server(args)
    except (FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


main = serve

if __name__ == "__main__":
    sys.exit(serve())
