"""The metrics of ``fluxsr eval`` and ``fluxsr benchmark`` by name, ready to call on one image pair.

- full reference: ``psnr`` up, ``ssim`` up (computed under a protocol, :mod:`fluxsr.evaluation.protocol`, with its
  crop border and Y channel), ``lpips`` down (AlexNet, pyiqa's default), ``lpips-vgg`` down, ``dists`` down, all with
  the real weights from ``fluxsr weights fetch``; ``periodic`` down (:func:`fluxsr.evaluation.periodic.periodic_score`:
  a token grid's spectral peaks relative to the reference's, ~1 when none; ``period`` px, default the bundled
  model's 8);
- against the LR input (``fluxsr eval --lr``): ``lr_psnr`` up (:func:`fluxsr.inference.fidelity.lr_psnr`: the
  prediction shrunk to the input's size with antialiased bicubic, RGB PSNR against the input);
- no reference: ``niqe`` down (pyiqa's algorithm, built in); ``musiq``, ``maniqa-koniq``, ``maniqa-pipal``,
  ``topiq-nr``, ``clipiqa``, ``qalign`` (all up) through pyiqa when it is importable -- an optional extra; without it
  they are skipped with one note.
"""

from __future__ import annotations

import functools
import hashlib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import torch
from torch import Tensor

from ..inference.fidelity import lr_psnr
from ..losses.dists import load_dists
from ..losses.lpips import load_lpips
from .metric_inputs import check_pair
from .niqe import load_niqe_params
from .periodic import DEFAULT_PERIOD, periodic_peakiness, periodic_score
from .protocol import Protocol, get_protocol, protocol_niqe, protocol_psnr, protocol_ssim

FULL_REFERENCE = ("psnr", "ssim", "lpips", "lpips-vgg", "dists", "periodic")

LR_REFERENCE = ("lr_psnr",)
"""Metrics scored against the low-resolution input instead of ground truth."""

BUILTIN_NO_REFERENCE = ("niqe",)

PYIQA_NAMES = {
    "musiq": "musiq",
    "maniqa-koniq": "maniqa",
    "maniqa-pipal": "maniqa-pipal",
    "topiq-nr": "topiq_nr",
    "clipiqa": "clipiqa",
    "qalign": "qalign",
}
"""Our metric name -> pyiqa's ``create_metric`` name (pyiqa's ``maniqa`` is the KonIQ-trained model)."""

ALL_METRICS = FULL_REFERENCE + LR_REFERENCE + BUILTIN_NO_REFERENCE + tuple(PYIQA_NAMES)


DEFAULT_METRICS = ("psnr", "ssim", "lpips", "dists", "niqe")


@dataclass(frozen=True)
class Metric:
    """A named score ``score(pred, gt)`` of (3, H, W) float images in [0, 1]; ``gt`` is None for no-reference,
    and the LR input (3, h, w) for a metric ``against_lr``."""

    name: str
    reference: bool
    lower_better: bool
    score: Callable[[Tensor, Tensor | None], float]
    against_lr: bool = False

    @property
    def arrow(self) -> str:
        """``↓`` when lower is better, else ``↑``."""
        return "↓" if self.lower_better else "↑"


def parse_metric_names(text: str | Sequence[str]) -> list[str]:
    """``"psnr, SSIM,lpips"`` -> ``["psnr", "ssim", "lpips"]`` (order kept, duplicates dropped); ValueError for
    unknown names."""
    items = text.split(",") if isinstance(text, str) else list(text)
    names = list(dict.fromkeys(n.strip().lower() for n in items if n.strip()))
    unknown = [n for n in names if n not in ALL_METRICS]
    if unknown:
        raise ValueError(f"unknown metric(s) {', '.join(unknown)}; known: {', '.join(ALL_METRICS)}")
    if not names:
        raise ValueError("no metrics given")
    return names


def needs_reference(name: str) -> bool:
    """True for full-reference metrics (they need ground truth)."""
    return name in FULL_REFERENCE


def needs_lr(name: str) -> bool:
    """True for metrics scored against the LR input (they need ``--lr``)."""
    return name in LR_REFERENCE


def default_metric_names(has_hr: bool, has_lr: bool = False) -> list[str]:
    """:data:`DEFAULT_METRICS` with ground truth, else the no-reference ones among them; ``lr_psnr`` too when the
    LR inputs are given."""
    names = [n for n in DEFAULT_METRICS if has_hr or not needs_reference(n)]
    return names + list(LR_REFERENCE) if has_lr else names


def effective_protocol(protocol: str, crop_border: int | None) -> Protocol:
    """The :class:`fluxsr.evaluation.protocol.Protocol` named ``protocol``, with ``crop_border`` overriding its own if
    given."""
    p = get_protocol(protocol)
    if crop_border is not None:
        if crop_border < 0:
            raise ValueError("crop border must be >= 0")
        p = replace(p, crop_border=crop_border)
    return p


