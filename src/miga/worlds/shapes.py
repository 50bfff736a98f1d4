"""The shapes world: procedural clips of coloured shapes moving over a background.

It is the training data of the built-in model (``miga.backbones.shapes``) and, because its ground truth
(object colour, shape and position per frame) is known, the ruler for consistency (``miga.worlds.metrics``).

A prompt is parsed by a small grammar into a :class:`Scene`::

    "a red circle bouncing on a blue background"
    "a yellow triangle and a white square orbiting on a gradient gray background"

Everything is vectorised in torch so that training can render batches of clips on the fly.

**Hidden attributes** (the world of the v2 built-in model). A clip also keeps, for its whole length,
attributes its prompt does not name (:class:`HiddenAttributes`, drawn by :func:`sample_hidden`): each
object's radius, speed and exact shade within its named colour, and a low-frequency lighting of the
background (the direction of a gradient; a gentle brightness tilt of a plain background). They give a
long video an identity that can drift (measured by ``miga.worlds.identity``). :func:`world_batch` draws
whole training batches of that world. Without hidden attributes (``hidden=None``, the default of
:func:`sample_trajectories`, :func:`render` and :func:`scene_clip`) everything is exactly the world the v1
built-in model was trained on: the radius and speed are drawn as before, objects have their palette
colour, plain backgrounds are flat and gradients run straight down.
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


# ----------------------------------------------------------------------------------------------------
# Hidden attributes: what a clip keeps for its whole length but its prompt does not name.

RADIUS_RANGE = (6.0, 9.0)
"""Object radius in pixels at 64-pixel frames, uniform (the v1 world's range; ``miga.worlds.metrics``'s
area limits and shape thresholds are calibrated for it)."""
SPEED_RANGES: dict[str, tuple[float, float]] = {"bouncing": (1.0, 2.2), "drifting": (0.3, 0.8),
                                                "orbiting": (1.0, 2.2)}
"""Object speed in pixels per frame at 64-pixel frames, uniform, by motion (the v1 world's ranges)."""
SHADE_RADIUS = 20.0
"""An object's shade is its palette colour plus an offset drawn uniformly in the RGB ball of this radius
(0-255 levels), clipped to [0, 255]. The nearest two object colours (yellow and orange) are 81 apart and
every object colour is at least 114 from every background shade it may appear on (purple and white times
[``GRADIENT_DARKEN``, 1]), so a shade stays at least 60 from every other object colour and 94 from the
background: nearest to its own colour, within a third of ``miga.worlds.metrics.COLOUR_TOLERANCE`` of it."""
GRADIENT_ANGLE_RANGE = (math.pi / 4, 3 * math.pi / 4)
"""Direction (radians, x right, y down) a gradient background darkens towards, uniform: within 45 degrees
of straight down (pi/2, the v1 gradient), so a gradient still runs from a bright top to a dark bottom."""
PLAIN_TILT_RANGE = (0.1, 0.25)
"""A plain background darkens by this fraction, uniform, from its brightest corner to its darkest, in a
direction uniform on the circle: a gentle tilt of its lighting, far from a gradient's
``1 - GRADIENT_DARKEN`` = 0.6. Like a gradient it only darkens, so every background shade is the colour
times a factor in [``GRADIENT_DARKEN``, 1], the shades ``miga.worlds.metrics`` is calibrated for. On the
black background (15, 15, 20) it is at most 5 levels: there, practically invisible."""


@dataclass
class HiddenAttributes:
    """Attributes of B clips that the prompt does not name and that stay the same for the whole clip.

    Object attributes are per object slot (an absent object's values are drawn but unused)."""

    radius: torch.Tensor
    """``[B, 2]`` object radius in pixels at 64-pixel frames (:data:`RADIUS_RANGE`)."""
    speed: torch.Tensor
    """``[B, 2]`` object speed in pixels per frame at 64-pixel frames (:data:`SPEED_RANGES`)."""
    shade: torch.Tensor
    """``[B, 2, 3]`` object RGB in 0-255 levels (float), near the palette colour (:data:`SHADE_RADIUS`)."""
    bg_angle: torch.Tensor
    """``[B]`` direction the background darkens towards, radians (x right, y down; pi/2 = downwards)."""
    bg_tilt: torch.Tensor
    """``[B]`` fraction of the background's brightness lost from its brightest corner to its darkest
    (``1 - GRADIENT_DARKEN`` for gradients, :data:`PLAIN_TILT_RANGE` for plain backgrounds)."""

    def __len__(self) -> int:
        return self.radius.shape[0]

    def check(self, n: int) -> None:
        """Refuse attributes whose shapes do not fit ``n`` clips."""
        want = {"radius": (n, 2), "speed": (n, 2), "shade": (n, 2, 3), "bg_angle": (n,), "bg_tilt": (n,)}
        for name, shape in want.items():
            got = tuple(getattr(self, name).shape)
            if got != shape:
                raise MigaError(f"hidden attributes: {name} has shape {got}, expected {shape} for {n} clips")

    def __getitem__(self, index) -> "HiddenAttributes":
        """The attributes of some clips (an int keeps the batch dimension: one clip)."""
        if isinstance(index, int):
            index = slice(index, index + 1 if index != -1 else None)
        return HiddenAttributes(self.radius[index], self.speed[index], self.shade[index], self.bg_angle[index],
                                self.bg_tilt[index])

    @staticmethod
    def cat(parts: "list[HiddenAttributes]") -> "HiddenAttributes":
        """The clips of several batches in one."""
        return HiddenAttributes(*(torch.cat([getattr(p, f) for p in parts]) for f in
                                  ("radius", "speed", "shade", "bg_angle", "bg_tilt")))

    @staticmethod
    def v1(batch: SceneBatch, radius: float | torch.Tensor = 7.5, speed: float | torch.Tensor | None = None
           ) -> "HiddenAttributes":
        """The v1 look for ``batch``: palette colours, flat plain backgrounds, gradients straight down, and
        the given radius and speed (default: the middle of the motion's range)."""
        n = batch.shape.shape[0]
        if speed is None:
            mid = torch.tensor([sum(SPEED_RANGES[m]) / 2 for m in MOTIONS])
            speed = mid[batch.motion].unsqueeze(1).expand(n, 2)
        gradient = batch.style == STYLES.index("gradient")
        return HiddenAttributes(torch.as_tensor(radius, dtype=torch.float32).expand(n, 2).clone(),
                                torch.as_tensor(speed, dtype=torch.float32).expand(n, 2).clone(),
                                torch.tensor(list(OBJECT_COLOURS.values()), dtype=torch.float32)[batch.colour],
                                torch.full((n,), math.pi / 2),
                                torch.where(gradient, 1.0 - GRADIENT_DARKEN, 0.0).to(torch.float32))

    def to_dicts(self, batch: SceneBatch | None = None) -> list[dict]:
        """JSON-ready attributes, one dict per clip: ``radius``, ``speed`` (lists over objects), ``shade``
        (a list of RGB lists), ``bg_angle_deg`` and ``bg_tilt``. With ``batch``, absent objects are left
        out."""
        out = []
        for b in range(len(self)):
            slots = [j for j in range(2) if batch is None or bool(batch.present[b, j])]
            out.append({"radius": [round(float(self.radius[b, j]), 4) for j in slots],
                        "speed": [round(float(self.speed[b, j]), 4) for j in slots],
                        "shade": [[round(float(v), 3) for v in self.shade[b, j]] for j in slots],
                        "bg_angle_deg": round(math.degrees(float(self.bg_angle[b])) % 360.0, 3),
                        "bg_tilt": round(float(self.bg_tilt[b]), 4)})
        return out


def sample_hidden(batch: SceneBatch, generator: torch.Generator) -> HiddenAttributes:
    """Draw the hidden attributes of ``batch``'s clips from the world's prior (the ranges above); every
    random number is drawn for every clip, so the draw of a clip depends only on its place in the batch
    and the generator's state."""
    g = generator
    n = batch.shape.shape[0]
    lo, hi = RADIUS_RANGE
    radius = lo + (hi - lo) * torch.rand(n, 2, generator=g)
    ranges = torch.tensor([SPEED_RANGES[m] for m in MOTIONS])[batch.motion]  # [B, 2]: lo, hi
    speed = ranges[:, :1] + (ranges[:, 1:] - ranges[:, :1]) * torch.rand(n, 2, generator=g)
    direction = torch.randn(n, 2, 3, generator=g)
    direction = direction / direction.norm(dim=-1, keepdim=True).clamp(min=1e-12)
    length = SHADE_RADIUS * torch.rand(n, 2, 1, generator=g) ** (1.0 / 3.0)  # uniform in the ball
    palette = torch.tensor(list(OBJECT_COLOURS.values()), dtype=torch.float32)
    shade = (palette[batch.colour] + direction * length).clamp(0.0, 255.0)
    gradient = batch.style == STYLES.index("gradient")
    a_lo, a_hi = GRADIENT_ANGLE_RANGE
    grad_angle = a_lo + (a_hi - a_lo) * torch.rand(n, generator=g)
    plain_angle = 2 * math.pi * torch.rand(n, generator=g)
    t_lo, t_hi = PLAIN_TILT_RANGE
    plain_tilt = t_lo + (t_hi - t_lo) * torch.rand(n, generator=g)
    return HiddenAttributes(radius, speed, shade, torch.where(gradient, grad_angle, plain_angle),
                            torch.where(gradient, torch.tensor(1.0 - GRADIENT_DARKEN), plain_tilt))


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
                        size: int = FRAME_SIZE, start: float | torch.Tensor = 0.0,
                        hidden: "HiddenAttributes | None" = None) -> Trajectories:
    """Random motion of each object over frames ``start .. start + num_frames - 1``.

    Bouncing: 1.0-2.2 px/frame with reflection off the walls; drifting: the same at 0.3-0.8 px/frame;
    orbiting: a circle of radius 8-18 px (less where the frame is too small) around a point within 6 px of the
    centre, at the bouncing speed. Objects never leave the frame.

    With ``hidden``, each object's radius and speed are ``hidden.radius`` and ``hidden.speed`` (64-pixel
    units, scaled to ``size``) instead of fresh draws; the generator is consumed exactly as without (the
    draws they replace are made and dropped), so start points, directions and orbits use the same random
    numbers.
    """
    g = generator
    n = batch.shape.shape[0]
    scale = size / 64.0
    if hidden is not None:
        hidden.check(n)
    radius = (6.0 + 3.0 * torch.rand(n, 2, generator=g)) * scale
    if hidden is not None:
        radius = hidden.radius.to(torch.float32) * scale
    lo, hi = radius + 1.0, size - 1.0 - radius
    px = lo + (hi - lo) * torch.rand(n, 2, generator=g)
    py = lo + (hi - lo) * torch.rand(n, 2, generator=g)
    angle = 2 * math.pi * torch.rand(n, 2, generator=g)
    fast = 1.0 + 1.2 * torch.rand(n, 2, generator=g)
    slow = 0.3 + 0.5 * torch.rand(n, 2, generator=g)
    drifting = (batch.motion == MOTIONS.index("drifting")).unsqueeze(-1)
    speed = torch.where(drifting, slow, fast) * scale
    if hidden is not None:
        speed = hidden.speed.to(torch.float32) * scale
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


