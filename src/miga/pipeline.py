"""The small public API: pick a backbone, describe the video, stream its latents or frames.

    >>> import miga
    >>> world = miga.load_backbone("gaussian")
    >>> video = miga.LongVideo(world, "drifting clouds", num_frames=64, seed=0)
    >>> for frame in video.frames():   # uint8 [H, W, 3], as each latent finishes
    ...     pass
    >>> video.stats.nfe
"""

from __future__ import annotations

import contextlib

import dataclasses
import math
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch

from miga.backbones.base import Backbone
from miga.config import FULL_SEQUENCE_METHODS, FIFOConfig, MIGAConfig, ScalingNoiseMethod, preset
from miga.engine.fifo import FIFOEngine
from miga.engine.full_sequence import FullSequenceEngine
from miga.engine.miga import MIGAEngine
from miga.engine.queue import QueueEngine
from miga.engine.scaling_noise import ScalingNoiseEngine
from miga.engine.prompts import PromptSchedule
from miga.engine.rng import KeyedNoise
from miga.engine.schedules import Schedule
from miga.engine.solvers import make_solver
from miga.engine.stepper import Stats, WindowStepper, sample_clip
from miga.errors import MigaError

def load_backbone(model: str = "shapes", *, height: int | None = None, width: int | None = None,
                  device: str | None = None, dtype: str | None = None, **kwargs: Any) -> Backbone:
    """A backbone by name or path: ``shapes`` (the built-in shapes-world model; a path to a ``.safetensors``
    file from ``miga train-toy`` loads other weights for it), ``gaussian`` (the exact Gaussian video world),
    ``gaussian-clip`` (the same world denoised like a foundation model trained on one noise level per clip),
    VideoCrafter2's ``model.ckpt`` (the file, or a folder holding it and a ``tokenizer/``) or its community
    diffusers folder, or a local diffusers-format folder of Wan2.1-T2V, SkyReels-V2-DF or a UNet3D model such
    as ModelScope or Zeroscope (``device`` default: a GPU if there is one; ``dtype`` default: bfloat16 on a
    GPU); ``kwargs`` go to the backbone's constructor (``ddim_rescale``: VideoCrafter2 only). Which kind
    takes which input is decided in one place, :mod:`miga.backbones.registry` (``miga models`` lists them)."""
    from miga.backbones import registry

    return registry.load(model, height=height, width=width, device=device, dtype=dtype, **kwargs)


def from_pipe(pipe: Any, **kwargs: Any) -> Backbone:
    """A backbone built from a diffusers pipeline you already loaded: ``WanPipeline``,
    ``SkyReelsV2DiffusionForcingPipeline``, ``TextToVideoSDPipeline`` or the VideoCrafter2 community
    conversion's pipeline. Its modules are used as they are: never cast, moved or unhooked (device: the
    pipeline's execution device; dtype: its denoiser's). ``kwargs`` go to the backbone (``height``,
    ``width``, ``window_latents``, ``model_batch`` ...)."""
    from miga.backbones import registry

    return registry.from_pipe(pipe, **kwargs)


def frames_for_latents(backbone: Backbone, latents: int) -> int:
    """Output frames that ``latents`` finished latents decode to (Wan's causal VAE: 4k+1 from k+1)."""
    first = getattr(backbone, "first_latent_frames", backbone.frames_per_latent)
    return first + (latents - 1) * backbone.frames_per_latent


def latents_for_frames(backbone: Backbone, frames: int) -> int:
    """The fewest latents that decode to at least ``frames`` output frames."""
    first = getattr(backbone, "first_latent_frames", backbone.frames_per_latent)
    return 1 + max(0, math.ceil((frames - first) / backbone.frames_per_latent))


def prompt_schedule(prompts: PromptSchedule | str | Sequence[str], num_frames: int) -> PromptSchedule:
    """One prompt, several (split evenly along the video, rule A3) or a schedule as it is."""
    if isinstance(prompts, PromptSchedule):
        return prompts
    if isinstance(prompts, str):
        prompts = [prompts]
    prompts = list(prompts)
    if not prompts or any(not p.strip() for p in prompts):
        raise MigaError("a prompt is empty; give a non-empty prompt text")
    return PromptSchedule.even(prompts, num_frames) if len(prompts) > 1 else PromptSchedule.single(prompts[0])


