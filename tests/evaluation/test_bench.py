"""``fluxsr bench`` and the memory planner on CPU: FLOP counter, bench JSON, planner arithmetic, OOM retry."""

import json
from pathlib import Path

import pytest
import torch

from fluxsr.evaluation import speed_config as SCF
from fluxsr.evaluation import speed_flops as SF
from fluxsr.evaluation import speed_report as SREP
from fluxsr.evaluation import speed_rows as SR
from fluxsr.evaluation import speed_run as SRUN
from fluxsr.inference import memory as MEM
from fluxsr.inference import probes as PROBES
from fluxsr.inference.color import color_fix_tiled
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


# ----------------------------------------------------------------------------------------------------------------
# Memory probes and planner
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux /proc")
def test_cpu_peak_probe_sees_a_temporary_allocation():
    PROBES.reset_peak("cpu")
    base = PROBES.read_peak("cpu")
    x = torch.ones(64 << 20, dtype=torch.uint8)  # 64 MiB, touched
    del x
    assert PROBES.read_peak("cpu") - base >= 60 << 20


def test_parse_and_format_bytes():
    assert MEM.parse_bytes("40GiB") == 40 << 30
    assert MEM.parse_bytes("8G") == 8_000_000_000
    assert MEM.parse_bytes("512 MiB") == 512 << 20
    assert MEM.parse_bytes("4e9") == 4_000_000_000
    assert MEM.parse_bytes("1.5GiB") == 3 << 29 and MEM.parse_bytes(8 << 30) == 8 << 30
    assert MEM.format_bytes(3 << 30) == "3.00 GiB"
    for bad in ("lots", "1e400", "40e", "2E", "3eb", "", "inf", "nanGiB"):
        with pytest.raises(ValueError, match="cannot read"):
            MEM.parse_bytes(bad)
    for typo in ("0", "1.5", "100KiB"):  # under 1 MiB: a missing unit, not a plan
        with pytest.raises(ValueError, match="under 1 MiB"):
            MEM.parse_bytes(typo)


@pytest.mark.parametrize("value", ["1e400", "0", "abc"])
def test_bad_max_memory_is_refused_before_loading(value, capsys):
    from fluxsr.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["upscale", "missing.png", "-o", "out", "--max-memory", value])
    assert exit_info.value.code == 2 and "--max-memory" in capsys.readouterr().err


def test_tile_candidates_halve_on_the_multiple():
    assert MEM.tile_candidates(1024, 16, 128) == [1024, 512, 256, 128]
    assert MEM.tile_candidates(1000, 16, 100) == [992, 496, 240, 112]


COST = MEM.CostModel(
    encode_per_px=100,
    decode_per_px=200,
    transformer_per_token_dim=10,
    resident_per_px=40,
    color_fix_per_px=60,
    offloaded_per_px=4,
    safety=1.0,
)
DIMS = MEM.ModelDims(inner_dim=64, heads=4, text_len=16, vae_scale=8, vae_width=128)


def test_cost_model_arithmetic():
    # tile 256: 65536 px; tokens 65536 / 256 + 16 = 272
    assert COST.stages(65536, DIMS, 2) == {
        "encode": 100 * 65536 * 2,
        "decode": 200 * 65536 * 2,
        "transformer": 10 * 272 * 64 * 2,
    }
    assert COST.full_image(1000, True) == 100_000 and COST.full_image(1000, False) == 4000
    quad = MEM.CostModel(transformer_per_token_dim=10, attention_quadratic=True)
    assert quad.transformer(65536, DIMS, 2) == 10 * 272 * 64 * 2 + 4 * 272**2 * 2 * 2
    half = MEM.ModelDims(inner_dim=64, heads=4, text_len=16, vae_width=64)
    assert COST.decode(65536, half, 2) == 200 * 65536  # VAE costs scale with its width


