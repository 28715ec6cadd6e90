"""``fluxsr export``: Hub-ready folders from model folders and training runs, loaded back by repo id offline."""

import hashlib
import json
import shutil
import subprocess
from pathlib import Path

import torch
import yaml
from safetensors.torch import load_file

from fluxsr.cli import main
from fluxsr.inference.pipeline import FluxSRPipeline, UpscaleOptions
from fluxsr.io.hub import EMBEDS_FILE, LORA_FILE, SPEC_FILE
from fluxsr.io.images import write_image
from fluxsr.model.folders import save_model_folder
from fluxsr.model.loader import load_model
from fluxsr.model.presets import BUNDLED_MODEL, FLUX_DEV_TRANSFORMER, build_tiny
from fluxsr.training.hub_card import FLUX_DEV_LICENSE, FLUX_DEV_REPO
from fluxsr.training.loop import train
from fluxsr.training.recipe import load_recipe
from tests.builders import lora_only_folder, put_in_hub_cache, velocity_probe
from tests.paths import ROOT

REQUIRED = {"license", "pipeline_tag", "library_name", "tags"}


def recipe(*extra):
    """The tiny recipe at its fastest (the ``pairs`` fixture of conftest makes its pairs once)."""
    fast = ["pairs.count=2", "pairs.resolution=32", "pairs.steps=2", "train.steps=2", "train.batch_size=1"]
    fast += ["train.checkpoint_every=1", "train.validate_every=0", "loss.lpips_net=random-vgg"]
    return load_recipe(ROOT / "configs" / "tiny.yaml", [*fast, "model.shift_t_l=true", *extra])


def card_meta(folder: Path) -> dict:
    text = (folder / "README.md").read_text()
    assert text.startswith("---\n")
    return yaml.safe_load(text.split("---\n")[1])


def tree_digest(folder: Path) -> dict[str, str]:
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def check_sums(folder: Path) -> list[str]:
    """The files SHA256SUMS lists, each checked here; and by ``sha256sum -c`` where the machine has it."""
    lines = (folder / "SHA256SUMS").read_text().splitlines()
    names = [line.split("  ", 1)[1] for line in lines]
    for line, name in zip(lines, names, strict=True):
        assert line.split("  ")[0] == hashlib.sha256((folder / name).read_bytes()).hexdigest(), name
    if shutil.which("sha256sum"):
        subprocess.run(["sha256sum", "--quiet", "-c", "SHA256SUMS"], cwd=folder, check=True)
    return names


def test_bundled_export_loads_by_repo_id_offline_like_the_folder(tmp_path, hub_cache, capsys):
    out = tmp_path / "export"
    before = tree_digest(BUNDLED_MODEL)
    assert main(["export", str(BUNDLED_MODEL), str(out), "--repo-id", "me/fluxsr-small"]) == 0
    assert tree_digest(BUNDLED_MODEL) == before  # the source is only read
    exported = tree_digest(out)
    for name, digest in before.items():  # weights and configs copied byte for byte
        assert exported[name] == digest, name
    assert set(check_sums(out)) == set(exported) - {"SHA256SUMS"}
    meta = card_meta(out)
    assert REQUIRED <= meta.keys() and meta["license"] == "apache-2.0" and "base_model" not in meta
    assert (meta["pipeline_tag"], meta["library_name"]) == ("image-to-image", "fluxsr")
    assert "--model me/fluxsr-small" in (out / "README.md").read_text()
    put_in_hub_cache(hub_cache, "me/fluxsr-small", out)
    lr = torch.rand(3, 20, 28, generator=torch.Generator().manual_seed(0))
    by_id = FluxSRPipeline.from_pretrained("me/fluxsr-small", device="cpu")
    by_folder = FluxSRPipeline.from_pretrained(BUNDLED_MODEL, device="cpu")
    assert torch.equal(
        by_id.upscale_tensor(lr, UpscaleOptions()), by_folder.upscale_tensor(lr, UpscaleOptions())
    )


