"""AMT-S, VBench's frame interpolator for motion smoothness (evaluation.md Sec. 1.5).

AMT (Li et al., "AMT: All-Pairs Multi-Field Transforms for Efficient Frame Interpolation", CVPR 2023) in its
small variant, written here in plain torch from the paper and the published architecture. Module and
parameter names and shapes follow the official ``amt-s.pth`` checkpoint, so its ``state_dict`` loads with
``strict=True``. Outline (paper Sec. 3):

* a correlation encoder (RAFT's small encoder, instance norm) gives 1/8-scale features of both frames, from
  which a bidirectional all-pairs correlation volume and its 4-level pyramid are built;
* a context encoder (IFRNet-style, 4 stride-2 levels) gives features of each frame at 1/2 ... 1/16;
* coarse-to-fine decoders predict the flows from the intermediate frame to both inputs and an intermediate
  feature; at 1/8, 1/4 and 1/2 scale an update block refines them from correlations looked up around the
  positions the flows point to (scaled to 0->1 / 1->0 flows under a linear-motion assumption);
* the last decoder predicts ``num_flows`` flow pairs with blend masks and residuals; the warped candidates
  are averaged and corrected by a small convolution ("multi-field" synthesis).

:class:`AMTMidpoint` runs it as VBench's ``MotionSmoothness`` does on CPU: frames scaled to [0, 1],
replicate-padded to a multiple of 16, ``embt = 0.5``, ``scale_factor = 1``, prediction clamped to [0, 1],
then ``(x * 255)`` clipped and cast (truncated) to uint8.
"""

from __future__ import annotations

import os

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from miga.errors import MigaError

DOWNLOAD_HINT = "get amt-s.pth with: hf download lalala125/AMT amt-s.pth --local-dir DIR"
PAD_MULTIPLE = 16  # VBench's InputPadder divisor, int(16 / scale) with scale 1
MIN_PADDED_SIDE = 128  # smallest side whose coarsest correlation level (1/64 scale) is at least 2 cells wide


def _rescale(x: torch.Tensor, factor: float) -> torch.Tensor:
    """Bilinear resize by ``factor`` (half-pixel centres), as AMT's ``resize``."""
    return F.interpolate(x, scale_factor=factor, mode="bilinear", align_corners=False)


def backward_warp(image: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
    """Sample ``image [B, C, H, W]`` at ``pixel + flow`` (``flow [B, 2, H, W]``, x then y, pixels); bilinear,
    border values outside (align_corners=True grid)."""
    b, _, h, w = flow.shape
    ys = torch.linspace(-1.0, 1.0, h, device=flow.device, dtype=flow.dtype).view(1, h, 1).expand(b, h, w)
    xs = torch.linspace(-1.0, 1.0, w, device=flow.device, dtype=flow.dtype).view(1, 1, w).expand(b, h, w)
    grid = torch.stack([xs + flow[:, 0] / ((w - 1.0) / 2.0), ys + flow[:, 1] / ((h - 1.0) / 2.0)], dim=-1)
    return F.grid_sample(image, grid.to(image.dtype), mode="bilinear", padding_mode="border", align_corners=True)


def _conv_prelu(c_in: int, c_out: int, stride: int = 1) -> nn.Sequential:
    """3x3 convolution then a per-channel PReLU (keys ``0.weight``, ``0.bias``, ``1.weight``)."""
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride, 1), nn.PReLU(c_out))


# ----------------------------------------------------------------------------------------------------
# correlation encoder and all-pairs correlation (RAFT components)


class _Bottleneck(nn.Module):
    """1x1 -> 3x3 (strided) -> 1x1 residual bottleneck with instance norm and ReLU; a 1x1 projection on the
    shortcut when the resolution changes."""

    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        inner = c_out // 4
        self.conv1 = nn.Conv2d(c_in, inner, 1)
        self.conv2 = nn.Conv2d(inner, inner, 3, stride, 1)
        self.conv3 = nn.Conv2d(inner, c_out, 1)
        self.norm1, self.norm2 = nn.InstanceNorm2d(inner), nn.InstanceNorm2d(inner)  # no parameters
        self.norm3 = nn.InstanceNorm2d(c_out)
        self.downsample = None
        if stride != 1:
            self.downsample = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride), nn.InstanceNorm2d(c_out))

    def forward(self, x):
        y = F.relu(self.norm1(self.conv1(x)))
        y = F.relu(self.norm2(self.conv2(y)))
        y = F.relu(self.norm3(self.conv3(y)))
        shortcut = x if self.downsample is None else self.downsample(x)
        return F.relu(shortcut + y)


