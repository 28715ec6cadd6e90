"""Image-quality metrics for x4 SR evaluation: PSNR, SSIM (full reference) and NIQE (no reference).

Inputs are float tensors in [0, 1], shaped (3, H, W) or (B, 3, H, W) (1-channel images are accepted too and are used
as their own luma). A (C, H, W) input gives a 0-d result, a batch gives shape (B,). Everything is computed in float64.

Two evaluation protocols are registered in :data:`PROTOCOLS` (see :class:`Protocol`):

``fluxsr`` (default) -- the classic SR-paper / BasicSR convention:
  1. both images are quantised to 8 bits, ``round(clamp(x, 0, 1) * 255) / 255``, i.e. the values of the saved PNGs;
  2. ``crop_border = scale`` pixels are removed on every side (4 for x4);
  3. PSNR and SSIM are computed on the BT.601 luma ``Y = 16 + (65.481 R + 128.553 G + 24.966 B)`` (0..255 scale,
     R, G, B in [0, 1]), in float64 and *not* rounded;
  4. PSNR = 10 log10(255^2 / MSE), +inf for identical images (no epsilon);
  5. SSIM = Wang et al. 2004: 11x11 Gaussian window (sigma 1.5), 'valid' filtering, C1 = (0.01 * 255)^2,
     C2 = (0.03 * 255)^2 -- the MATLAB ``ssim_index`` / BasicSR ``calculate_ssim`` (without MATLAB's downsampling);
  6. NIQE as pyiqa's ``niqe`` (see 8.), so no-reference numbers compare with published ones.

``pyiqa`` -- exactly ``pyiqa.create_metric('psnr'|'ssim', test_y_channel=True, color_space='ycbcr')`` (pyiqa 0.1.16),
  which is what OSEDiff-style one-step SR papers report:
  7. no border crop; 8-bit quantisation as when pyiqa reads the saved PNG files;
     PSNR: Y = rgb2ycbcr(x)[0] (values in [16/255, 235/255]), not rounded,
     PSNR = 10 log10(1 / (MSE + 1e-8)), so identical images give 80 dB (pyiqa's epsilon), not inf;
     SSIM: Y * 255 rounded to integers, then float64; the contrast-structure term is clamped at 0 (``relu(cs)``)
     before the product.
  8. NIQE (both protocols): pyiqa's ``niqe`` -- luma of *YIQ* (0.299 R + 0.587 G + 0.114 B, x255, rounded),
     no crop; see :func:`niqe`.
  pyiqa computes the luma in float32, and the rounding of its float32 error decides exact .5 ties differently on
  different machines; fluxsr computes every luma with :func:`luma255`, which is exact for 8-bit input, so its values
  are the same everywhere (and within 1e-2 NIQE / 1e-4 SSIM of any machine's pyiqa; docs/evaluation.md).

NIQE needs the pristine-model parameters of Mittal et al. (``mu_prisparam``, ``cov_prisparam`` from the MATLAB
release). They ship in the ``basicsr`` sdist on PyPI; :func:`fetch_niqe_params` converts them once to
``niqe_pris_params.safetensors`` in :func:`fluxsr.io.cache.cache_dir`.
"""

from __future__ import annotations

import io
import math
import tarfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..io.cache import atomic_save_safetensors, cache_dir, cached_file, pip_download, read_safetensors

Tensor = torch.Tensor

# ----------------------------------------------------------------------------------------------------------------
# Shapes, quantisation, colour
# ----------------------------------------------------------------------------------------------------------------


def as_batch(x: Tensor) -> tuple[Tensor, bool]:
    """Return ``x`` as a float64 (B, C, H, W) tensor and whether the input was unbatched (C, H, W)."""
    if x.ndim == 3:
        return x.unsqueeze(0).to(torch.float64), True
    if x.ndim == 4:
        return x.to(torch.float64), False
    raise ValueError(f"expected (C, H, W) or (B, C, H, W), got shape {tuple(x.shape)}")


def unbatch(values: Tensor, single: bool) -> Tensor:
    """Per-image results (B,) -> 0-d tensor when the input had no batch dimension."""
    return values[0] if single else values


def quantize_8bit(x: Tensor) -> Tensor:
    """Values an 8-bit file would store: ``round(clamp(x, 0, 1) * 255) / 255`` (round half to even)."""
    return torch.round(x.clamp(0.0, 1.0) * 255.0) / 255.0


def crop(x: Tensor, border: int) -> Tensor:
    """Remove ``border`` pixels from each side of the last two dimensions (no-op for 0)."""
    if border < 0:
        raise ValueError("crop_border must be >= 0")
    if border == 0:
        return x
    if 2 * border >= min(x.shape[-2:]):
        raise ValueError(f"crop_border={border} leaves nothing of a {tuple(x.shape[-2:])} image")
    return x[..., border:-border, border:-border]


def rgb_to_y(x: Tensor) -> Tensor:
    """BT.601 luma in [0, 1]: ``Y = 16/255 + (65.481 R + 128.553 G + 24.966 B) / 255`` for R, G, B in [0, 1].

    Input (..., 3, H, W); output (..., 1, H, W) in float64. This is MATLAB's ``rgb2ycbcr`` Y (in [16/255, 235/255]).
    """
    x = x.to(torch.float64)
    r, g, b = x[..., 0:1, :, :], x[..., 1:2, :, :], x[..., 2:3, :, :]
    return (16.0 + 65.481 * r + 128.553 * g + 24.966 * b) / 255.0


def luma(x: Tensor, y_channel: bool) -> Tensor:
    """``rgb_to_y(x)`` for 3-channel input when ``y_channel``; 1-channel input (and y_channel=False) pass through."""
    return rgb_to_y(x) if (y_channel and x.shape[-3] == 3) else x.to(torch.float64)


