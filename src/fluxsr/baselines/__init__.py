"""Baseline upscalers run side by side with FluxSR: bicubic and Real-ESRGAN x4plus."""

from .bicubic import bicubic_upscale
from .realesrgan import RealESRGAN, fetch_realesrgan, load_rrdbnet
from .rrdbnet import RRDBNet

__all__ = ["RRDBNet", "RealESRGAN", "bicubic_upscale", "fetch_realesrgan", "load_rrdbnet"]
