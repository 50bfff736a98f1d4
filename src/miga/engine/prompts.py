"""Prompt schedules: which text prompt conditions which part of a long video.

Prompt file format
------------------
One prompt per line. Blank lines and lines starting with ``#`` are ignored.

Either every prompt line starts with an output frame number and a colon, giving the frame where that
prompt starts::

    # a fox's afternoon
    0: a red fox in snow
    120: the fox runs into a forest

(the first number must be 0, the numbers must increase, and each must be less than the number of frames
in the video), or no line does, and the prompts split the video evenly, in order::

    a red fox in snow
    the fox runs into a forest

With K prompts and N frames each prompt controls ceil(N / K) consecutive frames (method.md (A3)); the
last one gets what is left. Only a whole number at the very start of a line followed by ``:`` is a frame
number, so ``a sign saying: stop`` is an ordinary prompt. Do not mix the two forms in one file.
"""

from __future__ import annotations

import bisect
import math
import operator
import re
from dataclasses import dataclass
from typing import Sequence

from miga.errors import MigaError

_FRAME_PREFIX = re.compile(r"([+-]?\d+)\s*:(.*)")


@dataclass(frozen=True)
class PromptSchedule:
    """Prompt ``i`` applies from frame ``starts[i]`` up to (not including) ``starts[i + 1]``.

    Frames are output frames, or latent indices after :meth:`to_latents`.
    """

    starts: tuple[int, ...]
    prompts: tuple[str, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "starts", tuple(operator.index(s) for s in self.starts))
        object.__setattr__(self, "prompts", tuple(self.prompts))
        if not self.prompts:
            raise MigaError("the prompt schedule has no prompts")
        if len(self.starts) != len(self.prompts):
            raise MigaError(f"the prompt schedule has {len(self.starts)} start frames but {len(self.prompts)} prompts")
        if self.starts[0] != 0:
            raise MigaError(f"the first prompt must start at frame 0 (got {self.starts[0]})")
        for prev, cur in zip(self.starts, self.starts[1:]):
            if cur <= prev:
                raise MigaError(f"prompt start frames must increase ({cur} after {prev})")
        for i, p in enumerate(self.prompts):
            if not isinstance(p, str) or not p.strip():
                raise MigaError(f"prompt {i + 1} of the schedule is empty")

    def __len__(self) -> int:
        return len(self.prompts)

    def index_at(self, frame: int) -> int:
        """Index of the prompt that applies at ``frame`` (negative frames map to the first prompt)."""
        return max(bisect.bisect_right(self.starts, frame) - 1, 0)

    def prompt_at(self, frame: int) -> str:
        """The prompt that applies at ``frame``."""
        return self.prompts[self.index_at(frame)]

    @classmethod
    def single(cls, text: str) -> "PromptSchedule":
        """One prompt for the whole video."""
        return cls((0,), (text,))

    @classmethod
    def even(cls, prompts: Sequence[str], total_frames: int) -> "PromptSchedule":
        """K prompts, each controlling ceil(total_frames / K) consecutive frames (method.md (A3))."""
        k = len(prompts)
        if k == 0:
            raise MigaError("no prompts given")
        if total_frames < 1:
            raise MigaError(f"the video must have at least one frame (got {total_frames})")
        if k > total_frames:
            raise MigaError(f"{k} prompts but only {total_frames} frames: each prompt needs at least one frame")
        m = math.ceil(total_frames / k)
        if (k - 1) * m >= total_frames:
            raise MigaError(
                f"{total_frames} frames cannot be split evenly among {k} prompts ({m} frames each leaves "
                "the last prompt none); use fewer prompts or give start frames"
            )
        return cls(tuple(i * m for i in range(k)), tuple(prompts))

    def to_latents(self, frames_per_latent: int) -> "PromptSchedule":
        """The same schedule indexed by latent: start ``s`` becomes ``ceil(s / frames_per_latent)``.

        If several prompts land on the same latent, the last of them wins.
        """
        if frames_per_latent < 1:
            raise MigaError(f"frames_per_latent must be at least 1 (got {frames_per_latent})")
        starts: list[int] = []
        prompts: list[str] = []
        for s, p in zip(self.starts, self.prompts):
            latent = -(-s // frames_per_latent)
            if starts and starts[-1] == latent:
                prompts[-1] = p
            else:
                starts.append(latent)
                prompts.append(p)
        return PromptSchedule(tuple(starts), tuple(prompts))


def parse_prompt_file(text: str, total_frames: int, source: str = "prompt file") -> PromptSchedule:
    """Parse the prompt file format described in this module's docstring."""
    if total_frames < 1:
        raise MigaError(f"the video must have at least one frame (got {total_frames})")
    entries: list[tuple[int, int | None, str]] = []  # (line number, start frame or None, prompt)
    for lineno, raw in enumerate(text.removeprefix("\ufeff").splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        m = _FRAME_PREFIX.match(line)
        if m is None:
            entries.append((lineno, None, line))
            continue
        frame, prompt = int(m.group(1)), m.group(2).strip()
        if not prompt:
            raise MigaError(f"{source} line {lineno}: no prompt after '{m.group(1)}:'")
        entries.append((lineno, frame, prompt))
    if not entries:
        raise MigaError(f"{source}: no prompts (every line is blank or a # comment)")

    numbered = entries[0][1] is not None
    for lineno, frame, _ in entries:
        if (frame is not None) != numbered:
            first = "starts" if numbered else "does not start"
            raise MigaError(
                f"{source} line {lineno}: mixes prompts with and without frame numbers (line "
                f"{entries[0][0]} {first} with 'FRAME:'); use frame numbers on every prompt line or on none"
            )
    prompts = tuple(p for _, _, p in entries)
    if not numbered:
        try:
            return PromptSchedule.even(prompts, total_frames)
        except MigaError as e:
            raise MigaError(f"{source}: {e}") from None

    prev = None
    for lineno, frame, _ in entries:
        if prev is None and frame != 0:
            raise MigaError(f"{source} line {lineno}: the first prompt must start at frame 0 (got {frame})")
        if prev is not None and frame <= prev:
            raise MigaError(f"{source} line {lineno}: frame numbers must increase ({frame} after {prev})")
        if frame >= total_frames:
            raise MigaError(
                f"{source} line {lineno}: frame {frame} is past the end of the video "
                f"({total_frames} frames, numbered 0 to {total_frames - 1})"
            )
        prev = frame
    return PromptSchedule(tuple(f for _, f, _ in entries), prompts)
