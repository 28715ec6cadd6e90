#!/usr/bin/env python3
"""Peak host memory of loading FLUX-width weights and upscaling in bf16 (issue #13's host-RAM target).

    python scripts/measure_load_rss.py --make /tmp/fluxw          # write the folders (seconds, ~3 GB on disk)
    python scripts/measure_load_rss.py --measure /tmp/fluxw       # diffusers folder and BFL single file
    python scripts/measure_load_rss.py --ranks 2 /tmp/fluxw       # what each `accelerate launch` process holds

``--make`` writes, with random weights in bf16, a FLUX.1-dev-WIDTH model: the transformer at FLUX.1-dev's width
(3072 hidden = 24 heads x 128, 4096-dim T5 context, 768-dim pooled CLIP, rotary axes 16/56/56, guidance embedding)
with 1 double and 2 single blocks instead of 19 and 38, the real FLUX VAE config, and 16-token prompt embeddings,
in both layouts fluxsr loads: ``DIR/diffusers`` (transformer/, vae/, prompt_embeds.safetensors) and ``DIR/bfl``
(flux1-dev.safetensors with BFL key names, ae.safetensors in the LDM layout, prompt_embeds.safetensors).

``--measure`` runs ``fluxsr upscale --flux ... --dtype bf16 --device cpu`` on a 64x64 image for each layout and
samples ``/proc/PID/status`` VmRSS every 50 ms (the kernel's own high-water mark under-reports on these VMs), and
prints the peak against the target ``1.25 x bf16 weight bytes + 0.8 GB`` (process overhead: torch, diffusers).

``--ranks N`` launches N CPU processes with ``accelerate launch`` that each load both layouts as gen-pairs loads its
teacher (``load_model(dtype=bf16)``) and then read every weight, as the teacher's copy to its GPU would (on a CPU
that copy itself is left out: accelerate names the CPU ``cpu:0``, so ``.to`` would copy into host memory what on a
GPU machine goes to the GPU). Each process reports, from ``/proc/self/status`` and ``/proc/self/smaps_rollup``, its private
memory (RssAnon), its file-backed memory (RssFile: the memory-mapped weights, pages of the page cache shared by
every process) and its proportional share (Pss: shared pages divided among the processes that map them), as
growth over what it held before the load.
"""

from __future__ import annotations

import argparse
import json
import os
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OVERHEAD_BYTES = 0.8e9
TARGET_FACTOR = 1.25


def make(out: Path) -> None:
    import torch
    from safetensors.torch import save_file

    from fluxsr.model.bfl_keys import diffusers_to_bfl, vae_to_ldm
    from fluxsr.model.presets import FLUX_DEV_TRANSFORMER, FLUX_VAE, build_transformer, build_vae, random_cond

    torch.manual_seed(0)
    transformer = build_transformer(dict(FLUX_DEV_TRANSFORMER, num_layers=1, num_single_layers=2)).to(
        torch.bfloat16
    )
    vae = build_vae(FLUX_VAE).to(torch.bfloat16)
    cond = random_cond(transformer, 16).to(dtype=torch.bfloat16)
    diff = out / "diffusers"
    transformer.save_pretrained(diff / "transformer", safe_serialization=True)
    vae.save_pretrained(diff / "vae", safe_serialization=True)
    cond.save(diff / "prompt_embeds.safetensors")
    bfl = out / "bfl"
    bfl.mkdir(parents=True, exist_ok=True)
    save_file(
        {k: v.contiguous() for k, v in diffusers_to_bfl(transformer.state_dict()).items()},
        str(bfl / "flux1-dev.safetensors"),
    )
    ldm = vae_to_ldm(vae.state_dict(), len(FLUX_VAE["block_out_channels"]))
    save_file({k: v.contiguous() for k, v in ldm.items()}, str(bfl / "ae.safetensors"))
    cond.save(bfl / "prompt_embeds.safetensors")
    print(json.dumps({"written": str(out), "weight_bytes": weight_bytes(diff)}))


def weight_bytes(folder: Path) -> int:
    """Bytes of tensor data in the safetensors files of a layout (prompt embeddings included): each file's size less
    its 8-byte header length and the JSON header."""
    total = 0
    for f in folder.rglob("*.safetensors"):
        with f.open("rb") as fh:
            header = struct.unpack("<Q", fh.read(8))[0]
        total += f.stat().st_size - 8 - header
    return total


def rss_bytes(pid: int) -> int:
    """VmRSS of a process and its children, from /proc."""
    total = 0
    for p in [pid, *children(pid)]:
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
        except OSError:
            pass
    return total


