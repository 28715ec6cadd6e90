"""Low-VRAM rows of scripts/gpu_bench.sh (issue #13): one FLUX.1-dev-shaped upscale (random weights, 1024^2 ->
4096^2) under a memory budget enforced with ``torch.cuda.set_per_process_memory_fraction``, with an offload mode
and a weight quantisation; one JSON row per run, and a markdown table of all rows.

    python scripts/lowvram_bench.py row --name 12g-blocks --budget 12GiB --offload blocks --json OUT/12g-blocks.json
    python scripts/lowvram_bench.py table OUT/lowvram-*.json      # rows as a table, times against the 'base' row

A row without --budget is the unconstrained reference (the model stays on the GPU as ``fluxsr bench`` has it).
With a budget, the random weights are made on the GPU (fast), moved to CPU RAM, the cache emptied, the fraction set
(budget / total memory), then the pipeline places them (offload, quantisation, planner told the same budget as
``max_memory``). Each row runs the upscale ``--repeat`` times (the first warms up) and reports the last run's time
and the peak allocated memory of all runs. Smoke test on the CPU: ``--model tiny --device cpu --size 32``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from fluxsr.inference.memory import GiB, parse_bytes
from fluxsr.inference.pipeline import FluxSRPipeline, UpscaleOptions
from fluxsr.model.loader import load_model
from fluxsr.model.model import to_device


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    row = sub.add_parser("row", help="measure one row, write it as JSON")
    row.add_argument("--name", required=True)
    row.add_argument("--json", type=Path, required=True)
    row.add_argument("--budget", type=parse_bytes, default=None, help="e.g. 24GiB; none: unconstrained")
    row.add_argument("--offload", default="none")
    row.add_argument("--quantize", default="none")
    row.add_argument("--model", default="flux-dev-random")
    row.add_argument("--device", default="cuda")
    row.add_argument("--size", type=int, default=1024, help="input edge (the output is 4x)")
    row.add_argument("--repeat", type=int, default=2)
    table = sub.add_parser("table", help="print the rows as a markdown table")
    table.add_argument("rows", type=Path, nargs="+")
    return p.parse_args(argv)


def build(args: argparse.Namespace) -> FluxSRPipeline:
    """The pipeline of one row, the budget enforced on the device before the weights are placed."""
    device, dtype = torch.device(args.device), torch.bfloat16
    model = load_model(args.model, device=device if args.model == "flux-dev-random" else None, dtype=dtype)
    if args.budget is not None and device.type == "cuda":
        to_device(model, "cpu", dtype)
        torch.cuda.empty_cache()
        total = torch.cuda.get_device_properties(device).total_memory
        torch.cuda.set_per_process_memory_fraction(min(1.0, args.budget / total), device)
    low_vram = {"offload": args.offload, "quantize": args.quantize, "max_memory": args.budget}
    return FluxSRPipeline(model, device, dtype, **low_vram)


def measure(pipe: FluxSRPipeline, size: int, repeat: int) -> dict:
    """Upscale one random ``size``^2 image x4 ``repeat`` times; the last run's seconds and the peak memory."""
    rgb = torch.rand(3, size, size, generator=torch.Generator().manual_seed(0))
    opts = UpscaleOptions(scale=4, tile_batch=0)
    cuda = pipe.device.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats(pipe.device)
    seconds = 0.0
    for _ in range(max(1, repeat)):
        start = time.perf_counter()
        pipe.upscale_tensor(rgb, opts)
        if cuda:
            torch.cuda.synchronize(pipe.device)
        seconds = time.perf_counter() - start
    plan = pipe.plan
    return {
        "seconds": round(seconds, 3),
        "peak_gib": round(torch.cuda.max_memory_allocated(pipe.device) / GiB, 2) if cuda else None,
        "tile": plan.tile,
        "batch": plan.batch,
        "retries": len(plan.retries),
    }


def run_row(args: argparse.Namespace) -> dict:
    """One row: placement, measurement, or why it could not run (a refusal or an out-of-memory error)."""
    row = {"name": args.name, "budget_gib": args.budget / GiB if args.budget else None}
    row |= {"offload": args.offload, "quantize": args.quantize, "status": "ok"}
    try:
        pipe = build(args)
        row |= {"chosen": pipe.placement.offload, "placement": pipe.placement.describe()}
        row |= measure(pipe, args.size, args.repeat)
    except (ValueError, torch.cuda.OutOfMemoryError, RuntimeError) as e:
        row["status"] = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    return row


def table(rows: list[dict]) -> str:
    """Markdown: one line per row, time as a multiple of the unconstrained ('base') row's."""
    base = next((r["seconds"] for r in rows if r["name"] == "base" and r.get("seconds")), None)
    lines = [
        "| row | budget | offload (chosen) | quantize | tile x batch | time | x base | peak GiB | status |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        budget = f"{r['budget_gib']:g} GiB" if r.get("budget_gib") else "none"
        ok = "seconds" in r
        tiles = (
            f"{r['tile']} x {r['batch']}" + (f" ({r['retries']} retries)" if r["retries"] else "")
            if ok
            else ""
        )
        ratio = f"{r['seconds'] / base:.2f}" if ok and base else ""
        seconds = f"{r['seconds']:.2f} s" if ok else ""
        lines.append(
            f"| {r['name']} | {budget} | {r['offload']} ({r.get('chosen', '-')}) | {r['quantize']} | "
            f"{tiles} | {seconds} | {ratio} | "
            f"{r.get('peak_gib') or ''} | {r['status']} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.command == "table":
        done = sorted((p for p in args.rows if p.is_file()), key=lambda p: p.stat().st_mtime)  # in run order
        print(table([json.loads(p.read_text()) for p in done]))
        return 0
    row = run_row(args)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(row, indent=1))
    print(json.dumps(row))
    return 0 if row["status"] == "ok" else 1


if __name__ == "__main__":
    sys.exit(main())
