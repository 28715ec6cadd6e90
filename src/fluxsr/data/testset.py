"""``fluxsr make-testset``: a reproducible LR/HR evaluation set from HR photos (centre crop, 8-bit HR, the training
degradation seeded per image), with a manifest that records every pair and is the only record ``--overwrite``
trusts."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from ..io.cache import atomic_write_bytes, remove_stale_temp_files, sha256_file
from ..io.guards import check_inputs_apart
from ..io.images import ImageError, quantize, read_image, scan_images, write_image
from .datasets import strip_suffixes
from .degradation_config import DegradationConfig
from .degrade import degrade


def image_seed(seed: int, name: str) -> int:
    """Per-image seed from the set seed and the file name: first 8 bytes of sha256("<seed>:<name>"), 63 bits."""
    digest = hashlib.sha256(f"{int(seed)}:{name}".encode()).digest()
    return int.from_bytes(digest[:8], "big") & (2**63 - 1)


def hr_crop_box(h: int, w: int, scale: int, crop: int | None) -> tuple[int, int, int, int]:
    """(top, left, height, width) of the centred HR crop: ``crop`` x ``crop`` when given, else the largest size
    that is a multiple of ``scale``. ValueError when the image is too small."""
    if crop is not None:
        if crop % scale or crop <= 0:
            raise ValueError(f"crop {crop} must be a positive multiple of the scale {scale}")
        if h < crop or w < crop:
            raise ValueError(f"image {w}x{h} is smaller than the crop {crop}x{crop}")
        ch, cw = crop, crop
    else:
        ch, cw = h // scale * scale, w // scale * scale
        if ch == 0 or cw == 0:
            raise ValueError(f"image {w}x{h} is smaller than the scale {scale}")
    return (h - ch) // 2, (w - cw) // 2, ch, cw


def prepare_hr(rgb: torch.Tensor, scale: int, crop: int | None) -> torch.Tensor:
    """Centre-crop an RGB (3, H, W) HR image (see :func:`hr_crop_box`) and quantise it to 8-bit levels."""
    top, left, ch, cw = hr_crop_box(rgb.shape[-2], rgb.shape[-1], scale, crop)
    return quantize(rgb[:, top : top + ch, left : left + cw].float(), 8).float() / 255


def degrade_one(hr: torch.Tensor, cfg: DegradationConfig, seed: int) -> torch.Tensor:
    """Training degradation of one HR (3, H, W) with a fresh generator seeded ``seed`` -> LR (3, H/s, W/s)."""
    return degrade(hr[None], cfg, torch.Generator().manual_seed(seed))[0]


@dataclass
class TestsetResult:
    """What :func:`make_testset` did: the manifest path, the items written and one line per skipped input."""

    __test__ = False  # not a pytest class

    manifest: Path | None  # None when no pair was written
    items: list[dict]
    problems: list[str]


def _collect_sources(inputs: list[Path]) -> tuple[list[Path], list[str]]:
    """Image files under ``inputs`` (files or folders) whose output names (:func:`strip_suffixes`, compared
    case-insensitively) are unique; duplicates and what cannot be read (a missing path, a named pipe, a broken
    link: :func:`scan_images`) are problems."""
    files, problems, seen = [], [], {}
    for root in map(Path, inputs):
        scan = scan_images(root)
        problems += [str(p) for p in scan.problems]
        for f in sorted(scan.images):
            name = strip_suffixes(f.stem)
            if name.lower() in seen:
                problems.append(f"{f}: skipped, its name {name!r} is already used by {seen[name.lower()]}")
                continue
            seen[name.lower()] = f
            files.append(f)
    return files, problems


TESTSET_FOLDERS = ("hr", "lr")
"""The folders under ``--out`` that :func:`make_testset` writes its pairs into (flat ``<name>.png`` files)."""


def testset_files(out: Path) -> set[Path]:
    """The pair files an earlier :func:`make_testset` wrote in ``out``: those its ``out/manifest.json`` lists
    (resolved), only ever files directly in ``out/hr`` and ``out/lr``; empty without a readable manifest."""
    try:
        manifest = json.loads((out / "manifest.json").read_text())
        listed = [item[key] for item in manifest["images"] for key in TESTSET_FOLDERS]
    except (OSError, ValueError, TypeError, KeyError):
        return set()
    folders = {(out / name).resolve() for name in TESTSET_FOLDERS}
    files = {(out / str(rel)).resolve() for rel in listed}
    return {f for f in files if f.parent in folders}  # a tampered manifest cannot point anywhere else


def _prepare_out(out: Path, overwrite: bool) -> None:
    """Refuse a non-empty ``out/lr`` or ``out/hr`` (ValueError) unless ``overwrite``, which deletes the pairs and
    manifest an earlier :func:`make_testset` wrote there (:func:`testset_files`) and nothing else: a file it did
    not write is refused by name, before anything is deleted. Temporary files of a killed earlier run
    (:func:`remove_stale_temp_files`) are removed first, on every call (not once per process, as atomic writes
    do): they must not be counted as pairs."""
    for folder in (out, *(out / name for name in TESTSET_FOLDERS)):
        remove_stale_temp_files(folder)
    found = [f for name in TESTSET_FOLDERS for f in sorted((out / name).rglob("*")) if not f.is_dir()]
    if not found:
        return
    if not overwrite:
        raise ValueError(
            f"{found[0].parent} is not empty: its old pairs would mix with the new set; choose another "
            "--out or pass --overwrite to delete the pairs an earlier make-testset wrote there"
        )
    ours = testset_files(out)
    foreign = [f for f in found if f.resolve() not in ours]
    if foreign:
        names = ", ".join(str(f) for f in foreign[:3]) + (
            f" and {len(foreign) - 3} more" if len(foreign) > 3 else ""
        )
        raise ValueError(
            f"--overwrite deletes only the pairs listed in {out / 'manifest.json'}, and {names} "
            f"{'is' if len(foreign) == 1 else 'are'} not among them: move such files away or choose another --out"
        )
    for f in found:
        f.unlink()
    (out / "manifest.json").unlink(missing_ok=True)


def _write_manifest(out: Path, manifest: dict) -> Path:
    """Write ``out/manifest.json`` atomically: it is the record ``--overwrite`` trusts, so never half a file."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / "manifest.json"
    atomic_write_bytes(path, (json.dumps(manifest, indent=2) + "\n").encode())
    return path


