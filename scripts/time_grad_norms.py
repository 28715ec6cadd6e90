#!/usr/bin/env python3
"""Time one training step with and without the per-term gradient norms (``train.grad_norm_every``) on the tiny
recipe: interleaved steps on one fixed batch, median of each after two warm-up steps.

    OMP_NUM_THREADS=1 python scripts/time_grad_norms.py [SIZE]     # SIZE: image edge in pixels, default 64
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import torch
from accelerate import Accelerator

from fluxsr.training.loop import build_trainer
from fluxsr.training.recipe import load_recipe
from fluxsr.training.step import Batch, training_step
from fluxsr.training.student import build_student

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    size = int(sys.argv[1]) if len(sys.argv) > 1 else 64
    torch.set_num_threads(1)
    recipe = load_recipe(ROOT / "configs" / "tiny.yaml", ["train.batch_size=2"])
    torch.manual_seed(0)
    model, _ = build_student(recipe, "cpu", torch.float32)
    trainer = build_trainer(recipe, model, Accelerator(cpu=True), recipe.model.t_l, torch.float32)
    g = torch.Generator().manual_seed(0)
    x0 = torch.rand(2, 3, size, size, generator=g)
    latents = torch.randn(2, 2, 16, size // 8, size // 8, generator=g)
    batch = Batch(x0=x0, lr_up=x0, eps=latents[0], z0=latents[1], t=torch.tensor([0.5, 0.7]))
    times: dict[bool, list[float]] = {False: [], True: []}
    for i in range(24):
        tic = time.perf_counter()
        training_step(trainer, batch, grad_norms=bool(i % 2))
        times[bool(i % 2)].append(time.perf_counter() - tic)
    plain, measured = (statistics.median(times[k][2:]) for k in (False, True))
    print(
        f"{size}px, batch 2: step {plain:.3f} s, with gradient norms {measured:.3f} s ({measured / plain:.2f}x)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
