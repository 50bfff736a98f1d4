"""Keyed randomness (method.md, project decision 4).

Every random draw is derived from ``(seed, absolute latent index, level, purpose)`` alone, so the output
does not depend on batching, window order, streaming or resuming: the same latent at the same level always
gets the same noise, however the computation around it is arranged.
"""

from __future__ import annotations

import hashlib
from typing import Sequence

import torch


def draw_key(seed: int, index: int, level: int, purpose: str) -> int:
    """A 63-bit generator seed for one draw."""
    digest = hashlib.blake2b(f"{seed}|{index}|{level}|{purpose}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


class KeyedNoise:
    """Standard normal tensors keyed by (seed, index, level, purpose); drawn on the CPU in float32 so the
    same key gives the same numbers on every device."""

    def __init__(self, seed: int, shape: Sequence[int], device: torch.device | str = "cpu"):
        self.seed = int(seed)
        self.shape = tuple(shape)
        self.device = torch.device(device)
        self._gen = torch.Generator()

    def one(self, index: int, level: int, purpose: str) -> torch.Tensor:
        self._gen.manual_seed(draw_key(self.seed, index, level, purpose))
        return torch.randn(self.shape, generator=self._gen, dtype=torch.float32).to(self.device)

    def many(self, indices: Sequence[int], levels: Sequence[int], purpose: str) -> torch.Tensor:
        """Stacked draws ``[N, *shape]`` for frames ``indices`` at ``levels``."""
        return torch.stack([self.one(i, k, purpose) for i, k in zip(indices, levels)])
