"""``fluxsr export``: a Hub-ready folder (weights, ``fluxsr.json``, model card, recipe, results, SHA256SUMS) from a
model folder or a training run (docs/sharing.md)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def cmd_export(args: argparse.Namespace) -> int:
    from ..training.hub_export import export_for_hub  # accelerate and peft: loaded by this command only

    out = export_for_hub(
        args.src,
        args.out,
        checkpoint=args.checkpoint,
        results=args.results,
        base=args.base,
        repo_id=args.repo_id,
        overwrite=args.overwrite,
    )
    repo = args.repo_id or "YOUR_NAME/MODEL"
    print(f"{out}  (upload: hf upload {repo} {out} .; use: fluxsr upscale IMG -o OUT --model {repo})")
    print("check the model card before uploading: " + str(out / "README.md"), file=sys.stderr)
    return 0


def add_export(sub) -> None:
    """``fluxsr export``."""
    p = sub.add_parser(
        "export",
        help="write a Hugging Face Hub-ready folder (weights, model card, recipe, results, SHA256SUMS) from a "
        "model folder or a training run",
    )
    p.add_argument("src", type=Path, help="a fluxsr model folder or a `fluxsr train` run folder (its final/)")
    p.add_argument("out", type=Path, help="the folder to write (refused when not empty, unless --overwrite)")
    p.add_argument(
        "--checkpoint",
        default=None,
        help="export this checkpoint of the run instead of final/ (step_0000100, 100 or a path)",
    )
    p.add_argument(
        "--results",
        type=Path,
        default=None,
        help="measured results for the card: a `fluxsr eval --json` report or a benchmark.json",
    )
    p.add_argument(
        "--base",
        default=None,
        help="LoRA-only models: the Hub repo id of the base weights (e.g. black-forest-labs/FLUX.1-dev)",
    )
    p.add_argument(
        "--repo-id", default=None, help="the Hub repo it will be uploaded to (org/name; for the card's usage)"
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the files of an earlier export in OUT (files it did not write are left alone)",
    )
    p.set_defaults(func=cmd_export)
