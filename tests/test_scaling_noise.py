"""ScalingNoise (shared/spec/baselines.md §5.7): the pure rules of :mod:`miga.baselines.scaling_noise` and the
beam search of :class:`miga.engine.scaling_noise.ScalingNoiseEngine` on the exact Gaussian world (32x32 pixels,
4x4 latents, f = 16, FIFO with n = 2: T = 32, 2n = 4 lookahead windows a pass)."""

import math
import random

import numpy as np
import pytest
import torch

from miga import FIFOConfig, LongVideo, load_backbone
from miga.baselines.scaling_noise import (ACTIONS, ScalingNoiseConfig, fft_2d_expected_std, make_candidate,
                                          reward_last_frame, reward_vbench, select)
from miga.checkpoint import load_state, save_state
from miga.engine.fifo import FIFOEngine
from miga.engine.rng import KeyedNoise
from miga.engine.scaling_noise import ScalingNoiseEngine

H = W = 32


@pytest.fixture(scope="module")
def world():
    return load_backbone("gaussian", height=H, width=W)


def callables(world):
    """The Gaussian world's decoder as ``decode`` and flattened pixels as ``embed``."""
    dec = world.decoder()

    def decode(latents):
        return np.stack([dec.push(x)[0] for x in latents])

    def embed(frames):
        return torch.as_tensor(np.asarray(frames, dtype=np.float64)).flatten(1)

    return decode, embed


def engine(world, n, search, cfg=None, seed=0, **kwargs):
    cfg = cfg or FIFOConfig.gaussian()
    video = LongVideo(world, "x", n, cfg, seed=seed)
    decode, embed = callables(world)
    return ScalingNoiseEngine(video._stepper(), cfg, world.native_frames, n, search, decode, embed, **kwargs), video


# ---------------------------------------------------------------- 1. reduction to FIFO
@pytest.mark.parametrize("cfg", [FIFOConfig.gaussian(), FIFOConfig.gaussian().with_(solver="ddim", eta=1.0),
                                 FIFOConfig.gaussian().with_(lookahead=False)], ids=["unipc", "ddim-eta1", "no-lookahead"])
def test_k1_m1_random_resample_from_fifo_noise_is_fifo(world, cfg):
    n = 6
    video = LongVideo(world, "x", n, cfg, seed=1)
    fifo = torch.stack([s.latent for s in FIFOEngine(video._stepper(), cfg, world.native_frames, n)])
    one = ScalingNoiseConfig(candidates=1, beams=1, actions=("random_resample",), first_pass_no_cfg=False)
    eng, sn_video = engine(world, n, one, cfg, seed=1, noise_purpose=lambda beam, cand, tag: "fifo/fresh")
    out = torch.stack([s.latent for s in eng])
    assert torch.equal(out, fifo)
    assert sn_video.stats.nfe == video.stats.nfe  # the search's single candidate is FIFO's tail window
    # the same search with its own keyed noise (not FIFO's stream) gives another video
    eng2, _ = engine(world, n, one, cfg, seed=1)
    assert not torch.equal(torch.stack([s.latent for s in eng2]), fifo)


# ---------------------------------------------------------------- 2. reward
def _pair(c, d=8, scale=3.0, seed=0):
    """An anchor and an embedding at cosine ``c``."""
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(d, 2, generator=g, dtype=torch.float64))
    return q[:, 0] * 2.0, scale * (c * q[:, 0] + math.sqrt(1 - c * c) * q[:, 1])


@pytest.mark.parametrize("c", [0.0, 0.1, 0.5, 0.93, 1.0])
def test_faithful_reward_is_9c_plus_8_over_16(c):
    anchor, last = _pair(c)
    others = torch.randn(15, 8, dtype=torch.float64)  # ignored: only the last x0 counts
    emb = torch.cat([others, last[None]])
    assert ScalingNoiseConfig().score(anchor, emb, 16) == pytest.approx((9 * c + 8) / 16, abs=1e-12)
    assert reward_last_frame(anchor, last, 8) == pytest.approx((c + 8 * (1 + c) / 2) / 8, abs=1e-12)


def test_faithful_reward_is_monotone_and_clamped():
    cs = np.linspace(-1, 1, 41)
    r = [reward_last_frame(*_pair(float(c)), 16) for c in cs]
    assert all(b >= a - 1e-12 for a, b in zip(r, r[1:]))
    assert all(b > a for a, b, c in zip(r, r[1:], cs[1:]) if c > 0)  # strictly above 0
    assert r[0] == pytest.approx(0.5) and r[20] == pytest.approx(0.5)  # negative cosines clamp to c = 0