def array_to_tensor(array: np.ndarray) -> Tensor:
    """HWC / HW numpy image -> (C, H, W) float64 in [0, 1].

    uint8 is divided by 255, uint16 by 65535 (so 16-bit ``v * 257`` equals 8-bit ``v`` exactly); float arrays are
    taken as already in [0, 1]. An alpha channel (4th) is dropped.
    """
    if array.dtype == np.uint8:
        x = array.astype(np.float64) / 255.0
    elif array.dtype == np.uint16:
        x = array.astype(np.float64) / 65535.0
    elif np.issubdtype(array.dtype, np.floating):
        x = array.astype(np.float64)
    else:
        raise TypeError(f"unsupported image dtype {array.dtype}")
    if x.ndim == 2:
        x = x[:, :, None]
    return torch.from_numpy(np.ascontiguousarray(x[:, :, :3].transpose(2, 0, 1)))


def _png_bit_depth(path: Path) -> int | None:
    """Bit depth from a PNG header (byte 24 of the file), or None for other formats."""
    with open(path, "rb") as f:
        head = f.read(25)
    return head[24] if head[:8] == b"\x89PNG\r\n\x1a\n" and len(head) == 25 else None


def load_image(path: str | Path) -> Tensor:
    """Read an 8- or 16-bit image file as (C, H, W) float64 in [0, 1] (RGB order, alpha dropped, gray kept 1-ch).

    Uses OpenCV when installed (keeps 16-bit RGB); otherwise PIL, which keeps 16-bit only for grayscale and would
    silently truncate 16-bit RGB PNGs -- that case raises instead.
    """
    path = Path(path)
    try:
        import cv2
    except ImportError:
        cv2 = None
    if cv2 is not None:
        arr = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        if arr is None:
            raise ValueError(f"cannot read image {path}")
        if arr.ndim == 3:
            arr = arr[:, :, [2, 1, 0, 3][: arr.shape[2]]] if arr.shape[2] == 4 else arr[:, :, ::-1]
        return array_to_tensor(arr)
    from PIL import Image

    with Image.open(path) as im:
        if im.mode in ("I;16", "I;16B", "I;16L", "I"):
            return array_to_tensor(np.asarray(im).astype(np.uint16))
        if _png_bit_depth(path) == 16:
            raise ValueError(
                f"{path}: 16-bit colour PNG needs opencv-python(-headless) to be read losslessly"
            )
        return array_to_tensor(np.asarray(im.convert("L" if im.mode in ("L", "LA", "1") else "RGB")))


# ----------------------------------------------------------------------------------------------------------------
# PSNR
# ----------------------------------------------------------------------------------------------------------------


def mse(a: Tensor, b: Tensor) -> Tensor:
    """Per-image mean squared error over (C, H, W) of two (B, C, H, W) tensors: ``mean((a - b)^2)``."""
    return ((a.to(torch.float64) - b.to(torch.float64)) ** 2).mean(dim=(1, 2, 3))


def psnr_from_mse(err: Tensor, data_range: float = 1.0, eps: float = 0.0) -> Tensor:
    """``PSNR = 10 log10(data_range^2 / (MSE + eps))``; with eps = 0 an MSE of 0 gives +inf."""
    return 10.0 * torch.log10(data_range**2 / (err + eps))


def psnr(
    a: Tensor, b: Tensor, *, crop_border: int = 0, y_channel: bool = False, data_range: float = 1.0
) -> Tensor:
    """PSNR in dB between ``a`` and ``b`` (values in [0, data_range]); +inf when they are identical.

    ``y_channel`` uses the BT.601 luma (:func:`rgb_to_y`, unrounded); ``crop_border`` pixels are removed on each side
    first. ``PSNR = 10 log10(data_range^2 / MSE)``, MSE over all remaining pixels and channels, per image.
    """
    _check_pair(a, b)
    a4, single = as_batch(a)
    b4, _ = as_batch(b)
    a4, b4 = crop_pair(a4, b4, crop_border)
    if y_channel:
        a4, b4 = luma(a4 / data_range, True) * data_range, luma(b4 / data_range, True) * data_range
    return unbatch(psnr_from_mse(mse(a4, b4), data_range), single)


def crop_pair(a: Tensor, b: Tensor, border: int) -> tuple[Tensor, Tensor]:
    """:func:`crop` applied to both images."""
    return crop(a, border), crop(b, border)


def _check_pair(a: Tensor, b: Tensor) -> None:
    if a.shape != b.shape:
        raise ValueError(f"images differ in shape: {tuple(a.shape)} vs {tuple(b.shape)}")


# ----------------------------------------------------------------------------------------------------------------
# SSIM
# ----------------------------------------------------------------------------------------------------------------


def gaussian_window(size: int = 11, sigma: float = 1.5) -> Tensor:
    """MATLAB ``fspecial('gaussian', size, sigma)``: ``h = exp(-(x^2 + y^2) / (2 sigma^2))`` on the centred grid,
    entries below ``eps * max(h)`` set to 0, normalised to sum 1. Float64, shape (size, size)."""
    r = (size - 1) / 2.0
    t = torch.arange(size, dtype=torch.float64) - r
    h = torch.exp(-(t[:, None] ** 2 + t[None, :] ** 2) / (2.0 * sigma * sigma))
    h[h < torch.finfo(torch.float64).eps * h.max()] = 0.0
    return h / h.sum()


def gaussian_kernel_1d(size: int = 11, sigma: float = 1.5) -> Tensor:
    """Normalised 1-D Gaussian ``g_i = exp(-t_i^2 / (2 sigma^2)) / sum``, ``t = -(size-1)/2 .. (size-1)/2``; its outer
    product with itself is :func:`gaussian_window` (when fspecial's eps threshold zeroes nothing)."""
    t = torch.arange(size, dtype=torch.float64) - (size - 1) / 2.0
    g = torch.exp(-(t**2) / (2.0 * sigma * sigma))
    return g / g.sum()


