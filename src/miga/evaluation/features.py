"""Per-frame feature extractors for subject and background consistency (evaluation.md Sec. 1.1-1.3).

VBench uses DINO ViT-B/16 (S.C.: the CLS token) and CLIP ViT-B/32 (B.C.: ``encode_image``). Given local
weights in Hugging Face ``transformers`` format, :func:`load_dino` and :func:`load_clip` run those models
with VBench's preprocessing (:func:`dino_pixels`, :func:`clip_pixels`). Without weights,
:class:`ProxyFeatures` is a fixed hand-made descriptor that needs no download; its numbers are labelled
"proxy" everywhere.

Every extractor is called on ``uint8 [N, H, W, 3]`` RGB frames and returns ``float [N, D]`` features, and has
``name`` and ``proxy`` attributes.
"""

from __future__ import annotations

import json
import os

import numpy as np
import torch
import torch.nn.functional as F

from miga.errors import MigaError, first_line

SIDE = 224
"""Input side of both models: the shorter frame side is resized to this."""
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
CLIP_MEAN, CLIP_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")
"""A ``transformers`` folder holds ``config.json`` and one of these."""
BATCH = 16
"""Frames per model call."""


# ----------------------------------------------------------------------------------------------------
# preprocessing (Sec. 1.1)


def _resize_short_side(x: torch.Tensor, mode: str) -> torch.Tensor:
    """torchvision ``Resize(224, antialias=False)`` on a uint8-valued float batch ``[N, 3, H, W]``: the
    shorter side becomes 224, the longer ``int(224 * long / short)``; values are clamped and rounded as
    torchvision does for uint8 images."""
    h, w = x.shape[-2:]
    if h <= w:
        size = (SIDE, int(SIDE * w / h))
    else:
        size = (int(SIDE * h / w), SIDE)
    if (h, w) != size:
        x = F.interpolate(x, size=size, mode=mode, align_corners=False, antialias=False)
        x = x.clamp(0, 255).round()
    return x


def _normalise(x: torch.Tensor, mean, std) -> torch.Tensor:
    x = x / 255.0
    return (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)


def _as_batch(frames: np.ndarray) -> torch.Tensor:
    frames = np.asarray(frames)
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must be uint8 [N, H, W, 3], got {frames.dtype} {frames.shape}")
    return torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float()


def dino_pixels(frames: np.ndarray) -> torch.Tensor:
    """VBench's S.C. input (Sec. 1.1): shorter side to 224 (bilinear, no antialias, aspect kept, no crop),
    /255, ImageNet mean/std. Returns ``float [N, 3, 224, W']``."""
    return _normalise(_resize_short_side(_as_batch(frames), "bilinear"), IMAGENET_MEAN, IMAGENET_STD)


def clip_pixels(frames: np.ndarray) -> torch.Tensor:
    """VBench's B.C. input (Sec. 1.1): shorter side to 224 (bicubic, no antialias), centre crop 224x224,
    /255, CLIP mean/std. Returns ``float [N, 3, 224, 224]``."""
    x = _resize_short_side(_as_batch(frames), "bicubic")
    h, w = x.shape[-2:]
    top, left = int(round((h - SIDE) / 2.0)), int(round((w - SIDE) / 2.0))
    return _normalise(x[..., top:top + SIDE, left:left + SIDE], CLIP_MEAN, CLIP_STD)


PREPROCESS = {"dino": dino_pixels, "clip": clip_pixels}


# ----------------------------------------------------------------------------------------------------
# the offline proxy


class ProxyFeatures:
    """The offline proxy extractor: a fixed, hand-made frame descriptor (no network, no weights, deterministic).

    The frame is first preprocessed exactly as for the model it stands in for (``kind`` ``"dino"``: S.C.,
    ``"clip"``: B.C.; :data:`PREPROCESS`). The descriptor concatenates, each part L2-normalised and weighted
    equally:

    * **layout and colour**: the normalised image averaged over an 8 x 8 grid of blocks (192 numbers, signed);
    * **structure**: on the channel-mean image, a histogram of gradient orientations (8 unsigned bins over
      0-180 degrees, weighted by gradient magnitude) in each cell of a 4 x 4 grid (128 numbers).

    It is not a learned feature: its numbers are not comparable with DINO/CLIP ones (or with published VBench
    figures), only with each other, e.g. to compare methods on the same prompts.
    """

    proxy = True
    GRID, CELLS, BINS = 8, 4, 8

    def __init__(self, kind: str):
        if kind not in PREPROCESS:
            raise ValueError(f"kind must be one of {sorted(PREPROCESS)}, got {kind!r}")
        self.kind = kind
        self.name = f"offline proxy (layout + gradient histogram, {kind.upper()} preprocessing)"

    def __call__(self, frames: np.ndarray) -> np.ndarray:
        out = []
        for i in range(0, len(frames), BATCH):
            x = PREPROCESS[self.kind](frames[i:i + BATCH]).double()
            layout = F.adaptive_avg_pool2d(x, self.GRID).flatten(1)
            g = x.mean(dim=1)
            gx = F.pad(g[:, :, 1:] - g[:, :, :-1], (0, 1))
            gy = F.pad(g[:, 1:, :] - g[:, :-1, :], (0, 0, 0, 1))
            mag = torch.sqrt(gx ** 2 + gy ** 2)
            angle = torch.remainder(torch.atan2(gy, gx), torch.pi)
            bins = torch.clamp((angle / torch.pi * self.BINS).long(), max=self.BINS - 1)
            hist = torch.stack([F.adaptive_avg_pool2d((mag * (bins == b)).unsqueeze(1), self.CELLS).flatten(1)
                                for b in range(self.BINS)], dim=-1).flatten(1)
            parts = [F.normalize(layout, dim=1), F.normalize(hist, dim=1)]
            out.append((torch.cat(parts, dim=1) / np.sqrt(2.0)).numpy())
        return np.concatenate(out)


