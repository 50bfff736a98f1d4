"""The runner's tables: per-row (or per-prompt, per-dimension) aggregates of job records, as markdown and
JSON, with 95 % bootstrap intervals over the videos."""

from __future__ import annotations

import statistics
from dataclasses import asdict
from typing import Sequence

from miga.ablation import SWEEPS, describe

BOOTSTRAP_RESAMPLES = 2000
"""Resamples of the videos for a 95 % percentile bootstrap interval of a mean (seed 0: the same table twice)."""


def bootstrap(values: Sequence[float], resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0) -> list[float] | None:
    """The 95 % percentile bootstrap interval ``[low, high]`` of the mean of ``values`` (None for fewer than 2)."""
    import numpy as np

    v = np.asarray([x for x in values if x is not None], dtype=float)
    if len(v) < 2:
        return None
    means = np.random.default_rng(seed).choice(v, (resamples, len(v))).mean(1)
    lo, hi = np.percentile(means, [2.5, 97.5])
    return [float(lo), float(hi)]


VBENCH_COLUMNS = (("temporal_flicker", "T.F."), ("motion_smoothness", "M.S."), ("subject_consistency", "S.C."),
                  ("background_consistency", "B.C."), ("overall", "overall"))
WORLD_COLUMNS = (("presence", "present", "pct"), ("shape_accuracy", "shape", "pct"),
                 ("jump_mean_px", "jump mean (px)", ".2f"), ("jump_max_px", "jump max (px)", ".1f"),
                 ("background_change", "bg change", ".4f"), ("background_error", "bg error", ".4f"))
RUN_COLUMNS = ("nfe_per_frame", "seconds_per_frame", "reflection_triggers", "reflection_adoptions")
IDENTITY_MIN_DISTANCE = 64
"""Identity columns start at this distance (frames from the start): nearer, a Gaussian world's block means
still share motion, and the shapes measure starts there (:data:`miga.worlds.identity.DISTANCES`)."""
IDENTITY_HEADS = {"shapes": "id drift", "gaussian": "id corr"}


def _identity_values(identity: dict) -> dict[int, dict]:
    """``{distance: {stat name: value}}`` of one run's identity record, at the distances the table shows."""
    out: dict[int, dict] = {}
    if identity.get("kind") == "shapes":
        world = identity["true_world"]["identity_drift"]
        for d in identity["distances"]:
            if d >= IDENTITY_MIN_DISTANCE:
                out[d] = {f"identity_drift_{d}": identity["identity_drift"].get(str(d)),
                          f"identity_true_world_{d}": world.get(str(d))}
    elif identity.get("kind") == "gaussian":
        lags = {r["lag"]: r["measured"] for r in identity["lag_correlation"]}
        for r in identity["identity_drift"]:
            d = r["distance"]
            if d >= IDENTITY_MIN_DISTANCE:
                out[d] = {f"identity_drift_{d}": r["measured"], f"identity_prior_{d}": r["prior"],
                          f"identity_prior_mean_{d}": r["prior_mean"], f"identity_prior_sd_{d}": r["prior_sd"],
                          f"lag_correlation_{d}": lags.get(d)}
    return out


def _spread(values: list) -> dict | None:
    values = [v for v in values if v is not None]
    if not values:
        return None
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "min": min(values), "max": max(values), "n": len(values), "ci95": bootstrap(values)}


def aggregate(rows: Sequence, configs: dict, runs: Sequence, records: dict[str, dict],
              native_frames: int) -> list[dict]:
    """Per row: the config, its runs and the mean / std / min / max of every number over them."""
    out = []
    first_of: dict[str, str] = {}
    for row in rows:
        mine = [records[r.digest] for r in runs if row.key in r.rows]
        digests = [r.digest for r in runs if row.key in r.rows]
        shared = next((first_of[d] for d in digests if d in first_of), None)
        for d in digests:
            first_of.setdefault(d, row.key)
        stats = {d: _spread([m["vbench"][d] for m in mine]) for d, _ in VBENCH_COLUMNS}
        stats.update({c: _spread([m[c] for m in mine]) for c in RUN_COLUMNS})
        if all(m.get("world") for m in mine):
            stats.update({c: _spread([m["world"][c] for m in mine]) for c, _, _ in WORLD_COLUMNS})
        identity = None
        if mine and all(m.get("identity") for m in mine):  # distances every run of the row reaches
            values = [_identity_values(m["identity"]) for m in mine]
            distances = sorted(set.intersection(*(set(v) for v in values)))
            identity = {"kind": mine[0]["identity"]["kind"], "distances": distances}
            for d in distances:
                stats.update({k: _spread([v[d][k] for v in values]) for k in values[0][d]})
        out.append({"key": row.key, "label": row.label, "group": row.group,
                    "switches": describe(configs[row.key], native_frames), "same_runs_as": shared,
                    "config": {"method": type(configs[row.key]).__name__, **asdict(configs[row.key])},
                    "runs": len(mine), "videos": [m["video"] for m in mine], "identity": identity,
                    "stats": stats})
    return out


