"""FSDP training on two CPU processes (gloo): checkpoint, resume and export, in the checkpoint format of every run.

accelerate turns an FSDP launch into plain DDP on a machine without CUDA; tests/training/fsdp_cpu.py makes that one choice
(documented there), so these runs go through fluxsr's ``train`` and accelerate's own FSDP2 preparation (torch
``fully_shard``, each FLUX block a shard unit, per configs/accelerate/fsdp.yaml)."""

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from accelerate import Accelerator
from PIL import Image
from safetensors.torch import load_file

from fluxsr.cli import main
from fluxsr.training.checkpoints import (
    load_checkpoint,
    load_trainable,
    open_checkpoint,
    optimizer_state,
    trainable_state,
)
from fluxsr.training.loop import build_trainer, lr_lambda
from fluxsr.training.recipe import load_recipe
from fluxsr.training.student import build_student
from tests.builders import DDP_FLUXSR, LAUNCH_TWO
from tests.paths import ROOT

TINY = ROOT / "configs" / "tiny.yaml"
FAST = [
    "pairs.count=4",
    "pairs.resolution=32",
    "pairs.steps=2",
    "train.steps=3",
    "train.batch_size=1",
    "train.checkpoint_every=2",
    "train.validate_every=0",
    "train.max_grad_norm=0.01",  # small enough that clipping acts at every step
    "loss.lpips_net=random-vgg",
]
CKPT_FILES = ("trainable.safetensors", "optimizer.safetensors", "rng.safetensors")


def recipe(*extra):
    return load_recipe(TINY, [*FAST, *extra])


