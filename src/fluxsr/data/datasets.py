"""Evaluation data sets: find LR/HR pairs in the layouts SR papers use, pair files by name, build synthetic sets.

Layouts (see docs/evaluation.md):

``pairs``     ``ROOT/lr`` + ``ROOT/hr`` (what ``fluxsr make-testset`` writes; ``hr/`` may be absent: LR only)
``stablesr``  ``ROOT/lq`` + ``ROOT/gt`` (StableSR-style DIV2K-val / RealSR / DRealSR crops)
``realsr``    RealSR v3: ``ROOT/{Canon,Nikon}/Test/4/*_HR.png`` + ``*_LR4.png`` (ROOT may also be a camera folder
              or a ``Test/4`` folder itself)
``drealsr``   DRealSR: ``ROOT/test_x4/test_HR`` + ``ROOT/test_x4/test_LR`` (ROOT may also be ``test_x4``)
``classic``   Set5 / Set14 / BSD100 / Urban100 as SR benchmark packs ship them: ``ROOT/HR/<name>.png`` +
              ``ROOT/LR_bicubic/X<s>/<name>x<s>.png``
``lr-only``   any folder of images without ground truth (RealSet65, RealLQ250, RealSRSet, ...)

Files are paired by name with :func:`match_files` (exact relative path first, then the name "key" of
:func:`pair_key`, which drops suffixes such as ``_HR``, ``_LR4``, ``_x4``, ``x4``, ``_out``, ``_SR``). Nothing is
dropped silently: every file without a partner, or whose key is shared by several files, is listed in ``problems``.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from ..io.cache import atomic_write_bytes, remove_stale_temp_files
from ..io.guards import check_inputs_apart
from ..io.images import ImageError, read_image, scan_existing, scan_images, write_image

SUFFIX_TOKENS = ("out", "output", "sr", "hr", "lr", "gt", "lq")
"""Name suffixes :func:`pair_key` removes when they follow ``_``, ``-``, ``.`` or a space (case-insensitive)."""

_SUFFIX = re.compile(
    r"(?:[_\-. ](?:" + "|".join(SUFFIX_TOKENS) + r"|lr\d+|x\d+)|x\d+)$",
    re.IGNORECASE,
)
"""One trailing suffix: a token from SUFFIX_TOKENS, ``lr<digits>`` or ``x<digits>`` after a separator, or
``x<digits>`` glued to the name (``babyx4``)."""

LAYOUTS = ("pairs", "stablesr", "realsr", "drealsr", "classic", "lr-only")


# ---------------------------------------------------------------------------------------------------- pairing


def strip_suffixes(stem: str) -> str:
    """``stem`` without trailing role/scale suffixes (see :data:`SUFFIX_TOKENS`), removed repeatedly as long as
    something remains: ``0801x4_out`` -> ``0801``, ``Canon_001_LR4`` -> ``Canon_001``, ``img_003_SRF_4_HR`` ->
    ``img_003_SRF_4``."""
    while (m := _SUFFIX.search(stem)) and m.start() > 0:
        stem = stem[: m.start()]
    return stem


def pair_key(stem: str) -> str:
    """The name two partner files share: :func:`strip_suffixes` lower-cased (``DSC_1454_x1`` -> ``dsc_1454``)."""
    return strip_suffixes(stem).lower()


@dataclass
class Matching:
    """Result of :func:`match_files`: matched ``pairs`` (left, right) sorted by left path, and the leftovers."""

    pairs: list[tuple[Path, Path]] = field(default_factory=list)
    left_only: list[Path] = field(default_factory=list)
    right_only: list[Path] = field(default_factory=list)
    ambiguous: dict[str, list[Path]] = field(default_factory=dict)

    def problems(self, left_name: str = "left", right_name: str = "right") -> list[str]:
        """One line per leftover file, naming it and what is wrong."""
        lines = [
            f"ambiguous name: {', '.join(map(str, files))} all pair as {key!r}"
            for key, files in sorted(self.ambiguous.items())
        ]
        done = {p for files in self.ambiguous.values() for p in files}
        lines += [
            f"missing partner: {p} ({left_name}) has no {right_name} file"
            for p in self.left_only
            if p not in done
        ]
        lines += [
            f"missing partner: {p} ({right_name}) has no {left_name} file"
            for p in self.right_only
            if p not in done
        ]
        return lines


def _relative(path: Path, root: Path | None) -> Path:
    """``path`` relative to ``root`` (its name alone when root is None, is ``path`` itself or is not above it)."""
    try:
        rel = path.relative_to(root) if root is not None else Path(path.name)
    except ValueError:
        return Path(path.name)
    return rel if rel.name else Path(path.name)


def relative_name(path: Path, root: Path | None) -> str:
    """A name unique within ``root``: ``path`` relative to it without the extension, ``/``-separated
    (``root/2023/IMG_1.png`` -> ``2023/IMG_1``; the stem alone for a single file or ``root=None``)."""
    rel = _relative(Path(path), None if root is None else Path(root))
    return rel.with_suffix("").as_posix()


def _key_levels(root: Path | None) -> list[Callable[[Path], object]]:
    """Keys tried in order: relative path without extension; (folder, pair key); pair key alone."""

    def exact(p: Path) -> object:
        return _relative(p, root).with_suffix("").as_posix()

    def in_folder(p: Path) -> object:
        rel = _relative(p, root)
        return rel.parent.as_posix().lower(), pair_key(p.stem)

    def by_key(p: Path) -> object:
        return pair_key(p.stem)

    return [exact, in_folder, by_key]


def _group(files: Iterable[Path], key: Callable[[Path], object]) -> dict[object, list[Path]]:
    groups: dict[object, list[Path]] = defaultdict(list)
    for f in files:
        groups[key(f)].append(f)
    return groups


def match_files(
    left: list[Path], right: list[Path], left_root: Path | None = None, right_root: Path | None = None
) -> Matching:
    """Pair files of two lists by name.

    Three rounds, each pairing only keys held by exactly one file on each side among the files still unpaired:
    1. the path relative to its root without extension (``sub/a.png`` <-> ``sub/a.jpg``);
    2. the folder relative to its root plus :func:`pair_key` of the name (``sub/a_x4.png`` <-> ``sub/a_HR.png``);
    3. :func:`pair_key` alone (any folder).
    Files left over are ``left_only``/``right_only``; those whose final key is shared by several files on one side
    are also listed under ``ambiguous`` (key -> files).
    """
    lefts, rights = _key_levels(left_root), _key_levels(right_root)
    todo_l, todo_r = sorted(left), sorted(right)
    pairs: list[tuple[Path, Path]] = []
    for kl, kr in zip(lefts, rights, strict=True):
        gl, gr = _group(todo_l, kl), _group(todo_r, kr)
        matched = [(gl[k][0], gr[k][0]) for k in gl if len(gl[k]) == 1 and len(gr.get(k, ())) == 1]
        pairs += matched
        used = {p for pair in matched for p in pair}
        todo_l = [p for p in todo_l if p not in used]
        todo_r = [p for p in todo_r if p not in used]
    gl, gr = _group(todo_l, lefts[-1]), _group(todo_r, rights[-1])
    ambiguous = {
        str(k): sorted(gl.get(k, []) + gr.get(k, []))
        for k in set(gl) | set(gr)
        if len(gl.get(k, ())) > 1 or len(gr.get(k, ())) > 1
    }
    return Matching(sorted(pairs), todo_l, todo_r, ambiguous)


# ---------------------------------------------------------------------------------------------------- data sets


@dataclass(frozen=True)
class ImagePair:
    """One evaluation item: ``name`` (the LR path relative to its folder without extension, ``/``-separated:
    ``2023/IMG_0001``), the LR input and the HR ground truth (None when absent)."""

    name: str
    lr: Path | None
    hr: Path | None


@dataclass
class Dataset:
    """Pairs found under ``root`` with a given ``layout``; ``problems`` lists unpaired or ambiguous files."""

    name: str
    layout: str
    root: Path
    pairs: list[ImagePair]
    problems: list[str] = field(default_factory=list)

    @property
    def has_hr(self) -> bool:
        """True when every item has a ground truth (full-reference metrics possible)."""
        return bool(self.pairs) and all(p.hr is not None for p in self.pairs)


def _images_in(folder: Path, exclude: Path | None = None) -> tuple[list[Path], list[str]]:
    """Images directly or recursively below ``folder`` (not searching ``exclude``), and one line per entry there
    that cannot be read (a named pipe, a broken link, a folder that cannot be listed:
    :func:`fluxsr.io.images.scan_images`)."""
    scan = scan_existing(folder, exclude)
    return scan.images, [str(problem) for problem in scan.problems]


def pairs_from_lists(
    lr: list[Path], hr: list[Path], lr_root: Path | None = None, hr_root: Path | None = None
) -> tuple[list[ImagePair], list[str]]:
    """:func:`match_files` on LR and HR lists -> (pairs named by :func:`relative_name` of the LR, problems)."""
    m = match_files(lr, hr, lr_root, hr_root)
    pairs = [ImagePair(relative_name(a, lr_root), a, b) for a, b in m.pairs]
    return pairs, m.problems("LR", "HR")


def pairs_from_dirs(
    lr_dir: Path, hr_dir: Path | None, exclude: Path | None = None
) -> tuple[list[ImagePair], list[str]]:
    """Pair every image under ``lr_dir`` (not searching ``exclude``) with one under ``hr_dir`` (see
    :func:`match_files`).

    ``hr_dir=None`` gives LR-only items. Returns (pairs, problems); problems name unpaired or ambiguous files, and
    entries that cannot be read.
    """
    lr_dir = Path(lr_dir)
    lr, unreadable = _images_in(lr_dir, exclude)
    if hr_dir is None:
        return [ImagePair(relative_name(p, lr_dir), p, None) for p in lr], unreadable
    hr_dir = Path(hr_dir)
    hr, unreadable_hr = _images_in(hr_dir)
    pairs, problems = pairs_from_lists(lr, hr, lr_dir, hr_dir)
    return pairs, unreadable + unreadable_hr + problems


def _realsr_folders(root: Path) -> list[Path]:
    """The ``Test/4`` folders of a RealSR v3 tree (root, a camera folder, or the Test/4 folder itself)."""
    candidates = [root, root / "Test" / "4", *sorted(root.glob("*/Test/4"))]
    return [c for c in candidates if c.is_dir() and any(c.glob("*_LR4.*")) and any(c.glob("*_HR.*"))]


def child_dir(root: Path, name: str) -> Path | None:
    """The sub-folder of ``root`` called ``name``, compared case-insensitively (exact spelling first), or None."""
    if (root / name).is_dir():
        return root / name
    if not root.is_dir():
        return None
    return next((c for c in sorted(root.iterdir()) if c.is_dir() and c.name.lower() == name.lower()), None)


def _drealsr_dirs(root: Path) -> tuple[Path, Path] | None:
    """(test_LR, test_HR) folders in ``root`` or ``root/test_x4`` (any letter case), or None."""
    for base in (root, child_dir(root, "test_x4")):
        if base is None:
            continue
        lr, hr = child_dir(base, "test_LR"), child_dir(base, "test_HR")
        if lr is not None and hr is not None:
            return lr, hr
    return None


def _classic_dirs(root: Path) -> tuple[Path, list[Path]] | None:
    """(HR folder, its ``LR_bicubic/X<s>`` folders sorted by scale) of a classic SR test set, or None."""
    hr, lr = child_dir(root, "HR"), child_dir(root, "LR_bicubic")
    if hr is None or lr is None:
        return None
    scales = sorted(
        (c for c in lr.iterdir() if c.is_dir() and re.fullmatch(r"x\d+", c.name, re.IGNORECASE)),
        key=lambda c: int(c.name[1:]),
    )
    return (hr, scales) if scales else None


def detect_layout(root: Path) -> str:
    """Which of :data:`LAYOUTS` ``root`` follows (``lr-only`` when nothing else fits); FileNotFoundError if absent."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such folder")
    if child_dir(root, "lr") is not None:
        return "pairs"
    if child_dir(root, "lq") is not None:
        return "stablesr"
    if _drealsr_dirs(root) is not None:
        return "drealsr"
    if _realsr_folders(root):
        return "realsr"
    if _classic_dirs(root) is not None:
        return "classic"
    return "lr-only"


