"""Wan2.1 / SkyReels-V2-DF adapter on tiny random components, saved with ``save_pretrained`` and loaded back
through the same local-folder path a user takes (backends.md Sec. 3)."""

import json
import os
import shutil

import numpy as np
import pytest
import torch

pytest.importorskip("diffusers")

from cli_helpers import generate_video, run  # noqa: E402
from miga.backbones.diffusers_common import cast_model, check_size  # noqa: E402
from miga.backbones.wan import WanModel  # noqa: E402
from miga.backbones.wan_random import random_wan_components, save_wan_folder  # noqa: E402
from miga.config import preset  # noqa: E402
from miga.engine.schedules import Schedule  # noqa: E402
from miga.errors import MigaError  # noqa: E402
from miga.pipeline import LongVideo, frames_for_latents, latents_for_frames, load_backbone  # noqa: E402

SIZE = dict(height=32, width=32)


@pytest.fixture(scope="module")
def wan_dir(tmp_path_factory):
    return save_wan_folder(random_wan_components("tiny", seed=1), str(tmp_path_factory.mktemp("wan")))


@pytest.fixture(scope="module")
def skyreels_dir(tmp_path_factory):
    return save_wan_folder(random_wan_components("tiny", skyreels=True, seed=2),
                           str(tmp_path_factory.mktemp("skyreels")))


@pytest.fixture(scope="module")
def wan(wan_dir):
    return load_backbone(wan_dir, device="cpu", **SIZE)


def levels_at(model, timesteps):
    """NoiseLevels for a [B, F] list of flow timesteps."""
    sch = Schedule(model.default_schedule, 10)
    t = torch.tensor(timesteps, dtype=torch.float64)
    s = t / 1000.0
    return type(sch.noise_levels([[1]]))(timesteps=t, alphas=1 - s, sigmas=s)


def test_folder_loads_as_wan_with_the_real_latent_layout(wan):
    assert wan.name == "wan2.1" and wan.default_preset == "wan2.1" and wan.fps == 16
    assert wan.latent_shape == (16, 4, 4) and wan.native_frames == 21 and wan.frames_per_latent == 4
    assert wan.dtype == torch.float32 and wan.device.type == "cpu"
    assert wan.vae.dtype == torch.float32


def test_per_token_timesteps_with_equal_frames_match_the_scalar_path(wan):
    torch.manual_seed(0)
    x = torch.randn(2, 16, 3, 4, 4)
    ctx = [wan.encode_prompt("a cat walking on the beach"), wan.encode_prompt("")]
    ours = wan.predict(x, levels_at(wan, [[500.0] * 3, [250.0] * 3]), ctx)
    scalar = wan.transformer(hidden_states=x, timestep=torch.tensor([500.0, 250.0]),
                             encoder_hidden_states=torch.stack(ctx), return_dict=False)[0]
    assert ours.shape == x.shape
    torch.testing.assert_close(ours, scalar.float(), rtol=1e-5, atol=1e-5)
    # each frame really gets its own level: changing frame 2's level moves frame 2 most
    moved = wan.predict(x[:1], levels_at(wan, [[500.0, 500.0, 900.0]]), ctx[:1]) - ours[:1]
    per_frame = moved.abs().mean(dim=(0, 1, 3, 4))
    assert per_frame[2] > 5 * per_frame[:2].max()


def test_cfg_as_two_passes_equals_one_batched_call(wan_dir, wan):
    torch.manual_seed(1)
    x = torch.randn(2, 16, 5, 4, 4)
    levels = levels_at(wan, [[900.0, 700.0, 500.0, 300.0, 100.0]] * 2)
    ctx = [wan.encode_prompt(""), wan.encode_prompt("a dog")]
    split = load_backbone(wan_dir, device="cpu", model_batch=1, **SIZE)
    torch.testing.assert_close(split.predict(x, levels, ctx), wan.predict(x, levels, ctx), rtol=1e-5, atol=1e-6)


def test_prompt_embeddings_are_zero_past_the_last_token(wan):
    emb = wan.encode_prompt("a red ball on the beach")
    assert emb.shape == (512, 32)
    tokens = wan.tokenizer(["a red ball on the beach"], return_attention_mask=True).attention_mask[0]
    n = int(sum(tokens))
    assert emb[:n].abs().sum(dim=1).min() > 0 and emb[n:].abs().max() == 0


