"""ScalingNoise (Yang et al. 2025, arXiv 2503.16400): the tail-noise beam search, as pure functions.

Clean-room, from ``/work/shared/spec/baselines.md`` §5 (no code of the ScalingNoise or FIFO-Diffusion
repositories: neither has a permissive licence, §5.6). The queue side lives in
:class:`miga.engine.scaling_noise.ScalingNoiseEngine`, which takes a :class:`ScalingNoiseConfig` (duck-typed: the
engine imports nothing from here) plus the caller's ``decode`` and ``embed`` callables.

Everything here is a function of its arguments: the candidate actions take their noise tensors explicitly (the
engine draws them from :class:`~miga.engine.rng.KeyedNoise`, so a run is reproducible and resumable), the reward
takes embeddings, the selection takes a seeded :class:`random.Random`.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Callable, NamedTuple, Sequence

import torch

ACTIONS = ("random_resample", "last_frame_renoise", "fft_2D_resample", "last_frame_resample")
"""The four candidate actions of §5.2 step 2, in the order of the original action list."""

REWARDS = ("last_frame", "vbench")

Draw = Callable[[str], torch.Tensor]
"""``draw(tag) -> N(0, I)`` of the latent's shape; the same tag gives the same tensor within one candidate."""


# ----------------------------------------------------------------------------------------------------
# candidate actions (§5.2 step 2); z_prev is the neighbour slot -2 (level T - 1), alpha/sigma the top level's


def random_resample(noise: torch.Tensor) -> torch.Tensor:
    """``random_resample``: fresh N(0, I) (the original draws it on the CPU)."""
    return noise


def last_frame_renoise(z_prev: torch.Tensor, noise: torch.Tensor, alpha: float, sigma: float) -> torch.Tensor:
    """``last_frame_renoise``: √ᾱ_T·z₋₂ + √(1−ᾱ_T)·ε; ``alpha``/``sigma`` are the top level's signal and noise
    scales (VC2, t = 999: √ᾱ ≈ 0.068)."""
    return alpha * z_prev + sigma * noise


def lowpass_2d(height: int, width: int, d_s: float = 0.25, dtype=torch.float64) -> torch.Tensor:
    """FreeLong's Gaussian low-pass (§2.1 (c) 3) on (h, w) only, in ``fftshift`` ed (centred) coordinates:
    P = exp(−½[(η/d_s)² + (ξ/d_s)²]) with η_k = 2k/h − 1, ξ_k = 2k/w − 1."""
    eta = 2.0 * torch.arange(height, dtype=dtype) / height - 1.0
    xi = 2.0 * torch.arange(width, dtype=dtype) / width - 1.0
    return torch.exp(-0.5 * ((eta[:, None] / d_s) ** 2 + (xi[None, :] / d_s) ** 2))


def fft_2d_resample(z_prev: torch.Tensor, noise: torch.Tensor, d_s: float = 0.25) -> torch.Tensor:
    """``fft_2D_resample``: low spatial frequencies of z₋₂, high ones of fresh noise, mixed per frequency by
    :func:`lowpass_2d` over the last two dims, **without variance renormalisation** (§5.2). For white inputs the
    per-frequency variance is P² + (1−P)² < 1, so the result's std is below 1 (≈ 0.950 at d_s = 0.25 for any grid from 8×8 up, 0.966 at 4×4;
    :func:`fft_2d_expected_std`)."""
    h, w = z_prev.shape[-2:]
    p = lowpass_2d(h, w, d_s).to(z_prev.device)
    dims = (-2, -1)
    zf = torch.fft.fftshift(torch.fft.fft2(z_prev.double(), dim=dims), dim=dims)
    nf = torch.fft.fftshift(torch.fft.fft2(noise.double(), dim=dims), dim=dims)
    mixed = torch.fft.ifftshift(p * zf + (1.0 - p) * nf, dim=dims)
    return torch.fft.ifft2(mixed, dim=dims).real.to(z_prev.dtype)


def fft_2d_expected_std(height: int, width: int, d_s: float = 0.25) -> float:
    """The std of :func:`fft_2d_resample` on independent white N(0, 1) inputs: √mean(P² + (1−P)²)."""
    p = lowpass_2d(height, width, d_s)
    return math.sqrt(float((p ** 2 + (1 - p) ** 2).mean()))