def load_realsr(root: Path) -> Dataset:
    """RealSR v3 (Cai et al. 2019): ``{Canon,Nikon}/Test/4/<name>_HR.png`` with ``<name>_LR4.png``."""
    root = Path(root)
    lr, hr, unreadable = [], [], []
    for folder in _realsr_folders(root):
        files, problems = _images_in(folder)
        lr += [f for f in files if re.search(r"_LR\d+$", f.stem, re.IGNORECASE)]
        hr += [f for f in files if re.search(r"_HR$", f.stem, re.IGNORECASE)]
        unreadable += problems
    pairs, problems = pairs_from_lists(lr, hr)
    problems = unreadable + problems
    pairs = [ImagePair(re.sub(r"_LR\d+$", "", p.name, flags=re.IGNORECASE), p.lr, p.hr) for p in pairs]
    return Dataset("RealSR", "realsr", root, pairs, problems)


def load_drealsr(root: Path) -> Dataset:
    """DRealSR (Wei et al. 2020): ``test_x4/test_HR/<name>_x1.png`` with ``test_x4/test_LR/<name>_x4.png`` (any
    letter case; ``test_HR``/``test_LR`` directly in ``root`` too, as in StableSR's RealSR/DRealSR crops)."""
    dirs = _drealsr_dirs(Path(root))
    if dirs is None:
        raise FileNotFoundError(f"{root}: no test_HR/test_LR (or test_x4/test_HR, test_x4/test_LR) folders")
    pairs, problems = pairs_from_dirs(*dirs)
    return Dataset("DRealSR", "drealsr", Path(root), pairs, problems)


