"""The training log of a run folder: ``log.csv`` always, TensorBoard when installed, ``loss.png`` (matplotlib).

``log.csv`` has one row per logged step: the loss terms (``loss`` is the weighted sum), the LR that step ran at,
the speed, the peak GPU memory and, on the steps where they were measured (``train.grad_norm_every``), the gradient
norm of each weighted term on the trainable weights (``gn_ftd``, ``gn_mse``, ``gn_lpips``, ``gn_adl``; 0 for a
term whose weight is 0; empty on other steps). A resumed run drops the rows past its checkpoint and goes on
appending.
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import torch

LOSS_NAMES = ("loss", "ftd", "mse", "lpips", "adl")
GRAD_NAMES = ("gn_ftd", "gn_mse", "gn_lpips", "gn_adl")
HEADER = ",".join(("step", *LOSS_NAMES, "lr", "it_per_s", "peak_gib", *GRAD_NAMES))


class RunLog:
    """CSV always; TensorBoard when installed; a loss plot (PNG) when matplotlib is installed."""

    def __init__(self, run: Path, enabled: bool, resume_step: int):
        self.run, self.enabled = run, enabled
        self.csv_path = run / "log.csv"
        self.tb = None
        if not enabled:
            return
        if resume_step == 0 or not self.csv_path.is_file():
            self.csv_path.write_text(HEADER + "\n")
        else:  # drop rows past the checkpoint we resumed from; a log from before the gn_ columns gets them
            rows = self.csv_path.read_text().splitlines()
            keep = [HEADER] + [r for r in rows[1:] if int(r.split(",")[0]) <= resume_step]
            self.csv_path.write_text("\n".join(keep) + "\n")
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(run / "tensorboard"), purge_step=resume_step or None)
        except ImportError:
            print("note: tensorboard is not installed; logging to log.csv only", file=sys.stderr)

    def log(self, step: int, values: dict[str, float], lr: float, its: float) -> None:
        """Append step ``step``'s row (and its TensorBoard scalars); ``values`` holds the loss terms and, on a
        measured step, the ``gn_`` gradient norms."""
        if not self.enabled:
            return
        peak = torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else 0.0
        norms = [f"{values[k]:.6g}" if k in values else "" for k in GRAD_NAMES]
        with self.csv_path.open("a", newline="") as f:
            csv.writer(f).writerow(
                [
                    step,
                    *(f"{values[k]:.6g}" for k in LOSS_NAMES),
                    f"{lr:.6g}",
                    f"{its:.4g}",
                    f"{peak:.2f}",
                    *norms,
                ]
            )
        if self.tb is not None:
            for k, v in values.items():
                group = "grad_norm" if k in GRAD_NAMES else "loss"
                self.tb.add_scalar(f"{group}/{k.removeprefix('gn_')}", v, step)
            self.tb.add_scalar("lr", lr, step)

    def plot(self) -> Path | None:
        """Draw the loss columns of ``log.csv`` into ``loss.png`` (log scale); None without matplotlib."""
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
