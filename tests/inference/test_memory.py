"""The memory plan on CPU: memory probes, the planner's arithmetic, the out-of-memory retry and the off-device path."""

from pathlib import Path

import pytest
import torch

from fluxsr.inference import memory as MEM
from fluxsr.inference import oom as OOM
from fluxsr.inference import probes as PROBES
from fluxsr.inference.color import color_fix_tiled
from fluxsr.inference.pipeline import FluxSRPipeline, UpscaleOptions

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
    p = MEM.plan_memory(image, MEM.Budget(dec(1024) + full_on), DIMS, 2, MEM.TileRequest(1024), cost=COST)
    assert (p.tile, p.full_image_on_device, p.fits, p.changed) == (1024, True, True, False)
    assert p.peak == dec(1024) + full_on
    # one byte less: same tile, but the whole image moves off the device
    p = MEM.plan_memory(image, MEM.Budget(dec(1024) + full_on - 1), DIMS, 2, MEM.TileRequest(1024), cost=COST)
    assert (p.tile, p.full_image_on_device, p.changed) == (1024, False, True)
    # less than a 1024 tile even off device: 512 with the image on device
    p = MEM.plan_memory(image, MEM.Budget(dec(512) + full_on), DIMS, 2, MEM.TileRequest(1024), cost=COST)
    assert (p.tile, p.full_image_on_device) == (512, True)
    # nothing fits: smallest tile, flagged
    p = MEM.plan_memory(image, MEM.Budget(1000), DIMS, 2, MEM.TileRequest(1024, min_tile=256), cost=COST)
    assert (p.tile, p.fits, p.full_image_on_device) == (256, False, False)
    assert "DOES NOT FIT" in p.describe()


def test_plan_tiles_per_pass():
    """Stage costs grow with the tiles in a pass; the planner keeps the tile and lowers the batch first."""
    image = (1024, 1024)
    dec = lambda t, n: 200 * t * t * 2 * n  # noqa: E731
    full_on = 100 * 1024 * 1024
    # 512 tiles with overlap 64 on 1024: starts 0, 448, 512 per side -> 9 tiles
    p = MEM.plan_memory(
        image,
        MEM.Budget(dec(512, 3) + full_on),
        DIMS,
        2,
        MEM.TileRequest(512, overlap=64, batch=4),
        cost=COST,
    )
    assert (p.tile, p.batch, p.full_image_on_device, p.changed) == (512, 3, True, True)
    assert p.estimates["decode"] == dec(512, 3) and "3 tile(s) per pass (asked 4)" in p.describe()
    # auto (0): up to AUTO_TILE_BATCH, and lowering it is not a change
    p = MEM.plan_memory(
        image, MEM.Budget(10**12), DIMS, 2, MEM.TileRequest(512, overlap=64, batch=0), cost=COST
    )
    assert (p.batch, p.changed) == (MEM.AUTO_TILE_BATCH, False)
    p = MEM.plan_memory(
        image,
        MEM.Budget(dec(512, 2) + full_on),
        DIMS,
        2,
        MEM.TileRequest(512, overlap=64, batch=0),
        cost=COST,
    )
    assert (p.tile, p.batch, p.changed) == (512, 2, False)
    # never more than the number of tiles, and that cap is not a change worth printing
    p = MEM.plan_memory(image, MEM.Budget(10**12), DIMS, 2, MEM.TileRequest(1024, batch=8), cost=COST)
    assert (p.batch, p.tiles, p.changed) == (1, 1, False)
    # a larger tile wins over more tiles per pass; when one 512 tile does not fit even with the image off the
    # device (latents 4 B/px), the 256 tiles take as many per pass as fit
    off = 4 * 1024 * 1024
    p = MEM.plan_memory(
        image,
        MEM.Budget(dec(512, 1) + off - 1),
        DIMS,
        2,
        MEM.TileRequest(512, overlap=64, batch=4),
        cost=COST,
    )
    assert (p.tile, p.batch, p.full_image_on_device) == (256, 3, False)


