"""Guards of the training chain: bad recipes, reused folders, changed configs and unreadable images fail at start
with one line naming the cause; logs, exported T_L and file modes are right."""

import csv
import json
import math
import os
import re
import stat
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fluxsr.cli import main
from fluxsr.io.cache import atomic_write_bytes
from fluxsr.io.config import ConfigError
from fluxsr.training.loop import effective_t_l, train, usable_pairs
from fluxsr.training.pairs import generate_pairs, load_pair, pair_stem
from fluxsr.training.pretrain import load_photos
from fluxsr.training.recipe import load_recipe
from tests.paths import ROOT

TINY = ROOT / "configs" / "tiny.yaml"
FAST = [
    "pairs.count=2",
    "pairs.resolution=32",
    "pairs.steps=2",
    "train.steps=2",
    "train.batch_size=1",
    "train.checkpoint_every=1",
    "train.validate_every=0",
    "train.warmup_steps=2",
    "train.log_every=1",
    "loss.lpips=0",
    "loss.lpips_net=random-vgg",
]


def recipe(*extra):
    return load_recipe(TINY, [*FAST, *extra])


def truncated_png(path: Path) -> Path:
    Image.new("RGB", (40, 40), (10, 120, 200)).save(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def log_rows(run: Path) -> list[list[str]]:
    return [r.split(",") for r in (run / "log.csv").read_text().splitlines()[1:]]


# -- 5. range checks --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "override",
    [
        "train.steps=-5",
        "train.grad_accum=0",
        "train.batch_size=0",
        "train.log_every=0",
        "train.checkpoint_every=0",
        "train.schedule=linear",
        "pairs.steps=0",
        "pairs.count=0",
        "pretrain.vae.steps=0",
        "pretrain.teacher.batch_size=0",
        "model.t_l=1.5",
    ],
)
def test_out_of_range_fields_fail_at_load(override):
    with pytest.raises(ConfigError, match=override.split("=")[0].replace(".", r"\.")):
        recipe(override)


def test_bad_sizes_and_validation_images_fail_at_start(pairs, tmp_path):
    with pytest.raises(ConfigError, match="train.validation_images"):
        train(recipe(f"train.validation_images={tmp_path / 'nope'}"), pairs, tmp_path / "r1", progress=False)
    with pytest.raises(ConfigError, match="train.crop: 24 is not a multiple of 16"):
        train(recipe("train.crop=24"), pairs, tmp_path / "r2", progress=False)
    with pytest.raises(ValueError, match="pairs.resolution: 40 is not a multiple of 16"):
        generate_pairs(recipe("pairs.resolution=40"), tmp_path / "p", device="cpu", progress=False)


# -- 1. / 2. / 8. fresh runs, resume, log.csv -------------------------------------------------------------------------


def test_fresh_train_refuses_a_folder_with_checkpoints(pairs, tmp_path):
    (tmp_path / "run" / "checkpoints" / "step_0000020").mkdir(parents=True)
    with pytest.raises(ValueError, match="--resume"):
        train(recipe(), pairs, tmp_path / "run", progress=False)


def test_resume_refuses_changed_recipe_and_logs_the_lr_used(pairs, tmp_path):
    run = tmp_path / "run"
    train(recipe(), pairs, run, progress=False)
    # warm-up over 2 steps: step 1 ran at lr/2, step 2 at lr (not the next step's LR)
    assert [(r[0], float(r[6])) for r in log_rows(run)] == [("1", 5e-4), ("2", 1e-3)]
    saved_recipe = (run / "recipe.yaml").read_text()
    with pytest.raises(ValueError, match=r"train\.lora_rank: 4 -> 8; train\.lr: 0\.001 -> 0\.002"):
        train(recipe("train.lr=2e-3", "train.lora_rank=8"), pairs, run, resume="latest", progress=False)
    with pytest.raises(ValueError, match="at step 2, beyond the 1 steps"):
        train(recipe("train.steps=1"), pairs, run, resume="latest", progress=False)
    assert (run / "recipe.yaml").read_text() == saved_recipe  # not rewritten by a refused resume
    # more steps, other intervals and a time limit may change
    train(
        recipe("train.steps=3", "train.checkpoint_every=5", "train.time_limit=1000"),
        pairs,
        run,
        resume="latest",
        progress=False,
    )
    assert [r[0] for r in log_rows(run)] == ["1", "2", "3"]


