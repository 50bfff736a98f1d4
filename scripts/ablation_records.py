"""What ``bootstrap_table.py`` and ``tradeoff_plot.py`` share: a ``miga ablate`` folder's per-run records, a
record's identity figures and a 95 % bootstrap interval of a mean (imported by the scripts beside it)."""
import json
import os

import numpy as np


def load_records(out: str) -> tuple[dict, dict]:
    """``OUT/results.json`` and, per row key, the records of its videos (read from ``OUT/runs/*.json``)."""
    result = json.load(open(os.path.join(out, "results.json")))
    records = {row["key"]: [json.load(open(os.path.join(out, v[:-len(".mp4")] + ".json"))) for v in row["videos"]]
               for row in result["rows"]}
    return result, records


def load_many(outs: list[str]) -> tuple[dict, dict]:
    """:func:`load_records` of several folders as one: rows keyed ``FOLDER:KEY`` and labelled ``LABEL (FOLDER)``,
    FOLDER being each folder's name."""
    names = [os.path.basename(os.path.normpath(out)) for out in outs]
    results, rows, records = [], [], {}
    for name, out in zip(names, outs):
        result, found = load_records(out)
        results.append(result)
        for row in result["rows"]:
            key = f"{name}:{row['key']}"
            rows.append({**row, "key": key, "label": f"{row['label']} ({name})"})
            records[key] = found[row["key"]]
    return {**results[0], "rows": rows, "model": ", ".join(names)}, records  # the first folder's other fields


def identity(record: dict) -> dict[int, float]:
    """Identity at each distance: the shapes models' hidden-attribute drift (0 kept, about 1 forgotten) or a
    Gaussian world's identity correlation (1 kept, 0 forgotten)."""
    ident = record.get("identity") or {}
    rows = ident.get("identity_drift") or ident.get("drift") or []
    if isinstance(rows, dict):  # shapes: {distance: mean drift over the attributes measured there}
        return {int(d): v for d, v in rows.items() if v is not None}
    return {int(r.get("distance", r.get("lag"))): r["measured"] for r in rows if isinstance(r, dict)}


def pair(record: dict) -> tuple:
    """The prompt and seed of a run: the same pair in two rows is the same video but for the method."""
    return json.dumps(record["key"]["prompt"]), record["key"]["seed"]


def bootstrap(values, resamples: int, statistic=np.mean, seed: int = 0) -> tuple[float, float, float] | None:
    """The statistic (the mean, or ``np.median`` for heavy-tailed figures) and its 2.5 / 97.5 % percentiles over
    ``resamples`` resamples drawn from ``seed`` (None values skipped; None if nothing is left). Each call starts
    from the seed, so the same values give the same interval in every table."""
    v = np.asarray([x for x in values if x is not None], dtype=float)
    if not len(v):
        return None
    found = statistic(np.random.default_rng(seed).choice(v, (resamples, len(v))), axis=1)
    lo, hi = np.percentile(found, [2.5, 97.5])
    return float(statistic(v)), float(lo), float(hi)
