"""Temporal-attention policies of FreeNoise, FreeLong and FreePCA (``shared/spec/baselines.md`` §2.7, §3.6, §4.5)
on tiny tensors, and :func:`miga.baselines.hooks.attention_policy` on tiny random models of every backbone kind."""

import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from miga.baselines import attention as A
from miga.baselines.attention import (AttentionSite, FreeLongConfig, FreeNoiseConfig, FreePCAConfig, GlobalAttention,
                                      PCAFuseAttention, SpectralBlendAttention, WindowedAttention,
                                      freelong_local_mask, freelong_lowpass, pca_fuse, spectral_blend, window_starts,
                                      window_weights)
from miga.baselines.hooks import attention_policy, temporal_attention_layers
from miga.errors import MigaError
from toy_helpers import randomise, tiny_v2_weights

INF = float("inf")
GLOBAL_ONLY = FreeLongConfig(d_t=INF, d_s=INF, local_only_levels=())  # P ≡ 1


def qkv(batch=2, h=2, w=4, heads=2, frames=24, d=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(batch * h * w, heads, frames, d, generator=g) for _ in range(3))
    return q, k, v, AttentionSite(grid=(batch, frames, h, w), timestep=500.0)


def relative_bias(heads, frames, seed=1):
    """A bias like the built-in model's: one value per head and signed frame distance."""
    table = torch.randn(heads, 2 * frames - 1, generator=torch.Generator().manual_seed(seed))
    t = torch.arange(frames)
    return table[:, t[None, :] - t[:, None] + frames - 1]


def reference_attention(q, k, v, bias=None, allowed=None, scale=None):
    """Written-out softmax attention (not SDPA), the independent reference."""
    logits = (q @ k.transpose(-1, -2)) * (q.shape[-1] ** -0.5 if scale is None else scale)
    if bias is not None:
        logits = logits + bias
    if allowed is not None:
        logits = logits.masked_fill(~allowed, float("-inf"))
    return logits.softmax(-1) @ v


def close(a, b, tol=1e-5):
    return torch.allclose(a, b, atol=tol, rtol=tol)


# ------------------------------------------------------------------------------------------ windows
def test_window_starts_follow_get_views_and_guard_coverage():
    assert window_starts(64, 16, 4) == list(range(0, 49, 4))  # 13 views
    assert len(window_starts(128, 16, 4)) == 29
    assert window_starts(16, 16, 4) == [0] and window_starts(10, 16, 4) == [0]
    with pytest.raises(MigaError, match="multiple of 4 .e.g. 68 frames"):
        window_starts(66, 16, 4)
    assert window_starts(66, 16, 4, tail="extra_window") == list(range(0, 49, 4)) + [50]
    with pytest.raises(MigaError):
        FreeNoiseConfig(tail="wrap")


def test_pyramid_weights():
    assert window_weights(16).tolist() == list(range(1, 9)) + list(range(8, 0, -1))
    assert window_weights(5).tolist() == [1, 2, 3, 2, 1]
    assert window_weights(4, "flat").tolist() == [1, 1, 1, 1]


# ------------------------------------------------------------------------------------------ FreeNoise
def test_plain_attention_is_the_written_out_softmax():
    q, k, v, site = qkv()
    bias = relative_bias(2, 24)
    assert close(GlobalAttention()(q, k, v, bias, site), reference_attention(q, k, v, bias))


@pytest.mark.parametrize("window", [24, 32])
def test_freenoise_with_one_window_is_plain_attention(window):
    q, k, v, site = qkv()
    bias = relative_bias(2, 24)
    out = WindowedAttention(FreeNoiseConfig(window=window, stride=4))(q, k, v, bias, site)
    assert close(out, reference_attention(q, k, v, bias))


