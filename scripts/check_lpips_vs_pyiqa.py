#!/usr/bin/env python
"""Cross-check fluxsr's LPIPS-VGG, LPIPS-Alex and DISTS against the reference implementations.

Run it with a Python that has pyiqa, lpips and DISTS_pytorch (they need torchvision, so NOT the project venv):

    /work/venv-pyiqa/bin/python scripts/check_lpips_vs_pyiqa.py [--fluxsr-python .venv/bin/python]

What it does:
1. Builds real image pairs: photos from shared/data (Set5 HR, Kodak24) against their bicubic x4 down-up and their
   JPEG (quality 15) versions, saved once as float32 arrays so both sides see identical pixels.
2. Computes fluxsr's numbers in the project venv (subprocess, ``--worker`` mode, weights from the fluxsr cache).
3. Computes the reference numbers here. No reference weights can be downloaded (GitHub and download.pytorch.org are
   unreachable), so the reference ARCHITECTURES are built with torchvision's random init and get weights injected:
   - ``lpips`` package: its own shipped v0.1 heads (weights/v0.1/*.pth) + the backbone from fluxsr's cache file;
   - pyiqa ``LPIPS``: backbone + heads from fluxsr's cache file;
   - ``DISTS_pytorch``: its own shipped alpha/beta (weights.pt) + the VGG16 convolutions from fluxsr's cache file;
   - pyiqa ``DISTS``: convolutions + alpha/beta from fluxsr's cache file.
4. Checks the converted parameters themselves: heads vs the lpips package, alpha/beta vs DISTS_pytorch, and the
   VGG16 convolutions vs a public printout of torchvision's ``vgg16-397923af.pth`` state dict (the ImageNet VGG16
   that LPIPS and DISTS both load), found through code search (a flower-classifier notebook that printed it).
Exit status 1 if any |fluxsr - reference| exceeds --tol.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
VGG_CONVS = ("conv1_1", "conv1_2", "conv2_1", "conv2_2", "conv3_1", "conv3_2", "conv3_3",
             "conv4_1", "conv4_2", "conv4_3", "conv5_1", "conv5_2", "conv5_3")  # fmt: skip
VGG_TV_INDEX = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)  # torchvision vgg16().features
VGG_STAGE_STARTS = (0, 4, 9, 16, 23)  # lpips sliceK / DISTS stageK start indices
ALEX_CONVS = ("conv1", "conv2", "conv3", "conv4", "conv5")
ALEX_TV_INDEX = (0, 3, 6, 8, 10)
ALEX_STAGE_STARTS = (0, 2, 5, 8, 10)

# Values printed from torchvision's vgg16-397923af.pth (4 decimals): features.0.bias[:8], features.0.weight[0, 0],
# features.2.bias[:7], features.21.bias[:8] and [-8:].
TV_VGG16_PRINTOUT = {
    ("conv1_1", "bias", (0, 8)): [0.4034, 0.3778, 0.4644, -0.3228, 0.3940, -0.3953, 0.3951, -0.5496],
    ("conv1_1", "weight00", (0, 9)): [
        -0.5537,
        0.1427,
        0.5290,
        -0.5831,
        0.3566,
        0.7657,
        -0.6902,
        -0.0480,
        0.4841,
    ],
    ("conv1_2", "bias", (0, 7)): [0.0020, -0.0902, 0.6164, -0.0818, 0.2450, -0.0488, 0.1307],
    ("conv4_3", "bias", (0, 8)): [0.0531, 0.0105, 0.2303, 0.0376, 0.0864, -0.0534, 0.1386, -0.0711],
    ("conv4_3", "bias", (504, 512)): [0.1112, 0.0091, -0.0176, 0.1561, -0.0391, 0.0127, -0.0557, 0.0826],
}


# ------------------------------------------------------------------------------------------------ image pairs
def make_pairs(data: Path, n_kodak: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """name -> (reference, distorted) float32 HWC arrays in [0, 1]."""
    from PIL import Image

    files = sorted((data / "Set5" / "HR").glob("*.png")) + sorted((data / "Kodak24").glob("*.png"))[:n_kodak]
    pairs = {}
    for f in files:
        im = Image.open(f).convert("RGB")
        w, h = (im.width // 4) * 4, (im.height // 4) * 4
        im = im.crop((0, 0, w, h))
        bic = im.resize((w // 4, h // 4), Image.BICUBIC).resize((w, h), Image.BICUBIC)
        buf = io.BytesIO()
        im.save(buf, "JPEG", quality=15)
        jpg = Image.open(io.BytesIO(buf.getvalue())).convert("RGB")
        ref = np.asarray(im, dtype=np.float32) / 255.0
        for tag, dist in (("bicubic", bic), ("jpeg15", jpg)):
            pairs[f"{f.parent.name}/{f.stem}:{tag}"] = (ref, np.asarray(dist, dtype=np.float32) / 255.0)
    return pairs


def to_tensor(a: np.ndarray):
    import torch

    return torch.from_numpy(np.ascontiguousarray(a)).permute(2, 0, 1)[None].float()


# ------------------------------------------------------------------------------------------------ fluxsr side
def worker(npz: Path, out: Path) -> None:
    """Runs in the project venv: fluxsr's metrics with the cached weights."""
    sys.path.insert(0, str(REPO / "src"))
    import torch

    from fluxsr.losses import load_dists, load_lpips

    torch.set_num_threads(max(1, os.cpu_count() or 1))
    data = np.load(npz)
    names = json.loads(str(data["names"]))
    metrics = {"lpips_vgg": load_lpips("vgg"), "lpips_alex": load_lpips("alex"), "dists": load_dists()}
    res: dict[str, dict[str, float]] = {k: {} for k in metrics}
    with torch.no_grad():
        for i, name in enumerate(names):
            a, b = to_tensor(data[f"ref{i}"]), to_tensor(data[f"dist{i}"])
            for k, m in metrics.items():
                res[k][name] = float(m(b, a)[0])
    out.write_text(json.dumps({"torch": torch.__version__, "scores": res}))


