"""Low-VRAM inference on the CPU: offload hooks (outputs equal those without), weight-only quantisation (runs or
refuses in one line before loading), and the memory planner counting resident weights (FLUX.1-dev-sized numbers,
nothing allocated)."""

import accelerate.hooks
import pytest
import torch
from diffusers.hooks import group_offloading
from PIL import Image

from fluxsr.cli import main
from fluxsr.cli.commands import build_parser
from fluxsr.cli.options import model_choice
from fluxsr.inference import memory as MEM
from fluxsr.inference import pipeline as PIPE
from fluxsr.inference import quantize as Q
from fluxsr.inference.memory import Budget
from fluxsr.inference.offload import WeightBytes, resident_weights
from fluxsr.inference.pipeline import FluxSRPipeline, UpscaleOptions
from fluxsr.inference.placement import ModelSize, choose_offload, choose_placement

GiB = MEM.GiB
TILES = UpscaleOptions(tile=64, overlap=16, tile_batch=2)  # 64 x 160 output: 3 tiles, two per pass


def image():
    return torch.rand(3, 16, 40, generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def plain():
    return FluxSRPipeline.from_pretrained("tiny", device="cpu", offload="none")


@pytest.fixture(scope="module")
def reference(plain):
    return plain.upscale_tensor(image(), TILES)


def count_calls(monkeypatch, cls, name: str, calls: list) -> None:
    """Record the first argument of every call of ``cls.name`` (the method still runs)."""
    real = getattr(cls, name)

    def spy(self, *args, **kwargs):
        calls.append(args[0] if args else None)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(cls, name, spy)


# ----------------------------------------------------------------------------------------------------------------
# Offload hooks
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "mode,hook",
    [("model", accelerate.hooks.CpuOffload), ("blocks", group_offloading.GroupOffloadingHook)],
)
def test_outputs_with_offload_hooks_equal_outputs_without(reference, monkeypatch, mode, hook):
    calls = []
    count_calls(monkeypatch, hook, "pre_forward", calls)
    pipe = FluxSRPipeline.from_pretrained("tiny", device="cpu", offload=mode)
    out = pipe.upscale_tensor(image(), TILES)
    assert pipe.placement.offload == mode and pipe.model.execution_device == torch.device("cpu")
    assert calls, f"no {hook.__name__} ran: the hooks are not attached"
    assert torch.equal(out, reference)


def test_model_offload_sends_each_part_back_when_the_other_runs(monkeypatch):
    """On the CPU nothing moves, so check whom each part's hook sends back before it runs (accelerate offloads
    the previous module there when it is on an accelerator)."""
    runs = []
    real = accelerate.hooks.CpuOffload.pre_forward

    def pre_forward(self, module, *args, **kwargs):
        runs.append((module, self.prev_module_hook.model))
        return real(self, module, *args, **kwargs)

    monkeypatch.setattr(accelerate.hooks.CpuOffload, "pre_forward", pre_forward)
    pipe = FluxSRPipeline.from_pretrained("tiny", device="cpu", offload="model")
    pipe.upscale_tensor(
        image(), UpscaleOptions(tile=256)
    )  # one tile: encode (VAE), transformer, decode (VAE)
    vae, transformer = pipe.model.vae, pipe.model.transformer
    assert runs == [(vae, transformer), (transformer, vae), (vae, transformer)]


def test_oom_retry_still_shrinks_tiles_under_block_offload(reference, monkeypatch):
    pipe = FluxSRPipeline.from_pretrained("tiny", device="cpu", offload="blocks")
    small = pipe.upscale_tensor(image(), UpscaleOptions(tile=64, overlap=16))
    real_decode = pipe.decode

    def flaky_decode(z, opts, *a, **kw):
        if opts.tile > 64:
            raise torch.cuda.OutOfMemoryError("fake: tile too large")
        return real_decode(z, opts, *a, **kw)

    monkeypatch.setattr(pipe, "decode", flaky_decode)
    out = pipe.upscale_tensor(image(), UpscaleOptions(tile=256, overlap=16))
    assert pipe.plan.tile == 64 and len(pipe.plan.retries) == 2 and torch.equal(out, small)


