"""miga: training-free long video generation with MIGA and FIFO-Diffusion on any short-clip model.

Public API: :func:`load_backbone`, :class:`LongVideo` (streams latents and frames), the configs
:class:`MIGAConfig` / :class:`FIFOConfig` with their paper presets, and :class:`PromptSchedule`.
"""

from miga.config import FIFOConfig, MIGAConfig, preset
from miga.engine.prompts import PromptSchedule
from miga.errors import MigaError
from miga.pipeline import LongVideo, load_backbone

__all__ = ["FIFOConfig", "LongVideo", "MIGAConfig", "MigaError", "PromptSchedule", "load_backbone", "preset"]
