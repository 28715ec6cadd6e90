"""Training checkpoints (safetensors + JSON, no pickles) and ``--resume``.

A checkpoint ``RUN/checkpoints/step_NNNNNNN/`` holds the trainable weights, the AdamW state, the LR-schedule
position, the torch RNG state, the step and the recipe. ``--resume`` (:data:`ResumeFrom`) continues from the latest
one (``latest``: a damaged one is refused in one line naming its file) or from the newest intact one (``intact``).
A checkpoint is checked without decoding a tensor (safetensors headers against file sizes, ``state.json``'s fields)
and its ``state.json`` is read once: :class:`Checkpoint` carries it to the recipe check and to the load.

One format for every run: single-process, DDP and FSDP (whose parameters and AdamW moments are sharded) checkpoints
hold the same full tensors under the same names. torch's distributed state-dict API
(``torch.distributed.checkpoint.state_dict``) gathers them onto the main process when saving and gives each process
its shard when loading; it is a collective under FSDP, so every process saves and loads, and the main one writes.
"""

from __future__ import annotations

import json
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from accelerate.utils import extract_model_from_parallel
from peft import get_peft_model_state_dict
from torch import Tensor, nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)

from ..io.cache import (
    DamagedFileError,
    atomic_save_safetensors,
    atomic_write_bytes,
    read_json,
    read_safetensors,
    safetensors_header,
)
from ..io.config import to_dict
from .recipe import Recipe

ResumeFrom = Literal["latest", "intact"]
"""``--resume`` (``latest``: the latest checkpoint, refused when damaged) and ``--resume intact``."""


def trainable_state(net: nn.Module, lora: bool) -> dict[str, Tensor]:
    """The tensors a checkpoint keeps, in full on the main process's CPU: the LoRA's (peft's names), or every
    transformer weight (full fine-tuning). ``net``: the transformer, bare or as accelerate prepared it (DDP, FSDP).
    Under FSDP this gathers the shards, so every process calls it; the others get ``{}``."""
    options = StateDictOptions(full_state_dict=True, cpu_offload=True, ignore_frozen_params=lora)
    state = get_model_state_dict(net, options=options)
    if lora and state:
        state = get_peft_model_state_dict(
            extract_model_from_parallel(net), state_dict=state, adapter_name="fluxsr"
        )
    return state


def trainable_names(transformer: nn.Module, lora: bool) -> dict[str, str]:
    """The name of each tensor a checkpoint stores (peft's for a LoRA) -> the transformer's own state-dict name."""
    own = transformer.state_dict()
    if not lora:
        return {k: k for k in own}
    peft = get_peft_model_state_dict(transformer, state_dict=own, adapter_name="fluxsr")
    name_of = {id(v): k for k, v in own.items()}
    return {k: name_of[id(v)] for k, v in peft.items()}


def load_trainable(
    net: nn.Module, state: dict[str, Tensor], lora: bool, source: Path | str = "checkpoint"
) -> None:
    """Load full trainable weights into ``net`` (bare, DDP or FSDP: each process keeps its shard). The tensors
    must be exactly the run's: a LoRA made before fluxsr adapted the attention projections has fewer."""
    names = trainable_names(extract_model_from_parallel(net), lora)
    if state.keys() != names.keys():
        missing, extra = sorted(names.keys() - state.keys()), sorted(state.keys() - names.keys())
        hint = (
            "a LoRA run from before fluxsr adapted the attention projections cannot continue; start a new run"
        )
        raise ValueError(
            f"{source}: the checkpoint's {'LoRA ' if lora else ''}tensors do not match this run ({len(missing)} "
            f"missing, e.g. {(missing or extra)[0]}; {len(extra)} unexpected)" + (f": {hint}" if lora else "")
        )
    state = {names[k]: v for k, v in state.items()}
    set_model_state_dict(net, state, options=StateDictOptions(full_state_dict=True))


