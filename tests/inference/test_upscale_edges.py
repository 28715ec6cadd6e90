"""Edge cases of `fluxsr upscale` and the Python API: write errors, PIL modes, tensor checks, output folders inside
inputs, size options, the JSON log, unsupported formats and suffixes."""

import json
import math
import os
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from PIL import Image

from fluxsr import cli
from fluxsr.cli import options as cli_options
from fluxsr.inference.pipeline import FluxSRPipeline, UpscaleOptions, as_rgb
from fluxsr.inference.upscale import BatchOptions, BicubicBackend, upscale_paths
from fluxsr.io.images import ImageError, pil_to_tensor, read_image, write_image


def run(*args):
    return cli.main(["upscale", "--backend", "bicubic", "-q", *map(str, args)])


def save_rgb(path, seed=0, size=(5, 7)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (*size, 3), dtype=np.uint8)).save(path)
    return path


def tree(folder):
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


# -- 1. write errors are per-file errors --------------------------------------------------------------------------


def test_long_file_name_is_written(tmp_path):
    name = "x" * 245 + ".png"  # the old temp name ".<name>.<hex>.tmp" went over 255 bytes
    save_rgb(tmp_path / "in" / name)
    assert run(tmp_path / "in", "-o", tmp_path / "out", "--scale", "2") == 0
    assert read_image(tmp_path / "out" / name).width == 14
    assert tree(tmp_path / "out") == [name]  # no temp file left behind


def test_output_folder_is_a_file_fails_per_file_and_logs(tmp_path, capsys):
    save_rgb(tmp_path / "in" / "a.png")
    save_rgb(tmp_path / "in" / "b.png", 1)
    (tmp_path / "file").write_text("x")
    assert run(tmp_path / "in", "-o", tmp_path / "file", "--json", tmp_path / "log.json") == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.count("error:") == 2 and "cannot create folder" in err
    assert json.loads((tmp_path / "log.json").read_text())["counts"] == {"ok": 0, "skipped": 0, "failed": 2}


def test_output_path_that_is_a_folder_fails_and_the_batch_goes_on(tmp_path, capsys):
    save_rgb(tmp_path / "in" / "a.png")
    save_rgb(tmp_path / "in" / "b.png", 1)
    (tmp_path / "out" / "a.png").mkdir(parents=True)
    assert run(tmp_path / "in", "-o", tmp_path / "out", "--overwrite") == 1
    assert "a.png" in capsys.readouterr().err
    assert read_image(tmp_path / "out" / "b.png").width == 28


def test_write_image_turns_os_errors_into_image_errors(tmp_path, monkeypatch):
    def refuse(*_):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr("fluxsr.io.cache.os.replace", refuse)
    with pytest.raises(ImageError, match="Permission denied") as info:
        write_image(tmp_path / "a.png", torch.rand(3, 4, 4))
    assert info.value.path == tmp_path / "a.png"
    assert list(tmp_path.iterdir()) == []  # the temp file is gone


# -- 2. PIL modes through the Python API --------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["I;16", "I;16B", "I;16L", "I", "F"])
def test_pil_to_tensor_deep_gray_modes(mode):
    if mode == "F":
        im = Image.fromarray(np.full((4, 5), 0.25, np.float32), "F")
    elif mode == "I":
        im = Image.fromarray(np.full((4, 5), 16384, np.int32), "I")
    else:
        order = ">u2" if mode == "I;16B" else "<u2"
        im = Image.frombytes(mode, (5, 4), np.full((4, 5), 16384, order).tobytes())
    rgb, alpha, is_gray = pil_to_tensor(im)
    assert rgb.shape == (3, 4, 5) and alpha is None and is_gray
    assert torch.allclose(rgb, torch.full_like(rgb, 0.25), atol=1e-4)


def test_pil_to_tensor_matches_the_file_reader(tmp_path):
    im = Image.fromarray(np.random.default_rng(0).integers(0, 255, (6, 8, 4), dtype=np.uint8), "RGBA")
    im.save(tmp_path / "a.png")
    rgb, alpha, is_gray = pil_to_tensor(im)
    loaded = read_image(tmp_path / "a.png")
    assert torch.equal(rgb, loaded.rgb) and torch.equal(alpha, loaded.alpha) and not is_gray


# -- 3. tensors given to the pipeline -----------------------------------------------------------------------------


