"""Contact sheets: a PNG grid of frames spread evenly over a video, each labelled with its frame index.

The total number of frames is known up front, so a :class:`ContactSheet` chooses its frame indices at
once and keeps only those frames while the video streams past (memory: ``tiles`` frames, not the video)::

    sheet = ContactSheet(num_frames=500)
    for i, frame in enumerate(video.frames()):
        sheet.offer(i, frame)
    sheet.save("sheet.png")          # atomic: a temporary file renamed over the path
"""

from __future__ import annotations

import io
import math
import os

import numpy as np

from miga.errors import MigaError
from miga.video import atomic_write_bytes, check_writable

DEFAULT_TILES = 24
"""Frames on a sheet by default (fewer if the video is shorter): 6 columns x 4 rows."""
MIN_TILE_SIDE = 128
"""Small frames are enlarged (nearest neighbour, by a whole factor) until their short side reaches this,
so that a 32- or 64-pixel frame stays legible."""
LABEL_HEIGHT = 14
"""Pixels under each tile for its frame index."""
GAP = 2
"""Pixels between tiles."""


def check_preview_path(path: str) -> None:
    """Refuse, before any work, a preview path that is not a ``.png`` that can be written."""
    if not path.lower().endswith(".png"):
        raise MigaError(f"--preview must name a .png file, got {path}")
    check_writable(path)


def evenly_spaced(num_frames: int, tiles: int) -> list[int]:
    """Up to ``tiles`` distinct frame indices spread evenly over ``0 .. num_frames - 1``, first and last
    included."""
    if num_frames < 1 or tiles < 1:
        raise MigaError(f"a contact sheet needs at least one frame and one tile (got {num_frames}, {tiles})")
    if num_frames <= tiles:
        return list(range(num_frames))
    if tiles == 1:
        return [0]
    return sorted({round(i * (num_frames - 1) / (tiles - 1)) for i in range(tiles)})


class ContactSheet:
    """Collects the chosen frames of a ``num_frames``-frame video and saves them as a labelled PNG grid.

    Args:
        num_frames: frames in the whole video.
        tiles: frames on the sheet (at most; all of them if the video is shorter).
        columns: tiles per row (default: about ``sqrt(1.5 * tiles)``, i.e. a landscape sheet).
    """

    def __init__(self, num_frames: int, tiles: int = DEFAULT_TILES, columns: int | None = None):
        self.num_frames = num_frames
        self.indices = evenly_spaced(num_frames, tiles)
        self.columns = columns or max(1, min(len(self.indices), math.ceil(math.sqrt(1.5 * len(self.indices)))))
        self._wanted = set(self.indices)
        self._frames: dict[int, np.ndarray] = {}

    @property
    def complete(self) -> bool:
        """Whether every chosen frame has been offered."""
        return len(self._frames) == len(self.indices)

    def offer(self, index: int, frame: np.ndarray) -> bool:
        """Frame ``index`` of the video (``uint8 [H, W, 3]``); kept (a copy) only if it is on the sheet.
        Returns whether it was kept."""
        if index not in self._wanted:
            return False
        frame = np.asarray(frame)
        if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
            raise ValueError(f"frames must be uint8 arrays of shape [H, W, 3], got {frame.dtype} {frame.shape}")
        self._frames[index] = frame.copy()
        return True

    def image(self):
        """The sheet as a ``PIL.Image`` (every chosen frame must have been offered)."""
        from PIL import Image, ImageDraw, ImageFont

        missing = [i for i in self.indices if i not in self._frames]
        if missing:
            raise ValueError(f"the contact sheet lacks {len(missing)} of its frames (first: {missing[0]}); "
                             "offer every frame of the video before saving")
        h, w = self._frames[self.indices[0]].shape[:2]
        zoom = max(1, math.ceil(MIN_TILE_SIDE / min(h, w)))
        th, tw = h * zoom, w * zoom
        cols = self.columns
        rows = math.ceil(len(self.indices) / cols)
        sheet = Image.new("RGB", (cols * tw + (cols + 1) * GAP, rows * (th + LABEL_HEIGHT) + (rows + 1) * GAP),
                          (24, 24, 24))
        draw = ImageDraw.Draw(sheet)
        try:
            font = ImageFont.load_default(size=LABEL_HEIGHT - 3)
        except (TypeError, OSError, ImportError):  # Pillow without FreeType: the fixed bitmap font
            font = ImageFont.load_default()
        for k, index in enumerate(self.indices):
            frame = self._frames[index]
            if frame.shape[:2] != (h, w):
                raise ValueError(f"frame {index} is {frame.shape[0]}x{frame.shape[1]}, the first is {h}x{w}")
            tile = Image.fromarray(frame, "RGB")
            if zoom > 1:
                tile = tile.resize((tw, th), Image.NEAREST)
            x = GAP + (k % cols) * (tw + GAP)
            y = GAP + (k // cols) * (th + LABEL_HEIGHT + GAP)
            sheet.paste(tile, (x, y))
            draw.text((x + 2, y + th + 1), str(index), fill=(230, 230, 230), font=font)
        return sheet

    def save(self, path: str | os.PathLike) -> None:
        """Write the sheet as a PNG: to a temporary file next to ``path``, then renamed over it."""
        buffer = io.BytesIO()
        self.image().save(buffer, format="PNG")
        atomic_write_bytes(path, buffer.getvalue())
