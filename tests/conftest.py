import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="module")
def pairs(request, tmp_path_factory):
    """Teacher pairs made once per test module with that module's ``recipe()`` (its own fast settings)."""
    from fluxsr.training.pairs import generate_pairs

    out = tmp_path_factory.mktemp("pairs")
    generate_pairs(request.module.recipe(), out, device="cpu", progress=False)
    return out