def test_uint8_tensor_is_scaled(tiny_pipe):
    x = torch.randint(0, 256, (3, 6, 8), dtype=torch.uint8)
    assert torch.equal(tiny_pipe(x, scale=2), tiny_pipe(x.float() / 255, scale=2))


@pytest.mark.parametrize("shape", [(6, 8, 3), (1, 6, 8), (4, 6, 8), (6, 8), (1, 3, 6, 8), (3, 0, 8)])
def test_wrong_shapes_are_refused(tiny_pipe, shape):
    with pytest.raises(ValueError, match=r"\(3, H, W\)"):
        tiny_pipe(torch.rand(shape))


def test_bad_values_and_types_are_refused(tiny_pipe):
    x = torch.rand(3, 6, 8)
    x[0, 0, 0] = math.nan
    with pytest.raises(ValueError, match="NaN"):
        tiny_pipe(x)
    with pytest.raises(ValueError, match="divide by 255"):
        tiny_pipe(torch.rand(3, 6, 8) * 255)
    with pytest.raises(TypeError, match="numpy"):
        tiny_pipe(np.zeros((6, 8, 3), np.uint8))
    with pytest.raises(ValueError, match="dtype"):
        as_rgb(torch.zeros(3, 6, 8, dtype=torch.int64))


def test_tiny_rounding_outside_the_range_is_clamped():
    x = torch.rand(3, 6, 8)
    x[0, 0, 0], x[0, 0, 1] = 1.0001, -0.0001
    out = as_rgb(x)
    assert out.max() == 1 and out.min() == 0


# -- 4. output folder inside or equal to the input folder ---------------------------------------------------------


def test_output_inside_input_is_not_upscaled_again(tmp_path):
    save_rgb(tmp_path / "t" / "a.png")
    for _ in range(2):
        assert run(tmp_path / "t", "-o", tmp_path / "t" / "up") == 0
    assert tree(tmp_path / "t") == ["a.png", "up/a.png"]


def test_output_equal_to_input_with_suffix_twice(tmp_path, capsys):
    """The rerun finds a_x4.png among the inputs: an earlier output or a photo, fluxsr cannot tell, so it refuses
    both files by name instead of overwriting one or upscaling the other again."""
    save_rgb(tmp_path / "t" / "a.png")
    assert run(tmp_path / "t", "-o", tmp_path / "t", "--suffix", "_x4") == 0
    before = (tmp_path / "t" / "a_x4.png").read_bytes()
    capsys.readouterr()
    assert run(tmp_path / "t", "-o", tmp_path / "t", "--suffix", "_x4") == 1
    err = capsys.readouterr().err
    assert "a.png: its output" in err and "a_x4.png is an input too" in err and "a_x4_x4" not in err
    assert tree(tmp_path / "t") == ["a.png", "a_x4.png"]
    assert (tmp_path / "t" / "a_x4.png").read_bytes() == before


def test_same_file_is_reported_before_exists(tmp_path, capsys):
    save_rgb(tmp_path / "t" / "a.png")
    assert run(tmp_path / "t", "-o", tmp_path / "t") == 1
    assert "would overwrite the input" in capsys.readouterr().err


# -- 5. alpha behind a jpg name -----------------------------------------------------------------------------------


def test_alpha_content_named_jpg_goes_to_png(tmp_path):
    rgba = np.random.default_rng(0).integers(0, 255, (6, 8, 4), dtype=np.uint8)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "fake.jpg", format="PNG")
    assert run(tmp_path / "fake.jpg", "-o", tmp_path / "out") == 0
    assert tree(tmp_path / "out") == ["fake.png"]
    assert read_image(tmp_path / "out" / "fake.png").alpha is not None


# -- 6. size options ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs", [{"long_side": 0}, {"scale": 0}, {"scale": -2}, {"scale": math.inf}, {"scale": math.nan}]
)
def test_bad_sizes_are_refused_by_the_options(kwargs):
    with pytest.raises(ValueError, match="long_side|scale"):
        UpscaleOptions(**kwargs)


def test_long_side_zero_fails_before_the_model_loads(tmp_path, monkeypatch, capsys):
    save_rgb(tmp_path / "a.png")
    monkeypatch.setattr(cli_options, "load_pipeline", lambda *a: pytest.fail("model loaded"))
    assert (
        cli.main(["upscale", "-q", str(tmp_path / "a.png"), "-o", str(tmp_path / "o"), "--long-side", "0"])
        == 2
    )
    assert capsys.readouterr().err.strip() == "error: long_side must be >= 1 pixel, got 0"


