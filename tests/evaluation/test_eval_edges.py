"""Edge cases of `fluxsr eval`, `make-testset`, `benchmark` and `demo`: equal stems in different folders, stale
test-set folders, the classic HR/ + LR_bicubic/X4/ layout, single files, empty folders, per-metric counts and NIQE
on a flat image. All images are tiny synthetic ones built in tmp_path."""

from __future__ import annotations

import csv
import io
import json
import math
import os
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fluxsr.cli import main
from fluxsr.data.datasets import detect_layout, load_dataset
from fluxsr.data.testset import make_testset
from fluxsr.evaluation import niqe as NQ
from fluxsr.evaluation import protocol as PR
from fluxsr.evaluation.benchmark import backend_factories, run_benchmark
from fluxsr.evaluation.benchmark_result import BenchmarkResult, MethodRun
from fluxsr.evaluation.metric_set import Metric
from fluxsr.evaluation.reports import (
    benchmark_json,
    benchmark_markdown,
    report_csv,
    report_json,
    report_markdown,
)
from fluxsr.evaluation.scoring import EvalReport, ImageScore, evaluate_dirs
from fluxsr.io.cache import MissingWeightsError, cached_file
from fluxsr.io.images import read_image
from tests.builders import save


def texture(size: int, seed: int) -> np.ndarray:
    """A smooth random RGB image (different for each seed)."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (size // 4, size // 4, 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(small).resize((size, size), Image.BICUBIC))


def shrink(a: np.ndarray, factor: int = 4) -> np.ndarray:
    h, w = a.shape[:2]
    return np.asarray(Image.fromarray(a).resize((w // factor, h // factor), Image.BICUBIC))


def has_niqe() -> bool:
    try:
        cached_file(NQ.NIQE_PARAMS_FILE)
        return True
    except MissingWeightsError:
        return False


# ---------------------------------------------------------------------------------------------------- bug 1


def test_benchmark_keeps_equal_stems_in_different_folders_apart(tmp_path):
    root = tmp_path / "dup"
    hrs = {}
    for i, year in enumerate(("2023", "2024")):
        hrs[year] = save(root / "hr" / year / "IMG_0001.png", texture(32, i))
        save(root / "lr" / year / "IMG_0001.png", shrink(texture(32, i)))
    ds = load_dataset(root)
    assert [p.name for p in ds.pairs] == ["2023/IMG_0001", "2024/IMG_0001"]
    out = tmp_path / "out"
    res = run_benchmark(ds, backend_factories("bicubic", lambda: None), out, ["psnr"], sheet_images=0)
    assert not res.problems
    files = {year: out / "bicubic" / year / "IMG_0001.png" for year in ("2023", "2024")}
    assert all(f.is_file() for f in files.values())
    assert files["2023"].read_bytes() != files["2024"].read_bytes()
    scores = {s.name: s.scores["psnr"] for s in res.runs[0].report.images}
    for year, f in files.items():  # each output scored against its own ground truth
        expected = float(PR.protocol_psnr(read_image(f).rgb, read_image(hrs[year]).rgb, "fluxsr", scale=4))
        assert scores[f"{year}/IMG_0001"] == pytest.approx(expected)
        assert expected > 20

    demo = run_benchmark(
        load_dataset(root / "lr", "lr-only"),
        backend_factories("bicubic", lambda: None),
        tmp_path / "demo",
        [],
        sheet_images=0,
    )  # what `fluxsr demo` does
    assert demo.runs[0].n_images == 2 and not demo.problems
    assert (tmp_path / "demo" / "bicubic" / "2024" / "IMG_0001.png").is_file()


def test_benchmark_reports_names_that_still_clash(tmp_path):
    save(tmp_path / "set" / "a.png", shrink(texture(32, 0)))
    save(tmp_path / "set" / "a.jpg", shrink(texture(32, 1)))
    res = run_benchmark(
        load_dataset(tmp_path / "set", "lr-only"),
        backend_factories("bicubic", lambda: None),
        tmp_path / "out",
        [],
        sheet_images=0,
    )
    assert len(res.problems) == 1 and "duplicate name 'a'" in res.problems[0] and "a.png" in res.problems[0]
    assert res.runs[0].n_images == 1 and len(res.dataset.pairs) == 1


# ---------------------------------------------------------------------------------------------------- bug 2


def test_make_testset_refuses_stale_folders_unless_overwrite(tmp_path, capsys):
    old, new = tmp_path / "old", tmp_path / "new"
    for name in ("a", "b", "c"):
        save(old / f"{name}.png", texture(32, ord(name)))
    save(new / "z.png", texture(32, 9))
    out = tmp_path / "set"
    assert main(["make-testset", "--hr", str(old), "--out", str(out), "--seed", "0"]) == 0
    before = sorted(p.name for p in (out / "lr").iterdir())
    assert main(["make-testset", "--hr", str(new), "--out", str(out), "--seed", "0"]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert sorted(p.name for p in (out / "lr").iterdir()) == before  # nothing touched
    assert main(["make-testset", "--hr", str(new), "--out", str(out), "--seed", "0", "--overwrite"]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert [i["name"] for i in manifest["images"]] == ["z"]
    assert [p.name for p in (out / "lr").iterdir()] == ["z.png"] and [
        p.name for p in (out / "hr").iterdir()
    ] == ["z.png"]
    assert [p.name for p in load_dataset(out).pairs] == ["z"]
    with pytest.raises(ValueError, match="not empty"):
        make_testset([old], out, seed=0)


# ---------------------------------------------------------------------------------------------------- bug 3


def classic_set(root: Path) -> Path:
    """Set5-style: HR/<name>.png + LR_bicubic/X4/<name>x4.png (and an X2 folder)."""
    for i, name in enumerate(("baby", "bird")):
        hr = save(root / "HR" / f"{name}.png", texture(32, i))
        save(root / "LR_bicubic" / "X4" / f"{name}x4.png", shrink(np.asarray(Image.open(hr))))
        save(root / "LR_bicubic" / "X2" / f"{name}x2.png", shrink(np.asarray(Image.open(hr)), 2))
    return root


def test_classic_layout_pairs_hr_with_lr_bicubic(tmp_path, capsys):
    root = classic_set(tmp_path / "Set5")
    assert detect_layout(root) == "classic"
    ds = load_dataset(root)
    assert ds.has_hr and not ds.problems and [p.name for p in ds.pairs] == ["baby", "bird"]
    assert [(p.lr.relative_to(root).as_posix(), p.hr.name) for p in ds.pairs] == [
        ("LR_bicubic/X4/babyx4.png", "baby.png"),
        ("LR_bicubic/X4/birdx4.png", "bird.png"),
    ]
    assert [p.lr.name for p in load_dataset(root, scale=2).pairs] == ["babyx2.png", "birdx2.png"]
    with pytest.raises(FileNotFoundError, match="X3"):
        load_dataset(root, scale=3)

    out = tmp_path / "out"
    rc = main(
        [
            "benchmark",
            "--dataset",
            str(root),
            "--backends",
            "bicubic",
            "--metrics",
            "psnr,ssim",
            "--out",
            str(out),
            "-q",
            "--sheet-images",
            "0",
        ]
    )
    assert rc == 0
    doc = json.loads((out / "benchmark.json").read_text())
    assert doc["dataset"]["layout"] == "classic" and doc["dataset"]["has_hr"]
    assert set(doc["methods"][0]["mean"]) == {"psnr", "ssim"}
    assert sorted(p.name for p in (out / "bicubic").iterdir()) == ["baby.png", "bird.png"]
    capsys.readouterr()


def test_benchmark_refuses_full_reference_metrics_without_ground_truth(tmp_path, capsys):
    save(tmp_path / "lr" / "a.png", shrink(texture(32, 0)))
    rc = main(
        [
            "benchmark",
            "--dataset",
            str(tmp_path / "lr"),
            "--backends",
            "bicubic",
            "--metrics",
            "psnr,niqe",
            "--out",
            str(tmp_path / "out"),
            "-q",
        ]
    )
    err = capsys.readouterr().err
    assert rc == 2 and "psnr need ground truth" in err
    assert not (tmp_path / "out" / "bicubic").exists()


@pytest.mark.skipif(not has_niqe(), reason="NIQE parameters not fetched (fluxsr weights fetch)")
def test_benchmark_default_metrics_without_ground_truth_keep_the_note(tmp_path):
    save(tmp_path / "lr" / "a.png", shrink(texture(32, 0)))
    res = run_benchmark(
        load_dataset(tmp_path / "lr"),
        backend_factories("bicubic", lambda: None),
        tmp_path / "out",
        None,
        sheet_images=0,
    )
    assert [m.name for m in res.metrics] == ["niqe"]
    assert any("no ground truth: skipped psnr, ssim, lpips, dists" in n for n in res.notes)


# ---------------------------------------------------------------------------------------------------- bugs 4, 5


def test_eval_single_files(tmp_path, capsys):
    gt = save(tmp_path / "g" / "cat.png", texture(32, 0))
    pred = save(tmp_path / "p" / "cat_out.png", texture(32, 1))
    rc = main(
        [
            "eval",
            "--pred",
            str(pred),
            "--gt",
            str(gt),
            "--metrics",
            "psnr",
            "-q",
            "--json",
            str(tmp_path / "r.json"),
        ]
    )
    assert rc == 0, capsys.readouterr().err
    doc = json.loads((tmp_path / "r.json").read_text())
    assert doc["count"] == 1 and [i["name"] for i in doc["images"]] == ["cat_out"]
    assert math.isfinite(doc["images"][0]["scores"]["psnr"])
    report = evaluate_dirs(pred, gt, "psnr,ssim")
    assert [s.name for s in report.images] == ["cat_out"] and not report.problems


def test_eval_empty_folder_is_an_error(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    save(tmp_path / "g" / "a.png", texture(32, 0))
    rc = main(
        ["eval", "--pred", str(tmp_path / "empty"), "--gt", str(tmp_path / "g"), "--metrics", "psnr", "-q"]
    )
    err = capsys.readouterr().err
    assert rc == 1 and f"no images found under {tmp_path / 'empty'}" in err and "0 image(s) scored" in err
    report = evaluate_dirs(tmp_path / "empty", tmp_path / "g", "psnr")
    assert report.problems[0] == f"no images found under {tmp_path / 'empty'}" and report.n_scored == 0


# ---------------------------------------------------------------------------------------------------- bug 6


def partial_report() -> EvalReport:
    """psnr on a and b, niqe on a only, nothing on c (every metric failed there)."""
    metrics = [Metric("psnr", True, False, lambda p, g: 0.0), Metric("niqe", False, True, lambda p, g: 0.0)]
    images = [
        ImageScore("a", "a.png", "ga.png", {"psnr": 20.0, "niqe": 5.0}),
        ImageScore("b", "b.png", "gb.png", {"psnr": 22.0}),
        ImageScore("c", "c.png", "gc.png", {}),
    ]
    return EvalReport(metrics, images)


def test_mean_row_shows_per_metric_counts():
    report = partial_report()
    assert report.n_scored == 2 and report.counts() == {"psnr": 2, "niqe": 1}
    md = report_markdown(report)
    assert "**mean** (n=2)" in md and "| **21.00** |" in md and "**5.000** (n=1)" in md
    doc = report_json(report)
    assert doc["count"] == 2 and doc["counts"] == {"psnr": 2, "niqe": 1}
    rows = list(csv.reader(io.StringIO(report_csv(report))))
    assert rows[-2][0] == "mean" and rows[-1] == ["count", "", "", "2", "1"]

    run = MethodRun(
        "bicubic", "bicubic", outputs={n: Path(f"{n}.png") for n in "abc"}, wall_s=1.0, report=report
    )
    result = BenchmarkResult(load_dataset_stub(), report.metrics, [run], "fluxsr", 4, 4.0, "cpu")
    assert "21.00 (n=2)" in benchmark_markdown(result) and "5.000 (n=1)" in benchmark_markdown(result)
    assert benchmark_json(result)["methods"][0]["counts"] == {"psnr": 2, "niqe": 1}


def load_dataset_stub():
    from fluxsr.data.datasets import Dataset

    return Dataset("stub", "pairs", Path("."), [])


# ---------------------------------------------------------------------------------------------------- bug 7


def test_niqe_distance_on_flat_features_raises_without_warning():
    feats = torch.full((6, 36), float("nan"), dtype=torch.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ValueError, match=r"NIQE undefined: no textured 96x96 block \(flat image\)"):
            NQ.niqe_distance(feats, torch.zeros(36, dtype=torch.float64), torch.eye(36, dtype=torch.float64))


@pytest.mark.skipif(not has_niqe(), reason="NIQE parameters not fetched (fluxsr weights fetch)")
def test_niqe_on_a_flat_image(tmp_path):
    flat = torch.full((3, 192, 192), 0.5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ValueError, match="flat image"):
            PR.protocol_niqe(flat, "fluxsr", params=NQ.load_niqe_params())
    save(tmp_path / "p" / "flat.png", np.full((192, 192, 3), 128, np.uint8))
    report = evaluate_dirs(tmp_path / "p", None, "niqe")
    assert report.n_scored == 0 and "flat image" in report.problems[0]


# -- fluxsr demo ----------------------------------------------------------------------------------------------------


def _photo(path, size=(24, 16), seed=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(
        path
    )
    return path


def test_demo_out_that_is_a_file_fails_before_any_work(tmp_path, capsys):
    _photo(tmp_path / "in" / "a.png")
    (tmp_path / "out").write_text("not a folder")
    assert main(["demo", str(tmp_path / "in"), "--out", str(tmp_path / "out"), "--model", "tiny", "-q"]) == 2
    assert "is a file" in capsys.readouterr().err


def test_demo_rerun_with_out_inside_the_folder_skips_its_outputs(tmp_path, capsys):
    _photo(tmp_path / "in" / "a.png")
    argv = ["demo", str(tmp_path / "in"), "--out", str(tmp_path / "in" / "demo"), "--model", "tiny", "-q"]
    assert main(argv) == 0
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert out.count("1 images in") == 4  # two methods, two runs, one image each time
    assert not (tmp_path / "in" / "demo" / "bicubic" / "demo").exists()


def test_demo_says_why_it_fails(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["demo", str(tmp_path / "empty"), "--out", str(tmp_path / "o"), "--model", "tiny", "-q"]) == 2
    assert "no images" in capsys.readouterr().err
    _photo(tmp_path / "dup" / "a.png")
    _photo(tmp_path / "dup" / "a.bmp", seed=1)
    assert main(["demo", str(tmp_path / "dup"), "--out", str(tmp_path / "o2"), "--model", "tiny", "-q"]) == 1
    assert "duplicate name 'a'" in capsys.readouterr().err


def test_demo_walks_folders_as_upscale_does(tmp_path, capsys):
    """Named pipes and bad links get one line each and the good image is done (the walker of fluxsr upscale)."""
    _photo(tmp_path / "in" / "a.png")
    os.mkfifo(tmp_path / "in" / "pipe.png")
    (tmp_path / "in" / "loop.jpg").symlink_to("loop.jpg")
    (tmp_path / "in" / "here").symlink_to(".")
    assert main(["demo", str(tmp_path / "in"), "--out", str(tmp_path / "o"), "--model", "tiny", "-q"]) == 1
    err = capsys.readouterr().err
    assert "pipe.png: not a regular file (named pipe)" in err and "loop.jpg: symbolic link loop" in err
    assert (tmp_path / "o" / "bicubic" / "a.png").is_file() and (
        tmp_path / "o" / "fluxsr" / "a.png"
    ).is_file()


def test_sheet_crops_line_up_at_a_non_integer_scale(tmp_path, monkeypatch):
    """At x2.5 the LR column must show the same area as the outputs (it used to be enlarged x2)."""
    from fluxsr.evaluation import figures as FG
    from fluxsr.inference.pipeline import UpscaleOptions
    from fluxsr.io.images import write_image

    lr = torch.zeros(3, 20, 20)
    lr[:, 10:, 10:] = 1.0
    write_image(tmp_path / "lr" / "q.png", lr)
    result = run_benchmark(
        load_dataset(tmp_path / "lr", "lr-only"),
        backend_factories("bicubic", lambda: None),
        tmp_path / "b",
        [],
        opts=UpscaleOptions(scale=2.5),
        sheet_images=1,
    )
    assert result.files["sheet"].is_file()
    shapes, real_crop = [], FG._crop

    def spy(img, top, left, size):
        shapes.append(tuple(img.shape[-2:]))
        return real_crop(img, top, left, size)

    monkeypatch.setattr(FG, "_crop", spy)
    FG.comparison_sheet(result, tmp_path / "again.png", n_images=1)
    full, lr_column, bicubic = shapes
    # the LR column is enlarged to the output's size, so one crop window shows the same area in both
    assert lr_column == bicubic == (50, 50)


def test_make_testset_checks_the_crop_first_and_writes_no_empty_manifest(tmp_path, capsys):
    _photo(tmp_path / "hr" / "a.png", size=(40, 40))
    assert (
        main(
            [
                "make-testset",
                "--hr",
                str(tmp_path / "hr"),
                "--out",
                str(tmp_path / "t1"),
                "--seed",
                "0",
                "--crop",
                "130",
            ]
        )
        == 2
    )
    assert "multiple of the scale" in capsys.readouterr().err and not (tmp_path / "t1").exists()
    # every input too small for the crop: errors, and no manifest that would pass for an empty test set
    assert (
        main(
            [
                "make-testset",
                "--hr",
                str(tmp_path / "hr"),
                "--out",
                str(tmp_path / "t2"),
                "--seed",
                "0",
                "--crop",
                "200",
            ]
        )
        == 1
    )
    assert "no pairs written" in capsys.readouterr().err
    assert not (tmp_path / "t2" / "manifest.json").exists()


# ---------------------------------------------------------------------------------------------------- issue 16: data loss


def test_make_testset_never_deletes_an_input_inside_out(tmp_path, capsys):
    """`make-testset --hr data/hr --out data --overwrite` used to delete the user's HR photos."""
    data = tmp_path / "data"
    photos = [_photo(data / "hr" / f"{name}.png", size=(32, 32), seed=i) for i, name in enumerate("ab")]
    before = [p.read_bytes() for p in photos]
    for extra in ([], ["--overwrite"]):
        argv = ["make-testset", "--hr", str(data / "hr"), "--out", str(data), "--seed", "0", *extra]
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert f"--hr {data / 'hr'} is {data / 'hr'}" in err and "choose an --out" in err
        assert "--overwrite to" not in err  # no longer suggested when it would delete the input
    one_file = ["make-testset", "--hr", str(photos[0]), "--out", str(data), "--seed", "0", "--overwrite"]
    assert main(one_file) == 2 and "lies inside" in capsys.readouterr().err
    assert [p.read_bytes() for p in photos] == before and not (data / "lr").exists()


