"""The one place that knows the backbones: how each is recognised from a name, a path or a diffusers
pipeline object, and in which order they are tried.

Each backbone module describes itself with a :class:`BackboneKind` (its ``KIND``); :data:`KINDS` below is the
order of recognition. :func:`load` and :func:`from_pipe` ask each kind in turn; the first that recognises
the input builds the backbone. Inputs no kind recognises get one line saying what miga expects.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any, Callable

from miga.errors import MigaError


@dataclass(frozen=True)
class BackboneKind:
    """One kind of backbone as the registry sees it.

    Attributes:
        name: short name (``shapes``, ``wan`` ...), shown by ``miga models``.
        summary: what it is, one line.
        needs: what a user gives to use it (a built-in name, or what must be on disk), one line.
        names: built-in names it answers to (no files needed).
        recognises_path: ``path -> bool`` for files and folders it loads (None: names only).
        load: ``(model, **options) -> Backbone``.
        options: keyword options only this kind takes (others refuse them in one line).
        pipelines: diffusers pipeline class names it takes in :func:`from_pipe` (informational).
        recognises_pipe: ``pipe -> bool`` for a loaded diffusers pipeline (None: it takes none).
        from_pipe: ``(pipe, **options) -> Backbone`` built from the pipeline's own modules.
        download: how to get the weights (a command), shown by ``miga models``.
    """

    name: str
    summary: str
    needs: str
    load: Callable[..., Any]
    names: tuple[str, ...] = ()
    recognises_path: Callable[[str], bool] | None = None
    options: tuple[str, ...] = ()
    pipelines: tuple[str, ...] = ()
    recognises_pipe: Callable[[Any], bool] | None = None
    from_pipe: Callable[..., Any] | None = None
    download: str = ""

    def recognises(self, model: str) -> bool:
        if model in self.names:
            return True
        return self.recognises_path is not None and self.recognises_path(model)


def kinds() -> tuple[BackboneKind, ...]:
    """Every kind, in the order of recognition: built-ins by name first, then VideoCrafter2 (its ``.ckpt`` and
    fps-conditioned UNet folders, which would otherwise pass for UNet3D folders), UNet3D folders, and last
    Wan2.1/SkyReels-V2, which takes any other folder (so an incomplete one is told which parts it lacks)."""
    from miga.backbones import gaussian, shapes, unet3d, videocrafter2, wan

    return (shapes.KIND, gaussian.KIND, videocrafter2.KIND, unet3d.KIND, wan.KIND)


def builtin_names() -> tuple[str, ...]:
    return tuple(n for kind in kinds() for n in kind.names)


def kind_of(model: str) -> BackboneKind | None:
    """The kind that recognises ``model`` (a name or a path), or None. Recognition reads only small files
    (configs, headers); a config that cannot be parsed raises a one-line MigaError naming it."""
    return next((kind for kind in kinds() if kind.recognises(model)), None)


def _train_toy_file(model: str) -> str | None:
    """The error for a file of a ``miga train-toy`` run dir other than its weights (``checkpoint.pt``,
    ``loss.png``), which points to the weights; None for other files."""
    from miga.toy.train import CHECKPOINT, LOSS_PLOT, WEIGHTS

    folder = os.path.dirname(os.path.abspath(model))
    if os.path.basename(model) not in (CHECKPOINT, LOSS_PLOT) or not os.path.isfile(os.path.join(folder, CHECKPOINT)):
        return None
    weights = os.path.join(os.path.dirname(model), WEIGHTS)
    if os.path.isfile(weights):
        return f"{model} is a file of the 'miga train-toy' run in {folder}, not a model; use its weights: --model {weights}"
    return (f"{model} is a file of the 'miga train-toy' run in {folder}, not a model; its weights, {weights}, are "
            f"written when training completes: run 'miga train-toy {os.path.dirname(model) or '.'}' to finish it")


def unrecognised(model: str) -> str:
    """The one-line error for a file or a bare name that no kind recognises."""
    from miga.backbones.unet3d import model_file_error

    if os.path.isfile(model):
        return _train_toy_file(model) or model_file_error(model) or f"{model} is not a model miga can load"
    return f"unknown model {model!r}; choose one of: {', '.join(builtin_names())}, or a model folder"


def load(model: str, **options: Any):
    """The backbone for ``model`` (a built-in name or a path), built by the first kind that recognises it.
    Any other folder, or a path that does not exist, goes to the last kind (Wan), whose error says what is
    missing; ``ddim_rescale`` is refused in one line outside VideoCrafter2, and so is a device this torch
    cannot use."""
    check_device(options.get("device"))
    backbone = _load(model, dict(options))
    args = {"model": model, **options}
    try:  # how to build it again: a run started from Python resumes without being handed the backbone
        json.dumps(args)
        backbone.load_args = args
    except (TypeError, ValueError, AttributeError):  # options only Python holds, or a closed class
        pass
    return backbone


def _load(model: str, options: dict):
    kind = kind_of(model)
    if kind is None and not os.path.isfile(model) and (os.path.isdir(model) or "/" in model or os.sep in model):
        options.pop("ddim_rescale", None)  # not a model folder yet: the fallback's error says what is missing
        return kinds()[-1].load(model, **options)
    if kind is None:
        raise MigaError(unrecognised(model))
    if options.pop("ddim_rescale", False):
        if "ddim_rescale" not in kind.options:
            raise MigaError("--ddim-rescale applies to VideoCrafter2 (its model.ckpt or diffusers folder), whose "
                            f"training scaled the clean latents; {model} is another model")
        options["ddim_rescale"] = True
    return kind.load(model, **options)


def check_device(device: Any) -> None:
    """Refuse in one line a device that torch does not know or this machine's torch cannot use (CUDA on a
    CPU-only build or without a GPU, a GPU index past the last, MPS off Apple silicon)."""
    if device is None:
        return
    import torch

    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise MigaError(f"unknown device {str(device)!r}; use cpu, cuda, cuda:N or mps") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            build = "this torch is built without CUDA" if torch.version.cuda is None else "no CUDA GPU is visible"
            raise MigaError(f"device {device}: {build} (torch {torch.__version__}); use --device cpu, or install "
                            "a CUDA build of torch on a machine with an NVIDIA GPU")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise MigaError(f"device {device}: this machine has {torch.cuda.device_count()} CUDA GPU(s), "
                            f"cuda:0 to cuda:{torch.cuda.device_count() - 1}")
    elif dev.type == "mps":
        if not torch.backends.mps.is_available():
            raise MigaError(f"device {device}: MPS (Apple silicon GPUs) is not available with this torch on this "
                            "machine; use --device cpu")
    elif dev.type != "cpu":
        raise MigaError(f"device {device}: miga runs on cpu, cuda or mps, not {dev.type}")


def builtin_options(model: str, height: int | None, width: int | None, dtype: str | None) -> dict:
    """Check the options a built-in model takes (float32 only) and return the frame size given, if any."""
    if dtype not in (None, "float32"):
        raise MigaError(f"--dtype {dtype} applies to diffusers models; the {model} model runs in float32")
    return {k: v for k, v in (("height", height), ("width", width)) if v is not None}


def from_pipe(pipe: Any, **options: Any):
    """A backbone built from the modules of a diffusers pipeline the caller already loaded (see each kind's
    ``from_pipe``); the pipeline's modules keep their dtypes, devices and hooks."""
    for kind in kinds():
        if kind.recognises_pipe is not None and kind.recognises_pipe(pipe):
            return kind.from_pipe(pipe, **options)
    known = ", ".join(p for kind in kinds() for p in kind.pipelines)
    raise MigaError(f"miga cannot run a {type(pipe).__name__}; it takes {known}")


def pipeline_class_names(pipe: Any) -> set[str]:
    """The class name of ``pipe`` and of its bases (so subclasses of a known pipeline are recognised)."""
    return {cls.__name__ for cls in type(pipe).__mro__}
