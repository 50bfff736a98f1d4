"""Issue 19, what a new user hit walking the README: the cases that are neither bad input (those are in
``test_bad_input.py``'s table) nor kills and resumes (``test_resume.py``)."""

import json

from miga.errors import MigaError
from cli_helpers import run

SMALL = ["--model", "gaussian", "--height", "32", "--width", "32", "--frames", "24"]


def error_lines_stand_alone(err):
    """Every ``miga: error`` in ``err`` starts its own line (not glued to the progress bar's last state)."""
    lines = err.replace("\r", "\n").splitlines()
    return [ln for ln in lines if "miga: error" in ln] and all(ln.startswith("miga: error") for ln in lines
                                                               if "miga: error" in ln)


# ---------------------------------------------------------------- 4. README commands that failed as written
def test_run_dir_in_a_new_folder_gets_its_parents(tmp_path, capsys):
    """``--run-dir runs/story`` where ``runs`` does not exist yet (train-toy already created parents)."""
    code, _, err = run(capsys, "generate", "x", *SMALL, "--out", tmp_path / "v.mp4", "--run-dir",
                       tmp_path / "runs" / "story", "--no-progress")
    assert code == 0, err
    assert (tmp_path / "runs" / "story" / "run.json").is_file() and (tmp_path / "v.mp4").is_file()


def test_ablate_out_in_a_new_folder_gets_its_parents(tmp_path, capsys):
    code, _, err = run(capsys, "ablate", "--model", "gaussian", "--height", "32", "--width", "32", "--frames", "24",
                       "--seeds", "0", "--rows", "fifo", "--sweeps", "none", "--prompt", "x", "--no-progress",
                       "--out", tmp_path / "new" / "abl")
    assert code == 0, err
    assert (tmp_path / "new" / "abl" / "results.md").is_file()


# ---------------------------------------------------------------- 5. wrong or misleading messages
def test_the_readme_wan_folder_before_its_download_is_not_called_a_hub_id(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, _, err = run(capsys, "generate", "a corgi", "--model", "models/wan2.1-1.3b", "--out", "c.mp4")
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "hub id" not in err and "hf download models/" not in err, err
    assert "'hf download Wan-AI/Wan2.1-T2V-1.3B-Diffusers --local-dir models/wan2.1-1.3b'" in err, err


def test_train_toy_stopped_in_the_autoencoder_stage_says_so(tmp_path, capsys):
    code, _, err = run(capsys, "train-toy", tmp_path / "t", "--model-size", "tiny", "--time-limit", "0",
                       "--no-progress")
    assert code == 0, err
    assert "stopped at autoencoder step 0 of 2500" in err and "denoiser step" not in err, err


def test_an_error_after_the_progress_bar_started_stands_on_its_own_line(tmp_path, capsys, monkeypatch):
    """stderr that is not a terminal: the bar's last state and the error line were one line."""
    from miga.pipeline import LongVideo as Video
    from miga.runs import VideoRun

    real = Video.frames

    def failing(self, *args, **kwargs):
        for i, frame in enumerate(real(self, *args, **kwargs)):
            if i == 3:
                raise MigaError("the model failed")
            yield frame
    monkeypatch.setattr(Video, "frames", failing)
    code, _, err = run(capsys, "generate", "x", *SMALL, "--out", tmp_path / "v.mp4")
    assert code == 2 and error_lines_stand_alone(err), err
    monkeypatch.undo()

    def failing_commit(self, complete=False):
        raise MigaError("the disk failed")
    monkeypatch.setattr(VideoRun, "_commit", failing_commit)
    code, _, err = run(capsys, "generate", "x", *SMALL, "--out", tmp_path / "w.mp4", "--run-dir", tmp_path / "r")
    assert code == 2 and error_lines_stand_alone(err), err


# ---------------------------------------------------------------- 6. silent surprises
def test_eval_does_not_score_latents_left_by_an_earlier_run(tmp_path, capsys):
    """The video records where its latents went (or that none were saved), so ``miga eval`` leaves a
    ``NAME.latents.safetensors`` of an earlier video under the same name alone."""
    video, stale = tmp_path / "s.mp4", tmp_path / "s.latents.safetensors"
    assert run(capsys, "generate", "x", *SMALL, "--out", video, "--save-latents", "--no-progress")[0] == 0
    code, _, err = run(capsys, "eval", video, "--json", tmp_path / "a.json")
    assert code == 0 and "not using" not in err, err
    assert json.loads((tmp_path / "a.json").read_text())["videos"][0]["latent_consistency"] is not None
    # another video under the same name, without --save-latents: the latents beside it are stale
    assert run(capsys, "generate", "y", *SMALL, "--seed", "1", "--out", video, "--no-progress")[0] == 0
    assert stale.exists()
    code, _, err = run(capsys, "eval", video, "--json", tmp_path / "b.json")
    assert code == 0 and f"not using the latents {stale}" in err and "left by an earlier run" in err, err
    assert json.loads((tmp_path / "b.json").read_text())["videos"][0]["latent_consistency"] is None
    code, _, err = run(capsys, "eval", "--world", "gaussian", video)
    assert code == 2 and "left by an earlier run" in err and len(err.strip().splitlines()) == 1, err
    # ... or with its latents saved elsewhere
    other = tmp_path / "other.safetensors"
    assert run(capsys, "generate", "y", *SMALL, "--out", video, "--save-latents", other, "--no-progress")[0] == 0
    code, _, err = run(capsys, "eval", "--world", "gaussian", video, "--json", tmp_path / "c.json")
    assert code == 0 and "not using" not in err, err  # read from where the video says they are
    assert json.loads((tmp_path / "c.json").read_text())["videos"][0]["latents"] == str(other)
    other.rename(tmp_path / "gone.safetensors")  # the recorded file is gone: the stale one is still not used
    code, _, err = run(capsys, "eval", "--world", "gaussian", video)
    assert code == 2 and f"saved them to {other}" in err, err
    (tmp_path / "gone.safetensors").rename(other)
    code, _, err = run(capsys, "eval", "--world", "gaussian", video, "--latents", other)  # what the user says
    assert code == 0, err
