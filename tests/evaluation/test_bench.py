"""``fluxsr bench`` on CPU: FLOP counter, bench rows, JSON and markdown, bench arguments, the CUDA row."""

import json

import pytest
import torch

from fluxsr.evaluation import speed_config as SCF
from fluxsr.evaluation import speed_flops as SF
from fluxsr.evaluation import speed_report as SREP
from fluxsr.evaluation import speed_rows as SR
from fluxsr.evaluation import speed_run as SRUN
from fluxsr.inference.pipeline import FluxSRPipeline, UpscaleOptions
from fluxsr.io.cache import cache_dir
from fluxsr.model.model import velocity
from fluxsr.model.presets import TINY_TRANSFORMER, build_tiny

# ----------------------------------------------------------------------------------------------------------------
# FLOP counter
# ----------------------------------------------------------------------------------------------------------------


def test_flops_match_hand_count_for_tiny_config():
    """TINY_TRANSFORMER: D = 2 heads x 16 = 32, MLP 128, 1 double + 1 single block; 16 image + 8 text tokens."""
    ni, nt, n, d, mlp = 16, 8, 24, 32, 128
    embed = (
        2 * ni * 64 * d
        + 2 * nt * 32 * d  # x_embedder (64 ch), context_embedder (joint dim 32)
        + 2 * (2 * 256 * d + 2 * d * d)  # timestep and guidance MLPs
        + 2 * 32 * d
        + 2 * d * d
    )  # pooled text MLP
    stream = lambda t: 2 * t * d * 3 * d + 2 * t * d * d + 2 * t * d * mlp + 2 * t * mlp * d  # noqa: E731
    double = 2 * (2 * d * 6 * d) + stream(ni) + stream(nt)
    single = 2 * d * 3 * d + 2 * n * d * 3 * d + 2 * n * d * mlp + 2 * n * (d + mlp) * d
    final = 2 * d * 2 * d + 2 * ni * d * 64
    attention = 2 * 4 * n * n * d
    assert embed + double + single + final == 1_402_880
    f = SF.transformer_flops(TINY_TRANSFORMER, ni, nt)
    assert f["linear"] == 1_402_880
    assert f["attention"] == attention == 147_456
    assert f["total"] == 1_550_336


