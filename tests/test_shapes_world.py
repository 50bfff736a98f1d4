"""The shapes world: prompt grammar, tokens, ground-truth motion and rendering; hidden attributes, and the
v1 world kept bit for bit without them."""

import json
import math

import numpy as np
import pytest
import torch

from miga.errors import MigaError
from miga.worlds import shapes
from miga.worlds.metrics import COLOUR_TOLERANCE, evaluate_frames, scene_frames
from miga.worlds.shapes import (BACKGROUND_COLOURS, GRADIENT_ANGLE_RANGE, GRADIENT_DARKEN, MOTIONS, OBJECT_COLOURS,
                                PLAIN_TILT_RANGE, RADIUS_RANGE, SHADE_RADIUS, SPEED_RANGES, TOKEN_SIZES,
                                HiddenAttributes, Scene, SceneBatch, background_field, batch_tokens, parse_prompt,
                                render, sample_hidden, sample_scenes, sample_trajectories, scene_clip, world_batch)


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


# ----------------------------------------------------------------------------------------------------
# Hidden attributes (the v2 world) and the v1 world kept exactly.


class V1:
    """The v1 world's code as it was before hidden attributes were added (copied verbatim), the reference
    for bit-equality: the shipped v1 model was trained on exactly these clips."""

    @staticmethod
    def sample_scenes(n, generator, two_objects=0.25):
        g = generator
        shape = torch.randint(len(shapes.SHAPES), (n, 2), generator=g)
        colour = torch.randint(len(OBJECT_COLOURS), (n, 2), generator=g)
        present = torch.ones(n, 2, dtype=torch.bool)
        present[:, 1] = torch.rand(n, generator=g) < two_objects
        clash = colour[:, 1] == colour[:, 0]
        colour[:, 1] = torch.where(clash, (colour[:, 1] + 1) % len(OBJECT_COLOURS), colour[:, 1])
        bg_names, obj_names = list(BACKGROUND_COLOURS), list(OBJECT_COLOURS)
        background = torch.empty(n, dtype=torch.long)
        for b in range(n):
            used = {obj_names[int(colour[b, j])] for j in range(2) if present[b, j]}
            allowed = [k for k, name in enumerate(bg_names) if name not in used]
            background[b] = allowed[int(torch.randint(len(allowed), (1,), generator=g))]
        motion = torch.randint(len(MOTIONS), (n,), generator=g)
        style = torch.randint(len(shapes.STYLES), (n,), generator=g)
        return SceneBatch(shape, colour, present, motion, background, style)

    @staticmethod
    def _bounce(p0, v, t, lo, hi):
        span = (hi - lo).unsqueeze(-1)
        u = (p0 - lo).unsqueeze(-1) + v.unsqueeze(-1) * t
        u = torch.remainder(u, 2 * span)
        return lo.unsqueeze(-1) + torch.where(u > span, 2 * span - u, u)

    @staticmethod
    def sample_trajectories(batch, num_frames, generator, size=64, start=0.0):
        g = generator
        n = batch.shape.shape[0]
        scale = size / 64.0
        radius = (6.0 + 3.0 * torch.rand(n, 2, generator=g)) * scale
        lo, hi = radius + 1.0, size - 1.0 - radius
        px = lo + (hi - lo) * torch.rand(n, 2, generator=g)
        py = lo + (hi - lo) * torch.rand(n, 2, generator=g)
        angle = 2 * math.pi * torch.rand(n, 2, generator=g)
        fast = 1.0 + 1.2 * torch.rand(n, 2, generator=g)
        slow = 0.3 + 0.5 * torch.rand(n, 2, generator=g)
        drifting = (batch.motion == MOTIONS.index("drifting")).unsqueeze(-1)
        speed = torch.where(drifting, slow, fast) * scale
        t = (torch.as_tensor(start, dtype=torch.float32).reshape(-1, 1, 1)
             + torch.arange(num_frames, dtype=torch.float32))
        bx = V1._bounce(px, speed * torch.cos(angle), t, lo, hi)
        by = V1._bounce(py, speed * torch.sin(angle), t, lo, hi)
        orbit_r = (8.0 + 10.0 * torch.rand(n, 2, generator=g)) * scale
        orbit_r = torch.minimum(orbit_r, size / 2 - 6 * scale - radius - 1.0)
        omega = speed / orbit_r * torch.where(torch.rand(n, 2, generator=g) < 0.5, -1.0, 1.0)
        centre = size / 2 + (torch.rand(n, 2, 2, generator=g) - 0.5) * 12 * scale
        phase = angle.unsqueeze(-1) + omega.unsqueeze(-1) * t
        ox = centre[..., 0].unsqueeze(-1) + orbit_r.unsqueeze(-1) * torch.cos(phase)
        oy = centre[..., 1].unsqueeze(-1) + orbit_r.unsqueeze(-1) * torch.sin(phase)
        orbiting = (batch.motion == MOTIONS.index("orbiting")).reshape(n, 1, 1)
        return shapes.Trajectories(torch.where(orbiting, ox, bx), torch.where(orbiting, oy, by), radius)

    @staticmethod
    def shape_coverage(shape, dx, dy, radius):
        circle = torch.sqrt(dx ** 2 + dy ** 2) - radius
        square = torch.maximum(dx.abs(), dy.abs()) - 0.85 * radius
        r = 1.1 * radius
        c, s = math.cos(math.pi / 6), math.sin(math.pi / 6)
        tri = torch.maximum(torch.maximum(dy - 0.5 * r, c * dx - s * dy - 0.5 * r), -c * dx - s * dy - 0.5 * r)
        sdf = torch.where(shape == 0, circle, torch.where(shape == 1, square, tri))
        return (0.5 - sdf).clamp(0.0, 1.0)

    @staticmethod
    def render(batch, traj, size=64, with_mask=False):
        palette = lambda names: torch.tensor(list(names.values()), dtype=torch.float32) / 255.0  # noqa: E731
        n, _, f = traj.x.shape
        bg = palette(BACKGROUND_COLOURS)[batch.background].reshape(n, 1, 3, 1, 1)
        ramp = torch.linspace(1.0, GRADIENT_DARKEN, size).reshape(1, 1, 1, size, 1)
        gradient = (batch.style == shapes.STYLES.index("gradient")).reshape(n, 1, 1, 1, 1)
        frames = bg * torch.where(gradient, ramp, torch.ones_like(ramp))
        frames = frames.expand(n, f, 3, size, size).clone()
        coords = torch.arange(size, dtype=torch.float32) + 0.5
        colours = palette(OBJECT_COLOURS)
        mask = torch.zeros(n, f, size, size)
        for j in range(2):
            dx = coords.reshape(1, 1, 1, size) - traj.x[:, j].reshape(n, f, 1, 1)
            dy = coords.reshape(1, 1, size, 1) - traj.y[:, j].reshape(n, f, 1, 1)
            cov = V1.shape_coverage(batch.shape[:, j].reshape(n, 1, 1, 1), dx, dy,
                                    traj.radius[:, j].reshape(n, 1, 1, 1))
            cov = cov * batch.present[:, j].reshape(n, 1, 1, 1)
            col = colours[batch.colour[:, j]].reshape(n, 1, 3, 1, 1)
            frames = frames * (1 - cov.unsqueeze(2)) + col * cov.unsqueeze(2)
            mask = torch.maximum(mask, cov)
        return (frames, mask) if with_mask else frames


