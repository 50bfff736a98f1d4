"""Where the app may read and write: models only under ``--models``, runs only under ``--runs``. No path
from the page is trusted: the page names a model or a run, and these functions turn the name into a path
under its root or refuse it in one line."""

from __future__ import annotations

import os
import re
import time

from miga.errors import MigaError

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def safe_name(name: str, what: str) -> str:
    """``name`` if it is a plain entry name (no separator, no ``..``, not absolute), else a one-line error."""
    if not isinstance(name, str) or not _NAME.match(name) or ".." in name:
        raise MigaError(f"{what} {name!r} is not a plain name in its folder (no paths)")
    return name


def inside(root: str, name: str, what: str) -> str:
    """The path of entry ``name`` of folder ``root``, refused unless it resolves (links followed) inside it."""
    safe_name(name, what)
    real_root = os.path.realpath(root)
    path = os.path.realpath(os.path.join(real_root, name))
    if os.path.dirname(path) != real_root:
        raise MigaError(f"{what} {name!r} is not inside {root}")
    return path


def builtin_models() -> list[str]:
    """The built-in model names (no files needed)."""
    from miga.backbones import registry

    return list(registry.builtin_names())


def found_models(models_root: str | None) -> list[tuple[str, str]]:
    """``(entry name, kind)`` of the entries of ``models_root`` that miga recognises as models (nothing is
    loaded; an entry whose files cannot be read is left out)."""
    if not models_root:
        return []
    from miga.backbones import registry

    found = []
    for name in sorted(os.listdir(models_root)):
        if not _NAME.match(name) or ".." in name:
            continue
        try:
            kind = registry.kind_of(os.path.join(models_root, name))
        except (MigaError, OSError):
            continue
        if kind is not None:
            found.append((name, kind.name))
    return found


def model_choices(models_root: str | None) -> list[tuple[str, str]]:
    """The model dropdown: ``(label, value)``; a found model's value is ``models/<entry>``."""
    choices = [(f"{name} (built in)", name) for name in builtin_models()]
    choices += [(f"{name} ({kind})", f"models/{name}") for name, kind in found_models(models_root)]
    return choices


def resolve_model(choice: str, models_root: str | None) -> str:
    """The ``load_backbone`` argument of a model chosen on the page: a built-in name, or a path under
    ``models_root`` that is one of its recognised models."""
    if choice in builtin_models():
        return choice
    if not isinstance(choice, str) or not choice.startswith("models/"):
        raise MigaError(f"unknown model {choice!r}; choose a built-in model or one found under --models")
    if not models_root:
        raise MigaError(f"model {choice!r}: the app was started without --models")
    name = choice[len("models/"):]
    path = inside(models_root, name, "model")
    if name not in dict(found_models(models_root)):
        raise MigaError(f"model {name!r} is not a model found under {models_root}")
    return path


def new_run_name(model: str, runs_root: str) -> str:
    """A fresh run name: ``YYYYmmdd-HHMMSS-<model>`` (``-2``, ``-3`` ... if taken)."""
    tag = re.sub(r"[^A-Za-z0-9._-]", "-", os.path.basename(model.rstrip("/")))[:40] or "model"
    base = time.strftime("%Y%m%d-%H%M%S") + "-" + tag.strip(".-")
    name, k = base, 1
    while os.path.exists(os.path.join(runs_root, name)):
        k += 1
        name = f"{base}-{k}"
    return name


def run_dir(runs_root: str, name: str) -> str:
    """The folder of run ``name`` under ``runs_root`` (refused if ``name`` is not a plain name inside it)."""
    return inside(runs_root, name, "run")
