"""With the long-video parts off, miga reproduces each model's own sampler (issue 13).

One window of plain sampling through miga's public API (``LongVideoPipeline(..., method="plain")``) against
the library's reference, same initial latents, steps, shift/schedule, guidance and negative prompt, tiny
random components in float32: latents and decoded frames agree within 1e-4 of their standard deviation.
Each test also shows it can fail: with the timestep conversion undone (Wan, SkyReels: the fractional
σ·1000), or, where the timesteps are grid integers with nothing to convert (UNet3D, VideoCrafter2), with
the timestep fed one training step off, the same comparison is far outside the tolerance.
"""

import copy

import numpy as np
import pytest
import torch

pytest.importorskip("diffusers")
pytest.importorskip("ftfy")  # SkyReels' DF pipeline cleans prompts with it unconditionally

import diffusers  # noqa: E402

import miga  # noqa: E402
from miga.backbones.base import NoiseLevels  # noqa: E402
from miga.backbones.unet3d import MODELSCOPE_SCHEDULER  # noqa: E402
from miga.backbones.unet3d_random import random_unet3d_components  # noqa: E402
from miga.backbones.videocrafter2 import VideoCrafter2Model  # noqa: E402
from miga.backbones.videocrafter2_random import random_videocrafter2_components  # noqa: E402
from miga.backbones.wan import WAN_NEGATIVE_PROMPT  # noqa: E402
from miga.backbones.wan_random import SCHEDULER, random_wan_components  # noqa: E402
from miga.engine import schedules  # noqa: E402
from miga.engine.rng import KeyedNoise  # noqa: E402

TOLERANCE = 1e-4  # of the reference's standard deviation
BROKEN = 1e-3  # a broken conversion must be at least this far off


def relative_error(ours, ref) -> float:
    ours, ref = torch.as_tensor(np.asarray(ours)).double(), torch.as_tensor(np.asarray(ref)).double()
    assert ours.shape == ref.shape
    return float((ours - ref).abs().max() / ref.std())


@pytest.fixture
def fractional_flow_timesteps(monkeypatch):
    """Undo the conversion: feed flow models σ·1000 as it is (what miga did before issue 13)."""
    monkeypatch.setattr(schedules, "flow_model_timesteps",
                        lambda config, sigmas: [s * config.num_train_timesteps for s in sigmas])


@pytest.fixture
def timesteps_one_step_off(monkeypatch):
    """Feed every frame the training timestep after its own (t + 1): a conversion off by one step."""
    original = schedules.Schedule.noise_levels

    def shifted(self, levels):
        nl = original(self, levels)
        return NoiseLevels(nl.timesteps + 1, nl.alphas, nl.sigmas)

    monkeypatch.setattr(schedules.Schedule, "noise_levels", shifted)