@pytest.mark.parametrize("seed,size,start,two", [(0, 64, 0.0, 0.25), (1, 64, 37.0, 0.5), (2, 48, 5.5, 1.0),
                                                  (3, 128, 0.0, 0.0)])
def test_without_hidden_attributes_the_world_is_bit_for_bit_v1(seed, size, start, two):
    n = 24 if size <= 64 else 6
    old, new = torch.Generator().manual_seed(seed), torch.Generator().manual_seed(seed)
    a, b = V1.sample_scenes(n, old, two), sample_scenes(n, new, two)
    for field in ("shape", "colour", "present", "motion", "background", "style"):
        assert getattr(a, field).equal(getattr(b, field))
    ta, tb = V1.sample_trajectories(a, 20, old, size, start), sample_trajectories(b, 20, new, size, start)
    assert ta.x.equal(tb.x) and ta.y.equal(tb.y) and ta.radius.equal(tb.radius)
    fa, ma = V1.render(a, ta, size, with_mask=True)
    fb, mb = render(b, tb, size, with_mask=True)
    assert fa.equal(fb) and ma.equal(mb) and render(b, tb, size).equal(fa)
    # the training entry point without hidden attributes draws exactly the v1 trainer's clips
    w = world_batch(n, 20, torch.Generator().manual_seed(seed), size, two, hidden=False)
    g = torch.Generator().manual_seed(seed)
    scenes = V1.sample_scenes(n, g, two)
    traj = V1.sample_trajectories(scenes, 20, g, size)
    frames, mask = V1.render(scenes, traj, size, with_mask=True)
    assert w.hidden is None and w.frames.equal(frames) and w.mask.equal(mask)
    assert w.trajectories.x.equal(traj.x) and w.tokens.equal(batch_tokens(scenes))


