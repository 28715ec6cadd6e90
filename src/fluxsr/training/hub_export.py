"""``fluxsr export``: a Hub-ready folder from a fluxsr model folder or a ``fluxsr train`` run (docs/sharing.md).

The folder holds the files fluxsr loads (the same patterns :mod:`fluxsr.io.hub` downloads: ``fluxsr.json``,
``transformer/`` and ``vae/`` configs and safetensors, ``prompt_embeds.safetensors``, ``lora.safetensors``), copied
byte for byte, never re-serialised; a model card ``README.md`` (:mod:`fluxsr.training.hub_card`); the run's
``recipe.yaml`` when there is one; ``results.json`` when measured results are given; and ``SHA256SUMS``, which
``sha256sum -c SHA256SUMS`` checks. A run's checkpoint (``--checkpoint``) first becomes a model folder the way
``fluxsr train`` writes ``final/`` at its last step, in a temporary folder beside the output.

The source is only read. A non-empty output is refused unless ``overwrite``; then the files an earlier export
listed in its ``SHA256SUMS`` are replaced and anything else there (a clone's ``.git``, say) is left alone.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from huggingface_hub.utils import filter_repo_objects

from ..io.cache import atomic_write_bytes, read_json, read_safetensors, sha256_file
from ..io.guards import check_inputs_apart
from ..io.hub import MODEL_FOLDER_FILES, SPEC_FILE, RepoRef, parse_repo_ref
from ..model.folders import is_model_folder
from ..model.model import ModelSpec
from ..model.presets import FLUX_DEV_TRANSFORMER
from .checkpoints import finished_checkpoints, load_trainable
from .hub_card import FLUX_DEV_REPO, CardFacts, render_card, results_rows
from .loop import crop_t_l
from .recipe import Recipe, load_recipe
from .student import build_student, export

SUMS_FILE = "SHA256SUMS"
CARD_FILE = "README.md"
RECIPE_FILE = "recipe.yaml"
RESULTS_FILE = "results.json"
FLUX_DEV_SHAPE = ("num_layers", "num_single_layers", "num_attention_heads", "attention_head_dim")
"""The transformer config fields that tell a FLUX.1-dev-sized transformer (and so FLUX.1-dev weights)."""


@dataclass(frozen=True)
class ExportSource:
    """What to export: a model folder, or a run's checkpoint to turn into one; the run's recipe if known."""

    model: Path | None
    checkpoint: Path | None = None
    run: Path | None = None

    @property
    def recipe(self) -> Path | None:
        return self.run / RECIPE_FILE if self.run is not None else None

    def describe(self) -> str:
        if self.checkpoint is not None:
            return f"Exported by `fluxsr export` from checkpoint `{self.checkpoint.name}` of a `fluxsr train` run."
        if self.run is not None:
            return "Exported by `fluxsr export` from the final model of a `fluxsr train` run."
        return "Exported by `fluxsr export` from a fluxsr model folder."


def is_run_folder(path: Path) -> bool:
    """A ``fluxsr train`` output folder: its recipe with a final model or checkpoints."""
    return (path / RECIPE_FILE).is_file() and ((path / "final").is_dir() or (path / "checkpoints").is_dir())


def checkpoint_folder(run: Path, name: str) -> Path:
    """The finished checkpoint ``name`` (``step_0000100``, ``100`` or a path) of ``run``."""
    folder = run / "checkpoints"
    candidates = [folder / name, *([folder / f"step_{int(name):07d}"] if name.isdigit() else []), Path(name)]
    for candidate in candidates:
        if (candidate / "state.json").is_file():
            return candidate
    there = ", ".join(p.name for p in finished_checkpoints(folder)) or "none"
    raise FileNotFoundError(
        f"--checkpoint {name}: no finished checkpoint of that name in {folder} (there: {there})"
    )


def find_source(src: Path, checkpoint: str | None = None) -> ExportSource:
    """What ``src`` is: a model folder (a run's ``final/`` brings its run's recipe) or a run folder (its
    ``final/``, or its checkpoint ``checkpoint``)."""
    src = Path(src).expanduser()
    if is_model_folder(src):
        if checkpoint is not None:
            raise ValueError(f"--checkpoint applies to a training run folder; {src} is a model folder")
        run = src.parent if src.name == "final" and is_run_folder(src.parent) else None
        return ExportSource(src, run=run)
    if not is_run_folder(src):
        raise FileNotFoundError(
            f"{src} is neither a fluxsr model folder (no {SPEC_FILE}) nor a `fluxsr train` run folder "
            f"({RECIPE_FILE} with final/ or checkpoints/)"
        )
    if checkpoint is not None:
        return ExportSource(None, checkpoint_folder(src, checkpoint), src)
    if not is_model_folder(src / "final"):
        raise FileNotFoundError(
            f"{src}: the run has no final model (final/{SPEC_FILE}); name one --checkpoint"
        )
    return ExportSource(src / "final", run=src)


def materialise_checkpoint(checkpoint: Path, recipe: Recipe, out: Path) -> Path:
    """The model folder ``fluxsr train`` would have written as ``final/`` had it stopped at ``checkpoint``: the
    recipe's base with the checkpoint's trainable weights, exported as the recipe's ``export`` section says."""
    dtype = (
        torch.bfloat16 if recipe.train.mixed_precision == "bf16" else torch.float32
    )  # a LoRA's base's dtype
    model, lora = build_student(recipe, "cpu", dtype)
    weights, _ = read_safetensors(checkpoint / "trainable.safetensors")
    load_trainable(model.transformer, weights, lora, checkpoint)
    side = recipe.pairs.resolution  # the pairs' size, as gen-pairs makes them
    t_l = crop_t_l(recipe, model.spec.t_l, (side, side), model.vae_scale)
    return export(model, model.transformer, recipe, lora, out, t_l=t_l)


