"""The ``fluxsr`` command: the table of sub-commands, the parser, and one-line errors. Each command group lives in
its own module (``upscale``, ``train``, ``evaluate``, ``bench``, ``serve``, ``weights``, ``export``); what they
share is in ``options``."""

from __future__ import annotations

import argparse
import sys

from .. import __version__
from ..io.images import ImageError
from .bench import add_bench
from .evaluate import add_benchmark, add_eval, add_make_testset
from .export import add_export
from .serve import add_serve
from .train import add_degrade, add_embed_prompt, add_gen_pairs, add_pretrain, add_train
from .upscale import add_demo, add_upscale
from .weights import add_weights

COMMANDS = [
    add_upscale,
    add_demo,
    add_degrade,
    add_gen_pairs,
    add_train,
    add_pretrain,
    add_embed_prompt,
    add_weights,
    add_serve,
    add_eval,
    add_make_testset,
    add_benchmark,
    add_bench,
    add_export,
]
"""Each adds its sub-command(s) to the parser, in the order ``fluxsr --help`` lists them."""

INTERRUPTED = {"upscale": "the outputs already written are kept, and a rerun skips them"}
"""What a command adds to its one line when Ctrl-C stops it."""


def build_parser() -> argparse.ArgumentParser:
    """The ``fluxsr`` parser with every sub-command."""
    parser = argparse.ArgumentParser(
        prog="fluxsr", description="One-step real-world super-resolution (FluxSR)."
    )
    parser.add_argument("--version", action="version", version=f"fluxsr {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in COMMANDS:
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command; a user error is one line on stderr (exit 2), Ctrl-C one line too (exit 130)."""
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (
        OSError,
        ValueError,
        ImageError,
    ) as e:  # ConfigError, MissingWeightsError, FileNotFoundError included
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C: one line, no traceback; files are written atomically, so none is half
        note = INTERRUPTED.get(args.command)
        print(f"interrupted; {note}" if note else "interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
