"""LR consistency (issue #15): ``lr_psnr`` in ``fluxsr eval --lr``, the fidelity map of ``fluxsr upscale
--fidelity-map`` (:mod:`fluxsr.inference.fidelity`), on the repository's real photos (examples/, tests/assets/)."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fluxsr.baselines.bicubic import bicubic_upscale
from fluxsr.cli import main
from fluxsr.data.datasets import load_dataset
from fluxsr.evaluation.benchmark import backend_factories, run_benchmark
from fluxsr.evaluation.scoring import evaluate_dirs
from fluxsr.inference import fidelity as FID
from fluxsr.io.images import read_image, resize, write_image
from tests.paths import ASSETS, ROOT

BUILDING = ROOT / "examples" / "building.png"
KODIM = ASSETS / "kodim23_crop.png"


def keys_cubic(x: float, a: float = -0.5) -> float:
    """Keys' cubic, written out."""
    x = abs(x)
    if x <= 1:
        return (a + 2) * x**3 - (a + 3) * x**2 + 1
    if x < 2:
        return a * x**3 - 5 * a * x**2 + 8 * a * x - 4 * a
    return 0.0


def shrink_matrix(n_in: int, n_out: int) -> np.ndarray:
    """Antialiased bicubic weights by hand (PIL's rule, which PyTorch's ``antialias=True`` follows): output pixel
    ``i`` centred at ``(i + 0.5) * f`` in input pixels (f = n_in / n_out), taps within ``2 f``, weight
    ``cubic((j + 0.5 - centre) / f)``, each row normalised to sum 1."""
    f = n_in / n_out
    w = np.zeros((n_out, n_in))
    for i in range(n_out):
        centre = (i + 0.5) * f
        lo, hi = max(int(centre - 2 * f + 0.5), 0), min(int(centre + 2 * f + 0.5), n_in)
        for j in range(lo, hi):
            w[i, j] = keys_cubic((j + 0.5 - centre) / f)
        w[i] /= w[i].sum()
    return w


def lr_psnr_by_hand(pred_file: Path, lr_file: Path) -> float:
    """The documented definition, in numpy: shrink each channel, clamp to [0, 1], RGB MSE, 10 log10(1 / MSE)."""
    pred = np.asarray(Image.open(pred_file).convert("RGB"), dtype=np.float64) / 255
    lr = np.asarray(Image.open(lr_file).convert("RGB"), dtype=np.float64) / 255
    rows, cols = shrink_matrix(pred.shape[0], lr.shape[0]), shrink_matrix(pred.shape[1], lr.shape[1])
    small = np.stack([np.clip(rows @ pred[:, :, c] @ cols.T, 0, 1) for c in range(3)], axis=-1)
    return 10 * math.log10(1 / np.mean((small - lr) ** 2))


@pytest.fixture
def bicubic_run(tmp_path) -> tuple[Path, Path]:
    """(pred folder, LR folder): a real photo as the LR input and its x4 bicubic upscale as the prediction."""
    lr_dir, pred_dir = tmp_path / "lr", tmp_path / "pred"
    lr = read_image(BUILDING).rgb
    write_image(lr_dir / "building.png", lr)
    write_image(pred_dir / "building.png", bicubic_upscale(lr, (4 * lr.shape[1], 4 * lr.shape[2])))
    return pred_dir, lr_dir


def test_lr_psnr_of_bicubic_upscale_equals_hand_computation(bicubic_run):
    pred_dir, lr_dir = bicubic_run
    report = evaluate_dirs(pred_dir, None, "lr_psnr", lr_dir=lr_dir)
    expected = lr_psnr_by_hand(pred_dir / "building.png", lr_dir / "building.png")
    assert not report.problems and report.metric_names == ["lr_psnr"]
    assert report.images[0].scores["lr_psnr"] == pytest.approx(expected, abs=1e-6)
    assert 30 < expected < 60  # bicubic keeps what it was given: a high but finite score


def test_lr_psnr_of_an_output_that_shrinks_back_to_its_input():
    lr = torch.full((3, 12, 10), 0.25)
    assert FID.lr_psnr(resize(lr, (48, 40), mode="nearest"), lr, 4) > 200  # equal up to float rounding
    assert FID.lr_psnr(torch.zeros(3, 48, 40), torch.zeros(3, 12, 10)) == math.inf


