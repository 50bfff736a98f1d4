"""The prompt timeline: rows of (start, prompt) to and from a :class:`PromptSchedule` and the prompt-file
format (pure logic, no Gradio)."""

from __future__ import annotations

import re
from miga.engine.prompts import PromptSchedule, parse_prompt_file
from miga.errors import MigaError

SOURCE = "timeline"
_SECONDS = re.compile(r"^(\d+(?:\.\d*)?|\.\d+)\s*s(?:ec(?:onds?)?)?$")
_LINE = re.compile(rf"^{SOURCE} line (\d+)")


class RowError(MigaError):
    """A timeline error; ``row`` (1-based) is the row that caused it, None for the whole timeline."""

    def __init__(self, message: str, row: int | None = None):
        super().__init__(message)
        self.row = row


def start_frame(text: str, fps: float, row: int) -> int | None:
    """A row's start: ``""`` (none), a frame number (``48``) or seconds (``2s``, ``1.5 s``)."""
    text = (text or "").strip().lower()
    if not text:
        return None
    if re.fullmatch(r"[+-]?\d+", text):
        return int(text)
    m = _SECONDS.match(text)
    if m is None:
        raise RowError(f"{SOURCE} row {row}: start {text!r} is neither a frame number (48) nor seconds (2s)", row)
    return round(float(m.group(1)) * fps)


def _clean(prompt: str | None) -> str:
    return " ".join((prompt or "").split())


def used_rows(rows: list[tuple[str, str]]) -> list[tuple[int, str, str]]:
    """``(row number, start text, prompt)`` of the rows that hold anything (empty rows are skipped)."""
    cleaned = [(i, (s or "").strip(), _clean(p)) for i, (s, p) in enumerate(rows, start=1)]
    return [(i, s, p) for i, s, p in cleaned if s or p]


def to_prompt_file(rows: list[tuple[str, str]], fps: float) -> str:
    """The rows in the documented prompt-file format (one line per row, so that line numbers are rows)."""
    lines = []
    last = 0
    for i, start, prompt in used_rows(rows):
        lines += [""] * (i - 1 - last)
        last = i
        frame = start_frame(start, fps, i)
        lines.append(prompt if frame is None else f"{frame}: {prompt}")
    return "\n".join(lines) + "\n"


def schedule(rows: list[tuple[str, str]], frames: int, fps: float) -> PromptSchedule:
    """The :class:`PromptSchedule` of the rows, checked as ``miga generate --prompts`` checks a prompt file;
    errors name the row (:class:`RowError`)."""
    if not used_rows(rows):
        raise RowError(f"{SOURCE}: no prompts; write at least one row", None)
    text = to_prompt_file(rows, fps)
    try:
        return parse_prompt_file(text, frames, source=SOURCE)
    except MigaError as exc:
        message = str(exc)
        m = _LINE.match(message)
        row = int(m.group(1)) if m else (used_rows(rows)[-1][0] if "frames" in message else None)
        raise RowError(_LINE.sub(rf"{SOURCE} row \1", message), row) from None


def rows_from_file(text: str, frames: int) -> list[tuple[str, str]]:
    """The rows of a prompt file (an even split gets its computed start frames)."""
    parsed = parse_prompt_file(text, frames, source="prompt file")
    return [(str(s), p) for s, p in zip(parsed.starts, parsed.prompts)]


def file_text(rows: list[tuple[str, str]], frames: int, fps: float) -> str:
    """A prompt file of the rows, with a frame number on every line."""
    parsed = schedule(rows, frames, fps)
    return "".join(f"{s}: {p}\n" for s, p in zip(parsed.starts, parsed.prompts))


def preview(parsed: PromptSchedule, frames: int, fps: float) -> list[tuple[int, int, str]]:
    """``(first frame, last frame, prompt)`` for each prompt of ``parsed`` in a ``frames``-frame video."""
    ends = list(parsed.starts[1:]) + [frames]
    return [(s, e - 1, p) for s, e, p in zip(parsed.starts, ends, parsed.prompts)]


def preview_markdown(rows: list[tuple[str, str]], frames: int, fps: float) -> str:
    """The preview as a Markdown table (or the error, one line)."""
    try:
        parsed = schedule(rows, frames, fps)
    except MigaError as exc:
        return f"**{exc}**"
    lines = ["| frames | seconds | prompt |", "|---|---|---|"]
    for first, last, prompt in preview(parsed, frames, fps):
        seconds = f"{first / fps:.1f}–{(last + 1) / fps:.1f} s"
        lines.append(f"| {first}–{last} | {seconds} | {prompt.replace('|', '/')} |")
    return "\n".join(lines)


def move(rows: list[tuple[str, str]], index: int, step: int) -> list[tuple[str, str]]:
    """The rows with row ``index`` (0-based) moved ``step`` places (prompts move, starts stay in place:
    the schedule keeps increasing)."""
    prompts = [p for _, p in rows]
    j = index + step
    if 0 <= j < len(rows):
        prompts[index], prompts[j] = prompts[j], prompts[index]
    return [(s, p) for (s, _), p in zip(rows, prompts)]


def remove(rows: list[tuple[str, str]], index: int) -> list[tuple[str, str]]:
    """The rows without row ``index`` (an empty row appended, so that the count stays)."""
    return rows[:index] + rows[index + 1:] + [("", "")]
