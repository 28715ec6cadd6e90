"""One-step super-resolution: the FluxSR inference pipeline.

resize to the target size -> pad to a multiple of 16 -> VAE encode (tiled) -> one transformer step from T_L to 0
(tiled, each tile at its global position) -> VAE decode (tiled) -> crop -> colour fix against the globally
upscaled input. Works on RGB tensors in [0, 1]; file formats, alpha, grey and 16-bit live in :mod:`fluxsr.io.images`
and :mod:`fluxsr.inference.upscale`.
"""

from __future__ import annotations

import math
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, replace
from fractions import Fraction

import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from ..io.images import MAX_PIXELS, check_output_pixels, pil_to_tensor, resize, target_size, tensor_to_pil
from ..model.flow import one_step
from ..model.loader import load_model
from ..model.model import FluxSRModel, velocity
from . import memory, oom, probes
from .color import color_fix, color_fix_tiled
from .offload import device_weight_bytes, resident_weights
from .placement import Placement, place_model
from .quantize import check_quantize
from .tiling import TileSpec, check_tile_overlap, latent_tiles, snapped, tiled_map


class NonFiniteOutputError(RuntimeError):
    """The model produced NaN or Inf (typically fp16 overflow): nothing is written."""


@dataclass
class UpscaleOptions:
    """Per-call settings.

    scale: output/input size ratio (float; ignored when ``long_side`` is given).
    long_side: make the longer output side this many pixels instead.
    color_fix: ``wavelet`` (default), ``adain`` or ``none`` (see :mod:`fluxsr.inference.color`).
    tile: tile edge in OUTPUT pixels for all three stages, >= 1 (rounded to the model's multiple, 16 for FLUX);
        None takes the model's default (``ModelSpec.tile``: 1024 for FLUX, trained at up to ~2 MP).
    overlap: overlap between tiles in output pixels, 0 to half the tile; None takes the model's default.
    tile_batch: tiles per forward pass in every stage (each keeps its own position ids); 1 (default) runs tiles
        one at a time, 0 lets the memory planner choose (up to ``memory.AUTO_TILE_BATCH``). The planner lowers it
        when memory is short.
    max_pixels: the largest output (width x height) :meth:`size_for` allows (None: no cap); a scale or long side
        over it even for a 1-pixel image is refused here.
    """

    scale: float = 4.0
    long_side: int | None = None
    color_fix: str = "wavelet"
    tile: int | None = None
    overlap: int | None = None
    tile_batch: int = 1
    max_pixels: int | None = MAX_PIXELS

    def __post_init__(self):
        if self.tile_batch is None or self.tile_batch < 0:
            raise ValueError(f"tile_batch must be >= 0 (0: chosen from memory), got {self.tile_batch}")
        if self.long_side is not None and not self.long_side >= 1:
            raise ValueError(f"long_side must be >= 1 pixel, got {self.long_side}")
        if self.scale is None or not (math.isfinite(self.scale) and self.scale > 0):
            raise ValueError(f"scale must be a finite number > 0, got {self.scale}")
        check_tile_overlap(self.tile, self.overlap)
        if self.max_pixels is not None and not self.max_pixels >= 1:
            raise ValueError(f"max_pixels must be >= 1, got {self.max_pixels}")
        # the smallest output any image can get: a 1x1 input scaled, or long_side x 1
        least = self.long_side if self.long_side is not None else math.prod(target_size(1, 1, self.scale))
        if self.max_pixels is not None and least > self.max_pixels:
            asked = f"long side {self.long_side}" if self.long_side is not None else f"scale {self.scale:g}"
            raise ValueError(
                f"{asked} is too large: even a 1-pixel image would be over the limit of {self.max_pixels} "
                "output pixels (--max-pixels)"
            )

    def size_for(self, h: int, w: int) -> tuple[int, int]:
        """Output (H, W) for an (h, w) input: ``long_side`` when given, ``scale`` otherwise; ValueError (before
        any work) when it is over ``max_pixels``."""
        size = target_size(h, w, None if self.long_side is not None else self.scale, self.long_side)
        check_output_pixels(size, self.max_pixels)
        return size


RANGE_TOLERANCE = 1e-3
"""How far outside [0, 1] float pixels may stray (rounding) before they are refused; they are clamped."""


