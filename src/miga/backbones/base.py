"""The one small interface every model adapter implements.

The engine (``miga.engine``) only ever talks to a backbone through :class:`Backbone`: it asks for the
model output on a window of latents where *every frame carries its own noise level*, encodes prompts
once, and hands finished latents to a streaming :class:`FrameDecoder`.
"""

from __future__ import annotations

from typing import Any, Literal, Protocol, Sequence, runtime_checkable

import numpy as np
import torch

from miga.engine.schedules import NoiseLevels, ScheduleConfig

__all__ = ["Backbone", "FrameDecoder", "NoiseLevels", "Prediction"]

Prediction = Literal["epsilon", "flow", "x0"]
"""What a backbone's ``predict`` returns.

- ``epsilon``: the noise ε in ``x = α·x0 + σ·ε`` (DDPM/VideoCrafter2 style).
- ``flow``: the velocity ``v = ε − x0`` of rectified flow, ``x = (1−σ)·x0 + σ·ε`` (Wan style).
- ``x0``: the clean latent itself.
"""


@runtime_checkable
class FrameDecoder(Protocol):
    """Turns finished latents into RGB frames, one latent at a time, in order."""

    def push(self, latent: torch.Tensor) -> list[np.ndarray]:
        """Decode one finished latent ``[C, H, W]``; return the frames it completes (uint8 ``[H, W, 3]``)."""
        ...

    def flush(self) -> list[np.ndarray]:
        """Return any frames still held back once the last latent has been pushed."""
        ...


@runtime_checkable
class Backbone(Protocol):
    """A short-clip video model seen through the engine's eyes.

    Attributes:
        name: short identifier (``gaussian``, ``wan2.1`` ...).
        native_frames: f_0, the number of latent frames the model denoises natively (paper Sec. 3).
        prediction: what :meth:`predict` returns (see :data:`Prediction`).
        latent_shape: ``(C, H, W)`` of one latent frame.
        default_schedule: the noise schedule the model was trained with.
        default_preset: name of the preset (``miga.config``) that suits this model.
        negative_prompt: the unconditional prompt for classifier-free guidance.
        fps: frames per second of the decoded video.
        frames_per_latent: output frames per latent frame (1, or 4 for Wan's causal VAE).
    """

    name: str
    native_frames: int
    prediction: Prediction
    latent_shape: tuple[int, int, int]
    default_schedule: ScheduleConfig
    default_preset: str
    negative_prompt: str
    fps: int
    frames_per_latent: int

    def encode_prompt(self, text: str) -> Any:
        """Encode one prompt to the conditioning object :meth:`predict` consumes (the engine caches it)."""
        ...

    def predict(self, latents: torch.Tensor, levels: NoiseLevels, conds: Sequence[Any]) -> torch.Tensor:
        """Model output for ``latents`` ``[B, C, F, H, W]``; ``conds[b]`` conditions batch element b."""
        ...

    def decoder(self) -> FrameDecoder:
        """A fresh streaming decoder for one video."""
        ...
