"""Consistency metrics for the shapes world, measured on decoded RGB frames alone.

Given frames (``uint8 [N, H, W, 3]``, any size, typically after an H.264 yuv420p round trip) and the
:class:`~miga.worlds.shapes.Scene` each frame should show, this module finds every requested object by
its palette colour and reports, per frame and per object:

* **presence**: the largest 8-connected blob of pixels of the object's colour (two blobs for two objects
  of one colour) has an object's size (:func:`area_limits`);
* **shape**: circle / square / triangle from two scale-free features of the blob (row skewness picks
  out the upward triangle, the diagonal-to-axis extent ratio the axis-aligned square), kept only if the
  blob also matches that kind's template from the world itself (:func:`~miga.worlds.shapes.shape_coverage`,
  IoU); see :func:`classify_shape`;
* **centroid** in pixels (pixel centres at ``+0.5``, as :class:`~miga.worlds.shapes.Trajectories`);
* whether it **touches** the other object (then its shape is not judged and its centroid not followed);

and, per video, the fraction of frames with each object present / present with the right shape, the
centroid jumps between consecutive frames and two background numbers: how much the background changes
from frame to frame and how far it is from the background the scene asks for.

Sizes scale with the frame: every length below is given for 64-pixel frames
(:data:`~miga.worlds.shapes.FRAME_SIZE`) and multiplied by ``min(H, W) / 64``; areas by its square.
Jumps are also reported "relative", i.e. divided by ``min(H, W)``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Sequence

import numpy as np
import torch

from miga.worlds.shapes import (BACKGROUND_COLOURS, FRAME_SIZE, GRADIENT_DARKEN, OBJECT_COLOURS, SHAPES, Scene,
                                shape_coverage)

COLOUR_TOLERANCE = 60.0
"""A pixel has an object's colour if its RGB distance (Euclidean, 0-255 units) to the palette colour is at
most this, and the palette colour is the nearest of all object colours and of the background the scene
expects at that pixel. After an H.264 (yuv420p, crf 18) round trip the interior pixels of a ground-truth
object sit within about 10 of their colour (90 % within about 50: 2x2 chroma subsampling blurs a pixel
or two along the edges), while the closest two object colours (yellow and orange) are 81 apart and every
object colour is at least 90 from every background it may appear on, gradients included."""

MIN_RADIUS, MAX_RADIUS = 6.0, 9.0
"""The world's object radii at 64-pixel frames (:func:`~miga.worlds.shapes.sample_trajectories`)."""

MIN_AREA_FRACTION = 0.4
"""An object is present if its colour's blob covers at least this fraction of the smallest object (a
triangle of radius 6: 57 px at 64 px, so 23 px), whatever shape was asked for (the shape is judged
separately). The colour mask loses the anti-aliased edge and, after H.264, a chroma-blurred rim: a
ground-truth triangle keeps 61-79 % of its area, a circle 73-86 %; 0.4 also lets an object that another
partly hides count."""

MAX_AREA_FACTOR = 3.0
"""... and at most this many times the largest object (a circle of radius 9: 254 px at 64 px, so 763 px,
a fifth of the frame): a blob that floods the frame is not the object."""

TRIANGLE_SKEW = -0.2
"""A blob whose row skewness (:func:`shape_features`) is below this is a triangle. A perfect upward triangle
has -0.57; ground-truth triangles after an H.264 round trip measure -0.80 to -0.29, circles and squares
-0.08 to +0.09."""

SQUARE_DIAGONAL = 1.19
"""A blob (not a triangle) whose diagonal-to-axis extent ratio (:func:`shape_features`) is above this is a
square: sqrt 2 = 1.41 for a perfect square, 1.0 for a disc. The colour mask of a 64-px square after an H.264
round trip loses its corners to chroma blur and measures 1.22-1.39; circles measure 0.95-1.16."""

SHAPE_MIN_IOU = 0.5
"""... and the kind so found is kept only if the blob's IoU with that kind's template (:func:`template_iou`)
is at least this; otherwise the shape is unrecognised (``None``). Ground-truth objects after an H.264
round trip score 0.8-0.95 with their own template; a formless or fragmented blob scores much lower."""

