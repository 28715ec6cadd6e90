"""Training chain on the tiny model: recipes, gen-pairs (reproducible, resumable, sharded), train, resume, export."""

import json
import math
import os
import subprocess

import pytest
import torch
from safetensors.torch import load_file

from fluxsr.cli import main
from fluxsr.io.config import ConfigError
from fluxsr.training.loop import build_trainer, lr_lambda, train
from fluxsr.training.pairs import complete_indices, generate_pairs, is_complete, load_pair, pair_stem
from fluxsr.training.recipe import load_recipe
from fluxsr.training.step import Batch, batch_indices, training_step
from fluxsr.training.student import build_student
from tests.builders import TWO_CPU_PROCESSES
from tests.paths import ROOT

TINY = ROOT / "configs" / "tiny.yaml"
FAST = [
    "pairs.count=4",
    "pairs.resolution=32",
    "pairs.steps=2",
    "train.steps=6",
    "train.batch_size=1",
    "train.checkpoint_every=3",
    "train.validate_every=0",
    "loss.lpips_net=random-vgg",
]


def recipe(*extra):
    return load_recipe(TINY, [*FAST, *extra])


def test_recipe_errors_name_the_field(tmp_path):
    with pytest.raises(ConfigError, match="train.lrr"):
        load_recipe(TINY, ["train.lrr=1"])
    with pytest.raises(ConfigError, match="train.lr: expected float"):
        load_recipe(TINY, ["train.lr=fast"])
    with pytest.raises(ConfigError, match="degradation.noise_range"):
        load_recipe(TINY, ["degradation.noise_range=[1, 2, 3]"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  bsae: tiny\n")
    with pytest.raises(ConfigError, match="model.bsae"):
        load_recipe(bad)
    for path in (ROOT / "configs").glob("*.yaml"):
        if path.name != "degradation.yaml":
            load_recipe(path)  # every shipped recipe parses


def test_pairs_reproducible_and_resumable(pairs, tmp_path):
    assert complete_indices(pairs) == [0, 1, 2, 3]
    p = load_pair(pairs, 2)
    assert p["eps"].shape == p["z0"].shape == (1, 16, 4, 4) and p["image"].shape == (3, 32, 32)
    assert p["meta"]["seed"] == 2 and p["meta"]["prompt"].startswith("a photo of")
    # regenerate pair 2 alone in another folder from its seed: identical
    generate_pairs(recipe("pairs.count=3"), tmp_path, device="cpu", progress=False)
    assert torch.equal(load_pair(tmp_path, 2)["z0"], p["z0"])
    # a half-written pair (data but no marker) is not trusted and is redone; finished ones are skipped
    pair_stem(tmp_path, 1).with_suffix(".json").unlink()
    assert not is_complete(tmp_path, 1)
    assert generate_pairs(recipe("pairs.count=3"), tmp_path, device="cpu", progress=False) == [1]
    assert generate_pairs(recipe("pairs.count=3"), tmp_path, device="cpu", progress=False) == []


def test_photo_pairs_by_inversion(tmp_path):
    from PIL import Image

    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(2):
        Image.new("RGB", (48, 40), (40 * i, 120, 200)).save(photos / f"p{i}.png")
    out = tmp_path / "pairs"
    generate_pairs(
        recipe("pairs.count=2", "pairs.source=photos", f"pairs.photos={photos}"),
        out,
        device="cpu",
        progress=False,
    )
    p = load_pair(out, 1)
    assert p["image"].shape == (3, 32, 32) and p["meta"]["source"] == "photos"
    assert torch.isfinite(p["eps"]).all() and p["eps"].std() > 0


def test_batch_order_is_a_permutation_per_epoch():
    seen = [batch_indices(10, m, 2, r, 2, seed=0) for m in range(5) for r in range(2)]
    flat = [i for b in seen for i in b]
    assert sorted(flat[:10]) == list(range(10))  # first epoch: every pair once across both processes
    assert batch_indices(10, 3, 2, 1, 2, 0) == batch_indices(10, 3, 2, 1, 2, 0)


def test_lr_schedule():
    assert lr_lambda(0, 4, 100, "constant") == pytest.approx(0.25)
    assert lr_lambda(50, 4, 100, "constant") == 1.0
    assert lr_lambda(100, 0, 100, "cosine") == pytest.approx(0.0)
    with pytest.raises(ValueError):
        lr_lambda(5, 0, 10, "linear")


def tiny_trainer(*extra):
    """The tiny student and its trainer on the CPU, as a run prepares them."""
    from accelerate import Accelerator

    r = recipe(*extra)
    torch.manual_seed(0)
    model, _ = build_student(r, "cpu", torch.float32)
    return build_trainer(r, model, Accelerator(cpu=True), r.model.t_l, torch.float32)


def hand_made_batch(seed: int = 0) -> Batch:
    g = torch.Generator().manual_seed(seed)
    x0 = torch.rand(1, 3, 32, 32, generator=g)
    lr_up = torch.nn.functional.avg_pool2d(x0, 4).repeat_interleave(4, -1).repeat_interleave(4, -2)
    latents = torch.randn(2, 1, 16, 4, 4, generator=g)
    return Batch(x0=x0, lr_up=lr_up, eps=latents[0], z0=latents[1], t=torch.tensor([0.6]))


def test_training_step_alone_returns_the_terms_and_moves_only_trainable_weights():
    tr = tiny_trainer()
    before = {k: v.clone() for k, v in tr.model.transformer.state_dict().items()}
    vae_before = {k: v.clone() for k, v in tr.model.vae.state_dict().items()}
    trainable = {n for n, p in tr.model.transformer.named_parameters() if p.requires_grad}
    terms = training_step(tr, hand_made_batch())
    assert set(terms) == {"loss", "ftd", "mse", "lpips", "adl"}
    assert all(torch.isfinite(torch.tensor(v)) for v in terms.values())
    assert terms["ftd"] > 0 and terms["mse"] > 0 and terms["lpips"] > 0 and 0 < terms["adl"] <= 1
    w = tr.weights
    weighted = w.ftd * terms["ftd"] + w.mse * terms["mse"] + w.lpips * terms["lpips"] + w.adl * terms["adl"]
    assert terms["loss"] == pytest.approx(weighted, rel=1e-5)
    after = tr.model.transformer.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and changed <= trainable
    assert any("lora_B" in k for k in changed)
    assert all(torch.equal(v, tr.model.vae.state_dict()[k]) for k, v in vae_before.items())


def test_grad_norms_leave_the_step_unchanged_and_report_zero_weight_terms():
    plain, measured = tiny_trainer("loss.lpips=0"), tiny_trainer("loss.lpips=0")
    terms = training_step(plain, hand_made_batch())
    with_norms = training_step(measured, hand_made_batch(), grad_norms=True)
    assert {k: with_norms[k] for k in terms} == terms  # the extra backward passes change no loss term
    assert with_norms["gn_lpips"] == 0.0  # weight 0: reported as 0, no backward spent
    assert all(math.isfinite(with_norms[k]) and with_norms[k] > 0 for k in ("gn_ftd", "gn_mse", "gn_adl"))
    a, b = plain.model.transformer.state_dict(), measured.model.transformer.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)  # ... nor any weight


def test_full_fine_tuning_widens_a_bf16_base_on_its_move(tmp_path):
    """Full fine-tuning of a bf16 base: build_student(widen_later=True) reads it as stored (memory-mapped, no
    private float32 copy per process) and place_student widens it to float32 master weights on its move, equal to
    the bf16 weights and trainable, as a float32 read gives."""
    from fluxsr.model.folders import save_model_folder
    from fluxsr.model.presets import build_tiny
    from fluxsr.training.loop import place_student

    base = build_tiny(seed=5)
    base.transformer.to(torch.bfloat16)
    save_model_folder(base, tmp_path / "bf16")
    r = recipe("train.lora_rank=0", f"model.base={tmp_path / 'bf16'}")
    read, _ = build_student(r, "cpu", torch.float32, widen_later=True)
    assert {p.dtype for p in read.transformer.parameters()} == {torch.bfloat16}
    assert place_student(r, read, False, "cpu", torch.float32) == torch.float32
    wide, _ = build_student(r, "cpu", torch.float32)
    got, want = read.transformer.state_dict(), wide.transformer.state_dict()
    assert all(got[k].dtype == torch.float32 and torch.equal(got[k], want[k]) for k in want)
    assert all(p.requires_grad for p in read.transformer.parameters())


def test_loss_falls_when_overfitting_one_pair(pairs, tmp_path):
    r = recipe(
        "pairs.count=1",
        "train.steps=30",
        "train.lora_rank=0",
        "train.lr=2e-3",
        "train.log_every=1",
        "loss.lpips=0",
        "loss.adl=0",
        "train.checkpoint_every=100",
    )
    one = tmp_path / "one"
    one.mkdir()
    for suffix in (".json", ".png", ".safetensors"):
        (one / f"000000{suffix}").write_bytes(pair_stem(pairs, 0).with_suffix(suffix).read_bytes())
    train(r, one, tmp_path / "run", progress=False)
    rows = (tmp_path / "run" / "log.csv").read_text().splitlines()[1:]
    losses = [float(row.split(",")[1]) for row in rows]
    assert len(losses) == 30
    assert sum(losses[-5:]) / 5 < 0.7 * sum(losses[:5]) / 5


def test_resume_matches_uninterrupted_run(pairs, tmp_path):
    r = recipe()
    train(r, pairs, tmp_path / "straight", progress=False)
    train(r, pairs, tmp_path / "split", max_steps=3, progress=False)
    assert (tmp_path / "split" / "checkpoints" / "step_0000003").is_dir()
    train(r, pairs, tmp_path / "split", resume="latest", progress=False)
    a = load_file(str(tmp_path / "straight" / "checkpoints" / "step_0000006" / "trainable.safetensors"))
    b = load_file(str(tmp_path / "split" / "checkpoints" / "step_0000006" / "trainable.safetensors"))
    assert a.keys() == b.keys() and any("lora" in k for k in a)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6)
    log = (tmp_path / "split" / "log.csv").read_text().splitlines()
    assert [int(row.split(",")[0]) for row in log[1:]] == list(range(1, 7))
    opt = load_file(str(tmp_path / "split" / "checkpoints" / "step_0000006" / "optimizer.safetensors"))
    assert any(k.endswith("exp_avg") for k in opt)


