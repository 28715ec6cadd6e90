"""Tiling mechanics and colour fixes."""

from fractions import Fraction

import pytest
import torch
import torch.nn.functional as F

from fluxsr.inference.color import adain, color_fix, wavelet_fix, wavelet_lowpass
from fluxsr.inference.tiling import TileSpec, ramp, snapped, tile_count, tile_starts, tiled_map


@pytest.mark.parametrize(
    "size,tile,overlap,align",
    [(100, 32, 8, 1), (64, 16, 4, 2), (48, 64, 8, 16), (1000, 256, 32, 16), (96, 32, 16, 16)],
)
def test_tile_starts_cover_with_overlap(size, tile, overlap, align):
    size = size // align * align
    starts = tile_starts(size, tile, overlap, align)
    assert starts[0] == 0 and all(s % align == 0 for s in starts)
    assert min(starts[-1] + tile, size) == size
    for a, b in zip(starts[:-1], starts[1:], strict=False):
        assert b > a and a + tile - b >= overlap  # consecutive tiles share at least `overlap`


def test_ramp():
    w = ramp(8, 4, 0)
    assert w[-1] == 1 and w[0] == pytest.approx(0.125) and torch.all(w[1:] >= w[:-1])
    assert torch.equal(ramp(5, 0, 0), torch.ones(5))


def test_single_tile_is_exactly_untiled():
    x = torch.randn(1, 3, 20, 28)
    calls = []

    def fn(t, off):
        calls.append(off)
        return t * 2

    assert torch.equal(tiled_map(fn, x, TileSpec(32, 8)), x * 2) and calls == [[(0, 0)]]


def test_pointwise_function_tiles_exactly():
    x = torch.randn(2, 3, 40, 56)
    out = tiled_map(lambda t, off: torch.sin(t), x, TileSpec(16, 6, 2))
    assert torch.allclose(out, torch.sin(x), atol=1e-6)


def test_conv_tiles_match_untiled_away_from_tile_edges():
    """A 3x3 convolution is wrong only on the tile's own border: with a ramp it blends to within a small error."""
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(3, 3, 3, padding=1)
    x = torch.rand(1, 3, 64, 80)
    with torch.no_grad():
        ref = conv(x)
        out = tiled_map(lambda t, off: conv(t), x, TileSpec(32, 16, 2))
    assert (out - ref).abs().mean() < 0.01
    # the error sits where tiles meet, so the image border is exact
    assert torch.allclose(out[..., :10, :10], ref[..., :10, :10], atol=1e-6)


def test_offsets_and_rescaling():
    x = torch.arange(32 * 48, dtype=torch.float32).view(1, 1, 32, 48)
    seen = []

    def down(t, offs):
        seen.extend((off, tuple(t.shape[-2:])) for off in offs)
        return F.avg_pool2d(t, 8)

    out = tiled_map(down, x, TileSpec(16, 8, 8), Fraction(1, 8))
    assert out.shape == (1, 1, 4, 6)
    assert torch.allclose(out, F.avg_pool2d(x, 8))
    assert all(off[0] % 8 == 0 and off[1] % 8 == 0 and shape == (16, 16) for off, shape in seen)
    assert len(seen) == tile_count((32, 48), TileSpec(16, 8, 8))
    up = tiled_map(lambda t, off: F.interpolate(t, scale_factor=4, mode="nearest"), x, TileSpec(16, 8, 2), 4)
    assert torch.allclose(up, F.interpolate(x, scale_factor=4, mode="nearest"))


@pytest.mark.parametrize("batch", [2, 3, 7, 100])
def test_batches_of_tiles_equal_one_at_a_time(batch):
    """Tiles stacked tile-major, B samples each, with one offset per tile; the blend does not depend on grouping."""
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(3, 4, 3, padding=1)
    x = torch.rand(2, 3, 40, 56)
    calls = []

    def fn(t, offs):
        calls.append(len(offs))
        assert t.shape[0] == 2 * len(offs)
        # position-dependent on purpose: a sample paired with the wrong offset changes the output
        return (
            conv(t)
            + torch.tensor([float(o[0] + 10 * o[1]) for o in offs]).repeat_interleave(2)[:, None, None, None]
        )

    spec = TileSpec(16, 6, 2)
    with torch.no_grad():
        one = tiled_map(fn, x, spec)
        n = len(calls)
        many = tiled_map(fn, x, spec, batch=batch)
    assert calls[n:] == [min(batch, n - i) for i in range(0, n, batch)]
    assert torch.allclose(one, many, atol=1e-6)


def test_snapped_and_tile_count():
    assert snapped(100, 30, 16) == TileSpec(96, 16, 16)
    assert snapped(8, 30, 16) == TileSpec(16, 0, 16)
    assert snapped(64, 128, 16) == TileSpec(
        64, 32, 16
    )  # overlap at most half the tile (halved tiles after OOM)
    assert tile_count((64, 64), TileSpec(64, 8, 2)) == 1
    assert tile_count((64, 100), TileSpec(32, 8, 2)) == 3 * 4


def test_tilespec_validation():
    with pytest.raises(ValueError):
        TileSpec(16, 16)


def test_adain_matches_reference_statistics():
    x, ref = torch.rand(1, 3, 32, 32), torch.rand(1, 3, 32, 32) * 0.5 + 0.3
    out = adain(x, ref)
    assert torch.allclose(out.mean((2, 3)), ref.mean((2, 3)), atol=1e-5)
    assert torch.allclose(out.std((2, 3)), ref.std((2, 3)), atol=1e-4)


def test_wavelet_fix_takes_low_from_reference_keeps_high():
    torch.manual_seed(0)
    detail = torch.randn(1, 3, 64, 64) * 0.05
    x = 0.2 + detail  # a dark image with detail
    ref = torch.full((1, 3, 64, 64), 0.7)  # flat bright reference
    out = wavelet_fix(x, ref)
    assert out.mean().item() == pytest.approx(0.7, abs=0.01)
    hp = out - wavelet_lowpass(out)
    assert torch.corrcoef(torch.stack([hp.flatten(), (x - wavelet_lowpass(x)).flatten()]))[0, 1] > 0.99
    assert torch.equal(color_fix(x, ref, "none"), x)
    with pytest.raises(ValueError):
        color_fix(x, ref, "sepia")


def test_wavelet_on_tiny_images():
    x = torch.rand(1, 3, 5, 7)
    assert wavelet_fix(x, x).shape == x.shape
    assert torch.allclose(wavelet_fix(x, x), x, atol=1e-6)


def test_unaligned_size_is_refused_instead_of_left_uncovered():
    with pytest.raises(ValueError, match="not a multiple of 16"):
        tile_starts(72, 64, 16, align=16)
    with pytest.raises(ValueError, match="pad"):
        tiled_map(lambda t, o: t, torch.rand(1, 3, 72, 200), TileSpec(64, 16, 16))