def filter_valid(x: Tensor, kernel: Tensor) -> Tensor:
    """Correlate each channel of (B, C, H, W) ``x`` with the separable window ``outer(kernel, kernel)`` (1-D
    ``kernel`` of length k), 'valid' region only: output (B, C, H-k+1, W-k+1). Two 1-D passes (float64 2-D
    convolution is ~10x slower on CPU); equal to the 2-D correlation up to float64 rounding."""
    c, k = x.shape[1], kernel.numel()
    kern = kernel.to(x.dtype)
    x = F.conv2d(x, kern.view(1, 1, k, 1).expand(c, 1, k, 1), groups=c)
    return F.conv2d(x, kern.view(1, 1, 1, k).expand(c, 1, 1, k), groups=c)


def ssim_map(x: Tensor, y: Tensor, kernel: Tensor, c1: float, c2: float, clamp_cs: bool = False) -> Tensor:
    """SSIM map ``l * cs`` with ``l = (2 mu_x mu_y + C1) / (mu_x^2 + mu_y^2 + C1)`` and
    ``cs = (2 s_xy + C2) / (s_x^2 + s_y^2 + C2)``; means/variances are weighted by the separable window
    ``outer(kernel, kernel)`` ('valid', :func:`filter_valid`).
    ``clamp_cs`` replaces cs by max(cs, 0) (pyiqa)."""
    mu_x, mu_y = filter_valid(x, kernel), filter_valid(y, kernel)
    s_xx = filter_valid(x * x, kernel) - mu_x**2
    s_yy = filter_valid(y * y, kernel) - mu_y**2
    s_xy = filter_valid(x * y, kernel) - mu_x * mu_y
    cs = (2.0 * s_xy + c2) / (s_xx + s_yy + c2)
    if clamp_cs:
        cs = cs.clamp_min(0.0)
    return (2.0 * mu_x * mu_y + c1) / (mu_x**2 + mu_y**2 + c1) * cs


def ssim(a: Tensor, b: Tensor, *, crop_border: int = 0, y_channel: bool = False) -> Tensor:
    """SSIM (Wang et al. 2004) as MATLAB ``ssim_index`` / BasicSR ``calculate_ssim``, per image.

    Images in [0, 1] are scaled to 0..255 (luma :func:`rgb_to_y` when ``y_channel``, unrounded), ``crop_border``
    removed, then the mean of :func:`ssim_map` with an 11x11 Gaussian window (sigma 1.5), 'valid' filtering,
    ``C1 = (0.01 * 255)^2``, ``C2 = (0.03 * 255)^2``; for several channels the mean over channels.
    """
    _check_pair(a, b)
    a4, single = as_batch(a)
    b4, _ = as_batch(b)
    a4, b4 = crop_pair(a4, b4, crop_border)
    x, y = luma(a4, y_channel) * 255.0, luma(b4, y_channel) * 255.0
    m = ssim_map(x, y, gaussian_kernel_1d(11, 1.5), (0.01 * 255) ** 2, (0.03 * 255) ** 2)
    return unbatch(m.mean(dim=(1, 2, 3)), single)


# ----------------------------------------------------------------------------------------------------------------
# pyiqa-exact PSNR / SSIM (pyiqa 0.1.16: archs/psnr_arch.py, ssim_arch.py, utils/color_util.py)
# ----------------------------------------------------------------------------------------------------------------


def luma255(x: Tensor, color_space: str = "ycbcr") -> Tensor:
    """Luma of (B, 3, H, W) RGB in [0, 1] on the 0..255 scale, float64, the same on every machine.

    ycbcr (BT.601, pyiqa ``to_y_channel``): ``Y = 16 + (65481 r + 128553 g + 24966 b) / 255000``; yiq (pyiqa's NIQE
    default): ``Y = (299 r + 587 g + 114 b) / 1000``, with r, g, b the 0..255 levels ``x * 255``. Levels within 1e-4 of
    an integer (8-bit images, also after a float32 round trip) are snapped to it, so for 8-bit input the numerators
    are exact integers and the one division is correctly rounded: an exact .5 (they occur: yiq r = g = 0, b = 250 gives 28.5)
    stays exactly .5 and ``torch.round`` sends it to the even level on any machine.

    Why not pyiqa's float32 matmul: its rounding error (~1e-5 levels) decides on which side those exact ties fall,
    and that depends on the BLAS kernel (CPU model, instruction set), so pyiqa's rounded luma, and every metric that
    rounds it (SSIM, NIQE), differ between machines (NIQE by up to ~1e-2 on the skimage photos; docs/evaluation.md).
    """
    lv = x.to(torch.float64) * 255.0
    level = torch.round(lv)
    lv = torch.where((lv - level).abs() < 1e-4, level, lv)
    r, g, b = lv[:, 0:1], lv[:, 1:2], lv[:, 2:3]
    if color_space == "ycbcr":
        return 16.0 + (65481.0 * r + 128553.0 * g + 24966.0 * b) / 255000.0
    if color_space == "yiq":
        return (299.0 * r + 587.0 * g + 114.0 * b) / 1000.0
    raise ValueError(f"unknown color space {color_space!r}")


def rounded_luma255(x: Tensor, color_space: str = "yiq") -> Tensor:
    """Integer luma 0..255 that pyiqa's SSIM and NIQE score: 3-channel -> ``round(luma255(x))`` (ties to even, the
    same on every machine), 1-channel -> ``round(x * 255)``. Returns float64 (B, 1, H, W)."""
    if x.shape[1] == 3:
        return torch.round(luma255(x, color_space))
    return torch.round(x.to(torch.float64) * 255)


