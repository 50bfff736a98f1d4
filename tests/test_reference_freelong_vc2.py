"""miga's FreeLong against FreeLong's own VideoCrafter2 sampler (recorded fixture, no reference code).

``tests/fixtures/reference/freelong_vc2.safetensors`` was written by ``scripts/reference/freelong_vc2.py``, which
ran the authors' ``examples/VideoCrafter2/scripts/evaluation/inference.py`` (aniki-ly/FreeLong, commit in the
fixture's metadata) on a tiny random VideoCrafter2 UNet with the flags of their script (eta 1, CFG 12, fps 28;
local band +-8 frames, d_s = d_t = 0.25, FreeNoise init 16/4) at N = 32 frames, 10 DDIM steps and 4x8 latents.
Their constants for 128 frames at 320x512 were adapted in memory to the tiny model (the harness's docstring):
the local mask built for N, the filters for the tiny grids, and their "2560 tokens per frame" finest level read
as the tiny model's finest level (4x8). The model's temporal levels are then 4x8 (local only) and 2x4 (the
middle block: global and local blended). The fixture holds the weights, the text embeddings, every random draw
under miga's keys (initial noise and DDIM eta noise), the permutations of the noise rescheduling, and their
states: the rescheduled x_T, the latents after each step, the first step's UNet outputs, and the input and
output of three temporal transformer blocks.

Here miga runs ``FullSequenceEngine`` with ``FreeLongMethod.videocrafter2()`` (``steps`` set to 10; window,
noise window and stride from the model's f_0 = 16), built as ``LongVideo._new_engine`` builds it, from the
same weights and draws; the permutations of the rescheduling are fed to miga's rule through a stub for
``torch.randperm`` (:class:`PermutationReplay`). Each state is compared as max |miga - theirs| / std(theirs).
"""

from __future__ import annotations

import os
from dataclasses import replace

import pytest
import torch

import miga.baselines.noise as noise_module
from miga.backbones.videocrafter2 import VIDEOCRAFTER2_SCHEDULE
from miga.baselines.attention import AttentionSite, FreeLongConfig, SpectralBlendAttention
from miga.baselines.hooks import attention_policy
from miga.baselines.methods import noise_rule, step_context
from miga.config import FreeLongMethod
from miga.engine.full_sequence import FullSequenceEngine
from miga.engine.schedules import Schedule
from miga.engine.solvers import make_solver
from miga.engine.stepper import Stats, WindowStepper
from reference_helpers import FixtureBackbone, PermutationReplay, ReplayNoise, load_vc2_fixture, rel

FIXTURE = os.path.join(os.path.dirname(__file__), "fixtures", "reference", "freelong_vc2.safetensors")
TOLERANCE = 1e-4
NATIVE_FRAMES = 16


@pytest.fixture(scope="module")
def fx():
    return load_vc2_fixture(FIXTURE)


def preset(s: dict, **changes) -> FreeLongMethod:
    return replace(FreeLongMethod.videocrafter2(), steps=s["steps"], **changes)


def make_engine(fx, cfg: FreeLongMethod, monkeypatch, replay_perms: bool = True):
    s = fx["s"]
    backbone = FixtureBackbone(fx["unet"], s["latent_shape"], NATIVE_FRAMES)
    schedule = Schedule(replace(backbone.default_schedule, **cfg.schedule_changes()), cfg.steps)
    noise = ReplayNoise(fx["table"], s["latent_shape"])
    stepper = WindowStepper(backbone, schedule, make_solver(cfg.solver, schedule, cfg.eta), noise, lambda i: 0,
                            [fx["cond"]], fx["uncond"], cfg.guidance_scale, Stats())
    replay = PermutationReplay(fx["perms"])
    if replay_perms:
        monkeypatch.setattr(noise_module, "torch", replay)
    engine = FullSequenceEngine(stepper, s["frames"], cfg.method, prepare_noise=noise_rule(cfg, NATIVE_FRAMES),
                                context=step_context(backbone, cfg, NATIVE_FRAMES))
    return engine, backbone, noise, replay


def latents(engine) -> torch.Tensor:
    return torch.stack([slot.latent for slot in engine.slots])


def run(fx, cfg: FreeLongMethod, monkeypatch, their_x_t: bool = False, replay_perms: bool = True,
        stop: int | None = None):
    """(miga's x_T, its latents after every step, the replay noise); ``their_x_t``: start from theirs;
    ``stop``: only the first ``stop`` steps."""
    engine, _, noise, _ = make_engine(fx, cfg, monkeypatch, replay_perms and not their_x_t)
    engine.start()
    engine.started = True
    if their_x_t:
        for slot, x in zip(engine.slots, fx["x_T"]):
            slot.latent = x.clone()
    start, states = latents(engine), []
    for k in range(stop or cfg.steps):
        out = engine.step()
        states.append(torch.stack([o.latent for o in out]) if k == cfg.steps - 1 else latents(engine))
    return start, torch.stack(states), noise


