"""Tiny random weights of the built-in model v2, for tests that need temporal self-attention."""

import json

import torch
from torch import nn


def randomise(module: nn.Module, seed: int, std: float = 0.1) -> nn.Module:
    """Every parameter drawn from N(0, std²): zero-initialised output layers would hide the attention."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * std)
    return module


def tiny_v2_weights(path: str, seed: int = 0) -> str:
    """Write a weights file of ``ToyConfig.tiny_v2()`` (f_0 = 16, 32x32 frames) with a random denoiser."""
    from safetensors.torch import save_file

    from miga.toy.nets import FrameAutoencoder, ToyConfig, make_denoiser

    cfg = ToyConfig.tiny_v2()
    tensors = {f"autoencoder.{k}": v for k, v in FrameAutoencoder(cfg).state_dict().items()}
    tensors.update({f"denoiser.{k}": v for k, v in randomise(make_denoiser(cfg), seed).state_dict().items()})
    save_file({k: v.contiguous() for k, v in tensors.items()}, path,
              metadata={"format": "miga-shapes-v1", "model": json.dumps(cfg.to_dict())})
    return path