# ------------------------------------------------------------------------------------------------ references
def cache_dir() -> Path:
    if env := os.environ.get("FLUXSR_HOME"):
        return Path(env).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "fluxsr"


def stage_of(idx: int, starts: tuple[int, ...]) -> int:
    """1-based slice/stage number holding torchvision feature index ``idx``."""
    return max(k for k, s in enumerate(starts) if s <= idx) + 1


def backbone_to_tv(sd: dict, convs, tv_index, starts, prefix: str, stage_word: str) -> dict:
    """fluxsr ``net.<conv>.{weight,bias}`` -> ``<prefix><stage_word>K.<tv_idx>.{weight,bias}``."""
    out = {}
    for name, idx in zip(convs, tv_index, strict=True):
        k = stage_of(idx, starts)
        for p in ("weight", "bias"):
            out[f"{prefix}{stage_word}{k}.{idx}.{p}"] = sd[f"net.{name}.{p}"]
    return out


def patch_torchvision_no_download() -> None:
    """Make torchvision's vgg16/alexnet constructors ignore pretrained weights (nothing can be downloaded)."""
    import torchvision.models as tvm

    orig_vgg, orig_alex = tvm.vgg16, tvm.alexnet

    def vgg16(*args, **kwargs):
        return orig_vgg(weights=None)

    def alexnet(*args, **kwargs):
        return orig_alex(weights=None)

    tvm.vgg16, tvm.alexnet = vgg16, alexnet
    import DISTS_pytorch.DISTS_pt as dpt
    import lpips.pretrained_networks as lpn
    import pyiqa.archs.dists_arch as pda
    import pyiqa.archs.lpips_arch as pla

    for mod in (dpt, pda, pla):
        mod.models = tvm
    lpn.tv = tvm


def load_strict(module, sd: dict, allow_missing: tuple[str, ...] = ()) -> None:
    missing, unexpected = module.load_state_dict(sd, strict=False)
    missing = [k for k in missing if not any(k.startswith(a) or k.endswith(a) for a in allow_missing)]
    if missing or unexpected:
        raise RuntimeError(f"{type(module).__name__}: missing {missing}, unexpected {unexpected}")


