"""Sampler-level rules of the full-sequence baselines, as pure functions (``shared/spec/baselines.md``).

- :func:`freenoise_reschedule`: FreeNoise's initial-noise rescheduling (§4.1 a), also FreeLong's noise init
  (§2.1 g, W = 16, S = 4);
- :func:`freepca_mean_reuse`: FreePCA's "reuse mean statistics" initial noise (§3.1);
- :func:`freepca_gate` / :func:`freepca_gate_by_step`: when FreePCA's PCA fusion is on (§3.1 step 5, §7.5).

Nothing here draws noise itself: the caller passes the N(0, I) latents (and a ``torch.Generator`` for
FreeNoise's permutations), so a sampler keeps its own seeding. The original code shuffles with Python's
``random``; bit-for-bit parity with it is impossible and not attempted (§1.5).
"""

from __future__ import annotations

import torch

from miga.errors import MigaError

__all__ = ["FREEPCA_FUSED_FRACTION", "freenoise_reschedule", "freepca_gate", "freepca_gate_by_step",
           "freepca_mean_reuse"]

FREEPCA_FUSED_FRACTION = 37 / 50
"""Share of DDIM steps with t > 250 on VideoCrafter2's 50-step grid t ∈ {981, 961, …, 1} (37 of 50)."""


def freenoise_reschedule(noise: torch.Tensor, window: int = 16, stride: int = 4, *,
                         generator: torch.Generator | None = None, dim: int = 2,
                         tail: str = "refuse") -> torch.Tensor:
    """FreeNoise's noise rescheduling (§4.1 a): a copy of ``noise`` where, for i = W, W + S, … < N in order, the
    S frames ``[i, i + S)`` along ``dim`` become the frames ``[i − W, i − W + S)`` (as rescheduled so far) in a
    fresh uniformly random order. Every frame's noise is then one of the first W frames', and group g holds a
    permutation of group g mod (W/S) (when S divides W).

    ``noise``: e.g. ``[B, C, N, h, w]`` N(0, I) latents (``dim=2``); the same permutations apply to every batch
    element and channel, as in the code (one x_T for all samples). ``window``, ``stride``: W, S (16, 4).
    ``generator``: for the permutations (``torch.randperm``). N <= W: unchanged. (N − W) % S ≠ 0:
    ``tail="refuse"`` raises (the original crashes); ``tail="extra_window"`` fills the short last group from the
    first frames of a permutation of its S source frames (diffusers' ``shuffle_context``).
    """
    if window < 1 or stride < 1:
        raise MigaError(f"window ({window}) and stride ({stride}) must be >= 1")
    if tail not in ("refuse", "extra_window"):
        raise MigaError(f"tail must be 'refuse' or 'extra_window', got {tail!r}")
    frames = noise.shape[dim]
    out = noise.clone()
    if frames <= window:
        return out
    if (frames - window) % stride and tail == "refuse":
        raise MigaError(f"FreeNoise's noise rescheduling needs (frames - {window}) to be a multiple of {stride}; "
                        f"got {frames} frames")
    x = out.movedim(dim, 0)  # a view: writes land in ``out``
    for i in range(window, frames, stride):
        size = min(stride, frames - i)
        source = i - window + torch.randperm(stride, generator=generator)[:size]
        x[i:i + size] = x[source.to(x.device)]
    return out


def freepca_mean_reuse(noise: torch.Tensor, window: int = 16, *, dim: int = 2) -> torch.Tensor:
    """FreePCA's initial noise (§3.1, "reuse mean statistics"): a copy of ``noise`` where, block by block in
    order, block k (frames ``[kW, kW + W)`` along ``dim``) becomes ``mean(block k − 1) + (block k − mean(block
    k))``, means over the frame axis per (channel, y, x). Every block then carries block 0's temporal mean and
    keeps its own fluctuation; the per-element variance stays about 1. The code hard-codes N = 64
    (``range(16, 64, 16)``); here N is ``noise``'s length, and a short last block is treated the same way.
    N <= W: unchanged.
    """
    if window < 1:
        raise MigaError(f"window must be >= 1, got {window}")
    out = noise.clone()
    x = out.movedim(dim, 0)
    for s in range(window, x.shape[0], window):
        previous, block = x[s - window:s], x[s:s + window]
        x[s:s + window] = previous.mean(0, keepdim=True) + (block - block.mean(0, keepdim=True))
    return out


def freepca_gate(timestep: float, tau: float = 250.0) -> bool:
    """FreePCA fuses while the model timestep t > τ (the DDPM timestep value the UNet receives, 1..981 on
    VideoCrafter2's grid; not the step index or σ): the code's ``(j > 0 and t > 250) or (j > 3 and t > 500)``
    reduces to this (the second clause implies the first)."""
    return float(timestep) > tau


def freepca_gate_by_step(step: int, steps: int, fraction: float = FREEPCA_FUSED_FRACTION) -> bool:
    """The gate stated by step for a model whose timesteps are not DDPM's (flow models: Wan, the built-in
    model, where t = σ·1000 and "t > 250" means something else, §3.6): fuse during the first
    ``round(fraction · steps)`` steps (37 of 50 by default, as t > 250 does on VideoCrafter2's grid)."""
    if steps < 1 or not 0 <= step < steps:
        raise MigaError(f"step must be in [0, {steps}), got {step}")
    return step < round(fraction * steps)
