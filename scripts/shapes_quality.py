"""The built-in model's quality bar (issue 14): plain 16-frame sampling over prompt/seed pairs that cover the
whole grammar, judged against true world clips of the same scenes passed through the model's autoencoder
(``miga.worlds.quality``).

    python scripts/shapes_quality.py [MODEL] [PAIRS] [OUT.json] [--guidance-scale CFG]

MODEL: ``shapes`` (default), another built-in name or a weights file from ``miga train-toy``; PAIRS: number of
prompt/seed pairs (default 48); CFG: the guidance scale (default: the ``shapes`` preset's). Prints the summary and
writes everything to OUT.json (default shapes_quality.json).
"""
import argparse
import json

import numpy as np
import torch

torch.set_num_threads(1)
import miga  # noqa: E402
from miga.pipeline import native_clip  # noqa: E402
from miga.worlds.quality import quality_prompts, quality_report  # noqa: E402

from miga.config import MIGAConfig  # noqa: E402

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("model", nargs="?", default="shapes")
parser.add_argument("pairs", nargs="?", type=int, default=48)
parser.add_argument("out", nargs="?", default="shapes_quality.json")
parser.add_argument("--guidance-scale", type=float)
args = parser.parse_args()
model = miga.load_backbone(args.model)
pairs = quality_prompts(args.pairs)
config = MIGAConfig.shapes()
if args.guidance_scale is not None:
    config = config.with_(guidance_scale=args.guidance_scale)


def through_autoencoder(frames: np.ndarray) -> np.ndarray:
    """A true clip encoded and decoded by the model's autoencoder: the best its samples can look."""
    with torch.no_grad():
        x = torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 255.0
        y = model.autoencoder.decode(model.autoencoder.encode(x))
    return (y.permute(0, 2, 3, 1).numpy() * 255.0).round().clip(0, 255).astype(np.uint8)


report = quality_report(lambda text, seed: np.stack(native_clip(model, text, seed=seed, config=config)), pairs, progress=True,
                        reference=through_autoencoder)
s = report["summary"]
print(f"{s['clips']} clips: presence {s['presence']:.3f} (world {s['world_presence']:.3f}), "
      f"shape {s['shape']:.3f} (world {s['world_shape']:.3f})")
for name, v in s["spread"].items():
    print(f"  within-clip spread of {name:8s}: model {v['model']}, world {v['world']} (world p95 {v['world_p95']}), "
          f"{v['clips']} clips")
with open(args.out, "w") as f:
    json.dump(report, f, indent=1)
