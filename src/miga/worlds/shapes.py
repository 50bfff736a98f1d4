"""The shapes world: procedural clips of coloured shapes moving over a background.

It is the training data of the built-in model (``miga.backbones.shapes``) and, because its ground truth
(object colour, shape and position per frame) is known, the ruler for consistency (``miga.worlds.metrics``).

A prompt is parsed by a small grammar into a :class:`Scene`::

    "a red circle bouncing on a blue background"
    "a yellow triangle and a white square orbiting on a gradient gray background"

Everything is vectorised in torch so that training can render batches of clips on the fly.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import torch

from miga.errors import MigaError

FRAME_SIZE = 64
"""Side of a frame in pixels."""

OBJECT_COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (230, 40, 40), "green": (40, 200, 60), "blue": (50, 90, 235), "yellow": (240, 220, 40),
    "white": (245, 245, 245), "purple": (160, 60, 220), "orange": (245, 140, 30), "cyan": (40, 210, 220),
}
BACKGROUND_COLOURS: dict[str, tuple[int, int, int]] = {
    "black": (15, 15, 20), "gray": (120, 120, 120), "white": (235, 235, 235), "blue": (30, 50, 140),
    "green": (30, 100, 45),
}
SHAPES = ("circle", "square", "triangle")
MOTIONS = ("bouncing", "drifting", "orbiting")
STYLES = ("plain", "gradient")
GRADIENT_DARKEN = 0.4
"""A gradient background runs from its colour at the top to this fraction of it at the bottom."""

_MOTION_WORDS = {"bouncing": "bouncing", "bounces": "bouncing", "bounce": "bouncing",
                 "drifting": "drifting", "drifts": "drifting", "drift": "drifting",
                 "orbiting": "orbiting", "orbits": "orbiting", "orbit": "orbiting", "circling": "orbiting"}
_SHAPE_WORDS = {"circle": "circle", "circles": "circle", "ball": "circle", "disc": "circle",
                "square": "square", "squares": "square", "box": "square",
                "triangle": "triangle", "triangles": "triangle"}
_FILLER = {"a", "an", "the", "and", "on", "over", "in", "with", "against", "is", "are", "across", "around",
           "one", "two", "background", "backdrop", "of", "grey"}
_STYLE_WORDS = {"plain": "plain", "solid": "plain", "gradient": "gradient"}


@dataclass(frozen=True)
class Scene:
    """What a prompt asks for: one or two ``(colour, shape)`` objects, a motion and a background."""

    objects: tuple[tuple[str, str], ...]
    motion: str = "bouncing"
    background: str = "black"
    style: str = "plain"

    def __post_init__(self) -> None:
        if not 1 <= len(self.objects) <= 2:
            raise MigaError(f"a shapes scene has one or two objects, got {len(self.objects)}")
        for colour, shape in self.objects:
            if colour not in OBJECT_COLOURS or shape not in SHAPES:
                raise MigaError(f"unknown object {colour} {shape}; {vocabulary()}")
            if colour == self.background:
                raise MigaError(f"a {colour} {shape} on a {colour} background would be invisible; "
                                "pick different colours")
        if self.motion not in MOTIONS or self.background not in BACKGROUND_COLOURS or self.style not in STYLES:
            raise MigaError(f"unknown motion or background in {self!r}; {vocabulary()}")

    @property
    def text(self) -> str:
        """The canonical prompt for this scene."""
        objs = " and ".join(f"a {c} {s}" for c, s in self.objects)
        bg = f"{'gradient ' if self.style == 'gradient' else ''}{self.background} background"
        return f"{objs} {self.motion} on a {bg}"

    def tokens(self) -> list[int]:
        """Integer codes the model embeds: shape, colour (x2, 0 = no second object), motion, background,
        style. Code 0 in every position is the unconditional prompt."""
        codes = []
        for i in range(2):
            if i < len(self.objects):
                colour, shape = self.objects[i]
                codes += [1 + SHAPES.index(shape), 1 + list(OBJECT_COLOURS).index(colour)]
            else:
                codes += [len(SHAPES) + 1, len(OBJECT_COLOURS) + 1]  # "no object"
        codes += [1 + MOTIONS.index(self.motion), 1 + list(BACKGROUND_COLOURS).index(self.background),
                  1 + STYLES.index(self.style)]
        return codes


TOKEN_SIZES = (len(SHAPES) + 2, len(OBJECT_COLOURS) + 2, len(SHAPES) + 2, len(OBJECT_COLOURS) + 2,
               len(MOTIONS) + 1, len(BACKGROUND_COLOURS) + 1, len(STYLES) + 1)
"""Vocabulary size of each token position of :meth:`Scene.tokens` (0 = unconditional)."""


def vocabulary() -> str:
    """The grammar in one line, for error messages."""
    return ("prompts look like 'a red circle bouncing on a blue background' or 'a red circle and a white square "
            f"orbiting on a gradient gray background'; colours: {', '.join(OBJECT_COLOURS)}; shapes: "
            f"{', '.join(SHAPES)}; motions: {', '.join(MOTIONS)}; backgrounds: {', '.join(BACKGROUND_COLOURS)} "
            "(optionally 'gradient')")


def parse_prompt(text: str) -> Scene:
    """Parse a prompt of the shapes grammar; refuse anything else with the vocabulary in the message."""
    words = re.findall(r"[a-z]+", text.lower())
    objects: list[tuple[str, str]] = []
    motion = background = style = None
    pending_colour = None
    i = 0
    while i < len(words):
        w = words[i]
        if w in OBJECT_COLOURS or w in BACKGROUND_COLOURS or w == "grey":
            colour = "gray" if w == "grey" else w
            nxt = words[i + 1] if i + 1 < len(words) else ""
            if nxt in _SHAPE_WORDS:
                if colour not in OBJECT_COLOURS:
                    raise MigaError(f"prompt {text!r}: {colour} is not an object colour; {vocabulary()}")
                objects.append((colour, _SHAPE_WORDS[nxt]))
                i += 2
                continue
            if nxt in ("background", "backdrop") or (nxt in _STYLE_WORDS and words[i + 2:i + 3] == ["background"]):
                if colour not in BACKGROUND_COLOURS:
                    raise MigaError(f"prompt {text!r}: {colour} is not a background colour; {vocabulary()}")
                background = colour
                if nxt in _STYLE_WORDS:
                    style = _STYLE_WORDS[nxt]
                    i += 1
                i += 2
                continue
            pending_colour = colour
            i += 1
            continue
        if w in _SHAPE_WORDS:
            raise MigaError(f"prompt {text!r}: say the colour of the {w}; {vocabulary()}")
        if w in _MOTION_WORDS:
            motion = _MOTION_WORDS[w]
        elif w in _STYLE_WORDS:
            style = _STYLE_WORDS[w]
            nxt = words[i + 1] if i + 1 < len(words) else ""
            if nxt in BACKGROUND_COLOURS or nxt == "grey":
                background = "gray" if nxt == "grey" else nxt
                i += 1
        elif w not in _FILLER:
            raise MigaError(f"prompt {text!r}: unknown word {w!r}; {vocabulary()}")
        i += 1
    if pending_colour is not None and background is None:
        raise MigaError(f"prompt {text!r}: what is {pending_colour}?; {vocabulary()}")
    if not objects:
        raise MigaError(f"prompt {text!r} names no object; {vocabulary()}")
    if len(objects) > 2:
        raise MigaError(f"prompt {text!r}: the shapes world holds at most two objects")
    return Scene(tuple(objects), motion or "bouncing", background or "black", style or "plain")


# ----------------------------------------------------------------------------------------------------
# Ground truth and rendering, batched: B scenes, F frames, up to 2 objects.


@dataclass
class SceneBatch:
    """Integer attributes of B scenes (``[B]`` or ``[B, 2]`` long tensors); ``present[b, j]`` says whether
    object j exists."""

    shape: torch.Tensor
    colour: torch.Tensor
    present: torch.Tensor
    motion: torch.Tensor
    background: torch.Tensor
    style: torch.Tensor

    @staticmethod
    def of(scenes: list[Scene]) -> "SceneBatch":
        shape = torch.zeros(len(scenes), 2, dtype=torch.long)
        colour = torch.zeros(len(scenes), 2, dtype=torch.long)
        present = torch.zeros(len(scenes), 2, dtype=torch.bool)
        for b, s in enumerate(scenes):
            for j, (c, sh) in enumerate(s.objects):
                shape[b, j], colour[b, j], present[b, j] = SHAPES.index(sh), list(OBJECT_COLOURS).index(c), True
        motion = torch.tensor([MOTIONS.index(s.motion) for s in scenes])
        background = torch.tensor([list(BACKGROUND_COLOURS).index(s.background) for s in scenes])
        style = torch.tensor([STYLES.index(s.style) for s in scenes])
        return SceneBatch(shape, colour, present, motion, background, style)

    def scenes(self) -> list[Scene]:
        cols, bgs = list(OBJECT_COLOURS), list(BACKGROUND_COLOURS)
        out = []
        for b in range(self.shape.shape[0]):
            objs = tuple((cols[int(self.colour[b, j])], SHAPES[int(self.shape[b, j])])
                         for j in range(2) if self.present[b, j])
            out.append(Scene(objs, MOTIONS[int(self.motion[b])], bgs[int(self.background[b])],
                             STYLES[int(self.style[b])]))
        return out


def sample_scenes(n: int, generator: torch.Generator, two_objects: float = 0.25) -> SceneBatch:
    """Random scenes; an object never shares its colour name with the background."""
    g = generator
    shape = torch.randint(len(SHAPES), (n, 2), generator=g)
    colour = torch.randint(len(OBJECT_COLOURS), (n, 2), generator=g)
    present = torch.ones(n, 2, dtype=torch.bool)
    present[:, 1] = torch.rand(n, generator=g) < two_objects
    # second object: a different colour from the first
    clash = colour[:, 1] == colour[:, 0]
    colour[:, 1] = torch.where(clash, (colour[:, 1] + 1) % len(OBJECT_COLOURS), colour[:, 1])
    bg_names, obj_names = list(BACKGROUND_COLOURS), list(OBJECT_COLOURS)
    background = torch.empty(n, dtype=torch.long)
    for b in range(n):
        used = {obj_names[int(colour[b, j])] for j in range(2) if present[b, j]}
        allowed = [k for k, name in enumerate(bg_names) if name not in used]
        background[b] = allowed[int(torch.randint(len(allowed), (1,), generator=g))]
    motion = torch.randint(len(MOTIONS), (n,), generator=g)
    style = torch.randint(len(STYLES), (n,), generator=g)
    return SceneBatch(shape, colour, present, motion, background, style)


@dataclass
class Trajectories:
    """Ground truth per object: centre ``x``, ``y`` in pixels ``[B, 2, F]`` and radius ``[B, 2]``."""

    x: torch.Tensor
    y: torch.Tensor
    radius: torch.Tensor


def _bounce(p0: torch.Tensor, v: torch.Tensor, t: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    """Position of a point moving at speed v between walls lo and hi, reflecting off them (a triangle wave)."""
    span = (hi - lo).unsqueeze(-1)
    u = (p0 - lo).unsqueeze(-1) + v.unsqueeze(-1) * t
    u = torch.remainder(u, 2 * span)
    return lo.unsqueeze(-1) + torch.where(u > span, 2 * span - u, u)


def sample_trajectories(batch: SceneBatch, num_frames: int, generator: torch.Generator,
                        size: int = FRAME_SIZE, start: float | torch.Tensor = 0.0) -> Trajectories:
    """Random motion of each object over frames ``start .. start + num_frames - 1``.

    Bouncing: 1.0-2.2 px/frame with reflection off the walls; drifting: the same at 0.3-0.8 px/frame;
    orbiting: a circle of radius 8-18 px (less where the frame is too small) around a point within 6 px of the
    centre, at the bouncing speed. Objects never leave the frame.
    """
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
    t = torch.as_tensor(start, dtype=torch.float32).reshape(-1, 1, 1) + torch.arange(num_frames, dtype=torch.float32)
    bx = _bounce(px, speed * torch.cos(angle), t, lo, hi)
    by = _bounce(py, speed * torch.sin(angle), t, lo, hi)
    # orbits
    orbit_r = (8.0 + 10.0 * torch.rand(n, 2, generator=g)) * scale
    orbit_r = torch.minimum(orbit_r, size / 2 - 6 * scale - radius - 1.0)  # the whole orbit stays in frame
    omega = speed / orbit_r * torch.where(torch.rand(n, 2, generator=g) < 0.5, -1.0, 1.0)  # same px/frame
    centre = size / 2 + (torch.rand(n, 2, 2, generator=g) - 0.5) * 12 * scale
    phase = angle.unsqueeze(-1) + omega.unsqueeze(-1) * t
    ox = centre[..., 0].unsqueeze(-1) + orbit_r.unsqueeze(-1) * torch.cos(phase)
    oy = centre[..., 1].unsqueeze(-1) + orbit_r.unsqueeze(-1) * torch.sin(phase)
    orbiting = (batch.motion == MOTIONS.index("orbiting")).reshape(n, 1, 1)
    x = torch.where(orbiting, ox, bx)
    y = torch.where(orbiting, oy, by)
    return Trajectories(x, y, radius)


def _palette(names: dict[str, tuple[int, int, int]]) -> torch.Tensor:
    return torch.tensor(list(names.values()), dtype=torch.float32) / 255.0


def shape_coverage(shape: torch.Tensor, dx: torch.Tensor, dy: torch.Tensor, radius: torch.Tensor) -> torch.Tensor:
    """Anti-aliased coverage in [0, 1] of each shape kind at pixel offsets (dx, dy) from its centre.

    Circle: radius r; square: half-side 0.85 r; upward triangle inscribed in the circle of radius 1.1 r.
    """
    circle = torch.sqrt(dx ** 2 + dy ** 2) - radius
    square = torch.maximum(dx.abs(), dy.abs()) - 0.85 * radius
    r = 1.1 * radius  # triangle: signed distance to three edges (apex up, y grows downward)
    c, s = math.cos(math.pi / 6), math.sin(math.pi / 6)
    tri = torch.maximum(torch.maximum(dy - 0.5 * r, c * dx - s * dy - 0.5 * r), -c * dx - s * dy - 0.5 * r)
    sdf = torch.where(shape == 0, circle, torch.where(shape == 1, square, tri))
    return (0.5 - sdf).clamp(0.0, 1.0)


def render(batch: SceneBatch, traj: Trajectories, size: int = FRAME_SIZE, with_mask: bool = False):
    """Frames ``[B, F, 3, H, W]`` in [0, 1]: the background, then object 0, then object 1 on top.

    With ``with_mask``, also the objects' total coverage ``[B, F, H, W]`` in [0, 1]."""
    n, _, f = traj.x.shape
    bg = _palette(BACKGROUND_COLOURS)[batch.background].reshape(n, 1, 3, 1, 1)
    ramp = torch.linspace(1.0, GRADIENT_DARKEN, size).reshape(1, 1, 1, size, 1)
    gradient = (batch.style == STYLES.index("gradient")).reshape(n, 1, 1, 1, 1)
    frames = bg * torch.where(gradient, ramp, torch.ones_like(ramp))
    frames = frames.expand(n, f, 3, size, size).clone()
    coords = torch.arange(size, dtype=torch.float32) + 0.5
    colours = _palette(OBJECT_COLOURS)
    mask = torch.zeros(n, f, size, size)
    for j in range(2):
        dx = coords.reshape(1, 1, 1, size) - traj.x[:, j].reshape(n, f, 1, 1)
        dy = coords.reshape(1, 1, size, 1) - traj.y[:, j].reshape(n, f, 1, 1)
        cov = shape_coverage(batch.shape[:, j].reshape(n, 1, 1, 1), dx, dy, traj.radius[:, j].reshape(n, 1, 1, 1))
        cov = cov * batch.present[:, j].reshape(n, 1, 1, 1)
        col = colours[batch.colour[:, j]].reshape(n, 1, 3, 1, 1)
        frames = frames * (1 - cov.unsqueeze(2)) + col * cov.unsqueeze(2)
        mask = torch.maximum(mask, cov)
    return (frames, mask) if with_mask else frames


def scene_clip(scene: Scene, num_frames: int, seed: int = 0, size: int = FRAME_SIZE) -> tuple[torch.Tensor, Trajectories]:
    """One ground-truth clip of ``scene``: frames ``[F, 3, H, W]`` in [0, 1] and its trajectories."""
    g = torch.Generator().manual_seed(seed)
    batch = SceneBatch.of([scene])
    traj = sample_trajectories(batch, num_frames, g, size)
    return render(batch, traj, size)[0], traj


def batch_tokens(batch: SceneBatch) -> torch.Tensor:
    """:meth:`Scene.tokens` of every scene of a batch, ``[B, 7]`` long."""
    absent = torch.tensor([len(SHAPES) + 1, len(OBJECT_COLOURS) + 1])
    objs = []
    for j in range(2):
        pair = torch.stack([batch.shape[:, j] + 1, batch.colour[:, j] + 1], dim=1)
        objs.append(torch.where(batch.present[:, j:j + 1], pair, absent))
    rest = torch.stack([batch.motion + 1, batch.background + 1, batch.style + 1], dim=1)
    return torch.cat(objs + [rest], dim=1)
