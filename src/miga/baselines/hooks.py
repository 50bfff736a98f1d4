"""Attention policies on a model's temporal self-attentions, for the duration of a ``with`` block.

::

    with attention_policy(backbone, WindowedAttention(FreeNoiseConfig(window=16, stride=4))):
        eps = backbone.predict(latents, levels, conds)

:func:`attention_policy` takes a backbone (anything with ``temporal_attention_network()``, which every miga
backbone has: it returns its denoising network, or raises a one-line :class:`~miga.errors.MigaError` when the
model has no separate temporal attention) or the network itself, and installs the policy
(:mod:`miga.baselines.attention`) on **every** temporal self-attention of it:

- the built-in model v2 (:class:`~miga.toy.nets.AttentionDenoiser`): each ``TemporalSelfAttention``'s
  ``policy`` slot (its relative-distance bias is passed on as ``bias``);
- VideoCrafter2 (:class:`~miga.backbones.videocrafter2_unet.VideoCrafter2UNet`): ``attn1`` and ``attn2`` of every
  ``TemporalTransformer`` block, ``init_attn`` included (34 layers at full size, §1.7), by an instance-level
  ``forward`` that projects q/k/v with the layer's own weights and calls the policy;
- diffusers ``UNet3DConditionModel`` (ModelScope, Zeroscope): ``attn1`` and ``attn2`` (both self-attention,
  ``double_self_attention``) of every ``TransformerTemporalModel`` (``transformer_in`` and each
  ``temp_attentions`` entry), through an attention processor; the original processors are put back after;
- Wan2.1 and SkyReels-V2 (full 3-D attention over all tokens, no separate temporal attention): only FreeNoise's
  :class:`~miga.baselines.attention.WindowedAttention`, as **window fusion of each 3-D self-attention**
  (``baselines.md`` §4.3 c, the attention-level variant): every block's ``attn1`` runs its own processor on
  the tokens of each frame window ``[s, s + W)`` with those tokens' rotary embeddings (RoPE is relative, so this
  is 3-D attention restricted to the window), and a token's output is the pyramid-weighted mean over the
  windows that hold its frame. The original processor does the work (projections, q/k norms, RoPE, output
  projection: affine, so averaging after it equals averaging before). Other policies are refused in one line:
  FreeLong and FreePCA are not defined for full 3-D attention (§2.2 c, §3.3 c).

Spatial attention is never touched. Everything installed (policy slots, forwards, processors, the
forward-pre-hooks that record each layer's ``(B, F, h, w)`` grid and each call's timestep) is removed when the
block ends, also after an exception.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Optional

import torch
from torch import nn

from miga.baselines.attention import AttentionPolicy, AttentionSite, WindowedAttention, window_starts, window_weights
from miga.errors import MigaError

__all__ = ["FULL_3D_ATTENTION", "NO_TEMPORAL_ATTENTION", "is_full_3d_attention", "attention_policy", "temporal_attention_layers",
           "temporal_attention_network"]

FULL_3D_ATTENTION = ("FreeLong and FreePCA need a model with separate temporal attention; {model} uses full 3-D "
                     "attention, where they are not defined (FreeNoise runs there as window fusion; use "
                     "VideoCrafter2, a UNet3D model or the built-in model v2 for FreeLong and FreePCA)")
NO_TEMPORAL_ATTENTION = ("{model} has no temporal self-attention for FreeNoise, FreeLong or FreePCA to act on "
                         "(use VideoCrafter2, a UNet3D model or the built-in model v2: --model shapes or shapes-df)")
_FULL_3D_CLASSES = ("WanTransformer3DModel", "SkyReelsV2Transformer3DModel")


def temporal_attention_network(target: Any) -> nn.Module:
    """The network whose temporal self-attentions a policy replaces: ``target.temporal_attention_network()`` for
    a backbone, ``target`` itself for a network."""
    method = getattr(target, "temporal_attention_network", None)
    network = method() if callable(method) else target
    if not isinstance(network, nn.Module):
        raise MigaError(NO_TEMPORAL_ATTENTION.format(model=type(target).__name__))
    return network


@dataclass
class _Layer:
    name: str
    owner: nn.Module  # the module whose input reveals the grid
    attention: nn.Module


@dataclass
class _Call:
    """What the model-level pre-hook saw for the current forward."""
    timestep: Optional[float] = None
    finest: Optional[int] = None  # height of the finest temporal-attention grid


def _arg(args: tuple, kwargs: dict, index: int, name: str, default=None):
    if name in kwargs:
        return kwargs[name]
    return args[index] if len(args) > index else default


def _uniform_timestep(t) -> Optional[float]:
    """The single timestep of a call (scalar, [B] or [B, F] all equal), else None."""
    if t is None:
        return None
    t = torch.as_tensor(t)
    if t.numel() == 0:
        return None
    flat = t.reshape(-1)
    return float(flat[0]) if bool((flat == flat[0]).all()) else None


class _Adapter:
    """How one kind of network exposes its temporal self-attentions."""

    def layers(self, net: nn.Module) -> list[_Layer]:
        raise NotImplementedError

    def model_call(self, net: nn.Module, args: tuple, kwargs: dict) -> tuple[Any, int]:
        """(timesteps, finest grid height) of one forward of the network."""
        raise NotImplementedError

    def grid(self, owner: nn.Module, args: tuple, kwargs: dict) -> tuple[int, int, int, int]:
        raise NotImplementedError

    def install(self, layer: _Layer, policy: AttentionPolicy, site: Callable[[], Optional[AttentionSite]],
                stack: contextlib.ExitStack) -> None:
        raise NotImplementedError

    def check(self, net: nn.Module, policy: AttentionPolicy) -> None:
        """Refuse (one line) a policy this kind of network cannot take; every policy by default."""


class _ToyAdapter(_Adapter):
    """Model v2: ``TemporalSelfAttention.policy(q, k, v, bias)``."""

    def layers(self, net):
        names = {id(m): n for n, m in net.named_modules()}
        return [_Layer(names.get(id(m), ""), m, m) for m in net.temporal_attentions()]

    def model_call(self, net, args, kwargs):
        x = _arg(args, kwargs, 0, "x")
        return _arg(args, kwargs, 1, "timesteps"), x.shape[-2] // getattr(net, "patch", 1)

    def grid(self, owner, args, kwargs):
        b, _, f, h, w = _arg(args, kwargs, 0, "x").shape
        return b, f, h, w

    def install(self, layer, policy, site, stack):
        module, previous = layer.attention, layer.attention.policy
        module.policy = lambda q, k, v, bias: policy(q, k, v, bias, site())
        stack.callback(setattr, module, "policy", previous)


class _VideoCrafter2Adapter(_Adapter):
    """miga's LVDM UNet: ``Attention.forward`` of each temporal transformer block, replaced per instance."""

    def layers(self, net):
        names = {id(m): n for n, m in net.named_modules()}
        return [_Layer(names.get(id(a), ""), tt, a) for tt in net.temporal_transformers()
                for block in tt.transformer_blocks for a in (block.attn1, block.attn2)]

    def model_call(self, net, args, kwargs):
        return _arg(args, kwargs, 1, "timesteps"), _arg(args, kwargs, 0, "x").shape[-2]

    def grid(self, owner, args, kwargs):
        frames, batch = _arg(args, kwargs, 0, "frames"), _arg(args, kwargs, 1, "batch")
        bf, _, h, w = frames.shape
        return batch, bf // batch, h, w

    def install(self, layer, policy, site, stack):
        attn = layer.attention
        own = type(attn).forward

        def forward(x: torch.Tensor, context: Optional[torch.Tensor] = None) -> torch.Tensor:
            if context is not None:
                return own(attn, x, context)
            q, k, v = attn.to_q(x), attn.to_k(x), attn.to_v(x)
            n, length, inner = q.shape
            split = lambda t: t.reshape(n, length, attn.heads, inner // attn.heads).transpose(1, 2)  # noqa: E731
            out = policy(split(q), split(k), split(v), None, site())
            return attn.to_out(out.transpose(1, 2).reshape(n, length, inner))

        previous = attn.__dict__.get("forward")
        attn.forward = forward

        def restore():
            if previous is None:
                attn.__dict__.pop("forward", None)
            else:
                attn.forward = previous

        stack.callback(restore)


class _PolicyProcessor:
    """A diffusers attention processor that runs ``policy`` for self-attention (AttnProcessor2_0's steps, with
    the softmax replaced) and hands anything else (cross-attention, masks, 4-D inputs) to the original."""

    def __init__(self, policy: AttentionPolicy, site: Callable[[], Optional[AttentionSite]], original):
        self.policy, self.site, self.original = policy, site, original

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None,
                 *args, **kwargs):
        if (encoder_hidden_states is not None or attention_mask is not None or hidden_states.ndim != 3
                or getattr(attn, "spatial_norm", None) is not None):
            return self.original(attn, hidden_states, encoder_hidden_states, attention_mask, temb, *args, **kwargs)
        residual = hidden_states
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        q, k, v = attn.to_q(hidden_states), attn.to_k(hidden_states), attn.to_v(hidden_states)
        batch, head_dim = q.shape[0], k.shape[-1] // attn.heads
        q, k, v = (t.view(batch, -1, attn.heads, head_dim).transpose(1, 2) for t in (q, k, v))
        if attn.norm_q is not None:
            q = attn.norm_q(q)
        if attn.norm_k is not None:
            k = attn.norm_k(k)
        out = self.policy(q, k, v, None, self.site())
        out = out.transpose(1, 2).reshape(batch, -1, attn.heads * head_dim).to(q.dtype)
        out = attn.to_out[1](attn.to_out[0](out))
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor


