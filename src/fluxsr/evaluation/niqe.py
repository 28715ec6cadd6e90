"""NIQE (Mittal, Soundararajan & Bovik 2013), no-reference, lower is better, following pyiqa 0.1.16
archs/niqe_arch.py: luma of YIQ (x255, rounded), no crop, MSCN features of 96x96 blocks at two scales.

NIQE needs the pristine-model parameters of Mittal et al. (``mu_prisparam``, ``cov_prisparam`` from the MATLAB
release). They ship in the ``basicsr`` sdist on PyPI; :func:`fetch_niqe_params` converts them once to
``niqe_pris_params.safetensors`` in :func:`fluxsr.io.cache.cache_dir`.
"""

from __future__ import annotations

import io
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..io.cache import atomic_save_safetensors, cache_dir, cached_file, pip_download, read_safetensors
from .imresize import imresize_matlab
from .metric_inputs import Tensor, as_batch, crop, rounded_luma255, unbatch
from .psnr_ssim import gaussian_window

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
