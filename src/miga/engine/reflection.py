"""Self-reflection (paper Sec. 3.3, Alg. 6): score new high-noise chunks by latent consistency with
the chunks in front of them; when the score drops by more than delta, re-sample candidates, keep the best."""

from __future__ import annotations

import statistics
from typing import Callable

import torch

from miga.engine.stepper import Slot, Stats, WindowJob, WindowStepper
from miga.engine.tiling import static_offset, tiling


def consistency_score(eval_latents: torch.Tensor, ref_latents: torch.Tensor, mode: str = "frame") -> float:
    """C_score of Eqs. 5-7 on raw (noisy) latents ``[N, C, H, W]``.

    ``frame``: each frame's channel mean, L2-normalised over space; the mean pairwise cosine between
    eval and ref frames. ``chunk`` (VideoCrafter2 code): one map per set, averaged over channels and
    frames, and the cosine of the two maps.
    """
    if mode == "chunk":
        v = torch.nn.functional.normalize(eval_latents.double().mean(dim=(0, 1)).flatten(), dim=0)
        u = torch.nn.functional.normalize(ref_latents.double().mean(dim=(0, 1)).flatten(), dim=0)
        return float(v @ u)
    v = torch.nn.functional.normalize(eval_latents.double().mean(dim=1).flatten(1), dim=1)  # Eq. 5
    u = torch.nn.functional.normalize(ref_latents.double().mean(dim=1).flatten(1), dim=1)  # Eq. 6
    return float((v @ u.T).mean())  # Eq. 7


class SelfReflection:
    """Alg. 6 on a zigzag queue of chunks of ``chunk`` latents.

    The judged chunk is the one that has received ``judge_steps`` (f_judg) steps; its references are the
    ``ref_chunks`` (n_ref) chunks in front of it. A drop of the score against the previous check by more
    than ``threshold`` (delta_adju) triggers ``samples`` (n_samp) candidates: each rebuilds the tail from
    the judged chunk on, guided by the references, with fresh noise; the best replaces the tail if it
    scores higher than the original. ``batch``: the candidates' windows share model calls.
    ``calibration="auto"``: the drop is measured against this video's own score series instead
    (:meth:`drop_threshold`).
    """

    def __init__(self, stepper: WindowStepper, *, chunk: int, window: int, stride: int, judge_steps: int,
                 ref_chunks: int, samples: int, threshold: float, fresh: Callable[[int, str], torch.Tensor],
                 stats: Stats, mode: str = "frame", batch: bool = True, calibration: str = "fixed",
                 auto_factor: float = 1.5, auto_warmup: int = 4, lead_chunks: int = 0,
                 remainder_first: bool = False):
        self.stepper, self.chunk, self.window, self.stride = stepper, chunk, window, stride
        self.judge_steps, self.ref_chunks, self.samples = judge_steps, ref_chunks, samples
        self.threshold, self.fresh, self.stats, self.mode, self.batch = threshold, fresh, stats, mode, batch
        self.calibration, self.auto_factor, self.auto_warmup = calibration, auto_factor, auto_warmup
        self.lead_chunks, self.remainder_first = lead_chunks, remainder_first
        self.history: list[float] = []

    def judged_position(self, queue: list[Slot]) -> int | None:
        """Queue position of the judged chunk, or None when the queue has no full judged ladder."""
        level = self.stepper.schedule.top - self.judge_steps
        for p in range(0, len(queue), self.chunk):
            if queue[p].level == level:
                front = (self.ref_chunks + self.lead_chunks) * self.chunk
                ok = p >= front and len(queue) - p == self.judge_steps * self.chunk
                return p if ok else None
        return None

    def __call__(self, queue: list[Slot]) -> bool:
        """Check the queue (after a Stage-1 pass); replace its tail in place on adoption."""
        p = self.judged_position(queue)
        if p is None:
            return False
        L = self.chunk
        refs = queue[p - self.ref_chunks * L:p]
        ref_latents = torch.stack([s.latent for s in refs])
        score = consistency_score(torch.stack([s.latent for s in queue[p:p + L]]), ref_latents, self.mode)
        check = self.stats.reflection_checks
        self.stats.reflection_checks += 1
        self.history.append(score)
        self.stats.reflection_scores.append(score)
        limit = self.drop_threshold()
        if limit is None or self.history[-2] - score <= limit:
            return False
        self.stats.reflection_triggers += 1
        indices = [s.index for s in queue[p:]]
        best, best_score = None, score
        nfe = self.stats.nfe
        candidates = self._candidates(refs, indices, [f"reflect{check}/{i}" for i in range(self.samples)])
        self.stats.reflection_nfe += self.stats.nfe - nfe
        for cand in candidates:
            cand_score = consistency_score(torch.stack([s.latent for s in cand[:L]]), ref_latents, self.mode)
            if cand_score > best_score:
                best, best_score = cand, cand_score
        if best is None:
            return False
        queue[p:] = best
        self.history[-1] = best_score
        self.stats.reflection_adoptions += 1
        return True

    def drop_threshold(self) -> float | None:
        """The score drop the latest check must exceed to trigger a search, or None when it cannot trigger
        yet. ``fixed``: delta_adju. ``auto``: ``auto_factor`` x 1.4826 x the median absolute change between
        successive earlier checks (a robust standard deviation, so past triggers do not inflate it), after
        ``auto_warmup`` such changes."""
        if len(self.history) < 2:
            return None
        if self.calibration == "fixed":
            return self.threshold
        earlier = self.history[:-1]
        changes = [abs(b - a) for a, b in zip(earlier, earlier[1:])]
        if len(changes) < self.auto_warmup:
            return None
        return self.auto_factor * 1.4826 * statistics.median(changes)

    def state_dict(self) -> dict:
        return {"history": list(self.history)}

    def load_state_dict(self, state: dict) -> None:
        self.history = [float(v) for v in state["history"]]

    def _candidates(self, refs: list[Slot], indices: list[int], purposes: list[str]) -> list[list[Slot]]:
        """Rebuild ``judge_steps`` chunks behind copies of the references, once per purpose (Alg. 6 lines
        7-11). The candidates are independent: with ``batch``, the same window of every candidate shares
        one model call (the backbone still splits calls by its model batch). No window reads a latent that
        an earlier window of the same step wrote, so the latents are those of building the candidates one
        by one (up to float rounding of batched matmuls)."""
        top, L = self.stepper.schedule.top, self.chunk
        fixed = len(refs)
        cands = [[s.copy() for s in refs] for _ in purposes]
        for j in range(self.judge_steps):
            for X, purpose in zip(cands, purposes):
                X += [Slot(i, self.fresh(i, purpose), top) for i in indices[j * L:(j + 1) * L]]
            length = len(cands[0])
            plan = tiling(length, self.window, self.stride,
                          static_offset(length, self.window, self.stride, self.remainder_first))
            jobs = [[WindowJob(X[w.start:w.start + w.length], range(max(w.start, fixed) - w.start, w.n_update),
                               X[w.start].index, purpose) for w in plan] for X, purpose in zip(cands, purposes)]
            if self.batch:  # window-major: the same window of every candidate side by side
                self.stepper.run([job for same_window in zip(*jobs) for job in same_window],
                                 limit=self.stepper.max_batch * len(cands))
            else:  # one candidate after another
                for candidate_jobs in jobs:
                    self.stepper.run(candidate_jobs)
        return [X[fixed:] for X in cands]
