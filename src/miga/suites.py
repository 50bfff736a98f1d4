"""Prompt suites for ``miga suite``: VBench's standard prompts (with their dimension tags) and their Wan-style
extended list, shipped as data (``miga/data/vbench``, Apache-2.0, VBench's licence and notice beside them);
a user's prompt file; a folder of prompt-schedule files (one multi-prompt story per file)."""

from __future__ import annotations

import json
import os
import random
from dataclasses import dataclass

from miga.errors import MigaError

DATA = os.path.join(os.path.dirname(__file__), "data", "vbench")
SUITES = {
    "vbench": "VBench's 946 standard prompts (944 distinct), tagged with their 16 dimensions",
    "vbench-wan": "the same prompts extended in Wan2.1's style (VBench's list for Wan2.1-T2V-1.3B), same tags",
}


@dataclass(frozen=True)
class Entry:
    """One prompt of a suite: ``prompt`` is a text or a schedule ``((start frame, text), ...)``; ``name`` says
    where it comes from (its index in the suite, or its file); ``dimensions`` its VBench dimension tags."""

    name: str
    prompt: str | tuple
    dimensions: tuple[str, ...] = ()
    vbench_name: str | None = None  # VBench's standard prompt: its evaluator finds videos as PROMPT-INDEX.mp4

    @property
    def text(self) -> str:
        return self.prompt if isinstance(self.prompt, str) else " | ".join(p for _, p in self.prompt)


def _vbench(extended: bool) -> list[Entry]:
    with open(os.path.join(DATA, "VBench_full_info.json"), encoding="utf-8") as fh:
        info = json.load(fh)
    texts = [e["prompt_en"] for e in info]
    if extended:
        with open(os.path.join(DATA, "all_dimension_aug_wanx_seed42.txt"), encoding="utf-8") as fh:
            texts = fh.read().splitlines()
    merged: dict[str, list[str]] = {}  # a prompt listed twice (two dimension groups) is one prompt
    order: dict[str, int] = {}
    for i, (text, e) in enumerate(zip(texts, info)):
        order.setdefault(text, i)
        merged.setdefault(text, [])
        merged[text] += [d for d in e["dimension"] if d not in merged[text]]
    return [Entry(str(order[t]), t, tuple(dims), info[order[t]]["prompt_en"]) for t, dims in merged.items()]


def dimensions() -> list[str]:
    """VBench's dimension names, sorted."""
    return sorted({d for e in _vbench(False) for d in e.dimensions})


def load(source: str, frames: int) -> tuple[str, list[Entry]]:
    """A suite by name (:data:`SUITES`), a prompt file (one per line, ``#`` comments) or a folder of prompt-
    schedule files (``*.txt``, each ``miga generate --prompts`` format, for ``frames`` frames); returns what
    kind it is (``vbench``, ``file``, ``folder``...) and its entries."""
    from miga.common import read_prompt_list

    if source in SUITES:
        return source, _vbench(source == "vbench-wan")
    if os.path.isdir(source):
        return "folder", _schedules(source, frames)
    if os.path.isfile(source):
        prompts = read_prompt_list(source)
        if len(set(prompts)) != len(prompts):
            raise MigaError(f"prompt file {source}: a prompt is given twice")
        return "file", [Entry(str(i), p) for i, p in enumerate(prompts)]
    raise MigaError(f"unknown suite {source!r}: give {', '.join(SUITES)}, a prompt file or a folder of "
                    "prompt-schedule files")


def _schedules(folder: str, frames: int) -> list[Entry]:
    from miga.engine.prompts import parse_prompt_file

    names = sorted(n for n in os.listdir(folder) if n.endswith(".txt") and os.path.isfile(os.path.join(folder, n)))
    if not names:
        raise MigaError(f"suite folder {folder} holds no prompt-schedule file (*.txt)")
    entries = []
    for name in names:
        path = os.path.join(folder, name)
        try:
            with open(path, encoding="utf-8") as fh:
                text = fh.read()
        except UnicodeDecodeError:
            raise MigaError(f"prompt file {path} is not UTF-8 text") from None
        schedule = parse_prompt_file(text, frames, source=path)
        entries.append(Entry(name[:-4], tuple(zip(schedule.starts, schedule.prompts))))
    return entries


def select(entries: list[Entry], dimension: list[str] | None = None, count: int | None = None,
           subset: float | None = None, subset_seed: int = 0) -> list[Entry]:
    """The entries tagged with any of ``dimension``, then a random ``subset`` fraction of them (seeded, in the
    suite's order), then the first ``count``."""
    if dimension:
        known = {d for e in entries for d in e.dimensions}
        if not known:
            raise MigaError("--dimension: this suite has no dimension tags (only vbench and vbench-wan do)")
        unknown = [d for d in dimension if d not in known]
        if unknown:
            raise MigaError(f"unknown dimension {unknown[0]!r}; choose from {', '.join(sorted(known))}")
        entries = [e for e in entries if any(d in e.dimensions for d in dimension)]
    if subset is not None:
        if not 0 < subset <= 1:
            raise MigaError(f"--subset must be a fraction in (0, 1], got {subset:g}")
        keep = max(1, round(subset * len(entries)))
        picked = set(random.Random(subset_seed).sample(range(len(entries)), keep))
        entries = [e for i, e in enumerate(entries) if i in picked]
    if count is not None:
        entries = entries[:count]
    if not entries:
        raise MigaError("the selection holds no prompt")
    return entries
