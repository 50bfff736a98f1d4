"""The built-in model's two networks: a per-frame autoencoder and a space-time latent denoiser.

Sizes follow real latent video models scaled down: frames of 3x64x64 pixels become latents of 4x8x8
(an 8x spatial autoencoder, one latent per frame), and the denoiser sees a window of f_0 = 16 latents in
which every frame carries its own timestep, as Wan and VideoCrafter2 do, although it is trained with one
noise level per clip.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace

import torch
import torch.nn as nn
import torch.nn.functional as F

from miga.worlds.shapes import TOKEN_SIZES


@dataclass(frozen=True)
class ToyConfig:
    """Architecture of the built-in model (stored with its weights).

    ``arch``: ``conv`` (model v1: spatial and dilated temporal convolutions) or ``attention`` (model v2,
    in the mould of VideoCrafter2: per-block spatial conv, spatial self-attention, temporal conv and temporal
    self-attention with a relative-position bias, so that windows longer than f_0 stay defined);
    ``heads``: attention heads (v2); ``max_distance``: frame distances beyond it share one relative bias;
    ``patch``: the denoiser works on ``patch`` x ``patch`` groups of latent cells (pixel-unshuffled, like
    Wan's 1x2x2 patches), so a finer autoencoder (fewer ``ae_widths`` stages) costs the denoiser nothing.
    """

    frame_size: int = 64
    latent_channels: int = 4
    ae_widths: tuple[int, ...] = (32, 48, 64)
    width: int = 96
    depth: int = 6
    embed: int = 128
    native_frames: int = 16
    arch: str = "conv"
    heads: int = 4
    max_distance: int = 16
    patch: int = 1

    @classmethod
    def tiny(cls) -> "ToyConfig":
        """A few thousand parameters at 32x32: for smoke tests of training and loading, not for looks."""
        return cls(frame_size=32, ae_widths=(8, 8, 8), width=16, depth=2, embed=32)

    @classmethod
    def v2(cls) -> "ToyConfig":
        """Model v2: temporal self-attention (VideoCrafter2-like), sized for a 2-core CPU budget; a 4x
        autoencoder (64x64 frames -> 4x16x16 latents, which keeps the corners of squares and triangles) and
        2x2 patches in the denoiser (8x8 tokens, the cost of v1's 8x latents)."""
        return cls(ae_widths=(32, 64), arch="attention", width=64, depth=4, embed=128, heads=4, patch=2)

    @classmethod
    def tiny_v2(cls) -> "ToyConfig":
        """Model v2's architecture at smoke-test size."""
        return cls(frame_size=32, ae_widths=(8, 8), width=16, depth=2, embed=32, arch="attention", heads=2,
                   patch=2)

    @property
    def latent_size(self) -> int:
        return self.frame_size // 2 ** len(self.ae_widths)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ToyConfig":
        d = dict(d)
        d.setdefault("patch", 1)  # weights saved before the field existed
        d["ae_widths"] = tuple(d["ae_widths"])
        return cls(**d)


class FrameAutoencoder(nn.Module):
    """3xSxS frames in [0, 1] <-> latents of ``latent_channels`` x S/2^k x S/2^k (k = ``len(ae_widths)``),
    normalised per channel.

    ``latent_mean``/``latent_std`` are measured after training, so that the denoiser sees unit-scale latents
    (the role of SD's scaling factor).
    """

    def __init__(self, cfg: ToyConfig):
        super().__init__()
        w = cfg.ae_widths
        enc: list[nn.Module] = [nn.Conv2d(3, w[0], 3, padding=1)]
        prev = w[0]
        for width in w:
            enc += [nn.SiLU(), nn.Conv2d(prev, width, 4, stride=2, padding=1), nn.SiLU(),
                    nn.Conv2d(width, width, 3, padding=1)]
            prev = width
        enc += [nn.SiLU(), nn.Conv2d(prev, cfg.latent_channels, 1)]
        self.encoder = nn.Sequential(*enc)
        dec: list[nn.Module] = [nn.Conv2d(cfg.latent_channels, w[-1], 3, padding=1), nn.SiLU(),
                                nn.Conv2d(w[-1], w[-1], 3, padding=1)]
        prev = w[-1]
        for width in reversed(w):
            dec += [nn.SiLU(), nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(prev, width, 3, padding=1),
                    nn.SiLU(), nn.Conv2d(width, width, 3, padding=1)]
            prev = width
        dec += [nn.SiLU(), nn.Conv2d(prev, 3, 3, padding=1)]
        self.decoder = nn.Sequential(*dec)
        self.register_buffer("latent_mean", torch.zeros(cfg.latent_channels))
        self.register_buffer("latent_std", torch.ones(cfg.latent_channels))

    def encode_raw(self, frames: torch.Tensor) -> torch.Tensor:
        return self.encoder(frames * 2 - 1)

    def decode_raw(self, z: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.decoder(z))

    def encode(self, frames: torch.Tensor) -> torch.Tensor:
        """Frames ``[N, 3, S, S]`` in [0, 1] -> normalised latents ``[N, C, latent_size, latent_size]``."""
        z = self.encode_raw(frames)
        return (z - self.latent_mean[:, None, None]) / self.latent_std[:, None, None]

    @torch.no_grad()
    def encode_many(self, frames: torch.Tensor, chunk: int = 8) -> torch.Tensor:
        """:meth:`encode` without gradients, ``chunk`` frames at a time in channels-last memory: the same
        numbers, about 2.5x faster on a CPU for a training batch (256 frames), whose full-size activations
        would not stay in cache."""
        out = [self.encode(frames[i:i + chunk].contiguous(memory_format=torch.channels_last))
               for i in range(0, frames.shape[0], chunk)]
        return torch.cat(out).contiguous()

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Normalised latents ``[N, C, h, w]`` -> frames ``[N, 3, S, S]`` in [0, 1]."""
        z = latents * self.latent_std[:, None, None] + self.latent_mean[:, None, None]
        return self.decode_raw(z)


def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal embedding of timesteps in [0, 1000] (any shape) -> ``[..., dim]``."""
    half = dim // 2
    freqs = torch.exp(-math.log(10_000.0) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    angles = t.float().unsqueeze(-1) * freqs
    return torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1)


class FrameNorm(nn.Module):
    """GroupNorm applied to each frame on its own, so frames at different noise levels do not mix
    statistics (like Wan's per-token LayerNorm)."""

    def __init__(self, channels: int, groups: int = 8):
        super().__init__()
        self.norm = nn.GroupNorm(groups, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, f, h, w = x.shape
        y = self.norm(x.transpose(1, 2).reshape(b * f, c, h, w))
        return y.reshape(b, f, c, h, w).transpose(1, 2)


class SpaceTimeBlock(nn.Module):
    """Per-frame FiLM from (timestep + prompt) embedding, a 3x3 spatial conv, a dilated temporal conv."""

    def __init__(self, width: int, embed: int, dilation: int):
        super().__init__()
        self.norm1 = FrameNorm(width)
        self.film = nn.Linear(embed, 2 * width)
        self.spatial = nn.Conv3d(width, width, (1, 3, 3), padding=(0, 1, 1))
        self.norm2 = FrameNorm(width)
        self.temporal = nn.Conv3d(width, width, (3, 1, 1), padding=(dilation, 0, 0), dilation=(dilation, 1, 1))
        nn.init.zeros_(self.temporal.weight)
        nn.init.zeros_(self.temporal.bias)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        scale, shift = self.film(emb).transpose(1, 2)[..., None, None].chunk(2, dim=1)  # [B, W, F, 1, 1]
        h = self.norm1(x) * (1 + scale) + shift
        h = self.spatial(F.silu(h))
        h = self.temporal(F.silu(self.norm2(h)))
        return x + h


class SpaceTimeDenoiser(nn.Module):
    """Flow-matching velocity model over a window of latents ``[B, C, F, h, w]``.

    Args of ``forward``: ``timesteps`` ``[B, F]`` in [0, 1000] (σ·1000), one per frame; ``tokens``
    ``[B, 7]`` prompt codes from :meth:`miga.worlds.shapes.Scene.tokens` (all zero = unconditional).
    """

    def __init__(self, cfg: ToyConfig):
        super().__init__()
        c, w, e = cfg.latent_channels, cfg.width, cfg.embed
        self.embed_dim, self.patch = e, cfg.patch
        c = c * cfg.patch ** 2  # channels of a patch
        self.inp = nn.Conv3d(c, w, (1, 3, 3), padding=(0, 1, 1))
        self.time = nn.Sequential(nn.Linear(e, e), nn.SiLU(), nn.Linear(e, e))
        self.tokens = nn.ModuleList(nn.Embedding(n, e) for n in TOKEN_SIZES)
        self.blocks = nn.ModuleList(SpaceTimeBlock(w, e, 1 + i % 2) for i in range(cfg.depth))
        self.out_norm = FrameNorm(w)
        self.out = nn.Conv3d(w, c, (1, 3, 3), padding=(0, 1, 1))
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        prompt = sum(table(tokens[:, i]) for i, table in enumerate(self.tokens))  # [B, E]
        emb = F.silu(self.time(timestep_embedding(timesteps, self.embed_dim)) + prompt[:, None, :])  # [B, F, E]
        p = self.patch
        if p > 1:  # [B, C, F, h, w] -> [B, C·p², F, h/p, w/p]
            x = F.pixel_unshuffle(x.transpose(1, 2), p).transpose(1, 2)
        h = self.inp(x)
        for block in self.blocks:
            h = block(h, emb)
        out = self.out(F.silu(self.out_norm(h)))
        return F.pixel_shuffle(out.transpose(1, 2), p).transpose(1, 2) if p > 1 else out


# ---------------------------------------------------------------------------------------------- model v2
class TemporalSelfAttention(nn.Module):
    """Self-attention along time at every spatial position, with a learned bias per head and frame distance
    (distances beyond ``max_distance`` share the last bias) and no absolute positions: the module the
    long-video baselines (FreeNoise, FreeLong, FreePCA) act on. ``policy``, when set, replaces the attention
    itself: ``policy(q, k, v, bias) -> out`` on ``[B·H·W, heads, F, d]`` tensors."""

    def __init__(self, width: int, heads: int, max_distance: int):
        super().__init__()
        self.heads, self.max_distance = heads, max_distance
        self.norm = FrameNorm(width)
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.distance_bias = nn.Parameter(torch.zeros(heads, 2 * max_distance + 1))
        self.policy = None
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def bias(self, frames: int, device) -> torch.Tensor:
        """``[heads, F, F]`` additive attention bias from the signed frame distance."""
        t = torch.arange(frames, device=device)
        d = (t[None, :] - t[:, None]).clamp(-self.max_distance, self.max_distance) + self.max_distance
        return self.distance_bias[:, d]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, f, h, w = x.shape
        tokens = self.norm(x).permute(0, 3, 4, 2, 1).reshape(b * h * w, f, c)
        q, k, v = self.qkv(tokens).reshape(b * h * w, f, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        bias = self.bias(f, x.device).to(q.dtype)
        if self.policy is not None:
            out = self.policy(q, k, v, bias)
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        out = self.proj(out.transpose(1, 2).reshape(b * h * w, f, c))
        return x + out.reshape(b, h, w, f, c).permute(0, 4, 3, 1, 2)


class SpatialSelfAttention(nn.Module):
    """Self-attention over the h·w positions of each frame on its own (frames never mix here)."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.norm = FrameNorm(width)
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, f, h, w = x.shape
        tokens = self.norm(x).permute(0, 2, 3, 4, 1).reshape(b * f, h * w, c)
        q, k, v = self.qkv(tokens).reshape(b * f, h * w, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)
        out = self.proj(out.transpose(1, 2).reshape(b * f, h * w, c))
        return x + out.reshape(b, f, h, w, c).permute(0, 4, 1, 2, 3)


class AttentionBlock(nn.Module):
    """FiLM'd spatial conv (per frame), spatial self-attention, temporal conv, temporal self-attention, MLP."""

    def __init__(self, width: int, embed: int, heads: int, max_distance: int):
        super().__init__()
        self.conv = SpaceTimeBlock(width, embed, dilation=1)  # FiLM + 3x3 spatial conv + temporal conv (k=3)
        self.spatial_attention = SpatialSelfAttention(width, heads)
        self.temporal_attention = TemporalSelfAttention(width, heads, max_distance)
        self.mlp_norm = FrameNorm(width)
        self.mlp = nn.Sequential(nn.Conv3d(width, 2 * width, 1), nn.SiLU(), nn.Conv3d(2 * width, width, 1))
        nn.init.zeros_(self.mlp[-1].weight)
        nn.init.zeros_(self.mlp[-1].bias)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        x = self.conv(x, emb)
        x = self.spatial_attention(x)
        x = self.temporal_attention(x)
        return x + self.mlp(self.mlp_norm(x))


class AttentionDenoiser(SpaceTimeDenoiser):
    """Model v2's denoiser: :class:`SpaceTimeDenoiser`'s embeddings, input and output, with
    :class:`AttentionBlock` s. Same call: ``forward(x [B, C, F, h, w], timesteps [B, F], tokens [B, 7])``."""

    def __init__(self, cfg: ToyConfig):
        super().__init__(replace(cfg, depth=0))
        self.blocks = nn.ModuleList(AttentionBlock(cfg.width, cfg.embed, cfg.heads, cfg.max_distance)
                                    for _ in range(cfg.depth))

    def temporal_attentions(self) -> list[TemporalSelfAttention]:
        """The temporal self-attention modules, in order (where attention policies attach)."""
        return [block.temporal_attention for block in self.blocks]


def make_denoiser(cfg: ToyConfig) -> nn.Module:
    """The denoiser of ``cfg.arch``: ``conv`` (v1) or ``attention`` (v2)."""
    if cfg.arch == "conv":
        return SpaceTimeDenoiser(cfg)
    if cfg.arch == "attention":
        return AttentionDenoiser(cfg)
    raise ValueError(f"unknown denoiser architecture {cfg.arch!r}")
