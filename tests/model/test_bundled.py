"""The bundled small model: it loads with no option, keeps its measured quality on a held-out photo, tiles well."""

import pytest
import torch

from fluxsr.data.degradation_config import DegradationConfig
from fluxsr.data.degrade import degrade
from fluxsr.evaluation.psnr_ssim import psnr
from fluxsr.inference.pipeline import FluxSRPipeline, UpscaleOptions
from fluxsr.io.images import read_image, resize
from fluxsr.model.loader import load_model
from fluxsr.model.presets import BUNDLED_MODEL
from tests.paths import ASSETS, ROOT

HELD_OUT = ASSETS / "kodim23_crop.png"  # Kodak24 kodim23 crop: never used in training
# Measured with this test's recipe (degradation seed 0, x4, Y-channel PSNR, border 4) on torch 2.13.0 CPU fp32.
EXPECTED_PSNR_Y = 25.975
BICUBIC_PSNR_Y = 26.211


@pytest.fixture(scope="module")
def pipe():
    return FluxSRPipeline.from_pretrained(None, device="cpu")


@pytest.fixture(scope="module")
def lr_hr():
    hr = read_image(HELD_OUT).rgb
    lr = degrade(hr[None], DegradationConfig(), torch.Generator().manual_seed(0))[0]
    return lr, hr


def test_bundled_model_is_small_and_documented():
    size = sum(f.stat().st_size for f in BUNDLED_MODEL.rglob("*") if f.is_file())
    assert size <= 40e6
    model = load_model()
    assert model.spec.name == "fluxsr-small" and "FLUX.1-dev" in model.spec.note
    assert (ROOT / "docs" / "bundled-model.md").is_file()


def test_held_out_psnr_matches_the_stored_value(pipe, lr_hr):
    lr, hr = lr_hr
    assert lr.shape == (3, 48, 48)
    sr = pipe.upscale_tensor(lr)
    assert sr.shape == hr.shape
    got = psnr(sr, hr, crop_border=4, y_channel=True).item()
    assert got == pytest.approx(EXPECTED_PSNR_Y, abs=0.05)
    bic = psnr(resize(lr[None], tuple(hr.shape[-2:]))[0], hr, crop_border=4, y_channel=True).item()
    assert bic == pytest.approx(BICUBIC_PSNR_Y, abs=0.05)
    assert got > bic - 2.0  # the fidelity bound: within 2 dB of bicubic


def test_tiled_matches_untiled(pipe, lr_hr):
    """Every stage in 96 px tiles (32 px overlap) vs one pass: within 30 dB PSNR of each other."""
    lr, _ = lr_hr
    whole = pipe.upscale_tensor(lr, UpscaleOptions(tile=1024))
    tiled = pipe.upscale_tensor(lr, UpscaleOptions(tile=96, overlap=32))
    assert psnr(tiled, whole).item() > 30.0
