"""Helpers every diffusers-folder adapter shares (Wan/SkyReels in ``wan.py``, UNet3D in ``unet3d.py``):
device and precision options, frame-size checks, reading a folder's JSON and loading one part of it with a
one-line error."""

from __future__ import annotations

import json
import os
import re
import struct
from typing import Callable, Iterable, TypeVar

import torch

from miga.errors import MigaError, first_line

T = TypeVar("T")

HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
"""What a Hugging Face hub id (``owner/name``) looks like."""

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".safetensors.index.json", ".bin.index.json")

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def read_json(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        raise MigaError(f"cannot read {path}: {e}"[:300]) from None


def has_tokenizer_files(names: Iterable[str]) -> bool:
    """A folder listing with a CLIP/BPE tokenizer: ``tokenizer.json``, or ``vocab.json`` and ``merges.txt``."""
    names = set(names)
    return "tokenizer.json" in names or {"vocab.json", "merges.txt"} <= names


def safetensors_header(path: str) -> dict | None:
    """The JSON header of a ``.safetensors`` file (tensor names and metadata), or None if it is not one."""
    try:
        with open(path, "rb") as f:
            (size,) = struct.unpack("<Q", f.read(8))
            if not 2 <= size <= 100_000_000:
                return None
            return json.loads(f.read(size))
    except (OSError, ValueError, struct.error):
        return None


def hub_id_message(path: str) -> str:
    return (f"{path} looks like a Hugging Face hub id, but miga loads local folders only; download it "
            f"with 'hf download {path} --local-dir DIR' and pass --model DIR")


def import_diffusers():
    """diffusers, after checking that the packages its loaders need are installed (one line if not)."""
    import importlib.util

    missing = [m for m in ("diffusers", "transformers", "accelerate") if importlib.util.find_spec(m) is None]
    if missing:
        raise MigaError(f"diffusers models need {', '.join(missing)}; install them with "
                        'pip install ".[diffusers]" in the miga checkout')
    import diffusers

    return diffusers


def load_part(path: str, part: str, fn: Callable[[], T]) -> T:
    """Run ``fn`` (a ``from_pretrained`` of ``path/part``); any failure becomes one line naming the part."""
    try:
        return fn()
    except Exception as e:  # noqa: BLE001 - any failure becomes one line naming the part
        raise MigaError(f"cannot load {part} from {path}/{part}: {first_line(e)}"[:400]) from None


def check_size(height: int, width: int, multiple: int = 16) -> None:
    """Refuse a frame size the VAE (and patches) cannot tile, naming the nearest valid values."""
    for name, value in (("height", height), ("width", width)):
        if value % multiple:
            low = max(multiple, value // multiple * multiple)
            raise MigaError(f"--{name} {value} is not divisible by {multiple}; use {low} or {low + multiple}")


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def parse_dtype(name: str | torch.dtype | None, device: str) -> torch.dtype:
    """``--dtype``: default bfloat16 on a GPU, float32 on the CPU."""
    if isinstance(name, torch.dtype):
        return name
    if name is None:
        return torch.bfloat16 if str(device).startswith("cuda") else torch.float32
    if name not in DTYPES:
        raise MigaError(f"--dtype {name} is not supported; choose one of {', '.join(DTYPES)}")
    return DTYPES[name]


def cast_model(model: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
    """Cast floating parameters and buffers to ``dtype``, keeping the modules the model class wants in
    float32 (``_keep_in_fp32_modules``: Wan's time embedder, norms and modulation tables), as
    ``from_pretrained(dtype=...)`` does."""
    keep = set(getattr(model, "_keep_in_fp32_modules", None) or [])
    for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
        if tensor.is_floating_point():
            want = torch.float32 if keep.intersection(name.split(".")) else dtype
            if tensor.dtype != want:
                tensor.data = tensor.data.to(want)
    return model


def _accelerate_hooks(module) -> list:
    """The accelerate hooks on ``module`` itself (a ``SequentialHook`` unpacked), if any."""
    hook = getattr(module, "_hf_hook", None)
    return list(getattr(hook, "hooks", None) or [hook]) if hook is not None else []


def offload_hooks(module) -> list:
    """The accelerate ``CpuOffload`` hooks on ``module`` (``enable_model_cpu_offload``), if any."""
    return [h for h in _accelerate_hooks(module) if type(h).__name__ == "CpuOffload"]


def execution_device(module) -> torch.device:
    """Where ``module`` computes: its offload hook's execution device, else where its parameters are (with
    sequential offload, ``enable_sequential_cpu_offload``, they wait on the meta device: then the execution
    device of the accelerate hooks on its submodules)."""
    for hook in offload_hooks(module):
        return torch.device(hook.execution_device)
    device = next(module.parameters()).device
    if device.type == "meta":
        for sub in module.modules():
            for h in _accelerate_hooks(sub):
                if getattr(h, "execution_device", None) is not None:
                    return torch.device(h.execution_device)
    return device


def onload(module) -> torch.device:
    """Before calling a submodule of ``module`` directly (which bypasses the hook on ``module.forward``), do
    what its ``CpuOffload`` hook does before a forward: move it to its execution device (and offload the
    previous model of the chain), unless it is there already (the streaming decoders call this per latent;
    offloading the denoiser every time would move its weights twice per latent). Without such a hook nothing
    moves. Returns the device it computes on."""
    for hook in offload_hooks(module):
        if next(module.parameters()).device != torch.device(hook.execution_device):
            hook.pre_forward(module)
    return execution_device(module)


def offload_after_use(modules) -> None:
    """After a call, put back on the CPU every module a ``CpuOffload`` hook manages (what diffusers'
    ``maybe_free_model_hooks`` leaves at the end of a pipeline call); other modules are not touched."""
    for module in modules:
        for hook in offload_hooks(module):
            hook.init_hook(module)


def pipeline_device(pipe) -> torch.device:
    """The device a diffusers pipeline runs on (``_execution_device``: respects model offload)."""
    try:
        return torch.device(pipe._execution_device)
    except Exception:  # noqa: BLE001 - a pipeline without modules on a device
        return torch.device("cpu")


class TextEncoderOffload:
    """Placement shared by the diffusers adapters: the denoiser on ``self.device`` in ``self.dtype``, the VAE
    there in float32, the text encoder in ``self.dtype`` on the CPU until prompts are encoded.

    With ``self.owns_modules`` False (a backbone built from a user's pipeline, :func:`miga.from_pipe`) nothing
    is cast, moved or switched: the modules stay as the user placed them, offload hooks included.
    """

    device: torch.device
    dtype: torch.dtype
    owns_modules: bool = True

    def _place(self, denoiser, vae, text_encoder):
        if not self.owns_modules:
            return denoiser, vae, text_encoder
        return (cast_model(denoiser, self.dtype).to(self.device).eval().requires_grad_(False),
                cast_model(vae, torch.float32).to(self.device).eval().requires_grad_(False),
                cast_model(text_encoder, self.dtype).eval().requires_grad_(False))

    def _text_encoder_on_device(self):
        """The text encoder ready to run, and the device its inputs go to."""
        if self.owns_modules:
            return self.text_encoder.to(self.device), self.device
        return self.text_encoder, execution_device(self.text_encoder)

    def _predict_in_chunks(self, call, latents, levels, conds, batch: int | None) -> torch.Tensor:
        """Move a batch of windows to ``self.device``/``self.dtype`` and run ``call(x, t, ctx)`` on at most
        ``batch`` samples at a time (``batch=1``: guidance as separate passes); float32 out."""
        x = latents.to(self.device, self.dtype)
        t = levels.timesteps.to(self.device, torch.float32)
        ctx = torch.stack([c.to(self.device, self.dtype) for c in conds])
        step = batch or x.shape[0]
        outs = [call(x[i:i + step], t[i:i + step], ctx[i:i + step]) for i in range(0, x.shape[0], step)]
        return torch.cat(outs).float()

    def release_text_encoder(self) -> None:
        """Move the text encoder back to the CPU once the prompts are encoded (frees its GPU memory); a
        borrowed one (``owns_modules`` False) stays where its owner put it."""
        if not self.owns_modules:
            return
        self.text_encoder.to("cpu")
        if self.device.type == "cuda":
            torch.cuda.empty_cache()


def save_diffusers_folder(components: dict, folder: str, scheduler: dict, index: dict) -> str:
    """Write ``components`` (``save_pretrained`` each into its subfolder), ``scheduler/scheduler_config.json``
    and ``model_index.json``: the layout of a diffusers model folder."""
    os.makedirs(os.path.join(folder, "scheduler"), exist_ok=True)
    for name, part in components.items():
        part.save_pretrained(os.path.join(folder, name))
    with open(os.path.join(folder, "scheduler", "scheduler_config.json"), "w") as f:
        json.dump(scheduler, f, indent=2)
    with open(os.path.join(folder, "model_index.json"), "w") as f:
        json.dump(index, f, indent=2)
    return folder
