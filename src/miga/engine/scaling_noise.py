"""ScalingNoise (Yang et al. 2025; ``shared/spec/baselines.md`` §5): FIFO-Diffusion with a beam search over the
noise of the newly enqueued tail latent.

m beams, each a full FIFO queue (:class:`~miga.engine.fifo.FIFOEngine`'s, with lookahead padding). Every pass,
for each beam in turn:

1. k actions are drawn; each makes a candidate for the tail slot (level T) from the neighbour slot −2;
2. the tail window is run once per candidate (a normal FIFO window update, CFG as configured), keeping the
   stepped window and its per-frame x0 predictions; the x0s the reward reads are decoded and embedded through
   the caller's callables and scored against the anchor (the last emitted frame's embedding);
3. the other 2n − 1 windows run as in FIFO (they never read the tail window's written slots);
4. the head leaves clean: it joins the beam's frame list and (decoded, embedded) becomes the anchor.

Iteration 0 first runs one plain FIFO pass on the shared initial queue (its tail is the base clip's noised last
frame, not fresh noise, so there is nothing to search yet; faithful: without CFG, ``first_pass_no_cfg``), whose head
becomes the first anchor; then the search pass above. Then the (beam, candidate) pairs are selected, new beam i = clone(parent i) with its tail window's written slots
replaced by pick i's output, frame lists follow the parents, and fresh noise (FIFO's ``fifo/fresh``) enters every
tail. A finished latent is handed out once every beam's frame list holds it (the beams have one ancestor there),
the rest of beam 0's list at the end: the output is beam 0's video after the final selection.

The engine knows no model, decoder, embedder or method module (layering): the caller injects

- ``search``: the constants and rules, :class:`miga.baselines.scaling_noise.ScalingNoiseConfig` or anything with
  its ``beams``, ``candidates``, ``first_pass_no_cfg``, ``shared_anchor``, ``choose_actions(rng)``,
  ``candidate(action, z_prev, draw, alpha, sigma)``, ``x0_positions(f)``, ``score(anchor, embeddings, f)`` and
  ``select(scores, rng)``;
- ``decode(latents [N, C, H, W]) -> frames`` and ``embed(frames) -> [N, D]`` (tensor or array).

Randomness is keyed (decision 4): candidate noise by (tail index, T, ``scaling_noise/<tag>/b<beam>/c<cand>``),
the action draws and the ε coin by :func:`~miga.engine.rng.draw_key` of the tail index, so a state taken between
two passes continues with the same latents.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import torch

from miga.config import FIFOConfig
from miga.engine.fifo import FIFOEngine
from miga.engine.queue import QueueEngine, pack_slots, unpack_slots
from miga.engine.rng import draw_key
from miga.engine.stepper import Slot, WindowJob, WindowStepper
from miga.engine.tiling import fifo_windows

Decode = Callable[[torch.Tensor], Any]
Embed = Callable[[Any], Any]
NoisePurpose = Callable[[int, int, str], str]

PURPOSE = "scaling_noise"


def default_noise_purpose(beam: int, cand: int, tag: str) -> str:
    """The key of candidate ``cand`` of beam ``beam``'s draw ``tag`` (drawn at the tail index and level T)."""
    return f"{PURPOSE}/{tag}/b{beam}/c{cand}"


@dataclass
class Beam:
    """One FIFO queue, its finished latents not handed out yet, and (per-beam anchors) its anchor embedding."""

    queue: list[Slot]
    pending: list[Slot] = field(default_factory=list)
    anchor: Optional[torch.Tensor] = None


