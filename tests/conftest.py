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


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    """An empty Hugging Face cache in ``tmp_path`` (HF_HOME / HF_HUB_CACHE, for this process and its children),
    offline: fill it with ``tests.builders.put_in_hub_cache``."""
    import huggingface_hub

    home = tmp_path / "hf_home"
    cache = home / "hub"
    cache.mkdir(parents=True)
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    return cache