def identity_summary(rows: Sequence[dict], frames: int) -> dict | None:
    """``results.json``'s ``identity``: the measure, the distances shown (any row's) and what they mean, with
    the reference a true sample gives (mean over the runs of every row)."""
    kinds = {r["identity"]["kind"] for r in rows if r.get("identity")}
    if not kinds:
        return None
    kind = kinds.pop()
    distances = sorted({d for r in rows if r.get("identity") for d in r["identity"]["distances"]})
    reference = {}
    for d in distances:
        keys = ([f"identity_true_world_{d}"] if kind == "shapes" else
                [f"identity_prior_{d}", f"identity_prior_mean_{d}", f"identity_prior_sd_{d}"])
        for k in keys:
            vals = [r["stats"][k]["mean"] for r in rows if r["stats"].get(k)]
            if vals:
                reference.setdefault(str(d), {})[k.rsplit("_", 1)[0]] = statistics.fmean(vals)
    if kind == "shapes":
        definition = ("id drift D: identity drift D frames from the start (`miga eval --world shapes`): each hidden "
                      "attribute (radius, shade, speed, background lighting) over frames D-8..D+7 against its "
                      "value over the first 16 frames, divided by its spread in the world's prior (0: kept, 1: "
                      "forgotten), mean over the attributes")
    else:
        definition = ("id corr D: correlation of the mean of the first 32 latents with the mean of 32 latents D "
                      "later, the prompt mean removed (`miga eval --world gaussian`, from the latents saved beside "
                      "each video; 0: identity forgotten)")
    return {"kind": kind, "distances": distances, "frames": frames, "definition": definition,
            "reference": reference}


def _cell(stat: dict | None, fmt: str, spread: bool) -> str:
    if stat is None:
        return "-"
    if fmt == "pct":
        text = f"{stat['mean']:.1%}"
        return text + (f" ±{stat['std']:.1%}" if spread and stat["n"] > 1 else "")
    text = format(stat["mean"], fmt)
    return text + (f" ±{format(stat['std'], fmt)}" if spread and stat["n"] > 1 else "")


def markdown(result: dict) -> str:
    """``results.md``: the command, the setting, one table per row group, the footnotes."""
    rows, proxies = result["rows"], set(result["proxy"])
    world = any("presence" in r["stats"] for r in rows)
    heads = ["row", "switches", "runs"] + [h + ("*" if d in proxies else "") for d, h in VBENCH_COLUMNS]
    if world:
        heads += [h for _, h, _ in WORLD_COLUMNS]
    identity = result.get("identity")
    distances = identity["distances"] if identity else []
    if distances:
        heads += [f"{IDENTITY_HEADS[identity['kind']]} {d}" for d in distances]
    heads += ["NFE/frame", "s/frame", "refl. trig./adopt."]
    titles = {"table1": "Methods (the paper's Table 1)", "table5": "Table 5 rows",
              **{name: f"Sweep: {symbol}" + ("" if isinstance(fld, dict) else f" ({fld})") + " on full MIGA"
                 for name, (fld, symbol, _) in SWEEPS.items()}}
    lines = [f"Command: `{result['command']}`", "",
             f"Model `{result['model']}` ({result['frame_size']}, {result['fps']:g} fps, f_0 = "
             f"{result['native_frames']}, preset `{result['preset']}`), {result['frames']} frames, "
             f"{len(result['prompts'])} prompt(s) x seeds {', '.join(map(str, result['seeds']))}: each cell is the "
             "mean ± standard deviation over those runs.", "",
             "Prompts: " + "; ".join(f"`{p}`" for p in result["prompts"]) + ".", ""]
    if result.get("planned_runs", result["runs"]) > result["runs"]:
        per_row = len(result["prompts"]) * len(result["seeds"])
        short = [f"{r['key']} ({r['runs']} of {per_row})" for r in rows if r["runs"] < per_row]
        short += [f"{key} (none)" for key in result.get("missing_rows", [])]
        lines += [f"Only the {result['runs']} of {result['planned_runs']} runs recorded so far (`--recorded-only`): "
                  "rows may have fewer runs than prompts x seeds, and rows with none are left out."
                  + (f" Incomplete rows: {', '.join(short)}." if short else ""), ""]
    for group in dict.fromkeys(r["group"] for r in rows):
        lines += [f"**{titles.get(group, group)}**", "", "| " + " | ".join(heads) + " |",
                  "|" + "|".join(["---"] * 2 + ["---:"] * (len(heads) - 2)) + "|"]
        for r in (r for r in rows if r["group"] == group):
            s = r["stats"]
            label = r["label"] + (f" (= {r['same_runs_as']})" if r["same_runs_as"] else "")
            cells = [label, r["switches"], str(r["runs"])] + [_cell(s[d], ".4f", True) for d, _ in VBENCH_COLUMNS]
            if world:
                cells += [_cell(s.get(c), f, True) for c, _, f in WORLD_COLUMNS]
            cells += [_cell(s.get(f"identity_drift_{d}"), ".3f", True) for d in distances]
            trig, adopt = s["reflection_triggers"], s["reflection_adoptions"]
            cells += [_cell(s["nfe_per_frame"], ".1f", False), _cell(s["seconds_per_frame"], ".3g", False),
                      f"{trig['mean']:.1f} / {adopt['mean']:.1f}"]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    notes = ["T.F., M.S., S.C., B.C.: VBench's quality dimensions under VBench-Long's protocol (2-second clips), "
             "computed from the decoded MP4; overall: their plain mean."]
    names = result["extractors"]
    for d, h in VBENCH_COLUMNS:
        if d in proxies:
            notes.append(f"{h}* proxy: {names[d]}.")
    if world:
        notes.append("present / shape / jumps / bg: shapes-world metrics (`miga eval --world shapes`) against "
                     "the prompt; jumps are centroid displacements between consecutive frames.")
    if identity:
        notes.append(_identity_note(identity))
    notes.append("NFE/frame: model calls (each guidance branch counted) per output frame. s/frame: wall time of "
                 "the video's run (generation, MP4 encoding and checkpoints; not the metrics) on this machine "
                 f"({result['machine']}). refl. trig./adopt.: self-reflection searches triggered / candidates "
                 "adopted per video.")
    if any(r["same_runs_as"] for r in rows):
        notes.append("(= row): the same config as that row, so the same runs.")
    return "\n".join(lines + [" ".join(notes), ""])


