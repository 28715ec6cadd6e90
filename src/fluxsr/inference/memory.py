"""Memory planning for the tiled pipeline: a calibrated cost model, the tile planner and the out-of-memory policy.

- Cost model (:class:`CostModel`): bytes each stage needs for one tile, as constants per pixel / per token
  calibrated on the FLUX VAE and FLUX.1-dev blocks (docs/performance.md says how), plus what the whole image costs
  while it lives on the device (the resized reference, latents, blend accumulators, the colour fix temporaries).
- Planner (:func:`plan_memory`): the largest tile (at most the one asked for, halving down) whose stages fit the
  budget (free device memory from ``torch.cuda.mem_get_info``, or ``MemAvailable`` on the CPU, or a cap given as
  ``max_memory``); when the full-size image tensors do not fit beside it, the plan moves them off the device
  (resize on the CPU, decoded tiles blended on the CPU, colour fix tile by tile:
  :func:`fluxsr.inference.color.color_fix_tiled`).
- Out of memory (:meth:`MemoryPlan.after_oom`, the whole policy): after a ``torch.cuda.OutOfMemoryError``, a
  ``MemoryError`` or the CPU allocator's failure, the next smaller plan (fewer tiles per pass, then half the tile,
  the full image off the device) or giving up; :func:`run_with_oom_retry` runs an attempt until it fits.

Measuring memory (peaks, RSS, what is free) lives in :mod:`fluxsr.inference.probes`.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

import torch

from .probes import cpu_available, cpu_rss
from .tiling import snapped, tile_count

GiB = 1 << 30
AUTO_TILE_BATCH = (
    4  # most tiles per forward pass the planner picks on its own (docs/performance.md, "Memory planner")
)


def device_budget(device: torch.device | str, max_memory: int | None = None) -> tuple[int, str]:
    """(bytes the next run may allocate on ``device``, where that number came from).

    CUDA: free memory (``mem_get_info``) plus what PyTorch's cache holds unused; CPU: ``MemAvailable``.
    ``max_memory`` caps the TOTAL for this process (weights included): what is already allocated is taken off.
    """
    device = torch.device(device)
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        used = torch.cuda.memory_allocated(device)
        avail, source = free + torch.cuda.memory_reserved(device) - used, "cuda mem_get_info"
    else:
        used = cpu_rss()
        avail, source = cpu_available(), "MemAvailable"
    if max_memory is not None:
        capped = max(0, max_memory - used)
        if capped < avail:
            return capped, f"max_memory {format_bytes(max_memory)} - {format_bytes(used)} in use"
    return avail, source


# ----------------------------------------------------------------------------------------------------------------
# Units
# ----------------------------------------------------------------------------------------------------------------

_UNITS = {
    "": 1,
    "b": 1,
    "k": 1e3,
    "kb": 1e3,
    "m": 1e6,
    "mb": 1e6,
    "g": 1e9,
    "gb": 1e9,
    "t": 1e12,
    "tb": 1e12,
    "kib": 1 << 10,
    "mib": 1 << 20,
    "gib": 1 << 30,
    "tib": 1 << 40,
}


MIN_MEMORY = 1 << 20  # a memory cap below 1 MiB is a typo ("1.5" for "1.5GiB"), not a plan


def parse_bytes(text: str | int) -> int:
    """``"40GiB"``, ``"40G"`` (10^9), ``"512MiB"``, ``"4e10"`` or an int -> bytes (at least :data:`MIN_MEMORY`)."""
    value: float | None = float(text) if isinstance(text, int) else None
    m = (
        None
        if value is not None
        else re.fullmatch(r"\s*([0-9.]+(?:[eE][+-]?[0-9]+)?)\s*([A-Za-z]*)\s*", str(text))
    )
    if m and m.group(2).lower() in _UNITS:
        try:
            value = float(m.group(1)) * _UNITS[m.group(2).lower()]
        except ValueError:
            value = None
    if value is None or not math.isfinite(value):
        raise ValueError(f"cannot read a memory size from {text!r} (e.g. 40GiB, 512MiB, 8G)")
    if value < MIN_MEMORY:
        raise ValueError(f"memory size {text!r} is under 1 MiB: give a unit, e.g. {text}GiB")
    return int(value)


def format_bytes(n: float) -> str:
    """Bytes in GiB/MiB with two decimals (``1.50 GiB``)."""
    return f"{n / GiB:.2f} GiB" if abs(n) >= GiB else f"{n / (1 << 20):.1f} MiB"


# ----------------------------------------------------------------------------------------------------------------
# Cost model
# ----------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelDims:
    """What the cost model needs to know of a model: transformer width, heads, text length, VAE factor."""

    inner_dim: int = 3072
    heads: int = 24
    text_len: int = 512
    vae_scale: int = 8
    vae_width: int = 128  # VAE channels at full resolution (block_out_channels[0]); costs scale with it

    def tokens(self, tile_px: int) -> int:
        """Transformer tokens of a tile of ``tile_px`` output pixels: one per 2x2 latent patch, plus the text."""
        return tile_px // (self.vae_scale * 2) ** 2 + self.text_len

    @classmethod
    def from_model(cls, model) -> ModelDims:
        """Read the dimensions off a :class:`~fluxsr.model.model.FluxSRModel`."""
        cfg = model.transformer.config
        return cls(
            cfg.num_attention_heads * cfg.attention_head_dim,
            cfg.num_attention_heads,
            int(model.cond.prompt_embeds.shape[1]),
            model.vae_scale,
            int(model.vae.config.block_out_channels[0]),
        )


@dataclass(frozen=True)
class CostModel:
    """Peak activation bytes per stage and tile, as constants measured once (docs/performance.md, "Memory").

    VAE stages: ``bytes = c * tile_pixels * dtype_bytes * vae_width / 128`` (output pixels for both; the FLUX VAE
    keeps 128-256 channels at full resolution). Transformer: ``bytes = c * tokens * inner_dim * dtype_bytes``, plus
    ``heads * tokens^2 * dtype_bytes * 2`` when attention materialises its scores (the math SDPA backend).
    Whole image (fp32): ``resident`` bytes per output pixel while the image lives on the device (reference,
    decoded output, blend weights, latents) and ``color_fix`` more during the colour fix.
    """

    encode_per_px: float = 900.0
    decode_per_px: float = 1350.0
    transformer_per_token_dim: float = 24.0
    attention_quadratic: bool = False
    resident_per_px: float = 44.0
    color_fix_per_px: float = 60.0
    offloaded_per_px: float = (
        4.0  # latents z_L, z_H and their blend accumulators (16 ch at 1/64 of the pixels)
    )
    safety: float = 0.85  # plan against this fraction of the budget (fragmentation, allocator slack)

    def encode(self, tile_px: int, dims: ModelDims, dtype_bytes: int) -> int:
        """Bytes to VAE-encode one tile of ``tile_px`` pixels."""
        return int(self.encode_per_px * tile_px * dtype_bytes * dims.vae_width / 128)

    def decode(self, tile_px: int, dims: ModelDims, dtype_bytes: int) -> int:
        """Bytes to VAE-decode one tile of ``tile_px`` output pixels."""
        return int(self.decode_per_px * tile_px * dtype_bytes * dims.vae_width / 128)

    def transformer(self, tile_px: int, dims: ModelDims, dtype_bytes: int) -> int:
        """Bytes of one transformer forward on a tile of ``tile_px`` output pixels (image + text tokens)."""
        tokens = dims.tokens(tile_px)
        act = self.transformer_per_token_dim * tokens * dims.inner_dim * dtype_bytes
        if self.attention_quadratic:
            act += dims.heads * tokens**2 * dtype_bytes * 2
        return int(act)

    def stages(self, tile_px: int, dims: ModelDims, dtype_bytes: int) -> dict[str, int]:
        """Per-stage bytes for one tile."""
        return {
            "encode": self.encode(tile_px, dims, dtype_bytes),
            "transformer": self.transformer(tile_px, dims, dtype_bytes),
            "decode": self.decode(tile_px, dims, dtype_bytes),
        }

    def full_image(self, image_px: int, on_device: bool, device_type: str = "cuda") -> int:
        """Bytes the whole image keeps in the budget's memory at the worst moment (colour fix).

        Off an accelerator only the latents stay there. On the CPU, device and host are the same RAM: "off the
        device" only makes the colour fix tile by tile, so the resident tensors still count."""
        if on_device:
            return int((self.resident_per_px + self.color_fix_per_px) * image_px)
        if device_type == "cpu":
            return int((self.resident_per_px + self.offloaded_per_px) * image_px)
        return int(self.offloaded_per_px * image_px)


