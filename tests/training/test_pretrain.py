"""The pretraining chain of small models (`fluxsr train-vae`, `fluxsr train-teacher`) on the CPU, through the CLI."""

import csv
import shutil
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from fluxsr.cli import main
from fluxsr.io.images import read_image
from fluxsr.model import flow
from fluxsr.model.loader import load_model
from fluxsr.model.model import velocity
from fluxsr.training.pretrain import random_crops
from tests.paths import ASSETS, ROOT

CONFIG = ROOT / "configs" / "bundled.yaml"
TINY = [
    "pretrain.max_side=96",
    "pretrain.vae.block_out_channels=[8,16]",
    "pretrain.vae.latent_channels=4",
    "pretrain.vae.norm_num_groups=4",
    "pretrain.vae.batch_size=4",
    "pretrain.vae.crop=32",
    "pretrain.vae.lpips=0",
    "pretrain.vae.lr=1e-2",
    "pretrain.teacher.num_layers=1",
    "pretrain.teacher.num_single_layers=1",
    "pretrain.teacher.attention_head_dim=16",
    "pretrain.teacher.num_attention_heads=2",
    "pretrain.teacher.axes_dims_rope=[4,6,6]",
    "pretrain.teacher.text_dim=16",
    "pretrain.teacher.text_len=2",
    "pretrain.teacher.batch_size=8",
    "pretrain.teacher.crop=32",
    "pretrain.teacher.lr=3e-3",
]


def run(command: str, photos: Path, *args: str, steps: int, **sets: str) -> None:
    overrides = [
        *TINY,
        f"pretrain.photos=[{photos}]",
        f"pretrain.{command[6:]}.steps={steps}",
        *(f"{k}={v}" for k, v in sets.items()),
    ]
    argv = [command, "--config", str(CONFIG), "-q", "--device", "cpu", *args]
    for o in overrides:
        argv += ["--set", o]
    assert main(argv) == 0


def log_rows(path: Path) -> list[dict]:
    with (path / "log.csv").open() as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    """train-vae (120 steps) then train-teacher (80 steps) on two small photos."""
    root = tmp_path_factory.mktemp("pretrain")
    photos = root / "photos"
    photos.mkdir()
    shutil.copy(ASSETS / "kodim23_crop.png", photos / "a.png")
    (photos / "skip.png").write_bytes(b"not a png")  # an unreadable photo is skipped, not fatal
    torch.manual_seed(0)
    run("train-vae", photos, "--out", str(root / "vae"), steps=120)
    run("train-teacher", photos, "--vae", str(root / "vae"), "--out", str(root / "teacher"), steps=80)
    return root, photos


def test_vae_learns_and_sets_latent_normalisation(chain):
    root, _ = chain
    rows = log_rows(root / "vae")
    assert rows[-1]["step"] == "120" and len(rows) == 13  # every 10th step and the last
    assert float(rows[-1]["psnr"]) > float(rows[0]["psnr"]) + 3
    from diffusers import AutoencoderKL

    vae = AutoencoderKL.from_pretrained(root / "vae" / "vae", local_files_only=True).eval()
    assert vae.config.block_out_channels == [8, 16] and vae.config.latent_channels == 4
    x = random_crops([read_image(ASSETS / "kodim23_crop.png").rgb], 4, 32, torch.Generator().manual_seed(1))
    with torch.no_grad():
        lat = vae.encode(x * 2 - 1).latent_dist.mode()
        rec = (vae.decode(lat).sample + 1) / 2
    z = (lat - vae.config.shift_factor) * vae.config.scaling_factor
    # FLUX-style normalisation: the normalised latents of training crops are near zero mean, unit std
    assert abs(z.mean().item()) < 0.3 and 0.6 < z.std().item() < 1.6
    assert -10 * torch.log10(F.mse_loss(rec.clamp(0, 1), x)) > 15  # untrained: ~11 dB


def test_teacher_is_a_loadable_model_that_learned_the_flow(chain):
    root, photos = chain
    rows = log_rows(root / "teacher")
    assert rows[-1]["step"] == "80"
    model = load_model(root / "teacher")
    assert model.transformer.config.num_layers == 1 and model.cond.prompt_embeds.shape == (1, 2, 16)
    # flow-matching loss on held-fixed samples: the trained teacher beats the untrained one of the same recipe
    x = random_crops([read_image(ASSETS / "kodim23_crop.png").rgb], 16, 32, torch.Generator().manual_seed(2))
    g = torch.Generator().manual_seed(3)
    vae = model.vae
    with torch.no_grad():
        z0 = (vae.encode(x * 2 - 1).latent_dist.mode() - vae.config.shift_factor) * vae.config.scaling_factor
        eps = torch.randn(z0.shape, generator=g)
        t = flow.logit_normal_t(z0.shape[0], g)
        target = flow.pair_velocity(eps, z0)
        trained = F.mse_loss(velocity(model, flow.interpolate(z0, eps, t), t), target).item()
        torch.manual_seed(0)
        for p in model.transformer.parameters():  # same architecture, fresh init
            p.copy_(torch.randn_like(p) * 0.02 if p.ndim > 1 else torch.zeros_like(p))
        untrained = F.mse_loss(velocity(model, flow.interpolate(z0, eps, t), t), target).item()
    assert trained < 0.8 * untrained, (trained, untrained)


def test_train_vae_without_photos_fails_cleanly(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    argv = [
        "train-vae",
        "--config",
        str(CONFIG),
        "-q",
        "--out",
        str(tmp_path / "o"),
        "--set",
        f"pretrain.photos=[{tmp_path / 'empty'}]",
    ]
    assert main(argv) == 2
    assert "no readable images" in capsys.readouterr().err