def test_plan_picks_largest_fitting_tile_and_offloads_when_needed():
    image = (1024, 1024)  # 1 Mpx: full image on device costs 100 B/px = 104857600, off device 4 B/px
    dec = lambda t: 200 * t * t * 2  # noqa: E731  decode dominates: 400 B per tile pixel
    full_on = 100 * 1024 * 1024
    # everything fits at the asked tile
    p = MEM.plan_memory(image, dec(1024) + full_on, DIMS, 2, 1024, cost=COST)
    assert (p.tile, p.full_image_on_device, p.fits, p.changed) == (1024, True, True, False)
    assert p.peak == dec(1024) + full_on
    # one byte less: same tile, but the whole image moves off the device
    p = MEM.plan_memory(image, dec(1024) + full_on - 1, DIMS, 2, 1024, cost=COST)
    assert (p.tile, p.full_image_on_device, p.changed) == (1024, False, True)
    # less than a 1024 tile even off device: 512 with the image on device
    p = MEM.plan_memory(image, dec(512) + full_on, DIMS, 2, 1024, cost=COST)
    assert (p.tile, p.full_image_on_device) == (512, True)
    # nothing fits: smallest tile, flagged
    p = MEM.plan_memory(image, 1000, DIMS, 2, 1024, cost=COST, min_tile=256)
    assert (p.tile, p.fits, p.full_image_on_device) == (256, False, False)
    assert "DOES NOT FIT" in p.describe()


def test_plan_tiles_per_pass():
    """Stage costs grow with the tiles in a pass; the planner keeps the tile and lowers the batch first."""
    image = (1024, 1024)
    dec = lambda t, n: 200 * t * t * 2 * n  # noqa: E731
    full_on = 100 * 1024 * 1024
    # 512 tiles with overlap 64 on 1024: starts 0, 448, 512 per side -> 9 tiles
    p = MEM.plan_memory(image, dec(512, 3) + full_on, DIMS, 2, 512, cost=COST, overlap=64, requested_batch=4)
    assert (p.tile, p.batch, p.full_image_on_device, p.changed) == (512, 3, True, True)
    assert p.estimates["decode"] == dec(512, 3) and "3 tile(s) per pass (asked 4)" in p.describe()
    # auto (0): up to AUTO_TILE_BATCH, and lowering it is not a change
    p = MEM.plan_memory(image, 10**12, DIMS, 2, 512, cost=COST, overlap=64, requested_batch=0)
    assert (p.batch, p.changed) == (MEM.AUTO_TILE_BATCH, False)
    p = MEM.plan_memory(image, dec(512, 2) + full_on, DIMS, 2, 512, cost=COST, overlap=64, requested_batch=0)
    assert (p.tile, p.batch, p.changed) == (512, 2, False)
    # never more than the number of tiles, and that cap is not a change worth printing
    p = MEM.plan_memory(image, 10**12, DIMS, 2, 1024, cost=COST, requested_batch=8)
    assert (p.batch, p.tiles, p.changed) == (1, 1, False)
    # a larger tile wins over more tiles per pass; when one 512 tile does not fit even with the image off the
    # device (latents 4 B/px), the 256 tiles take as many per pass as fit
    off = 4 * 1024 * 1024
    p = MEM.plan_memory(image, dec(512, 1) + off - 1, DIMS, 2, 512, cost=COST, overlap=64, requested_batch=4)
    assert (p.tile, p.batch, p.full_image_on_device) == (256, 3, False)


def test_plan_rounds_the_asked_tile_without_calling_it_a_change():
    p = MEM.plan_memory((2048, 2048), 10**12, DIMS, 2, 1000, cost=COST)
    assert (p.tile, p.requested_tile, p.changed) == (992, 992, False)


def test_plan_never_charges_more_than_the_image():
    p = MEM.plan_memory((100, 60), 10**12, DIMS, 2, 1024, cost=COST)
    assert p.estimates["decode"] == 200 * 112 * 64 * 2  # padded to 16: 112 x 64 pixels in the one tile


