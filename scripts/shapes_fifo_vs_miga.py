"""FIFO vs MIGA on the shipped shapes model: world metrics of 256-frame videos over 10 prompt/seed pairs.

    python scripts/shapes_fifo_vs_miga.py [MODEL] [THREADS] [OUT.json]

Prints one JSON line per video and writes them all to OUT.json (default shapes_fifo_vs_miga.json).
"""
import json, sys, time
import numpy as np, torch
torch.set_num_threads(int(sys.argv[2]) if len(sys.argv) > 2 else 1)
import miga
from miga.config import preset
from miga.worlds.metrics import evaluate_frames
from miga.worlds.shapes import parse_prompt
PROMPTS = [
    "a red circle bouncing on a blue background", "a yellow square drifting on a black background",
    "a white triangle orbiting on a gradient gray background", "a green circle bouncing on a white background",
    "an orange triangle drifting on a green background", "a cyan square orbiting on a gradient black background",
    "a purple circle orbiting on a gray background", "a blue square bouncing on a gradient white background",
    "a red triangle orbiting on a black background", "a yellow circle and a blue square bouncing on a gray background",
]
model = miga.load_backbone(sys.argv[1] if len(sys.argv) > 1 else "shapes")
rows = []
for method, cfg in [("fifo", preset("shapes", "fifo")), ("miga", preset("shapes", "miga"))]:
    for i, p in enumerate(PROMPTS):
        t0 = time.perf_counter()
        v = miga.LongVideo(model, p, 256, cfg, seed=i)
        frames = np.stack(list(v.frames()))
        dt = time.perf_counter() - t0
        s = evaluate_frames(frames, parse_prompt(p)).summary
        row = dict(method=method, prompt=p, seed=i, seconds=dt, nfe=v.stats.nfe,
                   **{k: s[k] for k in ("presence", "shape_accuracy", "jump_mean_px", "jump_max_px", "background_change", "background_error") if k in s})
        rows.append(row); print(json.dumps(row), flush=True)
for method in ("fifo", "miga"):
    r = [x for x in rows if x["method"] == method]
    print(method, {k: round(sum(x[k] for x in r) / len(r), 4) for k in
                   ("presence", "shape_accuracy", "jump_mean_px", "jump_max_px", "background_change", "seconds")})
with open(sys.argv[3] if len(sys.argv) > 3 else "shapes_fifo_vs_miga.json", "w") as fh:
    json.dump(rows, fh, indent=1)
