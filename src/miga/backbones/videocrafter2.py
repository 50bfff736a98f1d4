"""VideoCrafter2 (``base_512_v2``, the paper's main model) as a miga backbone, from local files only.

Two ways users have the weights, both loaded into miga's own UNet (:mod:`miga.backbones.videocrafter2_unet`):

- **The official checkpoint** ``model.ckpt`` (``hf download VideoCrafter/VideoCrafter2 model.ckpt``): one
  LVDM state dict holding the UNet (``model.diffusion_model.``), the SD-style VAE (``first_stage_model.``) and
  the OpenCLIP ViT-H/14 text tower (``cond_stage_model.model.``). The VAE and the text tower are converted
  with diffusers' single-file converters into ``AutoencoderKL`` and a 23-layer transformers
  ``CLIPTextModel`` (OpenCLIP's penultimate layer, then its final LayerNorm: LVDM's ``layer: penultimate``).
  The checkpoint carries no tokenizer: miga reads a CLIP BPE tokenizer from a ``tokenizer/`` folder beside
  the file (OpenCLIP ViT-H uses the plain CLIP vocabulary).
- **The community diffusers conversion** (``adamdad/videocrafterv2_diffusers``): a pipeline folder whose
  ``unet/`` stores the same network in diffusers' ``UNet3DConditionModel`` names plus ``fps_embedding``;
  miga renames it to LVDM's layout (checked against diffusers' own UNet3D forward in the tests).

Sampling facts (method.md Sec. 4.2): epsilon prediction; DDPM betas linear in sqrt from 0.00085 to 0.012
over 1000 steps, sampled by the engine's per-frame DDIM (eta 1, ``videocrafter2`` preset, CFG 12 against
the empty prompt); 320x512; fps conditioning 8 and 10 fps output, as FIFO-Diffusion runs it. Prompts are
padded with token id 0 to 77 tokens, as OpenCLIP's tokenizer does. Each finished latent is decoded on its
own (the VAE is 2D), ``latent / 0.18215``.

The ``use_scale`` detail: VideoCrafter2 was trained with the clean latent scaled by ``scale_arr[t]`` (1 at
t = 0 falling linearly to 0.7 at t = 399, then 0.7), and its native DDIM multiplies each step's clean-latent
term (not the direction or noise terms) by ``scale_arr[t_prev] / scale_arr[t]``. FIFO-Diffusion's and MIGA's per-frame DDIM leave that out, and the
paper's numbers were measured so; miga does the same by default (paper first) and applies it per frame with
``ddim_rescale=True`` (``--ddim-rescale``), see :class:`~miga.engine.schedules.ScheduleConfig`.
"""

from __future__ import annotations

import os
import pickle
from dataclasses import replace
from typing import Any, Sequence

import torch

from miga.backbones.base import NoiseLevels
from miga.backbones.diffusers_common import (HUB_ID, TextEncoderOffload, check_size, default_device,
                                             has_tokenizer_files, hub_id_message, import_diffusers, load_part,
                                             parse_dtype, pipeline_device, read_json, safetensors_header)
from miga.backbones.registry import BackboneKind
from miga.backbones.unet3d import UNet3DFrameDecoder
from miga.backbones.videocrafter2_unet import (CHECKPOINT_PREFIX, VideoCrafter2UNet, config_from_state_dict,
                                               lvdm_state_dict_from_diffusers, match_projection_shapes,
                                               strip_checkpoint_prefix)
from miga.engine.schedules import ScheduleConfig
from miga.errors import MigaError, first_line

CHECKPOINT_HINT = "hf download VideoCrafter/VideoCrafter2 model.ckpt --local-dir DIR"
TOKENIZER_HINT = ("hf download laion/CLIP-ViT-H-14-laion2B-s32B-b79K vocab.json merges.txt "
                  "--local-dir DIR/tokenizer")
COMMUNITY_HINT = "hf download adamdad/videocrafterv2_diffusers --local-dir DIR"

