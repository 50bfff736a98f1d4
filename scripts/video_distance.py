"""How far apart two rows' videos are, pixel for pixel: per prompt/seed pair present in both rows, the mean
absolute difference of their frames (0-255 levels), as mean [95 % bootstrap interval] over the pairs.

    python scripts/video_distance.py OUT_DIR ROW_A ROW_B [ROW_C ...]

Each further row is compared with ROW_A, e.g. ``stage1 tta fifo``: how much Stage 2 changes a Stage-1 video,
next to how much the queue's shape does. Pairs whose videos are not on disk (the records are kept in git, the
MP4s are not) are skipped and counted.
"""
import argparse
import os

import numpy as np

from ablation_records import bootstrap, load_records, pair

parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
parser.add_argument("out", metavar="OUT_DIR", help="a miga ablate folder")
parser.add_argument("rows", nargs="+", metavar="ROW", help="row keys: the first against each of the others")
args = parser.parse_args()
if len(args.rows) < 2:
    parser.error("give at least two rows, e.g. stage1 tta")
_, records = load_records(args.out)
unknown = [k for k in args.rows if k not in records]
if unknown:
    parser.error(f"{args.out} has no row {unknown[0]!r} (its rows: {', '.join(records)})")

from miga.video import read_video  # noqa: E402  (after the argument checks: importing miga takes a second)


def frames(record) -> np.ndarray:
    return np.asarray(read_video(os.path.join(args.out, record["video"]))[0], dtype=np.float32)


base = {pair(r): r for r in records[args.rows[0]]}
print(f"| {args.rows[0]} against | pairs | skipped (no video) | mean abs difference (levels) |")
print("|---|---:|---:|---:|")
for key in args.rows[1:]:
    distances, skipped = [], 0
    for record in records[key]:
        other = base.get(pair(record))
        if other is None:
            continue
        if not all(os.path.isfile(os.path.join(args.out, r["video"])) for r in (record, other)):
            skipped += 1
            continue
        a, b = frames(other), frames(record)
        distances.append(float(np.abs(a - b).mean()) if a.shape == b.shape else None)
    found = bootstrap(distances, 10_000)
    cell = "-" if found is None else "{:.2f} [{:.2f}, {:.2f}]".format(*found)
    print(f"| {key} | {len([d for d in distances if d is not None])} | {skipped} | {cell} |")
