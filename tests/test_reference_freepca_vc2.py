"""miga's FreePCA against FreePCA's own VideoCrafter2 sampler (recorded fixture, no reference code).

``tests/fixtures/reference/freepca_vc2.safetensors`` was written by ``scripts/reference/freepca_vc2.py``, which
ran the authors' ``scripts/evaluation/inference.py`` (JosephTiTan/FreePCA, commit in the fixture's metadata) on a
tiny random VideoCrafter2 UNet with the flags of their ``run_text2video.sh`` (64 frames, eta 1, CFG 12, fps 28;
their code's windows 16/4, at most 3 global components, t > 250, γ = √(log₁₆ 64), the mean-reuse noise) at 10
DDIM steps (t = 901 ... 1: PCA fusion at the first seven) and 4x4 latents. N = 64 is the number their code
hard-codes, so none of their constants was changed; their spatial attentions ran through an ``xformers``
stand-in (plain softmax attention), as with xformers installed. The fixture holds the weights, the text
embeddings, every random draw under miga's keys (initial noise and DDIM eta noise) and their states: x_T after
the mean reuse, the latents after each step, the first step's UNet outputs, and the input and output of the middle
block's temporal transformer block in the first UNet call.

Here miga runs ``FullSequenceEngine`` with ``FreePCAMethod.videocrafter2()`` (``steps`` set to 10; window and
stride from the model's f_0 = 16), built as ``LongVideo._new_engine`` builds it, from the same weights and draws.
Each state is compared as max |miga - theirs| / std(theirs).
"""

from __future__ import annotations

import os
from dataclasses import replace

import pytest
import torch

from miga.backbones.videocrafter2 import VIDEOCRAFTER2_SCHEDULE
from miga.baselines.attention import AttentionSite, FreePCAConfig, PCAFuseAttention
from miga.baselines.hooks import attention_policy
from miga.baselines.methods import noise_rule, step_context
from miga.config import FreePCAMethod
from miga.engine.full_sequence import FullSequenceEngine
from miga.engine.schedules import Schedule
from miga.engine.solvers import make_solver
from miga.engine.stepper import Stats, WindowStepper
from reference_helpers import FixtureBackbone, ReplayNoise, load_vc2_fixture, rel

FIXTURE = os.path.join(os.path.dirname(__file__), "fixtures", "reference", "freepca_vc2.safetensors")
TOLERANCE = 1e-4
NATIVE_FRAMES = 16


@pytest.fixture(scope="module")
def fx():
    return load_vc2_fixture(FIXTURE)


def preset(s: dict, **changes) -> FreePCAMethod:
    return replace(FreePCAMethod.videocrafter2(), steps=s["steps"], **changes)


def make_engine(fx, cfg: FreePCAMethod):
    s = fx["s"]
    backbone = FixtureBackbone(fx["unet"], s["latent_shape"], NATIVE_FRAMES)
    schedule = Schedule(replace(backbone.default_schedule, **cfg.schedule_changes()), cfg.steps)
    noise = ReplayNoise(fx["table"], s["latent_shape"])
    stepper = WindowStepper(backbone, schedule, make_solver(cfg.solver, schedule, cfg.eta), noise, lambda i: 0,
                            [fx["cond"]], fx["uncond"], cfg.guidance_scale, Stats())
    engine = FullSequenceEngine(stepper, s["frames"], cfg.method, prepare_noise=noise_rule(cfg, NATIVE_FRAMES),
                                context=step_context(backbone, cfg, NATIVE_FRAMES))
    return engine, backbone, noise


def latents(engine) -> torch.Tensor:
    return torch.stack([slot.latent for slot in engine.slots])


def run(fx, cfg: FreePCAMethod, their_x_t: bool = False, stop: int | None = None):
    """(miga's x_T, its latents after every step, the replay noise); ``their_x_t``: start from theirs;
    ``stop``: only the first ``stop`` steps."""
    engine, _, noise = make_engine(fx, cfg)
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


def one_step(fx, cfg: FreePCAMethod, k: int) -> torch.Tensor:
    """Step ``k + 1`` alone, from their latents before it (the engine moved to step ``k`` of ``steps``)."""
    engine, *_ = make_engine(fx, cfg)
    engine.start()
    engine.started = True
    engine.steps_done = k
    before = fx["x_T"] if k == 0 else fx["states"][k - 1]
    for slot, x in zip(engine.slots, before):
        slot.latent, slot.level = x.clone(), cfg.steps - k
    out = engine.step()
    return torch.stack([o.latent for o in out]) if out else latents(engine)


