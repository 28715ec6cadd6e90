"""Prompts for teacher sampling: from a text file, or a built-in generator of varied photographic prompts.

The generator composes ``"a photo of {subject} {place}, {light}, {camera}"`` from fixed word lists (40 subjects,
24 places, 16 lights, 12 camera styles: 184,320 combinations) with a seeded RNG, so prompt ``i`` of seed ``s`` is
always the same string. It aims at the content a real-world SR model meets: people, animals, buildings, text,
foliage, fabric, water, food and night scenes, in many lights and with several lenses.
"""

from __future__ import annotations

import hashlib
import random
from pathlib import Path

import torch

from ..model.model import TextCond

SUBJECTS = [
    "an old man with a grey beard",
    "a young woman laughing",
    "a child holding a balloon",
    "two friends talking",
    "a tabby cat",
    "a golden retriever",
    "a horse in a paddock",
    "a flock of pigeons",
    "a red fox",
    "a parrot",
    "a brick townhouse",
    "a glass office tower",
    "a gothic cathedral",
    "a wooden cabin",
    "a street market",
    "a vintage car",
    "a bicycle against a wall",
    "a steam locomotive",
    "a fishing boat",
    "a city bus",
    "a bowl of ramen",
    "a stack of pancakes",
    "fresh vegetables on a table",
    "a cup of coffee",
    "a birthday cake",
    "a bookshelf full of books",
    "a shop sign with painted letters",
    "a handwritten letter",
    "a chessboard",
    "a knitted sweater",
    "a bouquet of tulips",
    "an oak tree",
    "a field of sunflowers",
    "moss on rocks",
    "a waterfall",
    "ocean waves",
    "a mountain ridge",
    "a desert dune",
    "a snowy forest",
    "a city skyline",
]
PLACES = [
    "in a busy street",
    "in a quiet park",
    "in a kitchen",
    "in a library",
    "on a beach",
    "in a forest",
    "in the mountains",
    "in a small village",
    "in a train station",
    "in a living room",
    "in a garden",
    "by a lake",
    "in a harbour",
    "on a rooftop",
    "in a museum",
    "in a cafe",
    "in the snow",
    "in the rain",
    "at a night market",
    "in a workshop",
    "in a field",
    "on a bridge",
    "in an alley",
    "in a studio",
]
LIGHTS = [
    "soft morning light",
    "harsh midday sun",
    "golden hour",
    "blue hour",
    "overcast sky",
    "neon lights at night",
    "candle light",
    "window light",
    "backlit",
    "studio lighting",
    "foggy light",
    "dappled shade",
    "street lamps",
    "bright flash",
    "sunset glow",
    "moonlight",
]
CAMERAS = [
    "35mm film photo",
    "DSLR, 50mm lens",
    "wide-angle lens",
    "telephoto lens",
    "macro photo",
    "smartphone photo",
    "medium format",
    "documentary style",
    "portrait lens, shallow depth of field",
    "high detail, sharp focus",
    "street photography",
    "landscape photography",
]


def generate_prompts(n: int, seed: int = 0) -> list[str]:
    """``n`` photographic prompts; prompt ``i`` depends only on ``(seed, i)``."""
    out = []
    for i in range(n):
        rng = random.Random(f"{seed}:{i}")
        out.append(
            f"a photo of {rng.choice(SUBJECTS)} {rng.choice(PLACES)}, {rng.choice(LIGHTS)}, "
            f"{rng.choice(CAMERAS)}"
        )
    return out


def read_prompts(path: Path) -> list[str]:
    """Non-empty, non-comment lines of a UTF-8 text file."""
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    prompts = [ln.strip() for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]
    if not prompts:
        raise ValueError(f"{path}: no prompts")
    return prompts


def prompt_for(index: int, prompts: list[str] | None, seed: int) -> str:
    """Prompt of pair ``index``: the file's prompts cycled, or the generator's."""
    if prompts:
        return prompts[index % len(prompts)]
    return generate_prompts(index + 1, seed)[index]


def hashed_cond(prompt: str, text_len: int, dim: int, pooled_dim: int):
    """Deterministic pseudo-embeddings for a model without text encoders (tiny/bundled teachers): a seeded normal
    draw keyed by the prompt's SHA-256, so equal prompts give equal conditioning."""
    seed = int.from_bytes(hashlib.sha256(prompt.encode()).digest()[:8], "little")
    g = torch.Generator().manual_seed(seed)
    return TextCond(
        torch.randn(1, text_len, dim, generator=g), torch.randn(1, pooled_dim, generator=g), prompt
    )