def launch(kind: str, pairs: Path, out: Path, *extra: str) -> None:
    """``fluxsr train`` as two CPU processes under ``accelerate launch``: ``fsdp`` (configs/accelerate/fsdp.yaml
    through tests/training/fsdp_cpu.py) or ``ddp`` (``--multi_gpu``, which runs on the CPU with gloo)."""
    how = (
        [
            "--config_file",
            str(ROOT / "configs" / "accelerate" / "fsdp.yaml"),
            str(ROOT / "tests" / "training" / "fsdp_cpu.py"),
        ]
        if kind == "fsdp"
        else DDP_FLUXSR
    )
    res = subprocess.run(
        [
            *LAUNCH_TWO, "--main_process_port", "0", *how,
            "train", "--config", str(TINY), "--pairs", str(pairs), "--out", str(out),
            *[f"--set={s}" for s in FAST], "-q", *extra,
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"},
        timeout=300,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]


def checkpoint_layout(path: Path) -> dict[str, dict[str, tuple]]:
    """Each checkpoint file's tensor names and shapes."""
    return {f: {k: tuple(v.shape) for k, v in load_file(str(path / f)).items()} for f in CKPT_FILES}


@pytest.mark.parametrize("lora_rank", [0, 4])
def test_state_api_gives_a_single_process_its_own_state_dicts_and_stays_strict(lora_rank):
    """Outside FSDP the distributed state-dict API gives what ``state_dict()`` gave (the checkpoint format), loads
    it back, and refuses a state that lacks a tensor (as ``load_state_dict(strict=True)`` did)."""
    model, lora = build_student(recipe(f"train.lora_rank={lora_rank}"), "cpu", torch.float32)
    t = model.transformer
    state = trainable_state(t, lora)
    own = dict(t.named_parameters())
    names = {k: k.replace(".weight", ".fluxsr.weight") if lora else k for k in state}
    assert state.keys() == (own.keys() if not lora else {k for k in state if "lora_" in k})
    assert all(torch.equal(v, own[names[k]]) for k, v in state.items())
    moved = {k: v + 1 for k, v in state.items()}  # (on CPU the state's tensors are the weights themselves)
    load_trainable(t, moved, lora)
    assert all(torch.equal(own[names[k]], v) for k, v in moved.items())
    with pytest.raises(ValueError, match="tensors do not match this run"):
        load_trainable(t, dict(list(state.items())[1:]), lora)
    opt = torch.optim.AdamW([p for p in t.parameters() if p.requires_grad])
    for p in opt.param_groups[0]["params"]:
        p.grad = torch.randn_like(p)
    opt.step()
    ours, torchs = optimizer_state(t, opt), opt.state_dict()
    assert ours["param_groups"] == torchs["param_groups"] and ours["state"].keys() == torchs["state"].keys()
    assert all(
        torch.equal(v, torchs["state"][i][k]) for i, st in ours["state"].items() for k, v in st.items()
    )


@pytest.mark.slow
def test_fsdp_resume_checkpoint_format_and_export(pairs, tmp_path):
    """An FSDP run resumed from its step-2 checkpoint ends with the uninterrupted run's weights; its checkpoints
    have the DDP run's layout and load in a single process; its clipped steps match DDP's; RUN/final upscales."""
    straight, resumed, ddp = tmp_path / "fsdp", tmp_path / "fsdp-resumed", tmp_path / "ddp"
    launch("fsdp", pairs, straight)
    shutil.copytree(straight / "checkpoints" / "step_0000002", resumed / "checkpoints" / "step_0000002")
    launch("fsdp", pairs, resumed, "--resume")
    launch("ddp", pairs, ddp)

    last = "checkpoints/step_0000003/trainable.safetensors"
    a, b, c = (load_file(str(run / last)) for run in (straight, resumed, ddp))
    assert a.keys() == b.keys() == c.keys() and any("lora" in k for k in a)
    for k in a:  # the same processes and shards redo the same arithmetic
        torch.testing.assert_close(b[k], a[k], rtol=0, atol=1e-6)
        # DDP sums the gradients in another order than FSDP's reduce-scatter: equal up to rounding (Adam's
        # normalised steps reach ~1e-6); unclipped FSDP steps differed by ~7e-4
        torch.testing.assert_close(a[k], c[k], rtol=0, atol=1e-5)
    for step in ("step_0000002", "step_0000003"):
        fsdp_ckpt, ddp_ckpt = straight / "checkpoints" / step, ddp / "checkpoints" / step
        assert checkpoint_layout(fsdp_ckpt) == checkpoint_layout(ddp_ckpt)
        assert open_checkpoint(fsdp_ckpt).state.keys() == open_checkpoint(ddp_ckpt).state.keys()

    # a checkpoint written under FSDP loads into a single process's student and optimiser
    r = recipe()
    torch.manual_seed(0)
    model, lora = build_student(r, "cpu", torch.float32)
    trainer = build_trainer(r, model, Accelerator(cpu=True), r.model.t_l, torch.float32)
    scheduler = torch.optim.lr_scheduler.LambdaLR(trainer.optimizer, lambda s: lr_lambda(s, 0, 3, "constant"))
    ckpt = straight / "checkpoints" / "step_0000002"
    assert load_checkpoint(open_checkpoint(ckpt), trainer.net, trainer.optimizer, scheduler, lora) == 2
    named = dict(model.transformer.named_parameters())
    for k, v in load_file(str(ckpt / "trainable.safetensors")).items():
        assert torch.equal(named[k.replace(".weight", ".fluxsr.weight")].detach(), v), k
    opt = load_file(str(ckpt / "optimizer.safetensors"))
    state = trainer.optimizer.state_dict()["state"]
    assert len(state) == len(a) and all(torch.equal(state[i]["exp_avg"], opt[f"{i}.exp_avg"]) for i in state)

    Image.new("RGB", (8, 6), (10, 200, 30)).save(tmp_path / "in.png")
    cmd = ["upscale", "--model", str(straight / "final"), str(tmp_path / "in.png"), "-o", str(tmp_path / "o")]
    assert main([*cmd, "-q"]) == 0
    assert Image.open(tmp_path / "o" / "in.png").size == (32, 24)
