"""Self-reflection (paper Sec. 3.3, Alg. 6): score new high-noise chunks by latent consistency with
the chunks in front of them; when the score drops by more than delta, re-sample candidates, keep the best."""

from __future__ import annotations

from typing import Callable

import torch

from miga.engine.stepper import Slot, Stats, WindowJob, WindowStepper
from miga.engine.tiling import tiling


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
    scores higher than the original.
    """

    def __init__(self, stepper: WindowStepper, *, chunk: int, window: int, stride: int, judge_steps: int,
                 ref_chunks: int, samples: int, threshold: float, fresh: Callable[[int, str], torch.Tensor],
                 stats: Stats, mode: str = "frame"):
        self.stepper, self.chunk, self.window, self.stride = stepper, chunk, window, stride
        self.judge_steps, self.ref_chunks, self.samples = judge_steps, ref_chunks, samples
        self.threshold, self.fresh, self.stats, self.mode = threshold, fresh, stats, mode
        self.history: list[float] = []

    def judged_position(self, queue: list[Slot]) -> int | None:
        """Queue position of the judged chunk, or None when the queue has no full judged ladder."""
        level = self.stepper.schedule.top - self.judge_steps
        for p in range(0, len(queue), self.chunk):
            if queue[p].level == level:
                ok = p >= self.ref_chunks * self.chunk and len(queue) - p == self.judge_steps * self.chunk
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
        if len(self.history) < 2 or self.history[-2] - score <= self.threshold:
            return False
        self.stats.reflection_triggers += 1
        indices = [s.index for s in queue[p:]]
        best, best_score = None, score
        for i in range(self.samples):
            cand = self._candidate(refs, indices, f"reflect{check}/{i}")
            cand_score = consistency_score(torch.stack([s.latent for s in cand[:L]]), ref_latents, self.mode)
            if cand_score > best_score:
                best, best_score = cand, cand_score
        if best is None:
            return False
        queue[p:] = best
        self.history[-1] = best_score
        self.stats.reflection_adoptions += 1
        return True

    def state_dict(self) -> dict:
        return {"history": list(self.history)}

    def load_state_dict(self, state: dict) -> None:
        self.history = [float(v) for v in state["history"]]

    def _candidate(self, refs: list[Slot], indices: list[int], purpose: str) -> list[Slot]:
        """Rebuild ``judge_steps`` chunks behind copies of the references (Alg. 6 lines 7-11)."""
        top, L = self.stepper.schedule.top, self.chunk
        fixed = len(refs)
        X = [s.copy() for s in refs]
        for j in range(self.judge_steps):
            X += [Slot(i, self.fresh(i, purpose), top) for i in indices[j * L:(j + 1) * L]]
            jobs = []
            for w in tiling(len(X), self.window, self.stride, 0):
                first = max(w.start, fixed)
                targets = range(first - w.start, w.n_update)
                jobs.append(WindowJob(X[w.start:w.start + w.length], targets, X[w.start].index, purpose))
            self.stepper.run(jobs)
        return X[fixed:]
