"""Offline noise-image pairs for FTD (``fluxsr gen-pairs``).

Pair ``i`` is a folder-free triple in ``OUT``::

    000042.safetensors   eps and z0 latents (normalised VAE latents, float32)
    000042.png           the decoded image x0 (the HR training target)
    000042.json          index, prompt, seed, source, config hash: written LAST, it marks the pair complete

A pair is trusted only when its ``.json`` exists and its files are intact (:func:`pair_problem`: checked from the
safetensors header and the file sizes, not by decoding); every file is written to a temporary name and renamed, so a
killed run leaves nothing that a later run trusts, a rerun skips finished pairs and redoes damaged ones, and
``train`` refuses a folder with a damaged pair, naming it. Under ``accelerate launch``
process ``r`` of ``W`` takes the indices ``i`` with ``i % W == r``: no duplicates, no gaps. ``manifest.jsonl``
(one line per pair, sorted) is rebuilt from the ``.json`` files at the end.

Sources: ``teacher`` samples ``z0`` from ``eps = N(0, I)`` (seed ``seed + i``) with the teacher's Euler sampler
(the paper). ``photos`` is an extension beyond the paper: a real photo's latent ``z0`` is inverted through the
teacher's ODE to the ``eps`` it came from, so FTD can train on real images.
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict, replace
from pathlib import Path

import torch
from torch import Tensor
from tqdm import tqdm

from ..inference.pipeline import default_dtype, resolve_device
from ..io.cache import (
    DamagedFileError,
    atomic_save_safetensors,
    atomic_write_bytes,
    read_json,
    read_safetensors,
    safetensors_header,
)
from ..io.config import config_hash
from ..io.guards import check_inputs_apart
from ..io.images import ImageError, find_images, read_image, resize, write_image
from ..model.flow import denoise, get_noise, get_schedule, invert
from ..model.loader import load_model
from ..model.model import FluxSRModel, TextCond, to_device, velocity
from ..model.text import TextEncoders
from .prompts import hashed_cond, prompt_for, read_prompts
from .recipe import PairsSection, Recipe, input_paths

MANIFEST = "manifest.jsonl"
LATENTS = ("eps", "z0")
PNG_END = b"\x00\x00\x00\x00IEND\xaeB`\x82"  # the empty IEND chunk every complete PNG ends with


def pair_stem(out: Path, index: int) -> Path:
    return Path(out) / f"{index:06d}"


def read_marker(out: Path, index: int) -> dict:
    """The ``.json`` marker of pair ``index``; :class:`DamagedFileError` naming it unless it is a JSON object."""
    path = pair_stem(out, index).with_suffix(".json")
    meta = read_json(path, "damaged pair marker")
    if not isinstance(meta, dict):
        raise DamagedFileError(
            f"{path}: damaged pair marker, a JSON {type(meta).__name__} (expected an object)"
        )
    return meta


def png_is_whole(path: Path) -> bool:
    """Whether a PNG file ends with its IEND chunk (a cut-short file does not); reads the last 12 bytes only."""
    with open(path, "rb") as f:
        if f.seek(0, 2) < len(PNG_END):
            return False
        f.seek(-len(PNG_END), 2)
        return f.read() == PNG_END


def pair_problem(out: Path, index: int) -> str | None:
    """What is wrong with pair ``index`` (a file missing or damaged, naming it), or None when it is complete.

    Cheap: the marker is parsed, the latents' safetensors header is checked against the file's size and must name
    eps and z0, the PNG must end with its IEND chunk; no tensor or pixel is decoded."""
    stem = pair_stem(out, index)
    for suffix in (".json", ".safetensors", ".png"):
        if not stem.with_suffix(suffix).is_file():
            return f"{stem.with_suffix(suffix)}: missing"
    try:
        read_marker(out, index)
        safetensors_header(stem.with_suffix(".safetensors"), LATENTS)
    except DamagedFileError as e:
        return str(e)
    if not png_is_whole(stem.with_suffix(".png")):
        return f"{stem.with_suffix('.png')}: damaged, cut short (no PNG end chunk)"
    return None


def is_complete(out: Path, index: int) -> bool:
    """A pair counts only when its marker and both data files exist and are intact (:func:`pair_problem`)."""
    return pair_problem(out, index) is None


def load_pair(out: Path, index: int) -> dict:
    """``{'eps', 'z0'}`` latents (1, C, h, w), ``'image'`` (3, H, W) in [0, 1] and the ``'meta'`` dict; a file that
    cannot be read is one error line naming it (:class:`DamagedFileError`, ``ImageError``)."""
    stem = pair_stem(out, index)
    lat, _ = read_safetensors(stem.with_suffix(".safetensors"), LATENTS)
    return {
        "eps": lat["eps"],
        "z0": lat["z0"],
        "image": read_image(stem.with_suffix(".png")).rgb,
        "meta": read_marker(out, index),
    }


def marked_indices(out: Path) -> list[int]:
    """Indices of the pairs in ``out`` that have a marker (complete or damaged), sorted."""
    return sorted(int(p.stem) for p in Path(out).glob("[0-9]*.json") if p.stem.isdigit())


def complete_indices(out: Path) -> list[int]:
    """Indices of all complete pairs in ``out``, sorted."""
    return [i for i in marked_indices(out) if is_complete(out, i)]


def damaged_pairs(out: Path) -> dict[int, str]:
    """``{index: what is wrong}`` for the pairs in ``out`` whose marker says complete but whose files are not."""
    found = {i: pair_problem(out, i) for i in marked_indices(out)}
    return {i: problem for i, problem in found.items() if problem is not None}


def check_intact(out: Path) -> None:
    """DamagedFileError naming the first damaged pair in ``out`` (and how many there are), with the way to redo them."""
    damaged = damaged_pairs(out)
    if damaged:
        first = next(iter(damaged.values()))
        more = f" (and {len(damaged) - 1} more damaged pair(s))" if len(damaged) > 1 else ""
        raise DamagedFileError(
            f"{first}{more}; rerun `fluxsr gen-pairs` with the same recipe and --out {out} to redo them"
        )


def write_manifest(out: Path) -> Path:
    """Rebuild ``manifest.jsonl`` from the per-pair markers (sorted by index)."""
    lines = [pair_stem(out, i).with_suffix(".json").read_text().strip() for i in complete_indices(out)]
    path = Path(out) / MANIFEST
    atomic_write_bytes(path, ("\n".join(lines) + "\n" if lines else "").encode())
    return path


def pairs_config_hash(recipe: Recipe) -> str:
    """Hash of what a pair's content depends on: the model and pairs sections, less ``pairs.count`` (pair ``i`` is
    the same whatever the count, so a rerun with a larger count extends a folder)."""
    pairs = asdict(recipe.pairs)
    pairs.pop("count")
    return config_hash({"model": asdict(recipe.model), "pairs": pairs})


def config_hashes(out: Path, indices: list[int] | None = None) -> dict[str, list[int]]:
    """``{config_hash: [indices]}`` of the complete pairs in ``out`` (``indices``: already known to be complete)."""
    found: dict[str, list[int]] = {}
    for i in complete_indices(out) if indices is None else indices:
        meta = read_marker(out, i)
        found.setdefault(str(meta.get("config_hash")), []).append(i)
    return found


def check_one_config(out: Path, expect: str | None = None, indices: list[int] | None = None) -> None:
    """Raise ValueError when ``out`` holds pairs made with different recipes (they cannot be batched together),
    or, given ``expect``, any pair made with another recipe than the one hashing to ``expect``."""
    found = config_hashes(out, indices)
    if expect is not None:
        other = {h: v for h, v in found.items() if h != expect}
        if other:
            raise ValueError(
                f"{out}: {sum(map(len, other.values()))} existing pairs were made with a different "
                f"config (hash {', '.join(other)}, now {expect}); use a new --out for the changed recipe"
            )
    elif len(found) > 1:
        parts = ", ".join(f"{h}: {len(v)} pairs (first {v[0]})" for h, v in sorted(found.items()))
        raise ValueError(
            f"{out}: pairs from {len(found)} different gen-pairs configs ({parts}); "
            "regenerate them into one new folder"
        )


class PromptEncoder:
    """Prompt -> :class:`TextCond` for the teacher: real T5/CLIP when the teacher folder has them, else deterministic
    pseudo-embeddings keyed by the prompt (models without text encoders: tiny, bundled)."""

    def __init__(self, teacher_path: str, model: FluxSRModel, text_len: int):
        self.model, self.text_len, self.encoder = model, text_len, None
        folder = Path(teacher_path)
        if folder.is_dir() and (folder / "text_encoder_2").is_dir():
            self.encoder = TextEncoders(folder, max_length=text_len)
        self.cache: dict[str, TextCond] = {}

    def __call__(self, prompt: str) -> TextCond:
        if prompt not in self.cache:
            if self.encoder is not None:
                self.cache[prompt] = self.encoder.encode(prompt)
            elif prompt == "" or self.model.cond.prompt == prompt:
                self.cache[prompt] = self.model.cond
            else:
                cfg = self.model.transformer.config
                length = self.model.cond.prompt_embeds.shape[1]
                self.cache[prompt] = hashed_cond(
                    prompt, length, cfg.joint_attention_dim, cfg.pooled_projection_dim
                )
        return self.cache[prompt]


def teacher_sample(
    teacher: FluxSRModel, cond: TextCond, eps: Tensor, steps: int, guidance: float, shift: bool
) -> Tensor:
    """The teacher's Euler sampler from noise ``eps`` to a clean latent ``z0`` (FLUX.1-dev schedule)."""
    model = replace(teacher, cond=cond)
    seq_len = eps.shape[-2] * eps.shape[-1] // 4
    ts = get_schedule(steps, seq_len, shift=shift)
    return denoise(lambda z, t: velocity(model, z, t, guidance=guidance).float(), eps, ts)


