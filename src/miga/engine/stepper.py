"""Queue slots and ``ModelStep`` (method.md Sec. 3 primitives): one model call on a window whose frames
carry their own levels, classifier-free guidance, then a per-frame solver update of chosen frames."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch

from miga.engine.queue import Slot
from miga.engine.rng import KeyedNoise
from miga.engine.schedules import Schedule
from miga.engine.solvers import to_denoised


@dataclass
class WindowJob:
    """A window to denoise: ``slots`` in model order (guides first), the positions in it to update,
    the absolute latent index whose prompt conditions it (A3), and the purpose key of its noise."""

    slots: list[Slot]
    targets: Sequence[int]
    prompt_at: int
    purpose: str = "step"


@dataclass
class Stats:
    """Counters reported by ``--stats``: network evaluations (``nfe``: windows through the model, each
    guidance branch counted), model calls (``calls``: batches of them) and self-reflection (checks,
    triggered searches, adopted candidates, the NFE its searches spent and every score)."""

    nfe: int = 0
    calls: int = 0
    model_seconds: float = 0.0
    reflection_checks: int = 0
    reflection_triggers: int = 0
    reflection_adoptions: int = 0
    reflection_nfe: int = 0
    reflection_scores: list[float] = field(default_factory=list)


class WindowStepper:
    """Runs :class:`WindowJob` s through a backbone and a per-frame solver.

    Args:
        backbone: anything with ``predict(latents, levels, conds)`` and ``prediction``.
        schedule, solver: the level ladder and the per-frame solver (``miga.engine.solvers``).
        noise: keyed noise for stochastic solvers.
        prompt_index: maps an absolute latent index to the index of its prompt.
        conds: one encoded conditioning per prompt; ``uncond`` the negative prompt's.
        guidance_scale: classifier-free guidance ``u + g (c - u)``; 1 skips the unconditional branch.
        max_batch: windows of equal length batched into one model call (only where the caller says
            the windows are independent).
    """

    def __init__(self, backbone, schedule: Schedule, solver, noise: KeyedNoise, prompt_index,
                 conds: Sequence[Any], uncond: Any, guidance_scale: float, stats: Stats, max_batch: int = 1):
        self.backbone = backbone
        self.schedule = schedule
        self.solver = solver
        self.noise = noise
        self.prompt_index = prompt_index
        self.conds = list(conds)
        self.uncond = uncond
        self.guidance_scale = float(guidance_scale)
        self.stats = stats
        self.max_batch = max(1, int(max_batch))

    def with_signal_scale(self, end: float, steps: int, solver: str, eta: float) -> "WindowStepper":
        """This stepper, or (``end`` != 1) the same model, prompts, noise and counters on this schedule with a
        signal scale (``ScheduleConfig.signal_scale_end/steps``) and a new ``solver``: a base clip sampled by
        LVDM's own DDIM with VideoCrafter2's ``use_scale`` while the queue runs without it, as the released
        FIFO and MIGA codes do."""
        if end == 1.0:
            return self
        import copy
        from dataclasses import replace

        from miga.engine.solvers import make_solver

        other = copy.copy(self)
        other.schedule = Schedule(replace(self.schedule.config, signal_scale_end=end, signal_scale_steps=steps),
                                  self.schedule.steps)
        other.solver = make_solver(solver, other.schedule, eta)
        return other

    @torch.no_grad()
    def run(self, jobs: Sequence[WindowJob], batch: bool = True, limit: int | None = None) -> None:
        """Run jobs in order. With ``batch``, consecutive jobs of equal window length share one model
        call (at most ``limit`` of them, default ``max_batch``); each batch reads all its windows before
        writing any of them."""
        limit = (limit or self.max_batch) if batch else 1
        group: list[WindowJob] = []
        for job in jobs:
            if not job.targets:
                continue
            if self.is_identity(job):  # no model call for a step that changes nothing
                if group:  # the windows before it still read the levels they would have read
                    self._run_group(group)
                    group = []
                for i in job.targets:
                    job.slots[i].level -= 1
                continue
            if group and (len(group) >= limit or len(job.slots) != len(group[0].slots)):
                self._run_group(group)
                group = []
            group.append(job)
        if group:
            self._run_group(group)

    def is_identity(self, job: WindowJob) -> bool:
        """Every target's step joins two identical levels and the solver returns its input there."""
        return getattr(self.solver, "identity_on_equal_levels", False) and all(
            self.schedule.is_identity_step(job.slots[i].level) for i in job.targets)

    def predict_denoised(self, jobs: Sequence[WindowJob]) -> torch.Tensor:
        """x0 estimates ``[B, C, F, H, W]`` for a batch of equal-length windows (CFG applied)."""
        x = torch.stack([torch.stack([s.latent for s in job.slots], dim=1) for job in jobs])
        levels = [[s.level for s in job.slots] for job in jobs]
        noise_levels = self.schedule.noise_levels(levels)
        conds = [self.conds[self.prompt_index(job.prompt_at)] for job in jobs]
        cfg = self.guidance_scale != 1.0
        if cfg:
            n = len(jobs)
            x_in = torch.cat([x, x])
            nl = type(noise_levels)(*(torch.cat([t, t]) for t in
                                      (noise_levels.timesteps, noise_levels.alphas, noise_levels.sigmas)))
            conds_in = [self.uncond] * n + conds
        else:
            x_in, nl, conds_in = x, noise_levels, conds
        t0 = time.perf_counter()
        out = self.backbone.predict(x_in, nl, conds_in)
        if out.is_cuda:
            torch.cuda.synchronize(out.device)
        self.stats.model_seconds += time.perf_counter() - t0
        self.stats.nfe += x_in.shape[0]
        self.stats.calls += 1
        out = out.to(x.dtype)
        if cfg:
            u, c = out[:n], out[n:]
            out = u + self.guidance_scale * (c - u)
        return to_denoised(out, x, noise_levels.alphas, noise_levels.sigmas, self.backbone.prediction)

    def _run_group(self, jobs: Sequence[WindowJob]) -> None:
        denoised = self.predict_denoised(jobs)
        for b, job in enumerate(jobs):
            self.update(job, denoised[b])

    def update(self, job: WindowJob, denoised: torch.Tensor) -> None:
        """One solver step of ``job``'s target slots, in place, from the window's x0 estimate ``[C, F, H, W]``."""
        slots = [job.slots[i] for i in job.targets]
        x = torch.stack([s.latent for s in slots])
        x0 = denoised[:, list(job.targets)].transpose(0, 1)
        levels = [s.level for s in slots]
        noise = None
        if self.solver.stochastic:
            noise = self.noise.many([s.index for s in slots], levels, job.purpose + "/eta")
        new_x, new_states = self.solver.step(x, x0, levels, [s.state for s in slots], noise)
        for s, lat, st in zip(slots, new_x, new_states):
            s.latent, s.state, s.level = lat, st, s.level - 1


def sample_clip(stepper: WindowStepper, frames: int, first_index: int = 0, purpose: str = "clip",
                init: torch.Tensor | None = None) -> list[Slot]:
    """Standard T-step sampling of one short clip, all frames at one level (Eq. 1), from keyed noise or
    from ``init`` ``[frames, C, H, W]`` (the initial latents a reference pipeline was given)."""
    top = stepper.schedule.top
    if init is None:
        start = [stepper.noise.one(first_index + i, top, purpose + "/init") for i in range(frames)]
    else:
        start = list(init)
    slots = [Slot(first_index + i, start[i], top) for i in range(frames)]
    for _ in range(top):
        stepper.run([WindowJob(slots, range(frames), first_index, purpose)])
    return slots
