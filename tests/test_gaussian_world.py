import math

import numpy as np
import pytest
import torch

from miga.backbones.base import Backbone, NoiseLevels
from miga.backbones.gaussian import GaussianWorld, video_statistics
from miga.errors import MigaError

RHO, BETA, K0 = 0.8, 1.3, 1.5


def tiny(mode="exact", identity_share=0.5, size=32, channels=1):
    return GaussianWorld(channels=channels, height=size, width=size, rho=RHO, beta=BETA, k0=K0,
                         identity_share=identity_share, mode=mode)


def levels(alphas, sigmas):
    a = torch.tensor(np.asarray(alphas, dtype=np.float64))[None]
    s = torch.tensor(np.asarray(sigmas, dtype=np.float64))[None]
    return NoiseLevels(timesteps=s * 1000, alphas=a, sigmas=s)


def dense_prior_covariance(n, frames, identity_share):
    """Covariance of one channel's x0 over all (frame, pixel) pairs of an n x n latent, from the spec and not
    the FFT code path: the spatial covariance is the circulant matrix with spectrum P (built with a dense
    DFT), the identity is one such field shared by all frames (s_id^2), the motion an AR(1) in time (s_m^2)."""
    k = np.fft.fftfreq(n) * n
    power = (k[:, None] ** 2 + k[None, :] ** 2 + K0**2) ** (-BETA)
    power = (power / power.mean()).ravel()
    dft = np.exp(-2j * np.pi * np.outer(np.arange(n), np.arange(n)) / n) / math.sqrt(n)
    u = np.kron(dft, dft)  # orthonormal 2-D DFT on row-major (H, W) pixels
    sigma_s = (u.conj().T @ np.diag(power) @ u).real
    t = np.arange(frames)
    identity = identity_share * np.kron(np.ones((frames, frames)), sigma_s)  # x0 flattened as (F, H, W)
    motion = (1 - identity_share) * np.kron(RHO ** np.abs(t[:, None] - t[None, :]), sigma_s)
    return identity + motion


def dense_posterior_mean(y, alphas, sigmas, mu, identity_share):
    """Brute-force E[x0 | y] for one channel (y: [F, n, n]) by Gaussian conditioning on the joint covariance
    of x0 and y = alpha x0 + sigma eps over every pixel and frame: mu + S_xy S_yy^-1 (y - alpha mu)."""
    frames, n = y.shape[0], y.shape[1]
    s_xx = dense_prior_covariance(n, frames, identity_share)
    a = np.diag(np.repeat(alphas, n * n))
    s_xy = s_xx @ a  # Cov(x0, y)
    s_yy = a @ s_xx @ a + np.diag(np.repeat(np.asarray(sigmas) ** 2, n * n))  # Cov(y, y)
    m = np.full(frames * n * n, mu)
    x0 = m + s_xy @ np.linalg.solve(s_yy, y.ravel() - a @ m)
    return x0.reshape(frames, n, n)


@pytest.mark.parametrize("identity_share", [0.0, 0.5, 0.8])
@pytest.mark.parametrize("frames", [3, 4])
@pytest.mark.parametrize("mu", [0.0, 0.7])
def test_posterior_mean_matches_dense_conditioning(mu, frames, identity_share):
    world = tiny(identity_share=identity_share)
    rng = np.random.default_rng(frames)
    alphas = rng.uniform(0.3, 1.0, frames)
    sigmas = rng.uniform(0.2, 1.5, frames)
    alphas[1], sigmas[1] = 1.0, 0.0  # one clean context frame
    y = rng.standard_normal((1, 1, frames, 4, 4))
    out = world.predict(torch.from_numpy(y), levels(alphas, sigmas), [torch.tensor([mu], dtype=torch.float64)])
    assert out.dtype == torch.float64 and out.shape == (1, 1, frames, 4, 4)
    want = dense_posterior_mean(y[0, 0], alphas, sigmas, mu, identity_share)
    np.testing.assert_allclose(out[0, 0].numpy(), want, atol=1e-10, rtol=0)
    np.testing.assert_allclose(out[0, 0, 1].numpy(), y[0, 0, 1], atol=1e-8)  # clean frame kept