def last_frame_resample(z_prev: torch.Tensor, noise: torch.Tensor, noise2: torch.Tensor, u: torch.Tensor,
                        alpha: float, sigma: float) -> torch.Tensor:
    """``last_frame_resample``: x = renoise(z₋₂, ε) as :func:`last_frame_renoise`, then
    ((1−a)·x + a·ε′) / √((1−a)² + a²) with elementwise a = ``u`` ~ U(0, 1) (the original's unused ``d = 0.1`` is
    left out)."""
    x = last_frame_renoise(z_prev, noise, alpha, sigma)
    a = u.to(x.dtype)
    return ((1 - a) * x + a * noise2) / torch.sqrt((1 - a) ** 2 + a ** 2)


def make_candidate(action: str, z_prev: torch.Tensor, draw: Draw, alpha: float, sigma: float,
                   d_s: float = 0.25) -> torch.Tensor:
    """One candidate tail noise. ``draw(tag)`` gives the N(0, I) tensors: ``"noise"`` (ε or the fresh sample),
    ``"noise2"`` (ε′) and ``"uniform"`` (mapped to U(0, 1) through the normal CDF, so it too is keyed)."""
    if action == "random_resample":
        return random_resample(draw("noise"))
    if action == "last_frame_renoise":
        return last_frame_renoise(z_prev, draw("noise"), alpha, sigma)
    if action == "fft_2D_resample":
        return fft_2d_resample(z_prev, draw("noise"), d_s)
    if action == "last_frame_resample":
        u = torch.special.ndtr(draw("uniform").double())
        return last_frame_resample(z_prev, draw("noise"), draw("noise2"), u, alpha, sigma)
    raise ValueError(f"unknown ScalingNoise action {action!r}; expected one of {ACTIONS}")


# ----------------------------------------------------------------------------------------------------
# reward (§5.2 "Reward")


