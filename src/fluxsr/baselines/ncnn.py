"""ncnn model files read into torch: the ``.param`` layer graph, the ``.bin`` weights, and the graph run as is.

Formats (as read here). ``.param``: magic ``7767517``, ``layer_count blob_count``, then one line per layer:
``type name n_in n_out inputs... outputs... key=value...``; a key ``-23300 - k`` holds an array for key ``k``
(``count,v1,v2,...``). ``.bin``: for each layer in order, its weights; a Convolution stores its kernel as a 4-byte
tag (``0x01306B47``: float16, ``0``: float32) followed by the values (OIHW order) padded to 4 bytes, then (if
``5=1``) its bias as raw float32.

:func:`run_ncnn_graph` executes the layers (convolution, activations, split/concat, eltwise, binary ops,
interpolation) in torch: the independent check of the Real-ESRGAN conversion (:mod:`fluxsr.baselines.realesrgan`).
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

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


def _run_convolution(layer: NcnnLayer, x: torch.Tensor, conv: NcnnConv) -> torch.Tensor:
    """An ncnn Convolution layer (symmetric explicit padding only) with its fused activation."""
    pad_l = int(layer.get(4, 0))
    pad_t = int(layer.get(14, pad_l))
    if min(pad_l, pad_t) < 0 or int(layer.get(15, pad_l)) != pad_l or int(layer.get(16, pad_t)) != pad_t:
        raise NotImplementedError(f"{layer.name}: only symmetric explicit padding is supported")
    stride = (int(layer.get(13, layer.get(3, 1))), int(layer.get(3, 1)))
    dilation = (int(layer.get(12, layer.get(2, 1))), int(layer.get(2, 1)))
    w = conv.weight.to(x.dtype)
    b = None if conv.bias is None else conv.bias.to(x.dtype)
    y = F.conv2d(x, w, b, stride=stride, padding=(pad_t, pad_l), dilation=dilation)
    act_params = layer.get(10, [])
    return _activation(y, int(layer.get(9, 0)), act_params if isinstance(act_params, list) else [act_params])


def _run_eltwise(layer: NcnnLayer, ins: list[torch.Tensor]) -> torch.Tensor:
    """An ncnn Eltwise layer: only the (weighted) sum."""
    op = int(layer.get(0, 1))
    coeffs = layer.get(1, [])
    coeffs = coeffs if isinstance(coeffs, list) and coeffs else [1.0] * len(ins)
    if op != 1:
        raise NotImplementedError(f"{layer.name}: Eltwise op {op}")
    return sum(float(c) * x for c, x in zip(coeffs, ins, strict=True))


def _run_layer(layer: NcnnLayer, ins: list[torch.Tensor], conv: NcnnConv | None) -> torch.Tensor:
    """Apply one ncnn layer to batched NCHW tensors (the ncnn channel axis is torch dim 1)."""
    if layer.type == "Convolution":
        assert conv is not None
        return _run_convolution(layer, ins[0], conv)
    if layer.type == "Concat":
        if int(layer.get(0, 0)) != 0:
            raise NotImplementedError(f"{layer.name}: Concat only along channels")
        return torch.cat(ins, 1)
    if layer.type == "Eltwise":
        return _run_eltwise(layer, ins)
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