def model_files(folder: Path) -> list[str]:
    """The files of model folder ``folder`` that fluxsr loads, relative and "/"-separated, sorted."""
    names = [p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()]
    return sorted(filter_repo_objects(names, allow_patterns=list(MODEL_FOLDER_FILES)))


def transformer_config(folder: Path, base: str) -> dict | None:
    """The transformer config of model folder ``folder``, or of the local base a LoRA-only folder names (a path,
    absolute or relative to ``folder``); None when there is none to read (a single file, a Hub id)."""
    for candidate in (folder, folder / Path(base).expanduser() if base else None):
        if candidate is not None and (candidate / "transformer" / "config.json").is_file():
            return read_json(candidate / "transformer" / "config.json", expected="a JSON object")
    return None


def is_flux_dev_derived(folder: Path, base: str) -> bool:
    """Whether the model holds or adapts FLUX.1-dev weights: its transformer (or its base's) is FLUX.1-dev-sized,
    or it is a LoRA on base weights that cannot be read here (fluxsr writes LoRA-only folders for FLUX.1-dev)."""
    config = transformer_config(folder, base)
    return config is None or all(config.get(k) == FLUX_DEV_TRANSFORMER[k] for k in FLUX_DEV_SHAPE)


def hub_base(spec: dict, base: str | None) -> str | None:
    """The ``base`` an exported LoRA-only folder names: ``base`` if given, else the spec's own when it is a Hub
    repo id; a local path would point nowhere on another machine, so it is refused."""
    if not spec.get("base"):
        if base is not None:
            raise ValueError("--base applies to a LoRA-only model folder; this one holds its transformer")
        return None
    chosen = base or spec["base"]
    if parse_repo_ref(chosen) is None or Path(chosen).is_absolute():
        raise ValueError(
            f"the model is a LoRA on base weights at {chosen!r}, a path users of the Hub do not have: give "
            f"--base REPO_ID of those weights on the Hub (e.g. {FLUX_DEV_REPO})"
        )
    return chosen


def read_results(path: Path) -> dict:
    """A ``fluxsr eval --json`` report or a ``benchmark.json``, checked; ValueError naming ``path`` otherwise."""
    doc = read_json(Path(path), expected="a fluxsr eval/benchmark JSON report")
    try:
        if not isinstance(doc, dict):
            raise ValueError("not a JSON object")
        results_rows(doc)
    except ValueError as e:
        raise ValueError(f"--results {path}: {e}") from None
    return doc


def sums_text(out: Path, names: list[str]) -> str:
    """``SHA256SUMS`` lines (``<hex>  <path>``, as ``sha256sum`` writes and ``sha256sum -c`` reads)."""
    return "".join(f"{sha256_file(out / name)}  {name}\n" for name in sorted(names))


def listed_files(out: Path) -> list[Path]:
    """The files an earlier export listed in ``out/SHA256SUMS`` (only paths inside ``out``), and that file."""
    sums = out / SUMS_FILE
    if not sums.is_file():
        return []
    names = [line.split("  ", 1)[1] for line in sums.read_text().splitlines() if "  " in line]
    inside = [out / n for n in names if not Path(n).is_absolute() and ".." not in Path(n).parts]
    return [*inside, sums]


