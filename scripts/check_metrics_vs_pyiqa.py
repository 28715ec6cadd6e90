"""Cross-check fluxsr.evaluation's metrics against pyiqa and write tests/assets/pyiqa_reference.json.

pyiqa needs torchvision, so it lives in its own venv, never in fluxsr's. Run from the repository root:

    python3 -m venv /work/venv-pyiqa
    /work/venv-pyiqa/bin/pip install torch==2.14.1 torchvision==0.29.1 pyiqa
    .venv/bin/python -c "from fluxsr.evaluation.weights import fetch_all; fetch_all([\"niqe\"])"   # NIQE params
    PYTHONPATH=src /work/venv-pyiqa/bin/python scripts/check_metrics_vs_pyiqa.py --write [--shared ../shared/data]

With pyiqa importable it computes pyiqa's numbers (``--write`` stores them); in any venv it then recomputes them with
fluxsr.evaluation's metrics and prints the differences. pyiqa's ``niqe`` would download ``niqe_modelparameters.mat`` from the
hub; instead the script writes that .mat (keys ``mu_prisparam``, ``cov_prisparam``) from the basicsr parameters in the
fluxsr cache into a temporary folder and passes it as ``pretrained_model_path``.

Test inputs (:func:`skimage_pairs`) use only images bundled with scikit-image, so the tests rebuild them anywhere;
``--shared`` adds Set5/Set14 pairs (recorded in the JSON, not used by the tests).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
REFERENCE_JSON = ROOT / "tests" / "assets" / "pyiqa_reference.json"
SKIMAGE_IMAGES = ("astronaut", "chelsea", "coffee")
RECIPE = (
    "hr = skimage.data.<name>() (uint8 RGB) cropped top-left to H, W multiples of 4; "
    "lr = PIL Image.fromarray(hr).resize((W//4, H//4), Image.BICUBIC); sr = lr.resize((W, H), Image.BICUBIC); "
    "pyiqa inputs: torch.from_numpy(uint8 HWC).permute(2, 0, 1)[None].float() / 255 (float32, like pyiqa's "
    "imread2tensor); sha256 over the uint8 HWC bytes"
)
CALLS = {
    "psnr": "pyiqa.create_metric('psnr', test_y_channel=True, color_space='ycbcr', device='cpu')(sr, hr)",
    "ssim": "pyiqa.create_metric('ssim', test_y_channel=True, color_space='ycbcr', device='cpu')(sr, hr)",
    "niqe": "pyiqa.create_metric('niqe', device='cpu', pretrained_model_path=<mat from basicsr npz>)(img)",
    "niqe_ycbcr": "pyiqa.create_metric('niqe', color_space='ycbcr', device='cpu', pretrained_model_path=...)(img)",
}

FLIPS_NOTE = (
    "Pixels (flat index into the H*W luma, delta in levels) where the rounded luma pyiqa's niqe scored differs from "
    "fluxsr.evaluation.metric_inputs.rounded_luma255: pyiqa computes it with a float32 matmul whose rounding error decides exact and near "
    ".5 ties, machine-dependently."
)


def sha256(array: np.ndarray) -> str:
    """sha256 hex digest of an array's C-order bytes."""
    return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()


def crop4(img: np.ndarray) -> np.ndarray:
    """Crop top-left to height and width multiples of 4."""
    h, w = img.shape[:2]
    return img[: h - h % 4, : w - w % 4]


