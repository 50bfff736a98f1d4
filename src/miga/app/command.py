"""The ``miga app`` command: its arguments and entry point (Gradio is imported only when it runs)."""

from __future__ import annotations

from miga.errors import MigaError


def add_arguments(parser) -> None:
    parser.add_argument("--models", metavar="DIR", help="folder of model folders the page may load")
    parser.add_argument("--runs", metavar="DIR", default="runs", help="folder the page writes its runs to")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: loopback only)")
    parser.add_argument("--port", type=int, default=7860, help="port (default: 7860, or the next free one)")


def run(args) -> int:
    raise MigaError("miga app is being built (issue 18)")
