"""VBench's four quality dimensions with VBench-Long's clip protocol, from decoded frames.

Formulas from ``shared/spec/evaluation.md`` Sec. 1 (paraphrased from VBench; re-implemented here):

* temporal flicker (T.F., Sec. 1.4): ``(255 - mean_i mean|f_{i+1} - f_i|) / 255`` on the uint8 frames;
* motion smoothness (M.S., Sec. 1.5): interpolate the even frames' midpoints, compare with the odd frames;
* subject / background consistency (S.C. / B.C., Sec. 1.2-1.3): the mean over frames ``i >= 1`` of
  ``(max(0, cos(f_i, f_{i-1})) + max(0, cos(f_i, f_0))) / 2`` on per-frame features;
* VBench-Long (Sec. 1.7): score 2-second clips, average a video's clips, then average the videos; S.C. and
  B.C. also get the clip-to-clip "fast branch" and the fused score;
* the overall score (Sec. 1.6): the plain mean of the four raw scores, and VBench's normalised form.

Every function takes numpy arrays and returns numbers; :func:`evaluate_video` and :func:`aggregate` put
them together for ``miga eval``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping, Protocol, Sequence

import numpy as np

from miga.evaluation.clips import Clip, clip_length, split_clips

DIMENSIONS = ("temporal_flicker", "motion_smoothness", "subject_consistency", "background_consistency")
"""The four quality dimensions, in the order they are reported."""

NORMALIZATION = {
    "subject_consistency": (0.1462, 1.0),
    "background_consistency": (0.2615, 1.0),
    "temporal_flicker": (0.6293, 1.0),
    "motion_smoothness": (0.706, 0.9975),
}
"""VBench's (min, max) per dimension (evaluation.md Sec. 1.6): ``normalized = (raw - min) / (max - min)``.
Not clamped, as in VBench: a raw M.S. above 0.9975 normalises to more than 1."""

FAST_BRANCH_WEIGHTS = (0.5, 0.5)
"""(in-clip, clip-to-clip) weights of the fused S.C./B.C. score (VBench-Long ``--dev_flag``, Sec. 1.7)."""


class Extractor(Protocol):
    """Per-frame features: ``uint8 [N, H, W, 3]`` RGB in, ``[N, D]`` out (see :mod:`miga.evaluation.features`)."""

    name: str
    proxy: bool

    def __call__(self, frames: np.ndarray) -> np.ndarray: ...


class Interpolator(Protocol):
    """The midpoint of two ``uint8 [H, W, 3]`` frames, as a ``uint8 [H, W, 3]`` frame
    (see :mod:`miga.evaluation.interpolation`)."""

    name: str
    proxy: bool

    def __call__(self, a: np.ndarray, b: np.ndarray) -> np.ndarray: ...


def _check_frames(frames: np.ndarray, at_least: int) -> np.ndarray:
    frames = np.asarray(frames)
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must be uint8 [N, H, W, 3], got {frames.dtype} {frames.shape}")
    if len(frames) < at_least:
        raise ValueError(f"need at least {at_least} frames, got {len(frames)}")
    return frames


# ----------------------------------------------------------------------------------------------------
# temporal flicker (Sec. 1.4)


def frame_differences(frames: np.ndarray) -> np.ndarray:
    """``mean|f_{i+1} - f_i|`` over H x W x 3 for each consecutive pair of uint8 frames (0-255 units)."""
    frames = _check_frames(frames, 2)
    return np.array([np.abs(frames[i + 1].astype(np.int16) - frames[i].astype(np.int16)).mean()
                     for i in range(len(frames) - 1)], np.float64)


def temporal_flicker_from_differences(differences: Sequence[float]) -> float:
    """T.F. from the consecutive-frame differences of :func:`frame_differences`: ``(255 - mean) / 255``."""
    return float((255.0 - np.mean(differences)) / 255.0)


def temporal_flicker(frames: np.ndarray) -> float:
    """T.F. of a clip (evaluation.md Sec. 1.4): ``(255 - mean_i MAE(f_i, f_{i+1})) / 255`` on the uint8 frames
    at their own resolution. A constant clip scores 1; frames alternating black and white score 0."""
    return temporal_flicker_from_differences(frame_differences(frames))


# ----------------------------------------------------------------------------------------------------
# subject / background consistency (Sec. 1.2, 1.3)


@dataclass(frozen=True)
class FrameConsistency:
    """The terms of the S.C./B.C. formula for frames ``1 .. N-1`` of a sequence of features."""

    to_first: np.ndarray
    """``max(0, cos(f_i, f_0))`` for ``i = 1 .. N-1``."""
    to_previous: np.ndarray
    """``max(0, cos(f_i, f_{i-1}))`` for ``i = 1 .. N-1``."""

    @property
    def score(self) -> float:
        """The mean over ``i`` of ``(to_first + to_previous) / 2``."""
        return float(np.mean((self.to_first + self.to_previous) / 2.0))


def frame_consistency(features: np.ndarray) -> FrameConsistency:
    """First-frame and previous-frame cosines of per-frame features ``[N, D]``, N >= 2, each clamped at 0
    (evaluation.md Sec. 1.2: VBench L2-normalises the features, then takes dot products)."""
    f = np.asarray(features, np.float64)
    if f.ndim != 2 or len(f) < 2:
        raise ValueError(f"features must be [N >= 2, D], got {f.shape}")
    norms = np.linalg.norm(f, axis=1, keepdims=True)
    f = f / np.maximum(norms, 1e-12)
    to_first = np.clip(f[1:] @ f[0], 0.0, 1.0)
    to_previous = np.clip(np.einsum("nd,nd->n", f[1:], f[:-1]), 0.0, 1.0)
    return FrameConsistency(to_first, to_previous)


def consistency(features: np.ndarray) -> float:
    """S.C./B.C. of one clip from its per-frame features ``[N, D]`` (evaluation.md Sec. 1.2-1.3):
    ``1/(N-1) sum_{i>=1} (max(0, cos(f_{i-1}, f_i)) + max(0, cos(f_0, f_i))) / 2``. Identical features
    score 1; negative cosines count as 0."""
    return frame_consistency(features).score


def fuse(inclip: float, clip2clip: float | None, mapping: Callable[[float], float] | None = None,
         weights: tuple[float, float] = FAST_BRANCH_WEIGHTS) -> float:
    """VBench-Long's fused S.C./B.C. (evaluation.md Sec. 1.7, "Fusion"): ``w_in * inclip + w_c2c * map(clip2clip)``.

    ``mapping`` is VBench's quantile lookup; ``None`` is the identity (VBench's tables are calibrated for its
    DINOv2 / DreamSim fast-branch features and are not bundled). Without a clip-to-clip score (a one-clip
    video), or when the mapped value is exactly 0, the result is the in-clip score.
    """
    if clip2clip is None:
        return float(inclip)
    mapped = mapping(clip2clip) if mapping is not None else clip2clip
    if mapped == 0:
        return float(inclip)
    return float(weights[0] * inclip + weights[1] * mapped)


# ----------------------------------------------------------------------------------------------------
# motion smoothness (Sec. 1.5)


def motion_smoothness(frames: np.ndarray, interpolate: Callable[[np.ndarray, np.ndarray], np.ndarray]) -> float:
    """M.S. of a clip (evaluation.md Sec. 1.5): the midpoint of every pair of neighbouring even frames
    ``(f_{2k}, f_{2k+2})`` is predicted by ``interpolate`` and compared with the real odd frame ``f_{2k+1}``;
    ``(255 - mean_k mean|p_k - f_{2k+1}|) / 255`` in uint8. An unmatched last odd frame is ignored. A clip
    whose odd frames are exactly what ``interpolate`` predicts scores 1. Needs at least 3 frames."""
    frames = _check_frames(frames, 3)
    errors = []
    for k in range((len(frames) - 1) // 2):
        pred = np.asarray(interpolate(frames[2 * k], frames[2 * k + 2]))
        if pred.dtype != np.uint8 or pred.shape != frames[0].shape:
            raise ValueError(f"the interpolator must return uint8 {frames[0].shape}, got {pred.dtype} {pred.shape}")
        errors.append(np.abs(pred.astype(np.int16) - frames[2 * k + 1].astype(np.int16)).mean())
    return float((255.0 - np.mean(errors)) / 255.0)


# ----------------------------------------------------------------------------------------------------
# overall (Sec. 1.6)


def normalized(dimension: str, raw: float) -> float:
    """VBench's min-max normalisation of one dimension (:data:`NORMALIZATION`)."""
    lo, hi = NORMALIZATION[dimension]
    return (raw - lo) / (hi - lo)


