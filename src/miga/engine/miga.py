"""MIGA: zigzag Stage 1 with long-range guidance and self-reflection, then unified Stage 2
(paper Sec. 3; method.md Eqs. 3, 4, 8 and Alg. 4-7)."""

from __future__ import annotations

import math
from typing import Callable, Iterator

from miga.config import MIGAConfig
from miga.engine.reflection import SelfReflection
from miga.engine.stepper import Slot, Stats, WindowJob, WindowStepper, sample_clip
from miga.engine.tiling import nearest_chunk_guides, tiling, uniform_guides


class Stage2Batch:
    """Stage 2 as in the paper (Eq. 4): collect every Stage-1 output, then run K2 unified passes over all
    of them (window f_0, stride s, no guidance) and return them clean."""

    def __init__(self, stepper: WindowStepper, *, window: int, stride: int, steps: int, dynamic_offset: bool,
                 total: int):
        self.stepper, self.window, self.stride, self.steps = stepper, window, stride, steps
        self.dynamic_offset, self.total = dynamic_offset, total
        self.slots: list[Slot] = []

    def plan(self, step: int):
        """Windows of unified pass ``step`` (1-based) over all ``total`` latents."""
        offset = step % self.stride if self.dynamic_offset else 0
        return tiling(self.total, self.window, self.stride, offset)

    def push(self, slots: list[Slot]) -> list[Slot]:
        self.slots += slots
        if len(self.slots) < self.total:
            return []
        for step in range(1, self.steps + 1):
            q = self.slots
            self.stepper.run([WindowJob(q[w.start:w.start + w.length], range(w.n_update), q[w.start].index,
                                        "stage2") for w in self.plan(step)])
        out, self.slots = self.slots, []
        return out


class Stage2Stream(Stage2Batch):
    """Stage 2 as a wavefront behind Stage 1 (method.md decision 5): the same windows as
    :class:`Stage2Batch`, each run as soon as the previous pass has finished every latent it reads.
    Memory stays bounded (about K2 * (f_0 + s) latents) and clean latents leave as they finish."""

    def __init__(self, stepper, **kw):
        super().__init__(stepper, **kw)
        self.base = 0  # absolute position of self.slots[0] in Stage-2 order
        self.done = [0] * (self.steps + 1)  # done[p]: positions finished by pass p (done[0]: arrived)
        self.plans = [None] + [iter(self.plan(p)) for p in range(1, self.steps + 1)]
        self.pending = [None] + [next(self.plans[p], None) for p in range(1, self.steps + 1)]

    def push(self, slots: list[Slot]) -> list[Slot]:
        self.slots += slots
        self.done[0] += len(slots)
        progress = True
        while progress:
            progress = False
            for p in range(1, self.steps + 1):
                w = self.pending[p]
                while w is not None and self.done[p - 1] >= w.start + w.length:
                    q = self.slots
                    a = w.start - self.base
                    self.stepper.run([WindowJob(q[a:a + w.length], range(w.n_update), q[a].index, "stage2")])
                    self.done[p] = w.start + w.n_update
                    w = self.pending[p] = next(self.plans[p], None)
                    progress = True
        finished = self.done[self.steps] - self.base
        out, self.slots = self.slots[:finished], self.slots[finished:]
        self.base += finished
        return out


def miga_latents(stepper: WindowStepper, cfg: MIGAConfig, native_frames: int, num_latents: int,
                 stats: Stats, on_pass: Callable[[list[Slot]], None] | None = None) -> Iterator[Slot]:
    """Yield ``num_latents`` finished latents in order (Alg. 4 then Alg. 5, Stage 2 streamed or batched).

    ``on_pass``, if given, sees the Stage-1 queue after every pass (and self-reflection), before the head
    chunk leaves it.
    """
    sch, noise = stepper.schedule, stepper.noise
    f0, T, L, K2 = native_frames, sch.top, cfg.zigzag_width, cfg.stage2_steps
    m, s = cfg.guides, cfg.stride
    n_chunks = math.ceil(num_latents / L)
    clip = sample_clip(stepper, f0, 0, "clip")  # Alg. 4 line 1
    last_clip = clip[-1].latent

    def fresh(index: int, purpose: str):
        """A new tail latent at the top level: Noise(last clip frame, top) (Alg. 4 line 7)."""
        eps = noise.one(index, T, purpose + "/fresh")
        return sch.add_noise(last_clip, eps, T) if cfg.fresh_from_clip else eps

    # Alg. 4 lines 2-5: the clip's chunks sit at the noisiest levels but the top one.
    k0 = f0 // L
    queue: list[Slot] = []
    for c in range(k0):
        level = T - k0 + c
        for i in range(c * L, (c + 1) * L):
            queue.append(Slot(i, sch.add_noise(clip[i].latent, noise.one(i, level, "miga/init"), level), level))
    enqueued = k0
    next_index = k0 * L

    reflect = None
    if cfg.reflection:
        reflect = SelfReflection(stepper, chunk=L, window=f0, stride=s, judge_steps=cfg.reflection_judge_steps,
                                 ref_chunks=cfg.reflection_ref_chunks, samples=cfg.reflection_samples,
                                 threshold=cfg.reflection_threshold, fresh=fresh, stats=stats, mode=cfg.score_mode)
    stage2_kw = dict(window=f0, stride=s, steps=K2, dynamic_offset=cfg.dynamic_offset, total=n_chunks * L)
    stage2 = (Stage2Stream if cfg.stage2_mode == "stream" else Stage2Batch)(stepper, **stage2_kw) if K2 else None

    def guides(start: int) -> list[int]:
        if cfg.guide_selection == "nearest":
            return nearest_chunk_guides(start, m, L)
        return uniform_guides(start, m)

    def stage1_pass(offset: int) -> None:
        """Alg. 7: one pass over the zigzag queue, windows head to tail, guides in front (Eq. 8)."""
        jobs = []
        for w in tiling(len(queue), f0 - m, s, offset):
            if m == 0 or w.start < m:  # too few latents in front: a plain window of f_0
                jobs.append(WindowJob(queue[w.start:w.start + f0], range(w.n_update), queue[w.start].index,
                                      "stage1"))
            else:
                window = [queue[g] for g in guides(w.start)] + queue[w.start:w.start + w.length]
                jobs.append(WindowJob(window, range(m, m + w.n_update), queue[w.start].index, "stage1"))
        # Guides must see this pass's updates of the latents in front (Gauss-Seidel): no batching then.
        stepper.run(jobs, batch=(m == 0))

    emitted = 0
    passes = 0  # Stage-1 passes of the steady state, for the dynamic offset
    while emitted < n_chunks:
        if enqueued < n_chunks:  # a fresh zigzag chunk on every pass (project decision 1)
            queue += [Slot(i, fresh(i, "miga"), T) for i in range(next_index, next_index + L)]
            next_index += L
            enqueued += 1
        filling = queue[0].level > K2 + 1  # Alg. 4: the ladder is not complete yet
        offset = passes % s if (cfg.dynamic_offset and not filling) else 0
        passes += 0 if filling else 1
        stage1_pass(offset)
        if reflect is not None and (cfg.reflect_during == "all" or filling):
            reflect(queue)
        if on_pass is not None:
            on_pass(queue)
        if queue[0].level == K2:  # the head chunk has run its T - K2 Stage-1 steps
            chunk, queue = queue[:L], queue[L:]
            emitted += 1
            out = stage2.push(chunk) if stage2 is not None else chunk
            for slot in out:
                if slot.index < num_latents:
                    yield slot