def test_eval_reports_lr_psnr_with_other_metrics_in_every_format(tmp_path):
    hr = read_image(KODIM).rgb
    lr = resize(hr, (48, 48))
    pred = bicubic_upscale(lr, (192, 192))
    for folder, image in (("gt", hr), ("lr", lr), ("pred", pred)):
        write_image(tmp_path / folder / "kodim.png", image)
    args = [
        "eval",
        "--pred",
        str(tmp_path / "pred"),
        "--gt",
        str(tmp_path / "gt"),
        "--lr",
        str(tmp_path / "lr"),
    ]
    files = [
        "--metrics",
        "psnr,lr_psnr",
        "--json",
        str(tmp_path / "r.json"),
        "--csv",
        str(tmp_path / "r.csv"),
    ]
    assert main([*args, *files, "-q"]) == 0
    report = json.loads((tmp_path / "r.json").read_text())
    image = report["images"][0]
    expected = lr_psnr_by_hand(tmp_path / "pred" / "kodim.png", tmp_path / "lr" / "kodim.png")
    assert image["scores"]["lr_psnr"] == pytest.approx(expected, abs=1e-6) and "psnr" in image["scores"]
    assert image["lr"].endswith("kodim.png") and report["mean"]["lr_psnr"] == image["scores"]["lr_psnr"]
    rows = list(csv.reader((tmp_path / "r.csv").open()))
    assert rows[0][-2:] == ["psnr", "lr_psnr"] and rows[-2][0] == "mean"
    assert float(rows[-2][-1]) == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize(
    "pred_size,expected",
    [((150, 160), "not the same integer multiple"), ((120, 120), "x3, not x4")],
)
def test_wrong_size_pair_is_one_line(tmp_path, capsys, pred_size, expected):
    lr = read_image(BUILDING).rgb[:, :40, :40]
    write_image(tmp_path / "lr" / "a.png", lr)
    write_image(tmp_path / "pred" / "a.png", resize(lr, pred_size))
    code = main(
        ["eval", "--pred", str(tmp_path / "pred"), "--lr", str(tmp_path / "lr"), "--metrics", "lr_psnr"]
    )
    err = capsys.readouterr().err
    assert code == 1 and "Traceback" not in err
    (line,) = [line for line in err.splitlines() if line.startswith("error:")]
    assert "lr_psnr failed" in line and expected in line and "a.png" in line


def test_lr_psnr_without_lr_folder_is_refused_in_one_line(tmp_path, capsys):
    write_image(tmp_path / "pred" / "a.png", torch.rand(3, 16, 16))
    assert main(["eval", "--pred", str(tmp_path / "pred"), "--metrics", "lr_psnr"]) != 0
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "lr_psnr need the LR inputs (--lr)" in err


def test_heat_colours_run_from_black_to_white_brighter_with_disagreement():
    colours = FID.heat_colours(torch.linspace(0, 1, 11)[None, :])
    assert torch.equal(colours[:, 0, 0], torch.zeros(3)) and torch.equal(colours[:, 0, -1], torch.ones(3))
    brightness = colours.sum(dim=0)[0]
    assert bool((brightness[1:] >= brightness[:-1]).all())


def test_fidelity_map_lights_up_invented_content_on_a_fixed_scale():
    lr = read_image(BUILDING).rgb
    faithful = bicubic_upscale(lr, (640, 640))
    invented = faithful.clone()
    invented[:, 320:400, 160:240] = torch.tensor([1.0, 0.0, 1.0])[:, None, None]  # a patch the input lacks
    calm, loud = FID.fidelity_map(faithful, lr), FID.fidelity_map(invented, lr)
    assert calm.shape == loud.shape == (3, 640, 640) and 0 <= float(loud.min()) <= float(loud.max()) <= 1
    inside = (slice(None), slice(336, 384), slice(176, 224))
    assert float(loud[inside].mean()) > 0.9  # far below 20 dB there: white
    assert float(calm[inside].mean()) < 0.5 and float(calm.mean()) < float(loud.mean())
    outside = (slice(None), slice(0, 300), slice(None))
    assert torch.equal(calm[outside], loud[outside])  # the scale is fixed: the same pixels, the same colour


def test_fidelity_map_blocks_are_nearest_neighbour_enlargements_of_the_input_grid():
    lr = read_image(KODIM).rgb[:, :32, :24]
    out = FID.fidelity_map(bicubic_upscale(lr, (128, 96)), lr)
    blocks = out.reshape(3, 32, 4, 24, 4)
    assert torch.equal(blocks, blocks[:, :, :1, :, :1].expand_as(blocks))


def test_upscale_writes_fidelity_map_next_to_each_output(tmp_path):
    out = tmp_path / "out"
    assert (
        main(["upscale", str(BUILDING), str(KODIM), "-o", str(out), "--backend", "bicubic", "--fidelity-map"])
        == 0
    )
    for name in ("building", "kodim23_crop"):
        output, heat = read_image(out / f"{name}.png"), read_image(out / f"{name}_fidelity.png")
        assert (heat.height, heat.width) == (output.height, output.width)
    lr = read_image(BUILDING).rgb
    expected = FID.fidelity_map(bicubic_upscale(lr, (640, 640)), lr)  # from the output before it is written
    assert float((read_image(out / "building_fidelity.png").rgb - expected).abs().max()) <= 0.5 / 255 + 1e-6
    assert sorted(p.name for p in out.iterdir()) == [
        "building.png",
        "building_fidelity.png",
        "kodim23_crop.png",
        "kodim23_crop_fidelity.png",
    ]


def test_benchmark_scores_lr_psnr_against_each_method_input(tmp_path):
    for photo in (BUILDING, KODIM):
        write_image(tmp_path / "lr" / photo.name, read_image(photo).rgb)
    ds = load_dataset(tmp_path / "lr")
    result = run_benchmark(
        ds, backend_factories("bicubic", lambda: None), tmp_path / "out", ["lr_psnr"], sheet_images=0
    )
    (run,) = result.runs
    assert not result.problems and len(run.report.images) == 2
    for score in run.report.images:
        expected = lr_psnr_by_hand(Path(run.outputs[score.name]), tmp_path / "lr" / f"{score.name}.png")
        assert score.scores["lr_psnr"] == pytest.approx(expected, abs=1e-6)
