"""DISTS (Ding, Ma, Wang, Simoncelli 2020): Deep Image Structure and Texture Similarity, in plain torch.

For images x, y in [0, 1] (B, 3, H, W):

    h = (x - mean) / std,  mean = (0.485, 0.456, 0.406), std = (0.229, 0.224, 0.225)      (ImageNet statistics)
    features f_0 = x itself (3 channels, NOT normalised), f_1..f_5 = VGG16 relu1_2 ... relu5_3 of h, where the
    VGG16 max pooling is replaced by Hanning L2 pooling (see :func:`fluxsr.losses.vgg.l2_pool`).
    Per stage k and channel c, with spatial means mu, variances s^2 and covariance s_xy:
        S1_kc = (2 mu_x mu_y + c1) / (mu_x^2 + mu_y^2 + c1)        (texture)
        S2_kc = (2 s_xy + c2) / (s_x^2 + s_y^2 + c2)               (structure),   c1 = c2 = 1e-6
    DISTS(x, y) = 1 - sum_kc (alpha_kc S1_kc + beta_kc S2_kc) / (sum alpha + sum beta)              -> (B,)

alpha, beta (1, 1475, 1, 1) are the published learned weights; the VGG16 convolutions are torchvision's ImageNet
VGG16 (the same as LPIPS-VGG uses). :func:`load_dists` reads them from the cache.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn

from fluxsr.io.cache import cached_file
from fluxsr.losses.lpips import freeze, load_state_file
from fluxsr.losses.vgg import VGG16Features

DISTS_FILE = "dists.safetensors"
"""Cache file of the DISTS weights (written by ``fluxsr weights fetch dists``)."""

DISTS_CHANNELS = (3, 64, 128, 256, 512, 512)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def dists_stage_terms(fx: Tensor, fy: Tensor, c1: float = 1e-6, c2: float = 1e-6) -> tuple[Tensor, Tensor]:
    """Per-channel texture and structure similarities (B, C) of two feature maps (B, C, H, W).

    S1 = (2 mu_x mu_y + c1) / (mu_x^2 + mu_y^2 + c1),  S2 = (2 cov_xy + c2) / (var_x + var_y + c2),
    with biased spatial statistics (mean over H, W).
    """
    mx, my = fx.mean(dim=(2, 3)), fy.mean(dim=(2, 3))
    vx = ((fx - mx[..., None, None]) ** 2).mean(dim=(2, 3))
    vy = ((fy - my[..., None, None]) ** 2).mean(dim=(2, 3))
    cxy = (fx * fy).mean(dim=(2, 3)) - mx * my
    s1 = (2 * mx * my + c1) / (mx**2 + my**2 + c1)
    s2 = (2 * cxy + c2) / (vx + vy + c2)
    return s1, s2


class DISTS(nn.Module):
    """DISTS distance, frozen; ``forward(x, y)`` takes images in [0, 1] and returns one score per image (B,).

    ``weights_path``: safetensors with ``net.conv*`` (VGG16), ``alpha`` and ``beta``; ``None`` gives a random
    backbone and uniform alpha = beta (tests only). Use :func:`load_dists` for the real weights.
    """

    def __init__(self, weights_path: str | Path | None = None) -> None:
        super().__init__()
        self.net = VGG16Features(pool="l2")
        n = sum(DISTS_CHANNELS)
        self.register_buffer("alpha", torch.full((1, n, 1, 1), 0.1))
        self.register_buffer("beta", torch.full((1, n, 1, 1), 0.1))
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        if weights_path is not None:
            self.load_state_dict(load_state_file(weights_path), strict=True)
        freeze(self)

    def train(self, mode: bool = True) -> DISTS:
        """Always stays in eval mode (the module is a fixed metric)."""
        return super().train(False)

    def features(self, x: Tensor) -> list[Tensor]:
        """[x, relu1_2, relu2_2, relu3_3, relu4_3, relu5_3] with the VGG taps computed on (x - mean) / std."""
        return [x, *self.net((x - self.mean) / self.std)]

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        """DISTS(x, y) for x, y in [0, 1] of shape (B, 3, H, W); returns (B,)."""
        if x.shape != y.shape:
            raise ValueError(f"shape mismatch: {tuple(x.shape)} vs {tuple(y.shape)}")
        x, y = (
            x.to(self.alpha.dtype),
            y.to(self.alpha.dtype),
        )  # the weights' dtype (autocast still applies); grads flow
        w_sum = self.alpha.sum() + self.beta.sum()
        alphas = torch.split(self.alpha.flatten() / w_sum, DISTS_CHANNELS)
        betas = torch.split(self.beta.flatten() / w_sum, DISTS_CHANNELS)
        sim = x.new_zeros(x.shape[0])
        for fx, fy, a, b in zip(self.features(x), self.features(y), alphas, betas, strict=True):
            s1, s2 = dists_stage_terms(fx, fy)
            sim = sim + (s1 * a).sum(dim=1) + (s2 * b).sum(dim=1)
        return 1.0 - sim


def load_dists(device: torch.device | str = "cpu") -> DISTS:
    """DISTS with the real weights from the cache; raises MissingWeightsError (run ``fluxsr weights fetch``)."""
    return DISTS(weights_path=cached_file(DISTS_FILE, hint="fluxsr weights fetch")).to(device)