def test_v1_scene_clip_unchanged():
    scene = parse_prompt("a yellow triangle and a white square orbiting on a gradient gray background")
    frames, traj = scene_clip(scene, 10, seed=3)
    g = torch.Generator().manual_seed(3)
    batch = SceneBatch.of([scene])
    ref_traj = V1.sample_trajectories(batch, 10, g)
    assert frames.equal(V1.render(batch, ref_traj)[0]) and traj.y.equal(ref_traj.y)


def test_v1_world_pinned_numbers():
    """Numbers of the v1 world computed before hidden attributes existed (catches a change of the palettes
    or of anything else the verbatim copy above shares with the module)."""
    g = torch.Generator().manual_seed(2024)
    b = sample_scenes(8, g)
    t = sample_trajectories(b, 12, g)
    f, m = render(b, t, with_mask=True)
    assert b.colour.tolist() == [[5, 4], [1, 6], [7, 0], [2, 6], [7, 0], [3, 4], [3, 7], [6, 2]]
    assert b.background.tolist() == [3, 3, 2, 4, 4, 1, 0, 2] and b.motion.tolist() == [2, 1, 1, 0, 0, 0, 2, 0]
    np.testing.assert_allclose(t.x[0, 0, :3].tolist(), [46.75103759765625, 47.17356872558594, 47.51039123535156],
                               rtol=1e-6)
    np.testing.assert_allclose(t.radius[:2].tolist(), [[6.541887283325195, 8.66612434387207],
                                                       [6.170267581939697, 8.292863845825195]], rtol=1e-6)
    np.testing.assert_allclose([f.double().sum().item(), m.double().sum().item()],
                               [450700.5009123795, 14450.859632492065], rtol=1e-6)
    frames, traj = scene_clip(parse_prompt("a yellow triangle and a white square orbiting on a gradient gray "
                                           "background"), 10, seed=3)
    np.testing.assert_allclose([frames.double().sum().item(), traj.y[0, 1, -1].item()],
                               [42928.54866859317, 36.690128326416016], rtol=1e-6)


def test_hidden_attributes_follow_the_prior():
    batch = sample_scenes(4000, torch.Generator().manual_seed(7))
    h = sample_hidden(batch, torch.Generator().manual_seed(8))
    h.check(4000)
    assert ((h.radius >= RADIUS_RANGE[0]) & (h.radius <= RADIUS_RANGE[1])).all()
    assert abs(float(h.radius.mean()) - sum(RADIUS_RANGE) / 2) < 0.05
    for m, name in enumerate(MOTIONS):
        lo, hi = SPEED_RANGES[name]
        v = h.speed[batch.motion == m]
        assert (v >= lo).all() and (v <= hi).all() and v.max() - v.min() > 0.9 * (hi - lo)
    palette = torch.tensor(list(OBJECT_COLOURS.values()), dtype=torch.float32)
    off = (h.shade - palette[batch.colour]).norm(dim=-1)
    assert (off <= SHADE_RADIUS + 1e-4).all() and (h.shade >= 0).all() and (h.shade <= 255).all()
    assert float(off.mean()) > 0.6 * SHADE_RADIUS  # uniform in the ball: mean distance 3/4 of the radius
    gradient = batch.style == shapes.STYLES.index("gradient")
    ga = h.bg_angle[gradient]
    assert (ga >= GRADIENT_ANGLE_RANGE[0]).all() and (ga <= GRADIENT_ANGLE_RANGE[1]).all()
    assert (h.bg_tilt[gradient] == torch.tensor(1 - GRADIENT_DARKEN)).all()
    pt = h.bg_tilt[~gradient]
    assert (pt >= PLAIN_TILT_RANGE[0]).all() and (pt <= PLAIN_TILT_RANGE[1]).all()
    pa = h.bg_angle[~gradient]
    assert (pa >= 0).all() and (pa < 2 * math.pi).all() and float(torch.cos(pa).mean()).__abs__() < 0.05
    # keyed by the generator, and different from clip to clip
    again = sample_hidden(batch, torch.Generator().manual_seed(8))
    assert all(getattr(h, f).equal(getattr(again, f)) for f in ("radius", "speed", "shade", "bg_angle", "bg_tilt"))
    assert len(set(zip(h.radius[:, 0].tolist(), h.shade[:, 0].sum(-1).tolist(), h.bg_angle.tolist()))) == 4000


