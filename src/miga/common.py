"""What the commands and the runner share: argument parsing, run identity, the machine description.

This layer imports no command, no runner and no ``miga.cli`` (``tests/test_layering.py`` checks it).
"""

from __future__ import annotations

import argparse
import os
import platform

from miga.errors import MigaError


class ArgParser(argparse.ArgumentParser):
    """argparse with one-line errors (status 2, no usage dump)."""

    def error(self, message: str):
        self.exit(2, f"miga: error: {message} (see 'miga {self.prog.split()[-1]} --help')\n"
                  if " " in self.prog else f"miga: error: {message}\n")


def number(kind=int, minimum=1):
    """An argparse type: a ``kind`` number >= ``minimum``."""
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a {kind.__name__}, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {text}")
        return value
    return parse


def parse_list(text: str | None, flag: str, kind=str) -> list | None:
    """A comma-separated option value (``none``: an empty list; ``None``: not given)."""
    if text is None:
        return None
    items = [t.strip() for t in text.split(",")]
    if items == ["none"]:
        return []
    if any(not t for t in items):
        raise MigaError(f"{flag} {text!r}: an empty item; give a comma-separated list")
    try:
        values = [kind(t) for t in items]
    except ValueError:
        raise MigaError(f"{flag} {text!r}: expected comma-separated {kind.__name__}s") from None
    if len(set(values)) != len(values):
        raise MigaError(f"{flag} {text!r}: a value is repeated")
    return values


def read_prompt_list(path: str) -> list[str]:
    """Prompts from a file: one per line; blank lines and ``#`` comments are skipped."""
    try:
        with open(path, encoding="utf-8") as fh:
            lines = fh.read().splitlines()
    except OSError as exc:
        raise MigaError(f"cannot read prompt file {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise MigaError(f"prompt file {path} is not UTF-8 text") from None
    prompts = [line.strip() for line in lines if line.strip() and not line.strip().startswith("#")]
    if not prompts:
        raise MigaError(f"prompt file {path} holds no prompt")
    return prompts


def check_output(path: str | None, suffix: str | None = None, flag: str = "") -> None:
    """Refuse (one line) an output file that cannot be written or has the wrong suffix, before any work."""
    if path is None:
        return
    if suffix and not path.lower().endswith(suffix):
        raise MigaError(f"{flag} must name a {suffix} file, got {path}")
    from miga.video import check_writable

    check_writable(path)


def model_identity(model: str) -> str:
    """What makes a model's videos reproducible: the name of a weight-free world, or the SHA-256 of a
    weights file (the shipped one for a built-in shapes model)."""
    from miga.backbones.shapes import SHIPPED, file_sha256, shipped_weights

    if model in SHIPPED or model.endswith(".safetensors"):
        path = shipped_weights(model) if model in SHIPPED else model
        if not os.path.isfile(path):
            return model  # load_backbone reports the missing file
        return f"{model if model in SHIPPED else 'file'}:sha256={file_sha256(path)}"
    return model


def machine(threads: int) -> str:
    """The machine in a few words, for tables of timings."""
    cpu = platform.processor() or platform.machine()
    return f"{cpu}, {os.cpu_count()} CPU(s), {threads} torch thread(s)"
