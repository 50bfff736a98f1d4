"""Hidden attributes of the shapes world estimated from decoded frames, and identity drift over a long video.

The world with hidden attributes (:class:`~miga.worlds.shapes.HiddenAttributes`) gives every clip an
identity its prompt does not name: each object's radius, exact shade and speed, and the lighting of the
background (the direction a gradient darkens towards; the direction and strength of a plain background's
gentle tilt). A true clip keeps them for its whole length; a long video made by a model may not.

:func:`estimate_attributes` measures them on every frame of ``uint8 [F, H, W, 3]`` frames (any size,
lengths reported at 64-pixel scale) given the :class:`~miga.worlds.shapes.Scene` the prompt asks for:

* objects are found as in :mod:`miga.worlds.metrics` (the largest blobs of their palette colour);
* **background**: a least-squares plane per RGB channel over the background pixels (the world's
  backgrounds are exactly such planes); the direction in which its luma falls is the angle,
  ``1 - darkest / brightest`` luma over the frame's corner pixels the tilt;
* **shade**: the per-channel median RGB of the object's interior (its colour blob less a one-pixel rim;
  the median shrugs off the codec's ringing inside small objects);
* **radius**: from the object's area, measured as a soft coverage: every pixel near the blob is split
  between the estimated shade and the fitted background (its projection on the line between them), so
  anti-aliased and codec-blurred edges count for what they hold; the area gives the radius through the
  shape's area per squared radius (the world's templates, :func:`~miga.worlds.shapes.shape_coverage`);
* **speed**: the median length of the coverage centroid's steps between consecutive frames in a window
  of :data:`SPEED_STEPS` steps around the frame (a median of short steps follows bounces and orbits).

Object attributes are not measured while two objects touch (one may hide the other), and the
background angle and tilt are not measured on a background too dark for its tilt to show
(:func:`background_measurable`).

:func:`identity_drift` compares, per video, each attribute's estimate in a window at distance ``d`` from
the start with its estimate over the first frames, for ``d`` in :data:`DISTANCES`, normalised by the
attribute's spread in the world's prior (:func:`prior_spread`), and does the same on a true world clip of
the same scene and length with the hidden attributes the video starts with (:func:`true_world_clip`), so
that a report can show what a true sample of the world gives. Everything it returns is JSON-ready.
"""

from __future__ import annotations

import copy
import functools
import math
import os
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from miga.worlds.metrics import (COLOUR_TOLERANCE, _dilate, area_limits, classify_shape, colour_masks,
                                 components, expected_background, scene_frames)
from miga.worlds.shapes import (BACKGROUND_COLOURS, FRAME_SIZE, GRADIENT_ANGLE_RANGE, GRADIENT_DARKEN,
                                OBJECT_COLOURS, PLAIN_TILT_RANGE, RADIUS_RANGE, SHADE_RADIUS, SPEED_RANGES,
                                HiddenAttributes, Scene, SceneBatch, render, sample_hidden,
                                sample_trajectories)

DISTANCES = (64, 128, 256, 512, 1024)
"""Frame distances at which :func:`identity_drift` reports drift (those the video is long enough for)."""
REFERENCE_FRAMES = 16
"""The identity a video starts with: its estimates over this many first frames (one native window)."""
WINDOW = 16
"""Drift at distance d averages the frames ``d - WINDOW/2 .. d + WINDOW/2 - 1`` (those that exist)."""
MIN_MEASURED = 4
"""An attribute's drift (and its identity) is reported only from at least this many frames where it was
measured: a frame or two between two spells of touching objects is often the edge of an occlusion."""
TRUE_WORLD_TRIES = 8
"""Motion seeds tried for the true-world reference clip of :func:`identity_drift` (see :func:`_true_world_start`)."""
SPEED_STEPS = 5
"""Speed at frame t: the median centroid step over the steps ``t-2 -> t-1 .. t+2 -> t+3`` (those measured;
at least 3)."""
BACKGROUND_MIN_DROP = 5.0
"""The background's angle and tilt are measured only if the scene's background loses at least this much
(mean RGB level, 0-255) across the frame at the weakest tilt of the prior: all backgrounds but plain black
(a 10 % tilt of (15, 15, 20) is under 2 levels, lost in 8-bit rounding and any codec)."""
INTERIOR_ERODE = 1.0
"""Pixels (at 64 px) taken off a blob's rim before its mean colour is the shade: the rim mixes the object
with the background (anti-aliasing, chroma subsampling)."""
COVERAGE_REACH = 3.0
"""Pixels (at 64 px) around a blob whose soft coverage counts towards the object's area: the
anti-aliased edge is one pixel wide and a codec blurs colour over about two more. Two objects whose
reaches meet touch."""
_UNIT_AREA = {"circle": math.pi, "square": 1.7 ** 2, "triangle": 3 * math.sqrt(3) / 4 * 1.1 ** 2}
"""Area of each shape per squared radius (:func:`~miga.worlds.shapes.shape_coverage`: a disc of radius r, a
square of half-side 0.85 r, an equilateral triangle inscribed in the circle of radius 1.1 r)."""
_PRIOR_SAMPLES = 4096
_LUMA = np.array([0.299, 0.587, 0.114])
"""BT.601 luma weights: codecs keep luma at full resolution and quantise it most finely."""