def test_make_testset_overwrite_deletes_only_what_it_wrote(tmp_path, capsys):
    src = tmp_path / "src"
    _photo(src / "a.png", size=(32, 32))
    out = tmp_path / "set"
    assert main(["make-testset", "--hr", str(src), "--out", str(out), "--seed", "0"]) == 0
    mine = _photo(out / "hr" / "mine.png", seed=5)  # a file of the user's, not listed in the manifest
    again = ["make-testset", "--hr", str(src), "--out", str(out), "--seed", "1", "--overwrite"]
    assert main(again) == 2
    assert "mine.png is not among them" in capsys.readouterr().err
    assert mine.is_file() and (out / "hr" / "a.png").is_file()  # nothing deleted
    mine.unlink()
    assert main(again) == 0 and json.loads((out / "manifest.json").read_text())["seed"] == 1
    # a folder of HR/LR pairs that make-testset did not write (no manifest) is never cleared
    theirs = tmp_path / "theirs"
    _photo(theirs / "hr" / "x.png")
    _photo(theirs / "lr" / "x.png")
    assert main(["make-testset", "--hr", str(src), "--out", str(theirs), "--seed", "0", "--overwrite"]) == 2
    assert (theirs / "hr" / "x.png").is_file() and (theirs / "lr" / "x.png").is_file()


