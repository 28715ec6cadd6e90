"""Fixtures shared by every test folder: the tiny random-weight pipeline and the teacher pairs of a module's
recipe. Test-only builders (tiny text encoders, image files) live in tests/builders.py, folder paths in
tests/paths.py."""

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="module")
def tiny_pipe():
    """The random-weight tiny FLUX pipeline on the CPU, one per test module (tests change its plan and
    ``max_memory``, so modules never share one). fluxsr is imported here, after the offline switches above."""
    from fluxsr.inference.pipeline import FluxSRPipeline

    return FluxSRPipeline.from_pretrained("tiny", device="cpu")


@pytest.fixture(scope="module")
def pairs(request, tmp_path_factory):
    """Teacher pairs made once per test module with that module's ``recipe()`` (its own fast settings)."""
    from fluxsr.training.pairs import generate_pairs

    out = tmp_path_factory.mktemp("pairs")
    generate_pairs(request.module.recipe(), out, device="cpu", progress=False)
    return out