def build_references() -> tuple[dict, dict[str, float]]:
    """Reference metric callables (x_dist, x_ref in [0,1]) -> float, and parameter-level max differences."""
    import DISTS_pytorch.DISTS_pt as dpt
    import lpips
    import pyiqa.archs.dists_arch as pda
    import pyiqa.archs.lpips_arch as pla
    import torch
    from safetensors.torch import load_file

    patch_torchvision_no_download()
    cdir = cache_dir()
    sd_vgg = load_file(str(cdir / "lpips_vgg.safetensors"))
    sd_alex = load_file(str(cdir / "lpips_alex.safetensors"))
    sd_dists = load_file(str(cdir / "dists.safetensors"))
    layout = {"vgg": (sd_vgg, VGG_CONVS, VGG_TV_INDEX, VGG_STAGE_STARTS),
              "alex": (sd_alex, ALEX_CONVS, ALEX_TV_INDEX, ALEX_STAGE_STARTS)}  # fmt: skip
    refs, checks = {}, {}
    for net, (sd, convs, tvi, starts) in layout.items():
        # lpips package: own heads (loaded by its constructor), our backbone.
        m = lpips.LPIPS(net=net, pnet_rand=True, verbose=False).eval()
        m.net.load_state_dict(backbone_to_tv(sd, convs, tvi, starts, "", "slice"), strict=True)
        checks[f"heads_{net}_vs_lpips_pkg"] = max(
            float((m.lins[k].model[-1].weight.detach() - sd[f"lins.{k}.weight"]).abs().max())
            for k in range(5)
        )
        refs[f"lpips_{net}|lpips-pkg"] = lambda x, y, m=m: float(m(x, y, normalize=True).flatten()[0])
        # pyiqa LPIPS: everything injected.
        p = pla.LPIPS(pretrained=False, net=net, pnet_rand=True).eval()
        heads = {f"lin{k}.model.1.weight": sd[f"lins.{k}.weight"] for k in range(5)}
        heads |= {f"lins.{k}.model.1.weight": sd[f"lins.{k}.weight"] for k in range(5)}
        load_strict(
            p,
            backbone_to_tv(sd, convs, tvi, starts, "net.", "slice") | heads,
            allow_missing=("shift", "scale"),
        )
        refs[f"lpips_{net}|pyiqa"] = lambda x, y, p=p: float(p(x, y, normalize=True).flatten()[0])
    # DISTS_pytorch: its own alpha/beta (weights.pt loaded by its constructor), our VGG16 convolutions.
    d = dpt.DISTS(
        load_weights=True
    ).eval()  # reads <sys.prefix>/weights.pt, installed by the DISTS_pytorch wheel
    convs = backbone_to_tv(sd_dists, VGG_CONVS, VGG_TV_INDEX, VGG_STAGE_STARTS, "", "stage")
    load_strict(d, convs, allow_missing=("alpha", "beta", "filter", "mean", "std"))
    checks["alpha_beta_vs_DISTS_pytorch"] = max(
        float((d.alpha.detach() - sd_dists["alpha"]).abs().max()),
        float((d.beta.detach() - sd_dists["beta"]).abs().max()),
    )
    refs["dists|DISTS_pytorch"] = lambda x, y, d=d: float(d(x, y, require_grad=False).flatten()[0])
    q = pda.DISTS(pretrained=False).eval()
    load_strict(
        q,
        convs | {"alpha": sd_dists["alpha"], "beta": sd_dists["beta"]},
        allow_missing=("filter", "mean", "std"),
    )
    refs["dists|pyiqa"] = lambda x, y, q=q: float(q(x, y).flatten()[0])
    # Backbone copies must agree, and the VGG16 must be torchvision's ImageNet one.
    checks["vgg_lpips_vs_dists_file"] = max(
        float((sd_vgg[k] - sd_dists[k]).abs().max()) for k in sd_vgg if k.startswith("net.")
    )
    worst = 0.0
    for (conv, kind, sl), vals in TV_VGG16_PRINTOUT.items():
        src = (
            sd_vgg[f"net.{conv}.weight"][0, 0].flatten() if kind == "weight00" else sd_vgg[f"net.{conv}.bias"]
        )
        t = src[sl[0] : sl[1]]
        worst = max(worst, float((t - torch.tensor(vals)).abs().max()))
    checks["vgg16_vs_torchvision_printout(4dp)"] = worst
    return refs, checks


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--fluxsr-python", default=str(REPO / ".venv" / "bin" / "python"))
    ap.add_argument("--data", default=str(REPO.parent / "shared" / "data"))
    ap.add_argument("--n-kodak", type=int, default=5)
    ap.add_argument("--tol", type=float, default=1e-4)
    ap.add_argument("--worker", nargs=2, metavar=("NPZ", "OUT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(Path(args.worker[0]), Path(args.worker[1]))
        return 0

    import torch

    torch.set_num_threads(max(1, os.cpu_count() or 1))
    pairs = make_pairs(Path(args.data), args.n_kodak)
    names = list(pairs)
    with tempfile.TemporaryDirectory() as tmp:
        npz, out = Path(tmp) / "pairs.npz", Path(tmp) / "fluxsr.json"
        arrays = {f"ref{i}": pairs[n][0] for i, n in enumerate(names)}
        arrays |= {f"dist{i}": pairs[n][1] for i, n in enumerate(names)}
        np.savez(npz, names=json.dumps(names), **arrays)
        subprocess.run([args.fluxsr_python, __file__, "--worker", str(npz), str(out)], check=True)
        fl = json.loads(out.read_text())
    refs, checks = build_references()

    print(f"fluxsr torch {fl['torch']} | reference torch {torch.__version__} | {len(names)} image pairs")
    print("\nparameter checks (max abs difference):")
    for k, v in checks.items():
        print(f"  {k:40s} {v:.3g}")
    worst_all = 0.0
    with torch.no_grad():
        ref_scores: dict[str, dict[str, float]] = {k: {} for k in refs}
        for n in names:
            a, b = to_tensor(pairs[n][0]), to_tensor(pairs[n][1])
            for k, f in refs.items():
                ref_scores[k][n] = f(b, a)
    for key in refs:
        metric, impl = key.split("|")
        ours = np.array([fl["scores"][metric][n] for n in names])
        theirs = np.array([ref_scores[key][n] for n in names])
        diff = np.abs(ours - theirs)
        worst_all = max(worst_all, float(diff.max()))
        print(
            f"\n{metric} vs {impl}: mean fluxsr {ours.mean():.6f} ref {theirs.mean():.6f} | max |diff| {diff.max():.2e}"
        )
        for n, o, t in zip(names, ours, theirs, strict=True):
            print(f"  {n:28s} {o:.6f} {t:.6f} {abs(o - t):.1e}")
    ok = worst_all <= args.tol and checks["vgg16_vs_torchvision_printout(4dp)"] <= 5e-5
    ok = ok and all(v <= 1e-7 for k, v in checks.items() if "printout" not in k)
    print(f"\n{'OK' if ok else 'FAIL'}: worst |fluxsr - reference| = {worst_all:.2e} (tol {args.tol:g})")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