class _DiffusersUNet3DAdapter(_Adapter):
    """diffusers ``UNet3DConditionModel``: processors of the ``TransformerTemporalModel`` self-attentions."""

    def layers(self, net):
        found = []
        for name, module in net.named_modules():
            if type(module).__name__ != "TransformerTemporalModel":
                continue
            for i, block in enumerate(module.transformer_blocks):
                for key in ("attn1", "attn2"):
                    attn = getattr(block, key, None)
                    if attn is not None and not getattr(attn, "is_cross_attention", False):
                        found.append(_Layer(f"{name}.transformer_blocks.{i}.{key}", module, attn))
        return found

    def model_call(self, net, args, kwargs):
        return _arg(args, kwargs, 1, "timestep"), _arg(args, kwargs, 0, "sample").shape[-2]

    def grid(self, owner, args, kwargs):
        hidden = _arg(args, kwargs, 0, "hidden_states")
        frames = int(_arg(args, kwargs, 4, "num_frames", 1))
        bf, _, h, w = hidden.shape
        return bf // frames, frames, h, w

    def install(self, layer, policy, site, stack):
        attn = layer.attention
        previous = attn.processor
        attn.set_processor(_PolicyProcessor(policy, site, previous))
        stack.callback(attn.set_processor, previous)


class _WindowFusionProcessor:
    """A Wan/SkyReels self-attention processor: the original processor on each frame window's tokens (with their
    rotary embeddings and mask block), fused by the windows' per-frame weights (FreeNoise, §4.3 c)."""

    def __init__(self, policy: WindowedAttention, site: Callable[[], Optional[AttentionSite]], original):
        self.policy, self.site, self.original = policy, site, original

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, rotary_emb=None,
                 *args, **kwargs):
        site = self.site()
        if encoder_hidden_states is not None or site is None:
            return self.original(attn, hidden_states, encoder_hidden_states, attention_mask, rotary_emb,
                                 *args, **kwargs)
        c = self.policy.config
        _, frames, h, w = site.grid
        per_frame = h * w
        if hidden_states.shape[1] != frames * per_frame:
            raise ValueError(f"{site.name}: {hidden_states.shape[1]} tokens do not match the grid {site.grid}")
        starts = window_starts(frames, c.window, c.stride, c.tail)
        length = min(c.window, frames)
        if len(starts) == 1:
            return self.original(attn, hidden_states, None, attention_mask, rotary_emb, *args, **kwargs)
        weights = window_weights(length, c.weighting).to(hidden_states.device).repeat_interleave(per_frame)
        acc = count = None
        for s in starts:
            tokens = slice(s * per_frame, (s + length) * per_frame)
            rope = None if rotary_emb is None else tuple(r[:, tokens] for r in rotary_emb)
            mask = None if attention_mask is None else attention_mask[..., tokens, tokens]
            out = self.original(attn, hidden_states[:, tokens], None, mask, rope, *args, **kwargs).float()
            if acc is None:
                acc = torch.zeros(out.shape[0], hidden_states.shape[1], out.shape[2], device=out.device)
                count = torch.zeros(hidden_states.shape[1], device=out.device)
            acc[:, tokens] += out * weights[:, None]
            count[tokens] += weights
        return (acc / count[:, None]).to(hidden_states.dtype)