def test_freenoise_fuses_windows_with_pyramid_weights():
    """N = 6, W = 4, S = 2: windows [0, 4) and [2, 6), weights [1, 2, 2, 1]."""
    q, k, v, site = qkv(frames=6)
    bias = relative_bias(2, 6)
    win = [reference_attention(q[:, :, s:s + 4], k[:, :, s:s + 4], v[:, :, s:s + 4], bias[:, s:s + 4, s:s + 4])
           for s in (0, 2)]
    want = torch.stack([win[0][:, :, 0], win[0][:, :, 1],
                        (2 * win[0][:, :, 2] + win[1][:, :, 0]) / 3, (win[0][:, :, 3] + 2 * win[1][:, :, 1]) / 3,
                        win[1][:, :, 2], win[1][:, :, 3]], dim=2)
    out = WindowedAttention(FreeNoiseConfig(window=4, stride=2))(q, k, v, bias, site)
    assert close(out, want)
    assert not close(out, reference_attention(q, k, v, bias), 1e-3)


def test_freenoise_passes_a_constant_per_frame_value_through():
    q, k, _, site = qkv(frames=24)
    v = torch.randn(q.shape[0], 2, 1, 8).expand(-1, -1, 24, -1)
    assert close(WindowedAttention()(q, k, v, None, site), v)


# ------------------------------------------------------------------------------------------ FreeLong
def test_freelong_masks():
    strict = freelong_local_mask(32, 16, "strict").sum(1)
    assert (strict[0], strict[8], strict[16], strict[31]) == (9, 17, 17, 9)
    adjusted = freelong_local_mask(32, 16, "adjusted")
    assert adjusted[0].nonzero().flatten().tolist() == list(range(16))
    assert adjusted[31].nonzero().flatten().tolist() == list(range(16, 32))
    assert adjusted.sum(1)[8] == 17 and adjusted.sum(1)[7] == 16
    assert freelong_local_mask(8, 16, "adjusted").all()


def test_freelong_lowpass_values():
    p = freelong_lowpass(16, 8, 10)
    assert p[8, 4, 5] == pytest.approx(1.0)  # DC (fftshift'ed centre) for even sizes
    assert p[0, 4, 5] == pytest.approx(math.exp(-8))  # τ = -1 at grid index 0
    odd = freelong_lowpass(16, 5, 8)
    assert odd[8, 2, 4] == pytest.approx(math.exp(-0.5 * (0.2 / 0.25) ** 2), abs=1e-6)  # ≈ 0.726, not 1
    assert odd[8, 2, 4] == pytest.approx(0.726, abs=1e-3)


def test_spectral_blend_identities():
    g = torch.Generator().manual_seed(3)
    glob, loc, r = (torch.randn(2, 6, 12, 4, 6, generator=g) for _ in range(3))
    assert close(spectral_blend(glob, glob), glob)  # blend(Z, Z) = Z
    assert close(spectral_blend(glob + r, loc + r), spectral_blend(glob, loc) + r)  # the residual commutes
    lin = nn.Linear(6, 5)  # blending before or after to_out agrees (its bias kept)
    out = lambda x: lin(x.movedim(1, -1)).movedim(-1, 1)  # noqa: E731
    assert close(spectral_blend(out(glob), out(loc)), out(spectral_blend(glob, loc)))
    mixed = spectral_blend(glob, loc)
    assert not close(mixed, glob, 1e-2) and not close(mixed, loc, 1e-2)


def test_freelong_global_branch_only_is_plain_attention():
    q, k, v, site = qkv()
    bias = relative_bias(2, 24)
    assert close(SpectralBlendAttention(GLOBAL_ONLY)(q, k, v, bias, site), reference_attention(q, k, v, bias))


def test_freelong_local_branch_only_is_masked_attention():
    """The finest-level rule: at a level in local_only_levels the output is the banded attention."""
    q, k, v, site = qkv()
    bias = relative_bias(2, 24)
    allowed = torch.tensor([[abs(i - j) <= 8 for j in range(24)] for i in range(24)])
    want = reference_attention(q, k, v, bias, allowed)
    assert close(SpectralBlendAttention(FreeLongConfig(local_only_levels=(0,)))(q, k, v, bias, site), want)
    assert not close(want, reference_attention(q, k, v, bias), 1e-3)


