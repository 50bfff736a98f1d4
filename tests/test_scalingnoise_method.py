"""ScalingNoise as a method (issue 16, part C): ``--method scalingnoise`` through the config, ``LongVideo``,
``miga generate`` (with ``--stats``, ``--dino`` and ``--run-dir``) and ``miga compare``, on the exact Gaussian
world (32x32 pixels, FIFO's Gaussian preset: f_0 = 16, n = 2)."""

import json

import numpy as np
import pytest
import torch

from cli_helpers import run
from miga import FIFOConfig, LongVideo, ScalingNoiseMethod, load_backbone, preset
from miga.baselines.scaling_noise import ScalingNoiseConfig
from miga.config import PRESETS, method_name
from miga.errors import MigaError
from miga.evaluation.latents import read_latents
from miga.pipeline import x0_decoder
from miga.video import read_video

H = W = 32
GAUSSIAN = ("--model", "gaussian", "--height", str(H), "--width", str(W), "--no-progress")


@pytest.fixture(scope="module")
def world():
    return load_backbone("gaussian", height=H, width=W)


def latents(video):
    return torch.stack(list(video.latents()))


# ---------------------------------------------------------------- config
@pytest.mark.parametrize("name", list(PRESETS))
def test_every_preset_has_a_valid_scalingnoise_config_on_its_fifo_preset(name):
    cfg = preset(name, "scalingnoise")
    fifo = preset(name, "fifo")
    assert isinstance(cfg, ScalingNoiseMethod) and method_name(cfg) == "scalingnoise"
    assert cfg.search == ScalingNoiseConfig() and (cfg.search.candidates, cfg.search.beams) == (5, 3)
    assert {k: getattr(cfg, k) for k in fifo.__dataclass_fields__} == fifo.__dict__  # FIFO's preset, field by field
    native = {"wan2.1": 21, "skyreels-v2-df": 21}.get(name, 16)
    assert cfg.validate(native) is cfg
    if name == "videocrafter2":
        assert cfg.partitions == 4 and cfg.steps(16) == 64


def test_a_bad_search_config_is_refused():
    with pytest.raises(MigaError, match="ScalingNoiseConfig"):
        ScalingNoiseMethod(search={"candidates": 5}).validate(16)
    with pytest.raises(MigaError, match="candidate noise"):
        ScalingNoiseMethod(candidate_noise="other").validate(16)


# ---------------------------------------------------------------- reduction to FIFO (spec 5.7 test 1)
def test_k1_m1_without_the_first_pass_is_fifo(world):
    fifo_cfg = FIFOConfig.gaussian()
    fifo = LongVideo(world, "drifting clouds", 12, fifo_cfg, seed=3)
    want = latents(fifo)
    one = dict(candidates=1, beams=1, actions=("random_resample",), first_pass_no_cfg=False)
    same = LongVideo(world, "drifting clouds", 12, ScalingNoiseMethod.of(fifo_cfg, **one)
                     .with_(candidate_noise="fifo"), seed=3)
    assert torch.equal(latents(same), want)
    assert same.stats.nfe == fifo.stats.nfe
    assert same.method_counts["rewards"] > 0  # the search did run, on FIFO's own noise
    own = LongVideo(world, "drifting clouds", 12, ScalingNoiseMethod.of(fifo_cfg, **one), seed=3)
    got = latents(own)
    assert own.stats.nfe == fifo.stats.nfe  # k = m = 1: FIFO's model calls exactly ...
    assert not torch.equal(got, want)  # ... but the candidate's own keyed noise: another video


def test_the_search_costs_m_windows_per_candidate_and_window(world):
    fifo = LongVideo(world, "x", 12, FIFOConfig.gaussian(), seed=0)
    latents(fifo)
    sn = LongVideo(world, "x", 12, preset("gaussian", "scalingnoise"), seed=0)
    latents(sn)
    assert sn.stats.nfe > 4 * fifo.stats.nfe
    counts = sn.method_counts
    assert counts["embedder_proxy"] is True and "proxy" in counts["embedder"]
    assert counts["decoded"] == counts["embedded"] > counts["rewards"] == counts["search_nfe"] > 0


def test_the_x0_decoder_decodes_each_latent_alone(world):
    decode = x0_decoder(world)
    x = torch.randn(3, *world.latent_shape, generator=torch.Generator().manual_seed(0))
    frames = decode(x)
    assert frames.shape == (3, H, W, 3) and frames.dtype == np.uint8
    assert np.array_equal(decode(x[2:]), frames[2:])  # what came before does not matter


# ---------------------------------------------------------------- miga generate
def test_generate_scalingnoise_writes_a_playable_video_with_its_cost(tmp_path, capsys):
    out, stats = tmp_path / "sn.mp4", tmp_path / "sn.json"
    code, _, err = run(capsys, "generate", "drifting clouds", *GAUSSIAN, "--method", "scalingnoise", "--frames", "20",
                       "--out", out, "--stats", stats)
    assert code == 0, err
    frames, _ = read_video(str(out))
    assert frames.shape == (20, H, W, 3)
    s = json.loads(stats.read_text())
    assert s["method"] == "scalingnoise" and s["config"]["search"]["candidates"] == 5
    assert s["search"]["decoded"] > 0 and s["search"]["embedder_proxy"] is True
    assert s["nfe"] > 4 * 176  # FIFO makes 176 model calls for these 20 frames