def initial_latents(channels: int, frames: int, h: int, w: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(1, channels, frames, h, w, generator=torch.Generator().manual_seed(seed))


# ------------------------------------------------------------------------------------------------ Wan2.1
WAN_CALL = dict(prompt="a cat walking on the beach at sunset", negative_prompt=WAN_NEGATIVE_PROMPT, height=32,
                width=32, num_frames=9, num_inference_steps=12, guidance_scale=5.0)


@pytest.fixture(scope="module", params=[1, 2], ids=["wan-seed1", "wan-seed2"])
def wan_reference(request):
    """A tiny random WanPipeline (UniPC, shift 3) and its outputs for fixed initial latents."""
    parts = random_wan_components("tiny", seed=request.param)
    pipe = diffusers.WanPipeline(scheduler=diffusers.UniPCMultistepScheduler(**SCHEDULER), **parts)
    init = initial_latents(16, 3, 4, 4)
    refs = {kind: pipe(**WAN_CALL, latents=init.clone(), output_type=kind, max_sequence_length=512).frames
            for kind in ("latent", "np")}
    return pipe, init, refs


def wan_plain(pipe, init, output_type):
    long_pipe = miga.LongVideoPipeline.from_pipe(pipe)
    return long_pipe(**WAN_CALL, method="plain", latents=init.clone(), output_type=output_type,
                     progress=False).frames


@pytest.mark.parametrize("output_type", ["latent", "np"])
def test_wan_plain_sampling_equals_wan_pipeline(wan_reference, output_type):
    pipe, init, refs = wan_reference
    assert relative_error(wan_plain(pipe, init, output_type), refs[output_type]) < TOLERANCE


def test_wan_parity_fails_with_fractional_timesteps(wan_reference, fractional_flow_timesteps):
    pipe, init, refs = wan_reference
    assert relative_error(wan_plain(pipe, init, "latent"), refs["latent"]) > BROKEN


def test_wan_is_fed_the_schedulers_integer_timesteps(wan_reference):
    """Every level's timestep is the one diffusers' UniPC feeds (int64), for any step count and shift."""
    from miga.backbones.wan import WanModel

    pipe = wan_reference[0]
    backbone = WanModel.from_pipe(pipe, height=32, width=32)
    for steps, shift in ((12, 3.0), (54, 5.0), (50, 8.0)):
        ref = diffusers.UniPCMultistepScheduler(**{**SCHEDULER, "flow_shift": shift})
        ref.set_timesteps(steps)
        ours = schedules.Schedule(schedules.ScheduleConfig(kind="flow", shift=shift, integer_timesteps=True), steps)
        assert backbone.default_schedule.integer_timesteps
        assert ours.timesteps[1:][::-1] == [float(t) for t in ref.timesteps]
        assert ours.sigmas[1:][::-1] == pytest.approx(ref.sigmas[:-1].double().tolist(), abs=1e-7)


# ------------------------------------------------------------------------------------------------ SkyReels-V2-DF
SKY_CALL = dict(prompt="a bird flying over the sea", negative_prompt="a dog on the road", height=32, width=32,
                num_frames=9, num_inference_steps=10, guidance_scale=6.0)


def skyreels_reference(pipe, init, output_type, monkeypatch, unaliased: bool):
    """``SkyReelsV2DiffusionForcingPipeline`` run synchronously (``ar_step=0``) on one base window.

    Two things stand between its ``latents`` argument and this comparison, both worked around here and
    nowhere else: (1) in diffusers 0.42.1 ``prepare_latents`` returns a bare tensor when given ``latents``
    while ``__call__`` unpacks four values, so the given latents are put in place of the ones it draws;
    (2) with ``unaliased``, each per-frame UniPC gets a copy of its frame: the pipeline (like SkyReels' own
    code) passes ``latents[:, :, idx]``, a view, which the scheduler keeps as ``last_sample`` and the
    pipeline then overwrites in place, so the first UniC correction reads the stepped sample instead of the
    one before the step. Everything else is the pipeline's own loop: timestep matrix, one scheduler per
    frame, CFG as two passes, fps embedding, decoding.
    """
    draw = pipe.prepare_latents

    def prepare(*args, **kwargs):
        args = list(args)
        args[8] = None  # the `latents` parameter
        drawn, *rest = draw(*args, **kwargs)
        return (init.clone().to(drawn), *rest)

    monkeypatch.setattr(pipe, "prepare_latents", prepare)
    if unaliased:
        step = diffusers.UniPCMultistepScheduler.step
        monkeypatch.setattr(diffusers.UniPCMultistepScheduler, "step",
                            lambda self, out, t, sample, *a, **k: step(self, out, t, sample.clone(), *a, **k))
    try:
        return pipe(**SKY_CALL, latents=init.clone(), output_type=output_type, base_num_frames=9,
                    ar_step=0).frames
    finally:
        monkeypatch.undo()


@pytest.fixture(scope="module")
def skyreels_pipe():
    parts = random_wan_components("tiny", skyreels=True, seed=2)
    scheduler = diffusers.UniPCMultistepScheduler(**{**SCHEDULER, "flow_shift": 8.0})
    return diffusers.SkyReelsV2DiffusionForcingPipeline(scheduler=scheduler, **parts), initial_latents(16, 3, 4, 4)


def skyreels_plain(pipe, init, output_type):
    return miga.LongVideoPipeline.from_pipe(pipe)(**SKY_CALL, method="plain", latents=init.clone(),
                                                  output_type=output_type, progress=False).frames


@pytest.mark.parametrize("output_type", ["latent", "np"])
def test_skyreels_plain_sampling_equals_the_diffusion_forcing_pipeline(skyreels_pipe, monkeypatch, output_type):
    pipe, init = skyreels_pipe
    ref = skyreels_reference(pipe, init, output_type, monkeypatch, unaliased=True)
    assert relative_error(skyreels_plain(pipe, init, output_type), ref) < TOLERANCE


def test_skyreels_parity_fails_with_fractional_timesteps(skyreels_pipe, monkeypatch):
    pipe, init = skyreels_pipe
    ref = skyreels_reference(pipe, init, "latent", monkeypatch, unaliased=True)
    monkeypatch.setattr(schedules, "flow_model_timesteps",
                        lambda config, sigmas: [s * config.num_train_timesteps for s in sigmas])
    assert relative_error(skyreels_plain(pipe, init, "latent"), ref) > BROKEN


def test_skyreels_reference_as_shipped_differs_only_by_its_aliased_unipc_history(skyreels_pipe, monkeypatch):
    """The DF pipeline as shipped (view aliasing, see :func:`skyreels_reference`) is not UniPC: it ends far
    from miga's UniPC and from its own unaliased run; the aliasing is the whole difference (test above)."""
    pipe, init = skyreels_pipe
    shipped = skyreels_reference(pipe, init, "latent", monkeypatch, unaliased=False)
    unaliased = skyreels_reference(pipe, init, "latent", monkeypatch, unaliased=True)
    assert relative_error(shipped, unaliased) > BROKEN
    assert relative_error(skyreels_plain(pipe, init, "latent"), shipped) > BROKEN


# ------------------------------------------------------------------------------------------------ UNet3D
UNET_CALL = dict(prompt="a red ball rolling", height=64, width=64, num_frames=4, num_inference_steps=10,
                 guidance_scale=9.0)


@pytest.fixture(scope="module")
def unet3d_reference():
    parts = random_unet3d_components(seed=3)
    scheduler = diffusers.DDIMScheduler(**MODELSCOPE_SCHEDULER)
    pipe = diffusers.TextToVideoSDPipeline(scheduler=scheduler, **parts)
    init = initial_latents(4, 4, 8, 8)
    refs = {kind: pipe(**UNET_CALL, latents=init.clone(), output_type=kind, eta=0.0).frames
            for kind in ("latent", "np")}
    return pipe, init, refs


def unet3d_plain(pipe, init, output_type):
    return miga.LongVideoPipeline.from_pipe(pipe)(**UNET_CALL, method="plain", eta=0.0, negative_prompt="",
                                                  latents=init.clone(), output_type=output_type,
                                                  progress=False).frames


@pytest.mark.parametrize("output_type", ["latent", "np"])
def test_unet3d_plain_sampling_equals_text_to_video_sd_pipeline(unet3d_reference, output_type):
    pipe, init, refs = unet3d_reference
    assert relative_error(unet3d_plain(pipe, init, output_type), refs[output_type]) < TOLERANCE


def test_unet3d_parity_fails_with_timesteps_one_step_off(unet3d_reference, timesteps_one_step_off):
    pipe, init, refs = unet3d_reference
    assert relative_error(unet3d_plain(pipe, init, "latent"), refs["latent"]) > BROKEN


# ------------------------------------------------------------------------------------------------ VideoCrafter2
VC2_PROMPT = "a red ball rolling"
VC2_STEPS, VC2_CFG, VC2_ETA = 64, 12.0, 1.0  # the VideoCrafter2 preset: grid round(linspace(0, 999, 64))


@pytest.fixture(scope="module")
def videocrafter2():
    backbone = VideoCrafter2Model.from_components(random_videocrafter2_components(seed=4), height=64, width=64,
                                                  window_latents=4, device="cpu")
    return backbone, initial_latents(4, 4, 8, 8)


def videocrafter2_reference(backbone, init, seed: int = 0):
    """VideoCrafter2's DDIM driven by hand with diffusers' ``DDIMScheduler`` over miga's UNet: LVDM's betas,
    the grid ``round(linspace(0, 999, 64))`` (ascending 0, 16, 32, ...), eta 1 with the noise miga draws for
    each frame and level (keyed randomness), CFG 12 against the empty prompt, fps 8.

    diffusers' DDIM takes the previous timestep as ``t - 1000 // num_inference_steps``, which assumes an evenly
    spaced grid; VideoCrafter2's grid is not (steps of 15 and 16), so before each step the scheduler's
    ``num_inference_steps`` is set to the value that makes that subtraction land on the grid's previous
    timestep (1000 // (1000 // gap) == gap for gaps of 15 and 16)."""
    scheduler = diffusers.DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                        num_train_timesteps=1000, clip_sample=False, set_alpha_to_one=False,
                                        timestep_spacing="linspace", steps_offset=0, prediction_type="epsilon")
    scheduler.set_timesteps(VC2_STEPS)
    grid = [int(t) for t in scheduler.timesteps]  # descending: 999 ... 16, 0
    assert grid == [int(t) for t in np.linspace(0, 999, VC2_STEPS).round()[::-1]]
    noise = KeyedNoise(seed, backbone.latent_shape)
    frames = init.shape[2]
    cond, uncond = backbone.encode_prompt(VC2_PROMPT), backbone.encode_prompt("")
    x = init.clone()
    for i, t in enumerate(grid):
        level = VC2_STEPS - i  # miga's level of timestep t
        with torch.no_grad():
            ts = torch.full((2, frames), float(t))
            eps = backbone.unet(torch.cat([x, x]), ts, torch.stack([uncond, cond]), fps=8.0)
        eps_u, eps_c = eps.chunk(2)
        eps = eps_u + VC2_CFG * (eps_c - eps_u)
        gap = t - grid[i + 1] if i + 1 < len(grid) else 1000 // VC2_STEPS  # t = 0 steps to alpha_bar[0]
        scheduler.num_inference_steps = 1000 // gap
        assert t - 1000 // scheduler.num_inference_steps == (grid[i + 1] if i + 1 < len(grid) else t - gap)
        variance_noise = torch.stack([noise.one(f, level, "native/eta") for f in range(frames)], dim=1)[None]
        x = scheduler.step(eps, t, x, eta=VC2_ETA, variance_noise=variance_noise).prev_sample
    return x


