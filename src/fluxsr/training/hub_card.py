"""The model card (``README.md``) of a Hub-ready fluxsr folder: YAML front matter the Hub reads, then Markdown.

Front matter (docs/sharing.md): ``license`` (FLUX.1-dev's non-commercial licence, as ``other`` with its name and
link, for a model derived from FLUX.1-dev; the project's Apache-2.0 otherwise), ``base_model`` and
``base_model_relation`` (``adapter`` for a LoRA-only folder, ``finetune`` for full weights trained from FLUX.1-dev;
absent for a model trained from scratch), ``pipeline_tag: image-to-image``, ``library_name: fluxsr`` and ``tags``.
The body: what the model is, its licence, how to use it by repo id, its settings, the measured results of
``fluxsr eval`` / ``fluxsr benchmark`` when given, the training recipe when the source has one, and its files.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import yaml

FLUX_DEV_REPO = "black-forest-labs/FLUX.1-dev"
FLUX_DEV_LICENSE = {
    "license": "other",
    "license_name": "flux-1-dev-non-commercial-license",
    "license_link": "https://huggingface.co/black-forest-labs/FLUX.1-dev/blob/main/LICENSE.md",
}
PROJECT_LICENSE = {"license": "apache-2.0"}
"""fluxsr's own licence (pyproject.toml), for models that hold no FLUX.1-dev weights (the bundled one)."""
TAGS = ("super-resolution", "image-upscaling", "fluxsr", "one-step")


@dataclass
class CardFacts:
    """What the card says about one exported model.

    spec: the folder's ``fluxsr.json`` as written to the export. repo_id: where it will live on the Hub (used in
    the usage lines). derived: holds or adapts FLUX.1-dev weights. base_model: the Hub repo a LoRA-only folder
    applies to (``spec['base']``) or FLUX.1-dev for derived full weights. source: one line on what was exported
    (a model folder, a run's final model, a checkpoint). recipe: the training recipe's YAML text. results: a
    ``fluxsr eval --json`` report or a ``benchmark.json``. files: (relative path, bytes) of the weights and configs.
    """

    spec: dict
    repo_id: str
    derived: bool
    lora_only: bool = False
    base_model: str | None = None
    source: str = ""
    recipe: str | None = None
    results: dict | None = None
    files: list[tuple[str, int]] = field(default_factory=list)


def front_matter(facts: CardFacts) -> dict:
    """The card's metadata block, as the Hub reads it."""
    meta: dict = dict(FLUX_DEV_LICENSE if facts.derived else PROJECT_LICENSE)
    if facts.base_model:
        meta["base_model"] = facts.base_model
        meta["base_model_relation"] = "adapter" if facts.lora_only else "finetune"
    meta["pipeline_tag"] = "image-to-image"
    meta["library_name"] = "fluxsr"
    extra = ("flux", "lora") if facts.lora_only else ("flux",) if facts.derived else ()
    meta["tags"] = [*TAGS, *extra]
    return meta


def licence_text(facts: CardFacts) -> str:
    if facts.derived:
        return (
            f"This model is derived from [FLUX.1-dev](https://huggingface.co/{FLUX_DEV_REPO}) and carries its "
            f"licence, the [FLUX.1 [dev] Non-Commercial License]({FLUX_DEV_LICENSE['license_link']}): "
            "non-commercial use only, under its terms."
        )
    return "This model holds no FLUX.1-dev weights; it is released under fluxsr's licence, Apache-2.0."


def usage_text(facts: CardFacts) -> str:
    gated = (
        f"\nThe base weights ({facts.base_model}) are fetched on first use; "
        f"{FLUX_DEV_REPO} is gated: accept its licence on the Hub and log in (`hf auth login`) first.\n"
        if facts.lora_only
        else ""
    )
    return f"""With fluxsr installed, load it by its repo id (only the files fluxsr needs are downloaded, once;
`HF_HUB_OFFLINE=1` then works from the cache):

```bash
fluxsr upscale photo.jpg -o out/ --model {facts.repo_id}
```

```python
from PIL import Image
from fluxsr import FluxSRPipeline

pipe = FluxSRPipeline.from_pretrained("{facts.repo_id}")
pipe(Image.open("photo.jpg"), scale=4).save("photo_x4.png")
```
{gated}"""


