"""``fluxsr serve``: a small Gradio web demo of the one-step upscaler, safe to leave running on a shared machine.

Upload an image (or click an example), pick the scale, colour fix and tile size, and compare the result with bicubic
on a before/after slider; the full-resolution PNG is offered as a download. The page shows the model, the device
and the time each request took.

What keeps a shared machine alive:

- a pixel budget per request on the OUTPUT size (``--max-pixels``), checked before any model work; inputs are also
  refused above it before decoding (decompression bombs);
- one job at a time: every upscale goes through Gradio's queue (``default_concurrency_limit=1``), which shows each
  waiting user their position; the queue itself is bounded (``--queue-size``);
- an upload size cap (``--max-upload-mb``, Gradio's ``max_file_size``);
- files: results are written to a per-app temporary folder (Gradio's cache lives in it too when started through
  :func:`run_server`), ``allowed_paths`` is empty and ``/file=<url>`` requests, which Gradio would otherwise fetch
  from the internet on the caller's behalf, are refused;
- it binds to 127.0.0.1 unless ``--host`` says otherwise, never opens a share link and sends no analytics;
- a bad upload (not an image, truncated, too large, bad settings) is answered with a one-line message, never a
  stack trace, and the server keeps serving (a non-numeric scale sent to the API directly is refused by Gradio's
  slider before the handler runs: the caller gets Gradio's generic error and the server log its traceback).

Where things are: ``checks.py`` (what a request may ask for, one-line refusals), ``handlers.py`` (:class:`Upscaler`:
its handlers :meth:`Upscaler.inspect` and :meth:`Upscaler.upscale` are plain methods, testable without a server),
``app.py`` (the page, the launch with its guards, :func:`run_server`). The web app takes an already-loaded pipeline
and a :class:`ServerOptions`; the command line (``fluxsr serve``) builds both. Gradio is imported lazily, so
``fluxsr --help`` works without the ``serve`` extra.
"""

from ..lazy import lazy_face

__getattr__, __all__ = lazy_face(
    __name__,
    {
        "DEFAULT_HOST": "app",
        "DEFAULT_PORT": "app",
        "ServerOptions": "app",
        "build_app": "app",
        "default_examples_dir": "app",
        "launch": "app",
        "list_examples": "app",
        "run_server": "app",
        "DEFAULT_MAX_PIXELS": "handlers",
        "DEFAULT_MAX_UPLOAD_MB": "handlers",
        "DEFAULT_QUEUE_SIZE": "handlers",
        "ServeLimits": "handlers",
        "Upscaler": "handlers",
    },
)
