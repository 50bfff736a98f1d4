"""Self-reflection's cost (issue 15): batched candidates give the latents of the sequential search in
fewer model calls, and the calibrated threshold measures drops against the video's own score series."""

import pytest
import torch

from miga import LongVideo, MIGAConfig, load_backbone
from miga.engine.reflection import SelfReflection
from miga.engine.stepper import Stats

H = W = 32  # pixels -> 4x4 latents


@pytest.fixture(scope="module")
def world():
    return load_backbone("gaussian", height=H, width=W)


def _run(world, cfg, frames=72, seed=4):
    video = LongVideo(world, "x", frames, cfg, seed=seed)
    return torch.stack(list(video.latents())), video.stats


@pytest.mark.parametrize("window_batch", [1, 2])
def test_batched_candidates_match_the_sequential_search(world, window_batch):
    cfg = MIGAConfig.gaussian().with_(reflection_threshold=0.0, reflection_calibration="fixed", reflect_during="all",
                                      window_batch=window_batch)  # every check triggers
    seq, seq_stats = _run(world, cfg.with_(reflection_batch=False))
    bat, bat_stats = _run(world, cfg.with_(reflection_batch=True))
    assert seq_stats.reflection_triggers > 3  # the searches did run
    assert bat_stats.reflection_adoptions == seq_stats.reflection_adoptions
    torch.testing.assert_close(bat, seq, rtol=1e-5, atol=1e-5)
    assert bat_stats.nfe == seq_stats.nfe  # the same windows ...
    assert bat_stats.reflection_nfe == seq_stats.reflection_nfe > 0
    saved = seq_stats.calls - bat_stats.calls  # ... in fewer calls: n_samp candidates share each one
    assert saved >= seq_stats.reflection_triggers * (cfg.reflection_samples - 1) * cfg.reflection_judge_steps


def test_calls_count_batches(world):
    cfg = MIGAConfig.gaussian().with_(reflection=False)
    _, one = _run(world, cfg.with_(guides=0), frames=40)
    _, four = _run(world, cfg.with_(guides=0, window_batch=4), frames=40)
    assert one.nfe == one.calls and four.nfe == one.nfe and four.calls < one.calls


def _reflection(history, calibration="auto", factor=1.5, warmup=4, threshold=0.01):
    refl = SelfReflection(None, chunk=4, window=16, stride=8, judge_steps=8, ref_chunks=2, samples=3,
                          threshold=threshold, fresh=None, stats=Stats(), calibration=calibration,
                          auto_factor=factor, auto_warmup=warmup)
    refl.history = list(history)
    return refl


def test_calibrated_threshold_is_a_robust_spread_of_earlier_changes():
    history = [0.50, 0.53, 0.49, 0.52, 0.50, 0.47, 0.10]  # the last check is the one being judged
    earlier = history[:-1]
    changes = sorted(abs(b - a) for a, b in zip(earlier, earlier[1:]))  # .03 .04 .03 .02 .03
    assert _reflection(history).drop_threshold() == pytest.approx(1.5 * 1.4826 * 0.03)
    assert _reflection(history, factor=3.0).drop_threshold() == pytest.approx(3.0 * 1.4826 * changes[2])
    assert _reflection(history[:5]).drop_threshold() is None  # 3 earlier changes < warm-up 4
    assert _reflection(history, calibration="fixed").drop_threshold() == 0.01
    # the same series on another scale gets the same decisions
    for scale in (0.1, 1.0, 30.0):
        r = _reflection([scale * v for v in history])
        assert r.drop_threshold() == pytest.approx(scale * 1.5 * 1.4826 * 0.03)
        assert scale * (history[-2] - history[-1]) > r.drop_threshold()  # the big drop triggers
        quiet = _reflection([scale * v for v in history[:-1]])  # 0.50 -> 0.47 is an ordinary change
        assert scale * (history[-3] - history[-2]) <= quiet.drop_threshold()


def test_calibrated_reflection_triggers_on_a_fraction_of_checks(world):
    """Under delta = 0.01 most checks of the Gaussian world trigger; calibrated, a minority do."""
    cfg = MIGAConfig.gaussian().with_(reflection_calibration="fixed", reflect_during="all")  # the paper's setting
    _, fixed = _run(world, cfg, frames=160)
    _, auto = _run(world, cfg.with_(reflection_calibration="auto"), frames=160)
    assert fixed.reflection_checks == auto.reflection_checks > 20
    rate = auto.reflection_triggers / auto.reflection_checks
    assert 0 < rate < 0.3 and auto.reflection_triggers < fixed.reflection_triggers


@pytest.mark.parametrize("bad, message", [
    (dict(reflection_calibration="sometimes"), "calibration"),
    (dict(reflection_calibration="auto", reflection_auto_factor=0.0), "factor"),
    (dict(reflection_calibration="auto", reflection_auto_warmup=0), "warm-up"),
])
def test_bad_calibration_settings(bad, message):
    from miga.errors import MigaError

    with pytest.raises(MigaError, match=message):
        MIGAConfig.gaussian().with_(**bad).validate(16)