def test_safety_margin_applies():
    cost = MEM.CostModel(**{**COST.__dict__, "safety": 0.5})
    need = 200 * 1024 * 1024 * 2 + 100 * 1024 * 1024
    assert MEM.plan_memory((1024, 1024), 2 * need, DIMS, 2, 1024, cost=cost).tile == 1024
    assert MEM.plan_memory((1024, 1024), 2 * need - 2, DIMS, 2, 1024, cost=cost).full_image_on_device is False


def test_device_budget_honours_max_memory():
    budget, source = MEM.device_budget("cpu", max_memory=1)  # less than already in use: nothing left
    assert budget == 0 and "max_memory" in source
    budget, source = MEM.device_budget("cpu", max_memory=1 << 60)  # a cap above what exists changes nothing
    assert source == "MemAvailable" and budget > 0


def test_pipeline_plans_and_keeps_requested_tile_when_it_fits():
    pipe = FluxSRPipeline.from_pretrained("tiny", device="cpu")
    pipe.upscale_tensor(torch.rand(3, 10, 12), UpscaleOptions(tile=64, overlap=16))
    assert pipe.plan.tile == 64 and pipe.plan.full_image_on_device and not pipe.plan.retries
    assert set(pipe.peaks) == {"resize", "encode", "transformer", "decode", "color_fix"}


# ----------------------------------------------------------------------------------------------------------------
# Out-of-memory retry and the off-device path
# ----------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_pipe():
    return FluxSRPipeline.from_pretrained("tiny", device="cpu")


@pytest.mark.parametrize("error", [torch.cuda.OutOfMemoryError, MemoryError])
def test_oom_retry_halves_tiles_and_equals_small_tile_run(tiny_pipe, monkeypatch, error):
    x = torch.rand(3, 16, 40, generator=torch.Generator().manual_seed(0))  # -> 64 x 160: 3 tiles of 64
    small = tiny_pipe.upscale_tensor(x, UpscaleOptions(tile=64, overlap=16))
    real_decode, tiles = tiny_pipe.decode, []

    def flaky_decode(z, opts, *a, **kw):
        tiles.append(opts.tile)
        if opts.tile > 64:
            raise error("fake: tile too large")
        return real_decode(z, opts, *a, **kw)

    monkeypatch.setattr(tiny_pipe, "decode", flaky_decode)
    out = tiny_pipe.upscale_tensor(x, UpscaleOptions(tile=256, overlap=16))
    assert tiles == [256, 128, 64]
    assert torch.equal(out, small)
    assert tiny_pipe.plan.tile == 64 and len(tiny_pipe.plan.retries) == 2


def test_oom_retry_halves_tiles_per_pass_before_the_tile(tiny_pipe, monkeypatch):
    x = torch.rand(3, 16, 40, generator=torch.Generator().manual_seed(0))  # -> 64 x 160: 3 tiles of 64
    one = tiny_pipe.upscale_tensor(x, UpscaleOptions(tile=64, overlap=16))
    real, seen = tiny_pipe.transform, []

    def flaky(z, opts):
        seen.append((opts.tile, opts.tile_batch))
        if opts.tile_batch > 1:
            raise torch.cuda.OutOfMemoryError("fake: too many tiles per pass")
        return real(z, opts)

    monkeypatch.setattr(tiny_pipe, "transform", flaky)
    out = tiny_pipe.upscale_tensor(x, UpscaleOptions(tile=64, overlap=16, tile_batch=3))
    assert seen == [(64, 3), (64, 1)] and tiny_pipe.plan.batch == 1
    assert "x 3: retrying with tile 64 x 1" in tiny_pipe.plan.retries[0]
    torch.testing.assert_close(out, one, atol=1e-5, rtol=0)


