"""Hugging Face repo ids as model names, resolved offline from a local cache laid out as huggingface_hub lays it."""

import json
import shutil
from dataclasses import replace

import huggingface_hub
import pytest
import torch
from huggingface_hub.errors import LocalEntryNotFoundError
from huggingface_hub.utils import filter_repo_objects

from fluxsr.cli import main
from fluxsr.inference.pipeline import FluxSRPipeline, UpscaleOptions
from fluxsr.io import hub
from fluxsr.io.config import ConfigError
from fluxsr.io.hub import EMBEDS_FILE, LORA_FILE, SPEC_FILE
from fluxsr.model.folders import save_model_folder
from fluxsr.model.loader import load_model
from fluxsr.model.presets import build_tiny
from fluxsr.training.recipe import load_recipe
from tests.builders import lora_only_folder, put_in_hub_cache, velocity_probe


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    return save_model_folder(build_tiny(seed=2), tmp_path_factory.mktemp("tiny") / "model")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("org/name", hub.RepoRef("org/name")),
        ("org/name@v1.0", hub.RepoRef("org/name", "v1.0")),
        ("black-forest-labs/FLUX.1-dev", hub.RepoRef("black-forest-labs/FLUX.1-dev")),
        ("org/name@refs/pr/3", hub.RepoRef("org/name", "refs/pr/3")),
        ("bundled", None),
        ("/abs/model", None),
        ("runs/a/final", None),
        ("~/model", None),
        ("org/na me", None),
        ("org/name@", None),
        ("org/name--x", None),  # huggingface_hub refuses '--' in ids
    ],
)
def test_repo_ref_shapes(text, expected):
    assert hub.parse_repo_ref(text) == expected


def test_file_patterns_take_what_fluxsr_loads_and_nothing_else(tiny_folder, tmp_path):
    assert (hub.SPEC_FILE, hub.LORA_FOLDER_FILES[1:]) == (SPEC_FILE, (EMBEDS_FILE, LORA_FILE))
    files = [str(p.relative_to(tiny_folder)) for p in tiny_folder.rglob("*") if p.is_file()]
    assert sorted(filter_repo_objects(files, allow_patterns=list(hub.MODEL_FOLDER_FILES))) == sorted(files)
    unwanted = [
        "README.md",
        "flux1-dev.safetensors",
        "ae.safetensors",
        "text_encoder_2/model-00001-of-00002.safetensors",
        "transformer/diffusion_pytorch_model.bin",
    ]
    for patterns in (hub.MODEL_FOLDER_FILES, hub.FLUX_FOLDER_FILES, hub.LORA_FOLDER_FILES):
        assert list(filter_repo_objects(unwanted, allow_patterns=list(patterns))) == []
    (tmp_path / hub.SPEC_FILE).write_text(json.dumps({"base": "black-forest-labs/FLUX.1-dev"}))
    assert hub.folder_files(tmp_path) == hub.LORA_FOLDER_FILES
    (tmp_path / hub.SPEC_FILE).write_text(json.dumps({"t_l": 0.25}))
    assert hub.folder_files(tmp_path) == hub.MODEL_FOLDER_FILES
    assert hub.folder_files(tmp_path / "absent") == hub.FLUX_FOLDER_FILES


def test_repo_id_loads_offline_like_the_folder(tiny_folder, hub_cache):
    put_in_hub_cache(hub_cache, "someone/tiny-sr", tiny_folder)
    by_id = FluxSRPipeline.from_pretrained("someone/tiny-sr", device="cpu")
    by_path = FluxSRPipeline.from_pretrained(tiny_folder, device="cpu")
    lr = torch.rand(3, 24, 20, generator=torch.Generator().manual_seed(1))
    assert torch.equal(
        by_id.upscale_tensor(lr, UpscaleOptions()), by_path.upscale_tensor(lr, UpscaleOptions())
    )


def test_revision_and_commit(tiny_folder, hub_cache, tmp_path):
    main_commit = put_in_hub_cache(hub_cache, "someone/sr", tiny_folder)
    other = build_tiny(seed=5)
    other.spec = replace(other.spec, name="v2")
    put_in_hub_cache(hub_cache, "someone/sr", save_model_folder(other, tmp_path / "v2"), revision="v2")
    assert load_model("someone/sr").spec.name == "tiny"
    assert load_model("someone/sr@v2").spec.name == "v2"
    assert load_model(f"someone/sr@{main_commit}").spec.name == "tiny"
    with pytest.raises(FileNotFoundError, match="someone/sr@v3.*not in the local cache"):
        load_model("someone/sr@v3")


