"""The ComfyUI node folder (comfyui/) without ComfyUI: imported the way ComfyUI imports a custom-node folder, its
nodes called with ComfyUI-shaped images (equal to `fluxsr upscale`), its example workflow checked against the
nodes, and stand-ins for ComfyUI's folder_paths / comfy.utils / comfy.model_management used when present."""

import importlib.util
import json
import shutil
import sys
import tomllib
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fluxsr.cli import main
from fluxsr.model.loader import load_model
from fluxsr.model.lora import add_lora, lora_state_dict, save_lora
from fluxsr.model.presets import BUNDLED_MODEL
from tests.paths import ROOT

NODE_DIR = ROOT / "comfyui"
WORKFLOW = NODE_DIR / "example_workflows" / "fluxsr_upscale.json"
WIDGET_TYPES = ("INT", "FLOAT", "STRING", "BOOLEAN")
# ComfyUI's own nodes the example workflow uses, as ComfyUI's nodes.py declares them: links in, widgets (in
# order; LoadImage's upload button stores a value of its own), outputs.
CORE_NODES = {
    "LoadImage": {"links": {}, "widgets": ["image", "upload"], "outputs": ["IMAGE", "MASK"]},
    "SaveImage": {"links": {"images": "IMAGE"}, "widgets": ["filename_prefix"], "outputs": []},
}


