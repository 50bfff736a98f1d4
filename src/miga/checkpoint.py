"""Checkpoint files: a nested state in one safetensors file, written atomically, checked on load.

A state is nested dicts (string keys) and lists of numbers, strings, booleans, None and tensors (what
:meth:`miga.pipeline.LongVideo.state_dict` returns). Tensors are stored as safetensors tensors ``t0``,
``t1``, ...; everything else as JSON in the file's metadata under ``miga_state``, where each tensor appears
as ``{"__tensor__": "t3"}``. The metadata also holds the SHA-256 of all tensor bytes, so a damaged file is
refused with one line rather than resumed from. No pickle anywhere.

Writes go to a temporary file in the same folder, which is fsync'ed and renamed over the old file
(:func:`durable_write_bytes`): a process killed at any moment leaves the previous checkpoint or the new one.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import torch

from miga.errors import MigaError
from miga.video import atomic_write_bytes

FORMAT = "miga-checkpoint/1"
_TENSOR = "__tensor__"


def durable_write_bytes(path: str, data: bytes) -> None:
    """Write ``data`` atomically and durably: after a crash ``path`` holds the old bytes or the new ones."""
    atomic_write_bytes(path, data, durable=True)


def _digest(tensors: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for key in sorted(tensors):
        t = tensors[key].contiguous()
        h.update(f"{key}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def state_to_bytes(state: Any) -> bytes:
    """The checkpoint file's bytes for ``state``."""
    from safetensors.torch import save

    tensors: dict[str, torch.Tensor] = {}
    seen: dict[int, str] = {}  # id(tensor) -> key: a tensor held in several places is stored once

    def pack(node: Any) -> Any:
        if isinstance(node, torch.Tensor):
            key = seen.get(id(node))
            if key is None:
                key = seen[id(node)] = f"t{len(tensors)}"
                tensors[key] = node.detach().to("cpu", copy=True).contiguous()
            return {_TENSOR: key}
        if isinstance(node, dict):
            if any(not isinstance(k, str) for k in node) or _TENSOR in node:
                raise TypeError("state dicts need string keys other than " + _TENSOR)
            return {k: pack(v) for k, v in node.items()}
        if isinstance(node, (list, tuple)):
            return [pack(v) for v in node]
        if node is None or isinstance(node, (bool, int, float, str)):
            return node
        raise TypeError(f"cannot store a {type(node).__name__} in a checkpoint")

    tree = pack(state)
    meta = {"format": FORMAT, "miga_state": json.dumps(tree, allow_nan=True), "sha256": _digest(tensors)}
    return save(tensors, metadata=meta)


def save_state(path: str, state: Any) -> None:
    """Store ``state`` in ``path`` durably (see the module docstring)."""
    durable_write_bytes(path, state_to_bytes(state))


def load_state(path: str) -> Any:
    """The state stored by :func:`save_state`; :class:`MigaError` (one line) if the file is missing,
    truncated, damaged or not a checkpoint."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(path, framework="pt") as fh:
            meta = dict(fh.metadata() or {})
            tensors = {k: fh.get_tensor(k) for k in fh.keys()}
    except FileNotFoundError:
        raise MigaError(f"checkpoint {path} does not exist") from None
    except (OSError, SafetensorError, ValueError, RuntimeError) as exc:
        reason = " ".join(str(getattr(exc, "strerror", None) or exc).split())[:160]
        raise MigaError(f"checkpoint {path} is damaged and cannot be read ({reason})") from None
    if meta.get("format") != FORMAT:
        raise MigaError(f"{path} is not a miga checkpoint (format {meta.get('format')!r}, expected {FORMAT})")
    if meta.get("sha256") != _digest(tensors):
        raise MigaError(f"checkpoint {path} is damaged: its tensors do not match their checksum")
    try:
        tree = json.loads(meta["miga_state"])
    except (KeyError, ValueError):
        raise MigaError(f"checkpoint {path} is damaged: its state record is not valid JSON") from None

    def unpack(node: Any) -> Any:
        if isinstance(node, dict):
            if set(node) == {_TENSOR}:
                if node[_TENSOR] not in tensors:
                    raise MigaError(f"checkpoint {path} is damaged: tensor {node[_TENSOR]} is missing")
                return tensors[node[_TENSOR]]
            return {k: unpack(v) for k, v in node.items()}
        if isinstance(node, list):
            return [unpack(v) for v in node]
        return node

    return unpack(tree)
