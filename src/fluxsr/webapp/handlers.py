"""The app's handlers around one pipeline (:class:`Upscaler`): plain methods, testable without a server."""

from __future__ import annotations

import shutil
import time
import traceback
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..inference.fidelity import fidelity_map
from ..inference.oom import is_oom
from ..inference.pipeline import FluxSRPipeline, NonFiniteOutputError, UpscaleOptions
from ..inference.upscale import BicubicBackend
from ..io.images import LoadedImage, resize, tensor_to_pil, write_image, write_like
from .checks import (
    MAX_SCALE,
    check_budget,
    check_color_fix,
    check_scale,
    check_tile,
    fail,
    import_gradio,
    largest_scale,
    megapixels,
    output_size,
    overlap_for,
    read_upload,
    safe_stem,
    seconds,
    upload_path,
)

if TYPE_CHECKING:  # pragma: no cover
    from PIL import Image

DEFAULT_MAX_PIXELS = 2048 * 2048
DEFAULT_MAX_UPLOAD_MB = 20.0
DEFAULT_QUEUE_SIZE = 16
KEEP_RESULTS = 8
PREVIEW_SIDE = 512


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
        gr = import_gradio()
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

    def upscale(
        self, file: Any, scale: Any, color_fix: Any, tile: Any, fidelity: Any = False
    ) -> tuple[tuple[str, str], str, str, str | None]:
        """Upscale one upload: ((bicubic PNG, fluxsr PNG) for the slider, fluxsr PNG to download, info markdown,
        and with ``fidelity`` the fidelity map PNG (:func:`fluxsr.inference.fidelity.fidelity_map`), else None).

        Raises ``gr.Error`` with a one-line message for anything that goes wrong; unexpected errors are logged
        with their traceback on the server and reported in one line.
        """
        gr = import_gradio()
        try:
            return self._upscale(file, scale, color_fix, tile, bool(fidelity))
        except gr.Error:
            raise
        except Exception as error:
            if is_oom(error):
                fail("Out of memory: try a smaller tile size, a smaller scale or a smaller image.")
            traceback.print_exc()
            fail(f"Internal error ({type(error).__name__}): {error}")

    def _upscale(
        self, file: Any, scale: Any, color_fix: Any, tile: Any, fidelity: bool
    ) -> tuple[tuple[str, str], str, str, str | None]:
        """:meth:`upscale` without the last-resort error handling."""
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
        result = write_like(folder / f"{name}_fluxsr.png", rgb, image)
        bicubic = write_like(folder / f"{name}_bicubic.png", bicubic_upscale(image, opts), image)
        heat = (
            write_image(folder / f"{name}_fidelity.png", fidelity_map(rgb, image.rgb)) if fidelity else None
        )
        total_s = time.perf_counter() - start
        info = self.report(image, (out_h, out_w), opts, model_s, total_s)
        return (str(bicubic), str(result)), str(result), info, None if heat is None else str(heat)

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


def bicubic_upscale(image: LoadedImage, opts: Any):
    """The bicubic baseline at the output size (what the slider compares against)."""
    return BicubicBackend().upscale_tensor(image.rgb, opts)


def thumbnail(image: LoadedImage, side: int = PREVIEW_SIDE) -> Image.Image:
    """A PIL preview of ``image`` whose longer side is at most ``side`` pixels."""
    factor = min(1.0, side / max(image.height, image.width))
    size = (max(1, round(image.height * factor)), max(1, round(image.width * factor)))
    rgb = resize(image.rgb, size) if factor < 1 else image.rgb
    alpha = None
    if image.alpha is not None:
        alpha = resize(image.alpha, size) if factor < 1 else image.alpha
    return tensor_to_pil(rgb, alpha, image.is_gray)
