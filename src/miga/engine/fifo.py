"""FIFO-Diffusion (Kim et al. 2024), the baseline (method.md decision 3; Alg. 1-3, (A1))."""

from __future__ import annotations

from typing import Iterator

from miga.config import FIFOConfig
from miga.engine.queue import QueueEngine, pack_slots, unpack_slots
from miga.engine.stepper import Slot, WindowJob, WindowStepper, sample_clip
from miga.engine.tiling import fifo_windows


class FIFOEngine(QueueEngine):
    """FIFO-Diffusion as a resumable object: ``num_latents`` finished latents in order.

    The queue holds T = f_0 * n latents, slot j at level j + 1 (diagonal denoising, Eq. 2). It starts
    from a base clip forward-noised as in (A1): the last f_0 slots hold the clip's frames, the others
    copies of its first frame (the warm-up, dropped from the output by default). Each pass runs the
    lookahead windows (Alg. 3), the head latent leaves clean and fresh noise enters the tail (Alg. 2).
    State: the queue (latents, levels, solver histories), the next fresh index and the output count.
    """

    method = "fifo"

    def __init__(self, stepper: WindowStepper, cfg: FIFOConfig, native_frames: int, num_latents: int):
        super().__init__()
        self.stepper, self.cfg, self.f0, self.num_latents = stepper, cfg, native_frames, num_latents
        self.head = native_frames // 2 if cfg.lookahead else 0  # clean padding latents in front (Alg. 1 l. 3)
        self.queue: list[Slot] = []
        self.next_index = native_frames
        self.emitted = 0

    @property
    def finished(self) -> bool:
        return self.emitted >= self.num_latents

    def start(self) -> None:
        """The base clip, forward-noised into the queue (A1)."""
        sch, noise, cfg = self.stepper.schedule, self.stepper.noise, self.cfg
        f0, T = self.f0, sch.top
        clip_stepper = self.stepper.with_signal_scale(cfg.clip_signal_scale_end, cfg.clip_signal_scale_steps,
                                                      cfg.solver, cfg.eta)  # the released codes' base clip
        clip = sample_clip(clip_stepper, f0, 0, "clip")
        warmup = T - f0
        queue = []
        for j in range(T):  # (A1)
            idx, level = j - warmup, j + 1
            src = clip[max(0, j - warmup)].latent
            queue.append(Slot(idx, sch.add_noise(src, noise.one(idx, level, "fifo/init"), level), level))
        if self.head:  # f_0/2 padding latents in front (clean, or noised to level 0 as the code does), never written
            pad = []
            for i in range(self.head):
                idx = -warmup - self.head + i
                latent = clip[0].latent
                if cfg.padding == "noised":
                    latent = sch.add_noise(latent, noise.one(idx, 0, "fifo/pad"), 0)
                pad.append(Slot(idx, latent, 0))
            queue = pad + queue
        self.queue = queue

    def step(self) -> list[Slot]:
        """One pass (Alg. 2): every window tail first, the head leaves clean, fresh noise enters."""
        queue, T = self.queue, self.stepper.schedule.top
        jobs = [WindowJob(queue[w.start:w.start + w.length],
                          range(w.write_offset, w.write_offset + w.n_update), queue[w.start].index, "fifo")
                for w in fifo_windows(len(queue), self.f0, self.cfg.lookahead)]
        self.stepper.run(jobs)  # tail first: every window reads the pre-pass queue
        done = queue[self.head]
        assert done.level == 0, "FIFO head must be clean after a pass"
        queue.pop(0)  # with lookahead the finished latent becomes the newest padding latent
        out = []
        if done.index >= 0 or not self.cfg.drop_warmup:
            self.emitted += 1
            out.append(Slot(done.index, done.latent, 0))
        queue.append(Slot(self.next_index, self.stepper.noise.one(self.next_index, T, "fifo/fresh"), T))
        self.next_index += 1
        return out

    def state_dict(self) -> dict:
        return {**super().state_dict(), "queue": pack_slots(self.queue), "next_index": self.next_index,
                "emitted": self.emitted}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.queue = unpack_slots(state["queue"])
        self.next_index, self.emitted = int(state["next_index"]), int(state["emitted"])


def fifo_latents(stepper: WindowStepper, cfg: FIFOConfig, native_frames: int, num_latents: int) -> Iterator[Slot]:
    """Yield ``num_latents`` finished latents in order (see :class:`FIFOEngine`)."""
    yield from FIFOEngine(stepper, cfg, native_frames, num_latents)
