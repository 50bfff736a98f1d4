"""miga called the way a diffusers user calls a pipeline, on a pipeline they already loaded.

    >>> long_pipe = miga.LongVideoPipeline.from_pipe(pipe)          # a WanPipeline in memory
    >>> video = long_pipe(prompt="a red fox running through snow", num_frames=481, method="miga").frames[0]
    >>> diffusers.utils.export_to_video(video, "fox.mp4", fps=16)

The user's modules are shared, never copied, cast or moved (:func:`miga.from_pipe`). Arguments keep
diffusers' names (``prompt``, ``negative_prompt``, ``num_frames``, ``height``, ``width``,
``num_inference_steps``, ``guidance_scale``, ``generator``, ``latents``, ``output_type``, ``return_dict``);
miga's own are ``method`` (``miga``, ``fifo`` or ``plain``: one window of ordinary sampling), ``preset``,
``config`` and ``callback_on_frame``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import torch

from miga.backbones.base import Backbone
from miga.backbones.diffusers_common import offload_after_use
from miga.config import FIFOConfig, MIGAConfig, preset as named_preset
from miga.engine.prompts import PromptSchedule
from miga.engine.stepper import Stats
from miga.errors import MigaError
from miga.pipeline import (LongVideo, frames_for_latents, from_pipe, latents_for_frames, native_latents,
                           plain_config)

METHODS = ("miga", "fifo", "plain")
OUTPUT_TYPES = ("np", "pil", "pt", "latent")
DEFAULT_FRAMES = 128


@dataclass
class LongVideoPipelineOutput:
    """What a call returns. ``frames``: ``np`` float32 ``[1, F, H, W, 3]`` in [0, 1]; ``pil`` ``[[Image]]``;
    ``pt`` float32 ``[1, F, 3, H, W]``; ``latent`` ``[1, C, F_latent, h, w]`` (the model's latent space, as
    diffusers returns it). ``frames[0]`` goes to ``diffusers.utils.export_to_video``. ``stats``: model calls
    and self-reflection counters."""

    frames: Any
    stats: Stats


def seed_from(generator: torch.Generator | Sequence[torch.Generator] | None, seed: int | None) -> int:
    """miga's seed (keyed randomness: every draw follows from it) from ``seed`` or a torch generator's
    ``initial_seed()``; the generator itself is not drawn from."""
    if seed is not None and generator is not None:
        raise MigaError("give seed or generator, not both")
    if generator is not None:
        if isinstance(generator, (list, tuple)):
            if len(generator) != 1:
                raise MigaError(f"miga makes one video per call; got {len(generator)} generators")
            generator = generator[0]
        return int(generator.initial_seed())
    return 0 if seed is None else int(seed)


class LongVideoPipeline:
    """Long videos from a loaded diffusers pipeline (:meth:`from_pipe`) or any miga backbone
    (``LongVideoPipeline(backbone)``).

    Args:
        backbone: a fixed backbone (its frame size and window are its own), or None with ``pipe``.
        pipe: a diffusers pipeline; a backbone over its modules is made for each frame size asked for.
        backbone_options: passed to :func:`miga.from_pipe` (``model_batch``, ``window_latents`` ...).
    """

    def __init__(self, backbone: Backbone | None = None, *, pipe: Any = None, **backbone_options: Any):
        if (backbone is None) == (pipe is None):
            raise MigaError("give a backbone or a pipe (LongVideoPipeline.from_pipe(pipe))")
        self.backbone, self.pipe, self.backbone_options = backbone, pipe, backbone_options
        self._cached: tuple[tuple, Backbone] | None = None
        if pipe is not None:
            self._backbone_for(None, None, None)  # recognise the pipeline now: a wrong one fails here

    @classmethod
    def from_pipe(cls, pipe: Any, **backbone_options: Any) -> "LongVideoPipeline":
        """Share the modules of ``pipe`` (``WanPipeline``, ``SkyReelsV2DiffusionForcingPipeline``,
        ``TextToVideoSDPipeline``, the VideoCrafter2 community pipeline); nothing is cast or moved."""
        return cls(pipe=pipe, **backbone_options)

    def _backbone_for(self, height: int | None, width: int | None, window: int | None) -> Backbone:
        if self.backbone is not None:
            if height is not None or width is not None:
                raise MigaError(f"this {self.backbone.name} backbone's frame size is fixed; leave out height and "
                                "width, or build it at the size you want (load_backbone(..., height=, width=))")
            return self.backbone
        key = (height, width, window)
        if self._cached is None or self._cached[0] != key:
            options = dict(self.backbone_options)
            options.update({k: v for k, v in (("height", height), ("width", width), ("window_latents", window))
                            if v is not None})
            self._cached = (key, from_pipe(self.pipe, **options))
        return self._cached[1]

    @torch.no_grad()
    def __call__(self, prompt: str | Sequence[str] | PromptSchedule, num_frames: int | None = None, *,
                 method: str = "miga", negative_prompt: str | None = None, height: int | None = None,
                 width: int | None = None, num_inference_steps: int | None = None,
                 guidance_scale: float | None = None, eta: float | None = None, flow_shift: float | None = None,
                 preset: str | None = None, config: MIGAConfig | FIFOConfig | None = None,
                 generator: torch.Generator | Sequence[torch.Generator] | None = None, seed: int | None = None,
                 latents: torch.Tensor | None = None, output_type: str = "np", return_dict: bool = True,
                 callback_on_frame: Callable[[int, Any], Any] | None = None, progress: bool = True):
        """Generate one video.

        Args:
            prompt: one prompt, several (an even split along the video) or a :class:`PromptSchedule`.
            num_frames: output frames (default 128; ``plain``: one window of the model's own length).
            method: ``miga``, ``fifo``, or ``plain`` (ordinary sampling of one window, every frame at one
                level: what the model's own pipeline computes, with its scheduler's shift).
            negative_prompt: the unconditional prompt (default: the model's, e.g. Wan's sample-config one).
            num_inference_steps, guidance_scale, eta, flow_shift: override the preset's values.
            preset, config: the sampling settings (default: the model's own preset for ``method``).
            generator, seed: miga's seed (a generator's ``initial_seed()``); draws are keyed, so they do not
                depend on batching or on a diffusers pipeline's own draws.
            latents: ``plain`` only: the initial noise ``[1, C, F, h, w]`` (as diffusers pipelines take it).
            output_type: ``np``, ``pil``, ``pt`` or ``latent`` (see :class:`LongVideoPipelineOutput`).
            callback_on_frame: called as ``callback_on_frame(index, frame)`` as each frame is decoded (with
                ``latent``: each finished latent ``[C, h, w]``), while the video is still being made.
            progress: show a progress bar over frames.
        """
        if method not in METHODS:
            raise MigaError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
        if output_type not in OUTPUT_TYPES:
            raise MigaError(f"unknown output_type {output_type!r}; choose one of {', '.join(OUTPUT_TYPES)}")
        if latents is not None and method != "plain":
            raise MigaError("latents (the initial noise) apply to method='plain'; the long-video methods draw "
                            "their noise from the seed")
        seed = seed_from(generator, seed)
        if method == "plain":
            window = None
            if latents is not None:
                if latents.ndim != 5 or latents.shape[0] != 1:
                    raise MigaError(f"latents must have shape [1, C, F, h, w], got {tuple(latents.shape)}")
                window = int(latents.shape[2])
            elif num_frames is not None and self.backbone is None:
                # latents per frame do not depend on the size: ask the backbone built in __init__
                window = max(2, latents_for_frames(self._cached[1], num_frames))
            backbone = self._backbone_for(height, width, window)
            clip_frames = frames_for_latents(backbone, backbone.native_frames)
            num_frames = clip_frames if num_frames is None else num_frames
            if not isinstance(num_frames, int) or not 1 <= num_frames <= clip_frames:
                raise MigaError(f"method='plain' makes one window of {clip_frames} frames; ask for 1 to "
                                f"{clip_frames} frames, or use method='miga' or 'fifo' for longer videos")
        else:
            backbone = self._backbone_for(height, width, None)
            num_frames = DEFAULT_FRAMES if num_frames is None else num_frames
        cfg = _config(backbone, method, preset, config, num_inference_steps, guidance_scale, eta, flow_shift,
                      negative_prompt)
        stats = Stats()
        if method == "plain":
            if not isinstance(prompt, str):
                raise MigaError("method='plain' takes one prompt (a string)")
            init = None if latents is None else latents[0].transpose(0, 1).to(torch.float32)
            source = iter(native_latents(backbone, prompt, seed=seed, config=cfg, init=init, stats=stats))
        else:
            video = LongVideo(backbone, prompt, num_frames, cfg, seed=seed)
            stats = video.stats
            source = video.latents()
        try:
            frames = _collect(backbone, source, num_frames, output_type, callback_on_frame, progress,
                              f"{method} {backbone.name}")
        finally:
            if self.pipe is not None:  # model-offloaded modules back on the CPU, as the pipeline's own call ends
                offload_after_use(getattr(self.pipe, "components", {}).values())
        return LongVideoPipelineOutput(frames=frames, stats=stats) if return_dict else (frames,)


def _config(backbone: Backbone, method: str, preset: str | None, config, steps, guidance, eta, flow_shift,
            negative_prompt):
    if config is not None and preset is not None:
        raise MigaError("give preset or config, not both")
    if config is None:
        config = named_preset(preset or backbone.default_preset, "fifo" if method == "fifo" else "miga")
    if method == "plain":
        config = plain_config(config, backbone.native_frames)
        if flow_shift is None:
            config = dataclasses.replace(config, flow_shift=None)  # the pipeline scheduler's own shift
    if steps is not None:
        if isinstance(config, FIFOConfig):
            if steps % backbone.native_frames:
                raise MigaError(f"FIFO takes a multiple of the window ({backbone.native_frames} latents) as "
                                f"num_inference_steps; got {steps}")
            config = config.with_(partitions=steps // backbone.native_frames)
        else:
            config = config.with_(steps=steps)
    config = config.with_(guidance_scale=guidance, eta=eta, flow_shift=flow_shift, negative_prompt=negative_prompt)
    config.validate(backbone.native_frames)
    return config


def _collect(backbone: Backbone, latents, num_frames: int, output_type: str, callback, progress: bool, desc: str):
    """Decode (or keep) the latents as they come, call the callback per frame, stack in diffusers' layout."""
    from tqdm import tqdm

    if output_type == "latent":
        kept = []
        total = latents_for_frames(backbone, num_frames)
        with tqdm(total=total, unit="latent", desc=desc, disable=not progress) as bar:
            for latent in latents:
                if callback is not None:
                    callback(len(kept), latent)
                kept.append(latent)
                bar.update()
        return torch.stack(kept, dim=1)[None]
    decoder = backbone.decoder()
    as_float = getattr(decoder, "push_float", None)
    frames: list[np.ndarray] = []

    def take(batch, bar):
        for frame in batch:
            if len(frames) >= num_frames:
                return
            if frame.dtype == np.uint8:  # decoders without a float path (the built-in models)
                frame = frame.astype(np.float32) / 255.0
            if callback is not None:
                callback(len(frames), _to_pil(frame) if output_type == "pil" else frame)
            frames.append(frame)
            bar.update()

    with tqdm(total=num_frames, unit="frame", desc=desc, disable=not progress) as bar:
        for latent in latents:
            take(as_float(latent) if as_float is not None else decoder.push(latent), bar)
        take(decoder.flush(), bar)
    video = np.stack(frames)[None]  # [1, F, H, W, 3]
    if output_type == "np":
        return video
    if output_type == "pt":
        return torch.from_numpy(video).permute(0, 1, 4, 2, 3)
    return [[_to_pil(frame) for frame in video[0]]]


def _to_pil(frame: np.ndarray):
    from PIL import Image

    return Image.fromarray((frame * 255.0).round().clip(0, 255).astype(np.uint8))