# -- 7. the JSON log ----------------------------------------------------------------------------------------------


def test_json_settings_are_native(tmp_path):
    save_rgb(tmp_path / "in" / "a.png")
    assert run(tmp_path / "in", "-o", tmp_path / "out", "--json", tmp_path / "log.json") == 0
    settings = json.loads((tmp_path / "log.json").read_text())["settings"]
    assert settings["inputs"] == [str(tmp_path / "in")] and settings["output"] == str(tmp_path / "out")
    assert settings["long_side"] is None and settings["overwrite"] is False and settings["scale"] == 4.0


# -- 8. unsupported formats ---------------------------------------------------------------------------------------


def test_folder_with_only_unsupported_files(tmp_path, capsys):
    save_rgb(tmp_path / "t" / "anim.gif")
    assert run(tmp_path / "t", "-o", tmp_path / "out") == 1
    err = capsys.readouterr().err
    assert "ignored 1 file(s)" in err and ".gif" in err and "no images found" in err


def test_gif_by_name_names_the_format(tmp_path, capsys):
    save_rgb(tmp_path / "anim.gif")
    assert run(tmp_path / "anim.gif", "-o", tmp_path / "out") == 1
    assert "unsupported format GIF" in capsys.readouterr().err


def test_unwritable_output_extension_fails_before_upscaling(tmp_path):
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "pic.gif.txt", format="PNG")

    class Refuse(BicubicBackend):
        def upscale_tensor(self, rgb, opts):
            raise AssertionError("upscaled")

    [result] = upscale_paths(
        Refuse(),
        [tmp_path / "pic.gif.txt"],
        tmp_path / "out",
        UpscaleOptions(),
        BatchOptions(),
        progress=False,
    )
    assert result.status == "failed" and "cannot write .txt" in result.error


# -- 9. suffixes --------------------------------------------------------------------------------------------------


def test_suffix_with_a_separator_is_refused(tmp_path, capsys):
    save_rgb(tmp_path / "in" / "a.png")
    assert run(tmp_path / "in", "-o", tmp_path / "out", "--suffix", "/../../x") == 2
    assert "path separator" in capsys.readouterr().err
    assert tree(tmp_path) == ["in/a.png"]


# -- one job per output, and out-of-memory is a per-file failure ----------------------------------------------------


def test_two_sources_for_one_output_fail_by_name(tmp_path, capsys):
    save_rgb(tmp_path / "in" / "a.png", seed=1)
    Image.fromarray(np.zeros((5, 7, 3), np.uint8)).save(tmp_path / "in" / "a.jpg")
    assert run(tmp_path / "in", "-o", tmp_path / "out", "--ext", "png") == 1
    err = capsys.readouterr().err
    assert "a.png: same output" in err and "a.jpg" in err and "drop --ext" in err
    # the first source in the scan order writes it, every time (a.jpg sorts before a.png)
    assert tree(tmp_path / "out") == ["a.png"]
    assert np.asarray(Image.open(tmp_path / "out" / "a.png")).max() == 0


def test_the_same_file_given_twice_runs_once(tmp_path, capsys):
    src = save_rgb(tmp_path / "in" / "a.png")
    results = upscale_paths(
        BicubicBackend(),
        [src, src, tmp_path / "in"],
        tmp_path / "out",
        UpscaleOptions(scale=2),
        BatchOptions(),
        progress=False,
    )
    assert [r.status for r in results] == ["ok"]


def test_out_of_memory_on_one_file_fails_it_and_the_batch_goes_on(tmp_path, capsys):
    for name in ("a.png", "b.png"):
        save_rgb(tmp_path / "in" / name)

    class Flaky(BicubicBackend):
        def upscale_tensor(self, rgb, opts):
            if not hasattr(self, "failed"):
                self.failed = True
                raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 1 TB")
            return super().upscale_tensor(rgb, opts)

    results = upscale_paths(
        Flaky(), [tmp_path / "in"], tmp_path / "out", UpscaleOptions(scale=2), BatchOptions(), progress=False
    )
    assert [r.status for r in results] == ["failed", "ok"]
    assert "out of memory" in results[0].error and "--max-memory" in results[0].error


