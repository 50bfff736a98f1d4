"""Shapes-world metrics on ground-truth clips, after an MP4 round trip, upscaled, and on broken videos."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from miga.video import VideoWriter, read_video
from miga.worlds.metrics import (area_limits, classify_shape, components, evaluate_frames, expected_background,
                                 scene_frames)
from miga.worlds.shapes import parse_prompt, scene_clip, shape_coverage

FRAMES = 16

PROMPTS = [  # every shape, colour, motion and background at least once
    "a red circle bouncing on a blue background",
    "a green square drifting on a black background",
    "a yellow triangle orbiting on a gray background",
    "a white circle drifting on a gradient blue background",
    "a purple square bouncing on a gradient gray background",
    "an orange triangle bouncing on a gradient white background",
    "a cyan circle orbiting on a green background",
    "a blue triangle drifting on a gradient green background",
    "a orange square orbiting on a white background",
    "a purple triangle bouncing on a gradient black background",
    "a white square drifting on a gradient green background",
    "a yellow circle orbiting on a gradient blue background",
]


def clip(prompt, seed=0, frames=FRAMES, size=64):
    scene = parse_prompt(prompt)
    video, traj = scene_clip(scene, frames, seed=seed, size=size)
    return scene, scene_frames(video), traj


def mp4_roundtrip(frames, path):
    with VideoWriter(path, fps=8) as writer:
        for f in frames:
            writer.write(f)
    decoded, _ = read_video(path)
    assert decoded.shape == frames.shape
    return decoded


def centroid_errors(result, traj):
    errs = []
    for t, f in enumerate(result.frames):
        for j, o in enumerate(f.objects):
            if o.present:
                errs.append(math.dist(o.centroid, (float(traj.x[0, j, t]), float(traj.y[0, j, t]))))
    return np.array(errs)


@pytest.mark.parametrize("prompt", PROMPTS)
def test_ground_truth_clips_score_perfectly(prompt):
    scene, frames, traj = clip(prompt, seed=PROMPTS.index(prompt))
    result = evaluate_frames(frames, scene)
    s = result.summary
    assert s["presence"] == 1.0 and s["shape_accuracy"] == 1.0, s
    assert all(o.found_shape == scene.objects[0][1] for f in result.frames for o in f.objects)
    assert centroid_errors(result, traj).max() < 0.6
    assert s["jumps"] == FRAMES - 1
    assert 0.2 < s["jump_mean_px"] and s["jump_max_px"] < 4.0  # the world moves at most 3.6 px per frame
    assert s["jump_max_rel"] == pytest.approx(s["jump_max_px"] / 64)
    assert s["background_change"] < 1e-3 and s["background_error"] < 2e-3, s
    assert len(result.frames) == FRAMES and result.frames[0].background_change is None


@pytest.mark.parametrize("prompt", [PROMPTS[0], PROMPTS[2], PROMPTS[4], PROMPTS[5], PROMPTS[9]])
def test_after_an_mp4_roundtrip(tmp_path, prompt):
    scene, frames, traj = clip(prompt, seed=7)
    decoded = mp4_roundtrip(frames, tmp_path / "v.mp4")
    assert np.abs(decoded.astype(int) - frames).max() > 20  # the codec did change the colours
    s = evaluate_frames(decoded, scene).summary
    assert s["presence"] == 1.0 and s["shape_accuracy"] >= 15 / 16, s
    assert s["jump_max_px"] < 4.5
    assert s["background_change"] < 5e-3 and s["background_error"] < 0.01, s
    result = evaluate_frames(decoded, scene)
    assert centroid_errors(result, traj).max() < 1.5


@pytest.mark.parametrize("prompt,seed", [
    ("a red circle and a white square bouncing on a blue background", 1),
    ("a yellow triangle and a cyan circle orbiting on a gradient gray background", 2),
    ("a green square and a purple triangle drifting on a black background", 1),
    ("a red circle and a red square orbiting on a black background", 6),  # one colour: two blobs, which meet
])
def test_two_object_scenes(prompt, seed):
    scene, frames, traj = clip(prompt, seed=seed, frames=24)
    result = evaluate_frames(frames, scene)
    s = result.summary
    assert s["presence"] == 1.0 and s["shape_accuracy"] == 1.0, s
    assert s["shape_frames"] >= 32  # out of 48: touching objects are not judged
    assert [o["object"] for o in s["objects"]] == [f"{c} {sh}" for c, sh in scene.objects]
    for o in s["objects"]:
        assert o["presence"] == 1.0 and o["shape_accuracy"] == 1.0 and o["jumps"] >= 15 and o["jump_max_px"] < 3
    clear = [(t, j, o) for t, f in enumerate(result.frames) for j, o in enumerate(f.objects) if not o.touching]
    assert max(math.dist(o.centroid, (float(traj.x[0, j, t]), float(traj.y[0, j, t]))) for t, j, o in clear) < 1.0


def test_two_objects_after_mp4(tmp_path):
    scene, frames, _ = clip("a red circle and a white square bouncing on a blue background", seed=1, frames=24)
    s = evaluate_frames(mp4_roundtrip(frames, tmp_path / "v.mp4"), scene).summary
    assert s["presence"] == 1.0 and s["shape_accuracy"] >= 0.95 and s["jump_max_px"] < 4.5, s


@pytest.mark.parametrize("mode", ["nearest", "bilinear"])
def test_any_frame_size(mode):
    scene = parse_prompt("a yellow triangle bouncing on a gradient blue background")
    video, traj = scene_clip(scene, 8, seed=2)
    small = evaluate_frames(scene_frames(video), scene).summary
    big = evaluate_frames(scene_frames(F.interpolate(video, scale_factor=4, mode=mode)), scene).summary
    assert big["presence"] == 1.0 and big["shape_accuracy"] == 1.0, big
    assert big["jump_mean_px"] == pytest.approx(4 * small["jump_mean_px"], rel=0.05)
    assert big["jump_max_rel"] == pytest.approx(small["jump_max_rel"], rel=0.05)
    assert big["background_error"] < 0.01
    # a world rendered natively at 128 px
    scene128, frames128, traj128 = clip("a white square orbiting on a gray background", seed=4, size=128)
    r = evaluate_frames(frames128, scene128)
    assert r.summary["presence"] == 1.0 and r.summary["shape_accuracy"] == 1.0
    assert centroid_errors(r, traj128).max() < 0.6


@pytest.mark.parametrize("rendered,asked", [
    ("a red circle bouncing on a blue background", "a purple circle bouncing on a blue background"),
    ("an orange square drifting on a black background", "a yellow square drifting on a black background"),
    ("a yellow triangle orbiting on a gray background", "an orange triangle orbiting on a gray background"),
    ("a cyan circle bouncing on a black background", "a green circle bouncing on a black background"),
])
def test_wrong_colour_is_absent(tmp_path, rendered, asked):
    _, frames, _ = clip(rendered, seed=5)
    frames = mp4_roundtrip(frames, tmp_path / "v.mp4")
    s = evaluate_frames(frames, parse_prompt(asked)).summary
    assert s["presence"] == 0.0 and s["shape_accuracy"] == 0.0 and s["jumps"] == 0 and s["jump_max_px"] is None


def test_wrong_shape_is_present_but_wrong():
    _, frames, _ = clip("a red square bouncing on a blue background", seed=1)
    s = evaluate_frames(frames, parse_prompt("a red circle bouncing on a blue background")).summary
    assert s["presence"] == 1.0 and s["shape_accuracy"] == 0.0 and s["shape_given_present"] == 0.0


@pytest.mark.parametrize("prompt", ["a red circle on a gray background", "a white square on a gradient black background"])
def test_empty_background(prompt):
    scene = parse_prompt(prompt)
    frame = (expected_background(scene, 64, 64) * 255).round().astype(np.uint8)
    result = evaluate_frames(np.stack([frame] * 6), scene)
    s = result.summary
    assert s["presence"] == 0.0 and s["jumps"] == 0
    assert s["background_error"] < 2e-3 and s["background_change"] == 0.0
    assert all(not o.present and o.centroid is None for f in result.frames for o in f.objects)


def test_teleport_is_a_large_jump():
    scene = parse_prompt("a green circle bouncing on a black background")
    a, ta = scene_clip(scene, 10, seed=0)
    b, tb = scene_clip(scene, 10, seed=1)
    expected = math.dist((float(ta.x[0, 0, -1]), float(ta.y[0, 0, -1])), (float(tb.x[0, 0, 0]), float(tb.y[0, 0, 0])))
    assert expected > 15
    s = evaluate_frames(scene_frames(torch.cat([a, b])), scene).summary
    assert s["presence"] == 1.0 and s["jumps"] == 19
    assert s["jump_max_px"] == pytest.approx(expected, abs=0.6)
    assert s["jump_max_rel"] == pytest.approx(expected / 64, abs=0.01)
    smooth = evaluate_frames(scene_frames(a), scene).summary
    assert smooth["jump_max_px"] < 3 and s["jump_mean_px"] > smooth["jump_mean_px"] + expected / 19 - 0.5


def test_flickering_background_is_unstable():
    scene, frames, _ = clip("a red circle drifting on a gray background", seed=3)
    steady = evaluate_frames(frames, scene).summary
    flicker = frames.copy()
    flicker[1::2] = (flicker[1::2] * 0.75).round().astype(np.uint8)  # every other frame a quarter darker
    s = evaluate_frames(flicker, scene).summary
    assert s["presence"] == 1.0  # the object is still found ...
    # ... but the background changes by a quarter of gray (120/255) between every two frames
    assert s["background_change"] == pytest.approx(0.25 * 120 / 255, abs=0.01)
    assert steady["background_change"] < 1e-3 and s["background_change_max"] > 0.1
    assert s["background_error"] > 0.05 > steady["background_error"]


def test_prompt_schedule_per_frame():
    s1, f1, _ = clip("a red circle bouncing on a blue background", seed=1, frames=10)
    s2, f2, _ = clip("a white triangle drifting on a gradient gray background", seed=2, frames=10)
    result = evaluate_frames(np.concatenate([f1, f2]), [s1] * 10 + [s2] * 10)
    s = result.summary
    assert s["presence"] == 1.0 and s["shape_accuracy"] == 1.0
    assert s["jumps"] == 18  # no jump across the change: a different object
    assert [o["object"] for o in s["objects"]] == ["red circle", "white triangle"]
    assert result.frames[10].scene == s2.text and result.frames[10].background_error < 2e-3
    # judged against the wrong schedule, half the frames fail
    assert evaluate_frames(np.concatenate([f1, f2]), s1).summary["presence"] == 0.5
    with pytest.raises(ValueError, match="20 frames but 3 scenes"):
        evaluate_frames(np.concatenate([f1, f2]), [s1] * 3)


def test_to_dict_is_json_ready():
    import json

    scene, frames, _ = clip("a red circle and a white square bouncing on a blue background", seed=1, frames=4)
    data = json.loads(json.dumps(evaluate_frames(frames, scene).to_dict()))
    assert data["summary"]["frames"] == 4 and len(data["frames"]) == 4
    obj = data["frames"][0]["objects"][1]
    assert obj["colour"] == "white" and obj["found_shape"] == "square" and obj["shape_ok"] is True
    assert len(obj["centroid"]) == 2 and "iou_square" in obj["shape_evidence"]


# ----------------------------------------------------------------------------------------------------
# the pieces


def test_components_are_8_connected_and_sorted():
    mask = np.zeros((12, 12), bool)
    mask[1:3, 1:3] = True         # 4 px
    mask[3, 3] = True             # diagonal neighbour: same blob (5 px)
    mask[6:10, 6:11] = True       # 20 px
    mask[0, 11] = True            # 1 px
    labels, areas = components(mask)
    assert areas.tolist() == [20, 5, 1]
    assert labels[7, 7] == 0 and labels[1, 1] == labels[3, 3] == 1 and labels[0, 11] == 2 and labels[0, 0] == -1
    spiral = np.zeros((40, 40), bool)  # a long winding blob: one component
    spiral[::4, :] = True
    spiral[:, 0] = True
    assert components(spiral)[1].tolist() == [spiral.sum()]
    assert components(np.zeros((5, 5), bool))[1].size == 0


@pytest.mark.parametrize("radius", [6.0, 9.0, 30.0])
@pytest.mark.parametrize("shape", [0, 1, 2])
def test_classify_templates(shape, radius):
    coords = torch.arange(96, dtype=torch.float32) + 0.5
    cov = shape_coverage(torch.tensor(shape), coords.reshape(1, -1) - 47.3, coords.reshape(-1, 1) - 48.6,
                         torch.tensor(radius))
    kind, evidence = classify_shape((cov >= 0.5).numpy())
    assert kind == ("circle", "square", "triangle")[shape], evidence
    assert evidence[f"iou_{kind}"] > 0.9


def test_formless_blobs_have_no_shape():
    line = np.zeros((64, 64), bool)
    line[30:32, 5:60] = True
    assert classify_shape(line)[0] is None
    ring = np.zeros((64, 64), bool)
    yy, xx = np.mgrid[:64, :64]
    ring[(np.hypot(xx - 32, yy - 32) < 14) & (np.hypot(xx - 32, yy - 32) > 9)] = True
    assert classify_shape(ring)[0] is None


def test_area_limits_scale_with_the_frame():
    lo, hi = area_limits(64, 64)
    assert 20 < lo < 25 and 700 < hi < 800
    assert area_limits(256, 256) == pytest.approx((16 * lo, 16 * hi))


def test_a_flooded_frame_is_not_the_object():
    scene = parse_prompt("a red circle bouncing on a blue background")
    frame = np.zeros((64, 64, 3), np.uint8)
    frame[:] = (230, 40, 40)
    assert evaluate_frames(frame[None], scene).summary["presence"] == 0.0
