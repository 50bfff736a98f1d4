"""VideoCrafter2's text-to-video UNet (``base_512_v2``), written for miga in plain torch.

VideoCrafter2 (Chen et al., 2024, "VideoCrafter2: Overcoming Data Limitations for High-Quality Video
Diffusion Models") keeps VideoCrafter1's 2D+1D latent UNet (LVDM ``UNetModel``). This module rebuilds that
network from the published inference configuration ``configs/inference_t2v_512_v2.0.yaml`` so that, at the
full configuration (:data:`VIDEOCRAFTER2_CONFIG`), ``state_dict()`` names and shapes are those the official
``model.ckpt`` stores under ``model.diffusion_model.`` (:data:`CHECKPOINT_PREFIX`):

- ``time_embed`` and ``fps_embedding`` (``fps_cond: true``): Linear-SiLU-Linear on a 320-wide sinusoidal
  embedding (cos half first, max period 10000), summed;
- ``input_blocks.0`` is the input conv, followed by ``init_attn`` (``addition_attention: true``): a temporal
  transformer with 8 heads of 64 channels whose projections are 1x1 ``Conv1d`` (``use_linear`` is not
  passed to it in LVDM) even though every other transformer uses ``Linear`` projections;
- every ResBlock carries a temporal conv block under the LVDM spelling ``temopral_conv``
  (``temporal_conv: true``), four GroupNorm-SiLU-(Dropout)-Conv3d stages with (3, 1, 1) kernels;
- at downsample rates 1, 2 and 4 each ResBlock is followed by a spatial transformer (self-attention, then
  cross-attention to the 1024-wide OpenCLIP text tokens, GEGLU feed-forward) and a temporal transformer
  (``temporal_selfatt_only``: its second attention is self-attention too, no relative positions, no causal
  mask);
- down/upsampling by strided conv and nearest-neighbour x2 + conv, as in Stable Diffusion.

Frames are folded into the batch, ``(B·F, C, h, w)``, as in LVDM; the temporal layers unfold them. Per-frame
timesteps (FIFO / MIGA) take the ``(B·F, D)`` embedding route: a ``[B, F]`` ``timesteps`` tensor is embedded
frame by frame instead of embedding ``[B]`` and repeating it over frames, so all frames equal reproduces the
scalar path. Only the ResBlocks read the time embedding.

Nothing here loads weights; converting ``model.ckpt`` is a matter of stripping :data:`CHECKPOINT_PREFIX`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn

CHECKPOINT_PREFIX = "model.diffusion_model."


@dataclass(frozen=True)
class VideoCrafter2UNetConfig:
    """The ``unet_config.params`` of ``inference_t2v_512_v2.0.yaml`` (defaults are its values).

    ``num_heads`` is used when ``num_head_channels`` is -1 (LVDM's rule); ``init_attn_heads`` and
    ``init_attn_head_channels`` describe ``init_attn`` (LVDM hard-codes 8 heads of ``num_head_channels``).
    """

    in_channels: int = 4
    out_channels: int = 4
    model_channels: int = 320
    attention_resolutions: Tuple[int, ...] = (4, 2, 1)
    num_res_blocks: int = 2
    channel_mult: Tuple[int, ...] = (1, 2, 4, 4)
    num_head_channels: int = 64
    num_heads: int = -1
    transformer_depth: int = 1
    temporal_transformer_depth: int = 1
    context_dim: int = 1024
    temporal_conv: bool = True
    temporal_conv_dropout: float = 0.1
    addition_attention: bool = True
    init_attn_heads: int = 8
    init_attn_head_channels: Optional[int] = None
    fps_cond: bool = True
    temporal_length: int = 16
    dropout: float = 0.0

    def heads_for(self, channels: int) -> Tuple[int, int]:
        """(number of heads, channels per head) of the transformers at ``channels`` width."""
        if self.num_head_channels > 0:
            return channels // self.num_head_channels, self.num_head_channels
        if self.num_heads <= 0:
            raise ValueError("set num_head_channels or num_heads")
        return self.num_heads, channels // self.num_heads


VIDEOCRAFTER2_CONFIG = VideoCrafter2UNetConfig()


def tiny_config(**overrides) -> VideoCrafter2UNetConfig:
    """A CPU-sized configuration of the same layout (tests)."""
    base = VideoCrafter2UNetConfig(model_channels=32, channel_mult=(1, 2), attention_resolutions=(2, 1),
                                   num_head_channels=-1, num_heads=1, context_dim=32, temporal_length=4,
                                   init_attn_heads=1, init_attn_head_channels=32)
    return replace(base, **overrides)


def sinusoidal_embedding(values: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """LVDM's ``timestep_embedding``: ``[cos(v·f), sin(v·f)]`` with ``f = max_period^(-i/half)``."""
    half = dim // 2
    exponents = torch.arange(half, dtype=torch.float32, device=values.device) / half
    freqs = torch.exp(-math.log(max_period) * exponents)
    args = values.reshape(-1, 1).float() * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


class Float32GroupNorm(nn.GroupNorm):
    """GroupNorm computed in float32 and cast back (LVDM ``normalization``: 32 groups, eps 1e-5)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.float()).type(x.dtype)


def _frames_to_video(x: torch.Tensor, batch: int) -> torch.Tensor:
    """``(B·F, C, h, w)`` -> ``(B, C, F, h, w)``."""
    bf, c, h, w = x.shape
    return x.reshape(batch, bf // batch, c, h, w).permute(0, 2, 1, 3, 4)


def _video_to_frames(x: torch.Tensor) -> torch.Tensor:
    """``(B, C, F, h, w)`` -> ``(B·F, C, h, w)``."""
    b, c, f, h, w = x.shape
    return x.permute(0, 2, 1, 3, 4).reshape(b * f, c, h, w)


class Attention(nn.Module):
    """Multi-head attention with bias-free q/k/v and a biased output projection (``to_out.0``)."""

    def __init__(self, query_dim: int, heads: int, head_dim: int, context_dim: Optional[int] = None,
                 dropout: float = 0.0):
        super().__init__()
        inner = heads * head_dim
        kv_dim = query_dim if context_dim is None else context_dim
        self.heads = heads
        self.to_q = nn.Linear(query_dim, inner, bias=False)
        self.to_k = nn.Linear(kv_dim, inner, bias=False)
        self.to_v = nn.Linear(kv_dim, inner, bias=False)
        self.to_out = nn.Sequential(nn.Linear(inner, query_dim), nn.Dropout(dropout))

    def forward(self, x: torch.Tensor, context: Optional[torch.Tensor] = None) -> torch.Tensor:
        source = x if context is None else context
        q, k, v = self.to_q(x), self.to_k(source), self.to_v(source)
        n, lq, inner = q.shape
        split = lambda t: t.reshape(n, t.shape[1], self.heads, inner // self.heads).transpose(1, 2)  # noqa: E731
        out = F.scaled_dot_product_attention(split(q), split(k), split(v))
        return self.to_out(out.transpose(1, 2).reshape(n, lq, inner))


class GEGLUFeedForward(nn.Module):
    """``net.0.proj`` (dim -> 2·4·dim, GELU-gated), dropout, ``net.2`` (4·dim -> dim)."""

    def __init__(self, dim: int, dropout: float = 0.0):
        super().__init__()
        self.net = nn.Sequential(_GEGLU(dim, 4 * dim), nn.Dropout(dropout), nn.Linear(4 * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class _GEGLU(nn.Module):
    def __init__(self, dim_in: int, dim_out: int):
        super().__init__()
        self.proj = nn.Linear(dim_in, 2 * dim_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        value, gate = self.proj(x).chunk(2, dim=-1)
        return value * F.gelu(gate)


class TransformerBlock(nn.Module):
    """Pre-norm attention (``attn1``), second attention (``attn2``: cross-attention when ``context_dim``
    is given, else self-attention) and GEGLU feed-forward, each residual."""

    def __init__(self, dim: int, heads: int, head_dim: int, context_dim: Optional[int], dropout: float = 0.0):
        super().__init__()
        self.attn1 = Attention(dim, heads, head_dim, None, dropout)
        self.ff = GEGLUFeedForward(dim, dropout)
        self.attn2 = Attention(dim, heads, head_dim, context_dim, dropout)
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.norm3 = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, context: Optional[torch.Tensor] = None) -> torch.Tensor:
        x = self.attn1(self.norm1(x)) + x
        x = self.attn2(self.norm2(x), context) + x
        return self.ff(self.norm3(x)) + x


class SpatialTransformer(nn.Module):
    """Per-frame attention over the ``h·w`` tokens with text cross-attention (``use_linear: true``)."""

    def __init__(self, channels: int, heads: int, head_dim: int, depth: int, context_dim: int,
                 dropout: float = 0.0):
        super().__init__()
        inner = heads * head_dim
        self.norm = nn.GroupNorm(32, channels, eps=1e-6)
        self.proj_in = nn.Linear(channels, inner)
        self.transformer_blocks = nn.ModuleList(
            TransformerBlock(inner, heads, head_dim, context_dim, dropout) for _ in range(depth))
        self.proj_out = nn.Linear(inner, channels)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        tokens = self.proj_in(self.norm(x).reshape(n, c, h * w).transpose(1, 2))
        for block in self.transformer_blocks:
            tokens = block(tokens, context)
        out = self.proj_out(tokens).transpose(1, 2).reshape(n, c, h, w)
        return out + x


class TemporalTransformer(nn.Module):
    """Attention along frames at every pixel (``temporal_selfatt_only``: both attentions are self-attention).

    ``linear_projections`` False gives LVDM's 1x1 ``Conv1d`` ``proj_in``/``proj_out`` (used by ``init_attn``).
    """

    def __init__(self, channels: int, heads: int, head_dim: int, depth: int, linear_projections: bool = True,
                 dropout: float = 0.0):
        super().__init__()
        inner = heads * head_dim
        self.linear_projections = linear_projections
        self.norm = nn.GroupNorm(32, channels, eps=1e-6)
        if linear_projections:
            self.proj_in = nn.Linear(channels, inner)
            self.proj_out = nn.Linear(inner, channels)
        else:
            self.proj_in = nn.Conv1d(channels, inner, 1)
            self.proj_out = nn.Conv1d(inner, channels, 1)
        self.transformer_blocks = nn.ModuleList(
            TransformerBlock(inner, heads, head_dim, None, dropout) for _ in range(depth))

    def forward(self, frames: torch.Tensor, batch: int) -> torch.Tensor:
        """``frames``: ``(B·F, C, h, w)``; returns the same shape."""
        video = _frames_to_video(frames, batch)
        b, c, f, h, w = video.shape
        seq = self.norm(video).permute(0, 3, 4, 1, 2).reshape(b * h * w, c, f)  # (B·h·w, C, F)
        if self.linear_projections:
            tokens = self.proj_in(seq.transpose(1, 2))
        else:
            tokens = self.proj_in(seq).transpose(1, 2)
        for block in self.transformer_blocks:
            tokens = block(tokens)
        if self.linear_projections:
            seq = self.proj_out(tokens).transpose(1, 2)
        else:
            seq = self.proj_out(tokens.transpose(1, 2))
        out = seq.reshape(b, h, w, c, f).permute(0, 3, 4, 1, 2)
        return frames + _video_to_frames(out)


class TemporalConvBlock(nn.Module):
    """Four GroupNorm-SiLU-(Dropout)-Conv3d stages along frames, residual (ModelScope's block, reused by LVDM).

    Stored under the LVDM attribute name ``temopral_conv`` (sic) so checkpoint keys match.
    """

    def __init__(self, channels: int, dropout: float = 0.1):
        super().__init__()
        kernel, pad = (3, 1, 1), (1, 0, 0)
        self.conv1 = nn.Sequential(nn.GroupNorm(32, channels), nn.SiLU(),
                                   nn.Conv3d(channels, channels, kernel, padding=pad))
        self.conv2 = nn.Sequential(nn.GroupNorm(32, channels), nn.SiLU(), nn.Dropout(dropout),
                                   nn.Conv3d(channels, channels, kernel, padding=pad))
        self.conv3 = nn.Sequential(nn.GroupNorm(32, channels), nn.SiLU(), nn.Dropout(dropout),
                                   nn.Conv3d(channels, channels, kernel, padding=pad))
        self.conv4 = nn.Sequential(nn.GroupNorm(32, channels), nn.SiLU(), nn.Dropout(dropout),
                                   nn.Conv3d(channels, channels, kernel, padding=pad))

    def forward(self, frames: torch.Tensor, batch: int) -> torch.Tensor:
        video = _frames_to_video(frames, batch)
        h = self.conv4(self.conv3(self.conv2(self.conv1(video))))
        return frames + _video_to_frames(h)


class ResBlock(nn.Module):
    """GroupNorm-SiLU-conv, plus the projected time embedding, GroupNorm-SiLU-dropout-conv, skip; then the
    temporal conv block. The only layer that reads the (per-frame) time embedding."""

    def __init__(self, channels: int, emb_channels: int, out_channels: int, temporal_conv: bool,
                 dropout: float = 0.0, temporal_conv_dropout: float = 0.1):
        super().__init__()
        self.in_layers = nn.Sequential(Float32GroupNorm(32, channels), nn.SiLU(),
                                       nn.Conv2d(channels, out_channels, 3, padding=1))
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_channels, out_channels))
        self.out_layers = nn.Sequential(Float32GroupNorm(32, out_channels), nn.SiLU(), nn.Dropout(dropout),
                                        nn.Conv2d(out_channels, out_channels, 3, padding=1))
        self.skip_connection = (nn.Identity() if out_channels == channels
                                else nn.Conv2d(channels, out_channels, 1))
        if temporal_conv:
            self.temopral_conv = TemporalConvBlock(out_channels, temporal_conv_dropout)
        else:
            self.temopral_conv = None

    def forward(self, x: torch.Tensor, emb: torch.Tensor, batch: int) -> torch.Tensor:
        h = self.in_layers(x)
        h = h + self.emb_layers(emb).type(h.dtype)[:, :, None, None]
        h = self.skip_connection(x) + self.out_layers(h)
        if self.temopral_conv is not None:
            h = self.temopral_conv(h, batch)
        return h


class Downsample(nn.Module):
    """3x3 conv with stride 2 (``op``)."""

    def __init__(self, channels: int):
        super().__init__()
        self.op = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


class Upsample(nn.Module):
    """Nearest-neighbour x2, then a 3x3 conv (``conv``)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))


