"""``miga train-toy``'s trainer on a tiny architecture: resume equality, refusals, export and loading."""

import os

import pytest
import torch

import miga
from miga.backbones.shapes import ShapesModel
from miga.errors import MigaError
from miga.toy.nets import SpaceTimeDenoiser, ToyConfig
from miga.toy.train import CHECKPOINT, LOSS_PLOT, WEIGHTS, TrainConfig, start_or_resume

TINY = ToyConfig.tiny()
RECIPE = TrainConfig(ae_steps=3, ae_batch=4, steps=4, batch=2, warmup=2, checkpoint_every=2)


def test_stopped_and_resumed_training_equals_one_run(tmp_path):
    straight = start_or_resume(str(tmp_path / "a"), RECIPE, TINY)
    assert straight.run(progress=False)
    split = start_or_resume(str(tmp_path / "b"), RECIPE.__class__(**{**RECIPE.__dict__, "steps": 1}), TINY)
    assert split.run(progress=False)
    resumed = start_or_resume(str(tmp_path / "b"), RECIPE, TINY)  # steps may grow
    assert resumed.step == 1
    assert resumed.run(progress=False)
    assert resumed.step == straight.step == 4 and resumed.ae_step == 3
    for k, v in straight.ema.items():
        torch.testing.assert_close(resumed.ema[k], v, rtol=0, atol=0)
    assert [h[1] for h in resumed.history["denoiser"]] == [h[1] for h in straight.history["denoiser"]]
    for name in (CHECKPOINT, LOSS_PLOT, WEIGHTS):
        assert os.path.getsize(tmp_path / "b" / name) > 0


def test_time_limit_stops_early_and_leaves_a_checkpoint(tmp_path):
    trainer = start_or_resume(str(tmp_path), RECIPE, TINY)
    assert not trainer.run(time_limit=0.0, progress=False)
    assert (tmp_path / CHECKPOINT).exists() and not (tmp_path / WEIGHTS).exists()


def test_sigterm_stops_after_the_step_under_way_with_a_checkpoint(tmp_path, monkeypatch):
    import signal

    trainer = start_or_resume(str(tmp_path), RECIPE, TINY)
    step = trainer.ae_train_step

    def step_then_terminate():
        loss = step()
        if trainer.ae_step == 2:
            os.kill(os.getpid(), signal.SIGTERM)  # what kill or a cluster scheduler sends
        return loss

    monkeypatch.setattr(trainer, "ae_train_step", step_then_terminate)
    before = signal.getsignal(signal.SIGTERM)
    assert not trainer.run(progress=False)
    assert signal.getsignal(signal.SIGTERM) is before  # the handler is put back
    assert torch.load(tmp_path / CHECKPOINT, weights_only=True)["ae_step"] == 2
    assert start_or_resume(str(tmp_path), RECIPE, TINY).run(progress=False)  # and it resumes to the end


def test_resume_refuses_a_changed_recipe_or_architecture(tmp_path):
    start_or_resume(str(tmp_path), RECIPE, TINY).run(time_limit=0.0, progress=False)
    with pytest.raises(MigaError, match="lr"):
        start_or_resume(str(tmp_path), RECIPE.__class__(**{**RECIPE.__dict__, "lr": 1e-2}), TINY)
    with pytest.raises(MigaError, match="architecture"):
        start_or_resume(str(tmp_path), RECIPE, ToyConfig())
    (tmp_path / CHECKPOINT).write_bytes(b"garbage")
    with pytest.raises(MigaError, match="cannot resume"):
        start_or_resume(str(tmp_path), RECIPE, TINY)


def test_refuses_a_non_empty_dir_without_checkpoint(tmp_path):
    (tmp_path / "something").write_text("x")
    with pytest.raises(MigaError, match="not empty"):
        start_or_resume(str(tmp_path), RECIPE, TINY)


def test_exported_weights_load_and_generate(tmp_path):
    trainer = start_or_resume(str(tmp_path), RECIPE, TINY)
    trainer.run(progress=False)
    model = miga.load_backbone(str(tmp_path / WEIGHTS))
    assert model.latent_shape == (4, 4, 4) and model.native_frames == 16
    assert model.training["steps_done"] == 4
    frames = list(miga.LongVideo(model, "a red circle bouncing", 20, seed=1).frames())
    assert len(frames) == 20 and frames[0].shape == (32, 32, 3)


def test_not_a_weights_file_is_refused(tmp_path):
    bad = tmp_path / "x.safetensors"
    bad.write_bytes(b"not safetensors")
    with pytest.raises(MigaError, match="cannot load"):
        ShapesModel(str(bad))


def test_denoiser_honours_each_frames_own_timestep():
    """Frames are modulated per frame: changing one frame's timestep changes that frame's output."""
    torch.manual_seed(0)
    net = SpaceTimeDenoiser(TINY)
    for p in net.parameters():  # zero-initialised layers would hide the dependence
        torch.nn.init.normal_(p, std=0.1)
    x = torch.randn(1, 4, 16, 4, 4)
    tokens = torch.tensor([[1, 1, 4, 9, 1, 1, 1]])
    same = net(x, torch.full((1, 16), 500.0), tokens)
    ts = torch.full((1, 16), 500.0)
    ts[0, 3] = 100.0
    mixed = net(x, ts, tokens)
    assert (mixed[:, :, 3] - same[:, :, 3]).abs().max() > 1e-3


def test_train_toy_cli_trains_resumes_and_reports(tmp_path, capsys):
    from miga import cli

    args = ["train-toy", str(tmp_path), "--model-size", "tiny", "--ae-steps", "2", "--batch", "2", "--no-progress"]
    assert cli.main(args + ["--recipe", "v1", "--steps", "1"]) == 0
    assert "trained" in capsys.readouterr().err
    assert cli.main(args + ["--steps", "3"]) == 0  # more steps: resumes
    err = capsys.readouterr().err
    assert "resuming" in err and "denoiser step 1" in err
    assert start_or_resume(str(tmp_path), RECIPE.__class__(ae_steps=2, steps=3, batch=2), TINY).step == 3
    assert cli.main(args[:2] + ["--model-size", "tiny", "--batch", "4", "--no-progress"]) == 2
    assert "different batch" in capsys.readouterr().err
