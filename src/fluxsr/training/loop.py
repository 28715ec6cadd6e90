"""FluxSR training (``fluxsr train``): FTD + MSE + TV-LPIPS + ADL on offline pairs, with accelerate.

:func:`train` is a short loop over named steps: :func:`prepare_run` (checks, resume, pairs, student, optimiser,
accelerator), then per step :func:`optimizer_step` (each micro-batch: :func:`~fluxsr.training.step.load_batch` and
:func:`~fluxsr.training.step.training_step`) and :func:`after_step` (log, checkpoint, validate), then
:func:`finish_run` (export ``RUN/final``). Checkpoints and ``--resume``: :mod:`fluxsr.training.checkpoints`; the
log: :mod:`fluxsr.training.runlog`; the student and its export: :mod:`fluxsr.training.student`.
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml
from accelerate import Accelerator
from accelerate.utils import DistributedType
from PIL import Image
from torch import nn
from tqdm import tqdm

from ..io.config import ConfigError, to_dict
from ..io.guards import check_inputs_apart
from ..losses.adl import ADLCollector
from ..model.flow import shift_mu, time_shift
from ..model.model import FluxSRModel, move, setup_cuda_training
from .checkpoints import (
    Checkpoint,
    ResumeFrom,
    check_resume,
    load_checkpoint,
    load_trainable,
    prune_checkpoints,
    resume_checkpoint,
    save_checkpoint,
    trainable_state,
)
from .pairs import check_intact, check_one_config, marked_indices, pair_stem
from .recipe import Recipe, input_paths
from .runlog import GRAD_NAMES, LOSS_NAMES, RunLog
from .step import BatchSource, Trainer, load_batch, training_step
from .student import build_lpips, build_student, export
from .validation import check_validation_images, validate


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
# Preparing a run
# ----------------------------------------------------------------------------------------------------------------


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


def usable_pairs(pairs_dir: Path) -> list[int]:
    """Indices of the pairs training reads. Each pair's files are checked once (:func:`check_intact` refuses a
    damaged one, naming it); the pairs must come from one gen-pairs config."""
    check_intact(pairs_dir)
    indices = marked_indices(pairs_dir)  # every marked pair is complete once none is damaged
    if not indices:
        raise FileNotFoundError(f"{pairs_dir}: no complete pairs (run `fluxsr gen-pairs` first)")
    check_one_config(pairs_dir, indices=indices)
    return indices


def find_start(recipe: Recipe, run: Path, resume: ResumeFrom | None, steps: int) -> Checkpoint | None:
    """The checkpoint to resume from (checked against the recipe), or None for a fresh run, which a run folder
    that already holds checkpoints refuses."""
    ckpt_dir = run / "checkpoints"
    if resume is not None:
        found = resume_checkpoint(ckpt_dir, resume)
        check_resume(found, recipe, steps)
        return found
    if any(ckpt_dir.glob("step_*")):
        raise ValueError(
            f"{run} already holds checkpoints of a run: continue it with --resume, or train into a new "
            f"--out (or delete {ckpt_dir})"
        )
    return None


def make_accelerator(recipe: Recipe, run: Path) -> Accelerator:
    """The accelerator (bf16 autocast only on CUDA); the main process writes ``RUN/recipe.yaml``."""
    tc = recipe.train
    cuda = torch.cuda.is_available()
    setup_cuda_training()
    acc = Accelerator(
        mixed_precision=tc.mixed_precision if cuda else "no",
        gradient_accumulation_steps=tc.grad_accum,
        cpu=not cuda,
    )
    if acc.distributed_type == DistributedType.FSDP and tc.validate_every > 0:
        raise ConfigError(
            "train.validate_every: validation runs on the main process alone, which FSDP's sharded transformer "
            "cannot; set 0 under FSDP (the checkpoints and RUN/final can be evaluated afterwards)"
        )
    if acc.is_main_process:
        run.mkdir(parents=True, exist_ok=True)
        (run / "recipe.yaml").write_text(yaml.safe_dump(to_dict(recipe), sort_keys=False))
    torch.manual_seed(tc.seed)
    return acc


def training_t_l(recipe: Recipe, model: FluxSRModel, pairs_dir: Path, first: int) -> float:
    """The T_L the student trains at: shifted by the training crop's token count when ``model.shift_t_l`` (one
    pairs config, one resolution: every batch has the first pair's size). Validation and export use it too."""
    crop = recipe.train.crop
    if crop % model.multiple:
        raise ConfigError(
            f"train.crop: {crop} is not a multiple of {model.multiple} (the model's image size multiple)"
        )
    with Image.open(pair_stem(pairs_dir, first).with_suffix(".png")) as im:
        w, h = im.size
    return crop_t_l(recipe, model.spec.t_l, (h, w), model.vae_scale)