class _Full3DAdapter(_Adapter):
    """Wan2.1 / SkyReels-V2 transformers: each block's ``attn1`` (3-D self-attention), window-fused."""

    def layers(self, net):
        return [_Layer(f"blocks.{i}.attn1", net, block.attn1) for i, block in enumerate(net.blocks)]

    def model_call(self, net, args, kwargs):
        return _arg(args, kwargs, 1, "timestep"), None

    def grid(self, owner, args, kwargs):
        b, _, f, h, w = _arg(args, kwargs, 0, "hidden_states").shape
        p_t, p_h, p_w = owner.config.patch_size
        return b, f // p_t, h // p_h, w // p_w

    def check(self, net, policy):
        if not isinstance(policy, WindowedAttention):
            raise MigaError(FULL_3D_ATTENTION.format(model=type(net).__name__))

    def install(self, layer, policy, site, stack):
        attn = layer.attention
        previous = attn.processor
        attn.set_processor(_WindowFusionProcessor(policy, site, previous))
        stack.callback(attn.set_processor, previous)


def is_full_3d_attention(target: Any) -> bool:
    """Whether ``target`` (a backbone or its network) is a full 3-D attention model (Wan2.1, SkyReels-V2)."""
    try:
        net = temporal_attention_network(target)
    except MigaError:
        return False
    return type(net).__name__ in _FULL_3D_CLASSES