def test_unknown_offload_is_refused():
    with pytest.raises(ValueError, match="unknown offload 'disk'"):
        FluxSRPipeline.from_pretrained("tiny", device="cpu", offload="disk")


# ----------------------------------------------------------------------------------------------------------------
# Quantised weights
# ----------------------------------------------------------------------------------------------------------------


def test_int8_weights_run_on_the_cpu(plain, reference):
    pytest.importorskip("torchao")
    pipe = FluxSRPipeline.from_pretrained("tiny", device="cpu", quantize="int8", offload="none")
    out = pipe.upscale_tensor(image(), TILES)
    assert pipe.placement.quantize == "int8"
    assert (
        pipe.placement.weights.transformer < plain.placement.weights.transformer / 2
    )  # fp32 -> int8 linears
    assert torch.isfinite(out).all() and 0 < (out - reference).abs().max() < 0.1
    blocks = FluxSRPipeline.from_pretrained("tiny", device="cpu", quantize="int8", offload="blocks")
    assert torch.equal(blocks.upscale_tensor(image(), TILES), out)


def refuse_loading(monkeypatch):
    def load(*a, **kw):
        raise AssertionError("the model was loaded before the refusal")

    monkeypatch.setattr(PIPE, "load_model", load)


def test_fp8_on_the_cpu_is_refused_before_loading(monkeypatch):
    refuse_loading(monkeypatch)
    with pytest.raises(ValueError, match="fp8 needs a CUDA GPU of compute capability 8.9") as e:
        FluxSRPipeline.from_pretrained("tiny", device="cpu", quantize="fp8")
    assert "\n" not in str(e.value)


def test_quantizing_without_torchao_names_the_extra_before_loading(monkeypatch):
    refuse_loading(monkeypatch)
    monkeypatch.setattr(Q, "torchao_available", lambda: False)
    with pytest.raises(ValueError, match=r"needs torchao: pip install 'fluxsr\[quant\]'") as e:
        FluxSRPipeline.from_pretrained("tiny", device="cpu", quantize="int8")
    assert "\n" not in str(e.value)


def test_fp8_on_a_gpu_older_than_ada_is_refused(monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 6))
    assert "8.9+" in Q.quantize_problem("fp8", torch.device("cuda")) and "use int8" in Q.quantize_problem(
        "fp8", torch.device("cuda")
    )
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    monkeypatch.setattr(Q, "torchao_available", lambda: True)
    assert Q.quantize_problem("fp8", torch.device("cuda")) is None
    assert "unknown quantize" in Q.quantize_problem("int4", torch.device("cpu"))


# ----------------------------------------------------------------------------------------------------------------
# The planner counts resident weights
# ----------------------------------------------------------------------------------------------------------------


def flux_dev(bytes_per_weight: float) -> WeightBytes:
    """FLUX.1-dev's weight bytes (12B parameters: 23.8 GB in bf16; 19 double blocks of 0.68 GB, 38 single blocks of
    0.28 GB; VAE 0.17 GB in bf16) with the transformer at ``bytes_per_weight``."""
    double, single = 0.34e9 * bytes_per_weight, 0.14e9 * bytes_per_weight
    return WeightBytes(
        int(11.9e9 * bytes_per_weight), int(19 * double + 38 * single), int(double), int(0.168e9)
    )


@pytest.mark.parametrize(
    "bytes_per_weight,budget_gib,expected",
    [
        (2, 80, "none"),
        (2, 24, "model"),  # the transformer fits, transformer + VAE decode at tile 1024 does not
        (2, 12, "blocks"),
        (2, 2, "blocks"),  # at the smallest tile
        (1, 24, "none"),  # int8
        (1, 12, "model"),
        (1, 8, "blocks"),
    ],
)
def test_auto_offload_is_the_least_that_fits(bytes_per_weight, budget_gib, expected):
    placement = choose_offload(
        "auto", ModelSize(flux_dev(bytes_per_weight)), Budget(budget_gib * GiB, "test")
    )
    assert placement.offload == expected
    assert f"offload {expected}" in placement.describe() and "\n" not in placement.describe()


def test_a_budget_no_offload_fits_is_one_line():
    with pytest.raises(ValueError, match="too small: --offload blocks needs about") as e:
        choose_offload("auto", ModelSize(flux_dev(2)), Budget(1 * GiB, "max_memory"))
    assert "\n" not in str(e.value)