def crop_t_l(recipe: Recipe, t_l: float, hw: tuple[int, int], vae_scale: int) -> float:
    """The T_L of training crops from pairs of ``hw`` pixels: the whole pair, or ``train.crop`` square when smaller,
    shifted by its token count when ``model.shift_t_l``. One rule for training and for exporting a checkpoint
    (:func:`fluxsr.training.hub_export.materialise_checkpoint`)."""
    h, w = hw
    crop = recipe.train.crop
    if 0 < crop < min(h, w):
        h = w = crop
    return effective_t_l(t_l, recipe.model.shift_t_l, (h // vae_scale, w // vae_scale))


def place_student(recipe: Recipe, model: FluxSRModel, lora: bool, device, weight_dtype) -> torch.dtype:
    """Move the student to the device (a LoRA's base in ``weight_dtype``, full fine-tuning in float32), keep the
    trainable weights in float32, switch on gradient checkpointing; returns the dtype the transformer runs in."""
    tc = recipe.train
    move(model.vae, device, weight_dtype)
    move(model.transformer, device, weight_dtype if lora else torch.float32)
    model.cond = model.cond.to(device, weight_dtype)
    model_dtype = next(model.transformer.parameters()).dtype  # the dtype velocity() runs the transformer in
    for p in model.transformer.parameters():
        if p.requires_grad:
            p.data = p.data.float()
    if tc.gradient_checkpointing:
        model.transformer.enable_gradient_checkpointing()
    if tc.vae_checkpointing:
        model.vae.enable_gradient_checkpointing()
    return model_dtype


def build_trainer(recipe: Recipe, model: FluxSRModel, acc: Accelerator, t_l: float, model_dtype) -> Trainer:
    """Optimiser, accelerate's preparation and the loss networks around a placed student."""
    tc, lc = recipe.train, recipe.loss
    tv_lpips = build_lpips(recipe, acc.device) if lc.lpips > 0 else None
    trainable = [p for p in model.transformer.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=tc.lr, betas=tc.betas, weight_decay=tc.weight_decay)
    net, optimizer = acc.prepare(model.transformer, optimizer)
    trainable = [p for p in net.parameters() if p.requires_grad]  # FSDP replaces the ones the optimiser got
    adl = ADLCollector(acc.unwrap_model(net), lc.adl_blocks, lc.adl_tap).attach() if lc.adl > 0 else None
    return Trainer(
        model=model,
        net=net,
        optimizer=optimizer,
        acc=acc,
        weights=lc,
        t_l=t_l,
        trainable=trainable,
        model_dtype=model_dtype,
        tv_lpips=tv_lpips,
        adl=adl,
        max_grad_norm=tc.max_grad_norm,
    )


@dataclass
class Run:
    """A prepared run: its folder, recipe, pairs, trainer, schedule, log and where it starts and stops."""

    folder: Path
    recipe: Recipe
    pairs_dir: Path
    data: BatchSource
    trainer: Trainer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    lora: bool
    log: RunLog
    start: int
    steps: int


def prepare_run(
    recipe: Recipe, pairs_dir: Path, run: Path, resume: ResumeFrom | None, max_steps: int | None
) -> Run:
    """Every check that can fail before a step (recipe, run folder, resume, pairs, validation images), then the
    accelerator, the student, the optimiser and the log; a resumed run's state restored."""
    tc = recipe.train
    if tc.mixed_precision == "fp16":
        raise ValueError("train.mixed_precision: fp16 overflows in FLUX; use bf16 or no")
    check_run_apart(recipe, pairs_dir, run)
    steps = tc.steps if max_steps is None else min(tc.steps, max_steps)
    found = find_start(recipe, run, resume, steps)
    indices = usable_pairs(pairs_dir)
    check_validation_images(recipe)
    acc = make_accelerator(recipe, run)
    weight_dtype = torch.bfloat16 if acc.mixed_precision == "bf16" else torch.float32
    model, lora = build_student(recipe, acc.device, weight_dtype, widen_later=True)
    t_l = training_t_l(recipe, model, pairs_dir, indices[0])
    model_dtype = place_student(recipe, model, lora, acc.device, weight_dtype)
    trainer = build_trainer(recipe, model, acc, t_l, model_dtype)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        trainer.optimizer, lambda s: lr_lambda(s, tc.warmup_steps, tc.steps, tc.schedule)
    )
    start = 0
    if found is not None:
        start = load_checkpoint(found, trainer.net, trainer.optimizer, scheduler, lora)
        acc.print(f"resumed from {found.path} (step {start})")
    data = BatchSource(
        pairs_dir, indices, tc.batch_size, tc.crop, model.multiple, model.vae_scale, recipe.degradation,
        tc.seed, acc.process_index, acc.num_processes,
    )  # fmt: skip
    log = RunLog(run, acc.is_main_process, start)
    return Run(run, recipe, pairs_dir, data, trainer, scheduler, lora, log, start, steps)


# ----------------------------------------------------------------------------------------------------------------
# The loop
# ----------------------------------------------------------------------------------------------------------------


def grad_norms_due(r: Run, step: int) -> bool:
    """Whether step ``step`` (0-based) measures the loss terms' gradient norms: the first step of a run and every
    ``train.grad_norm_every``-th; never under FSDP (its sharded parameters take no separate backward pass)."""
    every = r.recipe.train.grad_norm_every
    if every == 0 or r.trainer.acc.distributed_type == DistributedType.FSDP:
        return False
    return step == 0 or (step + 1) % every == 0


def optimizer_step(r: Run, step: int) -> tuple[dict[str, float], float]:
    """One optimiser step: ``train.grad_accum`` micro-batches loaded and trained; returns the loss terms averaged
    over them (plus, on a measuring step, the gradient norms of the first micro-batch on this process) and the LR
    the step ran at."""
    grad_accum, tr = r.recipe.train.grad_accum, r.trainer
    totals = dict.fromkeys(LOSS_NAMES, 0.0)
    measure = grad_norms_due(r, step)
    for k in range(grad_accum):
        batch = load_batch(r.data, step * grad_accum + k, step, tr.t_l, tr.acc.device)
        for name, val in training_step(tr, batch, grad_norms=measure and k == 0).items():
            if name in GRAD_NAMES:
                totals[name] = val
            else:
                totals[name] += val / grad_accum
    lr = r.scheduler.get_last_lr()[0]  # the LR this step used
    r.scheduler.step()
    return totals, lr


def first_step_report(recipe: Recipe, totals: dict[str, float]) -> str:
    """One line after a run's first step: ADL's value at step 0 and each weighted term's gradient norm."""
    lc = recipe.loss
    adl = f"ADL {totals['adl']:.4g} ({lc.adl_tap} tap, {lc.adl_blocks})" if lc.adl > 0 else "ADL off"
    if GRAD_NAMES[0] not in totals:
        return f"step 0: {adl}"
    norms = ", ".join(f"{k.removeprefix('gn_')} {totals[k]:.3g}" for k in GRAD_NAMES)
    return f"step 0: {adl}; gradient norms of the weighted terms: {norms}"


def after_step(r: Run, done: int, totals: dict[str, float], lr: float, its: float, stop: bool) -> None:
    """Bookkeeping after step ``done`` (1-based): log, checkpoint (and prune), validate; ``stop``: the time limit
    ended the run here, which logs and checkpoints it as a last step."""
    tc, acc, tr = r.recipe.train, r.trainer.acc, r.trainer
    last = done == r.steps or stop
    if done % tc.log_every == 0 or last or GRAD_NAMES[0] in totals:
        r.log.log(done, totals, lr, its)
    if done == 1:
        acc.print(first_step_report(r.recipe, totals))
    if stop:
        acc.print(f"time limit reached after step {done}")
    if done % tc.checkpoint_every == 0 or last:
        ckpt_dir = r.folder / "checkpoints"
        save_checkpoint(
            ckpt_dir, done, tr.net, tr.optimizer, r.scheduler, r.lora, r.recipe, write=acc.is_main_process
        )
        if acc.is_main_process:
            prune_checkpoints(ckpt_dir, tc.keep_checkpoints)
            r.log.plot()
    if acc.is_main_process and tc.validate_every > 0 and done % tc.validate_every == 0:
        out = r.folder / "val" / f"step_{done:07d}"
        validate(tr.model, acc.unwrap_model(tr.net), r.recipe, r.pairs_dir, r.data.indices, out, t_l=tr.t_l)


def exported_transformer(r: Run) -> nn.Module | None:
    """The transformer :func:`finish_run` exports, on the main process (None on the others): the trained one, or
    under FSDP, whose weights are sharded across the processes, a fresh student's with the trained weights gathered
    into it (every process takes part in the gathering)."""
    acc, tr = r.trainer.acc, r.trainer
    if acc.distributed_type != DistributedType.FSDP:
        return acc.unwrap_model(tr.net) if acc.is_main_process else None
    state = trainable_state(tr.net, r.lora)
    if not acc.is_main_process:
        return None
    base_dtype = next(tr.model.vae.parameters()).dtype  # the dtype place_student gave the frozen parts
    transformer = build_student(r.recipe, "cpu", base_dtype)[0].transformer
    load_trainable(transformer, state, r.lora)
    return transformer


def finish_run(r: Run) -> Path:
    """Export ``RUN/final`` from the main process once every process is done; returns its path."""
    acc, tr = r.trainer.acc, r.trainer
    acc.wait_for_everyone()
    final = r.folder / "final"
    transformer = exported_transformer(r)
    if acc.is_main_process:
        if tr.adl is not None:
            tr.adl.remove()
        export(tr.model, transformer, r.recipe, r.lora, final, t_l=tr.t_l)
        r.log.plot()
    r.log.close()
    acc.wait_for_everyone()
    acc.end_training()
    return final


def train(
    recipe: Recipe,
    pairs_dir: Path,
    run: Path,
    *,
    resume: ResumeFrom | None = None,
    max_steps: int | None = None,
    progress: bool = True,
) -> Path:
    """Train a FluxSR student; returns the exported model folder ``run/final`` (written at the last step).

    ``resume``: None starts a fresh run; ``"latest"`` continues from the latest checkpoint in ``run`` (a damaged
    one is refused, naming its file); ``"intact"`` from the newest intact one."""
    r = prepare_run(recipe, Path(pairs_dir), Path(run), resume, max_steps)
    main = r.trainer.acc.is_main_process
    bar = tqdm(total=r.steps, initial=r.start, disable=not (progress and main), file=sys.stderr, desc="train")
    tic = time.perf_counter()
    for step in range(r.start, r.steps):
        totals, lr = optimizer_step(r, step)
        elapsed = time.perf_counter() - tic
        its = (step + 1 - r.start) / elapsed
        bar.set_postfix(loss=f"{totals['loss']:.4f}", it_s=f"{its:.2f}")
        bar.update(1)
        stop = 0 < recipe.train.time_limit < elapsed
        after_step(r, step + 1, totals, lr, its, stop)
        if stop:
            break
    bar.close()
    return finish_run(r)
