"""miga: training-free long video generation with MIGA and FIFO-Diffusion on any short-clip model.

Public API: :func:`load_backbone` (a name or a path) and :func:`from_pipe` (a diffusers pipeline already in
memory), :class:`LongVideo` (streams latents and frames), :class:`LongVideoPipeline` (a diffusers-style
call), the configs :class:`MIGAConfig` / :class:`FIFOConfig` with their paper presets, the full-sequence
baselines' configs :class:`FreeNoiseMethod` / :class:`FreeLongMethod` / :class:`FreePCAMethod`, ScalingNoise's
:class:`ScalingNoiseMethod` (FIFO plus a beam search over the tail noise), and
:class:`PromptSchedule`.
"""

from miga.config import (FIFOConfig, FreeLongMethod, FreeNoiseMethod, FreePCAMethod, MIGAConfig, ScalingNoiseMethod,
                         preset)
from miga.engine.prompts import PromptSchedule
from miga.errors import MigaError
from miga.pipeline import LongVideo, from_pipe, load_backbone
from miga.diffusers_pipeline import LongVideoPipeline, LongVideoPipelineOutput

__all__ = ["FIFOConfig", "FreeLongMethod", "FreeNoiseMethod", "FreePCAMethod", "LongVideo", "LongVideoPipeline", "LongVideoPipelineOutput", "MIGAConfig", "MigaError",
           "PromptSchedule", "ScalingNoiseMethod", "from_pipe", "load_backbone", "preset"]