def decode_like_diffusers(backbone, latents):
    """``vae.decode(latents / scaling_factor)`` of all frames at once, then diffusers' video postprocessing."""
    from diffusers.video_processor import VideoProcessor

    b, c, f, h, w = latents.shape
    with torch.no_grad():
        images = backbone.vae.decode(latents.permute(0, 2, 1, 3, 4).reshape(b * f, c, h, w) / 0.18215).sample
    video = images.reshape(b, f, *images.shape[1:]).permute(0, 2, 1, 3, 4)
    return VideoProcessor().postprocess_video(video, output_type="np")


def videocrafter2_plain(backbone, init, output_type):
    return miga.LongVideoPipeline(backbone)(VC2_PROMPT, method="plain", latents=init.clone(), seed=0,
                                            output_type=output_type, progress=False).frames


def test_videocrafter2_settings_are_the_presets(videocrafter2):
    backbone = videocrafter2[0]
    cfg = miga.preset("videocrafter2", "miga")
    assert (cfg.steps, cfg.guidance_scale, cfg.eta, cfg.solver) == (VC2_STEPS, VC2_CFG, VC2_ETA, "ddim")
    assert backbone.fps_condition == 8.0 and backbone.negative_prompt == ""
    assert schedules.Schedule(backbone.default_schedule, VC2_STEPS).timesteps[1:] == \
        [float(t) for t in np.linspace(0, 999, VC2_STEPS).round()]


