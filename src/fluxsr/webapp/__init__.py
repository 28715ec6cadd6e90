"""The web demo of ``fluxsr serve`` (``app.py``)."""

from .app import *  # noqa: F403
