"""diffusers ``UNet3DConditionModel`` text-to-video models (ModelScope text-to-video-ms-1.7b, Zeroscope)
from a local diffusers-format folder (``unet/``, ``vae/``, ``text_encoder/``, ``tokenizer/``, ``scheduler/``).

Facts this adapter rests on (``shared/spec/backends.md`` Sec. 1.3):

- The UNet folds frames into the batch, ``(B·F, C, h, w)``, and gives every frame of a video the same time
  embedding (``emb.repeat_interleave(F)``). Only the ResNet blocks inside the down/mid/up blocks read that
  embedding; ``transformer_in`` and the temporal layers do not. So per-frame timesteps need only a
  ``(B·F, C)`` embedding in ``(b f)`` order handed to those blocks: forward-pre-hooks swap it in (keyword
  ``temb=`` for down/up blocks, the second positional argument for the mid block, as diffusers 0.42.1 calls
  them), inside :func:`per_frame_timesteps`, which removes the hooks however the call ends. The scalar
  ``timestep`` the UNet still receives is then unused. All frames equal gives the scalar path's output.
- Epsilon prediction on the DDPM schedule of the folder's ``scheduler_config.json``; miga's own per-frame
  DDIM samples it (the ``modelscope`` preset).
- CLIP text embeddings: 77 tokens, ``last_hidden_state`` (as ``TextToVideoSDPipeline``); empty negative prompt.
- The image VAE (``AutoencoderKL``) decodes each latent to one frame, ``latent / scaling_factor``, so frames
  are written as latents finish.

Nothing is fetched from a model hub.
"""

from __future__ import annotations

import contextlib
import os
from typing import Any, Iterator, Sequence

import numpy as np
import torch

from miga.backbones.base import NoiseLevels
from miga.backbones.diffusers_common import (HUB_ID, WEIGHT_SUFFIXES, TextEncoderOffload, check_size,
                                             default_device, has_tokenizer_files, hub_id_message,
                                             import_diffusers, load_part, onload, parse_dtype,
                                             pipeline_device, read_json, safetensors_header)
from miga.backbones.registry import BackboneKind, pipeline_class_names
from miga.engine.schedules import ScheduleConfig
from miga.errors import MigaError

DOWNLOAD_HINT = "hf download ali-vilab/text-to-video-ms-1.7b --local-dir DIR"

UNET_CLASS = "UNet3DConditionModel"

PARTS = {
    "unet": "the UNet3DConditionModel (config.json and weights)",
    "vae": "the image VAE (config.json and weights)",
    "text_encoder": "the CLIP text encoder (config.json and weights)",
    "tokenizer": "the CLIP tokenizer (vocab.json and merges.txt, or tokenizer.json)",
    "scheduler": "the noise schedule (scheduler_config.json)",
}

OTHER_UNETS = {
    "UNet2DConditionModel": "an image model (e.g. Stable Diffusion), not a video model",
    "UNet2DModel": "an unconditional image model, not a text-to-video model",
    "UNetMotionModel": "an AnimateDiff motion model, which miga does not support",
    "UNetSpatioTemporalConditionModel": "Stable Video Diffusion, an image-to-video model miga does not support",
    "I2VGenXLUNet": "I2VGen-XL, an image-to-video model miga does not support",
}


def is_unet_folder(path: str) -> bool:
    """A folder that holds (or should hold, by its ``model_index.json``) a UNet model."""
    if not os.path.isdir(path):
        return False
    if os.path.isfile(os.path.join(path, "unet", "config.json")):
        return True
    index = os.path.join(path, "model_index.json")
    return os.path.isfile(index) and "unet" in read_json(index)


def unet_folder_error(path: str) -> str | None:
    """Why ``path`` is not a loadable UNet3D text-to-video folder, or None if it looks complete."""
    missing = []
    for part, what in PARTS.items():
        sub = os.path.join(path, part)
        names = os.listdir(sub) if os.path.isdir(sub) else []
        if part == "tokenizer":
            ok = has_tokenizer_files(names)
        elif part == "scheduler":
            ok = "scheduler_config.json" in names
        else:
            ok = "config.json" in names and any(n.endswith(WEIGHT_SUFFIXES) for n in names)
        if not ok:
            missing.append(f"{part}/ ({what})")
    config = os.path.join(path, "unet", "config.json")
    if os.path.isfile(config):
        name = read_json(config).get("_class_name", "?")
        if name != UNET_CLASS:
            what = OTHER_UNETS.get(name, "not a UNet3DConditionModel")
            return (f"{path}/unet is a {name}: {what}; miga supports UNet3DConditionModel text-to-video "
                    f"folders (ModelScope, Zeroscope), e.g. '{DOWNLOAD_HINT}'")
    if missing:
        return (f"model folder {path} is missing {', '.join(missing)}; download the full diffusers-format model, "
                f"e.g. '{DOWNLOAD_HINT}'")
    return None


