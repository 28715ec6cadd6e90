"""The degradation's random draws: uniforms from a ``torch.Generator`` (drawn on its device, returned on the CPU)
and their mapping to categories and intervals."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


def uniform(generator: torch.Generator, *shape: int) -> Tensor:
    """Uniform [0, 1) float64 numbers from ``generator``, returned on the CPU."""
    return torch.rand(shape, generator=generator, device=generator.device, dtype=torch.float64).cpu()


def categorical(u: Tensor, probs: Sequence[float]) -> Tensor:
    """Map uniforms ``u`` to category indices with probabilities ``probs`` (inverse CDF)."""
    cdf = torch.tensor(probs, dtype=torch.float64).cumsum(0)
    cdf = cdf / cdf[-1]
    return torch.searchsorted(cdf, u.contiguous(), right=True).clamp(max=len(probs) - 1)


def between(u: Tensor, lo: float, hi: float) -> Tensor:
    """Scale uniforms ``u`` to ``[lo, hi)``."""
    return lo + u * (hi - lo)