def as_rgb(image) -> Tensor:
    """Check an RGB tensor for the pipeline: (3, H, W), float in [0, 1] or uint8 (scaled by 1/255).

    ``TypeError`` for anything but a tensor (a numpy (H, W, 3) array: ``torch.from_numpy(a).permute(2, 0, 1)``);
    ``ValueError`` for other shapes, other integer types, NaN/Inf or floats outside [0, 1] beyond
    :data:`RANGE_TOLERANCE` (a 0..255 float image, say). Returns float values clamped to [0, 1].
    """
    if not isinstance(image, Tensor):
        hint = (
            " (numpy (H, W, 3): use torch.from_numpy(a).permute(2, 0, 1))"
            if hasattr(image, "__array__")
            else ""
        )
        raise TypeError(f"expected a PIL image or a torch tensor (3, H, W), got {type(image).__name__}{hint}")
    shape = tuple(image.shape)
    if len(shape) != 3 or shape[0] != 3 or min(shape) < 1:
        hint = "; channels last? use .permute(2, 0, 1)" if len(shape) == 3 and shape[-1] == 3 else ""
        raise ValueError(f"expected an RGB tensor of shape (3, H, W), got {shape}{hint}")
    if image.dtype == torch.uint8:
        return image.float() / 255
    if not image.is_floating_point():
        raise ValueError(f"expected float values in [0, 1] or uint8, got dtype {image.dtype}")
    if not torch.isfinite(image).all():
        raise ValueError("the input image holds NaN or Inf values")
    low, high = image.min().item(), image.max().item()
    if low < -RANGE_TOLERANCE or high > 1 + RANGE_TOLERANCE:
        raise ValueError(f"expected float values in [0, 1], got {low:g}..{high:g} (0..255? divide by 255)")
    return image.clamp(0, 1)


