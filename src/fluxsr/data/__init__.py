"""Data: the Real-ESRGAN degradation (training inputs) and evaluation data sets (layouts, pairing, make-testset)."""

from ..lazy import lazy_face

__getattr__, __all__ = lazy_face(
    __name__,
    {
        "Dataset": "datasets",
        "ImagePair": "datasets",
        "LAYOUTS": "datasets",
        "detect_layout": "datasets",
        "load_dataset": "datasets",
        "match_files": "datasets",
        "pair_key": "datasets",
        "DegradationConfig": "degradation_config",
        "degrade_file": "degrade",
        "degrade_to_input": "degrade",
        "TestsetResult": "testset",
        "make_testset": "testset",
    },
)
