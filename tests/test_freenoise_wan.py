"""FreeNoise on Wan2.1 as window fusion of each 3-D self-attention (``shared/spec/baselines.md`` §4.3 c), on a tiny
random Wan transformer: equal to a dense-mask reference, plain with one window, hooks removed, end to end."""

import pytest
import torch

pytest.importorskip("diffusers")

from cli_helpers import generate_video, run  # noqa: E402
from miga.baselines.attention import FreeNoiseConfig, SpectralBlendAttention, WindowedAttention  # noqa: E402
from miga.baselines.hooks import attention_policy  # noqa: E402
from miga.backbones.wan_random import random_wan_components, save_wan_folder  # noqa: E402
from miga.config import FreeNoiseMethod, preset  # noqa: E402
from miga.errors import MigaError  # noqa: E402
from miga.pipeline import load_backbone  # noqa: E402

SIZE = dict(height=32, width=32)


@pytest.fixture(scope="module")
def wan_dir(tmp_path_factory):
    return save_wan_folder(random_wan_components("tiny", seed=3), str(tmp_path_factory.mktemp("wan")))


@pytest.fixture(scope="module")
def wan(wan_dir):
    return load_backbone(wan_dir, device="cpu", **SIZE)


def call(wan, x, t, ctx):
    tokens = t.repeat_interleave(wan.tokens_per_frame, dim=1)
    return wan.transformer(hidden_states=x, timestep=tokens, encoder_hidden_states=ctx, return_dict=False)[0]


def inputs(wan, frames):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 16, frames, *wan.latent_shape[1:], generator=g)
    t = torch.linspace(900, 100, frames).round()[None]
    return x, t, wan.encode_prompt("a cat walking on the beach")[None]


class MaskedWindows:
    """Reference: each window as full-length 3-D attention with a dense mask (a query in the window sees only the
    window's keys; others see everything and get weight 0), with the original absolute RoPE positions."""

    def __init__(self, original, starts, length, weights, per_frame, frames):
        self.original, self.starts, self.length = original, starts, length
        self.weights, self.per_frame, self.frames = weights, per_frame, frames

    def __call__(self, attn, hidden, encoder_hidden_states=None, attention_mask=None, rotary_emb=None):
        if encoder_hidden_states is not None:
            return self.original(attn, hidden, encoder_hidden_states, attention_mask, rotary_emb)
        frame = torch.arange(self.frames).repeat_interleave(self.per_frame)
        acc, count = 0, 0
        for s in self.starts:
            inside = (frame >= s) & (frame < s + self.length)
            allowed = inside[None, :] | ~inside[:, None]
            out = self.original(attn, hidden, None, allowed, rotary_emb)
            w = torch.zeros(len(frame))
            w[inside] = self.weights[frame[inside] - s]
            acc = acc + out * w[None, :, None]
            count = count + w
        return acc / count[None, :, None]


def test_window_fusion_equals_the_dense_mask_reference(wan):
    x, t, ctx = inputs(wan, 9)
    config = FreeNoiseConfig(window=5, stride=2)  # windows [0,5) [2,7) [4,9)
    with torch.no_grad(), attention_policy(wan, WindowedAttention(config)):
        fused = call(wan, x, t, ctx)
    blocks = wan.transformer.blocks
    originals = [b.attn1.processor for b in blocks]
    from miga.baselines.attention import window_weights

    for b, original in zip(blocks, originals):
        b.attn1.set_processor(MaskedWindows(original, [0, 2, 4], 5, window_weights(5), wan.tokens_per_frame, 9))
    try:
        with torch.no_grad():
            reference = call(wan, x, t, ctx)
    finally:
        for b, original in zip(blocks, originals):
            b.attn1.set_processor(original)
    with torch.no_grad():
        plain = call(wan, x, t, ctx)
    assert torch.allclose(fused, reference, atol=1e-5), (fused - reference).abs().max()
    assert not torch.allclose(fused, plain, atol=1e-3)  # the windows change the output


def test_one_window_over_all_frames_is_the_plain_model_and_hooks_are_removed(wan):
    x, t, ctx = inputs(wan, 6)
    before = [b.attn1.processor for b in wan.transformer.blocks]
    with torch.no_grad():
        plain = call(wan, x, t, ctx)
        with attention_policy(wan, WindowedAttention(FreeNoiseConfig(window=8, stride=2))):
            one = call(wan, x, t, ctx)
    assert torch.equal(one, plain)
    with pytest.raises(RuntimeError, match="boom"):
        with attention_policy(wan, WindowedAttention(FreeNoiseConfig(window=3, stride=3))):
            raise RuntimeError("boom")
    assert [b.attn1.processor for b in wan.transformer.blocks] == before


def test_other_policies_are_refused_on_3d_attention(wan):
    from miga.baselines.attention import FreeLongConfig

    with pytest.raises(MigaError, match="not defined") as e:
        with attention_policy(wan, SpectralBlendAttention(FreeLongConfig(window=4))):
            pass
    assert "\n" not in str(e.value)


def test_freenoise_has_wan_presets_and_freelong_has_none():
    assert preset("wan2.1", "freenoise") == FreeNoiseMethod.wan21()
    assert preset("skyreels-v2-df", "freenoise").flow_shift == 8.0
    for method in ("freelong", "freepca"):
        with pytest.raises(MigaError, match="has no wan2.1 preset"):
            preset("wan2.1", method)


def test_generate_freenoise_on_tiny_wan_and_refuse_freelong(wan_dir, tmp_path, capsys):
    # 4 latents per window, stride 1 -> 9 frames = 3 latents: one window; 21 frames = 6 latents: 3 windows
    frames, _, _ = generate_video(capsys, wan_dir, "freenoise", tmp_path / "w.mp4", 21, 32, "--steps", 2,
                                  "--window-latents", 4)
    assert frames.shape == (21, 32, 32, 3)
    for method in ("freelong", "freepca"):
        out = tmp_path / f"{method}.mp4"
        code, _, err = run(capsys, "generate", "a cat", "--model", wan_dir, "--frames", 21, "--out", out,
                           "--method", method, "--device", "cpu", "--height", 32, "--width", 32)
        lines = [line for line in err.strip().splitlines() if "Loading weights" not in line]  # transformers' bar
        assert code == 2 and lines == [lines[-1]] and "full 3-D attention, where they are not defined" in lines[-1]
        assert "Traceback" not in err and not out.exists()
