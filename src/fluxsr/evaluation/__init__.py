"""Evaluation: metrics, scoring folders, quality benchmarks (`fluxsr benchmark`), speed benchmarks (`fluxsr bench`, speed.py) and the reference weights they use."""