class ScalingNoiseEngine(FIFOEngine):
    """ScalingNoise on FIFO's queue (see the module docstring).

    Args:
        stepper, cfg, native_frames, num_latents: as :class:`~miga.engine.fifo.FIFOEngine`.
        search: the search constants and rules (``ScalingNoiseConfig``).
        decode, embed: the caller's decoder and image embedder.
        noise_purpose: ``(beam, cand, tag) -> purpose`` of the candidate draws (default
            :func:`default_noise_purpose`); a test returns ``"fifo/fresh"`` to feed FIFO's own noise stream.

    Counters (``self.counts``): frames decoded and embedded, rewards computed, and the NFE of the tail-window
    candidate evaluations (``search_nfe``, part of ``stepper.stats.nfe``).
    """

    method = "scaling_noise"

    def __init__(self, stepper: WindowStepper, cfg: FIFOConfig, native_frames: int, num_latents: int, search,
                 decode: Decode, embed: Embed, noise_purpose: NoisePurpose | None = None):
        super().__init__(stepper, cfg, native_frames, num_latents)
        self.search, self.decode, self.embed = search, decode, embed
        self.noise_purpose = noise_purpose or default_noise_purpose
        self.beams: list[Beam] = []
        self.anchor: Optional[torch.Tensor] = None  # the shared anchor's embedding
        self.produced = 0  # finished latents each beam has produced (drop_warmup applied)
        self.iteration = 0
        self.counts = {"decoded": 0, "embedded": 0, "rewards": 0, "search_nfe": 0}
        self.last_search: dict = {}  # the last pass's scores, selection, candidates and heads (for inspection)

    # ---------------------------------------------------------------- helpers
    def _embed_latents(self, latents: torch.Tensor) -> torch.Tensor:
        frames = self.decode(latents)
        emb = torch.as_tensor(self.embed(frames)).to("cpu", torch.float64)
        self.counts["decoded"] += latents.shape[0]
        self.counts["embedded"] += latents.shape[0]
        return emb

    def _set_anchor(self, beam: Beam, latent: torch.Tensor) -> None:
        emb = self._embed_latents(latent[None])[0]
        if self.search.shared_anchor:
            self.anchor = emb
        else:
            beam.anchor = emb

    def _anchor(self, beam: Beam) -> torch.Tensor:
        return self.anchor if self.search.shared_anchor else beam.anchor

    def _keeps(self, done: Slot) -> bool:
        """Whether a finished latent joins the frame lists (FIFO's warm-up rule; at most ``num_latents``)."""
        return (done.index >= 0 or not self.cfg.drop_warmup) and self.produced < self.num_latents

    def _pop_head(self, queue: list[Slot]) -> Slot:
        done = queue[self.head]
        assert done.level == 0, "FIFO head must be clean after a pass"
        queue.pop(0)  # with lookahead the finished latent becomes the newest padding latent
        return done

    def _plain_pass(self, beam: Beam, no_cfg: bool) -> None:
        """Iteration 0's plain FIFO pass on the shared initial queue: without CFG if ``no_cfg`` (faithful,
        ``first_pass_no_cfg``), else a FIFO pass with the configured guidance."""
        queue, T = beam.queue, self.stepper.schedule.top
        jobs = [WindowJob(queue[w.start:w.start + w.length], range(w.write_offset, w.write_offset + w.n_update),
                          queue[w.start].index, "fifo")
                for w in fifo_windows(len(queue), self.f0, self.cfg.lookahead)]
        scale = self.stepper.guidance_scale
        if no_cfg:
            self.stepper.guidance_scale = 1.0
        try:
            self.stepper.run(jobs)
        finally:
            self.stepper.guidance_scale = scale
        done = self._pop_head(queue)
        if self._keeps(done):
            beam.pending.append(Slot(done.index, done.latent, 0))
            self.produced += 1
        self._set_anchor(beam, done.latent)
        queue.append(Slot(self.next_index, self.stepper.noise.one(self.next_index, T, "fifo/fresh"), T))
        self.next_index += 1

    def _update(self, job: WindowJob, denoised: torch.Tensor) -> None:
        """The solver update of ``job``'s targets from its x0 estimates ``[C, F, H, W]`` (the stepper's)."""
        self.stepper.update(job, denoised)

    def _search_beam(self, j: int, beam: Beam) -> tuple[list[float], list[list[Slot]], list[str]]:
        """Steps 1-4 of the module docstring for beam ``j``: its scores, candidate tail outputs and actions."""
        st, search = self.stepper, self.search
        sch, queue = st.schedule, beam.queue
        T, tail_index = sch.top, queue[-1].index
        plan = fifo_windows(len(queue), self.f0, self.cfg.lookahead)
        tail_w, rest = plan[0], plan[1:]
        assert tail_w.start + tail_w.length == len(queue) and queue[-1].level == T
        z_prev = queue[-2].latent
        actions = search.choose_actions(random.Random(draw_key(st.noise.seed, tail_index, j, PURPOSE + "/actions")))

        def drawer(c: int):
            return lambda tag: st.noise.one(tail_index, T, self.noise_purpose(j, c, tag))

        cands = [search.candidate(a, z_prev, drawer(c), sch.alphas[T], sch.sigmas[T]) for c, a in enumerate(actions)]
        positions = search.x0_positions(tail_w.length)
        anchor = self._anchor(beam)
        scores, outputs = [], []
        targets = range(tail_w.write_offset, tail_w.write_offset + tail_w.n_update)
        for lo in range(0, len(cands), st.max_batch):
            jobs = []
            for cand in cands[lo:lo + st.max_batch]:
                slots = [s.copy() for s in queue[tail_w.start:]]
                slots[-1] = Slot(tail_index, cand.to(queue[-1].latent.dtype), T)
                jobs.append(WindowJob(slots, targets, slots[0].index, "fifo"))
            nfe = st.stats.nfe
            denoised = st.predict_denoised(jobs)
            self.counts["search_nfe"] += st.stats.nfe - nfe
            for b, job in enumerate(jobs):
                x0 = denoised[b].transpose(0, 1)[positions]  # [N, C, H, W]
                emb = self._embed_latents(x0)
                scores.append(float(search.score(anchor, emb, tail_w.length)))
                self.counts["rewards"] += 1
                self._update(job, denoised[b])
                outputs.append([job.slots[i] for i in targets])
        for i, s in zip(range(tail_w.start + targets.start, len(queue)), outputs[-1]):
            queue[i] = s.copy()  # provisionally the last candidate's output (§5.2 step 4)
        st.run([WindowJob(queue[w.start:w.start + w.length], range(w.write_offset, w.write_offset + w.n_update),
                          queue[w.start].index, "fifo") for w in rest])
        return scores, outputs, actions

    # ---------------------------------------------------------------- QueueEngine
    @property
    def finished(self) -> bool:
        return self.emitted >= self.num_latents

    def start(self) -> None:
        """FIFO's initial queue (A1), shared by the m beams; the first anchor is its newest clean padding latent
        (without lookahead: the head latent, at level 1) unless iteration 0's no-CFG pass replaces it."""
        super().start()
        self.beams = [Beam(self.queue)]
        self.queue = []
        first = self.beams[0].queue[self.head - 1 if self.head else 0]
        self._set_anchor(self.beams[0], first.latent)

    def step(self) -> list[Slot]:
        """One ScalingNoise iteration (§5.2)."""
        search = self.search
        if self.iteration == 0:  # the initial tail is the base clip's noised last frame, not fresh noise
            self._plain_pass(self.beams[0], no_cfg=search.first_pass_no_cfg)
            b0 = self.beams[0]
            self.beams = [Beam([s.copy() for s in b0.queue], list(b0.pending), b0.anchor) for _ in range(search.beams)]
        T = self.stepper.schedule.top
        scores, outputs, actions, heads = [], [], [], []
        keep = None
        for j, beam in enumerate(self.beams):
            sc, out, act = self._search_beam(j, beam)
            scores.append(sc), outputs.append(out), actions.append(act)
            done = self._pop_head(beam.queue)
            keep = self._keeps(done) if keep is None else keep  # the beams move in lockstep: same indices
            kept = Slot(done.index, done.latent, 0)
            if keep:
                beam.pending.append(kept)
            heads.append(kept)
            self._set_anchor(beam, done.latent)
        self.produced += int(bool(keep))
        sel = search.select(scores, random.Random(draw_key(self.stepper.noise.seed, self.next_index, 0,
                                                           PURPOSE + "/select")))
        n_tail = len(outputs[0][0])
        new = []
        for parent, (b, c) in zip(sel.parents, sel.picks):
            p = self.beams[parent]
            queue = [s.copy() for s in p.queue[:-n_tail]] + [s.copy() for s in outputs[b][c]]
            queue.append(Slot(self.next_index, self.stepper.noise.one(self.next_index, T, "fifo/fresh"), T))
            new.append(Beam(queue, list(p.pending), p.anchor))
        self.beams = new
        self.next_index += 1
        self.iteration += 1
        self.last_search = {"scores": scores, "parents": sel.parents, "picks": sel.picks, "explored": sel.explored,
                            "actions": actions, "candidates": outputs, "heads": heads}
        return self._flush()

    def _flush(self) -> list[Slot]:
        """Hand out the latents every beam's frame list shares (all of beam 0's once the video is complete)."""
        lists = [b.pending for b in self.beams]
        n = 0
        while all(len(p) > n and p[n] is lists[0][n] for p in lists):
            n += 1
        if self.produced >= self.num_latents:
            n = len(lists[0])
        out = lists[0][:n]
        for b in self.beams:
            b.pending = b.pending[n:] if self.produced < self.num_latents else []
        self.emitted += len(out)
        return out

    def state_dict(self) -> dict:
        pool: list[Slot] = []
        where: dict[int, int] = {}
        beams = []
        for b in self.beams:
            idx = []
            for s in b.pending:  # shared slots stay shared (the frame lists' common prefix)
                if id(s) not in where:
                    where[id(s)] = len(pool)
                    pool.append(s)
                idx.append(where[id(s)])
            beams.append({"queue": pack_slots(b.queue), "pending": idx, "anchor": b.anchor})
        return {**QueueEngine.state_dict(self), "beams": beams, "pool": pack_slots(pool), "anchor": self.anchor,
                "next_index": self.next_index, "emitted": self.emitted, "produced": self.produced,
                "iteration": self.iteration, "counts": dict(self.counts)}

    def load_state_dict(self, state: dict) -> None:
        QueueEngine.load_state_dict(self, state)
        pool = unpack_slots(state["pool"])
        self.beams = [Beam(unpack_slots(b["queue"]), [pool[int(i)] for i in b["pending"]], b["anchor"])
                      for b in state["beams"]]
        self.anchor = state["anchor"]
        self.next_index, self.emitted = int(state["next_index"]), int(state["emitted"])
        self.produced, self.iteration = int(state["produced"]), int(state["iteration"])
        self.counts = {k: int(v) for k, v in state["counts"].items()}