def test_vbench_reward_matches_the_loop():
    g = torch.Generator().manual_seed(3)
    anchor, emb = torch.randn(6, generator=g, dtype=torch.float64), torch.randn(4, 6, generator=g, dtype=torch.float64)
    cos = lambda a, b: max(0.0, float(a @ b / (a.norm() * b.norm())))
    want = np.mean([0.5 * (cos(emb[i - 1] if i else anchor, emb[i]) + cos(anchor, emb[i])) for i in range(4)])
    assert reward_vbench(anchor, emb) == pytest.approx(want, abs=1e-12)
    cfg = ScalingNoiseConfig(reward="vbench")
    assert cfg.x0_positions(4) == [0, 1, 2, 3] and ScalingNoiseConfig().x0_positions(4) == [3]
    assert cfg.score(anchor, emb, 4) == pytest.approx(want, abs=1e-12)
    same = anchor[None].repeat(4, 1)
    assert reward_vbench(anchor, same) == pytest.approx(1.0)


# ---------------------------------------------------------------- 3. selection
SCORES = [[0.1, 0.9, 0.3],   # beam 0
          [0.8, 0.2, 0.85],  # beam 1
          [0.0, 0.05, 0.7]]  # beam 2


class Coin(random.Random):
    """A Random whose first ``random()`` is ``value``."""

    def __init__(self, value):
        super().__init__(0)
        self.value = value

    def random(self):
        return self.value


def test_selection_exploit_branch_is_global_top_m():
    sel = select(SCORES, 3, 0.2, Coin(0.5))
    assert not sel.explored
    assert sel.picks == [(0, 1), (1, 2), (1, 0)]
    assert sel.parents == [0, 1, 1]


def test_selection_explore_branch_keeps_top_m_parents_but_own_best_tails():
    sel = select(SCORES, 3, 0.2, Coin(0.1))
    assert sel.explored
    assert sel.picks == [(0, 1), (1, 2), (2, 2)]  # each beam's own best
    assert sel.parents == [0, 1, 1]  # always the global top-m beams (faithful)


def test_selection_ties_and_eps_edges():
    tie = [[1.0, 1.0], [1.0, 0.0]]
    assert select(tie, 2, 0.0, random.Random(0)).picks == [(0, 0), (0, 1)]
    assert select(tie, 2, 1.0, random.Random(0)).picks == [(0, 0), (1, 0)]
    with pytest.raises(ValueError):
        select([[1.0]], 2, 0.0, random.Random(0))


def test_selection_eps_branch_is_reproducible_under_a_seeded_random():
    runs = [[select(SCORES, 3, 0.2, rng).explored for _ in range(200)] for rng in (random.Random(5), random.Random(5))]
    assert runs[0] == runs[1]
    assert 0.1 < np.mean(runs[0]) < 0.3  # eps = 0.2
    rng = random.Random(6)
    assert [select(SCORES, 3, 0.2, rng).explored for _ in range(200)] != runs[0]  # the seed matters


def test_action_draws_are_uniform_with_replacement():
    cfg = ScalingNoiseConfig()
    draws = [a for _ in range(400) for a in cfg.choose_actions(random.Random(_))]
    assert set(draws) == set(ACTIONS)
    counts = [draws.count(a) / len(draws) for a in ACTIONS]
    assert all(abs(c - 0.25) < 0.03 for c in counts)
    assert len(cfg.choose_actions(random.Random(0))) == 5


# ---------------------------------------------------------------- 4. candidate statistics
def _candidates(action, shape=(4, 64, 64), n=4):
    noise = KeyedNoise(11, shape)
    alpha, sigma = math.sqrt(0.00466), math.sqrt(1 - 0.00466)  # VC2 at t = 999
    out = []
    for i in range(n):
        z_prev = noise.one(i, 63, "z_prev")
        out.append(make_candidate(action, z_prev, lambda tag: noise.one(i, 64, tag), alpha, sigma, 0.25))
    return torch.stack(out)


@pytest.mark.parametrize("action", ["random_resample", "last_frame_renoise", "last_frame_resample"])
def test_candidates_have_unit_std(action):
    x = _candidates(action)
    assert abs(float(x.std()) - 1.0) < 0.02 and abs(float(x.mean())) < 0.02