def test_flux_dev_sized_weights_carry_the_flux_licence(tmp_path):
    """A transformer of FLUX.1-dev's size is FLUX.1-dev-derived (only its config is read: 12 B random weights
    would not fit a test)."""
    folder = save_model_folder(build_tiny(), tmp_path / "m")
    config = json.loads((folder / "transformer" / "config.json").read_text())
    config |= {k: FLUX_DEV_TRANSFORMER[k] for k in ("num_layers", "num_single_layers", "num_attention_heads")}
    config["attention_head_dim"] = FLUX_DEV_TRANSFORMER["attention_head_dim"]
    (folder / "transformer" / "config.json").write_text(json.dumps(config))
    assert main(["export", str(folder), str(tmp_path / "out")]) == 0
    meta = card_meta(tmp_path / "out")
    assert REQUIRED <= meta.keys()
    assert {k: meta[k] for k in FLUX_DEV_LICENSE} == FLUX_DEV_LICENSE
    assert (meta["base_model"], meta["base_model_relation"]) == (FLUX_DEV_REPO, "finetune")
    assert "FLUX.1 [dev] Non-Commercial License" in (tmp_path / "out" / "README.md").read_text()


def test_lora_only_export_names_its_base_on_the_hub(tmp_path, hub_cache, capsys):
    base = save_model_folder(build_tiny(seed=6), tmp_path / "base")
    spec = {"base": str(base), "ae": str(tmp_path / "ae.safetensors"), "name": "tiny-lora"}
    top = lora_only_folder(base, tmp_path / "top", spec, seed=4)
    assert main(["export", str(top), str(tmp_path / "out")]) == 2  # its base is a local path: refused
    err = capsys.readouterr().err
    assert "--base REPO_ID" in err and "\n" not in err.strip() and not (tmp_path / "out").exists()
    assert main(["export", str(top), str(tmp_path / "out"), "--base", "me/tiny-base"]) == 0
    out = tmp_path / "out"
    exported = json.loads((out / SPEC_FILE).read_text())
    assert (exported["base"], exported["ae"], exported["name"]) == ("me/tiny-base", "", "tiny-lora")
    assert sorted(check_sums(out)) == sorted(["README.md", EMBEDS_FILE, LORA_FILE, SPEC_FILE])
    meta = card_meta(out)
    assert (meta["base_model"], meta["base_model_relation"], meta["license"]) == (
        "me/tiny-base",
        "adapter",
        "apache-2.0",
    )
    put_in_hub_cache(hub_cache, "me/tiny-base", base)
    put_in_hub_cache(hub_cache, "me/tiny-lora", out)
    by_id, local = velocity_probe(load_model("me/tiny-lora")), velocity_probe(load_model(top))
    torch.testing.assert_close(by_id, local, atol=0, rtol=0)


def test_results_from_fluxsr_eval_go_into_the_card(tmp_path, capsys):
    for sub, seed in (("pred", 0), ("gt", 1)):
        write_image(
            tmp_path / sub / "a.png", torch.rand(3, 32, 32, generator=torch.Generator().manual_seed(seed))
        )
    report = tmp_path / "report.json"
    args = ["--pred", str(tmp_path / "pred"), "--gt", str(tmp_path / "gt"), "--metrics", "psnr,ssim", "-q"]
    assert main(["eval", *args, "--device", "cpu", "--json", str(report)]) == 0
    mean = json.loads(report.read_text())["mean"]
    out = tmp_path / "out"
    assert main(["export", str(BUNDLED_MODEL), str(out), "--results", str(report)]) == 0
    card = (out / "README.md").read_text()
    assert "## Results" in card and f"{mean['psnr']:.4g}" in card and "protocol fluxsr" in card
    assert "psnr (higher is better)" in card
    assert "results.json" in check_sums(out)
    assert json.loads((out / "results.json").read_text())["mean"] == mean


