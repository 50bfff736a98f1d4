"""VBench-Long quality metrics for ``miga eval`` (``shared/spec/evaluation.md`` Sec. 1).

* :mod:`~miga.evaluation.clips`: 2-second clips at a video's own fps, the last one back-padded;
* :mod:`~miga.evaluation.vbench`: temporal flicker, motion smoothness, subject / background consistency,
  their VBench-Long aggregation and the overall scores;
* :mod:`~miga.evaluation.features`: DINO / CLIP from local ``transformers`` folders, or the offline proxy;
* :mod:`~miga.evaluation.interpolation`: the frame interpolators for motion smoothness;
* :mod:`~miga.evaluation.latents`: saved latents and MIGA's latent consistency score (method.md Eqs. 5-7);
* :mod:`~miga.evaluation.plot`: per-frame consistency over time;
* :mod:`~miga.evaluation.identity`: the Gaussian world's identity (lag correlations and block-mean drift against
  the prior) from saved latents; :mod:`~miga.evaluation.identity_plot`: identity drift plots.

Nothing here imports OpenCV, transformers or matplotlib until it is used.
"""

from miga.evaluation.clips import Clip, clip_length, split_clips
from miga.evaluation.vbench import (DIMENSIONS, NORMALIZATION, aggregate, consistency, evaluate_video,
                                    frame_consistency, fuse, motion_smoothness, normalized, overall,
                                    temporal_flicker)

__all__ = ["Clip", "DIMENSIONS", "NORMALIZATION", "aggregate", "clip_length", "consistency", "evaluate_video",
           "frame_consistency", "fuse", "motion_smoothness", "normalized", "overall", "split_clips",
           "temporal_flicker"]
