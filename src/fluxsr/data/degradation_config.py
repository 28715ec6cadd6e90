"""The settings of the Real-ESRGAN degradation (:class:`DegradationConfig`; defaults are Real-ESRGAN's
``train_realesrgan_x4plus.yml``), checked when built and read typed from a dict or a YAML file."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from ..io.config import from_dict, read_yaml_mapping

KERNEL_TYPES = ("iso", "aniso", "generalized_iso", "generalized_aniso", "plateau_iso", "plateau_aniso")
RESIZE_MODES = ("area", "bilinear", "bicubic")


PROBABILITY_FIELDS = (
    "gaussian_noise_prob",
    "gray_noise_prob",
    "second_blur_prob",
    "gaussian_noise_prob2",
    "gray_noise_prob2",
    "sinc_prob",
    "sinc_prob2",
    "final_sinc_prob",
)
"""Fields of :class:`DegradationConfig` that are single probabilities."""
RANGE_FIELDS = (
    "resize_range",
    "resize_range2",
    "noise_range",
    "noise_range2",
    "poisson_scale_range",
    "poisson_scale_range2",
    "jpeg_range",
    "jpeg_range2",
    "blur_sigma",
    "blur_sigma2",
    "betag_range",
    "betap_range",
    "betag_range2",
    "betap_range2",
)
"""Fields of :class:`DegradationConfig` that are (low, high) ranges."""


def _check_bounds(name: str, lo: float, hi: float) -> None:
    """JPEG qualities lie in [1, 100]; resize factors, blur sigmas and kernel exponents are positive."""
    if name.startswith("jpeg") and not 1 <= lo <= hi <= 100:
        raise ValueError(f"{name}={(lo, hi)} must lie in [1, 100]")
    if name.startswith(("resize", "blur", "beta")) and lo <= 0:
        raise ValueError(f"{name}={(lo, hi)} must be positive")


@dataclass
class DegradationConfig:
    """Parameters of the degradation; defaults are Real-ESRGAN's ``train_realesrgan_x4plus.yml``.

    Ranges are ``(low, high)``; ``resize_prob*`` are the probabilities of ``(up, down, keep)``.
    Load from YAML with :meth:`from_yaml` (keys under ``degradation:``) or from a dict with :meth:`from_dict`.
    """

    # ---- first order
    resize_prob: tuple[float, float, float] = (0.2, 0.7, 0.1)
    """Probabilities of up-, down-scaling or keeping the size in the first resize."""
    resize_range: tuple[float, float] = (0.15, 1.5)
    """Scale factor range of the first resize (down draws in [low, 1], up in [1, high])."""
    gaussian_noise_prob: float = 0.5
    """Probability of Gaussian (else Poisson) noise in the first stage."""
    noise_range: tuple[float, float] = (1.0, 30.0)
    """Gaussian noise sigma range, in 0-255 units."""
    poisson_scale_range: tuple[float, float] = (0.05, 3.0)
    """Poisson noise scale range (multiplies the shot noise)."""
    gray_noise_prob: float = 0.4
    """Probability that the first-stage noise is gray (identical on all channels)."""
    jpeg_range: tuple[float, float] = (30, 95)
    """JPEG quality range of the first stage (inclusive, drawn as integers)."""
    # ---- second order
    second_blur_prob: float = 0.8
    """Probability of applying the second blur."""
    resize_prob2: tuple[float, float, float] = (0.3, 0.4, 0.3)
    """Probabilities of up, down, keep in the second resize."""
    resize_range2: tuple[float, float] = (0.3, 1.2)
    """Scale range of the second resize, relative to the final LR size."""
    gaussian_noise_prob2: float = 0.5
    """Probability of Gaussian (else Poisson) noise in the second stage."""
    noise_range2: tuple[float, float] = (1.0, 25.0)
    """Second-stage Gaussian sigma range, in 0-255 units."""
    poisson_scale_range2: tuple[float, float] = (0.05, 2.5)
    """Second-stage Poisson scale range."""
    gray_noise_prob2: float = 0.4
    """Probability that the second-stage noise is gray."""
    jpeg_range2: tuple[float, float] = (30, 95)
    """JPEG quality range of the final stage (inclusive, drawn as integers)."""
    # ---- first blur kernel
    blur_kernel_size: int = 21
    """Largest kernel size; every kernel is zero-padded to this size."""
    min_kernel_size: int = 7
    """Smallest kernel size; sizes are drawn uniformly among odd sizes in [min, blur_kernel_size]."""
    kernel_list: tuple[str, ...] = KERNEL_TYPES
    """Kernel families of the first blur (names in ``KERNEL_TYPES``)."""
    kernel_prob: tuple[float, ...] = (0.45, 0.25, 0.12, 0.03, 0.12, 0.03)
    """Probability of each family in ``kernel_list``."""
    sinc_prob: float = 0.1
    """Probability that the first kernel is a circular-lowpass sinc instead."""
    blur_sigma: tuple[float, float] = (0.2, 3.0)
    """Gaussian sigma range (both axes) of the first kernel, in pixels."""
    betag_range: tuple[float, float] = (0.5, 4.0)
    """Shape exponent range of generalized Gaussian kernels."""
    betap_range: tuple[float, float] = (1.0, 2.0)
    """Shape exponent range of plateau kernels."""
    # ---- second blur kernel
    kernel_list2: tuple[str, ...] = KERNEL_TYPES
    """Kernel families of the second blur."""
    kernel_prob2: tuple[float, ...] = (0.45, 0.25, 0.12, 0.03, 0.12, 0.03)
    """Probability of each family in ``kernel_list2``."""
    sinc_prob2: float = 0.1
    """Probability that the second kernel is a sinc."""
    blur_sigma2: tuple[float, float] = (0.2, 1.5)
    """Gaussian sigma range of the second kernel."""
    betag_range2: tuple[float, float] = (0.5, 4.0)
    """Generalized Gaussian exponent range of the second kernel."""
    betap_range2: tuple[float, float] = (1.0, 2.0)
    """Plateau exponent range of the second kernel."""
    # ---- final stage
    final_sinc_prob: float = 0.8
    """Probability of the final sinc filter (else identity)."""
    scale: int = 4
    """Super-resolution factor: the LR is H/scale x W/scale."""

    def __post_init__(self) -> None:
        """Coerce sequences to tuples and check every value."""
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, list):
                setattr(self, f.name, tuple(value))
        for name in ("resize_prob", "resize_prob2"):
            _check_probs(name, getattr(self, name), 3)
        for name in PROBABILITY_FIELDS:
            p = getattr(self, name)
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"{name}={p} is not a probability")
        for name in RANGE_FIELDS:
            _check_bounds(name, *_check_range(name, getattr(self, name)))
        for lst, prob in (("kernel_list", "kernel_prob"), ("kernel_list2", "kernel_prob2")):
            _check_kernels(lst, getattr(self, lst), prob, getattr(self, prob))
        k0, k1 = self.min_kernel_size, self.blur_kernel_size
        if k0 % 2 == 0 or k1 % 2 == 0 or not 1 <= k0 <= k1:
            raise ValueError(
                f"kernel sizes must be odd with 1 <= min_kernel_size <= blur_kernel_size, got {k0}, {k1}"
            )
        if int(self.scale) != self.scale or self.scale < 1:
            raise ValueError(f"scale must be a positive integer, got {self.scale}")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> DegradationConfig:
        """Build from a flat mapping, or from one holding it under ``degradation``; unknown keys raise ValueError."""
        if "degradation" in d:
            d = d["degradation"] or {}
        return from_dict(cls, dict(d), "degradation")  # typed: unknown keys and wrong types name the field

    @classmethod
    def from_yaml(cls, path: str | Path) -> DegradationConfig:
        """Load from a YAML file (keys under ``degradation:``, or at top level)."""
        return cls.from_dict(read_yaml_mapping(Path(path)))

    def stage_kernel_settings(
        self, stage: int
    ) -> tuple[
        tuple[str, ...],
        tuple[float, ...],
        float,
        tuple[float, float],
        tuple[float, float],
        tuple[float, float],
    ]:
        """``(kernel_list, kernel_prob, sinc_prob, blur_sigma, betag_range, betap_range)`` of blur stage 1 or 2."""
        if stage == 1:
            return (
                self.kernel_list,
                self.kernel_prob,
                self.sinc_prob,
                self.blur_sigma,
                self.betag_range,
                self.betap_range,
            )
        if stage == 2:
            return (
                self.kernel_list2,
                self.kernel_prob2,
                self.sinc_prob2,
                self.blur_sigma2,
                self.betag_range2,
                self.betap_range2,
            )
        raise ValueError(f"stage must be 1 or 2, got {stage}")


def _check_probs(name: str, probs: Sequence[float], n: int) -> None:
    """Raise unless ``probs`` has ``n`` non-negative entries summing to 1."""
    if len(probs) != n or any(p < 0 for p in probs) or abs(sum(probs) - 1.0) > 1e-6:
        raise ValueError(f"{name}={tuple(probs)} must be {n} non-negative probabilities summing to 1")


def _check_kernels(name: str, names: Sequence[str], prob_name: str, probs: Sequence[float]) -> None:
    """Raise unless ``names`` is a non-empty list of known kernel types with one probability each."""
    bad = [k for k in names if k not in KERNEL_TYPES]
    if bad or not names:
        raise ValueError(f"{name} has unknown kernel type(s) {bad}; known: {KERNEL_TYPES}")
    _check_probs(prob_name, probs, len(names))


def _check_range(name: str, rng: Sequence[float]) -> tuple[float, float]:
    """Return ``(low, high)`` or raise unless ``rng`` is an ordered pair."""
    if len(rng) != 2 or rng[0] > rng[1]:
        raise ValueError(f"{name}={tuple(rng)} must be a (low, high) pair with low <= high")
    return float(rng[0]), float(rng[1])
