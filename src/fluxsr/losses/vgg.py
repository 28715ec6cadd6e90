"""VGG16 and AlexNet feature extractors in plain torch (no torchvision), for LPIPS and DISTS.

Layer names (``conv1_1`` ... ``conv5_3`` and ``conv1`` ... ``conv5``) match the keys written by
:mod:`fluxsr.evaluation.weights`, so the converted ImageNet weights load with ``load_state_dict``.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

VGG16_STAGES: tuple[tuple[tuple[str, int, int], ...], ...] = (
    (("conv1_1", 3, 64), ("conv1_2", 64, 64)),
    (("conv2_1", 64, 128), ("conv2_2", 128, 128)),
    (("conv3_1", 128, 256), ("conv3_2", 256, 256), ("conv3_3", 256, 256)),
    (("conv4_1", 256, 512), ("conv4_2", 512, 512), ("conv4_3", 512, 512)),
    (("conv5_1", 512, 512), ("conv5_2", 512, 512), ("conv5_3", 512, 512)),
)
VGG16_TAPS = ("relu1_2", "relu2_2", "relu3_3", "relu4_3", "relu5_3")
VGG16_CHANNELS = (64, 128, 256, 512, 512)
ALEXNET_CHANNELS = (64, 192, 384, 256, 256)

Pooling = Literal["max", "l2"]


def hanning_l2_filter(channels: int, filter_size: int = 5) -> Tensor:
    """Depthwise low-pass filter of DISTS' L2 pooling, shape (channels, 1, k, k) with k = filter_size - 2.

    g = outer(a, a) / sum(outer(a, a)), a = hanning(filter_size)[1:-1]; for filter_size = 5, a = (0.5, 1, 0.5)
    and g = [[1, 2, 1], [2, 4, 2], [1, 2, 1]] / 16.
    """
    n = torch.arange(filter_size, dtype=torch.float64)
    window = 0.5 - 0.5 * torch.cos(2 * torch.pi * n / (filter_size - 1))  # numpy.hanning
    a = window[1:-1]
    g = torch.outer(a, a)
    g = (g / g.sum()).to(torch.float32)
    return g.expand(channels, 1, *g.shape).contiguous()


def l2_pool(x: Tensor, filt: Tensor, stride: int = 2, eps: float = 1e-12) -> Tensor:
    """L2 pooling (Henaff & Simoncelli), as in DISTS: ``sqrt(conv_depthwise(x^2, g, stride=2, padding=1) + eps)``."""
    pad = (filt.shape[-1] - 1) // 2
    return torch.sqrt(F.conv2d(x * x, filt, stride=stride, padding=pad, groups=x.shape[1]) + eps)


class L2Pool(nn.Module):
    """Module wrapper of :func:`l2_pool`; the filter is a non-persistent buffer (recomputed, not stored)."""

    def __init__(self, channels: int, filter_size: int = 5) -> None:
        super().__init__()
        self.register_buffer("filter", hanning_l2_filter(channels, filter_size), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        return l2_pool(x, self.filter)


class VGG16Features(nn.Module):
    """The 13 convolutions of VGG16 (``torchvision.models.vgg16().features``), returning the 5 ReLU taps.

    ``forward(x)`` -> [relu1_2, relu2_2, relu3_3, relu4_3, relu5_3] (channels 64, 128, 256, 512, 512), with a
    pooling layer between stages: ``pool='max'`` (2x2 max pooling, stride 2, as in VGG16/LPIPS) or ``pool='l2'``
    (DISTS' Hanning L2 pooling, stride 2). The input is used as given: the caller normalises it.
    """

    def __init__(self, pool: Pooling = "max") -> None:
        super().__init__()
        if pool not in ("max", "l2"):
            raise ValueError(f"pool must be 'max' or 'l2', got {pool!r}")
        self.pool_type = pool
        for stage in VGG16_STAGES:
            for name, c_in, c_out in stage:
                self.add_module(name, nn.Conv2d(c_in, c_out, kernel_size=3, padding=1))
        self.pools = nn.ModuleList(
            [nn.MaxPool2d(2, 2) if pool == "max" else L2Pool(c) for c in VGG16_CHANNELS[:-1]]
        )

    def forward(self, x: Tensor) -> list[Tensor]:
        taps: list[Tensor] = []
        h = x
        for i, stage in enumerate(VGG16_STAGES):
            if i > 0:
                h = self.pools[i - 1](h)
            for name, _, _ in stage:
                h = F.relu(getattr(self, name)(h))
            taps.append(h)
        return taps


class AlexNetFeatures(nn.Module):
    """The 5 convolutions of AlexNet (``torchvision.models.alexnet().features``), returning relu1 ... relu5.

    conv1 11x11/4 pad 2 -> relu1 -> maxpool 3/2 -> conv2 5x5 pad 2 -> relu2 -> maxpool 3/2 -> conv3 3x3 -> relu3
    -> conv4 3x3 -> relu4 -> conv5 3x3 -> relu5 (channels 64, 192, 384, 256, 256).
    """

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, kernel_size=11, stride=4, padding=2)
        self.conv2 = nn.Conv2d(64, 192, kernel_size=5, padding=2)
        self.conv3 = nn.Conv2d(192, 384, kernel_size=3, padding=1)
        self.conv4 = nn.Conv2d(384, 256, kernel_size=3, padding=1)
        self.conv5 = nn.Conv2d(256, 256, kernel_size=3, padding=1)

    def forward(self, x: Tensor) -> list[Tensor]:
        r1 = F.relu(self.conv1(x))
        r2 = F.relu(self.conv2(F.max_pool2d(r1, 3, 2)))
        r3 = F.relu(self.conv3(F.max_pool2d(r2, 3, 2)))
        r4 = F.relu(self.conv4(r3))
        r5 = F.relu(self.conv5(r4))
        return [r1, r2, r3, r4, r5]