def settings_table(spec: dict) -> str:
    rows = [
        ("T_L (flow time of the input latent)", spec.get("t_l")),
        ("guidance", spec.get("guidance")),
        ("default tile / overlap (output px)", f"{spec.get('tile')} / {spec.get('overlap')}"),
    ]
    if spec.get("base"):
        rows.append(("base weights", f"`{spec['base']}`"))
    return "| setting | value |\n|---|---|\n" + "".join(f"| {k} | {v} |\n" for k, v in rows)


def number(value) -> str:
    return "-" if value is None or (isinstance(value, float) and not math.isfinite(value)) else f"{value:.4g}"


def results_rows(doc: dict) -> list[tuple[str, dict]]:
    """(label, mean scores) per method: one for a ``fluxsr eval --json`` report, one per method of a
    ``benchmark.json``; ValueError for any other document."""
    if isinstance(doc.get("mean"), dict):
        return [("this model", doc["mean"])]
    methods = doc.get("methods")
    if isinstance(methods, list) and all(
        isinstance(m, dict) and isinstance(m.get("mean"), dict) for m in methods
    ):
        return [(str(m.get("label") or m.get("name") or m.get("key")), m["mean"]) for m in methods]
    raise ValueError("not a `fluxsr eval --json` report nor a `fluxsr benchmark` benchmark.json")


def results_text(doc: dict) -> str:
    """The results table with the settings they were measured under."""
    rows = results_rows(doc)
    lower = {m.get("name"): m.get("lower_better") for m in doc.get("metrics", []) if isinstance(m, dict)}
    names = list(dict.fromkeys(k for _, mean in rows for k in mean))
    heads = [f"{n} {'(lower is better)' if lower.get(n) else '(higher is better)'}" for n in names]
    table = "| method | " + " | ".join(heads) + " |\n|---|" + "---|" * len(names) + "\n"
    table += "".join(
        f"| {label} | " + " | ".join(number(mean.get(n)) for n in names) + " |\n" for label, mean in rows
    )
    dataset = doc.get("dataset", {}).get("name") if isinstance(doc.get("dataset"), dict) else None
    count = doc.get("count") if dataset is None else doc["dataset"].get("images")
    how = ", ".join(
        f"{k} {v}"
        for k, v in (
            ("data set", dataset),
            ("images", count),
            ("scale", doc.get("scale")),
            ("protocol", doc.get("protocol")),
            ("crop border", doc.get("crop_border")),
        )
        if v is not None
    )
    return f"Measured with fluxsr ({how}; full report: `results.json`).\n\n{table}"


def render_card(facts: CardFacts) -> str:
    """The whole ``README.md``: front matter, then the sections."""
    spec = facts.spec
    parts = [
        "---\n" + yaml.safe_dump(front_matter(facts), sort_keys=False) + "---\n",
        f"# {spec.get('name') or facts.repo_id}\n",
        f"{spec.get('description') or 'A FluxSR one-step x4 super-resolution model.'}\n\n"
        "FluxSR: one-step real-world super-resolution by flow trajectory distillation of FLUX.1-dev "
        "(Li et al., ICML 2025, arXiv 2502.01993), in the fluxsr implementation.\n",
        f"{facts.source}\n" if facts.source else "",
        f"## Licence\n\n{licence_text(facts)}\n",
        f"## Usage\n\n{usage_text(facts)}",
        f"## Settings (`fluxsr.json`)\n\n{settings_table(spec)}",
    ]
    if spec.get("note"):
        parts.append(f"Note: {spec['note']}\n")
    if facts.results is not None:
        parts.append(f"## Results\n\n{results_text(facts.results)}")
    if facts.recipe is not None:
        parts.append(f"## Training recipe (`recipe.yaml`)\n\n```yaml\n{facts.recipe.rstrip()}\n```\n")
    files = "".join(f"| `{name}` | {size:,} |\n" for name, size in facts.files)
    parts.append(
        "## Files\n\n| file | bytes |\n|---|---|\n"
        + files
        + "\nCheck a download with `sha256sum -c SHA256SUMS`.\n"
    )
    return "\n".join(parts)