def test_freelong_with_the_band_covering_all_frames_is_plain_attention():
    q, k, v, site = qkv()
    plain = reference_attention(q, k, v)
    for window in (46, 48):  # strict needs w // 2 >= N - 1
        assert close(SpectralBlendAttention(FreeLongConfig(window=window, local_only_levels=()))(q, k, v, None, site),
                     plain)
    not_enough = SpectralBlendAttention(FreeLongConfig(window=24, local_only_levels=()))(q, k, v, None, site)
    assert not close(not_enough, plain, 1e-3)  # w >= N is not enough for the strict mask
    adjusted = FreeLongConfig(window=24, mask="adjusted", local_only_levels=())
    assert close(SpectralBlendAttention(adjusted)(q, k, v, None, site), plain)


def test_freelong_blends_each_batch_element_on_its_own():
    q, k, v, site = qkv()
    policy = SpectralBlendAttention(FreeLongConfig(local_only_levels=()))
    out = policy(q, k, v, None, site)
    half = q.shape[0] // 2  # rows of batch element 1 (b-major)
    v2 = v.clone()
    v2[half:] = torch.randn_like(v2[half:])
    again = policy(q, k, v2, None, site)
    assert torch.equal(out[:half], again[:half]) or close(out[:half], again[:half], 1e-6)
    assert not close(out[half:], again[half:], 1e-2)
    assert not close(out, reference_attention(q, k, v), 1e-3)
    with pytest.raises(ValueError, match="grid"):
        policy(q, k, v)


# ------------------------------------------------------------------------------------------ FreePCA
def window_matrices(seed=0, batch=2, rows=40, width=16):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(batch, rows, width, generator=g), torch.randn(batch, rows, width, generator=g) * 2 + 1)


def test_pca_fusion_with_all_components_from_one_branch():
    local, glob = window_matrices()
    mean = lambda x: x.mean(-1, keepdim=True)  # noqa: E731
    assert close(pca_fuse(local, glob, 0), local - mean(local) + mean(glob), 1e-4)  # local, with global mean
    assert close(pca_fuse(local, glob, 16), glob, 1e-4)  # every component global: the global branch
    assert not close(pca_fuse(local, glob, 3), local - mean(local) + mean(glob), 1e-2)


def test_pca_fusion_takes_the_most_consistent_components_from_global():
    """A window whose principal axes are known (an orthonormal basis, the first one the constant direction
    that centring removes): local scores = global scores + noise of a chosen size per component, so the
    components with the least noise have the highest cosine and must be the ones taken from global."""
    g = torch.Generator().manual_seed(5)
    width, rows = 8, 400
    basis = torch.linalg.qr(torch.cat([torch.ones(width, 1), torch.randn(width, width - 1, generator=g)], 1))[0]
    scores = torch.linalg.qr(torch.randn(rows, width - 1, generator=g))[0] * torch.linspace(30, 10, width - 1)
    p_g = torch.cat([torch.zeros(rows, 1), scores], 1)[None]  # uncorrelated: exactly the eigenbasis
    noise_rank = torch.tensor([4, 0, 6, 2, 5, 1, 3])  # of components 1..7
    noise = torch.randn(1, rows, width - 1, generator=g) * scores.std(0) * 0.3 * (noise_rank + 1)
    p_l = p_g + torch.cat([torch.zeros(1, rows, 1), noise], -1)
    fused, taken = pca_fuse(p_l @ basis.mT + 0.3, p_g @ basis.mT + 1.0, 3, return_selection=True)
    assert int(taken.sum()) == 3
    got = (fused - 1.0) @ basis  # the global mean (1.0) replaces the local one (0.3)
    chosen = torch.zeros(width, dtype=torch.bool)
    chosen[1:] = noise_rank < 3
    assert close(got[..., chosen], p_g[..., chosen], 1e-3)
    assert close(got[..., ~chosen], p_l[..., ~chosen], 1e-3)
    assert not close(got[..., chosen], p_l[..., chosen], 1e-2)


