"""Model v2's denoiser (temporal self-attention, relative frame distances) on tiny random weights."""

import os

import pytest
import torch
import torch.nn.functional as F

from miga.toy.nets import AttentionDenoiser, ToyConfig, make_denoiser

TINY = ToyConfig.tiny_v2()
TOKENS = torch.tensor([[1, 1, 4, 9, 1, 1, 1]])


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    model = make_denoiser(TINY)
    for p in model.parameters():  # zero-initialised output layers would hide every dependence
        torch.nn.init.normal_(p, std=0.1)
    return model.eval()


def test_the_v2_config_builds_the_attention_denoiser():
    assert isinstance(make_denoiser(ToyConfig.v2()), AttentionDenoiser)
    assert ToyConfig.from_dict(ToyConfig.v2().to_dict()) == ToyConfig.v2()
    assert ToyConfig.from_dict({k: v for k, v in ToyConfig().to_dict().items()
                                if k not in ("arch", "heads", "max_distance", "patch")}) == ToyConfig()  # v1 files
    with pytest.raises(ValueError, match="unknown denoiser architecture"):
        make_denoiser(ToyConfig(arch="mamba"))


def test_patches_are_pixel_unshuffled_latent_cells(net):
    """A patch-2 denoiser is the same network on 2x2 groups of latent cells as channels (like Wan's 1x2x2
    patches): identical to a patch-1 network with 4x the latent channels on the unshuffled latents."""
    from dataclasses import replace

    flat = make_denoiser(replace(TINY, patch=1, latent_channels=4 * TINY.latent_channels))
    flat.load_state_dict(net.state_dict())
    x, t = torch.randn(2, 4, 16, 8, 8), torch.rand(2, 16) * 1000
    tokens = TOKENS.expand(2, 7)

    def frames(fn, z):  # apply a per-frame 2-D op to [B, C, F, h, w]
        return fn(z.transpose(1, 2)).transpose(1, 2)

    want = frames(lambda z: F.pixel_shuffle(z, 2), flat(frames(lambda z: F.pixel_unshuffle(z, 2), x), t, tokens))
    got = net(x, t, tokens)
    assert got.shape == x.shape
    torch.testing.assert_close(got, want)
    assert not torch.allclose(got[..., :2, :2], net(x.flip(-1), t, tokens)[..., :2, :2])  # layout matters


def test_each_frame_honours_its_own_timestep(net):
    x = torch.randn(1, 4, 16, 4, 4, generator=torch.Generator().manual_seed(0))
    same = net(x, torch.full((1, 16), 500.0), TOKENS)
    ts = torch.full((1, 16), 500.0)
    ts[0, 3] = 100.0
    moved = (net(x, ts, TOKENS) - same).abs().mean(dim=(0, 1, 3, 4))
    # frame 3 and its neighbours (through the temporal conv, kernel 3) move; the rest far less (attention)
    assert moved[3] > 1e-6
    assert moved[2:5].min() > 20 * torch.cat([moved[:2], moved[5:]]).max()


def test_windows_longer_than_f0_are_defined_and_time_has_no_absolute_position(net):
    """No absolute temporal position: the same frames shifted in time inside a longer window give the same
    outputs away from the window's ends (only relative distances and the zero-padded temporal conv count)."""
    torch.manual_seed(1)
    x = torch.randn(1, 4, 24, 4, 4)
    t = torch.full((1, 24), 400.0)
    out = net(x, t, TOKENS)
    assert out.shape == x.shape and torch.isfinite(out).all()
    shifted = net(torch.roll(x, 3, dims=2), t, TOKENS)
    # with zero padding at the ends, frames far from both ends differ only through attention's reach
    assert not torch.allclose(out, shifted)  # content moved, so outputs moved
    a = net(x[:, :, :16], t[:, :16], TOKENS)
    b = net(torch.cat([x[:, :, :16], x[:, :, :16]], dim=2), torch.full((1, 32), 400.0), TOKENS)
    assert torch.isfinite(b).all() and b.shape[2] == 32 and a.shape[2] == 16


def test_a_temporal_attention_policy_replaces_the_attention(net):
    x = torch.randn(1, 4, 16, 4, 4)
    t = torch.full((1, 16), 300.0)
    plain = net(x, t, TOKENS)
    calls = []

    def same(q, k, v, bias):
        calls.append(q.shape)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=bias)

    def local(q, k, v, bias):  # attend to the frame itself only
        return v

    for module in net.temporal_attentions():
        module.policy = same
    try:
        torch.testing.assert_close(net(x, t, TOKENS), plain)
        assert len(calls) == TINY.depth and calls[0][2] == 16
        for module in net.temporal_attentions():
            module.policy = local
        assert (net(x, t, TOKENS) - plain).abs().max() > 1e-3
    finally:
        for module in net.temporal_attentions():
            module.policy = None


