#!/usr/bin/env python3
"""Compare the ADL taps (``loss.adl_tap``) on a small CPU run of the tiny recipe (issue #13).

    OMP_NUM_THREADS=1 nice python scripts/compare_adl_taps.py --out /tmp/adl_taps --steps 200

One run per variant (no ADL, and ADL at ``loss.adl`` with each tap), same seed, pairs and held-out pairs. Printed
per variant: ADL's value at step 0 (the run's own tap), the mean weighted-term gradient norms over the measured
steps (``gn_*`` columns of log.csv) and ADL's share of them, and on held-out pairs (made with another seed, degraded
with seed 0): PSNR-Y of the one-step output, and two token-diversity measures of the final student on the last
single block (block-output cosine to the mean token, and mean squared cosine of the centred tokens; lower is more
diverse). Writes the table as Markdown to ``OUT/adl_taps.md``.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import torch

from fluxsr.data.degrade import degrade_to_input
from fluxsr.evaluation.psnr_ssim import psnr
from fluxsr.losses.adl import ADLCollector
from fluxsr.model.flow import one_step
from fluxsr.model.loader import load_model
from fluxsr.model.model import velocity
from fluxsr.training.loop import train
from fluxsr.training.pairs import complete_indices, generate_pairs, load_pair
from fluxsr.training.recipe import load_recipe

ROOT = Path(__file__).resolve().parents[1]
BASE = [
    "pairs.count=16",
    "pairs.resolution=64",
    "pairs.steps=4",
    "train.batch_size=2",
    "train.validate_every=0",
]
VARIANTS = {
    "no ADL": ["loss.adl=0"],
    "block": ["loss.adl_tap=block"],
    "attention": ["loss.adl_tap=attention"],
    "centred": ["loss.adl_tap=centred"],
}


@torch.no_grad()
def heldout_scores(final: Path, recipe, heldout: Path) -> dict[str, float]:
    """Mean PSNR-Y and token diversity (block cosine, centred squared cosine; last single block) on held-out pairs."""
    model = load_model(str(final))
    t_l = model.spec.t_l
    scores = {"psnr_y": [], "block_cos": [], "centred_cos2": []}
    taps = {"block_cos": "block", "centred_cos2": "centred"}
    collectors = {k: ADLCollector(model.transformer, "single:-1", tap).attach() for k, tap in taps.items()}
    for i in complete_indices(heldout):
        x0 = load_pair(heldout, i)["image"][None]
        _, lr_up = degrade_to_input(x0, recipe.degradation, torch.Generator().manual_seed(0))
        z_l = model.encode(lr_up).float()
        sr = model.decode(one_step(z_l, velocity(model, z_l, t_l).float(), t_l)).float().clamp(0, 1)
        scores["psnr_y"].append(float(psnr(sr, x0, y_channel=True)))
        for key, adl in collectors.items():
            scores[key].append(float(adl.loss()))
    return {k: sum(v) / len(v) for k, v in scores.items()}


def log_summary(run: Path) -> dict[str, float]:
    """ADL at step 0 and the mean gradient norms of the weighted terms over the measured steps."""
    rows = list(csv.DictReader((run / "log.csv").open()))
    measured = [r for r in rows if r.get("gn_ftd")]
    out = {"adl_step0": float(rows[0]["adl"]), "loss_last": float(rows[-1]["loss"])}
    for term in ("ftd", "mse", "lpips", "adl"):
        out[f"gn_{term}"] = sum(float(r[f"gn_{term}"]) for r in measured) / len(measured)
    others = out["gn_ftd"] + out["gn_mse"] + out["gn_lpips"]
    out["adl_share"] = out["gn_adl"] / (others + out["gn_adl"])
    out["adl_step0_share"] = float(measured[0]["gn_adl"]) / sum(
        float(measured[0][f"gn_{t}"]) for t in ("ftd", "mse", "lpips", "adl")
    )
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--adl", type=float, default=0.01, help="loss.adl for the ADL runs")
    args = ap.parse_args()
    torch.set_num_threads(1)
    tiny = ROOT / "configs" / "tiny.yaml"
    common = [
        *BASE,
        f"train.steps={args.steps}",
        f"train.checkpoint_every={args.steps}",
        "train.log_every=10",
    ]
    common += ["train.grad_norm_every=10", f"loss.adl={args.adl}"]
    pairs, heldout = args.out / "pairs", args.out / "heldout"
    generate_pairs(load_recipe(tiny, common), pairs, device="cpu", progress=False)
    held = load_recipe(tiny, [*common, "pairs.count=8", "pairs.seed=1000"])
    generate_pairs(held, heldout, device="cpu", progress=False)
    lines = [
        f"{args.steps} steps, loss.adl {args.adl}",
        "",
        "| variant | ADL step 0 | gn FTD | gn MSE | gn TV-LPIPS | gn ADL | ADL share (step 0 / mean) | "
        "held-out PSNR-Y | block cos | centred cos^2 |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, overrides in VARIANTS.items():
        recipe = load_recipe(tiny, [*common, *overrides])
        run = args.out / f"run_{name.replace(' ', '_')}"
        if not (run / "final").is_dir():
            train(recipe, pairs, run, progress=False)
        s, h = log_summary(run), heldout_scores(run / "final", recipe, heldout)
        lines.append(
            f"| {name} | {s['adl_step0']:.4f} | {s['gn_ftd']:.3g} | {s['gn_mse']:.3g} | {s['gn_lpips']:.3g} | "
            f"{s['gn_adl']:.3g} | {s['adl_step0_share']:.2%} / {s['adl_share']:.2%} | {h['psnr_y']:.3f} | "
            f"{h['block_cos']:.4f} | {h['centred_cos2']:.4f} |"
        )
        print(lines[-1], flush=True)
    (args.out / "adl_taps.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
