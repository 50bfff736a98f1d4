"""Where the work before a MIGA video's first finished latent goes: NFE (windows through the model, each
guidance branch counted) after the base clip (Alg. 4), when the first chunk leaves Stage 1, and when Stage 2
hands out the first latent, with the part self-reflection's searches spent. NFE do not depend on the
machine; the seconds do.

    python scripts/first_frame.py [MODEL] [FRAMES] [FIELD=VALUE ...]

MODEL defaults to shapes, FRAMES to 256; FIELD=VALUE changes a field of the model's MIGA preset, e.g.
``reflection=false``, ``reflect_during=fill``, ``reflection_calibration=auto``, ``stage2_steps=0``.
"""
import dataclasses
import sys
import time

import torch

torch.set_num_threads(1)
from miga import LongVideo, load_backbone, preset  # noqa: E402
from miga.engine.miga import MIGAEngine  # noqa: E402


def parse(cfg, text: str):
    name, value = text.split("=", 1)
    kind = {f.name: f.type for f in dataclasses.fields(cfg)}[name]
    if "bool" in str(kind):
        return name, value.lower() in ("1", "true", "yes", "on")
    if "int" in str(kind) and "float" not in str(kind):
        return name, int(value)
    if "float" in str(kind) and "Literal" not in str(kind):
        return name, float(value)
    return name, value


model = sys.argv[1] if len(sys.argv) > 1 else "shapes"
frames = int(sys.argv[2]) if len(sys.argv) > 2 else 256
backbone = load_backbone(model)
cfg = preset(backbone.default_preset, "miga")
cfg = cfg.with_(**dict(parse(cfg, a) for a in sys.argv[3:])).validate(backbone.native_frames)
prompt = "a red circle bouncing on a blue background" if model == "shapes" else "drifting clouds"
video = LongVideo(backbone, prompt, frames, cfg, seed=0)
stats = video.stats
engine = MIGAEngine(video._stepper(), cfg, backbone.native_frames, video.num_latents, stats)
t0 = time.perf_counter()
rows = []


def mark(what: str) -> None:
    rows.append((what, stats.nfe, stats.reflection_nfe, time.perf_counter() - t0))


engine.start()
mark("base clip")
out: list = []
while not out:
    emitted = engine.emitted
    out = engine.step()
    if emitted == 0 and engine.emitted == 1:
        mark("first chunk leaves Stage 1")
mark("first latent out")
print(f"{model}, {frames} frames, {backbone.default_preset} preset: T={cfg.steps} L_zig={cfg.zigzag_width} "
      f"K2={cfg.stage2_steps} s={cfg.stride} m={cfg.guides} reflection={cfg.reflection} "
      f"({cfg.reflect_during}, {cfg.reflection_calibration})")
print("| point | NFE | of which reflection | seconds |\n|---|---:|---:|---:|")
for what, nfe, refl, sec in rows:
    print(f"| {what} | {nfe} | {refl} | {sec:.1f} |")
print(f"reflection checks {stats.reflection_checks}, triggered {stats.reflection_triggers}, "
      f"adopted {stats.reflection_adoptions}")
