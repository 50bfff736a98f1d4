"""Identity metrics of the Gaussian world (``miga.evaluation.identity``): exact formulas, their agreement with
exact prior draws, and what they say about a video that forgets its identity."""

import json

import numpy as np
import pytest
import torch

from miga.backbones.gaussian import GaussianWorld
from miga.evaluation import identity as idm
from miga.evaluation.latents import LatentWriter, read_latents

DRAWS = 40


@pytest.fixture(scope="module")
def world():
    return GaussianWorld(height=32, width=32)  # 4x4x4 latents: a small identity, the hardest case


@pytest.fixture(scope="module")
def draws(world):
    """40 exact prior videos of 1100 frames (lag 1024 fits), seeds 0..39."""
    return [idm.prior_sample(world, 1100, seed) for seed in range(DRAWS)]


# ---------------------------------------------------------------- exact formulas
def test_prior_values(world):
    prior = idm.Prior.of(world)
    assert prior.identity_share == 0.5 and prior.rho == 0.9
    np.testing.assert_allclose(prior.k([0, 1, 16, 1024]), [1.0, 0.95, 0.5 + 0.5 * 0.9**16, 0.5], rtol=1e-15)
    np.testing.assert_allclose(prior.k([1, 16]), world.lag_correlation(np.array([1, 16])), rtol=1e-15)
    # block means: brute force from the kernel, overlapping and apart
    kernel = world.temporal_kernel(200).numpy()
    for block, d in ((32, 0), (32, 5), (32, 40), (16, 100)):
        brute = kernel[:block, d:d + block].mean()
        assert float(prior.block_cov(d, block)) == pytest.approx(brute, rel=1e-12)
    # the limit quoted in the docstring: s_id^2 / (s_id^2 + s_m^2 v_B) = 0.70 for B = 32
    v32 = (float(prior.block_cov(0, 32)) - 0.5) / 0.5
    assert v32 == pytest.approx(0.424, abs=1e-3)
    assert float(prior.block_correlation(10_000, 32)) == pytest.approx(0.5 / (0.5 + 0.5 * v32), rel=1e-9)
    assert float(prior.block_correlation(10_000, 32)) == pytest.approx(0.702, abs=1e-3)


@pytest.mark.parametrize("o1,n1,d1,o2,n2,d2", [(0, 7, 0, 0, 7, 0), (0, 5, 2, 2, 5, 0), (1, 4, 3, 0, 6, 1),
                                               (3, 2, 0, 0, 8, 4), (0, 12, 0, 2, 1, 9)])
def test_pair_trace_is_the_dense_trace(world, o1, n1, d1, o2, n2, d2):
    """The O(N) formula for tr(M1 K M2 K) against dense matrices."""
    n = 12
    kernel = world.temporal_kernel(n).numpy()

    def m(o, cnt, d):
        e = np.zeros((n, n))
        for i in range(o, o + cnt):
            e[i, i + d] = 1
        return (e + e.T) / 2

    dense = np.trace(m(o1, n1, d1) @ kernel @ m(o2, n2, d2) @ kernel)
    assert idm._pair_trace(idm.Prior.of(world).k, o1, n1, d1, o2, n2, d2) == pytest.approx(dense, rel=1e-12)


