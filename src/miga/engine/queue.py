"""The latent queue's building blocks (re-exported for a newcomer looking for "the queue").

A queue is a plain list of :class:`~miga.engine.stepper.Slot`, head (least noisy) first. FIFO's queue is
built and advanced in :mod:`miga.engine.fifo`; MIGA's zigzag queue (Eq. 3) in :mod:`miga.engine.miga`.
"""

from miga.engine.stepper import Slot

__all__ = ["Slot", "levels_of"]


def levels_of(queue: list[Slot]) -> list[int]:
    """The level of every latent, head first (non-decreasing along a well-formed queue)."""
    return [s.level for s in queue]
