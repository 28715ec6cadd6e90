"""Where the weights live: quantise the transformer, choose the offload mode against the memory budget, attach
the hooks (``FluxSRPipeline(..., offload=, quantize=, max_memory=)``, ``fluxsr upscale/serve --offload
--quantize --max-memory``).

The choice counts resident weights (:func:`fluxsr.inference.offload.resident_weights`) beside the tile
planner's activation estimates (:func:`fluxsr.inference.memory.plan_memory`): ``auto`` takes the first of
``none``, ``model``, ``blocks`` (least offload, fastest, first) under which the model's default tile fits the
budget (``--max-memory``, or what is free on the device), else the first under which the smallest tile does. When even ``blocks`` does not fit, or an offload mode named
explicitly does not, that is one ValueError line before any image is touched. Per image, the tile planner then
picks tiles for the chosen mode and retries smaller on out of memory (:meth:`MemoryPlan.after_oom`). On the CPU
the weights sit in the same RAM whatever the mode: ``auto`` is ``none`` and nothing is checked here (the tile
planner still shrinks tiles and retries).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..model.model import FluxSRModel, to_device
from .memory import (
    DEFAULT_COST,
    Budget,
    CostModel,
    MemoryPlan,
    ModelDims,
    TileRequest,
    budget_beside_weights,
    format_bytes,
    min_tile_for,
    plan_memory,
)
from .offload import OFFLOAD_MODES, WeightBytes, attach_offload, device_weight_bytes, resident_weights
from .quantize import check_quantize, quantize_transformer

OFFLOAD_CHOICES = ("auto", *OFFLOAD_MODES)
"""``--offload`` choices: ``auto`` picks the least offload that fits the memory budget."""


@dataclass(frozen=True)
class ModelSize:
    """What the choice needs to know of a model: its weight bytes, the tile planner's dimensions, the bytes per
    activation value, the size multiple and the model's default tile (``ModelSpec.tile``)."""

    weights: WeightBytes
    dims: ModelDims = ModelDims()
    dtype_bytes: int = 2
    multiple: int = 16
    tile: int = 1024

    @classmethod
    def of(cls, model: FluxSRModel, dtype: torch.dtype) -> ModelSize:
        """Measure a loaded (quantised) model."""
        dtype_bytes = dtype.itemsize
        dims = ModelDims.from_model(model)
        return cls(WeightBytes.of(model, dtype), dims, dtype_bytes, model.multiple, model.spec.tile)


@dataclass(frozen=True)
class Placement:
    """The chosen offload and quantisation; with a budget, the tile the choice was made at and each offload
    mode's estimated peak there (weights included)."""

    offload: str
    quantize: str
    weights: WeightBytes
    budget: Budget | None = None
    tile: int = 0
    peaks: dict[str, int] = field(default_factory=dict)

    @property
    def describe_always(self) -> bool:
        """True when the weights are placed other than plainly (offload or quantisation): worth a line."""
        return self.offload != "none" or self.quantize != "none"

    def describe(self) -> str:
        """One line: the choice, the weights it keeps on the device, what each mode needs against the budget."""
        device_type = self.budget.device_type if self.budget else "cpu"
        held = max(resident_weights(self.weights, self.offload, device_type).values())
        line = (
            f"weights {format_bytes(self.weights.total)} (quantize {self.quantize}), offload {self.offload}: "
            f"{format_bytes(held)} of them on the device at once"
        )
        if self.budget is None:
            return line
        peaks = ", ".join(f"{mode} {format_bytes(peak)}" for mode, peak in self.peaks.items())
        budget = f"{format_bytes(self.budget.bytes)} ({self.budget.source})"
        return f"{line}; est. peak at tile {self.tile}: {peaks}; budget {budget}"


