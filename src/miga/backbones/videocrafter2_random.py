"""Randomly initialised VideoCrafter2 components at tiny sizes, written in both layouts users have.

- :func:`save_official_checkpoint` writes an LVDM-layout ``model.ckpt`` (UNet under
  ``model.diffusion_model.``, the VAE in LDM names under ``first_stage_model.``, an OpenCLIP text tower under
  ``cond_stage_model.model.`` with one block more than the encoder uses) and a ``tokenizer/`` beside it.
- :func:`save_community_folder` writes a diffusers pipeline folder whose ``unet/`` is a diffusers
  ``UNet3DConditionModel`` state dict plus ``fps_embedding``, as the community conversion ships it.

Tests load both back through :func:`miga.pipeline.load_backbone`, the path a user takes. Nothing is downloaded.
"""

from __future__ import annotations

import json
import os
import re

import torch

from miga.backbones.unet3d_random import offline_clip_tokenizer, save_tokenizer
from miga.backbones.videocrafter2 import SD_VAE, TEXT_PREFIX, VAE_PREFIX
from miga.backbones.videocrafter2_unet import (CHECKPOINT_PREFIX, TemporalConvBlock, TemporalTransformer,
                                               VideoCrafter2UNet, VideoCrafter2UNetConfig)

TINY_UNET = VideoCrafter2UNetConfig(model_channels=32, channel_mult=(1, 2), attention_resolutions=(2, 1),
                                    num_res_blocks=1, num_head_channels=8, context_dim=32)
"""LVDM's layout at CPU size; heads are 8 wide and ``init_attn`` has LVDM's 8 of them."""

TINY_DIFFUSERS_UNET = dict(sample_size=8, in_channels=4, out_channels=4, block_out_channels=(32, 64),
                           layers_per_block=1, down_block_types=("CrossAttnDownBlock3D", "CrossAttnDownBlock3D"),
                           up_block_types=("CrossAttnUpBlock3D", "CrossAttnUpBlock3D"), cross_attention_dim=32,
                           attention_head_dim=8, norm_num_groups=32)
"""The same network as :data:`TINY_UNET` in diffusers' ``UNet3DConditionModel`` terms."""

TINY_VAE = dict(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(32, 32, 32, 32),
                down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                layers_per_block=1, norm_num_groups=32, sample_size=64, scaling_factor=0.18215)