def test_videocrafter2_plain_sampling_equals_ddim_by_hand(videocrafter2):
    backbone, init = videocrafter2
    ref = videocrafter2_reference(backbone, init)
    ours = videocrafter2_plain(backbone, init, "latent")
    assert relative_error(ours, ref) < TOLERANCE
    frames = videocrafter2_plain(backbone, init, "np")
    assert relative_error(frames, decode_like_diffusers(backbone, ref)) < TOLERANCE


def test_videocrafter2_parity_fails_with_timesteps_one_step_off(videocrafter2, timesteps_one_step_off):
    backbone, init = videocrafter2
    ref = videocrafter2_reference(backbone, copy.deepcopy(init))
    assert relative_error(videocrafter2_plain(backbone, init, "latent"), ref) > BROKEN


# ------------------------------------------------------------------------------------------------ long runs
def recorded_timesteps(backbone, run) -> set:
    """Every timestep ``backbone.predict`` is fed while ``run()`` makes a video."""
    seen, predict = set(), backbone.predict

    def record(latents, levels, conds):
        seen.update(float(t) for t in levels.timesteps.flatten())
        return predict(latents, levels, conds)

    backbone.predict = record
    try:
        run()
    finally:
        del backbone.predict
    return seen


LONG_MIGA = miga.MIGAConfig(steps=20, zigzag_width=2, stage2_steps=4, stride=2, guides=2, reflection=True,
                            reflection_threshold=0.0, reflection_samples=2, reflection_judge_steps=4,
                            reflection_ref_chunks=2, solver="unipc", eta=0.0, guidance_scale=5.0, flow_shift=5.0)