# ----------------------------------------------------------------------------------------------------
# small image helpers


def _erode(mask: np.ndarray, radius: int) -> np.ndarray:
    return ~_dilate(~mask, radius) if radius > 0 else mask.copy()


def background_measurable(scene: Scene) -> bool:
    """Whether the background's angle and tilt show in ``scene`` (:data:`BACKGROUND_MIN_DROP`)."""
    level = float(np.mean(BACKGROUND_COLOURS[scene.background]))
    weakest = 1.0 - GRADIENT_DARKEN if scene.style == "gradient" else PLAIN_TILT_RANGE[0]
    return level * weakest >= BACKGROUND_MIN_DROP


def _nanmedian(x: np.ndarray) -> np.ndarray:
    """Median over the last axis ignoring NaN; NaN where a row has no finite value."""
    out = np.full(x.shape[:-1], np.nan)
    for idx in np.ndindex(*x.shape[:-1]):
        row = x[idx][np.isfinite(x[idx])]
        if len(row):
            out[idx] = np.median(row)
    return out


def _wrap(angle: np.ndarray) -> np.ndarray:
    """Angles in radians wrapped to (-pi, pi]."""
    return -(np.remainder(-np.asarray(angle) + math.pi, 2 * math.pi) - math.pi)


# ----------------------------------------------------------------------------------------------------
# per-frame estimates


@dataclass
class AttributeTrack:
    """Per-frame estimates of a video's hidden attributes (NaN where not measured). Object arrays are
    indexed by the scene's objects ``j``; lengths are in pixels at 64-pixel frames, shades in 0-255
    levels, angles in radians (x right, y down)."""

    scene: Scene
    size: int
    """``min(H, W)`` of the frames."""
    present: np.ndarray
    """``[J, F]`` bool: the object's blob was found with an object's size (and, for two objects of one
    colour, told apart from the other's)."""
    clear: np.ndarray
    """``[J, F]`` bool: present and not touching the other object (radius and centroid measured)."""
    radius: np.ndarray
    """``[J, F]``."""
    shade: np.ndarray
    """``[J, F, 3]`` (measured where ``clear``)."""
    centroid: np.ndarray
    """``[J, F, 2]`` ``(x, y)`` of the soft coverage, pixel centres at +0.5."""
    speed: np.ndarray
    """``[J, F]`` pixels per frame."""
    bg_angle: np.ndarray
    """``[F]`` direction the background's luma falls towards (NaN unless :func:`background_measurable`)."""
    bg_tilt: np.ndarray
    """``[F]`` ``1 - darkest / brightest`` luma over the corner pixels of the fitted background (likewise)."""
    bg_level: np.ndarray
    """``[F]`` luma (0-255) of the fitted background at its brightest corner."""

    @property
    def frames(self) -> int:
        return self.radius.shape[1]

    def centre(self, start: int = 0, stop: int | None = None) -> dict:
        """Robust values over frames ``start .. stop - 1``: the median of each attribute (per channel for
        the shade; the circular mean for the angle); NaN where never measured. Keys: ``radius``,
        ``speed`` (lists over objects), ``shade`` (list of RGB lists), ``bg_angle``, ``bg_tilt``."""
        sl = slice(start, stop)
        radius = _nanmedian(self.radius[:, sl])
        speed = _nanmedian(self.speed[:, sl])
        shade = np.stack([_nanmedian(self.shade[:, sl, c]) for c in range(3)], -1)
        tilt = float(_nanmedian(self.bg_tilt[None, sl])[0])
        a = self.bg_angle[sl]
        a = a[np.isfinite(a)]
        angle = float(math.atan2(np.sin(a).mean(), np.cos(a).mean())) if len(a) else float("nan")
        return {"radius": radius.tolist(), "speed": speed.tolist(), "shade": shade.tolist(),
                "bg_angle": angle, "bg_tilt": tilt}

    def to_dict(self) -> dict:
        """Per-frame lists (``None`` where not measured)."""
        out = {"scene": self.scene.text, "size": self.size, "frames": self.frames}
        for name in ("radius", "speed", "shade", "centroid", "bg_angle", "bg_tilt", "bg_level"):
            values = np.round(getattr(self, name).astype(np.float64), 5)
            out[name] = np.where(np.isfinite(values), values, None).tolist()
        out["present"] = self.present.tolist()
        out["clear"] = self.clear.tolist()
        return out