def make_testset(
    inputs: list[Path],
    out: Path,
    seed: int,
    scale: int = 4,
    crop: int | None = None,
    cfg: DegradationConfig | None = None,
    overwrite: bool = False,
) -> TestsetResult:
    """Build a reproducible LR/HR evaluation set from HR photos.

    For each image under ``inputs`` (files or folders, recursive): read it (EXIF orientation applied, alpha
    dropped, grey as RGB), centre-crop to a multiple of ``scale`` (or to ``crop`` x ``crop``), quantise to 8 bits,
    degrade with the training degradation (``cfg``, default :class:`DegradationConfig` with this scale) seeded by
    :func:`image_seed` (seed, file name), and write ``out/hr/<name>.png`` and ``out/lr/<name>.png``
    where name is the source stem without role suffixes (:func:`strip_suffixes`: ``img_003_SRF_4_HR`` ->
    ``img_003_SRF_4``).
    ``out/manifest.json`` records the settings and, per image, the source name and sha256, the per-image seed,
    sizes and the sha256 of both outputs. Unreadable or too small inputs are skipped and listed in ``problems``.
    A non-empty ``out/lr`` or ``out/hr`` is refused (ValueError, before anything is written) unless ``overwrite``,
    which first deletes the pairs an earlier run's manifest lists (and refuses any other file there), so the
    folders always hold exactly the manifest's pairs; an input inside ``out/hr`` or ``out/lr`` is refused too
    (:func:`fluxsr.io.guards.check_inputs_apart`). The manifest is written before the first pair (the planned names,
    ``"complete": false``), so a killed run's pairs are still known to a rerun with ``overwrite``.
    """
    cfg = cfg or DegradationConfig(scale=scale)
    out = Path(out)
    check_testset_settings(inputs, out, scale, crop, cfg)
    _prepare_out(out, overwrite)
    sources, problems = _collect_sources(inputs)
    if sources:
        planned = [testset_names(strip_suffixes(src.stem)) for src in sources]
        _write_manifest(out, {"complete": False, "images": planned})
    items = []
    for src in sources:
        try:
            items.append(write_pair(src, out, image_seed(seed, src.name), scale, crop, cfg))
        except (ImageError, ValueError) as e:
            problems.append(str(e) if str(src) in str(e) else f"{src}: {e}")
    if not items:  # nothing usable: no manifest that would pass for an (empty) test set
        (out / "manifest.json").unlink(missing_ok=True)
        problems.append(
            f"no pairs written to {out}" + (": every input failed (see above)" if sources else "")
        )
        return TestsetResult(None, items, problems)
    manifest = {
        "complete": True,
        "seed": int(seed),
        "scale": scale,
        "crop": crop,
        "seed_rule": "sha256(f'{seed}:{source file name}')[:8] big-endian & (2**63 - 1)",
        "degradation": asdict(cfg),
        "images": items,
    }
    return TestsetResult(_write_manifest(out, manifest), items, problems)


def check_testset_settings(
    inputs: list[Path], out: Path, scale: int, crop: int | None, cfg: DegradationConfig
) -> None:
    """ValueError, before anything is written, for a degradation of another scale, a crop that is not a positive
    multiple of the scale, or an input inside the folders make-testset writes into."""
    if int(cfg.scale) != scale:
        raise ValueError(f"degradation config scale {cfg.scale} differs from --scale {scale}")
    if crop is not None and (crop <= 0 or crop % scale):
        raise ValueError(f"--crop {crop} must be a positive multiple of the scale {scale}")
    check_inputs_apart(
        [("--hr", Path(p)) for p in inputs],
        [(out / name, "make-testset writes into (and --overwrite clears)") for name in TESTSET_FOLDERS],
        "choose an --out that holds none of the inputs",
    )


def testset_names(name: str) -> dict:
    """The manifest entry of a pair not yet written: its name and the files it will have."""
    return {"name": name, "hr": f"hr/{name}.png", "lr": f"lr/{name}.png"}


def write_pair(
    src: Path, out: Path, item_seed: int, scale: int, crop: int | None, cfg: DegradationConfig
) -> dict:
    """Read ``src``, crop and quantise its HR, degrade it with ``item_seed``, write both PNGs under ``out``; returns
    the pair's manifest entry. ImageError or ValueError (too small) when the source is not usable."""
    hr = prepare_hr(read_image(src).rgb, scale, crop)
    lr = degrade_one(hr, cfg, item_seed)
    name = strip_suffixes(src.stem)
    hr_path = write_image(out / "hr" / f"{name}.png", hr)
    lr_path = write_image(out / "lr" / f"{name}.png", lr)
    return {
        "name": name,
        "source": src.name,
        "source_sha256": sha256_file(src),
        "seed": item_seed,
        "hr": f"hr/{hr_path.name}",
        "lr": f"lr/{lr_path.name}",
        "hr_size": [int(hr.shape[-1]), int(hr.shape[-2])],
        "lr_size": [int(lr.shape[-1]), int(lr.shape[-2])],
        "hr_sha256": sha256_file(hr_path),
        "lr_sha256": sha256_file(lr_path),
    }
