"""Window plans over a queue: MIGA's tiling (method.md Sec. 3.9), FIFO's lookahead windows (Alg. 3) and
the choice of long-range guide latents (Eq. 8)."""

from __future__ import annotations

from typing import Iterator, NamedTuple


class Window(NamedTuple):
    """Local latents ``[start, start + length)`` are read; ``n_update`` of them, from
    ``start + write_offset`` on, are written back."""

    start: int
    n_update: int
    length: int
    write_offset: int = 0

    @property
    def targets(self) -> range:
        first = self.start + self.write_offset
        return range(first, first + self.n_update)


def iter_tiling(window: int, stride: int, offset: int, length: int | None = None) -> Iterator[Window]:
    """MIGA's sliding-window tiling (method.md Sec. 3.9), head to tail; every latent is written once.

    Windows read ``window`` latents and write their *first* ``stride`` latents (the rest is look-ahead
    context): ``(0, offset)`` if offset > 0, then ``(offset + j*stride, stride)``, then the tail windows
    ``(L - window - R, R)`` and ``(L - window, window)`` with ``R = (L - offset - window) mod stride``.

    With ``length=None`` the queue length is not known yet: only the windows that exist for *every*
    length >= start + window + stride are produced (a streaming consumer asks again for the tail with
    :func:`tail_windows` once the length is known). With a length, the whole plan is produced.
    """
    if length is not None and length <= window:
        yield Window(0, length, length)
        return
    if length is not None and length - offset < window:
        offset = 0
    start = 0
    if offset > 0:
        yield Window(0, offset, window)
        start = offset
    while length is None or start + window + stride <= length:
        yield Window(start, stride, window)
        start += stride
    yield from tail_windows(start, window, length)


def tail_windows(start: int, window: int, length: int) -> Iterator[Window]:
    """The last one or two windows of a plan whose regular windows stopped at ``start``."""
    rest = length - start - window  # 0 <= rest < stride
    if rest > 0:
        yield Window(start, rest, window)
    yield Window(length - window, window, window)


def static_offset(length: int, window: int, stride: int, remainder_first: bool) -> int:
    """The offset of a static (undelayed) pass: 0 puts the short window second to last (method.md 3.9);
    ``remainder_first`` puts it first, ``(length - window) mod stride``, as the MIGA authors' Wan code tiles."""
    return (length - window) % stride if remainder_first and length > window else 0


def tiling(length: int, window: int, stride: int, offset: int = 0) -> list[Window]:
    """The whole plan for a queue of ``length`` latents (see :func:`iter_tiling`)."""
    return list(iter_tiling(window, stride, offset, length))


def fifo_windows(queue_length: int, window: int, lookahead: bool) -> list[Window]:
    """FIFO-Diffusion's windows for one pass (Alg. 3), in processing order (tail first).

    With lookahead the queue holds ``pad = window // 2`` clean padding latents in front; windows of
    ``window`` at stride ``window // 2`` write their latter half. For an odd window (Wan2.1: 21) each writes
    its last ``window - pad`` latents, and the tail window writes what is left, so every noisy latent is
    written exactly once. Without lookahead, disjoint windows write everything.
    """
    if lookahead:
        pad = window // 2
        size = window - pad
        plan = []
        for first in range(pad, queue_length, size):
            end = min(first + size, queue_length)
            start = end - window
            plan.append(Window(start, end - first, window, first - start))
        return plan[::-1]
    return [Window(a, window, window) for a in reversed(range(0, queue_length, window))]


def uniform_guides(start: int, count: int) -> list[int]:
    """Eq. 8: ``count`` latents spread evenly over the prefix ``[0, start)``, ending just before the window:
    ``start - count*d, ..., start - 2d, start - d`` with ``d = start // count``."""
    d = start // count
    return [start - (count - j) * d for j in range(count)]


def nearest_chunk_guides(start: int, count: int, chunk: int) -> list[int]:
    """The released code's choice: the middle latent of each of the ``count`` zigzag chunks just before
    the window, once there are enough of them (else :func:`uniform_guides`)."""
    if start < count * chunk:
        return uniform_guides(start, count)
    return [start - (chunk // 2 + j * chunk) for j in range(count - 1, -1, -1)]
