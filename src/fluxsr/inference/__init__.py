"""One-step super-resolution: the pipeline, tiling, colour fix, memory plan, fast paths and the batch runner behind
`fluxsr upscale`.

The names below load on first use, so that importing one light module of this folder (the memory plan's units,
the colour fix) does not load the model code (torch, diffusers) with it.
"""

from importlib import import_module

_FACE = {
    "COLOR_FIXES": "color",
    "color_fix": "color",
    "FastPath": "fastpath",
    "apply_fast_path": "fastpath",
    "MemoryPlan": "memory",
    "plan_for": "memory",
    "FluxSRPipeline": "pipeline",
    "NonFiniteOutputError": "pipeline",
    "UpscaleOptions": "pipeline",
    "BatchOptions": "upscale",
    "FileResult": "upscale",
    "make_backend": "upscale",
    "upscale_paths": "upscale",
}

__all__ = sorted(_FACE)


def __getattr__(name: str):
    if name in _FACE:
        return getattr(import_module(f".{_FACE[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