def test_freepca_without_fusion_is_flat_windowed_attention():
    q, k, v, site = qkv(frames=24)
    flat = WindowedAttention(FreeNoiseConfig(weighting="flat"))(q, k, v, None, site)
    assert close(PCAFuseAttention(fuse=False)(q, k, v, None, site), flat)
    below = AttentionSite(grid=site.grid, timestep=250.0)  # the gate is t > 250
    assert close(PCAFuseAttention()(q, k, v, None, below), flat)
    fused = PCAFuseAttention()(q, k, v, None, site)  # t = 500
    assert not close(fused, flat, 1e-3)
    assert close(fused[:, :, :4], flat[:, :, :4])  # frames only window 0 covers: window 0 is never fused


@pytest.mark.parametrize("fuse", [None, True, False])
def test_freepca_with_one_window_is_plain_attention(fuse):
    q, k, v, site = qkv(frames=16)
    bias = relative_bias(2, 16)
    out = PCAFuseAttention(FreePCAConfig(), fuse=fuse)(q, k, v, bias, site)
    assert close(out, reference_attention(q, k, v, bias))
    assert FreePCAConfig().entropy_factor(16) == 1.0


def test_freepca_component_count_and_entropy_factor(monkeypatch):
    assert FreePCAConfig().entropy_factor(64) == pytest.approx(math.sqrt(1.5))  # the code's √(log₁₆ 64)
    assert FreePCAConfig().entropy_factor(128) == pytest.approx(1.3229, abs=1e-4)
    assert FreePCAConfig(gamma=1.1).entropy_factor(128) == 1.1
    calls = []
    real = A.pca_fuse
    monkeypatch.setattr(A, "pca_fuse", lambda l, g, n: calls.append(n) or real(l, g, n))
    q, k, v, site = qkv(frames=36)
    out = PCAFuseAttention()(q, k, v, None, site)
    assert calls == [1, 2, 3, 3, 3]  # windows 1..5: k_j = min(j, 3); window 0 never
    assert not close(out, PCAFuseAttention(FreePCAConfig(gamma=1.0))(q, k, v, None, site), 1e-4)


def test_freepca_gate_needs_a_timestep():
    q, k, v, site = qkv(frames=24)
    with pytest.raises(MigaError, match="one timestep per model call"):
        PCAFuseAttention()(q, k, v, None, AttentionSite(grid=site.grid, timestep=None))


def test_freepca_fuses_each_batch_element_on_its_own():
    q, k, v, site = qkv(frames=24)
    out = PCAFuseAttention()(q, k, v, None, site)
    half = q.shape[0] // 2
    v2 = v.clone()
    v2[half:] = torch.randn_like(v2[half:])
    again = PCAFuseAttention()(q, k, v2, None, site)
    assert close(out[:half], again[:half], 1e-6)
    assert not close(out[half:], again[half:], 1e-2)


# ------------------------------------------------------------------------------------------ hooks, built-in model


@pytest.fixture(scope="module")
def shapes_v2(tmp_path_factory):
    """The built-in model's backbone over tiny random model-v2 weights."""
    from miga.backbones.shapes import ShapesModel

    path = tiny_v2_weights(str(tmp_path_factory.mktemp("toy") / "tiny_v2.safetensors"))
    return ShapesModel(path)


def shapes_predict(model, frames=24, level=12):
    from miga.engine.schedules import Schedule

    x = torch.randn(2, *model.latent_shape[:1], frames, *model.latent_shape[1:],
                    generator=torch.Generator().manual_seed(4))
    levels = Schedule(model.default_schedule, 20).noise_levels([[level] * frames] * 2)
    conds = [torch.tensor([1, 1, 4, 9, 1, 1, 1]), torch.zeros(7, dtype=torch.long)]
    return lambda: model.predict(x, levels, conds)


def toy_installed(net) -> int:
    attns = net.temporal_attentions()
    return (sum(a.policy is not None for a in attns) + sum(len(a._forward_pre_hooks) for a in attns)
            + len(net._forward_pre_hooks))


