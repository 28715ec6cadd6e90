"""``fluxsr serve``: the web demo (:mod:`fluxsr.webapp`) with the model the model options name."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..webapp import (
    DEFAULT_HOST,
    DEFAULT_MAX_PIXELS,
    DEFAULT_MAX_UPLOAD_MB,
    DEFAULT_PORT,
    DEFAULT_QUEUE_SIZE,
    ServeLimits,
    ServerOptions,
    run_server,
)
from .options import add_model_arguments, pipeline_from_args, port, positive_int, positive_number


def server_options(args: argparse.Namespace) -> ServerOptions:
    """The server's settings from the parsed options (each already checked by its argument type)."""
    limits = ServeLimits(args.max_pixels, args.max_upload_mb, args.queue_size)
    return ServerOptions(args.host, args.port, args.examples, limits)


def cmd_serve(args: argparse.Namespace) -> int:
    """Load the model, then serve until interrupted."""
    options = server_options(args)
    return run_server(pipeline_from_args(args), options)


def add_serve_arguments(p: argparse.ArgumentParser) -> None:
    """The server's own options (the ``server`` group)."""
    g = p.add_argument_group("server")
    g.add_argument(
        "--host",
        default=DEFAULT_HOST,
        help="address to bind (default 127.0.0.1: this machine only; 0.0.0.0 opens it to the network)",
    )
    g.add_argument("--port", type=port, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT})")
    g.add_argument(
        "--max-pixels",
        type=positive_int,
        default=DEFAULT_MAX_PIXELS,
        help=f"largest OUTPUT (width x height) per request (default {DEFAULT_MAX_PIXELS})",
    )
    g.add_argument(
        "--max-upload-mb",
        type=positive_number,
        default=DEFAULT_MAX_UPLOAD_MB,
        help=f"upload size cap in MB (default {DEFAULT_MAX_UPLOAD_MB:g})",
    )
    g.add_argument(
        "--queue-size",
        type=positive_int,
        default=DEFAULT_QUEUE_SIZE,
        help=f"jobs allowed to wait in the queue (default {DEFAULT_QUEUE_SIZE})",
    )
    g.add_argument(
        "--examples",
        type=Path,
        default=None,
        help="folder of example images (default: the package's or ./examples when present)",
    )


def add_serve(sub) -> None:
    """``fluxsr serve``."""
    p = sub.add_parser("serve", help="web demo: upload, compare with bicubic, download (Gradio)")
    add_serve_arguments(p)
    add_model_arguments(p)
    p.set_defaults(func=cmd_serve)