def test_adain_on_a_one_pixel_image(tmp_path):
    out = FluxSRPipeline.from_pretrained("tiny", device="cpu")(
        torch.rand(3, 1, 1), scale=1, color_fix="adain"
    )
    assert out.shape == (3, 1, 1) and torch.isfinite(out).all()


def test_a_file_under_two_given_folders_runs_once(tmp_path):
    save_rgb(tmp_path / "in" / "sub" / "x.png")
    results = upscale_paths(
        BicubicBackend(),
        [tmp_path / "in", tmp_path / "in" / "sub"],
        tmp_path / "out",
        UpscaleOptions(scale=2),
        BatchOptions(),
        progress=False,
    )
    assert [r.status for r in results] == ["ok"] and tree(tmp_path / "out") == ["sub/x.png"]


def test_json_log_into_a_folder_is_refused_before_work(tmp_path, capsys):
    save_rgb(tmp_path / "in" / "a.png")
    (tmp_path / "logdir").mkdir()
    assert run(tmp_path / "in", "-o", tmp_path / "out", "--json", tmp_path / "logdir") == 2
    assert "is a folder" in capsys.readouterr().err and not (tmp_path / "out").exists()


@pytest.mark.parametrize("device, message", [("foo", "unknown device"), ("cuda:7", "CUDA is not available")])
def test_baseline_backend_devices_are_checked(tmp_path, capsys, device, message):
    if torch.cuda.device_count() > 7:
        pytest.skip("a machine with 8 GPUs has cuda:7")
    save_rgb(tmp_path / "in" / "a.png")
    rc = cli.main(
        [
            "upscale",
            "--backend",
            "realesrgan",
            "--device",
            device,
            "-q",
            str(tmp_path / "in"),
            "-o",
            str(tmp_path / "out"),
        ]
    )
    assert rc == 2 and message in capsys.readouterr().err


def test_shares_run_by_hand_do_not_wait_for_each_other(tmp_path, monkeypatch, capsys):
    """RANK/WORLD_SIZE set by hand (a job array): this share runs and ends on its own, no rendezvous."""
    for name in ("a.png", "b.png", "c.png"):
        save_rgb(tmp_path / "in" / name)
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.delenv("TORCHELASTIC_RUN_ID", raising=False)
    assert run(tmp_path / "in", "-o", tmp_path / "out") == 0
    assert tree(tmp_path / "out") == ["b.png"]


def test_a_failed_rendezvous_is_a_note_not_a_crash(monkeypatch, capsys):
    from fluxsr.inference.upscale import sum_over_processes

    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "test")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    assert sum_over_processes([3, 1, 0], 2) == [3, 1, 0]
    assert "could not wait for the other processes" in capsys.readouterr().err


def test_model_options_with_a_baseline_backend_are_refused(tmp_path, capsys):
    save_rgb(tmp_path / "in" / "a.png")
    rc = cli.main(
        [
            "upscale",
            "--backend",
            "bicubic",
            "--model",
            "tiny",
            "--lora",
            str(tmp_path / "x.safetensors"),
            "-q",
            str(tmp_path / "in"),
            "-o",
            str(tmp_path / "out"),
        ]
    )
    assert rc == 2 and "--model, --lora: model options apply to --backend fluxsr" in capsys.readouterr().err


# -- 10. bad input: outputs that are inputs, special files, links, temp files, Ctrl-C, frames, folders ------------


@pytest.mark.parametrize(
    "names, options",
    [
        (("a.jpg", "a.png"), ["--ext", "png", "--overwrite"]),
        (("a.jpg", "a.png"), ["--ext", "png"]),
        (("a.png", "a_x4.png"), ["--suffix", "_x4", "--overwrite"]),
        (("a.png", "a_x4.png"), ["--suffix", "_x4"]),
    ],
)
def test_an_output_that_is_also_an_input_is_refused_naming_both(tmp_path, capsys, names, options):
    first, second = (save_rgb(tmp_path / "d" / name, seed) for seed, name in enumerate(names))
    photos = {p: p.read_bytes() for p in (first, second)}
    assert run(tmp_path / "d", "-o", tmp_path / "d", *options) == 1
    lines = capsys.readouterr().err.splitlines()
    assert any(line.startswith(f"error: {first}: its output {second} is an input too") for line in lines)
    assert any(line.startswith(f"error: {second}: not upscaled") and str(first) in line for line in lines)
    assert {p: p.read_bytes() for p in (first, second)} == photos  # the photo is not replaced
    assert tree(tmp_path / "d") == sorted(names)  # and nothing else is written ("skipped" used to hide it)


