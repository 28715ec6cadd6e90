"""Evaluation data sets: find LR/HR pairs in the layouts SR papers use and pair files by name (synthetic sets:
:mod:`.testset`).

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

import re
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from ..io.images import scan_existing

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