# ---------------------------------------------------------------- measured on exact prior draws
def test_lag_correlations_match_the_prior_on_exact_draws(world, draws):
    """On each exact draw the pooled lag correlation estimates k(d) = s_id^2 + s_m^2 rho^d. Over 40 draws the
    mean sits within 4 standard errors (prior_sd / sqrt(40)) of k(d) plus the estimator's second-order bias,
    allowing 0.003 for the bias formula's own error (measured on 3000 draws: within 0.001); the spread of the
    40 values matches prior_sd within the sampling error of an sd from 40 values (relative sd 0.11; allowed
    0.6x - 1.5x). No single draw lies beyond 4.5 prior_sd (p < 3e-4 over the 280 values)."""
    reports = [idm.identity_metrics(x, world) for x in draws]
    prior = idm.Prior.of(world)
    for j, lag in enumerate(idm.LAGS):
        rows = [r["lag_correlation"][j] for r in reports]
        assert all(row["lag"] == lag for row in rows)
        values = np.array([row["measured"] for row in rows])
        row = rows[0]
        assert row["prior"] == pytest.approx(float(prior.k(lag)), rel=1e-15)
        sd, mean = row["prior_sd"], row["prior_mean"]
        assert abs(values.mean() - mean) < 4 * sd / np.sqrt(DRAWS) + 0.003, (lag, values.mean(), mean, sd)
        assert 0.6 < values.std(ddof=1) / sd < 1.5, (lag, values.std(ddof=1), sd)
        assert np.abs((values - mean) / sd).max() < 4.5
    # the identity floor is visible: far lags sit at s_id^2, not at rho^d
    far = np.array([r["lag_correlation"][-1]["measured"] for r in reports])
    assert abs(far.mean() - 0.5) < 0.05 and reports[0]["lag_correlation"][-1]["lag"] == 1024


def test_identity_drift_matches_the_prior_on_exact_draws(world, draws):
    """The same for the drift of the block-mean identity estimate (block 32) from the first frames: expected
    c_B(d) / c_B(0) (0.70 once the motion has decorrelated, since a 32-frame mean keeps 0.42 of the motion's
    variance)."""
    reports = [idm.identity_metrics(x, world) for x in draws]
    distances = [row["distance"] for row in reports[0]["identity_drift"]]
    assert distances == [1, 16, 64, 128, 256, 512, 1024]
    for j, distance in enumerate(distances):
        rows = [r["identity_drift"][j] for r in reports]
        values = np.array([row["measured"] for row in rows])
        sd, mean = rows[0]["prior_sd"], rows[0]["prior_mean"]
        assert abs(values.mean() - mean) < 4 * sd / np.sqrt(DRAWS) + 0.003, (distance, values.mean(), mean)
        assert 0.6 < values.std(ddof=1) / sd < 1.5, (distance, values.std(ddof=1), sd)
    assert rows[0]["prior"] == pytest.approx(0.702, abs=1e-3)


def test_summary_of_a_true_sample_is_consistent(world, draws):
    consistent = [idm.identity_metrics(x, world)["summary"]["consistent_with_prior"] for x in draws]
    assert all(consistent)  # |z| <= 4 at lag 1024 (see above: none beyond 4.5)


# ---------------------------------------------------------------- a model that forgets
def forgetful_video(world, pieces=16, length=64, seed=0):
    """Independent prior draws of ``length`` frames put end to end: each piece has its own identity, as in a
    long video from a model that forgets everything beyond its window."""
    return torch.cat([idm.prior_sample(world, length, 1000 * seed + k) for k in range(pieces)])


def test_a_video_that_forgets_shows_no_long_lag_correlation(world):
    """Frames at lags >= 64 come from different pieces, so their correlation is 0 in expectation, against the
    prior's 0.5. Over 4 such videos of 1024 frames the mean long-lag correlation is within 0.1 of 0 (measured
    over 10 videos: mean within 0.02, sd 0.02 - 0.035 per video), and each video's summary (lag 512) says the
    identity was lost: ratio below 0.3 and z below -4 (measured -7.4 to -9.0), where true samples give
    |z| <= 4."""
    for seed in range(4):
        video = forgetful_video(world, seed=seed)
        report = idm.identity_metrics(video, world)
        long = [row["measured"] for row in report["lag_correlation"] if row["lag"] >= 64]
        assert len(long) == 4 and abs(np.mean(long)) < 0.1
        summary = report["summary"]
        assert summary["lag"] == 512 and summary["prior"] == pytest.approx(0.5, abs=1e-12)
        assert summary["ratio"] < 0.3 and summary["z"] < -4 and summary["consistent_with_prior"] is False
        drift = [row for row in report["identity_drift"] if row["distance"] >= 64]
        assert np.mean([row["measured"] for row in drift]) < 0.35  # prior: 0.70