def test_resume_refuses_a_checkpoint_with_other_trainable_tensors(pairs, tmp_path):
    """A LoRA checkpoint made before the attention projections were adapted lacks their tensors."""
    from safetensors.torch import load_file, save_file

    run = tmp_path / "run"
    train(recipe(), pairs, run, progress=False)
    ckpt = max(p for p in (run / "checkpoints").iterdir() if p.is_dir())  # the latest, which resume reads
    state = load_file(str(ckpt / "trainable.safetensors"))
    old = {k: v for k, v in state.items() if ".attn." not in k}  # what the old target pattern trained
    assert len(old) < len(state)
    save_file(old, str(ckpt / "trainable.safetensors"))
    with pytest.raises(ValueError, match="start a new run"):
        train(recipe("train.steps=3"), pairs, run, resume="latest", progress=False)


def test_time_limit_logs_the_last_step_once(pairs, tmp_path):
    run = tmp_path / "run"
    train(recipe("train.steps=4", "train.time_limit=1e-9"), pairs, run, progress=False)
    assert [r[0] for r in log_rows(run)] == ["1"]


def test_grad_norm_columns_and_the_step_0_report(pairs, tmp_path, capsys):
    run = tmp_path / "run"
    train(recipe("train.steps=3", "train.grad_norm_every=2"), pairs, run, progress=False)
    rows = list(csv.DictReader((run / "log.csv").open()))
    assert [r["step"] for r in rows] == ["1", "2", "3"]
    measured = [r for r in rows if r["gn_ftd"]]
    assert [r["step"] for r in measured] == ["1", "2"]  # the first step, then every 2nd
    for r in measured:
        assert all(math.isfinite(float(r[k])) and float(r[k]) > 0 for k in ("gn_ftd", "gn_mse", "gn_adl"))
        assert float(r["gn_lpips"]) == 0.0  # loss.lpips is 0 here
    assert rows[2]["gn_ftd"] == rows[2]["gn_adl"] == ""
    out = capsys.readouterr().out
    assert (
        "step 0: ADL " in out and "(block tap, single:-1); gradient norms of the weighted terms: ftd " in out
    )


def test_resume_accepts_a_checkpoint_from_before_the_diagnostic_fields(pairs, tmp_path):
    """A checkpoint's recipe without loss.adl_tap / train.grad_norm_every (older fluxsr) resumes as their defaults;
    its log.csv gets the gradient-norm columns."""
    run = tmp_path / "run"
    train(recipe(), pairs, run, progress=False)
    state_file = run / "checkpoints" / "step_0000002" / "state.json"
    state = json.loads(state_file.read_text())
    del state["recipe"]["loss"]["adl_tap"], state["recipe"]["train"]["grad_norm_every"]
    state_file.write_text(json.dumps(state))
    log = run / "log.csv"
    log.write_text("\n".join(",".join(r.split(",")[:9]) for r in log.read_text().splitlines()) + "\n")
    train(recipe("train.steps=3"), pairs, run, resume="latest", progress=False)
    rows = list(csv.DictReader(log.open()))
    assert (
        [r["step"] for r in rows] == ["1", "2", "3"] and rows[0]["gn_ftd"] is None and rows[2]["gn_ftd"] == ""
    )


# -- 4. shifted T_L ---------------------------------------------------------------------------------------------------


def test_shifted_t_l_is_exported_and_validated(pairs, tmp_path, monkeypatch):
    import fluxsr.training.loop as tr

    seen = []
    monkeypatch.setattr(tr, "validate", lambda *a, t_l=None, **k: seen.append(t_l))
    train(
        recipe("model.shift_t_l=true", "train.steps=1", "train.validate_every=1"),
        pairs,
        tmp_path / "run",
        progress=False,
    )
    expected = effective_t_l(0.25, True, tuple(load_pair(pairs, 0)["z0"].shape[-2:]))
    assert expected != pytest.approx(0.25)
    assert seen == [pytest.approx(expected)]
    assert json.loads((tmp_path / "run" / "final" / "fluxsr.json").read_text())["t_l"] == pytest.approx(
        expected
    )


# -- 3. pairs made with another config --------------------------------------------------------------------------------