def import_node_folder(name: str) -> types.ModuleType:
    """Import comfyui/ as ComfyUI's load_custom_node does: a module named after the folder, from its
    __init__.py, with the folder as its submodule search location (so its relative imports work)."""
    spec = importlib.util.spec_from_file_location(
        name, NODE_DIR / "__init__.py", submodule_search_locations=[str(NODE_DIR)]
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def forget(name: str) -> None:
    for key in [k for k in sys.modules if k == name or k.startswith(name + ".")]:
        del sys.modules[key]


@pytest.fixture
def node_folder(monkeypatch):
    """``load(name, **stand_ins)``: the node folder imported under ``name`` with stand-in modules in
    sys.modules (``folder_paths=...``, ``comfy_utils=...`` for comfy.utils); all removed afterwards."""
    names = []

    def load(name: str, **stand_ins: types.ModuleType) -> types.ModuleType:
        for key, module in stand_ins.items():
            monkeypatch.setitem(sys.modules, key.replace("comfy_", "comfy."), module)
        names.append(name)
        return import_node_folder(name)

    yield load
    for name in names:
        forget(name)


@pytest.fixture(scope="module")
def nodes():
    """The node folder imported outside ComfyUI (no folder_paths, no comfy)."""
    assert "folder_paths" not in sys.modules and "comfy" not in sys.modules
    yield import_node_folder("fluxsr_nodes")
    forget("fluxsr_nodes")


def run(nodes, node_type: str, **inputs):
    """Call a node's FUNCTION as ComfyUI's executor does: a fresh instance, keyword inputs, inference mode."""
    node = nodes.NODE_CLASS_MAPPINGS[node_type]()
    with torch.inference_mode():
        return getattr(node, node.FUNCTION)(**inputs)


def load(nodes, **changes):
    """The loader node's model, from its declared defaults with ``changes``."""
    return run(nodes, "FluxSRModelLoader", **loader_defaults(nodes, **changes))[0]


def loader_defaults(nodes, **changes) -> dict:
    """The loader's inputs at their declared defaults, on the CPU, with ``changes``."""
    required = nodes.NODE_CLASS_MAPPINGS["FluxSRModelLoader"].INPUT_TYPES()["required"]
    return {k: spec[1]["default"] for k, spec in required.items()} | {"device": "cpu"} | changes


@pytest.fixture(scope="module")
def pipe(nodes):
    return load(nodes)


def comfy_images(batch: int, h: int, w: int, seed: int = 0) -> torch.Tensor:
    """A ComfyUI IMAGE as LoadImage makes it: 8-bit RGB values / 255, float32 [B, H, W, 3]."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, (batch, h, w, 3), dtype=np.uint8)
    smooth = np.cumsum(pixels, axis=2) % 256  # some structure beside the noise
    return torch.from_numpy(smooth.astype(np.uint8).astype(np.float32) / 255.0)


def to_8bit(image: torch.Tensor) -> np.ndarray:
    """ComfyUI float pixels -> uint8, rounded as fluxsr writes 8-bit files."""
    return image.clamp(0, 1).mul(255).round().to(torch.uint8).numpy()


def upscale(nodes, pipe, image, **changes) -> torch.Tensor:
    """The upscale node's output, from its declared defaults with ``changes``."""
    required = nodes.NODE_CLASS_MAPPINGS["FluxSRUpscale"].INPUT_TYPES()["required"]
    widgets = {k: spec[1]["default"] for k, spec in required.items() if len(spec) > 1}
    return run(nodes, "FluxSRUpscale", fluxsr_model=pipe, image=image, **widgets | changes)[0]


# -- the folder as ComfyUI sees it ---------------------------------------------------------------------------------


def test_folder_exports_well_formed_nodes(nodes):
    assert (
        set(nodes.NODE_CLASS_MAPPINGS)
        == set(nodes.NODE_DISPLAY_NAME_MAPPINGS)
        == {
            "FluxSRModelLoader",
            "FluxSRUpscale",
        }
    )
    for cls in nodes.NODE_CLASS_MAPPINGS.values():
        inputs = cls.INPUT_TYPES()
        assert set(inputs) <= {"required", "optional", "hidden"}
        for spec in inputs["required"].values():
            assert isinstance(spec, tuple) and isinstance(spec[0], (str, list))
        assert callable(getattr(cls, cls.FUNCTION)) and isinstance(cls.RETURN_TYPES, tuple)
        assert cls.CATEGORY
    # outside ComfyUI there is no model folder to list: only the bundled model
    assert nodes.NODE_CLASS_MAPPINGS["FluxSRModelLoader"].INPUT_TYPES()["required"]["model"][0] == ["bundled"]


def test_folder_named_fluxsr_is_refused_with_a_hint():
    package = sys.modules["fluxsr"]
    try:
        with pytest.raises(ImportError, match="hides the fluxsr package: rename"):
            import_node_folder("fluxsr")
    finally:
        sys.modules["fluxsr"] = package


# -- the nodes on ComfyUI images -------------------------------------------------------------------------------------


def test_upscale_node_takes_and_returns_comfyui_images(nodes, pipe):
    images = comfy_images(2, 37, 23)
    out = upscale(nodes, pipe, images)
    assert out.shape == (2, 148, 92, 3) and out.dtype == torch.float32 and out.device.type == "cpu"
    assert 0 <= out.min() and out.max() <= 1
    assert not torch.equal(out[0], out[1])  # each image upscaled on its own, not one copied
    assert upscale(nodes, pipe, images, scale=2.0).shape == (2, 74, 46, 3)


@pytest.mark.parametrize(
    "settings",
    [{}, {"scale": 2.5, "tile": 48, "overlap": 8, "color_fix": "adain"}],
    ids=["defaults", "tiled-adain"],
)
def test_upscale_node_equals_the_cli(nodes, pipe, tmp_path, settings):
    images = comfy_images(2, 37, 23, seed=1)
    src = tmp_path / "in"
    src.mkdir()
    for i, image in enumerate(images):
        Image.fromarray(to_8bit(image)).save(src / f"img{i}.png")
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in settings.items()]
    assert main(["upscale", str(src), "-o", str(tmp_path / "out"), "--device", "cpu", "-q", *flags]) == 0
    out = upscale(nodes, pipe, images, **settings)
    for i in range(2):
        cli = np.asarray(Image.open(tmp_path / "out" / f"img{i}.png").convert("RGB"))
        assert cli.shape == out[i].shape
        assert np.array_equal(cli, to_8bit(out[i]))