def _assign(blobs: list, wanted: list[int], scene: Scene, previous: np.ndarray) -> list:
    """Pair two blobs of one colour with the two objects of that colour: by recognised shape where the
    shapes differ, else (or on a tie) by nearness to the objects' previous centroids."""
    if len(blobs) != 2:
        return blobs
    s0, s1 = (scene.objects[j][1] for j in wanted)
    if s0 != s1:
        kinds = [classify_shape(b)[0] for b in blobs]
        straight = (kinds[0] == s0) + (kinds[1] == s1)
        swapped = (kinds[1] == s0) + (kinds[0] == s1)
        if swapped != straight:
            return blobs[::-1] if swapped > straight else blobs
    prev = previous[wanted]
    if np.isfinite(prev).all():
        cents = []
        for b in blobs:
            ys, xs = np.nonzero(b)
            cents.append(np.array([xs.mean() + 0.5, ys.mean() + 0.5]))
        straight = np.linalg.norm(cents[0] - prev[0]) + np.linalg.norm(cents[1] - prev[1])
        swapped = np.linalg.norm(cents[1] - prev[0]) + np.linalg.norm(cents[0] - prev[1])
        if swapped < straight:
            return blobs[::-1]
    return blobs


def _estimate_frame(frame: np.ndarray, scene: Scene, previous: np.ndarray, measure_bg: bool):
    """Estimates on one ``uint8 [H, W, 3]`` frame: per object (present, clear, radius, shade [3],
    centroid [2]) and the background (angle, tilt, level)."""
    h, w = frame.shape[:2]
    scale = min(h, w) / FRAME_SIZE
    lo, hi = area_limits(h, w)
    pix = frame.astype(np.float32)
    n_obj = len(scene.objects)
    colours = list(dict.fromkeys(c for c, _ in scene.objects))
    masks = colour_masks(frame, colours, expected_background(scene, h, w))
    blobs: list[np.ndarray | None] = [None] * n_obj
    for colour in colours:
        wanted = [j for j, (c, _) in enumerate(scene.objects) if c == colour]
        labels, areas = components(masks[colour])
        found = [labels == b for b in range(min(len(wanted), len(areas))) if lo <= areas[b] <= hi]
        if len(wanted) == 2 and len(found) < 2:
            continue  # merged (or one missing): which object is which is unknown
        for j, blob in zip(wanted, _assign(found, wanted, scene, previous)):
            blobs[j] = blob
    # background: pixels far from every object colour of the scene and from the blobs, plane fit per channel
    near = np.zeros((h, w), bool)
    for colour in colours:
        near |= ((pix - np.array(OBJECT_COLOURS[colour], np.float32)) ** 2).sum(-1) <= COLOUR_TOLERANCE ** 2
    for blob in blobs:
        if blob is not None:
            near |= blob
    bg = ~_dilate(near, max(1, round(2.0 * scale)))
    xs = (np.arange(w, dtype=np.float64) + 0.5) / w - 0.5
    ys = (np.arange(h, dtype=np.float64) + 0.5) / h - 0.5
    design = np.stack([np.ones((h, w)), np.broadcast_to(xs, (h, w)), np.broadcast_to(ys[:, None], (h, w))], -1)
    if bg.sum() >= 16:
        coef, *_ = np.linalg.lstsq(design[bg], pix[bg].astype(np.float64), rcond=None)  # [3 terms, 3 channels]
    else:
        coef = np.zeros((3, 3))
        coef[0] = np.median(pix.reshape(-1, 3), axis=0)
    field = (design @ coef).astype(np.float32)  # [H, W, 3]
    lum = coef @ _LUMA  # luma plane: level, slope along x, slope along y (per frame width)
    corners = [lum[0] + lum[1] * xs[i] + lum[2] * ys[k] for i in (0, -1) for k in (0, -1)]
    level = float(max(corners))
    angle = tilt = float("nan")
    if measure_bg and level > 0:
        angle = float(math.atan2(-lum[2] / h, -lum[1] / w))
        tilt = float(1.0 - min(corners) / level)
    # objects: shade from the interior, area and centroid from the soft coverage
    erode = max(1, round(INTERIOR_ERODE * scale))
    reach = max(1, round(COVERAGE_REACH * scale))
    out = []
    for j, blob in enumerate(blobs):
        if blob is None:
            out.append((False, False, math.nan, np.full(3, np.nan), np.full(2, np.nan)))
            continue
        region = _dilate(blob, reach)
        # anything of another object within reach, even a sliver too small to count as present
        others = np.zeros((h, w), bool)
        for k, (colour, _) in enumerate(scene.objects):
            if k != j:
                others |= blobs[k] if colour == scene.objects[j][0] and blobs[k] is not None else masks[colour]
        touching = bool((_dilate(others, reach) & region).any()) if others.any() else False
        if touching:
            out.append((True, False, math.nan, np.full(3, np.nan), np.full(2, np.nan)))
            continue
        interior = _erode(blob, erode)
        if interior.sum() < 3:
            interior = blob
        shade = np.median(pix[interior], axis=0)
        diff = pix[region] - field[region]
        span = shade[None, :] - field[region]
        alpha = (diff * span).sum(-1) / np.maximum((span * span).sum(-1), 1.0)
        area = float(alpha.sum())
        ry, rx = np.nonzero(region)
        centroid = np.array([(alpha * (rx + 0.5)).sum(), (alpha * (ry + 0.5)).sum()]) / max(area, 1e-6)
        radius = math.sqrt(max(area, 0.0) / _UNIT_AREA[scene.objects[j][1]]) / scale
        out.append((True, True, radius, shade, centroid))
    return out, (angle, tilt, level)


