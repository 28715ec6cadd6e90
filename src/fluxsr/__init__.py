"""fluxsr: one-step real-world super-resolution by Flow Trajectory Distillation (FluxSR, ICML 2025).

The public face: :class:`FluxSRPipeline` and :class:`UpscaleOptions`, plus what front ends that take settings as
text need (the ComfyUI nodes in ``comfyui/``): :data:`COLOR_FIXES` (the ``color_fix`` choices),
:func:`is_model_dir` (is a folder something ``FluxSRPipeline.from_pretrained`` loads) and :func:`parse_bytes`
(``"40GiB"`` -> bytes, for ``FluxSRPipeline.max_memory``), and :func:`load_pipeline` with :class:`ModelChoice` (a
pipeline from a user's choice of model, LoRA, device, dtype and memory cap). Everything else may move between
releases.
"""

__version__ = "0.1.0"

from .lazy import lazy_face

# Lazy: `import fluxsr` stays fast (torch and diffusers load on first use).
__getattr__, _names = lazy_face(
    __name__,
    {
        "COLOR_FIXES": "inference.color",
        "FluxSRPipeline": "inference.pipeline",
        "ModelChoice": "inference.loading",
        "UpscaleOptions": "inference.pipeline",
        "is_model_dir": "model.folders",
        "load_pipeline": "inference.loading",
        "parse_bytes": "inference.memory",
    },
)
__all__ = ["__version__", *_names]