def bicubic_down_up(hr: np.ndarray, factor: int = 4) -> np.ndarray:
    """PIL bicubic x1/factor then x factor, uint8 in, uint8 out (same size as ``hr``)."""
    h, w = hr.shape[:2]
    lr = Image.fromarray(hr).resize((w // factor, h // factor), Image.BICUBIC)
    return np.asarray(lr.resize((w, h), Image.BICUBIC))


def skimage_pairs() -> list[dict]:
    """The test inputs: [{"name", "hr", "sr"}] of uint8 HWC RGB arrays (see :data:`RECIPE`)."""
    from skimage import data

    pairs = []
    for name in SKIMAGE_IMAGES:
        hr = crop4(np.asarray(getattr(data, name)(), dtype=np.uint8))
        pairs.append({"name": name, "hr": hr, "sr": bicubic_down_up(hr)})
    return pairs


def shared_pairs(root: Path) -> list[dict]:
    """Set5 and Set14: HR (grayscale -> RGB, cropped to multiples of 4) and SR = PIL bicubic x4 of the
    MATLAB-bicubic LR file ``LR_bicubic/X4/<name>x4.png``."""
    pairs = []
    for dataset in ("Set5", "Set14"):
        for hr_path in sorted((root / dataset / "HR").glob("*.png")):
            hr = crop4(np.asarray(Image.open(hr_path).convert("RGB")))
            lr = Image.open(root / dataset / "LR_bicubic" / "X4" / f"{hr_path.stem}x4.png").convert("RGB")
            sr = np.asarray(lr.resize((hr.shape[1], hr.shape[0]), Image.BICUBIC))
            pairs.append({"name": f"{dataset}/{hr_path.stem}", "hr": hr, "sr": sr, "lr": np.asarray(lr)})
    return pairs


def to_pyiqa_tensor(img: np.ndarray):
    """uint8 HWC -> float32 (1, 3, H, W) in [0, 1], as pyiqa's imread2tensor."""
    import torch

    return torch.from_numpy(np.array(img, copy=True)).permute(2, 0, 1)[None].float() / 255.0


def niqe_mat(folder: Path) -> Path:
    """Write pyiqa's ``niqe_modelparameters.mat`` layout from the fluxsr-cached basicsr parameters."""
    import scipy.io

    from fluxsr.evaluation.niqe import load_niqe_params

    mu, cov = load_niqe_params()
    path = folder / "niqe_modelparameters.mat"
    scipy.io.savemat(path, {"mu_prisparam": mu.numpy()[None, :], "cov_prisparam": cov.numpy()})
    return path


def pyiqa_values(pairs: list[dict]) -> dict[str, dict[str, float]]:
    """pyiqa psnr/ssim of each (sr, hr) and niqe (YIQ and YCbCr luma) of sr and hr."""
    import pyiqa
    import torch

    out: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        mat = niqe_mat(Path(tmp))
        m_psnr = pyiqa.create_metric("psnr", test_y_channel=True, color_space="ycbcr", device="cpu")
        m_ssim = pyiqa.create_metric("ssim", test_y_channel=True, color_space="ycbcr", device="cpu")
        m_niqe = pyiqa.create_metric("niqe", device="cpu", pretrained_model_path=str(mat))
        m_niqe_y = pyiqa.create_metric(
            "niqe", color_space="ycbcr", device="cpu", pretrained_model_path=str(mat)
        )
        with torch.no_grad():
            for p in pairs:
                sr, hr = to_pyiqa_tensor(p["sr"]), to_pyiqa_tensor(p["hr"])
                out[p["name"]] = {
                    "psnr": float(m_psnr(sr, hr)),
                    "ssim": float(m_ssim(sr, hr)),
                    "psnr_identical": float(m_psnr(hr, hr)),
                    "niqe_sr": float(m_niqe(sr)),
                    "niqe_hr": float(m_niqe(hr)),
                    "niqe_ycbcr_sr": float(m_niqe_y(sr)),
                }
    return out


def pyiqa_luma_flips(pairs: list[dict]) -> dict:
    """Where the rounded luma pyiqa's niqe scores (``round(to_y_channel(img, 255, color_space))``, float32) differs
    from fluxsr's machine-independent ``rounded_luma255``: {name: {key: [[flat index, delta], ...]}} (see the
    ``niqe_luma_flips`` note in the JSON and tests/evaluation/test_metrics.py)."""
    import torch
    from pyiqa.utils.color_util import to_y_channel

    from fluxsr.evaluation import metric_inputs as MI

    out: dict = {}
    for p in pairs:
        out[p["name"]] = {}
        for key, img, space in (
            ("niqe_sr", p["sr"], "yiq"),
            ("niqe_hr", p["hr"], "yiq"),
            ("niqe_ycbcr_sr", p["sr"], "ycbcr"),
        ):
            theirs = torch.round(to_y_channel(to_pyiqa_tensor(img), 255, space)).double().flatten()
            delta = theirs - MI.rounded_luma255(MI.array_to_tensor(img)[None], space).flatten()
            out[p["name"]][key] = [[int(i), int(delta[i])] for i in torch.nonzero(delta).flatten()]
    return out


def pyiqa_imresize_probe() -> dict:
    """pyiqa's MATLAB imresize on fixed inputs: arange(16) 4x4 -> 3x3, and a seeded 37x53 array x0.5 (pyiqa
    computes in float32)."""
    import torch
    from pyiqa.matlab_utils import imresize

    small = imresize(torch.arange(16, dtype=torch.float64).view(1, 1, 4, 4), sizes=(3, 3))
    x = np.random.default_rng(0).random((37, 53))
    half = imresize(torch.from_numpy(x)[None, None], scale=0.5)[0, 0].numpy()
    return {"arange16_to_3x3": small[0, 0].tolist(), "rng0_37x53_half": half.tolist()}


def ours(pair: dict, params) -> dict[str, float]:
    """The same numbers from fluxsr.evaluation (pyiqa protocol) plus the fluxsr protocol for information."""
    from fluxsr.evaluation import metric_inputs as MI
    from fluxsr.evaluation import niqe as NQ
    from fluxsr.evaluation import protocol as PR

    sr, hr = MI.array_to_tensor(pair["sr"]), MI.array_to_tensor(pair["hr"])
    return {
        "psnr": float(PR.protocol_psnr(sr, hr, "pyiqa")),
        "ssim": float(PR.protocol_ssim(sr, hr, "pyiqa")),
        "psnr_identical": float(PR.protocol_psnr(hr, hr, "pyiqa")),
        "niqe_sr": float(NQ.niqe(sr, params=params)),
        "niqe_hr": float(NQ.niqe(hr, params=params)),
        "niqe_ycbcr_sr": float(NQ.niqe(sr, color_space="ycbcr", params=params)),
        "fluxsr_psnr": float(PR.protocol_psnr(sr, hr, "fluxsr", scale=4)),
        "fluxsr_ssim": float(PR.protocol_ssim(sr, hr, "fluxsr", scale=4)),
    }


def matlab_lr_agreement(pairs: list[dict]) -> dict[str, float]:
    """Fraction of pixels where imresize_matlab(HR, 1/4, uint8=True) equals the MATLAB-made LR file, and the max
    error in grey levels (images whose HR is not exactly 4x the LR are skipped)."""
    import torch

    from fluxsr.evaluation.imresize import imresize_matlab
    from fluxsr.evaluation.metric_inputs import array_to_tensor

    equal = total = 0
    worst = 0.0
    for p in pairs:
        if (
            "lr" not in p
            or p["hr"].shape[0] != 4 * p["lr"].shape[0]
            or p["hr"].shape[1] != 4 * p["lr"].shape[1]
        ):
            continue
        lr = imresize_matlab(torch.round(array_to_tensor(p["hr"]) * 255.0), 0.25, uint8=True)
        ref = array_to_tensor(p["lr"]) * 255.0
        equal += int((lr == ref).sum())
        total += ref.numel()
        worst = max(worst, float((lr - ref).abs().max()))
    return {"equal_fraction": equal / max(total, 1), "max_abs_levels": worst}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--write", action="store_true", help=f"store pyiqa's numbers in {REFERENCE_JSON}")
    ap.add_argument(
        "--shared", type=Path, default=None, help="folder with Set5/ and Set14/ (e.g. ../shared/data)"
    )
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT / "src"))
    from fluxsr.evaluation.niqe import load_niqe_params

    params = load_niqe_params()
    pairs = skimage_pairs()
    shared = shared_pairs(args.shared) if args.shared else []
    try:
        import pyiqa
    except ImportError:
        pyiqa = None

    if pyiqa is not None:
        import PIL
        import torch

        ref = {
            "generator": "scripts/check_metrics_vs_pyiqa.py",
            "pyiqa": pyiqa.__version__,
            "torch": torch.__version__,
            "pillow": PIL.__version__,
            "niqe_params": "basicsr==1.4.2 sdist basicsr/metrics/niqe_pris_params.npz (fluxsr.evaluation.niqe.fetch_niqe_params)",
            "recipe": RECIPE,
            "calls": CALLS,
            "inputs": {
                p["name"]: {
                    "shape": list(p["hr"].shape),
                    "sha256_hr": sha256(p["hr"]),
                    "sha256_sr": sha256(p["sr"]),
                }
                for p in pairs
            },
            "skimage": pyiqa_values(pairs),
            "imresize": pyiqa_imresize_probe(),
            "niqe_luma_flips": {"note": FLIPS_NOTE, "values": pyiqa_luma_flips(pairs)},
        }
        if shared:
            ref["shared"] = {"recipe": shared_pairs.__doc__.strip(), "values": pyiqa_values(shared)}
        if args.write:
            REFERENCE_JSON.parent.mkdir(parents=True, exist_ok=True)
            REFERENCE_JSON.write_text(json.dumps(ref, indent=1) + "\n")
            print(f"wrote {REFERENCE_JSON}")
    else:
        ref = json.loads(REFERENCE_JSON.read_text())
        print(f"pyiqa not importable: comparing with {REFERENCE_JSON}")

    worst: dict[str, float] = {}
    groups = [("skimage", pairs, ref["skimage"])]
    if shared and "shared" in ref:
        groups.append(("shared", shared, ref["shared"]["values"]))
    for label, group, values in groups:
        print(f"\n[{label}] name: pyiqa / fluxsr.evaluation (pyiqa protocol) ; fluxsr protocol psnr, ssim")
        for p in group:
            mine, theirs = ours(p, params), values[p["name"]]
            cells = []
            for key, val in theirs.items():
                d = abs(mine[key] - val)
                worst[key] = max(worst.get(key, 0.0), d)
                cells.append(f"{key} {val:.5f}/{mine[key]:.5f}")
            print(
                f"  {p['name']}: "
                + "  ".join(cells)
                + f" ; {mine['fluxsr_psnr']:.4f} {mine['fluxsr_ssim']:.5f}"
            )
    print("\nmax |ours - pyiqa|: " + ", ".join(f"{k} {v:.2e}" for k, v in worst.items()))
    if shared:
        print("imresize_matlab(HR, 1/4) vs MATLAB LR files:", matlab_lr_agreement(shared))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