def test_missing_pairs_fail_at_start(tmp_path):
    with pytest.raises(FileNotFoundError, match="gen-pairs"):
        train(recipe(), tmp_path, tmp_path / "run", progress=False)


def test_cli_chain_gen_pairs_train_upscale(tmp_path):
    """The README's tiny chain, with the real LPIPS-VGG weights: gen-pairs -> train -> upscale RUN/final."""
    from PIL import Image

    sets = [
        "--set",
        "pairs.count=4",
        "--set",
        "pairs.resolution=32",
        "--set",
        "train.steps=20",
        "--set",
        "train.checkpoint_every=10",
        "--set",
        "train.validate_every=10",
        "-q",
    ]
    cfg = ["--config", str(TINY)]
    assert main(["gen-pairs", *cfg, "--out", str(tmp_path / "pairs"), *sets]) == 0
    assert (
        main(["train", *cfg, "--pairs", str(tmp_path / "pairs"), "--out", str(tmp_path / "run"), *sets]) == 0
    )
    run = tmp_path / "run"
    assert (run / "final" / "fluxsr.json").is_file() and (run / "loss.png").is_file()
    assert json.loads((run / "val" / "step_0000020" / "metrics.json").read_text())["psnr_y"]
    assert len((run / "log.csv").read_text().splitlines()) == 21
    Image.new("RGB", (8, 6), (10, 200, 30)).save(tmp_path / "in.png")
    assert (
        main(
            [
                "upscale",
                "--model",
                str(run / "final"),
                str(tmp_path / "in.png"),
                "-o",
                str(tmp_path / "o"),
                "-q",
            ]
        )
        == 0
    )
    assert Image.open(tmp_path / "o" / "in.png").size == (32, 24)


