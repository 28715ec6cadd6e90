"""LPIPS v0.1 (Zhang et al. 2018) in plain torch, with VGG16 or AlexNet features.

For images a, b in [0, 1] (B, 3, H, W):

    x  = 2 * a - 1                                   (fluxsr's [0, 1] convention -> LPIPS' [-1, 1])
    x' = (x - shift) / scale,   shift = (-0.030, -0.088, -0.188), scale = (0.458, 0.448, 0.450)
    f_l = backbone tap l of x',  n_l = f_l / (||f_l||_2 over channels + 1e-10)
    LPIPS(a, b) = sum_l  mean_{h,w}  sum_c  w_{l,c} * (n_l(a) - n_l(b))_c^2        -> shape (B,)

with taps relu1_2, relu2_2, relu3_3, relu4_3, relu5_3 (VGG16) or relu1..relu5 (AlexNet) and w_l the learned
non-negative 1x1 heads. Use :func:`load_lpips` for the real weights (``fluxsr weights fetch`` puts them in the
cache); ``LPIPS(net)`` without ``weights_path`` is randomly initialised (tests, shapes).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch
from torch import Tensor, nn

from fluxsr.io.cache import cached_file, read_safetensors
from fluxsr.losses.vgg import ALEXNET_CHANNELS, VGG16_CHANNELS, AlexNetFeatures, VGG16Features

LPIPS_FILES = {"vgg": "lpips_vgg.safetensors", "alex": "lpips_alex.safetensors"}
"""Cache file of each LPIPS backbone (written by ``fluxsr weights fetch lpips``)."""

Net = Literal["vgg", "alex"]

LPIPS_SHIFT = (-0.030, -0.088, -0.188)
LPIPS_SCALE = (0.458, 0.448, 0.450)


def freeze(module: nn.Module) -> nn.Module:
    """Put ``module`` in eval mode with ``requires_grad=False`` on all parameters (gradients still reach inputs)."""
    module.eval()
    for p in module.parameters():
        p.requires_grad_(False)
    return module


def unit_normalize(feat: Tensor, eps: float = 1e-10) -> Tensor:
    """n = f / (sqrt(sum_c f_c^2) + eps), over the channel dimension 1."""
    return feat / (torch.sqrt(torch.sum(feat * feat, dim=1, keepdim=True)) + eps)


def load_state_file(path: str | Path, device: torch.device | str = "cpu") -> dict[str, Tensor]:
    """Read a safetensors file (:func:`fluxsr.io.cache.read_safetensors`: a damaged file is one line naming it)
    into a dict of tensors on ``device``."""
    tensors, _ = read_safetensors(Path(path))
    return {k: v.to(device) for k, v in tensors.items()}


class LPIPS(nn.Module):
    """LPIPS distance, frozen; ``forward(a, b)`` takes images in [0, 1] and returns one distance per image (B,).

    Args:
        net: ``'vgg'`` (VGG16 backbone, the usual loss choice) or ``'alex'`` (AlexNet, the usual metric choice).
        weights_path: a safetensors file with the keys of ``self.state_dict()`` (as written by
            ``fluxsr weights fetch``). ``None`` keeps a random backbone and unit heads (for tests only).

    Parameters never require grad and the module stays in eval mode, but the distance is differentiable in the
    inputs, so it can be used as a loss.
    """

    def __init__(self, net: Net = "vgg", weights_path: str | Path | None = None) -> None:
        super().__init__()
        if net not in ("vgg", "alex"):
            raise ValueError(f"net must be 'vgg' or 'alex', got {net!r}")
        self.net_type = net
        self.net = VGG16Features(pool="max") if net == "vgg" else AlexNetFeatures()
        channels = VGG16_CHANNELS if net == "vgg" else ALEXNET_CHANNELS
        self.lins = nn.ModuleList([nn.Conv2d(c, 1, kernel_size=1, bias=False) for c in channels])
        for lin in self.lins:
            nn.init.ones_(lin.weight)
        self.register_buffer("shift", torch.tensor(LPIPS_SHIFT).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor(LPIPS_SCALE).view(1, 3, 1, 1), persistent=False)
        if weights_path is not None:
            self.load_state_dict(load_state_file(weights_path), strict=True)
        freeze(self)

    def train(self, mode: bool = True) -> LPIPS:
        """Always stays in eval mode (the module is a fixed metric)."""
        return super().train(False)

    def scale_input(self, x: Tensor) -> Tensor:
        """[0, 1] -> [-1, 1] -> (x - shift) / scale."""
        return ((2.0 * x - 1.0) - self.shift) / self.scale

    def forward(self, a: Tensor, b: Tensor) -> Tensor:
        """LPIPS(a, b) for a, b in [0, 1] of shape (B, 3, H, W); returns (B,)."""
        if a.shape != b.shape:
            raise ValueError(f"shape mismatch: {tuple(a.shape)} vs {tuple(b.shape)}")
        dtype = (
            self.shift.dtype
        )  # the metric's weights' dtype; under autocast (bf16 training) the convolutions still run in bf16
        a, b = a.to(dtype), b.to(dtype)
        feats_a = self.net(self.scale_input(a))
        feats_b = self.net(self.scale_input(b))
        dist = a.new_zeros(a.shape[0])
        for lin, fa, fb in zip(self.lins, feats_a, feats_b, strict=True):
            diff = (unit_normalize(fa) - unit_normalize(fb)) ** 2
            dist = dist + lin(diff).mean(dim=(1, 2, 3))
        return dist


def load_lpips(net: Net = "vgg", device: torch.device | str = "cpu") -> LPIPS:
    """LPIPS with the real converted weights from the cache.

    Raises :class:`fluxsr.io.cache.MissingWeightsError` (telling to run ``fluxsr weights fetch``) when absent.
    """
    if net not in LPIPS_FILES:
        raise ValueError(f"net must be one of {sorted(LPIPS_FILES)}, got {net!r}")
    path = cached_file(LPIPS_FILES[net], hint="fluxsr weights fetch")
    return LPIPS(net, weights_path=path).to(device)
