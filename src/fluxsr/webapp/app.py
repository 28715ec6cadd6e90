"""The Gradio page of ``fluxsr serve`` and the server around it: examples, the page, the launch with its guards,
and :func:`run_server`, which takes an already-loaded pipeline and :class:`ServerOptions`."""

from __future__ import annotations

import os
import re
import signal
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..inference.color import COLOR_FIXES
from ..inference.pipeline import FluxSRPipeline
from ..io.images import IMAGE_EXTENSIONS, scan_images
from .checks import MIN_SCALE, import_gradio, one_line
from .handlers import DEFAULT_MAX_PIXELS, DEFAULT_MAX_UPLOAD_MB, DEFAULT_QUEUE_SIZE, ServeLimits, Upscaler

if TYPE_CHECKING:  # pragma: no cover
    import gradio as gr

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 7860
MAX_EXAMPLES = 12
REMOTE_FILE = re.compile(r"/file=\s*[a-z][a-z0-9+.-]*:", re.IGNORECASE)
PACKAGE_DIR = Path(__file__).resolve().parents[1]
"""``src/fluxsr`` (or the installed package): ``assets/`` lives there."""
FIDELITY_LABEL = "Fidelity map: black agrees with the input, purple-red-yellow-white disagrees (50 to 20 dB)"


# ----------------------------------------------------------------------------------------------------- examples


def default_examples_dir() -> Path | None:
    """The first existing examples folder: packaged ``fluxsr/assets/examples``, ``./examples``, the repo's."""
    candidates = [
        PACKAGE_DIR / "assets" / "examples",
        Path.cwd() / "examples",
        PACKAGE_DIR.parents[1] / "examples",
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


@dataclass(frozen=True)
class Controls:
    """The page's inputs: the upload, its preview and plan line, the settings and the button."""

    upload: Any
    preview: Any
    plan: Any
    scale: Any
    color_fix: Any
    tile: Any
    fidelity: Any
    run: Any


@dataclass(frozen=True)
class Results:
    """The page's outputs: the before/after slider, the download and the info line."""

    slider: Any
    download: Any
    info: Any
    fidelity: Any


def input_column(gr: Any, upscaler: Upscaler) -> Controls:
    """The left column: upload, preview, sizes, scale, colour fix, tile, the Upscale button."""
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
            upscaler.limits.max_scale,
            value=4,
            step=0.25,
            label="Scale (output / input)",
            elem_id="scale",
        )
        color_fix = gr.Radio(list(COLOR_FIXES), value="wavelet", label="Colour fix", elem_id="color-fix")
        tile = gr.Slider(
            256,
            2048,
            value=min(2048, max(256, upscaler.pipeline.model.spec.tile)),
            step=64,
            label="Tile size (output pixels)",
            elem_id="tile",
        )  # the model's default tile
        fidelity = gr.Checkbox(False, label="Fidelity map (where the result disagrees with the input)")
        run = gr.Button("Upscale", variant="primary", elem_id="run")
    return Controls(upload, preview, plan, scale, color_fix, tile, fidelity, run)


def output_column(gr: Any) -> Results:
    """The right column: the before/after slider, the download, the info line."""
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
        fidelity = gr.Image(
            label=FIDELITY_LABEL, type="filepath", interactive=False, visible=False, elem_id="fidelity"
        )
    return Results(slider, download, info, fidelity)


def connect(controls: Controls, results: Results, upscaler: Upscaler) -> None:
    """The events: a preview on upload or scale change (cheap, two at a time), the fidelity view shown when its box
    is ticked, the job on click (one at a time)."""
    look = {
        "fn": upscaler.inspect,
        "inputs": [controls.upload, controls.scale],
        "outputs": [controls.preview, controls.plan],
        "concurrency_limit": 2,
        "concurrency_id": "inspect",
        "show_progress": "hidden",
        "api_visibility": "private",
    }
    controls.upload.change(**look)
    controls.scale.release(**look)
    gr = import_gradio()
    controls.fidelity.change(
        lambda on: gr.update(visible=bool(on)),
        controls.fidelity,
        results.fidelity,
        show_progress="hidden",
        api_visibility="private",
    )
    controls.run.click(
        upscaler.upscale,
        [controls.upload, controls.scale, controls.color_fix, controls.tile, controls.fidelity],
        [results.slider, results.download, results.info, results.fidelity],
        concurrency_limit=1,
        concurrency_id="upscale",
        api_name="upscale",
    )


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
    gr = import_gradio()
    workdir = Path(workdir) if workdir is not None else Path(tempfile.mkdtemp(prefix="fluxsr-serve-"))
    upscaler = Upscaler(pipeline, workdir, ServeLimits(max_pixels, max_upload_mb, queue_size))
    examples = list_examples(
        examples_dir if examples_dir is not None else default_examples_dir(), int(max_upload_mb * 2**20)
    )
    with gr.Blocks(title="FluxSR", analytics_enabled=False, delete_cache=(900, 3600)) as demo:
        gr.Markdown(upscaler.describe(), elem_id="about")
        with gr.Row():
            controls = input_column(gr, upscaler)
            results = output_column(gr)
        if examples:
            gr.Examples(
                [[str(p)] for p in examples],
                inputs=[controls.upload],
                label="Examples: click one, then Upscale",
                example_labels=[p.name for p in examples],
            )
        connect(controls, results, upscaler)
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


# ----------------------------------------------------------------------------------------------------- the server


@dataclass(frozen=True)
class ServerOptions:
    """Where the server listens and what it offers: address, port, example images, the per-request limits."""

    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    examples: Path | None = None
    limits: ServeLimits = ServeLimits()


def stop_on_sigterm() -> None:
    """Turn SIGTERM into KeyboardInterrupt so Gradio closes and the temporary folder is removed."""

    def interrupt(_signum, _frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)


def run_server(pipeline: FluxSRPipeline, options: ServerOptions) -> int:
    """Build the app around ``pipeline`` and serve it until interrupted (Ctrl-C, SIGTERM); 2 when the address
    cannot be bound."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    host, port, limits = options.host, options.port, options.limits
    if host not in ("127.0.0.1", "localhost", "::1"):
        print(
            f"warning: serving on {host}: anyone who can reach this machine can use the demo", file=sys.stderr
        )
    with tempfile.TemporaryDirectory(prefix="fluxsr-serve-") as tmp:
        workdir = Path(tmp)
        os.environ["GRADIO_TEMP_DIR"] = str(workdir / "gradio")
        os.environ["GRADIO_EXAMPLES_CACHE"] = str(workdir / "examples-cache")
        print(f"fluxsr serve: temporary folder {workdir}", file=sys.stderr, flush=True)
        demo = build_app(
            pipeline,
            options.examples,
            limits.max_pixels,
            limits.max_upload_mb,
            workdir=workdir,
            queue_size=limits.queue_size,
        )
        stop_on_sigterm()
        try:
            launch(demo, host, port, limits.max_upload_mb)
        except OSError as error:
            print(f"error: cannot serve on {host}:{port}: {one_line(str(error))}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            demo.close()
    return 0
