"""FIFO-Diffusion (Kim et al. 2024), the baseline (method.md decision 3; Alg. 1-3, (A1))."""

from __future__ import annotations

from typing import Iterator

from miga.config import FIFOConfig
from miga.engine.stepper import Slot, WindowJob, WindowStepper, sample_clip
from miga.engine.tiling import fifo_windows


def fifo_latents(stepper: WindowStepper, cfg: FIFOConfig, native_frames: int, num_latents: int) -> Iterator[Slot]:
    """Yield ``num_latents`` finished latents in order.

    The queue holds T = f_0 * n latents, slot j at level j + 1 (diagonal denoising, Eq. 2). It starts
    from a base clip forward-noised as in (A1): the last f_0 slots hold the clip's frames, the others
    copies of its first frame (the warm-up, dropped from the output by default). Each pass runs the
    lookahead windows (Alg. 3), the head latent leaves clean and fresh noise enters the tail (Alg. 2).
    """
    sch, noise = stepper.schedule, stepper.noise
    f0, T = native_frames, stepper.schedule.top
    clip = sample_clip(stepper, f0, 0, "clip")
    warmup = T - f0
    queue = []
    for j in range(T):  # (A1)
        idx, level = j - warmup, j + 1
        src = clip[max(0, j - warmup)].latent
        queue.append(Slot(idx, sch.add_noise(src, noise.one(idx, level, "fifo/init"), level), level))
    head = 0
    if cfg.lookahead:  # f_0/2 clean padding latents in front, never written (Alg. 1 line 3)
        head = f0 // 2
        queue = [Slot(-warmup - head + i, clip[0].latent, 0) for i in range(head)] + queue
    next_index = f0
    emitted = 0
    while emitted < num_latents:
        jobs = [WindowJob(queue[w.start:w.start + w.length],
                          range(w.write_offset, w.write_offset + w.n_update), queue[w.start].index, "fifo")
                for w in fifo_windows(len(queue), f0, cfg.lookahead)]
        stepper.run(jobs)  # tail first: every window reads the pre-pass queue
        done = queue[head]
        assert done.level == 0, "FIFO head must be clean after a pass"
        queue.pop(0)  # with lookahead the finished latent becomes the newest padding latent
        if done.index >= 0 or not cfg.drop_warmup:
            emitted += 1
            yield Slot(done.index, done.latent, 0)
        queue.append(Slot(next_index, noise.one(next_index, T, "fifo/fresh"), T))
        next_index += 1