DEFAULT_COST = CostModel()


# ----------------------------------------------------------------------------------------------------------------
# Planner
# ----------------------------------------------------------------------------------------------------------------


TILED_STAGES = ("encode", "transformer", "decode")
"""Pipeline stages that run tile by tile: their memory shrinks with the tile and the tiles per pass."""
WHOLE_IMAGE_STAGES = ("resize", "color_fix")
"""Pipeline stages on the full-size image: their memory shrinks only when the image leaves the device."""


@dataclass
class MemoryPlan:
    """What the planner chose for one image, and why.

    tile: tile edge in output pixels for all three tiled stages.
    batch: tiles per forward pass in every stage (at most ``tiles``, the number of tiles at this tile size).
    full_image_on_device: False moves resize, blending of decoded tiles and the colour fix off the accelerator
        (resize on the CPU, colour fix tile by tile); on the CPU it means the colour fix runs tile by tile.
    fits: False when even the smallest tile is estimated not to fit (the OOM retry is then the last resort).
    multiple, min_tile: tiles are multiples of ``multiple`` and :meth:`after_oom` never goes below ``min_tile``.
    planned_tile: the tile the planner chose (0: ``tile``); a move of the full image off the device goes back to it.
    weights: weight bytes on the device while each tiled stage runs (:func:`fluxsr.inference.offload.resident_weights`;
        empty: not counted). The safety margin applies to the estimates, not to these exact sizes.
    """

    tile: int
    requested_tile: (
        int  # the largest tile worth trying: the asked tile, capped at the padded image (one tile)
    )
    full_image_on_device: bool
    budget: int
    source: str
    image_hw: tuple[int, int]
    estimates: dict[str, int] = field(default_factory=dict)
    fits: bool = True
    retries: list[str] = field(default_factory=list)
    batch: int = 1
    requested_batch: int = 1
    tiles: int = 1
    safety: float = DEFAULT_COST.safety
    multiple: int = 16
    min_tile: int = 64
    planned_tile: int = 0
    weights: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.planned_tile = self.planned_tile or self.tile

    @property
    def peak(self) -> int:
        """Estimated peak bytes (largest tile stage with its resident weights, plus the whole-image tensors)."""
        tiled = (v + self.weights.get(k, 0) for k, v in self.estimates.items() if k != "full_image")
        return max(tiled, default=0) + self.estimates.get("full_image", 0)

    def fits_budget(self) -> bool:
        """Each tiled stage with the whole-image tensors fits the usable part of what its weights leave."""
        full = self.estimates.get("full_image", 0)
        tiled = ((v, self.weights.get(k, 0)) for k, v in self.estimates.items() if k != "full_image")
        return all(v + full <= int((self.budget - w) * self.safety) for v, w in tiled)

    @property
    def changed(self) -> bool:
        """True when the plan differs from what was asked (smaller tile or batch, image off the device, no fit).

        An automatic batch (asked 0), one capped by the number of tiles, or a tile capped at the image's size
        (``requested_tile`` is then that size: a larger one would be the same single tile) is not a change."""
        return (
            self.tile != self.requested_tile
            or not self.full_image_on_device
            or not self.fits
            or 0 < self.batch < min(self.requested_batch, self.tiles)
        )

    def describe(self) -> str:
        """One line for logs: tile, where the full image lives, estimates against the budget."""
        where = "on device" if self.full_image_on_device else "off device (tiled colour fix)"
        parts = ", ".join(f"{k} {format_bytes(v)}" for k, v in self.estimates.items())
        note = "" if self.fits else "; DOES NOT FIT, relying on OOM retry"
        parts += f", weights {format_bytes(max(self.weights.values()))}" if self.weights else ""
        asked = self.requested_batch or "auto"
        return (
            f"memory plan for {self.image_hw[0]}x{self.image_hw[1]}: tile {self.tile} (asked {self.requested_tile}),"
            f" {self.batch} tile(s) per pass (asked {asked}), full image {where}; est. peak {format_bytes(self.peak)}"
            f" of {format_bytes(self.usable)} usable ({self.safety:.0%} of {format_bytes(self.budget)}, "
            f"{self.source}) [{parts}]{note}"
        )

    @property
    def usable(self) -> int:
        """The part of the budget plans are fitted into (``CostModel.safety`` of it)."""
        return int(self.budget * self.safety)

    def overlap_for(self, overlap: int | None) -> int | None:
        """The asked tile overlap at this plan's tile: at most half the tile (None: the model's, clamped later)."""
        return None if overlap is None else min(overlap, self.tile // 2)

    def after_oom(self, stage: str) -> bool:
        """Turn this plan into the next, smaller one after running out of memory in ``stage``; False: give up.

        A tiled stage (:data:`TILED_STAGES`) with several tiles per pass first halves the tiles per pass; else the
        tile is halved (multiples of ``multiple``, not below ``min_tile``). The full-size tensors (reference, blend
        buffers) do not shrink with the tile: they move off the device when a whole-image stage
        (:data:`WHOLE_IMAGE_STAGES`) failed (same tile), or as the last resort when no smaller tile is left (back
        to the planned tile: the tile was not what ran out). Nothing left to shrink: give up. Each retry is noted
        in ``retries``.
        """
        tile, batch = self.tile, self.batch
        halved = halve(tile, self.multiple, self.min_tile)
        fewer = stage in TILED_STAGES and batch > 1
        whole = stage in WHOLE_IMAGE_STAGES
        moved = self.full_image_on_device and (whole or not (fewer or halved))
        nxt = (tile if whole else self.planned_tile) if moved else tile if fewer else halved
        if not nxt:
            return False
        self.full_image_on_device &= not moved
        self.batch = batch // 2 if fewer else batch
        self.tile = nxt
        self.retries.append(
            f"out of memory in {stage} at tile {tile} x {batch}: retrying with tile {nxt} x {self.batch}"
            + (", full image off the device" if moved else "")
        )
        return True


def tile_candidates(requested: int, multiple: int, min_tile: int) -> list[int]:
    """Tile edges to try: ``requested`` rounded down to ``multiple``, then halved until below ``min_tile``."""
    out = [max(multiple, requested // multiple * multiple)]
    while tile := halve(out[-1], multiple, min_tile):
        out.append(tile)
    return out


def halve(tile: int, multiple: int, min_tile: int) -> int:
    """Half of ``tile`` rounded down to ``multiple``, or 0 when that is below ``min_tile`` (or ``multiple``)."""
    half = tile // 2 // multiple * multiple
    return half if half >= max(min_tile, multiple) else 0


def image_tile_candidates(
    padded_hw: tuple[int, int], requested: int, multiple: int, min_tile: int
) -> list[int]:
    """:func:`tile_candidates` for an image of ``padded_hw``: tiles at least as large as the image are all the same
    one tile, so the list starts at the smallest of them (an OOM retry's first halving then shrinks something)."""
    candidates = tile_candidates(requested, multiple, min_tile)
    while len(candidates) > 1 and candidates[1] >= max(padded_hw):
        candidates.pop(0)
    return candidates


def min_tile_for(multiple: int) -> int:
    """The smallest tile the planner and the OOM retry go down to for a model with this size ``multiple``."""
    return max(64, 4 * multiple)


@dataclass(frozen=True)
class TileRequest:
    """The tiling asked of :func:`plan_memory`: the largest ``tile`` (px), the ``overlap``, the tiles per pass
    ``batch`` (0: up to :data:`AUTO_TILE_BATCH`), and the model's size ``multiple`` and smallest tile."""

    tile: int
    overlap: int = 0
    batch: int = 1
    multiple: int = 16
    min_tile: int = 128


@dataclass(frozen=True)
class Budget:
    """What a plan is made against: the bytes this process may use on the device, where that number came from
    (:func:`device_budget`), and the device type (the CPU keeps the whole image in RAM either way)."""

    bytes: int
    source: str = "given"
    device_type: str = "cuda"


def plan_memory(
    image_hw: tuple[int, int],
    budget: Budget,
    dims: ModelDims,
    dtype_bytes: int,
    request: TileRequest,
    *,
    cost: CostModel = DEFAULT_COST,
    resident: dict[str, int] | None = None,
) -> MemoryPlan:
    """Choose the tile, tiles per pass and where the whole image lives so that the estimated peak fits ``budget``.

    Tries tiles from ``request.tile`` down by halving; for each, first with the full image on the device, then
    off it; for each, the most tiles per pass up to ``request.batch`` (0: up to :data:`AUTO_TILE_BATCH`) and the
    number of tiles, down to one. Stage costs grow linearly with the tiles in a pass. The first that fits wins:
    largest tile first, then on-device, then the largest batch. Tiles never exceed the (padded) image, so small
    images cost what they are. ``resident``: weight bytes on the device per stage (counted beside the estimates).
    """
    multiple, min_tile = request.multiple, request.min_tile
    h, w = (-(-s // multiple) * multiple for s in image_hw)
    candidates = image_tile_candidates((h, w), request.tile, multiple, min_tile)
    want = request.batch if request.batch > 0 else AUTO_TILE_BATCH
    last = None
    for tile in candidates:
        tile_px = min(tile, h) * min(tile, w)
        tiles = tile_count((h, w), snapped(tile, request.overlap, multiple))
        stages = cost.stages(tile_px, dims, dtype_bytes)
        for on_device in (True, False):
            for batch in range(min(want, tiles), 0, -1):
                est = dict(
                    {k: v * batch for k, v in stages.items()},
                    full_image=cost.full_image(h * w, on_device, budget.device_type),
                )
                last = MemoryPlan(
                    tile,
                    candidates[0],
                    on_device,
                    budget.bytes,
                    budget.source,
                    tuple(image_hw),
                    est,
                    batch=batch,
                    requested_batch=request.batch,
                    tiles=tiles,
                    safety=cost.safety,
                    multiple=multiple,
                    min_tile=min_tile,
                    weights=dict(resident or {}),
                )
                if last.fits_budget():
                    return last
    last.fits = False
    return last


def budget_beside_weights(
    device: torch.device | str, max_memory: int | None = None, on_device: int = 0
) -> Budget:
    """The :class:`Budget` of ``device`` (:func:`device_budget`) with the ``on_device`` bytes of weights already on
    it given back: the planners count the weights themselves (``resident``, per stage and offload mode), so the
    measurement must not have taken them off as well. The one place both the tile planner (:func:`plan_for`) and
    the offload choice (:func:`fluxsr.inference.placement.choose_placement`) get their budget from."""
    device = torch.device(device)
    free, source = device_budget(device, max_memory)
    return Budget(free + on_device, source, device.type)


def plan_for(
    pipe,
    image_hw: tuple[int, int],
    requested_tile: int | None,
    max_memory: int | None = None,
    overlap: int | None = None,
    requested_batch: int | None = 1,
    resident: dict[str, int] | None = None,
    on_device: int = 0,
) -> MemoryPlan:
    """:func:`plan_memory` for a :class:`~fluxsr.inference.pipeline.FluxSRPipeline` on its device.

    ``requested_tile`` None or <= 0 takes the model's default tile (``ModelSpec.tile``, 1024 for FLUX) as the
    upper bound ("auto"); the planner only ever lowers it. ``overlap`` None takes the model's;
    ``requested_batch`` None or 0: the planner chooses the tiles per pass. ``resident``: weights per stage, counted
    instead of the ``on_device`` weight bytes the budget's measurement took off.
    """
    budget = budget_beside_weights(pipe.device, max_memory, on_device)
    dtype_bytes = pipe.dtype.itemsize
    m, spec = pipe.model.multiple, pipe.model.spec
    if not requested_tile or requested_tile <= 0:
        requested_tile = spec.tile
    request = TileRequest(
        requested_tile,
        overlap=spec.overlap if overlap is None else overlap,
        batch=requested_batch or 0,
        multiple=m,
        min_tile=min_tile_for(m),
    )
    return plan_memory(
        image_hw,
        budget,
        ModelDims.from_model(pipe.model),
        dtype_bytes,
        request,
        resident=resident,
    )
