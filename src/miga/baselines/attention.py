"""Temporal-attention policies of the full-sequence baselines (``shared/spec/baselines.md`` §2-§4, §8).

A policy replaces the softmax attention inside one temporal self-attention layer, with one signature::

    policy(q, k, v, bias=None, site=None) -> out

- ``q, k, v``: ``[B·h·w, heads, F, d]`` after the layer's projections, rows in ``(b, y, x)`` order (b-major),
  which is how every miga backbone lays out its temporal tokens;
- ``bias``: an additive logit bias broadcastable to ``[heads, F, F]`` (the built-in model's relative frame
  distance bias) or None;
- ``site``: an :class:`AttentionSite` (the ``(B, F, h, w)`` grid, the call's timestep, the UNet level, the
  softmax scale); :func:`miga.baselines.hooks.attention_policy` fills it in;
- ``out``: ``[B·h·w, heads, F, d]``, what the layer then feeds to its output projection and residual.

Acting before the output projection is exact for all three methods: FreeNoise and FreePCA average attention
outputs before ``to_out`` in their code; FreeLong blends after the residual, but its blend is linear, per channel,
and keeps constants (P + (1 − P) = 1), so it commutes with ``to_out`` (weights and bias) and the residual (§2.1 e).

Policies: :class:`GlobalAttention` (the identity: plain attention over all frames), :class:`WindowedAttention`
(FreeNoise, §4.1 b), :class:`SpectralBlendAttention` (FreeLong, §2.1), :class:`PCAFuseAttention` (FreePCA, §3.1).
Each has a frozen config whose defaults are the VideoCrafter2 repositories' constants. CFG-batched calls are
handled per batch element (§1.3): FreeLong's FFT and FreePCA's PCA never pool the cond and uncond rows.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Protocol

import torch
import torch.nn.functional as F

from miga.baselines.noise import freepca_gate
from miga.errors import MigaError

__all__ = ["AttentionPolicy", "AttentionSite", "FreeLongConfig", "FreeNoiseConfig", "FreePCAConfig",
           "GlobalAttention", "PCAFuseAttention", "SpectralBlendAttention", "WindowedAttention", "attend",
           "freelong_local_mask", "freelong_lowpass", "pca_fuse", "spectral_blend", "window_starts",
           "window_weights"]

TAILS = ("refuse", "extra_window")
WEIGHTINGS = ("pyramid", "flat")
MASKS = ("strict", "adjusted")


@dataclass(frozen=True)
class AttentionSite:
    """What a policy may know about one call of one temporal self-attention.

    ``grid``: ``(B, F, h, w)``: the rows of ``q`` are the ``B·h·w`` sites in ``(b, y, x)`` order;
    ``timestep``: the call's model timestep when every frame of every batch element shares it (full-sequence
    sampling), else None (FreePCA's gate needs it); ``level``: 0 at the model's finest temporal-attention
    resolution, +1 per 2x downsampling (FreeLong's local-only rule); ``scale``: the softmax scale (None:
    ``d^-1/2``); ``name``: where the layer sits in its model (messages, debugging).
    """

    grid: tuple[int, int, int, int]
    timestep: Optional[float] = None
    level: int = 0
    scale: Optional[float] = None
    name: str = ""


class AttentionPolicy(Protocol):
    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: Optional[torch.Tensor] = None,
                 site: Optional[AttentionSite] = None) -> torch.Tensor:
        ...


# ------------------------------------------------------------------------------------------ building blocks
def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: Optional[torch.Tensor] = None,
           allowed: Optional[torch.Tensor] = None, scale: Optional[float] = None) -> torch.Tensor:
    """Softmax attention ``softmax(scale·q·kᵀ + bias) v`` where only ``allowed`` (bool ``[F, F]``, query x key)
    pairs take part (the others get -inf logits). Every query must be allowed at least one key."""
    mask = bias
    if allowed is not None:
        block = torch.zeros(allowed.shape, dtype=q.dtype, device=q.device).masked_fill(~allowed, float("-inf"))
        mask = block if mask is None else mask.to(q.dtype) + block
    if mask is not None:
        mask = mask.to(q.dtype)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)


def _frames_of(q: torch.Tensor) -> int:
    if q.ndim != 4:
        raise ValueError(f"q must be [B·h·w, heads, F, d], got shape {tuple(q.shape)}")
    return q.shape[-2]


def _scale(site: Optional[AttentionSite]) -> Optional[float]:
    return None if site is None else site.scale


def _grid(site: Optional[AttentionSite], q: torch.Tensor, method: str) -> tuple[int, int, int, int]:
    if site is None:
        raise ValueError(f"{method} needs the attention site's (B, F, h, w) grid; call it through "
                         "miga.baselines.hooks.attention_policy or pass site=AttentionSite(...)")
    b, f, h, w = site.grid
    if b * h * w != q.shape[0] or f != q.shape[-2]:
        raise ValueError(f"grid {site.grid} does not match q of shape {tuple(q.shape)}")
    return site.grid


def window_starts(frames: int, window: int, stride: int, tail: str = "refuse") -> list[int]:
    """First frames of the windows ``[s, s + window)`` FreeNoise and FreePCA attend in (``get_views``, §4.1 b):
    ``s = 0, S, 2S, …, ⌊(N − W)/S⌋·S``.

    ``frames <= window``: one window of all frames. When the last window stops short of frame N − 1
    ((N − W) % S ≠ 0), ``tail="refuse"`` raises (the original crashes in its noise rescheduling, and would
    give uncovered frames a zero attention output); ``tail="extra_window"`` appends the window ``[N − W, N)``
    (diffusers' rule, but with the whole window weighted normally, not only its uncovered frames).
    """
    if window < 1 or stride < 1:
        raise MigaError(f"window ({window}) and stride ({stride}) must be >= 1")
    if tail not in TAILS:
        raise MigaError(f"tail must be one of {', '.join(TAILS)}, got {tail!r}")
    if frames <= window:
        return [0]
    starts = list(range(0, frames - window + 1, stride))
    if starts[-1] + window < frames:
        if tail == "refuse":
            fits = window + stride * math.ceil((frames - window) / stride)
            raise MigaError(f"{frames} frames are not covered by windows of {window} with stride {stride}: "
                            f"(frames - {window}) must be a multiple of {stride} (e.g. {fits} frames)")
        starts.append(frames - window)
    return starts


def window_weights(length: int, scheme: str = "pyramid") -> torch.Tensor:
    """Per-frame weights of one window (§4.1 b): ``pyramid`` = ``[1, 2, …, L/2, L/2, …, 2, 1]`` for even L and
    ``[1, …, (L+1)/2, …, 1]`` for odd L (``min(i + 1, L - i)``); ``flat`` = all ones (FreePCA)."""
    if scheme not in WEIGHTINGS:
        raise MigaError(f"weighting must be one of {', '.join(WEIGHTINGS)}, got {scheme!r}")
    i = torch.arange(length, dtype=torch.float32)
    return torch.minimum(i + 1, length - i) if scheme == "pyramid" else torch.ones(length)


def _windowed(q, k, v, bias, starts: list[int], length: int, weights: torch.Tensor, scale, window_out=None):
    """Weighted average over windows of per-window attention; ``window_out(j, s, local)`` may replace window
    j's output (FreePCA's fusion)."""
    acc = torch.zeros(q.shape, dtype=torch.float32, device=q.device)
    count = torch.zeros(q.shape[-2], dtype=torch.float32, device=q.device)
    w = weights.to(q.device)
    for j, s in enumerate(starts):
        sl = slice(s, s + length)
        out = attend(q[:, :, sl], k[:, :, sl], v[:, :, sl], None if bias is None else bias[..., sl, sl],
                     scale=scale)
        if window_out is not None:
            out = window_out(j, s, out)
        acc[:, :, sl] += out.float() * w[:, None]
        count[sl] += w
    out = torch.where(count[:, None] > 0, acc / count.clamp_min(1e-12)[:, None], acc)
    return out.to(q.dtype)


def _to_video(x: torch.Tensor, grid) -> torch.Tensor:
    """``[B·h·w, heads, F, d]`` -> ``[B, heads·d, F, h, w]``."""
    b, f, h, w = grid
    heads, d = x.shape[1], x.shape[3]
    return x.reshape(b, h, w, heads, f, d).permute(0, 3, 5, 4, 1, 2).reshape(b, heads * d, f, h, w)


def _from_video(y: torch.Tensor, grid, heads: int) -> torch.Tensor:
    """Inverse of :func:`_to_video`."""
    b, f, h, w = grid
    d = y.shape[1] // heads
    return y.reshape(b, heads, d, f, h, w).permute(0, 4, 5, 1, 3, 2).reshape(b * h * w, heads, f, d)


# ------------------------------------------------------------------------------------------ the identity
class GlobalAttention:
    """Plain softmax attention over all F frames: what the layer does without a policy (§8 ``Global``)."""

    def __call__(self, q, k, v, bias=None, site=None):
        return attend(q, k, v, bias, scale=_scale(site))


# ------------------------------------------------------------------------------------------ FreeNoise
@dataclass(frozen=True)
class FreeNoiseConfig:
    """FreeNoise (Qiu et al., ICLR 2024), the original per-attention-layer window fusion (§4.1 b, §4.3).

    ``window``: W, frames per window, the model's native length (16 for VideoCrafter2 and ModelScope, 24 for
    Zeroscope); ``stride``: S, frames between window starts (4; ``S = W/4`` elsewhere); ``weighting``: per-frame
    window weights, ``pyramid`` (the original) or ``flat``; ``tail``: what to do when (N − W) % S ≠ 0, see
    :func:`window_starts`. The same W, S drive the noise rescheduling (:func:`miga.baselines.noise.
    freenoise_reschedule`).
    """

    window: int = 16
    stride: int = 4
    weighting: str = "pyramid"
    tail: str = "refuse"

    def __post_init__(self):
        window_starts(1, self.window, self.stride, self.tail)
        window_weights(1, self.weighting)


class WindowedAttention:
    """FreeNoise's window-fused temporal attention (§4.1 b).

    Each window ``[s, s + W)`` (:func:`window_starts`) runs ordinary softmax attention among its own frames only;
    a frame's output is the weighted mean, over the windows that contain it, of its window outputs, with the
    window's pyramid weight at that frame's position (:func:`window_weights`). No global branch and no position
    re-indexing (VideoCrafter2 has no temporal PE; the built-in model's relative bias is sliced per window, which
    is the same thing). With one window (N <= W) the weights cancel: plain attention.

    Where diffusers' FreeNoise (``FreeNoiseTransformerBlock``, AnimateDiff only, §4.2) differs: it windows the
    whole transformer block (norm1, attn1, residual, norm2, attn2, residual, averaged before the feed-forward)
    instead of each attention layer (not equal: attn2 sees fused attn1 output here), restarts AnimateDiff's
    sinusoidal PE in each window, appends a window ``[N − W, N)`` for an uncovered tail that accumulates only the
    uncovered frames (and normalises them with a single weight, a bug), and offers a ``delayed_reverse_sawtooth``
    weighting. This class is the original, attention-level variant.
    """

    def __init__(self, config: FreeNoiseConfig = FreeNoiseConfig()):
        self.config = config

    def __call__(self, q, k, v, bias=None, site=None):
        c = self.config
        frames = _frames_of(q)
        starts = window_starts(frames, c.window, c.stride, c.tail)
        length = min(c.window, frames)
        return _windowed(q, k, v, bias, starts, length, window_weights(length, c.weighting), _scale(site))


# ------------------------------------------------------------------------------------------ FreeLong
@dataclass(frozen=True)
class FreeLongConfig:
    """FreeLong (Lu et al., NeurIPS 2024), SpectralBlend temporal attention (§2.1).

    ``window``: w, the local branch's window: query frame i sees key frames with |i − j| <= w // 2 (w = 16:
    17 frames inside, 9 at the ends); ``mask``: ``strict`` (the VideoCrafter2 code: windows clipped at the ends)
    or ``adjusted`` (the LaVie code: a clipped row slides to hold exactly w frames); ``d_t``, ``d_s``: the
    Gaussian low-pass's normalised temporal and spatial cut-offs (0.25 both; ``inf`` makes P ≡ 1, global only);
    ``local_only_levels``: UNet levels (0 = finest) whose output is the local branch alone (the code's "2560
    tokens per frame" rule = the finest level of VideoCrafter2 at 320x512); set ``()`` for a one-level model such
    as the built-in model v2, where level 0 is the only level.
    """

    window: int = 16
    mask: str = "strict"
    d_t: float = 0.25
    d_s: float = 0.25
    local_only_levels: tuple[int, ...] = (0,)

    def __post_init__(self):
        if self.window < 1:
            raise MigaError(f"FreeLong window must be >= 1, got {self.window}")
        if self.mask not in MASKS:
            raise MigaError(f"FreeLong mask must be one of {', '.join(MASKS)}, got {self.mask!r}")
        if not (self.d_t > 0 and self.d_s > 0):
            raise MigaError(f"FreeLong cut-offs d_t, d_s must be > 0, got {self.d_t}, {self.d_s}")


def freelong_local_mask(frames: int, window: int = 16, kind: str = "strict", device=None) -> torch.Tensor:
    """Bool ``[F, F]`` (query x key) band of FreeLong's local branch (§2.1 b).

    ``strict``: key j is allowed for query i when ``max(0, i − w//2) <= j < min(F, i + w//2 + 1)``.
    ``adjusted``: a row whose clipped band holds fewer than w frames becomes ``[0, w)`` at the start or
    ``[F − w, F)`` at the end (clipped to ``[0, F)``).
    """
    if kind not in MASKS:
        raise MigaError(f"FreeLong mask must be one of {', '.join(MASKS)}, got {kind!r}")
    half = window // 2
    i = torch.arange(frames, device=device)
    lo, hi = (i - half).clamp(min=0), (i + half + 1).clamp(max=frames)
    if kind == "adjusted":
        short = hi - lo < window
        at_start = short & (lo == 0)
        at_end = short & ~at_start
        lo = torch.where(at_end, torch.full_like(lo, max(0, frames - window)), lo)
        hi = torch.where(at_start, torch.full_like(hi, min(frames, window)), torch.where(at_end, frames, hi))
    return (i[None, :] >= lo[:, None]) & (i[None, :] < hi[:, None])


def freelong_lowpass(frames: int, height: int, width: int, d_t: float = 0.25, d_s: float = 0.25,
                     device=None) -> torch.Tensor:
    """FreeLong's 3-D Gaussian low-pass ``P`` ``[F, h, w]`` on the fftshift'ed spectrum (§2.1 c.3):
    ``exp(−½[(τ/d_t)² + (η/d_s)² + (ξ/d_s)²])`` with ``τ_k = 2k/F − 1`` (likewise η, ξ). For odd sizes this grid
    has no exact zero, so the DC bin gets less than 1 (0.726 for h = 5): reproduced, not fixed (§2.7)."""
    def coords(n: int) -> torch.Tensor:
        return 2 * torch.arange(n, dtype=torch.float32, device=device) / n - 1

    tau, eta, xi = coords(frames) / d_t, coords(height) / d_s, coords(width) / d_s
    return torch.exp(-0.5 * (tau[:, None, None] ** 2 + eta[None, :, None] ** 2 + xi[None, None, :] ** 2))


def spectral_blend(global_: torch.Tensor, local: torch.Tensor, d_t: float = 0.25,
                   d_s: float = 0.25) -> torch.Tensor:
    """SpectralBlend (§2.1 c): ``Re IFFT₃(ifftshift(P·Ĝ + (1 − P)·L̂))`` with ``Ĝ, L̂`` the fftshift'ed 3-D DFTs
    over ``(F, h, w)`` of ``[B, C, F, h, w]`` tensors, in float32, cast back to the input dtype. Low
    frequencies (jointly in time and space) come from ``global_``, the rest from ``local``."""
    dims = (-3, -2, -1)
    frames, height, width = global_.shape[-3:]
    p = freelong_lowpass(frames, height, width, d_t, d_s, device=global_.device)
    g = torch.fft.fftshift(torch.fft.fftn(global_.float(), dim=dims), dim=dims)
    lo = torch.fft.fftshift(torch.fft.fftn(local.float(), dim=dims), dim=dims)
    mixed = torch.fft.ifftshift(p * g + (1 - p) * lo, dim=dims)
    return torch.fft.ifftn(mixed, dim=dims).real.to(global_.dtype)


class SpectralBlendAttention:
    """FreeLong's temporal attention (§2.1): a global branch (the layer's attention over all N frames) and a
    local branch (the same attention with the band mask :func:`freelong_local_mask`), blended by
    :func:`spectral_blend` on the site's ``(B, C, N, h, w)`` grid, per batch element. At levels in
    ``local_only_levels`` the output is the local branch (the global one, computed and discarded by the code, is
    skipped: numerically identical). Runs at every step; FreeLong has no timestep gate in its code."""

    def __init__(self, config: FreeLongConfig = FreeLongConfig()):
        self.config = config

    def __call__(self, q, k, v, bias=None, site=None):
        c = self.config
        grid = _grid(site, q, "FreeLong")
        allowed = freelong_local_mask(_frames_of(q), c.window, c.mask, device=q.device)
        local = attend(q, k, v, bias, allowed, scale=site.scale)
        if site.level in c.local_only_levels:
            return local
        global_ = attend(q, k, v, bias, scale=site.scale)
        blended = spectral_blend(_to_video(global_, grid), _to_video(local, grid), c.d_t, c.d_s)
        return _from_video(blended, grid, q.shape[1])


# ------------------------------------------------------------------------------------------ FreePCA
@dataclass(frozen=True)
class FreePCAConfig:
    """FreePCA (Tan et al., CVPR 2025), PCA fusion of windowed (local) and global temporal attention (§3.1).

    ``window``, ``stride``: the local windows (16, 4; ``get_views(64, 16, 4)`` in the code, generalised here to
    the actual N); ``max_components``: at most this many principal components of window j come from the global
    branch, ``k_j = min(j, max_components)`` (3); ``tau``: PCA fusion only while the timestep t > tau (250, the
    DDPM timestep value: 37 of 50 DDIM steps; :func:`miga.baselines.noise.freepca_gate`); ``gamma``: the global
    branch's entropy factor γ multiplying its logits; None = ``√(log_W N)`` for the actual N (= the code's
    hard-coded ``√(log₁₆ 64)`` ≈ 1.2247 at N = 64, 1.3229 at 128); ``tail``: see :func:`window_starts`.
    """

    window: int = 16
    stride: int = 4
    max_components: int = 3
    tau: float = 250.0
    gamma: Optional[float] = None
    tail: str = "refuse"

    def __post_init__(self):
        window_starts(1, self.window, self.stride, self.tail)
        if self.window < 2:
            raise MigaError(f"FreePCA window must be >= 2 (a frame covariance), got {self.window}")
        if self.max_components < 0:
            raise MigaError(f"FreePCA max_components must be >= 0, got {self.max_components}")
        if self.gamma is not None and not self.gamma > 0:
            raise MigaError(f"FreePCA gamma must be > 0, got {self.gamma}")

    def entropy_factor(self, frames: int) -> float:
        """γ for N = ``frames``: ``gamma`` or ``√(log_W N)`` (1 when N <= W)."""
        if self.gamma is not None:
            return float(self.gamma)
        return math.sqrt(math.log(frames) / math.log(self.window)) if frames > self.window else 1.0


def pca_fuse(local: torch.Tensor, global_: torch.Tensor, components: int, *, return_selection: bool = False):
    """FreePCA's fusion of one window (§3.1 step 5), per batch element.

    ``local``, ``global_``: ``[B, R, W]``: rows are (site, channel), columns the W frames of the window. Centre
    each row on its mean over the window (μ_l, μ_g); eigenvectors U of the frame covariance of the **global**
    branch, ``Σ = A_gᵀA_g / (W − 1)``; scores ``P = A·U``; cosine ``c_i`` between the local and global scores of
    component i over all rows; the ``components`` components with the largest ``c_i`` take the global scores, the
    rest keep the local ones; output ``P_f·Uᵀ + μ_g`` (the global mean replaces the local one).

    Uses ``eigh`` in float64 (the code's unsorted ``eig`` of the same symmetric matrix; the cosines and the
    reconstruction do not depend on eigenvector order or sign). ``return_selection``: also return the bool
    ``[B, W]`` mask of components taken from the global branch (in ``eigh``'s ascending order).
    """
    if local.shape != global_.shape or local.ndim != 3:
        raise ValueError(f"local and global must both be [B, R, W], got {tuple(local.shape)}, "
                         f"{tuple(global_.shape)}")
    dtype = local.dtype
    local, global_ = local.float(), global_.float()
    width = local.shape[-1]
    mu_l, mu_g = local.mean(-1, keepdim=True), global_.mean(-1, keepdim=True)
    a_l, a_g = local - mu_l, global_ - mu_g
    cov = (a_g.transpose(-1, -2).double() @ a_g.double()) / max(width - 1, 1)
    u = torch.linalg.eigh(cov)[1].to(a_l.dtype)  # [B, W, W], columns = components
    p_l, p_g = a_l @ u, a_g @ u
    cos = (p_l * p_g).sum(-2) / (p_l.norm(dim=-2) * p_g.norm(dim=-2)).clamp_min(1e-12)  # [B, W]
    take = torch.zeros(cos.shape, dtype=torch.bool, device=cos.device)
    n = min(max(components, 0), width)
    if n:
        take.scatter_(-1, cos.topk(n, dim=-1).indices, True)
    fused = (torch.where(take[:, None, :], p_g, p_l) @ u.transpose(-1, -2) + mu_g).to(dtype)
    return (fused, take) if return_selection else fused


class PCAFuseAttention:
    """FreePCA's temporal attention (§3.1): windowed attention with flat weights (windows as FreeNoise's), where
    every window j >= 1 is replaced, while the gate is open, by :func:`pca_fuse` of its local output and the
    global branch on the same frames, with ``k_j = min(j, max_components)`` global components. The global
    branch is softmax attention over all N frames with its ``q·kᵀ`` logits multiplied by γ
    (:meth:`FreePCAConfig.entropy_factor`); the built-in model's relative bias is added unscaled.

    The gate: ``fuse=None`` opens it while ``site.timestep > tau`` (the code's rule; the site must carry one
    timestep per call); ``fuse=True/False`` forces it, for a sampler that gates by step fraction instead
    (:func:`miga.baselines.noise.freepca_gate_by_step`, flow models). Closed gate, window 0, or N <= W: plain
    flat-weight windowed attention (the global branch is then skipped; the code computes and discards it).
    """

    def __init__(self, config: FreePCAConfig = FreePCAConfig(), fuse: Optional[bool] = None):
        self.config, self.fuse = config, fuse

    def gate_open(self, site: Optional[AttentionSite]) -> bool:
        if self.fuse is not None:
            return bool(self.fuse)
        if site is None or site.timestep is None:
            raise MigaError("FreePCA's step gate needs one timestep per model call (full-sequence sampling, "
                            "all frames at the same level), or a policy built with fuse=True/False")
        return freepca_gate(site.timestep, self.config.tau)

    def __call__(self, q, k, v, bias=None, site=None):
        c = self.config
        frames = _frames_of(q)
        starts = window_starts(frames, c.window, c.stride, c.tail)
        length = min(c.window, frames)
        weights = window_weights(length, "flat")
        if len(starts) == 1 or not self.gate_open(site):
            return _windowed(q, k, v, bias, starts, length, weights, _scale(site))
        batch = _grid(site, q, "FreePCA")[0]
        heads, d = q.shape[1], q.shape[3]
        base = q.shape[-1] ** -0.5 if site.scale is None else site.scale
        global_ = attend(q, k, v, bias, scale=c.entropy_factor(frames) * base)

        def rows(x: torch.Tensor) -> torch.Tensor:  # [B·h·w, heads, L, d] -> [B, h·w·heads·d, L]
            return x.reshape(batch, -1, heads, length, d).permute(0, 1, 2, 4, 3).reshape(batch, -1, length)

        def fuse(j: int, s: int, local: torch.Tensor) -> torch.Tensor:
            if j == 0:
                return local
            fused = pca_fuse(rows(local), rows(global_[:, :, s:s + length]), min(j, c.max_components))
            return fused.reshape(batch, -1, heads, d, length).permute(0, 1, 2, 4, 3).reshape(local.shape)

        return _windowed(q, k, v, bias, starts, length, weights, site.scale, window_out=fuse)