def estimate_attributes(frames: np.ndarray, scene: Scene) -> AttributeTrack:
    """Estimate the hidden attributes of ``scene``'s objects and background on every frame.

    Args:
        frames: ``uint8 [F, H, W, 3]`` RGB (e.g. a decoded video, or
            :func:`~miga.worlds.metrics.scene_frames` of a rendered clip).
        scene: what the prompt asks for (one scene for the whole video).
    """
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"frames must be uint8 [F, H, W, 3], got {frames.dtype} {frames.shape}")
    n, h, w = frames.shape[:3]
    scale = min(h, w) / FRAME_SIZE
    n_obj = len(scene.objects)
    present = np.zeros((n_obj, n), bool)
    clear = np.zeros((n_obj, n), bool)
    radius = np.full((n_obj, n), np.nan)
    shade = np.full((n_obj, n, 3), np.nan)
    centroid = np.full((n_obj, n, 2), np.nan)
    bg = np.full((3, n), np.nan)
    measure_bg = background_measurable(scene)
    previous = np.full((n_obj, 2), np.nan)
    for t in range(n):
        objs, bg[:, t] = _estimate_frame(frames[t], scene, previous, measure_bg)
        for j, (p, c, r, s, cen) in enumerate(objs):
            present[j, t], clear[j, t], radius[j, t], shade[j, t], centroid[j, t] = p, c, r, s, cen
            if c:
                previous[j] = cen
    steps = np.linalg.norm(np.diff(centroid, axis=1), axis=-1) / scale  # [J, F-1], NaN if either unmeasured
    speed = np.full((n_obj, n), np.nan)
    half = SPEED_STEPS // 2
    for t in range(n):
        window = steps[:, max(0, t - half):max(0, t + half + 1)]
        for j in range(n_obj):
            vals = window[j][np.isfinite(window[j])]
            if len(vals) >= min(3, max(1, n - 1)):
                speed[j, t] = float(np.median(vals))
    return AttributeTrack(scene, min(h, w), present, clear, radius, shade, centroid / scale, speed,
                          bg[0], bg[1], bg[2])