class _CorrelationEncoder(nn.Module):
    """RAFT's small feature encoder: 7x7 stride-2 stem, three pairs of bottlenecks (32, 64, 96 channels; the
    last two pairs stride 2), 1x1 projection to ``out_channels`` at 1/8 scale."""

    def __init__(self, out_channels: int = 84):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 32, 7, 2, 3)
        self.norm1 = nn.InstanceNorm2d(32)
        widths, strides, c_in = (32, 64, 96), (1, 2, 2), 32
        for i, (width, stride) in enumerate(zip(widths, strides), 1):
            self.add_module(f"layer{i}", nn.Sequential(_Bottleneck(c_in, width, stride), _Bottleneck(width, width, 1)))
            c_in = width
        self.conv2 = nn.Conv2d(c_in, out_channels, 1)

    def forward(self, x):
        x = F.relu(self.norm1(self.conv1(x)))
        return self.conv2(self.layer3(self.layer2(self.layer1(x))))


class _CorrelationPyramid:
    """All-pairs dot products of two 1/8-scale feature maps (divided by sqrt(C)), in both directions, each
    average-pooled into ``levels`` levels; :meth:`lookup` reads a ``(2r+1)^2`` window per level.

    As in RAFT, the window offset ``(i, j)`` (row-major channel ``i * (2r+1) + j``) moves the x coordinate
    by ``i - r`` and y by ``j - r``; the trained weights expect exactly this channel order.
    """

    def __init__(self, feat0: torch.Tensor, feat1: torch.Tensor, levels: int, radius: int):
        self.levels, self.radius = levels, radius
        b, c, h, w = feat0.shape
        dots = torch.matmul(feat0.view(b, c, h * w).transpose(1, 2), feat1.view(b, c, h * w))
        dots = dots / torch.sqrt(torch.tensor(c).float())
        forward = dots.reshape(b * h * w, 1, h, w)  # a pixel of frame 0 against every pixel of frame 1
        backward = dots.transpose(1, 2).reshape(b * h * w, 1, h, w)  # and the reverse
        self.pyramids = ([forward], [backward])
        for pyramid in self.pyramids:
            for _ in range(levels - 1):
                pyramid.append(F.avg_pool2d(pyramid[-1], 2, stride=2))

    def lookup(self, coords: torch.Tensor, backward: bool) -> torch.Tensor:
        """Correlations ``[B, levels * (2r+1)^2, h, w]`` around ``coords [B, 2, h, w]`` (x, y, 1/8-scale
        pixels) in the forward (frame 0 -> 1) or backward volume; zeros outside."""
        r = self.radius
        b, _, h, w = coords.shape
        centres = coords.permute(0, 2, 3, 1).reshape(b * h * w, 1, 1, 2)
        steps = torch.linspace(-r, r, 2 * r + 1, device=coords.device)
        first, second = torch.meshgrid(steps, steps, indexing="ij")
        offsets = torch.stack([first, second], dim=-1).view(1, 2 * r + 1, 2 * r + 1, 2)
        out = []
        for level, volume in enumerate(self.pyramids[1 if backward else 0]):
            points = centres / 2 ** level + offsets
            vh, vw = volume.shape[-2:]
            grid = torch.cat([2 * points[..., :1] / (vw - 1) - 1, 2 * points[..., 1:] / (vh - 1) - 1], dim=-1)
            sampled = F.grid_sample(volume, grid, align_corners=True)
            out.append(sampled.view(b, h, w, -1))
        return torch.cat(out, dim=-1).permute(0, 3, 1, 2).contiguous().float()


# ----------------------------------------------------------------------------------------------------
# context encoder and flow decoders (IFRNet-style components)


