"""TV-LPIPS: LPIPS on the images plus LPIPS on their total-variation maps (FluxSR reconstruction loss).

    TV-LPIPS(a, b) = LPIPS(a, b) + gamma * LPIPS(TV(a), TV(b))

Decisions (the paper publishes neither the operator nor gamma):

* TV operator: per-channel anisotropic total variation from forward differences,
      d_h[i, j] = |x[i+1, j] - x[i, j]|,   d_w[i, j] = |x[i, j+1] - x[i, j]|,
  with a zero difference in the last row (d_h) and the last column (d_w), so TV keeps the H x W size and the
  3 channels (LPIPS needs RGB input). Forward differences put an edge between pixels j and j+1 on pixel j only.
* Scaling: for x in [0, 1] each difference lies in [0, 1], so d_h + d_w lies in [0, 2];
      TV(x) = (d_h + d_w) / 2  lies in [0, 1],
  i.e. in fluxsr's image range. :class:`fluxsr.losses.lpips.LPIPS` maps [0, 1] linearly onto LPIPS' [-1, 1]
  (2 * TV - 1), so a flat region reads as -1 and the steepest possible edge as +1. A fixed, image-independent
  scale keeps the loss comparable across images (a per-image max-normalisation would not be).
* gamma = 1.0: the edge term weighs as much as plain LPIPS. Backbone: LPIPS-VGG (``load_lpips('vgg')``), the usual
  choice for a training loss.
"""

from __future__ import annotations

from collections.abc import Callable

import torch.nn.functional as F
from torch import Tensor, nn


def tv_map(x: Tensor) -> Tensor:
    """Per-channel TV map of x (B, C, H, W) in [0, 1]: ((|d_h x| + |d_w x|) / 2), same shape, values in [0, 1].

    d_h x[i, j] = x[i+1, j] - x[i, j] and d_w x[i, j] = x[i, j+1] - x[i, j], zero in the last row / column.
    """
    dh = (x[:, :, 1:, :] - x[:, :, :-1, :]).abs()
    dw = (x[:, :, :, 1:] - x[:, :, :, :-1]).abs()
    dh = F.pad(dh, (0, 0, 0, 1))
    dw = F.pad(dw, (0, 1, 0, 0))
    return 0.5 * (dh + dw)


class TVLPIPS(nn.Module):
    """TV-LPIPS(a, b) = lpips(a, b) + gamma * lpips(tv_map(a), tv_map(b)), per image (B,), inputs in [0, 1].

    ``lpips`` is any module/callable mapping two [0, 1] image batches to per-image distances (B,), normally
    ``fluxsr.losses.lpips.load_lpips('vgg')``. See the module docstring for the TV operator, scaling and gamma.
    """

    def __init__(self, lpips: Callable[[Tensor, Tensor], Tensor], gamma: float = 1.0) -> None:
        super().__init__()
        self.lpips = lpips
        self.gamma = float(gamma)

    def forward(self, a: Tensor, b: Tensor) -> Tensor:
        base = self.lpips(a, b)
        if self.gamma == 0.0:
            return base
        return base + self.gamma * self.lpips(tv_map(a), tv_map(b))
