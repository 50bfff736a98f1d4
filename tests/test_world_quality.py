"""The quality-bar tooling of the built-in model (issue 14): prompts that cover the grammar, clip judgement."""

import numpy as np

from miga.worlds.quality import clip_quality, coverage, quality_prompts, quality_report, true_clip
from miga.worlds.shapes import BACKGROUND_COLOURS, MOTIONS, OBJECT_COLOURS, SHAPES, parse_prompt


def test_the_prompts_cover_the_whole_grammar():
    pairs = quality_prompts(48)
    seen = coverage(pairs)
    assert seen["shape"] == set(SHAPES) and seen["colour"] == set(OBJECT_COLOURS)
    assert seen["motion"] == set(MOTIONS) and seen["background"] == set(BACKGROUND_COLOURS)
    assert seen["style"] == {"plain", "gradient"} and seen["objects"] == {1, 2}
    assert len({p for p, _ in pairs}) >= 40 and len({s for _, s in pairs}) == 48
    assert quality_prompts(48) == pairs  # deterministic


def test_true_world_clips_pass_and_a_wandering_clip_shows_its_spread():
    pairs = quality_prompts(8)
    report = quality_report(lambda text, seed: true_clip(parse_prompt(text), 16, seed), pairs)
    s = report["summary"]
    assert s["presence"] > 0.99 and s["shape"] > 0.95
    for name in ("radius", "shade", "speed"):
        assert s["spread"][name]["model"] == s["spread"][name]["world"]  # the same clips
    # a clip whose radius changes halfway has a much larger radius spread than a true clip
    scene = parse_prompt("a red circle drifting on a blue background")
    a, b = true_clip(scene, 16, seed=1), true_clip(scene, 16, seed=2)
    mixed = np.concatenate([a[:8], b[8:]])
    assert clip_quality(mixed, scene)["spread"]["radius"] > 5 * max(1e-3, clip_quality(a, scene)["spread"]["radius"])