VAE_PREFIX = "first_stage_model."
TEXT_PREFIX = "cond_stage_model.model."
TRUST_ENV = "MIGA_TRUST_CHECKPOINT"

VIDEOCRAFTER2_SCHEDULE = ScheduleConfig(kind="ddpm", num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                                        beta_schedule="scaled_linear", timestep_spacing="linspace",
                                        final_alpha_one=False)
"""LVDM's ``linear`` betas (linear in sqrt(beta)), DDIM grid ``round(linspace(0, 999, T))`` (method.md 4.2)."""

USE_SCALE = dict(signal_scale_end=0.7, signal_scale_steps=400)
"""``inference_t2v_512_v2.0.yaml``: ``use_scale: true, scale_b: 0.7`` (``scale_a`` 1, ``mid_step`` 400)."""

SCALING_FACTOR = 0.18215
FPS_CONDITION = 8
OUTPUT_FPS = 10

SD_VAE = dict(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(128, 256, 512, 512),
              down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
              layers_per_block=2, norm_num_groups=32, sample_size=512, scaling_factor=SCALING_FACTOR)
"""The SD-style ``AutoencoderKL`` of ``first_stage_config`` (``ch 128, ch_mult [1, 2, 4, 4]``)."""

COMMUNITY_CLASSES = ("UNetVideoCrafter", "UNet3DVideoCrafterConditionModel")


# ---------------------------------------------------------------- reading the official checkpoint
def read_checkpoint(path: str) -> dict:
    """The state dict of an LVDM ``.ckpt`` (``ckpt["state_dict"]`` or the dict itself), memory-mapped.

    Loads with ``weights_only=True``; a file that needs arbitrary unpickling is refused in one line unless
    ``MIGA_TRUST_CHECKPOINT=1`` says the user trusts it.
    """
    trusted = os.environ.get(TRUST_ENV) == "1"

    def load(mmap: bool):
        return torch.load(path, map_location="cpu", weights_only=not trusted, mmap=mmap)

    try:
        try:
            obj = load(True)
        except RuntimeError as e:  # files written by torch < 1.6 cannot be memory-mapped
            if "mmap" not in str(e) and "zip" not in str(e):
                raise
            obj = load(False)
    except Exception as e:  # noqa: BLE001 - any failure becomes one line
        # weights_only refuses pickled objects as "Unsupported global"; anything else is a damaged/foreign file
        if isinstance(e, pickle.UnpicklingError) and "unsupported global" in str(e).lower():
            raise MigaError(f"{path} holds Python objects besides tensors, which torch will not unpickle "
                            f"safely; if you trust the file, run again with {TRUST_ENV}=1") from None
        raise MigaError(f"cannot read {path} as a PyTorch checkpoint: {first_line(e)}"[:400]) from None
    state = obj.get("state_dict", obj) if isinstance(obj, dict) else None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise MigaError(f"{path} is not a checkpoint state dict; VideoCrafter2's is '{CHECKPOINT_HINT}'")
    return state


def checkpoint_problem(state: dict, path: str) -> str | None:
    """Why ``state`` is not a VideoCrafter2 text-to-video checkpoint (naming what it holds), or None."""
    parts = {"UNet": CHECKPOINT_PREFIX, "VAE": VAE_PREFIX, "OpenCLIP text encoder": TEXT_PREFIX}
    missing = [name for name, prefix in parts.items() if not any(k.startswith(prefix) for k in state)]
    if not missing:
        unet_in = state.get(CHECKPOINT_PREFIX + "input_blocks.0.0.weight")
        if unet_in is not None and unet_in.shape[1] != 4:
            return (f"{path} is an LVDM checkpoint whose UNet takes {unet_in.shape[1]} input channels (an "
                    f"image-to-video model such as DynamiCrafter); miga runs VideoCrafter2 text-to-video, "
                    f"'{CHECKPOINT_HINT}'")
        if not any(".temopral_conv." in k or "init_attn" in k for k in state):
            return (f"{path} is an LDM image checkpoint (no temporal layers); miga runs VideoCrafter2 "
                    f"text-to-video, '{CHECKPOINT_HINT}'")
        return None
    sample = sorted(state)[:1]
    found = f"{len(state)} tensors" + (f" (first: {sample[0]})" if sample else "")
    return (f"{path} holds {found} but no {', '.join(missing)}; miga loads VideoCrafter2's model.ckpt, "
            f"'{CHECKPOINT_HINT}'")