def test_a_named_offload_that_does_not_fit_says_which_does():
    with pytest.raises(ValueError, match="--offload none needs about .*; --offload blocks fits"):
        choose_offload("none", ModelSize(flux_dev(2)), Budget(12 * GiB, "test"))
    assert choose_offload("blocks", ModelSize(flux_dev(2)), Budget(12 * GiB, "test")).offload == "blocks"


def test_tile_plan_counts_the_weights_each_offload_keeps():
    weights, dims = flux_dev(2), MEM.ModelDims()

    def tile(mode: str) -> int:
        resident = resident_weights(weights, mode, "cuda")
        plan = MEM.plan_memory(
            (4096, 4096),
            MEM.Budget(24 * GiB),
            dims,
            2,
            MEM.TileRequest(1024, multiple=16, min_tile=64),
            resident=resident,
        )
        assert plan.fits and plan.peak > max(resident.values())
        return plan.tile

    assert tile("blocks") == 1024  # 1.7 GB of weights on the device: the whole tile fits
    assert tile("none") < 1024  # 24 GB of weights: the tile shrinks
    unweighted = MEM.plan_memory(
        (4096, 4096), MEM.Budget(24 * GiB), dims, 2, MEM.TileRequest(1024, multiple=16, min_tile=64)
    )
    assert unweighted.tile == 1024 and not unweighted.weights


def test_on_the_cpu_auto_is_no_offload_and_the_pipeline_plans_with_its_weights(tiny_pipe):
    assert tiny_pipe.placement.offload == "none" and tiny_pipe.placement.budget is None
    placement = choose_placement(
        tiny_pipe.model, torch.device("cpu"), torch.float32, "auto", "none", max_memory=1
    )
    assert placement.offload == "none"
    tiny_pipe.upscale_tensor(image(), TILES)
    total = tiny_pipe.placement.weights.total
    assert tiny_pipe.plan.weights == {"encode": total, "transformer": total, "decode": total}


# ----------------------------------------------------------------------------------------------------------------
# Command line, serve, ComfyUI
# ----------------------------------------------------------------------------------------------------------------


def test_upscale_with_block_offload_writes_the_same_image(tmp_path):
    Image.fromarray((image().permute(1, 2, 0).numpy() * 255).astype("uint8")).save(tmp_path / "a.png")
    common = [str(tmp_path / "a.png"), "--model", "tiny", "--device", "cpu", "-q", "--tile", "64"]
    assert main(["upscale", *common, "-o", str(tmp_path / "plain"), "--offload", "none"]) == 0
    assert main(["upscale", *common, "-o", str(tmp_path / "blocks"), "--offload", "blocks"]) == 0
    assert (tmp_path / "plain" / "a.png").read_bytes() == (tmp_path / "blocks" / "a.png").read_bytes()


def test_upscale_refuses_fp8_on_the_cpu_in_one_line_before_loading(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(PIPE, "load_model", lambda *a, **k: pytest.fail("model loaded"))
    argv = ["upscale", str(tmp_path / "a.png"), "-o", str(tmp_path / "out"), "--device", "cpu"]
    assert main([*argv, "--quantize", "fp8"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --quantize fp8 needs a CUDA GPU") and err.count("\n") == 1


def test_quantize_and_the_fp8_speed_switch_together_are_refused(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(Q, "torchao_available", lambda: True)
    monkeypatch.setattr(PIPE, "load_model", lambda *a, **k: pytest.fail("model loaded"))
    argv = ["upscale", str(tmp_path / "a.png"), "-o", str(tmp_path / "out"), "--device", "cpu"]
    assert main([*argv, "--quantize", "int8", "--fp8"]) == 2
    assert "--quantize int8 and --fp8 both quantise the transformer" in capsys.readouterr().err


@pytest.mark.parametrize("command", [["serve"], ["upscale", "x.png"]])
def test_offload_and_quantize_reach_the_model_choice(command):
    args = build_parser().parse_args([*command, "--offload", "model", "--quantize", "int8"])
    choice = model_choice(args)
    assert (choice.offload, choice.quantize) == ("model", "int8")
    assert (model_choice(build_parser().parse_args(command)).offload, choice.max_memory) == ("auto", None)
