"""miga's FreeNoise against FreeNoise's own VideoCrafter2 sampler (recorded fixture, no reference code).

``tests/fixtures/reference/freenoise_vc2.safetensors`` was written by ``scripts/reference/freenoise_vc2.py``,
which ran the authors' ``scripts/evaluation/inference_freenoise.py`` (AILab-CVC/FreeNoise, commit in the
fixture's metadata) on a tiny random VideoCrafter2 UNet with the flags of their 512 script (eta 0, CFG 12, fps
16, W = 16, S = 4) at N = 32 frames, 10 DDIM steps and 4x4x4 latents. It holds the weights, the two text
embeddings, the N(0, I) initial noise under miga's keys, the permutations of their noise rescheduling, and
their states: the rescheduled x_T, the latents after each of the 10 steps, the UNet's two outputs at the first
step, and the input and output of four temporal self-attentions (first rows).

Here miga runs ``FullSequenceEngine`` with ``FreeNoiseMethod.videocrafter2()`` (only ``steps`` changed to the
fixture's 10; its window W = f_0 = 16 and stride S = 4 come from the model's 16 frames), built as
``LongVideo._new_engine`` builds it (``noise_rule``, ``step_context``, the preset's schedule changes), from the
same weights and draws. miga's rule draws its permutations with ``torch.randperm(S, generator)`` from a generator
keyed by the seed; the authors' with Python's ``random.shuffle``. :class:`PermutationReplay` stands in for
``torch`` inside ``miga.baselines.noise`` and answers each ``randperm`` with the authors' permutation for that
group (in order), checking it is asked for S items with miga's keyed generator. Everything else is miga's.
Each state is compared as max |miga - theirs| / std(theirs).
"""

from __future__ import annotations

import os
from dataclasses import replace

import pytest
import torch

import miga.baselines.noise as noise_module
from miga.backbones.videocrafter2 import VIDEOCRAFTER2_SCHEDULE
from miga.baselines.attention import FreeNoiseConfig, WindowedAttention
from miga.baselines.hooks import attention_policy
from miga.baselines.methods import noise_rule, step_context
from miga.config import FreeNoiseMethod
from miga.engine.full_sequence import FullSequenceEngine
from miga.engine.schedules import Schedule
from miga.engine.solvers import make_solver
from miga.engine.stepper import Stats, WindowStepper
from reference_helpers import FixtureBackbone, PermutationReplay, ReplayNoise, load_vc2_fixture, rel

FIXTURE = os.path.join(os.path.dirname(__file__), "fixtures", "reference", "freenoise_vc2.safetensors")
TOLERANCE = 1e-4
NATIVE_FRAMES = 16  # VideoCrafter2's f_0: the preset's W = 16, S = 4


@pytest.fixture(scope="module")
def fx():
    return load_vc2_fixture(FIXTURE)


def preset(s: dict, **changes) -> FreeNoiseMethod:
    """``FreeNoiseMethod.videocrafter2()`` at the fixture's step count (and ``changes``)."""
    return replace(FreeNoiseMethod.videocrafter2(), steps=s["steps"], **changes)


def make_engine(fx, cfg: FreeNoiseMethod, monkeypatch, replay_perms: bool = True):
    """miga's full-sequence engine as ``LongVideo._new_engine`` builds it for ``cfg`` on the fixture's model."""
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


def run(fx, cfg: FreeNoiseMethod, monkeypatch, their_x_t: bool = False, replay_perms: bool = True):
    """(miga's x_T [N, C, h, w], its latents after every step [T, N, C, h, w]); ``their_x_t``: start from the
    authors' rescheduled x_T instead of miga's own (miga's rule then runs with its own permutations, and its
    result is replaced)."""
    engine, *_ = make_engine(fx, cfg, monkeypatch, replay_perms and not their_x_t)
    engine.start()
    engine.started = True
    if their_x_t:
        for slot, x in zip(engine.slots, fx["x_T"]):
            slot.latent = x.clone()
    start, states = latents(engine), []
    for k in range(cfg.steps):
        out = engine.step()
        states.append(torch.stack([o.latent for o in out]) if k == cfg.steps - 1 else latents(engine))
    return start, torch.stack(states)


