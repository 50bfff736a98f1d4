"""Wan2.1-T2V and SkyReels-V2-DF through diffusers (pinned: 0.42.1), from a local diffusers-format folder.

Facts this adapter rests on (``shared/spec/backends.md``):

- ``WanTransformer3DModel`` takes per-token timesteps ``[B, F·H'·W']`` (Sec. 1.1); tokens are frame-major,
  so a per-frame level becomes per-token by ``repeat_interleave(H'·W')``. All frames equal gives the
  scalar path's output.
- ``SkyReelsV2Transformer3DModel`` takes per-frame timesteps ``[B, F]`` natively with
  ``enable_diffusion_forcing=True``, and an ``fps`` input (0 for 16 fps, 1 otherwise) when the checkpoint
  has the fps embedding of the diffusion-forcing models (Sec. 1.2).
- Both predict the rectified-flow velocity; the engine's flow UniPC keeps each slot's history.
- The causal VAE decodes k+1 latents to 4k+1 frames, one latent at a time with its feature cache
  (Sec. 3.5), so frames are written as latents finish.

Nothing here is fetched from a model hub: a hub id gets a message with the ``hf download`` command.
"""

from __future__ import annotations

import html
import os
import re
from typing import Any, Sequence

import numpy as np
import torch

from miga.backbones.base import NoiseLevels
from miga.backbones.diffusers_common import (
    HUB_ID, WEIGHT_SUFFIXES, TextEncoderOffload, check_size, default_device, hub_id_message, import_diffusers,
    load_part, onload, parse_dtype, pipeline_device, read_json)
from miga.backbones.registry import BackboneKind, pipeline_class_names
from miga.engine.schedules import ScheduleConfig
from miga.errors import MigaError

DIFFUSERS_VERSION = "0.42.1"

WAN_NEGATIVE_PROMPT = (
    "色调艳丽，过曝，静态，细节模糊不清，字幕，风格，作品，画作，画面，静止，整体发灰，最差质量，低质量，"
    "JPEG压缩残留，丑陋的，残缺的，多余的手指，画得不好的手部，画得不好的脸部，畸形的，毁容的，形态畸形的肢体，"
    "手指融合，静止不动的画面，杂乱的背景，三条腿，背景人很多，倒着走"
)
"""Wan2.1's default negative prompt (its sample config), used as the unconditional CFG branch."""

PARTS = {
    "transformer": "the diffusion transformer (config.json and weights)",
    "vae": "the causal video VAE (config.json and weights)",
    "text_encoder": "the UMT5 text encoder (config.json and weights)",
    "tokenizer": "the T5 tokenizer (tokenizer.json or spiece.model)",
}
TRANSFORMER_CLASSES = ("WanTransformer3DModel", "SkyReelsV2Transformer3DModel")
DOWNLOAD_HINT = "hf download Wan-AI/Wan2.1-T2V-1.3B-Diffusers --local-dir DIR"


def missing_model_error(path: str) -> str:
    """The error for a model path that does not exist: a hub id of a model miga knows gets its own ``hf
    download`` command; anything else (``models/wan2.1-1.3b`` before the download) is a folder to fill."""
    from miga.backbones.registry import kinds

    known = {hub.lower() for kind in kinds() for hub in re.findall(r"hf download (\S+)", kind.download)}
    if HUB_ID.fullmatch(path) and path.lower() in known:
        return hub_id_message(path)
    return (f"model {path} not found: there is no such file or folder (miga loads local folders, nothing from the "
            f"hub); download the model into it first, e.g. '{DOWNLOAD_HINT.replace('DIR', path)}' for Wan2.1 "
            "('miga models' lists the command of every kind)")


def model_folder_error(path: str) -> str | None:
    """Why ``path`` is not a loadable local model folder, or None if it looks complete."""
    if not os.path.exists(path):
        return missing_model_error(path)
    if not os.path.isdir(path):
        return f"{path} is not a model folder"
    missing = []
    for part, what in PARTS.items():
        sub = os.path.join(path, part)
        names = os.listdir(sub) if os.path.isdir(sub) else []
        if part == "tokenizer":
            ok = any(n in names for n in ("tokenizer.json", "spiece.model"))
        else:
            ok = "config.json" in names and any(n.endswith(WEIGHT_SUFFIXES) for n in names)
        if not ok:
            missing.append(f"{part}/ ({what})")
    if missing:
        return (f"model folder {path} is missing {', '.join(missing)}; download the full diffusers-format model, "
                f"e.g. '{DOWNLOAD_HINT}'")
    return None


