"""The shipped shapes model: its file, a fixed output, what plain sampling shows, and the default CLI run."""

import os

import numpy as np
import pytest
import torch

import miga
from miga import cli
from miga.backbones.shapes import SHIPPED, file_sha256, shipped_weights
from miga.config import preset
from miga.engine.schedules import Schedule
from miga.pipeline import native_clip
from miga.video import read_video
from miga.worlds.metrics import evaluate_frames
from miga.worlds.shapes import parse_prompt


@pytest.fixture(scope="module")
def model():
    return miga.load_backbone("shapes")


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_shipped_files_are_small_and_match_their_checksums(name):
    path = shipped_weights(name)
    assert os.path.getsize(path) <= 20 * 2 ** 20
    assert len(SHIPPED[name].sha256) == 64 and file_sha256(path) == SHIPPED[name].sha256


def test_a_corrupt_shipped_file_is_refused(tmp_path, monkeypatch):
    bad = tmp_path / "weights"
    bad.mkdir()
    (bad / SHIPPED["shapes"].file).write_bytes(open(shipped_weights(), "rb").read()[:-1] + b"x")
    monkeypatch.setattr("miga.backbones.shapes.shipped_weights", lambda name="shapes": str(bad / SHIPPED[name].file))
    with pytest.raises(miga.MigaError, match="corrupt"):
        miga.load_backbone("shapes")


def test_shipped_file_records_its_training(model):
    t = model.training
    assert t["steps_done"] >= 1000 and t["ae_steps_done"] >= 1000 and t["seed"] == 0 and "machine" in t


def test_the_default_model_is_v2(model):
    """Issue 14: ``--model shapes`` is model v2, a space-time denoiser with temporal self-attention trained
    on the world with hidden attributes and one noise level per clip."""
    t = model.training
    assert t["hidden_attributes"] is True and t["per_frame_noise"] is False
    assert len(model.temporal_attention_network().temporal_attentions()) > 0


def test_shapes_df_is_v2_trained_with_a_noise_level_per_frame(model):
    """Issue 14: ``shapes-df`` is model v2's recipe (same architecture and autoencoder stage) with
    independent per-frame noise levels (diffusion forcing)."""
    df = miga.load_backbone("shapes-df")
    assert df.training["per_frame_noise"] is True and df.training["hidden_attributes"] is True
    assert df.config == model.config and df.training["steps_done"] == model.training["steps_done"]


# Computed once from each shipped file; a change of weights, architecture or preprocessing breaks it.
EXPECTED_OUTPUT = {
    "shapes": [-0.003456953912973404, 1.1557742357254028, -1.6934908628463745, 3.808136463165283],
    "shapes-df": [0.06592418253421783, 1.2641570568084717, -1.0304681062698364, 5.123208522796631],
    "shapes-v1": [0.1792699545621872, 1.2296303510665894, -1.153852939605713, 0.10302633047103882],
}


def _fixed_output(model):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, *model.latent_shape[:1], model.native_frames, *model.latent_shape[1:], generator=g)
    levels = Schedule(model.default_schedule, 16).noise_levels([list(range(16, 0, -1))])
    cond = model.encode_prompt("a red circle bouncing on a blue background")
    return model.predict(x, levels, [cond])


def test_every_shipped_model_has_a_fixed_output():
    assert set(EXPECTED_OUTPUT) == set(SHIPPED)


@pytest.mark.parametrize("name", sorted(EXPECTED_OUTPUT))
def test_fixed_denoiser_output_on_a_fixed_input(name):
    out = _fixed_output(miga.load_backbone(name))
    summary = [float(out.mean()), float(out.abs().mean()), float(out[0, 0, 0, 0, 0]), float(out[0, 3, 15, 7, 7])]
    np.testing.assert_allclose(summary, EXPECTED_OUTPUT[name], rtol=1e-4, atol=1e-5)


PROMPTS = [
    "a red circle bouncing on a blue background", "a yellow square drifting on a black background",
    "a white triangle orbiting on a gradient gray background", "a green circle bouncing on a white background",
    "an orange triangle drifting on a green background", "a cyan square orbiting on a gradient black background",
    "a purple circle orbiting on a gray background", "a blue square bouncing on a gradient white background",
    "a red triangle orbiting on a black background", "a yellow circle drifting on a gradient blue background",
    "a white square bouncing on a green background", "a green triangle drifting on a gradient gray background",
]


def test_plain_sampling_shows_the_requested_object_in_its_colour(model):
    """Issue acceptance: >= 90 % of frames show the requested object in the requested colour, over 24
    prompt-and-seed pairs of plain 16-frame sampling."""
    presence = []
    for i, prompt in enumerate(PROMPTS * 2):
        frames = np.stack(native_clip(model, prompt, seed=i, config=preset("shapes", "miga")))
        presence.append(evaluate_frames(frames, parse_prompt(prompt)).summary["presence"])
    assert np.mean(presence) >= 0.9, presence


@pytest.mark.parametrize("method", ["miga", "fifo"])
def test_default_model_generates_a_playable_video(tmp_path, capsys, method):
    out = tmp_path / "v.mp4"
    code = cli.main(["generate", "a red circle bouncing", "--method", method, "--frames", "40", "--out", str(out),
                     "--no-progress"])
    assert code == 0, capsys.readouterr().err
    frames, fps = read_video(str(out))
    assert frames.shape == (40, 64, 64, 3) and fps == 12


@pytest.mark.parametrize("argv,needle", [
    (["generate", "drifting clouds"], "unknown word 'clouds'"),
    (["generate", "a red circle", "--height", "128"], "64x64"),
])
def test_default_model_refuses_bad_input_before_writing(tmp_path, capsys, argv, needle):
    out = tmp_path / "v.mp4"
    code = cli.main(argv + ["--out", str(out), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and needle in err and len(err.strip().splitlines()) == 1
    assert not out.exists() and not os.path.exists(str(out) + ".partial")


@pytest.mark.parametrize("command", ["generate", "ablate", "compare", "suite"])
def test_model_help_lists_every_shipped_model(command, capsys):
    with pytest.raises(SystemExit):
        cli.main([command, "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert all(name in text for name in SHIPPED) and "shapes (the built-in model, default)" in text
