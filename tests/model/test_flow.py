"""Identities of the rectified-flow and FTD math (docs/method.md, section 3)."""

import math

import pytest
import torch

from fluxsr.model import flow

SHAPES = [(1, 16, 2, 2), (2, 16, 8, 6), (3, 4, 10, 14)]


@pytest.mark.parametrize("shape", SHAPES)
def test_pack_unpack_roundtrip(shape):
    z = torch.randn(shape)
    tokens = flow.pack(z)
    assert tokens.shape == (shape[0], shape[2] // 2 * shape[3] // 2, shape[1] * 4)
    assert torch.equal(flow.unpack(tokens, shape[2], shape[3]), z)


def test_pack_channel_order_matches_flux():
    # diffusers' FluxPipeline._pack_latents: view(b, c, h/2, 2, w/2, 2).permute(0, 2, 4, 1, 3, 5)
    z = torch.randn(2, 16, 6, 4)
    ref = z.view(2, 16, 3, 2, 2, 2).permute(0, 2, 4, 1, 3, 5).reshape(2, 6, 64)
    assert torch.equal(flow.pack(z), ref)


def test_img_ids_global_offset():
    ids = flow.img_ids(4, 6, offset=(8, 2))
    assert ids.shape == (6, 3)
    assert ids[:, 0].eq(0).all()
    assert ids[0].tolist() == [0, 4, 1]
    assert ids[-1].tolist() == [0, 5, 3]
    whole = flow.img_ids(12, 10).view(6, 5, 3)
    assert torch.equal(whole[4:6, 1:4].reshape(-1, 3), ids)
    with pytest.raises(ValueError):
        flow.img_ids(3, 4)


def test_time_shift_and_schedule():
    assert flow.time_shift(0.0, 1.0, 0.3) == pytest.approx(0.3)
    assert flow.shift_mu(256) == pytest.approx(0.5)
    assert flow.shift_mu(4096) == pytest.approx(1.15)
    ts = flow.get_schedule(28, 4096)
    assert len(ts) == 29 and ts[0] == pytest.approx(1.0) and ts[-1] == pytest.approx(0.0)
    assert all(a > b for a, b in zip(ts[:-1], ts[1:], strict=False))
    # the shift moves mid times towards noise
    assert ts[14] > 0.5
    assert flow.get_schedule(4, 256, shift=False) == pytest.approx([1.0, 0.75, 0.5, 0.25, 0.0])


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("t_l", [0.1, 0.25, 0.6])
def test_ftd_path_endpoints(shape, t_l):
    z_l, eps = torch.randn(shape), torch.randn(shape)
    assert torch.allclose(flow.ftd_point(z_l, eps, t_l, t_l), z_l, atol=1e-6)
    assert torch.allclose(flow.ftd_point(z_l, eps, 1.0, t_l), eps, atol=1e-6)
    t = torch.full((shape[0],), (1 + t_l) / 2)
    assert torch.allclose(flow.ftd_point(z_l, eps, t, t_l), (z_l + eps) / 2, atol=1e-6)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("t_l", [0.1, 0.25, 0.6])
def test_oracle_velocity_zero_loss_and_exact_recovery(shape, t_l):
    g = torch.Generator().manual_seed(0)
    z0, eps, z_l = (torch.randn(shape, generator=g, dtype=torch.float64) for _ in range(3))
    oracle = flow.sr_velocity(z_l, z0, t_l)
    for t in flow.sample_ftd_t(5, t_l, g):
        assert t_l <= t <= 1
        assert flow.ftd_loss(oracle, z_l, z0, eps, t_l).item() == pytest.approx(0.0, abs=1e-20)
    assert torch.allclose(flow.one_step(z_l, oracle, t_l), z0, atol=1e-12)


def test_ftd_loss_equals_scaled_sr_error():
    t_l = 0.25
    z0, eps, z_l, v = (torch.randn(2, 16, 4, 4, dtype=torch.float64) for _ in range(4))
    expected = (t_l / (1 - t_l)) ** 2 * torch.mean((v - flow.sr_velocity(z_l, z0, t_l)) ** 2)
    assert flow.ftd_loss(v, z_l, z0, eps, t_l).item() == pytest.approx(expected.item(), rel=1e-10)


def test_velocity_decomposition():
    t_l = 0.3
    z0, eps, z_l = (torch.randn(1, 4, 4, 4, dtype=torch.float64) for _ in range(3))
    u = flow.pair_velocity(eps, z0)
    mixed = (1 - t_l) * flow.lr_velocity(eps, z_l, t_l) + t_l * flow.sr_velocity(z_l, z0, t_l)
    assert torch.allclose(u, mixed)


def test_denoise_exact_for_straight_field_and_invert():
    # for the straight field v = eps - x0 of a single pair, Euler is exact and inversion returns eps
    x0, eps = torch.randn(1, 4, 4, 4, dtype=torch.float64), torch.randn(1, 4, 4, 4, dtype=torch.float64)

    def v(z, t):
        return eps - x0

    ts = flow.get_schedule(7, 1024)
    assert torch.allclose(flow.denoise(v, eps, ts), x0)
    assert torch.allclose(flow.invert(v, x0, ts), eps)


def test_get_noise_is_seeded():
    a, b = flow.get_noise((2, 16, 4, 4), 7), flow.get_noise((2, 16, 4, 4), 7)
    assert torch.equal(a, b)
    assert not torch.equal(a, flow.get_noise((2, 16, 4, 4), 8))
    assert abs(a.std().item() - 1) < 0.2 and math.isfinite(a.sum().item())


def test_interpolate_endpoints_and_constant_velocity():
    z0, eps = torch.randn(3, 4, 6, 6), torch.randn(3, 4, 6, 6)
    assert torch.equal(flow.interpolate(z0, eps, 0.0), z0)
    assert torch.equal(flow.interpolate(z0, eps, 1.0), eps)
    t = torch.tensor([0.1, 0.5, 0.9])
    xt = flow.interpolate(z0, eps, t)
    # per-sample times broadcast, and the path moves with the constant pair velocity eps - z0
    dt = 1e-3
    step = (flow.interpolate(z0, eps, t + dt) - xt) / dt
    torch.testing.assert_close(step, flow.pair_velocity(eps, z0), atol=1e-2, rtol=1e-2)
    torch.testing.assert_close(xt[1], (z0[1] + eps[1]) / 2)


def test_logit_normal_t_is_seeded_and_centred():
    a = flow.logit_normal_t(20000, torch.Generator().manual_seed(0))
    assert torch.equal(a, flow.logit_normal_t(20000, torch.Generator().manual_seed(0)))
    assert 0 < a.min() and a.max() < 1
    assert abs(a.median().item() - 0.5) < 0.01 and abs(a.mean().item() - 0.5) < 0.01
    # logit-normal puts more mass near the middle than U[0, 1]
    assert ((a - 0.5).abs() < 0.25).float().mean() > 0.6
