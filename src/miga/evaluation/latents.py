"""Finished latents on disk (``miga generate --save-latents``) and MIGA's latent consistency score over time.

The file is a ``.safetensors`` file with one float32 tensor ``latents`` of shape ``[N, C, H, W]`` (N finished
latents in order) and string metadata (:data:`METADATA_KEYS`). :class:`LatentWriter` streams it: the header is
written first (the number of latents is known up front), then each latent as it finishes, into
``<path>.partial``, renamed to ``path`` only when all N were written. Read it with :func:`read_latents`.

:func:`latent_consistency` applies the consistency score of method.md Eqs. 5-7
(:func:`miga.engine.reflection.consistency_score`) to the finished latents: each latent against the first and
the previous latent, and each chunk of ``L_zig`` latents against the ``n_ref`` chunks in front of it, the
check that self-reflection makes during generation.
"""

from __future__ import annotations

import json
import os
import struct

import numpy as np
import torch

from miga.engine.reflection import consistency_score
from miga.errors import MigaError, PartialFileMismatch

TENSOR = "latents"
METADATA_KEYS = ("frames", "frames_per_latent", "fps", "method", "chunk", "refs", "score_mode")
"""Metadata stored with the latents: output frames, frames per latent, video fps, ``miga``/``fifo``, and the
chunk size (``L_zig``; 1 for FIFO), reference chunks (``n_ref``; 1 for FIFO) and score mode
(``frame``/``chunk``) for :func:`latent_consistency`."""


def default_latents_path(video: str) -> str:
    """Where ``--save-latents`` writes by default and ``miga eval`` looks: ``NAME.latents.safetensors`` beside
    ``NAME.mp4``."""
    root, ext = os.path.splitext(video)
    return (root if ext.lower() == ".mp4" else video) + ".latents.safetensors"


def find_latents(video: str) -> tuple[str | None, list[str], str | None]:
    """The latents file of a video made by ``miga generate``: ``(path or None, the paths looked at, why a file
    found beside the video is not its own or None)``. First where the video records that ``--save-latents`` wrote
    them (beside it or an absolute path), then ``NAME.latents.safetensors`` beside it, unless the video records
    that it saved none or saved them elsewhere (then that file is left by an earlier run)."""
    from miga.video import saved_latents

    recorded, saved = saved_latents(video)
    looked: list[str] = []
    if saved is not None:
        looked.append(saved)
        if os.path.isfile(saved):
            return saved, looked, None
    default = default_latents_path(video)
    if saved is None or os.path.realpath(saved) != os.path.realpath(default):
        looked.append(default)
    if not os.path.isfile(default):
        return None, looked, None
    if recorded and (saved is None or os.path.realpath(saved) != os.path.realpath(default)):
        where = "saved none" if saved is None else f"saved them to {saved}"
        return None, looked, (f"{video} was made after it (miga generate {where}), so it is left by an earlier "
                              "run; make the video again with --save-latents, or give --latents FILE")
    return default, looked, None