def teacher_invert(
    teacher: FluxSRModel, cond: TextCond, z0: Tensor, steps: int, guidance: float, shift: bool
) -> Tensor:
    """Invert the teacher's ODE from a clean latent ``z0`` back to its noise (photos source)."""
    model = replace(teacher, cond=cond)
    ts = get_schedule(steps, z0.shape[-2] * z0.shape[-1] // 4, shift=shift)
    return invert(lambda z, t: velocity(model, z, t, guidance=guidance).float(), z0, ts)


def center_crop_resize(rgb: Tensor, size: int) -> Tensor:
    """Square center crop of the largest side possible, resized to ``size`` (antialiased when shrinking)."""
    h, w = rgb.shape[-2:]
    s = min(h, w)
    top, left = (h - s) // 2, (w - s) // 2
    return resize(rgb[..., top : top + s, left : left + s], (size, size))


def generate_pairs(
    recipe: Recipe, out: Path, *, device=None, rank: int = 0, world: int = 1, progress: bool = True
) -> list[int]:
    """Make this process's share of the pairs in ``out``; returns the indices it wrote (finished ones skipped).
    A recipe input (photos, prompts, model) inside ``out`` is a ValueError: pairs could be written over it."""
    cfg, out = recipe.pairs, Path(out)
    chash = check_pairs_output(recipe, out)
    todo = pairs_to_do(out, cfg.count, rank, world)
    if not todo:
        return []
    device = resolve_device(device)
    teacher_path = recipe.model.teacher or recipe.model.base
    teacher = load_teacher(recipe, teacher_path, device)
    encoder = PromptEncoder(teacher_path, teacher, cfg.text_len)
    prompts = read_prompts(Path(cfg.prompts)) if cfg.prompts else None
    photos = pair_photos(cfg)
    check_resolution(cfg.resolution, teacher)
    written, skipped = [], []
    for i in tqdm(todo, desc=f"pairs[{rank}]", disable=not progress, file=sys.stderr):
        prompt = "" if cfg.source == "photos" else prompt_for(i, prompts, cfg.seed)
        try:
            eps, z0, image = make_pair(teacher, encoder(prompt), cfg, i, photos, device)
        except ImageError as e:
            print(f"warning: pair {i} skipped, unreadable photo {e}", file=sys.stderr)
            skipped.append(i)
            continue
        meta = {
            "index": i,
            "prompt": prompt,
            "seed": cfg.seed + i,
            "source": cfg.source,
            "config_hash": chash,
            "photo": str(photos[i]) if photos else None,
        }
        write_pair(out, i, eps, z0, image, meta)
        written.append(i)
    if skipped:
        print(f"warning: {len(skipped)} pair(s) skipped for unreadable photos: {skipped}", file=sys.stderr)
    return written


def check_pairs_output(recipe: Recipe, out: Path) -> str:
    """The recipe's pairs config hash, after refusing (ValueError) a photos source without photos, a recipe input
    inside ``out``, or pairs in ``out`` made with another recipe; creates ``out``."""
    if recipe.pairs.source == "photos" and not recipe.pairs.photos:
        raise ValueError("pairs.photos: required when pairs.source is 'photos'")
    check_inputs_apart(
        input_paths(recipe),
        [(out, "gen-pairs writes its pairs into (NNNNNN.png, .json, .safetensors)")],
        "choose a pairs folder (--out) that holds none of the recipe's inputs",
    )
    chash = pairs_config_hash(recipe)
    check_one_config(out, chash)
    out.mkdir(parents=True, exist_ok=True)
    return chash


def pairs_to_do(out: Path, count: int, rank: int, world: int) -> list[int]:
    """The indices process ``rank`` of ``world`` still has to make: those not finished, damaged ones included (their
    markers are removed first, with a warning, so a killed redo is not trusted)."""
    damaged = damaged_pairs(out)
    done = set(marked_indices(out)) - set(damaged)
    todo = [i for i in range(count) if i % world == rank and i not in done]
    for i in (i for i in todo if i in damaged):
        print(f"warning: redoing pair {i}: {damaged[i]}", file=sys.stderr)
        pair_stem(out, i).with_suffix(".json").unlink()  # the marker goes first and comes back last
    return todo


def load_teacher(recipe: Recipe, teacher_path: str, device: torch.device) -> FluxSRModel:
    """The teacher on ``device`` in its default dtype (bf16 on CUDA, fp32 elsewhere; the weights are read straight
    into it); ``model.ae`` applies only when the teacher is the base file it belongs to."""
    ae = recipe.model.ae if teacher_path == recipe.model.base else None
    dtype = default_dtype(device)
    teacher = load_model(teacher_path, ae=ae, device=device, dtype=dtype, text_len=recipe.pairs.text_len)
    return to_device(teacher, device, dtype)


def pair_photos(cfg: PairsSection) -> list[Path]:
    """The photos of a ``photos`` source, sorted (empty for ``teacher``); ValueError when fewer than ``count``."""
    if cfg.source != "photos":
        return []
    photos = sorted(find_images(Path(cfg.photos)))
    if len(photos) < cfg.count:
        raise ValueError(
            f"pairs.photos: {len(photos)} photos in {cfg.photos}, pairs.count asks for {cfg.count}"
        )
    return photos


def check_resolution(resolution: int, teacher: FluxSRModel) -> None:
    """ValueError unless ``resolution`` is a multiple of the teacher's image size multiple."""
    if resolution % teacher.multiple:
        raise ValueError(
            f"pairs.resolution: {resolution} is not a multiple of {teacher.multiple} "
            f"(the model's image size multiple)"
        )


@torch.inference_mode()
def make_pair(
    teacher: FluxSRModel, cond: TextCond, cfg: PairsSection, index: int, photos: list[Path], device
) -> tuple[Tensor, Tensor, Tensor]:
    """``(eps, z0, image)`` of pair ``index``: the teacher samples ``z0`` from seeded noise and decodes it, or a
    photo is cropped, encoded to ``z0`` and inverted to its noise. ImageError for an unreadable photo."""
    if cfg.source == "teacher":
        lat = cfg.resolution // teacher.vae_scale
        eps = get_noise((1, teacher.vae.config.latent_channels, lat, lat), cfg.seed + index, device)
        z0 = teacher_sample(teacher, cond, eps, cfg.steps, cfg.guidance, cfg.shift)
        return eps, z0, teacher.decode(z0).float().clamp(0, 1)[0].cpu()
    image = center_crop_resize(read_image(photos[index]).rgb, cfg.resolution)
    z0 = teacher.encode(image[None]).float()
    return teacher_invert(teacher, cond, z0, cfg.steps, cfg.guidance, cfg.shift), z0, image


def write_pair(out: Path, index: int, eps: Tensor, z0: Tensor, image: Tensor, meta: dict) -> None:
    """Write pair ``index``: latents, then image, then the ``.json`` marker last (it marks the pair complete)."""
    stem = pair_stem(out, index)
    atomic_save_safetensors(
        {"eps": eps.float().cpu(), "z0": z0.float().cpu()}, stem.with_suffix(".safetensors")
    )
    write_image(stem.with_suffix(".png"), image)
    atomic_write_bytes(stem.with_suffix(".json"), (json.dumps(meta) + "\n").encode())
