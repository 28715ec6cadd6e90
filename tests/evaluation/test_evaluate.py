"""`fluxsr eval`, `make-testset`, `benchmark` and the data-set loaders: pairing by name, problems reported by name,
JSON/CSV structure, deterministic test sets, a tiny benchmark producing its table, chart and sheet.

Inputs are scikit-image's bundled photos; nothing is downloaded. LPIPS/NIQE/Real-ESRGAN parts run only when their
converted weights are in the cache (``fluxsr weights fetch``) and are skipped otherwise."""

from __future__ import annotations

import csv
import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fluxsr.cli import main
from fluxsr.data.datasets import detect_layout, load_dataset, match_files, pair_key, pairs_from_dirs
from fluxsr.data.testset import hr_crop_box, image_seed, make_testset
from fluxsr.evaluation import niqe as NQ
from fluxsr.evaluation import periodic as PER
from fluxsr.evaluation import protocol as PR
from fluxsr.evaluation.benchmark import backend_factories, run_benchmark
from fluxsr.evaluation.figures import busiest_window
from fluxsr.evaluation.metric_set import build_metrics, parse_metric_names
from fluxsr.evaluation.reports import json_number, report_csv, report_json
from fluxsr.evaluation.scoring import evaluate_dirs
from fluxsr.io.cache import MissingWeightsError, cached_file
from fluxsr.io.images import read_image
from tests.builders import save

data = pytest.importorskip("skimage.data")


def cached(name: str) -> bool:
    try:
        cached_file(name)
        return True
    except MissingWeightsError:
        return False


HAS_LPIPS = cached("lpips_alex.safetensors")
HAS_NIQE = cached(NQ.NIQE_PARAMS_FILE)
HAS_REALESRGAN = cached("realesrgan_x4plus.safetensors")


def photo(name: str, size: int, top: int = 0, left: int = 0) -> np.ndarray:
    """A ``size`` x ``size`` RGB crop of a bundled scikit-image photo."""
    return getattr(data, name)()[top : top + size, left : left + size, :3].copy()


def blur(a: np.ndarray) -> np.ndarray:
    """A slightly different version of ``a`` (a prediction that is not identical to the ground truth)."""
    return ((a.astype(np.float32) * 0.9 + 12).clip(0, 255)).astype(np.uint8)


# ---------------------------------------------------------------------------------------------------- pairing


@pytest.mark.parametrize(
    "stem, key",
    [
        ("baby", "baby"),
        ("baby_out", "baby"),
        ("babyx4", "baby"),
        ("baby_x4", "baby"),
        ("Baby_SR", "baby"),
        ("Canon_001_LR4", "canon_001"),
        ("Canon_001_HR", "canon_001"),
        ("DSC_1454_x1", "dsc_1454"),
        ("0801x4_out", "0801"),
        ("img_003_SRF_4_HR", "img_003_srf_4"),
        ("sr", "sr"),
        ("x4", "x4"),
        ("lq-gt", "lq"),
    ],
)
def test_pair_key(stem, key):
    assert pair_key(stem) == key


def test_match_files_levels_and_leftovers(tmp_path):
    left = [tmp_path / "p" / n for n in ("a_out.png", "sub/b.png", "c.png", "d_x4.png", "d_out.png", "e.jpg")]
    right = [
        tmp_path / "g" / n for n in ("a_HR.png", "sub/b_gt.png", "other/b.png", "d.png", "e.png", "f.png")
    ]
    m = match_files(left, right, tmp_path / "p", tmp_path / "g")
    pairs = {(a.name, b.relative_to(tmp_path / "g").as_posix()) for a, b in m.pairs}
    assert pairs == {("a_out.png", "a_HR.png"), ("b.png", "sub/b_gt.png"), ("e.jpg", "e.png")}
    assert [p.name for p in m.left_only] == ["c.png", "d_out.png", "d_x4.png"]
    assert [p.relative_to(tmp_path / "g").as_posix() for p in m.right_only] == [
        "d.png",
        "f.png",
        "other/b.png",
    ]
    assert list(m.ambiguous) == ["d"]
    text = "\n".join(m.problems("pred", "gt"))
    assert "d_x4.png" in text and "d_out.png" in text and "ambiguous" in text
    assert "c.png (pred) has no gt file" in text and "f.png (gt) has no pred file" in text
    assert "other/b.png (gt) has no pred file" in text


