"""The one-step pipeline on the tiny random-weight FLUX: sizes, tiling, determinism, dtypes, errors."""

import pytest
import torch
from PIL import Image

from fluxsr.inference import memory as MEM
from fluxsr.inference.pipeline import FluxSRPipeline, NonFiniteOutputError, UpscaleOptions
from fluxsr.model.model import FluxSRModel, ModelSpec, velocity
from fluxsr.model.presets import build_tiny


def psnr(a, b):
    return (-10 * torch.log10(((a - b) ** 2).mean())).item()


@pytest.mark.parametrize(
    "hw,scale,expected",
    [
        ((5, 7), 4.0, (20, 28)),
        ((10, 12), 2.5, (25, 30)),
        ((333, 1000), 0.25, (83, 250)),
        ((9, 9), 1.0, (9, 9)),
    ],
)
def test_output_sizes(tiny_pipe, hw, scale, expected):
    out = tiny_pipe.upscale_tensor(torch.rand(3, *hw), UpscaleOptions(scale=scale))
    assert out.shape == (3, *expected)
    assert out.dtype == torch.float32 and 0 <= out.min() and out.max() <= 1


def test_long_side(tiny_pipe):
    out = tiny_pipe.upscale_tensor(torch.rand(3, 10, 20), UpscaleOptions(long_side=64))
    assert out.shape == (3, 32, 64)


def test_bit_identical_on_cpu(tiny_pipe):
    x = torch.rand(3, 12, 16, generator=torch.Generator().manual_seed(1))
    a = tiny_pipe.upscale_tensor(x)
    b = FluxSRPipeline.from_pretrained("tiny", device="cpu").upscale_tensor(x)
    assert torch.equal(a, b)


def test_tiled_equals_untiled_when_one_tile_covers(tiny_pipe):
    x = torch.rand(3, 12, 16)
    assert torch.equal(
        tiny_pipe.upscale_tensor(x, UpscaleOptions(tile=1024)),
        tiny_pipe.upscale_tensor(x, UpscaleOptions(tile=64, overlap=16)),
    )


def test_tiled_close_to_untiled(tiny_pipe):
    """Tiles (every stage) vs one pass on a 40x56 -> 160x224 image. The tiny model has random weights, whose
    attention and GroupNorm statistics are global, so the tolerance is loose here; the bundled model's test is tight."""
    x = torch.rand(3, 40, 56, generator=torch.Generator().manual_seed(0))
    whole = tiny_pipe.upscale_tensor(x, UpscaleOptions(color_fix="none"))
    tiled = tiny_pipe.upscale_tensor(x, UpscaleOptions(color_fix="none", tile=96, overlap=48))
    assert psnr(whole, tiled) > 18
    assert tiny_pipe.timings.keys() >= {"encode", "transformer", "decode", "color_fix"}


def test_tiles_get_global_position_ids(tiny_pipe, monkeypatch):
    seen = []
    real = velocity

    def spy(model, z, t, offsets=(0, 0), guidance=None):
        seen.extend(offsets)
        return real(model, z, t, offsets, guidance)

    monkeypatch.setattr("fluxsr.inference.pipeline.velocity", spy)
    tiny_pipe.upscale_tensor(
        torch.rand(3, 16, 40), UpscaleOptions(tile=64, overlap=32)
    )  # 64x160 px -> 8x20 latents
    assert seen[0] == (0, 0) and len(seen) > 1
    assert all(oy == 0 for oy, _ in seen) and sorted({ox for _, ox in seen})[-1] == 20 - 8


@pytest.mark.parametrize("tile_batch", [2, 5, 0])
def test_tiles_per_pass_do_not_change_the_image(tile_batch):
    """Every stage with several tiles per forward pass (0: the planner's choice) equals one tile at a time."""
    pipe = FluxSRPipeline(build_tiny(seed=2), "cpu")
    x = torch.rand(3, 40, 56, generator=torch.Generator().manual_seed(0))
    one = pipe.upscale_tensor(x, UpscaleOptions(tile=96, overlap=32))
    assert pipe.plan.batch == 1
    many = pipe.upscale_tensor(x, UpscaleOptions(tile=96, overlap=32, tile_batch=tile_batch))
    assert pipe.plan.batch == (tile_batch or MEM.AUTO_TILE_BATCH) and not pipe.plan.changed
    assert torch.allclose(one, many, atol=1e-5), (one - many).abs().max()