def test_make_testset_overwrite_removes_temp_files_of_a_killed_run(tmp_path):
    """A make-testset killed mid-write leaves a hidden temporary file in OUT/hr: --overwrite removes it (its writer
    is gone) instead of refusing it as a file the user put there."""
    import subprocess
    import sys

    from fluxsr.io.cache import host_name

    src = tmp_path / "src"
    _photo(src / "a.png", size=(32, 32))
    out = tmp_path / "set"
    assert main(["make-testset", "--hr", str(src), "--out", str(out), "--seed", "0"]) == 0
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    leftover = out / "hr" / f".fluxsr-{host_name()}-{int(dead.stdout)}-0123abcd.tmp"
    leftover.write_bytes(b"half a png")
    assert main(["make-testset", "--hr", str(src), "--out", str(out), "--seed", "1", "--overwrite"]) == 0
    assert not leftover.exists() and json.loads((out / "manifest.json").read_text())["seed"] == 1


def test_make_testset_manifest_lists_the_pairs_before_they_are_written(tmp_path, monkeypatch):
    """A killed run leaves a manifest naming its pairs, so that --overwrite may delete them (and only them)."""
    import fluxsr.data.testset as D

    src = tmp_path / "src"
    for i, name in enumerate("ab"):
        _photo(src / f"{name}.png", size=(32, 32), seed=i)
    out = tmp_path / "set"

    def killed(*args):
        raise KeyboardInterrupt

    real = D.degrade_one
    calls = iter([real, killed])
    monkeypatch.setattr(D, "degrade_one", lambda *a: next(calls)(*a))
    with pytest.raises(KeyboardInterrupt):
        make_testset([src], out, seed=0)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["complete"] is False and [i["name"] for i in manifest["images"]] == ["a", "b"]
    assert (out / "hr" / "a.png").is_file()
    monkeypatch.setattr(D, "degrade_one", real)
    result = make_testset([src], out, seed=0, overwrite=True)
    assert [i["name"] for i in result.items] == ["a", "b"]
    assert json.loads(result.manifest.read_text())["complete"] is True