def _cos(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = torch.as_tensor(a, dtype=torch.float64).flatten(), torch.as_tensor(b, dtype=torch.float64).flatten()
    return float(torch.dot(a, b) / (a.norm() * b.norm()).clamp_min(1e-300))


def reward_last_frame(anchor: torch.Tensor, last: torch.Tensor, frames: int) -> float:
    """The faithful reward (the original's loop always embeds the last image): with c = max(0, cos(anchor, x0_f))
    it is (c + f·(1+c)/2)/f, i.e. (9c + 8)/16 for f = 16 (§5.2). Monotone in c."""
    c = max(0.0, _cos(anchor, last))
    return (c + frames * (1 + c) / 2) / frames


def reward_vbench(anchor: torch.Tensor, embeddings: torch.Tensor) -> float:
    """The "fixed" reward: VBench subject consistency over [anchor, x0_1, ..., x0_f]: the mean over the x0 frames
    of ½[max(0, cos(prev, cur)) + max(0, cos(anchor, cur))], prev being the anchor for the first one."""
    prev, total = anchor, 0.0
    for cur in embeddings:
        total += 0.5 * (max(0.0, _cos(prev, cur)) + max(0.0, _cos(anchor, cur)))
        prev = cur
    return total / len(embeddings)


# ----------------------------------------------------------------------------------------------------
# selection (§5.2 "Selection")


class Selection(NamedTuple):
    """``parents[i]``: the beam new beam i is cloned from; ``picks[i] = (beam, candidate)``: whose tail output
    replaces its last written slots; ``explored``: whether the ε branch was taken."""

    parents: list[int]
    picks: list[tuple[int, int]]
    explored: bool


def select(scores: Sequence[Sequence[float]], m: int, eps: float, rng: random.Random) -> Selection:
    """The selection rule of §5.2: rank all (beam, candidate) pairs (ties: lower beam, then lower candidate
    first). With probability 1 − ε (``rng.random() >= eps``) the picks are the global top-m pairs; otherwise beam
    i's pick is beam i's own best candidate. The parents are **always** the beams of the global top-m (faithful;
    in the ε branch the tail may come from another beam than the parent)."""
    pairs = sorted(((float(s), b, c) for b, row in enumerate(scores) for c, s in enumerate(row)),
                   key=lambda t: (-t[0], t[1], t[2]))
    if m > len(pairs):
        raise ValueError(f"cannot keep {m} beams out of {len(pairs)} scored candidates")
    top = [(b, c) for _, b, c in pairs[:m]]
    parents = [b for b, _ in top]
    explored = rng.random() < eps
    if explored:
        picks = [(b, max(range(len(scores[b])), key=lambda c: (float(scores[b][c]), -c))) for b in range(m)]
    else:
        picks = top
    return Selection(parents, picks, explored)


# ----------------------------------------------------------------------------------------------------
# the constants


@dataclass(frozen=True)
class ScalingNoiseConfig:
    """Every constant of the search, faithful defaults (baselines.md §5.2, §5.5).

    Attributes:
        candidates: k, tail-noise candidates per beam and iteration (``--k 5``; the code's k is the paper's n).
        beams: m, beams kept (``--m 3``; the code's m is the paper's k).
        eps: probability of the exploration branch of the selection (hard-coded 0.2, §5.2).
        actions: the action set candidates are drawn from, uniformly with replacement (§5.2 step 1).
        first_pass_no_cfg: iteration 0 starts with one plain FIFO pass without CFG on the shared initial queue,
            whose head is emitted and becomes the first anchor (faithful: on; §5.2 "Iteration 0 only"). Off, that
            pass still runs, with the configured CFG (FIFO's own first pass): the initial tail is the base clip's
            noised last frame, not fresh noise, so the search starts at the first fresh tail (§5.3).
        reward: ``"last_frame"`` (faithful: the bug that scores only the candidate slot's own x0,
            (c + f(1+c)/2)/f) or ``"vbench"`` (the intended VBench formula over all f x0s).
        shared_anchor: faithful True: one anchor, overwritten by every beam's emitted frame in turn, so beam j+1
            is scored against the frame beam j just emitted (a bug of the original). False: each beam is scored
            against its own last emitted frame.
        d_s: the spatial cut-off of ``fft_2D_resample``'s Gaussian low-pass (FreeLong's grid, §2.1 (c)).
    """

    candidates: int = 5
    beams: int = 3
    eps: float = 0.2
    actions: tuple[str, ...] = ACTIONS
    first_pass_no_cfg: bool = True
    reward: str = "last_frame"
    shared_anchor: bool = True
    d_s: float = 0.25

    def __post_init__(self) -> None:
        if self.candidates < 1 or self.beams < 1:
            raise ValueError(f"ScalingNoise needs k >= 1 candidates and m >= 1 beams, got k={self.candidates}, "
                             f"m={self.beams}")
        if not 0.0 <= self.eps <= 1.0:
            raise ValueError(f"eps must be in [0, 1], got {self.eps}")
        if not self.actions or any(a not in ACTIONS for a in self.actions):
            raise ValueError(f"actions must be a non-empty subset of {ACTIONS}, got {self.actions}")
        if self.reward not in REWARDS:
            raise ValueError(f"reward must be one of {REWARDS}, got {self.reward!r}")
        if self.d_s <= 0:
            raise ValueError(f"d_s must be positive, got {self.d_s}")

    # ---- the hooks the engine calls (it duck-types them: miga.engine imports nothing from miga.baselines)

    def choose_actions(self, rng: random.Random) -> list[str]:
        """k actions, uniformly with replacement (``random.choices``)."""
        return rng.choices(list(self.actions), k=self.candidates)

    def candidate(self, action: str, z_prev: torch.Tensor, draw: Draw, alpha: float, sigma: float) -> torch.Tensor:
        return make_candidate(action, z_prev, draw, alpha, sigma, self.d_s)

    def x0_positions(self, frames: int) -> list[int]:
        """Which of the tail window's ``frames`` x0 predictions the reward reads (so only those are decoded): the
        last (the candidate slot's own) for ``"last_frame"``, all for ``"vbench"``."""
        return [frames - 1] if self.reward == "last_frame" else list(range(frames))

    def score(self, anchor: torch.Tensor, embeddings: torch.Tensor, frames: int) -> float:
        """The reward of one candidate from the anchor's embedding ``[D]`` and those of its x0s ``[N, D]`` at
        :meth:`x0_positions`."""
        if self.reward == "last_frame":
            return reward_last_frame(anchor, embeddings[-1], frames)
        return reward_vbench(anchor, embeddings)

    def select(self, scores: Sequence[Sequence[float]], rng: random.Random) -> Selection:
        return select(scores, self.beams, self.eps, rng)
