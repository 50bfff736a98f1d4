"""VideoCrafter2 backbone: both weight layouts loaded through ``load_backbone`` (the user's path), the
community layout checked against diffusers' own UNet3D forward, the ``use_scale`` option, end-to-end runs and
one-line errors. Tiny random components; nothing is downloaded."""

import dataclasses
import os
import shutil

import pytest
import torch

pytest.importorskip("diffusers")

from cli_helpers import assert_generate_refused, generate_video  # noqa: E402
from miga.backbones.videocrafter2 import (USE_SCALE, VIDEOCRAFTER2_SCHEDULE, VideoCrafter2Model,  # noqa: E402
                                          vae_config_from_state_dict)
from miga.backbones.videocrafter2_random import (TINY_UNET, ldm_vae_state_dict, random_diffusers_unet,  # noqa: E402
                                                 random_videocrafter2_components, save_community_folder,
                                                 save_official_checkpoint)
from miga.backbones.videocrafter2_unet import (VIDEOCRAFTER2_CONFIG, VideoCrafter2UNet,  # noqa: E402
                                               config_from_state_dict, expected_keys,
                                               lvdm_state_dict_from_diffusers, match_projection_shapes)
from miga.config import preset  # noqa: E402
from miga.engine.schedules import Schedule  # noqa: E402
from miga.engine.solvers import DDIM  # noqa: E402
from miga.errors import MigaError  # noqa: E402
from miga.pipeline import load_backbone  # noqa: E402

SIZE = dict(height=32, width=32, device="cpu")


@pytest.fixture(scope="module")
def components():
    return random_videocrafter2_components(seed=1)


@pytest.fixture(scope="module")
def official_dir(components, tmp_path_factory):
    folder = str(tmp_path_factory.mktemp("vc2_official"))
    save_official_checkpoint(components, folder)
    return folder


@pytest.fixture(scope="module")
def community(components, tmp_path_factory):
    diffusers_unet = random_diffusers_unet(seed=2)
    folder = save_community_folder(diffusers_unet, components, str(tmp_path_factory.mktemp("vc2_diffusers")))
    return folder, diffusers_unet


@pytest.fixture(scope="module")
def official(official_dir):
    return load_backbone(os.path.join(official_dir, "model.ckpt"), **SIZE)


def levels_at(model, rows, steps=16):
    return Schedule(model.default_schedule, steps).noise_levels(rows)


# ---------------------------------------------------------------- loading
@pytest.mark.parametrize("as_folder", [False, True])
def test_model_ckpt_loads_unet_vae_and_text_encoder_exactly(components, official_dir, as_folder):
    path = official_dir if as_folder else os.path.join(official_dir, "model.ckpt")
    model = load_backbone(path, **SIZE)
    assert isinstance(model, VideoCrafter2Model) and model.unet.config == TINY_UNET
    for part in ("unet", "vae", "text_encoder"):
        want, got = components[part].state_dict(), getattr(model, part).state_dict()
        assert set(want) == set(got), part
        assert all(torch.equal(want[k].float(), got[k].float()) for k in want), part


def test_ldm_vae_names_convert_back_to_diffusers_with_diffusers_converter(components):
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

    ldm = ldm_vae_state_dict(components["vae"])
    assert "first_stage_model.encoder.mid.attn_1.q.weight" in ldm
    assert ldm["first_stage_model.encoder.mid.attn_1.q.weight"].ndim == 4
    config = vae_config_from_state_dict(ldm)
    assert config["block_out_channels"] == (32, 32, 32, 32) and config["layers_per_block"] == 1
    back = convert_ldm_vae_checkpoint(ldm, config)
    want = components["vae"].state_dict()
    assert set(back) == set(want) and all(torch.equal(back[k], want[k]) for k in want)


def test_prompts_are_padded_with_zeros_to_77_tokens_like_open_clip(official):
    ids = official.token_ids("a red fox")[0].tolist()
    body = len("a red fox".replace(" ", "")) + 2  # the tiny vocabulary has one token per character
    assert len(ids) == 77 and ids[body:] == [0] * (77 - body) and 0 not in ids[1:body]
    assert official.encode_prompt("a red fox").shape == (77, 32)


