"""The built-in models: tiny text-to-video models of the shapes world, trained by us (``miga train-toy``).

Their weights ship inside the package (``miga/weights/``, one file per name in :data:`SHIPPED`); a file's
SHA-256 is checked on load. Prompts follow the shapes grammar (``miga.worlds.shapes``); anything else is refused with the
vocabulary. The denoiser predicts the rectified-flow velocity and accepts one timestep per frame although
it was trained with one per clip, exactly the training-inference gap of Wan and VideoCrafter2.
"""

from __future__ import annotations

import hashlib
import json
import os
from importlib import resources
from typing import Sequence

import numpy as np
import torch

from miga.backbones.base import NoiseLevels
from miga.backbones.registry import BackboneKind, builtin_options
from miga.backbones.shipped import SHIPPED
from miga.engine.schedules import ScheduleConfig
from miga.errors import MigaError
from miga.toy.nets import FrameAutoencoder, ToyConfig, make_denoiser
from miga.worlds.shapes import parse_prompt

def shipped_weights(name: str = "shapes") -> str:
    """Path of a built-in model's weights file inside the installed package."""
    return str(resources.files("miga") / "weights" / SHIPPED[name].file)


def file_sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class ShapesDecoder:
    """Streaming decoder: one latent in, one 64x64 frame out, through the autoencoder's decoder."""

    stateless = True  # each frame depends on its own latent only (resuming replays just a few)

    def __init__(self, autoencoder: FrameAutoencoder):
        self.autoencoder = autoencoder

    @torch.no_grad()
    def push(self, latent: torch.Tensor) -> list[np.ndarray]:
        param = next(self.autoencoder.parameters())
        rgb = self.autoencoder.decode(latent[None].to(param.device, param.dtype))[0]
        return [(rgb.permute(1, 2, 0).float().cpu() * 255.0).round().clamp(0, 255).to(torch.uint8).numpy()]

    def flush(self) -> list[np.ndarray]:
        return []


class ShapesModel:
    """Backbone over the shipped (or a given) shapes-world weights file."""

    name = "shapes"
    prediction = "flow"
    default_preset = "shapes"
    negative_prompt = ""
    fps = 12
    frames_per_latent = 1

    def __init__(self, weights: str | None = None, *, device: str | torch.device = "cpu",
                 verify: bool = True, shift: float = 1.0):
        """``weights``: a built-in name (:data:`SHIPPED`, default ``shapes``) or a weights file."""
        builtin = SHIPPED.get(weights or "shapes")
        path = shipped_weights(builtin.name) if builtin else weights
        if not os.path.isfile(path):
            hint = "reinstall miga-video" if builtin else "check the path, or make one with 'miga train-toy'"
            raise MigaError(f"weights file {path} not found; {hint}")
        if verify and builtin and file_sha256(path) != builtin.sha256:
            raise MigaError(f"{path} is corrupt (SHA-256 mismatch); reinstall miga-video")
        from safetensors import safe_open

        try:
            with safe_open(path, "pt") as f:  # one open for the metadata and the tensors
                meta = f.metadata() or {}
                tensors = {k: f.get_tensor(k) for k in f.keys()}
            if meta.get("format") != "miga-shapes-v1":
                raise ValueError("not a miga shapes weights file")
            cfg = ToyConfig.from_dict(json.loads(meta["model"]))
        except Exception as e:  # noqa: BLE001 - one message for any unreadable file
            raise MigaError(f"cannot load shapes weights {path}: {e}"[:300]) from None
        self.config = cfg
        self.training = json.loads(meta.get("training", "{}"))
        self.device = torch.device(device)
        self.autoencoder = FrameAutoencoder(cfg)
        self.denoiser = make_denoiser(cfg)
        for prefix, module in (("autoencoder.", self.autoencoder), ("denoiser.", self.denoiser)):
            module.load_state_dict({k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)})
            module.to(self.device).eval().requires_grad_(False)
        self.native_frames = cfg.native_frames
        self.latent_shape = (cfg.latent_channels, cfg.latent_size, cfg.latent_size)
        self.default_schedule = ScheduleConfig(kind="flow", shift=shift)

    def encode_prompt(self, text: str) -> torch.Tensor:
        """Prompt codes ``[7]``; the empty prompt is the unconditional one (all zeros)."""
        if not text.strip():
            return torch.zeros(7, dtype=torch.long)
        return torch.tensor(parse_prompt(text).tokens(), dtype=torch.long)

    @torch.no_grad()
    def predict(self, latents: torch.Tensor, levels: NoiseLevels, conds: Sequence[torch.Tensor]) -> torch.Tensor:
        tokens = torch.stack(list(conds)).to(self.device)
        out = self.denoiser(latents.to(self.device, torch.float32), levels.timesteps.to(self.device, torch.float32),
                            tokens)
        return out.to(latents.dtype)

    def decoder(self) -> ShapesDecoder:
        return ShapesDecoder(self.autoencoder)

    def temporal_attention_network(self) -> torch.nn.Module:
        """The denoiser whose temporal self-attentions an attention policy replaces
        (:func:`miga.baselines.hooks.attention_policy`): model v2's; model v1's convolutional one has none."""
        if not hasattr(self.denoiser, "temporal_attentions"):
            raise MigaError("the built-in model v1 (a convolutional denoiser) has no temporal attention; FreeNoise, "
                            "FreeLong and FreePCA need model v2 (--model shapes or shapes-df)")
        return self.denoiser


def _is_shapes_weights(path: str) -> bool:
    """A miga shapes weights file, or a ``.safetensors`` path that does not exist (its loader says so); other
    ``.safetensors`` files are described by the registry's error for unknown files."""
    from miga.backbones.unet3d import model_file_error

    return model_file_error(path) is None


def load_shapes(model: str = "shapes", *, height: int | None = None, width: int | None = None,
                device: str | None = None, dtype: str | None = None, **kwargs) -> ShapesModel:
    """A built-in name (:data:`SHIPPED`) or a ``.safetensors`` file from ``miga train-toy``."""
    from miga.backbones.unet3d import model_file_error

    size = builtin_options(model, height, width, dtype)
    problem = None if model in SHIPPED else model_file_error(model)
    if problem:
        raise MigaError(problem)
    if size and size != {"height": 64, "width": 64}:
        raise MigaError("the shapes model makes 64x64 frames; leave out --height/--width")
    return ShapesModel(model, device=device or "cpu", **kwargs)


KIND = BackboneKind(
    name="shapes", summary="the built-in shapes-world models (64x64 frames, prompts in the shapes grammar): "
    + "; ".join(f"{w.name}: {w.summary}" for w in SHIPPED.values()),
    needs="nothing (built in); or a .safetensors weights file from 'miga train-toy'", names=tuple(SHIPPED),
    recognises_path=lambda path: path.endswith(".safetensors") and _is_shapes_weights(path), load=load_shapes)