def model_file_error(path: str) -> str | None:
    """Why a single model file is not something miga loads (naming what it holds), or None for a miga
    shapes weights file (and for a path that is not a file, which other checks report)."""
    if not os.path.isfile(path):
        return None
    fix = (f"miga loads diffusers-format model folders (unet/, vae/, text_encoder/, tokenizer/, scheduler/), "
           f"e.g. '{DOWNLOAD_HINT}'")
    if path.endswith(".safetensors"):
        header = safetensors_header(path)
        if header is None:
            return f"{path} is not a readable .safetensors file; {fix}"
        meta = header.get("__metadata__") or {}
        if meta.get("format") == "miga-shapes-v1":
            return None
        keys = [k for k in header if k != "__metadata__"]
        if any(k.startswith("model.diffusion_model.") for k in keys):
            what = ("an original-layout (LDM / VideoCrafter style) diffusion checkpoint (VideoCrafter2 is loaded "
                    "from its model.ckpt)")
        elif any(k.startswith(("down_blocks.", "conv_in.")) for k in keys):
            what = "the weights of one diffusers model on their own, without the folder around them"
        else:
            what = f"{len(keys)} tensors" + (f" (first: {sorted(keys)[0]})" if keys else "")
        return f"{path} is a single .safetensors file holding {what}, not a miga shapes weights file; {fix}"
    ext = os.path.splitext(path)[1] or "without an extension"
    return f"{path} is a single checkpoint file ({ext}), which miga does not load; {fix}"


def ddpm_schedule_from(config: dict) -> ScheduleConfig:
    """The folder's scheduler config as a DDPM :class:`ScheduleConfig` (diffusers' DDIM defaults for keys it
    leaves out: ``leading`` spacing, ``set_alpha_to_one``)."""
    prediction = config.get("prediction_type", "epsilon")
    if prediction != "epsilon":
        raise MigaError(f"scheduler prediction_type {prediction!r} is not supported; miga's UNet3D adapter "
                        "runs epsilon-prediction models (ModelScope, Zeroscope)")
    if config.get("trained_betas") is not None:
        raise MigaError("scheduler trained_betas are not supported; use a linear or scaled_linear beta schedule")
    beta_schedule = config.get("beta_schedule", "linear")
    if beta_schedule not in ("linear", "scaled_linear"):
        raise MigaError(f"scheduler beta_schedule {beta_schedule!r} is not supported; use linear or scaled_linear")
    spacing = config.get("timestep_spacing", "leading")
    if spacing not in ("linspace", "leading", "trailing"):
        raise MigaError(f"scheduler timestep_spacing {spacing!r} is not supported")
    return ScheduleConfig(kind="ddpm", num_train_timesteps=int(config.get("num_train_timesteps", 1000)),
                          beta_start=float(config.get("beta_start", 0.0001)),
                          beta_end=float(config.get("beta_end", 0.02)), beta_schedule=beta_schedule,
                          timestep_spacing=spacing, steps_offset=int(config.get("steps_offset", 0)),
                          final_alpha_one=bool(config.get("set_alpha_to_one", True)))


MODELSCOPE_SCHEDULER = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                            num_train_timesteps=1000, prediction_type="epsilon", set_alpha_to_one=False,
                            steps_offset=1, clip_sample=False)
"""``scheduler/scheduler_config.json`` of text-to-video-ms-1.7b (a ``DDIMScheduler``)."""


@contextlib.contextmanager
def per_frame_timesteps(unet, timesteps: torch.Tensor) -> Iterator[torch.Tensor]:
    """While active, ``unet`` embeds frame f of video b at ``timesteps[b, f]`` (``[B, F]``).

    Builds the ``(B·F, C)`` time embedding in ``(b f)`` order and swaps it, with forward-pre-hooks, into every
    down, mid and up block, where diffusers passes the per-video embedding repeated over frames. The
    embedding is computed at the first block, once the UNet's own forward (and any offload hook) has placed
    it. The hooks are removed when the block ends, also after an exception.
    """
    b, f = timesteps.shape
    flat = timesteps.reshape(b * f)
    emb = None

    def swap(module, args, kwargs):
        nonlocal emb
        if emb is None:  # where the block's input is (offload hooks have placed the UNet by now)
            device = (kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]).device
            emb = unet.time_embedding(unet.time_proj(flat.to(device)).to(unet.dtype), None)
        if "temb" in kwargs:
            kwargs["temb"] = emb
        elif len(args) >= 2:
            args = (args[0], emb, *args[2:])
        else:
            raise RuntimeError(f"{type(module).__name__} was called without a time embedding; per-frame "
                               "timesteps need the diffusers 0.42 UNet3D call convention")
        return args, kwargs

    blocks = [*unet.down_blocks, *([unet.mid_block] if unet.mid_block is not None else []), *unet.up_blocks]
    handles = [block.register_forward_pre_hook(swap, with_kwargs=True) for block in blocks]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