def _open_clip_penultimate(state, ids):
    """OpenCLIP's text forward written from its description, on the LDM-layout tensors: token + position
    embedding, pre-norm causal blocks (fused in_proj, 64-wide heads, GELU MLP) except the last, ``ln_final``."""
    p = "cond_stage_model.model."
    t = lambda name: state[p + name].float()  # noqa: E731
    x = t("token_embedding.weight")[ids] + t("positional_embedding")[: ids.shape[1]]
    width = x.shape[-1]
    heads = max(1, width // 64)
    blocks = len({k.split(".")[4] for k in state if k.startswith(p + "transformer.resblocks.")})
    mask = torch.full((ids.shape[1], ids.shape[1]), float("-inf")).triu(1)
    for i in range(blocks - 1):
        b = f"transformer.resblocks.{i}."
        h = torch.nn.functional.layer_norm(x, (width,), t(b + "ln_1.weight"), t(b + "ln_1.bias"))
        q, k, v = (h @ t(b + "attn.in_proj_weight").T + t(b + "attn.in_proj_bias")).chunk(3, dim=-1)
        split = lambda z: z.reshape(*z.shape[:2], heads, -1).transpose(1, 2)  # noqa: E731
        att = torch.softmax(split(q) @ split(k).transpose(-1, -2) / (width // heads) ** 0.5 + mask, dim=-1)
        out = (att @ split(v)).transpose(1, 2).reshape(x.shape)
        x = x + out @ t(b + "attn.out_proj.weight").T + t(b + "attn.out_proj.bias")
        h = torch.nn.functional.layer_norm(x, (width,), t(b + "ln_2.weight"), t(b + "ln_2.bias"))
        h = torch.nn.functional.gelu(h @ t(b + "mlp.c_fc.weight").T + t(b + "mlp.c_fc.bias"))
        x = x + h @ t(b + "mlp.c_proj.weight").T + t(b + "mlp.c_proj.bias")
    return torch.nn.functional.layer_norm(x, (width,), t("ln_final.weight"), t("ln_final.bias"))


def test_text_encoder_is_open_clips_penultimate_layer(official_dir, official):
    state = torch.load(os.path.join(official_dir, "model.ckpt"), weights_only=True)["state_dict"]
    ids = official.token_ids("a red fox jumps")
    with torch.no_grad():
        want = _open_clip_penultimate(state, ids)[0]
        got = official.encode_prompt("a red fox jumps")
    assert torch.allclose(got, want, atol=1e-5), (got - want).abs().max()


@pytest.mark.parametrize("fps", [8.0, 24.0])
def test_community_folder_equals_diffusers_unet3d_with_its_fps_embedding(community, fps):
    folder, diffusers_unet = community
    model = load_backbone(folder, **SIZE)
    assert isinstance(model, VideoCrafter2Model)
    x, ctx = torch.randn(2, 4, 4, 4, 4), torch.randn(2, 77, 32)

    def add_fps(module, args, out):  # what the community pipeline does to the time embedding
        value = diffusers_unet.fps_proj(torch.tensor([fps]))
        return out + diffusers_unet.fps_embedding(value).repeat_interleave(out.shape[0], 0)

    handle = diffusers_unet.time_embedding.register_forward_hook(add_fps)
    try:
        with torch.no_grad():
            want = diffusers_unet(x, torch.tensor([400.0]), encoder_hidden_states=ctx).sample
    finally:
        handle.remove()
    with torch.no_grad():
        got = model.unet(x, torch.full((2, 4), 400.0), ctx, fps=fps)
    assert torch.allclose(got, want, atol=2e-5), (got - want).abs().max()
    assert want.abs().mean() > 0.05  # the comparison is not between two near-zero outputs


def test_community_names_at_full_size_land_on_the_official_layout():
    """diffusers' UNet3DConditionModel at VideoCrafter2's size + fps_embedding, renamed, has exactly the
    official checkpoint's 1484 keys and shapes (the Linear/1x1 projections reshaped)."""
    from diffusers import UNet3DConditionModel
    from diffusers.models.embeddings import TimestepEmbedding

    with torch.device("meta"):
        unet = UNet3DConditionModel(block_out_channels=(320, 640, 1280, 1280), cross_attention_dim=1024,
                                    attention_head_dim=64, layers_per_block=2)
        unet.fps_embedding = TimestepEmbedding(320, 1280)
        ours = VideoCrafter2UNet()
    renamed = match_projection_shapes(lvdm_state_dict_from_diffusers(unet.state_dict()), ours)
    want = {k.removeprefix("model.diffusion_model."): s for k, s in expected_keys()}
    assert {k: tuple(v.shape) for k, v in renamed.items()} == want
    assert config_from_state_dict(renamed) == VIDEOCRAFTER2_CONFIG


def test_full_size_config_is_read_back_from_the_state_dict():
    with torch.device("meta"):
        unet = VideoCrafter2UNet()
    assert config_from_state_dict(unet.state_dict()) == VIDEOCRAFTER2_CONFIG


# ---------------------------------------------------------------- sampling
def test_uniform_per_frame_timesteps_equal_the_scalar_path(official):
    x = torch.randn(1, 4, 4, 4, 4, generator=torch.Generator().manual_seed(0))
    ctx = official.encode_prompt("a red fox")
    levels = levels_at(official, [[9, 9, 9, 9]])
    per_frame = official.predict(x, levels, [ctx])
    with torch.no_grad():
        scalar = official.unet(x, levels.timesteps[:, 0].float(), ctx[None], fps=8)
    assert torch.allclose(per_frame, scalar, atol=1e-5)
    moved = official.predict(x, levels_at(official, [[9, 9, 9, 15]]), [ctx])
    change = (moved - per_frame).abs().mean(dim=(0, 1, 3, 4))
    assert change[3] == change.max() and change[3] > 0


def test_videocrafter2_facts(official):
    assert official.default_preset == "videocrafter2" and official.fps == 10 and official.fps_condition == 8
    assert official.prediction == "epsilon" and official.native_frames == 16
    cfg = preset("videocrafter2", "miga")
    assert (cfg.guidance_scale, cfg.solver, cfg.eta, cfg.steps) == (12.0, "ddim", 1.0, 64)
    sch = Schedule(official.default_schedule, 64)
    assert sch.timesteps[1:4] == [0, 16, 32] and sch.timesteps[-1] == 999
    assert official.default_schedule.signal_scale_end == 1.0  # FIFO/MIGA's DDIM: no use_scale by default


def test_ddim_rescale_applies_scale_arr_ratio_per_frame():
    plain = Schedule(VIDEOCRAFTER2_SCHEDULE, 64)
    scaled = Schedule(dataclasses.replace(VIDEOCRAFTER2_SCHEDULE, **USE_SCALE), 64)
    assert plain.signal_scales == [1.0] * 65
    assert scaled.signal_scales[0] == 1.0 and scaled.signal_scales[-1] == pytest.approx(0.7)
    t = scaled.timesteps[10]  # 144
    assert scaled.signal_scales[10] == pytest.approx(1 - 0.3 * t / 399)
    assert all(s == pytest.approx(0.7) for s, t in zip(scaled.signal_scales, scaled.timesteps) if t >= 399)
    x, x0, noise = torch.randn(3, 4, 2, 2, dtype=torch.float64), torch.randn(3, 4, 2, 2, dtype=torch.float64), \
        torch.randn(3, 4, 2, 2, dtype=torch.float64)
    levels = [3, 10, 40]
    a, _ = DDIM(plain, eta=1.0).step(x, x0, levels, [None] * 3, noise)
    b, _ = DDIM(scaled, eta=1.0).step(x, x0, levels, [None] * 3, noise)
    for i, k in enumerate(levels):
        # LVDM's p_sample_ddim with use_scale: only the x0 term is rescaled, x_prev = sqrt(a_prev) * r * x0 +
        # dir_xt + noise, dir_xt = sqrt(1 - a_prev - sigma_t^2) * eps, eps = (x - sqrt(a_t) x0) / sqrt(1 - a_t)
        ratio = scaled.signal_scales[k - 1] / scaled.signal_scales[k]
        a_t, a_prev = scaled.alphas[k] ** 2, scaled.alphas[k - 1] ** 2
        sigma_t = (((1 - a_prev) / (1 - a_t)) * (1 - a_t / a_prev)) ** 0.5  # eta = 1
        eps = (x[i] - a_t ** 0.5 * x0[i]) / (1 - a_t) ** 0.5
        lvdm = a_prev ** 0.5 * ratio * x0[i] + (1 - a_prev - sigma_t ** 2) ** 0.5 * eps + sigma_t * noise[i]
        assert torch.allclose(b[i], lvdm), k
        assert torch.allclose(b[i] - a[i], a_prev ** 0.5 * (ratio - 1) * x0[i])  # the plain step but for x0's term
    assert not torch.allclose(b[0], a[0]) and torch.allclose(b[2], a[2])  # t >= 399: ratio 1
    assert torch.allclose(scaled.add_noise(x0, noise, 64), 0.7 * scaled.alphas[64] * x0 + scaled.sigmas[64] * noise)


@pytest.mark.parametrize("layout, method, extra", [
    ("official", "fifo", ["--window-latents", 4, "--steps", 8]),
    ("official", "miga", ["--window-latents", 6, "--steps", 20, "--zigzag-width", 2, "--guides", 2, "--stride", 2,
                          "--stage2-steps", 3, "--ddim-rescale"]),
    ("community", "miga", ["--window-latents", 6, "--steps", 20, "--zigzag-width", 2, "--guides", 2, "--stride", 2,
                           "--stage2-steps", 3]),
])
def test_generate_writes_a_playable_video(official_dir, community, tmp_path, capsys, layout, method, extra):
    model = os.path.join(official_dir, "model.ckpt") if layout == "official" else community[0]
    frames, fps, _ = generate_video(capsys, model, method, tmp_path / f"{method}.mp4", 10, 32, *extra)
    assert frames.shape == (10, 32, 32, 3) and fps == 10
    assert frames.std() > 0


# ---------------------------------------------------------------- errors
def _empty_ckpt(d):
    torch.save({"state_dict": {}}, os.path.join(d, "model.ckpt"))
    return os.path.join(d, "model.ckpt")


def _image_ldm(d):
    state = torch.load(os.path.join(d, "model.ckpt"), weights_only=True)["state_dict"]
    state = {k: v for k, v in state.items() if "temopral_conv" not in k and "init_attn" not in k}
    torch.save({"state_dict": state}, os.path.join(d, "model.ckpt"))
    return d


def _i2v_ldm(d):
    path = os.path.join(d, "model.ckpt")
    state = torch.load(path, weights_only=True)["state_dict"]
    state["model.diffusion_model.input_blocks.0.0.weight"] = torch.zeros(32, 8, 3, 3)
    torch.save({"state_dict": state}, path)
    return path


class _Opaque:  # any Python object that weights_only loading refuses
    pass


def _pickled_objects(d):
    path = os.path.join(d, "model.ckpt")
    torch.save({"state_dict": {}, "callbacks": _Opaque()}, path)
    return path


def _no_tokenizer(d):
    shutil.rmtree(os.path.join(d, "tokenizer"))
    return os.path.join(d, "model.ckpt")


def _not_a_checkpoint(d):
    path = os.path.join(d, "model.ckpt")
    with open(path, "wb") as f:
        f.write(b"not a checkpoint")
    return path


@pytest.mark.parametrize("make, message", [
    (_empty_ckpt, "model.ckpt holds 0 tensors but no UNet, VAE, OpenCLIP text encoder"),
    (_image_ldm, "an LDM image checkpoint (no temporal layers)"),
    (_i2v_ldm, "takes 8 input channels (an image-to-video model"),
    (_pickled_objects, "holds Python objects besides tensors"),
    (_no_tokenizer, "hf download laion/CLIP-ViT-H-14-laion2B-s32B-b79K vocab.json merges.txt"),
    (_not_a_checkpoint, "cannot read"),
])
def test_bad_checkpoints_are_refused_in_one_line(official_dir, tmp_path, capsys, make, message):
    folder = str(tmp_path / "vc2")
    shutil.copytree(official_dir, folder)
    assert_generate_refused(capsys, make(folder), message, tmp_path / "x.mp4")


@pytest.mark.parametrize("argv, message", [
    (["--height", 40], "--height 40 is not divisible by 16; use 32 or 48"),
    (["--window-latents", 1], "--window-latents"),
])
def test_bad_options_are_refused_in_one_line(official_dir, tmp_path, capsys, argv, message):
    assert_generate_refused(capsys, os.path.join(official_dir, "model.ckpt"), message, tmp_path / "x.mp4",
                            "--width", 32, *argv)


def test_ddim_rescale_is_refused_for_other_models(tmp_path, capsys):
    assert_generate_refused(capsys, "shapes", "--ddim-rescale applies to", tmp_path / "x.mp4", "--ddim-rescale")


def test_community_folder_missing_a_part_is_refused(community, tmp_path):
    folder = str(tmp_path / "vc2")
    shutil.copytree(community[0], folder)
    shutil.rmtree(os.path.join(folder, "vae"))
    with pytest.raises(MigaError, match="missing vae/; download the full folder, 'hf download "
                                        "adamdad/videocrafterv2_diffusers"):
        load_backbone(folder, **SIZE)
