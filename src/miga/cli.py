"""The ``miga`` command: the parser and the dispatch; each command lives in :mod:`miga.commands`."""

from __future__ import annotations

import argparse
import importlib
import sys

from miga.common import ArgParser
from miga.errors import MigaError

COMMANDS = {  # name -> module in miga.commands (imported for its options; heavy imports wait for run())
    "generate": "generate", "train-toy": "train_toy", "eval": "eval", "models": "models", "bench": "bench",
    "ablate": "ablate", "compare": "ablate", "suite": "suite",
}


def _module(name: str):
    return importlib.import_module(f"miga.commands.{COMMANDS[name]}")


def build_parser() -> argparse.ArgumentParser:
    parser = ArgParser(prog="miga", description="Training-free long video generation with MIGA and FIFO-Diffusion.")
    parser.add_argument("--version", action="version", version=f"miga {_version()}")
    sub = parser.add_subparsers(dest="command", parser_class=ArgParser, required=True)
    for name in ("generate", "train-toy", "eval", "models", "bench"):
        module = _module(name)
        module.add_arguments(sub.add_parser(name, help=module.HELP, description=module.DESCRIPTION))
    ablate = _module("ablate")
    ablate.add_arguments(sub.add_parser("ablate", help=ablate.ABLATE_HELP, description=ablate.ABLATE_DESCRIPTION))
    ablate.add_arguments(sub.add_parser("compare", help=ablate.COMPARE_HELP, description=ablate.COMPARE_DESCRIPTION),
                         command="compare")
    suite = _module("suite")
    suite.add_arguments(sub.add_parser("suite", help=suite.HELP, description=suite.DESCRIPTION))
    from miga.app.command import add_arguments as app_arguments

    app_arguments(sub.add_parser("app", help="a local web page: write a prompt timeline, watch the video grow",
                                 description=("Start a local web app (Gradio; pip install \"miga-video[app]\") "
                                              "to write a prompt timeline, generate while watching the video "
                                              "grow, stop, resume and download runs.")))
    return parser


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("miga-video")
    except Exception:  # pragma: no cover - running from a source tree
        return "unknown"


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # the command line, for results that record it
    try:
        if args.command == "app":
            from miga.app.command import run as run_app

            return run_app(args)
        module = _module(args.command)
        if args.command == "ablate":
            return module.ablate(args)
        if args.command == "compare":
            return module.compare(args)
        return module.run(args)
    except MigaError as exc:
        print(f"miga: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
