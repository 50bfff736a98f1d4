"""Noise schedules as a ladder of discrete levels.

Level convention used everywhere in the engine: level ``k`` runs from ``T`` (pure noise, where sampling
starts) down to ``0`` (clean). One solver step takes a latent from level ``k`` to ``k - 1``. Each level has
the forward process ``x = alpha_k * x0 + sigma_k * eps`` and, for ``k >= 1``, the timestep fed to the model.

Two families (method.md Sec. 4.2):
- ``ddpm``: the discrete DDPM schedule with linear-in-sqrt betas that VideoCrafter2 and FIFO-Diffusion use
  (diffusers calls it ``scaled_linear``), sampled on a DDIM sub-grid of timesteps.
- ``flow``: rectified-flow sigmas with a shift, as Wan2.1 uses them (``x = (1 - sigma) x0 + sigma eps``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, Sequence

import numpy as np
import torch


@dataclass(frozen=True)
class ScheduleConfig:
    """Everything that defines a schedule except its number of steps.

    Attributes:
        kind: ``ddpm`` or ``flow``.
        num_train_timesteps: length of the training schedule (1000 for every model we support).
        beta_start, beta_end, beta_schedule: DDPM betas; ``scaled_linear`` is linear in sqrt(beta)
            (VideoCrafter2: 0.00085 to 0.012).
        timestep_spacing: which training timesteps a T-step sampler visits (``ddpm`` only):
            ``linspace`` = round(linspace(0, N-1, T)) (VideoCrafter2 per method.md), ``leading`` =
            arange(T) * (N // T) + steps_offset (diffusers' DDIM default), ``trailing`` as diffusers.
        final_alpha_one: level 0 has alpha_bar = 1 (diffusers ``set_alpha_to_one``) rather than
            alpha_bar of timestep 0 (VideoCrafter2's DDIM).
        shift: flow-matching sigma shift ``shift*s / (1 + (shift-1)*s)`` (Wan: 5.0 in the paper's setup).
        signal_scale_end, signal_scale_steps: a model trained on ``scale(t)·x0`` instead of ``x0``, with
            ``scale(t)`` falling linearly from 1 at t = 0 to ``signal_scale_end`` at
            t = ``signal_scale_steps`` - 1 and constant after (VideoCrafter2's ``use_scale``: 0.7 and 400).
            DDIM then multiplies each step's x0 term by ``scale(t_prev) / scale(t)`` and ``add_noise`` scales x0 by
            ``scale(t)``, as LVDM's sampler does. 1.0 (the default) turns it off, as in FIFO/MIGA's code.
        flow_grid: (``flow`` only) the sigma grid before the shift: ``diffusers`` = ``linspace(1, 1/N, T)``
            (diffusers' UniPC with ``use_flow_sigmas``), ``wan`` = ``linspace(0.999, 0, T + 1)[:-1]`` in float32
            sigmas, as Wan2.1's own ``FlowUniPCMultistepScheduler`` (and the MIGA authors' Wan code) builds it.
        integer_timesteps: (``flow`` only) feed the model the whole timestep ``int(σ·N)`` rather than
            ``σ·N``, as diffusers' and Wan's own UniPC/flow schedulers do (their ``timesteps`` are int64,
            truncated); the solver still uses the exact σ. ``ddpm`` timesteps are grid integers anyway.
    """

    kind: Literal["ddpm", "flow"] = "ddpm"
    num_train_timesteps: int = 1000
    beta_start: float = 0.00085
    beta_end: float = 0.012
    beta_schedule: Literal["scaled_linear", "linear"] = "scaled_linear"
    timestep_spacing: Literal["linspace", "leading", "trailing"] = "linspace"
    steps_offset: int = 0
    final_alpha_one: bool = False
    shift: float = 1.0
    signal_scale_end: float = 1.0
    signal_scale_steps: int = 400
    integer_timesteps: bool = False
    flow_grid: Literal["diffusers", "wan"] = "diffusers"


@dataclass(frozen=True)
class NoiseLevels:
    """Per-frame noise of one window, all tensors of shape ``[B, F]`` (float64 on CPU).

    ``timesteps`` are what the model is fed, in its own units (DDPM: the integer grid t in [0, 999];
    flow: σ·1000, or ``int(σ·1000)`` where the model's reference sampler feeds whole timesteps);
    ``alphas``/``sigmas`` give the forward process ``x = α·x0 + σ·ε`` of each frame.
    """

    timesteps: torch.Tensor
    alphas: torch.Tensor
    sigmas: torch.Tensor

    def __post_init__(self) -> None:
        if not (self.timesteps.shape == self.alphas.shape == self.sigmas.shape) or self.timesteps.ndim != 2:
            raise ValueError("NoiseLevels tensors must all have shape [B, F]")


class Schedule:
    """A T-step ladder of levels: ``timesteps[k]``, ``alphas[k]``, ``sigmas[k]`` for k = 0..T.

    ``timesteps[0]`` is 0 and never fed to a model (level 0 is clean).
    """

    def __init__(self, config: ScheduleConfig, steps: int):
        if steps < 1:
            raise ValueError(f"a schedule needs at least 1 step, got {steps}")
        self.config = config
        self.steps = steps
        if config.kind == "ddpm":
            timesteps, alphas, sigmas = _ddpm_levels(config, steps)
        elif config.kind == "flow":
            timesteps, alphas, sigmas = _flow_levels(config, steps)
        else:
            raise ValueError(f"unknown schedule kind {config.kind!r}; use 'ddpm' or 'flow'")
        self.timesteps: list[float] = [float(t) for t in timesteps]
        self.alphas: list[float] = [float(a) for a in alphas]
        self.sigmas: list[float] = [float(s) for s in sigmas]
        self.signal_scales: list[float] = _signal_scales(config, self.timesteps)
        self.log_snr: list[float] = [
            math.log(a) - math.log(s) if s > 0 else math.inf for a, s in zip(self.alphas, self.sigmas)
        ]

    @property
    def top(self) -> int:
        """The noisiest level, where sampling starts (= T)."""
        return self.steps

    def is_identity_step(self, level: int) -> bool:
        """Whether the step from ``level`` to ``level - 1`` joins two identical levels (same alpha, sigma and
        signal scale): VideoCrafter2's DDIM grid ends with t = 0 at alpha_bar of timestep 0, and its level 0
        repeats it, so that last step changes nothing (its released samplers skip it)."""
        k = level
        return (k >= 1 and self.alphas[k] == self.alphas[k - 1] and self.sigmas[k] == self.sigmas[k - 1]
                and self.signal_scales[k] == self.signal_scales[k - 1])

    def noise_levels(self, levels: Sequence[Sequence[int]]) -> NoiseLevels:
        """Per-frame timesteps/alphas/sigmas ``[B, F]`` for a batch of windows' level lists."""
        t = torch.tensor([[self.timesteps[k] for k in row] for row in levels], dtype=torch.float64)
        a = torch.tensor([[self.alphas[k] for k in row] for row in levels], dtype=torch.float64)
        s = torch.tensor([[self.sigmas[k] for k in row] for row in levels], dtype=torch.float64)
        return NoiseLevels(timesteps=t, alphas=a, sigmas=s)

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, level: int) -> torch.Tensor:
        """``Noise(x, k) = alpha_k * x + sigma_k * eps`` (method.md Sec. 3 primitives; x scaled by the
        level's signal scale when the config has one)."""
        return self.alphas[level] * self.signal_scales[level] * x0 + self.sigmas[level] * noise


def _signal_scales(config: ScheduleConfig, timesteps: Sequence[float]) -> list[float]:
    """``scale(t)`` of each level (LVDM ``scale_arr``: ``linspace(1, end, steps)`` then ``end``); all 1 when off."""
    if config.signal_scale_end == 1.0:
        return [1.0] * len(timesteps)
    if config.kind != "ddpm" or config.signal_scale_steps < 2:
        raise ValueError("a signal scale needs a ddpm schedule and signal_scale_steps >= 2")
    ramp = np.linspace(1.0, config.signal_scale_end, config.signal_scale_steps)
    return [float(ramp[int(t)]) if int(t) < len(ramp) else float(config.signal_scale_end) for t in timesteps]


def ddpm_alphas_cumprod(config: ScheduleConfig) -> np.ndarray:
    """alpha_bar over the training timesteps, float64."""
    n = config.num_train_timesteps
    if config.beta_schedule == "scaled_linear":
        betas = np.linspace(config.beta_start**0.5, config.beta_end**0.5, n, dtype=np.float64) ** 2
    elif config.beta_schedule == "linear":
        betas = np.linspace(config.beta_start, config.beta_end, n, dtype=np.float64)
    else:
        raise ValueError(f"unknown beta_schedule {config.beta_schedule!r}")
    return np.cumprod(1.0 - betas)


def ddpm_timestep_grid(config: ScheduleConfig, steps: int) -> np.ndarray:
    """Ascending training timesteps t_1 < ... < t_T visited by a T-step sampler."""
    n = config.num_train_timesteps
    if steps > n:
        raise ValueError(f"{steps} steps exceed the {n} training timesteps")
    if config.timestep_spacing == "linspace":
        grid = np.linspace(0, n - 1, steps).round()
    elif config.timestep_spacing == "leading":
        grid = np.arange(steps) * (n // steps) + config.steps_offset
    elif config.timestep_spacing == "trailing":
        grid = np.arange(n, 0, -n / steps).round()[::-1] - 1
    else:
        raise ValueError(f"unknown timestep_spacing {config.timestep_spacing!r}")
    return grid.astype(np.int64)


def _ddpm_levels(config: ScheduleConfig, steps: int):
    abar = ddpm_alphas_cumprod(config)
    grid = ddpm_timestep_grid(config, steps)
    abar0 = 1.0 if config.final_alpha_one else float(abar[0])
    abars = [abar0] + [float(abar[t]) for t in grid]
    timesteps = [0] + [int(t) for t in grid]
    alphas = [math.sqrt(a) for a in abars]
    sigmas = [math.sqrt(max(0.0, 1.0 - a)) for a in abars]
    return timesteps, alphas, sigmas


def flow_sigmas(config: ScheduleConfig, steps: int) -> np.ndarray:
    """Descending shifted flow sigmas for levels T..1 (the grid of diffusers' UniPC ``use_flow_sigmas``, or of
    Wan's own scheduler with ``flow_grid="wan"``), float64."""
    n = config.num_train_timesteps
    if config.flow_grid == "wan":  # sigma_max = 1 - 1/N held in float32, down to 0, the last point dropped
        s = np.linspace(float(np.float32(1.0 - 1.0 / n)), 0.0, steps + 1)[:-1]
        return config.shift * s / (1.0 + (config.shift - 1.0) * s)
    if config.flow_grid != "diffusers":
        raise ValueError(f"unknown flow grid {config.flow_grid!r}; use 'diffusers' or 'wan'")
    s = np.linspace(1.0, 1.0 / n, steps + 1)[:-1]
    s = config.shift * s / (1.0 + (config.shift - 1.0) * s)
    if abs(s[0] - 1.0) < 1e-6:  # keep log(alpha) finite at the top level, as diffusers does
        s[0] -= 1e-6
    return s


def flow_model_timesteps(config: ScheduleConfig, sigmas: Sequence[float]) -> list[float]:
    """What a flow model is fed at each sigma: ``σ·N``, or with ``integer_timesteps`` the whole part
    ``int(σ·N)``, as diffusers' schedulers do (``torch.from_numpy(sigmas * N).to(torch.int64)``) and Wan's
    and SkyReels' own FlowUniPC. The solver keeps the exact sigmas."""
    timesteps = [s * config.num_train_timesteps for s in sigmas]
    if config.integer_timesteps:
        timesteps = [float(math.floor(t)) for t in timesteps]
    return timesteps


def _flow_levels(config: ScheduleConfig, steps: int):
    desc = flow_sigmas(config, steps)  # levels T..1
    sigmas = [0.0] + [float(x) for x in desc[::-1]]  # index = level
    timesteps = flow_model_timesteps(config, sigmas)
    if config.flow_grid == "wan":  # Wan's scheduler keeps its sigmas in float32 (timesteps from the float64 ones)
        sigmas = [float(np.float32(x)) for x in sigmas]
    alphas = [1.0 - s for s in sigmas]
    return timesteps, alphas, sigmas