class UNet3DFrameDecoder:
    """The image VAE, one latent in, one frame out (``vae.decode(latent / scaling_factor)``)."""

    stateless = True  # each frame depends on its own latent only (resuming replays just a few)

    def __init__(self, vae):
        self.vae = vae
        self.device, self.dtype = onload(vae), next(vae.parameters()).dtype
        self.scale = float(vae.config.scaling_factor)

    @torch.no_grad()
    def decode_latent(self, latent: torch.Tensor) -> torch.Tensor:
        """One latent ``[C, h, w]`` (the UNet's scale) to pixels ``[1, 3, H, W]`` in [-1, 1]."""
        z = latent[None].to(self.device, torch.float32) / self.scale
        return self.vae.decode(z.to(self.dtype)).sample.clamp(-1.0, 1.0)

    def push(self, latent: torch.Tensor) -> list[np.ndarray]:
        image = self.decode_latent(latent)[0]  # [3, H, W]
        rgb = ((image.float() + 1.0) * 127.5).round().clamp(0, 255).to(torch.uint8)
        return [rgb.permute(1, 2, 0).cpu().numpy()]

    def push_float(self, latent: torch.Tensor) -> list[np.ndarray]:
        """Like :meth:`push`, as float32 ``[H, W, 3]`` in [0, 1] (diffusers' ``output_type="np"``)."""
        image = (self.decode_latent(latent)[0].float() * 0.5 + 0.5).clamp(0.0, 1.0)
        return [image.permute(1, 2, 0).cpu().numpy()]

    def flush(self) -> list[np.ndarray]:
        return []


