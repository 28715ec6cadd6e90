"""RRDBNet, the ESRGAN / Real-ESRGAN generator, in plain torch.

The default configuration is Real-ESRGAN x4plus: 3 -> 3 channels, 64 features, 23 Residual-in-Residual Dense
Blocks with growth 32, two nearest x2 upsamplings (x4 in total), LeakyReLU(0.2) and residual scaling 0.2.
Parameter names follow the usual ``conv_first / body.N.rdbK.convJ / conv_body / conv_up1 / conv_up2 / conv_hr /
conv_last`` layout, so a converted state dict also loads into other RRDBNet implementations that use it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

NEGATIVE_SLOPE = 0.2
RESIDUAL_SCALE = 0.2


def _conv3x3(in_ch: int, out_ch: int) -> nn.Conv2d:
    """A 3x3 convolution with zero padding 1 and a bias."""
    return nn.Conv2d(in_ch, out_ch, 3, 1, 1)


def _lrelu(x: torch.Tensor) -> torch.Tensor:
    """LeakyReLU with slope 0.2 (the activation used throughout RRDBNet)."""
    return F.leaky_relu(x, NEGATIVE_SLOPE)


class ResidualDenseBlock(nn.Module):
    """Five densely connected 3x3 convolutions; the output is ``0.2 * conv5(...) + x``."""

    def __init__(self, num_feat: int = 64, num_grow_ch: int = 32) -> None:
        super().__init__()
        self.conv1 = _conv3x3(num_feat, num_grow_ch)
        self.conv2 = _conv3x3(num_feat + num_grow_ch, num_grow_ch)
        self.conv3 = _conv3x3(num_feat + 2 * num_grow_ch, num_grow_ch)
        self.conv4 = _conv3x3(num_feat + 3 * num_grow_ch, num_grow_ch)
        self.conv5 = _conv3x3(num_feat + 4 * num_grow_ch, num_feat)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Dense connections: every convolution sees ``x`` and all earlier growth features."""
        feats = [x]
        for conv in (self.conv1, self.conv2, self.conv3, self.conv4):
            feats.append(_lrelu(conv(torch.cat(feats, 1))))
        return self.conv5(torch.cat(feats, 1)) * RESIDUAL_SCALE + x


class RRDB(nn.Module):
    """Residual-in-Residual Dense Block: three dense blocks and an outer scaled residual."""

    def __init__(self, num_feat: int = 64, num_grow_ch: int = 32) -> None:
        super().__init__()
        self.rdb1 = ResidualDenseBlock(num_feat, num_grow_ch)
        self.rdb2 = ResidualDenseBlock(num_feat, num_grow_ch)
        self.rdb3 = ResidualDenseBlock(num_feat, num_grow_ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``0.2 * rdb3(rdb2(rdb1(x))) + x``."""
        return self.rdb3(self.rdb2(self.rdb1(x))) * RESIDUAL_SCALE + x


class RRDBNet(nn.Module):
    """The x4 RRDBNet generator (Real-ESRGAN x4plus layout by default).

    Input ``(B, num_in_ch, H, W)`` in [0, 1]; output ``(B, num_out_ch, 4H, 4W)``, not clamped.
    """

    scale = 4

    def __init__(
        self,
        num_in_ch: int = 3,
        num_out_ch: int = 3,
        num_feat: int = 64,
        num_block: int = 23,
        num_grow_ch: int = 32,
    ) -> None:
        super().__init__()
        self.num_block = num_block
        self.conv_first = _conv3x3(num_in_ch, num_feat)
        self.body = nn.Sequential(*(RRDB(num_feat, num_grow_ch) for _ in range(num_block)))
        self.conv_body = _conv3x3(num_feat, num_feat)
        self.conv_up1 = _conv3x3(num_feat, num_feat)
        self.conv_up2 = _conv3x3(num_feat, num_feat)
        self.conv_hr = _conv3x3(num_feat, num_feat)
        self.conv_last = _conv3x3(num_feat, num_out_ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Trunk at input resolution, then two nearest x2 upsamplings, each followed by a conv + LeakyReLU."""
        feat = self.conv_first(x)
        feat = feat + self.conv_body(self.body(feat))
        feat = _lrelu(self.conv_up1(F.interpolate(feat, scale_factor=2.0, mode="nearest")))
        feat = _lrelu(self.conv_up2(F.interpolate(feat, scale_factor=2.0, mode="nearest")))
        return self.conv_last(_lrelu(self.conv_hr(feat)))


def conv_names(num_block: int = 23) -> list[str]:
    """Module names of every convolution of an RRDBNet in forward (and ncnn export) order.

    Real-ESRGAN x4plus has ``1 + 23 * 15 + 5 = 351`` of them.
    """
    names = ["conv_first"]
    for b in range(num_block):
        for r in (1, 2, 3):
            names += [f"body.{b}.rdb{r}.conv{j}" for j in range(1, 6)]
    return names + ["conv_body", "conv_up1", "conv_up2", "conv_hr", "conv_last"]


def num_params(model: nn.Module) -> int:
    """Total number of parameters of ``model``."""
    return sum(p.numel() for p in model.parameters())
