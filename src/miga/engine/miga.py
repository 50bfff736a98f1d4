"""MIGA: zigzag Stage 1 with long-range guidance and self-reflection, then unified Stage 2
(paper Sec. 3; method.md Eqs. 3, 4, 8 and Alg. 4-7)."""

from __future__ import annotations

import math
from typing import Callable, Iterator

from miga.config import MIGAConfig
from miga.engine.queue import QueueEngine, pack_slots, unpack_slots
from miga.engine.reflection import SelfReflection
from miga.engine.stepper import Slot, Stats, WindowJob, WindowStepper, sample_clip
from miga.engine.tiling import nearest_chunk_guides, static_offset, tiling, uniform_guides


class Stage2Batch:
    """Stage 2 as in the paper (Eq. 4): collect every Stage-1 output, then run K2 unified passes over all
    of them (window f_0, stride s, no guidance) and return them clean. ``purpose``: the key of its solver
    noise (``stage2``; each refinement round has its own, so that no draw repeats one of Stage 2's)."""

    def __init__(self, stepper: WindowStepper, *, window: int, stride: int, steps: int, dynamic_offset: bool,
                 total: int, offset_from: int = 1, purpose: str = "stage2"):
        self.stepper, self.window, self.stride, self.steps = stepper, window, stride, steps
        self.dynamic_offset, self.total, self.offset_from = dynamic_offset, total, offset_from
        self.purpose = purpose
        self.slots: list[Slot] = []

    def plan(self, step: int):
        """Windows of unified pass ``step`` (1-based) over all ``total`` latents: offset
        ``(step - 1 + offset_from) mod s`` (``step mod s`` by default)."""
        offset = (step - 1 + self.offset_from) % self.stride if self.dynamic_offset else 0
        return tiling(self.total, self.window, self.stride, offset)

    def push(self, slots: list[Slot]) -> list[Slot]:
        self.slots += slots
        if len(self.slots) < self.total:
            return []
        for step in range(1, self.steps + 1):
            q = self.slots
            self.stepper.run([WindowJob(q[w.start:w.start + w.length], range(w.n_update), q[w.start].index,
                                        self.purpose) for w in self.plan(step)])
        out, self.slots = self.slots, []
        return out

    def state_dict(self) -> dict:
        return {"slots": pack_slots(self.slots)}

    def load_state_dict(self, state: dict) -> None:
        self.slots = unpack_slots(state["slots"])


class Stage2Stream(Stage2Batch):
    """Stage 2 as a wavefront behind Stage 1 (method.md decision 5): the same windows as
    :class:`Stage2Batch`, each run as soon as the previous pass has finished every latent it reads.
    Memory stays bounded (about K2 * (f_0 + s) latents) and clean latents leave as they finish."""

    def __init__(self, stepper, **kw):
        super().__init__(stepper, **kw)
        self.base = 0  # absolute position of self.slots[0] in Stage-2 order
        self.done = [0] * (self.steps + 1)  # done[p]: positions finished by pass p (done[0]: arrived)
        self.plans = [[]] + [self.plan(p) for p in range(1, self.steps + 1)]
        self.cursor = [0] * (self.steps + 1)  # cursor[p]: the next window of pass p's plan

    def pending(self, p: int):
        """The next window of pass ``p`` not run yet, or None."""
        plan = self.plans[p]
        return plan[self.cursor[p]] if self.cursor[p] < len(plan) else None

    def push(self, slots: list[Slot]) -> list[Slot]:
        self.slots += slots
        self.done[0] += len(slots)
        progress = True
        while progress:
            progress = False
            for p in range(1, self.steps + 1):
                w = self.pending(p)
                while w is not None and self.done[p - 1] >= w.start + w.length:
                    q = self.slots
                    a = w.start - self.base
                    self.stepper.run([WindowJob(q[a:a + w.length], range(w.n_update), q[a].index, self.purpose)])
                    self.done[p] = w.start + w.n_update
                    self.cursor[p] += 1
                    w = self.pending(p)
                    progress = True
        finished = self.done[self.steps] - self.base
        out, self.slots = self.slots[:finished], self.slots[finished:]
        self.base += finished
        return out

    def state_dict(self) -> dict:
        return {**super().state_dict(), "base": self.base, "done": list(self.done), "cursor": list(self.cursor)}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.base = int(state["base"])
        self.done = [int(d) for d in state["done"]]
        self.cursor = [int(c) for c in state["cursor"]]