def transformer_class_name(path: str) -> str:
    return read_json(os.path.join(path, "transformer", "config.json")).get("_class_name", "?")


def clean_prompt(text: str) -> str:
    """Wan's prompt cleaning, as WanPipeline does it: ``ftfy.fix_text`` when ftfy is installed (Wan's own code
    always applies it; it comes with ``miga-video[diffusers]``), unescape HTML twice, collapse whitespace."""
    try:
        import ftfy
    except ImportError:
        pass
    else:
        text = ftfy.fix_text(text)
    return re.sub(r"\s+", " ", html.unescape(html.unescape(text))).strip()


class WanStreamingDecoder:
    """Wan's causal VAE, one latent in at a time with the decoder's feature cache (backends.md Sec. 3.5).

    The first latent gives 1 frame, each later one 4. Equal to ``vae.decode`` on all latents at once
    (tested). Uses the VAE's per-conv cache (``_feat_map``), so one decoder per VAE at a time.
    """

    def __init__(self, vae):
        self.vae = vae
        self.device, self.dtype = onload(vae), next(vae.parameters()).dtype
        shape = (1, vae.config.z_dim, 1, 1, 1)
        self.mean = torch.tensor(vae.config.latents_mean, dtype=torch.float32).view(shape).to(self.device)
        self.std = torch.tensor(vae.config.latents_std, dtype=torch.float32).view(shape).to(self.device)
        self.first = True
        vae.clear_cache()

    @torch.no_grad()
    def decode_latent(self, latent: torch.Tensor) -> torch.Tensor:
        """One normalised latent ``[C, h, w]`` to pixels ``[1, 3, n, H, W]`` in [-1, 1]."""
        vae = self.vae
        onload(vae)  # a user's model-offloaded VAE (from_pipe): onto its device, as its hook would
        z = latent[None, :, None].to(self.device, torch.float32) * self.std + self.mean
        x = vae.post_quant_conv(z.to(self.dtype))
        vae._conv_idx = [0]
        out = vae.decoder(x, feat_cache=vae._feat_map, feat_idx=vae._conv_idx, first_chunk=self.first)
        self.first = False
        if vae.config.patch_size is not None:
            from diffusers.models.autoencoders.autoencoder_kl_wan import unpatchify

            out = unpatchify(out, patch_size=vae.config.patch_size)
        return out.clamp(-1.0, 1.0)

    def push(self, latent: torch.Tensor) -> list[np.ndarray]:
        video = self.decode_latent(latent)[0]  # [3, n, H, W]
        rgb = ((video.float() + 1.0) * 127.5).round().clamp(0, 255).to(torch.uint8)
        return list(rgb.permute(1, 2, 3, 0).cpu().numpy())

    def push_float(self, latent: torch.Tensor) -> list[np.ndarray]:
        """Like :meth:`push`, as float32 ``[H, W, 3]`` in [0, 1] (diffusers' ``output_type="np"``)."""
        video = (self.decode_latent(latent)[0].float() * 0.5 + 0.5).clamp(0.0, 1.0)
        return list(video.permute(1, 2, 3, 0).cpu().numpy())

    def flush(self) -> list[np.ndarray]:
        self.vae.clear_cache()
        return []