def vae_config_from_state_dict(state: dict, prefix: str = VAE_PREFIX) -> dict:
    """``AutoencoderKL`` config of an LDM first-stage state dict (the SD VAE at full size)."""
    ch = state[prefix + "encoder.conv_in.weight"].shape[0]
    levels = sorted({int(k[len(prefix):].split(".")[2]) for k in state if k.startswith(prefix + "encoder.down.")})
    widths = tuple(int(state[prefix + f"encoder.down.{i}.block.0.conv1.weight"].shape[0]) for i in levels)
    per_level = len({k.split(".")[4] for k in state if k.startswith(prefix + "encoder.down.0.block.")})
    return dict(SD_VAE, block_out_channels=widths, layers_per_block=per_level,
                latent_channels=int(state[prefix + "quant_conv.weight"].shape[0]) // 2,
                down_block_types=("DownEncoderBlock2D",) * len(levels),
                up_block_types=("UpDecoderBlock2D",) * len(levels), norm_num_groups=min(32, ch))


def text_config_from_state_dict(state: dict, prefix: str = TEXT_PREFIX) -> dict:
    """A ``CLIPTextConfig`` (as a dict) for OpenCLIP's text tower up to its penultimate block (LVDM's
    ``layer: penultimate``); heads are 64 channels wide, as in every OpenCLIP text tower."""
    vocab, width = state[prefix + "token_embedding.weight"].shape
    blocks = {int(k[len(prefix):].split(".")[2]) for k in state if k.startswith(prefix + "transformer.resblocks.")}
    return dict(vocab_size=int(vocab), hidden_size=int(width), projection_dim=int(width),
                intermediate_size=int(state[prefix + "transformer.resblocks.0.mlp.c_fc.weight"].shape[0]),
                num_hidden_layers=len(blocks) - 1, num_attention_heads=max(1, int(width) // 64),
                max_position_embeddings=int(state[prefix + "positional_embedding"].shape[0]), hidden_act="gelu",
                bos_token_id=int(vocab) - 2, eos_token_id=int(vocab) - 1, pad_token_id=0)  # CLIP: 49406, 49407


def _unet_from_lvdm(state: dict) -> VideoCrafter2UNet:
    config = config_from_state_dict(state)
    with torch.device("meta"):
        unet = VideoCrafter2UNet(config)
    unet.load_state_dict(match_projection_shapes(state, unet), strict=True, assign=True)
    return unet


def _tokenizer_from(folder: str, where: str):
    from transformers import CLIPTokenizer

    if not has_tokenizer_files(os.listdir(folder) if os.path.isdir(folder) else ()):
        raise MigaError(f"{where} has no CLIP tokenizer in {folder} (vocab.json and merges.txt); VideoCrafter2 "
                        f"uses OpenCLIP ViT-H's, e.g. '{TOKENIZER_HINT}'")
    return load_part(os.path.dirname(folder) or ".", "tokenizer",
                     lambda: CLIPTokenizer.from_pretrained(folder, local_files_only=True))


def load_official(path: str) -> dict:
    """``{"unet", "vae", "text_encoder", "tokenizer"}`` from ``model.ckpt`` (a file, or a folder
    holding it) and the ``tokenizer/`` folder beside it."""
    file = os.path.join(path, "model.ckpt") if os.path.isdir(path) else path
    state = read_checkpoint(file)
    problem = checkpoint_problem(state, file)
    if problem:
        raise MigaError(problem)
    tokenizer = _tokenizer_from(os.path.join(os.path.dirname(os.path.abspath(file)), "tokenizer"), file)
    diffusers = import_diffusers()
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint, convert_open_clip_checkpoint
    from transformers import CLIPTextConfig, CLIPTextModel

    try:
        unet = _unet_from_lvdm(strip_checkpoint_prefix(state))
    except (KeyError, RuntimeError, ValueError) as e:
        raise MigaError(f"{file}: the UNet does not have VideoCrafter2's layout ({first_line(e)})"[:400]) from None

    def vae():
        config = vae_config_from_state_dict(state)
        model = diffusers.AutoencoderKL(**config)
        model.load_state_dict(convert_ldm_vae_checkpoint(state, config), strict=True)
        return model

    def text_encoder():
        config = text_config_from_state_dict(state)
        last = f"{TEXT_PREFIX}transformer.resblocks.{config['num_hidden_layers']}."
        tower = {k: v for k, v in state.items() if k.startswith(TEXT_PREFIX) and not k.startswith(last)}
        model = CLIPTextModel(CLIPTextConfig(**config))
        converted = convert_open_clip_checkpoint(model, tower, prefix=TEXT_PREFIX)
        converted.pop("text_projection.weight", None)
        if not any(k.startswith("text_model.") for k in model.state_dict()):  # transformers >= 5 names
            converted = {k.removeprefix("text_model."): v for k, v in converted.items()}
        model.load_state_dict(converted, strict=True)
        return model

    return {"unet": unet, "vae": load_part(file, "first_stage_model", vae),
            "text_encoder": load_part(file, "cond_stage_model", text_encoder), "tokenizer": tokenizer}


# ---------------------------------------------------------------- the community diffusers folder
def _unet_weights(folder: str) -> dict:
    names = sorted(os.listdir(folder))
    single = [n for n in names if n.endswith((".safetensors", ".bin")) and "index" not in n]
    if not single:
        raise MigaError(f"{folder} has no UNet weights (.safetensors or .bin); download the full folder, "
                        f"'{COMMUNITY_HINT}'")
    path = os.path.join(folder, next((n for n in single if n.endswith(".safetensors")), single[0]))
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        return load_file(path)
    return torch.load(path, map_location="cpu", weights_only=True, mmap=True)


def is_community_folder(path: str) -> bool:
    """A diffusers folder whose ``unet/`` is VideoCrafter2 (an fps-conditioned UNet3D)."""
    config_path = os.path.join(path, "unet", "config.json")
    if not os.path.isfile(config_path):
        return False
    config = read_json(config_path)
    if config.get("_class_name") in COMMUNITY_CLASSES or config.get("fps_cond"):
        return True
    folder = os.path.dirname(config_path)
    return any(name.endswith(".safetensors") and "fps_embedding.linear_1.weight" in
               (safetensors_header(os.path.join(folder, name)) or {}) for name in os.listdir(folder))


def load_community(path: str) -> dict:
    """``{"unet", "vae", "text_encoder", "tokenizer"}`` from the community diffusers-format folder."""
    missing = [part for part in ("unet", "vae", "text_encoder", "tokenizer")
               if not os.path.isdir(os.path.join(path, part))]
    if missing:
        raise MigaError(f"VideoCrafter2 folder {path} is missing {', '.join(p + '/' for p in missing)}; "
                        f"download the full folder, '{COMMUNITY_HINT}'")
    diffusers = import_diffusers()
    from transformers import CLIPTextModel

    def unet():
        state = lvdm_state_dict_from_diffusers(_unet_weights(os.path.join(path, "unet")))
        return _unet_from_lvdm(state)

    return {"unet": load_part(path, "unet", unet),
            "vae": load_part(path, "vae", lambda: diffusers.AutoencoderKL.from_pretrained(
                path, subfolder="vae", dtype=torch.float32, local_files_only=True)),
            "text_encoder": load_part(path, "text_encoder", lambda: CLIPTextModel.from_pretrained(
                path, subfolder="text_encoder", local_files_only=True)),
            "tokenizer": _tokenizer_from(os.path.join(path, "tokenizer"), path)}


def is_videocrafter2_path(path: str) -> bool:
    """``model.ckpt`` (or any ``.ckpt``), a folder holding it, or the community diffusers folder."""
    if os.path.isfile(path):
        return path.endswith(".ckpt")
    return os.path.isfile(os.path.join(path, "model.ckpt")) or is_community_folder(path)


# ---------------------------------------------------------------- the backbone
class VideoCrafter2Model(TextEncoderOffload):
    """VideoCrafter2 as a :class:`~miga.backbones.base.Backbone` (ε-prediction, DDIM, fps-conditioned).

    Build it with :meth:`from_path` (``model.ckpt``, a folder holding it, or the community diffusers folder)
    or :meth:`from_components`.

    Args:
        height, width: output frame size (default 320x512), divisible by 64 at full size.
        device, dtype: where the UNet and text encoder run and in which precision (the VAE stays float32).
        window_latents: f_0 (default 16, VideoCrafter2's clip length).
        model_batch: windows per UNet call; 1 runs classifier-free guidance as two passes.
        fps_condition: the fps the UNet is conditioned on (default 8, as FIFO-Diffusion); the video is
            written at 10 fps.
        ddim_rescale: apply VideoCrafter2's training-time ``scale_arr`` in every DDIM step (see the module
            docstring); off by default, as in FIFO-Diffusion's and MIGA's code.
        owns_modules: cast and place the modules (True), or use them exactly as given (False, a user's
            pipeline: :meth:`from_pipe`).
    """

    name = "videocrafter2"
    default_preset = "videocrafter2"
    prediction = "epsilon"
    frames_per_latent = 1
    negative_prompt = ""
    fps = OUTPUT_FPS

    def __init__(self, unet: VideoCrafter2UNet, vae, text_encoder, tokenizer, *, height: int | None = None,
                 width: int | None = None, device: str | None = None, dtype: str | torch.dtype | None = None,
                 window_latents: int | None = None, model_batch: int | None = None,
                 fps_condition: float = FPS_CONDITION, ddim_rescale: bool = False, owns_modules: bool = True):
        self.owns_modules = owns_modules
        self.vae_scale = 2 ** (len(vae.config.block_out_channels) - 1)
        multiple = self.vae_scale * 2 ** (len(unet.config.channel_mult) - 1)
        height, width = height or 320, width or 512
        check_size(height, width, multiple)
        self.device = torch.device(device or default_device())
        self.dtype = parse_dtype(dtype, str(self.device))
        self.latent_shape = (unet.config.in_channels, height // self.vae_scale, width // self.vae_scale)
        self.native_frames = int(window_latents or 16)
        if self.native_frames < 2:
            raise MigaError(f"--window-latents must be >= 2, got {self.native_frames}")
        self.model_batch = model_batch
        self.fps_condition = float(fps_condition)
        self.default_schedule = (replace(VIDEOCRAFTER2_SCHEDULE, **USE_SCALE) if ddim_rescale
                                 else VIDEOCRAFTER2_SCHEDULE)
        self.max_length = int(getattr(text_encoder.config, "max_position_embeddings", 77))
        self.unet, self.vae, self.text_encoder = self._place(unet, vae, text_encoder)  # text encoder: CPU
        self.tokenizer = tokenizer

    @classmethod
    def from_path(cls, path: str, **kwargs: Any) -> "VideoCrafter2Model":
        """Load ``model.ckpt`` (file or folder, with ``tokenizer/`` beside it) or the community folder."""
        if not os.path.exists(path) and HUB_ID.fullmatch(path):
            raise MigaError(hub_id_message(path))
        if os.path.isdir(path) and not os.path.isfile(os.path.join(path, "model.ckpt")):
            parts = load_community(path)
        else:
            parts = load_official(path)
        return cls.from_components(parts, **kwargs)

    @classmethod
    def from_pipe(cls, pipe, **kwargs: Any) -> "VideoCrafter2Model":
        """A backbone over a loaded pipeline of the community conversion (e.g. Video-Infinity's
        ``VideoCrafterPipeline``): its UNet is viewed in LVDM's layout as miga's own UNet, sharing the weights'
        memory (no copy, same dtype and device); VAE, text encoder and tokenizer are used as they are. The
        user's modules are not cast or moved. A model-offloaded UNet runs where its weights are now."""
        if any(p.is_meta for p in pipe.unet.parameters()):
            raise MigaError("the pipeline's UNet is sequentially offloaded (enable_sequential_cpu_offload: its weights "
                            "wait on the meta device); miga runs VideoCrafter2's UNet over the weights themselves, so "
                            "use enable_model_cpu_offload() or no offload")
        try:
            state = lvdm_state_dict_from_diffusers(pipe.unet.state_dict())
            unet = _unet_from_lvdm(state).eval()
        except (KeyError, RuntimeError, ValueError) as e:
            raise MigaError(f"the pipeline's UNet does not have VideoCrafter2's layout ({first_line(e)})"[:400]) \
                from None
        kwargs.setdefault("device", pipeline_device(pipe))
        kwargs.setdefault("dtype", pipe.unet.dtype)
        return cls(unet, pipe.vae, pipe.text_encoder, pipe.tokenizer, owns_modules=False, **kwargs)

    @classmethod
    def from_components(cls, components: dict, **kwargs: Any) -> "VideoCrafter2Model":
        return cls(components["unet"], components["vae"], components["text_encoder"], components["tokenizer"],
                   **kwargs)

    # ---- prompts ----
    def token_ids(self, text: str) -> torch.Tensor:
        """``[1, 77]`` ids: start, BPE tokens (truncated), end, then zeros (OpenCLIP's padding)."""
        ids = self.tokenizer(text, truncation=True, max_length=self.max_length)["input_ids"]
        return torch.tensor([ids + [0] * (self.max_length - len(ids))])

    @torch.no_grad()
    def encode_prompt(self, text: str) -> torch.Tensor:
        """OpenCLIP penultimate-layer tokens after the final LayerNorm, ``[77, 1024]``."""
        encoder, device = self._text_encoder_on_device()
        hidden = encoder(self.token_ids(text).to(device)).last_hidden_state[0]
        return hidden.to(self.device, self.dtype)

    # ---- the model ----
    @torch.no_grad()
    def predict(self, latents: torch.Tensor, levels: NoiseLevels, conds: Sequence[torch.Tensor]) -> torch.Tensor:
        """Noise ε for ``latents`` ``[B, C, F, h, w]``; frame f of element b is at ``levels[b, f]``."""
        def call(x, t, ctx):
            return self.unet(x, t, ctx, fps=self.fps_condition)

        return self._predict_in_chunks(call, latents, levels, conds, self.model_batch)

    def decoder(self) -> UNet3DFrameDecoder:
        return UNet3DFrameDecoder(self.vae)

    def temporal_attention_network(self) -> VideoCrafter2UNet:
        """The UNet whose temporal self-attentions an attention policy replaces
        (:func:`miga.baselines.hooks.attention_policy`)."""
        return self.unet




def is_community_pipe(pipe) -> bool:
    """A loaded pipeline whose UNet is the community VideoCrafter2 conversion (fps-conditioned UNet3D)."""
    unet = getattr(pipe, "unet", None)
    if unet is None:
        return False
    config = getattr(unet, "config", None) or {}
    return (type(unet).__name__ in COMMUNITY_CLASSES or hasattr(unet, "fps_embedding")
            or bool(config.get("fps_cond")))


KIND = BackboneKind(
    name="videocrafter2", summary="VideoCrafter2 base_512_v2, the paper's main model (miga's own UNet)",
    needs="model.ckpt with the CLIP tokenizer in tokenizer/ beside it, or the community diffusers folder",
    recognises_path=is_videocrafter2_path,
    load=lambda model, **options: VideoCrafter2Model.from_path(model, **options), options=("ddim_rescale",),
    pipelines=("VideoCrafterPipeline (the community conversion)",), recognises_pipe=is_community_pipe,
    from_pipe=VideoCrafter2Model.from_pipe, download=f"{CHECKPOINT_HINT}; {TOKENIZER_HINT}; or {COMMUNITY_HINT}")