def test_posterior_mean_matches_dense_conditioning_2x2_two_channels_clip_mode():
    """2x2 latents (16 px frames), two channels with their own means, 3 frames, all noisy; ``clip`` mode is
    exact conditioning with every frame at the window's mean level."""
    alphas, sigmas, mu = np.array([0.9, 0.6, 0.35]), np.array([0.3, 0.7, 1.1]), [0.4, -1.2]
    y = np.random.default_rng(7).standard_normal((1, 2, 3, 2, 2))
    cond = [torch.tensor(mu, dtype=torch.float64)]
    for mode, a, s in (("exact", alphas, sigmas), ("clip", [alphas.mean()] * 3, [sigmas.mean()] * 3)):
        out = tiny(mode, size=16, channels=2).predict(torch.from_numpy(y), levels(alphas, sigmas), cond)
        for c in range(2):
            want = dense_posterior_mean(y[0, c], np.asarray(a), np.asarray(s), mu[c], 0.5)
            np.testing.assert_allclose(out[0, c].numpy(), want, atol=1e-10, rtol=0)


def test_all_clean_returns_y_over_alpha_and_keeps_dtype():
    world = GaussianWorld()
    y = torch.randn(1, 4, 3, 16, 16)
    out = world.predict(y, levels([0.5, 1.0, 2.0], [0.0, 0.0, 0.0]), [world.encode_prompt("")])
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, y / torch.tensor([0.5, 1.0, 2.0])[:, None, None], atol=1e-5, rtol=1e-5)


def test_any_window_length():
    world = GaussianWorld(height=64, width=64)
    for f in (1, 5, 23):
        lv = levels([0.6] * f, [0.8] * f)
        out = world.predict(torch.randn(1, 4, f, 8, 8), lv, [world.encode_prompt("x")])
        assert out.shape == (1, 4, f, 8, 8) and torch.isfinite(out).all()


def test_clip_mode():
    exact, clip = tiny("exact"), tiny("clip")
    y = torch.randn(1, 1, 4, 4, 4, dtype=torch.float64)
    cond = [torch.tensor([0.3])]
    equal = levels([0.7] * 4, [0.5] * 4)
    torch.testing.assert_close(clip.predict(y, equal, cond), exact.predict(y, equal, cond), atol=1e-12, rtol=0)
    mixed = levels([1.0, 0.8, 0.4, 0.2], [0.0, 0.2, 0.6, 0.8])
    out = clip.predict(y, mixed, cond)
    assert (out - exact.predict(y, mixed, cond)).abs().max() > 1e-3
    means = levels([0.6] * 4, [0.4] * 4)
    torch.testing.assert_close(out, exact.predict(y, means, cond), atol=1e-12, rtol=0)


def test_batch_elements_independent_and_cached():
    world = GaussianWorld(height=64, width=64)
    y = torch.randn(2, 4, 6, 8, 8, dtype=torch.float64)
    a = torch.rand(2, 6, dtype=torch.float64) * 0.7 + 0.3
    s = torch.rand(2, 6, dtype=torch.float64)
    conds = [world.encode_prompt("a cat"), world.encode_prompt("")]
    both = world.predict(y, NoiseLevels(s * 1000, a, s), conds)
    for b in range(2):
        one = world.predict(y[b : b + 1], NoiseLevels(s[b : b + 1] * 1000, a[b : b + 1], s[b : b + 1]), [conds[b]])
        torch.testing.assert_close(both[b : b + 1], one, atol=1e-12, rtol=0)
    assert len(world._gains) == 2  # the single calls reused the batch call's gains
    world.cache_size = 1
    world.predict(y[:1], NoiseLevels(s[:1] * 0 + 1, a[:1], s[:1] * 0.5), [conds[0]])
    assert len(world._gains) == 1