def test_flops_match_torch_flop_counter():
    """The analytic count equals PyTorch's FlopCounterMode on a real forward of the tiny model (the math SDPA
    backend, so attention shows up as the batched matmuls it counts)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    model = build_tiny()
    z = torch.randn(1, 16, 12, 8)  # 6 x 4 = 24 image tokens
    with torch.inference_mode(), sdpa_kernel([SDPBackend.MATH]), FlopCounterMode(display=False) as counter:
        velocity(model, z, 0.25)
    expected = SF.transformer_flops(model.transformer.config, 24, model.cond.prompt_embeds.shape[1])["total"]
    assert counter.get_total_flops() == expected


def test_flux_dev_floor_at_1024():
    """FLUX.1-dev at 1024^2 (4096 image + 512 text tokens): 74.38 TFLOP, 94 ms at 790 TFLOP/s."""
    from fluxsr.model.presets import FLUX_DEV_TRANSFORMER

    a = SF.analytic_floor(FLUX_DEV_TRANSFORMER, (1024, 1024), 1024, 128, 512, 790.0)
    assert a["tiles"] == 1 and a["tokens_per_tile"] == 4608
    assert a["tflop"] == pytest.approx(74.3847, abs=1e-3)
    assert a["floor_ms"] == pytest.approx(74.3847e12 / 790e12 * 1e3, rel=1e-5)
    four_k = SF.analytic_floor(FLUX_DEV_TRANSFORMER, (4096, 4096), 1024, 128, 512, 790.0)
    assert four_k["tiles"] == 25  # starts 0, 896, 1792, 2688, 3072 on each axis
    assert four_k["tflop"] == pytest.approx(25 * a["tflop"])


def test_tile_tokens_follow_the_pipelines_tiling(monkeypatch):
    pipe = FluxSRPipeline.from_pretrained("tiny", device="cpu")
    seen = []
    real = velocity  # 20 x 28 -> 80 x 112 output, latent 10 x 14: tiles of 12 with overlap 4

    def spy(model, z, t, offset=(0, 0), **kw):
        seen.append(z.shape[-2] // 2 * z.shape[-1] // 2)
        return real(model, z, t, offset, **kw)

    monkeypatch.setattr("fluxsr.inference.pipeline.velocity", spy)
    pipe.upscale_tensor(torch.rand(3, 20, 28), UpscaleOptions(tile=96, overlap=32))
    assert seen == SF.tile_tokens((80, 112), 96, 32)
    assert len(seen) == 1 * 2


# ----------------------------------------------------------------------------------------------------------------
# The benchmark on CPU
# ----------------------------------------------------------------------------------------------------------------


def _run(tmp_path, **kw) -> dict:
    cfg = SCF.BenchConfig(
        model="tiny",
        sizes=(32, 64),
        repeat=2,
        warmup=0,
        device="cpu",
        teacher_steps=6,
        teacher_run_steps=2,
        **kw,
    )
    written = []
    result = SRUN.run_bench(cfg, on_row=lambda r: written.append(len(r["rows"])), log=lambda s: None)
    assert written == list(range(1, len(result["rows"]) + 1))  # partial JSON after every row
    return result


def test_bench_rows_and_stages_without_realesrgan_weights(tmp_path, monkeypatch):
    monkeypatch.setenv("FLUXSR_HOME", str(tmp_path / "empty-cache"))
    result = _run(tmp_path)
    assert result["env"]["device"] == "cpu" and result["env"]["model"] == "tiny"
    assert {"torch", "diffusers", "device_name", "dtype"} <= result["env"].keys()
    rows = {(r["row"].split(":")[0], r["size"]): r for r in result["rows"]}
    assert set(rows) == {(n, s) for n in SCF.ROWS for s in (32, 64)}
    for size in (32, 64):
        flux = rows["fluxsr", size]
        assert set(flux["stages_ms"]) == set(SCF.STAGES)
        assert all(v > 0 for v in flux["stages_ms"].values())
        assert flux["peak_bytes"] > 0 and flux["total_ms"] >= flux["gpu_work_ms"] > 0
        assert flux["analytic"]["tiles"] == 1 and flux["x_floor"] > 0
        assert "skipped" in rows["realesrgan", size] and "not cached" in rows["realesrgan", size]["skipped"]
        assert set(rows["bicubic", size]["stages_ms"]) == {"read", "resize", "write"}
        teacher = rows["teacher", size]
        assert teacher["teacher_steps"] == 6 and teacher["teacher_run_steps"] == 2
        # a scaled row reports no unscaled CPU time; what the 2 steps cost is kept apart
        assert teacher["cpu_ms"] is None and teacher["run_cpu_ms"] > 0 and teacher["first_call_s"] is None
        assert teacher["analytic"]["tflop"] == pytest.approx(6 * flux["analytic"]["tflop"])
    assert any("scaled linearly to 6 steps" in n for n in result["notes"])
    table = SREP.to_markdown(result)
    assert table.count("| 8->32 |") == 4 and "not cached" in table and "x floor" in table


@pytest.mark.skipif(
    not (cache_dir() / "realesrgan_x4plus.safetensors").is_file(),
    reason="Real-ESRGAN weights not cached (fluxsr weights fetch)",
)
def test_bench_realesrgan_row_when_weights_cached(tmp_path):
    cfg = SCF.BenchConfig(model="tiny", sizes=(32,), repeat=1, warmup=0, device="cpu", rows=("realesrgan",))
    (row,) = SRUN.run_bench(cfg, log=lambda s: None)["rows"]
    assert set(row["stages_ms"]) == {"read", "net", "write"} and row["total_ms"] > 0


def test_realesrgan_random_weights_row(tmp_path, monkeypatch):
    monkeypatch.setenv("FLUXSR_HOME", str(tmp_path / "empty-cache"))
    cfg = SCF.BenchConfig(
        model="tiny",
        sizes=(16,),
        repeat=1,
        warmup=0,
        device="cpu",
        rows=("realesrgan",),
        esrgan_weights="random",
    )
    (row,) = SRUN.run_bench(cfg, log=lambda s: None)["rows"]
    assert row["row"] == "realesrgan (random weights)" and set(row["stages_ms"]) == {"read", "net", "write"}


def test_bench_command_line_writes_json_and_markdown(tmp_path):
    from fluxsr.cli import main

    out = tmp_path / "b.json"
    rc = main(
        [
            "bench",
            "--model",
            "tiny",
            "--sizes",
            "32",
            "--repeat",
            "1",
            "--warmup",
            "0",
            "--device",
            "cpu",
            "--rows",
            "fluxsr,bicubic",
            "--json",
            str(out),
            "--markdown",
            str(tmp_path / "b.md"),
        ]
    )
    assert rc == 0
    data = json.loads(out.read_text())
    assert [r["row"] for r in data["rows"]] == ["fluxsr:tiny", "bicubic"]
    table = (tmp_path / "b.md").read_text()
    assert "fluxsr:tiny" in table and "| transformer (ms) |" in table
    # on the CPU the FLOP floor (a GPU's peak) is off unless asked for
    assert data["config"]["analytic"] is False and "analytic" not in data["rows"][0]


@pytest.mark.parametrize(
    "args, message",
    [
        (["--rows", "fluxsr,nope"], "unknown rows"),
        (["--rows", ","], "nothing to run"),
        (["--sizes", "0"], "multiples of 4"),
        (["--sizes", "66"], "multiples of 4"),  # the input would be 16 px and the x4 output 64, not 66
        (["--sizes", "64,x"], "whole numbers"),
        (["--repeat", "0"], "--repeat"),
        (["--warmup", "-1"], "--warmup"),
        (["--peak-tflops", "0"], "--peak-tflops"),
        (["--peak-tflops", "nan"], "--peak-tflops"),
        (["--teacher-steps", "0"], "--teacher-steps"),
        (["--teacher-run-steps", "-1"], "--teacher-run-steps"),
        (["--teacher-steps", "4", "--teacher-run-steps", "8"], "--teacher-run-steps"),
        (["--json", "."], "is a folder"),
        (["--markdown", "."], "is a folder"),
        (["--device", "foo"], "unknown device"),
    ],
)
def test_bad_bench_arguments_are_one_line_errors(args, message, capsys):
    from fluxsr.cli import main

    assert main(["bench", "--model", "tiny", "--rows", "bicubic", "--sizes", "32", *args]) == 2
    assert message in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message of a machine without CUDA")
def test_cuda_device_without_cuda_is_a_clear_error(capsys):
    from fluxsr.cli import main

    assert main(["bench", "--model", "tiny", "--rows", "bicubic", "--sizes", "32", "--device", "cuda"]) == 2
    assert "CUDA is not available" in capsys.readouterr().err
    assert main(["upscale", "--device", "cuda", "missing.png", "-o", "out"]) == 2


def test_teacher_note_only_with_a_teacher_row_and_baseline_gpu_work(tmp_path, monkeypatch):
    monkeypatch.setenv("FLUXSR_HOME", str(tmp_path / "empty-cache"))
    cfg = SCF.BenchConfig(
        model="tiny",
        sizes=(16,),
        repeat=1,
        warmup=0,
        device="cpu",
        rows=("realesrgan",),
        esrgan_weights="random",
        teacher_run_steps=2,
        teacher_steps=6,
    )
    result = SRUN.run_bench(cfg, log=lambda s: None)
    assert not any("teacher" in n for n in result["notes"])
    (row,) = result["rows"]
    # Real-ESRGAN's device work is its network: comparable with fluxsr's GPU work column
    assert row["gpu_work_ms"] == pytest.approx(row["stages_ms"]["net"])
    assert "(input)" in SREP.to_markdown(result)


def test_random_weights_flag_names_the_flux_shaped_model():
    from fluxsr.cli import build_parser
    from fluxsr.cli.bench import config_from_args

    def config(*flags):
        return config_from_args(build_parser().parse_args(["bench", *flags, "--device", "cpu"]))

    assert config("--random-weights").model == SCF.RANDOM_FLUX
    assert config().model is None
    with pytest.raises(ValueError, match="random-weights"):
        config("--random-weights", "--model", "tiny")


def test_fluxsr_row_on_cuda_adds_the_cost_model_calibration(tiny_pipe, tmp_path):
    """The CUDA-only part of the fluxsr row (the memory plan's measured constants) runs on any machine: the row's
    device says cuda while the tiny pipeline measures on the CPU."""
    cfg = SCF.BenchConfig(model="tiny", sizes=(64,), repeat=1, warmup=0, device="cpu", rows=("fluxsr",))
    run = SRUN.BenchRun(cfg, torch.device("cuda"), torch.float32, pipe=tiny_pipe)
    img = SR.make_input(tmp_path / "in.png", 64)
    row = SRUN.ROW_RUNNERS["fluxsr"](run, 64, img, tmp_path / "out.png")
    assert row["row"] == "fluxsr:tiny" and row["tile"] and row["stage_peak_bytes"]
    assert set(row["calibration"]) == {"encode_per_px", "decode_per_px", "transformer_per_token_dim"}
    assert row["analytic"]["floor_ms"] > 0
