"""Full-sequence sampling: all N latents at one level, denoised together (FreeNoise, FreeLong, FreePCA).

Unlike FIFO and MIGA there is no queue of staggered levels: every step runs the model once (per guidance
branch) on the whole ``[C, N, H, W]`` sequence at one level, with the method's temporal-attention policy
installed, and updates every latent. Nothing is final before the last step, so the memory of the model call
grows with N (``shared/spec/baselines.md`` §2.4, §3.3, §4.4).

The engine knows no model and no method: the caller injects

- ``prepare_noise(noise [N, C, H, W], generator) -> noise``: the method's rule for the initial noise (FreeNoise's
  rescheduling, FreePCA's mean reuse) or None;
- ``context(step, steps) -> context manager``: what every model call of step ``step`` (0-based, of ``steps``)
  runs inside (the method's attention policy, with FreePCA's step gate where it gates by step) or None.
"""

from __future__ import annotations

import contextlib
from typing import Callable, ContextManager, Optional

import torch

from miga.engine.queue import QueueEngine, pack_slots, unpack_slots
from miga.engine.rng import draw_key
from miga.engine.stepper import Slot, WindowJob, WindowStepper

NoiseRule = Callable[[torch.Tensor, torch.Generator], torch.Tensor]
StepContext = Callable[[int, int], ContextManager]

PURPOSE = "full"
"""The noise key of full-sequence sampling: initial noise ``full/init`` (as :func:`~miga.engine.stepper.sample_clip`
with ``purpose="full"``), eta noise ``full/eta``."""


class FullSequenceEngine(QueueEngine):
    """``num_latents`` latents sampled together, T steps at one level, handed out in order after the last step.

    State: the N slots (latents, level, solver histories) and the step count; a state taken between two steps
    continues with the same latents (keyed noise; the initial-noise rule's generator is keyed too).
    """

    def __init__(self, stepper: WindowStepper, num_latents: int, method: str,
                 prepare_noise: Optional[NoiseRule] = None, context: Optional[StepContext] = None,
                 purpose: str = PURPOSE):
        super().__init__()
        self.method = method
        self.stepper, self.num_latents = stepper, int(num_latents)
        self.prepare_noise, self.context, self.purpose = prepare_noise, context, purpose
        self.slots: list[Slot] = []
        self.steps_done = 0
        self.emitted = False

    @property
    def steps(self) -> int:
        return self.stepper.schedule.top

    @property
    def finished(self) -> bool:
        return self.emitted

    def start(self) -> None:
        """Keyed N(0, I) noise for every latent, then the method's initial-noise rule."""
        top, noise = self.steps, self.stepper.noise
        start = torch.stack([noise.one(i, top, self.purpose + "/init") for i in range(self.num_latents)])
        if self.prepare_noise is not None:
            generator = torch.Generator().manual_seed(draw_key(noise.seed, 0, top, self.purpose + "/rule"))
            start = self.prepare_noise(start, generator)
        self.slots = [Slot(i, start[i], top) for i in range(self.num_latents)]

    def step(self) -> list[Slot]:
        """One step of the whole sequence; after the last, every latent is finished."""
        context = self.context(self.steps_done, self.steps) if self.context is not None else contextlib.nullcontext()
        with context:
            self.stepper.run([WindowJob(self.slots, range(self.num_latents), 0, self.purpose)])
        self.steps_done += 1
        if self.steps_done < self.steps:
            return []
        assert all(s.level == 0 for s in self.slots), "full-sequence latents must be clean after the last step"
        self.emitted = True
        out, self.slots = [Slot(s.index, s.latent, 0) for s in self.slots], []
        return out

    def state_dict(self) -> dict:
        return {**super().state_dict(), "slots": pack_slots(self.slots), "steps_done": self.steps_done,
                "emitted": self.emitted}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.slots = unpack_slots(state["slots"])
        self.steps_done, self.emitted = int(state["steps_done"]), bool(state["emitted"])