def test_a_local_path_wins_over_a_repo_id(tiny_folder, hub_cache, tmp_path, monkeypatch):
    put_in_hub_cache(hub_cache, "someone/sr", tiny_folder)
    local = build_tiny(seed=7)
    local.spec = replace(local.spec, name="local")
    save_model_folder(local, tmp_path / "someone" / "sr")
    monkeypatch.chdir(tmp_path)
    assert load_model("someone/sr").spec.name == "local"


def test_unknown_id_offline_is_one_line_naming_both_readings(hub_cache, tmp_path, capsys):
    (tmp_path / "in.png").write_bytes(b"")
    code = main(["upscale", str(tmp_path / "in.png"), "-o", str(tmp_path / "out"), "--model", "nobody/none"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err and "Traceback" not in err
    assert "no such file or folder" in err and "nobody/none" in err and "HF_HUB_OFFLINE" in err


def test_lora_only_folder_with_its_base_on_the_hub(tiny_folder, hub_cache, tmp_path):
    """A LoRA-only folder whose spec names its base by repo id: both come from the cache, and the result is the
    same model as the LoRA on the local base."""
    top = lora_only_folder(
        tiny_folder, tmp_path / "lora-only", {"base": "someone/base", "name": "lora"}, seed=3
    )
    put_in_hub_cache(hub_cache, "someone/base", tiny_folder)
    put_in_hub_cache(hub_cache, "someone/lora", top)
    via_hub = load_model("someone/lora")
    local = tmp_path / "local-lora"
    shutil.copytree(top, local)
    (local / SPEC_FILE).write_text(json.dumps({"base": str(tiny_folder), "name": "lora"}))
    torch.testing.assert_close(velocity_probe(via_hub), velocity_probe(load_model(local)), atol=0, rtol=0)
    assert not torch.allclose(velocity_probe(via_hub), velocity_probe(load_model(tiny_folder)), atol=1e-4)


def test_a_recipe_refuses_a_repo_id(tmp_path, monkeypatch):
    """Training reads local weights (gen-pairs would need the teacher's text encoders, which are not fetched)."""
    with pytest.raises(ConfigError, match="model.teacher: 'org/flux'.*hf download org/flux --local-dir"):
        load_recipe(None, ["model.teacher=org/flux"])
    with pytest.raises(ConfigError, match="model.base: .*hf download org/flux --revision v2 --local-dir"):
        load_recipe(None, ["model.base=org/flux@v2"])
    (tmp_path / "org" / "flux").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    assert load_recipe(None, ["model.base=org/flux"]).model.base == "org/flux"  # a local folder of that name


def test_a_diffusers_flux_repo_loads_with_its_prompt_embeddings(hub_cache, tmp_path):
    """A repo without fluxsr.json is a diffusers FLUX folder (as black-forest-labs/FLUX.1-dev is)."""
    tiny = build_tiny(seed=8)
    folder = tmp_path / "flux"
    tiny.transformer.save_pretrained(folder / "transformer")
    tiny.vae.save_pretrained(folder / "vae")
    tiny.cond.save(folder / EMBEDS_FILE)
    (folder / "model_index.json").write_text(json.dumps({"_class_name": "FluxPipeline"}))
    put_in_hub_cache(hub_cache, "someone/flux-diffusers", folder)
    torch.testing.assert_close(
        velocity_probe(load_model("someone/flux-diffusers")),
        velocity_probe(load_model(folder)),
        atol=0,
        rtol=0,
    )


def test_online_errors_are_one_line(monkeypatch):
    """Online, a repo that cannot be reached or fetched is one line naming both readings and the cause."""
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    ref = hub.RepoRef("org/name", "v1")
    for error, cause in (
        (LocalEntryNotFoundError("Connection refused\nmore"), "Connection refused"),
        (OSError(), "OSError"),
        (LocalEntryNotFoundError(""), "LocalEntryNotFoundError"),
    ):
        message = str(hub.hub_error("org/name@v1", ref, error))
        assert message.startswith(
            "model 'org/name@v1': no such file or folder, and Hugging Face repo org/name@v1"
        )
        assert message.endswith(f"could not be fetched: {cause}") and "\n" not in message