@pytest.mark.slow
def test_accelerate_two_processes(tmp_path):
    """gen-pairs and train as two CPU processes under `accelerate launch`: each pair once, no gaps.

    accelerate's `--cpu` launcher starts several processes only through MPI; `--multi_gpu` starts them with torchrun,
    and on a machine without CUDA fluxsr runs them on the CPU (gloo backend)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    launch = TWO_CPU_PROCESSES
    sets = [f"--set={s}" for s in FAST] + ["--set=pairs.count=5", "--set=train.steps=2", "-q"]
    res = subprocess.run(
        [*launch, "gen-pairs", "--config", str(TINY), "--out", str(tmp_path / "p"), *sets],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    assert "process 0: wrote 3 pairs" in res.stderr and "process 1: wrote 2 pairs" in res.stderr
    assert complete_indices(tmp_path / "p") == [0, 1, 2, 3, 4]
    lines = (tmp_path / "p" / "manifest.jsonl").read_text().splitlines()
    assert [json.loads(x)["index"] for x in lines] == [0, 1, 2, 3, 4]
    res = subprocess.run(
        [
            *launch,
            "train",
            "--config",
            str(TINY),
            "--pairs",
            str(tmp_path / "p"),
            "--out",
            str(tmp_path / "r"),
            *sets,
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    assert (tmp_path / "r" / "final" / "fluxsr.json").is_file()