def test_lora_from_the_model_folder_equals_the_cli(node_folder, pipe, tmp_path):
    """A FluxSR LoRA picked from models/fluxsr, at a strength: the same pixels as `fluxsr upscale --lora`."""
    base = load_model()
    config = add_lora(base.transformer, rank=2, alpha=2)
    for name, p in base.transformer.named_parameters():
        if "lora_B" in name:  # zero at init: make the LoRA change something
            torch.nn.init.normal_(p, std=0.05, generator=torch.Generator().manual_seed(0))
    lora = tmp_path / "models" / "fluxsr" / "loras" / "sharp.safetensors"
    lora.parent.mkdir(parents=True)
    save_lora(lora_state_dict(base.transformer), config, lora)
    mod = node_folder("fluxsr_nodes_lora", folder_paths=fake_folder_paths(tmp_path / "models"))
    images = comfy_images(1, 21, 17, seed=2)
    out = upscale(mod, load(mod, lora="loras/sharp.safetensors", lora_scale=0.7), images)

    Image.fromarray(to_8bit(images[0])).save(tmp_path / "img.png")
    flags = ["--lora", str(lora), "--lora-scale", "0.7", "--device", "cpu", "-q"]
    assert main(["upscale", str(tmp_path / "img.png"), "-o", str(tmp_path / "out"), *flags]) == 0
    cli = np.asarray(Image.open(tmp_path / "out" / "img.png").convert("RGB"))
    assert np.array_equal(cli, to_8bit(out[0]))
    assert not np.array_equal(cli, to_8bit(upscale(mod, pipe, images)[0]))  # the LoRA did change the output


def test_upscale_node_refuses_other_shapes_in_one_line(nodes, pipe):
    for bad in (torch.rand(1, 9, 9, 4), torch.rand(9, 9, 3), torch.rand(0, 9, 9, 3)):
        with pytest.raises(ValueError, match=r"expected a ComfyUI IMAGE, a tensor \[B, H, W, 3\]") as e:
            upscale(nodes, pipe, bad)
        assert "\n" not in str(e.value)


def test_loader_memory_cap_reaches_the_planner(nodes):
    for typo in ("12", "lots"):  # refused before anything loads
        with pytest.raises(ValueError, match="memory size|cannot read a memory size"):
            load(nodes, max_memory=typo)
    capped = load(nodes, max_memory="300MiB")
    assert capped.max_memory == 300 << 20
    out = upscale(nodes, capped, comfy_images(1, 37, 23))
    assert out.shape == (1, 148, 92, 3)
    assert capped.plan.source.startswith("max_memory")  # the cap, not the free memory, set the budget


# -- ComfyUI's modules, when they are there ----------------------------------------------------------------------------


def fake_folder_paths(models_dir: Path, known: dict | None = None) -> types.ModuleType:
    """A stand-in for ComfyUI's folder_paths with the calls the nodes make, behaving as ComfyUI's do."""
    fp = types.ModuleType("folder_paths")
    fp.models_dir = str(models_dir)
    fp.folder_names_and_paths = dict(known or {})

    def add_model_folder_path(folder_name, full_folder_path, is_default=False):
        if folder_name not in fp.folder_names_and_paths:
            fp.folder_names_and_paths[folder_name] = ([full_folder_path], set())
        elif full_folder_path not in fp.folder_names_and_paths[folder_name][0]:
            fp.folder_names_and_paths[folder_name][0].append(full_folder_path)

    fp.add_model_folder_path = add_model_folder_path
    fp.get_folder_paths = lambda folder_name: fp.folder_names_and_paths[folder_name][0][:]
    return fp