def _identity_note(identity: dict) -> str:
    ref, ds = identity["reference"], identity["distances"]
    if not ds:
        gaussian = identity["kind"] == "gaussian"
        least = IDENTITY_MIN_DISTANCE + (32 if gaussian else 0)
        return (f"Identity drift: not shown; it needs videos of at least {least} frames (drift "
                f"{IDENTITY_MIN_DISTANCE} frames from the start{', of 32-latent blocks' if gaussian else ''}), "
                f"these have {identity['frames']}.")
    if identity["kind"] == "shapes":
        world = ", ".join(f"{ref[str(d)]['identity_true_world']:.3f} at {d}" for d in ds
                          if "identity_true_world" in ref.get(str(d), {}))
        return (identity["definition"] + (f"; true world clips starting with each video's identity drift {world} "
                                          "(mean over the runs)." if world else "."))
    prior = ", ".join(f"{ref[str(d)]['identity_prior']:.3f} at {d}" + (
        f" (a true sample: {ref[str(d)]['identity_prior_mean']:.3f} ± {ref[str(d)]['identity_prior_sd']:.3f})"
        if "identity_prior_sd" in ref.get(str(d), {}) else "") for d in ds if "identity_prior" in ref.get(str(d), {}))
    return identity["definition"] + f"; the prior gives {prior}."


# ---------------------------------------------------------------------------------------------------- suites

SUITE_COLUMNS = VBENCH_COLUMNS + (("nfe_per_frame", "NFE/frame"), ("seconds_per_frame", "s/frame"))


def _value(record: dict, column: str):
    return record["vbench"][column] if column in record.get("vbench", {}) else record.get(column)


def suite_table(entries: Sequence, methods: Sequence[str], jobs: Sequence, records: dict[str, dict]) -> dict:
    """``results.json``'s tables of a suite: ``per_prompt`` rows (means over seeds), ``methods`` aggregates
    over all videos and ``dimensions`` (per VBench dimension tag), each number with a 95 % bootstrap interval
    over the videos."""
    by = {}  # (entry index, method) -> records
    for job in jobs:
        for m in job.rows:
            by.setdefault((job.prompt_index, m), []).append(records[job.digest])
    columns = [c for c, _ in SUITE_COLUMNS]
    per_prompt = []
    for i, e in enumerate(entries):
        for m in methods:
            recs = by.get((i, m), [])
            per_prompt.append({"entry": e.name, "prompt": e.text, "dimensions": list(e.dimensions), "method": m,
                               "videos": [r["video"] for r in recs],
                               **{c: (statistics.fmean(v) if (v := [_value(r, c) for r in recs]) else None)
                                  for c in columns}})
    aggregates = []
    for m in methods:
        recs = [r for (i, mm), rs in by.items() if mm == m for r in rs]
        aggregates.append({"method": m, "videos": len(recs), "stats": {c: _spread([_value(r, c) for r in recs])
                                                                       for c in columns}})
    dims = sorted({d for e in entries for d in e.dimensions})
    dimensions = []
    for d in dims:
        for m in methods:
            recs = [r for (i, mm), rs in by.items() if mm == m and d in entries[i].dimensions for r in rs]
            dimensions.append({"dimension": d, "method": m, "videos": len(recs),
                               "stats": {c: _spread([_value(r, c) for r in recs]) for c, _ in VBENCH_COLUMNS}})
    return {"per_prompt": per_prompt, "aggregates": aggregates, "dimensions": dimensions}


