"""``miga eval --world shapes|gaussian --plot``: identity drift at a glance, one row of panels per video.

* shapes (:func:`plot_shapes_identity`): left, every hidden attribute's difference from its identity (its value
  over the first frames) frame by frame, divided by its prior spread (0: kept, 1: forgotten), as a running mean
  over the drift window; right, the identity drift against the distance from the start for the video and for
  the true world clip with the same starting identity (thin lines: each attribute).
* gaussian (:func:`plot_gaussian_identity`): left, the lag correlation against the lag; right, the block-mean
  identity drift against the distance; each with the prior's exact value, the band ``mean ± 2 sd`` that a true
  sample of the world of the same length and size gives, and one actual prior draw.
"""

from __future__ import annotations

import io
from typing import Mapping, Sequence

import numpy as np

from miga.video import atomic_write_bytes


def _save(fig, path: str) -> None:
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    atomic_write_bytes(path, buf.getvalue())


def _running_mean(values: Sequence, window: int) -> np.ndarray:
    """Centred running mean over ``window`` frames ignoring missing values (NaN where none is measured)."""
    x = np.array([np.nan if v is None else v for v in values], np.float64)
    ok = np.isfinite(x)
    csum = np.concatenate([[0.0], np.cumsum(np.where(ok, x, 0.0))])
    cnt = np.concatenate([[0], np.cumsum(ok)])
    n, half = len(x), window // 2
    lo = np.clip(np.arange(n) - half, 0, n)
    hi = np.clip(np.arange(n) + (window - half), 0, n)
    count = cnt[hi] - cnt[lo]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, (csum[hi] - csum[lo]) / np.maximum(count, 1), np.nan)


def _label(entry: Mapping) -> str:
    return entry["attribute"] if entry["object"] is None else f"{entry['object']} {entry['attribute']}"


def plot_shapes_identity(videos: Sequence[Mapping], path: str) -> None:
    """Write the PNG (atomically). ``videos``: ``miga eval --world shapes`` results, each with ``video`` and
    ``identity`` (:func:`miga.worlds.identity.identity_drift` with ``per_frame``)."""
    from matplotlib.figure import Figure  # no pyplot: no global backend state

    fig = Figure(figsize=(15, 3.4 * len(videos)))
    axes = fig.subplots(len(videos), 2, squeeze=False)
    colours = [f"C{i}" for i in range(10)]
    for (left, right), v in zip(axes, videos):
        ident = v["identity"]
        window = ident["window"]
        top = 1.2
        for i, entry in enumerate(ident["per_frame"]):
            y = _running_mean(entry["values"], window)
            if np.isfinite(y).any():
                left.plot(np.arange(len(y)), y, color=colours[i % 10], lw=1, label=_label(entry))
                top = max(top, float(np.nanmax(y)) * 1.05)
        left.axhline(1.0, color="gray", lw=0.8, ls="--")
        left.axvspan(0, ident["reference_frames"] - 1, color="gray", alpha=0.15, lw=0)
        left.set_ylim(0, top)
        left.set_xlabel("frame")
        left.set_ylabel("|estimate - identity| / prior spread")
        left.set_title(f"{v['video']}: attributes, running mean over {window} frames (identity: shaded frames; "
                       "1 = forgotten)", fontsize=9)
        if ident["per_frame"]:
            left.legend(fontsize=7, loc="upper left", ncol=2)
        ds = ident["distances"]
        world = ident["true_world"]
        if ds:
            for i, a in enumerate(ident["attributes"]):
                xs = [d for d in ds if a["drift"].get(str(d)) is not None]
                if xs:
                    right.plot(xs, [a["drift"][str(d)] for d in xs], color=colours[i % 10], lw=0.7, alpha=0.6)
            for result, style, name in ((ident, "-o", "video"), (world, "--s", "true world clip, same identity")):
                xs = [d for d in ds if result["identity_drift"].get(str(d)) is not None]
                right.plot(xs, [result["identity_drift"][str(d)] for d in xs], style, color="black", lw=1.8,
                           ms=4, label=name + " (mean over attributes)")
            right.axhline(1.0, color="gray", lw=0.8, ls="--")
            right.set_xscale("log", base=2)
            right.set_xticks(ds, [str(d) for d in ds])
            right.set_ylim(bottom=0)
            right.set_xlabel("distance from the start (frames)")
            right.set_ylabel("identity drift")
            right.legend(fontsize=7, loc="upper left")
            right.set_title("identity drift vs distance (thin: each attribute)", fontsize=9)
        else:
            right.text(0.5, 0.5, f"{ident['frames']} frames: too short for drift at 64 frames", ha="center",
                       va="center", fontsize=9)
            right.axis("off")
    _save(fig, path)


def plot_gaussian_identity(videos: Sequence[Mapping], path: str) -> None:
    """Write the PNG (atomically). ``videos``: ``miga eval --world gaussian`` results, each with ``video``,
    ``identity`` (:func:`miga.evaluation.identity.identity_metrics` of the video) and ``prior_sample`` (the
    same on an exact prior draw)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(13, 3.4 * len(videos)))
    axes = fig.subplots(len(videos), 2, squeeze=False)
    for row, v in zip(axes, videos):
        for ax, key, d_key, title in ((row[0], "lag_correlation", "lag", "lag correlation"),
                                      (row[1], "identity_drift", "distance", "identity drift (block means)")):
            rows = v["identity"][key]
            if not rows:
                ax.text(0.5, 0.5, "too few latents", ha="center", va="center", fontsize=9)
                ax.axis("off")
                continue
            d = np.array([r[d_key] for r in rows], np.float64)
            ax.plot(d, [r["prior"] for r in rows], color="tab:green", lw=1.5, label="prior (exact)")
            banded = [r for r in rows if r["prior_sd"] is not None]
            if banded:
                bd = np.array([r[d_key] for r in banded], np.float64)
                mean = np.array([r["prior_mean"] for r in banded])
                sd = np.array([r["prior_sd"] for r in banded])
                ax.fill_between(bd, mean - 2 * sd, mean + 2 * sd, color="tab:green", alpha=0.18, lw=0,
                                label="true sample: mean ± 2 sd")
            drawn = {r[d_key]: r["measured"] for r in v["prior_sample"][key]}
            xs = [x for x in d if x in drawn]
            ax.plot(xs, [drawn[x] for x in xs], "x", color="tab:green", ms=6, label="a prior draw")
            ax.plot(d, [r["measured"] for r in rows], "-o", color="tab:red", ms=4, label="video")
            ax.set_xscale("log", base=2)
            ax.set_xticks(d, [str(int(x)) for x in d])
            ax.set_ylim(min(-0.05, *(r["measured"] - 0.05 for r in rows)), 1.02)
            if key == "lag_correlation":  # the floor a true sample keeps at long lags: its identity
                ax.axhline(v["world"]["identity_share"], color="gray", lw=0.6, ls=":")
            ax.set_xlabel("lag (latents)" if d_key == "lag" else "distance from the start (latents)")
            ax.set_ylabel("correlation")
            ax.set_title(f"{v['video']}: {title}", fontsize=9)
            ax.legend(fontsize=7, loc="lower left")
    _save(fig, path)