def test_benchmark_results_give_one_row_per_method(tmp_path):
    hr = torch.rand(3, 64, 64, generator=torch.Generator().manual_seed(2))
    write_image(tmp_path / "set" / "hr" / "a.png", hr)
    write_image(tmp_path / "set" / "lr" / "a.png", torch.nn.functional.avg_pool2d(hr[None], 4)[0])
    bench = [
        "benchmark",
        "--dataset",
        str(tmp_path / "set"),
        "--out",
        str(tmp_path / "b"),
        "--metrics",
        "psnr",
    ]
    assert main([*bench, "--backends", "bicubic,fluxsr", "--model", "tiny", "--sheet-images", "0", "-q"]) == 0
    methods = json.loads((tmp_path / "b" / "benchmark.json").read_text())["methods"]
    out = tmp_path / "out"
    assert (
        main(["export", str(BUNDLED_MODEL), str(out), "--results", str(tmp_path / "b" / "benchmark.json")])
        == 0
    )
    card = (out / "README.md").read_text()
    for method in methods:
        assert f"| {method['label']} | {method['mean']['psnr']:.4g} |" in card
    assert "data set set" in card


def test_output_rules(tmp_path, capsys):
    src = save_model_folder(build_tiny(), tmp_path / "m")
    (tmp_path / "bad.json").write_text('{"images": []}')
    cases = [
        ([str(src), str(src)], "is "),
        ([str(src), str(src / "hub")], "lies inside"),
        ([str(tmp_path / "nothing"), str(tmp_path / "o")], "neither a fluxsr model folder"),
        (
            [str(src), str(tmp_path / "o"), "--results", str(tmp_path / "bad.json")],
            "not a `fluxsr eval --json`",
        ),
        ([str(src), str(tmp_path / "o"), "--checkpoint", "3"], "applies to a training run"),
        ([str(src), str(tmp_path / "o"), "--repo-id", "not an id"], "not a Hugging Face repo id"),
        ([str(src), str(tmp_path / "o"), "--repo-id", "me/x@v2"], "not a Hugging Face repo id"),
    ]
    for args, message in cases:
        assert main(["export", *args]) == 2, args
        err = capsys.readouterr().err.strip()
        assert message in err and "\n" not in err, (args, err)
    assert not (tmp_path / "o").exists() and not (src / "hub").exists()
    out = tmp_path / "out"
    out.mkdir()
    (out / ".gitattributes").write_text("*.safetensors filter=lfs\n")
    assert main(["export", str(src), str(out)]) == 2
    assert "not empty" in capsys.readouterr().err
    (tmp_path / "r.json").write_text(json.dumps({"mean": {"psnr": 20.0}, "metrics": [], "count": 1}))
    assert main(["export", str(src), str(out), "--overwrite", "--results", str(tmp_path / "r.json")]) == 0
    assert (out / "results.json").is_file()
    assert main(["export", str(src), str(out), "--overwrite"]) == 0  # the earlier export's results.json goes
    assert not (out / "results.json").exists() and (out / ".gitattributes").is_file()
    assert "results.json" not in check_sums(out)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no staging folder made


def test_a_run_exports_its_final_model_or_a_checkpoint(pairs, tmp_path, capsys):
    run = tmp_path / "run"
    final = train(recipe(), pairs, run, progress=False)
    assert main(["export", str(run), str(tmp_path / "final")]) == 0
    assert (tmp_path / "final" / "recipe.yaml").read_text() == (run / "recipe.yaml").read_text()
    assert "## Training recipe" in (tmp_path / "final" / "README.md").read_text()
    assert main(["export", str(run), str(tmp_path / "last"), "--checkpoint", "2"]) == 0
    assert main(["export", str(run), str(tmp_path / "first"), "--checkpoint", "step_0000001"]) == 0
    weights = "transformer/diffusion_pytorch_model.safetensors"
    # the last checkpoint becomes the model train exported at that step: same weights, same T_L (shifted)
    last, want = load_file(tmp_path / "last" / weights), load_file(final / weights)
    assert last.keys() == want.keys() and all(torch.equal(last[k], want[k]) for k in want)
    assert json.loads((tmp_path / "last" / SPEC_FILE).read_text()) == json.loads(
        (final / SPEC_FILE).read_text()
    )
    first = load_file(tmp_path / "first" / weights)
    assert not all(torch.equal(first[k], want[k]) for k in want)
    assert "checkpoint `step_0000001`" in (tmp_path / "first" / "README.md").read_text()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary folder left
    assert main(["export", str(run), str(tmp_path / "x"), "--checkpoint", "7"]) == 2
    assert "there: step_0000001, step_0000002" in capsys.readouterr().err
