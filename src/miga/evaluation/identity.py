"""Identity metrics of the exact Gaussian world, from latents alone (no model, no decoding).

In the Gaussian world (:class:`miga.backbones.gaussian.GaussianWorld`) a video's latents minus the prompt mean
are ``z_t = identity + motion_t``: one spatial field per video, constant in time (variance share
``s_id²``), plus AR(1) motion (``s_m² = 1 - s_id²``, coefficient ``rho``), both with the same spatial
spectrum ``P``. So the correlation of frames ``d`` apart is exactly ``k(d) = s_id² + s_m² rho**d``: after the
motion has decorrelated (``rho**64 ≈ 0.001`` at ``rho = 0.9``) what is left is the identity, ``s_id²``. A
long video that forgets its identity (a model that sees only its window) shows it as a long-lag correlation
falling below ``s_id²``, towards 0.

Two measures, for a long latent video ``[N, C, H, W]`` (what ``--save-latents`` writes, read with
:func:`miga.evaluation.latents.read_latents`, or ``torch.stack(list(LongVideo(...).latents()))``):

* **lag correlation** (:func:`lag_correlations`): ``r(d) = Σ_t <z_t, z_{t+d}> / sqrt(Σ_t |z_t|² Σ_t |z_{t+d}|²)``
  pooled over channels, pixels and all ``t``, for ``d`` in :data:`LAGS` shorter than the video; prior value
  ``k(d)``.
* **identity estimate and its drift** (:func:`identity_estimate`, :func:`identity_drift`): the mean of a block
  of ``B`` frames averages the motion away (its motion variance is ``s_m² v_B`` with
  ``v_B = B⁻² Σ_{|m|<B} (B-|m|) rho**|m|``, 0.42 for B = 32 at rho = 0.9) and keeps the identity whole. Two
  block means whose starts are ``d`` apart have covariance ``c_B(d) = B⁻² Σ_{|m|<B} (B-|m|) k(d+m)`` per
  pixel, so their expected correlation is ``c_B(d) / c_B(0)``, tending to ``s_id² / (s_id² + s_m² v_B)``
  (0.70 for B = 32, s_id² = 0.5). The drift is the correlation of the block at the video's start with the
  block ``d`` frames later.

Every measured number comes with the prior's exact value (``prior``) and **what a true sample of the world
gives**: ``prior_mean`` and ``prior_sd``, the mean and standard deviation of the same estimator on an exact
prior draw of the same length and latent size (the delta method, second order for the mean and first for the
sd, on the exact covariances of the quadratic forms involved: :func:`_ratio_moments`; checked against
exact draws in tests/test_gaussian_identity.py), and ``z = (measured - prior_mean) / prior_sd``. One video is
a small sample of its identity (about ``C·H·W / mean(P²)`` independent pixels), so a single true sample can
sit 0.1 from ``k(d)`` on small latents (``prior_sd`` 0.075 at lag 256 for 4x4x4 latents): compare with
``prior_sd``. :func:`identity_report` adds the same numbers measured on an actual prior
draw (``GaussianWorld.sample_prior``). Everything returned is plain JSON-ready dicts and lists.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch

LAGS = (1, 16, 64, 128, 256, 512, 1024)
"""Lags at which :func:`lag_correlations` measures (those shorter than the video)."""

BLOCK = 32
"""Default block length of the identity estimate (frames)."""


class Prior:
    """The numbers of a Gaussian world the metrics need: ``identity_share`` (``s_id²``), ``rho`` and the
    spatial power spectrum ``[H, W]`` (mean 1). ``Prior.of(world)`` takes them from a ``GaussianWorld``."""

    def __init__(self, identity_share: float, rho: float, spectrum: torch.Tensor | np.ndarray | None = None):
        self.identity_share, self.rho = float(identity_share), float(rho)
        self.spectrum = None if spectrum is None else np.asarray(torch.as_tensor(spectrum).cpu(), np.float64)

    @classmethod
    def of(cls, world: Any) -> "Prior":
        return cls(world.identity_share, world.rho, getattr(world, "spectrum", None))

    def k(self, lag) -> np.ndarray:
        """Prior correlation of frames ``lag`` apart: ``s_id² + s_m² rho**|lag|``."""
        s = self.identity_share
        return s + (1.0 - s) * self.rho ** np.abs(np.asarray(lag, dtype=np.float64))

    def block_cov(self, lag, block: int) -> np.ndarray:
        """``c_B(lag)``: per-pixel covariance of two ``block``-frame means whose starts are ``lag`` apart."""
        m = np.arange(-(block - 1), block)
        lag = np.asarray(lag, dtype=np.float64)
        return (((block - np.abs(m)) * self.k(lag[..., None] + m)).sum(-1)) / block**2

    def block_correlation(self, lag, block: int) -> np.ndarray:
        """Expected correlation of two block means ``lag`` apart, ``c_B(lag) / c_B(0)``."""
        return self.block_cov(lag, block) / self.block_cov(0, block)

    def spatial_factor(self, shape: tuple[int, int, int]) -> float | None:
        """``C·Σ_k P_k²`` over the latent's channels and frequencies (the variance of a pooled quadratic form
        per unit of temporal trace), or ``None`` without a spectrum of this size."""
        c, h, w = shape
        if self.spectrum is None or self.spectrum.shape != (h, w):
            return None
        return float(c * (self.spectrum**2).sum())


# ----------------------------------------------------------------------------------------- measuring

def centred(latents: torch.Tensor, mu: torch.Tensor | Sequence[float] | None = None) -> torch.Tensor:
    """``latents [N, C, H, W]`` as float64 minus the per-channel prompt mean ``mu`` (if given)."""
    z = torch.as_tensor(latents).detach().to("cpu", torch.float64)
    if z.ndim != 4:
        raise ValueError(f"expected latents [N, C, H, W], got shape {tuple(z.shape)}")
    if mu is not None:
        z = z - torch.as_tensor(mu).detach().to("cpu", torch.float64).reshape(1, -1, 1, 1)
    return z


def _corr(a: torch.Tensor, b: torch.Tensor) -> float:
    den = float(((a * a).sum() * (b * b).sum()).sqrt())
    return float((a * b).sum()) / den if den > 0 else float("nan")


def lag_correlations(latents: torch.Tensor, mu=None, lags: Sequence[int] = LAGS) -> dict[int, float]:
    """Pooled correlation of frames ``d`` apart for each ``d`` in ``lags`` shorter than the video."""
    z = centred(latents, mu)
    n = len(z)
    return {int(d): _corr(z[: n - d], z[d:]) for d in lags if 0 <= d < n}


def identity_estimate(latents: torch.Tensor, mu=None, block: int = BLOCK) -> torch.Tensor:
    """Per-frame identity estimate ``[N, C, H, W]``: frame t's is the mean of the ``block`` frames starting
    at ``clamp(t - block // 2, 0, N - block)`` (centred on t away from the ends; every estimate is a mean of
    ``block`` frames, so its statistics are those of :meth:`Prior.block_cov`)."""
    z = centred(latents, mu)
    n = len(z)
    if not 1 <= block <= n:
        raise ValueError(f"block must lie in [1, {n}] for {n} frames, got {block}")
    csum = torch.cat([torch.zeros_like(z[:1]), z.cumsum(0)])
    means = (csum[block:] - csum[:-block]) / block  # [N - block + 1]: block means by start
    starts = (torch.arange(n) - block // 2).clamp(0, n - block)
    return means[starts]


def _block_means(z: torch.Tensor, starts: Sequence[int], block: int) -> list[torch.Tensor]:
    return [z[s:s + block].mean(0) for s in starts]


def identity_drift(latents: torch.Tensor, mu=None, block: int = BLOCK,
                   distances: Sequence[int] = LAGS) -> dict[int, float]:
    """Correlation of the identity estimate of the first ``block`` frames with the one ``d`` frames later
    (block starts 0 and d), for each ``d`` in ``distances`` with ``d + block <= N``."""
    z = centred(latents, mu)
    ds = [int(d) for d in distances if d + block <= len(z)]
    first, *later = _block_means(z, [0, *ds], block)
    return {d: _corr(first, b) for d, b in zip(ds, later)}


# ----------------------------------------------------------------------------------------- the prior's spread

def _pair_trace(k, o1: int, n1: int, d1: int, o2: int, n2: int, d2: int) -> float:
    """``tr(M1 K M2 K)`` for ``M = sym(Σ_{i in [o, o+n)} E_{i, i+d})`` and Toeplitz ``K[i, j] = k(i - j)``.

    With pairs (a, b) = (i, i+d1), (c, e) = (j, j+d2): ``tr = ½ Σ [k(b-c) k(e-a) + k(b-e) k(c-a)]``, a
    function of ``m = j - i`` only, summed with the number of (i, j) having that difference: O(N)."""
    m = np.arange(o2 - (o1 + n1 - 1), o2 + n2 - o1)
    count = np.clip(np.minimum(o1 + n1, o2 + n2 - m) - np.maximum(o1, o2 - m), 0, None)
    return 0.5 * float((count * (k(m - d1) * k(m + d2) + k(m + d2 - d1) * k(m))).sum())


def _ratio_moments(mean: np.ndarray, cov: np.ndarray) -> tuple[float, float]:
    """Bias (second order) and sd (first order) of ``Q0 / sqrt(Q1 Q2)`` about ``E Q0 / sqrt(E Q1 E Q2)``,
    from the means and covariance of (Q0, Q1, Q2) (delta method)."""
    q0, q1, q2 = mean
    s = np.sqrt(q1 * q2)
    r = q0 / s
    grad = np.array([1.0 / s, -r / (2 * q1), -r / (2 * q2)])
    hess = np.array([[0.0, -0.5 / (q1 * s), -0.5 / (q2 * s)],
                     [-0.5 / (q1 * s), 0.75 * r / q1**2, 0.25 * r / (q1 * q2)],
                     [-0.5 / (q2 * s), 0.25 * r / (q1 * q2), 0.75 * r / q2**2]])
    return 0.5 * float((hess * cov).sum()), float(np.sqrt(max(grad @ cov @ grad, 0.0)))


def _lag_forms(prior: Prior, frames: int, lag: int, shape: tuple[int, int, int]):
    spatial = prior.spatial_factor(shape)
    if spatial is None or not 0 <= lag < frames:
        return None
    n = frames - lag
    forms = [(0, lag), (0, 0), (lag, 0)]  # (offset, shift): Σ z_t z_{t+d}, Σ z_t², Σ z_{t+d}²
    mean = np.array([n * float(prior.k(d)) for _, d in forms])  # per unit of C H W ...
    cov = np.array([[2 * _pair_trace(prior.k, o1, n, d1, o2, n, d2) for o2, d2 in forms] for o1, d1 in forms])
    c, h, w = shape
    return mean, cov * spatial / (c * h * w) ** 2  # ... so the covariance is divided by (C H W)²


def lag_correlation_moments(prior: Prior, frames: int, lag: int, shape: tuple[int, int, int],
                            videos: int = 1) -> tuple[float, float] | None:
    """``(bias, sd)`` of :func:`lag_correlations` at ``lag`` about ``k(lag)`` on exact prior draws of
    ``frames`` latents of ``shape``, pooled over ``videos`` independent draws (sums of independent forms:
    means and covariances add). For a real Gaussian ``z`` and symmetric ``M``,
    ``Cov(zᵀM1z, zᵀM2z) = 2 tr(M1 Σ M2 Σ)``; with ``Σ = K_T ⊗ Σ_S`` per channel this is
    ``2 C Σ_k P_k² tr(M1 K_T M2 K_T)`` (:func:`_pair_trace`); the means are ``C H W n k(d)``. ``None``
    without a spectrum of this size."""
    forms = _lag_forms(prior, frames, lag, shape)
    if forms is None:
        return None
    mean, cov = forms
    return _ratio_moments(mean * videos, cov * videos)


def identity_drift_moments(prior: Prior, distance: int, block: int,
                           shape: tuple[int, int, int]) -> tuple[float, float] | None:
    """``(bias, sd)`` of :func:`identity_drift` at ``distance`` about ``c_B(d) / c_B(0)`` on exact prior
    draws: the block means are linear in z, so the forms are ``zᵀ sym(x yᵀ) z`` with block-indicator vectors
    x, y (scaled by 1/B) and ``tr(M1 K M2 K) = ½[(y1ᵀKx2)(y2ᵀKx1) + (y1ᵀKy2)(x2ᵀKx1)]``, each factor a
    ``c_B`` of the gap between block starts. ``None`` without a spectrum of this size."""
    spatial = prior.spatial_factor(shape)
    if spatial is None:
        return None
    forms = [(0, distance), (0, 0), (distance, distance)]  # block starts (x, y)

    def c(a, b):
        return float(prior.block_cov(b - a, block))

    mean = np.array([c(x, y) for x, y in forms])
    cov = np.array([[(c(y1, x2) * c(y2, x1) + c(y1, y2) * c(x2, x1)) for x2, y2 in forms] for x1, y1 in forms])
    c_, h, w = shape
    return _ratio_moments(mean, cov * spatial / (c_ * h * w) ** 2)


# ----------------------------------------------------------------------------------------- reports

def _rows(measured: dict[int, float], expected, moments, key: str) -> list[dict]:
    rows = []
    for d, value in measured.items():
        want, mom = float(expected(d)), moments(d)
        mean, sd = (None, None) if mom is None else (want + mom[0], mom[1])
        rows.append({key: d, "measured": value, "prior": want, "prior_mean": mean, "prior_sd": sd,
                     "z": None if not sd else (value - mean) / sd})
    return rows


def identity_metrics(latents: torch.Tensor, prior: Prior | Any, mu=None, *, lags: Sequence[int] = LAGS,
                     block: int = BLOCK) -> dict:
    """Lag correlations and identity drift of one latent video ``[N, C, H, W]`` against a Gaussian world's
    prior (a :class:`Prior` or a ``GaussianWorld``); ``mu`` is the prompt mean to remove (``encode_prompt``).

    Returns ``{"frames", "latent_shape", "identity_share", "rho", "block", "lag_correlation": [{"lag",
    "measured", "prior", "prior_mean", "prior_sd", "z"}], "identity_drift": [{"distance", ...the same}],
    "summary"}``; the summary (``None`` for a one-frame video) is the row of the longest lag measured, with
    ``ratio`` = measured / prior (about 1: the identity is kept as a true sample keeps it; about 0: forgotten)
    and ``consistent_with_prior`` (``|z| <= 4``; ``None`` without a spectrum for the sd)."""
    prior = prior if isinstance(prior, Prior) else Prior.of(prior)
    z = centred(latents, mu)
    n, shape = len(z), tuple(z.shape[1:])
    lag_rows = _rows(lag_correlations(z, lags=lags), prior.k,
                     lambda d: lag_correlation_moments(prior, n, d, shape), "lag")
    drift_rows = _rows(identity_drift(z, block=min(block, n), distances=lags),
                       lambda d: prior.block_correlation(d, min(block, n)),
                       lambda d: identity_drift_moments(prior, d, min(block, n), shape), "distance")
    summary = None
    if lag_rows:
        last = max(lag_rows, key=lambda row: row["lag"])
        summary = {"lag": last["lag"], "measured": last["measured"], "prior": last["prior"],
                   "prior_mean": last["prior_mean"], "prior_sd": last["prior_sd"], "z": last["z"],
                   "ratio": last["measured"] / last["prior"] if last["prior"] else None,
                   "consistent_with_prior": None if last["z"] is None else bool(abs(last["z"]) <= 4.0)}
    return {"frames": n, "latent_shape": list(shape), "identity_share": prior.identity_share, "rho": prior.rho,
            "block": min(block, n), "lag_correlation": lag_rows, "identity_drift": drift_rows, "summary": summary}


def prior_sample(world: Any, frames: int, seed: int = 0) -> torch.Tensor:
    """An exact draw ``[frames, C, H, W]`` of the world's prior (zero mean), seeded."""
    x = world.sample_prior(frames, generator=torch.Generator(device=world.device).manual_seed(seed))
    return x.permute(1, 0, 2, 3).contiguous()


def identity_report(latents: torch.Tensor, world: Any, mu=None, *, lags: Sequence[int] = LAGS,
                    block: int = BLOCK, prior_seed: int = 0) -> dict:
    """:func:`identity_metrics` of ``latents`` (``"video"``) and of an exact prior draw of the same length
    (``"prior_sample"``, seed ``prior_seed``): what a true sample of the world gives, beside ``prior_sd``."""
    if tuple(latents.shape[1:]) != tuple(world.latent_shape):
        raise ValueError(f"latents of shape {tuple(latents.shape[1:])} do not fit the world's "
                         f"{tuple(world.latent_shape)}")
    sample = prior_sample(world, len(latents), prior_seed)
    return {"video": identity_metrics(latents, world, mu, lags=lags, block=block),
            "prior_sample": identity_metrics(sample, world, lags=lags, block=block), "prior_seed": prior_seed}
