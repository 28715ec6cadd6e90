"""fluxsr serve: the handlers called directly, the app's wiring, and the real server (HTTP, then headless Chromium).

The browser test needs the ``playwright`` Python package and Debian's ``/usr/bin/chromium`` (or FLUXSR_CHROMIUM);
it is skipped, with the reason, only when one of them is absent. FLUXSR_SCREENSHOT=PATH also saves its screenshot
there (how docs/serve.png is made).
"""

from __future__ import annotations

import io
import math
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

gr = pytest.importorskip("gradio", reason="the serve extra (gradio) is not installed")

from fluxsr import webapp as serve  # noqa: E402
from fluxsr.cli import build_parser, main  # noqa: E402
from fluxsr.cli import options as cli_options  # noqa: E402
from fluxsr.inference.fidelity import fidelity_map  # noqa: E402
from fluxsr.inference.pipeline import FluxSRPipeline  # noqa: E402
from fluxsr.inference.upscale import BicubicBackend  # noqa: E402
from fluxsr.io.images import read_image  # noqa: E402
from fluxsr.model.model import ModelSpec  # noqa: E402
from fluxsr.webapp import ServeLimits, Upscaler, checks  # noqa: E402
from tests.paths import ROOT  # noqa: E402

CHROMIUM = os.environ.get("FLUXSR_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SERVER_START_S = 180
JOB_TIMEOUT_MS = 120_000


# ----------------------------------------------------------------------------------------------------- helpers


def pattern(width: int, height: int, mode: str = "RGB") -> Image.Image:
    """A smooth test picture (rings over a gradient) that survives bicubic; deterministic."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    r = np.hypot(x - width / 2, y - height / 2)
    rgb = np.stack([x / width, y / height, 0.5 + 0.5 * np.cos(r / 3)], axis=-1)
    image = Image.fromarray((rgb * 255).round().astype(np.uint8), "RGB")
    if mode == "RGBA":
        image.putalpha(Image.fromarray(((x / width) * 255).astype(np.uint8), "L"))
    return image


def write_png(path: Path, width: int = 24, height: int = 16, mode: str = "RGB") -> Path:
    """Save :func:`pattern` as PNG at ``path`` and return it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pattern(width, height, mode).save(path)
    return path


def write_truncated_png(path: Path) -> Path:
    """A PNG whose pixel data stops half-way."""
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(
        buffer, "PNG"
    )
    path.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    return path


class FakePipeline:
    """Stands in for FluxSRPipeline where the model's output does not matter: bicubic, counts its calls."""

    def __init__(self) -> None:
        self.model = SimpleNamespace(spec=ModelSpec(name="fake", description="test double", note=""))
        self.device, self.dtype, self.timings, self.calls = torch.device("cpu"), torch.float32, {}, 0
        self.plan = None

    def upscale_tensor(self, rgb, opts):
        self.calls += 1
        self.timings = {"transformer": 0.0}
        return BicubicBackend().upscale_tensor(rgb, opts)


@pytest.fixture
def fake():
    return FakePipeline()


def upscaler_for(pipeline, tmp_path: Path, **limits) -> Upscaler:
    return Upscaler(pipeline, tmp_path / "work", ServeLimits(**limits))


def error_of(call, *args) -> str:
    """The message of the gr.Error ``call(*args)`` raises (fails the test when none is raised)."""
    with pytest.raises(gr.Error) as caught:
        call(*args)
    message = caught.value.message
    assert "\n" not in message and "Traceback" not in message
    return message


# ----------------------------------------------------------------------------------------------------- handlers


@pytest.mark.parametrize("size,scale,expected", [((24, 16), 4.0, (96, 64)), ((20, 14), 2.5, (50, 35))])
def test_upscale_gives_input_times_scale(tiny_pipe, tmp_path, size, scale, expected):
    app = upscaler_for(tiny_pipe, tmp_path)
    (bicubic, result), download, info, fidelity = app.upscale(
        str(write_png(tmp_path / "in.png", *size)), scale, "wavelet", 512
    )
    assert download == result and Path(result).parent.parent == tmp_path / "work" / "results"
    for path in (bicubic, result):
        with Image.open(path) as im:
            assert im.format == "PNG" and im.size == expected and im.mode == "RGB"
    assert Path(result).name == f"in_x{scale:g}_fluxsr.png"
    assert "**tiny** on **cpu** (float32)" in info and f"→ {expected[0]}x{expected[1]}" in info
    assert "Time" in info and "transformer" in info and fidelity is None  # the map only when asked


def test_upscale_shows_the_fidelity_map_when_asked(fake, tmp_path):
    photo = ROOT / "examples" / "building.png"
    app = upscaler_for(fake, tmp_path)
    (_, result), _, _, fidelity = app.upscale(str(photo), 2, "none", 1024, True)
    assert Path(fidelity).parent == Path(result).parent and Path(fidelity).name == "building_x2_fidelity.png"
    output, lr = read_image(result), read_image(photo)
    expected = fidelity_map(output.rgb, lr.rgb)  # from the written result: within 8-bit rounding of it
    heat = read_image(fidelity)
    assert (heat.height, heat.width) == (320, 320) and float((heat.rgb - expected).abs().mean()) < 0.02


def test_upscale_keeps_alpha(fake, tmp_path):
    app = upscaler_for(fake, tmp_path)
    (bicubic, result), _, _, _ = app.upscale(
        str(write_png(tmp_path / "a.png", 10, 8, "RGBA")), 2, "none", 1024
    )
    for path in (bicubic, result):
        with Image.open(path) as im:
            assert im.mode == "RGBA" and im.size == (20, 16)


@pytest.mark.parametrize(
    "name,make,reason",
    [
        ("notes.png", lambda p: p.write_bytes(b"this is not an image\n"), "not an image"),
        ("cut.png", write_truncated_png, "truncated"),
        ("empty.jpg", lambda p: p.write_bytes(b""), "empty file"),
    ],
)
def test_bad_files_get_a_one_line_error(fake, tmp_path, name, make, reason):
    app = upscaler_for(fake, tmp_path)
    path = tmp_path / "uploads" / name
    path.parent.mkdir()
    make(path)
    message = error_of(app.upscale, str(path), 4, "wavelet", 1024)
    assert message.startswith(f"{name}: ") and reason in message
    assert str(tmp_path) not in message  # server paths stay private
    preview, text = app.inspect(str(path), 4)  # the upload preview warns instead of raising
    assert preview is None and text.startswith("⚠️") and reason in text
    assert fake.calls == 0


def test_over_budget_output_is_refused_before_the_model_runs(fake, tmp_path):
    app = upscaler_for(fake, tmp_path, max_pixels=10_000)
    path = write_png(tmp_path / "big.png", 40, 30)  # x4 -> 160x120 = 19200 px
    message = error_of(app.upscale, str(path), 4, "wavelet", 1024)
    assert "160x120" in message and "budget of 0.01 MP" in message and "at most 2.88" in message
    assert fake.calls == 0
    _, text = app.inspect(str(path), 4)
    assert "Over this server's budget" in text
    (_, result), _, _, _ = app.upscale(str(path), 2.75, "wavelet", 1024)  # 110x83 = 9130 px fits
    assert Image.open(result).size == (110, 83)


def test_the_pipeline_gets_the_servers_output_budget(fake, tmp_path, monkeypatch):
    """The per-request budget is the cap the pipeline's options enforce too (not the CLI default)."""
    seen = []
    monkeypatch.setattr(fake, "upscale_tensor", lambda rgb, opts: seen.append(opts) or rgb)
    app = upscaler_for(fake, tmp_path, max_pixels=20_000)
    app.upscale(str(write_png(tmp_path / "a.png", 40, 30)), 2, "none", 1024)
    assert [o.max_pixels for o in seen] == [20_000]


def test_the_suggested_largest_scale_fits_after_rounding():
    """sqrt(budget / pixels) rounded down can still give an output over the budget once sizes round to pixels."""
    budget = 4 * 1024 * 1024
    for h, w in [(175, 385), (100, 333), (251, 509), (64, 999)] + [
        (37 + 3 * i, 61 + 7 * i) for i in range(60)
    ]:
        image = SimpleNamespace(height=h, width=w)
        s = checks.largest_scale(image, budget)
        assert np.prod(checks.output_size(image, s)) <= budget, (h, w, s)
        assert (
            s >= math.floor(math.sqrt(budget / (h * w)) * 100) / 100 - 0.05
        )  # lowered by a step or two at most


def test_info_names_the_tile_the_planner_used(tiny_pipe, tmp_path):
    app = upscaler_for(tiny_pipe, tmp_path)
    tiny_pipe.max_memory = 1  # nothing fits: the planner goes down to its smallest tile
    try:
        _, _, info, _ = app.upscale(str(write_png(tmp_path / "in.png", 40, 32)), 4, "none", 512)
    finally:
        tiny_pipe.max_memory = None
    assert (
        f"tile {tiny_pipe.plan.tile} (asked 512; lowered to fit memory)" in info and tiny_pipe.plan.tile < 512
    )


def test_overlap_follows_the_model_like_the_cli():
    assert (
        checks.overlap_for(256, 32) == 32
        and checks.overlap_for(1024, 128) == 128
        and checks.overlap_for(256, 128) == 64
    )


def test_over_budget_input_is_refused_from_its_header(fake, tmp_path, monkeypatch):
    app = upscaler_for(fake, tmp_path, max_pixels=500)
    path = write_png(tmp_path / "huge.png", 40, 30)
    monkeypatch.setattr(Image.Image, "load", lambda self: pytest.fail("decoded an over-budget image"))
    assert "over the limit of 500 pixels" in error_of(app.upscale, str(path), 1, "none", 1024)


@pytest.mark.parametrize(
    "args,expected",
    [
        ((None, 4, "wavelet", 1024), "Upload an image first"),
        (("IMAGE", 0, "wavelet", 1024), "Scale must be between 1 and 8"),
        (("IMAGE", float("nan"), "wavelet", 1024), "Scale must be between"),
        (("IMAGE", 100, "wavelet", 1024), "Scale must be between"),
        (("IMAGE", "x", "wavelet", 1024), "Scale must be a number"),
        (("IMAGE", 4, "sepia", 1024), "Colour fix must be one of wavelet, adain, none"),
        (("IMAGE", 4, "wavelet", 8), "Tile size must be between 64 and 4096"),
        (("IMAGE", 4, "wavelet", None), "Tile size must be a number"),
    ],
)
def test_bad_settings_are_refused(fake, tmp_path, args, expected):
    image = str(write_png(tmp_path / "in.png"))
    args = tuple(image if a == "IMAGE" else a for a in args)
    assert expected in error_of(upscaler_for(fake, tmp_path).upscale, *args)
    assert fake.calls == 0


def test_unexpected_errors_are_one_line_and_logged(fake, tmp_path, capsys):
    app = upscaler_for(fake, tmp_path)
    image = str(write_png(tmp_path / "in.png"))

    def boom(rgb, opts):
        raise RuntimeError("boom\nsecond line")

    fake.upscale_tensor = boom
    assert error_of(app.upscale, image, 2, "none", 1024) == "Internal error (RuntimeError): boom second line"
    assert "Traceback" in capsys.readouterr().err  # the operator still sees it

    def oom(rgb, opts):
        raise RuntimeError("CUDA out of memory. Tried to allocate 2 GiB")

    fake.upscale_tensor = oom
    assert error_of(app.upscale, image, 2, "none", 1024).startswith("Out of memory: try a smaller tile")


def test_upload_values_gradio_may_send(fake, tmp_path):
    app = upscaler_for(fake, tmp_path)
    image = write_png(tmp_path / "in.png")
    for value in (image, str(image), {"path": str(image)}, SimpleNamespace(path=str(image))):
        assert Image.open(app.upscale(value, 2, "none", 1024)[1]).size == (48, 32)


def test_only_recent_results_are_kept(fake, tmp_path):
    app = Upscaler(fake, tmp_path / "work", keep=2)
    image = str(write_png(tmp_path / "in.png"))
    paths = [Path(app.upscale(image, 1.5, "none", 1024)[1]) for _ in range(3)]
    assert not paths[0].exists() and paths[1].exists() and paths[2].exists()
    assert len(list((tmp_path / "work" / "results").iterdir())) == 2


def test_inspect_shows_sizes_and_a_small_preview(fake, tmp_path):
    app = upscaler_for(fake, tmp_path)
    preview, text = app.inspect(str(write_png(tmp_path / "wide.png", 1200, 300)), 2)
    assert preview.size == (512, 128)
    assert text == "wide.png: 1200x300 → 2400x600 (1.44 MP)"
    assert app.inspect(None, 4) == (
        None,
        "Upload an image (PNG, JPEG, WebP, BMP or TIFF) or click an example below.",
    )


def test_describe_names_model_device_and_limits(tiny_pipe, tmp_path):
    text = upscaler_for(tiny_pipe, tmp_path, max_pixels=1_000_000, max_upload_mb=5).describe()
    assert "**tiny** on **cpu**" in text and "random or briefly trained weights" in text
    assert "1.00 MP per request" in text and "5 MB" in text and "one job at a time" in text


def test_safe_stem():
    assert checks.safe_stem(Path("my photo (1).JPG")) == "my_photo_1"
    assert checks.safe_stem(Path("../..png")) == "image"


# ----------------------------------------------------------------------------------------------------- the app


def test_examples_are_listed_from_the_folder(tmp_path):
    folder = tmp_path / "examples"
    write_png(folder / "b.png")
    write_png(folder / "a.jpg")
    (folder / "readme.txt").write_text("not an image")
    (folder / "large.png").write_bytes(b"x" * 2000)
    assert serve.list_examples(folder, max_bytes=1500) == [folder / "a.jpg", folder / "b.png"]
    assert serve.list_examples(folder, max_bytes=1500, limit=1) == [folder / "a.jpg"]
    assert serve.list_examples(None, 10) == [] and serve.list_examples(tmp_path / "missing", 10) == []


def test_examples_leave_out_entries_that_cannot_be_read(tmp_path):
    """A broken link or a link loop among the examples is not listed (the app used to fail at start)."""
    folder = tmp_path / "examples"
    write_png(folder / "a.png")
    (folder / "gone.png").symlink_to(folder / "missing.png")
    (folder / "loop.png").symlink_to(folder / "loop.png")
    assert serve.list_examples(folder, max_bytes=10**6) == [folder / "a.png"]


def test_build_app_queues_one_job_at_a_time(fake, tmp_path):
    write_png(tmp_path / "examples" / "photo.png")
    demo = serve.build_app(
        fake, tmp_path / "examples", max_pixels=123_456, max_upload_mb=3, workdir=tmp_path / "w", queue_size=5
    )
    assert isinstance(demo, gr.Blocks)
    assert demo._queue.default_concurrency_limit == 1 and demo._queue.max_size == 5
    run = next(fn for fn in demo.fns.values() if fn.name == "upscale")
    assert run.concurrency_limit == 1
    samples = [b for b in demo.blocks.values() if isinstance(b, gr.Dataset)]
    assert len(samples) == 1 and len(samples[0].samples) == 1
    assert demo.fluxsr_upscaler.limits == ServeLimits(123_456, 3, 5)
    assert (tmp_path / "w" / "results").is_dir()


def test_serve_options_defaults():
    args = build_parser().parse_args(["serve", "--model", "tiny"])
    assert (args.host, args.port, args.max_pixels, args.queue_size) == ("127.0.0.1", 7860, 2048 * 2048, 16)
    assert args.model == "tiny"


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--max-pixels", "0"], "argument --max-pixels: must be >= 1, got 0"),
        (["--max-upload-mb", "0"], "argument --max-upload-mb: must be a finite number > 0, got 0"),
        (["--max-upload-mb", "inf"], "argument --max-upload-mb: must be a finite number > 0, got inf"),
        (["--queue-size", "0"], "argument --queue-size: must be >= 1, got 0"),
        (["--port", "70000"], "argument --port: must be in 0..65535, got 70000"),
    ],
)
def test_bad_server_limits_are_one_line_before_the_model_loads(monkeypatch, capsys, flags, message):
    """--max-upload-mb inf used to pass the check and end in an OverflowError traceback after the model loaded."""
    monkeypatch.setattr(cli_options, "load_pipeline", lambda *a, **k: pytest.fail("model loaded"))
    with pytest.raises(SystemExit) as exited:
        main(["serve", "--model", "tiny", *flags])
    err = capsys.readouterr().err
    assert exited.value.code == 2 and message in err and "Traceback" not in err