def test_benchmark_and_demo_refuse_outputs_that_replace_their_inputs(tmp_path, capsys):
    """A data set inside a method's output folder (written with overwrite), or an earlier comparison.png among
    the demo's inputs, would be written over: refused before anything runs."""
    out = tmp_path / "bench"
    lr = _photo(out / "bicubic" / "a.png", seed=1)
    before = lr.read_bytes()
    with pytest.raises(ValueError, match="lies inside .*bicubic, which this run writes its outputs into"):
        run_benchmark(
            load_dataset(out / "bicubic", "lr-only"), backend_factories("bicubic", lambda: None), out, []
        )
    assert lr.read_bytes() == before and not (out / "comparison.png").exists()
    folder = tmp_path / "photos"
    _photo(folder / "b.png")
    sheet = _photo(folder / "comparison.png", seed=2)  # e.g. an earlier `fluxsr demo photos --out photos`
    before = sheet.read_bytes()
    assert main(["demo", str(folder), "--out", str(folder), "--model", "tiny", "-q"]) == 2
    assert "comparison.png, which this run replaces" in capsys.readouterr().err
    assert sheet.read_bytes() == before and not (folder / "bicubic").exists()


def test_eval_refuses_a_report_file_that_is_a_scored_image(tmp_path, capsys):
    a = _photo(tmp_path / "sr" / "a.png")
    _photo(tmp_path / "hr" / "a.png")
    before = a.read_bytes()
    for flag in ("--json", "--csv"):
        argv = ["eval", "--pred", str(tmp_path / "sr"), "--gt", str(tmp_path / "hr"), "--metrics", "psnr"]
        assert main([*argv, flag, str(a), "-q"]) == 2
        assert f"which {flag} would replace" in capsys.readouterr().err
    assert a.read_bytes() == before
