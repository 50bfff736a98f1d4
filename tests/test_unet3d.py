"""UNet3D (ModelScope / Zeroscope) adapter on tiny random components, saved with ``save_pretrained`` and loaded
back through the same local-folder path a user takes (backends.md Sec. 1.3)."""

import json
import os
import shutil

import numpy as np
import pytest
import torch

pytest.importorskip("diffusers")

from cli_helpers import assert_generate_refused, generate_video  # noqa: E402
from miga.backbones.unet3d import UNet3DModel, per_frame_timesteps  # noqa: E402
from miga.backbones.unet3d_random import random_unet3d_components, save_unet3d_folder  # noqa: E402
from miga.config import preset  # noqa: E402
from miga.engine.schedules import Schedule  # noqa: E402
from miga.errors import MigaError  # noqa: E402
from miga.pipeline import load_backbone  # noqa: E402

SIZE = dict(height=64, width=64)


@pytest.fixture(scope="module")
def unet_dir(tmp_path_factory):
    return save_unet3d_folder(random_unet3d_components(seed=1), str(tmp_path_factory.mktemp("modelscope")))


@pytest.fixture(scope="module")
def model(unet_dir):
    return load_backbone(unet_dir, device="cpu", **SIZE)


def levels_at(model, rows, steps=20):
    """NoiseLevels of the model's schedule for a [B, F] list of level indices."""
    return Schedule(model.default_schedule, steps).noise_levels(rows)


def hooks_left(unet):
    blocks = [*unet.down_blocks, unet.mid_block, *unet.up_blocks]
    return sum(len(b._forward_pre_hooks) for b in blocks)


def test_folder_loads_with_the_modelscope_layout_and_schedule(model, unet_dir):
    assert isinstance(model, UNet3DModel) and model.default_preset == "modelscope" and model.prediction == "epsilon"
    assert model.latent_shape == (4, 8, 8) and model.native_frames == 16 and model.frames_per_latent == 1
    assert model.fps == 8 and model.negative_prompt == "" and model.vae.dtype == torch.float32
    cfg = model.default_schedule
    assert (cfg.kind, cfg.beta_schedule, cfg.timestep_spacing, cfg.steps_offset, cfg.final_alpha_one) == (
        "ddpm", "scaled_linear", "leading", 1, False)
    # the engine's ladder is the folder's DDIMScheduler's: same timesteps and alpha-bars
    from diffusers import DDIMScheduler

    ddim = DDIMScheduler.from_pretrained(unet_dir, subfolder="scheduler")
    ddim.set_timesteps(25)
    ours = Schedule(cfg, 25)
    assert ours.timesteps[1:][::-1] == [float(t) for t in ddim.timesteps]
    abar = ddim.alphas_cumprod[ddim.timesteps.flip(0)].double().sqrt().tolist()
    np.testing.assert_allclose(ours.alphas[1:], abar, rtol=1e-6)
    assert ours.alphas[0] == pytest.approx(float(ddim.final_alpha_cumprod) ** 0.5)


def test_default_size_is_the_unets_sample_size_times_8():
    m = UNet3DModel.from_components(random_unet3d_components(seed=1), device="cpu")
    assert m.latent_shape == (4, 8, 8) and m.vae_scale == 8  # sample_size 8: 64x64 (ModelScope: 32 -> 256x256)


def test_uniform_per_frame_timesteps_match_the_scalar_path(model):
    torch.manual_seed(0)
    x = torch.randn(2, 4, 3, 8, 8)
    ctx = [model.encode_prompt("a cat walking on the beach"), model.encode_prompt("")]
    levels = levels_at(model, [[15] * 3, [6] * 3])
    ours = model.predict(x, levels, ctx)
    with torch.no_grad():
        scalar = model.unet(x, levels.timesteps[:, 0], encoder_hidden_states=torch.stack(ctx)).sample
    assert ours.shape == x.shape
    torch.testing.assert_close(ours, scalar.float(), rtol=1e-5, atol=1e-5)
    # each frame really gets its own level: changing frame 2's level moves frame 2 most
    moved = model.predict(x[:1], levels_at(model, [[15, 15, 2]]), ctx[:1]) - ours[:1]
    per_frame = moved.abs().mean(dim=(0, 1, 3, 4))
    assert per_frame[2] > 3 * per_frame[:2].max()
    assert hooks_left(model.unet) == 0


def test_hooks_are_removed_after_an_exception(model):
    unet = model.unet
    with pytest.raises(RuntimeError):
        with per_frame_timesteps(unet, torch.full((1, 3), 500.0)):
            assert hooks_left(unet) == len(unet.down_blocks) + 1 + len(unet.up_blocks)
            # 2 videos but an embedding for 1 x 3 frames: the ResNets' shapes disagree
            unet(torch.randn(2, 4, 3, 8, 8), 500, encoder_hidden_states=torch.randn(2, 77, 16))
    assert hooks_left(unet) == 0


def test_cfg_as_two_passes_equals_one_batched_call(unet_dir, model):
    torch.manual_seed(1)
    x = torch.randn(2, 4, 4, 8, 8)
    levels = levels_at(model, [[18, 12, 7, 2]] * 2)
    ctx = [model.encode_prompt(""), model.encode_prompt("a dog")]
    split = load_backbone(unet_dir, device="cpu", model_batch=1, **SIZE)
    torch.testing.assert_close(split.predict(x, levels, ctx), model.predict(x, levels, ctx), rtol=1e-5, atol=1e-6)


