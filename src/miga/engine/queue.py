"""The latent queue's element. A queue is a plain list of :class:`Slot`, head (least noisy) first;
FIFO's queue is built and advanced in :mod:`miga.engine.fifo`, MIGA's zigzag queue (Eq. 3) in
:mod:`miga.engine.miga`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch


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