def test_every_shade_stays_its_named_colour():
    """The extreme shades (the palette colour moved SHADE_RADIUS towards every other object colour and every
    background shade, and along the RGB axes) are nearest their own colour, well inside the metrics' colour
    tolerance, and far from every background shade they may meet (the colour times [GRADIENT_DARKEN, 1])."""
    palette = {k: np.array(v, float) for k, v in OBJECT_COLOURS.items()}
    k = np.linspace(GRADIENT_DARKEN, 1.0, 61)[:, None]
    for name, colour in palette.items():
        targets = [c for n, c in palette.items() if n != name]
        targets += [k_ * np.array(bg, float) for bg_name, bg in BACKGROUND_COLOURS.items() if bg_name != name
                    for k_ in k]
        directions = [t - colour for t in targets] + list(np.eye(3)) + list(-np.eye(3))
        for d in directions:
            shade = np.clip(colour + SHADE_RADIUS * d / np.linalg.norm(d), 0, 255)
            assert np.linalg.norm(shade - colour) <= COLOUR_TOLERANCE / 3 + 1e-9
            others = min(np.linalg.norm(shade - c) for n, c in palette.items() if n != name)
            assert others >= 60.0
            for bg_name, bg in BACKGROUND_COLOURS.items():
                if bg_name != name:
                    assert np.linalg.norm(shade - k * np.array(bg, float), axis=1).min() >= 94.0


def test_metrics_find_and_classify_objects_of_the_hidden_world():
    w = world_batch(64, 16, torch.Generator().manual_seed(4), two_objects=0.0)
    for b, scene in enumerate(w.scenes.scenes()):
        s = evaluate_frames(scene_frames(w.frames[b]), scene).summary
        assert s["presence"] == 1.0 and s["shape_accuracy"] == 1.0, (scene.text, s)
        assert 0.2 < s["jump_mean_px"] and s["jump_max_px"] < 4.0


@pytest.mark.parametrize("text", ["a yellow circle bouncing on a gradient white background",
                                  "an orange triangle drifting on a gray background",
                                  "a blue square orbiting on a gradient black background",
                                  "a purple circle drifting on a gradient blue background"])
def test_metrics_find_the_most_extreme_shades(text):
    """Shades at the edge of the ball towards the nearest other object colour and towards the background."""
    scene = parse_prompt(text)
    batch = SceneBatch.of([scene])
    name = scene.objects[0][0]
    colour = torch.tensor(OBJECT_COLOURS[name], dtype=torch.float32)
    nearest = min((torch.tensor(c, dtype=torch.float32) for n, c in OBJECT_COLOURS.items() if n != name),
                  key=lambda c: float((c - colour).norm()))
    bg = torch.tensor(BACKGROUND_COLOURS[scene.background], dtype=torch.float32) * 0.7
    for target in (nearest, bg):
        h = sample_hidden(batch, torch.Generator().manual_seed(0))
        d = target - colour
        h.shade[0, 0] = (colour + SHADE_RADIUS * d / d.norm()).clamp(0, 255)
        frames, _ = scene_clip(scene, 16, seed=1, hidden=h)
        s = evaluate_frames(scene_frames(frames), scene).summary
        assert s["presence"] == 1.0 and s["shape_accuracy"] == 1.0, s


