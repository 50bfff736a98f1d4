"""FreeNoise, FreeLong and FreePCA as runnable methods: what :class:`miga.pipeline.LongVideo` hands the
full-sequence engine (:mod:`miga.engine.full_sequence`) for a method config (:mod:`miga.config`), the up-front
checks, and the memory estimate ``miga generate`` refuses on.

- :func:`check_backbone`: refuse (one line) a model without separate temporal attention, before any work;
- :func:`check_length`: refuse a length the method's windows do not cover (FreeNoise/FreePCA, FreeLong's init);
- :func:`noise_rule`, :func:`step_context`: the initial-noise rule and the per-step attention policy;
- :func:`estimate_peak_bytes`, :func:`available_bytes`, :func:`check_memory`: memory honesty (see
  :func:`estimate_peak_bytes` for the formula).
"""

from __future__ import annotations

import contextlib
import math
import os
from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch

from miga.baselines.attention import (GlobalAttention, PCAFuseAttention, SpectralBlendAttention, WindowedAttention,
                                      window_starts)
from miga.baselines.hooks import (FULL_3D_ATTENTION, attention_policy, is_full_3d_attention,
                                  temporal_attention_layers, temporal_attention_network)
from miga.baselines.noise import freenoise_reschedule, freepca_gate_by_step, freepca_mean_reuse
from miga.errors import MigaError

__all__ = ["MemoryEstimate", "available_bytes", "check_backbone", "check_fps_condition", "check_length", "check_memory",
           "estimate_peak_bytes", "noise_rule", "step_context"]

NAMES = {"freenoise": "FreeNoise", "freelong": "FreeLong", "freepca": "FreePCA"}


def check_backbone(backbone: Any, method: str) -> None:
    """Raise the hook's one-line :class:`MigaError` when ``backbone`` has no temporal self-attention for ``method``
    (model v1, the Gaussian worlds; FreeLong and FreePCA on Wan2.1 and SkyReels-V2, whose full 3-D attention only
    FreeNoise's window fusion is defined on), naming the models that work; nothing is installed. Methods that need
    no temporal attention (``scalingnoise``: FIFO's queue and a decoder; ``fifo``, ``miga``) pass on every model."""
    if method in ("scalingnoise", "fifo", "miga"):
        return
    try:
        if method != "freenoise" and is_full_3d_attention(backbone):
            raise MigaError(FULL_3D_ATTENTION.format(model=type(temporal_attention_network(backbone)).__name__))
        temporal_attention_layers(backbone)
    except MigaError as exc:
        raise MigaError(f"--method {method}: {exc}") from None


def check_length(config: Any, native_frames: int, num_latents: int) -> None:
    """Refuse (one line) a number of latents the method's windows do not cover."""
    att = config.attention_config(native_frames)
    if config.method in ("freenoise", "freepca"):
        window_starts(num_latents, att.window, att.stride, att.tail)
    if config.method == "freelong" and config.reschedule_noise:
        window_starts(num_latents, *config.noise_windows(native_frames))


def noise_rule(config: Any, native_frames: int) -> Optional[Callable[[torch.Tensor, torch.Generator], torch.Tensor]]:
    """The method's initial-noise rule on ``[N, C, H, W]`` noise: FreeNoise's rescheduling (FreeNoise, FreeLong),
    FreePCA's mean reuse, or None."""
    att = config.attention_config(native_frames)
    if config.method == "freenoise" and config.reschedule_noise:
        return lambda x, g: freenoise_reschedule(x, att.window, att.stride, generator=g, dim=0, tail=att.tail)
    if config.method == "freelong" and config.reschedule_noise:
        w, s = config.noise_windows(native_frames)
        return lambda x, g: freenoise_reschedule(x, w, s, generator=g, dim=0)
    if config.method == "freepca" and config.mean_reuse:
        return lambda x, g: freepca_mean_reuse(x, att.window, dim=0)
    return None


def policy_for(config: Any, native_frames: int, step: int = 0, steps: int = 1):
    """The attention policy of ``config`` at step ``step`` of ``steps``."""
    att = config.attention_config(native_frames)
    if config.method == "freenoise":
        return WindowedAttention(att)
    if config.method == "freelong":
        return SpectralBlendAttention(att)
    if config.method == "freepca":
        fuse = freepca_gate_by_step(step, steps) if config.gate == "step" else None
        return PCAFuseAttention(att, fuse=fuse)
    raise MigaError(f"unknown full-sequence method {config.method!r}")


@contextlib.contextmanager
def _fps_condition(backbone: Any, fps: Optional[float]):
    """``backbone.fps_condition`` set to ``fps`` while active (an fps-conditioned UNet's input), then restored."""
    if fps is None:
        yield
        return
    previous = backbone.fps_condition
    backbone.fps_condition = float(fps)
    try:
        yield
    finally:
        backbone.fps_condition = previous


def check_fps_condition(backbone: Any, config: Any) -> None:
    """Refuse (one line) an fps condition for a model that takes none."""
    if getattr(config, "fps_condition", None) is not None and not hasattr(backbone, "fps_condition"):
        raise MigaError(f"--method {config.method}: fps_condition={config.fps_condition:g} needs an fps-conditioned "
                        f"model (VideoCrafter2); {getattr(backbone, 'name', type(backbone).__name__)} takes no fps; "
                        f"use its own preset")


def step_context(backbone: Any, config: Any, native_frames: int) -> Callable[[int, int], Any]:
    """``context(step, steps)``: the method's policy installed on ``backbone`` for that step's model calls, with
    the method's fps condition (VideoCrafter2)."""
    @contextlib.contextmanager
    def context(step: int, steps: int):
        with _fps_condition(backbone, getattr(config, "fps_condition", None)), \
                attention_policy(backbone, policy_for(config, native_frames, step, steps)):
            yield
    return context