def test_pil_api_keeps_mode(tiny_pipe):
    rgba = Image.new("RGBA", (7, 5), (200, 100, 50, 128))
    out = tiny_pipe(rgba, scale=2)
    assert out.size == (14, 10) and out.mode == "RGBA"
    assert abs(int(out.getpixel((3, 3))[3]) - 128) <= 1
    gray = tiny_pipe(Image.new("L", (8, 8), 90), scale=2)
    assert gray.mode == "L" and gray.size == (16, 16)


def test_fp16_refused_unless_forced():
    with pytest.raises(ValueError, match="fp16"):
        FluxSRPipeline(build_tiny(), "cpu", torch.float16)
    FluxSRPipeline(build_tiny(), "cpu", torch.float16, allow_fp16=True)


def test_non_finite_output_is_an_error():
    pipe = FluxSRPipeline(build_tiny(), "cpu")
    with torch.no_grad():
        pipe.model.vae.decoder.conv_out.bias.fill_(float("nan"))
    with pytest.raises(NonFiniteOutputError):
        pipe.upscale_tensor(torch.rand(3, 8, 8))


def test_t_l_changes_output(tiny_pipe):
    x = torch.rand(3, 8, 8)
    a = tiny_pipe.upscale_tensor(x)
    other = FluxSRPipeline(
        FluxSRModel(
            tiny_pipe.model.transformer, tiny_pipe.model.vae, tiny_pipe.model.cond, ModelSpec(t_l=0.6)
        ),
        "cpu",
    )
    assert not torch.equal(a, other.upscale_tensor(x))


def oom_plan(tile=256, batch=4, on_device=True):
    """A plan as the planner makes it for a 512 x 512 output, to walk :meth:`MemoryPlan.after_oom` by hand."""
    return MEM.MemoryPlan(
        tile, tile, on_device, 1 << 30, "test", (512, 512), batch=batch, tiles=4, multiple=16, min_tile=64
    )


def steps(plan, stage, n):
    """(tile, tiles per pass, full image on device) after each of ``n`` OOMs in ``stage``; None once it gives up."""
    out = []
    for _ in range(n):
        out.append((plan.tile, plan.batch, plan.full_image_on_device) if plan.after_oom(stage) else None)
    return out


def test_after_oom_in_a_tiled_stage_halves_the_batch_then_the_tile_then_moves_the_image_then_gives_up():
    plan = oom_plan()
    assert steps(plan, "transformer", 8) == [
        (256, 2, True),  # fewer tiles per pass first
        (256, 1, True),
        (128, 1, True),  # then half the tile
        (64, 1, True),
        (256, 1, False),  # no smaller tile: the full image leaves the device, back to the planned tile
        (128, 1, False),
        (64, 1, False),
        None,  # nothing left to shrink: give up
    ]
    assert len(plan.retries) == 7 and plan.retries[4] == (
        "out of memory in transformer at tile 64 x 1: retrying with tile 256 x 1, full image off the device"
    )


@pytest.mark.parametrize("stage", ["resize", "color_fix"])
def test_after_oom_in_a_whole_image_stage_moves_the_image_first_at_the_same_tile_and_batch(stage):
    plan = oom_plan(batch=2)
    assert steps(plan, stage, 2) == [(256, 2, False), (128, 2, False)]


def test_after_oom_gives_up_at_the_smallest_tile_with_the_image_already_off_the_device():
    plan = oom_plan(tile=64, batch=1, on_device=False)
    assert not plan.after_oom("decode")
    assert (plan.tile, plan.batch, plan.retries) == (64, 1, [])


def test_plan_overlap_is_clamped_to_half_the_tile():
    plan = oom_plan(tile=64)
    assert plan.overlap_for(None) is None and plan.overlap_for(16) == 16 and plan.overlap_for(48) == 32