def test_fft_2d_resample_std_is_below_one_as_documented():
    """No variance renormalisation (§5.2): per frequency P² + (1-P)² < 1, std ≈ 0.950 at d_s = 0.25."""
    x = _candidates("fft_2D_resample")
    want = fft_2d_expected_std(64, 64, 0.25)
    assert 0.94 < want < 0.96
    assert float(x.std()) == pytest.approx(want, abs=0.008) and float(x.std()) < 0.96


def test_candidates_are_keyed_and_follow_z_prev():
    a, b = _candidates("last_frame_resample"), _candidates("last_frame_resample")
    assert torch.equal(a, b)
    noise = KeyedNoise(11, (4, 64, 64))
    z = noise.one(0, 63, "z_prev")
    low = make_candidate("fft_2D_resample", z, lambda tag: noise.one(0, 64, tag), 0.07, 1.0)
    # low spatial frequencies come from z_prev: the blurred candidate correlates with z_prev
    blur = lambda t: torch.nn.functional.avg_pool2d(t[None], 8)[0].flatten()
    assert float(torch.corrcoef(torch.stack([blur(low), blur(z)]))[0, 1]) > 0.8
    with pytest.raises(ValueError):
        make_candidate("nope", z, lambda tag: z, 0.0, 1.0)


def test_config_is_frozen_and_validated():
    cfg = ScalingNoiseConfig()
    assert (cfg.candidates, cfg.beams, cfg.eps, cfg.actions, cfg.first_pass_no_cfg, cfg.reward, cfg.shared_anchor,
            cfg.d_s) == (5, 3, 0.2, ACTIONS, True, "last_frame", True, 0.25)
    with pytest.raises(Exception):
        cfg.beams = 4
    for bad in ({"candidates": 0}, {"eps": 1.5}, {"actions": ("random_resample", "x")}, {"reward": "dino"}):
        with pytest.raises(ValueError):
            ScalingNoiseConfig(**bad)


# ---------------------------------------------------------------- 5. cost
@pytest.mark.parametrize("partitions, guidance, k, m", [(4, 12.0, 5, 3), (2, 1.0, 5, 3), (2, 2.0, 2, 2)])
def test_nfe_per_iteration(world, partitions, guidance, k, m):
    """m (2n - 1 + k) per pass, x2 with CFG: 72 with the VC2 defaults (n = 4, k = 5, m = 3, CFG); iteration 0
    adds its plain pass, 2n without CFG."""
    cfg = FIFOConfig.gaussian().with_(partitions=partitions, guidance_scale=guidance)
    eng, video = engine(world, 3, ScalingNoiseConfig(candidates=k, beams=m), cfg)
    g = 2 if guidance != 1.0 else 1
    eng.start()
    eng.started = True
    n = partitions
    per = []
    for _ in range(3):
        before = video.stats.nfe
        eng.step()
        per.append(video.stats.nfe - before)
    assert per == [2 * n + m * (2 * n - 1 + k) * g] + [m * (2 * n - 1 + k) * g] * 2
    if (partitions, guidance, k, m) == (4, 12.0, 5, 3):
        assert per[1] == 72
    assert eng.counts["search_nfe"] == 3 * m * k * g and eng.counts["rewards"] == 3 * m * k


# ---------------------------------------------------------------- the search follows the scorer
class Rigged(ScalingNoiseConfig):
    """Scores 1 for the ``target``-th candidate scored in a pass, 0 for the others."""

    def score(self, anchor, embeddings, frames):
        calls = self.__dict__.setdefault("_calls", [])
        calls.append(1)
        return 1.0 if (len(calls) - 1) % (self.beams * self.candidates) == self.__dict__["_target"] else 0.0