# ---------------------------------------------------------------- the fixture itself
def test_fixture_records_its_source(fx):
    assert fx["meta"]["repository"] == "https://github.com/JosephTiTan/FreePCA"
    assert fx["meta"]["commit"].startswith("66dcf4e") and len(fx["meta"]["commit"]) == 40
    assert os.path.getsize(FIXTURE) <= 2_000_000
    s = fx["s"]
    assert (s["frames"], s["steps"], s["eta"], s["guidance_scale"], s["fps"], s["window"], s["stride"],
            s["max_components"], s["tau"]) == (64, 10, 1.0, 12.0, 28, 16, 4, 3, 250.0)
    assert s["grids"] == [[4, 4], [2, 2]] and fx["states"].shape == (10, 64, 4, 4, 4)
    assert s["forward_check"]["float64"] <= 1e-6  # their UNet vs miga's with FreePCA (miga's PCA in float32)


def test_preset_matches_their_flags(fx):
    cfg = preset(fx["s"]).validate(NATIVE_FRAMES)
    att = cfg.attention_config(NATIVE_FRAMES)
    assert (att.window, att.stride, att.max_components, att.tau) == (16, 4, 3, 250.0)
    assert att.entropy_factor(fx["s"]["frames"]) == pytest.approx(fx["s"]["gamma"], abs=1e-12)
    assert (cfg.eta, cfg.guidance_scale, cfg.fps_condition, cfg.mean_reuse, cfg.gate) == (
        1.0, 12.0, 28.0, True, "timestep")
    schedule = Schedule(replace(VIDEOCRAFTER2_SCHEDULE, **cfg.schedule_changes()), cfg.steps)
    assert [int(schedule.timesteps[k]) for k in range(cfg.steps, 0, -1)] == fx["s"]["timesteps"]


# ---------------------------------------------------------------- what matches
def test_noise_mean_reuse_matches(fx):
    """Their x_T after the mean reuse (their block means over shuffled frame lists: float32 summation order only)."""
    engine, _, noise = make_engine(fx, preset(fx["s"]))
    engine.start()
    assert rel(latents(engine), fx["x_T"]) <= 1e-6
    assert noise.used == {(i, fx["s"]["steps"], "full/init") for i in range(fx["s"]["frames"])}


def site_policy(config: FreePCAConfig, grid, timestep: float):
    """The FreePCA policy with a fixed site: for calling one transformer block outside a UNet call."""
    policy = PCAFuseAttention(config)
    return lambda q, k, v, bias=None, site=None: policy(q, k, v, bias, AttentionSite(grid=grid, timestep=timestep))


BLOCK_GRIDS = {0: (2, 2)}
BLOCK_MUTATIONS = {
    "max_components 2": FreePCAConfig(max_components=2),
    "max_components 4": FreePCAConfig(max_components=4),
    "max_components 0 (windows only)": FreePCAConfig(max_components=0),
    "gamma 1": FreePCAConfig(gamma=1.0),
    "tau 950 (gate closed at t = 901)": FreePCAConfig(tau=950.0),
    "stride 8": FreePCAConfig(stride=8),
}


def test_temporal_block_matches(fx):
    """One temporal transformer block (attn1, attn2, feed-forward; all rows: the PCA pools them) with miga's
    ``PCAFuseAttention`` on their input, at their t = 901 (fusion on): their block's output (the middle block,
    2x2 grid). Each mutation of the attention fails it."""
    j = 0
    name, _ = fx["s"]["block_sites"][j]
    t = fx["s"]["block_timesteps"][j]
    block = fx["unet"].get_submodule(name)
    x, theirs = fx[f"block{j}.in"], fx[f"block{j}.out"]
    grid = (1, fx["s"]["frames"], *BLOCK_GRIDS[j])
    with torch.no_grad(), attention_policy(fx["unet"], site_policy(FreePCAConfig(), grid, t)):
        out = block(x)
    assert rel(out, theirs) <= 1e-5
    for label, config in BLOCK_MUTATIONS.items():
        with torch.no_grad(), attention_policy(fx["unet"], site_policy(config, grid, t)):
            assert rel(block(x), theirs) > 1e-3, label


def test_first_model_call_matches(fx):
    cfg = preset(fx["s"])
    engine, backbone, _ = make_engine(fx, cfg)
    levels = engine.stepper.schedule.noise_levels([[cfg.steps] * fx["s"]["frames"]] * 2)
    x = fx["x_T"].transpose(0, 1)[None].expand(2, -1, -1, -1, -1)
    with torch.no_grad(), engine.context(0, cfg.steps):
        eps = backbone.predict(x, levels, [fx["uncond"], fx["cond"]])
    assert rel(eps[1].transpose(0, 1), fx["eps_cond"]) <= TOLERANCE
    assert rel(eps[0].transpose(0, 1), fx["eps_uncond"]) <= TOLERANCE