def test_a_named_pipe_in_a_folder_does_not_hang_the_batch(tmp_path):
    save_rgb(tmp_path / "d" / "a.png")
    os.mkfifo(tmp_path / "d" / "pipe.jpg")
    cmd = [sys.executable, "-m", "fluxsr.cli", "upscale", "--backend", "bicubic", "-q", str(tmp_path / "d")]
    # the old code blocked forever opening the pipe; the timeout turns that into a failure
    res = subprocess.run([*cmd, "-o", str(tmp_path / "out")], capture_output=True, text=True, timeout=180)
    assert res.returncode == 1, res.stderr
    assert f"error: {tmp_path / 'd' / 'pipe.jpg'}: not a regular file (named pipe)" in res.stderr
    assert tree(tmp_path / "out") == ["a.png"]


def test_a_named_pipe_given_next_to_a_good_file(tmp_path, capsys):
    good = save_rgb(tmp_path / "a.png")
    os.mkfifo(tmp_path / "pipe.jpg")
    assert run(tmp_path / "pipe.jpg", good, "-o", tmp_path / "out") == 1
    err = capsys.readouterr().err
    assert "pipe.jpg: not a regular file (named pipe)" in err and "No such file" not in err
    assert tree(tmp_path / "out") == ["a.png"]


def test_read_image_refuses_a_named_pipe_without_opening_it(tmp_path):
    os.mkfifo(tmp_path / "pipe.png")
    with pytest.raises(ImageError, match="is a named pipe, not an image file"):
        read_image(tmp_path / "pipe.png")


def test_bad_links_get_one_line_each_and_every_good_file_is_done_once(tmp_path, capsys):
    d = tmp_path / "d"
    save_rgb(d / "x.png")
    save_rgb(d / "sub" / "y.png", 1)
    (d / "loop.jpg").symlink_to("loop.jpg")  # self-loop
    (d / "one.png").symlink_to("two.png")  # two-link loop
    (d / "two.png").symlink_to("one.png")
    (d / "gone.jpg").symlink_to("missing.jpg")  # dangling
    (d / "here").symlink_to(".")  # a folder link back to the folder
    (d / "alias").symlink_to("sub")  # a second way to the same folder
    (d / "sub" / "link.png").symlink_to("../x.png")  # a link to a good file is a good file
    assert run(d, "-o", tmp_path / "out", "--json", tmp_path / "log.json") == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and "RuntimeError" not in err
    lines = err.splitlines()
    for name, reason in [
        ("loop.jpg", "symbolic link loop"),
        ("one.png", "symbolic link loop"),
        ("two.png", "symbolic link loop"),
        ("gone.jpg", "broken symbolic link"),
        ("here", "not followed"),
        ("alias", "not followed"),
    ]:
        assert [line for line in lines if f"{d / name}:" in line and reason in line], name
        assert sum(f"{d / name}:" in line for line in lines) == 1, name
    assert tree(tmp_path / "out") == ["sub/y.png", "x.png"]  # each file once, at its own path
    assert json.loads((tmp_path / "log.json").read_text())["counts"] == {"ok": 2, "skipped": 0, "failed": 4}


def test_a_folder_that_cannot_be_listed_is_named_and_fails_the_run(tmp_path, capsys, monkeypatch):
    """As root, chmod 000 does not stop reading, so the listing of that one folder is made to fail as it would
    for another user; the code that handles the error is the real one."""
    save_rgb(tmp_path / "d" / "a.png")
    save_rgb(tmp_path / "d" / "locked" / "b.png", 1)
    real_scandir = os.scandir

    def scandir(path="."):
        if os.path.basename(os.fspath(path)) == "locked":
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    assert run(tmp_path / "d", "-o", tmp_path / "out") == 1
    err = capsys.readouterr().err
    assert f"error: {tmp_path / 'd' / 'locked'}: cannot list this folder (Permission denied)" in err
    assert tree(tmp_path / "out") == ["a.png"]