class UNet3DModel(TextEncoderOffload):
    """A diffusers ``UNet3DConditionModel`` text-to-video model as a :class:`~miga.backbones.base.Backbone`.

    Build it with :meth:`from_folder` (a user's local diffusers folder) or :meth:`from_components`.

    Args:
        height, width: output frame size, divisible by the VAE's factor (8); default: the UNet's
            ``sample_size`` times that factor (ModelScope: 256x256; Zeroscope v2 576w is trained at 576x320).
        device, dtype: where the UNet and text encoder run and in which precision (the VAE stays float32).
        window_latents: f_0, frames per model window (default 16, ModelScope's usual clip length).
        model_batch: windows per UNet call; 1 runs classifier-free guidance as two passes.
        schedule: the DDPM schedule (default: text-to-video-ms-1.7b's scheduler config).
        owns_modules: cast and place the modules (True), or use them exactly as given (False, a user's
            pipeline: :meth:`from_pipe`).
    """

    name = "unet3d"
    default_preset = "modelscope"
    prediction = "epsilon"
    frames_per_latent = 1
    negative_prompt = ""
    fps = 8

    def __init__(self, unet, vae, text_encoder, tokenizer, *, height: int | None = None, width: int | None = None,
                 device: str | None = None, dtype: str | torch.dtype | None = None,
                 window_latents: int | None = None, model_batch: int | None = None,
                 schedule: ScheduleConfig | None = None, owns_modules: bool = True):
        self.owns_modules = owns_modules
        self.vae_scale = 2 ** (len(vae.config.block_out_channels) - 1)
        sample = int(getattr(unet.config, "sample_size", None) or 32)
        height = height or sample * self.vae_scale
        width = width or sample * self.vae_scale
        check_size(height, width, self.vae_scale)
        self.device = torch.device(device or default_device())
        self.dtype = parse_dtype(dtype, str(self.device))
        self.latent_shape = (int(unet.config.in_channels), height // self.vae_scale, width // self.vae_scale)
        self.native_frames = int(window_latents or 16)
        if self.native_frames < 2:
            raise MigaError(f"--window-latents must be >= 2, got {self.native_frames}")
        self.model_batch = model_batch
        self.default_schedule = schedule or ddpm_schedule_from(MODELSCOPE_SCHEDULER)
        self.max_length = int(min(getattr(tokenizer, "model_max_length", 77) or 77,
                                  getattr(text_encoder.config, "max_position_embeddings", 77)))
        self.unet, self.vae, self.text_encoder = self._place(unet, vae, text_encoder)  # text encoder: CPU
        self.tokenizer = tokenizer

    @classmethod
    def from_folder(cls, path: str, **kwargs: Any) -> "UNet3DModel":
        """Load UNet, VAE (float32), CLIP text encoder, tokenizer and schedule from a local diffusers folder."""
        if not os.path.exists(path) and HUB_ID.fullmatch(path):
            raise MigaError(hub_id_message(path))
        problem = unet_folder_error(path)
        if problem:
            raise MigaError(problem)
        diffusers = import_diffusers()
        from transformers import CLIPTextModel, CLIPTokenizer

        schedule = ddpm_schedule_from(read_json(os.path.join(path, "scheduler", "scheduler_config.json")))
        device = kwargs.get("device") or default_device()
        dtype = parse_dtype(kwargs.get("dtype"), str(device))
        unet = load_part(path, "unet", lambda: diffusers.UNet3DConditionModel.from_pretrained(
            path, subfolder="unet", dtype=dtype, local_files_only=True))
        vae = load_part(path, "vae", lambda: diffusers.AutoencoderKL.from_pretrained(
            path, subfolder="vae", dtype=torch.float32, local_files_only=True))
        text_encoder = load_part(path, "text_encoder", lambda: CLIPTextModel.from_pretrained(
            path, subfolder="text_encoder", dtype=dtype, local_files_only=True))
        tokenizer = load_part(path, "tokenizer", lambda: CLIPTokenizer.from_pretrained(
            os.path.join(path, "tokenizer"), local_files_only=True))
        return cls(unet, vae, text_encoder, tokenizer, schedule=schedule, **kwargs)

    @classmethod
    def from_pipe(cls, pipe, **kwargs: Any) -> "UNet3DModel":
        """A backbone over the modules of a loaded ``TextToVideoSDPipeline``, used as they are (no cast, no
        move, offload hooks kept); the DDPM schedule from its scheduler's config."""
        kwargs.setdefault("schedule", ddpm_schedule_from(dict(pipe.scheduler.config)))
        kwargs.setdefault("device", pipeline_device(pipe))
        kwargs.setdefault("dtype", pipe.unet.dtype)
        return cls(pipe.unet, pipe.vae, pipe.text_encoder, pipe.tokenizer, owns_modules=False, **kwargs)

    @classmethod
    def from_components(cls, components: dict, **kwargs: Any) -> "UNet3DModel":
        return cls(components["unet"], components["vae"], components["text_encoder"], components["tokenizer"],
                   **kwargs)

    # ---- prompts ----
    @torch.no_grad()
    def encode_prompt(self, text: str) -> torch.Tensor:
        """CLIP ``last_hidden_state`` ``[77, D]`` of one prompt padded to 77 tokens (as TextToVideoSDPipeline)."""
        tokens = self.tokenizer([text], padding="max_length", max_length=self.max_length, truncation=True,
                                return_tensors="pt")
        encoder, device = self._text_encoder_on_device()
        mask = None
        if getattr(encoder.config, "use_attention_mask", False):
            mask = tokens.attention_mask.to(device)
        hidden = encoder(tokens.input_ids.to(device), attention_mask=mask).last_hidden_state[0]
        return hidden.to(self.device, self.dtype)

    # ---- the model ----
    @torch.no_grad()
    def predict(self, latents: torch.Tensor, levels: NoiseLevels, conds: Sequence[torch.Tensor]) -> torch.Tensor:
        """Noise ε for ``latents`` ``[B, C, F, h, w]`` where frame f of element b is at ``levels[b, f]``."""
        def call(x, t, ctx):
            with per_frame_timesteps(self.unet, t):
                return self.unet(x, t[:, 0], encoder_hidden_states=ctx, return_dict=False)[0]

        return self._predict_in_chunks(call, latents, levels, conds, self.model_batch)

    def decoder(self) -> UNet3DFrameDecoder:
        return UNet3DFrameDecoder(self.vae)

    def temporal_attention_network(self):
        """The UNet whose temporal self-attentions (``transformer_in`` and ``temp_attentions``) an attention policy
        replaces (:func:`miga.baselines.hooks.attention_policy`)."""
        return self.unet


def is_unet3d_pipe(pipe) -> bool:
    """A ``TextToVideoSDPipeline`` (or subclass) with a plain ``UNet3DConditionModel``."""
    unet = getattr(pipe, "unet", None)
    return ("TextToVideoSDPipeline" in pipeline_class_names(pipe) and unet is not None
            and type(unet).__name__ == UNET_CLASS and not hasattr(unet, "fps_embedding"))


KIND = BackboneKind(
    name="unet3d", summary="diffusers UNet3DConditionModel text-to-video models (ModelScope, Zeroscope)",
    needs="a local diffusers folder: unet/, vae/, text_encoder/, tokenizer/, scheduler/",
    recognises_path=is_unet_folder, load=lambda model, **options: UNet3DModel.from_folder(model, **options),
    pipelines=("TextToVideoSDPipeline",), recognises_pipe=is_unet3d_pipe, from_pipe=UNet3DModel.from_pipe,
    download=DOWNLOAD_HINT)
