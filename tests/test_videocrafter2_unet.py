"""VideoCrafter2 UNet (``base_512_v2``): checkpoint layout at full size, per-frame timesteps on a tiny one.

The expected layout is derived from LVDM ``UNetModel`` (``lvdm/modules/networks/openaimodel3d.py``,
``lvdm/modules/attention.py``) with ``configs/inference_t2v_512_v2.0.yaml``: 22 ResBlocks with temporal convs,
16 spatial + 16 temporal transformers at downsample rates 1, 2, 4, ``init_attn`` with Conv1d projections,
``time_embed`` + ``fps_embedding``. Counts were checked against a hand count of that architecture.
"""

import pytest
import torch

from miga.backbones.videocrafter2_random import damp_temporal_outputs
from miga.backbones.videocrafter2_unet import (CHECKPOINT_PREFIX, VideoCrafter2UNet, expected_keys,
                                               strip_checkpoint_prefix, tiny_config)

FULL_KEY_COUNT = 1484
FULL_PARAMETER_COUNT = 1_413_284_420

P = CHECKPOINT_PREFIX
REPRESENTATIVE_KEYS = {
    P + "time_embed.0.weight": (1280, 320),
    P + "time_embed.2.weight": (1280, 1280),
    P + "fps_embedding.0.weight": (1280, 320),
    P + "fps_embedding.2.bias": (1280,),
    P + "input_blocks.0.0.weight": (320, 4, 3, 3),
    P + "init_attn.0.norm.weight": (320,),
    P + "init_attn.0.proj_in.weight": (512, 320, 1),
    P + "init_attn.0.proj_out.weight": (320, 512, 1),
    P + "init_attn.0.transformer_blocks.0.attn1.to_q.weight": (512, 512),
    P + "init_attn.0.transformer_blocks.0.attn2.to_k.weight": (512, 512),
    P + "init_attn.0.transformer_blocks.0.ff.net.0.proj.weight": (4096, 512),
    P + "input_blocks.1.0.in_layers.0.weight": (320,),
    P + "input_blocks.1.0.in_layers.2.weight": (320, 320, 3, 3),
    P + "input_blocks.1.0.emb_layers.1.weight": (320, 1280),
    P + "input_blocks.1.0.out_layers.3.weight": (320, 320, 3, 3),
    P + "input_blocks.1.0.temopral_conv.conv1.0.weight": (320,),
    P + "input_blocks.1.0.temopral_conv.conv1.2.weight": (320, 320, 3, 1, 1),
    P + "input_blocks.1.0.temopral_conv.conv4.3.bias": (320,),
    P + "input_blocks.1.1.proj_in.weight": (320, 320),
    P + "input_blocks.1.1.transformer_blocks.0.attn1.to_q.weight": (320, 320),
    P + "input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight": (320, 1024),
    P + "input_blocks.1.1.transformer_blocks.0.attn2.to_out.0.bias": (320,),
    P + "input_blocks.1.1.transformer_blocks.0.ff.net.0.proj.weight": (2560, 320),
    P + "input_blocks.1.1.transformer_blocks.0.ff.net.2.weight": (320, 1280),
    P + "input_blocks.1.1.transformer_blocks.0.norm3.bias": (320,),
    P + "input_blocks.1.2.transformer_blocks.0.attn2.to_v.weight": (320, 320),
    P + "input_blocks.1.2.proj_out.weight": (320, 320),
    P + "input_blocks.3.0.op.weight": (320, 320, 3, 3),
    P + "input_blocks.4.0.skip_connection.weight": (640, 320, 1, 1),
    P + "input_blocks.4.1.transformer_blocks.0.attn2.to_k.weight": (640, 1024),
    P + "input_blocks.6.0.op.weight": (640, 640, 3, 3),
    P + "input_blocks.7.0.skip_connection.weight": (1280, 640, 1, 1),
    P + "input_blocks.7.2.transformer_blocks.0.attn1.to_k.weight": (1280, 1280),
    P + "input_blocks.9.0.op.bias": (1280,),
    P + "input_blocks.11.0.temopral_conv.conv2.3.weight": (1280, 1280, 3, 1, 1),
    P + "middle_block.0.emb_layers.1.weight": (1280, 1280),
    P + "middle_block.1.transformer_blocks.0.attn2.to_k.weight": (1280, 1024),
    P + "middle_block.2.transformer_blocks.0.attn2.to_k.weight": (1280, 1280),
    P + "middle_block.3.temopral_conv.conv3.3.weight": (1280, 1280, 3, 1, 1),
    P + "output_blocks.0.0.in_layers.2.weight": (1280, 2560, 3, 3),
    P + "output_blocks.2.1.conv.weight": (1280, 1280, 3, 3),
    P + "output_blocks.5.0.skip_connection.weight": (1280, 1920, 1, 1),
    P + "output_blocks.5.3.conv.weight": (1280, 1280, 3, 3),
    P + "output_blocks.6.0.in_layers.0.weight": (1920,),
    P + "output_blocks.8.0.in_layers.2.weight": (640, 960, 3, 3),
    P + "output_blocks.8.3.conv.weight": (640, 640, 3, 3),
    P + "output_blocks.9.0.skip_connection.weight": (320, 960, 1, 1),
    P + "output_blocks.11.2.transformer_blocks.0.norm1.weight": (320,),
    P + "out.0.weight": (320,),
    P + "out.2.weight": (4, 320, 3, 3),
}
ABSENT_KEY_PARTS = ("relative_position", "to_k_ip", "to_v_ip", "output_blocks.12", "input_blocks.12",
                    "input_blocks.10.1", "output_blocks.0.1", "input_blocks.3.0.temopral_conv")