def load_classic(root: Path, scale: int | None = None) -> Dataset:
    """Set5 / Set14 / BSD100 / Urban100 as SR benchmark packs ship them: ``HR/<name>.png`` with
    ``LR_bicubic/X<s>/<name>x<s>.png``. ``scale`` picks the ``X<s>`` folder (default: ``X4``, or the only one);
    pairs are named like the HR (``baby``). FileNotFoundError when that folder is missing."""
    root = Path(root)
    dirs = _classic_dirs(root)
    if dirs is None:
        raise FileNotFoundError(f"{root}: no HR/ and LR_bicubic/X<scale>/ folders")
    hr_dir, lr_dirs = dirs
    by_scale = {int(d.name[1:]): d for d in lr_dirs}
    if scale is None:
        scale = 4 if 4 in by_scale or len(by_scale) > 1 else next(iter(by_scale))
    if scale not in by_scale:
        found = ", ".join(d.name for d in lr_dirs)
        raise FileNotFoundError(f"{root}: no LR_bicubic/X{scale} folder (found {found})")
    pairs, problems = pairs_from_dirs(by_scale[scale], hr_dir)
    pairs = [ImagePair(re.sub(rf"_?x{scale}$", "", p.name, flags=re.IGNORECASE), p.lr, p.hr) for p in pairs]
    return Dataset(root.name, "classic", root, pairs, problems)