def test_plan_rounds_the_asked_tile_without_calling_it_a_change():
    p = MEM.plan_memory((2048, 2048), MEM.Budget(10**12), DIMS, 2, MEM.TileRequest(1000), cost=COST)
    assert (p.tile, p.requested_tile, p.changed) == (992, 992, False)


def test_plan_never_charges_more_than_the_image():
    p = MEM.plan_memory((100, 60), MEM.Budget(10**12), DIMS, 2, MEM.TileRequest(1024), cost=COST)
    assert p.estimates["decode"] == 200 * 112 * 64 * 2  # padded to 16: 112 x 64 pixels in the one tile


def test_safety_margin_applies():
    cost = MEM.CostModel(**{**COST.__dict__, "safety": 0.5})
    need = 200 * 1024 * 1024 * 2 + 100 * 1024 * 1024
    assert (
        MEM.plan_memory((1024, 1024), MEM.Budget(2 * need), DIMS, 2, MEM.TileRequest(1024), cost=cost).tile
        == 1024
    )
    assert (
        MEM.plan_memory(
            (1024, 1024), MEM.Budget(2 * need - 2), DIMS, 2, MEM.TileRequest(1024), cost=cost
        ).full_image_on_device
        is False
    )


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
    assert OOM.is_oom(RuntimeError("DefaultCPUAllocator: can't allocate memory")) and OOM.is_oom(
        MemoryError()
    )
    assert OOM.is_oom(RuntimeError("CUDA error: out of memory")) and not OOM.is_oom(
        RuntimeError("shape mismatch")
    )


def test_tiles_larger_than_the_image_are_one_tile_and_not_a_change():
    # 64 x 160 asked at 1024: 1024, 512 and 256 would all be the same single tile; retries start at 256 -> 128
    p = MEM.plan_memory((64, 160), MEM.Budget(10**12), DIMS, 2, MEM.TileRequest(1024, min_tile=64), cost=COST)
    assert (p.tile, p.tiles, p.changed) == (256, 1, False)


def test_cpu_plan_counts_the_full_image_that_stays_in_ram():
    """On the CPU "off the device" is the same RAM: only the colour fix's extra goes, the resident tensors stay."""
    assert (
        COST.full_image(1000, False, "cpu") == (40 + 4) * 1000
        and COST.full_image(1000, False, "cuda") == 4000
    )
    image = (1024, 1024)
    dec = 200 * 512 * 512 * 2
    p_gpu = MEM.plan_memory(
        image, MEM.Budget(dec + 4 * 2**20, device_type="cuda"), DIMS, 2, MEM.TileRequest(512), cost=COST
    )
    p_cpu = MEM.plan_memory(
        image, MEM.Budget(dec + 4 * 2**20, device_type="cpu"), DIMS, 2, MEM.TileRequest(512), cost=COST
    )
    assert (p_gpu.tile, p_gpu.full_image_on_device) == (512, False)
    assert p_cpu.tile < 512  # the 512 tile does not fit next to 44 B/px of resident image


def test_plan_line_shows_the_usable_part_of_the_budget():
    p = MEM.plan_memory(
        (1024, 1024), MEM.Budget(1000 << 20), DIMS, 2, MEM.TileRequest(512), cost=MEM.CostModel()
    )
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

    assert OOM.run_with_oom_retry(attempt, lambda e: errors.append(e) or True) == "done"
    assert seen == [0, 1, 2] and len(errors) == 2
    with pytest.raises(MemoryError):  # after_oom gives up: the error itself comes out
        OOM.run_with_oom_retry(lambda: (_ for _ in ()).throw(MemoryError()), lambda e: False)
    with pytest.raises(ValueError):  # not out of memory: never retried
        OOM.run_with_oom_retry(lambda: int("x"), lambda e: pytest.fail("retried a ValueError"))