# ------------------------------------------------------------------------------------------ memory
@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes of one full-sequence run's peak, by part (see :func:`estimate_peak_bytes`)."""

    latents: int
    activations: int
    attention: int

    @property
    def total(self) -> int:
        return self.latents + self.activations + self.attention


ACTIVATION_FACTOR = 6
"""Live copies of the largest activation during a forward (input, output, residual, normalised and projected
copies); calibrated on the built-in model v2 on the CPU (measured peak RSS growth of FreeNoise at 64-1024 frames)."""

ATTENTION_COPIES = 3
"""fp32 copies of the largest temporal attention map alive at once (logits, logits + mask/bias, softmax);
calibrated likewise on FreeLong and FreePCA."""


def _probe(backbone: Any, frames: int, cond: Any) -> tuple[int, int]:
    """One model call on ``frames`` frames (batch 1, mid level): the largest module output's bytes per frame and
    the temporal attentions' largest ``rows x heads`` per batch element (from the policy's ``q``)."""
    from miga.engine.schedules import Schedule

    net = backbone.temporal_attention_network()
    largest = [0]
    rows_heads = [0]

    def hook(module, args, out):
        if isinstance(out, torch.Tensor):
            largest[0] = max(largest[0], out.numel() * out.element_size())

    def recorder(q, k, v, bias=None, site=None):
        rows_heads[0] = max(rows_heads[0], q.shape[0] * q.shape[1])
        return GlobalAttention()(q, k, v, bias, site)

    full_3d = is_full_3d_attention(backbone)
    if full_3d:  # window fusion runs whole 3-D attention per window: heads x (tokens per frame)^2 per frame pair
        p_t, p_h, p_w = net.config.patch_size
        h, w = backbone.latent_shape[1:]
        rows_heads[0] = net.config.num_attention_heads * ((h // p_h) * (w // p_w)) ** 2
    handles = [m.register_forward_hook(hook) for m in net.modules()]
    try:
        x = torch.zeros(1, backbone.latent_shape[0], frames, *backbone.latent_shape[1:],
                        device=getattr(backbone, "device", "cpu"))
        levels = Schedule(backbone.default_schedule, 2).noise_levels([[1] * frames])
        with torch.no_grad(), (contextlib.nullcontext() if full_3d else attention_policy(backbone, recorder)):
            backbone.predict(x, levels, [cond])
    finally:
        for h in handles:
            h.remove()
    return largest[0] // frames, rows_heads[0]


def estimate_peak_bytes(backbone: Any, config: Any, num_latents: int, cond: Any, *,
                        probe_frames: int = 2) -> MemoryEstimate:
    """The peak memory of a full-sequence run of ``num_latents`` latents, in bytes:

    ``latents = 4 x N x |latent| x 4`` (the sequence, the x0 estimate, the solver history, the new latents, fp32);
    ``activations = B x N x ACTIVATION_FACTOR x a`` with ``a`` the largest activation per frame of one model call
    (measured by a probe call on ``probe_frames`` frames with forward hooks) and ``B`` = 2 with classifier-free
    guidance (one batched call; a backbone's ``model_batch`` of 1 makes it 1), else 1;
    ``attention = ATTENTION_COPIES x B x R x M x 4``: fp32 copies of the largest temporal attention map, ``R`` its
    rows x heads per batch element (from the probe), ``M`` = N² for the global branches of FreeLong and FreePCA,
    N x W for FreeNoise's windows; on full 3-D attention (Wan, SkyReels) ``R`` = heads x (tokens per frame)² and
    ``M`` = W² (one window's 3-D attention at a time). ``cond``: an encoded prompt for the probe call (the text encoder may be gone).
    """
    n = int(num_latents)
    latent = math.prod(backbone.latent_shape)
    per_frame, rows_heads = _probe(backbone, max(1, min(probe_frames, backbone.native_frames)), cond)
    batch = 2 if config.guidance_scale != 1.0 else 1
    if getattr(backbone, "model_batch", None) == 1:
        batch = 1
    window = config.attention_config(backbone.native_frames).window
    if is_full_3d_attention(backbone):
        pairs = min(n, window) ** 2
    else:
        pairs = n * min(n, window) if config.method == "freenoise" else n * n
    return MemoryEstimate(latents=4 * n * latent * 4, activations=batch * n * ACTIVATION_FACTOR * per_frame,
                          attention=ATTENTION_COPIES * batch * rows_heads * pairs * 4)


def available_bytes(device: Any) -> int:
    """Memory a run on ``device`` may use: free CUDA memory, or the available RAM on the CPU."""
    device = torch.device(device)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except ImportError:
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))


def _gib(n: int) -> str:
    return f"{n / 2 ** 30:.2f} GiB"


def check_memory(backbone: Any, config: Any, num_latents: int, cond: Any, *, force: bool = False,
                 limit: Optional[Callable[[Any], int]] = None) -> MemoryEstimate:
    """Estimate the peak; refuse in one line when it exceeds the device's memory, unless ``force``."""
    estimate = estimate_peak_bytes(backbone, config, num_latents, cond)
    device = getattr(backbone, "device", "cpu")
    have = (limit or available_bytes)(device)
    if estimate.total > have and not force:
        raise MigaError(f"{NAMES.get(config.method, config.method)} holds all {num_latents} latents and runs the model "
                        f"on all of them at once: about {_gib(estimate.total)} at its peak, more than the "
                        f"{_gib(have)} free on {device}; use fewer frames, or --force to try anyway")
    return estimate
