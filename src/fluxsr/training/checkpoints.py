"""Training checkpoints (safetensors + JSON, no pickles) and ``--resume``.

A checkpoint ``RUN/checkpoints/step_NNNNNNN/`` holds the trainable weights, the AdamW state, the LR-schedule
position, the torch RNG state, the step and the recipe. ``--resume`` (:data:`ResumeFrom`) continues from the latest
one (``latest``: a damaged one is refused in one line naming its file) or from the newest intact one (``intact``).
A checkpoint is checked without decoding a tensor (safetensors headers against file sizes, ``state.json``'s fields)
and its ``state.json`` is read once: :class:`Checkpoint` carries it to the recipe check and to the load.
"""

from __future__ import annotations

import json
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from peft import get_peft_model_state_dict, set_peft_model_state_dict
from torch import Tensor

from ..io.cache import (
    DamagedFileError,
    atomic_save_safetensors,
    atomic_write_bytes,
    read_json,
    read_safetensors,
    safetensors_header,
)
from ..io.config import to_dict
from ..model.lora import lora_state_dict
from .recipe import Recipe

ResumeFrom = Literal["latest", "intact"]
"""``--resume`` (``latest``: the latest checkpoint, refused when damaged) and ``--resume intact``."""


def trainable_state(transformer, lora: bool) -> dict[str, Tensor]:
    """The tensors a checkpoint keeps: the LoRA's, or every transformer weight (full fine-tuning)."""
    if lora:
        return lora_state_dict(transformer)
    return {k: v.detach().cpu() for k, v in transformer.state_dict().items()}


def load_trainable(
    transformer, state: dict[str, Tensor], lora: bool, source: Path | str = "checkpoint"
) -> None:
    """Load trainable weights; a full state must match exactly (strict), and so must a LoRA state, which peft would
    otherwise load leniently (a LoRA made before fluxsr adapted the attention projections has fewer tensors)."""
    if lora:
        expected = get_peft_model_state_dict(transformer, adapter_name="fluxsr").keys()
        if state.keys() != expected:
            missing, extra = sorted(expected - state.keys()), sorted(state.keys() - expected)
            raise ValueError(
                f"{source}: the checkpoint's LoRA tensors do not match this run ({len(missing)} missing, "
                f"e.g. {(missing or extra)[0]}; {len(extra)} unexpected): a LoRA run from before fluxsr "
                "adapted the attention projections cannot continue; start a new run"
            )
        set_peft_model_state_dict(transformer, state, adapter_name="fluxsr")
    else:
        transformer.load_state_dict(state, strict=True)


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
    folder: Path, step: int, transformer, optimizer, scheduler, lora: bool, recipe: Recipe | None = None
) -> Path:
    """Write ``folder/step_NNNNNN`` atomically (a temporary folder renamed when complete).

    ``state.json`` also keeps the recipe, so ``--resume`` can refuse a changed one (:func:`resume_conflicts`)."""
    final = folder / f"step_{step:07d}"
    tmp = folder / f".tmp_step_{step:07d}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    atomic_save_safetensors(trainable_state(transformer, lora), tmp / "trainable.safetensors")
    tensors, meta = optimizer_to_tensors(optimizer.state_dict())
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


def load_checkpoint(ckpt: Checkpoint, transformer, optimizer, scheduler, lora: bool) -> int:
    """Restore weights, optimiser, schedule and RNG from a checkpoint; returns its step. A file that does not read
    or load is a DamagedFileError naming it."""
    path = ckpt.path
    weights, _ = read_safetensors(path / "trainable.safetensors")
    load_trainable(transformer, weights, lora, path)
    opt, _ = read_safetensors(path / "optimizer.safetensors")
    rng, _ = read_safetensors(path / "rng.safetensors", CHECKPOINT_TENSORS["rng.safetensors"])
    try:
        optimizer.load_state_dict(optimizer_from_tensors(opt, ckpt.state["optimizer"]))
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