def check_output(out: Path, src: Path, overwrite: bool) -> None:
    """Refuse an output on, inside or around the source, a file, or a non-empty folder without ``overwrite``."""
    check_inputs_apart([("SRC", src)], [(out, "export writes into")], "choose another output folder")
    check_inputs_apart([("OUT", out)], [(src, "export only reads")], "choose an output outside the source")
    if out.exists() and not out.is_dir():
        raise ValueError(f"{out}: is a file; give a folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise ValueError(f"{out} is not empty: choose an empty folder, or --overwrite to replace an export")


def copy_model(folder: Path, out: Path, spec: dict) -> list[tuple[str, int]]:
    """Copy the model's files into ``out`` byte for byte, ``fluxsr.json`` as ``spec``; (name, bytes) of each."""
    files = []
    for name in model_files(folder):
        target = out / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if name == SPEC_FILE:
            atomic_write_bytes(target, (json.dumps(spec, indent=2) + "\n").encode())
        else:
            shutil.copyfile(folder / name, target)
        files.append((name, target.stat().st_size))
    return files


def write_export(source: ExportSource, folder: Path, out: Path, facts: CardFacts) -> Path:
    """Write model files, recipe, results, card and sums of ``folder`` (a model folder) into ``out``."""
    facts.files = copy_model(folder, out, facts.spec)
    names = [name for name, _ in facts.files]
    if source.recipe is not None and source.recipe.is_file():
        facts.recipe = source.recipe.read_text()
        atomic_write_bytes(out / RECIPE_FILE, facts.recipe.encode())
        names.append(RECIPE_FILE)
    if facts.results is not None:
        atomic_write_bytes(out / RESULTS_FILE, (json.dumps(facts.results, indent=2) + "\n").encode())
        names.append(RESULTS_FILE)
    atomic_write_bytes(out / CARD_FILE, render_card(facts).encode())
    names.append(CARD_FILE)
    atomic_write_bytes(out / SUMS_FILE, sums_text(out, names).encode())
    return out


def card_facts(folder: Path, source: ExportSource, repo_id: str | None, base: str | None) -> CardFacts:
    """What the card of model folder ``folder`` says, its exported ``fluxsr.json`` included."""
    spec = asdict(ModelSpec.read(folder))
    derived = is_flux_dev_derived(folder, spec["base"])
    spec_base = hub_base(spec, base)
    if spec_base is not None:  # a Hub id of diffusers weights: no single-file autoencoder path to keep
        spec["base"], spec["ae"] = spec_base, ""
    return CardFacts(
        spec=spec,
        repo_id=repo_id or f"YOUR_NAME/{spec['name'] or 'fluxsr-model'}",
        derived=derived,
        lora_only=spec_base is not None,
        base_model=spec_base or (FLUX_DEV_REPO if derived else None),
        source=source.describe(),
    )


def export_for_hub(
    src: Path,
    out: Path,
    *,
    checkpoint: str | None = None,
    results: Path | None = None,
    base: str | None = None,
    repo_id: str | None = None,
    overwrite: bool = False,
) -> Path:
    """Write the Hub-ready folder ``out`` for ``src`` (a model folder or a run, see :func:`find_source`).

    results: a ``fluxsr eval --json`` report or ``benchmark.json`` for the card. base: the Hub repo id of a
    LoRA-only model's base weights. repo_id: where the folder will be uploaded (the card's usage lines).
    Every check runs before ``out`` is touched; returns ``out``."""
    if repo_id is not None and parse_repo_ref(repo_id) != RepoRef(repo_id):
        raise ValueError(f"--repo-id {repo_id!r}: not a Hugging Face repo id (org/name)")
    src, out = Path(src).expanduser(), Path(out).expanduser()
    source = find_source(src, checkpoint)
    doc = read_results(results) if results is not None else None
    check_output(out, src, overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = (  # made only for a checkpoint: its model folder, beside the output
        tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.name}.export-")
        if source.model is None
        else nullcontext()
    )
    with staging as tmp:
        folder = source.model
        if folder is None:
            folder = materialise_checkpoint(
                source.checkpoint, load_recipe(source.recipe), Path(tmp) / "model"
            )
        facts = card_facts(folder, source, repo_id, base)
        facts.results = doc
        for path in listed_files(out):  # an earlier export's files (only with --overwrite: checked above)
            path.unlink(missing_ok=True)
        out.mkdir(exist_ok=True)
        return write_export(source, folder, out, facts)