def test_prompt_embeddings_are_clips_last_hidden_state_over_77_tokens(model):
    emb = model.encode_prompt("a red ball")
    ids = model.tokenizer(["a red ball"], padding="max_length", max_length=77, return_tensors="pt").input_ids
    with torch.no_grad():
        expected = model.text_encoder(ids).last_hidden_state[0]
    assert emb.shape == (77, 16)
    torch.testing.assert_close(emb, expected)


def test_frame_by_frame_decode_equals_decoding_the_batch(model):
    torch.manual_seed(2)
    latents = torch.randn(5, 4, 8, 8)  # [F, C, h, w] in the UNet's scale
    decoder = model.decoder()
    frames = [f for z in latents for f in decoder.push(z)] + decoder.flush()
    assert len(frames) == 5 and frames[0].shape == (64, 64, 3) and frames[0].dtype == np.uint8
    with torch.no_grad():  # as TextToVideoSDPipeline.decode_latents: all frames as one batch
        video = model.vae.decode(latents / model.vae.config.scaling_factor).sample
    expected = ((video.clamp(-1, 1) + 1.0) * 127.5).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1)
    # batched and single-image convolutions differ in the last float bits: at most one grey level apart
    assert np.abs(np.stack(frames).astype(int) - expected.numpy().astype(int)).max() <= 1
    pieces = torch.cat([decoder.decode_latent(z) for z in latents])
    torch.testing.assert_close(pieces, video.clamp(-1, 1), rtol=0, atol=1e-5)


def test_bfloat16_runs_on_the_cpu(unet_dir):
    m = load_backbone(unet_dir, device="cpu", dtype="bfloat16", **SIZE)
    assert m.unet.dtype == torch.bfloat16 and m.vae.dtype == torch.float32
    out = m.predict(torch.randn(1, 4, 2, 8, 8), levels_at(m, [[10, 9]]), [m.encode_prompt("a cat")])
    assert out.dtype == torch.float32 and torch.isfinite(out).all()


def test_the_modelscope_preset_is_videocrafter2s_with_cfg_9():
    vc2, ms = preset("videocrafter2", "miga"), preset("modelscope", "miga")
    assert ms.guidance_scale == 9.0 and ms.with_(guidance_scale=12.0) == vc2 and ms.solver == "ddim"
    assert preset("modelscope", "fifo").guidance_scale == 9.0 and preset("modelscope", "fifo").partitions == 4


@pytest.mark.parametrize("method, extra", [
    ("fifo", ["--window-latents", 4, "--steps", 8]),
    ("miga", ["--window-latents", 6, "--steps", 20, "--zigzag-width", 2, "--guides", 2, "--stride", 2,
              "--stage2-steps", 3]),
])
def test_generate_from_a_model_folder_writes_a_playable_video(unet_dir, tmp_path, capsys, method, extra):
    frames, fps, _ = generate_video(capsys, unet_dir, method, tmp_path / f"{method}.mp4", 10, 64, *extra)
    assert frames.shape == (10, 64, 64, 3) and fps == 8


def _image_unet(d):
    path = os.path.join(d, "unet", "config.json")
    cfg = json.load(open(path))
    cfg["_class_name"] = "UNet2DConditionModel"
    json.dump(cfg, open(path, "w"))
    return d


def _foreign_safetensors(d):
    from safetensors.torch import save_file

    path = os.path.join(d, "model.safetensors")
    save_file({"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(2)}, path)
    return path


def _ckpt(d):
    path = os.path.join(d, "model.ckpt")
    torch.save({"state_dict": {}}, path)
    return path


@pytest.mark.parametrize("make, message", [
    (_image_unet, "unet is a UNet2DConditionModel: an image model"),
    (lambda d: shutil.rmtree(os.path.join(d, "vae")) or d,
     "missing vae/ (the image VAE (config.json and weights)); download the full diffusers-format model, "
     "e.g. 'hf download ali-vilab/text-to-video-ms-1.7b --local-dir DIR'"),
    (lambda d: os.remove(os.path.join(d, "tokenizer", "merges.txt")) or d, "missing tokenizer/"),
    (lambda d: shutil.rmtree(os.path.join(d, "unet")) or d, "missing unet/"),
    (lambda d: shutil.rmtree(os.path.join(d, "scheduler")) or d, "missing scheduler/"),
    (_foreign_safetensors, "single .safetensors file holding an original-layout (LDM / VideoCrafter style)"),
    (_ckpt, "model.ckpt holds 0 tensors but no UNet, VAE, OpenCLIP text encoder"),
    (lambda d: "ali-vilab/text-to-video-ms-1.7b", "hf download ali-vilab/text-to-video-ms-1.7b --local-dir DIR"),
])
def test_unsupported_or_incomplete_models_are_refused_in_one_line(unet_dir, tmp_path, capsys, make, message):
    folder = str(tmp_path / "model")
    shutil.copytree(unet_dir, folder)
    assert_generate_refused(capsys, make(folder), message, tmp_path / "x.mp4")


def test_a_v_prediction_scheduler_is_refused(unet_dir, tmp_path):
    folder = str(tmp_path / "model")
    shutil.copytree(unet_dir, folder)
    path = os.path.join(folder, "scheduler", "scheduler_config.json")
    cfg = json.load(open(path))
    json.dump({**cfg, "prediction_type": "v_prediction"}, open(path, "w"))
    with pytest.raises(MigaError, match="prediction_type 'v_prediction' is not supported"):
        load_backbone(folder, device="cpu")


def test_sizes_not_divisible_by_8_are_refused(unet_dir):
    with pytest.raises(MigaError, match="--height 60 is not divisible by 8; use 56 or 64"):
        load_backbone(unet_dir, device="cpu", height=60, width=64)
