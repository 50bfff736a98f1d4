import math

import numpy as np
import pytest
import torch

from miga.backbones.base import Backbone, NoiseLevels
from miga.backbones.gaussian import GaussianWorld, video_statistics
from miga.errors import MigaError

RHO, BETA, K0 = 0.8, 1.3, 1.5


def tiny(mode="exact"):
    return GaussianWorld(channels=1, height=32, width=32, rho=RHO, beta=BETA, k0=K0, mode=mode)


def levels(alphas, sigmas):
    a = torch.tensor(np.asarray(alphas, dtype=np.float64))[None]
    s = torch.tensor(np.asarray(sigmas, dtype=np.float64))[None]
    return NoiseLevels(timesteps=s * 1000, alphas=a, sigmas=s)


def dense_posterior_mean(y, alphas, sigmas, mu):
    """Brute-force E[x0 | y] for C=1, F=4, 4x4 frames, built from the spec without the FFT code path."""
    n = 4
    k = np.fft.fftfreq(n) * n
    power = (k[:, None] ** 2 + k[None, :] ** 2 + K0**2) ** (-BETA)
    power = (power / power.mean()).ravel()
    dft = np.exp(-2j * np.pi * np.outer(np.arange(n), np.arange(n)) / n) / math.sqrt(n)
    u = np.kron(dft, dft)  # orthonormal 2-D DFT on row-major (H, W) pixels
    sigma_s = (u.conj().T @ np.diag(power) @ u).real
    t = np.arange(4)
    k_t = RHO ** np.abs(t[:, None] - t[None, :])
    cov = np.kron(k_t, sigma_s)  # x0 flattened as (F, H, W)
    a = np.diag(np.repeat(alphas, n * n))
    d = np.diag(np.repeat(np.asarray(sigmas) ** 2, n * n))
    y = y.ravel()
    m = np.full(y.shape, mu)
    x0 = m + cov @ a @ np.linalg.solve(a @ cov @ a + d, y - a @ m)
    return x0.reshape(4, n, n)


@pytest.mark.parametrize("mu", [0.0, 0.7])
def test_posterior_mean_matches_dense_conditioning(mu):
    world = tiny()
    rng = np.random.default_rng(0)
    alphas = rng.uniform(0.3, 1.0, 4)
    sigmas = rng.uniform(0.2, 1.5, 4)
    alphas[1], sigmas[1] = 1.0, 0.0  # one clean context frame
    y = rng.standard_normal((1, 1, 4, 4, 4))
    out = world.predict(torch.from_numpy(y), levels(alphas, sigmas), [torch.tensor([mu], dtype=torch.float64)])
    assert out.dtype == torch.float64 and out.shape == (1, 1, 4, 4, 4)
    want = dense_posterior_mean(y[0, 0], alphas, sigmas, mu)
    np.testing.assert_allclose(out[0, 0].numpy(), want, atol=1e-10, rtol=0)
    np.testing.assert_allclose(out[0, 0, 1].numpy(), y[0, 0, 1], atol=1e-8)  # clean frame kept


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


def test_prior_samples_have_prior_statistics():
    world = GaussianWorld(height=128, width=128)
    c, h, w = world.latent_shape
    frames = 500
    mu = world.encode_prompt("river")
    x = world.sample_prior(frames, generator=torch.Generator().manual_seed(0), mu=mu)
    assert x.shape == (c, frames, h, w)
    stats = video_statistics(x, mu)
    # Standard errors of the pooled estimators for this Gaussian field. Pixels are spatially correlated:
    # sum_pq Σ_S[p,q]^2 = sum_k P_k^2 = HW·mean(P^2), so the effective sample size shrinks by mean(P^2).
    # variance: Var(mean z^2) = 2·C·tr(K_T^2)·sum_k P_k^2 / N^2;  lag1 (Bartlett): (1-rho^2)·mean(P^2)/N.
    # We allow 5 standard errors (a false failure has probability < 1e-6 for a fresh seed).
    p2 = float((world.spectrum**2).mean())
    n = c * frames * h * w
    tr_k2 = float((world.temporal_kernel(frames) ** 2).sum())
    se_var = math.sqrt(2 * c * tr_k2 * h * w * p2) / n
    se_lag = math.sqrt((1 - world.rho**2) * p2 / n)
    assert se_var < 0.03 and se_lag < 0.005  # the test is sharp enough to catch a wrong rho or scale
    assert abs(stats["variance"] - 1.0) < 5 * se_var
    assert abs(stats["lag1"] - world.rho) < 5 * se_lag
    assert abs(float(world.spectrum.mean()) - 1.0) < 1e-12


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


@pytest.mark.parametrize("kw", [{"height": 100}, {"width": 8}, {"mode": "fancy"}])
def test_bad_arguments_raise(kw):
    with pytest.raises(MigaError):
        GaussianWorld(**kw)
