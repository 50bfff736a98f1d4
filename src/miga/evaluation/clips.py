"""VBench-Long's fixed-length clips (evaluation.md Sec. 1.7, "Splitting", step 2).

A long video is cut into consecutive, non-overlapping clips of ``2 s x int(fps)`` frames at the video's own
frame rate. A remainder becomes one more clip that borrows earlier frames so that it ends at the last
frame (it is *back-padded* and overlaps the clip before it). A video shorter than one clip is one clip.
"""

from __future__ import annotations

from dataclasses import dataclass

CLIP_SECONDS = 2
"""Clip duration for S.C., B.C., M.S. and T.F. (VBench-Long ``clip_length_mix``)."""


@dataclass(frozen=True)
class Clip:
    """Frames ``start .. stop - 1`` of a video."""

    index: int
    start: int
    stop: int
    back_padded: bool = False
    """The last clip of a video whose length is not a multiple of the clip length: it starts early so that
    it has full length, overlapping the clip before it."""

    @property
    def frames(self) -> int:
        return self.stop - self.start


def clip_length(fps: float, seconds: int = CLIP_SECONDS) -> int:
    """Frames per clip: ``seconds * int(fps)`` (VBench-Long truncates the average frame rate to an integer),
    at least 3 (so that motion smoothness has an odd frame to predict)."""
    if not fps > 0:
        raise ValueError(f"fps must be positive, got {fps}")
    return max(3, seconds * int(fps))


def split_clips(num_frames: int, length: int) -> list[Clip]:
    """Consecutive clips of ``length`` frames covering ``num_frames`` frames (evaluation.md Sec. 1.7).

    ``num_frames // length`` full clips, then, if frames remain, one back-padded clip of the last
    ``length`` frames; a video shorter than ``length`` is a single clip of all its frames. For example
    100 frames at 8 fps (``length`` 16) give clips 0-15, ..., 80-95 and the back-padded 84-99.
    """
    if num_frames < 1 or length < 1:
        raise ValueError(f"need at least one frame and a positive clip length, got {num_frames} and {length}")
    if num_frames <= length:
        return [Clip(0, 0, num_frames)]
    full = num_frames // length
    clips = [Clip(k, k * length, (k + 1) * length) for k in range(full)]
    if num_frames % length:
        clips.append(Clip(full, num_frames - length, num_frames, back_padded=True))
    return clips
