"""``miga eval --plot``: per-frame consistency over time, so drift is visible at a glance.

One row per video. Left: the S.C. and B.C. terms of every frame against the first frame and against the
previous frame (evaluation.md Sec. 1.2-1.3, on the whole video), with the 2-second clip boundaries dotted.
Right (when latents were given): MIGA's latent consistency score (method.md Eqs. 5-7) of every latent against
the first and the previous latent, and of each chunk against the chunks in front of it.
"""

from __future__ import annotations

import io
from typing import Mapping, Sequence

from miga.video import atomic_write_bytes


def plot_consistency(videos: Sequence[Mapping], path: str, extractors: Mapping[str, str]) -> None:
    """Write the PNG (atomically). ``videos`` are :func:`~miga.evaluation.vbench.evaluate_video` results with
    ``video`` and, optionally, ``latent_consistency`` added; ``extractors`` names the S.C. and B.C. extractors
    (``subject_consistency``, ``background_consistency``) for the legend."""
    from matplotlib.figure import Figure  # no pyplot: no global backend state

    latent = any(v.get("latent_consistency") for v in videos)
    cols = 2 if latent else 1
    fig = Figure(figsize=(7.5 * cols, 3.2 * len(videos)))
    axes = fig.subplots(len(videos), cols, squeeze=False)
    for row, v in zip(axes, videos):
        ax = row[0]
        pf = v["per_frame"]
        x = list(range(1, len(pf["subject_to_first"]) + 1))
        ax.plot(x, pf["subject_to_first"], color="tab:blue", label="S.C. to first frame")
        ax.plot(x, pf["subject_to_previous"], color="tab:blue", ls="--", label="S.C. to previous frame")
        ax.plot(x, pf["background_to_first"], color="tab:orange", label="B.C. to first frame")
        ax.plot(x, pf["background_to_previous"], color="tab:orange", ls="--", label="B.C. to previous frame")
        for c in v["clips"][1:]:
            ax.axvline(c["start"], color="gray", lw=0.6, ls=":")
        ax.set_ylim(-0.02, 1.02)
        ax.set_xlabel("frame")
        ax.set_ylabel("max(0, cos)")
        ax.set_title(f"{v['video']}: frame features (clips dotted)", fontsize=9)
        ax.legend(fontsize=7, loc="lower left")
        if latent:
            ax = row[1]
            lc = v.get("latent_consistency")
            if lc:
                k = lc["frames_per_latent"]
                lx = [t * k for t in range(1, len(lc["to_first"]) + 1)]
                ax.plot(lx, lc["to_first"], color="tab:green", label="latent to first latent")
                ax.plot(lx, lc["to_previous"], color="tab:green", ls="--", label="latent to previous latent")
                if lc["chunks"]:
                    ax.plot([c["latent"] * k for c in lc["chunks"]], [c["score"] for c in lc["chunks"]], "o",
                            color="tab:red", ms=3,
                            label=f"chunk of {lc['chunk']} to {lc['refs']} chunk(s) in front")
                ax.legend(fontsize=7, loc="lower left")
                ax.set_title(f"latent consistency score (Eqs. 5-7), {lc['file']}", fontsize=9)
                ax.set_xlabel("frame")
                ax.set_ylabel("C_score")
            else:
                ax.text(0.5, 0.5, "no latents saved for this video", ha="center", va="center", fontsize=9)
                ax.axis("off")
    fig.suptitle("S.C.: " + extractors["subject_consistency"] + "    B.C.: " + extractors["background_consistency"],
                 fontsize=9)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    atomic_write_bytes(path, buf.getvalue())
