"""`fluxsr upscale` end to end on files: formats, alpha, 16-bit, grey, EXIF, bad files, reruns, logs."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fluxsr.cli import main
from fluxsr.io.images import read_image
from tests.builders import TWO_CPU_PROCESSES


def run(*args):
    return main(["upscale", "--model", "tiny", "-q", *map(str, args)])


@pytest.fixture()
def photos(tmp_path):
    src = tmp_path / "in"
    (src / "sub").mkdir(parents=True)
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (5, 7, 3), dtype=np.uint8)).save(src / "tiny.png")
    Image.fromarray(rng.integers(0, 255, (6, 8, 4), dtype=np.uint8), "RGBA").save(src / "alpha.png")
    Image.fromarray(rng.integers(0, 255, (6, 8), dtype=np.uint8), "L").save(src / "sub" / "gray.jpg")
    Image.fromarray(rng.integers(0, 65535, (6, 8), dtype=np.uint16)).save(src / "deep.png")
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise when shown
    Image.fromarray(rng.integers(0, 255, (4, 12, 3), dtype=np.uint8)).save(
        src / "rot.jpg", exif=exif.tobytes()
    )
    (src / "broken.png").write_bytes((src / "tiny.png").read_bytes()[:40])
    (src / "empty.webp").write_bytes(b"")
    (src / "notes.txt").write_text("not an image, not picked up")
    return src


def test_folder_with_bad_files(photos, tmp_path, capsys):
    out = tmp_path / "out"
    rc = run(photos, "-o", out, "--scale", "2", "--json", tmp_path / "log.json")
    assert rc == 1  # some files failed
    err = capsys.readouterr().err
    assert "broken.png" in err and "empty.webp" in err
    log = json.loads((tmp_path / "log.json").read_text())
    assert log["counts"] == {"ok": 5, "skipped": 0, "failed": 2}
    assert not (out / "broken.png").exists() and not (out / "empty.webp").exists()

    tiny = read_image(out / "tiny.png")
    assert (tiny.height, tiny.width) == (10, 14)
    alpha = read_image(out / "alpha.png")
    assert alpha.alpha is not None and alpha.alpha.shape == (1, 12, 16)
    gray = Image.open(out / "sub" / "gray.jpg")
    assert gray.mode == "L" and gray.size == (16, 12)
    deep = read_image(out / "deep.png")
    assert deep.bit_depth == 16 and deep.is_gray and Image.open(out / "deep.png").mode.startswith("I")
    rot = Image.open(out / "rot.jpg")
    assert rot.size == (8, 24)  # EXIF orientation applied: 12x4 landscape became 4x12 portrait
    assert rot.getexif().get(0x0112, 1) == 1


def test_rerun_skips_and_overwrite(photos, tmp_path):
    out = tmp_path / "out"
    (photos / "broken.png").unlink()
    (photos / "empty.webp").unlink()
    assert run(photos / "tiny.png", "-o", out) == 0
    first = (out / "tiny.png").stat().st_mtime_ns
    assert run(photos / "tiny.png", "-o", out, "--json", tmp_path / "l.json") == 0
    assert json.loads((tmp_path / "l.json").read_text())["counts"]["skipped"] == 1
    assert (out / "tiny.png").stat().st_mtime_ns == first
    assert run(photos / "tiny.png", "-o", out, "--overwrite") == 0
    assert (out / "tiny.png").stat().st_mtime_ns != first


def test_suffix_ext_and_scale(photos, tmp_path):
    out = tmp_path / "out"
    assert run(photos / "tiny.png", "-o", out, "--suffix", "_x", "--ext", "webp", "--scale", "2.5") == 0
    im = Image.open(out / "tiny_x.webp")
    assert im.size == (18, 13)  # 7x5 * 2.5 = 17.5 x 12.5, rounded half up


def test_bicubic_backend_and_output_identical_across_runs(photos, tmp_path):
    for name in ("a", "b"):
        assert (
            main(
                [
                    "upscale",
                    "--backend",
                    "bicubic",
                    "-q",
                    str(photos / "tiny.png"),
                    "-o",
                    str(tmp_path / name),
                ]
            )
            == 0
        )
    assert (tmp_path / "a" / "tiny.png").read_bytes() == (tmp_path / "b" / "tiny.png").read_bytes()
    for name in ("c", "d"):
        assert run(photos / "alpha.png", "-o", tmp_path / name) == 0
    assert (tmp_path / "c" / "alpha.png").read_bytes() == (tmp_path / "d" / "alpha.png").read_bytes()


def test_max_pixels(photos, tmp_path, capsys):
    assert run(photos / "tiny.png", "-o", tmp_path / "o", "--max-pixels", "20") == 1
    assert "tiny.png" in capsys.readouterr().err


def test_missing_input(tmp_path, capsys):
    assert run(tmp_path / "nope.png", "-o", tmp_path / "o") == 1
    assert "nope.png" in capsys.readouterr().err


def test_console_script(photos, tmp_path):
    """The installed `fluxsr` entry point, as a user runs it."""
    exe = [sys.executable, "-m", "fluxsr.cli"]
    res = subprocess.run(
        [*exe, "upscale", "--model", "tiny", str(photos / "tiny.png"), "-o", str(tmp_path / "o")],
        capture_output=True,
        text=True,
        env={"HF_HUB_OFFLINE": "1", "PATH": ""},
    )
    assert res.returncode == 0, res.stderr
    assert "1 upscaled" in res.stderr and "random or briefly trained weights" in res.stderr
    assert Image.open(tmp_path / "o" / "tiny.png").size == (28, 20)


@pytest.mark.slow
def test_upscale_split_across_two_processes(photos, tmp_path):
    """`accelerate launch` with two CPU processes: every file done once, outputs identical to one process.

    The two bad files fall to the second process, which finishes first: it must wait for the first process
    instead of exiting with a failure (the launcher would then stop the first one mid-batch)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    launch = TWO_CPU_PROCESSES
    args = [
        "upscale",
        "--model",
        "tiny",
        "-q",
        str(photos),
        "--scale",
        "2",
        "--json",
        str(tmp_path / "log.json"),
    ]
    res = subprocess.run(
        [*launch, *args, "-o", str(tmp_path / "two")], capture_output=True, text=True, env=env, timeout=600
    )
    assert res.returncode == 1, res.stderr[-3000:]  # two files failed
    logs = [json.loads((tmp_path / f"log.rank{r}.json").read_text()) for r in (0, 1)]
    done = [f["input"] for log in logs for f in log["files"] if f["status"] == "ok"]
    failed = {Path(f["input"]).name for log in logs for f in log["files"] if f["status"] == "failed"}
    assert len(done) == len(set(done)) == 5 and failed == {"broken.png", "empty.webp"}
    assert "5 upscaled, 0 skipped, 2 failed (2 processes)" in res.stderr
    # the same per-process threading (OMP_NUM_THREADS=1) as the two launched processes, so bytes can match exactly
    one = subprocess.run(
        [sys.executable, "-m", "fluxsr.cli", *args[:-2], "-o", str(tmp_path / "one")],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert one.returncode == 1, one.stderr[-3000:]
    for out in (tmp_path / "one").rglob("*.*"):
        assert (tmp_path / "two" / out.relative_to(tmp_path / "one")).read_bytes() == out.read_bytes(), (
            out.name
        )


def test_each_launched_process_binds_its_own_gpu(monkeypatch):
    """`accelerate launch` on a GPU machine: rank k uses GPU LOCAL_RANK (modulo the visible GPUs), not GPU 0."""
    import torch

    from fluxsr.inference.upscale import bind_local_gpu

    chosen = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    monkeypatch.setattr(torch.cuda, "set_device", chosen.append)
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    assert bind_local_gpu() is None and chosen == []  # not launched: the default device stays
    for local, gpu in (("0", 0), ("3", 3), ("5", 1)):
        monkeypatch.setenv("LOCAL_RANK", local)
        assert bind_local_gpu() == gpu
    assert chosen == [0, 3, 1]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert bind_local_gpu() is None and chosen == [0, 3, 1]  # CPU processes (gloo) have nothing to bind


def test_find_jobs_resolves_each_path_once(photos, tmp_path, monkeypatch):
    from collections import Counter

    from fluxsr.inference import upscale as U

    (photos / "link.png").symlink_to(photos / "tiny.png")  # a second name for one file: decided by real paths
    calls = Counter()

    def counted(path):
        calls[Path(path)] += 1
        return Path(os.path.realpath(path))

    monkeypatch.setattr(U, "real_path", counted)
    jobs, _ = U.find_jobs(
        [photos, photos / "tiny.png"], tmp_path / "out", U.BatchOptions(), note=lambda _: None
    )
    assert [src.name for src, _ in jobs].count("tiny.png") == 1 and "link.png" not in [
        s.name for s, _ in jobs
    ]
    assert calls and max(calls.values()) == 1, calls.most_common(3)