def _adapter(net: nn.Module) -> _Adapter:
    from miga.backbones.videocrafter2_unet import VideoCrafter2UNet
    from miga.toy.nets import AttentionDenoiser, SpaceTimeDenoiser

    if isinstance(net, AttentionDenoiser):
        return _ToyAdapter()
    if isinstance(net, VideoCrafter2UNet):
        return _VideoCrafter2Adapter()
    kind = type(net).__name__
    if kind in _FULL_3D_CLASSES:
        return _Full3DAdapter()
    if isinstance(net, SpaceTimeDenoiser):
        raise MigaError(NO_TEMPORAL_ATTENTION.format(model="the built-in model v1 (a convolutional denoiser)"))
    if kind == "UNet3DConditionModel" or any(type(m).__name__ == "TransformerTemporalModel" for m in net.modules()):
        return _DiffusersUNet3DAdapter()
    raise MigaError(NO_TEMPORAL_ATTENTION.format(model=kind))


def temporal_attention_layers(target: Any) -> list[str]:
    """Names (inside the network) of the temporal self-attentions a policy replaces, in order."""
    net = temporal_attention_network(target)
    return [layer.name for layer in _adapter(net).layers(net)]


def _level(finest: Optional[int], height: int) -> int:
    if not finest or height <= 0:
        return 0
    return max(0, round(math.log2(finest / height)))


@contextlib.contextmanager
def attention_policy(target: Any, policy: Optional[AttentionPolicy]) -> Iterator[None]:
    """While active, every temporal self-attention of ``target`` (a backbone or its network) computes
    ``policy(q, k, v, bias, site)`` instead of its softmax attention; ``policy=None`` changes nothing.

    The :class:`~miga.baselines.attention.AttentionSite` of each call carries the layer's ``(B, F, h, w)`` grid,
    the call's timestep (when all frames share one), the layer's level (0 = finest) and its softmax scale.
    Everything is undone on exit, also after an exception. Raises :class:`~miga.errors.MigaError` (one line)
    for models without temporal self-attention (the built-in model v1, the Gaussian worlds), and for any policy but
    FreeNoise's on full 3-D attention (Wan2.1, SkyReels-V2).
    """
    if policy is None:
        yield
        return
    net = temporal_attention_network(target)
    adapter = _adapter(net)
    adapter.check(net, policy)
    layers = adapter.layers(net)
    if not layers:
        raise MigaError(NO_TEMPORAL_ATTENTION.format(model=type(net).__name__))
    call = _Call()
    grids: dict[int, Optional[tuple[int, int, int, int]]] = {}

    def on_model(module, args, kwargs):
        timesteps, call.finest = adapter.model_call(module, args, kwargs)
        call.timestep = _uniform_timestep(timesteps)

    def on_owner(module, args, kwargs):
        grids[id(module)] = adapter.grid(module, args, kwargs)

    def site_of(layer: _Layer) -> Callable[[], Optional[AttentionSite]]:
        scale = getattr(layer.attention, "scale", None) if isinstance(adapter, _DiffusersUNet3DAdapter) else None

        def site() -> Optional[AttentionSite]:
            grid = grids.get(id(layer.owner))
            if grid is None:
                return None
            return AttentionSite(grid=grid, timestep=call.timestep, level=_level(call.finest, grid[2]),
                                 scale=scale, name=layer.name)
        return site

    with contextlib.ExitStack() as stack:
        stack.callback(grids.clear)
        stack.callback(net.register_forward_pre_hook(on_model, with_kwargs=True).remove)
        for owner in {id(layer.owner): layer.owner for layer in layers}.values():
            stack.callback(owner.register_forward_pre_hook(on_owner, with_kwargs=True).remove)
        for layer in layers:
            adapter.install(layer, policy, site_of(layer), stack)
        yield
