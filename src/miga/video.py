"""Video and text output: a streaming MP4 writer, a reader, and atomic text writes.

Nothing here is written under its final name until it is complete: the writer encodes into
``<path>.partial`` and renames it to ``path`` only on a normal ``close()``. The MP4 is fragmented
(:data:`MP4_OPTIONS`: an empty ``moov`` up front, then a ``moof``/``mdat`` fragment at least every second),
so the ``.partial`` file of a process that died plays up to its last complete fragment; long runs with
``--run-dir`` build their video from such files (:mod:`miga.runs`, :mod:`miga.mp4frag`).

``miga generate`` stores the prompt schedule in the MP4 container's ``comment`` tag as JSON,
``{"miga_prompts": [[start_frame, "prompt"], ...]}`` (:func:`prompts_metadata`), so that ``miga eval``
can judge each frame against the prompt in force (:func:`read_prompts_metadata`).
"""

from __future__ import annotations

import json
import os
import tempfile
from fractions import Fraction
from typing import Mapping, Sequence

import av
import numpy as np

from miga.errors import MigaError


MP4_OPTIONS = {"movflags": "frag_keyframe+empty_moov+default_base_moof", "frag_duration": "1000000",
               "flush_packets": "1"}
"""Muxer options: a fragmented MP4 whose fragments start at keyframes or after one second of video
(microseconds), each self-contained (``default_base_moof``), so a file cut after any fragment still plays;
``flush_packets`` hands each finished fragment to the file at once (without it FFmpeg's 32 KB write buffer
held small videos back: a killed run's ``.partial`` had only its 28-byte ``ftyp``). The bytes are the same
either way. The encoder still holds its last 4 frames (B-frames), and the muxer the open fragment."""


def _check_parent(path: str) -> None:
    parent = os.path.dirname(path) or "."
    if not os.path.isdir(parent):
        raise MigaError(f"cannot write {path}: directory {parent} does not exist")


def _probe(folder: str, path: str) -> None:
    """Create (and drop) a nameless file in ``folder``: the one sure test that ``path`` can be written there."""
    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as exc:
        raise MigaError(f"cannot write {path}: {exc.strerror or exc} in {folder}") from None


def check_writable(path: str | os.PathLike) -> None:
    """Refuse, before any work, an output file that could not be written at the end: a folder, or a path
    whose folder is missing or does not take new files."""
    path = os.fspath(path)
    if os.path.isdir(path):
        raise MigaError(f"cannot write {path}: it is a folder; give a file name")
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise MigaError(f"cannot write {path}: directory {parent} does not exist")
    _probe(parent, path)


def check_new_folder(path: str | os.PathLike, what: str) -> None:
    """Refuse, before any work, a folder ``what`` (``run dir``, ``--out``) that is a file or cannot be created
    (its nearest existing parent is a file or does not take new entries); missing parents are fine: the
    caller creates them (``os.makedirs``)."""
    path = os.fspath(path)
    if os.path.exists(path):
        if not os.path.isdir(path):
            raise MigaError(f"{what} {path} is a file, not a folder; give a folder")
        return
    ancestor = os.path.dirname(os.path.abspath(path))
    while not os.path.exists(ancestor):
        ancestor = os.path.dirname(ancestor)
    if not os.path.isdir(ancestor):
        raise MigaError(f"cannot create {what} {path}: {ancestor} is a file, not a folder")
    _probe(ancestor, path)