def test_serve_hands_the_web_app_a_loaded_pipeline_and_its_options(monkeypatch, tmp_path):
    """The command line loads the model; the web app gets the pipeline and a plain options object."""
    seen = {}
    monkeypatch.setattr(
        "fluxsr.cli.serve.run_server", lambda pipe, options: seen.update(pipe=pipe, o=options) or 0
    )
    argv = ["serve", "--model", "tiny", "--device", "cpu", "--port", "0", "--max-upload-mb", "2.5"]
    assert main([*argv, "--queue-size", "3", "--examples", str(tmp_path)]) == 0
    assert isinstance(seen["pipe"], FluxSRPipeline) and seen["pipe"].model.spec.name == "tiny"
    assert seen["o"] == serve.ServerOptions("127.0.0.1", 0, tmp_path, ServeLimits(2048 * 2048, 2.5, 3))


# ----------------------------------------------------------------------------------------------------- live server


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server_command(port: int, *options: str) -> list[str]:
    """``python -m fluxsr.cli serve --model tiny --port PORT ...``."""
    return [sys.executable, "-m", "fluxsr.cli", "serve", "--model", "tiny", "--port", str(port), *options]


def http_status(url: str, data: bytes | None = None, headers: dict | None = None) -> int:
    request = urllib.request.Request(url, data=data, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code


def wait_until_up(url: str, process: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + SERVER_START_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"the server exited with {process.returncode}:\n{log.read_text()[-3000:]}")
        try:
            if http_status(url) == 200:
                return
        except OSError:
            pass
        time.sleep(0.5)
    pytest.fail(f"the server did not answer within {SERVER_START_S} s:\n{log.read_text()[-3000:]}")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A real ``fluxsr serve --model tiny`` on a free port: (base url, its TMPDIR, examples folder, log)."""
    root = tmp_path_factory.mktemp("server")
    server_tmp, examples, log = root / "tmp", root / "examples", root / "server.log"
    server_tmp.mkdir()
    write_png(examples / "example.png", 40, 30)
    port = free_port()
    env = {
        **os.environ,
        "GRADIO_ANALYTICS_ENABLED": "False",
        "HF_HUB_OFFLINE": "1",
        "PYTHONUNBUFFERED": "1",
        "TMPDIR": str(server_tmp),
        "NO_PROXY": "127.0.0.1,localhost",
        "no_proxy": "127.0.0.1,localhost",
    }
    command = server_command(
        port, "--max-upload-mb", "1", "--max-pixels", "300000", "--examples", str(examples)
    )
    with open(log, "wb") as out:
        process = subprocess.Popen(command, cwd=root, env=env, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_up(url + "/", process, log)
        yield SimpleNamespace(url=url, tmp=server_tmp, examples=examples, log=log, process=process, root=root)
    finally:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


def test_server_serves_only_its_own_files(server):
    outside = server.root / "secret.txt"
    outside.write_text("private")
    api = server.url + "/gradio_api"
    assert http_status(server.url + "/") == 200
    assert http_status(f"{api}/file={outside}") == 403
    assert http_status(f"{api}/file=/etc/passwd") == 403
    assert http_status(f"{api}/file=http://127.0.0.1:9/x.png") == 403  # no fetching URLs for callers
    assert http_status(f"{api}/file=HTTP%3A//127.0.0.1:9/x.png") == 403
    assert "Running on local URL:  http://127.0.0.1:" in server.log.read_text()


def test_server_caps_upload_size(server):
    boundary = "fluxsrboundary"
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="files"; filename="big.png"\r\n'
            "Content-Type: image/png\r\n\r\n"
        ).encode()
        + b"\0" * (1_200_000)
        + f"\r\n--{boundary}--\r\n".encode()
    )
    headers = {"Content-Type": f"multipart/form-data; boundary={boundary}"}
    assert http_status(server.url + "/gradio_api/upload", body, headers) == 413


def chromium_or_skip():
    """Playwright's sync API, or skip (with the reason) when playwright or Chromium is absent."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("the playwright Python package is not installed (pip install playwright)")
    if not (Path(CHROMIUM).is_file() or shutil.which(CHROMIUM)):
        pytest.skip(f"Chromium not found at {CHROMIUM} (apt-get install chromium, or set FLUXSR_CHROMIUM)")
    return sync_playwright


def run_job(page, expected_name: str) -> str:
    """Click Upscale and wait for the download link of ``expected_name``; return its URL."""
    page.locator("#run").click()
    link = page.locator(f'#download a[download="{expected_name}"]')
    link.wait_for(timeout=JOB_TIMEOUT_MS)
    return link.get_attribute("href")


def upload(page, path: Path, expect: str) -> None:
    """Put ``path`` into the upload box (clearing what is there) and wait until the size line mentions ``expect``."""
    clear = page.locator('#upload button[aria-label="Clear"]')
    if clear.count():
        clear.first.click()
    page.locator("#upload input[type=file]").set_input_files(str(path))
    page.locator("#plan", has_text=expect).wait_for(timeout=JOB_TIMEOUT_MS)


@pytest.mark.browser
def test_browser_upload_compare_download_and_errors(server, tmp_path):
    sync_playwright = chromium_or_skip()
    good = write_png(tmp_path / "photo.png", 64, 48)
    again = write_png(tmp_path / "again.png", 32, 24)
    broken = write_truncated_png(tmp_path / "broken.png")
    outside_requests: list[str] = []

    def local_only(route):
        if route.request.url.startswith(server.url):
            route.continue_()
        else:  # the page must render offline: no fonts, CDN or analytics from elsewhere
            outside_requests.append(route.request.url)
            route.abort()

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.route("**/*", local_only)
            page.goto(server.url + "/")
            page.locator("#run").wait_for(timeout=60_000)
            assert "tiny" in page.locator("#about").inner_text()

            upload(page, good, "photo.png: 64x48 → 256x192")
            href = run_job(page, "photo_x4_fluxsr.png")
            downloaded = page.request.get(href)
            assert downloaded.ok
            assert Image.open(io.BytesIO(downloaded.body())).size == (256, 192)
            sizes = page.evaluate(
                "[...document.querySelectorAll('#compare img')].map(i => [i.naturalWidth, i.naturalHeight])"
            )
            assert sizes == [[256, 192], [256, 192]]  # bicubic and fluxsr, both at output size
            info = page.locator("#info").inner_text()
            assert "tiny on cpu" in info and "Time" in info
            page.screenshot(path=str(tmp_path / "serve.png"), full_page=True)
            if os.environ.get("FLUXSR_SCREENSHOT"):
                shutil.copyfile(tmp_path / "serve.png", os.environ["FLUXSR_SCREENSHOT"])

            page.get_by_text("example.png").first.click()  # examples are one click away
            page.locator("#plan", has_text="example.png: 40x30 → 160x120").wait_for(timeout=JOB_TIMEOUT_MS)

            upload(page, broken, "broken.png: corrupt or truncated")
            page.locator("#run").click()
            toast = page.locator(".toast-body", has_text="broken.png: corrupt or truncated image data")
            toast.wait_for(timeout=JOB_TIMEOUT_MS)
            page.wait_for_timeout(500)  # let the toast slide in before the screenshot
            page.screenshot(path=str(tmp_path / "serve-error.png"))  # the toast is fixed to the viewport
            assert "Traceback" not in page.content()

            upload(page, again, "again.png: 32x24 → 128x96")  # the server is still serving
            href = run_job(page, "again_x4_fluxsr.png")
            assert Image.open(io.BytesIO(page.request.get(href).body())).size == (128, 96)
        finally:
            browser.close()
    assert outside_requests == []
    assert server.process.poll() is None
    assert "Traceback" not in server.log.read_text()
    results = list(server.tmp.glob("fluxsr-serve-*/results/*/*.png"))
    assert {p.name for p in results} >= {"photo_x4_fluxsr.png", "again_x4_bicubic.png"}


def test_server_stops_cleanly_and_removes_its_files(server):
    """Runs last in this module: SIGTERM closes the server and its temporary folder goes away."""
    assert list(server.tmp.glob("fluxsr-serve-*"))
    server.process.terminate()
    assert server.process.wait(30) == 0
    assert list(server.tmp.glob("fluxsr-serve-*")) == []