IDENTITIES = {  # policies that must reduce to plain attention at N = 24 frames
    "global": GlobalAttention(),
    "freenoise, one window": WindowedAttention(FreeNoiseConfig(window=24)),
    "freelong, P = 1": SpectralBlendAttention(GLOBAL_ONLY),
    "freelong, band covers all": SpectralBlendAttention(FreeLongConfig(window=48, local_only_levels=())),
    "freepca, one window": PCAFuseAttention(FreePCAConfig(window=24)),
}
CHANGES = {
    "freenoise": WindowedAttention(FreeNoiseConfig(window=16, stride=4)),
    "freelong": SpectralBlendAttention(FreeLongConfig(window=8, local_only_levels=())),
    "freepca": PCAFuseAttention(FreePCAConfig(window=16, stride=4)),
}


@torch.no_grad()
def test_built_in_model_v2_identity_policies_change_nothing_and_others_do(shapes_v2):
    predict = shapes_predict(shapes_v2)
    plain = predict()
    for name, policy in IDENTITIES.items():
        with attention_policy(shapes_v2, policy):
            assert toy_installed(shapes_v2.denoiser) > 0
            assert close(predict(), plain), name
        assert toy_installed(shapes_v2.denoiser) == 0, name
    for name, policy in CHANGES.items():
        with attention_policy(shapes_v2, policy):
            assert not close(predict(), plain, 1e-4), name
    assert close(predict(), plain, 0)
    with attention_policy(shapes_v2, None):  # no policy: nothing installed
        assert toy_installed(shapes_v2.denoiser) == 0


class Recorder:
    """Plain attention that records every call's site."""

    def __init__(self):
        self.sites = []

    def __call__(self, q, k, v, bias=None, site=None):
        self.sites.append(site)
        return GlobalAttention()(q, k, v, bias, site)


@torch.no_grad()
def test_sites_carry_grid_timestep_and_level(shapes_v2):
    rec = Recorder()
    with attention_policy(shapes_v2, rec):
        shapes_predict(shapes_v2, level=12)()
    assert len(rec.sites) == 2 == len(temporal_attention_layers(shapes_v2))
    from miga.engine.schedules import Schedule

    t = float(Schedule(shapes_v2.default_schedule, 20).timesteps[12])
    for site in rec.sites:
        assert site.grid == (2, 24, 4, 4) and site.level == 0 and site.timestep == pytest.approx(t) and t > 0
    assert [s.name for s in rec.sites] == ["blocks.0.temporal_attention", "blocks.1.temporal_attention"]


@torch.no_grad()
def test_the_policy_is_removed_after_an_exception(shapes_v2):
    def broken(q, k, v, bias=None, site=None):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        with attention_policy(shapes_v2, broken):
            shapes_predict(shapes_v2)()
    assert toy_installed(shapes_v2.denoiser) == 0
    with pytest.raises(KeyError):
        with attention_policy(shapes_v2, GlobalAttention()):
            raise KeyError("inside")
    assert toy_installed(shapes_v2.denoiser) == 0


def test_models_without_separate_temporal_attention_are_refused_in_one_line():
    from miga.backbones.shapes import ShapesModel
    from miga.backbones.wan import WanModel
    from miga.toy.nets import ToyConfig, make_denoiser

    shipped = ShapesModel()
    if shipped.config.arch == "conv":  # the shipped weights are model v1
        with pytest.raises(MigaError, match="model v1") as e:
            with attention_policy(shipped, GlobalAttention()):
                pass
        assert "\n" not in str(e.value)
    with pytest.raises(MigaError, match="model v1"):
        with attention_policy(make_denoiser(ToyConfig.tiny()), GlobalAttention()):
            pass
    transformer = nn.Linear(2, 2)
    assert WanModel.temporal_attention_network(SimpleNamespace(transformer=transformer)) is transformer

    class WanTransformer3DModel(nn.Module):  # a stand-in with the diffusers class name
        pass

    with pytest.raises(MigaError, match="separate temporal attention; WanTransformer3DModel uses full 3-D") as e:
        with attention_policy(WanTransformer3DModel(), GlobalAttention()):
            pass
    assert "\n" not in str(e.value)
    with pytest.raises(MigaError, match="no temporal self-attention"):
        with attention_policy(nn.Linear(2, 2), GlobalAttention()):
            pass