def test_dino_with_another_method_is_refused_in_one_line(tmp_path, capsys):
    for method in ("fifo", "miga"):
        code, _, err = run(capsys, "generate", "x", *GAUSSIAN, "--method", method, "--frames", "8", "--dino",
                           tmp_path, "--out", tmp_path / "x.mp4")
        assert code == 2 and "--dino only applies to --method scalingnoise" in err and err.count("\n") == 1, err
        assert not (tmp_path / "x.mp4").exists()
    code, _, err = run(capsys, "generate", "x", *GAUSSIAN, "--method", "scalingnoise", "--frames", "8", "--dino",
                       tmp_path / "missing", "--out", tmp_path / "x.mp4")
    assert code == 2 and "no such folder" in err and err.count("\n") == 1, err


def test_a_stopped_run_resumes_to_the_same_video(tmp_path, world):
    cfg = preset("gaussian", "scalingnoise")
    want = latents(LongVideo(world, "drifting clouds", 16, cfg, seed=0))
    video = LongVideo(world, "drifting clouds", 16, cfg, seed=0)
    runner = video.start_run(str(tmp_path / "run"), str(tmp_path / "part.mp4"), checkpoint_every=4)
    made = []
    assert runner.generate(on_frame=lambda: made.append(1), stop=lambda: len(made) >= 6) is False
    assert 0 < runner.checkpoint()["outputs"]["latents"] < 16
    resumed = LongVideo.resume(str(tmp_path / "run"))  # rebuilt from run.json: the ScalingNoise config
    assert resumed.video.config == cfg
    assert resumed.generate() is True
    assert torch.equal(read_latents(resumed.latents_path)[0], want)
    assert read_video(str(tmp_path / "part.mp4"))[0].shape == (16, H, W, 3)


# ---------------------------------------------------------------- miga compare
def test_compare_on_the_gaussian_world_has_a_scalingnoise_row(tmp_path, capsys):
    out = tmp_path / "cmp"
    code, _, err = run(capsys, "compare", "--model", "gaussian", "--height", "32", "--width", "32", "--frames", "20",
                       "--seeds", "0", "--prompt", "drifting clouds", "--methods", "fifo,scalingnoise", "--out", out,
                       "--no-progress")
    assert code == 0, err
    rows = {r["key"]: r for r in json.loads((out / "results.json").read_text())["rows"]}
    assert list(rows) == ["fifo", "scalingnoise"]
    nfe = {k: r["stats"]["nfe_per_frame"]["mean"] for k, r in rows.items()}
    assert nfe["scalingnoise"] > 4 * nfe["fifo"]


# ---------------------------------------------------------------- Wan's causal VAE: decoded alone, cache kept
def test_wan_x0s_are_decoded_alone_without_disturbing_the_videos_decoder(tmp_path):
    pytest.importorskip("diffusers")
    from miga.backbones.wan_random import random_wan_components, save_wan_folder

    wan = load_backbone(save_wan_folder(random_wan_components("tiny", seed=1), str(tmp_path / "wan")), device="cpu",
                        height=32, width=32)
    g = torch.Generator().manual_seed(2)
    video_latents, x0s = torch.randn(4, 16, 4, 4, generator=g), torch.randn(2, 16, 4, 4, generator=g)
    ref = wan.decoder()
    want = [f for z in video_latents for f in ref.push(z)] + ref.flush()
    decode = x0_decoder(wan)
    alone = np.stack([wan.decoder().push(z)[0] for z in x0s])  # each as the first latent of a video: one frame
    dec, got = wan.decoder(), []
    for z in video_latents:
        got += dec.push(z)
        assert np.array_equal(decode(x0s), alone)  # between the video's latents, as the search decodes
    got += dec.flush()
    assert len(got) == 13 and np.array_equal(np.stack(got), np.stack(want))


def test_generate_with_a_dino_folder_uses_it_for_the_reward(tmp_path, capsys):
    tf = pytest.importorskip("transformers")
    torch.manual_seed(0)
    vit = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64, image_size=224)
    tf.ViTModel(tf.ViTConfig(patch_size=16, **vit), add_pooling_layer=False).save_pretrained(tmp_path / "dino")
    base = ("generate", "drifting clouds", *GAUSSIAN, "--method", "scalingnoise", "--frames", "8")
    code, _, err = run(capsys, *base, "--dino", tmp_path / "dino", "--out", tmp_path / "d.mp4", "--stats",
                       tmp_path / "d.json", "--save-latents")
    assert code == 0, err
    s = json.loads((tmp_path / "d.json").read_text())
    assert s["search"]["embedder_proxy"] is False and s["search"]["embedder"] == "DINO ViT (dino)"
    assert s["config"]["dino"] == str(tmp_path / "dino")
    code, _, err = run(capsys, *base, "--out", tmp_path / "p.mp4", "--save-latents")
    assert code == 0, err
    # another reward, another search: the videos differ
    assert not torch.equal(read_latents(str(tmp_path / "d.latents.safetensors"))[0],
                           read_latents(str(tmp_path / "p.latents.safetensors"))[0])