def test_oom_in_color_fix_keeps_the_tiles_per_pass(tiny_pipe, monkeypatch):
    """Fewer tiles per pass cannot help the whole-image colour fix: the image moves off the device instead."""
    import fluxsr.inference.pipeline as P

    x = torch.rand(3, 16, 40, generator=torch.Generator().manual_seed(0))
    real, calls = P.color_fix, []

    def flaky(y, r, method):
        calls.append(1)
        if len(calls) == 1:
            raise torch.cuda.OutOfMemoryError("fake: full-size colour fix")
        return real(y, r, method)

    monkeypatch.setattr(P, "color_fix", flaky)
    tiny_pipe.upscale_tensor(x, UpscaleOptions(tile=64, overlap=16, tile_batch=3))
    assert (tiny_pipe.plan.batch, tiny_pipe.plan.tile, tiny_pipe.plan.full_image_on_device) == (3, 64, False)
    assert len(tiny_pipe.plan.retries) == 1


def test_oom_retry_gives_up_below_min_tile(tiny_pipe, monkeypatch):
    def always(*a, **kw):
        raise torch.cuda.OutOfMemoryError("fake")

    monkeypatch.setattr(tiny_pipe, "transform", always)
    with pytest.raises(torch.cuda.OutOfMemoryError):
        tiny_pipe.upscale_tensor(torch.rand(3, 16, 24), UpscaleOptions(tile=128, overlap=16))
    # 128 -> 64; 32 is below the minimum, so the last resort moves the full image off the device and starts again
    # from the planned 128; 64 again, then it gives up
    retries = tiny_pipe.plan.retries
    assert (
        len(retries) == 3
        and "tile 64 x 1: retrying with tile 128 x 1, full image off the device" in retries[1]
    )


@pytest.mark.parametrize("stage", ["decode", "transform"])
def test_oom_at_the_smallest_tile_moves_the_full_image_off_the_device(tiny_pipe, monkeypatch, stage):
    """Blend buffers and the reference do not shrink with the tile: at the minimum tile they leave the device."""
    x = torch.rand(3, 16, 24, generator=torch.Generator().manual_seed(1))
    ref = tiny_pipe.upscale_tensor(x, UpscaleOptions(tile=64, overlap=16))
    real, seen = getattr(tiny_pipe, stage), []

    def flaky(z, opts, *a, **kw):
        seen.append(tiny_pipe.plan.full_image_on_device)
        if tiny_pipe.plan.full_image_on_device:
            raise torch.cuda.OutOfMemoryError("fake: full-size buffers")
        return real(z, opts, *a, **kw)

    monkeypatch.setattr(tiny_pipe, stage, flaky)
    out = tiny_pipe.upscale_tensor(x, UpscaleOptions(tile=64, overlap=16))
    assert seen == [True, False] and tiny_pipe.plan.tile == 64
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=0)


def test_cpu_allocator_failure_is_an_out_of_memory_error(tiny_pipe, monkeypatch):
    """PyTorch's CPU allocator raises a RuntimeError, not MemoryError: it is retried like any OOM."""
    x = torch.rand(3, 16, 40, generator=torch.Generator().manual_seed(0))
    small = tiny_pipe.upscale_tensor(x, UpscaleOptions(tile=64, overlap=16))
    real = tiny_pipe.decode

    def flaky(z, opts, *a, **kw):
        if opts.tile > 64:
            raise RuntimeError(
                "[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory: "
                "you tried to allocate 1099511627776 bytes."
            )
        return real(z, opts, *a, **kw)

    monkeypatch.setattr(tiny_pipe, "decode", flaky)
    assert torch.equal(tiny_pipe.upscale_tensor(x, UpscaleOptions(tile=128, overlap=16)), small)
    assert MEM.is_oom(RuntimeError("DefaultCPUAllocator: can't allocate memory")) and MEM.is_oom(
        MemoryError()
    )
    assert MEM.is_oom(RuntimeError("CUDA error: out of memory")) and not MEM.is_oom(
        RuntimeError("shape mismatch")
    )


