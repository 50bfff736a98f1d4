"""FreeNoise, FreeLong and FreePCA as methods (issue 16, part B): the full-sequence engine end to end through
``miga generate`` and :class:`LongVideo` on tiny models, equality with plain sampling when one window covers every
frame, the hooks gone afterwards, the refusals (models without temporal attention, memory) in one line."""

import json
import os

import pytest
import torch
from torch import nn

from cli_helpers import assert_generate_refused, generate_video, run
from miga.baselines.attention import FreeLongConfig
from miga.config import FreeLongMethod, FreeNoiseMethod, FreePCAMethod, preset
from miga.errors import MigaError
from miga.pipeline import LongVideo
from toy_helpers import tiny_v2_weights

INF = float("inf")
METHODS = ("freenoise", "freelong", "freepca")
GLOBAL_ONLY = FreeLongConfig(window=16, d_t=INF, d_s=INF, local_only_levels=())  # P = 1: plain global attention




@pytest.fixture(scope="module")
def v2_path(tmp_path_factory):
    """Tiny random model-v2 weights (temporal self-attention), f_0 = 16, 8x8 latents."""
    return tiny_v2_weights(str(tmp_path_factory.mktemp("toy") / "tiny_v2.safetensors"))


@pytest.fixture(scope="module")
def v2(v2_path):
    from miga.backbones.shapes import ShapesModel

    return ShapesModel(v2_path)


def installed(model) -> int:
    """Policies, forwards and pre-hooks a policy left on the built-in model's network."""
    net = model.temporal_attention_network()
    return (sum(m.policy is not None for m in net.temporal_attentions())
            + sum(len(m._forward_pre_hooks) for m in net.modules()))


def shapes_generate(capsys, model, method, out, frames, *extra):
    """``miga generate`` on a built-in-model weights file; asserts success; returns (frames, fps)."""
    from miga.video import read_video

    code, _, err = run(capsys, "generate", "a red circle bouncing", "--model", model, "--method", method,
                       "--frames", frames, "--out", out, "--no-progress", *extra)
    assert code == 0, err
    return read_video(out)[:2]


def refused(capsys, model, message, out, *argv):
    """``miga generate`` with a shapes prompt exits 2 with one line containing ``message``; no ``out``."""
    code, _, err = run(capsys, "generate", "a red circle bouncing", "--model", model, "--frames", 5, "--out", out,
                       "--no-progress", *argv)
    assert code == 2 and message in err and "Traceback" not in err, err
    assert len(err.strip().splitlines()) == 1, err
    assert not os.path.exists(out)


def small(cls, **changes):
    return cls.shapes().with_(steps=6, **changes)


# ------------------------------------------------------------------------------------------ end to end
@pytest.mark.parametrize("method", METHODS)
def test_generate_writes_a_video_of_the_requested_length_on_model_v2(v2_path, tmp_path, capsys, method):
    out = tmp_path / f"{method}.mp4"
    frames, fps = shapes_generate(capsys, v2_path, method, out, 24, "--steps", 4, "--stats", tmp_path / "s.json")
    assert frames.shape == (24, 32, 32, 3) and frames.std() > 0
    stats = json.loads((tmp_path / "s.json").read_text())
    assert stats["method"] == method and stats["memory_estimate_bytes"] > 0
    assert stats["nfe"] == 4 * 2  # one call per step on all 24 frames, CFG batched (2 per call)


@pytest.mark.parametrize("method", METHODS)
def test_the_default_built_in_model_runs_each_method(tmp_path, capsys, method):
    """Issue 16's acceptance on the shipped model v2 (``--model shapes``): 64x64 frames at 12 fps."""
    frames, fps = shapes_generate(capsys, "shapes", method, tmp_path / f"{method}.mp4", 20, "--steps", 3)
    assert frames.shape == (20, 64, 64, 3) and fps == 12 and frames.std() > 0


@pytest.mark.parametrize("method", METHODS)
def test_methods_change_the_output_where_they_should(v2, method):
    """Beyond one window the policy acts: the result differs from global attention on the same noise."""
    cfg = {"freenoise": small(FreeNoiseMethod, reschedule_noise=False),
           "freelong": small(FreeLongMethod, reschedule_noise=False),
           "freepca": small(FreePCAMethod, mean_reuse=False)}[method]
    ref = small(FreeLongMethod, reschedule_noise=False, attention=GLOBAL_ONLY)
    a = torch.stack(list(LongVideo(v2, "a red circle bouncing", 24, cfg, seed=3).latents()))
    b = torch.stack(list(LongVideo(v2, "a red circle bouncing", 24, ref, seed=3).latents()))
    assert a.shape == (24, *v2.latent_shape)
    assert not torch.allclose(a, b, atol=1e-4)