def _randomise(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Random weights everywhere, small enough to keep activations finite (LVDM zero-initialises its output
    convolutions, which would hide every per-frame effect)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if p.ndim > 1:
                p.copy_(torch.randn(p.shape, generator=gen) * (0.5 / p[0].numel() ** 0.5))
            elif name.endswith("weight"):
                p.copy_(1.0 + 0.05 * torch.randn(p.shape, generator=gen))
            else:
                p.copy_(0.05 * torch.randn(p.shape, generator=gen))
    return module


def damp_temporal_outputs(unet: VideoCrafter2UNet, factor: float = 0.1) -> VideoCrafter2UNet:
    """Scale the output weights of every temporal transformer (``proj_out``) and temporal conv (``conv4``).

    Trained temporal layers start from LVDM's zero init there and stay small; random ones mix frames so much
    that a change to one frame's noise level no longer shows most in that frame.
    """
    with torch.no_grad():
        for module in unet.modules():
            if isinstance(module, TemporalTransformer):
                module.proj_out.weight.mul_(factor)
            elif isinstance(module, TemporalConvBlock):
                module.conv4[-1].weight.mul_(factor)
    return unet


def _tiny_text_encoder(vocab: int, seed: int, width: int = 32):
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    config = CLIPTextConfig(vocab_size=vocab, hidden_size=width, intermediate_size=2 * width,
                            num_hidden_layers=2 if width == 32 else 1, num_attention_heads=max(1, width // 64),
                            max_position_embeddings=77, hidden_act="gelu", projection_dim=width, bos_token_id=0,
                            eos_token_id=1, pad_token_id=0)
    return CLIPTextModel(config).eval()


def random_videocrafter2_components(seed: int = 0, size: str = "tiny") -> dict:
    """``{"unet", "vae", "text_encoder", "tokenizer"}``: miga's VideoCrafter2 UNet and the diffusers/transformers
    VAE and text encoder, random. ``size="full"``: the UNet and the SD VAE at VideoCrafter2's size (speed and
    memory benchmarks) with a one-layer 1024-wide text encoder."""
    from diffusers import AutoencoderKL

    if size not in ("tiny", "full"):
        raise ValueError(f"size must be 'tiny' or 'full', got {size!r}")
    tokenizer = offline_clip_tokenizer()
    torch.manual_seed(seed)
    if size == "full":
        return {"unet": _randomise(VideoCrafter2UNet(), seed).eval(), "vae": AutoencoderKL(**SD_VAE).eval(),
                "text_encoder": _tiny_text_encoder(len(tokenizer), seed, width=1024), "tokenizer": tokenizer}
    unet = damp_temporal_outputs(_randomise(VideoCrafter2UNet(TINY_UNET), seed))
    return {"unet": unet.eval(), "vae": AutoencoderKL(**TINY_VAE).eval(),
            "text_encoder": _tiny_text_encoder(len(tokenizer), seed), "tokenizer": tokenizer}


# ---------------------------------------------------------------- the official (LVDM) layout
def ldm_vae_state_dict(vae) -> dict:
    """A diffusers ``AutoencoderKL`` state dict in LDM's first-stage names (inverse of diffusers'
    ``convert_ldm_vae_checkpoint``; attention projections as 1x1 convolutions)."""
    levels = len(vae.config.block_out_channels)
    out = {}
    for key, value in vae.state_dict().items():
        new = key.replace("conv_shortcut", "nin_shortcut").replace("conv_norm_out", "norm_out")
        new = re.sub(r"encoder\.down_blocks\.(\d+)\.resnets\.", r"encoder.down.\1.block.", new)
        new = re.sub(r"encoder\.down_blocks\.(\d+)\.downsamplers\.0\.", r"encoder.down.\1.downsample.", new)
        new = re.sub(r"decoder\.up_blocks\.(\d+)\.",
                     lambda m: f"decoder.up.{levels - 1 - int(m.group(1))}.", new)
        new = new.replace(".resnets.", ".block.").replace(".upsamplers.0.", ".upsample.")
        new = re.sub(r"mid_block\.block\.(\d+)\.", lambda m: f"mid.block_{int(m.group(1)) + 1}.", new)
        if ".mid_block.attentions.0." in new:
            new = new.replace("mid_block.attentions.0.", "mid.attn_1.")
            for a, b in (("group_norm", "norm"), ("to_q", "q"), ("to_k", "k"), ("to_v", "v"),
                         ("to_out.0", "proj_out")):
                new = new.replace(f"attn_1.{a}.", f"attn_1.{b}.")
            if value.ndim == 2:
                value = value[:, :, None, None]
        out[VAE_PREFIX + new] = value.clone()
    return out


def open_clip_state_dict(text_encoder, seed: int = 0) -> dict:
    """A transformers ``CLIPTextModel`` as an OpenCLIP text tower (``cond_stage_model.model.``), plus one
    random last block (LVDM uses the penultimate output), ``text_projection`` and ``logit_scale``."""
    sd = {k if k.startswith("text_model.") else "text_model." + k: v for k, v in text_encoder.state_dict().items()}
    cfg = text_encoder.config
    p = TEXT_PREFIX
    out = {p + "token_embedding.weight": sd["text_model.embeddings.token_embedding.weight"],
           p + "positional_embedding": sd["text_model.embeddings.position_embedding.weight"],
           p + "ln_final.weight": sd["text_model.final_layer_norm.weight"],
           p + "ln_final.bias": sd["text_model.final_layer_norm.bias"]}
    for i in range(cfg.num_hidden_layers):
        src, dst = f"text_model.encoder.layers.{i}.", f"{p}transformer.resblocks.{i}."
        for kind in ("weight", "bias"):
            out[dst + f"attn.in_proj_{kind}"] = torch.cat([sd[src + f"self_attn.{n}_proj.{kind}"]
                                                           for n in ("q", "k", "v")])
            for a, b in (("self_attn.out_proj", "attn.out_proj"), ("layer_norm1", "ln_1"),
                         ("layer_norm2", "ln_2"), ("mlp.fc1", "mlp.c_fc"), ("mlp.fc2", "mlp.c_proj")):
                out[dst + f"{b}.{kind}"] = sd[src + f"{a}.{kind}"]
    gen = torch.Generator().manual_seed(seed)
    last = f"{p}transformer.resblocks.{cfg.num_hidden_layers}."
    for key in [k for k in out if k.startswith(f"{p}transformer.resblocks.0.")]:
        out[last + key.split("resblocks.0.", 1)[1]] = torch.randn(out[key].shape, generator=gen)
    out[p + "text_projection"] = torch.randn(cfg.hidden_size, cfg.hidden_size, generator=gen)
    out[p + "logit_scale"] = torch.tensor(4.6052)
    return {k: v.clone() for k, v in out.items()}


def save_official_checkpoint(components: dict, folder: str) -> str:
    """Write ``folder/model.ckpt`` (a Lightning-style ``{"state_dict": ...}``) and ``folder/tokenizer/``;
    returns the ``.ckpt`` path."""
    os.makedirs(folder, exist_ok=True)
    state = {CHECKPOINT_PREFIX + k: v.clone() for k, v in components["unet"].state_dict().items()}
    state.update(ldm_vae_state_dict(components["vae"]))
    state.update(open_clip_state_dict(components["text_encoder"]))
    path = os.path.join(folder, "model.ckpt")
    torch.save({"state_dict": state, "epoch": 0, "global_step": 0}, path)
    save_tokenizer(components["tokenizer"], os.path.join(folder, "tokenizer"))
    return path


# ---------------------------------------------------------------- the community (diffusers) layout
def random_diffusers_unet(seed: int = 0):
    """A diffusers ``UNet3DConditionModel`` with ``fps_proj``/``fps_embedding`` attached (the community
    class), random."""
    from diffusers import UNet3DConditionModel
    from diffusers.models.embeddings import TimestepEmbedding, Timesteps

    torch.manual_seed(seed)
    unet = UNet3DConditionModel(**TINY_DIFFUSERS_UNET)
    width = TINY_DIFFUSERS_UNET["block_out_channels"][0]
    unet.fps_proj = Timesteps(width, True, 0)
    unet.fps_embedding = TimestepEmbedding(width, 4 * width)
    return _randomise(unet, seed).eval()


def save_community_folder(diffusers_unet, components: dict, folder: str) -> str:
    """A diffusers pipeline folder: ``unet/`` (``UNetVideoCrafter`` config and the diffusers-named weights with
    ``fps_embedding``), ``vae/``, ``text_encoder/``, ``tokenizer/``, ``scheduler/``, ``model_index.json``."""
    from safetensors.torch import save_file

    from miga.backbones.diffusers_common import save_diffusers_folder
    from miga.backbones.unet3d import MODELSCOPE_SCHEDULER

    index = {"_class_name": "VideoCrafterPipeline", "scheduler": ["diffusers", "DDIMScheduler"],
             "text_encoder": ["transformers", "CLIPTextModel"], "tokenizer": ["transformers", "CLIPTokenizer"],
             "unet": ["video_crafter", "UNetVideoCrafter"], "vae": ["diffusers", "AutoencoderKL"]}
    save_diffusers_folder({"vae": components["vae"], "text_encoder": components["text_encoder"]}, folder,
                          {"_class_name": "DDIMScheduler", **MODELSCOPE_SCHEDULER}, index)
    save_tokenizer(components["tokenizer"], os.path.join(folder, "tokenizer"))
    unet_dir = os.path.join(folder, "unet")
    os.makedirs(unet_dir, exist_ok=True)
    config = {"_class_name": "UNetVideoCrafter", "fps_cond": True, **TINY_DIFFUSERS_UNET}
    with open(os.path.join(unet_dir, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
    save_file({k: v.contiguous() for k, v in diffusers_unet.state_dict().items()},
              os.path.join(unet_dir, "diffusion_pytorch_model.safetensors"))
    return folder
