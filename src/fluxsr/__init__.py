"""fluxsr: one-step real-world super-resolution by Flow Trajectory Distillation (FluxSR, ICML 2025).

The public face: :class:`FluxSRPipeline` and :class:`UpscaleOptions`, plus what front ends that take settings as
text need (the ComfyUI nodes in ``comfyui/``): :data:`COLOR_FIXES` (the ``color_fix`` choices),
:func:`is_model_dir` (is a folder something ``FluxSRPipeline.from_pretrained`` loads) and :func:`parse_bytes`
(``"40GiB"`` -> bytes, for ``FluxSRPipeline.max_memory``). Everything else may move between releases.
"""

__version__ = "0.1.0"

__all__ = ["COLOR_FIXES", "FluxSRPipeline", "UpscaleOptions", "__version__", "is_model_dir", "parse_bytes"]

_PUBLIC = {
    "COLOR_FIXES": "inference.color",
    "FluxSRPipeline": "inference.pipeline",
    "UpscaleOptions": "inference.pipeline",
    "is_model_dir": "model.folders",
    "parse_bytes": "inference.memory",
}


def __getattr__(name: str):
    # Lazy: `import fluxsr` stays fast (torch/diffusers load on first use).
    if name in _PUBLIC:
        from importlib import import_module

        return getattr(import_module(f".{_PUBLIC[name]}", __name__), name)
    raise AttributeError(f"module 'fluxsr' has no attribute {name!r}")