def pyiqa_psnr(a: Tensor, b: Tensor, *, crop_border: int = 0) -> Tensor:
    """pyiqa ``psnr`` with ``test_y_channel=True, color_space='ycbcr'``: Y in [0, 1] (unrounded; :func:`luma255`
    in float64 where pyiqa uses float32, a difference below 1e-5 dB), ``PSNR = 10 log10(1 / (MSE + 1e-8))`` -- 80 dB
    for identical images."""
    _check_pair(a, b)
    a4, single = as_batch(a)
    b4, _ = as_batch(b)
    a4, b4 = crop_pair(a4, b4, crop_border)
    if a4.shape[1] == 3:
        a4, b4 = luma255(a4) / 255.0, luma255(b4) / 255.0
    return unbatch(psnr_from_mse(mse(a4, b4), 1.0, eps=1e-8), single)


def pyiqa_ssim(a: Tensor, b: Tensor, *, crop_border: int = 0) -> Tensor:
    """pyiqa ``ssim`` with ``test_y_channel=True, color_space='ycbcr'`` (downsample=False):
    ``Y255 = round(Y * 255)`` (:func:`luma255`, ties to even), 11x11 sigma-1.5 Gaussian, 'valid' filtering,
    C1 = (0.01*255)^2, C2 = (0.03*255)^2, ``ssim_map = l * max(cs, 0)``, mean. (pyiqa's window is the float32-rounded
    2-D fspecial; the exact separable float64 window used here moves SSIM by < 1e-6: 5e-7 at most on Set5+Set14.)"""
    _check_pair(a, b)
    a4, single = as_batch(a)
    b4, _ = as_batch(b)
    a4, b4 = crop_pair(a4, b4, crop_border)
    x, y = rounded_luma255(a4, "ycbcr"), rounded_luma255(b4, "ycbcr")
    m = ssim_map(x, y, gaussian_kernel_1d(11, 1.5), (0.01 * 255) ** 2, (0.03 * 255) ** 2, clamp_cs=True)
    return unbatch(m.mean(dim=(1, 2, 3)), single)


# ----------------------------------------------------------------------------------------------------------------
# MATLAB-compatible bicubic imresize
# ----------------------------------------------------------------------------------------------------------------


def cubic(x: Tensor, a: float = -0.5) -> Tensor:
    """Keys cubic kernel (a = -0.5, MATLAB):
    ``(a+2)|x|^3 - (a+3)|x|^2 + 1`` for |x| <= 1, ``a|x|^3 - 5a|x|^2 + 8a|x| - 4a`` for 1 < |x| <= 2, else 0."""
    ax = x.abs()
    ax2, ax3 = ax * ax, ax * ax * ax
    near = ((a + 2) * ax3 - (a + 3) * ax2 + 1) * (ax <= 1)
    far = (a * ax3 - 5 * a * ax2 + 8 * a * ax - 4 * a) * ((ax > 1) & (ax <= 2))
    return near + far


def mirror_index(idx: Tensor, length: int) -> Tensor:
    """MATLAB symmetric boundary (edge sample repeated): ... 1 0 | 0 1 ... L-1 | L-1 L-2 ... (0-based)."""
    m = torch.remainder(idx, 2 * length)
    return torch.where(m < length, m, 2 * length - 1 - m)


def resize_matrix(in_len: int, out_len: int, scale: float, antialias: bool = True) -> Tensor:
    """(out_len, in_len) float64 matrix of MATLAB ``imresize`` bicubic weights along one axis.

    Output sample i sits at ``u = (i + 0.5) / scale - 0.5`` (0-based input coordinates). When shrinking with
    antialiasing the kernel is stretched: ``w(d) = scale * cubic(scale * d)`` over ``4 / scale`` taps, otherwise
    ``w(d) = cubic(d)``; ``d = u - j`` for taps ``j = floor(u - width/2) + 0 .. ceil(width) + 1``; rows normalised to
    sum 1; taps outside the image are folded back with :func:`mirror_index`.
    """
    aa = antialias and scale < 1
    width = 4.0 / scale if aa else 4.0
    taps = math.ceil(width) + 2
    u = (torch.arange(out_len, dtype=torch.float64) + 0.5) / scale - 0.5
    left = torch.floor(u - width / 2)
    idx = left[:, None] + torch.arange(taps, dtype=torch.float64)[None, :]
    d = u[:, None] - idx
    w = scale * cubic(scale * d) if aa else cubic(d)
    w = w / w.sum(dim=1, keepdim=True)
    cols = mirror_index(idx.long(), in_len)
    return torch.zeros(out_len, in_len, dtype=torch.float64).scatter_add_(1, cols, w)


def round_half_away(x: Tensor) -> Tensor:
    """MATLAB ``round``: halves go away from zero (torch.round rounds them to even)."""
    return torch.sign(x) * torch.floor(x.abs() + 0.5)