@pytest.mark.parametrize("target", [8, 0, 13])
def test_search_picks_the_candidate_the_scorer_prefers(world, target):
    search = Rigged(candidates=5, beams=3, eps=0.0)
    search.__dict__["_target"] = target
    eng, _ = engine(world, 8, search, FIFOConfig.gaussian().with_(drop_warmup=False))
    eng.start()
    eng.started = True
    for _ in range(3):
        out = eng.step()
        s = eng.last_search
        best = (target // 5, target % 5)
        assert s["scores"][best[0]][best[1]] == 1.0
        assert s["picks"][0] == best and s["parents"][0] == best[0]
        tail = [x.latent for x in eng.beams[0].queue[-9:-1]]  # the tail window's 8 written slots, fresh noise after
        chosen = [x.latent for x in s["candidates"][best[0]][best[1]]]
        assert all(torch.equal(a, b) for a, b in zip(tail, chosen))
        other = [x.latent for x in s["candidates"][best[0]][(best[1] + 1) % 5]]
        assert not torch.equal(tail[-1], other[-1])
        # frame lists follow the parents (a frame every beam holds is handed out at once)
        for i, parent in enumerate(s["parents"]):
            assert (eng.beams[i].pending or out)[-1] is s["heads"][parent]
        handed = bool(out) and out[-1] is s["heads"][s["parents"][0]]
        assert handed == (len(set(s["parents"])) == 1)


def test_exploration_takes_each_beams_own_best_tail(world):
    search = Rigged(candidates=2, beams=2, eps=1.0)
    search.__dict__["_target"] = 3  # beam 1, candidate 1
    eng, _ = engine(world, 8, search)
    eng.start()
    eng.started = True
    eng.step()
    s = eng.last_search
    assert s["explored"] and s["parents"] == [1, 0] and s["picks"] == [(0, 0), (1, 1)]
    tail = [x.latent for x in eng.beams[0].queue[-9:-1]]
    assert all(torch.equal(a, b.latent) for a, b in zip(tail, s["candidates"][0][0]))


class Recording(ScalingNoiseConfig):
    """The faithful scorer, recording the anchor of every call."""

    def score(self, anchor, embeddings, frames):
        self.__dict__.setdefault("_anchors", []).append(anchor.clone())
        return super().score(anchor, embeddings, frames)


@pytest.mark.parametrize("shared", [True, False])
def test_anchor_is_shared_across_beams_or_per_beam(world, shared):
    """Faithful (shared): beam j is scored against the frame beam j - 1 just emitted (beam 0: the last beam's of
    the previous pass). Per beam: against its parent's last emitted frame."""
    m, k = 2, 2
    search = Recording(candidates=k, beams=m, shared_anchor=shared, eps=0.0)
    eng, _ = engine(world, 8, search)
    decode, embed = callables(world)
    emb = lambda slot: torch.as_tensor(embed(decode(slot.latent[None]))[0], dtype=torch.float64)
    eng.start()
    eng.started = True
    eng.step()
    for _ in range(2):
        prev = eng.last_search
        search.__dict__["_anchors"] = []
        eng.step()
        anchors = search.__dict__["_anchors"][::k]  # one per beam
        heads = eng.last_search["heads"]
        chained = [emb(prev["heads"][-1])] + [emb(heads[j - 1]) for j in range(1, m)]
        own = [emb(prev["heads"][p]) for p in prev["parents"]]
        want, other = (chained, own) if shared else (own, chained)
        assert all(torch.equal(a, b) for a, b in zip(anchors, want))
        assert not all(torch.equal(a, b) for a, b in zip(anchors, other))


# ---------------------------------------------------------------- output and resume
@pytest.mark.parametrize("search", [ScalingNoiseConfig(candidates=2, beams=2, eps=0.5),
                                    ScalingNoiseConfig(candidates=2, beams=2, reward="vbench", shared_anchor=False,
                                                       first_pass_no_cfg=False)], ids=["faithful", "fixed"])
def test_state_dict_round_trip_continues_identically(world, search, tmp_path):
    n = 10
    full = [s.latent for s in engine(world, n, search, seed=4)[0]]
    assert len(full) == n
    a, _ = engine(world, n, search, seed=4)
    head = [a.next_latent().latent for _ in range(4)]
    save_state(str(tmp_path / "state"), a.state_dict())  # through the checkpoint format
    state = load_state(str(tmp_path / "state"))
    b, _ = engine(world, n, search, seed=4)
    b.load_state_dict(state)
    rest = [s.latent for s in b]
    assert all(torch.equal(x, y) for x, y in zip(head + rest, full)) and len(head + rest) == n


def test_output_is_beam_zero_and_differs_from_fifo(world):
    n = 6
    cfg = FIFOConfig.gaussian()
    video = LongVideo(world, "x", n, cfg, seed=2)
    fifo = torch.stack([s.latent for s in FIFOEngine(video._stepper(), cfg, world.native_frames, n)])
    eng, _ = engine(world, n, ScalingNoiseConfig(candidates=3, beams=2), cfg, seed=2)
    out = torch.stack([s.latent for s in eng])
    assert out.shape == fifo.shape and not torch.equal(out, fifo)
    assert all(not b.pending for b in eng.beams) and eng.finished