def test_an_output_name_taken_by_a_folder_is_a_failure_not_a_skip(tmp_path, capsys):
    save_rgb(tmp_path / "in" / "a.png")
    save_rgb(tmp_path / "in" / "b.png", 1)
    (tmp_path / "out" / "a.png").mkdir(parents=True)
    assert run(tmp_path / "in", "-o", tmp_path / "out", "--json", tmp_path / "log.json") == 1
    assert f"output {tmp_path / 'out' / 'a.png'} is a folder" in capsys.readouterr().err
    assert json.loads((tmp_path / "log.json").read_text())["counts"] == {"ok": 1, "skipped": 0, "failed": 1}


def test_animated_and_multi_page_files_say_only_the_first_frame_is_used(tmp_path, capsys):
    frames = [Image.fromarray(np.full((6, 8, 3), 40 * i, np.uint8)) for i in range(3)]
    (tmp_path / "in").mkdir()
    frames[0].save(tmp_path / "in" / "anim.webp", save_all=True, append_images=frames[1:], lossless=True)
    frames[0].save(tmp_path / "in" / "pages.tif", save_all=True, append_images=frames[1:])
    frames[0].save(tmp_path / "in" / "moving.png", save_all=True, append_images=frames[1:2])
    frames[0].save(tmp_path / "in" / "camera.jpg", format="MPO", save_all=True, append_images=frames[1:2])
    frames[0].save(tmp_path / "in" / "still.webp", lossless=True)
    assert run(tmp_path / "in", "-o", tmp_path / "out", "--scale", "2") == 0
    notes = [line for line in capsys.readouterr().err.splitlines() if line.startswith("note:")]
    assert notes == [
        f"note: {tmp_path / 'in' / 'anim.webp'}: animated WebP with 3 frames; only the first was used",
        f"note: {tmp_path / 'in' / 'moving.png'}: animated PNG with 2 frames; only the first was used",
        f"note: {tmp_path / 'in' / 'pages.tif'}: multi-page TIFF with 3 pages; only the first was used",
    ]
    first = read_image(tmp_path / "out" / "anim.webp")
    assert (first.width, first.height) == (16, 12) and float(first.rgb.max()) == 0.0  # frame 0 is black


def test_ctrl_c_is_one_line_exit_130_and_finished_outputs_are_kept(tmp_path, capsys, monkeypatch):
    for seed, name in enumerate(("a.png", "b.png", "c.png")):
        save_rgb(tmp_path / "in" / name, seed)
    calls = []

    def upscale(self, rgb, opts):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return torch.nn.functional.interpolate(rgb[None], scale_factor=2)[0]

    monkeypatch.setattr(BicubicBackend, "upscale_tensor", upscale)
    try:
        code = run(tmp_path / "in", "-o", tmp_path / "out")
    except KeyboardInterrupt:
        pytest.fail("Ctrl-C ended in a KeyboardInterrupt traceback")
    err = capsys.readouterr().err
    assert code == 130 and err.splitlines() == [
        "interrupted; the outputs already written are kept, and a rerun skips them"
    ]
    assert tree(tmp_path / "out") == ["a.png"]  # b.png was cut off before its file existed: no half file
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["a.png"]  # no temp file either


WRITER = """
import os, signal, sys
from pathlib import Path
from fluxsr.io.cache import write_atomic

def write(handle):
    handle.write(b"half")
    handle.flush()
    if sys.argv[2] == "kill":
        os.kill(os.getpid(), signal.SIGKILL)  # what kill -9 mid-write does
    sys.stdin.read()  # a concurrent writer, e.g. another rank: still at work until told to finish

write_atomic(Path(sys.argv[1]), write)
"""


def start_writer(path, how):
    """A process writing ``path`` with write_atomic, killed mid-write (``kill``) or still at it (``wait``) once
    its temporary file exists."""
    folder = path.parent
    folder.mkdir(parents=True, exist_ok=True)
    before = set(folder.iterdir())
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path), how], stdin=subprocess.PIPE)
    while not (set(folder.iterdir()) - before) and proc.poll() is None:
        time.sleep(0.05)
    [temp] = set(folder.iterdir()) - before
    return proc, temp


