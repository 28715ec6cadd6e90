"""Losses and reference metrics: LPIPS, DISTS, TV-LPIPS and the Attention Diversification Loss."""

from ..lazy import lazy_face

__getattr__, __all__ = lazy_face(
    __name__,
    {
        "ADLCollector": "adl",
        "TAPS": "adl",
        "adl_loss": "adl",
        "centred_adl_loss": "adl",
        "parse_block_spec": "adl",
        "DISTS": "dists",
        "load_dists": "dists",
        "LPIPS": "lpips",
        "load_lpips": "lpips",
        "TVLPIPS": "tv_lpips",
        "tv_map": "tv_lpips",
        "AlexNetFeatures": "vgg",
        "VGG16Features": "vgg",
    },
)
