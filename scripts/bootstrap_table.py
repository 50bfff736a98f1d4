"""95 % bootstrap intervals (over videos) of a ``miga ablate`` results folder's key figures, as markdown.

    python scripts/bootstrap_table.py OUT_DIR [OUT_DIR ...] [RESAMPLES] [--against=ROW_KEY] [--median]

Per row: the identity at each distance (Gaussian worlds: the block-mean identity correlation, 1 kept, 0
forgotten; shapes models: the hidden attributes' drift, 0 kept, about 1 forgotten, and the world's presence and
shape accuracy), the VBench-Long overall score, NFE and seconds per frame, and self-reflection searches
triggered per video, each as mean [2.5 %, 97.5 %] of the mean over 10,000 resamples of the videos (seed 0 for
each interval, so the same figures give the same interval in every table).
Then each row's paired differences against the first row (or ROW_KEY). With several folders (two models, say)
their rows are put side by side, keyed ``FOLDER:KEY`` (FOLDER: the folder's name), and paired across folders
by prompt and seed. ``--median``: medians instead of means (and their intervals), a check on heavy-tailed
figures such as the shapes models' drift, where a few faint or missed objects make the mean wander.
"""
import argparse

import numpy as np

from ablation_records import bootstrap, identity, load_many, load_records, pair

parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
parser.add_argument("paths", nargs="+", metavar="OUT_DIR",
                    help="ablate folders; a last number is the resamples (default 10,000)")
parser.add_argument("--against", metavar="ROW_KEY", help="pair against this row (default: the first)")
parser.add_argument("--median", action="store_true", help="medians instead of means")
args = parser.parse_args()
paths = list(args.paths)
resamples = int(paths.pop()) if len(paths) > 1 and paths[-1].isdigit() else 10_000
against, statistic = args.against, np.median if args.median else np.mean
out = " and ".join(paths)
result, records = load_records(paths[0]) if len(paths) == 1 else load_many(paths)


def interval(values) -> str:
    found = bootstrap(values, resamples, statistic)
    if found is None:
        return "-"
    mean, lo, hi = found
    digits = 3 if abs(mean) < 10 else 1
    return f"{mean:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"


rows = result["rows"]
if against is not None and against not in records:
    parser.error(f"--against: {out} has no row {against!r} (its rows: {', '.join(records)})")
distances = sorted({d for recs in records.values() for r in recs for d in identity(r)})
world = any(r.get("world") for recs in records.values() for r in recs)
label = "id drift" if world else "identity"
heads = (["row", "videos"] + (["presence", "shape"] if world else []) + [f"{label} {d}" for d in distances]
         + ["overall", "NFE/frame", "s/frame", "searches/video"])
print("| " + " | ".join(heads) + " |")
print("|" + "|".join(["---"] + ["---:"] * (len(heads) - 1)) + "|")
for row in rows:
    recs = records[row["key"]]
    cells = [row["label"], str(len(recs))]
    if world:
        cells += [interval([r["world"]["presence"] for r in recs]), interval([r["world"]["shape_accuracy"] for r in recs])]
    cells += [interval([identity(r).get(d) for r in recs]) for d in distances]
    cells += [interval([r["vbench"]["overall"] for r in recs]), interval([r["nfe_per_frame"] for r in recs]),
              interval([r["seconds_per_frame"] for r in recs]), interval([r["reflection_triggers"] for r in recs])]
    print("| " + " | ".join(cells) + " |")

# Paired differences against the first row (or --against=KEY): the same prompt and seed in both rows, so the
# prompt's own difficulty cancels. An interval that excludes 0 is a significant difference at the 5 % level.
base_row = next(r for r in rows if r["key"] == against) if against else rows[0]
base = {pair(r): r for r in records[base_row["key"]]}
metrics = ([("presence", lambda r: r["world"]["presence"]), ("shape", lambda r: r["world"]["shape_accuracy"])]
           if world else [])
metrics += [(f"{label} {d}", lambda r, d=d: identity(r).get(d)) for d in distances]
metrics += [("overall", lambda r: r["vbench"]["overall"])]
print()
print(f"Paired differences, row minus {base_row['label']} (same prompt and seed): {statistic.__name__} "
      "[95 % bootstrap interval]")
print()
print("| row | pairs | " + " | ".join(name for name, _ in metrics) + " |")
print("|" + "|".join(["---"] + ["---:"] * (len(metrics) + 1)) + "|")
for row in (r for r in rows if r is not base_row):
    pairs = [(base[pair(r)], r) for r in records[row["key"]] if pair(r) in base]
    cells = [row["label"], str(len(pairs))]
    for _, get in metrics:
        diffs = [get(r) - get(b) for b, r in pairs if get(r) is not None and get(b) is not None]
        cells.append(interval(diffs))
    print("| " + " | ".join(cells) + " |")