# ------------------------------------------------------------------------------------------ hooks, VideoCrafter2
VC2_IDENTITIES = {
    "global": GlobalAttention(),
    "freenoise, one window": WindowedAttention(FreeNoiseConfig(window=12)),
    "freelong, P = 1": SpectralBlendAttention(GLOBAL_ONLY),
    "freepca, one window": PCAFuseAttention(FreePCAConfig(window=12)),
}
VC2_CHANGES = {
    "freenoise": WindowedAttention(FreeNoiseConfig(window=8, stride=2)),
    "freelong": SpectralBlendAttention(FreeLongConfig(window=4)),
    "freepca": PCAFuseAttention(FreePCAConfig(window=8, stride=2)),
}


@pytest.fixture(scope="module")
def vc2():
    from miga.backbones.videocrafter2_random import damp_temporal_outputs
    from miga.backbones.videocrafter2_unet import VideoCrafter2UNet, tiny_config

    torch.manual_seed(0)
    unet = damp_temporal_outputs(VideoCrafter2UNet(tiny_config()).eval(), 1.0)
    g = torch.Generator().manual_seed(1)
    x, context = torch.randn(2, 4, 12, 8, 8, generator=g), torch.randn(2, 77, 32, generator=g)
    return unet, lambda: unet(x, torch.full((2, 12), 500.0), context, fps=8)


def vc2_installed(unet) -> int:
    layers = [m for tt in unet.temporal_transformers() for b in tt.transformer_blocks for m in (b.attn1, b.attn2)]
    return (sum("forward" in m.__dict__ for m in layers) + len(unet._forward_pre_hooks)
            + sum(len(tt._forward_pre_hooks) for tt in unet.temporal_transformers()))


@torch.no_grad()
def test_videocrafter2_identity_policies_change_nothing_and_others_do(vc2):
    unet, predict = vc2
    plain = predict()
    names = temporal_attention_layers(unet)
    assert len(names) == 2 * len(unet.temporal_transformers()) and "init_attn.0.transformer_blocks.0.attn1" in names
    from miga.backbones.videocrafter2_unet import TemporalTransformer

    modules = dict(unet.named_modules())
    assert all(isinstance(modules[n.rsplit(".", 3)[0]], TemporalTransformer) for n in names)  # no spatial ones
    for name, policy in VC2_IDENTITIES.items():
        with attention_policy(unet, policy):
            assert vc2_installed(unet) > 0
            assert close(predict(), plain, 1e-4), name
        assert vc2_installed(unet) == 0, name
    for name, policy in VC2_CHANGES.items():
        with attention_policy(unet, policy):
            assert not close(predict(), plain, 1e-3), name
    rec = Recorder()
    with attention_policy(unet, rec):
        predict()
    assert len(rec.sites) == len(names)
    assert {(s.grid, s.level) for s in rec.sites} == {((2, 12, 8, 8), 0), ((2, 12, 4, 4), 1)}
    assert {s.timestep for s in rec.sites} == {500.0}
    with pytest.raises(RuntimeError, match="boom"):
        with attention_policy(unet, lambda *a: (_ for _ in ()).throw(RuntimeError("boom"))):
            predict()
    assert vc2_installed(unet) == 0
    assert close(predict(), plain, 0)


def levels_for(model, frames, level=12, steps=20, batch=2):
    from miga.engine.schedules import Schedule

    return Schedule(model.default_schedule, steps).noise_levels([[level] * frames] * batch)


@torch.no_grad()
def test_videocrafter2_backbone_hooks_its_unet():
    from miga.backbones.videocrafter2 import VideoCrafter2Model
    from miga.backbones.videocrafter2_random import random_videocrafter2_components

    model = VideoCrafter2Model.from_components(random_videocrafter2_components(seed=1), device="cpu", height=32,
                                               width=32)
    assert model.temporal_attention_network() is model.unet
    x = torch.randn(2, 4, 12, *model.latent_shape[1:], generator=torch.Generator().manual_seed(2))
    conds = [model.encode_prompt("a cat"), model.encode_prompt("")]
    levels = levels_for(model, 12)
    plain = model.predict(x, levels, conds)
    with attention_policy(model, GlobalAttention()):
        assert close(model.predict(x, levels, conds), plain, 1e-4)
    with attention_policy(model, WindowedAttention(FreeNoiseConfig(window=8, stride=2))):
        assert not close(model.predict(x, levels, conds), plain, 1e-4)
    assert vc2_installed(model.unet) == 0