def is_full_sequence(config: Any) -> bool:
    """Whether ``config`` is one of the full-sequence baselines (FreeNoise, FreeLong, FreePCA)."""
    return isinstance(config, tuple(FULL_SEQUENCE_METHODS.values()))


def is_scaling_noise(config: Any) -> bool:
    """Whether ``config`` is ScalingNoise (FIFO with a beam search over the tail noise)."""
    return isinstance(config, ScalingNoiseMethod)


@contextlib.contextmanager
def _keep_vae_cache(backbone: Backbone):
    """Save and restore the streaming VAE cache of a backbone whose decoder keeps one (Wan's causal VAE holds it
    on the VAE itself: a second decoder would clear the first's); a no-op for other backbones."""
    vae = getattr(backbone, "vae", None)
    saved = {k: v for k, v in vars(vae).items() if k.startswith(("_feat_map", "_conv_idx", "_conv_num", "_enc_"))} \
        if vae is not None else {}
    try:
        yield
    finally:
        for k, v in saved.items():
            setattr(vae, k, v)


def x0_decoder(backbone: Backbone) -> Callable[[torch.Tensor], np.ndarray]:
    """ScalingNoise's ``decode``: latents ``[N, C, H, W]`` (one-step x0 predictions, or the head latent) to
    one RGB frame each, uint8 ``[N, H, W, 3]``, each latent decoded on its own (a stateless per-latent decode:
    the reward must not depend on what was decoded before).

    A decoder with ``stateless = True`` (the Gaussian worlds, the shapes model, UNet3D/VideoCrafter2's image
    VAE) is reused. Otherwise (Wan's causal VAE) every latent gets a fresh decoder and is decoded alone, as the
    first latent of a video (one frame), the video's own streaming decoder cache saved and restored around it:
    this costs one full causal-VAE decode per candidate (m·k per output latent, plus the m heads)."""
    with _keep_vae_cache(backbone):
        shared = backbone.decoder()
    if getattr(shared, "stateless", False):
        def decode(latents: torch.Tensor) -> np.ndarray:
            return np.stack([shared.push(x)[0] for x in latents])
        return decode

    def decode_alone(latents: torch.Tensor) -> np.ndarray:
        frames = []
        for x in latents:
            with _keep_vae_cache(backbone):
                dec = backbone.decoder()
                frames.append((dec.push(x) + dec.flush())[0])
        return np.stack(frames)
    return decode_alone


def reward_embedder(config: ScalingNoiseMethod):
    """ScalingNoise's ``embed``: DINO ViT-B/16 from the local folder ``config.dino``, else the offline proxy
    (:class:`miga.evaluation.features.ProxyFeatures` ``("dino")``); both have ``name`` and ``proxy``."""
    from miga.evaluation.features import ProxyFeatures, load_dino

    return load_dino(config.dino) if config.dino else ProxyFeatures("dino")