# ---------------------------------------------------------------- the estimate, files, reports
def test_identity_estimate_is_a_centred_block_mean():
    z = torch.randn(50, 2, 3, 3, dtype=torch.float64)
    est = idm.identity_estimate(z, block=10)
    assert est.shape == z.shape
    torch.testing.assert_close(est[25], z[20:30].mean(0), atol=1e-12, rtol=0)
    torch.testing.assert_close(est[0], z[:10].mean(0), atol=1e-12, rtol=0)  # clamped at the ends
    torch.testing.assert_close(est[49], z[40:].mean(0), atol=1e-12, rtol=0)
    # a fixed field plus small fast noise: the estimate recovers the field, and mu is removed
    field = torch.randn(1, 2, 3, 3, dtype=torch.float64)
    mu = torch.tensor([0.5, -1.0], dtype=torch.float64)
    video = field + mu[None, :, None, None] + 0.1 * torch.randn(64, 2, 3, 3, dtype=torch.float64)
    est = idm.identity_estimate(video, mu, block=32)
    assert float((est - field).abs().max()) < 0.1
    with pytest.raises(ValueError):
        idm.identity_estimate(z, block=51)


def test_report_from_saved_latents_is_json_and_removes_mu(world, tmp_path):
    """The ``--save-latents`` format in, plain JSON out; the prompt mean is removed before measuring, and the
    report carries an exact prior draw of the same length."""
    mu = world.encode_prompt("drifting clouds")
    latents = idm.prior_sample(world, 300, seed=3) + mu.reshape(1, -1, 1, 1)
    path = str(tmp_path / "v.latents.safetensors")
    writer = LatentWriter(path, len(latents), world.latent_shape, {"frames": 300})
    for latent in latents:
        writer.write(latent)
    writer.close()
    saved, _ = read_latents(path)
    report = idm.identity_report(saved, world, mu, prior_seed=1)
    json.dumps(report, allow_nan=False)
    video, sample = report["video"], report["prior_sample"]
    assert video["frames"] == sample["frames"] == 300 and video["latent_shape"] == [4, 4, 4]
    assert [row["lag"] for row in video["lag_correlation"]] == [1, 16, 64, 128, 256]
    assert [row["distance"] for row in video["identity_drift"]] == [1, 16, 64, 128, 256]
    assert video["summary"]["consistent_with_prior"] and sample["summary"]["consistent_with_prior"]
    without_mu = idm.identity_metrics(saved, world)
    # not removed, the prompt mean adds a constant to every frame and inflates the correlation
    assert without_mu["lag_correlation"][-1]["measured"] > video["lag_correlation"][-1]["measured"] + 0.2
    # float32 on disk, float64 in memory: the same numbers
    direct = idm.identity_metrics(latents, world, mu)
    for a, b in zip(direct["lag_correlation"], video["lag_correlation"]):
        assert a["measured"] == pytest.approx(b["measured"], abs=1e-6)
    with pytest.raises(ValueError):
        idm.identity_report(saved[:, :, :2], world)


def test_short_videos_and_worlds_without_identity():
    ar1 = GaussianWorld(height=32, width=32, identity_share=0.0)
    report = idm.identity_metrics(idm.prior_sample(ar1, 20, 0), ar1)
    assert [row["lag"] for row in report["lag_correlation"]] == [1, 16] and report["block"] == 20
    assert report["identity_drift"] == []  # no second block fits
    assert report["lag_correlation"][1]["prior"] == pytest.approx(0.9**16)
    one = idm.identity_metrics(idm.prior_sample(ar1, 1, 0), ar1)
    assert one["lag_correlation"] == [] and one["summary"] is None
    # without a spectrum of the latents' size, no spread is claimed
    bare = idm.identity_metrics(idm.prior_sample(ar1, 40, 0), idm.Prior(0.5, 0.9))
    assert bare["lag_correlation"][0]["prior_sd"] is None and bare["summary"]["consistent_with_prior"] is None