# ---------------------------------------------------------------- the fixture itself
def test_fixture_records_its_source(fx):
    assert fx["meta"]["repository"] == "https://github.com/AILab-CVC/FreeNoise"
    assert fx["meta"]["commit"].startswith("404b68b") and len(fx["meta"]["commit"]) == 40
    assert os.path.getsize(FIXTURE) <= 2_000_000
    s = fx["s"]
    assert (s["frames"], s["window"], s["stride"], s["steps"], s["eta"], s["guidance_scale"], s["fps"]) == \
        (32, 16, 4, 10, 0.0, 12.0, 16)
    assert s["views"] == [[0, 16], [4, 20], [8, 24], [12, 28], [16, 32]]
    assert fx["states"].shape == (10, 32, 4, 4, 4)
    # the harness's forward checks (their UNet vs miga's, plain and window-fused, float64)
    assert s["forward_check"]["plain float64"] <= 1e-10 and s["forward_check"]["windowed float64"] <= 1e-6


def test_preset_matches_their_flags(fx):
    """The preset's fields are their script's: eta 0, CFG 12, fps 16, W = f_0, S = f_0/4, LVDM's grid and
    use_scale; at 10 steps miga visits their timesteps t = 901, 801, ..., 1."""
    cfg = preset(fx["s"]).validate(NATIVE_FRAMES)
    att = cfg.attention_config(NATIVE_FRAMES)
    assert (att.window, att.stride, att.weighting) == (fx["s"]["window"], fx["s"]["stride"], "pyramid")
    assert (cfg.eta, cfg.guidance_scale, cfg.fps_condition) == (fx["s"]["eta"], fx["s"]["guidance_scale"], 16.0)
    schedule = Schedule(replace(VIDEOCRAFTER2_SCHEDULE, **cfg.schedule_changes()), cfg.steps)
    assert [int(schedule.timesteps[k]) for k in range(cfg.steps, 0, -1)] == fx["s"]["timesteps"]


# ---------------------------------------------------------------- what matches
def test_noise_rescheduling_matches(fx, monkeypatch):
    """miga's rule, given the authors' permutations, turns the same N(0, I) draws into their x_T exactly
    (every frame >= W a copy of one of the first W, group g a permutation of group g - W/S)."""
    engine, _, noise, replay = make_engine(fx, preset(fx["s"]), monkeypatch)
    engine.start()
    assert torch.equal(latents(engine), fx["x_T"])
    assert replay.calls == len(fx["perms"]) == (fx["s"]["frames"] - fx["s"]["window"]) // fx["s"]["stride"]
    assert noise.used == set(fx["table"])
    assert all(sorted(p.tolist()) == list(range(fx["s"]["stride"])) for p in fx["perms"])


@pytest.mark.parametrize("j", range(4))
def test_temporal_attention_matches(fx, j):
    """One temporal self-attention (``attention_sites`` in the settings: ``init_attn``'s ``attn1``, the first
    input level's ``attn1`` and the middle block's ``attn2`` in the first UNet call, and ``init_attn``'s
    ``attn1`` in the last step), miga's layer with its ``WindowedAttention`` (W 16, S 4, pyramid) on their
    input: their window-fused output (their ``CrossAttention.forward`` with ``context_next``)."""
    name, when = fx["s"]["attention_sites"][j]
    attn = fx["unet"].get_submodule(name)
    x, theirs = fx[f"attn{j}.in"], fx[f"attn{j}.out"]
    with torch.no_grad(), attention_policy(fx["unet"], WindowedAttention(FreeNoiseConfig(window=16, stride=4))):
        out = attn(x)
    assert rel(out, theirs) <= 1e-5
    with torch.no_grad():
        plain = attn(x)
    if j == 0:
        # At the first step, init_attn (after a per-frame conv only) sees in every window [4g, 4g + 16) a
        # permutation of frames 0..15 (the rescheduled noise), and attention over all 32 frames sees each of
        # them twice: windowed and global attention agree there. A property of FreeNoise, seen in their code.
        assert rel(plain, theirs) <= 1e-5
        return
    assert rel(plain, theirs) > 1e-1  # global attention instead of the windows
    for wrong in (FreeNoiseConfig(window=12, stride=4), FreeNoiseConfig(window=16, stride=8),
                  FreeNoiseConfig(window=16, stride=4, weighting="flat")):  # mutation checks: 0.07 to 1.2 here
        with torch.no_grad(), attention_policy(fx["unet"], WindowedAttention(wrong)):
            assert rel(attn(x), theirs) > 5e-2, wrong


def test_first_model_call_matches(fx, monkeypatch):
    """The UNet's conditional and unconditional outputs at the first step (their x_T, t = 901, fps 16, all 34
    temporal attentions window-fused), from miga's backbone under the preset's step context."""
    cfg = preset(fx["s"])
    engine, backbone, *_ = make_engine(fx, cfg, monkeypatch)
    schedule = engine.stepper.schedule
    levels = schedule.noise_levels([[cfg.steps] * fx["s"]["frames"]] * 2)
    x = fx["x_T"].transpose(0, 1)[None].expand(2, -1, -1, -1, -1)
    with torch.no_grad(), engine.context(0, cfg.steps):
        eps = backbone.predict(x, levels, [fx["uncond"], fx["cond"]])
    assert rel(eps[1].transpose(0, 1), fx["eps_cond"]) <= TOLERANCE
    assert rel(eps[0].transpose(0, 1), fx["eps_uncond"]) <= TOLERANCE


