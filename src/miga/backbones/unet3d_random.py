"""Randomly initialised UNet3D text-to-video components (ModelScope layout, tiny sizes), with no download.

Tests save them with ``save_pretrained`` into a temporary folder, with ``model_index.json`` and the
ModelScope scheduler config, and load them back through the same local-folder path a user takes. The VAE
has four blocks, so it downsamples by 8 like the real one.
"""

from __future__ import annotations

import json
import os

import torch

from miga.backbones.diffusers_common import save_diffusers_folder
from miga.backbones.unet3d import MODELSCOPE_SCHEDULER

TINY_UNET = dict(sample_size=8, in_channels=4, out_channels=4, block_out_channels=(8, 16), layers_per_block=1,
                 down_block_types=("CrossAttnDownBlock3D", "DownBlock3D"),
                 up_block_types=("UpBlock3D", "CrossAttnUpBlock3D"), cross_attention_dim=16, attention_head_dim=4,
                 norm_num_groups=4)

TINY_VAE = dict(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 8, 8, 8),
                down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                layers_per_block=1, norm_num_groups=4, sample_size=64, scaling_factor=0.18215)


def offline_clip_tokenizer(max_length: int = 77):
    """A byte-level BPE CLIP tokenizer from an in-code vocabulary: every printable ASCII character, alone and
    word-final (``x</w>``), and no merges, so a word becomes one token per character. Nothing is downloaded."""
    from transformers import CLIPTokenizer

    chars = [chr(c) for c in range(33, 127)]
    tokens = ["<|startoftext|>", "<|endoftext|>"] + chars + [c + "</w>" for c in chars]
    return CLIPTokenizer(vocab={t: i for i, t in enumerate(tokens)}, merges=[], model_max_length=max_length)


def save_tokenizer(tokenizer, folder: str) -> str:
    """Save a CLIP tokenizer as the real folders ship it: ``vocab.json`` + ``merges.txt`` (and the config),
    no ``tokenizer.json``."""
    tokenizer.save_pretrained(folder)
    with open(os.path.join(folder, "vocab.json"), "w") as f:
        json.dump(tokenizer.get_vocab(), f)
    with open(os.path.join(folder, "merges.txt"), "w") as f:
        f.write("#version: 0.2\n")
    if os.path.exists(os.path.join(folder, "tokenizer.json")):
        os.remove(os.path.join(folder, "tokenizer.json"))
    return folder


def random_unet3d_components(seed: int = 0) -> dict:
    """``{"unet", "vae", "text_encoder", "tokenizer"}`` with random weights and tiny sizes."""
    from diffusers import AutoencoderKL, UNet3DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    tok = offline_clip_tokenizer()
    unet = UNet3DConditionModel(**TINY_UNET)
    vae = AutoencoderKL(**TINY_VAE)
    text_cfg = CLIPTextConfig(vocab_size=len(tok), hidden_size=TINY_UNET["cross_attention_dim"],
                              intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
                              max_position_embeddings=77, bos_token_id=0, eos_token_id=1, pad_token_id=1)
    text_encoder = CLIPTextModel(text_cfg)
    return {"unet": unet, "vae": vae, "text_encoder": text_encoder, "tokenizer": tok}


def save_unet3d_folder(components: dict, folder: str) -> str:
    """Write components as a diffusers-format ``TextToVideoSDPipeline`` folder, the tokenizer as the real
    folders ship it (``vocab.json`` + ``merges.txt``, no ``tokenizer.json``)."""
    index = {
        "_class_name": "TextToVideoSDPipeline",
        "scheduler": ["diffusers", "DDIMScheduler"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", type(components["unet"]).__name__],
        "vae": ["diffusers", "AutoencoderKL"],
    }
    save_diffusers_folder({k: components[k] for k in ("unet", "vae", "text_encoder")}, folder,
                          {"_class_name": "DDIMScheduler", **MODELSCOPE_SCHEDULER}, index)
    save_tokenizer(components["tokenizer"], os.path.join(folder, "tokenizer"))
    return folder