def sync(device: torch.device) -> None:
    """Wait for queued device work (CUDA), so wall-clock times cover it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextmanager
def timed(times: dict[str, float], name: str, device: torch.device):
    """Add the wall time of the block (device work synchronised on both ends) to ``times[name]`` in seconds."""
    sync(device)
    start = time.perf_counter()
    yield
    sync(device)
    times[name] = times.get(name, 0.0) + time.perf_counter() - start


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def resolve_device(device=None) -> torch.device:
    """``device`` (a name or torch.device) checked to exist here, or :func:`default_device` for None.

    A bad name or an accelerator this torch build or machine lacks is a ValueError (a one-line CLI error), not a
    failure deep inside the first tensor move."""
    if device is None:
        return default_device()
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ValueError(f"unknown device {device!r}: use cpu, cuda, cuda:N or mps") from e
    if dev.type == "cuda" and (
        not torch.cuda.is_available() or (dev.index is not None and dev.index >= torch.cuda.device_count())
    ):
        raise ValueError(
            f"device {device!r}: CUDA is not available here (torch {torch.__version__}, "
            f"{torch.cuda.device_count()} GPU(s))"
        )
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device {device!r}: MPS is not available here")
    return dev


def default_dtype(device: torch.device) -> torch.dtype:
    """bf16 on CUDA (fp16 overflows to black images in FLUX), fp32 elsewhere."""
    return torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32


def check_dtype(dtype: torch.dtype, allow_fp16: bool) -> None:
    if dtype == torch.float16 and not allow_fp16:
        raise ValueError(
            "fp16 makes FLUX overflow (black or NaN images); use bf16 or fp32, or force it with "
            "allow_fp16=True / --force-fp16"
        )


class FluxSRPipeline:
    """One-step x4 (any float scale) real-world super-resolution with a FluxSR model.

    >>> pipe = FluxSRPipeline.from_pretrained("tiny")
    >>> out = pipe(pil_image, scale=4)
    """

    def __init__(
        self,
        model: FluxSRModel,
        device=None,
        dtype=None,
        *,
        allow_fp16: bool = False,
        prepare: bool = True,
        offload: str = "auto",
        quantize: str = "none",
        max_memory: int | None = None,
    ):
        """``prepare=False`` uses the model as it is (already placed; training keeps its trainable state).

        ``offload`` (``auto``, ``none``, ``model``, ``blocks``: :mod:`fluxsr.inference.offload`) and ``quantize``
        (``none``, ``int8``, ``fp8``: :mod:`fluxsr.inference.quantize`) place the weights
        (:func:`fluxsr.inference.placement.place_model`); ``max_memory`` caps the memory plans (bytes, weights
        included). A budget no offload fits is a ValueError here, before any image."""
        self.device, self.dtype = self.settings(device, dtype, allow_fp16)
        self.placement: Placement | None = None  # None: weights not counted by the planner (prepare=False)
        if prepare:
            self.placement = place_model(model, self.device, self.dtype, offload, quantize, max_memory)
        if self.placement and (self.placement.budget or self.placement.describe_always):
            print(f"fluxsr: {self.placement.describe()}", file=sys.stderr)
        self.model = model
        self.name = f"fluxsr:{model.spec.name}"  # the batch runner's backend name
        self.timings: dict[str, float] = {}
        self.peaks: dict[str, int] = {}  # peak bytes per stage (CUDA allocator, or CPU peak RSS)
        self.max_memory = max_memory  # cap for the memory planner (bytes, weights included)
        self.plan: memory.MemoryPlan | None = None  # the last image's memory plan
        self.tiles: TileSpec | None = None  # the pixel tiles the last image ran with (after any retry)
        self._stage = ""

    @classmethod
    def from_pretrained(
        cls,
        name=None,
        device=None,
        dtype=None,
        *,
        allow_fp16: bool = False,
        offload: str = "auto",
        quantize: str = "none",
        max_memory: int | None = None,
        **load_kwargs,
    ) -> FluxSRPipeline:
        """Load a model by name or path (see :func:`fluxsr.model.loader.load_model`) and build the pipeline; the device,
        dtype and quantisation are checked before the (possibly minutes-long) load, and the weights are read straight
        into the dtype (no float32 host copy of a bf16 model). ``offload``, ``quantize``, ``max_memory``: see
        :meth:`__init__`."""
        device, dtype = cls.settings(device, dtype, allow_fp16)
        check_quantize(quantize, device)
        model = load_model(name, dtype=dtype, **load_kwargs)
        low_vram = {"offload": offload, "quantize": quantize, "max_memory": max_memory}
        return cls(model, device, dtype, allow_fp16=allow_fp16, **low_vram)

    @staticmethod
    def settings(device=None, dtype=None, allow_fp16: bool = False) -> tuple[torch.device, torch.dtype]:
        """(device, dtype) checked: the device exists here (:func:`resolve_device`), the dtype is allowed
        (:func:`check_dtype`); defaults: CUDA if available, bf16 there and fp32 elsewhere."""
        device = resolve_device(device)
        dtype = dtype or default_dtype(device)
        check_dtype(dtype, allow_fp16)
        return device, dtype

    def resident_weights(self) -> dict:
        """:func:`fluxsr.inference.memory.plan_for`'s weight arguments: the bytes each stage keeps on the device
        under this pipeline's placement and those on it now (none when the pipeline did not place the model)."""
        if self.placement is None:
            return {}
        resident = resident_weights(self.placement.weights, self.placement.offload, self.device.type)
        return {"resident": resident, "on_device": device_weight_bytes(self.model, self.device)}

    # -- stages ---------------------------------------------------------------------------------------------------

    @contextmanager
    def _timed(self, stage: str):
        self._stage = stage
        probes.reset_peak(self.device)
        with timed(self.timings, stage, self.device):
            yield
        self.peaks[stage] = max(self.peaks.get(stage, 0), probes.read_peak(self.device))

    def pixel_tiles(self, opts: UpscaleOptions) -> TileSpec:
        """The pixel tiles of ``opts`` (its tile and overlap, else the model's), snapped to the model's multiple."""
        spec = self.model.spec
        return snapped(
            opts.tile or spec.tile,
            spec.overlap if opts.overlap is None else opts.overlap,
            self.model.multiple,
        )

    def _latent_tiles(self, opts: UpscaleOptions) -> TileSpec:
        return latent_tiles(self.pixel_tiles(opts), self.model.vae_scale)

    @staticmethod
    def _batch(opts: UpscaleOptions) -> int:
        return max(1, opts.tile_batch or 1)

    def encode(self, x: Tensor, opts: UpscaleOptions) -> Tensor:
        """Images (B, 3, H, W) in [0, 1] -> normalised latents (:meth:`FluxSRModel.encode`); the tiles' VAE
        latents are blended first and normalised after."""
        scale = Fraction(1, self.model.vae_scale)
        z = tiled_map(
            lambda tiles, _offsets: self.model.vae_latent(tiles),
            x,
            self.pixel_tiles(opts),
            scale,
            batch=self._batch(opts),
        )
        return self.model.normalize(z)

    def decode(self, z: Tensor, opts: UpscaleOptions, out_device: torch.device | None = None) -> Tensor:
        """Normalised latents -> images in [0, 1] (:meth:`FluxSRModel.decode`, not clamped), tiled;
        ``out_device`` blends the tiles there (CPU RAM)."""

        def dec(tiles: Tensor, _offsets) -> Tensor:
            out = self.model.decode(tiles)
            return out if out_device is None else out.to(out_device)

        return tiled_map(dec, z, self._latent_tiles(opts), self.model.vae_scale, batch=self._batch(opts))

    def transform(self, z_l: Tensor, opts: UpscaleOptions) -> Tensor:
        """One step from ``T_L`` to 0 on the LR latent: ``z_H = z_L - T_L * v(z_L, T_L)``, tiled."""
        t_l = self.model.spec.t_l

        def step(tiles: Tensor, offsets) -> Tensor:
            return one_step(tiles.float(), velocity(self.model, tiles, t_l, offsets).float(), t_l)

        return tiled_map(step, z_l, self._latent_tiles(opts), 1, batch=self._batch(opts))

    # -- whole image ----------------------------------------------------------------------------------------------

    @torch.inference_mode()
    def upscale_tensor(self, rgb: Tensor, opts: UpscaleOptions | None = None) -> Tensor:
        """Upscale one RGB image (3, h, w) in [0, 1]; returns (3, H, W) float32 on the CPU, in [0, 1].

        The input is checked by :func:`as_rgb` (uint8 is accepted and scaled; bad shapes, NaN and out-of-range
        values raise ``ValueError``, non-tensors ``TypeError``).

        Tiles come from the memory planner (:mod:`fluxsr.inference.memory`): ``opts.tile`` unless the estimate does not fit
        the free memory (or ``self.max_memory``); tiles per pass likewise (``opts.tile_batch``, chosen when 0). An
        ``opts.overlap`` over half the model's tile (no ``opts.tile``) and an output over ``opts.max_pixels`` are
        ValueErrors before any work. Out of memory, the run is retried with the plan's next, smaller
        plan (:meth:`fluxsr.inference.memory.MemoryPlan.after_oom`).
        """
        opts = opts or UpscaleOptions()
        check_tile_overlap(opts.tile or self.model.spec.tile, opts.overlap)
        rgb = as_rgb(rgb)
        out_hw = opts.size_for(*rgb.shape[-2:])
        self.plan = plan = memory.plan_for(
            self,
            out_hw,
            opts.tile,
            self.max_memory,
            overlap=opts.overlap,
            requested_batch=opts.tile_batch,
            **self.resident_weights(),
        )
        if plan.changed:
            print(f"fluxsr: {plan.describe()}", file=sys.stderr)

        def attempt() -> Tensor:
            tiles = replace(
                opts, tile=plan.tile, overlap=plan.overlap_for(opts.overlap), tile_batch=plan.batch
            )
            return self._upscale(rgb, tiles, out_hw, plan.full_image_on_device)

        def after_oom(_error: BaseException) -> bool:
            retry = plan.after_oom(self._stage)
            if retry:
                print(f"fluxsr: {plan.retries[-1]}", file=sys.stderr)
            return retry

        return oom.run_with_oom_retry(attempt, after_oom, self.device)

    def _upscale(self, rgb: Tensor, opts: UpscaleOptions, out_hw: tuple[int, int], on_device: bool) -> Tensor:
        """One attempt at :meth:`upscale_tensor` with fixed tiles; ``on_device=False`` keeps the full-size image
        in CPU RAM (resize there, decoded tiles blended there, colour fix tile by tile on the device)."""
        self.timings, self.peaks, self.tiles = {}, {}, self.pixel_tiles(opts)
        out_h, out_w = out_hw
        home = self.device if on_device else torch.device("cpu")
        with self._timed("resize"):
            ref = resize(rgb.float().unsqueeze(0).to(home), (out_h, out_w))
            m = self.model.multiple
            pad_h, pad_w = -out_h % m, -out_w % m
            x = F.pad(ref, (0, pad_w, 0, pad_h), mode="replicate") if pad_h or pad_w else ref
        with self._timed("encode"):
            z_l = self.encode(x, opts).float()
        with self._timed("transformer"):
            z_h = self.transform(z_l, opts)
        with self._timed("decode"):
            y = self.decode(z_h, opts, None if on_device else home).float()[:, :, :out_h, :out_w]
        with self._timed("color_fix"):
            if on_device:
                y = color_fix(y, ref, opts.color_fix).clamp(0, 1)
            else:
                y = color_fix_tiled(y, ref, opts.color_fix, opts.tile, self.device)
        if not torch.isfinite(y).all():
            raise NonFiniteOutputError(
                f"the model produced NaN/Inf (dtype {self.dtype}); try --dtype bf16 or fp32"
            )
        return y[0].cpu()

    def __call__(
        self,
        image,
        scale: float = 4.0,
        long_side: int | None = None,
        color_fix: str = "wavelet",
        tile: int | None = None,
        overlap: int | None = None,
        tile_batch: int = 1,
        max_pixels: int | None = MAX_PIXELS,
    ):
        """Upscale a PIL image (returns PIL, same mode family) or a tensor (3, h, w) in [0, 1] or uint8 (returns a
        float tensor in [0, 1]); anything else raises ``TypeError`` (see :func:`as_rgb`). Settings are those of
        :class:`UpscaleOptions` (bad ones raise ``ValueError`` before any work)."""
        opts = UpscaleOptions(scale, long_side, color_fix, tile, overlap, tile_batch, max_pixels)
        if not isinstance(image, Image.Image):
            return self.upscale_tensor(image, opts)

        rgb, alpha, is_gray = pil_to_tensor(image)
        out = self.upscale_tensor(rgb, opts)
        out_alpha = resize(alpha.unsqueeze(0), out.shape[-2:])[0] if alpha is not None else None
        return tensor_to_pil(out, out_alpha, is_gray)
