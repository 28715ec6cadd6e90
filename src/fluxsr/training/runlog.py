"""The training log of a run folder: ``log.csv`` always, TensorBoard when installed, ``loss.png`` (matplotlib).

``log.csv`` has one row per logged step: the loss terms (``loss`` is the weighted sum), the LR that step ran at,
the speed and the peak GPU memory. A resumed run drops the rows past its checkpoint and goes on appending.
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import torch

LOSS_NAMES = ("loss", "ftd", "mse", "lpips", "adl")


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
        """Append step ``step``'s row (and its TensorBoard scalars)."""
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
