"""The shapes world: prompt grammar, tokens, ground-truth motion and rendering."""

import pytest
import torch

from miga.errors import MigaError
from miga.worlds.shapes import (BACKGROUND_COLOURS, MOTIONS, OBJECT_COLOURS, TOKEN_SIZES, Scene, SceneBatch,
                                batch_tokens, parse_prompt, render, sample_scenes, sample_trajectories, scene_clip)


@pytest.mark.parametrize("text,scene", [
    ("a red circle bouncing on a blue background", Scene((("red", "circle"),), "bouncing", "blue", "plain")),
    ("A Yellow Triangle and a white square orbiting on a gradient gray background",
     Scene((("yellow", "triangle"), ("white", "square")), "orbiting", "gray", "gradient")),
    ("green box drifts", Scene((("green", "square"),), "drifting", "black", "plain")),
    ("a cyan ball on a grey gradient background", Scene((("cyan", "circle"),), "bouncing", "gray", "gradient")),
])
def test_grammar_parses(text, scene):
    assert parse_prompt(text) == scene
    assert parse_prompt(scene.text) == scene  # the canonical text round-trips


@pytest.mark.parametrize("text,needle", [
    ("a red dog", "unknown word 'dog'"),
    ("a circle bouncing", "colour of the circle"),
    ("bouncing on a blue background", "names no object"),
    ("a white circle on a white background", "invisible"),
    ("a red circle on a purple background", "not a background colour"),
    ("a red circle, a blue square and a green triangle", "at most two"),
    ("drifting clouds", "unknown word"),
])
def test_grammar_refuses_with_the_vocabulary(text, needle):
    with pytest.raises(MigaError, match=needle) as err:
        parse_prompt(text)
    message = str(err.value)
    assert "\n" not in message and "colours:" in message or "invisible" in message or "at most" in message


def test_tokens_are_in_range_and_batch_tokens_agree():
    batch = sample_scenes(300, torch.Generator().manual_seed(0))
    tokens = batch_tokens(batch)
    assert tokens.equal(torch.tensor([s.tokens() for s in batch.scenes()]))
    assert (tokens >= 1).all() and (tokens < torch.tensor(TOKEN_SIZES)).all()  # 0 is the unconditional code
    assert len({tuple(t) for t in tokens.tolist()}) > 100


def test_sampled_scenes_never_hide_an_object():
    for scene in sample_scenes(500, torch.Generator().manual_seed(1)).scenes():
        assert all(c != scene.background for c, _ in scene.objects)


@pytest.mark.parametrize("motion", MOTIONS)
def test_objects_stay_in_frame_and_move_smoothly(motion):
    batch = SceneBatch.of([Scene((("red", "circle"), ("blue", "square")), motion)] * 64)
    traj = sample_trajectories(batch, 200, torch.Generator().manual_seed(2))
    r = traj.radius[..., None]
    assert (traj.x - r >= -1e-4).all() and (traj.x + r <= 64 + 1e-4).all()
    assert (traj.y - r >= -1e-4).all() and (traj.y + r <= 64 + 1e-4).all()
    step = torch.hypot(traj.x.diff(dim=-1), traj.y.diff(dim=-1))
    assert step.max() < 2.5 and step.mean() > 0.2


def test_rendered_clip_shows_the_object_in_its_colour_on_the_background():
    scene = parse_prompt("a red square drifting on a blue background")
    frames, traj = scene_clip(scene, 8, seed=3)
    assert frames.shape == (8, 3, 64, 64)
    red = torch.tensor(OBJECT_COLOURS["red"]) / 255
    blue = torch.tensor(BACKGROUND_COLOURS["blue"]) / 255
    for f in range(8):
        cx, cy = int(traj.x[0, 0, f]), int(traj.y[0, 0, f])
        torch.testing.assert_close(frames[f, :, cy, cx], red)
        torch.testing.assert_close(frames[f, :, 0, 0] if cx > 20 or cy > 20 else frames[f, :, 63, 63], blue)
    area = ((frames - red[:, None, None]).abs().sum(1) < 0.05).float().sum((1, 2))
    side = 2 * 0.85 * traj.radius[0, 0]
    assert torch.allclose(area, side ** 2 * torch.ones(8), rtol=0.25)


def test_gradient_background_darkens_downwards():
    frames, _ = scene_clip(parse_prompt("a red circle on a gradient white background"), 1, seed=0)
    column = frames[0, 0, :, 0]  # red channel of the left edge, which objects never reach
    assert column[0] > 0.85 and column[-1] < 0.45 and (column.diff() <= 1e-6).sum() > 55


def test_render_mask_covers_the_objects():
    batch = sample_scenes(4, torch.Generator().manual_seed(5))
    traj = sample_trajectories(batch, 3, torch.Generator().manual_seed(6))
    frames, mask = render(batch, traj, with_mask=True)
    assert mask.shape == (4, 3, 64, 64) and mask.max() == 1.0
    plain = render(batch, traj)
    assert plain.equal(frames)