def test_pairs_with_a_changed_config_are_refused(tmp_path):
    out = tmp_path / "p"
    assert generate_pairs(recipe("pairs.count=1"), out, device="cpu", progress=False) == [0]
    with pytest.raises(ValueError, match="different config.*new --out"):
        generate_pairs(recipe("pairs.count=2", "pairs.guidance=2.0"), out, device="cpu", progress=False)
    # a larger count with the same config extends the folder
    assert generate_pairs(recipe("pairs.count=2"), out, device="cpu", progress=False) == [1]
    marker = pair_stem(out, 1).with_suffix(".json")
    marker.write_text(json.dumps({**json.loads(marker.read_text()), "config_hash": "0123456789ab"}))
    with pytest.raises(ValueError, match="2 different gen-pairs configs"):
        train(recipe(), out, tmp_path / "run", progress=False)


def test_train_start_checks_each_pair_once(pairs, monkeypatch):
    """The pairs were checked three times at start (complete_indices, check_intact, check_one_config)."""
    import fluxsr.training.pairs as pairs_module

    checked, original = [], pairs_module.pair_problem
    monkeypatch.setattr(pairs_module, "pair_problem", lambda out, i: checked.append(i) or original(out, i))
    assert usable_pairs(pairs) == [0, 1]
    assert sorted(checked) == [0, 1]


# -- 6. unreadable images ---------------------------------------------------------------------------------------------


def test_unreadable_photos_are_skipped_with_a_warning(tmp_path, capsys):
    photos = tmp_path / "photos"
    photos.mkdir()
    Image.new("RGB", (48, 40), (40, 120, 200)).save(photos / "a.png")
    truncated_png(photos / "b.png")
    out = tmp_path / "pairs"
    written = generate_pairs(
        recipe("pairs.source=photos", f"pairs.photos={photos}"), out, device="cpu", progress=False
    )
    assert written == [0]
    err = capsys.readouterr().err
    assert "b.png" in err and "1 pair(s) skipped" in err
    assert len(load_photos([str(photos)], 64)) == 1
    assert "skipped 1 unreadable photo" in capsys.readouterr().err


def test_unreadable_validation_image_is_one_line_at_start(pairs, tmp_path, capsys):
    val = tmp_path / "val"
    val.mkdir()
    truncated_png(val / "bad.png")
    rc = main(
        [
            "train",
            "--config",
            str(TINY),
            *sum((["--set", s] for s in FAST), []),
            "--set",
            f"train.validation_images={val}",
            "--pairs",
            str(pairs),
            "--out",
            str(tmp_path / "run"),
            "-q",
        ]
    )
    err = capsys.readouterr().err
    assert rc == 2 and "bad.png" in err and "Traceback" not in err
    assert not (tmp_path / "run" / "checkpoints").exists()


# -- 7. fluxsr degrade ------------------------------------------------------------------------------------------------


def test_degrade_reads_16_bit_and_exif_and_applies_set_without_config(tmp_path):
    Image.fromarray(np.full((32, 32), 32768, dtype=np.uint16)).save(tmp_path / "deep.png")
    assert main(["degrade", str(tmp_path / "deep.png"), str(tmp_path / "deep_lr.png")]) == 0
    assert abs(np.asarray(Image.open(tmp_path / "deep_lr.png")).mean() - 128) < 20  # mid-grey, not white
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees on display
    Image.new("RGB", (32, 16), (90, 90, 90)).save(tmp_path / "rot.png", exif=exif.tobytes())
    assert main(["degrade", str(tmp_path / "rot.png"), str(tmp_path / "rot_lr.png")]) == 0
    assert Image.open(tmp_path / "rot_lr.png").size == (4, 8)
    assert (
        main(["degrade", str(tmp_path / "rot.png"), str(tmp_path / "x2.png"), "--set", "degradation.scale=2"])
        == 0
    )
    assert Image.open(tmp_path / "x2.png").size == (8, 16)


# -- 9. file modes ----------------------------------------------------------------------------------------------------


def test_atomic_writes_follow_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        atomic_write_bytes(tmp_path / "a.bin", b"x")
        os.umask(0o002)
        atomic_write_bytes(tmp_path / "b.bin", b"x")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a.bin").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "b.bin").stat().st_mode) == 0o664


# -- issue 16: outputs never land on inputs ---------------------------------------------------------------------------