# ----------------------------------------------------------------------------------------------------
# the world's prior, and a true clip with given attributes


def prior_spread(scene: Scene) -> dict:
    """How much each hidden attribute varies across the world's prior for ``scene``: the mean absolute
    difference between two independent draws (:func:`~miga.worlds.shapes.sample_hidden`, 4096 pairs,
    a fixed seed), i.e. the drift of a video that forgot that attribute entirely. Keys ``radius`` (px),
    ``speed`` (px/frame), ``shade`` (RGB levels, Euclidean; lists over objects), ``bg_angle`` (radians,
    circular) and ``bg_tilt``; 0 for what the scene fixes (a gradient's tilt)."""
    return copy.deepcopy(_prior_spread(scene))


@functools.lru_cache(maxsize=256)
def _prior_spread(scene: Scene) -> dict:
    batch = SceneBatch.of([scene] * (2 * _PRIOR_SAMPLES))
    h = sample_hidden(batch, torch.Generator().manual_seed(20140))
    a, b = slice(0, _PRIOR_SAMPLES), slice(_PRIOR_SAMPLES, None)
    n_obj = len(scene.objects)

    def mad(x: torch.Tensor) -> torch.Tensor:
        d = x[a] - x[b]
        return (d.norm(dim=-1) if d.ndim == 3 else d.abs()).mean(0)

    angle = float(_wrap((h.bg_angle[a] - h.bg_angle[b]).double().numpy()).__abs__().mean())
    return {"radius": mad(h.radius)[:n_obj].tolist(), "speed": mad(h.speed)[:n_obj].tolist(),
            "shade": mad(h.shade)[:n_obj].tolist(), "bg_angle": angle,
            "bg_tilt": float((h.bg_tilt[a] - h.bg_tilt[b]).abs().mean())}


def hidden_from_estimates(scene: Scene, values: dict, seed: int = 0) -> HiddenAttributes:
    """One clip's :class:`~miga.worlds.shapes.HiddenAttributes` from estimated values (as
    :meth:`AttributeTrack.centre` gives), each moved into the world's prior (radius and speed clipped to
    their ranges, the shade into its ball around the palette colour, a gradient's angle into its range);
    what was not measured (NaN: an object never seen alone, the background of a plain black scene) is
    drawn from the prior with ``seed``."""
    batch = SceneBatch.of([scene])
    h = sample_hidden(batch, torch.Generator().manual_seed(seed))
    for j, (colour, _) in enumerate(scene.objects):
        r = values["radius"][j]
        if math.isfinite(r):
            h.radius[0, j] = min(max(r, RADIUS_RANGE[0]), RADIUS_RANGE[1])
        v = values["speed"][j]
        if math.isfinite(v):
            lo, hi = SPEED_RANGES[scene.motion]
            h.speed[0, j] = min(max(v, lo), hi)
        s = np.asarray(values["shade"][j], np.float64)
        if np.isfinite(s).all():
            palette = np.array(OBJECT_COLOURS[colour], np.float64)
            off = s - palette
            norm = np.linalg.norm(off)
            if norm > SHADE_RADIUS:
                off *= SHADE_RADIUS / norm
            h.shade[0, j] = torch.tensor(np.clip(palette + off, 0, 255), dtype=torch.float32)
    angle, tilt = values["bg_angle"], values["bg_tilt"]
    if scene.style == "gradient":
        if math.isfinite(angle):
            lo, hi = GRADIENT_ANGLE_RANGE
            a = float(np.remainder(angle, 2 * math.pi))
            if not lo <= a <= hi:  # to the nearer end of the range, around the circle
                a = lo if abs(_wrap(a - lo)) < abs(_wrap(a - hi)) else hi
            h.bg_angle[0] = a
    else:
        if math.isfinite(angle):
            h.bg_angle[0] = float(np.remainder(angle, 2 * math.pi))
        if math.isfinite(tilt):
            h.bg_tilt[0] = min(max(tilt, PLAIN_TILT_RANGE[0]), PLAIN_TILT_RANGE[1])
    return h