def load_stablesr(root: Path) -> Dataset:
    """StableSR-style crops (DIV2K-val, RealSR/DRealSR centre crops): ``lq/`` inputs and ``gt/`` ground truth."""
    root = Path(root)
    pairs, problems = pairs_from_dirs(child_dir(root, "lq") or root / "lq", child_dir(root, "gt"))
    return Dataset(root.name, "stablesr", root, pairs, problems)


def load_pairs(root: Path) -> Dataset:
    """``lr/`` + ``hr/`` folders as :func:`make_testset` writes them (``hr/`` optional)."""
    root = Path(root)
    pairs, problems = pairs_from_dirs(child_dir(root, "lr") or root / "lr", child_dir(root, "hr"))
    return Dataset(root.name, "pairs", root, pairs, problems)


def load_lr_only(root: Path, exclude: Path | None = None) -> Dataset:
    """A folder of LR images without ground truth (RealSet65, RealLQ250, RealSRSet, ...); the folder ``exclude``
    below it (an output folder) is not searched."""
    root = Path(root)
    pairs, problems = pairs_from_dirs(root, None, exclude)
    return Dataset(root.name, "lr-only", root, pairs, problems)


LOADERS: dict[str, Callable[[Path], Dataset]] = {
    "pairs": load_pairs,
    "stablesr": load_stablesr,
    "realsr": load_realsr,
    "drealsr": load_drealsr,
    "classic": load_classic,
    "lr-only": load_lr_only,
}