def imresize_matlab(
    x: Tensor,
    scale: float | None = None,
    size: tuple[int, int] | None = None,
    *,
    antialias: bool = True,
    uint8: bool = False,
) -> Tensor:
    """MATLAB ``imresize(x, scale, 'bicubic')`` (or to ``size = (H, W)``) on the last two dims of a tensor.

    Output size ``ceil(H * scale), ceil(W * scale)``. Separable in float64: ``y = R_h @ x @ R_w^T`` with
    :func:`resize_matrix`, height first. Float input (``uint8=False``): no clipping or rounding, returns x's float
    dtype. ``uint8=True``: x holds 0..255 levels and MATLAB's uint8 path is reproduced -- the result is clamped to
    [0, 255] and rounded (half away from zero) after *each* pass, as MATLAB keeps the uint8 class between the two
    1-D resizes (this matches the standard MATLAB-made Set5 LR files on 99.95 % of the pixels, +-1 elsewhere,
    against ~90 % without the intermediate rounding).
    """
    if (scale is None) == (size is None):
        raise ValueError("give exactly one of scale or size")
    h, w = x.shape[-2:]
    if size is None:
        size = (math.ceil(h * scale), math.ceil(w * scale))
        sh = sw = float(scale)
    else:
        sh, sw = size[0] / h, size[1] / w
    out_dtype = x.dtype if x.is_floating_point() else torch.float64
    rh = resize_matrix(h, size[0], sh, antialias)
    rw = resize_matrix(w, size[1], sw, antialias)
    step = (lambda t: round_half_away(t.clamp(0.0, 255.0))) if uint8 else (lambda t: t)
    y = step(torch.matmul(rh, x.to(torch.float64)))
    return step(torch.matmul(y, rw.t())).to(out_dtype)


# ----------------------------------------------------------------------------------------------------------------
# NIQE parameters (basicsr sdist -> safetensors)
# ----------------------------------------------------------------------------------------------------------------

NIQE_PARAMS_FILE = "niqe_pris_params.safetensors"
BASICSR_REQ = "basicsr==1.4.2"
"""The newest basicsr on PyPI is sdist-only; its wheels (<= 1.3.3.x) do not carry niqe_pris_params.npz."""
_NIQE_MEMBER = "basicsr/metrics/niqe_pris_params.npz"


def read_archive_member(archive: Path, suffix: str) -> bytes:
    """Bytes of the single member of a wheel/zip or .tar.gz whose path ends with ``suffix``."""
    archive = Path(archive)
    if archive.suffix in (".whl", ".zip"):
        with zipfile.ZipFile(archive) as z:
            names = [n for n in z.namelist() if n.endswith(suffix)]
            if len(names) == 1:
                return z.read(names[0])
    else:
        with tarfile.open(archive) as t:
            members = [m for m in t.getmembers() if m.isfile() and m.name.endswith(suffix)]
            if len(members) == 1:
                f = t.extractfile(members[0])
                assert f is not None
                return f.read()
    raise FileNotFoundError(f"{archive} has no (single) member ending with {suffix}")


def read_niqe_npz(data: bytes) -> dict[str, np.ndarray]:
    """Parse basicsr's ``niqe_pris_params.npz`` (no pickles): mu_pris_param (36,), cov_pris_param (36, 36),
    gaussian_window (7, 7), all float64."""
    with np.load(io.BytesIO(data), allow_pickle=False) as npz:
        out = {
            "mu_pris_param": np.asarray(npz["mu_pris_param"], dtype=np.float64).reshape(36),
            "cov_pris_param": np.asarray(npz["cov_pris_param"], dtype=np.float64).reshape(36, 36),
            "gaussian_window": np.asarray(npz["gaussian_window"], dtype=np.float64).reshape(7, 7),
        }
    if not np.allclose(out["cov_pris_param"], out["cov_pris_param"].T):
        raise ValueError("cov_pris_param is not symmetric")
    return out


def fetch_niqe_params(download_dir: Path, force: bool = False) -> list[Path]:
    """FETCHERS entry: download the basicsr sdist (never installed or imported), read
    ``basicsr/metrics/niqe_pris_params.npz`` with ``np.load(allow_pickle=False)`` and write
    ``niqe_pris_params.safetensors`` (keys mu_pris_param, cov_pris_param, gaussian_window) in the cache."""
    out = cache_dir() / NIQE_PARAMS_FILE
    if out.is_file() and not force:
        return [out]
    # binary=None: 1.4.2 exists only as an sdist; --no-binary=:all: would also force pip's metadata-build
    # dependencies (numpy, ...) to build from source, which fails.
    archive = pip_download(BASICSR_REQ, Path(download_dir), binary=None)
    params = read_niqe_npz(read_archive_member(archive, _NIQE_MEMBER))
    tensors = {k: torch.from_numpy(v) for k, v in params.items()}
    meta = {
        "source": f"{BASICSR_REQ} ({archive.name}) {_NIQE_MEMBER}",
        "origin": "NIQE MATLAB release modelparameters",
    }
    atomic_save_safetensors(tensors, out, metadata=meta)
    return [out]


def load_niqe_params() -> tuple[Tensor, Tensor]:
    """(mu (36,), cov (36, 36)) float64 from the cache; :class:`fluxsr.io.cache.MissingWeightsError` if not fetched."""
    t, _ = read_safetensors(cached_file(NIQE_PARAMS_FILE))
    return t["mu_pris_param"].to(torch.float64), t["cov_pris_param"].to(torch.float64)


# ----------------------------------------------------------------------------------------------------------------
# NIQE (Mittal, Soundararajan & Bovik 2013), following pyiqa 0.1.16 archs/niqe_arch.py
# ----------------------------------------------------------------------------------------------------------------

# pyiqa builds its AGGD lookup table with a float32 arange: gamma = 0.2, 0.201, ..., 10.0 (9801 values).
_AGGD_GAMMA = torch.arange(0.2, 10 + 0.001, 0.001, dtype=torch.float32).to(torch.float64)


def filter_replicate(x: Tensor, window: Tensor) -> Tensor:
    """Same-size correlation of (B, 1, H, W) with an odd square window, edges replicated (MATLAB 'replicate')."""
    p = window.shape[-1] // 2
    return F.conv2d(F.pad(x, (p, p, p, p), mode="replicate"), window.to(x.dtype)[None, None])