class LongVideo:
    """One long video: ``num_frames`` output frames from ``backbone`` with MIGA, FIFO or a full-sequence baseline.

    Args:
        backbone: a :class:`~miga.backbones.base.Backbone`.
        prompts: one prompt, several (an even split along time) or a :class:`PromptSchedule`.
        num_frames: output frames.
        config: a :class:`MIGAConfig`, :class:`FIFOConfig`, :class:`~miga.config.ScalingNoiseMethod` (FIFO with
            a beam search over each fresh tail noise; its reward decodes x0s with the backbone's decoder and embeds
            them with DINO or the offline proxy), or :class:`~miga.config.FreeNoiseMethod` /
            :class:`~miga.config.FreeLongMethod` / :class:`~miga.config.FreePCAMethod` (all N latents denoised
            together with the method's temporal-attention policy: memory grows with N, nothing is final before the
            last step; only models with separate temporal attention, one prompt); default: the backbone's MIGA
            preset.
        seed: every random draw derives from it (keyed randomness).
    """

    def __init__(self, backbone: Backbone, prompts: PromptSchedule | str | Sequence[str], num_frames: int,
                 config: MIGAConfig | FIFOConfig | None = None, seed: int = 0):
        if not isinstance(num_frames, int) or num_frames < 1:
            raise MigaError(f"the number of frames must be a positive integer, got {num_frames!r}")
        self.backbone = backbone
        self.num_frames = num_frames
        self.config = config if config is not None else preset(backbone.default_preset, "miga")
        if is_full_sequence(self.config):
            from miga.baselines.methods import check_backbone, check_fps_condition

            check_backbone(backbone, self.config.method)  # before any work: models without temporal attention
            check_fps_condition(backbone, self.config)
        self.config.validate(backbone.native_frames)
        self.prompts = prompt_schedule(prompts, num_frames)
        self.num_latents = latents_for_frames(backbone, num_frames)
        if is_full_sequence(self.config):
            from miga.baselines.methods import check_length

            if len(set(self.prompts.prompts)) > 1:
                raise MigaError(f"--method {self.config.method} takes one prompt (its multi-prompt variants are not "
                                f"implemented); use miga or fifo for a prompt schedule")
            check_length(self.config, backbone.native_frames, self.num_latents)
        self.embedder = reward_embedder(self.config) if is_scaling_noise(self.config) else None
        self.seed = int(seed)
        self.stats = Stats()
        self.latents_done = 0  # latents handed out by latents() so far
        self._engine: QueueEngine | None = None
        self._resume_state: dict | None = None
        self.should_stop: Callable[[], bool] | None = None  # asked between passes; True raises RunInterrupted
        sched_cfg = backbone.default_schedule
        if self.config.flow_shift is not None:
            from dataclasses import replace

            sched_cfg = replace(sched_cfg, shift=self.config.flow_shift)
        if getattr(self.config, "flow_grid", "diffusers") != "diffusers":
            from dataclasses import replace

            if sched_cfg.kind != "flow":
                raise MigaError(f"flow_grid={self.config.flow_grid!r} applies to flow models; "
                                f"{getattr(backbone, 'name', 'this model')} is a DDPM model")
            sched_cfg = replace(sched_cfg, flow_grid=self.config.flow_grid)
        if is_full_sequence(self.config) and self.config.schedule_changes():
            from dataclasses import replace

            if sched_cfg.kind != "ddpm":
                raise MigaError(f"--method {self.config.method}: timestep spacing and signal scale apply to DDPM "
                                f"models; {getattr(backbone, 'name', 'this model')} is a flow model")
            sched_cfg = replace(sched_cfg, **self.config.schedule_changes())
        if self.config.solver == "euler" and sched_cfg.kind != "flow":
            raise MigaError("the euler solver needs a flow-matching model; use ddim or unipc")
        steps = (self.config.steps(backbone.native_frames) if isinstance(self.config, FIFOConfig)
                 else self.config.steps)
        self.schedule = Schedule(sched_cfg, steps)
        self._encode_prompts()

    def _encode_prompts(self) -> None:
        """Encode every prompt once, up front, so that a prompt the model refuses fails before any output."""
        bb, cfg = self.backbone, self.config
        cache: dict[str, Any] = {}

        def encode(text: str):
            if text not in cache:
                cache[text] = bb.encode_prompt(text)
            return cache[text]

        self._latent_prompts = self.prompts.to_latents(bb.frames_per_latent)
        self._conds = [encode(p) for p in self._latent_prompts.prompts]
        self._uncond = None
        if cfg.guidance_scale != 1.0:
            self._uncond = encode(cfg.negative_prompt if cfg.negative_prompt is not None else bb.negative_prompt)
        release = getattr(bb, "release_text_encoder", None)
        if release is not None:
            release()

    def memory_estimate(self):
        """Full-sequence methods: the estimated peak memory of this video
        (:func:`miga.baselines.methods.estimate_peak_bytes`, one probe call of the model on two frames)."""
        if not is_full_sequence(self.config):
            raise MigaError("a memory estimate is made for freenoise, freelong and freepca only")
        from miga.baselines.methods import estimate_peak_bytes

        return estimate_peak_bytes(self.backbone, self.config, self.num_latents, self._conds[0])

    def _stepper(self) -> WindowStepper:
        bb, cfg = self.backbone, self.config
        latent_prompts, conds, uncond = self._latent_prompts, self._conds, self._uncond
        noise = KeyedNoise(self.seed, bb.latent_shape, getattr(bb, "device", "cpu"))
        solver = make_solver(cfg.solver, self.schedule, cfg.eta)
        return WindowStepper(bb, self.schedule, solver, noise, latent_prompts.index_at, conds, uncond,
                             cfg.guidance_scale, self.stats, cfg.window_batch)

    def _new_engine(self) -> QueueEngine:
        stepper, f0 = self._stepper(), self.backbone.native_frames
        if is_full_sequence(self.config):
            from miga.baselines.methods import noise_rule, step_context

            return FullSequenceEngine(stepper, self.num_latents, self.config.method,
                                      prepare_noise=noise_rule(self.config, f0),
                                      context=step_context(self.backbone, self.config, f0))
        if is_scaling_noise(self.config):
            fifo_noise = self.config.candidate_noise == "fifo"
            return ScalingNoiseEngine(stepper, self.config, f0, self.num_latents, self.config.search,
                                      x0_decoder(self.backbone), self.embedder,
                                      noise_purpose=(lambda beam, cand, tag: "fifo/fresh") if fifo_noise else None)
        if isinstance(self.config, FIFOConfig):
            return FIFOEngine(stepper, self.config, f0, self.num_latents)
        return MIGAEngine(stepper, self.config, f0, self.num_latents, self.stats)

    def latents(self) -> Iterator[torch.Tensor]:
        """Finished latents ``[C, H, W]`` in order, each as soon as it is final (after
        :meth:`load_state_dict`: from where that state stood)."""
        engine = self._new_engine()
        self.latents_done = 0
        if self._resume_state is not None:
            state, self._resume_state = self._resume_state, None
            engine.load_state_dict(_to_device(state["engine"], getattr(self.backbone, "device", "cpu")))
            self.latents_done = int(state["latents_done"])
        engine.should_stop = self.should_stop
        self._engine = engine
        for slot in engine:
            self.latents_done += 1
            yield slot.latent

    @property
    def method_counts(self) -> dict | None:
        """The method's own cost counters beyond :attr:`stats` (ScalingNoise: frames decoded and embedded for the
        reward, rewards computed, the NFE of the candidate evaluations, and which embedder), or None."""
        counts = getattr(self._engine, "counts", None)
        if counts is None or self.embedder is None:
            return None
        return {**counts, "embedder": self.embedder.name, "embedder_proxy": bool(self.embedder.proxy)}

    def state_dict(self) -> dict:
        """The whole generator state while :meth:`latents` is paused between two latents: the engine's
        queue, solver histories, Stage-2 band, reflection scores and counters, the latents handed out and
        :attr:`stats`. Nested dicts and lists of numbers, strings and tensors (:mod:`miga.checkpoint` stores
        it); :meth:`load_state_dict` on an identical :class:`LongVideo` continues with the same latents."""
        if self._engine is None:
            raise MigaError("no generation to save: call state_dict() while iterating latents()")
        return {"latents_done": self.latents_done, "engine": self._engine.state_dict(),
                "stats": dataclasses.asdict(self.stats)}

    def load_state_dict(self, state: dict) -> None:
        """Continue from ``state`` (see :meth:`state_dict`): the next :meth:`latents` starts there."""
        self._resume_state = state
        for key, value in state["stats"].items():
            setattr(self.stats, key, value)

    def start_run(self, run_dir: str, out: str, *, checkpoint_every: int | None = None,
                  save_latents: str | None = None, **kwargs: Any):
        """A checkpointed, resumable run of this video in ``run_dir`` writing ``out`` (see
        :class:`miga.runs.VideoRun`); call ``.generate()`` on it."""
        from miga.runs import VideoRun

        if is_full_sequence(self.config):
            raise MigaError(f"a checkpointed run does not apply to {self.config.method}: a full-sequence method "
                            f"finishes no frame before its last step, so there is nothing to checkpoint frame by frame")
        return VideoRun.create(self, run_dir, out, checkpoint_every=checkpoint_every, save_latents=save_latents,
                               **kwargs)

    @staticmethod
    def resume(run_dir: str, backbone: Backbone | None = None):
        """The run saved in ``run_dir`` (:meth:`start_run`, ``miga generate --run-dir``), ready to continue
        from its last checkpoint with ``.generate()``; ``backbone`` defaults to the one the run names."""
        from miga.runs import VideoRun

        return VideoRun.resume(run_dir, backbone=backbone)

    def frames(self, on_latent: Callable[[torch.Tensor], Any] | None = None) -> Iterator[np.ndarray]:
        """Decoded RGB frames (uint8 ``[H, W, 3]``), streamed as latents finish; exactly ``num_frames``.
        ``on_latent`` (e.g. a latent file writer) also receives every finished latent."""
        decoder = self.backbone.decoder()
        count = 0
        for latent in self.latents():
            if on_latent is not None:
                on_latent(latent)
            for frame in decoder.push(latent):
                if count < self.num_frames:
                    count += 1
                    yield frame
        for frame in decoder.flush():
            if count < self.num_frames:
                count += 1
                yield frame