def background_field(batch: SceneBatch, size: int = FRAME_SIZE,
                     hidden: "HiddenAttributes | None" = None) -> torch.Tensor:
    """The backgrounds of a batch, ``[B, 3, H, W]`` in [0, 1].

    Without ``hidden``: the flat colour, or for a gradient its colour at the top row down to
    :data:`GRADIENT_DARKEN` of it at the bottom row. With ``hidden``: the colour times ``1 - tilt * u``,
    where ``u`` runs linearly from 0 at the brightest corner to 1 at the darkest along the direction
    ``hidden.bg_angle`` (radians, x to the right, y down: pi/2 darkens downwards) and ``tilt`` is
    ``hidden.bg_tilt``; ``u`` is measured at pixel centres, so the corner pixels reach exactly 1 and
    ``1 - tilt`` (a gradient with angle pi/2 and tilt ``1 - GRADIENT_DARKEN`` is the v1 gradient).
    """
    n = batch.shape.shape[0]
    bg = _palette(BACKGROUND_COLOURS)[batch.background].reshape(n, 3, 1, 1)
    if hidden is None:
        ramp = torch.linspace(1.0, GRADIENT_DARKEN, size).reshape(1, 1, size, 1)
        gradient = (batch.style == STYLES.index("gradient")).reshape(n, 1, 1, 1)
        return (bg * torch.where(gradient, ramp, torch.ones_like(ramp))).expand(n, 3, size, size)
    hidden.check(n)
    centres = torch.arange(size, dtype=torch.float32) + 0.5
    cos = torch.cos(hidden.bg_angle.to(torch.float32)).reshape(n, 1, 1)
    sin = torch.sin(hidden.bg_angle.to(torch.float32)).reshape(n, 1, 1)
    proj = cos * centres.reshape(1, 1, size) + sin * centres.reshape(1, size, 1)  # [B, H, W]
    lo = 0.5 * (cos + sin) + (size - 1) * (torch.clamp(cos, max=0) + torch.clamp(sin, max=0))
    extent = (size - 1) * (cos.abs() + sin.abs())
    u = ((proj - lo) / extent.clamp(min=1e-6)).clamp(0.0, 1.0)
    factor = 1.0 - hidden.bg_tilt.to(torch.float32).reshape(n, 1, 1) * u
    return bg * factor.unsqueeze(1)


