#!/usr/bin/env python3
"""Take docs/serve.png: start `fluxsr serve` (bundled model), upload an example in headless Chromium, run it, and
screenshot the page. Needs Debian's chromium and the playwright package (as the browser test)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def main() -> int:
    from playwright.sync_api import sync_playwright

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False"}
    server = subprocess.Popen(
        [sys.executable, "-m", "fluxsr.cli", "serve", "--port", str(port)], cwd=ROOT, env=env
    )
    url = f"http://127.0.0.1:{port}/"
    try:
        for _ in range(240):
            try:
                urllib.request.urlopen(url, timeout=1)
                break
            except OSError:
                time.sleep(0.5)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=ARGS, headless=True)
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(url)
            page.locator("#run").wait_for(timeout=120_000)
            page.locator("#upload input[type=file]").set_input_files(str(ROOT / "examples" / "oldphoto2.png"))
            page.locator("#plan", has_text="oldphoto2.png").wait_for(timeout=120_000)
            page.locator("#run").click()
            page.locator("#info", has_text="Time").wait_for(timeout=300_000)
            time.sleep(1)
            page.screenshot(path=str(ROOT / "docs" / "serve.png"), full_page=True)
            browser.close()
    finally:
        server.terminate()
        server.wait(timeout=30)
    print(ROOT / "docs" / "serve.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