@pytest.mark.parametrize("method, extra", [
    ("freenoise", ["--window-latents", 4]), ("freepca", ["--window-latents", 4]), ("freelong", ["--window-latents", 4]),
])
def test_generate_on_tiny_videocrafter2_and_unet3d(tmp_path_factory, tmp_path, capsys, method, extra):
    pytest.importorskip("diffusers")
    from miga.backbones.unet3d_random import random_unet3d_components, save_unet3d_folder
    from miga.backbones.videocrafter2_random import random_videocrafter2_components, save_official_checkpoint

    vc2 = str(tmp_path_factory.mktemp("vc2"))
    save_official_checkpoint(random_videocrafter2_components(seed=1), vc2)
    frames, _, _ = generate_video(capsys, f"{vc2}/model.ckpt", method, tmp_path / "vc2.mp4", 8, 32, "--steps", 3,
                                  *extra)
    assert frames.shape == (8, 32, 32, 3)
    unet = save_unet3d_folder(random_unet3d_components(seed=1), str(tmp_path_factory.mktemp("ms")))
    frames, _, _ = generate_video(capsys, unet, method, tmp_path / "ms.mp4", 8, 64, "--steps", 3, *extra)
    assert frames.shape == (8, 64, 64, 3)


# ------------------------------------------------------------------------------------------ one window = plain sampling
@pytest.mark.parametrize("config", [
    small(FreeNoiseMethod),
    small(FreePCAMethod),  # gate by step: fused steps, but one window has nothing to fuse
    small(FreePCAMethod, gate="timestep"),
    "freelong-global",
], ids=["freenoise", "freepca-step", "freepca-timestep", "freelong-global"])
def test_one_window_over_all_frames_is_plain_sampling(v2, config):
    from miga.engine.full_sequence import PURPOSE
    from miga.engine.stepper import sample_clip

    if config == "freelong-global":
        config = small(FreeLongMethod, attention=GLOBAL_ONLY)
    video = LongVideo(v2, "a red circle bouncing", v2.native_frames, config, seed=5)
    long = torch.stack(list(video.latents()))
    plain = torch.stack([s.latent for s in sample_clip(video._stepper(), v2.native_frames, 0, PURPOSE)])
    assert torch.allclose(long, plain, atol=1e-5)
    assert long.std() > 0 and installed(v2) == 0


def test_the_plain_comparison_can_fail(v2):
    """FreeLong with its local branch on (one level, d = 0.25) is not plain sampling at N = f_0."""
    from miga.engine.full_sequence import PURPOSE
    from miga.engine.stepper import sample_clip

    video = LongVideo(v2, "a red circle bouncing", v2.native_frames,
                      small(FreeLongMethod, attention=FreeLongConfig(window=4, local_only_levels=())), seed=5)
    long = torch.stack(list(video.latents()))
    plain = torch.stack([s.latent for s in sample_clip(video._stepper(), v2.native_frames, 0, PURPOSE)])
    assert not torch.allclose(long, plain, atol=1e-4)


# ------------------------------------------------------------------------------------------ hooks and noise rules
def test_hooks_are_gone_after_a_run_and_after_an_exception(v2):
    video = LongVideo(v2, "a red circle bouncing", 20, small(FreePCAMethod), seed=0)
    seen = []
    real = v2.predict

    def predict(*args):
        seen.append(installed(v2))
        if len(seen) == 3:
            raise RuntimeError("boom")
        return real(*args)

    v2.predict = predict
    try:
        with pytest.raises(RuntimeError, match="boom"):
            list(video.latents())
    finally:
        del v2.predict
    assert seen[0] > 0 and installed(v2) == 0  # installed during the calls, removed after the exception
    list(LongVideo(v2, "a red circle bouncing", 20, small(FreeNoiseMethod), seed=0).latents())
    assert installed(v2) == 0


def test_initial_noise_follows_the_method(v2):
    from miga.engine.full_sequence import FullSequenceEngine

    def first(cfg):
        video = LongVideo(v2, "a red circle bouncing", 24, cfg, seed=2)
        engine = video._new_engine()
        assert isinstance(engine, FullSequenceEngine)
        engine.start()
        return torch.stack([s.latent for s in engine.slots])

    shuffled = first(small(FreeNoiseMethod))
    assert all(any(torch.equal(shuffled[i], shuffled[j]) for j in range(16)) for i in range(16, 24))
    plain = first(small(FreeNoiseMethod, reschedule_noise=False))
    assert not any(torch.equal(plain[i], plain[j]) for i in range(16, 24) for j in range(16))
    reused = first(small(FreePCAMethod))
    assert torch.allclose(reused[16:].mean(0), reused[:16].mean(0), atol=1e-5)
    assert torch.equal(reused[:16], plain[:16])


