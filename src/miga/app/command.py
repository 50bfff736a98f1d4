"""The ``miga app`` command: its arguments and entry point (Gradio is imported only when it runs)."""

from __future__ import annotations

import ipaddress
import os
import sys

from miga.errors import MigaError

INSTALL = 'pip install "miga-video[app]"'


def add_arguments(parser) -> None:
    parser.add_argument("--models", metavar="DIR", help="folder of model folders the page may load")
    parser.add_argument("--runs", metavar="DIR", default="runs", help="folder the page writes its runs to")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: loopback only)")
    parser.add_argument("--port", type=int, default=7860, help="port (default: 7860, or the next free one)")


def is_loopback(host: str) -> bool:
    """Whether ``host`` is a loopback address (or ``localhost``)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_folders(models: str | None, runs: str) -> None:
    """``--models`` must be a folder; ``--runs`` is created if missing and must be writable."""
    if models is not None and not os.path.isdir(models):
        raise MigaError(f"--models {models}: not a folder")
    if os.path.exists(runs) and not os.path.isdir(runs):
        raise MigaError(f"--runs {runs}: not a folder")
    try:
        os.makedirs(runs, exist_ok=True)
    except OSError as exc:
        raise MigaError(f"--runs {runs}: cannot create it: {exc.strerror}") from None
    if not os.access(runs, os.W_OK):
        raise MigaError(f"--runs {runs}: not writable")


def create(models: str | None, runs: str, checkpoint_every: int | None = None):
    """The app (a ``gr.Blocks``, queued: one generation at a time, at most 8 waiting)."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    try:
        import gradio  # noqa: F401
    except ImportError:
        raise MigaError(f"miga app needs Gradio: {INSTALL}") from None
    from miga.app.page import build

    demo = build(os.path.abspath(models) if models else None, os.path.abspath(runs), checkpoint_every)
    demo.queue(max_size=8, default_concurrency_limit=1)
    return demo


def launch(demo, runs: str, host: str = "127.0.0.1", port: int | None = None, **kwargs):
    """Start serving ``demo``; returns Gradio's ``(app, local_url, share_url)``."""
    return demo.launch(server_name=host, server_port=port, max_file_size="1mb", allowed_paths=[os.path.abspath(runs)],
                       **kwargs)


def run(args) -> int:
    check_folders(args.models, args.runs)
    demo = create(args.models, args.runs)
    if not is_loopback(args.host):
        print(f"miga: listening on {args.host}, not loopback: anyone who can reach port {args.port} can generate "
              f"and download the runs in {args.runs}", file=sys.stderr)
    _, url, _ = launch(demo, args.runs, args.host, None if args.port == 7860 else args.port, quiet=True,
                       prevent_thread_lock=True)
    print(f"miga app: open {url} (runs in {args.runs}; Ctrl-C stops)", file=sys.stderr)
    demo.block_thread()
    return 0