def render(batch: SceneBatch, traj: Trajectories, size: int = FRAME_SIZE, with_mask: bool = False,
           hidden: "HiddenAttributes | None" = None):
    """Frames ``[B, F, 3, H, W]`` in [0, 1]: the background, then object 0, then object 1 on top.

    With ``with_mask``, also the objects' total coverage ``[B, F, H, W]`` in [0, 1]. With ``hidden``, the
    objects have the colours ``hidden.shade`` and the background is lit as :func:`background_field` says
    (object sizes come from ``traj``: pass the same ``hidden`` to :func:`sample_trajectories`)."""
    n, _, f = traj.x.shape
    if hidden is None:
        bg = _palette(BACKGROUND_COLOURS)[batch.background].reshape(n, 1, 3, 1, 1)
        ramp = torch.linspace(1.0, GRADIENT_DARKEN, size).reshape(1, 1, 1, size, 1)
        gradient = (batch.style == STYLES.index("gradient")).reshape(n, 1, 1, 1, 1)
        frames = bg * torch.where(gradient, ramp, torch.ones_like(ramp))
        colours = _palette(OBJECT_COLOURS)[batch.colour]  # [B, 2, 3]
    else:
        frames = background_field(batch, size, hidden).unsqueeze(1)
        colours = hidden.shade.to(torch.float32) / 255.0
    frames = frames.expand(n, f, 3, size, size).clone()
    coords = torch.arange(size, dtype=torch.float32) + 0.5
    mask = torch.zeros(n, f, size, size)
    for j in range(2):
        dx = coords.reshape(1, 1, 1, size) - traj.x[:, j].reshape(n, f, 1, 1)
        dy = coords.reshape(1, 1, size, 1) - traj.y[:, j].reshape(n, f, 1, 1)
        cov = shape_coverage(batch.shape[:, j].reshape(n, 1, 1, 1), dx, dy, traj.radius[:, j].reshape(n, 1, 1, 1))
        cov = cov * batch.present[:, j].reshape(n, 1, 1, 1)
        col = colours[:, j].reshape(n, 1, 3, 1, 1)
        frames = frames * (1 - cov.unsqueeze(2)) + col * cov.unsqueeze(2)
        mask = torch.maximum(mask, cov)
    return (frames, mask) if with_mask else frames


