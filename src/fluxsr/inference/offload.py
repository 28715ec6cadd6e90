"""Offloading the model's weights to CPU RAM while they are not needed (``--offload``), and counting the weight
bytes each offload mode keeps on the device.

- ``none``: transformer and VAE live on the device.
- ``model``: whole-model offload with accelerate's ``cpu_offload_with_hook``: the transformer and the VAE wait in
  CPU RAM and each moves to the device when it runs, the other one leaving it (the hooks are chained both ways).
  The device holds the larger of the two (the transformer: 23.8 GB for FLUX.1-dev in bf16) plus activations, and
  the weights cross the bus twice per image (all tiles of a stage run in one visit).
- ``blocks``: diffusers' group offloading of the transformer (``ModelMixin.enable_group_offload``, block level,
  one block per group): each block moves to the device just before it runs and back after it; on CUDA the next
  block is prefetched on a side stream while the current one computes. The device holds about two blocks plus
  the transformer's embedders and output layers; the VAE (0.17 GB for FLUX) stays on the device. The weights cross
  the bus on every transformer pass (once per pass of tiles: more tiles per pass, fewer crossings).

On the CPU the hooks still attach (onload and offload device both the CPU; nothing moves), which is how the tests
check that outputs with hooks active equal those without. Counting (:class:`WeightBytes`,
:func:`resident_weights`) is what the memory planner (:mod:`fluxsr.inference.placement`) adds to its activation
estimates; a weight's bytes are those of its storage (a torchao int8 weight counts its int8 data and scales).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..model.model import FluxSRModel

OFFLOAD_MODES = ("none", "model", "blocks")
"""From the least to the most offload: fastest first, least device memory last."""
STAGES = ("encode", "transformer", "decode")


def tensor_bytes(t: Tensor, dtype: torch.dtype | None = None) -> int:
    """Bytes ``t`` stores, or would once cast to ``dtype`` (floating tensors only, as ``Module.to(dtype)`` casts);
    a tensor subclass that flattens (torchao's quantised weights) counts its inner tensors."""
    if hasattr(t, "__tensor_flatten__"):
        names, _ctx = t.__tensor_flatten__()
        return sum(tensor_bytes(getattr(t, name)) for name in names)
    if dtype is not None and t.is_floating_point():
        return t.numel() * dtype.itemsize
    return t.numel() * t.element_size()


def module_bytes(module: torch.nn.Module, dtype: torch.dtype | None = None) -> int:
    """Bytes of all parameters and buffers of ``module`` (cast to ``dtype``, see :func:`tensor_bytes`)."""
    return sum(tensor_bytes(t, dtype) for t in (*module.parameters(), *module.buffers()))


def device_weight_bytes(model: FluxSRModel, device: torch.device | str) -> int:
    """Bytes of the model's weights (parameters and buffers) that sit on ``device`` now."""
    device = torch.device(device)
    tensors = (*model.transformer.parameters(), *model.transformer.buffers())
    tensors += (*model.vae.parameters(), *model.vae.buffers())
    return sum(tensor_bytes(t) for t in tensors if t.device.type == device.type)


def block_lists(module: torch.nn.Module) -> list[torch.nn.ModuleList]:
    """The block lists that block-level offloading moves block by block (a FLUX transformer's double and single
    blocks): the module's direct ``ModuleList`` / ``Sequential`` children."""
    return [m for m in module.children() if isinstance(m, torch.nn.ModuleList | torch.nn.Sequential)]


@dataclass(frozen=True)
class WeightBytes:
    """Weight bytes of a model by what offloading moves separately.

    transformer: all of the transformer; blocks: its blocks together; largest_block: the largest one;
    vae: the VAE. FLUX.1-dev in bf16: 23.8 GB, 19 double blocks of 0.68 GB and 38 single blocks of 0.28 GB,
    VAE 0.17 GB.
    """

    transformer: int
    blocks: int
    largest_block: int
    vae: int

    @property
    def rest(self) -> int:
        """The transformer outside its blocks (embedders, output norm and projection)."""
        return self.transformer - self.blocks

    @property
    def total(self) -> int:
        return self.transformer + self.vae

    @classmethod
    def of(cls, model: FluxSRModel, dtype: torch.dtype | None = None) -> WeightBytes:
        """Count them on a loaded model as it will run in ``dtype`` (quantised weights at their storage size)."""
        sizes = [module_bytes(block, dtype) for blocks in block_lists(model.transformer) for block in blocks]
        transformer, vae = module_bytes(model.transformer, dtype), module_bytes(model.vae, dtype)
        return cls(transformer, sum(sizes), max(sizes, default=0), vae)


def resident_weights(weights: WeightBytes, mode: str, device_type: str) -> dict[str, int]:
    """Weight bytes on the device while each stage (:data:`STAGES`) runs under offload ``mode``.

    On the CPU the device is the host RAM: all weights count whatever the mode. ``blocks`` holds the transformer's
    rest, the block running and (CUDA, prefetch) the next one, and the VAE."""
    if mode not in OFFLOAD_MODES:
        raise ValueError(f"unknown offload {mode!r}: choose one of {', '.join(OFFLOAD_MODES)}")
    if mode == "none" or device_type == "cpu":
        return dict.fromkeys(STAGES, weights.total)
    if mode == "model":
        return {"encode": weights.vae, "transformer": weights.transformer, "decode": weights.vae}
    in_flight = 2 if device_type == "cuda" else 1
    return {
        "encode": weights.vae,
        "transformer": weights.rest + in_flight * weights.largest_block + weights.vae,
        "decode": weights.vae,
    }


def attach_offload(model: FluxSRModel, device: torch.device | str, mode: str) -> None:
    """Attach the hooks of offload ``mode`` (not ``none``) to a model whose weights are in CPU RAM, computing on
    ``device``; sets ``model.execution_device`` so inputs go there, not to where the weights wait."""
    device = torch.device(device)
    if mode == "model":
        attach_model_offload(model, device)
    elif mode == "blocks":
        attach_block_offload(model, device)
    else:
        raise ValueError(f"no offload hooks for {mode!r}: choose model or blocks")
    model.execution_device = device


def attach_model_offload(model: FluxSRModel, device: torch.device) -> None:
    """accelerate's ``cpu_offload_with_hook`` on the VAE and the transformer, chained both ways: each one's
    forward (the VAE's ``encode``/``decode`` too, through diffusers' ``apply_forward_hook``) first sends the other
    back to the CPU."""
    from accelerate import cpu_offload_with_hook  # imported where the hooks are attached, not at start-up

    _, vae_hook = cpu_offload_with_hook(model.vae, device)
    _, transformer_hook = cpu_offload_with_hook(model.transformer, device, prev_module_hook=vae_hook)
    vae_hook.hook.prev_module_hook = transformer_hook


def attach_block_offload(model: FluxSRModel, device: torch.device) -> None:
    """diffusers' block-level group offloading of the transformer (one block per group; on CUDA prefetched on a
    side stream, non-blocking copies); the VAE moves to the device and stays."""
    cuda = device.type == "cuda"
    model.transformer.enable_group_offload(
        onload_device=device,
        offload_device=torch.device("cpu"),
        offload_type="block_level",
        num_blocks_per_group=1,
        non_blocking=cuda,
        use_stream=cuda,
        record_stream=cuda,
    )
    model.vae.to(device)
