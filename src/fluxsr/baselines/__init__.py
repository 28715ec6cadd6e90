"""Baseline upscalers run side by side with FluxSR: bicubic and Real-ESRGAN x4plus."""

from ..lazy import lazy_face

__getattr__, __all__ = lazy_face(
    __name__,
    {
        "bicubic_upscale": "bicubic",
        "RealESRGAN": "realesrgan",
        "fetch_realesrgan": "realesrgan",
        "load_rrdbnet": "realesrgan",
        "RRDBNet": "rrdbnet",
    },
)
