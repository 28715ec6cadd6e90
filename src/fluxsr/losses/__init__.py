"""Losses and reference metrics: LPIPS, DISTS, TV-LPIPS and the Attention Diversification Loss."""

from fluxsr.losses.adl import TAPS, ADLCollector, adl_loss, centred_adl_loss, parse_block_spec
from fluxsr.losses.dists import DISTS, load_dists
from fluxsr.losses.lpips import LPIPS, load_lpips
from fluxsr.losses.tv_lpips import TVLPIPS, tv_map
from fluxsr.losses.vgg import AlexNetFeatures, VGG16Features

__all__ = [
    "ADLCollector",
    "AlexNetFeatures",
    "DISTS",
    "TAPS",
    "LPIPS",
    "TVLPIPS",
    "VGG16Features",
    "adl_loss",
    "centred_adl_loss",
    "load_dists",
    "load_lpips",
    "parse_block_spec",
    "tv_map",
]