def test_gen_pairs_refuses_an_out_holding_the_photos(tmp_path, capsys):
    """Pairs are named 000000.png, ...: a photos folder used as --out would have its photos written over."""
    photos = tmp_path / "photos"
    photos.mkdir()
    Image.new("RGB", (48, 40), (40, 120, 200)).save(photos / "000000.png")
    before = (photos / "000000.png").read_bytes()
    with pytest.raises(
        ValueError, match=r"pairs\.photos .* is .*photos, which gen-pairs writes its pairs into"
    ):
        generate_pairs(
            recipe("pairs.source=photos", f"pairs.photos={photos}"), photos, device="cpu", progress=False
        )
    argv = [
        "gen-pairs",
        "--config",
        str(TINY),
        "--set",
        "pairs.source=photos",
        "--set",
        f"pairs.photos={photos}",
    ]
    assert main([*argv, "--out", str(tmp_path), "-q"]) == 2
    assert "lies inside" in capsys.readouterr().err
    assert (photos / "000000.png").read_bytes() == before and sorted(os.listdir(photos)) == ["000000.png"]


def test_train_refuses_a_run_folder_whose_final_holds_an_input(tmp_path):
    """final/ is replaced at the end of a run: pairs or a base model inside it would be deleted."""
    run = tmp_path / "run"
    (run / "final").mkdir(parents=True)
    with pytest.raises(ValueError, match="--pairs .* lies inside .*final, which train replaces at the end"):
        train(recipe(), run / "final" / "pairs", run, progress=False)
    with pytest.raises(ValueError, match="model.base .* is .*final"):
        train(recipe(f"model.base={run / 'final'}"), tmp_path / "pairs", run, progress=False)
    assert (run / "final").is_dir()


# -- 10. recipe YAML that does not parse: one line naming the file, line and column -----------------------------------