BACKGROUND_MARGIN = 2.0
"""Background pixels are those farther than :data:`COLOUR_TOLERANCE` from every object colour of the
scene, and more than this many pixels (at 64 px) away from any pixel that is not: the anti-aliased and
chroma-blurred rim of an object is neither object nor background."""

TOUCH_MARGIN = 3.0
"""Two objects' blobs closer than this (pixels at 64 px) touch (:attr:`ObjectObservation.touching`): where
two objects meet, chroma blur leaves a rim of mixed colour about two pixels wide that belongs to neither."""

_UNIT_AREA = {"circle": math.pi, "square": 1.7 ** 2, "triangle": 3 * math.sqrt(3) / 4 * 1.1 ** 2}
"""Area of each template per squared radius (:func:`~miga.worlds.shapes.shape_coverage`)."""
_SCALES = (0.9, 1.0, 1.1)
"""Template radii tried around the area-matched one (the colour mask is a little smaller than the shape)."""
_OBJECT_PALETTE = np.array(list(OBJECT_COLOURS.values()), np.float32)
_OBJECT_NAMES = list(OBJECT_COLOURS)


@dataclass
class ObjectObservation:
    """One requested object in one frame."""

    colour: str
    shape: str
    present: bool
    area: float
    """Pixels in the object's blob (0 when none)."""
    found_shape: str | None
    """The recognised shape kind, ``None`` if none was recognised or the object is absent."""
    shape_evidence: dict[str, float]
    """What :func:`classify_shape` measured on the blob (empty when absent)."""
    centroid: tuple[float, float] | None
    """``(x, y)`` in pixels, ``None`` when absent."""
    touching: bool = False
    """The blob touches (or is) another requested object's blob: one may hide part of the other, so the
    shape is not judged in this frame."""

    @property
    def shape_ok(self) -> bool:
        """Present with the requested shape."""
        return self.present and self.found_shape == self.shape

    @property
    def shape_judged(self) -> bool:
        """Whether this frame counts towards shape accuracy: the object is absent (a failure) or present
        and clear of the other objects."""
        return not (self.present and self.touching)


@dataclass
class FrameMetrics:
    """Everything measured on one frame."""

    index: int
    scene: str
    objects: list[ObjectObservation]
    background_error: float | None
    """Mean absolute difference in [0, 1] between the background pixels and the expected background."""
    background_change: float | None
    """Mean absolute difference in [0, 1] over pixels that are background here and in the previous frame
    (``None`` for the first frame)."""


@dataclass
class WorldMetrics:
    """Per-frame measurements and a per-video summary (see :func:`evaluate_frames`)."""

    frames: list[FrameMetrics]
    summary: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        """Plain JSON-able data: the summary and per-frame lists."""
        per_frame = []
        for f in self.frames:
            objs = []
            for o in f.objects:
                d = asdict(o)
                d["shape_ok"] = o.shape_ok
                d["centroid"] = list(o.centroid) if o.centroid is not None else None
                objs.append(d)
            per_frame.append({"index": f.index, "scene": f.scene, "objects": objs,
                              "background_error": f.background_error, "background_change": f.background_change})
        return {"summary": self.summary, "frames": per_frame}


# ----------------------------------------------------------------------------------------------------
# image helpers


def expected_background(scene: Scene, height: int, width: int) -> np.ndarray:
    """The background ``scene`` asks for, float RGB in [0, 1], ``[H, W, 3]`` (a gradient is sampled at the
    64-pixel rows, interpolated for other heights)."""
    colour = np.array(BACKGROUND_COLOURS[scene.background], np.float32) / 255.0
    if scene.style == "gradient":
        u = np.clip(((np.arange(height) + 0.5) * FRAME_SIZE / height - 0.5) / (FRAME_SIZE - 1), 0.0, 1.0)
        ramp = (1.0 - (1.0 - GRADIENT_DARKEN) * u).astype(np.float32)
    else:
        ramp = np.ones(height, np.float32)
    return np.broadcast_to(ramp[:, None, None] * colour, (height, width, 3))


