"""Tests of the Real-ESRGAN second-order degradation (fluxsr.data.degrade)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fluxsr.data.degradation_config import DegradationConfig
from fluxsr.data.degrade import apply_degradation, degrade, degrade_file, degrade_to_input, sample_params
from fluxsr.data.degrade_ops import (
    add_gaussian_noise,
    add_poisson_noise,
    apply_blur,
    draw_resize,
    jpeg_compress,
    resize,
)
from fluxsr.data.kernels import bivariate_kernel, final_sinc_kernel, pulse_kernel, random_kernel, sinc_kernel
from tests.paths import ROOT

CONFIG_YAML = ROOT / "configs" / "degradation.yaml"


def gen(seed: int = 0) -> torch.Generator:
    """A seeded CPU generator."""
    return torch.Generator().manual_seed(seed)


def textured(b: int = 1, h: int = 64, w: int = 64, seed: int = 0) -> torch.Tensor:
    """A smooth-but-detailed test image batch in [0, 1]: blurred noise plus gradients."""
    x = torch.rand(b, 3, h, w, generator=gen(seed))
    x = apply_blur(x, bivariate_kernel(1.5, 1.5, 0.0).float()[0])
    yy, xx = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
    x = 0.5 * x + 0.25 * xx + 0.25 * torch.sin(6 * math.pi * yy) * 0.5 + 0.1
    return x.clamp(0, 1)


def hf_energy(x: torch.Tensor) -> torch.Tensor:
    """Per-sample mean squared horizontal + vertical finite difference."""
    dx = x[..., :, 1:] - x[..., :, :-1]
    dy = x[..., 1:, :] - x[..., :-1, :]
    return dx.pow(2).flatten(1).mean(1) + dy.pow(2).flatten(1).mean(1)


# ----------------------------------------------------------------------------- config


def test_defaults_are_realesrgan_x4plus():
    cfg = DegradationConfig()
    assert cfg.resize_prob == (0.2, 0.7, 0.1) and cfg.resize_range == (0.15, 1.5)
    assert cfg.noise_range == (1.0, 30.0) and cfg.poisson_scale_range == (0.05, 3.0)
    assert cfg.resize_prob2 == (0.3, 0.4, 0.3) and cfg.resize_range2 == (0.3, 1.2)
    assert cfg.kernel_prob == (0.45, 0.25, 0.12, 0.03, 0.12, 0.03)
    assert cfg.blur_sigma2 == (0.2, 1.5) and cfg.final_sinc_prob == 0.8 and cfg.scale == 4


def test_yaml_matches_defaults():
    assert DegradationConfig.from_yaml(CONFIG_YAML) == DegradationConfig()


def test_from_dict_flat_and_nested():
    flat = DegradationConfig.from_dict({"noise_range": [2, 5], "scale": 2})
    nested = DegradationConfig.from_dict({"degradation": {"noise_range": [2, 5], "scale": 2}})
    assert flat == nested
    assert flat.noise_range == (2, 5) and flat.scale == 2 and flat.jpeg_range == (30, 95)


def test_from_dict_rejects_unknown_key():
    with pytest.raises(ValueError, match="noise_rnage"):
        DegradationConfig.from_dict({"degradation": {"noise_rnage": [1, 2]}})


@pytest.mark.parametrize(
    "bad",
    [
        {"resize_prob": [0.5, 0.5, 0.5]},
        {"kernel_list": ["iso", "box"], "kernel_prob": [0.5, 0.5]},
        {"jpeg_range": [50, 120]},
        {"blur_sigma": [3, 1]},
        {"blur_kernel_size": 20},
        {"sinc_prob": 1.5},
    ],
)
def test_invalid_values_raise(bad):
    with pytest.raises(ValueError):
        DegradationConfig.from_dict(bad)


# ----------------------------------------------------------------------------- kernels


@pytest.mark.parametrize("stage", [1, 2])
def test_random_kernels_sum_to_one_and_are_21x21(stage):
    k = random_kernel(200, DegradationConfig(), gen(stage), stage=stage)
    assert k.shape == (200, 21, 21) and k.dtype == torch.float32
    torch.testing.assert_close(k.sum((-2, -1)), torch.ones(200), atol=1e-5, rtol=0)
    # every family is point-symmetric, so correlation equals convolution
    torch.testing.assert_close(k, k.flip(-1, -2), atol=1e-6, rtol=0)
    # distinct (a very sharp generalized kernel can collapse to the identity pulse, as in Real-ESRGAN)
    assert len({tuple(x.flatten().tolist()) for x in k}) >= 190


def test_final_sinc_kernels_sum_to_one_and_include_identity():
    k = final_sinc_kernel(100, DegradationConfig(), gen())
    assert k.shape == (100, 21, 21)
    torch.testing.assert_close(k.sum((-2, -1)), torch.ones(100), atol=1e-5, rtol=0)
    pulses = (k == pulse_kernel(1).float()).flatten(1).all(1)
    assert 5 <= int(pulses.sum()) <= 40  # about 20% identity


def test_isotropic_gaussian_closed_form_and_support():
    k = bivariate_kernel(2.0, 2.0, 0.0, kernel_size=9)[0]
    ax = torch.arange(21, dtype=torch.float64) - 10
    ref = torch.exp(-(ax[:, None] ** 2 + ax[None, :] ** 2) / 8)
    ref[:, (ax.abs() > 4)] = 0
    ref[(ax.abs() > 4), :] = 0
    torch.testing.assert_close(k, ref / ref.sum())


def test_anisotropic_rotation_swaps_axes():
    a = bivariate_kernel(1.0, 3.0, math.pi / 2)
    b = bivariate_kernel(3.0, 1.0, 0.0)
    torch.testing.assert_close(a, b)
    assert b[0, 10, 13] > b[0, 13, 10]  # wide along x (columns)


def test_plateau_and_generalized_shapes():
    gauss = bivariate_kernel(2.0, 2.0, 0.0, beta=1.0)
    flat_top = bivariate_kernel(2.0, 2.0, 0.0, beta=4.0)
    plateau = bivariate_kernel(2.0, 2.0, 0.0, beta=2.0, plateau=True)
    # a larger exponent flattens the top: the neighbour of the peak is closer to it
    assert flat_top[0, 10, 11] / flat_top[0, 10, 10] > gauss[0, 10, 11] / gauss[0, 10, 10]
    # plateau kernels have heavy tails: 1 / (1 + Q^beta) at Q = 1 is exactly half the peak
    torch.testing.assert_close(
        plateau[0, 10, 12] / plateau[0, 10, 10], torch.tensor(0.5, dtype=torch.float64)
    )


def test_sinc_kernel_is_a_lowpass():
    k = sinc_kernel(math.pi / 4)[0]
    spec = torch.fft.fft2(k, s=(64, 64)).abs()
    assert abs(float(spec[0, 0]) - 1.0) < 1e-9
    assert float(spec[32, 32]) < 0.05 and float(spec[0, 32]) < 0.05  # Nyquist is cut
    assert float(k.min()) < 0  # ringing lobes, as a sinc should have


# ----------------------------------------------------------------------------- stages


def test_blur_lowers_high_frequency_energy():
    noise = torch.rand(8, 3, 48, 48, generator=gen(1))
    board = ((torch.arange(48)[:, None] + torch.arange(48)[None, :]) % 2).float().expand(1, 3, 48, 48)
    gauss = bivariate_kernel(2.0, 2.0, 0.0).float()[0]
    assert float(hf_energy(apply_blur(board, gauss))) < 1e-3 * float(hf_energy(board))
    cfg = DegradationConfig.from_dict({"sinc_prob": 0.0})
    kernels = random_kernel(8, cfg, gen(2))
    assert bool((hf_energy(apply_blur(noise, kernels)) < 0.8 * hf_energy(noise)).all())


def test_blur_is_per_sample_and_identity_for_pulse():
    x = torch.rand(2, 3, 32, 32, generator=gen(3))
    k = torch.stack([pulse_kernel(1)[0], bivariate_kernel(2.0, 2.0, 0.0)[0]]).float()
    y = apply_blur(x, k)
    assert torch.equal(y[0], x[0]) and not torch.allclose(y[1], x[1])
    assert torch.equal(apply_blur(x, pulse_kernel(2).float()), x)


def test_blur_small_image_preserves_constant():
    x = torch.full((1, 3, 6, 6), 0.3)
    y = apply_blur(x, bivariate_kernel(3.0, 3.0, 0.0).float())
    torch.testing.assert_close(y, x)


def test_gaussian_noise_variance_matches_sigma():
    img = torch.full((2, 3, 128, 128), 0.5)
    out = add_gaussian_noise(img, torch.tensor([10.0, 20.0]), torch.tensor([False, True]), gen(4))
    var = (out - img).flatten(1).var(1)
    expected = torch.tensor([10.0, 20.0]) ** 2 / 255**2
    torch.testing.assert_close(var, expected, rtol=0.05, atol=0)
    noise = out - img
    assert torch.equal(noise[1, 0], noise[1, 1]) and torch.equal(noise[1, 1], noise[1, 2])  # gray
    assert not torch.equal(noise[0, 0], noise[0, 1])  # colour


def test_gaussian_noise_zero_sigma_is_identity():
    img = torch.rand(2, 3, 16, 16, generator=gen(5))
    assert torch.equal(add_gaussian_noise(img, 0.0, False, gen()), img)


def test_poisson_noise_variance_scales_with_intensity():
    img = torch.cat([torch.full((1, 3, 128, 128), 51 / 255), torch.full((1, 3, 128, 128), 204 / 255)])
    scale = 2.0
    noise = add_poisson_noise(img, scale, False, gen(6)) - img
    var = noise.flatten(1).var(1)
    expected = scale**2 * img[:, 0, 0, 0] / 256
    torch.testing.assert_close(var, expected, rtol=0.08, atol=0)
    assert 3.5 < float(var[1] / var[0]) < 4.5
    gray = add_poisson_noise(img, scale, True, gen(6)) - img
    assert torch.equal(gray[:, 0], gray[:, 2])


def test_jpeg_error_grows_as_quality_falls():
    img = textured(1, 64, 64)
    errors = [float((jpeg_compress(img, q) - img).pow(2).mean()) for q in (95, 75, 50, 30, 10)]
    assert errors == sorted(errors) and errors[-1] > 3 * errors[0]
    out = jpeg_compress(img, 95)
    assert out.shape == img.shape and out.dtype == img.dtype
    assert torch.allclose(out * 255, (out * 255).round(), atol=1e-4)  # 8-bit levels
    with pytest.raises(ValueError):
        jpeg_compress(img, 0)


def test_jpeg_per_sample_quality():
    img = textured(1, 48, 48).repeat(2, 1, 1, 1)
    out = jpeg_compress(img, torch.tensor([95, 20]))
    err = (out - img).pow(2).flatten(1).mean(1)
    assert err[1] > 2 * err[0]


def test_drawn_qualities_respect_jpeg_range():
    cfg = DegradationConfig.from_dict({"jpeg_range": [40, 50], "jpeg_range2": [70, 75]})
    p = sample_params(120, cfg, gen(7))
    q1, q2 = p.first.quality, p.second.quality
    assert int(q1.min()) == 40 and int(q1.max()) == 50
    assert int(q2.min()) == 70 and int(q2.max()) == 75
    default = sample_params(120, DegradationConfig(), gen(8))
    for q in (default.first.quality, default.second.quality):
        assert bool(((q >= 30) & (q <= 95)).all())


def test_draw_resize_respects_range_and_modes():
    x = torch.rand(1, 3, 100, 100, generator=gen(9))
    g = gen(10)
    draws = [draw_resize((0.2, 0.7, 0.1), (0.15, 1.5), g) for _ in range(300)]
    scales = [s for s, _ in draws]
    assert min(scales) >= 0.15 and max(scales) <= 1.5
    assert {m for _, m in draws} == {"area", "bilinear", "bicubic"}
    assert 0.55 < sum(s < 1 for s in scales) / 300 < 0.85  # ~70% down
    for _ in range(10):
        scale, mode = draw_resize((0.2, 0.7, 0.1), (0.15, 1.5), g)
        h = resize(x, (int(100 * scale), int(100 * scale)), mode).shape[-1]
        assert 15 <= h <= 150
    assert draw_resize((0, 0, 1), (0.5, 2), g)[0] == 1.0  # keep
    assert draw_resize((1, 0, 0), (0.5, 1.0), g)[0] == 1.0  # up to at most 1.0


# ----------------------------------------------------------------------------- pipeline


def test_degrade_sizes_and_levels():
    hr = textured(2, 64, 96)
    lr, lr_up = degrade_to_input(hr, DegradationConfig(), gen(11))
    assert lr.shape == (2, 3, 16, 24) and lr_up.shape == hr.shape
    assert (
        float(lr.min()) >= 0 and float(lr.max()) <= 1 and float(lr_up.min()) >= 0 and float(lr_up.max()) <= 1
    )
    torch.testing.assert_close(lr * 255, (lr * 255).round(), atol=1e-4, rtol=0)


def test_degrade_scale_2():
    cfg = DegradationConfig.from_dict({"scale": 2})
    assert degrade(textured(1, 32, 32), cfg, gen()).shape == (1, 3, 16, 16)


def test_same_seed_is_bit_identical_and_seeds_differ():
    hr = textured(2, 64, 64)
    cfg = DegradationConfig()
    a = degrade(hr, cfg, gen(123))
    b = degrade(hr, cfg, gen(123))
    c = degrade(hr, cfg, gen(124))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_apply_degradation_is_deterministic_given_params():
    hr = textured(2, 64, 64)
    cfg = DegradationConfig()
    params = sample_params(2, cfg, gen(20))
    assert torch.equal(apply_degradation(hr, params, cfg, gen(1)), apply_degradation(hr, params, cfg, gen(1)))
    with pytest.raises(ValueError, match="drawn for 2"):
        apply_degradation(textured(3, 64, 64), params, cfg, gen(1))


def test_hr_not_multiple_of_scale_raises():
    with pytest.raises(ValueError, match="multiple of scale 4"):
        degrade(torch.rand(1, 3, 66, 64), DegradationConfig(), gen())
    with pytest.raises(ValueError):
        degrade(torch.rand(3, 64, 64), DegradationConfig(), gen())


def test_batch_of_two_gets_different_parameters():
    cfg = DegradationConfig()
    p = sample_params(2, cfg, gen(30))
    assert not torch.equal(p.first.kernel[0], p.first.kernel[1])
    assert not torch.equal(p.second.kernel[0], p.second.kernel[1])
    hr = textured(1, 64, 64).repeat(2, 1, 1, 1)
    lr = degrade(hr, cfg, gen(30))
    assert lr.shape == (2, 3, 16, 16)
    assert float((lr[0] - lr[1]).abs().mean()) > 1e-3  # same image, different degradations


def test_mild_config_approximates_plain_downsampling():
    mild = DegradationConfig.from_dict(
        {
            "resize_prob": [0, 0, 1],
            "resize_prob2": [0, 0, 1],
            "sinc_prob": 0,
            "blur_sigma": [0.05, 0.05],
            "noise_range": [0, 0],
            "poisson_scale_range": [0, 0],
            "noise_range2": [0, 0],
            "poisson_scale_range2": [0, 0],
            "jpeg_range": [100, 100],
            "jpeg_range2": [100, 100],
            "second_blur_prob": 0,
            "final_sinc_prob": 0,
        }
    )
    hr = textured(2, 64, 64)
    lr = degrade(hr, mild, gen(40))
    ref = F.interpolate(hr, size=(16, 16), mode="area")
    assert float((lr - ref).abs().mean()) < 0.03
    strong = degrade(hr, DegradationConfig(), gen(40))
    assert float((strong - ref).abs().mean()) > float((lr - ref).abs().mean())


def test_degrade_file(tmp_path):
    from PIL import Image

    arr = (textured(1, 70, 83)[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    src = tmp_path / "hr.png"
    Image.fromarray(arr).save(src)
    out = degrade_file(src, tmp_path / "out" / "lr.png", seed=1)
    assert Image.open(out).size == (20, 17)  # cropped to 80x68, then / 4
    up = degrade_file(src, tmp_path / "lr_up.png", seed=1, upsample=True)
    assert Image.open(up).size == (80, 68)
    again = degrade_file(src, tmp_path / "lr2.png", seed=1)
    assert np.array_equal(np.asarray(Image.open(out)), np.asarray(Image.open(again)))


def test_degrade_refuses_to_write_over_its_input(tmp_path, capsys):
    """`fluxsr degrade IN IN` used to replace the photo with its degraded copy: same path, a symlink, a hard link."""
    import os

    from PIL import Image

    from fluxsr.cli import main

    src = tmp_path / "hr.png"
    Image.fromarray((textured(1, 32, 32)[0].permute(1, 2, 0).numpy() * 255).astype(np.uint8)).save(src)
    before = src.read_bytes()
    (tmp_path / "soft.png").symlink_to(src)
    os.link(src, tmp_path / "hard.png")
    for out in (src, tmp_path / "." / "hr.png", tmp_path / "soft.png", tmp_path / "hard.png"):
        assert main(["degrade", str(src), str(out)]) == 2
        assert "is the input" in capsys.readouterr().err
        with pytest.raises(ValueError, match="is the input"):
            degrade_file(out, src, seed=0)
    assert src.read_bytes() == before
    assert main(["degrade", str(src), str(tmp_path / "lr.png")]) == 0  # another name is fine