def test_prior_samples_have_the_prior_temporal_covariance():
    """400 exact draws of 24 frames of 4x4x4 latents. The pooled covariance of frames d apart,
    c(d) = mean over draws, channels, pixels and t of z_t z_{t+d}, estimates k(d) = s_id^2 + s_m^2 rho^d
    without bias. Its standard error is exact for a Gaussian field: c(d) = z^T (M_d ⊗ I) z / (C H W n) with
    M_d = sym(shift by d), so Var = 2 C sum_k P_k^2 tr(M_d K M_d K) / (C H W n)^2 / draws (the spatial factor:
    the circulant Σ_S has eigenvalues P_k). Every lag within 5 standard errors (a false failure somewhere
    among the 24 lags has probability < 2e-5). The standard errors are <= 0.009, so a wrong s_id^2 (0.4 instead
    of 0.5: k(23) off by 0.09) or a world that forgets (k -> rho^d) fails."""
    world = GaussianWorld(height=32, width=32)
    c, h, w = world.latent_shape
    frames, draws = 24, 400
    gen = torch.Generator().manual_seed(0)
    x = torch.stack([world.sample_prior(frames, generator=gen) for _ in range(draws)])  # [D, C, F, H, W]
    assert x.shape == (draws, c, frames, h, w) and x.dtype == torch.float64
    kernel = world.temporal_kernel(frames).numpy()
    p2 = float((world.spectrum**2).sum())
    ses = []
    for d in range(frames):
        n = frames - d
        measured = float((x[:, :, :n] * x[:, :, d:]).mean())
        want = world.identity_share + (1 - world.identity_share) * world.rho**d
        assert world.lag_correlation(d) == pytest.approx(want, abs=1e-15) and kernel[d, 0] == pytest.approx(want)
        m = (np.eye(frames, k=d) + np.eye(frames, k=-d)) / 2
        var = 2 * c * p2 * np.trace(m @ kernel @ m @ kernel) / (c * h * w * n) ** 2 / draws
        ses.append(math.sqrt(var))
        assert abs(measured - want) < 5 * ses[-1], (d, measured, want, ses[-1])
    assert max(ses) < 0.01