def _ci(stat: dict | None, fmt: str = ".4f") -> str:
    if stat is None:
        return "-"
    text = format(stat["mean"], fmt)
    return text + (f" [{format(stat['ci95'][0], fmt)}, {format(stat['ci95'][1], fmt)}]" if stat.get("ci95") else "")


def suite_markdown(result: dict) -> str:
    """``results.md`` of a suite: the setting, the aggregates per method, per dimension, then per prompt."""
    proxies = set(result["proxy"])
    heads = [h + ("*" if d in proxies else "") for d, h in VBENCH_COLUMNS]
    lines = [f"Command: `{result['command']}`", "",
             f"Suite `{result['suite']}`: {result['prompts']} prompt(s) x {len(result['methods'])} method(s) x "
             f"seeds {', '.join(map(str, result['seeds']))} = {result['videos']} video(s) of {result['frames']} "
             f"frames on `{result['model']}` (preset `{result['preset']}`); {result['made']} made now, "
             f"{result['skipped']} already done, {len(result['failed'])} failed ({result['executor']}).", "",
             "**Per method** (mean [95 % bootstrap interval] over the videos)", "",
             "| method | videos | " + " | ".join(heads) + " | NFE/frame | s/frame |",
             "|---|---:|" + "---:|" * (len(heads) + 2)]
    for a in result["aggregates"]:
        s = a["stats"]
        lines.append(f"| {a['method']} | {a['videos']} | " + " | ".join(_ci(s[d]) for d, _ in VBENCH_COLUMNS)
                     + f" | {_ci(s['nfe_per_frame'], '.1f')} | {_ci(s['seconds_per_frame'], '.3g')} |")
    if result["dimensions"]:
        lines += ["", "**Per VBench dimension** (the prompts tagged with it)", "",
                  "| dimension | method | videos | " + " | ".join(heads) + " |", "|---|---|---:|" + "---:|" * len(heads)]
        for r in result["dimensions"]:
            lines.append(f"| {r['dimension']} | {r['method']} | {r['videos']} | "
                         + " | ".join(_ci(r["stats"][d]) for d, _ in VBENCH_COLUMNS) + " |")
    lines += ["", "**Per prompt** (mean over seeds)", "", "| # | prompt | method | videos | " + " | ".join(heads) + " |",
              "|---|---|---|---:|" + "---:|" * len(heads)]
    for r in result["per_prompt"]:
        text = r["prompt"] if len(r["prompt"]) <= 60 else r["prompt"][:57] + "..."
        lines.append(f"| {r['entry']} | {text.replace('|', '/')} | {r['method']} | {len(r['videos'])} | "
                     + " | ".join("-" if r[d] is None else f"{r[d]:.4f}" for d, _ in VBENCH_COLUMNS) + " |")
    notes = ["T.F., M.S., S.C., B.C.: VBench's quality dimensions under VBench-Long's protocol (2-second clips), "
             "from the decoded MP4; overall: their plain mean."]
    for d, h in VBENCH_COLUMNS:
        if d in proxies:
            notes.append(f"{h}* proxy: {result['extractors'][d]}.")
    notes.append(f"s/frame: generation wall time per frame on {result['machine']}.")
    ray = result.get("ray")
    if ray and "per_video_overhead_seconds" in ray:
        notes.append(f"Ray: connected in {ray['connect_seconds']:.1f} s, {ray['workers']} worker(s) loaded the model "
                     f"in {ray['workers_ready_seconds']:.1f} s, {ray['per_video_overhead_seconds'] * 1000:.0f} ms per "
                     "video beyond the video's own work (scheduling and results).")
    if result.get("vbench_videos"):
        notes.append(f"The videos are also in {result['vbench_videos']}/METHOD/PROMPT-K.mp4 (K: the seed's place in "
                     "--seeds), as VBench's own evaluator names them.")
    if result["failed"]:
        notes.append(f"Failed: {'; '.join(result['failed'][:5])}.")
    return "\n".join(lines + ["", " ".join(notes), ""])