def _dilate(mask: np.ndarray, radius: int) -> np.ndarray:
    """Binary dilation by a (2 radius + 1)-pixel square (a copy for radius <= 0)."""
    if radius <= 0:
        return mask.copy()
    h, w = mask.shape
    padded = np.pad(mask, radius)
    rows = np.zeros((h + 2 * radius, w), bool)
    for k in range(2 * radius + 1):
        rows |= padded[:, k:k + w]
    out = np.zeros((h, w), bool)
    for k in range(2 * radius + 1):
        out |= rows[k:k + h]
    return out


def components(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """8-connected components of a boolean mask: ``(labels [H, W]`` with -1 outside the mask and 0..K-1
    inside, ``areas [K])``, largest component first."""
    h, w = mask.shape
    if not mask.any():
        return np.full((h, w), -1, np.int64), np.zeros(0, np.int64)
    big = h * w
    lab = np.where(mask, np.arange(big).reshape(h, w), big)
    while True:  # min-label propagation with pointer jumping
        p = np.pad(lab, 1, constant_values=big)
        new = lab.copy()
        for dy in (0, 1, 2):
            for dx in (0, 1, 2):
                np.minimum(new, p[dy:dy + h, dx:dx + w], out=new)
        new[~mask] = big
        flat = new.ravel()
        inside = flat < big
        for _ in range(3):
            flat[inside] = flat[flat[inside]]
        if np.array_equal(new, lab):
            break
        lab = new
    roots, inverse, counts = np.unique(lab[mask], return_inverse=True, return_counts=True)
    order = np.argsort(-counts, kind="stable")
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    labels = np.full((h, w), -1, np.int64)
    labels[mask] = rank[inverse]
    return labels, counts[order]


def shape_features(mask: np.ndarray) -> dict[str, float]:
    """Scale-free features of a blob (boolean mask): ``fill`` (area / bounding box), ``diagonal``
    (mean extent along the two diagonals / mean extent along the axes: 1 for a disc, sqrt 2 for an
    axis-aligned square) and ``skew_y`` (skewness of the rows: 0 for a disc or a square, -0.57 for an
    upward triangle, whose rows widen downwards)."""
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        return {"fill": 0.0, "diagonal": 0.0, "skew_y": 0.0}
    fill = len(xs) / ((np.ptp(xs) + 1) * (np.ptp(ys) + 1))
    dx, dy = xs - xs.mean(), ys - ys.mean()
    axes = np.ptp(dx) + np.ptp(dy) + 2
    diagonal = (np.ptp(dx + dy) + np.ptp(dx - dy)) / math.sqrt(2) + 2
    var = (dy ** 2).mean()
    skew = float((dy ** 3).mean() / var ** 1.5) if var > 0 else 0.0
    return {"fill": round(float(fill), 4), "diagonal": round(float(diagonal / axes), 4), "skew_y": round(skew, 4)}


def template_iou(mask: np.ndarray, shape: str) -> float:
    """IoU of a blob with the world's template of ``shape`` (:func:`~miga.worlds.shapes.shape_coverage` >=
    0.5) centred on the blob's centroid, with the radius that matches the blob's area (the best of
    :data:`_SCALES` times it)."""
    ys, xs = np.nonzero(mask)
    area = len(xs)
    if area == 0:
        return 0.0
    cx, cy = xs.mean() + 0.5, ys.mean() + 0.5
    r0 = math.sqrt(area / _UNIT_AREA[shape])
    reach = 1.3 * r0 * max(_SCALES) + 2
    x0, x1 = max(int(cx - reach), 0), min(int(cx + reach) + 1, mask.shape[1])
    y0, y1 = max(int(cy - reach), 0), min(int(cy + reach) + 1, mask.shape[0])
    crop = torch.from_numpy(np.ascontiguousarray(mask[y0:y1, x0:x1]))
    outside = area - int(crop.sum())  # blob pixels beyond the crop (an elongated blob)
    dx = (torch.arange(x0, x1, dtype=torch.float32) + 0.5 - cx).reshape(1, -1)
    dy = (torch.arange(y0, y1, dtype=torch.float32) + 0.5 - cy).reshape(-1, 1)
    best = 0.0
    for scale in _SCALES:
        template = shape_coverage(torch.tensor(SHAPES.index(shape)), dx, dy, torch.tensor(r0 * scale)) >= 0.5
        union = int((template | crop).sum()) + outside
        best = max(best, int((template & crop).sum()) / union)
    return round(best, 4)


def classify_shape(mask: np.ndarray) -> tuple[str | None, dict[str, float]]:
    """The shape kind of a blob (boolean mask, any size) and the numbers behind it.

    A blob whose rows are skewed like an upward triangle's (``skew_y`` < :data:`TRIANGLE_SKEW`) is a
    triangle; otherwise one that reaches farther along the diagonals than along the axes (``diagonal`` >
    :data:`SQUARE_DIAGONAL`) is a square, else a circle. The kind is kept only if the blob also matches
    that kind's template (:func:`template_iou` >= :data:`SHAPE_MIN_IOU`), so a formless blob is ``None``.
    Returns ``(kind or None, features and the IoU with each kind's template)``.
    """
    feats = shape_features(mask)
    if not mask.any():
        return None, feats
    ious = {f"iou_{name}": template_iou(mask, name) for name in SHAPES}
    if feats["skew_y"] < TRIANGLE_SKEW:
        kind = "triangle"
    elif feats["diagonal"] > SQUARE_DIAGONAL:
        kind = "square"
    else:
        kind = "circle"
    return (kind if ious[f"iou_{kind}"] >= SHAPE_MIN_IOU else None), {**feats, **ious}


def colour_masks(frame: np.ndarray, colours: Sequence[str], background: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """For each object colour name, the pixels of ``frame`` (``uint8 [H, W, 3]``) that have that colour:
    within :data:`COLOUR_TOLERANCE` and nearer to it than to any other object colour and than to
    ``background`` (expected background, float ``[H, W, 3]`` in [0, 1]) at that pixel."""
    pix = frame.astype(np.float32)
    dist = np.sqrt(((pix[:, :, None, :] - _OBJECT_PALETTE) ** 2).sum(-1))  # [H, W, 8]
    nearest = dist.argmin(-1)
    if background is not None:
        bg_dist = np.sqrt(((pix - background * 255.0) ** 2).sum(-1))
    out = {}
    for name in colours:
        k = _OBJECT_NAMES.index(name)
        m = (nearest == k) & (dist[..., k] <= COLOUR_TOLERANCE)
        if background is not None:
            m &= dist[..., k] < bg_dist
        out[name] = m
    return out


# ----------------------------------------------------------------------------------------------------
# per frame


def area_limits(height: int, width: int) -> tuple[float, float]:
    """The smallest and largest blob (pixels) that counts as an object in ``height x width`` frames:
    :data:`MIN_AREA_FRACTION` of the smallest object (a triangle of the smallest radius) and
    :data:`MAX_AREA_FACTOR` times the largest (a circle of the largest radius)."""
    scale2 = (min(height, width) / FRAME_SIZE) ** 2
    smallest = min(_UNIT_AREA.values()) * MIN_RADIUS ** 2 * scale2
    largest = max(_UNIT_AREA.values()) * MAX_RADIUS ** 2 * scale2
    return MIN_AREA_FRACTION * smallest, MAX_AREA_FACTOR * largest


def observe_frame(frame: np.ndarray, scene: Scene) -> tuple[list[ObjectObservation], np.ndarray]:
    """Find ``scene``'s objects in one ``uint8 [H, W, 3]`` frame; also returns the frame's background mask."""
    h, w = frame.shape[:2]
    scale = min(h, w) / FRAME_SIZE
    lo, hi = area_limits(h, w)
    colours = list(dict.fromkeys(c for c, _ in scene.objects))
    masks = colour_masks(frame, colours, expected_background(scene, h, w))
    observations: list[ObjectObservation | None] = [None] * len(scene.objects)
    blob_masks: dict[int, np.ndarray] = {}
    for colour in colours:
        wanted = [j for j, (c, _) in enumerate(scene.objects) if c == colour]
        labels, areas = components(masks[colour])
        # the k largest blobs for the k objects of this colour; with two, the better shape match pairs them
        blobs = []
        for b in range(min(len(wanted), len(areas))):
            blob = labels == b
            kind, evidence = classify_shape(blob)
            ys, xs = np.nonzero(blob)
            blobs.append((int(areas[b]), kind, evidence, (float(xs.mean() + 0.5), float(ys.mean() + 0.5)), blob))
        if len(wanted) == 2 and len(blobs) == 2:
            s0, s1 = (scene.objects[j][1] for j in wanted)
            straight = (blobs[0][1] == s0) + (blobs[1][1] == s1)
            swapped = (blobs[1][1] == s0) + (blobs[0][1] == s1)
            if swapped > straight:
                blobs.reverse()
        elif len(wanted) == 2 and len(blobs) == 1:  # merged or one missing: both objects see the one blob
            blobs = blobs * 2
        for i, j in enumerate(wanted):
            shape = scene.objects[j][1]
            if i < len(blobs) and lo <= blobs[i][0] <= hi:
                area, kind, evidence, centroid, blob_masks[j] = blobs[i]
                observations[j] = ObjectObservation(colour, shape, True, float(area), kind, evidence, centroid)
            else:
                area = float(blobs[i][0]) if i < len(blobs) else 0.0
                observations[j] = ObjectObservation(colour, shape, False, area, None, {}, None)
    margin = max(1, round(BACKGROUND_MARGIN * scale))
    if len(blob_masks) == 2:
        grown = _dilate(blob_masks[0], max(1, round(TOUCH_MARGIN * scale)))
        if (grown & blob_masks[1]).any():
            observations[0].touching = observations[1].touching = True
    near = np.zeros((h, w), bool)
    pix = frame.astype(np.float32)
    for colour in colours:
        near |= ((pix - np.array(OBJECT_COLOURS[colour], np.float32)) ** 2).sum(-1) <= COLOUR_TOLERANCE ** 2
    background = ~_dilate(near, margin)
    return observations, background  # type: ignore[return-value]


# ----------------------------------------------------------------------------------------------------
# per video


def _stats(values: list[float]) -> tuple[float | None, float | None]:
    return (float(np.mean(values)), float(np.max(values))) if values else (None, None)


def _rates(counts: dict) -> dict:
    return {"presence": counts["present"] / counts["frames"] if counts["frames"] else 0.0,
            "shape_accuracy": counts["shape_ok"] / counts["judged"] if counts["judged"] else None,
            "shape_given_present": counts["shape_ok"] / counts["clear"] if counts["clear"] else None,
            "shape_frames": counts["judged"]}


def _jumps(mean: float | None, biggest: float | None, size: int) -> dict:
    return {"jump_mean_px": mean, "jump_max_px": biggest,
            "jump_mean_rel": mean / size if mean is not None else None,
            "jump_max_rel": biggest / size if biggest is not None else None}


def evaluate_frames(frames: np.ndarray, scenes: Scene | Sequence[Scene]) -> WorldMetrics:
    """Measure a video against the scene(s) it should show.

    Args:
        frames: ``uint8 [N, H, W, 3]`` RGB (or a sequence of ``[H, W, 3]`` frames).
        scenes: one :class:`Scene` for every frame, or a sequence of N scenes (the prompt in force at each
            frame).

    Returns a :class:`WorldMetrics` whose ``summary`` holds, over the video (``objects``: the same for
    each requested object, followed by colour and shape, so across a prompt change that keeps it):

    * ``presence``: fraction of (frame, requested object) pairs where the object is present in its colour;
    * ``shape_accuracy``: fraction of pairs where it is present with the right shape, out of
      ``shape_frames`` pairs: all but those where the object is present but touches another requested
      object (:attr:`ObjectObservation.touching`: it may be partly hidden); absent counts as wrong;
    * ``shape_given_present``: the same among pairs where the object is present and clear;
    * ``jump_mean_px`` / ``jump_max_px``: centroid displacement between consecutive frames where an object
      is requested, present and clear of the other object in both (``jumps`` such pairs; where two objects
      touch, one may hide part of the other, or two of one colour merge, and the centroid moves with
      that), and ``jump_mean_rel`` / ``jump_max_rel``,
      the same divided by ``min(H, W)``;
    * ``background_change`` / ``background_change_max`` and ``background_error``: the mean (max) of the
      per-frame values of :class:`FrameMetrics`.
    """
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"frames must be uint8 [N, H, W, 3], got {frames.dtype} {frames.shape}")
    n, h, w = frames.shape[:3]
    if isinstance(scenes, Scene):
        scenes = [scenes] * n
    scenes = list(scenes)
    if len(scenes) != n:
        raise ValueError(f"{n} frames but {len(scenes)} scenes")
    size = min(h, w)
    results: list[FrameMetrics] = []
    per_object: dict[tuple[str, str, int], dict] = {}
    prev_bg = prev_keys = None
    jumps_px: list[float] = []
    for t in range(n):
        frame, scene = frames[t], scenes[t]
        observations, bg = observe_frame(frame, scene)
        pix = frame.astype(np.float32) / 255.0
        err = float(np.abs(pix - expected_background(scene, h, w))[bg].mean()) if bg.any() else None
        change = None
        if prev_bg is not None:
            both = bg & prev_bg
            if both.any():
                change = float(np.abs(pix - frames[t - 1].astype(np.float32) / 255.0)[both].mean())
        keys = {}
        for j, o in enumerate(observations):
            key = (o.colour, o.shape, sum(1 for c, s in scene.objects[:j] if (c, s) == (o.colour, o.shape)))
            keys[key] = o
            rec = per_object.setdefault(key, {"frames": 0, "present": 0, "judged": 0, "clear": 0, "shape_ok": 0,
                                              "jumps": []})
            rec["frames"] += 1
            rec["present"] += o.present
            rec["judged"] += o.shape_judged
            rec["clear"] += o.present and o.shape_judged
            rec["shape_ok"] += o.shape_ok and o.shape_judged
            before = prev_keys.get(key) if prev_keys else None
            if o.present and not o.touching and before is not None and before.present and not before.touching:
                jump = math.dist(o.centroid, before.centroid)
                rec["jumps"].append(jump)
                jumps_px.append(jump)
        results.append(FrameMetrics(t, scene.text, observations, err, change))
        prev_bg, prev_keys = bg, keys
    jm, jx = _stats(jumps_px)
    changes = [f.background_change for f in results if f.background_change is not None]
    errors = [f.background_error for f in results if f.background_error is not None]
    total = {k: sum(r[k] for r in per_object.values()) for k in ("frames", "present", "judged", "clear", "shape_ok")}
    summary = {"frames": n, "height": h, "width": w, **_rates(total),
               "jumps": len(jumps_px), **_jumps(jm, jx, size),
               "background_change": float(np.mean(changes)) if changes else None,
               "background_change_max": float(np.max(changes)) if changes else None,
               "background_error": float(np.mean(errors)) if errors else None,
               "objects": [{"object": f"{colour} {shape}", "frames": r["frames"], **_rates(r),
                            "jumps": len(r["jumps"]), **_jumps(*_stats(r["jumps"]), size)}
                           for (colour, shape, _), r in per_object.items()]}
    return WorldMetrics(results, summary)


def scene_frames(frames: torch.Tensor) -> np.ndarray:
    """Rendered ``[F, 3, H, W]`` float frames in [0, 1] (e.g. :func:`~miga.worlds.shapes.scene_clip`) as the
    ``uint8 [F, H, W, 3]`` frames a video holds."""
    return (frames.clamp(0, 1).permute(0, 2, 3, 1).numpy() * 255.0).round().astype(np.uint8)