def test_streaming_decode_equals_one_shot_decode(wan):
    torch.manual_seed(2)
    latents = torch.randn(4, 16, 4, 4)  # [F, C, h, w], normalised like the engine's
    decoder = wan.decoder()
    frames = [f for z in latents for f in decoder.push(z)] + decoder.flush()
    assert len(frames) == 1 + 3 * 4 and frames[0].shape == (32, 32, 3) and frames[0].dtype == np.uint8
    vae = wan.vae
    mean = torch.tensor(vae.config.latents_mean).view(1, 16, 1, 1, 1)
    std = torch.tensor(vae.config.latents_std).view(1, 16, 1, 1, 1)
    z = latents.permute(1, 0, 2, 3)[None] * std + mean
    with torch.no_grad():
        video = vae.decode(z).sample[0]  # [3, 13, H, W]
    expected = ((video + 1.0) * 127.5).round().clamp(0, 255).to(torch.uint8).permute(1, 2, 3, 0).numpy()
    np.testing.assert_array_equal(np.stack(frames), expected)
    # and exactly the same pixels before rounding
    decoder = wan.decoder()
    pieces = torch.cat([decoder.decode_latent(z) for z in latents], dim=2)[0]
    assert torch.equal(pieces, video)


def test_skyreels_df_per_frame_levels_equal_the_scalar_path(skyreels_dir):
    sky = load_backbone(skyreels_dir, device="cpu", **SIZE)
    assert sky.name == "skyreels-v2-df" and sky.fps_input and sky.fps == 24 and sky.native_frames == 25
    assert sky.default_preset == "skyreels-v2-df"
    torch.manual_seed(3)
    x = torch.randn(2, 16, 3, 4, 4)
    ctx = [sky.encode_prompt("a bird flying"), sky.encode_prompt("")]
    ours = sky.predict(x, levels_at(sky, [[400.0] * 3, [400.0] * 3]), ctx)
    scalar = sky.transformer(hidden_states=x, timestep=torch.tensor([400.0, 400.0]),
                             encoder_hidden_states=torch.stack(ctx), fps=[1, 1], return_dict=False)[0]
    torch.testing.assert_close(ours, scalar.float(), rtol=1e-4, atol=1e-5)


def test_lower_precision_keeps_wans_float32_modules():
    model = random_wan_components("tiny")["transformer"]
    cast_model(model, torch.bfloat16)
    dtypes = {name: p.dtype for name, p in model.named_parameters()}
    assert dtypes["blocks.0.attn1.to_q.weight"] == torch.bfloat16
    assert dtypes["scale_shift_table"] == torch.float32
    assert dtypes["condition_embedder.time_embedder.linear_1.weight"] == torch.float32


def test_bfloat16_runs_on_the_cpu(wan_dir):
    model = load_backbone(wan_dir, device="cpu", dtype="bfloat16", **SIZE)
    assert model.transformer.dtype == torch.bfloat16 or model.dtype == torch.bfloat16
    x = torch.randn(1, 16, 2, 4, 4)
    out = model.predict(x, levels_at(model, [[500.0, 400.0]]), [model.encode_prompt("a cat")])
    assert out.dtype == torch.float32 and torch.isfinite(out).all()


@pytest.mark.parametrize("frames, latents, decoded", [(1, 1, 1), (5, 2, 5), (17, 5, 17), (18, 6, 21), (81, 21, 81)])
def test_wan_frame_counts_follow_the_causal_vae(wan, frames, latents, decoded):
    assert latents_for_frames(wan, frames) == latents
    assert frames_for_latents(wan, latents) == decoded


def test_fifo_with_an_odd_window_writes_every_latent_once(wan):
    video = LongVideo(wan, "a cat", 21, preset("wan2.1", "fifo").with_(partitions=1), seed=0)
    frames = list(video.frames())
    assert len(frames) == 21 and video.num_latents == 6


@pytest.mark.parametrize("method, extra", [("fifo", ["--window-latents", 5, "--steps", 10]), ("miga", [])])
def test_generate_from_a_model_folder_writes_a_playable_video(wan_dir, tmp_path, capsys, method, extra):
    frames, fps, err = generate_video(capsys, wan_dir, method, tmp_path / f"{method}.mp4", 18, 32, *extra)
    assert "4k+1 frames: 18 frames need 6 latents (21 frames)" in err
    assert frames.shape == (18, 32, 32, 3) and fps == 16


@pytest.mark.parametrize("make, message", [
    (lambda d: "Wan-AI/Wan2.1-T2V-1.3B-Diffusers", "hf download Wan-AI/Wan2.1-T2V-1.3B-Diffusers --local-dir"),
    (lambda d: shutil.rmtree(os.path.join(d, "vae")) or d, "missing vae/ (the causal video VAE"),
    (lambda d: os.remove(os.path.join(d, "tokenizer", "tokenizer.json")) or d, "missing tokenizer/"),
    (lambda d: os.makedirs(os.path.join(d, "empty")) or os.path.join(d, "empty"), "missing transformer/"),
])
def test_incomplete_or_remote_models_are_refused_with_the_fix(wan_dir, tmp_path, capsys, make, message):
    folder = str(tmp_path / "model")
    shutil.copytree(wan_dir, folder)
    model = make(folder)
    code, _, err = run(capsys, "generate", "a cat", "--model", model, "--frames", 5, "--out", tmp_path / "x.mp4")
    assert code == 2 and message in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    assert not os.path.exists(tmp_path / "x.mp4")


