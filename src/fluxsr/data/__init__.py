"""Data: the Real-ESRGAN degradation (training inputs) and evaluation data sets (layouts, pairing, make-testset)."""

from .datasets import LAYOUTS, Dataset, ImagePair, detect_layout, load_dataset, match_files, pair_key
from .degradation_config import DegradationConfig
from .degrade import degrade, degrade_file, degrade_to_input
from .testset import TestsetResult, make_testset

__all__ = [
    "LAYOUTS",
    "Dataset",
    "DegradationConfig",
    "ImagePair",
    "TestsetResult",
    "degrade",
    "degrade_file",
    "degrade_to_input",
    "detect_layout",
    "load_dataset",
    "make_testset",
    "match_files",
    "pair_key",
]
