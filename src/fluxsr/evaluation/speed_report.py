"""Reports of the speed bench (``fluxsr bench``): one log line per row, the Markdown table (ms, medians) and the
JSON file (written atomically after every row)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..inference import memory

COLUMNS = ("read", "resize", "encode", "transformer", "decode", "color_fix", "net", "write")


def _ms(v: float | None) -> str:
    return "" if v is None else (f"{v:.0f}" if v >= 100 else f"{v:.1f}")


def format_row(row: dict) -> str:
    """One log line per row."""
    head = f"{row['row']} @ {row['in_size']}->{row['size']}"
    if "skipped" in row or "error" in row:
        return f"{head}: {row.get('skipped') or row.get('error')}"
    st = " ".join(f"{k} {_ms(v)}" for k, v in row["stages_ms"].items())
    line = f"{head}: {st} | total {_ms(row['total_ms'])} ms, peak {memory.format_bytes(row['peak_bytes'])}"
    if "seam_ratio" in row:
        line += f" | seam ratio {_number(row['seam_ratio'])}, tiled PSNR {_number(row['tiled_psnr'])} dB"
    return line


def _number(v: float | None, digits: int = 3) -> str:
    return "–" if v is None else f"{v:.{digits}f}"


def seam_markdown(rows: list[dict]) -> str:
    """The seam columns (``fluxsr bench --seams``) of the rows that have them, as a table after the timing table;
    empty when no row has them."""
    rows = [r for r in rows if "seam_ratio" in r]
    if not rows:
        return ""
    lines = [
        "| size | row | tiles (overlap) | seam ratio | tiled vs untiled PSNR (dB) |",
        "|---|---|---|---:|---:|",
    ]
    for r in rows:
        tiles = f"{r['seam_tile']} ({r['seam_overlap']})" if r.get("seam_tile") else ""
        lines.append(
            f"| {r['in_size']}->{r['size']} | {r['row']} | {tiles} | {_number(r['seam_ratio'])} | "
            f"{_number(r['tiled_psnr'], 2)} |"
        )
    head = ["", "Seams (seam ratio: 1.0 = tile boundaries invisible; docs/performance.md):", ""]
    return "\n".join([*head, *lines]) + "\n"


def to_markdown(result: dict[str, Any]) -> str:
    """The environment, notes and one table (ms, medians) of every row."""
    env = result["env"]
    lines = [
        f"Device: {env['device_name']} ({env['device']}), dtype {env['dtype']}, torch {env['torch']}, "
        f"diffusers {env['diffusers']}, python {env['python']}"
        + (
            f", model {env['model']} ({env['weight_bytes'] / 1e9:.2f} GB weights, text {env['text_len']} tokens)"
            if "model" in env
            else ""
        ),
        f"Medians of {result['config']['repeat']} runs after {result['config']['warmup']} warm-up; FLOP floor at "
        f"{result['config']['peak_tflops']:g} TFLOP/s.",
        "",
    ]
    lines += [f"- {n}" for n in result["notes"]] + ([""] if result["notes"] else [])
    head = [
        "size",
        "row",
        "tile",
        *(f"{c} (ms)" for c in COLUMNS),
        "GPU work (ms)",
        "total (ms)",
        "peak",
        "peak - start",
        "floor (ms)",
        "x floor",
    ]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in result["rows"]:
        size = f"{row['in_size']}->{row['size']}"
        if "skipped" in row or "error" in row:
            lines.append(
                f"| {size} | {row['row']} | "
                + (row.get("skipped") or row.get("error"))[:120]
                + " |" * (len(head) - 2)
            )
            continue
        st, a = row["stages_ms"], row.get("analytic") or {}
        tile = (
            f"{row['tile']}"
            + (f" x{row['tile_batch']}" if (row.get("tile_batch") or 1) > 1 else "")
            + (" (input)" if row.get("tile_unit") == "input px" else "")
            if row.get("tile")
            else ""
        )
        cells = [
            size,
            row["row"],
            tile,
            *(_ms(st.get(c)) for c in COLUMNS),
            _ms(row.get("gpu_work_ms")),
            _ms(row["total_ms"]),
            memory.format_bytes(row["peak_bytes"]),
            memory.format_bytes(row["peak_above_start_bytes"]),
            f"{a['floor_ms']:.3g}" if a else "",
            f"{row['x_floor']:.3g}" if row.get("x_floor") else "",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n" + seam_markdown(result["rows"])


def write_json(result: dict[str, Any], path: Path) -> None:
    """Write the result as JSON (atomically, so a partial run always leaves a readable file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(result, indent=2, default=str) + "\n")
    tmp.replace(path)
