"""fluxsr: one-step real-world super-resolution by Flow Trajectory Distillation (FluxSR, ICML 2025)."""

__version__ = "0.1.0"

__all__ = ["FluxSRPipeline", "UpscaleOptions", "__version__"]


def __getattr__(name: str):
    # Lazy: `import fluxsr` stays fast (torch/diffusers load on first use).
    if name in ("FluxSRPipeline", "UpscaleOptions"):
        from . import pipeline

        return getattr(pipeline, name)
    raise AttributeError(f"module 'fluxsr' has no attribute {name!r}")
