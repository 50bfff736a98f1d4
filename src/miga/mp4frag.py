"""One growing fragmented MP4 built from self-contained fragmented MP4 segments.

A long run (:mod:`miga.runs`) encodes each stretch of frames between two checkpoints into its own small
file with :class:`miga.video.VideoWriter` (a fresh encoder, so the stretch starts with a keyframe), then
appends that file's fragments to the video: the first segment gives the header (``ftyp`` + ``moov``), every
segment its ``moof``/``mdat`` pairs, with the fragment sequence numbers and base decode times (``mfhd``,
``tfdt``) rewritten to continue the video. All segments come from identical encoder settings, so their
headers are byte-identical (checked). The video's length in bytes after each append is what a checkpoint
records; resuming cuts the file back to it, so a segment appended just before a crash is not kept twice.
"""

from __future__ import annotations

import os
import struct

from miga.errors import MigaError, PartialFileMismatch


def top_boxes(data: bytes, start: int = 0, end: int | None = None) -> list[tuple[str, int, int]]:
    """``(type, offset, size)`` of the boxes in ``data[start:end]``; a cut-off last box ends the list."""
    end = len(data) if end is None else end
    boxes, off = [], start
    while off + 8 <= end:
        size, kind = struct.unpack(">I4s", data[off:off + 8])
        if size == 1 and off + 16 <= end:
            size = struct.unpack(">Q", data[off + 8:off + 16])[0]
        elif size == 0:
            size = end - off
        if size < 8 or off + size > end:
            break
        boxes.append((kind.decode("latin-1"), off, size))
        off += size
    return boxes


def _child(data: bytes, box: tuple[str, int, int], kind: str) -> list[tuple[str, int, int]]:
    _, off, size = box
    return [b for b in top_boxes(data, off + 8, off + size) if b[0] == kind]


def _u32(data, off: int) -> int:
    return struct.unpack(">I", data[off:off + 4])[0]


def _trex_duration(data: bytes, moov: tuple[str, int, int]) -> int | None:
    for mvex in _child(data, moov, "mvex"):
        for _, off, _ in _child(data, mvex, "trex"):
            return _u32(data, off + 8 + 12)  # version/flags, track_ID, sample description index
    return None


def _fragment_duration(data: bytes, moof: tuple[str, int, int], default: int | None) -> int:
    """Sum of the sample durations of one ``moof`` (ISO/IEC 14496-12 tfhd/trun/trex defaults)."""
    total = 0
    for traf in _child(data, moof, "traf"):
        duration = default
        for _, off, _ in _child(data, traf, "tfhd"):
            flags, p = _u32(data, off + 8) & 0xFFFFFF, off + 16
            p += 8 if flags & 0x1 else 0
            p += 4 if flags & 0x2 else 0
            if flags & 0x8:
                duration = _u32(data, p)
        for _, off, _ in _child(data, traf, "trun"):
            flags, count, p = _u32(data, off + 8) & 0xFFFFFF, _u32(data, off + 12), off + 16
            p += (4 if flags & 0x1 else 0) + (4 if flags & 0x4 else 0)
            if flags & 0x100:
                stride = 4 * sum(1 for bit in (0x100, 0x200, 0x400, 0x800) if flags & bit)
                total += sum(_u32(data, p + i * stride) for i in range(count))
            elif duration is not None:
                total += count * duration
            else:
                raise MigaError("cannot append a video fragment: its sample durations are not recorded")
    return total


class FragmentedMP4:
    """Append-only fragmented MP4 at ``path``; ``state`` (from :attr:`state`) reopens it where a checkpoint
    left it: the constructor checks the file holds at least that much, :meth:`restore` cuts off anything
    written after (see the module docstring)."""

    def __init__(self, path: str, state: dict | None = None):
        self.path = path
        state = state or {}
        self.bytes = int(state.get("bytes", 0))
        self.header = int(state.get("header", 0))  # bytes of ftyp + moov at the start of the file
        self.decode_time = int(state.get("decode_time", 0))  # in the track's timescale
        self.fragments = int(state.get("fragments", 0))
        self.frames = int(state.get("frames", 0))
        size = os.path.getsize(path) if os.path.exists(path) else 0
        if size < self.bytes:
            raise PartialFileMismatch(f"cannot resume: the video {path} holds {size} bytes, but the checkpoint "
                                      f"says {self.bytes} were written (was it moved or changed?)")

    def restore(self) -> None:
        """Cut the file back to the length the state records (creating it empty if it is missing)."""
        if not os.path.exists(self.path) or os.path.getsize(self.path) != self.bytes:
            with open(self.path, "ab") as fh:
                fh.truncate(self.bytes)
                os.fsync(fh.fileno())

    @property
    def state(self) -> dict:
        return {"bytes": self.bytes, "header": self.header, "decode_time": self.decode_time,
                "fragments": self.fragments, "frames": self.frames}

    def append(self, segment: bytes, frames: int) -> None:
        """Append the fragments of one segment file's bytes (holding ``frames`` frames), durably."""
        boxes = top_boxes(segment)
        first = next((i for i, b in enumerate(boxes) if b[0] == "moof"), len(boxes))
        header = segment[:boxes[first][1]] if first < len(boxes) else segment
        moov = next((b for b in boxes[:first] if b[0] == "moov"), None)
        if moov is None:
            raise MigaError("cannot append a video segment: it has no moov box")
        out = bytearray()
        if self.bytes == 0:
            out += header
        else:
            with open(self.path, "rb") as fh:
                if fh.read(self.header) != header:
                    raise MigaError(f"cannot append to {self.path}: the new segment was encoded with different "
                                    "settings (its MP4 header differs)")
        default = _trex_duration(segment, moov)
        base, end, fragments = self.decode_time, self.decode_time, self.fragments  # tfdt: segment-relative
        for i in range(first, len(boxes)):
            kind, off, size = boxes[i]
            if kind == "mdat":
                out += segment[off:off + size]
            if kind != "moof":
                continue
            moof = bytearray(segment[off:off + size])
            fragments += 1
            for _, m_off, _ in _child(segment, boxes[i], "mfhd"):
                moof[m_off - off + 12:m_off - off + 16] = struct.pack(">I", fragments)
            start = base
            for traf in _child(segment, boxes[i], "traf"):
                for _, t_off, _ in _child(segment, traf, "tfdt"):
                    p = t_off - off + 12
                    if segment[t_off + 8] == 1:
                        start = struct.unpack(">Q", moof[p:p + 8])[0] + base
                        moof[p:p + 8] = struct.pack(">Q", start)
                    else:
                        start = struct.unpack(">I", moof[p:p + 4])[0] + base
                        moof[p:p + 4] = struct.pack(">I", start)
            end = max(end, start + _fragment_duration(segment, boxes[i], default))
            out += moof
        with open(self.path, "r+b" if os.path.exists(self.path) else "wb") as fh:
            fh.seek(self.bytes)
            fh.write(out)
            fh.truncate()
            fh.flush()
            os.fsync(fh.fileno())
        if self.bytes == 0:
            self.header = len(header)
        self.bytes += len(out)
        self.decode_time, self.fragments = end, fragments
        self.frames += frames