def true_world_clip(scene: Scene, hidden: HiddenAttributes, num_frames: int, size: int = FRAME_SIZE,
                    seed: int = 0, chunk: int = 256) -> np.ndarray:
    """A true clip of the world, ``uint8 [F, size, size, 3]``: ``scene`` with the attributes ``hidden``
    (one clip), motion drawn with ``seed``. Rendered ``chunk`` frames at a time (the same trajectory:
    it is a function of the time), so long clips take little memory."""
    parts = []
    for start in range(0, num_frames, chunk):
        g = torch.Generator().manual_seed(seed)
        batch = SceneBatch.of([scene])
        traj = sample_trajectories(batch, min(chunk, num_frames - start), g, size, start=float(start), hidden=hidden)
        parts.append(scene_frames(render(batch, traj, size, hidden=hidden)[0]))
    return np.concatenate(parts)


# ----------------------------------------------------------------------------------------------------
# identity drift


def _attribute_series(track: AttributeTrack) -> list[tuple[str, int | None, np.ndarray, str]]:
    """(name, object index or None, per-frame values [F] or [F, 3], kind) for every hidden attribute the
    scene has; kind is ``linear``, ``vector`` (Euclidean) or ``angle`` (circular)."""
    out = []
    for j in range(len(track.scene.objects)):
        out += [("radius", j, track.radius[j], "linear"), ("shade", j, track.shade[j], "vector"),
                ("speed", j, track.speed[j], "linear")]
    if background_measurable(track.scene):
        out.append(("bg_angle", None, track.bg_angle, "angle"))
        if track.scene.style == "plain":
            out.append(("bg_tilt", None, track.bg_tilt, "linear"))
    return out


def _differences(values: np.ndarray, ref, kind: str) -> np.ndarray:
    if kind == "vector":
        return np.linalg.norm(values - np.asarray(ref), axis=-1)
    if kind == "angle":
        return np.abs(_wrap(values - ref))
    return np.abs(values - ref)


