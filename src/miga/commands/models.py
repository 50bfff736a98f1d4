"""``miga models``: the kinds of model miga loads, or the models found in folders."""

from __future__ import annotations

import os

from miga.errors import MigaError

HELP = "list the kinds of model miga loads, or the models in folders"
DESCRIPTION = ("Without DIR: every kind of model miga loads, in the order in which --model is recognised, with what "
               "each needs and how to download it. With DIR: the entries of each DIR that miga recognises as a model, "
               "with their kind (from the files on disk; nothing is loaded).")


def add_arguments(parser) -> None:
    """``miga models``'s options."""
    parser.add_argument("dirs", nargs="*", metavar="DIR", help="folders to look in (their immediate entries)")


MODELS_WIDTH = 100
"""``miga models`` fits its table in this many columns."""


def _wrapped(text: str, indent: int, width: int = MODELS_WIDTH) -> list[str]:
    """``text`` wrapped to ``width`` columns after ``indent`` (the first line's indent is the caller's)."""
    import textwrap

    return textwrap.wrap(text, width - indent, break_long_words=False, break_on_hyphens=False) or [""]


def _command_lines(command: str, indent: int, width: int = MODELS_WIDTH) -> list[str]:
    """A shell command in lines of at most ``width - indent`` columns, continued with `` \\`` (so it still
    pastes into a shell) and the continuation indented two more."""
    lines, line = [], ""
    for word in command.split():
        room = width - indent - (2 if lines else 0) - 2  # the continuation's " \\"
        if line and len(line) + 1 + len(word) > room:
            lines.append(line + " \\")
            line = word
        else:
            line = f"{line} {word}" if line else word
    lines.append(line)
    return [lines[0]] + ["  " + line for line in lines[1:]]


def _kinds_table() -> str:
    """``miga models``: every kind in the order of recognition, what it is, needs, and which pipelines
    ``miga.from_pipe`` takes."""
    from miga.backbones import registry

    kinds = registry.kinds()
    name_width = max(len(kind.name) for kind in kinds) + 3
    label_width = len("from_pipe: ")
    text_at = name_width + label_width
    lines = _wrapped("Models miga loads, in the order of recognition: --model NAME or PATH goes to the first kind "
                     "below that recognises it; any other folder goes to the last one, which says what it lacks.", 0)
    lines += ["", f"{'kind':<{name_width}}what it is, what it needs"]
    for kind in kinds:
        summary = _wrapped(kind.summary, name_width)
        lines.append(f"{kind.name:<{name_width}}{summary[0]}")
        lines += [" " * name_width + more for more in summary[1:]]
        rows = []
        if kind.names:
            rows.append(("names", _wrapped(", ".join(kind.names), text_at)))
        rows.append(("needs", _wrapped(kind.needs, text_at)))
        if kind.download:
            rows.append(("download", [line for command in kind.download.split("; ")
                                      for line in _command_lines(command, text_at)]))
        if kind.pipelines:
            rows.append(("from_pipe", _wrapped(", ".join(kind.pipelines), text_at)))
        for label, text in rows:
            lines.append(" " * name_width + f"{label + ':':<{label_width}}{text[0]}")
            lines += [" " * text_at + more for more in text[1:]]
    lines.append("")
    lines += _wrapped("names: built in, no files needed; download: a command that fetches the weights into DIR "
                      "(then --model DIR); from_pipe: the diffusers pipelines that miga.from_pipe(pipe) takes. "
                      "'miga models DIR' lists the models in DIR.", 0)
    return "\n".join(lines)


def _models_in(folder: str) -> list[tuple[str, str]]:
    """``(path, kind name)`` for ``folder`` itself if it is a model, then for each of its entries (sorted) that
    a kind recognises; an entry whose files cannot be read gets ``?`` and why."""
    from miga.backbones import registry

    def row(path: str) -> tuple[str, str] | None:
        try:
            kind = registry.kind_of(path)
        except MigaError as exc:
            return path, f"?  {exc}"
        except OSError as exc:
            return path, f"?  cannot read {exc.filename or path}: {exc.strerror}"
        return None if kind is None else (path, kind.name)

    try:
        names = sorted(os.listdir(folder))
    except OSError as exc:
        raise MigaError(f"cannot read {folder}: {exc.strerror}") from None
    rows = [row(folder.rstrip("/\\") or folder)]
    rows += [row(os.path.join(folder, name)) for name in names]
    return [r for r in rows if r is not None]


def run(args) -> int:
    """``miga models [DIR ...]``: the kinds of model, or the models found in folders (recognised, not loaded)."""
    if not args.dirs:
        print(_kinds_table())
        return 0
    for folder in args.dirs:
        if not os.path.exists(folder):
            raise MigaError(f"{folder} does not exist")
        if not os.path.isdir(folder):
            raise MigaError(f"{folder} is not a folder; give the folder that holds the models")
    found = {folder: _models_in(folder) for folder in args.dirs}
    rows = [r for folder in args.dirs for r in found[folder]]
    width = max((len(path) for path, _ in rows), default=0) + 3
    for folder in args.dirs:
        for path, kind in found[folder]:
            print(f"{path:<{width}}{kind}")
        if not found[folder]:
            from miga.backbones import registry

            print(f"no model in {folder} that miga recognises; it looks for:")
            kinds = [kind for kind in registry.kinds() if kind.recognises_path is not None]
            name_width = max(len(kind.name) for kind in kinds) + 3
            for kind in kinds:
                needs = _wrapped(kind.needs, 2 + name_width)
                print(f"  {kind.name:<{name_width}}{needs[0]}")
                for more in needs[1:]:
                    print(" " * (2 + name_width) + more)
    return 0