def test_a_foreign_transformer_class_is_named(wan_dir, tmp_path, capsys):
    folder = str(tmp_path / "model")
    shutil.copytree(wan_dir, folder)
    path = os.path.join(folder, "transformer", "config.json")
    cfg = json.load(open(path))
    cfg["_class_name"] = "FluxTransformer2DModel"
    json.dump(cfg, open(path, "w"))
    code, _, err = run(capsys, "generate", "a cat", "--model", folder, "--frames", 5, "--out", tmp_path / "x.mp4")
    assert code == 2 and "FluxTransformer2DModel" in err


def two_experts(folder: str) -> str:
    """Wan2.2-T2V-A14B's layout: a second transformer and the boundary between the experts."""
    shutil.copytree(os.path.join(folder, "transformer"), os.path.join(folder, "transformer_2"))
    index = json.load(open(os.path.join(folder, "model_index.json")))
    index.update(transformer_2=["diffusers", "WanTransformer3DModel"], boundary_ratio=0.875)
    json.dump(index, open(os.path.join(folder, "model_index.json"), "w"))
    return folder


def second_transformer_only(folder: str) -> str:
    shutil.copytree(os.path.join(folder, "transformer"), os.path.join(folder, "transformer_2"))
    return folder


def image_to_video(folder: str) -> str:
    index = json.load(open(os.path.join(folder, "model_index.json")))
    index.update(_class_name="WanImageToVideoPipeline", image_encoder=["transformers", "CLIPVisionModel"])
    json.dump(index, open(os.path.join(folder, "model_index.json"), "w"))
    return folder


@pytest.mark.parametrize("make, message", [(two_experts, "two-expert model"), (second_transformer_only, "two-expert"),
                                           (image_to_video, "image-to-video model")])
def test_a_folder_with_a_denoiser_miga_would_ignore_is_refused(wan_dir, tmp_path, capsys, make, message):
    folder = make(shutil.copytree(wan_dir, str(tmp_path / "model")))
    code, _, err = run(capsys, "generate", "a cat", "--model", folder, "--frames", 5, "--out", tmp_path / "x.mp4")
    assert code == 2 and message in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    assert not os.path.exists(tmp_path / "x.mp4")
    with pytest.raises(MigaError, match=message):
        load_backbone(folder, device="cpu", **SIZE)


def test_a_wan21_index_with_empty_second_expert_entries_loads(wan_dir, tmp_path):
    folder = shutil.copytree(wan_dir, str(tmp_path / "model"))
    index = json.load(open(os.path.join(folder, "model_index.json")))
    index.update(transformer_2=[None, None], boundary_ratio=None)  # what diffusers writes for Wan2.1
    json.dump(index, open(os.path.join(folder, "model_index.json"), "w"))
    assert load_backbone(folder, device="cpu", **SIZE).native_frames >= 2


@pytest.mark.parametrize("height, width, message", [(500, 832, "--height 500 is not divisible by 16; use 496 or 512"),
                                                    (480, 8, "--width 8 is not divisible by 16; use 16 or 32")])
def test_sizes_not_divisible_by_16_get_the_nearest_valid_values(height, width, message):
    with pytest.raises(MigaError, match=message):
        check_size(height, width)


def test_diffusers_only_options_are_refused_for_builtin_models(tmp_path, capsys):
    code, _, err = run(capsys, "generate", "x", "--model", "gaussian", "--window-latents", 4, "--out",
                       tmp_path / "x.mp4")
    assert code == 2 and "--window-latents applies to diffusers models" in err
    code, _, err = run(capsys, "generate", "x", "--model", "gaussian", "--dtype", "bfloat16", "--out",
                       tmp_path / "x.mp4")
    assert code == 2 and "--dtype bfloat16 applies to diffusers models" in err


def test_the_text_encoder_leaves_the_model_device_once_prompts_are_encoded(wan):
    calls = []
    real = wan.release_text_encoder
    wan.release_text_encoder = lambda: calls.append(1) or real()
    try:
        LongVideo(wan, ["a cat", "a dog"], 9, preset("wan2.1", "fifo").with_(partitions=1), seed=0)
    finally:
        del wan.release_text_encoder
    assert calls == [1] and next(wan.text_encoder.parameters()).device.type == "cpu"


def test_from_components_builds_the_same_model_without_a_folder():
    model = WanModel.from_components(random_wan_components("tiny", seed=1), device="cpu", **SIZE)
    assert model.latent_shape == (16, 4, 4) and model.name == "wan2.1"


def test_missing_diffusers_packages_are_named_with_the_install_command(wan_dir, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "accelerate" else real(name, *a))
    with pytest.raises(MigaError, match=r'need accelerate; install them with pip install "\.\[diffusers\]" in the miga checkout'):
        load_backbone(wan_dir, device="cpu", **SIZE)