def test_a_rerun_removes_the_temp_files_of_killed_runs_only(tmp_path, capsys):
    out = tmp_path / "out"
    save_rgb(tmp_path / "in" / "a.png")
    # the concurrent writer first: every write_atomic cleans its folder once, so a later one would clean up the
    # killed run's file before the rerun does
    running, busy = start_writer(out / "b.png", "wait")
    killed, left = start_writer(out / "a.png", "kill")
    assert killed.wait() == -9 and left.name.startswith(".fluxsr-")
    elsewhere = (
        out / ".fluxsr-other-host-123-0a1b2c3d.tmp"
    )  # another machine's, fresh: it may still be writing
    old = out / ".fluxsr-other-host-456-0a1b2c3d.tmp"  # another machine's, untouched for two days
    user = out / ".fluxsr-notes.tmp"  # not a name write_atomic makes
    for path in (elsewhere, old, user):
        path.write_bytes(b"x")
    os.utime(old, (time.time() - 2 * 86400,) * 2)
    try:
        assert run(tmp_path / "in", "-o", out) == 0
    finally:
        running.communicate(b"")  # let the concurrent writer finish
    assert f"note: removed {left}" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == sorted(["a.png", "b.png", elsewhere.name, user.name])
    assert (out / "b.png").read_bytes() == b"half" and not busy.exists()  # its rename found its file


# -- issue 16: tile ranges, output size caps ----------------------------------------------------------------------


def exit_code(argv: list[str]) -> int:
    """What the `fluxsr` command exits with (argparse refuses bad values with SystemExit(2))."""
    try:
        return cli.main(argv)
    except SystemExit as e:
        return int(e.code)


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--tile", "-5"], "argument --tile: tile must be >= 1 output pixel, got -5"),
        (["--overlap", "-8"], "argument --overlap: overlap must be >= 0, got -8"),
        (["--tile", "64", "--overlap", "64"], "give 0 <= overlap <= 32"),
        (["--tile", "64", "--overlap", "500"], "give 0 <= overlap <= 32"),
    ],
)
def test_tile_and_overlap_out_of_range_are_refused_before_any_work(
    tmp_path, monkeypatch, capsys, flags, message
):
    """They used to be accepted silently (exit 0): a negative overlap, an overlap as large as the tile."""
    save_rgb(tmp_path / "a.png")
    monkeypatch.setattr(cli_options, "load_pipeline", lambda *a: pytest.fail("model loaded"))
    data = tmp_path / "set" / "lr"
    save_rgb(data / "a.png")
    for argv in (
        ["upscale", "-q", str(tmp_path / "a.png"), "-o", str(tmp_path / "o")],
        ["upscale", "--backend", "bicubic", "-q", str(tmp_path / "a.png"), "-o", str(tmp_path / "o")],
        ["benchmark", "--dataset", str(data), "--backends", "fluxsr", "--out", str(tmp_path / "b"), "-q"],
        ["bench", "--rows", "fluxsr", "--sizes", "16"],
    ):
        assert exit_code([*argv, *flags]) == 2, argv
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err
    assert not (tmp_path / "o").exists() and not (tmp_path / "b").exists()