def mscn(img: Tensor, window: Tensor) -> Tensor:
    """Mean-subtracted contrast-normalised coefficients ``(I - mu) / (sigma + 1)`` with Gaussian-weighted
    ``mu = w * I``, ``sigma = sqrt(|w * I^2 - mu^2| + eps)`` (eps = float64 eps), 'replicate' borders."""
    mu = filter_replicate(img, window)
    var = filter_replicate(img * img, window) - mu * mu
    sigma = torch.sqrt(var.abs() + torch.finfo(img.dtype).eps)
    return (img - mu) / (sigma + 1.0)


def aggd_fit(x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Moment-matching fit of an asymmetric generalised Gaussian to each block of (N, 1, h, w).

    ``s_l = sqrt(mean(x^2 | x<0))``, ``s_r = sqrt(mean(x^2 | x>0))``, ``g = s_l / s_r``,
    ``r = mean|x|^2 / mean(x^2)``, ``R = r (g^3 + 1)(g + 1) / (g^2 + 1)^2``; alpha = the table gamma minimising
    ``|Gamma(2/a)^2 / (Gamma(1/a) Gamma(3/a)) - R|``; ``beta_{l,r} = s_{l,r} sqrt(Gamma(1/a) / Gamma(3/a))``.
    Returns (alpha, beta_l, beta_r), each (N,).
    """
    gam = _AGGD_GAMMA.to(x.dtype)
    r_gam = torch.exp(2 * torch.lgamma(2.0 / gam) - (torch.lgamma(1.0 / gam) + torch.lgamma(3.0 / gam)))
    neg, pos = x < 0, x > 0
    s_l = torch.sqrt((x * neg).pow(2).sum(dim=(1, 2, 3)) / neg.sum(dim=(1, 2, 3)).to(x.dtype))
    s_r = torch.sqrt((x * pos).pow(2).sum(dim=(1, 2, 3)) / pos.sum(dim=(1, 2, 3)).to(x.dtype))
    g = s_l / s_r
    r = x.abs().mean(dim=(1, 2, 3)).pow(2) / x.pow(2).mean(dim=(1, 2, 3))
    r_norm = r * (g.pow(3) + 1) * (g + 1) / (g.pow(2) + 1).pow(2)
    alpha = gam[(r_gam[None, :] - r_norm[:, None]).abs().argmin(dim=1)]
    k = torch.exp(torch.lgamma(1 / alpha) - torch.lgamma(3 / alpha)).sqrt()
    return alpha, s_l * k, s_r * k


def niqe_block_features(blocks: Tensor) -> Tensor:
    """18 NIQE features of each MSCN block (N, 1, h, w): AGGD (alpha, (beta_l + beta_r) / 2) of the block, then for
    the products with its circular shifts by (0,1), (1,0), (1,1), (1,-1): alpha, eta, beta_l, beta_r with
    ``eta = (beta_r - beta_l) Gamma(2/alpha) / Gamma(1/alpha)``. Returns (N, 18)."""
    alpha, bl, br = aggd_fit(blocks)
    feats = [alpha, (bl + br) / 2]
    for shift in ((0, 1), (1, 0), (1, 1), (1, -1)):
        alpha, bl, br = aggd_fit(blocks * torch.roll(blocks, shift, dims=(2, 3)))
        eta = (br - bl) * torch.exp(torch.lgamma(2 / alpha) - torch.lgamma(1 / alpha))
        feats += [alpha, eta, bl, br]
    return torch.stack(feats, dim=1)


def split_blocks(x: Tensor, bh: int, bw: int) -> Tensor:
    """(1, 1, H, W) -> (nH * nW, 1, bh, bw) non-overlapping blocks (H, W multiples of bh, bw)."""
    _, _, h, w = x.shape
    t = x.reshape(h // bh, bh, w // bw, bw).permute(0, 2, 1, 3)
    return t.reshape(-1, 1, bh, bw)


def niqe_distance(feats: Tensor, mu_p: Tensor, cov_p: Tensor) -> Tensor:
    """``sqrt((mu_p - mu_d)^T pinv((cov_p + cov_d) / 2) (mu_p - mu_d))`` with the image's feature mean mu_d and
    unbiased covariance cov_d over blocks; blocks with a NaN feature are dropped (MATLAB nanmean/nancov).
    ValueError when no block has finite features (a flat image: NIQE is undefined)."""
    good = torch.isfinite(feats).all(dim=1)
    if not good.any():
        raise ValueError("NIQE undefined: no textured 96x96 block (flat image)")
    f = feats[good]
    mu_d = f.mean(dim=0)
    cov_d = torch.cov(f.t(), correction=1 if f.shape[0] > 1 else 0)
    diff = (mu_p - mu_d)[None, :]
    return torch.sqrt((diff @ torch.linalg.pinv((cov_p + cov_d) / 2) @ diff.t()).squeeze())


def niqe_single(y255: Tensor, mu_p: Tensor, cov_p: Tensor, block: int = 96) -> Tensor:
    """NIQE of one (1, 1, H, W) luma image in 0..255: crop to whole ``block``s (top-left), MSCN (7x7 Gaussian,
    sigma 7/6) features of ``block`` x ``block`` patches, then of the image downscaled by 2 (antialiased MATLAB
    bicubic on I/255, :func:`imresize_matlab` in float64; pyiqa's float32 resize differs by < 1e-6 in NIQE) with
    ``block/2`` patches, 36 features per patch, :func:`niqe_distance`."""
    _, _, h, w = y255.shape
    nh, nw = h // block, w // block
    if nh == 0 or nw == 0:
        raise ValueError(f"NIQE needs at least {block}x{block} pixels, got {h}x{w}")
    img = y255[..., : nh * block, : nw * block]
    window = gaussian_window(7, 7.0 / 6.0).float().double()  # pyiqa's fspecial is float32
    feats = []
    for scale in (1, 2):
        b = block // scale
        feats.append(niqe_block_features(split_blocks(mscn(img, window), b, b)))
        if scale == 1:
            img = imresize_matlab(img / 255.0, 0.5) * 255.0
    return niqe_distance(torch.cat(feats, dim=1), mu_p, cov_p)


def niqe(
    x: Tensor,
    *,
    crop_border: int = 0,
    color_space: str = "yiq",
    params: tuple[Tensor, Tensor] | None = None,
) -> Tensor:
    """NIQE (lower is better) of images in [0, 1] as pyiqa's ``niqe`` metric (default ``color_space='yiq'``;
    ``'ycbcr'`` gives the BT.601 Y that BasicSR uses). ``params`` = (mu, cov) defaults to :func:`load_niqe_params`.
    Steps: :func:`rounded_luma255`, crop ``crop_border``, :func:`niqe_single` per image."""
    x4, single = as_batch(x)
    mu_p, cov_p = params if params is not None else load_niqe_params()
    y = crop(rounded_luma255(x4, color_space), crop_border)
    scores = torch.stack(
        [niqe_single(y[i : i + 1], mu_p.double(), cov_p.double()) for i in range(y.shape[0])]
    )
    return unbatch(scores, single)


# ----------------------------------------------------------------------------------------------------------------
# Periodic artefacts (a token grid)
# ----------------------------------------------------------------------------------------------------------------

DEFAULT_PERIOD = 8
"""The bundled model's token edge in pixels (x4 VAE, 2x2 packing); FLUX.1-dev's is 16 (x8 VAE)."""
BACKGROUND_RADIUS = 3
"""Bins on each side of a grid bin whose mean power (its 3x3 centre left out) is the local background."""


def grid_bins(h: int, w: int, period: int, scale: int = 1) -> Tensor:
    """(H, W) bool mask of the DFT bins of a ``period``-pixel grid: (a/period, b/period) cycles per pixel for a, b
    in 0..period-1 (the fundamental and every harmonic, both axes), at bins (a H/period, b W/period).

    Left out: DC, and the bins that are also frequencies of a ``scale``-pixel grid (``a scale`` and ``b scale`` both
    multiples of ``period``): every x``scale`` upscaler, bicubic included, repeats its interpolation phase every
    ``scale`` output pixels, which is not a token artefact. H and W must be multiples of ``period``."""
    if period < 2 or h % period or w % period:
        raise ValueError(f"period {period}: needs >= 2 and to divide the image size {h}x{w}")
    a = torch.arange(period)
    on_scale = (a * scale) % period == 0
    keep = ~(on_scale[:, None] & on_scale[None, :])
    mask = torch.zeros(h, w, dtype=torch.bool)
    mask[:: h // period, :: w // period] = keep
    return mask


def edge_map(y: Tensor) -> Tensor:
    """``|y - y shifted by one column| + |y - y shifted by one row|`` of a (..., H, W) image (circular; the Hann
    window of :func:`edge_spectrum` suppresses the wrapped first row and column). Block edges, grid lines and a
    texture repeated in every token all make this map periodic, even when the blocks' own values are random."""
    return (y - y.roll(1, -1)).abs() + (y - y.roll(1, -2)).abs()


def edge_spectrum(y: Tensor) -> Tensor:
    """Power spectrum ``|FFT|^2 / (H W)`` of the (..., H, W) image's :func:`edge_map`, mean removed, under a 2-D
    Hann window (the borders do not leak onto the axes)."""
    h, w = y.shape[-2:]
    e = edge_map(y.to(torch.float64))
    e = e - e.mean(dim=(-2, -1), keepdim=True)
    win = torch.outer(torch.hann_window(h, dtype=torch.float64), torch.hann_window(w, dtype=torch.float64))
    return torch.fft.fft2(e * win).abs().square() / (h * w)


def local_background(power: Tensor, mask: Tensor, radius: int = BACKGROUND_RADIUS) -> Tensor:
    """At each ``mask`` bin, the mean neighbour power over the (2 radius + 1)^2 square around it, less its 3x3 centre
    (the Hann window's main lobe), circularly. ``power`` (..., H, W), ``mask`` (H, W) bool; returns (..., bins).
    Only the masked bins' neighbourhoods are read (at most ``period^2`` of them, not the whole spectrum)."""
    h, w = power.shape[-2:]
    k = torch.ones(2 * radius + 1, 2 * radius + 1, dtype=power.dtype)
    k[radius - 1 : radius + 2, radius - 1 : radius + 2] = 0
    rows, cols = mask.nonzero(as_tuple=True)
    offsets = torch.arange(-radius, radius + 1)
    r = (rows[:, None] + offsets) % h  # (bins, 2 radius + 1)
    c = (cols[:, None] + offsets) % w
    around = power[..., r[:, :, None], c[:, None, :]]  # (..., bins, 2 radius + 1, 2 radius + 1)
    return (around * (k / k.sum())).sum(dim=(-2, -1))


def grid_peakiness(y: Tensor, period: int, scale: int = 1) -> Tensor:
    """How far the (..., H, W) image's :func:`edge_spectrum` stands out at the grid bins (:func:`grid_bins`) from
    its :func:`local_background` there: ``sum power / sum background`` over those bins, ~1 for a smooth spectrum
    (exactly 1 for a flat image: both sums get 1e-30 added). Shape (...)."""
    mask = grid_bins(*y.shape[-2:], period, scale)
    power = edge_spectrum(y)
    return (power[..., mask].sum(-1) + 1e-30) / (local_background(power, mask).sum(-1) + 1e-30)


def periodic_score(
    sr: Tensor, hr: Tensor, period: int = DEFAULT_PERIOD, *, scale: int = 4, crop_border: int = 0
) -> Tensor:
    """Periodic-artefact score: the result's :func:`grid_peakiness` over the reference's (see docs/evaluation.md).

    Both images (BT.601 luma) lose ``crop_border`` pixels per side and are cut from the top left (keeping the grid's
    phase) to multiples of ``period``. The edge map's spectrum at the ``period``-pixel grid frequencies and their
    harmonics is compared with its neighbouring frequencies, in each image, and the two are divided: a result that
    is as (non-)periodic as the reference scores ~1, noise and blur keep it near 1, a ``period``-pixel grid, blocks
    or stripes (tokens, tile seams) raise it. An image needs at least 8 periods per side.
    """
    _check_pair(sr, hr)
    a, b = crop_pair(luma(sr, True), luma(hr, True), crop_border)
    h, w = a.shape[-2:]
    if min(h, w) < 8 * period:
        raise ValueError(f"a {h}x{w} image is too small for a period of {period} px (needs {8 * period})")
    h, w = h - h % period, w - w % period
    num = grid_peakiness(a[..., :h, :w], period, scale)
    den = grid_peakiness(b[..., :h, :w], period, scale)
    return (num / den).squeeze(-1)


# ----------------------------------------------------------------------------------------------------------------
# Protocols
# ----------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Protocol:
    """How a benchmark number is computed. ``crop_border=None`` means "the SR scale" (4 for x4).

    ``flavour`` picks the PSNR/SSIM implementation: ``"basicsr"`` (:func:`psnr` / :func:`ssim`) or ``"pyiqa"``
    (:func:`pyiqa_psnr` / :func:`pyiqa_ssim`). ``quantize`` rounds both images to 8 bits first.
    """

    name: str
    description: str
    quantize: bool
    y_channel: bool
    crop_border: int | None
    flavour: str
    niqe_color_space: str = "yiq"

    def border(self, scale: int) -> int:
        """Pixels cropped on each side for an x``scale`` result."""
        return scale if self.crop_border is None else self.crop_border


PROTOCOLS: dict[str, Protocol] = {
    "fluxsr": Protocol(
        name="fluxsr",
        description="8-bit quantised, BT.601 Y (float, unrounded), crop = scale, PSNR inf if identical, "
        "Wang/MATLAB SSIM (valid, no downsampling); NIQE as pyiqa (YIQ luma)",
        quantize=True,
        y_channel=True,
        crop_border=None,
        flavour="basicsr",
    ),
    "pyiqa": Protocol(
        name="pyiqa",
        description="pyiqa psnr/ssim with test_y_channel=True, color_space='ycbcr', no crop (80 dB cap via eps=1e-8, "
        "rounded Y and relu(cs) in SSIM); 8-bit quantised like saved PNGs; NIQE = pyiqa 'niqe'",
        quantize=True,
        y_channel=True,
        crop_border=0,
        flavour="pyiqa",
    ),
}
DEFAULT_PROTOCOL = "fluxsr"


def get_protocol(protocol: str | Protocol) -> Protocol:
    """Look a protocol up by name (or pass a :class:`Protocol` through)."""
    if isinstance(protocol, Protocol):
        return protocol
    try:
        return PROTOCOLS[protocol]
    except KeyError:
        raise KeyError(f"unknown protocol {protocol!r}; known: {sorted(PROTOCOLS)}") from None


def _prepare(x: Tensor, p: Protocol) -> Tensor:
    return quantize_8bit(x.to(torch.float64)) if p.quantize else x


def _under_protocol(
    ours: Callable, theirs: Callable, sr: Tensor, hr: Tensor, protocol: str | Protocol, scale: int
) -> Tensor:
    """A full-reference metric under a protocol: quantised if it says so, cropped by its border, then fluxsr's
    definition (``ours``, with its Y-channel choice) or pyiqa's (``theirs``)."""
    p = get_protocol(protocol)
    a, b = _prepare(sr, p), _prepare(hr, p)
    if p.flavour == "pyiqa":
        return theirs(a, b, crop_border=p.border(scale))
    return ours(a, b, crop_border=p.border(scale), y_channel=p.y_channel)


def protocol_psnr(
    sr: Tensor, hr: Tensor, protocol: str | Protocol = DEFAULT_PROTOCOL, *, scale: int = 4
) -> Tensor:
    """PSNR (dB) of ``sr`` against ``hr`` under a protocol (see :data:`PROTOCOLS`)."""
    return _under_protocol(psnr, pyiqa_psnr, sr, hr, protocol, scale)


def protocol_ssim(
    sr: Tensor, hr: Tensor, protocol: str | Protocol = DEFAULT_PROTOCOL, *, scale: int = 4
) -> Tensor:
    """SSIM of ``sr`` against ``hr`` under a protocol (see :data:`PROTOCOLS`)."""
    return _under_protocol(ssim, pyiqa_ssim, sr, hr, protocol, scale)


def protocol_niqe(
    x: Tensor, protocol: str | Protocol = DEFAULT_PROTOCOL, *, params: tuple[Tensor, Tensor] | None = None
) -> Tensor:
    """NIQE of ``x`` under a protocol: quantised if the protocol says so, never cropped, pyiqa's algorithm."""
    p = get_protocol(protocol)
    return niqe(_prepare(x, p), color_space=p.niqe_color_space, params=params)


METRIC_FUNCTIONS: dict[str, Callable[..., Tensor]] = {"psnr": protocol_psnr, "ssim": protocol_ssim}
"""Full-reference metrics by name, each ``f(sr, hr, protocol, *, scale)``."""


def full_reference(
    sr: Tensor, hr: Tensor, protocol: str | Protocol = DEFAULT_PROTOCOL, *, scale: int = 4
) -> dict[str, float]:
    """{"psnr": dB, "ssim": value} of one (3, H, W) pair under a protocol, as Python floats."""
    return {name: float(fn(sr, hr, protocol, scale=scale)) for name, fn in METRIC_FUNCTIONS.items()}
