"""The latent queue's element and the engine base class.

A queue is a plain list of :class:`Slot`, head (least noisy) first; FIFO's queue is built and advanced in
:mod:`miga.engine.fifo`, MIGA's zigzag queue (Eq. 3) in :mod:`miga.engine.miga`. Both are
:class:`QueueEngine` s: objects whose whole state (queue, counters, solver histories) is explicit, so a
long run can be checkpointed between any two finished latents and resumed (:meth:`QueueEngine.state_dict`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch

from miga.engine.solvers import pack_solver_state, unpack_solver_state


@dataclass
class Slot:
    """One latent in the queue: where it sits in the output (``index``; negative for warm-up and
    padding latents), its tensor ``[C, H, W]``, its level (0 = clean) and its solver history."""

    index: int
    latent: torch.Tensor
    level: int
    state: Any = None

    def copy(self) -> "Slot":
        return Slot(self.index, self.latent, self.level, self.state)

    def to_state(self) -> dict:
        """A plain dict of ints and tensors (see :mod:`miga.checkpoint`)."""
        return {"index": self.index, "latent": self.latent, "level": self.level,
                "solver": pack_solver_state(self.state)}

    @classmethod
    def from_state(cls, state: dict) -> "Slot":
        return cls(int(state["index"]), state["latent"], int(state["level"]), unpack_solver_state(state["solver"]))


def pack_slots(slots: list[Slot]) -> list[dict]:
    return [s.to_state() for s in slots]


def unpack_slots(states: list[dict]) -> list[Slot]:
    return [Slot.from_state(s) for s in states]


class RunInterrupted(Exception):
    """Raised by :meth:`QueueEngine.next_latent` between two passes when its ``should_stop`` says so; the
    engine's state is complete at that point (a checkpoint can be taken)."""


class QueueEngine:
    """Runs queue passes until finished latents are ready and hands them out one at a time, in order.

    Subclasses implement :meth:`start` (build the queue), :meth:`step` (one pass; returns the latents it
    finished) and :attr:`finished`, and extend :meth:`state_dict` / :meth:`load_state_dict` with their own
    fields. Between two calls of :meth:`next_latent` the state is complete: loading it into a fresh engine
    with the same configuration continues with exactly the same latents (keyed randomness, decision 4).
    """

    method = "?"

    def __init__(self) -> None:
        self.started = False
        self.ready: list[Slot] = []  # finished latents a pass produced that were not handed out yet
        self.should_stop: Callable[[], bool] | None = None  # asked before every pass (Ctrl-C in a long run)

    @property
    def finished(self) -> bool:  # pragma: no cover - abstract
        raise NotImplementedError

    def start(self) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def step(self) -> list[Slot]:  # pragma: no cover - abstract
        raise NotImplementedError

    def next_latent(self) -> Slot | None:
        """The next finished latent (level 0), running passes as needed; None when the video is done."""
        while not self.ready:
            if self.should_stop is not None and self.should_stop():
                raise RunInterrupted
            if not self.started:
                self.start()
                self.started = True
            elif self.finished:
                return None
            else:
                self.ready = self.step()
        return self.ready.pop(0)

    def __iter__(self):
        while (slot := self.next_latent()) is not None:
            yield slot

    def state_dict(self) -> dict:
        return {"method": self.method, "started": self.started, "ready": pack_slots(self.ready)}

    def load_state_dict(self, state: dict) -> None:
        if state.get("method") != self.method:
            raise ValueError(f"a {state.get('method')} engine state cannot be loaded into a {self.method} engine")
        self.started = bool(state["started"])
        self.ready = unpack_slots(state["ready"])