class _ContextPyramid(nn.Module):
    """Four levels (``pyramid1`` ... ``pyramid4``), each a stride-2 conv+PReLU and a conv+PReLU."""

    def __init__(self, channels):
        super().__init__()
        self.depth = len(channels)
        c_in = 3
        for i, c in enumerate(channels, 1):
            self.add_module(f"pyramid{i}", nn.Sequential(_conv_prelu(c_in, c, stride=2), _conv_prelu(c, c)))
            c_in = c

    def forward(self, x):
        features = []
        for i in range(1, self.depth + 1):
            x = getattr(self, f"pyramid{i}")(x)
            features.append(x)
        return features


class _SideChannelResBlock(nn.Module):
    """IFRNet's residual block: five 3x3 convolutions, the 2nd and 4th acting on the last ``side`` channels
    only, PReLUs between, and a PReLU after the residual sum."""

    def __init__(self, channels: int, side: int):
        super().__init__()
        self.side = side
        self.conv1, self.conv3 = _conv_prelu(channels, channels), _conv_prelu(channels, channels)
        self.conv2, self.conv4 = _conv_prelu(side, side), _conv_prelu(side, side)
        self.conv5 = nn.Conv2d(channels, channels, 3, 1, 1)
        self.prelu = nn.PReLU(channels)

    def _mix_side(self, x, side_conv):
        keep = x.shape[1] - self.side
        return torch.cat([x[:, :keep], side_conv(x[:, keep:])], dim=1)

    def forward(self, x):
        y = self.conv3(self._mix_side(self.conv1(x), self.conv2))
        y = self.conv5(self._mix_side(y, self.conv4))
        return self.prelu(x + y)


class _Decoder(nn.Module):
    """conv+PReLU, side-channel residual block, then a 4x4 stride-2 transposed convolution (2x upsampling)."""

    def __init__(self, c_in: int, c_mid: int, c_out: int, side: int):
        super().__init__()
        self.convblock = nn.Sequential(_conv_prelu(c_in, c_mid), _SideChannelResBlock(c_mid, side),
                                       nn.ConvTranspose2d(c_mid, c_out, 4, 2, 1))


class _FirstDecoder(_Decoder):
    """From both 1/16 context features and the time ``t``: flows t->0 and t->1 and the feature at 1/8."""

    def __init__(self, c_in: int, c_feat: int, side: int):
        super().__init__(2 * c_in + 1, 2 * c_in, c_feat + 4, side)

    def forward(self, f0, f1, embt):
        b, _, h, w = f0.shape
        out = self.convblock(torch.cat([f0, f1, embt.expand(b, 1, h, w)], dim=1))
        return out[:, 0:2], out[:, 2:4], out[:, 4:]


class _NextDecoder(_Decoder):
    """From the feature, both context features warped by the current flows, and the flows: the next scale's
    flows (residual on the 2x-upsampled, 2x-scaled input flows) and feature."""

    def __init__(self, c_in: int, c_feat: int, side: int):
        super().__init__(3 * c_in + 4, 3 * c_in, c_feat + 4, side)

    def forward(self, feat, f0, f1, flow0, flow1):
        out = self.convblock(torch.cat([feat, backward_warp(f0, flow0), backward_warp(f1, flow1), flow0, flow1], 1))
        return (out[:, 0:2] + 2.0 * _rescale(flow0, 2.0), out[:, 2:4] + 2.0 * _rescale(flow1, 2.0), out[:, 4:])


class _MultiFieldDecoder(_Decoder):
    """The last decoder: ``num_flows`` flow pairs at full scale, their blend masks (sigmoid) and RGB
    residuals."""

    def __init__(self, c_in: int, side: int, num_flows: int):
        super().__init__(3 * c_in + 4, 3 * c_in, 8 * num_flows, side)
        self.num_flows = num_flows

    def forward(self, feat, f0, f1, flow0, flow1):
        n = self.num_flows
        out = self.convblock(torch.cat([feat, backward_warp(f0, flow0), backward_warp(f1, flow1), flow0, flow1], 1))
        d0, d1, mask, residual = torch.split(out, [2 * n, 2 * n, n, 3 * n], dim=1)
        up0, up1 = (2.0 * _rescale(f, 2.0) for f in (flow0, flow1))
        return d0 + up0.repeat(1, n, 1, 1), d1 + up1.repeat(1, n, 1, 1), torch.sigmoid(mask), residual


