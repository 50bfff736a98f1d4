"""The ``miga generate`` command end to end on the Gaussian world, bad input, and interruption."""

import json
import os

import pytest

from miga import cli
from miga.video import read_video
from cli_helpers import interrupt_frames_after

SMALL = ["--model", "gaussian", "--height", "32", "--width", "32", "--no-progress"]


def run(capsys, *argv):
    code = cli.main(list(argv))
    return code, capsys.readouterr().err


@pytest.mark.parametrize("method", ["miga", "fifo"])
def test_generate_writes_a_playable_video_and_stats(tmp_path, capsys, method):
    out, stats = tmp_path / "v.mp4", tmp_path / "s.json"
    code, err = run(capsys, "generate", "drifting clouds", "--method", method, "--frames", "37", "--out", str(out),
                    "--stats", str(stats), *SMALL)
    assert code == 0, err
    frames, fps = read_video(str(out))
    assert frames.shape == (37, 32, 32, 3) and fps == 8
    s = json.loads(stats.read_text())
    for key in ("frames", "latents", "nfe", "model_seconds", "total_seconds", "peak_rss_mib",
                "reflection_checks", "reflection_triggers", "reflection_adoptions"):
        assert key in s
    assert s["frames"] == 37 and s["nfe"] > 37 and s["peak_rss_mib"] > 10
    assert not os.path.exists(str(out) + ".partial")


def test_prompt_schedule_file_runs(tmp_path, capsys):
    prompts = tmp_path / "p.txt"
    prompts.write_text("# two scenes\n0: warm clouds\n30: cold sea\n")
    out = tmp_path / "v.mp4"
    code, err = run(capsys, "generate", "--model", "gaussian", "--prompts", str(prompts), "--frames", "60", "--out", str(out),
                    "--no-progress")
    assert code == 0, err
    frames, _ = read_video(str(out))
    frames, _ = read_video(str(out))
    assert len(frames) == 60


def test_mechanism_switches_reach_the_config(tmp_path, capsys):
    stats = tmp_path / "s.json"
    code, err = run(capsys, "generate", "x", "--frames", "20", "--out", str(tmp_path / "v.mp4"), "--stats",
                    str(stats), "--zigzag-width", "2", "--stage2-steps", "0", "--guides", "0", "--no-reflection",
                    "--steps", "24", *SMALL)
    assert code == 0, err
    cfg = json.loads(stats.read_text())["config"]
    assert (cfg["zigzag_width"], cfg["stage2_steps"], cfg["guides"], cfg["reflection"], cfg["steps"]) == \
        (2, 0, 0, False, 24)



@pytest.mark.parametrize("flags, want", [  # the gaussian preset: calibrated, while filling (issue 15)
    (["--reflection-threshold", "auto", "--reflect-during", "all"], ("auto", 0.01, "all")),
    (["--reflection-threshold", "0.03", "--reflect-during", "fill"], ("fixed", 0.03, "fill")),
    (["--reflection-threshold", "0.01", "--reflect-during", "all"], ("fixed", 0.01, "all")),  # the paper's
    ([], ("auto", 0.01, "fill")),
])
def test_reflection_threshold_auto_and_reflect_during_reach_the_config(tmp_path, capsys, flags, want):
    stats = tmp_path / "s.json"
    code, err = run(capsys, "generate", "x", "--frames", "20", "--out", str(tmp_path / "v.mp4"), "--stats",
                    str(stats), *flags, *SMALL)
    assert code == 0, err
    cfg = json.loads(stats.read_text())["config"]
    assert (cfg["reflection_calibration"], cfg["reflection_threshold"], cfg["reflect_during"]) == want


BAD = [
    (["--frames", "0"], "--frames"),
    (["--frames", "ten"], "--frames"),
    (["--stride", "20"], "stride"),
    (["--guides", "16"], "guides"),
    (["--stage2-steps", "32"], "K2"),
    (["--zigzag-width", "20"], "zigzag width"),
    (["--preset", "sora"], "unknown preset"),
    (["--model", "nope"], "unknown model"),
    (["--method", "fifo", "--guides", "2"], "only apply to --method miga"),
    (["--method", "fifo", "--steps", "20"], "multiple of the model window"),
    (["--height", "30"], "8"),
    (["--out", "video.gif"], ".mp4"),
    (["--reflection-threshold", "-1"], "reflection-threshold"),
    (["--reflection-threshold", "often"], "expected a number >= 0 or 'auto'"),
    (["--no-reflection", "--reflect-during", "fill"], "--reflect-during sets how self-reflection runs"),
    (["--method", "fifo", "--reflect-during", "fill"], "only apply to --method miga"),
]


@pytest.mark.parametrize("extra,needle", BAD)
def test_bad_input_exits_2_with_one_line(tmp_path, capsys, extra, needle):
    out = tmp_path / "v.mp4"
    argv = ["generate", "a prompt", "--model", "gaussian", "--out", str(out), "--no-progress", *extra]
    if "--out" in extra:
        argv = ["generate", "a prompt", "--model", "gaussian", "--no-progress", *extra]
    try:
        code = cli.main(argv)
    except SystemExit as exc:  # argparse errors
        code = exc.code
    err = capsys.readouterr().err
    assert code == 2
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and needle in lines[0], err
    assert "Traceback" not in err
    assert not out.exists()


@pytest.mark.parametrize("content,needle", [
    ("0: a\n0: b\n", "line 2"),
    ("5: a\n", "line 1"),
    ("# nothing\n\n", "no prompts"),
    ("0: a\nplain\n", "line 2"),
])
def test_malformed_prompt_file(tmp_path, capsys, content, needle):
    p = tmp_path / "p.txt"
    p.write_text(content)
    code, err = run(capsys, "generate", "--prompts", str(p), "--out", str(tmp_path / "v.mp4"), *SMALL)
    assert code == 2 and needle in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("argv,needle", [
    (["generate", ""], "empty"),
    (["generate", "--prompt", "a", "--prompt", "  "], "empty"),
    (["generate"], "no prompt"),
    (["generate", "--prompts", "/nonexistent/p.txt"], "cannot read"),
])
def test_missing_or_empty_prompt(tmp_path, capsys, argv, needle):
    code, err = run(capsys, *argv, "--out", str(tmp_path / "v.mp4"), *SMALL)
    assert code == 2 and needle in err and len(err.strip().splitlines()) == 1


def test_interrupted_run_leaves_no_finished_file(tmp_path, capsys, monkeypatch):
    interrupt_frames_after(monkeypatch, 5)
    out, stats = tmp_path / "v.mp4", tmp_path / "s.json"
    code, err = run(capsys, "generate", "x", "--frames", "40", "--out", str(out), "--stats", str(stats), *SMALL)
    assert code == 130 and "interrupted" in err
    assert not out.exists() and not stats.exists()
    assert (tmp_path / "v.mp4.partial").exists()
