"""``miga eval --world shapes`` and the prompt schedule that ``miga generate`` stores in its videos."""

import json

import numpy as np
import pytest

from miga import cli
from miga.video import (VideoWriter, prompts_metadata, read_prompts_metadata, read_video, read_video_metadata)
from miga.worlds.metrics import scene_frames
from miga.worlds.shapes import parse_prompt, scene_clip

RED = "a red circle bouncing on a blue background"
WHITE = "a white triangle drifting on a gradient gray background"


def write(path, frames, metadata=None):
    with VideoWriter(path, fps=8, metadata=metadata) as writer:
        for f in frames:
            writer.write(f)


def gt(prompt, frames=12, seed=1):
    return scene_frames(scene_clip(parse_prompt(prompt), frames, seed=seed)[0])


def run(capsys, *argv):
    try:
        code = cli.main(list(argv))
    except SystemExit as exc:  # argparse errors
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


def test_metadata_roundtrip(tmp_path):
    path = tmp_path / "v.mp4"
    schedule = [(0, RED), (6, "ünïcode: a \"quoted\" prompt")]
    write(path, gt(RED), prompts_metadata(schedule))
    assert read_prompts_metadata(path) == schedule
    assert json.loads(read_video_metadata(path)["comment"]) == {"miga_prompts": [list(e) for e in schedule]}
    plain = tmp_path / "plain.mp4"
    write(plain, gt(RED))
    assert read_prompts_metadata(plain) is None
    other = tmp_path / "other.mp4"
    write(other, gt(RED), {"comment": "made elsewhere"})
    assert read_prompts_metadata(other) is None


def test_eval_ground_truth_from_metadata(tmp_path, capsys):
    a, b = tmp_path / "a.mp4", tmp_path / "b.mp4"
    write(a, gt(RED), prompts_metadata([(0, RED)]))
    frames = np.concatenate([gt(RED, 10), gt(WHITE, 10, seed=2)])
    write(b, frames, prompts_metadata([(0, RED), (10, WHITE)]))
    report = tmp_path / "r.json"
    code, out, err = run(capsys, "eval", "--world", "shapes", str(a), str(b), "--json", str(report))
    assert code == 0, err
    table, notes = out.strip().split("\n\n")
    lines = table.splitlines()
    assert len(lines) == 3 and lines[0].split()[:4] == ["video", "frames", "present", "shape"]
    assert "drift" not in lines[0] and "no video reaches 64 frames" in notes  # 12 and 20 frames: no identity drift
    assert f"{b}: identity measured on the first prompt's frames 0-9 only" in notes
    assert lines[1].startswith(str(a)) and "100.0%" in lines[1] and " px" in lines[1]
    data = json.loads(report.read_text())
    assert data["world"] == "shapes" and data["thresholds"]["COLOUR_TOLERANCE"] > 0
    va, vb = data["videos"]
    assert va["summary"]["presence"] == 1.0 and va["summary"]["shape_accuracy"] >= 11 / 12
    assert va["summary"]["jump_max_px"] < 4 and va["summary"]["background_change"] < 5e-3
    assert len(va["frames"]) == 12 and va["prompt_source"] == "metadata"
    # each frame is judged against the prompt in force at that frame
    assert vb["prompts"] == [[0, RED], [10, WHITE]]
    assert vb["frames"][9]["scene"] == parse_prompt(RED).text and vb["frames"][10]["scene"] == parse_prompt(WHITE).text
    assert vb["summary"]["presence"] == 1.0
    assert [o["object"] for o in vb["summary"]["objects"]] == ["red circle", "white triangle"]


def test_eval_prompt_option_overrides(tmp_path, capsys):
    a = tmp_path / "a.mp4"
    write(a, gt(RED))  # no metadata
    code, out, err = run(capsys, "eval", "--world", "shapes", str(a), "--prompt", "a purple circle on a blue background")
    assert code == 0, err
    assert "0.0%" in out.splitlines()[1]


def test_generate_then_eval(tmp_path, capsys):
    out = tmp_path / "g.mp4"
    code, _, err = run(capsys, "generate", "--prompt", RED, "--prompt", WHITE, "--model", "gaussian", "--frames", "16",
                       "--height", "32", "--width", "32", "--out", str(out), "--no-progress")
    assert code == 0, err
    assert read_prompts_metadata(out) == [(0, RED), (8, WHITE)]
    assert len(read_video(out)[0]) == 16
    report = tmp_path / "r.json"
    code, stdout, err = run(capsys, "eval", "--world", "shapes", str(out), "--json", str(report))
    assert code == 0, err
    video = json.loads(report.read_text())["videos"][0]
    assert video["summary"]["frames"] == 16 and video["prompts"] == [[0, RED], [8, WHITE]]
    assert video["frames"][8]["scene"] == parse_prompt(WHITE).text


@pytest.mark.parametrize("make,argv,needle", [
    (None, ["eval", "{a}"], "cannot read video"),  # without --world: the VBench metrics (test_eval_vbench_cli.py)
    (None, ["eval", "--world", "shapes", "{tmp}/missing.mp4"], "cannot read video"),
    ("text", ["eval", "--world", "shapes", "{a}"], "cannot read video"),
    ("plain", ["eval", "--world", "shapes", "{a}"], "holds no prompt"),
    ("clouds", ["eval", "--world", "shapes", "{a}"], "unknown word 'clouds'"),
    ("plain", ["eval", "--world", "shapes", "{a}", "--prompt", "a fox in snow"], "unknown word 'fox'"),
    ("plain", ["eval", "--world", "shapes", "{a}", "--prompt", " "], "empty"),
    ("plain", ["eval", "--world", "shapes", "{a}", "--json", "{tmp}/no/r.json"], "does not exist"),
    ("plain", ["eval", "--world", "vbench", "{a}"], "invalid choice"),
    (None, ["eval", "--world", "shapes"], "VIDEO"),
])
def test_eval_errors_are_one_line(tmp_path, capsys, make, argv, needle):
    a = tmp_path / "a.mp4"
    if make == "text":
        a.write_text("not a video")
    elif make == "plain":
        write(a, gt(RED, 4))
    elif make == "clouds":
        write(a, gt(RED, 4), prompts_metadata([(0, "drifting clouds")]))
    argv = [x.format(a=a, tmp=tmp_path) for x in argv]
    code, out, err = run(capsys, *argv)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2 and len(lines) == 1 and needle in lines[0], err
    assert "Traceback" not in err and out == ""
    assert not (tmp_path / "no").exists()