def tile_plan(
    mode: str, tile: int, size: ModelSize, budget: Budget, cost: CostModel = DEFAULT_COST
) -> MemoryPlan:
    """The tile planner's plan for one image of one ``tile`` (no smaller) with the weights ``mode`` keeps on the
    device; the full image may leave the device."""
    return plan_memory(
        (tile, tile),
        budget,
        size.dims,
        size.dtype_bytes,
        TileRequest(tile, multiple=size.multiple, min_tile=tile),
        cost=cost,
        resident=resident_weights(size.weights, mode, budget.device_type),
    )


def choose_offload(
    asked: str, size: ModelSize, budget: Budget, quantize: str = "none", cost: CostModel = DEFAULT_COST
) -> Placement:
    """The offload for ``asked`` (``auto`` or one of :data:`OFFLOAD_MODES`) under ``budget``. Pure arithmetic.

    ``auto``: the least offload under which the model's default tile fits; when none does, the least under which
    the smallest tile (:func:`fluxsr.inference.memory.min_tile_for`) fits (more offload beats tiny tiles: a
    FLUX pass on a 64-pixel tile costs nearly what one on a 1024-pixel tile does). A named mode: itself if its
    smallest tile fits. Otherwise a one-line ValueError, the most offload's need named.
    """
    if asked not in OFFLOAD_CHOICES:
        raise ValueError(f"unknown offload {asked!r}: choose one of {', '.join(OFFLOAD_CHOICES)}")
    modes = OFFLOAD_MODES if asked == "auto" else (asked,)
    tiles = (size.tile, min_tile_for(size.multiple)) if asked == "auto" else (min_tile_for(size.multiple),)
    for tile in tiles:
        plans = {mode: tile_plan(mode, tile, size, budget, cost) for mode in OFFLOAD_MODES}
        peaks = {mode: plan.peak for mode, plan in plans.items()}
        for mode in modes:
            if plans[mode].fits:
                return Placement(mode, quantize, size.weights, budget, tile, peaks)
    mode = modes[-1]
    hint = "; --offload blocks fits" if mode != "blocks" and plans["blocks"].fits else ""
    raise ValueError(
        f"memory budget {format_bytes(budget.bytes)} ({budget.source}) is too small: --offload {mode} needs about "
        f"{format_bytes(peaks[mode])} even at tile {tile} (weights {format_bytes(size.weights.total)}){hint}"
    )


def choose_placement(
    model: FluxSRModel,
    device: torch.device,
    dtype: torch.dtype,
    offload: str,
    quantize: str,
    max_memory: int | None = None,
) -> Placement:
    """The placement of a (quantised) model not yet placed: :func:`choose_offload` against the device's budget
    (``max_memory`` caps it); on the CPU, ``auto`` is ``none`` and the budget is not checked."""
    if device.type == "cpu":
        if offload not in OFFLOAD_CHOICES:
            raise ValueError(f"unknown offload {offload!r}: choose one of {', '.join(OFFLOAD_CHOICES)}")
        return Placement("none" if offload == "auto" else offload, quantize, WeightBytes.of(model, dtype))
    budget = budget_beside_weights(device, max_memory, device_weight_bytes(model, device))
    return choose_offload(offload, ModelSize.of(model, dtype), budget, quantize)


def place_model(
    model: FluxSRModel,
    device: torch.device | str,
    dtype: torch.dtype,
    offload: str = "auto",
    quantize: str = "none",
    max_memory: int | None = None,
) -> Placement:
    """Quantise the transformer (in CPU RAM: the device never holds the unquantised weights), choose the offload,
    then move the model to ``device`` in ``dtype`` or, offloaded, cast it in CPU RAM and attach the hooks (the
    cached text embeddings go to the device either way). Without quantisation or offload the model goes straight
    from wherever it is to the device, as it always did."""
    device = torch.device(device)
    check_quantize(quantize, device)
    if quantize != "none":
        to_device(model, "cpu", dtype)
        quantize_transformer(model.transformer, quantize)
    placement = choose_placement(model, device, dtype, offload, quantize, max_memory)
    if placement.offload == "none":
        to_device(model, device, dtype)
        return placement
    to_device(model, "cpu", dtype)
    attach_offload(model, device, placement.offload)
    model.cond = model.cond.to(device, dtype)
    return placement