class VideoWriter:
    """Streaming H.264 MP4 writer: each frame is encoded as it arrives.

    Frames are ``uint8`` arrays of shape ``[H, W, 3]`` (RGB); the size is fixed by the first frame and
    odd sizes are padded to even by repeating the last row/column. Used as a context manager it
    finishes the file on normal exit and leaves only ``<path>.partial`` behind on an exception.
    ``metadata`` (string keys and values, e.g. ``{"comment": ...}``) is written into the container's
    tags; :func:`read_video_metadata` reads them back.
    """

    def __init__(self, path: str | os.PathLike, fps: float, crf: int = 18,
                 metadata: Mapping[str, str] | None = None):
        self.path = os.fspath(path)
        self.partial_path = self.path + ".partial"
        _check_parent(self.path)
        if not (np.isfinite(fps) and fps > 0):
            raise MigaError(f"cannot write {self.path}: fps must be a positive number (got {fps})")
        self.fps = fps
        self.crf = crf
        self.metadata = {str(k): str(v) for k, v in (metadata or {}).items()}
        self._rate = Fraction(fps).limit_denominator(10_000)
        self._container = None
        self._stream = None
        self._shape: tuple[int, int] | None = None
        self._frames = 0
        self._state = "open"  # open -> closed | aborted

    @property
    def frames_written(self) -> int:
        """Number of frames handed to the encoder so far."""
        return self._frames

    def _open(self, height: int, width: int) -> None:
        try:
            self._container = av.open(self.partial_path, mode="w", format="mp4", options=dict(MP4_OPTIONS))
        except OSError as e:
            raise MigaError(f"cannot write {self.path}: {e}") from e
        for key, value in self.metadata.items():
            self._container.metadata[key] = value
        stream = self._container.add_stream("libx264", rate=self._rate)
        stream.width, stream.height = width + width % 2, height + height % 2
        stream.pix_fmt = "yuv420p"
        stream.codec_context.time_base = 1 / self._rate
        # one thread and no macroblock-tree lookahead: the same frames give the same file at every size
        stream.options = {"crf": str(self.crf), "threads": "1", "x264-params": "mbtree=0"}
        self._stream = stream
        self._container.start_encoding()  # write the header now, so the .partial file exists

    def write(self, frame: np.ndarray) -> None:
        """Encode one ``uint8 [H, W, 3]`` frame."""
        if self._state != "open":
            raise ValueError(f"VideoWriter for {self.path} is already {self._state}")
        if not isinstance(frame, np.ndarray) or frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
            desc = f"{frame.dtype} {frame.shape}" if isinstance(frame, np.ndarray) else type(frame).__name__
            raise ValueError(f"frames must be uint8 arrays of shape [H, W, 3], got {desc}")
        h, w = frame.shape[:2]
        if self._shape is None:
            self._open(h, w)
            self._shape = (h, w)
        elif (h, w) != self._shape:
            raise ValueError(f"frame size {h}x{w} differs from the first frame's {self._shape[0]}x{self._shape[1]}")
        if h % 2 or w % 2:
            frame = np.pad(frame, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge")
        vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
        vf.pts = self._frames
        vf.time_base = self._stream.codec_context.time_base
        self._container.mux(self._stream.encode(vf))
        self._frames += 1

    def close(self) -> None:
        """Flush the encoder, finish the file and rename it to its final path."""
        if self._state == "closed":
            return
        if self._state == "aborted":
            raise ValueError(f"VideoWriter for {self.path} was aborted")
        if self._container is None:
            self._state = "aborted"
            raise ValueError(f"no frames were written to {self.path}")
        try:
            self._container.mux(self._stream.encode(None))
            self._container.close()
            self._container = None
            os.replace(self.partial_path, self.path)
        except BaseException:
            self.abort()
            raise
        self._state = "closed"

    def abort(self) -> None:
        """Stop writing and leave whatever was written as ``<path>.partial``. Never raises."""
        if self._state == "open":
            self._state = "aborted"
        container, self._container = self._container, None
        if container is not None:
            try:
                container.close()
            except Exception:
                pass

    def __enter__(self) -> "VideoWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is None:
            self.close()
        else:
            self.abort()
        return False


def _read_error(path: str, exc: BaseException) -> MigaError:
    reason = getattr(exc, "strerror", None) or str(exc)
    return MigaError(f"cannot read video {path}: {reason}")


def _decoded(container, stream):
    """The frames of ``stream``, up to a packet the demuxer marks corrupt: a file cut off in the middle of a
    packet (the ``.partial`` of a process killed while writing a fragment) ends there, as it does in a
    player, instead of failing as a whole."""
    for packet in container.demux(stream):
        if packet.is_corrupt:
            yield from stream.codec_context.decode(None)  # the frames the decoder still holds
            return
        yield from packet.decode()


def read_video(path: str | os.PathLike) -> tuple[np.ndarray, float]:
    """Decode every frame of a video: returns ``(uint8 [N, H, W, 3] RGB, fps)``.

    A missing, unreadable or corrupt file (or one without a video stream) raises :class:`MigaError`.
    """
    path = os.fspath(path)
    try:
        with av.open(path) as container:
            if not container.streams.video:
                raise MigaError(f"cannot read video {path}: it has no video stream")
            stream = container.streams.video[0]
            frames = [f.to_ndarray(format="rgb24") for f in _decoded(container, stream)]
            rate = stream.average_rate or stream.guessed_rate
            fps = float(rate) if rate else 0.0
    except (OSError, av.FFmpegError) as exc:
        raise _read_error(path, exc) from None
    if not frames:
        return np.zeros((0, stream.height or 0, stream.width or 0, 3), np.uint8), fps
    return np.stack(frames), fps


def iter_frames(path: str | os.PathLike):
    """The frames of a video one at a time (uint8 ``[H, W, 3]`` RGB), without holding the whole video."""
    path = os.fspath(path)
    try:
        with av.open(path) as container:
            if not container.streams.video:
                raise MigaError(f"cannot read video {path}: it has no video stream")
            for frame in _decoded(container, container.streams.video[0]):
                yield frame.to_ndarray(format="rgb24")
    except (OSError, av.FFmpegError) as exc:
        raise _read_error(path, exc) from None


def read_video_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The container tags of a video (``{}`` if none); :class:`MigaError` if it cannot be read."""
    path = os.fspath(path)
    try:
        with av.open(path) as container:
            return dict(container.metadata)
    except (OSError, av.FFmpegError) as exc:
        raise _read_error(path, exc) from None


PROMPTS_TAG = "comment"
"""The container tag that holds ``miga generate``'s prompt schedule."""


LATENTS_TAG = "miga_latents"
"""The key, beside ``miga_prompts``, under which ``miga generate`` records where ``--save-latents`` saved the
video's latents (a file name beside the video, or an absolute path) or ``null`` when it was not given (a
run dir's own latents stay in the run dir), so that ``miga eval`` does not take latents left beside the video
by an earlier run for the video's own."""


def prompts_metadata(schedule: Sequence[tuple[int, str]], **tags) -> dict[str, str]:
    """Container tags recording a prompt schedule given as ``(start_frame, prompt)`` pairs, and ``tags``
    (e.g. ``miga_latents=...``) in the same JSON."""
    entries = [[int(start), str(prompt)] for start, prompt in schedule]
    return {PROMPTS_TAG: json.dumps({"miga_prompts": entries, **tags}, ensure_ascii=False)}


def latents_tag(video: str, latents: str | None) -> str | None:
    """How a video records where its latents were saved: the file name when beside it, else the absolute path."""
    if latents is None:
        return None
    latents = os.path.abspath(latents)
    beside = os.path.dirname(latents) == os.path.dirname(os.path.abspath(video))
    return os.path.basename(latents) if beside else latents


def saved_latents(path: str | os.PathLike) -> tuple[bool, str | None]:
    """``(recorded, latents path)``: whether ``miga generate`` recorded in the video where it saved the latents
    (videos made before it did, or by other programs, did not), and that path (None: it saved none)."""
    try:
        tags = json.loads(read_video_metadata(path).get(PROMPTS_TAG) or "{}")
    except ValueError:
        return False, None
    if not isinstance(tags, dict) or LATENTS_TAG not in tags:
        return False, None
    name = tags[LATENTS_TAG]
    return True, (os.path.join(os.path.dirname(os.fspath(path)), name) if isinstance(name, str) else None)


def read_prompts_metadata(path: str | os.PathLike) -> list[tuple[int, str]] | None:
    """The ``(start_frame, prompt)`` schedule that ``miga generate`` stored in a video, or ``None`` if the
    video holds none (it was not made by ``miga generate``, or the tag is not ours)."""
    text = read_video_metadata(path).get(PROMPTS_TAG)
    try:
        entries = json.loads(text)["miga_prompts"] if text else None
        if entries is None:
            return None
        schedule = [(int(start), str(prompt)) for start, prompt in entries]
    except (ValueError, TypeError, KeyError):
        return None
    return schedule or None


def _file_mode() -> int:
    """Permissions for a new file under the process umask (``mkstemp`` alone gives 0600)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def atomic_write_bytes(path: str | os.PathLike, data: bytes, durable: bool = False) -> None:
    """Write ``data`` to a temporary file next to ``path``, then rename it over ``path``. With ``durable``,
    also fsync the file before the rename and the folder after it, so that after a crash ``path`` holds the
    old bytes or the new ones, never a mix (checkpoints)."""
    path = os.fspath(path)
    _check_parent(path)
    directory, name = os.path.split(os.path.abspath(path))
    try:
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{name}.", suffix=".tmp")
    except OSError as exc:
        raise MigaError(f"cannot write {path}: {exc.strerror or exc}") from None
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), _file_mode())
            f.write(data)
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(exc, OSError):
            raise MigaError(f"cannot write {path}: {exc.strerror or exc}") from None
        raise
    if durable:
        fsync_dir(directory)


def fsync_dir(directory: str) -> None:
    """Make a rename in ``directory`` durable (best effort where folders cannot be opened)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to a temporary file next to ``path``, then rename it over ``path``."""
    atomic_write_bytes(path, text.encode("utf-8"))