def test_each_step_matches_from_their_state(fx, monkeypatch):
    """Teacher-forced: from their latents before each step, one step of miga's engine gives their latents
    after it (LVDM's DDIM with use_scale on the +1 grid; CFG 12)."""
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
        after = torch.stack([o.latent for o in out]) if out else latents(engine)
        worst.append(rel(after, fx["states"][k]))
    assert max(worst) <= TOLERANCE, worst


def test_end_to_end_matches(fx, monkeypatch):
    """miga's FreeNoise with the VideoCrafter2 preset, from the shared draws: x_T, the latents after every step,
    the final latents."""
    start, states = run(fx, preset(fx["s"]), monkeypatch)
    assert torch.equal(start, fx["x_T"])
    assert rel(states, fx["states"]) <= TOLERANCE
    assert rel(states[-1], fx["states"][-1]) <= TOLERANCE


# ---------------------------------------------------------------- mutation checks: each must fail
MUTATIONS = {
    "window 12": dict(attention=FreeNoiseConfig(window=12, stride=4)),
    "stride 8": dict(attention=FreeNoiseConfig(window=16, stride=8)),
    "flat weights": dict(attention=FreeNoiseConfig(window=16, stride=4, weighting="flat")),
    "global attention": dict(attention=FreeNoiseConfig(window=32, stride=4)),  # one window of all N frames
    "fps 8": dict(fps_condition=8.0),
    "no use_scale": dict(signal_scale_end=1.0),
    "linspace grid": dict(timestep_spacing="linspace", steps_offset=0),
}


@pytest.mark.parametrize("name", list(MUTATIONS))
def test_each_sampler_change_is_seen(fx, monkeypatch, name):
    """One thing of the sampler changed (from their x_T): the final latents fail the comparison by far."""
    _, states = run(fx, preset(fx["s"], **MUTATIONS[name]), monkeypatch, their_x_t=True)
    assert rel(states[-1], fx["states"][-1]) > 50 * TOLERANCE  # 9.9e-3 (flat weights) to 2.7 (grid) here


@pytest.mark.parametrize("change", ["rescheduling off", "miga's own permutations"])
def test_each_noise_change_is_seen(fx, monkeypatch, change):
    """The noise rescheduling off, or miga's own keyed permutations instead of theirs: x_T differs (by 4.8 and
    4.2 std; the final latents then by 5.0 and 4.1)."""
    cfg = preset(fx["s"], reschedule_noise=change != "rescheduling off")
    engine, *_ = make_engine(fx, cfg, monkeypatch, replay_perms=change == "rescheduling off")
    engine.start()
    start = latents(engine)
    assert torch.equal(start[:16], fx["x_T"][:16]) and rel(start, fx["x_T"]) > 1


def figures() -> dict:
    """max |diff| / std of every comparison and mutation (``python tests/test_reference_freenoise_vc2.py``)."""
    fx, out = load_vc2_fixture(FIXTURE), {}
    with pytest.MonkeyPatch.context() as mp:
        start, states = run(fx, preset(fx["s"]), mp)
    out["x_T"] = rel(start, fx["x_T"])
    for k in range(fx["s"]["steps"]):
        out[f"step {k + 1} (t = {fx['s']['timesteps'][k]})"] = rel(states[k], fx["states"][k])
    for name, change in MUTATIONS.items():
        with pytest.MonkeyPatch.context() as mp:
            _, states = run(fx, preset(fx["s"], **change), mp, their_x_t=True)
        out[f"mutation {name}: final"] = rel(states[-1], fx["states"][-1])
    for name, kwargs in (("rescheduling off", dict(cfg=dict(reschedule_noise=False))),
                         ("miga's own permutations", dict(replay_perms=False))):
        with pytest.MonkeyPatch.context() as mp:
            start, states = run(fx, preset(fx["s"], **kwargs.get("cfg", {})), mp,
                                replay_perms=kwargs.get("replay_perms", True))
        out[f"mutation {name}: x_T"] = rel(start, fx["x_T"])
        out[f"mutation {name}: final"] = rel(states[-1], fx["states"][-1])
    return out


if __name__ == "__main__":
    torch.set_num_threads(1)
    for key, value in figures().items():
        print(f"{key:48s} {value:.2e}")