def scene_clip(scene: Scene, num_frames: int, seed: int = 0, size: int = FRAME_SIZE,
               hidden: "HiddenAttributes | None" = None) -> tuple[torch.Tensor, Trajectories]:
    """One ground-truth clip of ``scene``: frames ``[F, 3, H, W]`` in [0, 1] and its trajectories.

    ``hidden`` (one clip's :class:`HiddenAttributes`, e.g. ``sample_hidden(SceneBatch.of([scene]), g)``)
    renders it in the world with hidden attributes; without, it is the v1 world."""
    g = torch.Generator().manual_seed(seed)
    batch = SceneBatch.of([scene])
    traj = sample_trajectories(batch, num_frames, g, size, hidden=hidden)
    return render(batch, traj, size, hidden=hidden)[0], traj


def batch_tokens(batch: SceneBatch) -> torch.Tensor:
    """:meth:`Scene.tokens` of every scene of a batch, ``[B, 7]`` long."""
    absent = torch.tensor([len(SHAPES) + 1, len(OBJECT_COLOURS) + 1])
    objs = []
    for j in range(2):
        pair = torch.stack([batch.shape[:, j] + 1, batch.colour[:, j] + 1], dim=1)
        objs.append(torch.where(batch.present[:, j:j + 1], pair, absent))
    rest = torch.stack([batch.motion + 1, batch.background + 1, batch.style + 1], dim=1)
    return torch.cat(objs + [rest], dim=1)


@dataclass
class WorldBatch:
    """A batch of clips of the world with everything known about them (:func:`world_batch`)."""

    scenes: SceneBatch
    hidden: HiddenAttributes | None
    """``None`` for the v1 world."""
    trajectories: Trajectories
    frames: torch.Tensor
    """``[B, F, 3, H, W]`` in [0, 1]."""
    mask: torch.Tensor
    """``[B, F, H, W]`` the objects' coverage in [0, 1]."""

    @property
    def tokens(self) -> torch.Tensor:
        """The prompt codes ``[B, 7]`` (:func:`batch_tokens`)."""
        return batch_tokens(self.scenes)


def world_batch(n: int, frames: int, generator: torch.Generator, size: int = FRAME_SIZE,
                two_objects: float = 0.25, hidden: bool = True) -> WorldBatch:
    """``n`` random clips of ``frames`` frames for training, all drawn from ``generator``: scenes
    (:func:`sample_scenes`), hidden attributes (:func:`sample_hidden`, with ``hidden``), trajectories,
    frames and object masks. With ``hidden=False`` it is the v1 world, exactly the clips the v1 trainer
    drew from the same generator."""
    scenes = sample_scenes(n, generator, two_objects)
    attrs = sample_hidden(scenes, generator) if hidden else None
    traj = sample_trajectories(scenes, frames, generator, size, hidden=attrs)
    clips, mask = render(scenes, traj, size, with_mask=True, hidden=attrs)
    return WorldBatch(scenes, attrs, traj, clips, mask)
