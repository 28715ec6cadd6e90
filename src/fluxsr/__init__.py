"""fluxsr: one-step real-world super-resolution by Flow Trajectory Distillation (FluxSR, ICML 2025)."""

__version__ = "0.1.0"