def children(pid: int) -> list[int]:
    try:
        kids = [int(x) for x in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []
    return kids + [g for k in kids for g in children(k)]


def peak_rss(cmd: list[str]) -> tuple[int, float, int]:
    """(peak VmRSS in bytes, seconds, exit code) of a command, sampled every 50 ms."""
    tic = time.perf_counter()
    with tempfile.TemporaryFile("w+") as err:  # a file, not a pipe: a chatty child cannot fill it and block
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err, text=True)
        peak = 0
        while proc.poll() is None:
            peak = max(peak, rss_bytes(proc.pid))
            time.sleep(0.05)
        if proc.returncode:
            err.seek(0)
            print(err.read(), file=sys.stderr)
    return peak, time.perf_counter() - tic, proc.returncode


def measure(folder: Path) -> list[dict]:
    import numpy as np
    from PIL import Image

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        img = Path(tmp) / "in.png"
        Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(img)
        for layout, target in (
            ("diffusers", folder / "diffusers"),
            ("bfl", folder / "bfl" / "flux1-dev.safetensors"),
        ):
            weights = weight_bytes(folder / layout)
            cmd = [
                sys.executable,
                "-m",
                "fluxsr.cli",
                "upscale",
                str(img),
                "-o",
                str(Path(tmp) / layout),
                "--flux",
                str(target),
                "--dtype",
                "bf16",
                "--device",
                "cpu",
                "--overwrite",
            ]
            peak, seconds, rc = peak_rss(cmd)
            limit = TARGET_FACTOR * weights + OVERHEAD_BYTES
            rows.append(
                {
                    "layout": layout,
                    "weight_gb": round(weights / 1e9, 3),
                    "peak_rss_gb": round(peak / 1e9, 3),
                    "target_gb": round(limit / 1e9, 3),
                    "ratio_after_overhead": round((peak - OVERHEAD_BYTES) / weights, 2),
                    "meets_target": peak <= limit,
                    "seconds": round(seconds, 1),
                    "exit": rc,
                }
            )
            print(json.dumps(rows[-1]), flush=True)
    return rows


def memory_mb() -> dict[str, float]:
    """This process's RssAnon, RssFile (/proc/self/status) and Pss (/proc/self/smaps_rollup), in MB."""
    out = {}
    for source, keys in (("status", ("RssAnon", "RssFile")), ("smaps_rollup", ("Pss",))):
        for line in Path(f"/proc/self/{source}").read_text().splitlines():
            key = line.split(":")[0]
            if key in keys:
                out[key] = int(line.split()[1]) / 1024
    return out


def rank_load(folder: Path) -> None:
    """One process of ``--ranks``: load each layout in bf16, read every weight, report."""
    import torch
    from accelerate import PartialState

    from fluxsr.model.loader import load_model

    state = PartialState(cpu=not torch.cuda.is_available())  # as fluxsr gen-pairs and train: gloo on a CPU
    for layout, target in (
        ("diffusers", folder / "diffusers"),
        ("bfl", folder / "bfl" / "flux1-dev.safetensors"),
    ):
        state.wait_for_everyone()
        start = memory_mb()
        model = load_model(target, dtype=torch.bfloat16)
        loaded = memory_mb()
        with torch.no_grad():  # every weight read once: what a copy to the GPU does to the mapped pages
            total = sum(float(t.float().sum()) for t in model.transformer.state_dict().values())
        state.wait_for_everyone()  # all processes hold their pages before any measures its share
        read = memory_mb()
        row = {
            "rank": state.process_index,
            "layout": layout,
            "weight_gb": round(weight_bytes(folder / layout) / 1e9, 3),
        }
        for stage, mem in (("loaded", loaded), ("read", read)):
            row |= {f"{stage}_{k}_mb": round(mem[k] - start[k]) for k in ("RssAnon", "RssFile", "Pss")}
        print(json.dumps(row | {"checksum_finite": total == total}), flush=True)
        del model
        state.wait_for_everyone()


def ranks(folder: Path, count: int) -> int:
    """Launch ``count`` CPU processes running :func:`rank_load`; their JSON lines go to stdout."""
    cmd = [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(count),
        "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
        str(Path(__file__).resolve()), "--rank-load", str(folder),
    ]  # fmt: skip
    return subprocess.run(cmd, check=False).returncode


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--make", type=Path, help="write the FLUX-width layouts into this folder")
    ap.add_argument("--measure", type=Path, help="measure peak RSS of both layouts in this folder")
    ap.add_argument(
        "--ranks", nargs=2, metavar=("N", "DIR"), help="memory held by each of N launched processes"
    )
    ap.add_argument("--rank-load", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.make:
        make(args.make)
    if args.measure:
        measure(args.measure)
    if args.rank_load:
        rank_load(args.rank_load)
    if args.ranks:
        return ranks(Path(args.ranks[1]), int(args.ranks[0]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
