"""miga's FIFO engine against FIFO-Diffusion's own VideoCrafter2 sampler (recorded fixture, no reference code).

``tests/fixtures/reference/fifo_vc2.safetensors`` was written by ``scripts/reference/fifo_vc2.py``, which ran the
authors' ``videocrafter_main.py`` (jjihwan/FIFO-Diffusion_public, commit in the fixture's metadata) on a tiny
random VideoCrafter2 UNet: f_0 = 16, n = 2 (T = 32), lookahead, DDIM eta 1, CFG 12, fps 8, 4x4x4 latents, 24
passes (16 warm-up outputs, then the 8-frame video). It holds the weights, the two text embeddings, every
random draw of their run under miga's keys and their states: the base clip, the queue after initialisation,
the queue after every pass and the latent of every pass.

Here miga runs from the same weights and the same draws (:class:`ReplayNoise`), and each state is compared
as max |miga - theirs| / std(theirs). The released code differs from the paper's description in two ways,
each a ``FIFOConfig`` field that ``FIFOConfig.videocrafter2_released()`` sets: the base clip is sampled by LVDM's
own DDIM with ``use_scale`` (``clip_signal_scale_end=0.7``; ``lvdm/models/samplers/ddim.py`` ``p_sample_ddim``,
which scales only the x0 term), and the lookahead padding is the first clip frame noised to level 0
(``padding="noised"``; ``scripts/evaluation/funcs.py`` ``prepare_latents``). With that preset miga reproduces
their run end to end: the base clip, the initial queue with its padding, the queue after every pass and every
output; with the paper's preset (clean padding, the clip on the queue's DDIM) it does not.
"""

from __future__ import annotations

import os
from dataclasses import replace

import pytest
import torch

import miga.engine.fifo as fifo_module
from miga.backbones.videocrafter2 import VIDEOCRAFTER2_SCHEDULE
from miga.config import FIFOConfig
from miga.engine.fifo import FIFOEngine
from miga.engine.queue import Slot
from miga.engine.schedules import Schedule
from miga.engine.solvers import make_solver
from miga.engine.stepper import Stats, WindowStepper
from reference_helpers import FixtureBackbone, ReplayNoise, load_vc2_fixture, rel

FIXTURE = os.path.join(os.path.dirname(__file__), "fixtures", "reference", "fifo_vc2.safetensors")
TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def fx():
    return load_vc2_fixture(FIXTURE)


def fifo_config(s: dict, released: bool = True) -> FIFOConfig:
    """The authors' run as a FIFOConfig: the released (or the paper's) VideoCrafter2 preset with their n,
    lookahead, DDIM eta and CFG; warm-up outputs kept to compare them."""
    base = FIFOConfig.videocrafter2_released() if released else FIFOConfig.videocrafter2()
    return replace(base, partitions=s["partitions"], lookahead=s["lookahead"], eta=s["eta"],
                   guidance_scale=s["guidance_scale"], drop_warmup=False)


def make_stepper(fx, cfg: FIFOConfig, schedule_config=VIDEOCRAFTER2_SCHEDULE, solver=None):
    s = fx["s"]
    backbone = FixtureBackbone(fx["unet"], s["latent_shape"], s["frames"], s["fps"])
    schedule = Schedule(schedule_config, cfg.steps(s["frames"]))
    noise = ReplayNoise(fx["table"], s["latent_shape"])
    solver = solver(schedule, cfg.eta) if solver else make_solver(cfg.solver, schedule, cfg.eta)
    return WindowStepper(backbone, schedule, solver, noise, lambda i: 0, [fx["cond"]], fx["uncond"],
                         cfg.guidance_scale, Stats()), noise


def authors_clip(fx):
    """``sample_clip`` returning the authors' base clip (to test what follows it on its own)."""
    clip = fx["base_clip"]
    return lambda stepper, frames, first_index=0, purpose="clip", init=None: [
        Slot(first_index + i, clip[i].clone(), 0) for i in range(frames)]


def run_fifo(fx, monkeypatch=None, clip_from_authors=False, padding_from_authors=False, cfg=None, passes=None):
    """miga's FIFO engine for ``passes`` passes (default: the whole run): (queue after start ``[L, C, h, w]``,
    queue after each pass ``[P, L, C, h, w]``, output latents ``[P, C, h, w]``, their indices, the replay noise)."""
    s = fx["s"]
    cfg = cfg or fifo_config(s)
    stepper, noise = make_stepper(fx, cfg)
    if clip_from_authors:
        monkeypatch.setattr(fifo_module, "sample_clip", authors_clip(fx))
    engine = FIFOEngine(stepper, cfg, s["frames"], s["passes"])
    engine.start()
    engine.started = True
    if padding_from_authors:
        for slot, latent in zip(engine.queue[:engine.head], fx["init_queue"]):
            slot.latent = latent.clone()
    start = torch.stack([q.latent for q in engine.queue])
    outputs, queues = [], []
    for _ in range(s["passes"] if passes is None else passes):
        outputs += engine.step()
        queues.append(torch.stack([q.latent for q in engine.queue]))
    stack = (lambda xs: torch.stack(xs) if xs else None)
    return start, stack(queues), stack([o.latent for o in outputs]), [o.index for o in outputs], noise


