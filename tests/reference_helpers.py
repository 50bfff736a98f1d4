"""What the reference-fixture tests share (``tests/test_reference_*.py``): the recorded noise replayed through
miga's keyed-noise interface, the figure they compare by, and VideoCrafter2 fixtures' model and loading."""

from __future__ import annotations

import json
import types

import torch
from safetensors import safe_open
from safetensors.torch import load_file

from miga.backbones.videocrafter2 import VIDEOCRAFTER2_SCHEDULE, VideoCrafter2Model
from miga.backbones.videocrafter2_unet import VideoCrafter2UNet, config_from_state_dict


def rel(ours: torch.Tensor, theirs: torch.Tensor) -> float:
    """max |ours - theirs| / std(theirs)."""
    return float((ours - theirs).abs().max() / theirs.std())


class ReplayNoise:
    """miga's keyed-noise interface over the authors' recorded draws; a key they never drew is a KeyError."""

    def __init__(self, table: dict, shape, seed: int = 0):
        self.table, self.shape, self.seed = table, tuple(shape), seed
        self.device = torch.device("cpu")
        self.used: set = set()

    def one(self, index: int, level: int, purpose: str) -> torch.Tensor:
        key = (int(index), int(level), purpose)
        if key not in self.table:
            raise KeyError(f"miga asked for noise {key}, which the authors' run never drew")
        self.used.add(key)
        return self.table[key].clone()

    def many(self, indices, levels, purpose: str) -> torch.Tensor:
        return torch.stack([self.one(i, k, purpose) for i, k in zip(indices, levels)])


class PermutationReplay(types.ModuleType):
    """``torch`` as ``miga.baselines.noise`` sees it, with ``randperm`` answering the authors' permutations in
    order (their ``random.shuffle`` cannot be reproduced by ``torch.randperm``)."""

    def __init__(self, perms: torch.Tensor):
        super().__init__("torch")
        self.perms, self.calls = [p.clone() for p in perms], 0

    def randperm(self, n, generator=None, **kwargs):
        assert isinstance(generator, torch.Generator), "miga's rule must be given the engine's keyed generator"
        assert self.calls < len(self.perms), "miga's rule asked for more permutations than the authors drew"
        perm = self.perms[self.calls]
        assert n == perm.numel(), f"miga asked for a permutation of {n}, the authors shuffled {perm.numel()}"
        self.calls += 1
        return perm.clone()

    def __getattr__(self, name):
        return getattr(torch, name)


class FixtureBackbone(VideoCrafter2Model):
    """miga's VideoCrafter2 backbone (its ``predict``) over a fixture's UNet, without VAE or text encoder."""

    def __init__(self, unet: VideoCrafter2UNet, latent_shape, frames: int = 16, fps: float = 8.0):
        self.owns_modules = True
        self.unet = unet.eval()
        self.device, self.dtype = torch.device("cpu"), torch.float32
        self.latent_shape, self.native_frames = tuple(latent_shape), frames
        self.model_batch, self.fps_condition = None, float(fps)
        self.default_schedule = VIDEOCRAFTER2_SCHEDULE


def load_vc2_fixture(path: str) -> dict:
    """A VideoCrafter2 fixture: its metadata, settings, noise table (miga's keys), UNet (weights stored as int8 x
    2**exponent, exact in float32), text embeddings, the reference states (``ref.*``) and any other tensors."""
    tensors = load_file(path)
    with safe_open(path, "pt") as f:
        meta = f.metadata()
    purposes = json.loads(meta["noise_purposes"])
    table = {(int(i), int(k), purposes[int(u)]): v.float()
             for (i, k, u), v in zip(tensors["noise.keys"].tolist(), tensors["noise.values"])}
    exponents = json.loads(meta["unet_exponents"])
    state = {k: tensors["unet." + k].float() * 2.0 ** e for k, e in exponents.items()}
    unet = VideoCrafter2UNet(config_from_state_dict(state))
    unet.load_state_dict(state, strict=True)
    out = dict(meta=meta, s=json.loads(meta["settings"]), table=table, unet=unet.eval(),
               cond=tensors["text.cond"].float(), uncond=tensors["text.uncond"].float(),
               **{k[len("ref."):]: v for k, v in tensors.items() if k.startswith("ref.")})
    if "rule.perms" in tensors:
        out["perms"] = tensors["rule.perms"]
    return out