def _network_metric(name: str, net: torch.nn.Module, device: str) -> Metric:
    """Wrap a frozen distance network ``net(a, b) -> (B,)`` (LPIPS, DISTS) as a full-reference metric."""

    def score(pred: Tensor, gt: Tensor | None) -> float:
        with torch.inference_mode():
            return float(net(pred[None].float().to(device), gt[None].float().to(device))[0])

    return Metric(name, True, True, score)


@functools.lru_cache(maxsize=6)
def load_network(name: str, device: str) -> torch.nn.Module:
    """The frozen LPIPS-alex (``lpips``), LPIPS-vgg or DISTS network with real weights, loaded once per device."""
    if name == "dists":
        return load_dists(device)
    return load_lpips("alex" if name == "lpips" else "vgg", device)


def tensor_digest(x: Tensor) -> str:
    """A key for a tensor's contents: its shape, dtype and the SHA-256 of its bytes."""
    data = x.detach().cpu().contiguous()
    return f"{tuple(data.shape)} {data.dtype} {hashlib.sha256(data.view(torch.uint8).numpy()).hexdigest()}"


def periodic_metric(period: int, scale: int) -> Metric:
    """The ``periodic`` metric; the reference's :func:`fluxsr.evaluation.periodic.periodic_peakiness` is computed once
    per reference image (kept by :func:`tensor_digest`), so a benchmark that scores several methods against the same
    ground truth runs the reference's spectrum once, not once per method."""
    references: dict[str, Tensor] = {}

    def score(pred: Tensor, gt: Tensor | None) -> float:
        check_pair(pred, gt)  # a size mismatch is reported as such, before the reference's size is checked
        key = tensor_digest(gt)
        if key not in references:
            references[key] = periodic_peakiness(gt, period, scale=scale)
        return float(periodic_score(pred, gt, period, scale=scale, reference=references[key]))

    return Metric("periodic", True, True, score)


def _builtin_metric(name: str, protocol, scale: int, device: str, period: int) -> Metric:
    """One of psnr, ssim, lpips, lpips-vgg, dists, periodic, lr_psnr, niqe (network weights from the cache)."""
    if name == "psnr":
        return Metric(name, True, False, lambda p, g: float(protocol_psnr(p, g, protocol, scale=scale)))
    if name == "ssim":
        return Metric(name, True, False, lambda p, g: float(protocol_ssim(p, g, protocol, scale=scale)))
    if name in ("lpips", "lpips-vgg", "dists"):
        return _network_metric(name, load_network(name, device), device)
    if name == "periodic":
        return periodic_metric(period, scale)
    if name == "lr_psnr":
        return Metric(name, False, False, lambda p, lr: lr_psnr(p, lr, scale), against_lr=True)
    if name == "niqe":
        params = load_niqe_params()
        return Metric(name, False, True, lambda p, _g: float(protocol_niqe(p, protocol, params=params)))
    raise ValueError(f"{name} is not a built-in metric")


def _pyiqa_metrics(names: list[str], device: str) -> tuple[list[Metric], list[str]]:
    """Learned no-reference metrics through pyiqa, or ([], one note) when pyiqa cannot be imported."""
    if not names:
        return [], []
    try:
        import pyiqa
    except Exception as e:  # ImportError, or a broken torchvision underneath
        return [], [
            f"pyiqa is not importable ({type(e).__name__}: {e}): skipped {', '.join(names)} "
            "(optional extra: pip install 'fluxsr[iqa]', needs torchvision)"
        ]
    out = []
    for name in names:
        net = pyiqa.create_metric(PYIQA_NAMES[name], device=torch.device(device), as_loss=False)

        def score(pred: Tensor, _gt: Tensor | None, net=net) -> float:
            with torch.inference_mode():
                return float(torch.as_tensor(net(pred[None].float().to(device))).mean())

        out.append(Metric(name, False, bool(getattr(net, "lower_better", False)), score))
    return out, []


def build_metrics(
    names: Sequence[str],
    protocol: str = "fluxsr",
    *,
    scale: int = 4,
    crop_border: int | None = None,
    device: str = "cpu",
    period: int | None = None,
) -> tuple[list[Metric], list[str]]:
    """Ready-to-call metrics for ``names`` (order kept) and notes about skipped ones; ``period``: the grid of the
    ``periodic`` score in pixels (default :data:`fluxsr.evaluation.periodic.DEFAULT_PERIOD`).

    Raises :class:`fluxsr.io.cache.MissingWeightsError` when LPIPS/DISTS/NIQE parameters are not fetched yet, and
    ValueError for a scale that is not an integer >= 1.
    """
    if not (math.isfinite(scale) and scale >= 1 and scale == round(scale)):
        raise ValueError(f"scale must be an integer >= 1, got {scale!r}")
    proto = effective_protocol(protocol, crop_border)
    names = parse_metric_names(names)
    period = DEFAULT_PERIOD if period is None else period
    if period < 2:
        raise ValueError(f"period must be >= 2 pixels, got {period}")
    built = {n: _builtin_metric(n, proto, scale, device, period) for n in names if n not in PYIQA_NAMES}
    learned, notes = _pyiqa_metrics([n for n in names if n in PYIQA_NAMES], device)
    built.update({m.name: m for m in learned})
    return [built[n] for n in names if n in built], notes
