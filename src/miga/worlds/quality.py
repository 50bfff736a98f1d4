"""The built-in model's quality bar (issue 14): plain 16-frame sampling over prompts that cover the whole
grammar, judged against the shapes world.

:func:`quality_prompts` lists prompt/seed pairs in which every shape, object colour, motion and background
(plain and gradient) appears, a quarter of them with two objects. :func:`clip_quality` judges one clip: the
requested objects' presence and shape (:func:`miga.worlds.metrics.evaluate_frames`) and how constant each
hidden attribute stays within the clip (:func:`miga.worlds.identity.estimate_attributes`: the median absolute
deviation of its per-frame estimates from their median). :func:`quality_report` runs a sampler over the
pairs, judges a true world clip of each pair's scene (hidden attributes drawn from the pair's seed) the same
way, and sets the model's within-clip spread of each attribute beside the true clips': a model whose
attributes wander within a clip shows a spread far above the world's own (which is the estimator's noise).
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import numpy as np
import torch

from miga.worlds.identity import estimate_attributes
from miga.worlds.metrics import evaluate_frames, scene_frames
from miga.worlds.shapes import (BACKGROUND_COLOURS, MOTIONS, OBJECT_COLOURS, SHAPES, Scene, SceneBatch, render,
                                sample_hidden, sample_trajectories)

ATTRIBUTES = ("radius", "shade", "speed", "bg_angle", "bg_tilt")


def quality_prompts(count: int = 48, seed: int = 0) -> list[tuple[str, int]]:
    """``count`` (prompt, seed) pairs covering every shape, object colour, motion and background colour, plain
    and gradient; every fourth has two objects. Deterministic."""
    rng = np.random.default_rng(seed)
    colours, backgrounds = list(OBJECT_COLOURS), list(BACKGROUND_COLOURS)
    pairs = []
    for i in range(count):
        shape, colour = SHAPES[i % len(SHAPES)], colours[i % len(colours)]
        motion, style = MOTIONS[(i // 3) % len(MOTIONS)], "gradient " if (i // 2) % 2 else ""
        allowed = [b for b in backgrounds if b != colour]
        objects = [(colour, shape)]
        if i % 4 == 3:
            other = [c for c in colours if c != colour]
            second = (other[int(rng.integers(len(other)))], SHAPES[(i + 1) % len(SHAPES)])
            objects.append(second)
            allowed = [b for b in allowed if b != second[0]]
        background = allowed[(i // len(colours) + i) % len(allowed)]
        text = " and ".join(f"a {c} {s}" for c, s in objects) + f" {motion} on a {style}{background} background"
        pairs.append((text, 1000 + i))
    return pairs


def coverage(pairs: Sequence[tuple[str, int]]) -> dict[str, set]:
    """What the prompts of ``pairs`` cover: shapes, colours, motions, backgrounds and styles named."""
    from miga.worlds.shapes import parse_prompt

    seen: dict[str, set] = {"shape": set(), "colour": set(), "motion": set(), "background": set(), "style": set(),
                            "objects": set()}
    for text, _ in pairs:
        scene = parse_prompt(text)
        for colour, shape in scene.objects:
            seen["shape"].add(shape)
            seen["colour"].add(colour)
        seen["motion"].add(scene.motion)
        seen["background"].add(scene.background)
        seen["style"].add(scene.style)
        seen["objects"].add(len(scene.objects))
    return seen


def _spread(values: np.ndarray, kind: str) -> float | None:
    """Median absolute deviation of per-frame estimates from their median (NaN frames left out); angles on the
    circle, shades as RGB distances."""
    values = np.asarray(values, dtype=np.float64)
    if kind == "shade":
        ok = ~np.isnan(values).any(axis=-1)
        if ok.sum() < 4:
            return None
        v = values[ok]
        return float(np.median(np.linalg.norm(v - np.median(v, axis=0), axis=-1)))
    ok = ~np.isnan(values)
    if ok.sum() < 4:
        return None
    v = values[ok]
    if kind == "angle":
        centre = math.atan2(np.median(np.sin(v)), np.median(np.cos(v)))
        return float(np.median(np.abs(np.angle(np.exp(1j * (v - centre))))))
    return float(np.median(np.abs(v - np.median(v))))


def clip_quality(frames: np.ndarray, scene: Scene) -> dict:
    """Presence and shape rates of one clip (``uint8 [F, H, W, 3]``) and the within-clip spread of each hidden
    attribute (objects: the mean over the requested objects that were measured)."""
    summary = evaluate_frames(frames, scene).summary
    track = estimate_attributes(frames, scene)
    spreads: dict[str, float | None] = {}
    for name in ATTRIBUTES:
        values = getattr(track, name)
        kind = "shade" if name == "shade" else "angle" if name == "bg_angle" else "scalar"
        if name in ("radius", "shade", "speed"):
            per_object = [_spread(values[j], kind) for j in range(values.shape[0])]  # [J, F(, 3)]
            per_object = [v for v in per_object if v is not None]
            spreads[name] = float(np.mean(per_object)) if per_object else None
        else:
            spreads[name] = _spread(values, kind)
    return {"presence": summary["presence"], "shape": summary["shape_accuracy"], "spread": spreads,
            "frames": len(frames)}


def true_clip(scene: Scene, frames: int, seed: int, size: int = 64) -> np.ndarray:
    """A true clip of ``scene`` from the world with hidden attributes, drawn from ``seed``."""
    g = torch.Generator().manual_seed(seed)
    batch = SceneBatch.of([scene])
    hidden = sample_hidden(batch, g)
    traj = sample_trajectories(batch, frames, g, size, hidden=hidden)
    return scene_frames(render(batch, traj, size, hidden=hidden)[0])


def quality_report(sample: Callable[[str, int], np.ndarray], pairs: Sequence[tuple[str, int]] | None = None,
                   frames: int = 16, progress: bool = False,
                   reference: Callable[[np.ndarray], np.ndarray] | None = None) -> dict:
    """Judge ``sample(prompt, seed) -> uint8 [F, H, W, 3]`` (e.g. plain sampling of a model) on ``pairs``
    (default :func:`quality_prompts`) and true world clips of the same scenes, passed through ``reference``
    when given (e.g. the model's autoencoder, the best its samples can look). Returns the mean rates over
    clips, per-attribute medians of the within-clip spread for the model and the world, and the per-clip
    rows."""
    from tqdm import tqdm

    from miga.worlds.shapes import parse_prompt

    pairs = list(pairs) if pairs is not None else quality_prompts()
    rows = []
    for text, seed in tqdm(pairs, disable=not progress, unit="clip", desc="quality"):
        scene = parse_prompt(text)
        model = clip_quality(np.asarray(sample(text, seed)), scene)
        truth = true_clip(scene, frames, seed)
        world = clip_quality(reference(truth) if reference is not None else truth, scene)
        rows.append({"prompt": text, "seed": seed, "model": model, "world": world})
    def mean(side: str, key: str) -> float | None:  # over the clips where it was judged
        values = [r[side][key] for r in rows if r[side][key] is not None]
        return float(np.mean(values)) if values else None

    summary = {"clips": len(rows), "presence": mean("model", "presence"), "shape": mean("model", "shape"),
               "world_presence": mean("world", "presence"), "world_shape": mean("world", "shape"), "spread": {}}
    for name in ATTRIBUTES:
        model = [r["model"]["spread"][name] for r in rows if r["model"]["spread"][name] is not None]
        world = [r["world"]["spread"][name] for r in rows if r["world"]["spread"][name] is not None]
        summary["spread"][name] = {"model": float(np.median(model)) if model else None,
                                   "world": float(np.median(world)) if world else None,
                                   "world_p95": float(np.percentile(world, 95)) if world else None,
                                   "clips": len(model)}
    return {"summary": summary, "clips": rows}