@pytest.mark.parametrize("recipe, per_frame", [("v2", False), ("df", True)])
def test_train_toy_v2_and_df_recipes_train_resume_and_load(tmp_path, capsys, recipe, per_frame):
    import miga
    from miga import cli
    from miga.toy.train import CHECKPOINT, WEIGHTS

    run = str(tmp_path / recipe)
    args = ["train-toy", run, "--model-size", "tiny", "--ae-steps", "2", "--batch", "2", "--no-progress"]
    assert cli.main(args + ["--recipe", recipe, "--steps", "1"]) == 0
    state = torch.load(f"{run}/{CHECKPOINT}", weights_only=True)
    assert state["train"]["hidden_attributes"] and state["train"]["per_frame_noise"] == per_frame
    assert state["model"]["arch"] == "attention"
    assert cli.main(args + ["--steps", "2"]) == 0  # resumed without --recipe: keeps its own
    assert "resuming" in capsys.readouterr().err
    other = "v1" if recipe == "df" else "df"
    assert cli.main(args + ["--recipe", other, "--steps", "3"]) == 2  # another recipe is refused
    assert "different" in capsys.readouterr().err
    model = miga.load_backbone(f"{run}/{WEIGHTS}")
    assert isinstance(model.denoiser, AttentionDenoiser) and model.training["per_frame_noise"] == per_frame
    frames = list(miga.LongVideo(model, "a red circle bouncing", 18, seed=1).frames())
    assert len(frames) == 18 and frames[0].shape == (32, 32, 3)


def test_the_autoencoder_loss_is_a_recipe_field(tmp_path):
    from miga.errors import MigaError
    from miga.toy.train import ToyTrainer, TrainConfig

    with pytest.raises(MigaError, match="ae_loss must be mse or l1"):
        TrainConfig(ae_loss="huber").validate()
    losses = {}
    for loss in ("mse", "l1"):
        trainer = ToyTrainer(str(tmp_path / loss), TrainConfig.v2(ae_loss=loss, ae_batch=2), ToyConfig.tiny_v2())
        losses[loss] = trainer.ae_train_step()
    assert losses["mse"] != losses["l1"] and all(v > 0 for v in losses.values())


def test_a_run_started_from_weights_continues_them_and_snapshots(tmp_path):
    """Model v3's recipe: the autoencoder and EMA denoiser of a weights file, a fresh optimiser, a cosine decay,
    EMA snapshots every few steps; resumable like any run."""
    import math

    from miga.errors import MigaError
    from miga.toy.train import ToyTrainer, TrainConfig
    from safetensors.torch import load_file

    base = ToyTrainer(str(tmp_path / "base"), TrainConfig.v2(ae_steps=2, ae_batch=2, steps=1, batch=2),
                      ToyConfig.tiny_v2())
    base.run(progress=False)
    start = str(tmp_path / "base" / "shapes.safetensors")
    recipe = TrainConfig.v3(init_weights=start, steps=4, batch=2, warmup=1, snapshot_every=2, checkpoint_every=2)
    trainer = ToyTrainer(str(tmp_path / "v3"), recipe, ToyConfig.tiny_v2())
    given = load_file(start)
    assert all(torch.equal(trainer.ema[k], given[f"denoiser.{k}"]) for k in trainer.ema)
    assert all(torch.equal(v, given[f"autoencoder.{k}"]) for k, v in trainer.ae.state_dict().items())
    assert trainer.stats_done and trainer.ae_step == 0
    assert trainer.run(progress=False)
    assert sorted(p.name for p in (tmp_path / "v3").glob("shapes-step*")) == ["shapes-step2.safetensors",
                                                                            "shapes-step4.safetensors"]
    # the autoencoder stays frozen, the denoiser moved
    after = load_file(str(tmp_path / "v3" / "shapes.safetensors"))
    assert all(torch.equal(after[k], given[k]) for k in given if k.startswith("autoencoder."))
    assert any(not torch.equal(after[k], given[k]) for k in given if k.startswith("denoiser."))
    os.rename(start, start + ".moved")  # a resume needs the checkpoint alone, not the file it started from
    assert ToyTrainer.resume(str(tmp_path / "v3")).step == 4
    os.rename(start + ".moved", start)
    # cosine: lr at the warmup's end, halfway and at the end
    r = TrainConfig.v3(steps=101, warmup=1)
    assert math.isclose(r.learning_rate(1), r.lr) and math.isclose(r.learning_rate(51), (r.lr + r.lr_final) / 2)
    assert math.isclose(r.learning_rate(101), r.lr_final)
    assert TrainConfig.v2().learning_rate(5000) == TrainConfig.v2().lr  # v2 stays constant
    with pytest.raises(MigaError, match="ae_steps to 0"):
        TrainConfig.v3(ae_steps=5).validate()
    with pytest.raises(MigaError, match="another architecture"):
        ToyTrainer(str(tmp_path / "x"), TrainConfig.v3(init_weights=start), ToyConfig.v2())
    from miga.toy.train import weights_path

    assert weights_path("shapes-v2").endswith("shapes-v2.safetensors") and weights_path(start) == start
    with pytest.raises(MigaError, match="not found"):
        ToyTrainer(str(tmp_path / "y"), TrainConfig.v3(init_weights="nowhere.safetensors"), ToyConfig.tiny_v2())