# ---------------------------------------------------------------- the fixture itself
def test_fixture_records_its_source(fx):
    assert fx["meta"]["repository"] == "https://github.com/jjihwan/FIFO-Diffusion_public"
    assert len(fx["meta"]["commit"]) == 40
    assert os.path.getsize(FIXTURE) <= 2_000_000
    s = fx["s"]
    assert (s["frames"], s["partitions"], s["steps"], s["lookahead"], s["eta"], s["guidance_scale"]) == \
        (16, 2, 32, True, 1.0, 12.0)
    assert fx["outputs"].shape[0] == s["passes"] == s["outputs"] + s["steps"] - s["frames"]


# ---------------------------------------------------------------- what matches
def test_initial_queue_ladder_matches(fx, monkeypatch):
    """Given their base clip, the queue's T noised slots (A1; slot i at DDIM index i = level i + 1, the tail
    holding the clip, the rest copies of its first frame) are theirs."""
    start, *_ = run_fifo(fx, monkeypatch, clip_from_authors=True, passes=0)
    pad = fx["s"]["frames"] // 2
    assert start.shape == fx["init_queue"].shape
    assert rel(start[pad:], fx["init_queue"][pad:]) <= TOLERANCE


def test_loop_matches_given_their_initial_queue(fx, monkeypatch):
    """From their initial queue (clip and padding), every pass of miga's loop (lookahead windows tail first,
    per-frame DDIM, the head leaving, fresh noise at the tail) reproduces theirs: the whole queue after each of
    the 24 passes, and the latent of every pass (16 warm-up latents, then the video)."""
    start, queues, outputs, indices, noise = run_fifo(fx, monkeypatch, clip_from_authors=True,
                                                      padding_from_authors=True)
    s = fx["s"]
    assert rel(start, fx["init_queue"]) <= TOLERANCE
    assert queues.shape == fx["queues"].shape
    assert rel(queues[0], fx["queues"][0]) <= TOLERANCE
    assert rel(queues, fx["queues"]) <= TOLERANCE
    assert indices == list(range(s["frames"] - s["steps"], s["outputs"]))
    assert rel(outputs, fx["outputs"]) <= TOLERANCE
    assert rel(outputs[-s["outputs"]:], fx["outputs"][-s["outputs"]:]) <= TOLERANCE  # the video
    # miga consumed exactly the authors' queue draws: every fifo/pad, fifo/init, fifo/eta and fifo/fresh one
    assert noise.used == {k for k in fx["table"] if k[2] in ("fifo/pad", "fifo/init", "fifo/eta", "fifo/fresh")}


def test_queue_matches_given_their_base_clip(fx, monkeypatch):
    """With only the base clip taken from them, miga's own initial queue, padding included (``padding="noised"``),
    is theirs."""
    start, *_ = run_fifo(fx, monkeypatch, clip_from_authors=True, passes=0)
    assert rel(start, fx["init_queue"]) <= TOLERANCE


def test_base_clip_matches(fx):
    """The released preset samples the base clip by LVDM's DDIM with ``use_scale`` (``clip_signal_scale_end``),
    drawing exactly their clip noise."""
    cfg = fifo_config(fx["s"])
    stepper, noise = make_stepper(fx, cfg)
    FIFOEngine(stepper, cfg, fx["s"]["frames"], fx["s"]["passes"]).start()
    assert {k for k in noise.used if k[2].startswith("clip/")} == {k for k in fx["table"] if k[2].startswith("clip/")}
    start, *_ = run_fifo(fx, passes=0)
    assert rel(start, fx["init_queue"]) <= TOLERANCE  # the clip, noised into the queue


def test_end_to_end_matches(fx):
    """miga's FIFO with the released preset, from its own base clip: every queue, every output, the video."""
    s = fx["s"]
    start, queues, outputs, indices, noise = run_fifo(fx)
    assert rel(start, fx["init_queue"]) <= TOLERANCE
    assert rel(queues, fx["queues"]) <= TOLERANCE
    assert rel(outputs, fx["outputs"]) <= TOLERANCE
    assert rel(outputs[-s["outputs"]:], fx["outputs"][-s["outputs"]:]) <= TOLERANCE


@pytest.mark.parametrize("change, minimum", [({"clip_signal_scale_end": 1.0}, 0.1), ({"padding": "clean"}, 1e-3),
                                             ({"lookahead": False}, None), ({"eta": 0.0}, 0.1)])
def test_each_difference_is_seen(fx, change, minimum):
    """One field of the released preset changed (or lookahead or eta): the comparison fails (mutation check)."""
    cfg = replace(fifo_config(fx["s"]), **change)
    start, queues, *_ = run_fifo(fx, cfg=cfg, passes=1)
    if minimum is None:  # no padding: another queue shape
        assert start.shape != fx["init_queue"].shape
        return
    assert rel(start, fx["init_queue"]) > minimum or rel(queues[0], fx["queues"][0]) > minimum