class WanModel(TextEncoderOffload):
    """Wan2.1-T2V or SkyReels-V2-DF as a :class:`~miga.backbones.base.Backbone`.

    Build it with :meth:`from_folder` (a user's local diffusers folder) or :meth:`from_components`.

    Args:
        height, width: output frame size; divisible by 16 (Wan: 480x832, SkyReels-V2 540P: 544x960).
        device, dtype: where the transformer and text encoder run and in which precision (the VAE stays
            float32, as Wan's docs advise).
        window_latents: f_0, latent frames per model window (Wan2.1: 21, i.e. 81 frames; SkyReels-V2-DF:
            25, i.e. 97 frames).
        model_batch: windows per transformer call; 1 runs classifier-free guidance as two passes, which
            halves the activation memory.
        max_sequence_length: prompt tokens (Wan: 512).
        owns_modules: cast and place the modules as above (True), or use them exactly as given (False, a
            user's pipeline: :meth:`from_pipe`).
    """

    prediction = "flow"
    frames_per_latent = 4
    first_latent_frames = 1
    negative_prompt = WAN_NEGATIVE_PROMPT

    def __init__(self, transformer, vae, text_encoder, tokenizer, *, height: int | None = None,
                 width: int | None = None, device: str | None = None, dtype: str | torch.dtype | None = None,
                 window_latents: int | None = None, model_batch: int | None = None,
                 max_sequence_length: int = 512, flow_shift: float = 3.0, owns_modules: bool = True):
        self.owns_modules = owns_modules
        self.skyreels = type(transformer).__name__.startswith("SkyReels")
        self.name = "skyreels-v2-df" if self.skyreels else "wan2.1"
        self.default_preset = self.name
        self.fps = 24 if self.skyreels else 16
        height = height or (544 if self.skyreels else 480)
        width = width or (960 if self.skyreels else 832)
        check_size(height, width)
        self.device = torch.device(device or default_device())
        self.dtype = parse_dtype(dtype, str(self.device))
        patch = tuple(transformer.config.patch_size)
        if patch[0] != 1:
            raise MigaError(f"transformer patch size {patch} is not supported: per-frame timesteps need a "
                            "temporal patch of 1 (Wan2.1, Wan2.2 and SkyReels-V2 have it)")
        scale = vae.spatial_compression_ratio if hasattr(vae, "spatial_compression_ratio") else 8
        self.latent_shape = (int(vae.config.z_dim), height // scale, width // scale)
        self.tokens_per_frame = (self.latent_shape[1] // patch[1]) * (self.latent_shape[2] // patch[2])
        self.native_frames = int(window_latents or (25 if self.skyreels else 21))
        if self.native_frames < 2:
            raise MigaError(f"--window-latents must be >= 2, got {self.native_frames}")
        self.model_batch = model_batch
        self.max_sequence_length = int(max_sequence_length)
        # whole timesteps, as WanPipeline, the DF pipeline and Wan's/SkyReels' own FlowUniPC feed them (int64)
        self.default_schedule = ScheduleConfig(kind="flow", shift=float(flow_shift), integer_timesteps=True)
        self.fps_input = bool(getattr(transformer.config, "inject_sample_info", False))
        self.transformer, self.vae, self.text_encoder = self._place(transformer, vae, text_encoder)
        self.tokenizer = tokenizer

    @classmethod
    def from_folder(cls, path: str, **kwargs: Any) -> "WanModel":
        """Load transformer, VAE (float32), UMT5 text encoder and tokenizer from a local diffusers folder."""
        ignored = ignored_denoiser(path)
        if ignored:
            raise MigaError(ignored)
        if os.path.isfile(os.path.join(path, "transformer", "config.json")):
            name = transformer_class_name(path)
            if name not in TRANSFORMER_CLASSES:
                raise MigaError(f"{path} holds a {name}, which miga does not support; supported: Wan2.1-T2V, "
                                "SkyReels-V2-DF and UNet3D (ModelScope, Zeroscope) diffusers folders, or the "
                                "built-in models shapes, gaussian, gaussian-clip")
        problem = model_folder_error(path)
        if problem:
            raise MigaError(problem)
        diffusers = import_diffusers()
        from transformers import AutoTokenizer, UMT5EncoderModel

        if diffusers.__version__ != DIFFUSERS_VERSION:
            import warnings

            warnings.warn(f"miga's Wan adapter is tested with diffusers {DIFFUSERS_VERSION}, found "
                          f"{diffusers.__version__}; its streaming VAE decode uses diffusers internals")
        device = kwargs.get("device") or default_device()
        dtype = parse_dtype(kwargs.get("dtype"), str(device))
        scheduler_cfg = os.path.join(path, "scheduler", "scheduler_config.json")
        if os.path.isfile(scheduler_cfg) and "flow_shift" not in kwargs:
            kwargs["flow_shift"] = float(read_json(scheduler_cfg).get("flow_shift") or 3.0)

        def load(part: str, fn):
            return load_part(path, part, fn)

        transformer_cls = getattr(diffusers, name)
        transformer = load("transformer", lambda: transformer_cls.from_pretrained(
            path, subfolder="transformer", dtype=dtype, local_files_only=True))
        vae = load("vae", lambda: diffusers.AutoencoderKLWan.from_pretrained(
            path, subfolder="vae", dtype=torch.float32, local_files_only=True))
        text_encoder = load("text_encoder", lambda: UMT5EncoderModel.from_pretrained(
            path, subfolder="text_encoder", dtype=dtype, local_files_only=True))
        tokenizer = load("tokenizer", lambda: AutoTokenizer.from_pretrained(
            os.path.join(path, "tokenizer"), local_files_only=True))
        return cls(transformer, vae, text_encoder, tokenizer, **kwargs)

    @classmethod
    def from_pipe(cls, pipe, **kwargs: Any) -> "WanModel":
        """A backbone over the modules of a loaded ``WanPipeline`` or ``SkyReelsV2DiffusionForcingPipeline``,
        used as they are: no cast, no move, offload hooks kept (``owns_modules=False``). Device: the
        pipeline's execution device; dtype: the transformer's; flow shift: the pipeline scheduler's."""
        if getattr(pipe, "transformer_2", None) is not None:
            raise MigaError("this WanPipeline has two transformers (Wan2.2 A14B's two experts); miga runs one "
                            "transformer per model (Wan2.1-T2V, SkyReels-V2-DF)")
        config = getattr(getattr(pipe, "scheduler", None), "config", None) or {}
        shift = config.get("flow_shift") if config.get("use_flow_sigmas", True) else None
        shift = shift if shift is not None else config.get("shift")  # FlowMatchEulerDiscreteScheduler
        if shift is not None and "flow_shift" not in kwargs:
            kwargs["flow_shift"] = float(shift)
        kwargs.setdefault("device", pipeline_device(pipe))
        kwargs.setdefault("dtype", pipe.transformer.dtype)
        return cls(pipe.transformer, pipe.vae, pipe.text_encoder, pipe.tokenizer, owns_modules=False, **kwargs)

    @classmethod
    def from_components(cls, components: dict, **kwargs: Any) -> "WanModel":
        return cls(components["transformer"], components["vae"], components["text_encoder"],
                   components["tokenizer"], **kwargs)

    # ---- prompts ----
    @torch.no_grad()
    def encode_prompt(self, text: str) -> torch.Tensor:
        """UMT5 embeddings ``[L, D]`` of one prompt, zero past its last token (as WanPipeline does)."""
        tokens = self.tokenizer([clean_prompt(text)], padding="max_length", max_length=self.max_sequence_length,
                                truncation=True, add_special_tokens=True, return_attention_mask=True,
                                return_tensors="pt")
        encoder, device = self._text_encoder_on_device()
        mask = tokens.attention_mask.to(device)
        hidden = encoder(tokens.input_ids.to(device), mask).last_hidden_state[0]
        length = int(mask.sum())
        hidden = torch.cat([hidden[:length], hidden.new_zeros(hidden.shape[0] - length, hidden.shape[1])])
        return hidden.to(self.device, self.dtype)

    # ---- the model ----
    def per_token_timesteps(self, timesteps: torch.Tensor) -> torch.Tensor:
        """``[B, F]`` per-frame timesteps to ``[B, F·H'·W']`` per token (frame-major token order)."""
        return timesteps.repeat_interleave(self.tokens_per_frame, dim=1)

    @torch.no_grad()
    def predict(self, latents: torch.Tensor, levels: NoiseLevels, conds: Sequence[torch.Tensor]) -> torch.Tensor:
        """Velocity for ``latents`` ``[B, C, F, h, w]`` where frame f of element b is at ``levels[b, f]``."""
        step = self.model_batch
        if self.skyreels and self.fps_input:
            step = 1  # diffusers 0.42.1 broadcasts the fps embedding correctly only for one sample

        def call(x, t, ctx):
            if self.skyreels:
                fps = [0 if self.fps == 16 else 1] * x.shape[0] if self.fps_input else None
                return self.transformer(hidden_states=x, timestep=t, encoder_hidden_states=ctx,
                                        enable_diffusion_forcing=True, fps=fps, return_dict=False)[0]
            return self.transformer(hidden_states=x, timestep=self.per_token_timesteps(t),
                                    encoder_hidden_states=ctx, return_dict=False)[0]

        return self._predict_in_chunks(call, latents, levels, conds, step)

    def decoder(self) -> WanStreamingDecoder:
        return WanStreamingDecoder(self.vae)

    def temporal_attention_network(self):
        """The transformer: it has no separate temporal attention (full 3-D attention over all tokens), so only
        FreeNoise's window fusion acts on it (:mod:`miga.baselines.hooks`); FreeLong and FreePCA are refused."""
        return self.transformer


def is_wan_folder(path: str) -> bool:
    """A diffusers folder whose ``transformer/`` is Wan's or SkyReels-V2's, or whose ``model_index.json``
    names one of their pipelines."""
    config = os.path.join(path, "transformer", "config.json")
    if os.path.isfile(config):
        return _class_name(read_json(config)) in TRANSFORMER_CLASSES
    index = os.path.join(path, "model_index.json")
    return os.path.isfile(index) and _class_name(read_json(index)) in PIPELINE_CLASSES


def ignored_denoiser(path: str) -> str | None:
    """Why a Wan-style folder would be run wrongly, or None: a second transformer (Wan2.2-A14B's low-noise
    expert, ``transformer_2`` with ``boundary_ratio``) or an image encoder (image-to-video), which miga would
    silently leave out."""
    index_path = os.path.join(path, "model_index.json")
    index = read_json(index_path) if os.path.isfile(index_path) else {}
    index = index if isinstance(index, dict) else {}

    def named(part: str) -> bool:
        entry = index.get(part)
        listed = isinstance(entry, (list, tuple)) and any(e is not None for e in entry)
        return listed or os.path.isfile(os.path.join(path, part, "config.json"))

    if named("transformer_2") or index.get("boundary_ratio") is not None:
        return (f"{path} is a two-expert model (transformer_2 with boundary_ratio, as Wan2.2-T2V-A14B): miga runs "
                "one transformer per model and would ignore the low-noise expert; use a Wan2.1-T2V, Wan2.2-TI2V-5B or "
                "SkyReels-V2-DF folder")
    if named("image_encoder") or "I2V" in str(index.get("_class_name", "")) or index.get(
            "_class_name") == "WanImageToVideoPipeline":
        return (f"{path} is an image-to-video model (it has an image encoder): miga makes videos from text alone "
                "and would ignore the image conditioning; use a text-to-video folder")
    return None


def _class_name(config) -> str | None:
    return config.get("_class_name") if isinstance(config, dict) else None


def is_wan_pipe(pipe) -> bool:
    return bool(pipeline_class_names(pipe) & set(PIPELINE_CLASSES)) and hasattr(pipe, "transformer")


PIPELINE_CLASSES = ("WanPipeline", "SkyReelsV2DiffusionForcingPipeline")

KIND = BackboneKind(
    name="wan", summary="Wan2.1-T2V or SkyReels-V2-DF (diffusers WanTransformer3DModel / SkyReelsV2Transformer3DModel)",
    needs="a local diffusers folder: transformer/, vae/, text_encoder/, tokenizer/ (scheduler/ optional)",
    recognises_path=is_wan_folder, load=lambda model, **options: WanModel.from_folder(model, **options),
    pipelines=("WanPipeline", "SkyReelsV2DiffusionForcingPipeline"), recognises_pipe=is_wan_pipe,
    from_pipe=WanModel.from_pipe, download=DOWNLOAD_HINT)
"""Last in the order of recognition; also the fallback for any other folder (its error lists what is missing)."""