@pytest.mark.parametrize("method", ["miga", "fifo"])
def test_long_runs_feed_wan_only_its_schedulers_timesteps(wan_reference, method):
    """FIFO's ladder and lookahead, MIGA's Stage 1 and 2, guides and reflection candidates: every noisy level a
    slot holds is fed as one of the timesteps diffusers' UniPC has for that step count and shift."""
    from miga.backbones.wan import WanModel

    backbone = WanModel.from_pipe(wan_reference[0], height=32, width=32, window_latents=6)
    config = LONG_MIGA if method == "miga" else miga.preset("wan2.1", "fifo").with_(partitions=2)
    video = miga.LongVideo(backbone, "a cat", 61, config, seed=0)
    seen = recorded_timesteps(backbone, lambda: list(video.latents()))
    steps = config.steps if method == "miga" else config.steps(6)
    ref = diffusers.UniPCMultistepScheduler(**{**SCHEDULER, "flow_shift": config.flow_shift})
    ref.set_timesteps(steps)
    grid = {float(t) for t in ref.timesteps}
    # and 0 for clean latents (FIFO's lookahead padding), as the DF pipeline feeds finished frames
    assert seen <= grid | {0.0} and len(seen - {0.0}) == steps
    if method == "miga":
        assert video.stats.reflection_checks > 0


def test_long_runs_feed_unet3d_only_its_ddim_grid(unet3d_reference):
    pipe = unet3d_reference[0]
    backbone = miga.from_pipe(pipe, height=64, width=64, window_latents=6)
    config = LONG_MIGA.with_(solver="ddim", eta=1.0, flow_shift=None, guidance_scale=9.0)
    video = miga.LongVideo(backbone, "a red ball", 16, config, seed=0)
    seen = recorded_timesteps(backbone, lambda: list(video.latents()))
    ref = diffusers.DDIMScheduler(**MODELSCOPE_SCHEDULER)
    ref.set_timesteps(config.steps)
    assert seen <= {float(t) for t in ref.timesteps}