class LatentWriter:
    """Streams ``count`` latents ``[C, H, W]`` into a ``.safetensors`` file (see the module docstring).

    ``resume=k`` reopens the ``.partial`` file of an interrupted run (same count, shape and metadata) and
    keeps its first ``k`` latents, cutting off anything after them (``miga generate --resume``)."""

    def __init__(self, path: str, count: int, shape: tuple[int, int, int], metadata: dict,
                 resume: int | None = None):
        self.path, self.partial_path = path, path + ".partial"
        self.count, self.shape, self.written = count, tuple(shape), 0
        self._bytes = int(np.prod(shape)) * 4
        header = {TENSOR: {"dtype": "F32", "shape": [count, *self.shape], "data_offsets": [0, count * self._bytes]},
                  "__metadata__": {str(k): str(v) for k, v in metadata.items()}}
        text = json.dumps(header).encode("utf-8")
        text += b" " * (-len(text) % 8)  # the data starts 8-byte aligned
        head = struct.pack("<Q", len(text)) + text
        self._header = len(head)
        if resume and not os.path.exists(self.partial_path):
            raise PartialFileMismatch(f"cannot resume: {self.partial_path} is missing, but the checkpoint says "
                                      f"{resume} latents were saved (was it moved or deleted?)")
        try:
            if resume:
                self._fh = open(self.partial_path, "r+b")
            else:
                self._fh = open(self.partial_path, "wb")
        except OSError as exc:
            raise MigaError(f"cannot write {path}: {exc.strerror or exc}") from None
        if resume:
            keep = len(head) + resume * self._bytes
            size = os.fstat(self._fh.fileno()).st_size
            if self._fh.read(len(head)) != head or size < keep:
                self._fh.close()
                raise PartialFileMismatch(f"cannot resume: {self.partial_path} does not hold the {resume} latents "
                                          "the checkpoint says were saved (was it moved or changed?)")
            self._fh.seek(keep)
            self._fh.truncate()
            self.written = resume
        else:
            self._fh.write(head)

    def write(self, latent: torch.Tensor) -> None:
        """Append the next finished latent."""
        if tuple(latent.shape) != self.shape or self.written >= self.count:
            raise ValueError(f"latent {self.written} of shape {tuple(latent.shape)} does not fit {self.count} x "
                             f"{self.shape}")
        self._fh.write(latent.detach().to("cpu", torch.float32).contiguous().numpy().astype("<f4").tobytes())
        self.written += 1

    def read(self, index: int) -> torch.Tensor:
        """Latent ``index`` (< :attr:`written`) back from the file, float32 on the CPU."""
        if not 0 <= index < self.written:
            raise IndexError(f"latent {index} is not written yet ({self.written} are)")
        self._fh.flush()
        with open(self.partial_path, "rb") as fh:
            fh.seek(self._header + index * self._bytes)
            data = bytearray(fh.read(self._bytes))
        return torch.frombuffer(data, dtype=torch.float32).reshape(self.shape).clone()

    def sync(self) -> None:
        """Make every latent written so far durable (before a checkpoint counts on them)."""
        self._fh.flush()
        os.fsync(self._fh.fileno())

    def close(self) -> None:
        """Finish the file and give it its final name (all ``count`` latents must have been written)."""
        self._fh.close()
        if self.written != self.count:
            raise ValueError(f"{self.written} of {self.count} latents were written to {self.partial_path}")
        os.replace(self.partial_path, self.path)

    def abort(self) -> None:
        """Stop, leaving ``<path>.partial``."""
        self._fh.close()


def read_latents(path: str) -> tuple[torch.Tensor, dict]:
    """``(latents [N, C, H, W] float32, metadata)`` from a ``--save-latents`` file; metadata numbers are parsed."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(path, framework="pt") as fh:
            meta = dict(fh.metadata() or {})
            if TENSOR not in fh.keys():
                raise MigaError(f"cannot read latents {path}: it holds no {TENSOR!r} tensor")
            latents = fh.get_tensor(TENSOR)
    except (OSError, SafetensorError) as exc:
        raise MigaError(f"cannot read latents {path}: {getattr(exc, 'strerror', None) or exc}") from None
    if latents.ndim != 4:
        raise MigaError(f"cannot read latents {path}: expected [N, C, H, W], got {tuple(latents.shape)}")
    parsed = {}
    for key, value in meta.items():
        try:
            parsed[key] = json.loads(value)
        except ValueError:
            parsed[key] = value
    return latents, parsed


def latent_consistency(latents: torch.Tensor, chunk: int = 1, refs: int = 1, mode: str = "frame") -> dict:
    """MIGA's consistency score (method.md Eqs. 5-7) along finished latents ``[N, C, H, W]``.

    * ``to_first`` / ``to_previous``: latent ``t`` (t = 1..N-1) scored against latent 0 / latent ``t - 1``
      (one-latent sets: the cosine of their channel-mean maps);
    * ``chunks``: for each whole chunk ``k >= refs`` of ``chunk`` latents, the score of the chunk against the
      ``refs`` chunks in front of it (``mode`` as in generation), with the index of its first latent.

    Returns those lists and their means (``None`` when empty).
    """
    n = len(latents)
    if n < 2:
        raise ValueError("need at least two latents")
    to_first = [consistency_score(latents[t:t + 1], latents[:1]) for t in range(1, n)]
    to_previous = [consistency_score(latents[t:t + 1], latents[t - 1:t]) for t in range(1, n)]
    chunks = [{"latent": k * chunk, "score": consistency_score(latents[k * chunk:(k + 1) * chunk],
                                                               latents[(k - refs) * chunk:k * chunk], mode)}
              for k in range(refs, n // chunk)]

    def mean(values):
        return float(np.mean(values)) if values else None

    return {"chunk": chunk, "refs": refs, "score_mode": mode, "latents": n, "to_first": to_first,
            "to_previous": to_previous, "chunks": chunks, "mean_to_first": mean(to_first),
            "mean_to_previous": mean(to_previous), "mean_chunk_score": mean([c["score"] for c in chunks])}