def test_hidden_attributes_hold_for_the_whole_clip():
    w = world_batch(16, 40, torch.Generator().manual_seed(9), two_objects=0.0)
    for b in range(16):
        frames, mask = w.frames[b], w.mask[b]
        # size: the object's coverage (never clipped by the frame edge) has the same area in every frame
        area = mask.sum((1, 2))
        assert (area - area[0]).abs().max() < 0.02 * area[0]
        # shade: the pixels fully inside the object have the same colour in every frame
        inside = mask > 0.999
        for f in range(40):
            torch.testing.assert_close(frames[f][:, inside[f]].mean(1), w.hidden.shade[b, 0] / 255, atol=1e-4, rtol=0)
        # background: pixels no object touches in a frame are the same in every frame
        clear = (mask == 0).all(0)
        assert clear.sum() > 1000 and (frames[:, :, clear] - frames[:1, :, clear]).abs().max() == 0
        # speed: the centre moves by the hidden speed every frame (bounces and orbits keep the speed)
        x, y = w.trajectories.x[b, 0], w.trajectories.y[b, 0]
        steps = torch.hypot(x.diff(), y.diff())
        assert (steps <= w.hidden.speed[b, 0] + 1e-4).all()  # a bounce inside a step shortens the chord
        assert torch.median(steps) == pytest.approx(float(w.hidden.speed[b, 0]), rel=0.02)
        assert w.trajectories.radius[b, 0] == w.hidden.radius[b, 0]
    # and they differ from clip to clip
    assert len({round(float(r), 3) for r in w.hidden.radius[:, 0]}) == 16


def test_background_lighting():
    scenes = [parse_prompt("a red circle on a gradient white background"),
              parse_prompt("a red circle on a gray background")]
    batch = SceneBatch.of(scenes)
    h = HiddenAttributes.v1(batch)
    # the v1 look through the hidden-attribute path is the v1 world (up to float rounding)
    v1 = background_field(batch, 64)
    torch.testing.assert_close(background_field(batch, 64, h), v1, atol=1e-6, rtol=0)
    # darkening towards bg_angle, brightest corner the colour, darkest (1 - tilt) of it
    for angle_deg, dark_corner in [(45, (63, 63)), (135, (63, 0)), (225, (0, 0)), (315, (0, 63)), (0, None)]:
        h.bg_angle[:] = math.radians(angle_deg)
        h.bg_tilt[:] = torch.tensor([0.6, 0.2])
        field = background_field(batch, 64, h)
        for b, tilt in enumerate((0.6, 0.2)):
            colour = torch.tensor(BACKGROUND_COLOURS[scenes[b].background]) / 255
            lum = field[b].mean(0)
            assert float(lum.max()) == pytest.approx(float(colour.mean()), rel=1e-5)
            assert float(lum.min()) == pytest.approx(float(colour.mean()) * (1 - tilt), rel=1e-5)
            if dark_corner is not None:
                assert float(lum[dark_corner]) == pytest.approx(float(lum.min()), rel=1e-5)
            else:  # darkening to the right: the right column is uniformly the darkest
                assert float(lum[:, -1].max()) == pytest.approx(float(lum.min()), rel=1e-5)


def test_world_batch_with_hidden_attributes():
    w = world_batch(16, 16, torch.Generator().manual_seed(0))
    assert w.frames.shape == (16, 16, 3, 64, 64) and w.mask.shape == (16, 16, 64, 64)
    assert w.tokens.shape == (16, 7) and len(w.hidden) == 16
    assert 0.0 <= float(w.frames.min()) and float(w.frames.max()) <= 1.0
    again = world_batch(16, 16, torch.Generator().manual_seed(0))
    assert again.frames.equal(w.frames)
    # its clips are those of the parts, drawn in this order from one generator
    g = torch.Generator().manual_seed(0)
    scenes = sample_scenes(16, g)
    h = sample_hidden(scenes, g)
    traj = sample_trajectories(scenes, 16, g, hidden=h)
    assert render(scenes, traj, hidden=h).equal(w.frames)
    # JSON-ready per clip, absent objects left out
    d = w.hidden.to_dicts(w.scenes)
    assert len(d) == 16 and all(len(c["radius"]) == int(w.scenes.present[i].sum()) for i, c in enumerate(d))
    json.dumps(d)
    with pytest.raises(MigaError, match="shade has shape"):
        render(scenes, traj, hidden=HiddenAttributes(h.radius, h.speed, h.shade[:, :1], h.bg_angle, h.bg_tilt))
    assert len(h[3]) == 1 and h[3].radius.equal(h.radius[3:4]) and len(HiddenAttributes.cat([h[0], h[-1]])) == 2