# ---------------------------------------------------------------- the fixture itself
def test_fixture_records_its_source(fx):
    assert fx["meta"]["repository"] == "https://github.com/aniki-ly/FreeLong"
    assert fx["meta"]["commit"].startswith("98cf95e") and len(fx["meta"]["commit"]) == 40
    assert os.path.getsize(FIXTURE) <= 2_000_000
    s = fx["s"]
    assert (s["frames"], s["steps"], s["eta"], s["guidance_scale"], s["fps"], s["local_window"], s["d_s"],
            s["d_t"]) == (32, 10, 1.0, 12.0, 28, 16, 0.25, 0.25)
    assert s["grids"] == [[4, 8], [2, 4]] and fx["states"].shape == (10, 32, 4, 4, 8)
    assert s["forward_check"]["float64"] <= 1e-6  # their UNet vs miga's with FreeLong (FFT in float32)


def test_preset_matches_their_flags(fx):
    cfg = preset(fx["s"]).validate(NATIVE_FRAMES)
    att = cfg.attention_config(NATIVE_FRAMES)
    assert (att.window, att.mask, att.d_t, att.d_s, att.local_only_levels) == (16, "strict", 0.25, 0.25, (0,))
    assert cfg.noise_windows(NATIVE_FRAMES) == (fx["s"]["noise_window"], fx["s"]["noise_stride"])
    assert (cfg.eta, cfg.guidance_scale, cfg.fps_condition) == (1.0, 12.0, 28.0)
    schedule = Schedule(replace(VIDEOCRAFTER2_SCHEDULE, **cfg.schedule_changes()), cfg.steps)
    assert [int(schedule.timesteps[k]) for k in range(cfg.steps, 0, -1)] == fx["s"]["timesteps"]


# ---------------------------------------------------------------- what matches
def test_noise_rescheduling_matches(fx, monkeypatch):
    engine, _, noise, replay = make_engine(fx, preset(fx["s"]), monkeypatch)
    engine.start()
    assert torch.equal(latents(engine), fx["x_T"])
    assert replay.calls == len(fx["perms"]) == (fx["s"]["frames"] - 16) // 4


def site_policy(config: FreeLongConfig, grid, level):
    """The FreeLong policy with a fixed site: for calling one transformer block outside a UNet call."""
    policy = SpectralBlendAttention(config)
    return lambda q, k, v, bias=None, site=None: policy(q, k, v, bias, AttentionSite(grid=grid, level=level))


@pytest.mark.parametrize("j", range(3))
def test_temporal_block_matches(fx, j):
    """One temporal transformer block (attn1, attn2, feed-forward) with miga's ``SpectralBlendAttention`` on
    their input: their ``TemporalBasicTransformerBlock`` output. Sites 0 and 1 are at the finest level (local
    only; rows checked one by one), site 2 is the middle block (2x4 grid, global and local blended by the 3-D
    low-pass)."""
    name, when, rows = fx["s"]["block_sites"][j]
    block = fx["unet"].get_submodule(name)
    x, theirs = fx[f"block{j}.in"], fx[f"block{j}.out"]
    n = fx["s"]["frames"]
    grid, level = ((1, n, 1, x.shape[0]), 0) if rows else ((1, n, 2, 4), 1)
    with torch.no_grad(), attention_policy(fx["unet"], site_policy(FreeLongConfig(), grid, level)):
        out = block(x)
    assert rel(out, theirs) <= 1e-5
    wrong = [FreeLongConfig(window=8), FreeLongConfig(mask="adjusted")]  # 0.48 to 0.86 here
    if not rows:  # the middle block: 3.4e-2, 7.9e-2, 9.9e-2 here
        wrong += [FreeLongConfig(d_t=0.5), FreeLongConfig(d_s=0.5), FreeLongConfig(local_only_levels=(1,))]
    for config in wrong:  # mutation checks
        with torch.no_grad(), attention_policy(fx["unet"], site_policy(config, grid, level)):
            assert rel(block(x), theirs) > 1e-2, config


def test_first_model_call_matches(fx, monkeypatch):
    cfg = preset(fx["s"])
    engine, backbone, *_ = make_engine(fx, cfg, monkeypatch)
    levels = engine.stepper.schedule.noise_levels([[cfg.steps] * fx["s"]["frames"]] * 2)
    x = fx["x_T"].transpose(0, 1)[None].expand(2, -1, -1, -1, -1)
    with torch.no_grad(), engine.context(0, cfg.steps):
        eps = backbone.predict(x, levels, [fx["uncond"], fx["cond"]])
    assert rel(eps[1].transpose(0, 1), fx["eps_cond"]) <= TOLERANCE
    assert rel(eps[0].transpose(0, 1), fx["eps_uncond"]) <= TOLERANCE