# ------------------------------------------------------------------------------------------ hooks, UNet3D
@pytest.fixture(scope="module")
def unet3d():
    pytest.importorskip("diffusers")
    from miga.backbones.unet3d import UNet3DModel
    from miga.backbones.unet3d_random import random_unet3d_components

    model = UNet3DModel.from_components(random_unet3d_components(seed=1), device="cpu")
    randomise(model.unet, 3, std=0.2)
    g = torch.Generator().manual_seed(2)
    x = torch.randn(2, 4, 12, 8, 8, generator=g)
    conds = [model.encode_prompt("a dog"), model.encode_prompt("")]
    levels = levels_for(model, 12)
    return model, lambda: model.predict(x, levels, conds)


def unet3d_processors(unet) -> dict:
    return {name: id(p) for name, p in unet.attn_processors.items()}


def unet3d_hooks(unet) -> int:
    return sum(len(m._forward_pre_hooks) for m in unet.modules())


@torch.no_grad()
def test_unet3d_identity_policies_change_nothing_and_others_do(unet3d):
    model, predict = unet3d
    unet = model.unet
    before, plain = unet3d_processors(unet), predict()
    names = temporal_attention_layers(model)
    assert names and all("transformer_in" in n or "temp_attentions" in n for n in names)
    assert {n.rsplit(".", 1)[1] for n in names} == {"attn1", "attn2"}
    for name, policy in VC2_IDENTITIES.items():
        with attention_policy(model, policy):
            changed = [n for n, p in unet3d_processors(unet).items() if before[n] != p]
            assert sorted(changed) == sorted(f"{n}.processor" for n in names)  # temporal ones only
            assert close(predict(), plain, 1e-4), name
        assert unet3d_processors(unet) == before and unet3d_hooks(unet) == 0, name
    for name, policy in VC2_CHANGES.items():
        with attention_policy(model, policy):
            assert not close(predict(), plain, 1e-3), name
    rec = Recorder()
    with attention_policy(model, rec):
        predict()
    assert len(rec.sites) == len(names)
    assert {(s.grid, s.level) for s in rec.sites} == {((2, 12, 8, 8), 0), ((2, 12, 4, 4), 1)}
    assert {s.timestep for s in rec.sites} == {float(levels_for(model, 12).timesteps[0, 0])}
    assert all(s.scale == pytest.approx(s.scale) and s.scale > 0 for s in rec.sites)


@torch.no_grad()
def test_unet3d_processors_come_back_after_an_exception(unet3d):
    model, predict = unet3d
    before = unet3d_processors(model.unet)

    def broken(q, k, v, bias=None, site=None):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        with attention_policy(model, broken):
            predict()
    assert unet3d_processors(model.unet) == before and unet3d_hooks(model.unet) == 0


def drop_second_video(q, k, v, bias=None, site=None):
    """Plain attention, zeroed on the rows the site's grid says belong to batch element 1."""
    out = GlobalAttention()(q, k, v, bias, site).clone()
    out[q.shape[0] // site.grid[0]:] = 0
    return out


@pytest.mark.parametrize("kind", ["shapes", "videocrafter2", "unet3d"])
@torch.no_grad()
def test_the_grid_matches_the_rows_batch_element_first(kind, request):
    """Rows are (b, y, x) with b outermost on every backbone: a policy that touches only element 1's rows (by
    the grid) leaves element 0's output as it was."""
    if kind == "shapes":
        model = request.getfixturevalue("shapes_v2")
        predict = shapes_predict(model)
    else:
        model, predict = request.getfixturevalue("vc2" if kind == "videocrafter2" else "unet3d")
    plain = predict()
    with attention_policy(model, drop_second_video):
        out = predict()
    assert close(out[0], plain[0], 1e-5)
    assert not close(out[1], plain[1], 1e-3)
