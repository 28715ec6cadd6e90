"""Data: the Real-ESRGAN degradation and evaluation test sets."""