# ----------------------------------------------------------------------------------------------------
# DINO and CLIP from local transformers folders


def _folder(path: str, flag: str) -> str:
    """The transformers folder for ``path`` (a folder, or a weight file inside one); a one-line error naming
    the missing files otherwise."""
    if not os.path.exists(path):
        raise MigaError(f"{flag} {path}: no such file or folder")
    folder = path
    if os.path.isfile(path):
        if os.path.basename(path) not in WEIGHT_FILES:
            raise MigaError(f"{flag} {path}: expected a transformers folder (config.json and model.safetensors "
                            f"or pytorch_model.bin) or a weight file in one; {os.path.basename(path)} is not supported")
        folder = os.path.dirname(os.path.abspath(path))
    missing = [] if os.path.isfile(os.path.join(folder, "config.json")) else ["config.json"]
    if not any(os.path.isfile(os.path.join(folder, f)) for f in WEIGHT_FILES):
        missing.append("model.safetensors (or pytorch_model.bin)")
    if missing:
        raise MigaError(f"{flag} {path}: the folder lacks {' and '.join(missing)}")
    return folder


def _model_type(folder: str, flag: str) -> str:
    try:
        with open(os.path.join(folder, "config.json"), encoding="utf-8") as fh:
            return str(json.load(fh).get("model_type", ""))
    except (OSError, ValueError, AttributeError) as exc:
        raise MigaError(f"{flag} {folder}: cannot read config.json ({exc})") from None


def _transformers():
    try:
        import transformers
    except ImportError:
        raise MigaError('--dino/--clip need transformers; install it with pip install ".[eval]" in the miga checkout') from None
    return transformers


class _ModelFeatures:
    """A torch module run in batches on preprocessed frames."""

    proxy = False

    def __init__(self, name: str, preprocess, forward):
        self.name, self._preprocess, self._forward = name, preprocess, forward

    @torch.inference_mode()
    def __call__(self, frames: np.ndarray) -> np.ndarray:
        return np.concatenate([self._forward(self._preprocess(frames[i:i + BATCH])).double().numpy()
                               for i in range(0, len(frames), BATCH)])


def _load(cls, folder: str, flag: str, **kwargs):
    from transformers.utils import logging

    bars = logging.is_progress_bar_enabled()
    logging.disable_progress_bar()  # no "Loading weights" bar in miga eval's output
    try:
        return cls.from_pretrained(folder, local_files_only=True, **kwargs).eval()
    except (OSError, ValueError, RuntimeError) as exc:
        raise MigaError(f"{flag} {folder}: cannot load the model ({first_line(exc)})") from None
    finally:
        if bars:
            logging.enable_progress_bar()


def load_dino(path: str) -> _ModelFeatures:
    """DINO ViT-B/16 for S.C. from a ``transformers`` folder (``model_type`` ``vit``, e.g. the files of
    ``facebook/dino-vitb16``: ``config.json`` and ``model.safetensors`` or ``pytorch_model.bin``). Features:
    the final-layer-normed CLS token on :func:`dino_pixels` (position embeddings interpolated to the
    non-square input)."""
    folder = _folder(path, "--dino")
    kind = _model_type(folder, "--dino")
    if kind != "vit":
        raise MigaError(f"--dino {path}: expected a ViT (DINO) model, config.json says model_type {kind!r}")
    model = _load(_transformers().ViTModel, folder, "--dino", add_pooling_layer=False)

    def forward(x):
        return model(pixel_values=x, interpolate_pos_encoding=True).last_hidden_state[:, 0]

    return _ModelFeatures(f"DINO ViT ({os.path.basename(os.path.normpath(folder))})", dino_pixels, forward)


def load_clip(path: str) -> _ModelFeatures:
    """CLIP ViT-B/32 for B.C. from a ``transformers`` folder (``model_type`` ``clip`` or ``clip_vision_model``,
    e.g. the files of ``openai/clip-vit-base-patch32``: ``config.json`` and ``model.safetensors`` or
    ``pytorch_model.bin``). Features: the projected image embedding (``encode_image``) on
    :func:`clip_pixels`."""
    folder = _folder(path, "--clip")
    kind = _model_type(folder, "--clip")
    tf = _transformers()
    classes = {"clip": tf.CLIPModel, "clip_vision_model": tf.CLIPVisionModelWithProjection}
    if kind not in classes:
        raise MigaError(f"--clip {path}: expected a CLIP model, config.json says model_type {kind!r}")
    model = _load(classes[kind], folder, "--clip")

    def forward(x):
        return model.visual_projection(model.vision_model(pixel_values=x).pooler_output)

    return _ModelFeatures(f"CLIP ViT ({os.path.basename(os.path.normpath(folder))})", clip_pixels, forward)