# ---------------------------------------------------------------------------------------------------- eval


@pytest.fixture()
def eval_dirs(tmp_path):
    """pred/ and gt/ with: two good pairs (suffixes), a size mismatch, a corrupt file, one missing on each side."""
    pred, gt = tmp_path / "pred", tmp_path / "gt"
    a, c = photo("astronaut", 64, 100, 180), photo("coffee", 64, 150, 200)
    save(gt / "astro_HR.png", a)
    save(pred / "astro_out.png", blur(a))
    save(gt / "coffee.png", c)
    save(pred / "coffeex4.png", blur(c))
    save(gt / "cat.png", photo("chelsea", 64))
    save(pred / "cat_SR.png", photo("chelsea", 60))  # size mismatch
    save(gt / "broken.png", a)
    (pred / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")  # unreadable
    save(pred / "orphan.png", a)  # no ground truth
    save(gt / "lonely.png", a)  # no prediction
    return pred, gt


def test_eval_cli_reports_problems_and_writes_json_csv(eval_dirs, tmp_path, capsys):
    pred, gt = eval_dirs
    rc = main(
        [
            "eval",
            "--pred",
            str(pred),
            "--gt",
            str(gt),
            "--metrics",
            "psnr,ssim",
            "-q",
            "--json",
            str(tmp_path / "r.json"),
            "--csv",
            str(tmp_path / "r.csv"),
        ]
    )
    out, err = capsys.readouterr()
    assert rc == 1
    for name in ("cat_SR.png", "cat.png", "broken.png", "orphan.png", "lonely.png"):
        assert name in err, name
    assert "size mismatch" in err and "60x60" in err and "64x64" in err
    assert "unreadable" in err and "missing partner" in err
    assert "| astro_out |" in out and "**mean** (n=2)" in out and "psnr ↑" in out

    report = json.loads((tmp_path / "r.json").read_text())
    assert report["protocol"] == "fluxsr" and report["crop_border"] == 4
    assert [m["name"] for m in report["metrics"]] == ["psnr", "ssim"]
    assert [i["name"] for i in report["images"]] == ["astro_out", "coffeex4"]
    assert report["images"][0]["gt"].endswith("astro_HR.png")
    assert set(report["mean"]) == {"psnr", "ssim"} and report["count"] == 2
    assert len(report["problems"]) == 4

    pa, ga = read_image(pred / "astro_out.png").rgb, read_image(gt / "astro_HR.png").rgb
    expected = float(PR.protocol_psnr(pa, ga, "fluxsr", scale=4))
    assert report["images"][0]["scores"]["psnr"] == pytest.approx(expected, abs=1e-9)
    psnrs = [i["scores"]["psnr"] for i in report["images"]]
    assert report["mean"]["psnr"] == pytest.approx(sum(psnrs) / 2)

    rows = list(csv.reader((tmp_path / "r.csv").open()))
    assert rows[0] == ["image", "pred", "gt", "psnr", "ssim"]
    assert [r[0] for r in rows[1:]] == ["astro_out", "coffeex4", "mean", "count"]
    assert float(rows[-2][3]) == pytest.approx(report["mean"]["psnr"]) and rows[-1][3:] == ["2", "2"]


def test_eval_crop_border_and_protocol(eval_dirs):
    pred, gt = eval_dirs
    default = evaluate_dirs(pred, gt, "psnr")
    no_crop = evaluate_dirs(pred, gt, "psnr", crop_border=0)
    pyiqa = evaluate_dirs(pred, gt, "psnr", "pyiqa")
    assert default.crop_border == 4 and no_crop.crop_border == 0 and pyiqa.crop_border == 0
    a, b = default.images[0].scores["psnr"], no_crop.images[0].scores["psnr"]
    assert a != b and math.isfinite(a) and math.isfinite(b)
    assert pyiqa.images[0].scores["psnr"] == pytest.approx(
        b, abs=0.05
    )  # same pixels, float32 vs float64 luma


def test_eval_periodic_metric_and_its_period(eval_dirs, tmp_path, capsys):
    pred, gt = eval_dirs
    report = evaluate_dirs(pred, gt, "periodic")
    assert report.metrics[0].lower_better and [i.name for i in report.images] == ["astro_out", "coffeex4"]
    pa, ga = read_image(pred / "astro_out.png").rgb, read_image(gt / "astro_HR.png").rgb
    expected = float(PER.periodic_score(pa, ga, 8, scale=4))
    assert report.images[0].scores["periodic"] == pytest.approx(expected, rel=1e-9)
    wide = evaluate_dirs(pred, gt, "periodic", period=16)  # 64 px images: too small for 8 periods of 16 px
    assert not any(i.scores for i in wide.images)
    assert sum("too small for a period of 16" in p for p in wide.problems) == 2
    rc = main(["eval", "--pred", str(pred), "--gt", str(gt), "--metrics", "periodic", "--period", "1", "-q"])
    err = capsys.readouterr().err
    assert rc != 0 and "period must be >= 2" in err and "Traceback" not in err


def test_json_and_csv_keep_inf(tmp_path):
    img = photo("coffee", 32)
    save(tmp_path / "p" / "x.png", img)
    save(tmp_path / "g" / "x.png", img)
    report = evaluate_dirs(tmp_path / "p", tmp_path / "g", "psnr,ssim")
    doc = report_json(report)
    assert doc["images"][0]["scores"]["psnr"] == "inf" and doc["mean"]["psnr"] == "inf"
    assert doc["mean"]["ssim"] == pytest.approx(1.0)
    json.dumps(doc, allow_nan=False)
    assert report_csv(report).splitlines()[1].split(",")[3] == "inf"
    assert json_number(1.5) == 1.5 and json_number(float("nan")) == "nan"


def test_metric_names_and_no_reference_rules(tmp_path):
    assert parse_metric_names(" PSNR,ssim,psnr ") == ["psnr", "ssim"]
    with pytest.raises(ValueError, match="unknown metric"):
        parse_metric_names("psnr,fid")
    save(tmp_path / "p" / "x.png", photo("coffee", 32))
    with pytest.raises(ValueError, match="psnr need ground truth"):
        evaluate_dirs(tmp_path / "p", None, "psnr,niqe")


def test_pyiqa_metrics_skipped_with_one_note():
    if importlib.util.find_spec("pyiqa") is not None:
        pytest.skip("pyiqa is installed here")
    metrics, notes = build_metrics(["psnr", "musiq", "maniqa-pipal", "clipiqa"])
    assert [m.name for m in metrics] == ["psnr"]
    assert len(notes) == 1 and "pyiqa" in notes[0] and "musiq, maniqa-pipal, clipiqa" in notes[0]


@pytest.mark.skipif(not HAS_NIQE, reason="NIQE parameters not fetched (fluxsr weights fetch)")
def test_niqe_with_pred_only(tmp_path, capsys):
    save(tmp_path / "p" / "cat.png", photo("chelsea", 192))
    save(tmp_path / "p" / "small.png", photo("coffee", 48))  # too small for NIQE: a named problem
    rc = main(["eval", "--pred", str(tmp_path / "p"), "-q", "--json", str(tmp_path / "n.json")])
    doc = json.loads((tmp_path / "n.json").read_text())
    assert rc == 1 and "small.png" in capsys.readouterr().err
    assert [m["name"] for m in doc["metrics"]] == ["niqe"]
    scores = {i["name"]: i["scores"] for i in doc["images"]}
    assert scores["small"] == {} and 0 < scores["cat"]["niqe"] < 30
    assert doc["mean"]["niqe"] == pytest.approx(scores["cat"]["niqe"])


@pytest.mark.skipif(not HAS_LPIPS, reason="LPIPS weights not fetched (fluxsr weights fetch)")
def test_lpips_orders_better_prediction_first(tmp_path):
    gt = photo("astronaut", 64, 60, 180)
    save(tmp_path / "g" / "x.png", gt)
    save(tmp_path / "close" / "x.png", blur(gt))
    noisy = (gt.astype(np.int16) + np.random.default_rng(0).integers(-60, 60, gt.shape)).clip(0, 255)
    save(tmp_path / "far" / "x.png", noisy.astype(np.uint8))
    close = evaluate_dirs(tmp_path / "close", tmp_path / "g", "lpips,lpips-vgg").mean()
    far = evaluate_dirs(tmp_path / "far", tmp_path / "g", "lpips,lpips-vgg").mean()
    assert 0 <= close["lpips"] < far["lpips"] and 0 <= close["lpips-vgg"] < far["lpips-vgg"]


# ---------------------------------------------------------------------------------------------------- data sets


def test_layouts_detected_and_paired(tmp_path):
    img = photo("coffee", 16)
    small = photo("coffee", 4)
    realsr = tmp_path / "RealSR"
    for cam in ("Canon", "Nikon"):
        for i in (1, 2):
            save(realsr / cam / "Test" / "4" / f"{cam}_{i:03d}_HR.png", img)
            save(realsr / cam / "Test" / "4" / f"{cam}_{i:03d}_LR4.png", small)
    save(realsr / "Nikon" / "Test" / "4" / "Nikon_009_LR4.png", small)  # no HR
    drealsr = tmp_path / "DRealSR"
    for n in ("DSC_0001", "DSC_0002"):
        save(drealsr / "Test_x4" / "test_HR" / f"{n}_x1.png", img)
        save(drealsr / "Test_x4" / "test_LR" / f"{n}_x4.png", small)
    div2k = tmp_path / "DIV2K_V2_val"
    save(div2k / "gt" / "0000.png", img)
    save(div2k / "lq" / "0000.png", small)
    lq_only = tmp_path / "RealSet65"
    save(lq_only / "a.jpg", small)
    save(lq_only / "b.png", small)

    assert [detect_layout(p) for p in (realsr, drealsr, div2k, lq_only)] == [
        "realsr",
        "drealsr",
        "stablesr",
        "lr-only",
    ]
    ds = load_dataset(realsr)
    assert [p.name for p in ds.pairs] == ["Canon_001", "Canon_002", "Nikon_001", "Nikon_002"]
    assert all(p.hr.name == p.name + "_HR.png" for p in ds.pairs)
    assert ds.has_hr and len(ds.problems) == 1 and "Nikon_009_LR4.png" in ds.problems[0]
    assert load_dataset(realsr / "Canon" / "Test" / "4").layout == "realsr"
    ds = load_dataset(drealsr)
    assert [(p.lr.name, p.hr.name) for p in ds.pairs] == [
        ("DSC_0001_x4.png", "DSC_0001_x1.png"),
        ("DSC_0002_x4.png", "DSC_0002_x1.png"),
    ]
    assert load_dataset(div2k).has_hr and len(load_dataset(div2k).pairs) == 1
    ds = load_dataset(lq_only)
    assert not ds.has_hr and [p.name for p in ds.pairs] == ["a", "b"]
    with pytest.raises(ValueError, match="unknown dataset layout"):
        load_dataset(lq_only, "bogus")
    pairs, problems = pairs_from_dirs(realsr / "Canon" / "Test" / "4", None)
    assert len(pairs) == 4 and not problems


# ---------------------------------------------------------------------------------------------------- make-testset


def folder_bytes(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_make_testset_is_deterministic(tmp_path):
    src = tmp_path / "src"
    save(src / "astronaut_HR.png", photo("astronaut", 101, 50, 150)[:, :83])  # 83x101: not a multiple of 4
    save(src / "coffee.png", photo("coffee", 64, 100, 200))
    assert main(["make-testset", "--hr", str(src), "--out", str(tmp_path / "a"), "--seed", "7"]) == 0
    make_testset([src], tmp_path / "b", seed=7)
    make_testset([src], tmp_path / "c", seed=8)
    a, b, c = (folder_bytes(tmp_path / x) for x in "abc")
    assert sorted(a) == [
        "hr/astronaut.png",
        "hr/coffee.png",
        "lr/astronaut.png",
        "lr/coffee.png",
        "manifest.json",
    ]
    assert a == b  # same seed -> identical bytes, manifest included
    assert a["hr/coffee.png"] == c["hr/coffee.png"] and a["lr/coffee.png"] != c["lr/coffee.png"]
    assert a["lr/astronaut.png"] != c["lr/astronaut.png"]

    manifest = json.loads(a["manifest.json"])
    items = {i["name"]: i for i in manifest["images"]}
    assert manifest["seed"] == 7 and manifest["scale"] == 4 and manifest["degradation"]["scale"] == 4
    assert items["astronaut"]["hr_size"] == [80, 100] and items["astronaut"]["lr_size"] == [20, 25]
    assert items["astronaut"]["seed"] == image_seed(7, "astronaut_HR.png")
    assert Image.open(tmp_path / "a" / "lr" / "coffee.png").size == (16, 16)

    moved = tmp_path / "elsewhere"  # the seed depends on the file name, not on where the file lies
    save(moved / "coffee.png", photo("coffee", 64, 100, 200))
    make_testset([moved], tmp_path / "d", seed=7)
    assert folder_bytes(tmp_path / "d")["lr/coffee.png"] == a["lr/coffee.png"]


def test_make_testset_crop_and_problems(tmp_path):
    src = tmp_path / "src"
    big = save(src / "big.png", photo("chelsea", 120))
    save(src / "small.png", photo("coffee", 40))
    (src / "bad.png").write_bytes(b"not a png")
    r = make_testset([src, big], tmp_path / "o", seed=1, crop=64)
    assert [i["name"] for i in r.items] == ["big"]
    text = "\n".join(r.problems)
    assert "small.png" in text and "bad.png" in text and "already used" in text
    hr = read_image(tmp_path / "o" / "hr" / "big.png").rgb
    expected = torch.from_numpy(photo("chelsea", 120)[28:92, 28:92]).permute(2, 0, 1).float() / 255
    assert torch.allclose(hr, expected, atol=1e-6)  # centred crop
    assert hr_crop_box(10, 9, 4, None) == (1, 0, 8, 8)
    with pytest.raises(ValueError, match="multiple"):
        hr_crop_box(100, 100, 4, 30)


# ---------------------------------------------------------------------------------------------------- benchmark


def test_busiest_window_finds_the_detail():
    img = torch.zeros(3, 64, 64)
    img[:, 40:52, 8:20] = torch.rand(3, 12, 12, generator=torch.Generator().manual_seed(0))
    top, left = busiest_window(img, 16, 4)
    assert top % 4 == 0 and left % 4 == 0
    assert top <= 40 and top + 16 >= 52 and left <= 8 and left + 16 >= 20


@pytest.fixture(scope="module")
def tiny_set(tmp_path_factory):
    root = tmp_path_factory.mktemp("bench")
    save(root / "src" / "astronaut.png", photo("astronaut", 128, 40, 160))
    save(root / "src" / "coffee.png", photo("coffee", 128, 100, 200))
    make_testset([root / "src"], root / "set", seed=0)
    return root


def test_benchmark_cli_writes_table_chart_and_sheet(tiny_set, capsys):
    out = tiny_set / "out"
    metrics = "psnr,ssim" + (",lpips" if HAS_LPIPS else "")
    rc = main(
        [
            "benchmark",
            "--dataset",
            str(tiny_set / "set"),
            "--backends",
            "bicubic,fluxsr",
            "--model",
            "tiny",
            "--device",
            "cpu",
            "--metrics",
            metrics,
            "--out",
            str(out),
            "-q",
            "--sheet-crop",
            "64",
        ]
    )
    stdout = capsys.readouterr().out
    assert rc == 0
    assert (
        "| bicubic |" in stdout
        and "fluxsr:tiny (tiny test model, random or briefly trained weights)" in stdout
        and "s/image" in stdout
    )
    for name in ("benchmark.md", "benchmark.csv", "benchmark.json", "benchmark_chart.png", "comparison.png"):
        assert (out / name).stat().st_size > 0, name
    assert sorted(p.name for p in (out / "bicubic").iterdir()) == ["astronaut.png", "coffee.png"]
    assert Image.open(out / "fluxsr" / "coffee.png").size == (128, 128)

    doc = json.loads((out / "benchmark.json").read_text())
    assert doc["dataset"]["images"] == 2 and doc["dataset"]["has_hr"]
    assert [m["name"] for m in doc["methods"]] == ["bicubic", "fluxsr:tiny"]
    for m in doc["methods"]:
        assert set(m["mean"]) == set(metrics.split(",")) and m["images"] == 2
        assert m["wall_s"] > 0 and m["s_per_image"] == pytest.approx(m["wall_s"] / 2)
        assert [i["name"] for i in m["per_image"]] == ["astronaut", "coffee"]
    assert "random or briefly trained weights" in doc["methods"][1]["note"]
    bicubic = evaluate_dirs(out / "bicubic", tiny_set / "set" / "hr", "psnr").mean()["psnr"]
    assert doc["methods"][0]["mean"]["psnr"] == pytest.approx(bicubic)  # same numbers as `fluxsr eval`

    rows = list(csv.reader((out / "benchmark.csv").open()))
    assert rows[0][:2] == ["method", "label"] and rows[0][-3:] == ["load_s", "wall_s", "s_per_image"]
    assert [r[0] for r in rows[1:]] == ["bicubic", "fluxsr:tiny"]
    chart, sheet = Image.open(out / "benchmark_chart.png"), Image.open(out / "comparison.png")
    assert chart.size[0] > 600 and sheet.size[0] > 5 * 200 and sheet.size[1] > 2 * 200


def test_benchmark_lr_only_and_unknown_backend(tiny_set, tmp_path):
    with pytest.raises(ValueError, match="unknown backend"):
        backend_factories("bicubic,esrgan", lambda: None)
    ds = load_dataset(tiny_set / "set" / "lr")
    assert ds.layout == "lr-only"
    with pytest.raises(ValueError, match="psnr need ground truth"):  # explicitly asked for: an error
        run_benchmark(ds, backend_factories("bicubic", lambda: None), tmp_path, ["psnr"], sheet_images=1)
    res = run_benchmark(ds, backend_factories("bicubic", lambda: None), tmp_path, [], sheet_images=1)
    assert res.metrics == [] and not res.notes
    assert res.runs[0].n_images == 2 and (tmp_path / "comparison.png").is_file()


def test_benchmark_computes_each_reference_peakiness_once(tiny_set, tmp_path, monkeypatch):
    """The periodic score's reference side (the HR's edge spectrum) is computed once per HR image, not once per
    method: two methods on two images take 2 reference + 4 output spectra (it used to be 8), same scores."""
    real, shapes = PER.grid_peakiness, []

    def counted(y, period, scale=1):
        shapes.append(tuple(y.shape))
        return real(y, period, scale)

    monkeypatch.setattr(PER, "grid_peakiness", counted)
    ds = load_dataset(tiny_set / "set")
    bicubic = backend_factories("bicubic", lambda: None)["bicubic"]
    res = run_benchmark(ds, {"first": bicubic, "second": bicubic}, tmp_path, ["periodic"], sheet_images=0)
    assert len(ds.pairs) == 2 and len(shapes) == 2 + 2 * 2
    monkeypatch.setattr(PER, "grid_peakiness", real)
    hr = {p.name: read_image(p.hr).rgb for p in ds.pairs}
    for run in res.runs:
        assert [s.name for s in run.report.images] == sorted(hr)
        for s in run.report.images:
            expected = PER.periodic_score(read_image(run.outputs[s.name]).rgb, hr[s.name], 8, scale=4)
            assert s.scores["periodic"] == pytest.approx(float(expected), rel=1e-12)


@pytest.mark.slow
@pytest.mark.skipif(
    not HAS_REALESRGAN, reason="Real-ESRGAN weights not fetched (fluxsr weights fetch): skipped"
)
def test_benchmark_with_realesrgan(tmp_path):
    save(tmp_path / "src" / "cat.png", photo("chelsea", 48, 60, 100))
    make_testset([tmp_path / "src"], tmp_path / "set", seed=0)
    res = run_benchmark(
        load_dataset(tmp_path / "set"),
        backend_factories("bicubic,realesrgan", lambda: None),
        tmp_path / "out",
        ["psnr"],
        device="cpu",
        sheet_crop=32,
    )
    assert [r.name for r in res.runs] == ["bicubic", "realesrgan"] and not res.problems
    assert Image.open(tmp_path / "out" / "realesrgan" / "cat.png").size == (48, 48)
    assert "realesrgan" in (tmp_path / "out" / "benchmark.md").read_text()