class _UpdateBlock(nn.Module):
    """AMT's small update block (RAFT-style, a plain conv stack in place of the GRU): correlation and flow
    encodings, then heads for a feature residual and a flow residual. With ``scale`` (2 or 4) it works at 1/8
    scale on a finer feature and upsamples its outputs (flow values scaled too)."""

    def __init__(self, c_feat: int, scale=None, levels: int = 4, radius: int = 3, hidden: int = 76,
                 flow_dim: int = 20, corr_dim: int = 64, fc_dim: int = 68):
        super().__init__()
        self.scale = scale
        corr_channels = 2 * levels * (2 * radius + 1) ** 2
        self.convc1 = nn.Conv2d(corr_channels, corr_dim, 1)
        self.convf1 = nn.Conv2d(4, 2 * flow_dim, 7, padding=3)
        self.convf2 = nn.Conv2d(2 * flow_dim, flow_dim, 3, padding=1)
        self.conv = nn.Conv2d(corr_dim + flow_dim, fc_dim, 3, padding=1)

        def stack(c_in, c_out):  # conv, LeakyReLU(0.1), conv (keys 0 and 2)
            return nn.Sequential(nn.Conv2d(c_in, hidden, 3, padding=1), nn.LeakyReLU(0.1),
                                 nn.Conv2d(hidden, c_out, 3, padding=1))

        self.gru = stack(fc_dim + 4 + c_feat, hidden)
        self.feat_head = stack(hidden, c_feat)
        self.flow_head = stack(hidden, 4)

    def forward(self, feat, flows, corr):
        act = lambda x: F.leaky_relu(x, 0.1)  # noqa: E731
        if self.scale is not None:
            feat = _rescale(feat, 1 / self.scale)
        motion = torch.cat([act(self.convc1(corr)), act(self.convf2(act(self.convf1(flows))))], dim=1)
        hidden = self.gru(torch.cat([act(self.conv(motion)), flows, feat], dim=1))
        d_feat, d_flows = self.feat_head(hidden), self.flow_head(hidden)
        if self.scale is not None:
            d_feat, d_flows = _rescale(d_feat, self.scale), self.scale * _rescale(d_flows, self.scale)
        return d_feat, d_flows


# ----------------------------------------------------------------------------------------------------
# the network