@pytest.mark.parametrize(
    "text, where, problem",
    [
        ("train:\n  lr: [1,\n", "line 3, column 1", "expected the node content"),
        ("train:\n\tlr: 1\n", "line 2, column 1", "a tab character: YAML indents with spaces only"),
        (
            "train: !!python/object:os.system {}\n",
            "line 1, column 8",
            r"tag !!python/object:os\.system is not",
        ),
        ("train: !!python/name:os.system\n", "line 1, column 8", r"tag !!python/name:os\.system is not"),
        ("train: !!python/object/apply:os.system [ls]\n", "line 1, column 8", "tag !!python/object/apply"),
        ("train:\n  lr: 1\n  steps: 2\n  lr: 2\n", "line 4, column 3", "duplicate key 'lr'"),
        ("a:\n" + "".join(" " * i + "b:\n" for i in range(1, 200)), "line 100, column 100", "nested deeper"),
        ("[" * 5000 + "]" * 5000, "line 1, column 101", "nested deeper than 100 levels"),
    ],
)
def test_bad_recipe_yaml_is_one_line_naming_file_line_and_column(text, where, problem, tmp_path, capsys):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    args = ["--pairs", str(tmp_path / "pairs"), "--out", str(tmp_path / "run"), "-q"]
    assert main(["train", "--config", str(path), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err
    assert err.startswith(f"error: {path}: {where}: ")
    assert re.search(problem, err)


@pytest.mark.parametrize(
    "item, problem",
    [
        ("train.lr=[1,", "line 1, column 4: expected the node content"),
        ("train.lr=!!python/object/apply:os.system [ls]", "line 1, column 1: tag !!python/object/apply"),
        ("train.lr={a: 1, a: 2}", "line 1, column 8: duplicate key 'a'"),
    ],
)
def test_bad_set_value_is_one_line_naming_the_item(item, problem, tmp_path, capsys):
    args = ["--pairs", str(tmp_path / "pairs"), "--out", str(tmp_path / "run"), "-q"]
    assert main(["train", "--config", str(TINY), "--set", item, *args]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: --set {item!r} value: {problem}") and "\n" not in err


def test_yaml_merge_keys_still_override_and_plain_values_read_as_safe_load():
    from fluxsr.io.config import parse_yaml

    text = "base: &b {lr: 1, steps: 2}\ntrain:\n  <<: *b\n  lr: 3\nx: 1e-4\n"
    assert parse_yaml(text, "t") == __import__("yaml").safe_load(text)
    assert parse_yaml(text, "t")["train"] == {"lr": 3, "steps": 2}


# -- 11. damaged checkpoints and pairs: one line naming the file; --resume intact, gen-pairs redoes a pair -------------


def cut_short(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def test_resume_names_a_damaged_checkpoint_and_intact_falls_back(pairs, tmp_path, capsys):
    run = tmp_path / "run"
    train(recipe(), pairs, run, progress=False)
    step2 = run / "checkpoints" / "step_0000002"
    state = (step2 / "state.json").read_text()
    damages = {
        "trainable.safetensors": (cut_short, r"trainable\.safetensors: damaged .*cut short"),
        "rng.safetensors": (lambda p: p.write_bytes(b"garbage"), r"rng\.safetensors: damaged .*header"),
        "state.json": (lambda p: p.write_text("{garbage"), r"state\.json: damaged, not valid JSON"),
    }
    for name, (damage, message) in damages.items():
        original = (step2 / name).read_bytes()
        damage(step2 / name)
        with pytest.raises(ValueError, match=f"{re.escape(str(step2))}/{message}") as caught:
            train(recipe("train.steps=3"), pairs, run, resume="latest", progress=False)
        assert "`--resume intact` resumes from step_0000001" in str(caught.value)
        (step2 / name).write_bytes(original)
    for typed in ({"step": "two"}, [], {**json.loads(state), "optimizer": {"param_groups": 3}}):
        (step2 / "state.json").write_text(json.dumps(typed))
        with pytest.raises(ValueError, match=r"step_0000002/state\.json: damaged, "):
            train(recipe("train.steps=3"), pairs, run, resume="latest", progress=False)
    # a state.json whose fields have the right types but do not fit the optimiser: named at load
    (step2 / "state.json").write_text(json.dumps({**json.loads(state), "scheduler": {"last_epoch": "x"}}))
    with pytest.raises(ValueError, match=r"step_0000002: damaged checkpoint.*delete"):
        train(recipe("train.steps=3"), pairs, run, resume="latest", progress=False)
    (step2 / "state.json").write_text(state)
    cut_short(step2 / "optimizer.safetensors")
    fast = [arg for s in [*FAST, "train.steps=3"] for arg in ("--set", s)]
    args = ["train", "--config", str(TINY), *fast, "--pairs", str(pairs), "--out", str(run), "-q", "--resume"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "optimizer.safetensors: damaged" in err and "Traceback" not in err
    assert main([*args, "intact"]) == 0
    said = capsys.readouterr()
    assert "skipping a damaged checkpoint" in said.err and "optimizer.safetensors" in said.err
    assert "step_0000001 (step 1)" in said.out
    assert [r[0] for r in log_rows(run)] == ["1", "2", "3"]  # steps 2 and 3 redone from step 1
    from safetensors.torch import load_file

    assert load_file(str(step2 / "optimizer.safetensors"))  # rewritten whole by the resumed run


@pytest.mark.parametrize(
    "suffix, damage, message",
    [
        (".safetensors", cut_short, "its size does not match its header"),
        (".safetensors", lambda p: p.write_bytes(b"\x00" * 40), "no valid safetensors header"),
        (".png", cut_short, "cut short"),
        (".json", lambda p: p.write_text("{"), "damaged pair marker"),
    ],
)
def test_a_damaged_pair_is_redone_by_gen_pairs_and_named_by_train(suffix, damage, message, tmp_path, capsys):
    out = tmp_path / "pairs"
    assert generate_pairs(recipe(), out, device="cpu", progress=False) == [0, 1]
    target = pair_stem(out, 1).with_suffix(suffix)
    intact = target.read_bytes()
    damage(target)
    with pytest.raises(ValueError, match=f"000001{re.escape(suffix)}: .*{message}.*gen-pairs"):
        train(recipe(), out, tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()
    capsys.readouterr()
    fast = [arg for s in FAST for arg in ("--set", s)]
    assert main(["gen-pairs", "--config", str(TINY), *fast, "--out", str(out), "-q"]) == 0
    err = capsys.readouterr().err
    assert f"redoing pair 1: {target}" in err and "2/2 pairs complete" in err and "wrote 1 pairs" in err
    assert target.read_bytes() == intact  # pair i is the same whenever it is made


def test_load_pair_names_a_latents_file_it_cannot_read(tmp_path):
    out = tmp_path / "pairs"
    generate_pairs(recipe("pairs.count=1"), out, device="cpu", progress=False)
    from safetensors.torch import save_file

    save_file({"eps": torch.zeros(1)}, str(pair_stem(out, 0).with_suffix(".safetensors")))
    with pytest.raises(ValueError, match=r"000000\.safetensors: lacks tensor\(s\) z0"):
        load_pair(out, 0)