def test_identity_field_has_the_spatial_spectrum():
    """The mean of a draw over its frames has, per frequency, variance P(k) * mean(K_T) (the identity and
    the averaged motion share the spectrum P): measured on 400 draws x 4 channels per frequency (relative
    standard error 1/sqrt(1600) = 0.025, sqrt(2) times that where the FFT coefficient is real), every
    frequency within 5 standard errors. A white identity field would be off by P(k), which ranges over
    0.1 - 4.2 here."""
    world = GaussianWorld(height=32, width=32)
    frames, draws = 24, 400
    gen = torch.Generator().manual_seed(1)
    x = torch.stack([world.sample_prior(frames, generator=gen) for _ in range(draws)])
    power = (torch.fft.fft2(x.mean(2), norm="ortho").abs() ** 2).mean((0, 1))  # [H, W]
    want = world.spectrum * world.temporal_kernel(frames).mean()
    h, w = power.shape
    real = torch.zeros(h, w, dtype=torch.bool)
    real[:: h // 2, :: w // 2] = True  # frequencies equal to their own conjugate: real coefficients
    se = (1 + real.double()) ** 0.5 / math.sqrt(draws * world.channels)
    assert ((power / want - 1).abs() < 5 * se).all()
    assert float(world.spectrum.max() / world.spectrum.min()) > 10


def test_long_prior_sample_lag1_and_variance():
    """One 500-frame draw at 128x128: ``video_statistics`` sits within 5 standard deviations of the prior
    (lag-1 correlation: s_id^2 + s_m^2 rho = 0.95, less the estimator's small bias; variance 1). The sds are
    those of these estimators on an exact draw (``miga.evaluation.identity``). The variance's, 0.06, is
    dominated by the video's one identity field; the scale is checked sharply on many draws above."""
    from miga.evaluation.identity import Prior, lag_correlation_moments, _pair_trace

    world = GaussianWorld(height=128, width=128)
    c, h, w = world.latent_shape
    frames = 500
    mu = world.encode_prompt("river")
    x = world.sample_prior(frames, generator=torch.Generator().manual_seed(0), mu=mu)
    assert x.shape == (c, frames, h, w)
    stats = video_statistics(x, mu)
    prior = Prior.of(world)
    bias, se_lag = lag_correlation_moments(prior, frames, 1, world.latent_shape)
    spatial = prior.spatial_factor(world.latent_shape)
    se_var = math.sqrt(2 * _pair_trace(prior.k, 0, frames, 0, 0, frames, 0) * spatial) / (c * h * w * frames)
    assert se_var < 0.07 and se_lag < 0.004  # lag 1 is sharp enough to catch rho = 0.85 (k(1) = 0.925)
    assert abs(stats["variance"] - 1.0) < 5 * se_var
    assert abs(stats["lag1"] - (world.lag_correlation(1) + bias)) < 5 * se_lag
    assert world.lag_correlation(1) == pytest.approx(0.95)
    assert abs(float(world.spectrum.mean()) - 1.0) < 1e-12


# Outputs of the AR(1) world before the identity existed (commit 83946f7), float64: identity_share=0 keeps them.
AR1_PREDICT = (88.81309615360131, 598.7614476700224, 1.1882286166931502)
AR1_PRIOR = (840.2129846348016, 1967.642115338353, 2.2180997468919643)


def test_identity_share_zero_is_the_ar1_world():
    world = GaussianWorld(height=32, width=48, identity_share=0.0)
    t = torch.arange(9, dtype=torch.float64)
    assert torch.equal(world.temporal_kernel(9), world.rho ** (t[:, None] - t[None, :]).abs())
    # sample_prior: the AR(1) draw exactly (FFT colouring, Cholesky of rho^|i-j|), same generator use
    gen_a, gen_b = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    white = torch.randn(4, 7, 4, 6, generator=gen_b, dtype=torch.float64)
    spatial = torch.fft.ifft2(torch.fft.fft2(white, norm="ortho") * world.spectrum.sqrt(), norm="ortho").real
    ar1 = torch.einsum("ij,cjhw->cihw", torch.linalg.cholesky(world.temporal_kernel(7)), spatial)
    mu = world.encode_prompt("a")
    x = world.sample_prior(7, generator=gen_a, mu=mu)
    assert torch.equal(x, ar1 + mu[:, None, None, None])
    assert torch.equal(torch.randn(3, generator=gen_a), torch.randn(3, generator=gen_b))
    assert (float(x.sum()), float((x**2).sum()), float(x[3, 6, 2, 5])) == pytest.approx(AR1_PRIOR, rel=1e-12)
    # predict: the recorded output of the AR(1) world's exact denoiser
    gen = torch.Generator().manual_seed(123)
    y = torch.randn(2, 4, 6, 4, 6, generator=gen, dtype=torch.float64)
    a = torch.rand(2, 6, generator=gen, dtype=torch.float64) * 0.7 + 0.3
    s = torch.rand(2, 6, generator=gen, dtype=torch.float64)
    out = world.predict(y, NoiseLevels(s * 1000, a, s), [world.encode_prompt("a cat"), world.encode_prompt("")])
    got = (float(out.sum()), float((out**2).sum()), float(out[1, 2, 3, 1, 4]))
    assert got == pytest.approx(AR1_PREDICT, rel=1e-12)
    # and the default world has an identity: it differs
    default = GaussianWorld(height=32, width=48)
    assert default.identity_share == 0.5
    assert not torch.allclose(default.predict(y, NoiseLevels(s * 1000, a, s), [mu, mu]),
                              world.predict(y, NoiseLevels(s * 1000, a, s), [mu, mu]))


def test_load_backbone_passes_identity_share():
    from miga import load_backbone

    assert load_backbone("gaussian", height=32, width=32).identity_share == 0.5
    clip = load_backbone("gaussian-clip", height=32, width=32, identity_share=0.0)
    assert clip.identity_share == 0.0 and clip.mode == "clip"


def test_encode_prompt():
    world = GaussianWorld()
    a = world.encode_prompt("a red fox")
    assert a.shape == (4,) and torch.equal(a, GaussianWorld().encode_prompt("a red fox"))
    assert not torch.allclose(a, world.encode_prompt("a blue fox"))
    assert a.abs().max() <= 2.0 and a.abs().min() > 0
    assert torch.equal(world.encode_prompt(""), torch.zeros(4, dtype=torch.float64))


def test_protocol_and_decoder():
    world = GaussianWorld(height=64, width=96)
    assert isinstance(world, Backbone)
    assert world.latent_shape == (4, 8, 12) and world.prediction == "x0" and world.native_frames == 16
    dec = world.decoder()
    frames = dec.push(torch.randn(4, 8, 12))
    assert len(frames) == 1 and frames[0].shape == (64, 96, 3) and frames[0].dtype == np.uint8
    assert frames[0].std() > 0
    np.testing.assert_array_equal(dec.push(torch.zeros(4, 8, 12))[0], np.full((64, 96, 3), 128, np.uint8))
    assert dec.flush() == []


@pytest.mark.parametrize("kw", [{"height": 100}, {"width": 8}, {"mode": "fancy"}, {"identity_share": -0.1},
                                {"identity_share": 1.0}])
def test_bad_arguments_raise(kw):
    with pytest.raises(MigaError):
        GaussianWorld(**kw)
