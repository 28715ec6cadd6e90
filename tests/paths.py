"""Folders the tests read: the repository root (configs, docs, scripts, the ComfyUI nodes) and tests/assets (test
images and reference numbers). One place, so a test's depth in tests/ never matters."""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ASSETS = ROOT / "tests" / "assets"