def test_tile_and_overlap_ranges_in_the_python_api(tiny_pipe):
    for kwargs in ({"tile": 0}, {"tile": -5}, {"overlap": -8}, {"tile": 64, "overlap": 33}):
        with pytest.raises(ValueError, match="tile|overlap"):
            UpscaleOptions(**kwargs)
    UpscaleOptions(tile=64, overlap=32)  # half the tile is the largest overlap
    x = torch.rand(3, 8, 8)
    with pytest.raises(ValueError, match=f"more than half the tile {tiny_pipe.model.spec.tile}"):
        tiny_pipe(x, overlap=tiny_pipe.model.spec.tile // 2 + 1)  # no tile given: the model's


def test_a_tile_lowered_by_the_planner_keeps_a_valid_overlap(tiny_pipe):
    """An image smaller than the tile runs at a smaller tile; the asked overlap (valid for the asked tile) is then
    cut to half of it instead of failing the range check."""
    x = torch.rand(3, 10, 12, generator=torch.Generator().manual_seed(0))
    out = tiny_pipe.upscale_tensor(x, UpscaleOptions(tile=256, overlap=128))
    assert tiny_pipe.plan.tile < 256 and out.shape == (3, 40, 48)


@pytest.mark.parametrize("backend", ["bicubic", "realesrgan", "fluxsr"])
@pytest.mark.parametrize("scale", ["1e9", "1e300"])
def test_absurd_scales_are_one_line_before_any_work(tmp_path, monkeypatch, capsys, backend, scale):
    """--scale 1e9 used to grow to GBs of RAM (fluxsr) or end in a traceback (bicubic, and 1e300 everywhere)."""
    save_rgb(tmp_path / "a.png", size=(24, 32))
    monkeypatch.setattr(cli_options, "load_pipeline", lambda *a: pytest.fail("model loaded"))
    argv = ["upscale", "--backend", backend, "-q", str(tmp_path / "a.png"), "-o", str(tmp_path / "o")]
    assert exit_code([*argv, "--scale", scale]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is too large" in err and "--max-pixels" in err
    assert not (tmp_path / "o").exists()


def test_an_output_over_max_pixels_fails_per_file_before_upscaling(tmp_path, monkeypatch, capsys):
    import fluxsr.inference.upscale as U

    save_rgb(tmp_path / "in" / "a.png", size=(24, 32))
    save_rgb(tmp_path / "in" / "b.png", size=(2, 3))
    sizes = []
    real = U.resize
    monkeypatch.setattr(
        U, "resize", lambda image, size, *a, **k: sizes.append(tuple(size)) or real(image, size)
    )
    # a: 32x24 at x10 is 320x240 = 76800 pixels, over 10000; b: 3x2 -> 30x20 = 600 is fine
    assert run(tmp_path / "in", "-o", tmp_path / "o", "--scale", "10", "--max-pixels", "10000") == 1
    err = capsys.readouterr().err
    assert "a.png: the output would be 320x240 = 76800 pixels, over the limit of 10000" in err
    assert sizes == [(20, 30)]  # nothing was resized for a.png
    assert tree(tmp_path / "o") == ["b.png"]


def test_output_size_cap_in_the_python_api(tiny_pipe):
    from fluxsr.io.images import target_size

    for scale in (1e9, 1e300):
        with pytest.raises(ValueError, match="too large"):
            UpscaleOptions(scale=scale)
        with pytest.raises(ValueError, match="too large"):
            tiny_pipe(torch.rand(3, 24, 32), scale=scale)
    with pytest.raises(ValueError, match="over the limit of 268435456"):
        UpscaleOptions(scale=1000).size_for(24, 32)
    with pytest.raises(ValueError, match="over the limit of 100"):
        UpscaleOptions(long_side=20, max_pixels=100).size_for(24, 32)
    with pytest.raises(ValueError, match="would be about 3e301xabout 2e301 = about 7e602 pixels"):
        UpscaleOptions(scale=1e300, max_pixels=10**601).size_for(24, 32)
    with pytest.raises(ValueError, match="too large"):  # not OverflowError
        target_size(24, 32, 1e308)
    assert UpscaleOptions(scale=1e4, max_pixels=None).size_for(2, 3) == (20000, 30000)


def test_eval_and_make_testset_refuse_a_scale_below_one(tmp_path, capsys):
    save_rgb(tmp_path / "sr" / "a.png")
    for argv in (
        ["eval", "--pred", str(tmp_path / "sr"), "--metrics", "niqe", "--scale", "0"],
        [
            "make-testset",
            "--hr",
            str(tmp_path / "sr"),
            "--out",
            str(tmp_path / "t"),
            "--seed",
            "0",
            "--scale",
            "0",
        ],
    ):
        assert exit_code(argv) == 2
        assert "must be >= 1, got 0" in capsys.readouterr().err
    from fluxsr.evaluation.scoring import evaluate_dirs

    with pytest.raises(ValueError, match="scale must be an integer >= 1"):
        evaluate_dirs(tmp_path / "sr", None, ["niqe"], scale=0)


def test_the_first_write_into_a_folder_removes_stale_temp_files_there(tmp_path, capsys):
    from fluxsr.io.cache import temp_name

    folder = tmp_path / "out"
    folder.mkdir()
    stale = folder / temp_name()  # this host's name pattern, untouched for two days: a killed run left it
    stale.write_bytes(b"half")
    os.utime(stale, (time.time() - 2 * 86400,) * 2)
    write_image(folder / "a.png", torch.rand(3, 4, 4))
    assert sorted(p.name for p in folder.iterdir()) == ["a.png"]
    assert f"note: removed {stale}, left by an interrupted run" in capsys.readouterr().err