def drift_of_track(track: AttributeTrack, distances=DISTANCES, reference_frames: int = REFERENCE_FRAMES,
                   window: int = WINDOW) -> dict:
    """Identity drift of one video from its per-frame estimates (see :func:`identity_drift`)."""
    n = track.frames
    ref = track.centre(0, reference_frames)
    spread = prior_spread(track.scene)
    windows = {}
    for d in distances:
        start, stop = max(0, d - window // 2), min(n, d + window // 2)
        if d <= n and stop - start >= window // 2:
            windows[d] = (start, stop)
    attributes = []
    for name, j, values, kind in _attribute_series(track):
        r = ref[name] if j is None else ref[name][j]
        prior = spread[name] if j is None else spread[name][j]
        entry = {"attribute": name, "object": None if j is None else " ".join(track.scene.objects[j]),
                 "index": j, "reference": _json(r if kind != "angle" else math.degrees(r) % 360.0),
                 "unit": {"radius": "px", "speed": "px/frame", "shade": "rgb levels", "bg_angle": "deg",
                          "bg_tilt": "fraction"}[name],
                 "prior_spread": _json(prior if kind != "angle" else math.degrees(prior)),
                 "noise": None, "drift": {}, "drift_raw": {}, "frames": {}}
        if _reference_measured(values, reference_frames) and np.all(np.isfinite(np.asarray(r, np.float64))):
            # the estimator's own scatter: frames of the reference window against their centre
            within = _differences(values[:reference_frames], r, kind)
            within = within[np.isfinite(within)]
            if len(within):
                entry["noise"] = _json(float(within.mean()) / prior) if prior > 0 else None
            for d, (start, stop) in windows.items():
                diff = _differences(values[start:stop], r, kind)
                diff = diff[np.isfinite(diff)]
                if len(diff) >= min(MIN_MEASURED, stop - start):
                    raw = float(diff.mean())
                    entry["drift_raw"][str(d)] = _json(math.degrees(raw) if kind == "angle" else raw)
                    entry["drift"][str(d)] = _json(raw / prior) if prior > 0 else None
                    entry["frames"][str(d)] = len(diff)
        attributes.append(entry)
    identity, counted = {}, {}
    for d in windows:
        vals = [a["drift"][str(d)] for a in attributes if a["drift"].get(str(d)) is not None]
        identity[str(d)] = _json(float(np.mean(vals))) if vals else None
        counted[str(d)] = len(vals)
    noise = [a["noise"] for a in attributes if a["noise"] is not None]
    return {"scene": track.scene.text, "frames": n, "size": track.size, "reference_frames": reference_frames,
            "window": window, "distances": [d for d in distances if d in windows],
            "windows": {str(d): list(w) for d, w in windows.items()},
            "identity_drift": identity, "identity_attributes": counted,
            "noise": _json(float(np.mean(noise))) if noise else None,
            "attributes": attributes}


def deviations(track: AttributeTrack, reference_frames: int = REFERENCE_FRAMES) -> list[dict]:
    """Per hidden attribute, every frame's difference from the identity (its :meth:`AttributeTrack.centre`
    over the first ``reference_frames`` frames) divided by the attribute's prior spread: what
    :func:`drift_of_track` averages over a window at each distance, frame by frame (``None`` where not
    measured, or where the identity itself was not). Entries: ``attribute``, ``object``, ``index`` and
    ``values`` (a list over frames)."""
    ref = track.centre(0, reference_frames)
    spread = prior_spread(track.scene)
    out = []
    for name, j, values, kind in _attribute_series(track):
        r = ref[name] if j is None else ref[name][j]
        prior = spread[name] if j is None else spread[name][j]
        if prior > 0 and np.all(np.isfinite(np.asarray(r, np.float64))):
            norm = _differences(values, r, kind) / prior
        else:
            norm = np.full(track.frames, np.nan)
        out.append({"attribute": name, "object": None if j is None else " ".join(track.scene.objects[j]),
                    "index": j, "values": _json(norm)})
    return out


def identity_drift(frames: np.ndarray, scene: Scene, distances=DISTANCES,
                   reference_frames: int = REFERENCE_FRAMES, window: int = WINDOW, true_world: bool = True,
                   seed: int = 0, degrade: Callable[[np.ndarray], np.ndarray] | None = None,
                   track: AttributeTrack | None = None) -> dict:
    """Identity drift of a video of ``scene`` (``uint8 [F, H, W, 3]``), JSON-ready.

    Each hidden attribute's identity is its robust value over the first ``reference_frames`` frames
    (:meth:`AttributeTrack.centre`). At distance ``d`` (each of ``distances`` with ``d <= F`` and at least
    ``window / 2`` frames in ``d - window/2 .. d + window/2 - 1``), its drift is the mean over those frames
    of the absolute difference between the frame's estimate and the identity (Euclidean for the shade,
    circular for the angle), raw (``drift_raw``, in the attribute's unit) and divided by the attribute's
    prior spread (``drift``, :func:`prior_spread`: 0 = kept exactly, about 1 = as different as an
    unrelated clip of the world). An attribute needs :data:`MIN_MEASURED` measured frames in the reference
    and in the window. ``identity_drift[d]`` is the mean of ``drift`` over the attributes measured at
    ``d`` (``identity_attributes[d]`` of ``len(attributes)``: objects are not measured while they touch);
    ``noise`` is the same measure on the reference frames themselves (the estimator's scatter).

    With ``true_world``, ``result["true_world"]`` holds the same numbers for a true clip of the world of
    the same scene, length and size, whose hidden attributes are those estimated on the video's first
    frames (:func:`hidden_from_estimates`; motion drawn with ``seed``, or the next seed whose first frames
    measure every attribute: :func:`_true_world_start`): a world sample that starts where
    the video starts and keeps its identity by construction, so its drift is what the estimators give
    with no drift at all, for this identity (a fresh draw would have other radii and speeds, and so
    another estimator noise). ``degrade`` (e.g. the video codec, or the model's autoencoder round trip)
    is applied to that clip first, so both go through the same pipeline. ``track``: the video's
    :func:`estimate_attributes` if the caller has it already (it is not computed again).
    """
    frames = np.asarray(frames)
    if track is None:
        track = estimate_attributes(frames, scene)
    result = drift_of_track(track, distances, reference_frames, window)
    if true_world:
        seed, hidden = _true_world_start(scene, track.centre(0, reference_frames), seed, reference_frames,
                                         min(frames.shape[1:3]))
        clip = true_world_clip(scene, hidden, frames.shape[0], min(frames.shape[1:3]), seed)
        if degrade is not None:
            clip = np.asarray(degrade(clip))
        world = drift_of_track(estimate_attributes(clip, scene), distances, reference_frames, window)
        world["hidden"] = hidden.to_dicts(SceneBatch.of([scene]))[0]
        world["seed"] = seed
        world["degraded"] = degrade is not None
        result["true_world"] = world
    return result


def _reference_measured(values: np.ndarray, reference_frames: int) -> bool:
    """Whether an attribute's per-frame values (``[F]`` or ``[F, 3]``) are measured in enough of the first
    ``reference_frames`` frames to give its identity: :data:`MIN_MEASURED` (or all of a shorter reference)."""
    head = np.asarray(values)[:reference_frames]
    return np.isfinite(head).reshape(len(head), -1).all(-1).sum() >= min(MIN_MEASURED, reference_frames)


def _measured_references(track: AttributeTrack, reference_frames: int) -> int:
    """How many of a track's hidden attributes can be measured on its first ``reference_frames`` frames."""
    return sum(_reference_measured(values, reference_frames) for _, _, values, _ in _attribute_series(track))


def _true_world_start(scene: Scene, values: dict, seed: int, reference_frames: int, size: int,
                      tries: int = TRUE_WORLD_TRIES) -> tuple[int, HiddenAttributes]:
    """The motion seed (``seed``, ``seed + 1``, ...) and hidden attributes of the true-world clip: the first
    seed whose first frames let every attribute be measured (two objects drawn touching there would leave
    the reference empty), else the one that measures most, of ``tries`` seeds."""
    best = None
    for s in range(seed, seed + tries):
        hidden = hidden_from_estimates(scene, values, s)
        head = estimate_attributes(true_world_clip(scene, hidden, reference_frames, size, s), scene)
        count, total = _measured_references(head, reference_frames), len(_attribute_series(head))
        if best is None or count > best[0]:
            best = (count, s, hidden)
        if count == total:
            break
    return best[1], best[2]


def _json(x):
    """Plain floats (rounded), lists of them, ``None`` for NaN."""
    if isinstance(x, (list, tuple, np.ndarray)):
        return [_json(v) for v in np.asarray(x, np.float64).tolist()]
    x = float(x)
    return round(x, 5) if math.isfinite(x) else None


def codec_round_trip(fps: float):
    """``degrade`` for :func:`identity_drift`: frames through an H.264 MP4 as
    ``miga generate`` writes it (crf 18, yuv420p) and back, so the true-world clip is measured after the same
    codec as the video."""
    def degrade(frames):
        import tempfile

        from miga.video import VideoWriter, read_video

        with tempfile.TemporaryDirectory(prefix="miga-identity-") as tmp:
            path = os.path.join(tmp, "world.mp4")
            with VideoWriter(path, fps if fps > 0 else 8) as writer:
                for frame in frames:
                    writer.write(frame)
            decoded = read_video(path)[0]
        return decoded[:, :frames.shape[1], :frames.shape[2]]  # odd sizes were padded to even
    return degrade


def video_identity_drift(frames, scene, fps: float, *, per_frame: bool = False) -> dict:
    """Identity drift of a decoded shapes-world video of ``scene`` (:func:`identity_drift`,
    the true-world clip through the same codec); ``per_frame`` adds each attribute's per-frame normalised
    difference from its identity (``per_frame``) and the raw per-frame estimates (``track``)."""
    track = estimate_attributes(frames, scene)
    result = identity_drift(frames, scene, degrade=codec_round_trip(fps), track=track)
    if per_frame:
        result["per_frame"] = deviations(track, result["reference_frames"])
        result["track"] = track.to_dict()
    return result