def test_registered_model_folder_is_listed_and_loaded(node_folder, tmp_path):
    models, extra = tmp_path / "models", tmp_path / "extra"  # extra: from an extra_model_paths.yaml
    fp = fake_folder_paths(models, {"fluxsr": ([str(extra)], set())})
    mod = node_folder("fluxsr_nodes_fp", folder_paths=fp)
    paths, extensions = fp.folder_names_and_paths["fluxsr"]
    assert paths == [str(extra), str(models / "fluxsr")] and ".safetensors" in extensions

    shutil.copytree(BUNDLED_MODEL, models / "fluxsr" / "photos" / "small")  # a fluxsr model folder, nested
    (models / "fluxsr" / "loras").mkdir()
    (models / "fluxsr" / "loras" / "style.safetensors").write_bytes(b"")
    (models / "fluxsr" / ".trash").mkdir()
    (models / "fluxsr" / ".trash" / "old.safetensors").write_bytes(b"")
    extra.mkdir()
    (extra / "flux1-dev.safetensors").write_bytes(b"")
    (extra / "readme.txt").write_text("not a model")
    for part in (
        "transformer",
        "vae",
    ):  # a diffusers FLUX.1-dev folder: listed as a folder, its files are not
        (extra / "FLUX.1-dev" / part).mkdir(parents=True)
        (extra / "FLUX.1-dev" / part / "config.json").write_text("{}")
        (extra / "FLUX.1-dev" / part / "diffusion_pytorch_model.safetensors").write_bytes(b"")

    required = mod.NODE_CLASS_MAPPINGS["FluxSRModelLoader"].INPUT_TYPES()["required"]
    assert required["model"][0] == [
        "bundled",
        "FLUX.1-dev",
        "photos/small",
        "flux1-dev.safetensors",
        "loras/style.safetensors",
    ]
    assert required["lora"][0] == ["none", "flux1-dev.safetensors", "loras/style.safetensors"]

    assert load(mod, model="photos/small").model.spec.name == "fluxsr-small"
    with pytest.raises(FileNotFoundError, match="'gone/model': neither under .* nor an existing path"):
        load(mod, model="gone/model")


class Interrupted(Exception):
    """Stands in for comfy.model_management.InterruptProcessingException."""


def fake_comfy(interrupt_at: int | None = None) -> dict:
    """Stand-ins for comfy, comfy.utils (a ProgressBar that records) and comfy.model_management (an interrupt
    check that raises on its ``interrupt_at``-th call)."""
    comfy, utils, mm = (types.ModuleType(n) for n in ("comfy", "comfy.utils", "comfy.model_management"))
    comfy.utils, comfy.model_management = utils, mm
    utils.bars = []

    class ProgressBar:
        def __init__(self, total):
            self.total, self.steps = total, []
            utils.bars.append(self)

        def update(self, value):
            self.steps.append(value)

    def throw_exception_if_processing_interrupted():
        mm.checks += 1
        if mm.checks == interrupt_at:
            raise Interrupted("interrupted")

    utils.ProgressBar = ProgressBar
    mm.checks = 0
    mm.throw_exception_if_processing_interrupted = throw_exception_if_processing_interrupted
    mm.device = torch.device("cpu")
    mm.get_torch_device = lambda: mm.device
    return {"comfy": comfy, "comfy_utils": utils, "comfy_model_management": mm}