def test_full_configuration_matches_checkpoint_layout():
    keys = dict(expected_keys())
    assert len(keys) == FULL_KEY_COUNT
    assert sum(torch.Size(shape).numel() for shape in keys.values()) == FULL_PARAMETER_COUNT
    for key, shape in REPRESENTATIVE_KEYS.items():
        assert keys.get(key) == shape, key
    for part in ABSENT_KEY_PARTS:
        assert not [key for key in keys if part in key], part
    assert all(key.startswith(P) for key in keys)


def test_checkpoint_prefix_is_stripped_and_loads_strictly():
    config = tiny_config()
    torch.manual_seed(0)
    source = VideoCrafter2UNet(config)
    checkpoint = {P + key: value for key, value in source.state_dict().items()}
    checkpoint["first_stage_model.encoder.conv_in.weight"] = torch.zeros(1)
    target = VideoCrafter2UNet(config)
    target.load_state_dict(strip_checkpoint_prefix(checkpoint), strict=True)
    for key, value in source.state_dict().items():
        assert torch.equal(target.state_dict()[key], value)


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    model = damp_temporal_outputs(VideoCrafter2UNet(tiny_config()).eval())  # trained-like temporal scale
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(1, 4, 4, 8, 8, generator=generator)
    context = torch.randn(1, 77, 32, generator=generator)
    return model, x, context


@torch.no_grad()
def test_tiny_forward_shape_and_uniform_per_frame_timesteps(tiny):
    model, x, context = tiny
    scalar = model(x, torch.tensor([500]), context, fps=torch.tensor([8]))
    assert scalar.shape == x.shape and torch.isfinite(scalar).all()
    per_frame = model(x, torch.full((1, 4), 500), context, fps=torch.tensor([8]))
    torch.testing.assert_close(per_frame, scalar, rtol=1e-5, atol=1e-5)


@torch.no_grad()
def test_one_frames_timestep_moves_that_frame_most(tiny):
    model, x, context = tiny
    base = model(x, torch.full((1, 4), 500), context, fps=8)
    for frame in range(4):
        timesteps = torch.full((1, 4), 500)
        timesteps[0, frame] = 900
        moved = model(x, timesteps, context, fps=8)
        change = (moved - base).abs().mean(dim=(0, 1, 3, 4))
        assert int(change.argmax()) == frame, change


@torch.no_grad()
def test_fps_changes_output(tiny):
    model, x, context = tiny
    slow = model(x, torch.tensor([500]), context, fps=torch.tensor([4]))
    fast = model(x, torch.tensor([500]), context, fps=torch.tensor([24]))
    assert (slow - fast).abs().max() > 1e-3


def test_bad_timestep_shape_is_refused(tiny):
    model, x, context = tiny
    with pytest.raises(ValueError, match=r"\[B\] or \[B, F\]"):
        model(x, torch.full((1, 3), 500), context)