def overall(scores: Mapping[str, float]) -> tuple[float, float]:
    """``(plain mean of the four raw scores, mean of their VBench-normalised values)`` (Sec. 1.6)."""
    raw = float(np.mean([scores[d] for d in DIMENSIONS]))
    norm = float(np.mean([normalized(d, scores[d]) for d in DIMENSIONS]))
    return raw, norm


# ----------------------------------------------------------------------------------------------------
# one video, many videos (Sec. 1.7)


def _mean(values) -> float | None:
    values = [v for v in values if v is not None]
    return float(np.mean(values)) if values else None


def _consistency_modes(features: np.ndarray, clips: list[Clip]) -> tuple[dict, list[float], FrameConsistency]:
    """In-clip (per clip, then the mean), clip-to-clip, fused and whole-video S.C./B.C. from every frame's
    features."""
    per_clip = [consistency(features[c.start:c.stop]) for c in clips]
    inclip = float(np.mean(per_clip))
    firsts = [c.start for c in clips]
    clip2clip = consistency(features[firsts]) if len(clips) > 1 else None
    whole = frame_consistency(features)
    modes = {"inclip": inclip, "clip2clip": clip2clip, "fused": fuse(inclip, clip2clip), "whole_video": whole.score}
    return modes, per_clip, whole


