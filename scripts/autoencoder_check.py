"""How much of the shapes world survives a built-in model's autoencoder: true world clips (with hidden
attributes) of the quality prompts, encoded and decoded, judged for presence and shape
(``miga.worlds.quality``). The denoiser can do no better than this round trip.

    python scripts/autoencoder_check.py CHECKPOINT_OR_WEIGHTS [PAIRS]

CHECKPOINT_OR_WEIGHTS: a ``miga train-toy`` run dir's ``checkpoint.pt`` or a ``.safetensors`` weights file.
"""
import sys

import numpy as np
import torch

torch.set_num_threads(1)
from miga.toy.nets import FrameAutoencoder, ToyConfig  # noqa: E402
from miga.worlds.quality import clip_quality, quality_prompts, true_clip  # noqa: E402
from miga.worlds.shapes import parse_prompt  # noqa: E402

path = sys.argv[1]
if path.endswith(".safetensors"):
    from miga.backbones.shapes import ShapesModel

    ae = ShapesModel(path).autoencoder
else:
    state = torch.load(path, weights_only=True)
    ae = FrameAutoencoder(ToyConfig.from_dict(state["model"]))
    ae.load_state_dict(state["ae"])
    print(f"autoencoder step {state['ae_step']}")
ae.eval()
rows = []
for text, seed in quality_prompts(int(sys.argv[2]) if len(sys.argv) > 2 else 48):
    scene = parse_prompt(text)
    truth = true_clip(scene, 8, seed)
    with torch.no_grad():
        x = torch.from_numpy(truth).permute(0, 3, 1, 2).float() / 255.0
        y = ae.decode_raw(ae.encode_raw(x))
    decoded = (y.permute(0, 2, 3, 1).numpy() * 255.0).round().clip(0, 255).astype(np.uint8)
    rows.append((clip_quality(decoded, scene), clip_quality(truth, scene)))


def mean(side: int, key: str) -> float:
    return float(np.mean([r[side][key] for r in rows if r[side][key] is not None]))


print(f"{len(rows)} clips through the autoencoder: presence {mean(0, 'presence'):.3f}, shape {mean(0, 'shape'):.3f} "
      f"(true clips: {mean(1, 'presence'):.3f}, {mean(1, 'shape'):.3f})")