def test_tiles_larger_than_the_image_are_one_tile_and_not_a_change():
    # 64 x 160 asked at 1024: 1024, 512 and 256 would all be the same single tile; retries start at 256 -> 128
    p = MEM.plan_memory((64, 160), 10**12, DIMS, 2, 1024, cost=COST, min_tile=64)
    assert (p.tile, p.tiles, p.changed) == (256, 1, False)


def test_cpu_plan_counts_the_full_image_that_stays_in_ram():
    """On the CPU "off the device" is the same RAM: only the colour fix's extra goes, the resident tensors stay."""
    assert (
        COST.full_image(1000, False, "cpu") == (40 + 4) * 1000
        and COST.full_image(1000, False, "cuda") == 4000
    )
    image = (1024, 1024)
    dec = 200 * 512 * 512 * 2
    p_gpu = MEM.plan_memory(image, dec + 4 * 2**20, DIMS, 2, 512, cost=COST, device_type="cuda")
    p_cpu = MEM.plan_memory(image, dec + 4 * 2**20, DIMS, 2, 512, cost=COST, device_type="cpu")
    assert (p_gpu.tile, p_gpu.full_image_on_device) == (512, False)
    assert p_cpu.tile < 512  # the 512 tile does not fit next to 44 B/px of resident image


def test_plan_line_shows_the_usable_part_of_the_budget():
    p = MEM.plan_memory((1024, 1024), 1000 << 20, DIMS, 2, 512, cost=MEM.CostModel())
    assert "of 850.0 MiB usable (85% of 1000.0 MiB" in p.describe()


def test_oom_in_color_fix_moves_full_image_off_device(tiny_pipe, monkeypatch):
    import fluxsr.inference.pipeline as P

    x = torch.rand(3, 16, 24, generator=torch.Generator().manual_seed(1))
    ref = tiny_pipe.upscale_tensor(x, UpscaleOptions(tile=64, overlap=16))
    calls = []

    def flaky(y, r, method):
        calls.append(y.shape)
        raise torch.cuda.OutOfMemoryError("fake: full-size colour fix")

    monkeypatch.setattr(P, "color_fix", flaky)
    out = tiny_pipe.upscale_tensor(x, UpscaleOptions(tile=64, overlap=16))
    assert len(calls) == 1 and not tiny_pipe.plan.full_image_on_device and tiny_pipe.plan.tile == 64
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=0)


@pytest.mark.parametrize("method", ["wavelet", "adain", "none"])
def test_color_fix_tiled_equals_whole_image(method):
    from fluxsr.inference.color import color_fix

    g = torch.Generator().manual_seed(0)
    x, ref = torch.rand(1, 3, 70, 90, generator=g) * 1.2 - 0.1, torch.rand(1, 3, 70, 90, generator=g)
    whole = color_fix(x, ref, method).clamp(0, 1)
    for tile in (16, 33, 128):
        torch.testing.assert_close(color_fix_tiled(x, ref, method, tile), whole, atol=2e-6, rtol=0)


def test_run_with_oom_retry_retries_while_after_oom_makes_a_smaller_plan():
    seen, errors = [], []

    def attempt():
        seen.append(len(seen))
        if len(seen) < 3:
            raise MemoryError
        return "done"

    assert MEM.run_with_oom_retry(attempt, lambda e: errors.append(e) or True) == "done"
    assert seen == [0, 1, 2] and len(errors) == 2
    with pytest.raises(MemoryError):  # after_oom gives up: the error itself comes out
        MEM.run_with_oom_retry(lambda: (_ for _ in ()).throw(MemoryError()), lambda e: False)
    with pytest.raises(ValueError):  # not out of memory: never retried
        MEM.run_with_oom_retry(lambda: int("x"), lambda e: pytest.fail("retried a ValueError"))


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