def load_dataset(root: Path, layout: str = "auto", scale: int | None = None) -> Dataset:
    """Load ``root`` with the given layout (``auto``: :func:`detect_layout`); ValueError for an unknown layout.
    ``scale`` picks the ``LR_bicubic/X<scale>`` folder of the ``classic`` layout (ignored by the others)."""
    layout = detect_layout(root) if layout == "auto" else layout
    if layout not in LOADERS:
        raise ValueError(f"unknown dataset layout {layout!r}; known: auto, {', '.join(LAYOUTS)}")
    if layout == "classic":
        return load_classic(Path(root), scale)
    return LOADERS[layout](Path(root))


# ---------------------------------------------------------------------------------------------------- make-testset


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
    from ..evaluation.metric_inputs import quantize_8bit

    return quantize_8bit(rgb[:, top : top + ch, left : left + cw].float())


def degrade_one(hr: torch.Tensor, cfg, seed: int) -> torch.Tensor:
    """Training degradation of one HR (3, H, W) with a fresh generator seeded ``seed`` -> LR (3, H/s, W/s)."""
    from .degrade import degrade

    return degrade(hr[None], cfg, torch.Generator().manual_seed(seed))[0]


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file's bytes."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


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
    (:func:`remove_stale_temp_files`) are removed first, as `fluxsr upscale` does in its output folders."""
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
    cfg=None,
    overwrite: bool = False,
) -> TestsetResult:
    """Build a reproducible LR/HR evaluation set from HR photos.

    For each image under ``inputs`` (files or folders, recursive): read it (EXIF orientation applied, alpha
    dropped, grey as RGB), centre-crop to a multiple of ``scale`` (or to ``crop`` x ``crop``), quantise to 8 bits,
    degrade with the training degradation (``cfg``, default :class:`fluxsr.data.degrade.DegradationConfig` with this
    scale) seeded by :func:`image_seed` (seed, file name), and write ``out/hr/<name>.png`` and ``out/lr/<name>.png``
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
    from .degrade import DegradationConfig

    cfg = cfg or DegradationConfig(scale=scale)
    if int(cfg.scale) != scale:
        raise ValueError(f"degradation config scale {cfg.scale} differs from --scale {scale}")
    if crop is not None and (crop <= 0 or crop % scale):
        raise ValueError(f"--crop {crop} must be a positive multiple of the scale {scale}")
    out = Path(out)
    check_inputs_apart(
        [("--hr", Path(p)) for p in inputs],
        [(out / name, "make-testset writes into (and --overwrite clears)") for name in TESTSET_FOLDERS],
        "choose an --out that holds none of the inputs",
    )
    _prepare_out(out, overwrite)
    sources, problems = _collect_sources(inputs)
    if sources:
        names = [strip_suffixes(src.stem) for src in sources]
        planned = [{"name": n, "hr": f"hr/{n}.png", "lr": f"lr/{n}.png"} for n in names]
        _write_manifest(out, {"complete": False, "images": planned})
    items = []
    for src in sources:
        try:
            hr = prepare_hr(read_image(src).rgb, scale, crop)
        except (ImageError, ValueError) as e:
            problems.append(str(e) if str(src) in str(e) else f"{src}: {e}")
            continue
        item_seed = image_seed(seed, src.name)
        lr = degrade_one(hr, cfg, item_seed)
        name = strip_suffixes(src.stem)
        hr_path = write_image(out / "hr" / f"{name}.png", hr)
        lr_path = write_image(out / "lr" / f"{name}.png", lr)
        items.append(
            {
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
        )
    if not items:  # nothing usable: no manifest that would pass for an (empty) test set
        (out / "manifest.json").unlink(missing_ok=True)
        problems.append(
            f"no pairs written to {out}: every input failed (see above)"
            if sources
            else f"no pairs written to {out}"
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