def param_names(net: nn.Module, optimizer: torch.optim.Optimizer) -> list[str]:
    """The state-dict name of each parameter the optimiser updates, in torch's numbering (param-group order)."""
    name_of = {p: n for n, p in extract_model_from_parallel(net).named_parameters()}
    return [name_of[p] for group in optimizer.param_groups for p in group["params"]]


def numbered(named: dict) -> dict:
    """An optimiser state dict keyed by parameter name (the distributed API's) in torch's numbered layout."""
    number = {n: i for i, n in enumerate(n for group in named["param_groups"] for n in group["params"])}
    groups = [{**g, "params": [number[n] for n in g["params"]]} for g in named["param_groups"]]
    return {"state": {number[n]: st for n, st in named["state"].items()}, "param_groups": groups}


def by_name(state: dict, names: list[str]) -> dict:
    """The numbered optimiser state dict ``state`` keyed by the parameter ``names`` (:func:`param_names`)."""
    groups = [{**g, "params": [names[i] for i in g["params"]]} for g in state["param_groups"]]
    return {"state": {names[i]: st for i, st in state["state"].items()}, "param_groups": groups}


def optimizer_state(net: nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """The optimiser's ``state_dict`` (torch's numbered layout), in full on the main process's CPU; a collective
    under FSDP (the other processes get ``{}``)."""
    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    named = get_optimizer_state_dict(net, optimizer, options=options)
    return numbered(named) if named else {}


def optimizer_to_tensors(opt_state: dict) -> tuple[dict[str, Tensor], dict]:
    """Split an optimizer ``state_dict`` into tensors (safetensors) and the JSON-able rest."""
    tensors, scalars = {}, {}
    for pid, st in opt_state["state"].items():
        for key, val in st.items():
            if isinstance(val, Tensor):
                tensors[f"{pid}.{key}"] = val.detach().cpu().contiguous()
            else:
                scalars[f"{pid}.{key}"] = val
    return tensors, {"param_groups": opt_state["param_groups"], "scalars": scalars}


def optimizer_from_tensors(tensors: dict[str, Tensor], meta: dict) -> dict:
    """The optimizer ``state_dict`` that :func:`optimizer_to_tensors` split."""
    state: dict[int, dict] = {}
    for name, val in list(tensors.items()) + list(meta["scalars"].items()):
        pid, key = name.split(".", 1)
        state.setdefault(int(pid), {})[key] = val
    return {"state": state, "param_groups": meta["param_groups"]}


def save_checkpoint(
    folder: Path,
    step: int,
    net: nn.Module,
    optimizer,
    scheduler,
    lora: bool,
    recipe: Recipe | None = None,
    *,
    write: bool = True,
) -> Path:
    """Write ``folder/step_NNNNNN`` atomically (a temporary folder renamed when complete). Every process calls it
    (under FSDP the state is gathered from all); only the one with ``write`` (the main process) writes.

    ``state.json`` also keeps the recipe, so ``--resume`` can refuse a changed one (:func:`resume_conflicts`)."""
    weights, opt_state = trainable_state(net, lora), optimizer_state(net, optimizer)
    final = folder / f"step_{step:07d}"
    if not write:
        return final
    tmp = folder / f".tmp_step_{step:07d}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    atomic_save_safetensors(weights, tmp / "trainable.safetensors")
    tensors, meta = optimizer_to_tensors(opt_state)
    atomic_save_safetensors(tensors, tmp / "optimizer.safetensors")
    atomic_save_safetensors({"torch_rng": torch.get_rng_state()}, tmp / "rng.safetensors")
    state = {"step": step, "optimizer": meta, "scheduler": scheduler.state_dict()}
    if recipe is not None:
        state["recipe"] = to_dict(recipe)
    atomic_write_bytes(tmp / "state.json", json.dumps(state, default=float).encode())
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    return final


CHECKPOINT_TENSORS = {
    "trainable.safetensors": (),
    "optimizer.safetensors": (),
    "rng.safetensors": ("torch_rng",),
}


def finished_checkpoints(folder: Path) -> list[Path]:
    """The checkpoint folders in ``folder`` that were completed (have ``state.json``), oldest first."""
    return sorted(p for p in Path(folder).glob("step_*") if (p / "state.json").is_file())


def state_problem(state) -> str | None:
    """What is wrong with the fields of a checkpoint's ``state.json`` (as :func:`save_checkpoint` writes them)."""
    if not isinstance(state, dict):
        return f"a JSON {type(state).__name__}, expected an object"
    step, opt = state.get("step"), state.get("optimizer")
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        return f"'step' is {step!r}, expected a whole number >= 0"
    if not (isinstance(opt, dict) and isinstance(opt.get("param_groups"), list)):
        return "'optimizer' lacks its 'param_groups' list"
    if not isinstance(opt.get("scalars"), dict):
        return "'optimizer' lacks its 'scalars' mapping"
    if not isinstance(state.get("scheduler"), dict):
        return "'scheduler' is not a mapping"
    if not isinstance(state.get("recipe", {}), dict):
        return "'recipe' is not a mapping"
    return None


@dataclass(frozen=True)
class Checkpoint:
    """A finished checkpoint folder whose files were checked, and its ``state.json`` (read once)."""

    path: Path
    state: dict

    @property
    def step(self) -> int:
        return int(self.state["step"])


def read_checkpoint_state(path: Path) -> dict:
    """A checkpoint's ``state.json``, its fields checked; :class:`DamagedFileError` naming the file otherwise."""
    file = Path(path) / "state.json"
    state = read_json(file)
    problem = state_problem(state)
    if problem:
        raise DamagedFileError(f"{file}: damaged, {problem}")
    return state


def open_checkpoint(path: Path) -> Checkpoint:
    """Checkpoint folder ``path`` with its ``state.json``; DamagedFileError (or FileNotFoundError) naming the file
    that is missing or damaged. Decodes no tensor: each safetensors header is checked against its file's size."""
    state = read_checkpoint_state(path)
    for name, keys in CHECKPOINT_TENSORS.items():
        safetensors_header(path / name, keys)
    return Checkpoint(Path(path), state)


def damaged_hint(folder: Path, latest: Path, intact: Checkpoint | None) -> str:
    """What to do about a damaged latest checkpoint: resume from the newest intact one, or start anew."""
    if intact is None:
        return f"no earlier checkpoint in {folder} is intact: train into a new --out"
    return f"`--resume intact` resumes from {intact.path.name}, the newest intact checkpoint (or delete {latest})"


def resume_checkpoint(folder: Path, resume: ResumeFrom = "latest") -> Checkpoint:
    """The checkpoint ``--resume`` continues from: the latest one in ``folder``. A damaged latest one is a
    DamagedFileError naming its file and the intact one to fall back to, or with ``resume="intact"`` a warning,
    and the newest intact checkpoint is used."""
    done = finished_checkpoints(folder)
    if not done:
        raise FileNotFoundError(f"--resume: no checkpoint in {folder}")
    problems: dict[Path, str] = {}  # the damaged ones, newest first
    intact = None
    for path in reversed(done):
        try:
            intact = open_checkpoint(path)
            break
        except (DamagedFileError, FileNotFoundError) as e:
            problems[path] = str(e)
    if not problems:
        return intact
    latest, problem = next(iter(problems.items()))
    if resume != "intact":
        hint = damaged_hint(folder, latest, intact)
        raise DamagedFileError(f"--resume: the latest checkpoint is damaged: {problem}; {hint}")
    for problem in problems.values():
        print(f"warning: --resume intact: skipping a damaged checkpoint: {problem}", file=sys.stderr)
    if intact is None:
        raise DamagedFileError(
            f"--resume intact: no checkpoint in {folder} is intact: train into a new --out"
        )
    return intact


def load_checkpoint(ckpt: Checkpoint, net: nn.Module, optimizer, scheduler, lora: bool) -> int:
    """Restore weights, optimiser, schedule and RNG from a checkpoint into ``net`` (bare, DDP or FSDP; every process
    calls it) and its optimiser; returns its step. A file that does not read or load is a DamagedFileError naming
    it."""
    path = ckpt.path
    weights, _ = read_safetensors(path / "trainable.safetensors")
    load_trainable(net, weights, lora, path)
    opt, _ = read_safetensors(path / "optimizer.safetensors")
    rng, _ = read_safetensors(path / "rng.safetensors", CHECKPOINT_TENSORS["rng.safetensors"])
    try:
        named = by_name(optimizer_from_tensors(opt, ckpt.state["optimizer"]), param_names(net, optimizer))
        set_optimizer_state_dict(net, optimizer, named, options=StateDictOptions(full_state_dict=True))
        scheduler.load_state_dict(ckpt.state["scheduler"])
        torch.set_rng_state(rng["torch_rng"])
    except (ValueError, KeyError, TypeError, IndexError, RuntimeError) as e:
        raise DamagedFileError(
            f"{path}: damaged checkpoint, its optimizer/schedule/RNG state does not load "
            f"({' '.join(str(e).split())[:200]}); delete {path} to resume from the checkpoint before it"
        ) from None
    return ckpt.step


# Recipe fields a resumed run may change: they do not alter what the checkpoint's weights, optimiser state and
# schedule mean (train.steps may only grow past the checkpoint's step; that is checked separately). The pairs,
# pretrain and export sections do not affect training either, except pairs.text_len (the prompt embedding length).
RESUME_FREE = (
    "train.steps",
    "train.time_limit",
    "train.log_every",
    "train.validate_every",
    "train.checkpoint_every",
    "train.keep_checkpoints",
    "train.validation_images",
    "train.gradient_checkpointing",
    "train.vae_checkpointing",
    "train.grad_norm_every",
)
RESUME_FREE_SECTIONS = ("pairs.", "pretrain.", "export.")
RESUME_FIXED = ("pairs.text_len",)


def flatten(d: dict, prefix: str = "") -> dict:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``."""
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def resume_conflicts(saved: dict, recipe: Recipe) -> list[str]:
    """``field: old -> new`` for each recipe field that differs from the checkpoint's and may not change on resume.
    A field the saved recipe lacks (added to fluxsr after the checkpoint was written) counts as its default."""
    defaults = flatten(json.loads(json.dumps(to_dict(Recipe()), default=float)))
    old = defaults | flatten(json.loads(json.dumps(saved, default=float)))
    new = flatten(json.loads(json.dumps(to_dict(recipe), default=float)))
    out = []
    for key in sorted(set(old) | set(new)):
        if key in RESUME_FREE or (key.startswith(RESUME_FREE_SECTIONS) and key not in RESUME_FIXED):
            continue
        if old.get(key) != new.get(key):
            out.append(f"{key}: {old.get(key)!r} -> {new.get(key)!r}")
    return out


def check_resume(ckpt: Checkpoint, recipe: Recipe, steps: int) -> int:
    """Raise ValueError when ``recipe`` changed a field the checkpoint depends on, or ``steps`` (the run's last
    step) lies below its step; returns the checkpoint's step. Checkpoints written before recipes were stored in
    them are accepted unchecked."""
    found, step = ckpt.path, ckpt.step
    if "recipe" in ckpt.state:
        changed = resume_conflicts(ckpt.state["recipe"], recipe)
        if changed:
            raise ValueError(
                f"--resume: the recipe differs from the one {found} was trained with ("
                f"{'; '.join(changed)}); restore these fields or train into a new --out"
            )
    if steps < step:
        raise ValueError(
            f"--resume: {found} is at step {step}, beyond the {steps} steps asked for "
            "(train.steps / --max-steps); ask for more steps or use the checkpoint as it is"
        )
    return step


def prune_checkpoints(folder: Path, keep: int) -> None:
    """Delete all but the ``keep`` newest finished checkpoints (``keep`` 0 keeps every one)."""
    done = finished_checkpoints(folder)
    for old in done[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