class MIGAEngine(QueueEngine):
    """MIGA as a resumable object: ``num_latents`` finished latents in order (Alg. 4 then Alg. 5, Stage 2
    streamed or batched).

    ``on_pass``, if given, sees the Stage-1 queue after every pass (and self-reflection), before the head
    chunk leaves it. State: the zigzag queue (latents, levels, solver histories), the base clip's last
    latent (fresh chunks are noised from it), chunk and pass counters, self-reflection's score history and
    Stage 2's band.
    """

    method = "miga"

    def __init__(self, stepper: WindowStepper, cfg: MIGAConfig, native_frames: int, num_latents: int,
                 stats: Stats, on_pass: Callable[[list[Slot]], None] | None = None):
        super().__init__()
        self.stepper, self.cfg, self.f0, self.num_latents, self.on_pass = stepper, cfg, native_frames, num_latents, on_pass
        L, K2 = cfg.zigzag_width, cfg.stage2_steps
        self.n_chunks = math.ceil(num_latents / L)
        self.queue: list[Slot] = []
        self.last_clip = None  # the base clip's last latent (Alg. 4 line 7)
        self.enqueued = 0  # chunks that entered the queue
        self.next_index = 0
        self.emitted = 0  # chunks that left Stage 1
        self.passes = 0  # Stage-1 passes of the steady state, for the dynamic offset
        self.reflect = None
        if cfg.reflection:
            self.reflect = SelfReflection(stepper, chunk=L, window=native_frames, stride=cfg.stride,
                                          judge_steps=cfg.reflection_judge_steps,
                                          ref_chunks=cfg.reflection_ref_chunks, samples=cfg.reflection_samples,
                                          threshold=cfg.reflection_threshold, fresh=self.fresh, stats=stats,
                                          mode=cfg.score_mode, batch=cfg.reflection_batch,
                                          calibration=cfg.reflection_calibration,
                                          auto_factor=cfg.reflection_auto_factor,
                                          auto_warmup=cfg.reflection_auto_warmup,
                                          lead_chunks=cfg.reflection_lead_chunks,
                                          remainder_first=cfg.static_tiling == "remainder_first")
        stage2_kw = dict(window=native_frames, stride=cfg.stride, dynamic_offset=cfg.dynamic_offset,
                         total=self.n_chunks * L, offset_from=cfg.unified_offset_from)
        unified = Stage2Stream if cfg.stage2_mode == "stream" else Stage2Batch
        self.stage2 = unified(stepper, steps=K2, **stage2_kw) if K2 else None
        # the released codes' refinement: the unified passes again from refine_level (Alg. 5 lines 11-12)
        self.refine = [unified(stepper, steps=cfg.refine_to, purpose=f"refine{r}", **stage2_kw)
                       for r in range(cfg.refine_rounds)]

    @property
    def finished(self) -> bool:
        return self.emitted >= self.n_chunks

    def fresh(self, index: int, purpose: str, from_clip: bool = True):
        """A new tail latent at the top level: Noise(last clip frame, top) (Alg. 4 line 7), or the noise alone
        (``from_clip`` False, or without ``fresh_from_clip``)."""
        sch = self.stepper.schedule
        eps = self.stepper.noise.one(index, sch.top, purpose + "/fresh")
        return sch.add_noise(self.last_clip, eps, sch.top) if (self.cfg.fresh_from_clip and from_clip) else eps

    def start(self) -> None:
        """Alg. 4 lines 1-5: the base clip; its chunks sit at the noisiest levels but the top one."""
        sch, noise, L, T = self.stepper.schedule, self.stepper.noise, self.cfg.zigzag_width, self.stepper.schedule.top
        cfg = self.cfg
        clip_stepper = self.stepper.with_signal_scale(cfg.clip_signal_scale_end, cfg.clip_signal_scale_steps,
                                                      cfg.solver, cfg.eta)  # the released codes' base clip
        clip = sample_clip(clip_stepper, self.f0, 0, "clip")
        self.last_clip = clip[-1].latent
        k0 = self.f0 // L
        for c in range(k0):
            level = T - k0 + c
            for i in range(c * L, (c + 1) * L):
                self.queue.append(Slot(i, sch.add_noise(clip[i].latent, noise.one(i, level, "miga/init"), level),
                                       level))
        self.enqueued = k0
        self.next_index = k0 * L

    def guides(self, start: int) -> list[int]:
        if self.cfg.guide_selection == "nearest":
            return nearest_chunk_guides(start, self.cfg.guides, self.cfg.zigzag_width)
        return uniform_guides(start, self.cfg.guides)

    def stage1_pass(self, offset: int, filling: bool = False) -> None:
        """Alg. 7: one pass over the zigzag queue, windows head to tail, guides in front (Eq. 8). Guides see
        this pass's updates of the latents in front (Gauss-Seidel), except on steady passes with
        ``steady_guides="pre_pass"``, where they are read as the pass found them."""
        queue, f0, m, cfg = self.queue, self.f0, self.cfg.guides, self.cfg
        if filling and cfg.static_tiling == "remainder_first":
            offset = static_offset(len(queue), f0 - m, cfg.stride, True)
        frozen = not filling and cfg.steady_guides == "pre_pass"
        source = [slot.copy() for slot in queue] if frozen and m else queue
        jobs = []
        for w in tiling(len(queue), f0 - m, cfg.stride, offset):
            if m == 0 or w.start < m:  # too few latents in front: a plain window of f_0
                jobs.append(WindowJob(queue[w.start:w.start + f0], range(w.n_update), queue[w.start].index,
                                      "stage1"))
            else:
                window = [source[g] for g in self.guides(w.start)] + queue[w.start:w.start + w.length]
                jobs.append(WindowJob(window, range(m, m + w.n_update), queue[w.start].index, "stage1"))
        # updated guides need the windows one by one; pre-pass guides leave them independent
        self.stepper.run(jobs, batch=(m == 0 or frozen))

    def step(self) -> list[Slot]:
        """One Stage-1 iteration (Alg. 5): a fresh chunk enters, a pass, self-reflection, and the head chunk
        leaves for Stage 2 once it has run its T - K2 steps. Returns the latents Stage 2 finished."""
        cfg, L, T, K2 = self.cfg, self.cfg.zigzag_width, self.stepper.schedule.top, self.cfg.stage2_steps
        if self.enqueued < self.n_chunks or cfg.queue_end == "full":  # a fresh chunk every pass (decision 1)
            from_clip = cfg.steady_fresh == "clip" or self.passes == 0  # "noise": once a steady pass has run
            self.queue += [Slot(i, self.fresh(i, "miga", from_clip), T)
                           for i in range(self.next_index, self.next_index + L)]
            self.next_index += L
            self.enqueued += 1
        filling = self.queue[0].level > K2 + cfg.fill_lead  # Alg. 4: the ladder is not complete yet
        offset = self.passes % cfg.stride if (cfg.dynamic_offset and not filling) else 0
        self.passes += 0 if filling else 1
        self.stage1_pass(offset, filling)
        if self.reflect is not None and (cfg.reflect_during == "all" or filling):
            self.reflect(self.queue)
        if self.on_pass is not None:
            self.on_pass(self.queue)
        if self.queue[0].level != K2:  # the head chunk has not run its T - K2 Stage-1 steps yet
            return []
        chunk, self.queue = self.queue[:L], self.queue[L:]
        self.emitted += 1
        for slot in chunk:
            if cfg.stage2_entry == "relabel" and self.stage2 is not None:
                slot.level = K2 + 1  # the code's label: Stage 2's K2 steps then end at level 1
            if cfg.stage2_history == "reset":
                slot.state = None
        out = self.stage2.push(chunk) if self.stage2 is not None else chunk
        for r, stage in enumerate(self.refine):
            out = stage.push([self.renoised(slot, r) for slot in out])
        return [slot for slot in out if slot.index < self.num_latents]

    def renoised(self, slot: Slot, round_: int) -> Slot:
        """A finished latent forward-noised to the refinement level, with a fresh solver history."""
        level = self.cfg.refine_to
        eps = self.stepper.noise.one(slot.index, level, f"miga/refine{round_}")
        return Slot(slot.index, self.stepper.schedule.add_noise(slot.latent, eps, level), level)

    def state_dict(self) -> dict:
        return {**super().state_dict(), "queue": pack_slots(self.queue), "last_clip": self.last_clip,
                "enqueued": self.enqueued, "next_index": self.next_index, "emitted": self.emitted,
                "passes": self.passes, "reflection": self.reflect.state_dict() if self.reflect else None,
                "stage2": self.stage2.state_dict() if self.stage2 else None,
                "refine": [stage.state_dict() for stage in self.refine]}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.queue = unpack_slots(state["queue"])
        self.last_clip = state["last_clip"]
        for key in ("enqueued", "next_index", "emitted", "passes"):
            setattr(self, key, int(state[key]))
        if self.reflect is not None:
            self.reflect.load_state_dict(state["reflection"])
        if self.stage2 is not None:
            self.stage2.load_state_dict(state["stage2"])
        for stage, saved in zip(self.refine, state.get("refine", [])):
            stage.load_state_dict(saved)


def miga_latents(stepper: WindowStepper, cfg: MIGAConfig, native_frames: int, num_latents: int,
                 stats: Stats, on_pass: Callable[[list[Slot]], None] | None = None) -> Iterator[Slot]:
    """Yield ``num_latents`` finished latents in order (see :class:`MIGAEngine`)."""
    yield from MIGAEngine(stepper, cfg, native_frames, num_latents, stats, on_pass)