def _to_device(tree: Any, device: Any) -> Any:
    """``tree`` (nested dicts/lists) with every tensor moved to ``device``."""
    if isinstance(tree, torch.Tensor):
        return tree.to(device)
    if isinstance(tree, dict):
        return {k: _to_device(v, device) for k, v in tree.items()}
    if isinstance(tree, list):
        return [_to_device(v, device) for v in tree]
    return tree


def plain_config(config: MIGAConfig | FIFOConfig, native_frames: int) -> MIGAConfig:
    """The sampling part of ``config`` (solver, eta, guidance, shift, negative prompt, steps T) as a MIGA
    config whose long-video parts are off and cannot object to the window (one chunk of f_0, no guides)."""
    steps = config.steps(native_frames) if isinstance(config, FIFOConfig) else config.steps
    fields = {f.name: getattr(config, f.name) for f in dataclasses.fields(config)
              if f.name in {g.name for g in dataclasses.fields(MIGAConfig)}}
    return dataclasses.replace(MIGAConfig(**fields), steps=steps, zigzag_width=native_frames, stage2_steps=0,
                               stride=1, guides=0, reflection=False)


def native_latents(backbone: Backbone, prompt: str, *, seed: int = 0,
                   config: MIGAConfig | FIFOConfig | None = None, init: torch.Tensor | None = None,
                   stats: Stats | None = None) -> torch.Tensor:
    """Plain (not long) sampling: the latents ``[f_0, C, H, W]`` of one clip of the model's own length f_0,
    every frame at one noise level (Eq. 1), with the solver, steps and guidance of ``config`` (default: the
    backbone's MIGA preset), from keyed noise or from ``init`` ``[f_0, C, H, W]``. The reference the
    long-video methods are compared with, and what a model's own pipeline computes (tests/test_parity.py)."""
    config = plain_config(config if config is not None else preset(backbone.default_preset, "miga"),
                          backbone.native_frames)
    video = LongVideo(backbone, prompt, frames_for_latents(backbone, backbone.native_frames), config, seed)
    if init is not None and tuple(init.shape) != (backbone.native_frames, *backbone.latent_shape):
        raise MigaError(f"initial latents of shape {tuple(init.shape)} do not fit one window of this model; "
                        f"expected {(backbone.native_frames, *backbone.latent_shape)} (frames, channels, h, w)")
    if stats is not None:
        video.stats = stats
    slots = sample_clip(video._stepper(), backbone.native_frames, purpose="native", init=init)
    return torch.stack([slot.latent for slot in slots])


def native_clip(backbone: Backbone, prompt: str, *, seed: int = 0,
                config: MIGAConfig | FIFOConfig | None = None) -> list[np.ndarray]:
    """The decoded frames of :func:`native_latents` (uint8 ``[H, W, 3]``)."""
    decoder = backbone.decoder()
    frames: list[np.ndarray] = []
    for latent in native_latents(backbone, prompt, seed=seed, config=config):
        frames += decoder.push(latent)
    return frames + decoder.flush()
