"""``miga eval VIDEO...`` (VBench-Long metrics) and ``miga generate --save-latents``, end to end."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from miga import cli
from miga.evaluation import clip_length, split_clips, temporal_flicker
from miga.evaluation.latents import read_latents
from miga.video import VideoWriter, read_video
from cli_helpers import run

DIMENSIONS = ("temporal_flicker", "motion_smoothness", "subject_consistency", "background_consistency")
GEN = ["generate", "drifting clouds", "--model", "gaussian", "--height", "32", "--width", "32", "--frames", "24",
       "--no-progress"]


def write(path, frames, fps=8):
    with VideoWriter(path, fps=fps) as writer:
        for f in frames:
            writer.write(f)


def const(values, h=32, w=32):
    return np.stack([np.full((h, w, 3), v, np.uint8) for v in values])


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    """A 24-frame Gaussian-world video with its latents beside it (the default --save-latents path)."""
    root = tmp_path_factory.mktemp("gen")
    assert cli.main(GEN + ["--out", str(root / "g.mp4"), "--save-latents"]) == 0
    return root


def gaussian_video():
    from miga import LongVideo, load_backbone

    return LongVideo(load_backbone("gaussian", height=32, width=32), "drifting clouds", 24, seed=0)


def test_save_latents(generated):
    from miga.config import preset

    latents, meta = read_latents(str(generated / "g.latents.safetensors"))
    assert torch.equal(latents, torch.stack(list(gaussian_video().latents())))
    cfg = preset("gaussian", "miga")
    assert meta == {"frames": 24, "frames_per_latent": 1, "fps": 8, "method": "miga", "chunk": cfg.zigzag_width,
                    "refs": cfg.reflection_ref_chunks, "score_mode": cfg.score_mode}
    assert len(read_video(generated / "g.mp4")[0]) == 24 and not list(generated.glob("*.partial"))


def test_saving_latents_keeps_the_frames():
    latents = []
    saving = list(gaussian_video().frames(on_latent=latents.append))
    plain = list(gaussian_video().frames())
    assert len(saving) == 24 and all(np.array_equal(a, b) for a, b in zip(saving, plain))
    assert len(latents) == 24


def test_eval_generated_video(generated, capsys, tmp_path):
    video = generated / "g.mp4"
    report, plot = tmp_path / "r.json", tmp_path / "p.png"
    code, out, err = run(capsys, "eval", video, "--json", report, "--plot", plot)
    assert code == 0, err
    data = json.loads(report.read_text())
    for key in DIMENSIONS + ("overall",):
        assert isinstance(data[key], float) and 0.0 <= data[key] <= 1.0, key
    assert data["overall"] == pytest.approx(np.mean([data[d] for d in DIMENSIONS]))
    assert data["overall_normalized"] == pytest.approx(np.mean(
        [(data[d] - lo) / (hi - lo) for d, (lo, hi) in data["normalization"].items()]))
    assert "plain mean" in data["overall_definition"]["overall"]
    # proxies are labelled
    assert data["proxy"] == ["motion_smoothness", "subject_consistency", "background_consistency"]
    assert data["extractors"]["temporal_flicker"]["proxy"] is False
    assert all("proxy" in data["extractors"][d]["name"] for d in data["proxy"])
    # every number comes from the decoded file: T.F. per clip recomputed from read_video
    frames, fps = read_video(video)
    (v,) = data["videos"]
    assert v["video"] == str(video) and v["frames"] == 24 and v["fps"] == fps == 8
    clips = split_clips(24, clip_length(fps))
    assert [(c["start"], c["stop"], c["back_padded"]) for c in v["clips"]] == [(0, 16, False), (8, 24, True)]
    assert [c["temporal_flicker"] for c in v["clips"]] == pytest.approx(
        [temporal_flicker(frames[c.start:c.stop]) for c in clips], abs=1e-12)
    assert data["temporal_flicker"] == pytest.approx(np.mean([c["temporal_flicker"] for c in v["clips"]]))
    assert v["subject_consistency_modes"]["clip2clip"] is not None
    assert len(v["per_frame"]["subject_to_first"]) == 23
    # the latents beside the video were found
    lc = v["latent_consistency"]
    assert lc["file"] == str(generated / "g.latents.safetensors") and lc["latents"] == 24
    assert len(lc["to_first"]) == len(lc["to_previous"]) == 23 and -1 <= lc["mean_to_previous"] <= 1
    assert data["latent_consistency"]["videos"] == 1
    # the table: one row per video, proxies starred and explained, the latent score labelled
    lines = out.splitlines()
    assert lines[0].split() == ["video", "frames", "fps", "clips", "T.F.", "M.S.*", "S.C.*", "B.C.*", "overall",
                                "normalized"]
    row = lines[1].split()
    assert row[0] == str(video) and row[1:4] == ["24", "8", "2"]
    assert [float(x) for x in row[4:8]] == pytest.approx([data[d] for d in DIMENSIONS], abs=5e-5)
    assert any(ln.startswith("M.S.* proxy: ") for ln in lines) and any(ln.startswith("S.C.* proxy: ") for ln in lines)
    assert "Eqs. 5-7" in out and "latents" in out
    with Image.open(plot) as img:
        assert img.format == "PNG" and img.size[0] > img.size[1] > 100


def test_eval_hand_made_videos(tmp_path, capsys):
    still, flicker = tmp_path / "still.mp4", tmp_path / "flicker.mp4"
    write(still, const([90] * 20))
    write(flicker, const([0, 255] * 10))
    report = tmp_path / "r.json"
    code, out, err = run(capsys, "eval", still, flicker, "--json", report)
    assert code == 0, err
    data = json.loads(report.read_text())
    s, f = data["videos"]
    assert s["temporal_flicker"] == 1.0 and s["motion_smoothness"] == 1.0
    assert s["subject_consistency"] == pytest.approx(1.0) and s["background_consistency"] == pytest.approx(1.0)
    assert f["temporal_flicker"] == 0.0
    assert data["temporal_flicker"] == 0.5 and s["latent_consistency"] is None and data["latent_consistency"] is None
    assert [(c["start"], c["stop"]) for c in s["clips"]] == [(0, 16), (4, 20)]
    mean_row = out.splitlines()[3].split()
    assert mean_row[:4] == ["mean", "of", "2", "0.5000"] and len(mean_row) == 9


def test_eval_with_model_folders(tmp_path, capsys):
    from test_vbench_metrics import tiny_models

    tiny_models(tmp_path)
    video = tmp_path / "v.mp4"
    write(video, np.random.default_rng(0).integers(0, 256, (12, 32, 32, 3), dtype=np.uint8))
    report = tmp_path / "r.json"
    code, out, err = run(capsys, "eval", video, "--dino", tmp_path / "dino", "--clip", tmp_path / "clip", "--json",
                         report)
    assert code == 0, err
    data = json.loads(report.read_text())
    assert data["proxy"] == ["motion_smoothness"]
    assert data["extractors"]["subject_consistency"]["name"].startswith("DINO")
    assert data["extractors"]["background_consistency"]["name"].startswith("CLIP")
    assert out.splitlines()[0].split()[4:8] == ["T.F.", "M.S.*", "S.C.", "B.C."]
    assert "Loading" not in err


@pytest.mark.parametrize("make,argv,needle", [
    (None, ["eval", "{tmp}/missing.mp4"], "cannot read video"),
    ("short", ["eval", "{a}"], "at least 3"),
    ("video", ["eval", "{a}", "--amt", "{tmp}/amt-s.pth"], "no such file; get amt-s.pth with: hf download"),
    ("video", ["eval", "{a}", "--dino", "{tmp}/nowhere"], "no such file or folder"),
    ("video", ["eval", "{a}", "--clip", "{tmp}"], "lacks config.json and model.safetensors"),
    ("video", ["eval", "{a}", "--prompt", "a red circle"], "--prompt applies to --world gaussian and --world shapes"),
    ("video", ["eval", "{a}", "--world", "shapes", "--amt", "{tmp}/amt-s.pth"], "--world"),
    ("video", ["eval", "{a}", "--plot", "{tmp}/p.jpg"], "--plot must name a .png"),
    ("video", ["eval", "{a}", "--plot", "{tmp}/no/p.png"], "does not exist"),
    ("video", ["eval", "{a}", "{a}", "--latents", "{tmp}/l.safetensors"], "once per video"),
    ("video", ["eval", "{a}", "--latents", "{tmp}/l.safetensors"], "cannot read latents"),
    ("latents", ["eval", "{a}"], "hold 24 latents"),
    ("video", GEN + ["--out", "{tmp}/o.mp4", "--save-latents", "{tmp}/o.npy"], "must name a .safetensors"),
    ("video", GEN + ["--out", "{tmp}/o.mp4", "--save-latents", "{tmp}/no/o.safetensors"], "does not exist"),
])
def test_errors_are_one_line(tmp_path, capsys, generated, make, argv, needle):
    a = tmp_path / "a.mp4"
    if make == "short":
        write(a, const([1, 2]))
    elif make in ("video", "latents"):
        write(a, const(range(0, 60, 3)))
    if make == "latents":  # latents of another (24-frame) video beside a 20-frame one
        (tmp_path / "a.latents.safetensors").write_bytes((generated / "g.latents.safetensors").read_bytes())
    code, out, err = run(capsys, *[x.format(a=a, tmp=tmp_path) for x in argv])
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2 and len(lines) == 1 and needle in lines[0], err
    assert "Traceback" not in err and out == ""
    assert not (tmp_path / "o.mp4").exists() and not (tmp_path / "p.png").exists()
