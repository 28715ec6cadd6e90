"""Weight-only quantisation of the transformer (``--quantize``, ``FluxSRPipeline.from_pretrained(quantize=...)``).

``int8``: torchao's int8 weight-only linears (per-channel scales; runs on the CPU and on CUDA), half the bf16 bytes.
``fp8``: torchao's float8 (e4m3) weight-only linears, CUDA GPUs of compute capability 8.9 or newer (Ada, Hopper).
Only the transformer's linear layers are quantised: the VAE and the cached text embeddings keep the pipeline's
dtype. Whether a choice can run here is checked before anything loads (:func:`check_quantize`): one line naming
what is missing (the ``fluxsr[quant]`` extra, the GPU). This is a memory switch; the ``--fp8`` speed switch
(:mod:`fluxsr.inference.fastpath`) quantises activations too and is a different thing.
"""

from __future__ import annotations

import importlib.util

import torch

QUANTIZE_MODES = ("none", "int8", "fp8")
"""``--quantize`` choices: keep the pipeline's dtype, int8 or float8 weight-only."""
FP8_CAPABILITY = (8, 9)
"""The oldest CUDA compute capability with float8 (e4m3) matmuls: Ada (sm_89)."""
EXTRA_HINT = "pip install 'fluxsr[quant]'"


def torchao_available() -> bool:
    """True when torchao can be imported (the ``fluxsr[quant]`` extra)."""
    return importlib.util.find_spec("torchao") is not None


def quantize_problem(quantize: str, device: torch.device | str) -> str | None:
    """Why ``quantize`` cannot run on ``device`` here (one line), or None when it can."""
    device = torch.device(device)
    if quantize not in QUANTIZE_MODES:
        return f"unknown quantize {quantize!r}: choose one of {', '.join(QUANTIZE_MODES)}"
    if quantize == "none":
        return None
    if quantize == "int8" and device.type not in ("cpu", "cuda"):
        return f"--quantize int8 runs on the CPU or CUDA, not {device.type}"
    if quantize == "fp8" and device.type != "cuda":
        return f"--quantize fp8 needs a CUDA GPU of compute capability 8.9+ (Ada, Hopper), not {device.type}"
    if quantize == "fp8" and torch.cuda.get_device_capability(device) < FP8_CAPABILITY:
        major, minor = torch.cuda.get_device_capability(device)
        return f"--quantize fp8 needs compute capability 8.9+ (Ada, Hopper); {device} is {major}.{minor}: use int8"
    if not torchao_available():
        return f"--quantize {quantize} needs torchao: {EXTRA_HINT}"
    return None


def check_quantize(quantize: str, device: torch.device | str) -> None:
    """ValueError (one line) unless ``quantize`` can run on ``device`` here; call it before loading."""
    problem = quantize_problem(quantize, device)
    if problem:
        raise ValueError(problem)


def quantize_transformer(transformer: torch.nn.Module, quantize: str) -> torch.nn.Module:
    """Quantise the linear layers of ``transformer`` in place (weight-only, torchao); ``"none"`` leaves it."""
    if quantize == "none":
        return transformer
    from torchao.quantization import Float8WeightOnlyConfig, Int8WeightOnlyConfig, quantize_

    config = Int8WeightOnlyConfig() if quantize == "int8" else Float8WeightOnlyConfig()
    quantize_(transformer, config)
    return transformer