@pytest.fixture
def started(pipe, monkeypatch) -> list:
    """The images the pipeline started on (one entry per upscale_tensor call)."""
    calls, real = [], pipe.upscale_tensor

    def counted(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(pipe, "upscale_tensor", counted)
    return calls


def test_progress_is_reported_per_image(node_folder, pipe, started):
    fakes = fake_comfy()
    mod = node_folder("fluxsr_nodes_progress", **fakes)
    out = upscale(mod, pipe, comfy_images(3, 21, 17))
    assert out.shape == (3, 84, 68, 3)
    (bar,) = fakes["comfy_utils"].bars
    assert bar.total == 3 and bar.steps == [1, 1, 1] and len(started) == 3
    assert fakes["comfy_model_management"].checks == 3
    assert mod.nodes.pick_device("auto") is fakes["comfy_model_management"].device  # ComfyUI's device


def test_interrupt_stops_the_batch(node_folder, pipe, started):
    fakes = fake_comfy(interrupt_at=2)
    mod = node_folder("fluxsr_nodes_interrupt", **fakes)
    with pytest.raises(Interrupted):
        upscale(mod, pipe, comfy_images(3, 21, 17))
    (bar,) = fakes["comfy_utils"].bars
    assert bar.steps == [1] and len(started) == 1  # the first image done, the second never started
    assert fakes["comfy_model_management"].checks == 2


# -- the example workflow ----------------------------------------------------------------------------------------------


def declared(nodes, node_type: str) -> dict:
    """Links in (name -> type), widgets (name -> spec, in order) and output types of a node type."""
    if node_type in CORE_NODES:
        core = CORE_NODES[node_type]
        return {"links": core["links"], "widgets": dict.fromkeys(core["widgets"]), "outputs": core["outputs"]}
    cls = nodes.NODE_CLASS_MAPPINGS[node_type]
    inputs = cls.INPUT_TYPES()["required"]

    def is_link(spec):
        return isinstance(spec[0], str) and spec[0] not in WIDGET_TYPES

    return {
        "links": {k: spec[0] for k, spec in inputs.items() if is_link(spec)},
        "widgets": {k: spec for k, spec in inputs.items() if not is_link(spec)},
        "outputs": list(cls.RETURN_TYPES),
    }


def valid_widget(spec, value) -> bool:
    if spec is None:  # a ComfyUI node's widget: its values are ComfyUI's to check
        return True
    kind, options = spec[0], spec[1] if len(spec) > 1 else {}
    if isinstance(kind, list):
        return value in kind
    if kind in ("INT", "FLOAT"):
        ok = isinstance(value, (int, float)) and (kind == "FLOAT" or float(value).is_integer())
        return ok and options.get("min", value) <= value <= options.get("max", value)
    return isinstance(value, {"STRING": str, "BOOLEAN": bool}[kind])


def test_example_workflow_uses_only_declared_nodes_and_inputs(nodes):
    workflow = json.loads(WORKFLOW.read_text())
    by_id = {n["id"]: n for n in workflow["nodes"]}
    assert {n["type"] for n in by_id.values()} == {
        "LoadImage",
        "FluxSRModelLoader",
        "FluxSRUpscale",
        "SaveImage",
    }
    for node in by_id.values():
        spec = declared(nodes, node["type"])
        assert {i["name"]: i["type"] for i in node["inputs"]} == spec["links"], node["type"]
        assert all(i["link"] is not None for i in node["inputs"])  # every input connected
        assert [o["type"] for o in node["outputs"]] == spec["outputs"], node["type"]
        values = node["widgets_values"]
        assert len(values) == len(spec["widgets"]), node["type"]
        for (name, widget), value in zip(spec["widgets"].items(), values, strict=True):
            assert valid_widget(widget, value), f"{node['type']}.{name} = {value!r}"
    for link_id, src, src_slot, dst, dst_slot, kind in workflow["links"]:
        assert (
            by_id[src]["outputs"][src_slot]["type"] == kind
            and link_id in by_id[src]["outputs"][src_slot]["links"]
        )
        assert (
            by_id[dst]["inputs"][dst_slot]["type"] == kind
            and by_id[dst]["inputs"][dst_slot]["link"] == link_id
        )


def test_example_workflow_values_run(nodes):
    """The workflow's widget values, given to the nodes as ComfyUI would, upscale an image."""
    workflow = json.loads(WORKFLOW.read_text())
    kwargs = {
        n["type"]: dict(zip(declared(nodes, n["type"])["widgets"], n["widgets_values"], strict=True))
        for n in workflow["nodes"]
    }
    (pipe,) = run(nodes, "FluxSRModelLoader", **kwargs["FluxSRModelLoader"])
    (out,) = run(
        nodes, "FluxSRUpscale", fluxsr_model=pipe, image=comfy_images(1, 20, 12), **kwargs["FluxSRUpscale"]
    )
    assert out.shape == (1, 80, 48, 3)


def test_registry_metadata_sits_beside_the_project_metadata():
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert {"PublisherId", "DisplayName", "Icon"} <= set(meta["tool"]["comfy"])
    assert meta["project"]["name"] == "fluxsr" and meta["project"]["scripts"] == {"fluxsr": "fluxsr.cli:main"}


def test_loader_offload_and_quantize_widgets(nodes, pipe):
    """The loader's offload widget attaches the hooks (same pixels); quantize refuses fp8 on the CPU in one line."""
    images = comfy_images(1, 21, 17, seed=3)
    offloaded = load(nodes, offload="blocks")
    assert offloaded.placement.offload == "blocks" and pipe.placement.offload == "none"
    assert torch.equal(upscale(nodes, offloaded, images), upscale(nodes, pipe, images))
    with pytest.raises(ValueError, match="--quantize fp8 needs a CUDA GPU"):
        load(nodes, quantize="fp8")
