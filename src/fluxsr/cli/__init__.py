"""The command line (`fluxsr ...`): the only place that parses arguments; nothing imports it."""

from .commands import build_parser, main

__all__ = ["build_parser", "main"]
