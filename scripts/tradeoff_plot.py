"""Self-reflection's cost against its quality (issue 15's trade-off curve), from a ``miga ablate`` folder.

    python scripts/tradeoff_plot.py OUT_DIR [OUT_DIR ...] PLOT.png [--pairs-with KEY]

One panel per figure (presence and shape for the shapes models, identity at each distance, the VBench-style
overall), and the identity against distance for every row: each row of ``OUT_DIR/results.json`` is a point at
its mean NFE per frame, with the 95 % bootstrap interval of the mean over its videos as the error bar. With ``--pairs-with KEY`` only the prompt/seed pairs
that row KEY also has are used, so every point is measured on the same videos. Several folders (two models,
say) are plotted together, their rows keyed ``FOLDER:KEY``. Reads only the records.
"""
import argparse

import numpy as np
from matplotlib.figure import Figure

from ablation_records import bootstrap, identity, load_many, load_records, pair

parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
parser.add_argument("paths", nargs="+", metavar="OUT_DIR... PLOT.png", help="ablate folders, then the plot")
parser.add_argument("--pairs-with", metavar="KEY", help="use only the prompt/seed pairs this row has")
parser.add_argument("--rows", metavar="KEYS", help="comma-separated row keys to plot (default: every row)")
parser.add_argument("--resamples", type=int, default=10_000)
args = parser.parse_args()
if len(args.paths) < 2:
    parser.error("give at least one ablate folder and the plot's file")
args.out, args.plot = " and ".join(args.paths[:-1]), args.paths[-1]
result, records = load_records(args.paths[0]) if len(args.paths) == 2 else load_many(args.paths[:-1])
if args.rows:
    wanted = [k.strip() for k in args.rows.split(",") if k.strip()]
    unknown = [k for k in wanted if k not in records]
    if unknown:
        parser.error(f"--rows: {args.out} has no row {unknown[0]!r} (its rows: {', '.join(records)})")
    records = {k: records[k] for k in wanted}
if args.pairs_with and args.pairs_with not in records:
    parser.error(f"--pairs-with: {args.out} has no row {args.pairs_with!r} (its rows: {', '.join(records)})")
if args.pairs_with:
    keep = {pair(r) for r in records[args.pairs_with]}
    records = {k: [r for r in recs if pair(r) in keep] for k, recs in records.items()}
world = any(r.get("world") for recs in records.values() for r in recs)
distances = sorted({d for recs in records.values() for r in recs for d in identity(r)})
panels = ([("presence", lambda r: r["world"]["presence"]), ("shape accuracy", lambda r: r["world"]["shape_accuracy"])]
          if world else [])
name = "hidden-attribute drift (0 kept, ~1 forgotten)" if world else "identity correlation (1 kept, 0 forgotten)"
panels += [(f"{name} at {d}", lambda r, d=d: identity(r).get(d)) for d in distances]
panels += [("VBench-style overall", lambda r: r["vbench"]["overall"])]


def interval(values):
    return bootstrap(values, args.resamples)


cols = 3
rows_n = -(-(len(panels) + 1) // cols)
fig = Figure(figsize=(4.2 * cols, 3.3 * rows_n), layout="constrained")
labels = {row["key"]: row["label"].replace("MIGA, self-reflection mode = ", "MIGA ") for row in result["rows"]}
for k, (title, get) in enumerate(panels):
    ax = fig.add_subplot(rows_n, cols, k + 1)
    for key, recs in records.items():
        if not recs:
            continue
        y = interval([get(r) for r in recs])
        if y is None:
            continue
        x = float(np.mean([r["nfe_per_frame"] for r in recs]))
        ax.errorbar([x], [y[0]], yerr=[[y[0] - y[1]], [y[2] - y[0]]], fmt="o", capsize=3,
                    label=f"{labels[key]} ({len(recs)})")
    ax.set_title(title, fontsize=9)
    ax.set_xlabel("NFE per frame", fontsize=8)
    ax.tick_params(labelsize=7)
    ax.grid(alpha=0.3)
    if k == 0:
        ax.legend(fontsize=6)
ax = fig.add_subplot(rows_n, cols, len(panels) + 1)  # identity against distance, one line per row
for key, recs in records.items():
    points = [(d, interval([identity(r).get(d) for r in recs])) for d in distances]
    points = [(d, y) for d, y in points if y is not None]
    if points:
        ax.errorbar([d for d, _ in points], [y[0] for _, y in points], capsize=3, marker="o",
                    yerr=[[y[0] - y[1] for _, y in points], [y[2] - y[0] for _, y in points]], label=labels[key])
reference = (result.get("identity") or {}).get("reference") or {}
truth = [(int(d), v.get("identity_true_world", v.get("identity_prior"))) for d, v in reference.items()]
truth = [(d, v) for d, v in truth if v is not None]
if truth:
    ax.plot([d for d, _ in truth], [v for _, v in truth], "k--", label="true world clips")
ax.legend(fontsize=6)
ax.set_xscale("log", base=2)
ax.set_title(name.split(" (")[0] + " against distance", fontsize=9)
ax.set_xlabel("frames from the start", fontsize=8)
ax.tick_params(labelsize=7)
ax.grid(alpha=0.3)
fig.suptitle(f"{result['model']}, {result['frames']} frames: mean [95 % bootstrap interval] over videos", fontsize=10)
fig.savefig(args.plot, dpi=110)
print(f"wrote {args.plot}")