def test_each_step_matches_from_their_state(fx, monkeypatch):
    """Teacher-forced: from their latents before each step, one step of miga's engine (with their eta noise)
    gives their latents after it."""
    cfg = preset(fx["s"])
    engine, *_ = make_engine(fx, cfg, monkeypatch)
    engine.start()
    engine.started = True
    before = torch.cat([fx["x_T"][None], fx["states"][:-1]])
    worst = []
    for k in range(cfg.steps):
        for slot, x in zip(engine.slots, before[k]):
            slot.latent = x.clone()
        out = engine.step()
        worst.append(rel(torch.stack([o.latent for o in out]) if out else latents(engine), fx["states"][k]))
    assert max(worst) <= TOLERANCE, worst


def test_end_to_end_matches(fx, monkeypatch):
    start, states, noise = run(fx, preset(fx["s"]), monkeypatch)
    assert torch.equal(start, fx["x_T"])
    assert rel(states, fx["states"]) <= TOLERANCE
    assert noise.used == set(fx["table"])  # every draw of theirs, no other


# ---------------------------------------------------------------- mutation checks: each must fail
MUTATIONS = {  # changes, steps run (the latents compared after the last of them)
    "d_t 0.5": (dict(attention=FreeLongConfig(d_t=0.5)), 10),
    "d_s 0.5": (dict(attention=FreeLongConfig(d_s=0.5)), 10),
    "local window 8": (dict(attention=FreeLongConfig(window=8)), 2),
    "adjusted mask": (dict(attention=FreeLongConfig(mask="adjusted")), 2),
    "blend at the finest level too": (dict(local_only_levels=()), 2),
    "eta 0": (dict(eta=0.0), 2),
    "fps 16": (dict(fps_condition=16.0), 2),
    "no use_scale": (dict(signal_scale_end=1.0), 10),  # acts below t = 400 only: steps 7 to 10
}


@pytest.mark.parametrize("name", list(MUTATIONS))
def test_each_sampler_change_is_seen(fx, monkeypatch, name):
    """One thing of the sampler changed (from their x_T): the latents fail the comparison. The cut-offs act on
    the middle block only (2x4 grid) of a net with damped temporal outputs, so they move the final latents
    least: d_t 0.5 by 1.5e-3 and d_s 0.5 by 5.7e-3 (80 and 300 times the match's 1.9e-5); the block test sees
    them at one layer (3.4e-2, 7.9e-2)."""
    changes, steps = MUTATIONS[name]
    _, states, _ = run(fx, preset(fx["s"], **changes), monkeypatch, their_x_t=True, stop=steps)
    assert rel(states[-1], fx["states"][steps - 1]) > 10 * TOLERANCE


@pytest.mark.parametrize("change", ["rescheduling off", "miga's own permutations"])
def test_each_noise_change_is_seen(fx, monkeypatch, change):
    """The rescheduling off, or miga's own keyed permutations: x_T differs (by 5.6 and 4.7 std; the final
    latents then by 4.3)."""
    cfg = preset(fx["s"], reschedule_noise=change != "rescheduling off")
    engine, *_ = make_engine(fx, cfg, monkeypatch, replay_perms=change == "rescheduling off")
    engine.start()
    start = latents(engine)
    assert torch.equal(start[:16], fx["x_T"][:16]) and rel(start, fx["x_T"]) > 1


def figures() -> dict:
    """max |diff| / std of every comparison and mutation (``python tests/test_reference_freelong_vc2.py``)."""
    fx, out = load_vc2_fixture(FIXTURE), {}
    with pytest.MonkeyPatch.context() as mp:
        start, states, _ = run(fx, preset(fx["s"]), mp)
    out["x_T"] = rel(start, fx["x_T"])
    for k in range(fx["s"]["steps"]):
        out[f"step {k + 1} (t = {fx['s']['timesteps'][k]})"] = rel(states[k], fx["states"][k])
    for name, (change, steps) in MUTATIONS.items():
        with pytest.MonkeyPatch.context() as mp:
            _, states, _ = run(fx, preset(fx["s"], **change), mp, their_x_t=True)
        out[f"mutation {name}: step {steps}"] = rel(states[steps - 1], fx["states"][steps - 1])
        out[f"mutation {name}: final"] = rel(states[-1], fx["states"][-1])
    for name, cfg, replay in (("rescheduling off", dict(reschedule_noise=False), True),
                              ("miga's own permutations", {}, False)):
        with pytest.MonkeyPatch.context() as mp:
            start, states, _ = run(fx, preset(fx["s"], **cfg), mp, replay_perms=replay)
        out[f"mutation {name}: x_T"] = rel(start, fx["x_T"])
        out[f"mutation {name}: final"] = rel(states[-1], fx["states"][-1])
    return out


if __name__ == "__main__":
    torch.set_num_threads(1)
    for key, value in figures().items():
        print(f"{key:48s} {value:.2e}")