def test_state_dict_between_steps_continues_with_the_same_latents(v2):
    cfg = small(FreeNoiseMethod)
    whole = torch.stack(list(LongVideo(v2, "a red circle bouncing", 20, cfg, seed=1).latents()))
    first = LongVideo(v2, "a red circle bouncing", 20, cfg, seed=1)
    engine = first._new_engine()
    engine.start()
    engine.started = True
    engine.step(), engine.step()
    state = engine.state_dict()
    again = first._new_engine()
    again.load_state_dict(state)
    assert torch.allclose(torch.stack([s.latent for s in again]), whole, atol=1e-6)


# ------------------------------------------------------------------------------------------ refusals
@pytest.mark.parametrize("model, message", [
    ("shapes-v1", "the built-in model v1"),
    ("gaussian", "has no temporal self-attention"),
])
def test_models_without_temporal_attention_are_refused_in_one_line(tmp_path, capsys, model, message):
    for method in METHODS:
        assert_generate_refused(capsys, model, message, str(tmp_path / "x.mp4"), "--method", method)


def test_full_3d_attention_is_refused_up_front():
    class WanTransformer3DModel(nn.Module):
        pass

    class FakeWan:
        native_frames, latent_shape, frames_per_latent = 21, (16, 4, 4), 4

        def temporal_attention_network(self):
            return WanTransformer3DModel()

        def encode_prompt(self, text):  # pragma: no cover - must not be reached
            raise AssertionError("a prompt was encoded before the refusal")

    for cls in (FreeLongMethod, FreePCAMethod):
        with pytest.raises(MigaError, match="full 3-D attention, where they are not defined .FreeNoise runs there as "
                                            "window fusion") as info:
            LongVideo(FakeWan(), "a cat", 33, cls.shapes())
        assert "\n" not in str(info.value)


def test_bad_lengths_prompts_and_flags_are_refused_in_one_line(v2_path, tmp_path, capsys):
    out = str(tmp_path / "x.mp4")
    refused(capsys, v2_path, "multiple of 4", out, "--method", "freenoise", "--frames", 18)
    refused(capsys, v2_path, "--guides only apply to --method miga", out, "--method", "freepca",
                            "--guides", 2)
    refused(capsys, v2_path, "--run-dir does not apply to --method freelong", out, "--method",
                            "freelong", "--frames", 20, "--run-dir", str(tmp_path / "run"))
    refused(capsys, v2_path, "--force only applies", out, "--method", "fifo", "--force")
    refused(capsys, v2_path, "takes one prompt", out, "--method", "freenoise", "--frames", 20,
                            "--prompt", "a red circle", "--prompt", "a blue square")
    with pytest.raises(MigaError, match="has no wan2.1 preset"):
        preset("wan2.1", "freelong")


def test_start_run_is_refused_from_python(v2, tmp_path):
    video = LongVideo(v2, "a red circle bouncing", 20, small(FreeNoiseMethod))
    with pytest.raises(MigaError, match="nothing to checkpoint frame by frame"):
        video.start_run(str(tmp_path / "run"), str(tmp_path / "x.mp4"))
    assert not (tmp_path / "run").exists()


# ------------------------------------------------------------------------------------------ memory
def test_memory_refusal_and_force(v2_path, tmp_path, capsys, monkeypatch):
    from miga.baselines import methods

    monkeypatch.setattr(methods, "available_bytes", lambda device: 1000)
    out = tmp_path / "m.mp4"
    code, _, err = run(capsys, "generate", "a red circle bouncing", "--model", v2_path, "--method", "freelong",
                       "--frames", 20, "--steps", 2, "--out", out, "--no-progress")
    assert code == 2 and "GiB at its peak, more than the 0.00 GiB free on cpu" in err and "--force" in err, err
    assert len(err.strip().splitlines()) == 1 and not out.exists()
    frames, _ = shapes_generate(capsys, v2_path, "freelong", out, 20, "--steps", 2, "--force")
    assert frames.shape[0] == 20


def test_memory_estimate_grows_with_frames_and_global_attention_quadratically(v2):
    from miga.baselines.methods import estimate_peak_bytes

    cond = v2.encode_prompt("a red circle bouncing")
    a, b = (estimate_peak_bytes(v2, FreePCAMethod.shapes(), n, cond) for n in (32, 64))
    assert b.latents == 2 * a.latents and b.activations == 2 * a.activations and b.attention == 4 * a.attention
    w = estimate_peak_bytes(v2, FreeNoiseMethod.shapes(), 64, cond)
    assert w.attention * 4 == b.attention  # windows of 16 instead of all 64 frames
    assert a.activations > 0 and a.attention > 0
