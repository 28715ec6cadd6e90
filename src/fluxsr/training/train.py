"""FluxSR training (``fluxsr train``): FTD + MSE + TV-LPIPS + ADL on offline pairs, with accelerate.

Per micro-batch (docs/method.md, sections 3-6)::

    x0, eps, z0      <- pairs (same random crop, aligned to the latent grid)
    xL_up            <- Real-ESRGAN degradation of x0, resized back to x0's size   (on the device, seeded)
    zL               <- E(xL_up)                                                     (frozen VAE, no grad)
    SR branch:  zH = zL - T_L * v(zL, T_L);  xH = D(zH)  -> MSE(xH, x0) + TV-LPIPS(xH, x0) + ADL(hooked blocks)
    FTD branch: t ~ U[T_L, 1];  z_t = path(zL, eps, t);  L_FTD(v(z_t, t))

All randomness (data order, crops, degradation, FTD times) is derived from (seed, micro-batch index, rank), so a
resumed run sees exactly the data and noise an uninterrupted one would. Checkpoints are safetensors + JSON (no
pickles): trainable weights, AdamW state, LR-schedule position, torch RNG state and the step. ``--resume`` checks the
latest one (safetensors headers against file sizes, ``state.json``'s fields) and refuses a damaged one in one line
naming the file; ``--resume intact`` falls back to the newest intact checkpoint.
"""

from __future__ import annotations

import csv
import json
import math
import shutil
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from ..data.degrade import degrade_to_input
from ..inference.pipeline import FluxSRPipeline, UpscaleOptions
from ..io.cache import (
    DamagedFileError,
    atomic_save_safetensors,
    atomic_write_bytes,
    read_json,
    read_safetensors,
    safetensors_header,
)
from ..io.config import ConfigError, to_dict
from ..io.guards import check_inputs_apart
from ..model.flow import ftd_loss, ftd_point, one_step, sample_ftd_t, shift_mu, time_shift
from ..model.folders import save_model_folder
from ..model.loader import load_model
from ..model.lora import add_lora, lora_state_dict, save_lora
from ..model.model import FluxSRModel, ModelSpec, model_time, move, setup_cuda_training, velocity
from .pairs import check_intact, check_one_config, complete_indices, load_pair, pair_stem
from .recipe import Recipe, input_paths

LOSS_NAMES = ("loss", "ftd", "mse", "lpips", "adl")


# ----------------------------------------------------------------------------------------------------------------
# Deterministic data order and randomness
# ----------------------------------------------------------------------------------------------------------------


def sample_generator(seed: int, micro: int, rank: int) -> torch.Generator:
    """CPU generator for micro-batch ``micro`` on process ``rank``: independent of how the run was split up."""
    return torch.Generator().manual_seed(((seed * 1_000_003 + micro) * 1009 + rank) % (2**63 - 1))


def batch_indices(n: int, micro: int, batch: int, rank: int, world: int, seed: int) -> list[int]:
    """Positions in the list of pairs for micro-batch ``micro`` of process ``rank``: a fresh permutation each epoch."""
    out = []
    for j in range(batch):
        pos = (micro * world + rank) * batch + j
        epoch, k = divmod(pos, n)
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 7919 + epoch))
        out.append(int(perm[k]))
    return out


