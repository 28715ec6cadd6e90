"""The speed switches on CPU: torch.compile (regional and whole) traces the real blocks, tiles in one pass included,
and gives the eager result; the flags reach ``fluxsr upscale``."""

import subprocess
import sys

import pytest
import torch

from fluxsr.inference.fastpath import FastPath, apply_fast_path, sdpa_context
from fluxsr.inference.pipeline import FluxSRPipeline, UpscaleOptions
from fluxsr.model.loader import load_model
from fluxsr.model.presets import build_tiny


def test_labels():
    assert FastPath().label() == ""
    assert (
        FastPath(sdpa="flash", compile="regional", compile_vae=True).label()
        == "+compile+compile-vae+sdpa-flash"
    )
    assert FastPath(compile="full", compile_mode="reduce-overhead").label() == "+compile-full-reduce-overhead"


@pytest.mark.parametrize("how", ["regional", "full"])
def test_compiled_transformer_equals_eager(how):
    """fullgraph=True for the regional compile: any graph break in the blocks (our attention processor included)
    fails here rather than on a GPU."""
    x = torch.rand(3, 16, 24, generator=torch.Generator().manual_seed(0))  # -> 64 x 96: 2 tiles of 64
    eager = FluxSRPipeline(build_tiny(seed=5), "cpu")
    fast = FluxSRPipeline(build_tiny(seed=5), "cpu")
    with torch._dynamo.config.patch(automatic_dynamic_shapes=True):  # apply_fast_path turns it off: restore
        assert apply_fast_path(fast.model, FastPath(compile=how)) == []
        try:
            for batch in (1, 2):
                opts = UpscaleOptions(tile=64, overlap=16, tile_batch=batch)
                torch.testing.assert_close(
                    fast.upscale_tensor(x, opts), eager.upscale_tensor(x, opts), atol=1e-5, rtol=0
                )
        finally:
            torch._dynamo.reset()


def test_switches_are_checked():
    assert not FastPath().enabled and FastPath(fp8=True).enabled
    for bad in ({"compile": "fast"}, {"compile": True}, {"compile_mode": "max"}, {"sdpa": "xformers"}):
        with pytest.raises(ValueError):
            FastPath(**bad)
    with pytest.raises(ValueError, match="tile_batch"):
        UpscaleOptions(tile_batch=-1)


@pytest.mark.parametrize(
    "flags,message",
    [
        (["--compile", "--compile-full"], "not allowed with"),
        # --compile-mode alone: tests/cli/test_cli.py::test_compile_mode_alone_is_a_one_line_error
        (["--tile-batch", "-2"], "must be >= 0"),
    ],
)
def test_upscale_refuses_contradicting_speed_flags(tmp_path, flags, message):
    r = subprocess.run(
        [sys.executable, "-m", "fluxsr.cli", "upscale", str(tmp_path / "x.png"), "--model", "tiny", *flags],
        capture_output=True,
        text=True,
    )
    assert r.returncode != 0 and message in r.stderr


def test_sdpa_context_selects_a_backend():
    q = torch.randn(1, 2, 8, 16)
    with sdpa_context("math"):
        a = torch.nn.functional.scaled_dot_product_attention(q, q, q)
    torch.testing.assert_close(a, torch.nn.functional.scaled_dot_product_attention(q, q, q))


def test_fp8_without_torchao_is_skipped_with_a_note(monkeypatch):
    monkeypatch.setitem(sys.modules, "torchao", None)  # import fails as if not installed
    fast = FastPath(fp8=True)
    notes = apply_fast_path(build_tiny(), fast)
    assert not fast.fp8 and "fp8 skipped" in notes[0]


def test_fp8_refused_by_the_hardware_is_skipped_with_a_note(monkeypatch):
    """torchao checks the GPU (compute capability >= 8.9) with an assert: the run goes on in bf16, saying why."""
    import types

    def quantize_(model, config):
        raise AssertionError("Float8 dynamic quantization requires CUDA compute capability >= 8.9")

    fake = types.ModuleType("torchao.quantization")
    fake.Float8DynamicActivationFloat8WeightConfig, fake.quantize_ = object, quantize_
    monkeypatch.setitem(sys.modules, "torchao", types.ModuleType("torchao"))
    monkeypatch.setitem(sys.modules, "torchao.quantization", fake)
    fast = FastPath(fp8=True)
    notes = apply_fast_path(build_tiny(), fast)
    assert not fast.fp8 and notes == [
        "fp8 skipped: Float8 dynamic quantization requires CUDA compute capability >= 8.9"
    ]


def test_upscale_command_takes_the_speed_flags(tmp_path):
    from PIL import Image

    Image.new("RGB", (24, 16), (200, 40, 90)).save(tmp_path / "a.png")
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "fluxsr.cli",
            "upscale",
            str(tmp_path / "a.png"),
            "-o",
            str(tmp_path / "out"),
            "--model",
            "tiny",
            "--sdpa",
            "math",
            "--tile",
            "64",
            "--overlap",
            "16",
            "--tile-batch",
            "2",
            "--max-memory",
            "64GiB",
            "-q",
        ],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    assert Image.open(tmp_path / "out" / "a.png").size == (96, 64)


@pytest.mark.parametrize("sdpa", ["efficient", "cudnn"])
def test_cuda_only_attention_kernels_are_refused_on_the_cpu(sdpa):
    model = load_model("tiny")
    with pytest.raises(ValueError, match=f"--sdpa {sdpa} needs a CUDA device"):
        apply_fast_path(model, FastPath(sdpa=sdpa))
