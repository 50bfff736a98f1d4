"""An exact Gaussian video world: a weight-free backbone whose denoiser is the true posterior mean.

Each video is ``x0 = mu[c] + z`` with ``z = identity + motion`` per channel: the *identity* is one spatially
correlated field per video, constant in time (variance ``s_id²``); the *motion* is an AR(1) process in time
(``rho``, variance ``s_m² = 1 - s_id²``). Both have the spatial covariance ``Σ_S``, circulant with power
spectrum ``P(k) ∝ (|k|² + k0²)^(-beta)`` normalised to unit per-pixel variance, so
``z ~ N(0, K_T ⊗ Σ_S)`` with ``K_T[i, j] = s_id² + s_m² rho**|i-j|``: per spatial frequency the temporal
covariance is ``P(k) (s_id² + s_m² rho**|t-s|)``, the correlation of frames at lag d is
``s_id² + s_m² rho**d`` (it never falls below ``s_id²``: a long video has an identity to keep), and the total
variance is 1 whatever ``s_id``. ``identity_share = s_id² = 0`` is the stationary AR(1) world of earlier
versions, exactly. The orthonormal 2-D FFT decouples spatial frequencies, so denoising a window with
arbitrary per-frame noise levels is one small F×F linear map per frequency (evaluation.md Sec. 3.2); it stays
exact with the identity because identity and motion are jointly Gaussian (only ``K_T`` changes).
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from typing import Literal, Sequence

import numpy as np
import torch
import torch.nn.functional as F_nn

from miga.backbones.base import NoiseLevels
from miga.backbones.registry import BackboneKind, builtin_options
from miga.engine.schedules import ScheduleConfig
from miga.errors import MigaError

# Colour of each latent channel (columns: warm orange, teal, blue, magenta), cycled for more channels.
_PALETTE = torch.tensor(
    [[1.0, -0.2, -0.1, 0.6],
     [0.3, 0.8, 0.2, -0.4],
     [-0.2, 0.4, 1.0, 0.5]],
    dtype=torch.float64,
)


class GaussianDecoder:
    """Streaming decoder: fixed linear colour map, bilinear ×8 upsampling, one frame per latent."""

    stateless = True  # each frame depends on its own latent only (resuming replays just a few)

    def __init__(self, colours: torch.Tensor):
        self.colours = colours  # [3, C]

    def push(self, latent: torch.Tensor) -> list[np.ndarray]:
        x = latent.detach().to("cpu", torch.float64)
        rgb = (0.5 + 0.2 * torch.einsum("rc,chw->rhw", self.colours, x)).clamp(0.0, 1.0)
        rgb = F_nn.interpolate(rgb[None], scale_factor=8, mode="bilinear", align_corners=False)[0]
        return [(rgb.permute(1, 2, 0) * 255.0).round().clamp(0, 255).to(torch.uint8).numpy()]

    def flush(self) -> list[np.ndarray]:
        return []


class GaussianWorld:
    """Backbone with an exact x0 denoiser under a stationary Gaussian video prior with a persistent identity.

    ``identity_share`` is ``s_id²``, the share of each pixel's variance held by the video's identity (a
    field constant in time); the rest, ``s_m² = 1 - s_id²``, is AR(1) motion with coefficient ``rho``. The
    default 0.5 puts the correlation of far-apart frames at 0.5, halfway between a video that forgets its
    identity (0) and a frozen one (1), so drift and freezing show equally, while half the variance still
    moves (lag 1: 0.95 with ``rho = 0.9``). ``identity_share=0`` is the AR(1) world without identity.

    ``mode="exact"`` uses every frame's own noise level; ``mode="clip"`` mimics a model trained with one
    level per clip by replacing all frames' (alpha, sigma) with their window means.
    """

    name = "gaussian"
    prediction = "x0"
    default_schedule = ScheduleConfig(kind="flow", shift=1.0)
    default_preset = "gaussian"
    negative_prompt = ""
    fps = 8
    frames_per_latent = 1
    cache_size = 512

    def __init__(
        self,
        *,
        channels: int = 4,
        height: int = 128,
        width: int = 128,
        native_frames: int = 16,
        rho: float = 0.9,
        beta: float = 1.2,
        k0: float = 1.0,
        identity_share: float = 0.5,
        mode: Literal["exact", "clip"] = "exact",
        device: str | torch.device = "cpu",
    ):
        for label, px in (("height", height), ("width", width)):
            if px % 8 or px < 16:
                raise MigaError(f"{label} must be a multiple of 8 and at least 16 pixels (e.g. 64, 128), got {px}")
        if channels < 1 or native_frames < 1:
            raise MigaError(f"channels and native_frames must be >= 1, got {channels} and {native_frames}")
        if not -1.0 < rho < 1.0:
            raise MigaError(f"rho must lie in (-1, 1), got {rho}")
        if k0 <= 0:
            raise MigaError(f"k0 must be > 0, got {k0}")
        if not 0.0 <= identity_share < 1.0:
            raise MigaError(f"identity_share (the identity's share of the variance, s_id^2) must lie in [0, 1), "
                            f"got {identity_share}")
        if mode not in ("exact", "clip"):
            raise MigaError(f"mode must be 'exact' or 'clip', got {mode!r}")
        self.channels, self.rho, self.beta, self.k0, self.mode = channels, rho, beta, k0, mode
        self.identity_share = float(identity_share)
        self.native_frames = native_frames
        self.device = torch.device(device)
        h, w = height // 8, width // 8
        self.latent_shape = (channels, h, w)

        # Spectrum over integer frequency indices, flattened in (H, W) order; mean(P) == 1.
        ky = torch.fft.fftfreq(h, dtype=torch.float64) * h
        kx = torch.fft.fftfreq(w, dtype=torch.float64) * w
        k2 = (ky[:, None] ** 2 + kx[None, :] ** 2).round().long().flatten()
        power = (k2.double() + k0**2) ** (-beta)
        self.spectrum = (power / power.mean()).reshape(h, w).to(self.device)
        # Many frequencies share |k|²: gains are solved once per distinct value, then gathered.
        k2_unique, inverse = torch.unique(k2, return_inverse=True)
        self._p_unique = ((k2_unique.double() + k0**2) ** (-beta) / power.mean()).to(self.device)
        self._inverse = inverse.to(self.device)
        self._gains: OrderedDict[tuple, torch.Tensor] = OrderedDict()
        self.colours = _PALETTE[:, torch.arange(channels) % 4] * min(1.0, (4 / channels) ** 0.5)

    # ----------------------------------------------------------------------------------- prior

    def lag_correlation(self, lag):
        """The prior's correlation of frames ``lag`` apart, ``s_id² + s_m² rho**|lag|`` (a float, or an
        array for an array of lags); also every frequency's temporal correlation."""
        s_id2 = self.identity_share
        value = s_id2 + (1.0 - s_id2) * self.rho ** np.abs(np.asarray(lag, dtype=np.float64))
        return float(value) if value.ndim == 0 else value

    def temporal_kernel(self, frames: int) -> torch.Tensor:
        """``K_T[i, j] = s_id² + s_m² rho**|i-j|``, float64 ``[frames, frames]``."""
        t = torch.arange(frames, dtype=torch.float64, device=self.device)
        motion = self.rho ** (t[:, None] - t[None, :]).abs()
        if not self.identity_share:
            return motion
        return self.identity_share + (1.0 - self.identity_share) * motion

    def _colour(self, white: torch.Tensor) -> torch.Tensor:
        """White noise ``[..., H, W]`` -> a field with the spatial spectrum P (FFT colouring)."""
        return torch.fft.ifft2(torch.fft.fft2(white, norm="ortho") * self.spectrum.sqrt(), norm="ortho").real

    def sample_prior(
        self, frames: int, generator: torch.Generator | None = None, mu: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Exact prior draw ``[C, frames, H, W]`` (float64): ``s_m`` times AR(1) motion (Cholesky in time)
        plus ``s_id`` times one identity field per channel, both coloured by FFT in space. The motion's noise
        is drawn first, so with ``identity_share=0`` a generator gives the draws of the AR(1) world."""
        c, h, w = self.latent_shape
        white = torch.randn(c, frames, h, w, generator=generator, dtype=torch.float64, device=self.device)
        t = torch.arange(frames, dtype=torch.float64, device=self.device)
        ar1 = self.rho ** (t[:, None] - t[None, :]).abs()
        z = torch.einsum("ij,cjhw->cihw", torch.linalg.cholesky(ar1), self._colour(white))
        if self.identity_share:
            identity = self._colour(torch.randn(c, 1, h, w, generator=generator, dtype=torch.float64,
                                                device=self.device))
            z = (1.0 - self.identity_share) ** 0.5 * z + self.identity_share**0.5 * identity
        return z if mu is None else z + mu.to(z)[:, None, None, None]

    # ----------------------------------------------------------------------------------- backbone

    def encode_prompt(self, text: str) -> torch.Tensor:
        """Per-channel prior mean in [-2, 2] hashed from ``text`` (it sets the video's colours); ``""`` gives zeros."""
        if not text:
            return torch.zeros(self.channels, dtype=torch.float64, device=self.device)
        vals = [
            int.from_bytes(hashlib.blake2b(f"{c}:{text}".encode(), digest_size=8).digest(), "little") / 2**64
            for c in range(self.channels)
        ]
        return torch.tensor(vals, dtype=torch.float64, device=self.device) * 4.0 - 2.0

    def predict(self, latents: torch.Tensor, levels: NoiseLevels, conds: Sequence[torch.Tensor]) -> torch.Tensor:
        """Exact posterior mean ``E[x0 | latents]`` for ``[B, C, F, H, W]`` with per-frame levels."""
        b, c, f, h, w = latents.shape
        alphas = levels.alphas.to(self.device, torch.float64)
        sigmas = levels.sigmas.to(self.device, torch.float64)
        if self.mode == "clip":
            alphas = alphas.mean(1, keepdim=True).expand(b, f)
            sigmas = sigmas.mean(1, keepdim=True).expand(b, f)
        mu = torch.stack([torch.as_tensor(cd).to(self.device, torch.float64) for cd in conds])  # [B, C]
        gains = torch.stack([self._gain(a, s) for a, s in zip(alphas, sigmas)])[:, self._inverse]  # [B, HW, F, F]

        y = latents.to(self.device, torch.float64) - alphas[:, None, :, None, None] * mu[:, :, None, None, None]
        yk = torch.view_as_real(torch.fft.fft2(y, norm="ortho").reshape(b, c, f, h * w))
        zk = torch.einsum("bkij,bcjkr->bcikr", gains, yk).contiguous()
        z = torch.fft.ifft2(torch.view_as_complex(zk).reshape(b, c, f, h, w), norm="ortho").real
        return (z + mu[:, :, None, None, None]).to(latents.device, latents.dtype)

    def _gain(self, alphas: torch.Tensor, sigmas: torch.Tensor) -> torch.Tensor:
        """``P K A (P A K A + D)^{-1}`` per distinct |k|², ``[U, F, F]``, from a bounded LRU cache."""
        key = (tuple(alphas.tolist()), tuple(sigmas.tolist()))
        gain = self._gains.get(key)
        if gain is not None:
            self._gains.move_to_end(key)
            return gain
        p = self._p_unique[:, None, None]
        ak = alphas[:, None] * self.temporal_kernel(len(alphas))  # A K
        m = p * ak * alphas[None, :] + torch.diag(sigmas**2)  # P A K A + D (symmetric)
        gain = torch.linalg.solve(m, p * ak).transpose(-1, -2)  # (M^{-1} A K P)^T = P K A M^{-1}
        self._gains[key] = gain
        while len(self._gains) > self.cache_size:
            self._gains.popitem(last=False)
        return gain

    def decoder(self) -> GaussianDecoder:
        return GaussianDecoder(self.colours)


def video_statistics(latents: torch.Tensor, mu: torch.Tensor | None = None) -> dict[str, float]:
    """Pooled lag-1 temporal correlation and mean square of ``latents - mu`` (``[C, F, H, W]``); the prior's
    values are ``GaussianWorld.lag_correlation(1)`` (``s_id² + s_m² rho``) and 1. Longer lags and the
    identity: :mod:`miga.evaluation.identity`."""
    z = latents.detach().to(torch.float64)
    if mu is not None:
        z = z - mu.to(z)[:, None, None, None]
    a, b = z[:, :-1], z[:, 1:]
    lag1 = (a * b).sum() / ((a * a).sum() * (b * b).sum()).sqrt()
    return {"lag1": float(lag1), "variance": float((z * z).mean())}


def load_gaussian(model: str = "gaussian", *, height: int | None = None, width: int | None = None,
                  device: str | None = None, dtype: str | None = None, **kwargs) -> GaussianWorld:
    """``gaussian`` (exact per-frame denoiser) or ``gaussian-clip`` (one level per clip, like a foundation
    model trained on clips)."""
    size = builtin_options(model, height, width, dtype)
    mode = "clip" if model == "gaussian-clip" else "exact"
    return GaussianWorld(mode=mode, device=device or "cpu", **size, **kwargs)


KIND = BackboneKind(
    name="gaussian", summary="the exact Gaussian video world: gaussian (exact denoiser), gaussian-clip (one "
    "noise level per clip, like a foundation model)", needs="nothing (built in)",
    names=("gaussian", "gaussian-clip"), load=load_gaussian)
