"""Randomly initialised Wan2.1 / SkyReels-V2 components built from configs, with no download.

Tests save the ``tiny`` set with ``save_pretrained`` into a temporary folder and load it back through the
same local-folder path a user takes (backends.md Sec. 3.2). The ``1.3b`` set has the real transformer and
VAE configs of Wan2.1-T2V-1.3B (random weights) for GPU speed and memory measurements; its text encoder is a
one-layer UMT5 of the real width (4096), because a random 5.7 B-parameter encoder adds nothing to a benchmark.
"""

from __future__ import annotations

import torch

from miga.backbones.diffusers_common import save_diffusers_folder

TINY_WORDS = ("a the cat dog red blue ball walking running on beach at sunset sea forest snow city night "
              "flying bird car road").split()

WAN13B_TRANSFORMER = dict(patch_size=(1, 2, 2), num_attention_heads=12, attention_head_dim=128, in_channels=16,
                          out_channels=16, text_dim=4096, freq_dim=256, ffn_dim=8960, num_layers=30,
                          cross_attn_norm=True, qk_norm="rms_norm_across_heads", eps=1e-6, rope_max_seq_len=1024)
"""``transformer/config.json`` of Wan2.1-T2V-1.3B-Diffusers (backends.md Sec. 5)."""

TINY_TRANSFORMER = dict(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=16,
                        out_channels=16, text_dim=32, freq_dim=256, ffn_dim=32, num_layers=2, cross_attn_norm=True,
                        qk_norm="rms_norm_across_heads", rope_max_seq_len=32)

TINY_VAE = dict(base_dim=3, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                temperal_downsample=[False, True, True])

SCHEDULER = dict(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0, solver_order=2,
                 solver_type="bh2", lower_order_final=True, num_train_timesteps=1000)
"""The Wan2.1 scheduler config (backends.md Sec. 5); miga uses its own per-frame UniPC, this is only saved."""


def offline_tokenizer():
    """A T5 tokenizer from an in-code Unigram vocabulary (no ``spiece.model``; backends.md Sec. 3.3)."""
    from transformers import T5Tokenizer

    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]
    vocab += [("\u2581" + w, -2.0) for w in TINY_WORDS]
    vocab += [(c, -5.0) for c in "abcdefghijklmnopqrstuvwxyz0123456789.,"] + [("\u2581", -4.0)]
    return T5Tokenizer(vocab=vocab, extra_ids=0)


def random_wan_components(size: str = "tiny", *, skyreels: bool = False, seed: int = 0) -> dict:
    """``{"transformer", "vae", "text_encoder", "tokenizer"}`` with random weights.

    ``skyreels=True`` builds a ``SkyReelsV2Transformer3DModel`` with the fps embedding of the
    diffusion-forcing checkpoints (``inject_sample_info``) instead of ``WanTransformer3DModel``.
    """
    from diffusers import AutoencoderKLWan, SkyReelsV2Transformer3DModel, WanTransformer3DModel
    from transformers import UMT5Config, UMT5EncoderModel

    if size not in ("tiny", "1.3b"):
        raise ValueError(f"size must be 'tiny' or '1.3b', got {size!r}")
    torch.manual_seed(seed)
    tok = offline_tokenizer()
    cfg = dict(TINY_TRANSFORMER if size == "tiny" else WAN13B_TRANSFORMER)
    if skyreels:
        transformer = SkyReelsV2Transformer3DModel(**cfg, inject_sample_info=True)
    else:
        transformer = WanTransformer3DModel(**cfg)
    vae = AutoencoderKLWan(**TINY_VAE) if size == "tiny" else AutoencoderKLWan()
    d_model = cfg["text_dim"]
    text_cfg = UMT5Config(vocab_size=len(tok), d_model=d_model, d_kv=8 if size == "tiny" else 64,
                          d_ff=64 if size == "tiny" else 256, num_layers=2 if size == "tiny" else 1,
                          num_heads=4, feed_forward_proj="gated-gelu", relative_attention_num_buckets=8,
                          relative_attention_max_distance=16, dropout_rate=0.0, pad_token_id=0, eos_token_id=1)
    text_encoder = UMT5EncoderModel(text_cfg)
    return {"transformer": transformer, "vae": vae, "text_encoder": text_encoder, "tokenizer": tok}


def save_wan_folder(components: dict, folder: str) -> str:
    """Write components as a diffusers-format model folder (``model_index.json`` + one subfolder each)."""
    skyreels = type(components["transformer"]).__name__.startswith("SkyReels")
    index = {
        "_class_name": "SkyReelsV2DiffusionForcingPipeline" if skyreels else "WanPipeline",
        "scheduler": ["diffusers", "UniPCMultistepScheduler"],
        "text_encoder": ["transformers", "UMT5EncoderModel"],
        "tokenizer": ["transformers", "T5TokenizerFast"],
        "transformer": ["diffusers", type(components["transformer"]).__name__],
        "vae": ["diffusers", "AutoencoderKLWan"],
    }
    return save_diffusers_folder({k: components[k] for k in ("transformer", "vae", "text_encoder", "tokenizer")},
                                 folder, {"_class_name": "UniPCMultistepScheduler", **SCHEDULER}, index)