def aligned_crop(pair: dict, crop: int, align: int, vae_scale: int, g: torch.Generator) -> dict:
    """Same random crop of the image and both latents; offsets on the ``align``-pixel grid (16 for FLUX)."""
    h, w = pair["image"].shape[-2:]
    if crop <= 0 or crop >= min(h, w):
        return pair
    top = int(torch.randint(0, (h - crop) // align + 1, (1,), generator=g)) * align
    left = int(torch.randint(0, (w - crop) // align + 1, (1,), generator=g)) * align
    lt, ll, lc = top // vae_scale, left // vae_scale, crop // vae_scale
    return {
        "image": pair["image"][:, top : top + crop, left : left + crop],
        "eps": pair["eps"][..., lt : lt + lc, ll : ll + lc],
        "z0": pair["z0"][..., lt : lt + lc, ll : ll + lc],
    }


def lr_lambda(step: int, warmup: int, total: int, schedule: str) -> float:
    """LR multiplier: linear warm-up over ``warmup`` steps, then constant or cosine decay to 0 at ``total``."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    if schedule == "cosine":
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return 0.5 * (1 + math.cos(math.pi * progress))
    if schedule != "constant":
        raise ValueError(f"train.schedule: expected 'constant' or 'cosine', got {schedule!r}")
    return 1.0


def effective_t_l(t_l: float, shift: bool, latent_hw: tuple[int, int]) -> float:
    """T_L, optionally through FLUX's resolution shift for this many image tokens (docs/method.md, DECIDE 2)."""
    if not shift:
        return t_l
    return float(time_shift(shift_mu(latent_hw[0] * latent_hw[1] // 4), 1.0, t_l))


# ----------------------------------------------------------------------------------------------------------------
# Checkpoints: safetensors + JSON
# ----------------------------------------------------------------------------------------------------------------


def trainable_state(transformer, lora: bool) -> dict[str, Tensor]:
    if lora:
        return lora_state_dict(transformer)
    return {k: v.detach().cpu() for k, v in transformer.state_dict().items()}


def load_trainable(
    transformer, state: dict[str, Tensor], lora: bool, source: Path | str = "checkpoint"
) -> None:
    """Load trainable weights; a full state must match exactly (strict), and so must a LoRA state, which peft would
    otherwise load leniently (a LoRA made before fluxsr adapted the attention projections has fewer tensors)."""
    if lora:
        from peft import get_peft_model_state_dict, set_peft_model_state_dict

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


def read_checkpoint_state(path: Path) -> dict:
    """A checkpoint's ``state.json``, its fields checked; :class:`DamagedFileError` naming the file otherwise."""
    file = Path(path) / "state.json"
    state = read_json(file)
    problem = state_problem(state)
    if problem:
        raise DamagedFileError(f"{file}: damaged, {problem}")
    return state


def checkpoint_problem(path: Path) -> str | None:
    """What is wrong with checkpoint folder ``path`` (the damaged file named), or None; decodes no tensor."""
    try:
        read_checkpoint_state(path)
        for name, keys in CHECKPOINT_TENSORS.items():
            safetensors_header(path / name, keys)
    except (DamagedFileError, FileNotFoundError) as e:
        return str(e)
    return None


def resume_checkpoint(folder: Path, skip_damaged: bool = False) -> Path:
    """The checkpoint ``--resume`` continues from: the latest one in ``folder``. A damaged latest one is a
    DamagedFileError naming its file and the intact one to fall back to, or with ``skip_damaged`` (``--resume
    intact``) a warning, and the newest intact checkpoint is used."""
    done = finished_checkpoints(folder)
    if not done:
        raise FileNotFoundError(f"--resume: no checkpoint in {folder}")
    problems: dict[Path, str] = {}  # the damaged ones, newest first
    intact = None
    for path in reversed(done):
        problem = checkpoint_problem(path)
        if problem is None:
            intact = path
            break
        problems[path] = problem
    if not problems:
        return done[-1]
    latest, problem = next(iter(problems.items()))
    if not skip_damaged:
        hint = (
            f"`--resume intact` resumes from {intact.name}, the newest intact checkpoint (or delete {latest})"
            if intact
            else f"no earlier checkpoint in {folder} is intact: train into a new --out"
        )
        raise DamagedFileError(f"--resume: the latest checkpoint is damaged: {problem}; {hint}")
    for problem in problems.values():
        print(f"warning: --resume intact: skipping a damaged checkpoint: {problem}", file=sys.stderr)
    if intact is None:
        raise DamagedFileError(
            f"--resume intact: no checkpoint in {folder} is intact: train into a new --out"
        )
    return intact


def load_checkpoint(path: Path, transformer, optimizer, scheduler, lora: bool) -> int:
    """Restore weights, optimiser, schedule and RNG from a checkpoint folder; returns its step. A file that does
    not read or load is a DamagedFileError naming it."""
    state = read_checkpoint_state(path)
    weights, _ = read_safetensors(path / "trainable.safetensors")
    load_trainable(transformer, weights, lora, path)
    opt, _ = read_safetensors(path / "optimizer.safetensors")
    rng, _ = read_safetensors(path / "rng.safetensors", CHECKPOINT_TENSORS["rng.safetensors"])
    try:
        optimizer.load_state_dict(optimizer_from_tensors(opt, state["optimizer"]))
        scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(rng["torch_rng"])
    except (ValueError, KeyError, TypeError, IndexError, RuntimeError) as e:
        raise DamagedFileError(
            f"{path}: damaged checkpoint, its optimizer/schedule/RNG state does not load "
            f"({' '.join(str(e).split())[:200]}); delete {path} to resume from the checkpoint before it"
        ) from None
    return int(state["step"])


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
)
RESUME_FREE_SECTIONS = ("pairs.", "pretrain.", "export.")
RESUME_FIXED = ("pairs.text_len",)


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def resume_conflicts(saved: dict, recipe: Recipe) -> list[str]:
    """``field: old -> new`` for each recipe field that differs from the checkpoint's and may not change on resume."""
    old = _flatten(json.loads(json.dumps(saved, default=float)))
    new = _flatten(json.loads(json.dumps(to_dict(recipe), default=float)))
    out = []
    for key in sorted(set(old) | set(new)):
        if key in RESUME_FREE or (key.startswith(RESUME_FREE_SECTIONS) and key not in RESUME_FIXED):
            continue
        if old.get(key) != new.get(key):
            out.append(f"{key}: {old.get(key)!r} -> {new.get(key)!r}")
    return out


def check_resume(found: Path, recipe: Recipe, steps: int) -> int:
    """Raise ValueError when ``recipe`` changed a field the checkpoint ``found`` depends on, or ``steps`` (the run's
    last step) lies below its step; returns the checkpoint's step. Checkpoints written before recipes were stored in
    them are accepted unchecked."""
    state = read_checkpoint_state(found)
    step = state["step"]
    if "recipe" in state:
        changed = resume_conflicts(state["recipe"], recipe)
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


def check_validation_images(recipe: Recipe) -> None:
    """``train.validation_images`` must exist and every image in it must load (fail at start, not at step N)."""
    from ..io.images import find_images, read_image

    src = recipe.train.validation_images
    if not src:
        return
    if not Path(src).exists():
        raise ConfigError(f"train.validation_images: {src} not found")
    paths = find_images(Path(src))
    if not paths:
        raise ConfigError(f"train.validation_images: no images in {src}")
    for path in paths:
        read_image(path)  # ImageError naming the file


def prune_checkpoints(folder: Path, keep: int) -> None:
    done = finished_checkpoints(folder)
    for old in done[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)


# ----------------------------------------------------------------------------------------------------------------
# Logging
# ----------------------------------------------------------------------------------------------------------------


class RunLog:
    """CSV always; TensorBoard when installed; a loss plot (PNG) when matplotlib is installed."""

    def __init__(self, run: Path, enabled: bool, resume_step: int):
        self.run, self.enabled = run, enabled
        self.csv_path = run / "log.csv"
        self.tb = None
        if not enabled:
            return
        if resume_step == 0 or not self.csv_path.is_file():
            self.csv_path.write_text(",".join(("step", *LOSS_NAMES, "lr", "it_per_s", "peak_gib")) + "\n")
        else:  # drop rows past the checkpoint we resumed from
            rows = self.csv_path.read_text().splitlines()
            keep = [rows[0]] + [r for r in rows[1:] if int(r.split(",")[0]) <= resume_step]
            self.csv_path.write_text("\n".join(keep) + "\n")
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(run / "tensorboard"), purge_step=resume_step or None)
        except ImportError:
            print("note: tensorboard is not installed; logging to log.csv only", file=sys.stderr)

    def log(self, step: int, values: dict[str, float], lr: float, its: float) -> None:
        if not self.enabled:
            return
        peak = torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else 0.0
        with self.csv_path.open("a", newline="") as f:
            csv.writer(f).writerow(
                [step, *(f"{values[k]:.6g}" for k in LOSS_NAMES), f"{lr:.6g}", f"{its:.4g}", f"{peak:.2f}"]
            )
        if self.tb is not None:
            for k, v in values.items():
                self.tb.add_scalar(f"loss/{k}", v, step)
            self.tb.add_scalar("lr", lr, step)

    def plot(self) -> Path | None:
        if not self.enabled:
            return None
        try:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError:
            return None
        rows = list(csv.DictReader(self.csv_path.open()))
        if not rows:
            return None
        steps = [int(r["step"]) for r in rows]
        fig, ax = plt.subplots(figsize=(7, 4))
        for k in LOSS_NAMES:
            ax.plot(steps, [float(r[k]) for r in rows], label=k)
        ax.set_yscale("log")
        ax.set_xlabel("step")
        ax.legend()
        ax.grid(alpha=0.3)
        fig.tight_layout()
        path = self.run / "loss.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        return path

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


# ----------------------------------------------------------------------------------------------------------------
# The trainer
# ----------------------------------------------------------------------------------------------------------------


def build_student(recipe: Recipe, device=None, dtype=None) -> tuple[FluxSRModel, bool]:
    """Base model with its trainable part (LoRA via peft, or every transformer weight); VAE frozen. A LoRA trains
    on a frozen base read in ``dtype`` (the mixed-precision dtype); full fine-tuning keeps float32 master weights."""
    m = recipe.model
    lora = recipe.train.lora_rank > 0
    model = load_model(
        m.base,
        ae=Path(m.ae) if m.ae else None,
        prompt_embeds=Path(m.prompt_embeds) if m.prompt_embeds else None,
        device=device,
        dtype=dtype if lora else torch.float32,
        text_len=recipe.pairs.text_len,
    )
    model.spec = replace(model.spec, t_l=m.t_l, guidance=m.guidance)
    model.vae.requires_grad_(False).eval()
    model.transformer.requires_grad_(False)
    if lora:
        add_lora(
            model.transformer, recipe.train.lora_rank, recipe.train.lora_alpha, recipe.train.lora_targets
        )
    else:
        model.transformer.requires_grad_(True)
    return model, lora


def build_lpips(recipe: Recipe, device):
    from ..losses.lpips import LPIPS, load_lpips
    from ..losses.tv_lpips import TVLPIPS

    net = recipe.loss.lpips_net
    if net == "random-vgg":
        torch.manual_seed(0)
        lp = LPIPS("vgg").to(device)
    else:
        lp = load_lpips(net, device)
    return TVLPIPS(lp, recipe.loss.tv_gamma).to(device)


def check_run_apart(recipe: Recipe, pairs_dir: Path, run: Path) -> None:
    """Refuse (ValueError) a run folder whose cleared parts hold an input (the pairs, a path of the recipe):
    ``final/`` is replaced at the end, old ``checkpoints/`` are pruned, ``val/`` is written over."""
    check_inputs_apart(
        [("--pairs", Path(pairs_dir)), *input_paths(recipe)],
        [
            (run / "final", "train replaces at the end"),
            (run / "checkpoints", "train writes checkpoints into and prunes"),
            (run / "val", "train writes validation images into"),
        ],
        "choose an --out that holds none of the inputs",
    )


def train(
    recipe: Recipe,
    pairs_dir: Path,
    run: Path,
    *,
    resume: bool = False,
    skip_damaged: bool = False,
    max_steps: int | None = None,
    progress: bool = True,
) -> Path:
    """Train a FluxSR student; returns the exported model folder ``run/final`` (written at the last step).

    ``resume``: continue from the latest checkpoint in ``run`` (a damaged one is refused, naming its file), or with
    ``skip_damaged`` from the newest intact one (:func:`resume_checkpoint`)."""
    from accelerate import Accelerator
    from tqdm import tqdm

    from ..losses.adl import ADLCollector

    tc, lc = recipe.train, recipe.loss
    if tc.mixed_precision == "fp16":
        raise ValueError("train.mixed_precision: fp16 overflows in FLUX; use bf16 or no")
    run = Path(run)
    check_run_apart(recipe, pairs_dir, run)
    ckpt_dir = run / "checkpoints"
    steps = tc.steps if max_steps is None else min(tc.steps, max_steps)
    found = None
    if resume:
        found = resume_checkpoint(ckpt_dir, skip_damaged)
        check_resume(found, recipe, steps)
    elif any(ckpt_dir.glob("step_*")):
        raise ValueError(
            f"{run} already holds checkpoints of a run: continue it with --resume, or train into a new "
            f"--out (or delete {ckpt_dir})"
        )
    indices = complete_indices(pairs_dir)
    if not indices:
        raise FileNotFoundError(f"{pairs_dir}: no complete pairs (run `fluxsr gen-pairs` first)")
    check_intact(pairs_dir)
    check_one_config(pairs_dir)
    check_validation_images(recipe)
    cuda = torch.cuda.is_available()
    setup_cuda_training()
    acc = Accelerator(
        mixed_precision=tc.mixed_precision if cuda else "no",
        gradient_accumulation_steps=tc.grad_accum,
        cpu=not cuda,
    )
    if acc.is_main_process:
        run.mkdir(parents=True, exist_ok=True)
        (run / "recipe.yaml").write_text(__import__("yaml").safe_dump(to_dict(recipe), sort_keys=False))
    torch.manual_seed(tc.seed)

    weight_dtype = torch.bfloat16 if acc.mixed_precision == "bf16" else torch.float32
    model, lora = build_student(recipe, acc.device, weight_dtype)
    align, vs = model.multiple, model.vae_scale
    if tc.crop % align:
        raise ConfigError(
            f"train.crop: {tc.crop} is not a multiple of {align} (the model's image size multiple)"
        )
    # The T_L the student trains at (shifted by the training crop's token count when model.shift_t_l); validation
    # and the exported model use the same value.
    with Image.open(pair_stem(pairs_dir, indices[0]).with_suffix(".png")) as first:
        w, h = first.size
    if 0 < tc.crop < min(h, w):
        h = w = tc.crop
    train_t_l = effective_t_l(model.spec.t_l, recipe.model.shift_t_l, (h // vs, w // vs))
    move(model.vae, acc.device, weight_dtype)
    move(model.transformer, acc.device, weight_dtype if lora else torch.float32)
    model.cond = model.cond.to(acc.device, weight_dtype)
    trainable = [p for p in model.transformer.parameters() if p.requires_grad]
    model_dtype = next(model.transformer.parameters()).dtype  # the dtype velocity() runs the transformer in
    for p in trainable:
        p.data = p.data.float()
    if tc.gradient_checkpointing:
        model.transformer.enable_gradient_checkpointing()
    if tc.vae_checkpointing:
        model.vae.enable_gradient_checkpointing()
    tv_lpips = build_lpips(recipe, acc.device) if lc.lpips > 0 else None

    optimizer = torch.optim.AdamW(trainable, lr=tc.lr, betas=tc.betas, weight_decay=tc.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_lambda(s, tc.warmup_steps, tc.steps, tc.schedule)
    )
    net, optimizer = acc.prepare(model.transformer, optimizer)
    adl = ADLCollector(acc.unwrap_model(net), lc.adl_blocks).attach() if lc.adl > 0 else None

    start = 0
    if found is not None:
        start = load_checkpoint(found, acc.unwrap_model(net), optimizer, scheduler, lora)
        acc.print(f"resumed from {found} (step {start})")
    log = RunLog(run, acc.is_main_process, start)
    t_l = train_t_l  # one pairs config, one resolution: every batch has the first pair's size
    bar = tqdm(
        total=steps,
        initial=start,
        disable=not (progress and acc.is_main_process),
        file=sys.stderr,
        desc="train",
    )
    tic = time.perf_counter()
    for step in range(start, steps):
        totals = dict.fromkeys(LOSS_NAMES, 0.0)
        for k in range(tc.grad_accum):
            micro = step * tc.grad_accum + k
            g = sample_generator(tc.seed, micro, acc.process_index)
            picks = batch_indices(
                len(indices), micro, tc.batch_size, acc.process_index, acc.num_processes, tc.seed
            )
            items = [aligned_crop(load_pair(pairs_dir, indices[i]), tc.crop, align, vs, g) for i in picks]
            x0 = torch.stack([it["image"] for it in items]).to(acc.device)
            eps = torch.cat([it["eps"] for it in items]).to(acc.device)
            z0 = torch.cat([it["z0"] for it in items]).to(acc.device)
            _, lr_up = degrade_to_input(x0, recipe.degradation, g)
            with torch.no_grad():
                z_l = model.encode(lr_up).float()
            with acc.accumulate(net), acc.autocast():
                v_l = velocity(model, z_l, t_l, net=net).float()
                x_h = model.decode(one_step(z_l, v_l, t_l)).float()
                parts = {"mse": F.mse_loss(x_h, x0)}
                parts["lpips"] = tv_lpips(x_h, x0).mean() if tv_lpips is not None else x_h.new_zeros(())
                parts["adl"] = adl.loss() if adl is not None else x_h.new_zeros(())
                t = model_time(sample_ftd_t(x0.shape[0], t_l, g, acc.device), model_dtype)
                if adl is not None:
                    adl.enabled = False
                v_t = velocity(model, ftd_point(z_l, eps, t, t_l), t, net=net).float()
                if adl is not None:
                    adl.enabled = True
                parts["ftd"] = ftd_loss(v_t, z_l, z0, eps, t_l)
                loss = (
                    lc.ftd * parts["ftd"]
                    + lc.mse * parts["mse"]
                    + lc.lpips * parts["lpips"]
                    + lc.adl * parts["adl"]
                )
                if not torch.isfinite(loss):
                    raise FloatingPointError(
                        f"step {step}: loss is {loss.item()} ({ {k: float(v) for k, v in parts.items()} })"
                    )
                acc.backward(loss)
                if acc.sync_gradients and tc.max_grad_norm > 0:
                    acc.clip_grad_norm_(trainable, tc.max_grad_norm)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            totals["loss"] += loss.item() / tc.grad_accum
            for name, val in parts.items():
                totals[name] += val.item() / tc.grad_accum
        lr = scheduler.get_last_lr()[0]  # the LR this step used
        scheduler.step()
        done = step + 1
        its = (done - start) / (time.perf_counter() - tic)
        bar.set_postfix(loss=f"{totals['loss']:.4f}", it_s=f"{its:.2f}")
        bar.update(1)
        out_of_time = tc.time_limit > 0 and time.perf_counter() - tic > tc.time_limit
        if done % tc.log_every == 0 or done == steps or out_of_time:
            log.log(done, totals, lr, its)
        if out_of_time:
            acc.print(f"time limit reached after step {done}")
        if acc.is_main_process and (done % tc.checkpoint_every == 0 or done == steps or out_of_time):
            save_checkpoint(ckpt_dir, done, acc.unwrap_model(net), optimizer, scheduler, lora, recipe)
            prune_checkpoints(ckpt_dir, tc.keep_checkpoints)
            log.plot()
        if acc.is_main_process and tc.validate_every > 0 and done % tc.validate_every == 0:
            validate(
                model,
                acc.unwrap_model(net),
                recipe,
                pairs_dir,
                indices,
                run / "val" / f"step_{done:07d}",
                t_l=train_t_l,
            )
        if out_of_time:
            break
    bar.close()
    acc.wait_for_everyone()
    final = run / "final"
    if acc.is_main_process:
        if adl is not None:
            adl.remove()
        export(model, acc.unwrap_model(net), recipe, lora, final, t_l=train_t_l)
        log.plot()
    log.close()
    acc.wait_for_everyone()
    acc.end_training()
    return final


@torch.no_grad()
def validate(
    model: FluxSRModel,
    transformer,
    recipe: Recipe,
    pairs_dir: Path,
    indices: list[int],
    out: Path,
    *,
    t_l: float | None = None,
) -> dict:
    """Upscale fixed degraded inputs (the first two pairs, seed 0; or ``train.validation_images``) and save them.

    ``t_l``: the T_L to run at (the effective one used in training; default: the model's).

    Returns PSNR (dB) per pair input against its x0, written to ``out/metrics.json``.
    """
    from ..evaluation.psnr_ssim import psnr
    from ..io.images import find_images, read_image, resize, write_image

    out.mkdir(parents=True, exist_ok=True)
    was_training = transformer.training
    transformer.eval()
    spec = model.spec if t_l is None else replace(model.spec, t_l=t_l)
    pipe = FluxSRPipeline(
        replace(model, transformer=transformer, spec=spec),
        next(transformer.parameters()).device,
        next(model.vae.parameters()).dtype,
        prepare=False,
    )
    scores = {}
    if recipe.train.validation_images:
        for path in find_images(Path(recipe.train.validation_images)):
            write_image(out / f"{path.stem}.png", pipe.upscale_tensor(read_image(path).rgb))
    else:
        for i in indices[:2]:
            x0 = load_pair(pairs_dir, i)["image"]
            lr, _ = degrade_to_input(x0[None], recipe.degradation, torch.Generator().manual_seed(0))
            sr = pipe.upscale_tensor(lr[0], UpscaleOptions(scale=x0.shape[-1] / lr.shape[-1]))
            sr = resize(sr[None], tuple(x0.shape[-2:]))[0]
            write_image(out / f"{i:06d}_lr.png", lr[0])
            write_image(out / f"{i:06d}_sr.png", sr)
            scores[str(i)] = float(psnr(sr, x0, crop_border=0, y_channel=True))
    (out / "metrics.json").write_text(json.dumps({"psnr_y": scores}, indent=2))
    transformer.train(was_training)
    return scores


def export(model: FluxSRModel, transformer, recipe: Recipe, lora: bool, out: Path, *, t_l: float) -> Path:
    """Write a fluxsr model folder that ``fluxsr upscale --model`` loads directly.

    Small bases (and ``export.merge_lora``): a self-contained folder with the LoRA merged into the transformer.
    FLUX.1-dev-sized bases: ``lora.safetensors`` + cached embeddings + ``fluxsr.json`` pointing at the base weights.
    """
    ex = recipe.export
    spec = ModelSpec(
        t_l=t_l,
        guidance=recipe.model.guidance,
        name=ex.name or f"fluxsr-{Path(recipe.model.base).name}",
        description=ex.description,
        note=ex.note or model.spec.note,
        tile=ex.tile,
        overlap=ex.overlap,
    )
    big = sum(p.numel() for p in transformer.parameters()) > 1e9
    shutil.rmtree(out, ignore_errors=True)
    if lora and big and not recipe.export.merge_lora:
        out.mkdir(parents=True)
        cfg = {
            "r": recipe.train.lora_rank,
            "lora_alpha": recipe.train.lora_alpha,
            "target_modules": transformer.peft_config["fluxsr"].target_modules,
            "init_lora_weights": True,
        }
        if isinstance(cfg["target_modules"], set):
            cfg["target_modules"] = sorted(cfg["target_modules"])
        save_lora(lora_state_dict(transformer), cfg, out / "lora.safetensors")
        model.cond.to("cpu", torch.float32).save(out / "prompt_embeds.safetensors")
        base = str(Path(recipe.model.base).resolve())
        spec = replace(spec, base=base, ae=str(Path(recipe.model.ae).resolve()) if recipe.model.ae else "")
        (out / "fluxsr.json").write_text(json.dumps(asdict(spec), indent=2) + "\n")
        return out
    tr = transformer
    if lora:
        tr.fuse_lora(adapter_names=["fluxsr"])
        tr.unload_lora()
    tr = move(tr, "cpu", torch.float32)
    if tr.is_gradient_checkpointing:
        tr.disable_gradient_checkpointing()
    save_model_folder(
        FluxSRModel(tr, move(model.vae, "cpu", torch.float32), model.cond.to("cpu", torch.float32), spec), out
    )
    return out