class AMTS(nn.Module):
    """AMT-S (``networks.AMT-S.Model`` with ``corr_radius=3, corr_lvls=4, num_flows=3``): 213 tensors.

    ``forward(img0, img1, embt)`` takes frames ``[B, 3, H, W]`` in [0, 1] with H and W multiples of 16 and the
    time ``embt [B or 1, 1, 1, 1]``; returns the frame at that time, clamped to [0, 1].
    """

    def __init__(self, corr_radius: int = 3, corr_levels: int = 4, num_flows: int = 3,
                 channels=(20, 32, 44, 56), side: int = 20):
        super().__init__()
        self.corr_radius, self.corr_levels = corr_radius, corr_levels
        self.feat_encoder = _CorrelationEncoder(84)
        self.encoder = _ContextPyramid(channels)
        c1, c2, c3, c4 = channels
        self.decoder4 = _FirstDecoder(c4, c3, side)
        self.decoder3 = _NextDecoder(c3, c2, side)
        self.decoder2 = _NextDecoder(c2, c1, side)
        self.decoder1 = _MultiFieldDecoder(c1, side, num_flows)
        self.update4 = _UpdateBlock(c3, None, corr_levels, corr_radius)
        self.update3 = _UpdateBlock(c2, 2, corr_levels, corr_radius)
        self.update2 = _UpdateBlock(c1, 4, corr_levels, corr_radius)
        self.comb_block = nn.Sequential(nn.Conv2d(3 * num_flows, 6 * num_flows, 3, 1, 1), nn.PReLU(6 * num_flows),
                                        nn.Conv2d(6 * num_flows, 3, 3, 1, 1))

    @staticmethod
    def _refine(update, corr_fn, grid, flow0, flow1, feat, embt, down: int):
        """One correlation-guided residual update of ``(flow0, flow1, feat)`` at a scale ``down`` times finer
        than 1/8. Under linear motion ``t->1`` over ``t`` reaches frame 1 from frame 0 and ``t->0`` over
        ``1 - t`` reaches frame 0 from frame 1, which is where the two volumes are read."""
        f0, f1 = flow0, flow1
        if down != 1:
            f0, f1 = (1 / down) * _rescale(flow0, 1 / down), (1 / down) * _rescale(flow1, 1 / down)
        corr = torch.cat([corr_fn.lookup(grid + f1 * (1.0 / embt), backward=False),
                          corr_fn.lookup(grid + f0 * (1.0 / (1.0 - embt)), backward=True)], dim=1)
        d_feat, d_flows = update(feat, torch.cat([f0, f1], dim=1), corr)
        return flow0 + d_flows[:, 0:2], flow1 + d_flows[:, 2:4], feat + d_feat

    def forward(self, img0: torch.Tensor, img1: torch.Tensor, embt: torch.Tensor) -> torch.Tensor:
        # the mean over channels, then rows, then columns of both frames, removed and added back at the end
        mean = torch.cat([img0, img1], dim=2).mean(1, keepdim=True).mean(2, keepdim=True).mean(3, keepdim=True)
        img0, img1 = img0 - mean, img1 - mean
        b, _, h, w = img0.shape

        feats = self.feat_encoder(torch.cat([img0, img1], dim=0))
        corr_fn = _CorrelationPyramid(feats[:b], feats[b:], self.corr_levels, self.corr_radius)
        ys, xs = torch.meshgrid(torch.arange(h // 8, device=img0.device), torch.arange(w // 8, device=img0.device),
                                indexing="ij")
        grid = torch.stack([xs, ys], dim=0).float()[None].expand(b, -1, -1, -1)

        ctx0, ctx1 = self.encoder(img0), self.encoder(img1)  # 1/2, 1/4, 1/8, 1/16

        flow0, flow1, feat = self.decoder4(ctx0[3], ctx1[3], embt)
        flow0, flow1, feat = self._refine(self.update4, corr_fn, grid, flow0, flow1, feat, embt, 1)
        flow0, flow1, feat = self.decoder3(feat, ctx0[2], ctx1[2], flow0, flow1)
        flow0, flow1, feat = self._refine(self.update3, corr_fn, grid, flow0, flow1, feat, embt, 2)
        flow0, flow1, feat = self.decoder2(feat, ctx0[1], ctx1[1], flow0, flow1)
        flow0, flow1, feat = self._refine(self.update2, corr_fn, grid, flow0, flow1, feat, embt, 4)
        flows0, flows1, masks, residuals = self.decoder1(feat, ctx0[0], ctx1[0], flow0, flow1)
        return self._combine(img0, img1, mean, flows0, flows1, masks, residuals).clamp(0, 1)

    def _combine(self, img0, img1, mean, flows0, flows1, masks, residuals):
        """Multi-field synthesis: per flow pair, ``mask * warp(img0) + (1 - mask) * warp(img1) + mean +
        residual``; the candidates' average plus ``comb_block`` of all of them."""
        b, _, h, w = img0.shape
        n = masks.shape[1]

        def per_field(x, c):  # [B, n * c, H, W] -> [B * n, c, H, W]
            return x.reshape(b * n, c, h, w)

        def repeated(x):  # [B, ...] -> [B * n, ...]
            return x.unsqueeze(1).expand(b, n, *x.shape[1:]).reshape(b * n, *x.shape[1:])

        warped = (per_field(masks, 1) * backward_warp(repeated(img0), per_field(flows0, 2))
                  + (1 - per_field(masks, 1)) * backward_warp(repeated(img1), per_field(flows1, 2))
                  + repeated(mean) + per_field(residuals, 3))
        warped = warped.reshape(b, n, 3, h, w)
        return warped.mean(1) + self.comb_block(warped.reshape(b, n * 3, h, w))


# ----------------------------------------------------------------------------------------------------
# loading and the interpolator


def _examples(names, count: int = 3) -> str:
    return ", ".join(repr(n) for n in list(names)[:count])


def load_amt_s(path: str) -> AMTS:
    """AMT-S with the weights of ``path`` (``amt-s.pth``: ``{'state_dict': ...}`` as VBench loads it, or a
    bare state dict); a one-line :class:`MigaError` naming the file and the problem otherwise."""
    where = f"--amt {path}"
    if not os.path.isfile(path):
        raise MigaError(f"{where}: no such file; {DOWNLOAD_HINT}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # not a torch file, truncated, or holding objects that weights_only refuses
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise MigaError(f"{where}: not a readable torch checkpoint ({type(exc).__name__}: {first}); "
                        f"{DOWNLOAD_HINT}") from None
    state = ckpt.get("state_dict", ckpt) if isinstance(ckpt, dict) else None
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise MigaError(f"{where}: holds no state dict of tensors (expected {{'state_dict': ...}}); {DOWNLOAD_HINT}")
    if all(k.startswith("module.") for k in state):  # saved from a DataParallel wrapper
        state = {k[len("module."):]: v for k, v in state.items()}
    model = AMTS()
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    reshaped = [k for k in expected if k in state and tuple(state[k].shape) != tuple(expected[k].shape)]
    problems = []
    if missing:
        problems.append(f"missing {len(missing)} keys such as {_examples(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected keys such as {_examples(unexpected)}")
    if reshaped:
        k = reshaped[0]
        problems.append(f"{len(reshaped)} tensors of the wrong shape such as {k!r} {list(state[k].shape)} "
                        f"(AMT-S has {list(expected[k].shape)})")
    if problems:
        raise MigaError(f"{where}: not AMT-S weights: {'; '.join(problems)}; {DOWNLOAD_HINT}")
    model.load_state_dict(state, strict=True)
    return model.eval().requires_grad_(False)


def padding_for(size: int) -> tuple[int, int]:
    """(before, after) replicate padding of one side: up to a multiple of 16 as VBench's ``InputPadder``
    (split evenly, the odd pixel after). Sides under 128 px are padded to 128: the official code fails or
    divides by zero in its 1/64-scale correlation level there (VBench's frames are larger)."""
    total = max(-(-size // PAD_MULTIPLE) * PAD_MULTIPLE, MIN_PADDED_SIDE) - size
    return total // 2, total - total // 2


class AMTMidpoint:
    """The midpoint of two uint8 RGB frames by AMT-S, as VBench's motion smoothness computes it (``embt = 0.5``,
    one iteration, ``scale_factor = 1``)."""

    proxy = False

    def __init__(self, model: AMTS, name: str = "AMT-S", device: str = "cpu"):
        self.name, self.device = name, torch.device(device)
        self.model = model.to(self.device).eval()
        self.embt = torch.full((1, 1, 1, 1), 0.5, device=self.device)

    def _tensor(self, frame: np.ndarray, pads) -> torch.Tensor:
        x = torch.from_numpy(np.ascontiguousarray(frame[..., :3])).permute(2, 0, 1)[None].to(self.device) / 255.0
        return F.pad(x, pads, mode="replicate")

    def __call__(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        h, w = a.shape[:2]
        (top, bottom), (left, right) = padding_for(h), padding_for(w)
        pads = (left, right, top, bottom)
        with torch.no_grad():
            pred = self.model(self._tensor(a, pads), self._tensor(b, pads), self.embt)
        pred = pred[0, :, top:top + h, left:left + w] * 255.0
        return pred.permute(1, 2, 0).cpu().numpy().clip(0, 255).astype(np.uint8)


def amt_interpolator(path: str, device: str = "cpu") -> AMTMidpoint:
    """:class:`AMTMidpoint` with the AMT-S weights in ``path``."""
    return AMTMidpoint(load_amt_s(path), f"AMT-S ({os.path.basename(path)})", device)
