"""One config dataclass per method, with the paper's settings as named presets (method.md Sec. 4).

Every constant of the paper is a field here; the engine reads them and hard-codes none. Each MIGA
mechanism can be switched off alone, so the paper's ablations are configurations:

==================  ==========================================================================
FIFO-Diffusion      ``FIFOConfig`` (or MIGA with ``zigzag_width=1, stage2_steps=0, guides=0,
                    reflection=False`` for FIFO's ladder under MIGA's tiling)
+ Stage 1           ``zigzag_width=4, stage2_steps=0, guides=0, reflection=False``
+ Stage 2 (= TTA)   ``zigzag_width=4, stage2_steps=10, guides=0, reflection=False``
DCE only            ``zigzag_width=1, stage2_steps=0`` with guides and reflection on
MIGA                a preset as it is
==================  ==========================================================================
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields, replace
from typing import Literal

from miga.errors import MigaError

SHAPES_GUIDANCE = 5.0
"""CFG of every method's ``shapes`` preset. Measured on model v2, plain 16-frame clips, 24 prompt/seed pairs
(docs/results.md): CFG 3 presence 0.872 / shape 0.691, CFG 5 0.910 / 0.759, CFG 7 0.922 / 0.728; model v1 is
indifferent (0.910 / 0.708 at 3, 0.915 / 0.705 at 5)."""


@dataclass(frozen=True)
class _SamplingFields:
    """Fields both methods share.

    Attributes:
        solver: per-frame solver: ``ddim`` (epsilon models, VideoCrafter2), ``unipc`` (Wan) or ``euler``.
        eta: DDIM stochasticity (1.0 in FIFO and MIGA's VideoCrafter2 setup).
        guidance_scale: classifier-free guidance (VideoCrafter2 12, Wan 5; 1 disables it).
        flow_shift: overrides the backbone's flow-schedule shift when set (Wan: 5.0 in the paper).
        negative_prompt: the unconditional prompt; None uses the backbone's default.
        window_batch: windows batched into one model call where windows are independent (speed only;
            the output does not change beyond float rounding).
    """

    solver: Literal["ddim", "unipc", "euler"] = "ddim"
    eta: float = 1.0
    guidance_scale: float = 12.0
    flow_shift: float | None = None
    negative_prompt: str | None = None
    window_batch: int = 1

    def _check_sampling(self) -> None:
        if self.solver not in ("ddim", "unipc", "euler"):
            raise MigaError(f"unknown solver {self.solver!r}; choose ddim, unipc or euler")
        if self.eta < 0:
            raise MigaError(f"eta must be >= 0, got {self.eta}")
        if not self.guidance_scale > 0:
            raise MigaError(f"guidance scale must be > 0, got {self.guidance_scale}")
        if self.flow_shift is not None and not self.flow_shift > 0:
            raise MigaError(f"flow shift must be > 0, got {self.flow_shift}")
        if self.window_batch < 1:
            raise MigaError(f"window batch must be >= 1, got {self.window_batch}")

    def with_(self, **changes):
        """A copy with some fields changed (None values are ignored)."""
        return replace(self, **{k: v for k, v in changes.items() if v is not None})


@dataclass(frozen=True)
class FIFOConfig(_SamplingFields):
    """FIFO-Diffusion (Kim et al. 2024) as published (method.md decision 3, Alg. 1-3).

    Attributes:
        partitions: n; the queue has T = f_0 * n latents and the schedule T steps.
        lookahead: lookahead denoising: windows of f_0 at stride f_0/2 write their latter half, with
            f_0/2 clean padding latents in front; without it, n disjoint windows.
        drop_warmup: drop the first T - f_0 outputs (noised copies of the base clip's first frame).
        clip_signal_scale_end, clip_signal_scale_steps: sample the base clip on the schedule with this signal
            scale (``ScheduleConfig.signal_scale_end/steps``; VideoCrafter2's ``use_scale``: 0.7 and 400), as
            FIFO-Diffusion's code does with LVDM's own DDIM; the queue keeps its plain per-frame DDIM. 1.0 (the
            default): the clip on the queue's schedule.
        padding: the f_0/2 lookahead padding latents in front are the base clip's first frame ``clean`` or
            ``noised`` to level 0 (fresh noise; on VideoCrafter2's grid level 0 is alpha_bar of t = 0, sigma
            0.029), as the code does; on a schedule whose level 0 is clean both are the same.
    """

    partitions: int = 4
    lookahead: bool = True
    drop_warmup: bool = True
    clip_signal_scale_end: float = 1.0
    clip_signal_scale_steps: int = 400
    padding: Literal["clean", "noised"] = "clean"

    def steps(self, native_frames: int) -> int:
        return native_frames * self.partitions

    def validate(self, native_frames: int) -> "FIFOConfig":
        self._check_sampling()
        if self.partitions < 1:
            raise MigaError(f"FIFO needs at least 1 partition, got {self.partitions}")
        if self.lookahead and native_frames < 2:
            raise MigaError("FIFO lookahead needs a model window of at least 2 frames")
        if self.padding not in ("clean", "noised"):
            raise MigaError(f"padding must be 'clean' or 'noised', got {self.padding!r}")
        if not 0 < self.clip_signal_scale_end <= 1 or self.clip_signal_scale_steps < 2:
            raise MigaError("clip_signal_scale_end must be in (0, 1] and clip_signal_scale_steps >= 2")
        return self

    @classmethod
    def videocrafter2(cls) -> "FIFOConfig":
        """FIFO on VideoCrafter2: n = 4 (T = 64), DDIM eta = 1, CFG 12."""
        return cls(partitions=4, solver="ddim", eta=1.0, guidance_scale=12.0)

    @classmethod
    def videocrafter2_released(cls) -> "FIFOConfig":
        """FIFO-Diffusion's released VideoCrafter2 code (``videocrafter_main.py``) where it differs from the
        paper's description: the base clip by LVDM's own DDIM with ``use_scale`` (0.7 from t = 400), the
        lookahead padding noised to level 0. Checked against that code on a tiny model
        (``tests/test_reference_fifo_vc2.py``)."""
        return cls.videocrafter2().with_(clip_signal_scale_end=0.7, clip_signal_scale_steps=400, padding="noised")

    @classmethod
    def modelscope(cls) -> "FIFOConfig":
        """FIFO on ModelScope/Zeroscope UNet3D models (not in the paper): VideoCrafter2's numbers (f_0 = 16,
        n = 4, DDIM eta = 1) with ModelScope's usual CFG 9."""
        return cls.videocrafter2().with_(guidance_scale=9.0)

    @classmethod
    def wan21(cls) -> "FIFOConfig":
        """FIFO on Wan2.1-1.3B: n = 3 (T = 63 for f_0 = 21), flow UniPC-2, shift 5, CFG 5."""
        return cls(partitions=3, solver="unipc", guidance_scale=5.0, flow_shift=5.0)

    @classmethod
    def skyreels_v2_df(cls) -> "FIFOConfig":
        """FIFO on SkyReels-V2-DF-1.3B (not in the paper): Wan's numbers with its own shift 8 and CFG 6."""
        return cls.wan21().with_(flow_shift=8.0, guidance_scale=6.0)

    @classmethod
    def gaussian(cls) -> "FIFOConfig":
        """FIFO on the exact Gaussian world: n = 2 (T = 32), UniPC-2, no guidance."""
        return cls(partitions=2, solver="unipc", guidance_scale=1.0)

    @classmethod
    def shapes(cls) -> "FIFOConfig":
        """FIFO on the built-in shapes models: n = 2 (T = 32), flow UniPC-2, CFG 5 (:data:`SHAPES_GUIDANCE`)."""
        return cls(partitions=2, solver="unipc", guidance_scale=SHAPES_GUIDANCE)


@dataclass(frozen=True)
class MIGAConfig(_SamplingFields):
    """MIGA (Feng et al., ICML 2026): zigzag Stage 1, unified Stage 2, long-range guidance,
    self-reflection. Symbols as in the paper; defaults are the VideoCrafter2 setting of Sec. 4.1.

    Attributes:
        steps: T, schedule length.
        zigzag_width: L_zig, latents sharing one level in the Stage-1 queue (Eq. 3); 1 = FIFO's ladder.
        stage2_steps: K2 (the paper's tau_e): the last K2 schedule steps run with all frames at one level
            (Eq. 4); 0 disables Stage 2.
        stride: s, sliding-window stride (method.md Sec. 3.9).
        guides: m_guid, long-range guide latents in each Stage-1 window (Eq. 8); 0 disables guidance.
        guide_selection: ``uniform`` over the latents in front of the window (paper Eq. 8) or
            ``nearest`` (one latent from each of the m nearest chunks, the released code's choice).
        dynamic_offset: shift the Stage-1/Stage-2 tiling by (pass mod s) each pass (released code).
        reflection: self-reflection on/off (Alg. 6).
        reflection_threshold: delta_adju, the drop of the consistency score that triggers a search
            (``reflection_calibration="fixed"``, the paper).
        reflection_calibration: ``fixed`` (a drop > delta_adju triggers) or ``auto``: a drop triggers when
            it is unusual for this video's own score series, i.e. larger than ``reflection_auto_factor``
            times a robust spread of its earlier successive changes (1.4826 x their median absolute value),
            once ``reflection_auto_warmup`` changes have been seen. The same meaning on every backbone,
            whatever the scale of its latents (docs/notes.md, "Calibrated self-reflection").
        reflection_auto_factor: the calibrated threshold in spreads (1.5: about 7 % of checks trigger
            when the changes are Gaussian, the rate the paper's cost on VideoCrafter2 implies).
        reflection_auto_warmup: successive changes seen before the calibrated mode may trigger.
        reflection_batch: the n_samp candidates of a search share model calls (same latents; the
            backbone still splits calls by its model batch).
        reflection_samples: n_samp candidates per search.
        reflection_judge_steps: f_judg, steps the judged chunk has received.
        reflection_ref_chunks: n_ref, reference chunks in front of the judged one.
        reflect_during: ``all`` Stage-1 passes (paper A.1.3) or only while the queue ``fill`` s (code).
        score_mode: consistency score per ``frame`` (Eqs. 5-7) or one map per ``chunk`` (VC2 code).
        stage2_mode: ``stream`` (wavefront behind Stage 1, bounded memory; decision 5) or ``batch``
            (the paper: after Stage 1 ends). Both give the same latents.
        fresh_from_clip: new tail chunks are ``Noise(last clip frame, top)`` (Alg. 4/5) rather than
            pure noise.
        queue_end: ``full`` (the paper, method.md decision 1): a fresh chunk enters on every Stage-1 pass up
            to the end, so every output latent is made in a full zigzag queue (chunks past the video are
            made and dropped, as FIFO does); ``drain``: no chunk enters once the video's last chunk is in,
            and the last latents are finished in a shrinking queue (the behaviour before 2026-12-03,
            kept for comparison).
        refine_rounds: the released codes' extra refinement (method.md Alg. 5 lines 11-12, off in the
            paper): after Stage 2, every latent is re-noised to ``refine_level`` and the unified passes run
            again down to clean; repeated this many times.
        refine_level: the level the refinement re-noises to (None: K2, the Stage-2 boundary, as the Wan
            code does; the VideoCrafter2 code re-noises to DDIM index 10, level K2 + 1).

    The released Wan code's other choices, each a field (defaults: the paper / method.md; ``wan21_released``
    sets the code's; ``docs/reference.md`` lists each with its file and line and measured effect):

        flow_grid: the flow sigma grid, ``diffusers`` (``linspace(1, 1/N)``) or ``wan`` (Wan's own scheduler,
            ``linspace(0.999, 0)`` in float32; flow models only).
        static_tiling: the static passes (queue filling, self-reflection candidates) put the short window
            second to last (``remainder_last``, method.md 3.9) or first (``remainder_first``, the code).
        fill_lead: the queue counts as filling (static tiling; ``reflect_during="fill"``; the dynamic offset's
            pass counter starts after it) while its head chunk is above level K2 + ``fill_lead`` before a pass
            (1: until the ladder is complete; the code's fill loop stops one level earlier, 2).
        steady_guides: on steady Stage-1 passes a window's guides are read ``updated`` by this pass (the
            windows run head to tail) or as they were ``pre_pass`` (the code, which rebuilds its guide list
            after the pass; the windows are then independent and batch).
        reflection_lead_chunks: chunks a judged chunk needs in front of it beyond its n_ref references (the
            code: 1).
        stage2_entry: Stage-1 output at level K2 enters Stage 2 at its level (``exact``, Eq. 4) or labelled one
            level noisier, K2 + 1 (``relabel``, the code), so that Stage 2's K2 steps end at level 1, not clean.
        stage2_history: the multistep solver's history from Stage 1 is kept into Stage 2 (``keep``) or
            started afresh there (``reset``, the code).
        unified_offset_from: the dynamic offset of unified pass p (Stage 2 and refinement) is
            ``(p - 1 + unified_offset_from) mod s``: 1 gives ``p mod s`` (method.md Alg. 5), 0 the code's.

    The released VideoCrafter2 code's other choices (``videocrafter2_released`` sets them; checked against that
    code on a tiny model, ``tests/test_reference_miga_vc2.py``):

        clip_signal_scale_end, clip_signal_scale_steps: sample the base clip on the schedule with this signal scale
            (``ScheduleConfig.signal_scale_end/steps``; VideoCrafter2's ``use_scale``: 0.7 below t = 400), as the
            code does with LVDM's own DDIM; the queue keeps its plain per-frame DDIM. 1.0 (the default): the clip
            on the queue's schedule (as :class:`FIFOConfig`'s fields of the same names).
        steady_fresh: a fresh chunk that enters after the first steady Stage-1 pass is ``Noise(last clip frame,
            top)`` (``clip``, Alg. 5, with ``fresh_from_clip``) or pure Gaussian noise (``noise``, the code's Stage-1
            loop; its fill loop and its self-reflection candidates noise the clip's last frame).
    """

    steps: int = 64
    zigzag_width: int = 4
    stage2_steps: int = 10
    stride: int = 8
    guides: int = 6
    guide_selection: Literal["uniform", "nearest"] = "uniform"
    dynamic_offset: bool = True
    reflection: bool = True
    reflection_threshold: float = 0.01
    reflection_calibration: Literal["fixed", "auto"] = "fixed"
    reflection_auto_factor: float = 1.5
    reflection_auto_warmup: int = 4
    reflection_batch: bool = True
    reflection_samples: int = 5
    reflection_judge_steps: int = 13
    reflection_ref_chunks: int = 3
    reflect_during: Literal["all", "fill"] = "all"
    score_mode: Literal["frame", "chunk"] = "frame"
    stage2_mode: Literal["stream", "batch"] = "stream"
    fresh_from_clip: bool = True
    queue_end: Literal["full", "drain"] = "full"
    refine_rounds: int = 0
    refine_level: int | None = None
    flow_grid: Literal["diffusers", "wan"] = "diffusers"
    static_tiling: Literal["remainder_last", "remainder_first"] = "remainder_last"
    fill_lead: int = 1
    steady_guides: Literal["updated", "pre_pass"] = "updated"
    reflection_lead_chunks: int = 0
    stage2_entry: Literal["exact", "relabel"] = "exact"
    stage2_history: Literal["keep", "reset"] = "keep"
    unified_offset_from: int = 1
    clip_signal_scale_end: float = 1.0
    clip_signal_scale_steps: int = 400
    steady_fresh: Literal["clip", "noise"] = "clip"

    @property
    def refine_to(self) -> int:
        """The level the refinement re-noises to."""
        return self.stage2_steps if self.refine_level is None else self.refine_level

    def validate(self, native_frames: int) -> "MIGAConfig":
        """Check the config against a model window f_0; raise MigaError naming the problem."""
        self._check_sampling()
        f0, T = native_frames, self.steps
        if T < 2:
            raise MigaError(f"steps must be >= 2, got {T}")
        if not 0 <= self.guides < f0:
            raise MigaError(f"guides (m_guid={self.guides}) must be in [0, {f0 - 1}]: the model window holds "
                            f"f_0={f0} latents and needs at least one to denoise")
        local = f0 - self.guides
        if not 1 <= self.stride <= local:
            raise MigaError(f"stride s={self.stride} must be in [1, {local}]: larger than the local window "
                            f"f_0 - m_guid = {f0} - {self.guides}")
        if not 1 <= self.zigzag_width <= local:
            raise MigaError(f"zigzag width L_zig={self.zigzag_width} does not fit the window: it must be in "
                            f"[1, {local}] (f_0 - m_guid = {f0} - {self.guides})")
        if not 0 <= self.stage2_steps < T:
            raise MigaError(f"stage-2 steps K2={self.stage2_steps} must be in [0, {T - 1}] (fewer than the "
                            f"{T} total steps)")
        chunks_in_clip = f0 // self.zigzag_width
        if T - self.stage2_steps - 1 < chunks_in_clip:
            raise MigaError(f"too few stage-1 steps: T - K2 = {T - self.stage2_steps} must exceed the "
                            f"{chunks_in_clip} chunks of the base clip (f_0 / L_zig); raise --steps or lower "
                            f"--stage2-steps")
        if self.guide_selection not in ("uniform", "nearest"):
            raise MigaError(f"unknown guide selection {self.guide_selection!r}; use uniform or nearest")
        if self.reflect_during not in ("all", "fill"):
            raise MigaError(f"reflect_during must be 'all' or 'fill', got {self.reflect_during!r}")
        if self.score_mode not in ("frame", "chunk"):
            raise MigaError(f"score mode must be 'frame' or 'chunk', got {self.score_mode!r}")
        if self.stage2_mode not in ("stream", "batch"):
            raise MigaError(f"stage-2 mode must be 'stream' or 'batch', got {self.stage2_mode!r}")
        if self.queue_end not in ("full", "drain"):
            raise MigaError(f"queue_end must be 'full' or 'drain', got {self.queue_end!r}")
        for name, allowed in (("flow_grid", ("diffusers", "wan")), ("static_tiling", ("remainder_last", "remainder_first")),
                              ("steady_guides", ("updated", "pre_pass")), ("stage2_entry", ("exact", "relabel")),
                              ("stage2_history", ("keep", "reset")), ("steady_fresh", ("clip", "noise"))):
            if getattr(self, name) not in allowed:
                raise MigaError(f"{name} must be {' or '.join(allowed)}, got {getattr(self, name)!r}")
        if self.fill_lead < 1 or self.reflection_lead_chunks < 0 or self.unified_offset_from < 0:
            raise MigaError("fill_lead must be >= 1, reflection_lead_chunks and unified_offset_from >= 0")
        if not 0 < self.clip_signal_scale_end <= 1 or self.clip_signal_scale_steps < 2:
            raise MigaError("clip_signal_scale_end must be in (0, 1] and clip_signal_scale_steps >= 2")
        if self.stage2_entry == "relabel" and self.stage2_steps + 1 > T - 1:
            raise MigaError(f"stage2_entry='relabel' needs K2 + 1 < T, got K2={self.stage2_steps}, T={T}")
        if self.refine_rounds < 0:
            raise MigaError(f"refine_rounds must be >= 0, got {self.refine_rounds}")
        if self.refine_rounds and not 1 <= self.refine_to < T:
            raise MigaError(f"refine_level must be in [1, {T - 1}] (a level of the {T}-step schedule), got "
                            f"{self.refine_to}")
        if self.reflection:
            if self.reflection_threshold < 0:
                raise MigaError(f"reflection threshold must be >= 0, got {self.reflection_threshold}")
            if self.reflection_calibration not in ("fixed", "auto"):
                raise MigaError(f"reflection calibration must be 'fixed' or 'auto', got "
                                f"{self.reflection_calibration!r}")
            if not self.reflection_auto_factor > 0 or self.reflection_auto_warmup < 1:
                raise MigaError(f"calibrated reflection needs a factor > 0 and a warm-up >= 1 change, got "
                                f"{self.reflection_auto_factor} and {self.reflection_auto_warmup}")
            if self.reflection_samples < 1 or self.reflection_ref_chunks < 1 or self.reflection_judge_steps < 1:
                raise MigaError("reflection samples, judge steps and reference chunks must all be >= 1")
            room = T - self.stage2_steps - 1
            if self.reflection_judge_steps + self.reflection_ref_chunks > room:
                raise MigaError(f"self-reflection does not fit the queue: judge steps f_judg="
                                f"{self.reflection_judge_steps} + reference chunks n_ref={self.reflection_ref_chunks}"
                                f" must be <= T - K2 - 1 = {room}")
        return self

    # ---- paper presets (Sec. 4.1) ----
    @classmethod
    def videocrafter2(cls) -> "MIGAConfig":
        """VideoCrafter2: T=64, L_zig=4, K2=10, delta=0.01, m=6, n_samp=5, f_judg=13, n_ref=3, s=8,
        DDIM eta=1, CFG 12."""
        return cls()

    @classmethod
    def modelscope(cls) -> "MIGAConfig":
        """ModelScope/Zeroscope UNet3D models (not in the paper): the VideoCrafter2 preset (f_0 = 16, T=64,
        L_zig=4, K2=10, m=6, s=8, DDIM eta=1) with ModelScope's usual CFG 9."""
        return cls.videocrafter2().with_(guidance_scale=9.0)

    @classmethod
    def wan21(cls) -> "MIGAConfig":
        """Wan2.1-1.3B: T=54, L_zig=7, K2=10, delta=0.01, m=4, n_samp=3, f_judg=10, n_ref=2, s=10,
        flow UniPC order 2, shift 5, CFG 5."""
        return cls(steps=54, zigzag_width=7, stage2_steps=10, stride=10, guides=4, reflection_threshold=0.01,
                   reflection_samples=3, reflection_judge_steps=10, reflection_ref_chunks=2,
                   solver="unipc", eta=0.0, guidance_scale=5.0, flow_shift=5.0)

    @classmethod
    def wan21_released(cls) -> "MIGAConfig":
        """The MIGA authors' released Wan2.1 code (``wan_based/wan/text2video.py``, ``generate_by_miga``) where
        it differs from the paper: nearest-chunk guides read before the pass, self-reflection only while the
        queue fills (which ends one level early), remainder-first static tiling, Wan's own sigma grid, Stage 2
        entered one level noisier with fresh solver histories and offsets from 0, then one refinement round
        from level K2. Checked against that code on a tiny model (``tests/test_reference_miga_wan.py``)."""
        return cls.wan21().with_(guide_selection="nearest", reflect_during="fill", refine_rounds=1,
                                 flow_grid="wan", static_tiling="remainder_first", fill_lead=2,
                                 steady_guides="pre_pass", reflection_lead_chunks=1, stage2_entry="relabel",
                                 stage2_history="reset", unified_offset_from=0)

    @classmethod
    def videocrafter2_released(cls) -> "MIGAConfig":
        """The MIGA authors' released VideoCrafter2 code (``videocraft_based/scripts/evaluation/funcs.py``, with
        ``configs/videocrafter2.yaml``: m = 4, self-reflection off) where it differs from the paper:
        nearest-chunk guides (updated by the pass, as the paper), remainder-first tiling while the queue fills
        (which ends one level early), self-reflection only then, with one channel-and-frame mean map per chunk,
        delta 0.001 (hard-coded; the yaml's threshold is unused) and a chunk in front of the references; pure-noise
        fresh chunks once Stage 1 runs steady; the base clip by LVDM's DDIM with ``use_scale``; unified offsets from
        0 and one refinement round from DDIM index 10 (level K2 + 1). Checked against that code on a tiny model
        (``tests/test_reference_miga_vc2.py``)."""
        return cls.videocrafter2().with_(guides=4, guide_selection="nearest", reflection=False,
                                         reflection_threshold=0.001, score_mode="chunk", reflect_during="fill",
                                         reflection_lead_chunks=1, static_tiling="remainder_first", fill_lead=2,
                                         steady_fresh="noise", clip_signal_scale_end=0.7,
                                         clip_signal_scale_steps=400, unified_offset_from=0, refine_rounds=1,
                                         refine_level=11)

    @classmethod
    def skyreels_v2_df(cls) -> "MIGAConfig":
        """SkyReels-V2-DF-1.3B (not in the paper): the Wan2.1 preset with SkyReels' shift 8 and CFG 6."""
        return cls.wan21().with_(flow_shift=8.0, guidance_scale=6.0)

    @classmethod
    def gaussian(cls) -> "MIGAConfig":
        """Small numbers for the exact Gaussian world (f_0 = 16): fast enough for tests and demos.
        Self-reflection: the calibrated threshold while the queue fills (issue 15; docs/results.md: on this
        world it keeps the identity the paper's delta = 0.01 on every pass loses, at FIFO's NFE)."""
        return cls(steps=32, zigzag_width=4, stage2_steps=6, stride=8, guides=4, reflection_threshold=0.01,
                   reflection_calibration="auto", reflect_during="fill",
                   reflection_samples=3, reflection_judge_steps=8, reflection_ref_chunks=2,
                   solver="unipc", eta=0.0, guidance_scale=1.0)

    @classmethod
    def shapes(cls) -> "MIGAConfig":
        """The built-in shapes models (f_0 = 16): the Gaussian world's numbers with CFG 5 (:data:`SHAPES_GUIDANCE`),
        self-reflection as the paper (delta = 0.01, every pass): on model v2 the cheaper modes lose presence and
        shape accuracy against it (issue 15; docs/results.md)."""
        return cls.gaussian().with_(guidance_scale=SHAPES_GUIDANCE, reflection_calibration="fixed",
                                    reflect_during="all")


# ------------------------------------------------------------------------------------------ baselines (issue 16)
LVDM_DDIM = dict(timestep_spacing="leading", steps_offset=1, signal_scale_end=0.7, signal_scale_steps=400)
"""The stock LVDM DDIM sampler of the FreeNoise, FreeLong and FreePCA VideoCrafter2 repositories (spec §1.1-1.2):
grid ``range(0, 1000, 20) + 1`` at 50 steps, ``use_scale`` on (``scale_b`` 0.7 below t = 400)."""


def _attention_configs():
    """Part A's attention configs (the one home of W, S, d_t, d_s, tau, ...): imported lazily."""
    from miga.baselines.attention import FreeLongConfig, FreeNoiseConfig, FreePCAConfig

    return FreeNoiseConfig, FreeLongConfig, FreePCAConfig


@dataclass(frozen=True)
class _FullSequenceFields(_SamplingFields):
    """What FreeNoise, FreeLong and FreePCA share (``shared/spec/baselines.md`` §1): all N latents at one level,
    ``steps`` steps of the model's schedule and solver, one model call on all N frames per step (and CFG branch).

    Attributes:
        steps: T, the schedule length (50 DDIM steps in the three VideoCrafter2 repositories).
        attention: part A's attention config (:mod:`miga.baselines.attention`), which holds the method's
            constants (W, S, d_t, d_s, tau, ...); None = its defaults with the window set to the model's f_0 (and
            FreeNoise's and FreePCA's stride to f_0 / 4, the spec's S = W/4).
        timestep_spacing, steps_offset: the DDPM grid the sampler visits; None = the backbone's. The three
            VideoCrafter2 repositories run LVDM's DDIM grid ``range(0, 1000, 1000 // T) + 1`` (spec §1.1):
            ``"leading"`` with offset 1, where FIFO and MIGA use ``"linspace"``.
        signal_scale_end, signal_scale_steps: the model's ``use_scale`` (spec §1.2; VideoCrafter2: 0.7 over 400
            timesteps, on in these repositories, off in FIFO/MIGA's); None = the backbone's schedule.
        fps_condition: the fps an fps-conditioned UNet (VideoCrafter2) is given during the run (spec §1.4: 16 for
            FreeNoise, 28 for FreeLong and FreePCA); None = the backbone's own (8, as FIFO-Diffusion).
    """

    steps: int = 50
    attention: object = None
    timestep_spacing: Literal["linspace", "leading", "trailing"] | None = None
    steps_offset: int | None = None
    signal_scale_end: float | None = None
    signal_scale_steps: int | None = None
    fps_condition: float | None = None
    method = "?"
    _attention_index = 0

    def schedule_changes(self) -> dict:
        """The fields of the backbone's :class:`~miga.engine.schedules.ScheduleConfig` this config overrides."""
        changes = {"timestep_spacing": self.timestep_spacing, "steps_offset": self.steps_offset,
                   "signal_scale_end": self.signal_scale_end, "signal_scale_steps": self.signal_scale_steps}
        return {k: v for k, v in changes.items() if v is not None}

    def attention_config(self, native_frames: int):
        """The attention config for a model window of ``native_frames`` (see ``attention``)."""
        if self.attention is not None:
            return self.attention
        kind = _attention_configs()[self._attention_index]
        fields = {"window": native_frames}
        if "stride" in kind.__dataclass_fields__:
            fields["stride"] = max(1, native_frames // 4)
        return kind(**fields)

    def _check_full_sequence(self, native_frames: int) -> None:
        self._check_sampling()
        if self.steps < 1:
            raise MigaError(f"steps must be >= 1, got {self.steps}")
        kind = _attention_configs()[self._attention_index]
        if self.attention is not None and not isinstance(self.attention, kind):
            raise MigaError(f"{self.method} needs a {kind.__name__} as its attention config, got "
                            f"{type(self.attention).__name__}")
        if self.timestep_spacing not in (None, "linspace", "leading", "trailing"):
            raise MigaError(f"timestep spacing must be linspace, leading or trailing, got {self.timestep_spacing!r}")
        if self.signal_scale_end is not None and not 0 < self.signal_scale_end <= 1:
            raise MigaError(f"signal scale end must be in (0, 1], got {self.signal_scale_end}")
        if self.fps_condition is not None and not self.fps_condition > 0:
            raise MigaError(f"fps condition must be > 0, got {self.fps_condition}")
        window = self.attention_config(native_frames).window
        if window > native_frames:
            raise MigaError(f"{self.method}'s window W={window} is longer than the model's window f_0={native_frames}")


@dataclass(frozen=True)
class FreeNoiseMethod(_FullSequenceFields):
    """FreeNoise (Qiu et al., ICLR 2024; spec §4): noise rescheduling of the initial noise (§4.1 a) and window-fused
    temporal attention at every step (§4.1 b, :class:`miga.baselines.attention.WindowedAttention`).

    Attributes:
        reschedule_noise: apply the noise rescheduling (W, S of the attention config).
    """

    reschedule_noise: bool = True
    method = "freenoise"
    _attention_index = 0

    def validate(self, native_frames: int) -> "FreeNoiseMethod":
        self._check_full_sequence(native_frames)
        return self

    @classmethod
    def videocrafter2(cls) -> "FreeNoiseMethod":
        """The repository's VideoCrafter2 script: W=16, S=4 (the model's f_0 = 16 and f_0/4; ``--window-latents``
        changes them), LVDM's DDIM (grid +1, use_scale) 50 steps, eta 0, CFG 12, fps 16."""
        return cls(steps=50, solver="ddim", eta=0.0, guidance_scale=12.0, fps_condition=16.0, **LVDM_DDIM)

    @classmethod
    def modelscope(cls) -> "FreeNoiseMethod":
        """UNet3D models (spec §4.3 b): W = the model's f_0 (16 ModelScope, 24 Zeroscope), S = W/4, CFG 9."""
        return cls(steps=50, solver="ddim", eta=0.0, guidance_scale=9.0)

    @classmethod
    def shapes(cls) -> "FreeNoiseMethod":
        """Built-in model v2 (flow): W = f_0, S = f_0/4, the shapes MIGA preset's sampling (32 UniPC-2 steps, CFG 5)."""
        return cls(steps=32, solver="unipc", eta=0.0, guidance_scale=SHAPES_GUIDANCE)

    @classmethod
    def wan21(cls) -> "FreeNoiseMethod":
        """Wan2.1 (not from the paper: spec §4.3 c): window fusion of each 3-D self-attention with W = f_0 = 21
        latents, S = 5, the noise rescheduling on latent frames; the Wan MIGA preset's sampling (flow UniPC-2,
        shift 5, CFG 5) at 50 steps."""
        return cls(steps=50, solver="unipc", eta=0.0, guidance_scale=5.0, flow_shift=5.0)

    @classmethod
    def skyreels_v2_df(cls) -> "FreeNoiseMethod":
        """SkyReels-V2-DF: the Wan2.1 preset with shift 8 and CFG 6."""
        return cls.wan21().with_(flow_shift=8.0, guidance_scale=6.0)


@dataclass(frozen=True)
class FreeLongMethod(_FullSequenceFields):
    """FreeLong (Lu et al., NeurIPS 2024; spec §2): SpectralBlend temporal attention at every step
    (:class:`miga.baselines.attention.SpectralBlendAttention`) and FreeNoise's noise rescheduling as its init
    (§2.1 g).

    Attributes:
        reschedule_noise: FreeNoise's rescheduling of the initial noise.
        noise_window, noise_stride: its W, S (16, 4 in the code; None: f_0 and f_0/4).
        local_only_levels: with ``attention=None``, the UNet levels whose output is the local branch alone; None =
            the attention config's default (the finest level); ``()`` for one-level models (built-in model v2).
    """

    reschedule_noise: bool = True
    noise_window: int | None = None
    noise_stride: int | None = None
    local_only_levels: tuple[int, ...] | None = None
    method = "freelong"
    _attention_index = 1

    def attention_config(self, native_frames: int):
        if self.attention is not None or self.local_only_levels is None:
            return super().attention_config(native_frames)
        return _attention_configs()[1](window=native_frames, local_only_levels=tuple(self.local_only_levels))

    def noise_windows(self, native_frames: int) -> tuple[int, int]:
        w = self.noise_window or native_frames
        return w, self.noise_stride or max(1, w // 4)

    def validate(self, native_frames: int) -> "FreeLongMethod":
        self._check_full_sequence(native_frames)
        w, s = self.noise_windows(native_frames)
        if not 1 <= s <= w:
            raise MigaError(f"freelong's noise window {w} and stride {s} must satisfy 1 <= stride <= window")
        return self

    @classmethod
    def videocrafter2(cls) -> "FreeLongMethod":
        """The repository's VideoCrafter2 script: local +-8 frames (w = f_0 = 16), d_t = d_s = 0.25, local-only
        finest level, FreeNoise init (f_0, f_0/4) = (16, 4), LVDM's DDIM (grid +1, use_scale) 50 steps, eta 1, CFG 12,
        fps 28."""
        return cls(steps=50, solver="ddim", eta=1.0, guidance_scale=12.0, fps_condition=28.0, **LVDM_DDIM)

    @classmethod
    def modelscope(cls) -> "FreeLongMethod":
        """UNet3D models: VideoCrafter2's constants with the window = f_0 and CFG 9."""
        return cls(steps=50, solver="ddim", eta=1.0, guidance_scale=9.0)

    @classmethod
    def shapes(cls) -> "FreeLongMethod":
        """Built-in model v2: one UNet level, so no local-only level (``local_only_levels=()``); 32 UniPC-2 steps,
        CFG 5."""
        return cls(steps=32, solver="unipc", eta=0.0, guidance_scale=SHAPES_GUIDANCE, local_only_levels=())


@dataclass(frozen=True)
class FreePCAMethod(_FullSequenceFields):
    """FreePCA (Tan et al., CVPR 2025; spec §3): windowed temporal attention fused with an entropy-scaled global
    branch by PCA while the gate is open (:class:`miga.baselines.attention.PCAFuseAttention`), and the initial
    noise's block means reused (§3.1).

    Attributes:
        mean_reuse: FreePCA's "reuse mean statistics" initial noise (blocks of W).
        gate: ``timestep`` (fuse while the model timestep t > tau: DDPM models, the code's rule) or ``step``
            (fuse during the first 37/50 of the steps: flow models, where t > 250 means something else).
    """

    mean_reuse: bool = True
    gate: Literal["timestep", "step"] = "timestep"
    method = "freepca"
    _attention_index = 2

    def validate(self, native_frames: int) -> "FreePCAMethod":
        self._check_full_sequence(native_frames)
        if self.gate not in ("timestep", "step"):
            raise MigaError(f"freepca's gate must be 'timestep' or 'step', got {self.gate!r}")
        return self

    @classmethod
    def videocrafter2(cls) -> "FreePCAMethod":
        """The repository's script: W=16, S=4 (f_0 and f_0/4), 3 components, tau=250, gamma=sqrt(log_W N), LVDM's
        DDIM (grid +1, use_scale) 50 steps, eta 1, CFG 12, fps 28."""
        return cls(steps=50, solver="ddim", eta=1.0, guidance_scale=12.0, fps_condition=28.0, **LVDM_DDIM)

    @classmethod
    def modelscope(cls) -> "FreePCAMethod":
        """UNet3D models: VideoCrafter2's constants with W = f_0, S = W/4 and CFG 9."""
        return cls(steps=50, solver="ddim", eta=1.0, guidance_scale=9.0)

    @classmethod
    def shapes(cls) -> "FreePCAMethod":
        """Built-in model v2 (flow): the gate by step fraction, 32 UniPC-2 steps, CFG 5."""
        return cls(steps=32, solver="unipc", eta=0.0, guidance_scale=SHAPES_GUIDANCE, gate="step")


def _scaling_noise_search():
    """ScalingNoise's search constants (:class:`miga.baselines.scaling_noise.ScalingNoiseConfig`, their one home:
    k=5, m=3, eps=0.2 and the faithful switches): imported lazily, as part A's attention configs."""
    from miga.baselines.scaling_noise import ScalingNoiseConfig

    return ScalingNoiseConfig()


@dataclass(frozen=True)
class ScalingNoiseMethod(FIFOConfig):
    """ScalingNoise (Yang et al. 2025; ``shared/spec/baselines.md`` §5): FIFO-Diffusion (every field of
    :class:`FIFOConfig`: partitions n, lookahead, solver, guidance ...) plus a beam search over the noise of each
    fresh tail latent (:class:`miga.engine.scaling_noise.ScalingNoiseEngine`). It runs on every backbone: it needs
    only FIFO's queue, the backbone's decoder and an image embedder for the reward.

    Attributes:
        search: the search's constants and rules, a :class:`miga.baselines.scaling_noise.ScalingNoiseConfig`
            (k candidates, m beams, eps, actions, the faithful switches); default: its defaults (k=5, m=3).
        dino: a local DINO ViT-B/16 ``transformers`` folder for the reward (``miga generate --dino``); None: the
            offline proxy extractor (:class:`miga.evaluation.features.ProxyFeatures` ``("dino")``), labelled as a
            proxy in the run's statistics. It is part of the config because the reward changes the video.
        candidate_noise: ``keyed`` (each candidate's own keyed draws, the method) or ``fifo`` (every candidate's
            draws are FIFO's own fresh-noise stream: with k = m = 1, ``actions=("random_resample",)`` and
            ``first_pass_no_cfg=False`` the video is FIFO's exactly, spec §5.7 test 1).
    """

    search: object = field(default_factory=_scaling_noise_search)
    dino: str | None = None
    candidate_noise: Literal["keyed", "fifo"] = "keyed"
    method = "scalingnoise"

    def validate(self, native_frames: int) -> "ScalingNoiseMethod":
        super().validate(native_frames)
        from miga.baselines.scaling_noise import ScalingNoiseConfig

        if not isinstance(self.search, ScalingNoiseConfig):
            raise MigaError(f"scalingnoise needs a ScalingNoiseConfig as its search, got {type(self.search).__name__}")
        if self.candidate_noise not in ("keyed", "fifo"):
            raise MigaError(f"candidate noise must be 'keyed' or 'fifo', got {self.candidate_noise!r}")
        if self.dino is not None and not os.path.exists(self.dino):
            raise MigaError(f"--dino {self.dino}: no such folder (a DINO ViT-B/16 transformers folder)")
        return self

    @classmethod
    def of(cls, fifo: FIFOConfig, **search) -> "ScalingNoiseMethod":
        """ScalingNoise on the FIFO config ``fifo``; ``search`` changes fields of the default
        ``ScalingNoiseConfig`` (e.g. ``candidates=1, beams=1``)."""
        base = {f.name: getattr(fifo, f.name) for f in fields(FIFOConfig)}
        cfg = _scaling_noise_search()
        return cls(**base, search=replace(cfg, **search) if search else cfg)

    @classmethod
    def from_dict(cls, data: dict) -> "ScalingNoiseMethod":
        """The config ``dataclasses.asdict`` (or its JSON) gave ``data`` (a run's ``run.json``)."""
        from miga.baselines.scaling_noise import ScalingNoiseConfig

        data = dict(data)
        search = dict(data.pop("search"))
        if "actions" in search:
            search["actions"] = tuple(search["actions"])
        return cls(**data, search=ScalingNoiseConfig(**search))

    # ---- presets: the model's FIFO preset with the search's defaults k=5, m=3 (VC2: n=4, the spec's setting)
    @classmethod
    def videocrafter2(cls) -> "ScalingNoiseMethod":
        """The repository's setting (§5.5): FIFO on VideoCrafter2 (n = 4, T = 64, DDIM eta 1, CFG 12), k=5, m=3."""
        return cls.of(FIFOConfig.videocrafter2())

    @classmethod
    def modelscope(cls) -> "ScalingNoiseMethod":
        return cls.of(FIFOConfig.modelscope())

    @classmethod
    def wan21(cls) -> "ScalingNoiseMethod":
        """FIFO's Wan2.1 preset with k=5, m=3 (not the authors' model: every candidate's x0 is decoded through the
        causal VAE on its own)."""
        return cls.of(FIFOConfig.wan21())

    @classmethod
    def skyreels_v2_df(cls) -> "ScalingNoiseMethod":
        return cls.of(FIFOConfig.skyreels_v2_df())

    @classmethod
    def gaussian(cls) -> "ScalingNoiseMethod":
        return cls.of(FIFOConfig.gaussian())

    @classmethod
    def shapes(cls) -> "ScalingNoiseMethod":
        return cls.of(FIFOConfig.shapes())


FULL_SEQUENCE_METHODS = {"freenoise": FreeNoiseMethod, "freelong": FreeLongMethod, "freepca": FreePCAMethod}
"""The full-sequence baselines (``miga generate --method``), by name."""

PRESETS = {
    "videocrafter2": (MIGAConfig.videocrafter2, FIFOConfig.videocrafter2),
    "modelscope": (MIGAConfig.modelscope, FIFOConfig.modelscope),
    "wan2.1": (MIGAConfig.wan21, FIFOConfig.wan21),
    "skyreels-v2-df": (MIGAConfig.skyreels_v2_df, FIFOConfig.skyreels_v2_df),
    "gaussian": (MIGAConfig.gaussian, FIFOConfig.gaussian),
    "shapes": (MIGAConfig.shapes, FIFOConfig.shapes),
    "wan2.1-released": (MIGAConfig.wan21_released, FIFOConfig.wan21),
    "videocrafter2-released": (MIGAConfig.videocrafter2_released, FIFOConfig.videocrafter2_released),
}
"""Preset name -> (MIGA's, FIFO's). ``*-released``: the authors' released code where it differs from the paper,
each difference a config field, checked against that code on a tiny model (``docs/reference.md``); None where no
such comparison exists yet."""


BASELINE_PRESETS = ("videocrafter2", "modelscope", "shapes", "wan2.1", "skyreels-v2-df")
"""Presets the full-sequence baselines have: the models with separate temporal attention, and for FreeNoise alone
(window fusion) the full 3-D attention models."""

_FULL_3D_PRESETS = {"wan2.1": "wan21", "skyreels-v2-df": "skyreels_v2_df"}

METHOD_NAMES = ("miga", "fifo", "scalingnoise", *FULL_SEQUENCE_METHODS)


def method_name(config) -> str:
    """The ``--method`` name of a config: ``miga``, ``fifo``, ``scalingnoise``, ``freenoise`` ..."""
    if isinstance(config, MIGAConfig):
        return "miga"
    return getattr(config, "method", None) or "fifo"


def config_from_dict(method: str, data: dict):
    """The config of ``method`` from its record (:func:`config_record`, as a run's ``run.json`` keeps it)."""
    if method == "scalingnoise":
        return ScalingNoiseMethod.from_dict(data)
    if method in FULL_SEQUENCE_METHODS:
        raise MigaError(f"{method} runs are not checkpointed")
    cls = FIFOConfig if method == "fifo" else MIGAConfig
    return cls(**{**RECORD_DEFAULTS.get(cls, {}), **data})  # a field left out of the record had its old value


RECORD_DEFAULTS = {
    MIGAConfig: {"queue_end": "drain", "refine_rounds": 0, "refine_level": None, "flow_grid": "diffusers",
                 "static_tiling": "remainder_last", "fill_lead": 1, "steady_guides": "updated",
                 "reflection_lead_chunks": 0, "stage2_entry": "exact", "stage2_history": "keep",
                 "unified_offset_from": 1, "clip_signal_scale_end": 1.0, "clip_signal_scale_steps": 400,
                 "steady_fresh": "clip"},
    FIFOConfig: {"clip_signal_scale_end": 1.0, "clip_signal_scale_steps": 400, "padding": "clean"},
}
"""Fields added after runs were recorded (run dirs, ``miga ablate`` records), with the value every earlier run
had in effect: :func:`config_record` leaves a field out when it has that value, so earlier records and run dirs
still match the configs that make the same videos. (MIGA's ``queue_end`` was ``drain`` in effect before the field
existed; its default is now ``full``, so a default MIGA config no longer matches those records: its videos
differ.)"""


def config_record(config) -> dict:
    """The config as runs record and compare it: its fields, less those at their :data:`RECORD_DEFAULTS` value."""
    from dataclasses import asdict

    record = asdict(config)
    for cls, defaults in RECORD_DEFAULTS.items():
        if isinstance(config, cls):
            for name, value in defaults.items():
                if name in record and record[name] == value:
                    del record[name]
    return record


def preset(name: str, method: str = "miga"):
    """The named paper preset for ``method`` (``miga``, ``fifo``, ``scalingnoise``, ``freenoise``, ``freelong`` or
    ``freepca``)."""
    if name not in PRESETS:
        raise MigaError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    if method not in METHOD_NAMES:
        raise MigaError(f"unknown method {method!r}; choose one of {', '.join(METHOD_NAMES)}")
    if method in FULL_SEQUENCE_METHODS:
        cls = FULL_SEQUENCE_METHODS[method]
        attr = _FULL_3D_PRESETS.get(name, name)
        if name not in BASELINE_PRESETS or not hasattr(cls, attr):
            have = [n for n in BASELINE_PRESETS if hasattr(cls, _FULL_3D_PRESETS.get(n, n))]
            raise MigaError(f"{method} has no {name} preset (it needs separate temporal attention); choose one of "
                            f"{', '.join(have)}")
        return getattr(cls, attr)()
    if method == "scalingnoise":
        return ScalingNoiseMethod.of(PRESETS[name][1]())
    make = PRESETS[name][0 if method == "miga" else 1]
    if make is None:
        have = [n for n, pair in PRESETS.items() if pair[0 if method == "miga" else 1] is not None]
        raise MigaError(f"the {name} preset has no {method} settings (that code has not been reproduced); choose one "
                        f"of {', '.join(have)}")
    return make()