def test_each_step_matches_from_their_state(fx):
    """Teacher-forced: from their latents before each step, one step of miga's engine (with their eta noise)
    gives their latents after it (steps 1-7 with the PCA fusion, 8-10 windows only)."""
    cfg = preset(fx["s"])
    engine, *_ = make_engine(fx, cfg)
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


def test_end_to_end_matches(fx):
    start, states, noise = run(fx, preset(fx["s"]))
    assert rel(start, fx["x_T"]) <= 1e-6
    assert rel(states, fx["states"]) <= TOLERANCE
    assert noise.used == set(fx["table"])  # every draw of theirs, no other


# ---------------------------------------------------------------- mutation checks: each must fail
MUTATIONS = {  # changes, the step run alone from their latents before it, the least failure asserted
    "max_components 2": (dict(attention=FreePCAConfig(max_components=2)), 1, 10 * TOLERANCE),
    "max_components 0 (windows only)": (dict(attention=FreePCAConfig(max_components=0)), 1, 10 * TOLERANCE),
    "gamma 1": (dict(attention=FreePCAConfig(gamma=1.0)), 1, 10 * TOLERANCE),
    "tau 350 (step 7, t = 301, unfused)": (dict(attention=FreePCAConfig(tau=350.0)), 7, 3 * TOLERANCE),
    "tau 150 (step 8, t = 201, fused)": (dict(attention=FreePCAConfig(tau=150.0)), 8, 3 * TOLERANCE),
    "stride 8": (dict(attention=FreePCAConfig(stride=8)), 1, 10 * TOLERANCE),
    "eta 0": (dict(eta=0.0), 1, 10 * TOLERANCE),
    "fps 16": (dict(fps_condition=16.0), 1, 10 * TOLERANCE),
}


@pytest.mark.parametrize("name", list(MUTATIONS))
def test_each_sampler_change_is_seen(fx, name):
    """One thing of the sampler changed, one step from their latents: it fails the comparison. The gate's
    tau moves one late step (t = 301 or 201, where the temporal branch matters least) by 5.2e-4 and 3.8e-4,
    20 and 15 times the match's 2.5e-5; the others by 1.5e-2 (gamma 1) to 1.7 (eta 0). Figures:
    ``python tests/test_reference_freepca_vc2.py``."""
    changes, step, least = MUTATIONS[name]
    ours = one_step(fx, preset(fx["s"], **changes), step - 1)
    assert rel(ours, fx["states"][step - 1]) > least


def test_no_mean_reuse_is_seen(fx):
    """The mean reuse off: x_T differs from theirs (the blocks after the first keep their own means)."""
    engine, *_ = make_engine(fx, preset(fx["s"], mean_reuse=False))
    engine.start()
    start = latents(engine)
    assert torch.equal(start[:16], fx["x_T"][:16]) and rel(start, fx["x_T"]) > 0.1


def figures() -> dict:
    """max |diff| / std of every comparison and mutation (``python tests/test_reference_freepca_vc2.py``)."""
    fx, out = load_vc2_fixture(FIXTURE), {}
    start, states, _ = run(fx, preset(fx["s"]))
    out["x_T"] = rel(start, fx["x_T"])
    for k in range(fx["s"]["steps"]):
        out[f"step {k + 1} (t = {fx['s']['timesteps'][k]})"] = rel(states[k], fx["states"][k])
    for j in range(1):
        name, _ = fx["s"]["block_sites"][j]
        grid, t = (1, fx["s"]["frames"], *BLOCK_GRIDS[j]), fx["s"]["block_timesteps"][j]
        block = fx["unet"].get_submodule(name)
        for label, config in {"match": FreePCAConfig(), **BLOCK_MUTATIONS}.items():
            with torch.no_grad(), attention_policy(fx["unet"], site_policy(config, grid, t)):
                out[f"block {j} {label}"] = rel(block(fx[f"block{j}.in"]), fx[f"block{j}.out"])
    for name, (change, step, _) in MUTATIONS.items():
        out[f"mutation {name}: step {step} alone"] = rel(one_step(fx, preset(fx["s"], **change), step - 1),
                                                         fx["states"][step - 1])
        _, states, _ = run(fx, preset(fx["s"], **change), their_x_t=True)
        out[f"mutation {name}: final (from their x_T)"] = rel(states[-1], fx["states"][-1])
    start, states, _ = run(fx, preset(fx["s"], mean_reuse=False))
    out["mutation no mean reuse: x_T"] = rel(start, fx["x_T"])
    out["mutation no mean reuse: final"] = rel(states[-1], fx["states"][-1])
    return out


if __name__ == "__main__":
    torch.set_num_threads(1)
    for key, value in figures().items():
        print(f"{key:56s} {value:.2e}")