class LayerSequence(nn.Sequential):
    """LVDM's ``TimestepEmbedSequential``: hands each layer the inputs it reads."""

    def forward(self, x: torch.Tensor, emb: torch.Tensor, context: torch.Tensor, batch: int) -> torch.Tensor:
        for layer in self:
            if isinstance(layer, ResBlock):
                x = layer(x, emb, batch)
            elif isinstance(layer, SpatialTransformer):
                x = layer(x, context)
            elif isinstance(layer, TemporalTransformer):
                x = layer(x, batch)
            else:
                x = layer(x)
        return x


class VideoCrafter2UNet(nn.Module):
    """LVDM ``UNetModel`` as configured by VideoCrafter2 ``base_512_v2``; predicts epsilon.

    ``forward(x [B, C, F, H, W], timesteps [B] or [B, F], context [B, L, context_dim], fps [B] or number)``.
    """

    def __init__(self, config: VideoCrafter2UNetConfig = VIDEOCRAFTER2_CONFIG):
        super().__init__()
        self.config = cfg = config
        mc = cfg.model_channels
        emb_dim = 4 * mc
        self.time_embed = nn.Sequential(nn.Linear(mc, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        if cfg.fps_cond:
            self.fps_embedding = nn.Sequential(nn.Linear(mc, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        else:
            self.fps_embedding = None

        def resblock(ch_in: int, ch_out: int) -> ResBlock:
            return ResBlock(ch_in, emb_dim, ch_out, cfg.temporal_conv, cfg.dropout, cfg.temporal_conv_dropout)

        def attention_layers(ch: int) -> list:
            heads, head_dim = cfg.heads_for(ch)
            layers: list = [SpatialTransformer(ch, heads, head_dim, cfg.transformer_depth, cfg.context_dim,
                                               cfg.dropout)]
            layers.append(TemporalTransformer(ch, heads, head_dim, cfg.temporal_transformer_depth, True,
                                              cfg.dropout))
            return layers

        self.input_blocks = nn.ModuleList([LayerSequence(nn.Conv2d(cfg.in_channels, mc, 3, padding=1))])
        if cfg.addition_attention:
            init_head_dim = cfg.init_attn_head_channels or cfg.num_head_channels
            self.init_attn = LayerSequence(TemporalTransformer(mc, cfg.init_attn_heads, init_head_dim,
                                                               cfg.transformer_depth, False, cfg.dropout))
        else:
            self.init_attn = None

        skip_channels = [mc]
        ch, rate = mc, 1
        for level, mult in enumerate(cfg.channel_mult):
            for _ in range(cfg.num_res_blocks):
                layers = [resblock(ch, mult * mc)]
                ch = mult * mc
                if rate in cfg.attention_resolutions:
                    layers += attention_layers(ch)
                self.input_blocks.append(LayerSequence(*layers))
                skip_channels.append(ch)
            if level != len(cfg.channel_mult) - 1:
                self.input_blocks.append(LayerSequence(Downsample(ch)))
                skip_channels.append(ch)
                rate *= 2

        self.middle_block = LayerSequence(resblock(ch, ch), *attention_layers(ch), resblock(ch, ch))

        self.output_blocks = nn.ModuleList()
        for level, mult in reversed(list(enumerate(cfg.channel_mult))):
            for i in range(cfg.num_res_blocks + 1):
                layers = [resblock(ch + skip_channels.pop(), mult * mc)]
                ch = mult * mc
                if rate in cfg.attention_resolutions:
                    layers += attention_layers(ch)
                if level and i == cfg.num_res_blocks:
                    layers.append(Upsample(ch))
                    rate //= 2
                self.output_blocks.append(LayerSequence(*layers))

        self.out = nn.Sequential(Float32GroupNorm(32, ch), nn.SiLU(), nn.Conv2d(mc, cfg.out_channels, 3, padding=1))

    def time_embedding(self, timesteps: torch.Tensor, fps: Union[torch.Tensor, float, None],
                       batch: int, frames: int) -> torch.Tensor:
        """The ``(B·F, 4·model_channels)`` embedding in ``(b f)`` order.

        ``[B]`` timesteps are embedded once per video and repeated over frames (LVDM); ``[B, F]`` are embedded
        per frame (FIFO / MIGA). The fps embedding is per video.
        """
        mc = self.config.model_channels
        dtype = self.time_embed[0].weight.dtype
        timesteps = torch.as_tensor(timesteps, device=self.time_embed[0].weight.device)
        if timesteps.ndim == 0:
            timesteps = timesteps.expand(batch)
        if timesteps.ndim == 1:
            if timesteps.shape[0] != batch:
                raise ValueError(f"timesteps {tuple(timesteps.shape)} do not match batch {batch}")
            emb = self.time_embed(sinusoidal_embedding(timesteps, mc).to(dtype))
            per_frame = False
        elif timesteps.shape == (batch, frames):
            emb = self.time_embed(sinusoidal_embedding(timesteps.reshape(-1), mc).to(dtype))
            per_frame = True
        else:
            raise ValueError(f"timesteps {tuple(timesteps.shape)} must be [B] or [B, F] = [{batch}, {frames}]")
        if self.fps_embedding is not None:
            fps_values = torch.as_tensor(16 if fps is None else fps, device=emb.device)
            fps_values = fps_values.reshape(-1).expand(batch) if fps_values.numel() == 1 else fps_values
            fps_emb = self.fps_embedding(sinusoidal_embedding(fps_values, mc).to(dtype))
            emb = emb + (fps_emb.repeat_interleave(frames, dim=0) if per_frame else fps_emb)
        return emb if per_frame else emb.repeat_interleave(frames, dim=0)

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor, context: torch.Tensor,
                fps: Union[torch.Tensor, float, None] = 16) -> torch.Tensor:
        """Epsilon for latents ``x`` ``[B, C, F, H, W]`` (H, W divisible by 2^(levels-1))."""
        batch, _, frames, _, _ = x.shape
        emb = self.time_embedding(timesteps, fps, batch, frames)
        context = context.repeat_interleave(frames, dim=0)
        h = _video_to_frames(x).type(emb.dtype)
        skips = []
        for index, block in enumerate(self.input_blocks):
            h = block(h, emb, context, batch)
            if index == 0 and self.init_attn is not None:
                h = self.init_attn(h, emb, context, batch)
            skips.append(h)
        h = self.middle_block(h, emb, context, batch)
        for block in self.output_blocks:
            h = block(torch.cat([h, skips.pop()], dim=1), emb, context, batch)
        return _frames_to_video(self.out(h).type(x.dtype), batch)

    def temporal_transformers(self) -> list:
        """Every :class:`TemporalTransformer` (``init_attn`` included), in module order: their blocks' ``attn1``
        and ``attn2`` are the temporal self-attentions attention policies replace (:mod:`miga.baselines.hooks`)."""
        return [m for m in self.modules() if isinstance(m, TemporalTransformer)]


def strip_checkpoint_prefix(state_dict: dict, prefix: str = CHECKPOINT_PREFIX) -> dict:
    """The UNet's entries of an LVDM ``model.ckpt`` ``state_dict``, without ``prefix``."""
    return {key[len(prefix):]: value for key, value in state_dict.items() if key.startswith(prefix)}


def expected_keys(config: VideoCrafter2UNetConfig = VIDEOCRAFTER2_CONFIG,
                  prefix: str = CHECKPOINT_PREFIX) -> Sequence[Tuple[str, Tuple[int, ...]]]:
    """(key, shape) of every parameter, built on the meta device (no memory)."""
    with torch.device("meta"):
        model = VideoCrafter2UNet(config)
    return [(prefix + name, tuple(t.shape)) for name, t in model.state_dict().items()]


def config_from_state_dict(state_dict: dict) -> VideoCrafter2UNetConfig:
    """The :class:`VideoCrafter2UNetConfig` a (prefix-free) LVDM UNet state dict was built with.

    Widths, levels, blocks per level, attention levels, depths and the optional parts are read from the tensor
    names and shapes. The head width is not stored anywhere; LVDM's ``init_attn`` always has 8 heads of
    ``num_head_channels``, so it is read from there (64, VideoCrafter2's value, when there is no ``init_attn``).
    """
    def shape(key: str) -> Tuple[int, ...]:
        if key not in state_dict:
            raise KeyError(key)
        return tuple(state_dict[key].shape)

    mc, in_ch = shape("input_blocks.0.0.weight")[:2]
    out_ch = shape("out.2.weight")[0]
    blocks = sorted({int(k.split(".")[1]) for k in state_dict if k.startswith("input_blocks.")})
    channel_mult, attention_rates, res_counts = [], set(), [0]
    rate = 1
    for index in blocks[1:]:
        prefix = f"input_blocks.{index}."
        if prefix + "0.op.weight" in state_dict:  # a Downsample closes the level
            rate *= 2
            res_counts.append(0)
            continue
        width = shape(prefix + "0.in_layers.2.weight")[0]
        if res_counts[-1] == 0:
            channel_mult.append(width // mc)
        res_counts[-1] += 1
        if prefix + "1.proj_in.weight" in state_dict:
            attention_rates.add(rate)
    if len(set(res_counts)) != 1:
        raise ValueError(f"levels have different numbers of ResBlocks: {res_counts}")

    def depth(prefix: str) -> int:
        return len({k.split(".")[len(prefix.split(".")) - 1] for k in state_dict if k.startswith(prefix)})

    first_attn = next((f"input_blocks.{i}." for i in blocks
                       if f"input_blocks.{i}.1.proj_in.weight" in state_dict), None)
    context_dim = 1024
    spatial_depth = temporal_depth = 1
    if first_attn is not None:
        context_dim = shape(first_attn + "1.transformer_blocks.0.attn2.to_k.weight")[1]
        spatial_depth = depth(first_attn + "1.transformer_blocks.")
        temporal_depth = depth(first_attn + "2.transformer_blocks.")
    addition_attention = "init_attn.0.proj_in.weight" in state_dict
    head_channels = shape("init_attn.0.proj_in.weight")[0] // 8 if addition_attention else 64
    return VideoCrafter2UNetConfig(
        in_channels=in_ch, out_channels=out_ch, model_channels=mc, attention_resolutions=tuple(sorted(
            attention_rates, reverse=True)), num_res_blocks=res_counts[0], channel_mult=tuple(channel_mult),
        num_head_channels=head_channels, num_heads=-1, transformer_depth=spatial_depth,
        temporal_transformer_depth=temporal_depth, context_dim=context_dim,
        temporal_conv=any(".temopral_conv." in k for k in state_dict), addition_attention=addition_attention,
        init_attn_heads=8, init_attn_head_channels=None, fps_cond="fps_embedding.0.weight" in state_dict)


_RESNET_NAMES = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1",
                 "norm2": "out_layers.0", "conv2": "out_layers.3", "conv_shortcut": "skip_connection"}


def _diffusers_resnet(rest: str) -> str:
    head, _, tail = rest.partition(".")
    return f"{_RESNET_NAMES[head]}.{tail}"


def lvdm_state_dict_from_diffusers(state_dict: dict) -> dict:
    """Rename a VideoCrafter2 UNet stored in diffusers' ``UNet3DConditionModel`` layout (the community
    conversion: ``down_blocks.*.resnets/temp_convs/attentions/temp_attentions``, ``transformer_in``, plus
    ``fps_embedding.linear_1/2``) to LVDM's names, reshaping 1x1-conv and linear projections as LVDM has them.

    Raises ``KeyError`` naming the first tensor it cannot place.
    """
    import re

    res_per_level = 1 + max(int(m.group(1)) for k in state_dict
                            if (m := re.match(r"down_blocks\.0\.resnets\.(\d+)\.", k)))
    levels = 1 + max(int(k.split(".")[1]) for k in state_dict if k.startswith("down_blocks."))
    has_attention = {i: any(k.startswith(f"down_blocks.{i}.attentions.") for k in state_dict)
                     for i in range(levels)}
    up_attention = {i: any(k.startswith(f"up_blocks.{i}.attentions.") for k in state_dict) for i in range(levels)}
    fixed = {"conv_in": "input_blocks.0.0", "time_embedding.linear_1": "time_embed.0",
             "time_embedding.linear_2": "time_embed.2", "fps_embedding.linear_1": "fps_embedding.0",
             "fps_embedding.linear_2": "fps_embedding.2", "conv_norm_out": "out.0", "conv_out": "out.2"}
    out = {}
    for key, value in state_dict.items():
        new = None
        module, _, param = key.rpartition(".")
        if module in fixed:
            new = f"{fixed[module]}.{param}"
        elif key.startswith("transformer_in."):
            new = "init_attn.0." + key[len("transformer_in."):]
        elif m := re.match(r"(down|up)_blocks\.(\d+)\.(resnets|temp_convs|attentions|temp_attentions|"
                           r"downsamplers|upsamplers)\.(\d+)\.(.*)", key):
            side, level, kind, j, rest = m.group(1), int(m.group(2)), m.group(3), int(m.group(4)), m.group(5)
            if side == "down":
                block = f"input_blocks.{1 + level * (res_per_level + 1) + j}"
                attn = has_attention[level]
            else:
                block = f"output_blocks.{level * (res_per_level + 1) + j}"
                attn = up_attention[level]
            if kind == "resnets":
                new = f"{block}.0.{_diffusers_resnet(rest)}"
            elif kind == "temp_convs":
                new = f"{block}.0.temopral_conv.{rest}"
            elif kind == "attentions":
                new = f"{block}.1.{rest}"
            elif kind == "temp_attentions":
                new = f"{block}.2.{rest}"
            elif kind == "downsamplers":
                new = f"input_blocks.{1 + level * (res_per_level + 1) + res_per_level}.0.op.{rest.split('.', 1)[1]}"
            else:  # the upsampler ends the level's last output block
                last = f"output_blocks.{level * (res_per_level + 1) + res_per_level}"
                new = f"{last}.{3 if attn else 1}.conv.{rest.split('.', 1)[1]}"
        elif m := re.match(r"mid_block\.(resnets|temp_convs|attentions|temp_attentions)\.(\d+)\.(.*)", key):
            kind, j, rest = m.group(1), int(m.group(2)), m.group(3)
            if kind == "resnets":
                new = f"middle_block.{3 * j}.{_diffusers_resnet(rest)}"
            elif kind == "temp_convs":
                new = f"middle_block.{3 * j}.temopral_conv.{rest}"
            else:
                new = f"middle_block.{1 if kind == 'attentions' else 2}.{rest}"
        if new is None:
            raise KeyError(key)
        out[new] = value
    return out


def match_projection_shapes(state_dict: dict, model: nn.Module) -> dict:
    """Reshape 1x1-conv / linear projection weights (``[o, i, 1, 1]``, ``[o, i, 1]``, ``[o, i]``) to the shape
    ``model`` has under the same name; other tensors are returned as they are."""
    own = model.state_dict()
    fixed = {}
    for key, value in state_dict.items():
        want = own.get(key)
        if (want is not None and tuple(value.shape) != tuple(want.shape) and value.numel() == want.numel()
                and key.endswith("weight") and (".proj_in." in key or ".proj_out." in key)):
            value = value.reshape(want.shape)
        fixed[key] = value
    return fixed