def evaluate_video(frames: np.ndarray, fps: float, subject: Extractor, background: Extractor,
                   interpolator: Interpolator) -> dict:
    """All four dimensions of one decoded video under VBench-Long's protocol (evaluation.md Sec. 1.7).

    The video is split into :func:`~miga.evaluation.clips.split_clips` clips of ``2 * int(fps)`` frames; T.F.,
    M.S. and in-clip S.C./B.C. are computed per clip and averaged over the clips. S.C./B.C. also get
    ``clip2clip`` (the formula on the first frame of every clip; ``None`` for a one-clip video), ``fused``
    (:func:`fuse`) and ``whole_video`` (the formula on all frames: frame 0 against frames far later, which
    exposes drift). Features are computed once per frame, so the back-padded clip reuses its frames' features.

    Returns a JSON-ready dict: the four in-clip scores, ``overall`` and ``overall_normalized``, per-mode
    S.C./B.C., per-clip scores and per-frame curves (``subject_to_first`` etc., frames 1..N-1).
    """
    frames = _check_frames(frames, 3)
    clips = split_clips(len(frames), clip_length(fps))
    diffs = frame_differences(frames)
    tf = [temporal_flicker_from_differences(diffs[c.start:c.stop - 1]) for c in clips]
    ms = [motion_smoothness(frames[c.start:c.stop], interpolator) for c in clips]
    sc_modes, sc, sc_whole = _consistency_modes(np.asarray(subject(frames)), clips)
    bc_modes, bc, bc_whole = _consistency_modes(np.asarray(background(frames)), clips)
    scores = {"temporal_flicker": float(np.mean(tf)), "motion_smoothness": float(np.mean(ms)),
              "subject_consistency": sc_modes["inclip"], "background_consistency": bc_modes["inclip"]}
    raw, norm = overall(scores)
    return {
        "frames": len(frames), "fps": float(fps), "clip_length": clips[0].frames, **scores,
        "overall": raw, "overall_normalized": norm,
        "subject_consistency_modes": sc_modes, "background_consistency_modes": bc_modes,
        "clips": [{"index": c.index, "start": c.start, "stop": c.stop, "back_padded": c.back_padded,
                   "temporal_flicker": tf[k], "motion_smoothness": ms[k], "subject_consistency": sc[k],
                   "background_consistency": bc[k]} for k, c in enumerate(clips)],
        "per_frame": {"first_frame": 1, "frame_difference": diffs.tolist(),
                      "subject_to_first": sc_whole.to_first.tolist(),
                      "subject_to_previous": sc_whole.to_previous.tolist(),
                      "background_to_first": bc_whole.to_first.tolist(),
                      "background_to_previous": bc_whole.to_previous.tolist()},
    }


def aggregate(videos: Sequence[Mapping]) -> dict:
    """The dimension scores over videos: the plain mean of the per-video scores (VBench-Long averages over
    long videos, Sec. 1.7), the overall scores of those means, and the mean of each S.C./B.C. mode (over the
    videos that have it)."""
    if not videos:
        raise ValueError("no videos to aggregate")
    scores = {d: float(np.mean([v[d] for v in videos])) for d in DIMENSIONS}
    raw, norm = overall(scores)
    modes = {f"{d}_modes": {m: _mean(v[f"{d}_modes"][m] for v in videos) for m in videos[0][f"{d}_modes"]}
             for d in ("subject_consistency", "background_consistency")}
    return {**scores, "overall": raw, "overall_normalized": norm, **modes}
