"""``miga ablate``: the paper's ablation (Table 5 rows) and parameter sweeps, measured.

Every row is a config transform of the model's own preset (README's switch table)::

    fifo     FIFO-Diffusion        preset(name, "fifo")
    stage1   + Stage 1             MIGA preset, guides=0, stage2_steps=0, reflection=False
    tta      + Stage 2 (= TTA)     MIGA preset, guides=0, reflection=False
    dce      DCE alone             MIGA preset, zigzag_width=1, stage2_steps=0 (guides and reflection on)
    miga     MIGA                  the MIGA preset as it is

and the sweeps vary one field of the full MIGA preset (``threshold``: delta_adju, ``guides``: m_guid) or its
self-reflection mode (``reflection``: :data:`REFLECTION_MODES`).

For each (row, prompt, seed) a video is generated with :class:`~miga.pipeline.LongVideo`, written to an
MP4 and decoded again, so that every metric comes from the file, as VBench does: the four VBench-Long
quality scores (:func:`miga.evaluation.evaluate_video`) and, for the shapes model, the shapes-world metrics
(:func:`miga.worlds.metrics.evaluate_frames`). Identity drift is measured for the shapes model (hidden
attributes from the decoded video against a true world clip:
:func:`miga.worlds.identity.video_identity_drift`) and the Gaussian worlds (the block-mean identity's
correlation from the latents, saved beside each video: :func:`miga.evaluation.identity.identity_metrics`),
as ``miga eval --world shapes|gaussian`` does. NFE per frame and seconds per frame (the wall time of
generation alone: not the MP4 encoding, not the metrics) come from the run. Rows are the mean over prompts
and seeds; ``results.json`` also keeps the standard deviation, min, max and every run.

Runs are stored under ``OUT/runs/`` by a digest of what determines them (model, frame size, frames, config,
prompt, seed): a run whose record exists is not repeated (resume), and two rows with the same config (e.g. the
sweep value that equals the preset) share their runs. A record made before identity drift was measured gets it
added (from its video; for a Gaussian world whose latents were not saved then, the latents are generated
again, deterministically, and the video and its numbers are kept).
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shlex
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Sequence

from miga.config import FIFOConfig, MIGAConfig, preset
from miga.errors import MigaError

Config = MIGAConfig | FIFOConfig


# ----------------------------------------------------------------------------------------------------
# rows


@dataclass(frozen=True)
class Row:
    """One line of the table: a name for ``--rows``, a label, and a config transform of a preset name."""

    key: str
    label: str
    group: str  # "table5" or the sweep's name
    make: Callable[[str], Config] = field(compare=False, repr=False)

    def config(self, preset_name: str) -> Config:
        return self.make(preset_name)


def _miga(name: str) -> MIGAConfig:
    return preset(name, "miga")


TABLE5 = (
    Row("fifo", "FIFO-Diffusion", "table5", lambda p: preset(p, "fifo")),
    Row("stage1", "+ Stage 1", "table5", lambda p: _miga(p).with_(guides=0, stage2_steps=0, reflection=False)),
    Row("tta", "+ Stage 2 (= TTA)", "table5", lambda p: _miga(p).with_(guides=0, reflection=False)),
    Row("dce", "DCE alone", "table5", lambda p: _miga(p).with_(zigzag_width=1, stage2_steps=0)),
    Row("miga", "MIGA", "table5", _miga),
)
"""The rows of the paper's Table 5, in its order."""
ROWS = {row.key: row for row in TABLE5}

REFLECTION_MODES = {
    "off": {"reflection": False},
    "all": {"reflect_during": "all", "reflection_calibration": "fixed"},
    "fill": {"reflect_during": "fill", "reflection_calibration": "fixed"},
    "auto": {"reflect_during": "all", "reflection_calibration": "auto"},
    "auto-fill": {"reflect_during": "fill", "reflection_calibration": "auto"},
}
"""Self-reflection modes (issue 15): off, every Stage-1 pass with delta_adju (paper A.1.3), only while the
queue fills (released code), and the calibrated threshold (``reflection_calibration="auto"``) each way."""

SWEEPS = {
    "threshold": ("reflection_threshold", "delta_adju", (0.005, 0.01, 0.02, 0.05)),
    "guides": ("guides", "m_guid", (0, 2, 4, 6)),
    "reflection": (REFLECTION_MODES, "self-reflection mode", tuple(REFLECTION_MODES)),
}
"""Sweep name -> (config field, or a dict from each value to its field changes; paper symbol or name; default
values); each value is the full MIGA preset with that change. The defaults all validate for f_0 = 16 (the
built-in models)."""
DEFAULT_SWEEPS = ("threshold", "guides")

COMPARE_METHODS = ("fifo", "scalingnoise", "freenoise", "freelong", "freepca", "miga")
"""``miga compare``'s methods (the paper's Table 1 rows that run on the same engine), in its order."""
METHOD_LABELS = {"fifo": "FIFO-Diffusion", "scalingnoise": "ScalingNoise", "freenoise": "FreeNoise", "freelong": "FreeLong", "freepca": "FreePCA",
                 "miga": "MIGA"}


def compare_rows(methods: Sequence[str]) -> list[Row]:
    """One row per method: the model's own preset of that method."""
    unknown = [m for m in methods if m not in COMPARE_METHODS]
    if unknown:
        raise MigaError(f"unknown method {unknown[0]!r}; choose from {', '.join(COMPARE_METHODS)}")
    if not methods:
        raise MigaError("nothing to run: give --methods")
    return [Row(m, METHOD_LABELS[m], "table1", lambda p, m=m: preset(p, m)) for m in methods]


DEFAULT_PROMPTS = {
    "shapes": (
        "a red circle bouncing on a blue background",
        "a yellow triangle drifting on a gradient gray background",
        "a white square orbiting on a green background",
        "a cyan circle and an orange square bouncing on a black background",
    ),
    "gaussian": (
        "drifting clouds",
        "a red circle bouncing",
        "ocean waves at sunset",
    ),
}
"""Built-in prompt sets: the shapes grammar for the shapes model, free text for the Gaussian worlds."""
DEFAULT_SEEDS = (0, 1)
DEFAULT_FRAMES = 128


def _value_text(value) -> str:
    return format(value, "g") if isinstance(value, float) else str(value)


def sweep_rows(name: str, values: Sequence | None = None) -> list[Row]:
    """The rows of one sweep: the MIGA preset with the sweep's field set to each value."""
    if name not in SWEEPS:
        raise MigaError(f"unknown sweep {name!r}; choose from {', '.join(SWEEPS)} (or none)")
    fld, symbol, default = SWEEPS[name]
    rows = []
    for v in default if values is None else values:
        text = _value_text(v)
        if isinstance(fld, dict) and v not in fld:
            raise MigaError(f"unknown {symbol} {v!r}; choose from {', '.join(fld)}")
        changes = fld[v] if isinstance(fld, dict) else {fld: v}
        rows.append(Row(f"{name}={text}", f"MIGA, {symbol} = {text}", name,
                        lambda p, changes=changes: _miga(p).with_(**changes)))
    return rows


def select_rows(rows: Sequence[str] | None = None, sweeps: Sequence[str] | None = None,
                values: dict[str, Sequence] | None = None) -> list[Row]:
    """Table-5 rows by key (default: all, in the paper's order) followed by the named sweeps' rows."""
    keys = list(ROWS) if rows is None else list(rows)
    unknown = [k for k in keys if k not in ROWS]
    if unknown:
        raise MigaError(f"unknown row {unknown[0]!r}; choose from {', '.join(ROWS)}")
    if len(set(keys)) != len(keys):
        raise MigaError("a row is named twice in --rows")
    out = [ROWS[k] for k in keys]
    for name in DEFAULT_SWEEPS if sweeps is None else sweeps:
        out += sweep_rows(name, (values or {}).get(name))
    if not out:
        raise MigaError("nothing to run: give --rows or --sweeps")
    return out


def describe(config: Config, native_frames: int) -> str:
    """The config's switches in the paper's symbols, e.g. ``T=32 L_zig=4 K2=6 m=4 delta=0.01``."""
    if isinstance(config, FIFOConfig):
        search = getattr(config, "search", None)  # ScalingNoise: FIFO plus a beam search over the tail noise
        return (f"T={config.steps(native_frames)} (n={config.partitions})"
                + (", lookahead" if config.lookahead else "")
                + (f", k={search.candidates} m={search.beams}" if search is not None else ""))
    if not isinstance(config, MIGAConfig):  # a full-sequence baseline: all frames at every step
        att = config.attention_config(native_frames)
        return f"T={config.steps}, all frames, W={att.window}" + (f" S={att.stride}" if hasattr(att, "stride") else "")
    parts = [f"T={config.steps}", f"L_zig={config.zigzag_width}", f"K2={config.stage2_steps}",
             f"m={config.guides}", _reflection_text(config)]
    return " ".join(parts)


def _reflection_text(config: MIGAConfig) -> str:
    if not config.reflection:
        return "no refl."
    delta = "auto" if config.reflection_calibration == "auto" else _value_text(config.reflection_threshold)
    return f"delta={delta}" + (" (fill)" if config.reflect_during == "fill" else "")


# ----------------------------------------------------------------------------------------------------
# runs


@dataclass
class Run:
    """One (row, prompt, seed) to generate and measure; ``digest`` names its files."""

    rows: list[str]
    config: Config
    prompt_index: int
    prompt: str
    seed: int
    key: dict
    digest: str


def model_identity(model: str) -> str:
    """What makes a model's videos reproducible: the name of a weight-free world, or the SHA-256 of a
    weights file (the shipped one for ``shapes``)."""
    if model == "shapes" or model.endswith(".safetensors"):
        from miga.backbones.shapes import file_sha256, shipped_weights

        path = shipped_weights() if model == "shapes" else model
        if not os.path.isfile(path):
            return model  # load_backbone reports the missing file
        return f"{model if model == 'shapes' else 'file'}:sha256={file_sha256(path)}"
    return model


def plan(rows: Sequence[Row], preset_name: str, native_frames: int, prompts: Sequence[str], seeds: Sequence[int],
         frames: int, model_id: str, size: dict,
         window_batch: int | None = None) -> tuple[dict[str, Config], list[Run]]:
    """Each row's config (validated) and the distinct runs, keyed by digest."""
    configs: dict[str, Config] = {}
    for row in rows:
        try:
            cfg = row.config(preset_name).with_(window_batch=window_batch)
            cfg.validate(native_frames)
        except MigaError as exc:
            raise MigaError(f"row {row.key}: {exc}") from None
        configs[row.key] = cfg
    runs: dict[str, Run] = {}
    for row in rows:
        cfg = configs[row.key]
        for i, prompt in enumerate(prompts):
            for seed in seeds:
                key = {"model": model_id, **size, "frames": frames, "method": type(cfg).__name__,
                       "config": asdict(cfg), "prompt": prompt, "seed": seed}
                digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
                if digest in runs:
                    runs[digest].rows.append(row.key)
                else:
                    runs[digest] = Run([row.key], cfg, i, prompt, seed, key, digest)
    return configs, list(runs.values())


def _latent_writer(backbone, video, path: str):
    """A ``--save-latents`` file writer for ``video`` (the metadata ``miga generate`` stores)."""
    from miga.evaluation.latents import LatentWriter
    from miga.runs import latent_metadata

    return LatentWriter(path, video.num_latents, tuple(backbone.latent_shape), latent_metadata(video))


def _generate(backbone, run: Run, frames: int, path: str, latents_path: str | None = None) -> dict:
    """Generate one video into ``path`` (and its latents into ``latents_path``, if given, as ``miga generate
    --save-latents`` writes them); the generation numbers (seconds: frames only, no encoding)."""
    from miga.pipeline import LongVideo
    from miga.video import VideoWriter, prompts_metadata

    t0 = time.perf_counter()
    video = LongVideo(backbone, run.prompt, frames, run.config, seed=run.seed)
    latents = _latent_writer(backbone, video, latents_path) if latents_path else None
    it = video.frames() if latents is None else video.frames(on_latent=latents.write)
    seconds = time.perf_counter() - t0
    shape = None
    try:
        with VideoWriter(path, backbone.fps, metadata=prompts_metadata([(0, run.prompt)])) as writer:
            while True:
                t = time.perf_counter()
                try:
                    frame = next(it)
                except StopIteration:
                    seconds += time.perf_counter() - t
                    break
                seconds += time.perf_counter() - t
                shape = shape or frame.shape
                writer.write(frame)
        if latents is not None:
            latents.close()
    except BaseException:
        if latents is not None:
            latents.abort()
        raise
    s = video.stats
    return {"frames": frames, "height": shape[0], "width": shape[1], "latents": video.num_latents, "nfe": s.nfe,
            "nfe_per_frame": s.nfe / frames, "seconds": seconds, "seconds_per_frame": seconds / frames,
            "model_seconds": s.model_seconds,
            "reflection_checks": s.reflection_checks, "reflection_triggers": s.reflection_triggers,
            "reflection_adoptions": s.reflection_adoptions}


@dataclass
class Meters:
    """The VBench extractors and interpolator, whether the shapes-world metrics apply, and which identity
    measure does (``"shapes"``, ``"gaussian"`` with the world in ``backbone``, or ``None``)."""

    subject: object
    background: object
    interpolator: object
    world: bool
    identity: str | None = None
    backbone: object = field(default=None, compare=False, repr=False)

    @property
    def names(self) -> dict:
        return {"subject_consistency": self.subject.name, "background_consistency": self.background.name,
                "motion_smoothness": self.interpolator.name, "world": "shapes" if self.world else None}

    @property
    def proxies(self) -> list[str]:
        return [d for d, m in (("motion_smoothness", self.interpolator), ("subject_consistency", self.subject),
                               ("background_consistency", self.background)) if m.proxy]


def _measure(path: str, prompt: str, meters: Meters) -> dict:
    """The metrics of one video, from its decoded file."""
    from miga.evaluation import DIMENSIONS, evaluate_video
    from miga.video import read_video

    frames, fps = read_video(path)
    if len(frames) < 3:
        raise MigaError(f"{path} has {len(frames)} frame(s); the VBench metrics need at least 3")
    t0 = time.perf_counter()
    vb = evaluate_video(frames, fps, meters.subject, meters.background, meters.interpolator)
    out = {"vbench": {k: vb[k] for k in (*DIMENSIONS, "overall", "overall_normalized", "clip_length",
                                         "subject_consistency_modes", "background_consistency_modes")},
           "world": None, "extractors": meters.names}
    if meters.world:
        from miga.worlds.metrics import evaluate_frames
        from miga.worlds.shapes import parse_prompt

        out["world"] = evaluate_frames(frames, parse_prompt(prompt)).summary
    if meters.identity:
        out["identity"] = _identity(frames, fps, path, prompt, meters)
    out["eval_seconds"] = time.perf_counter() - t0
    return out


def latents_path_of(video_path: str) -> str:
    """Where a run's latents are kept (Gaussian worlds): beside its video, where ``miga eval`` finds them."""
    from miga.evaluation.latents import default_latents_path

    return default_latents_path(video_path)


def _identity(frames, fps: float, path: str, prompt: str, meters: Meters) -> dict:
    """A run's identity drift: shapes, from the decoded frames (the whole video judged against its prompt);
    Gaussian worlds, from the latents saved beside the video against the world's prior."""
    if meters.identity == "shapes":
        from miga.worlds.identity import video_identity_drift
        from miga.worlds.shapes import parse_prompt

        return {"kind": "shapes", **video_identity_drift(frames, parse_prompt(prompt), fps)}
    from miga.evaluation.identity import Prior, identity_metrics
    from miga.evaluation.latents import read_latents

    world = meters.backbone
    latents, _ = read_latents(latents_path_of(path))
    return {"kind": "gaussian", **identity_metrics(latents, Prior.of(world), world.encode_prompt(prompt))}


def _measure_identity(backbone, run: Run, frames: int, video_path: str, meters: Meters) -> dict:
    """The identity drift of a recorded run that has none (recorded before it was measured)."""
    from miga.video import read_video

    _ensure_latents(backbone, run, frames, video_path, meters)
    decoded, fps = read_video(video_path) if meters.identity == "shapes" else (None, 0.0)
    return _identity(decoded, fps, video_path, run.prompt, meters)


def _ensure_latents(backbone, run: Run, frames: int, video_path: str, meters: Meters) -> None:
    """A Gaussian-world run recorded without its latents gets them generated again (keyed randomness: the
    same latents as its video's); the video and the record's numbers are kept."""
    if meters.identity != "gaussian" or os.path.isfile(latents_path_of(video_path)):
        return
    from miga.pipeline import LongVideo

    video = LongVideo(backbone, run.prompt, frames, run.config, seed=run.seed)
    writer = _latent_writer(backbone, video, latents_path_of(video_path))
    try:
        for latent in video.latents():
            writer.write(latent)
        writer.close()
    except BaseException:
        writer.abort()
        raise


def _load_record(path: str, run: Run) -> dict | None:
    try:
        with open(path, encoding="utf-8") as fh:
            record = json.load(fh)
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and record.get("key") == run.key else None


def execute(backbone, runs: Sequence[Run], frames: int, out_dir: str, meters: Meters, *,
            progress: bool = True) -> tuple[dict[str, dict], int]:
    """Generate and measure every run not already recorded in ``out_dir/runs``; returns the records by
    digest and the number of runs skipped because their record existed."""
    from tqdm import tqdm

    from miga.video import atomic_write_text

    run_dir = os.path.join(out_dir, "runs")
    os.makedirs(run_dir, exist_ok=True)
    records: dict[str, dict] = {}
    skipped = added = regenerated = 0
    bar = tqdm(runs, unit="run", desc="ablate", disable=not progress, dynamic_ncols=True)
    for run in bar:
        bar.set_postfix_str(f"{run.rows[0]} p{run.prompt_index} s{run.seed}")
        json_path = os.path.join(run_dir, run.digest + ".json")
        video_path = os.path.join(run_dir, run.digest + ".mp4")
        latents_path = latents_path_of(video_path) if meters.identity == "gaussian" else None
        record = _load_record(json_path, run) if os.path.isfile(video_path) else None
        if record is not None and record.get("extractors") == meters.names:
            skipped += 1
            if meters.identity and record.get("identity") is None:  # recorded before identity was measured
                regenerated += latents_path is not None and not os.path.isfile(latents_path)
                record["identity"] = _measure_identity(backbone, run, frames, video_path, meters)
                added += 1
                atomic_write_text(json_path, json.dumps(record, indent=1) + "\n")
        else:
            if record is None:  # generate; otherwise only the metrics changed (other extractors)
                record = {"key": run.key, "video": os.path.relpath(video_path, out_dir),
                          **_generate(backbone, run, frames, video_path, latents_path)}
            else:
                _ensure_latents(backbone, run, frames, video_path, meters)
            record.update(_measure(video_path, run.prompt, meters))
            atomic_write_text(json_path, json.dumps(record, indent=1) + "\n")
        records[run.digest] = record
    bar.close()
    if added:
        print(f"miga: identity drift added to {added} run(s) recorded without it"
              + (f" (their latents generated again for {regenerated})" if regenerated else ""), file=sys.stderr)
    return records, skipped


# ----------------------------------------------------------------------------------------------------
# aggregation and the table

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
            "min": min(values), "max": max(values), "n": len(values)}


def aggregate(rows: Sequence[Row], configs: dict[str, Config], runs: Sequence[Run], records: dict[str, dict],
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
                 f"generation alone (no encoding, no metrics) on this machine ({result['machine']}). "
                 "refl. trig./adopt.: self-reflection searches triggered / candidates adopted per video.")
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


# ----------------------------------------------------------------------------------------------------
# the command


def add_arguments(parser, command: str = "ablate") -> None:
    """``miga ablate``'s (or, with ``command="compare"``, ``miga compare``'s) options (``parser``: the
    subcommand's argparse parser)."""
    from miga.cli import _number

    parser.add_argument("--model", default="shapes", help="shapes (the built-in model, default), a .safetensors "
                        "file from 'miga train-toy', gaussian or gaussian-clip")
    if command == "compare":
        parser.add_argument("--methods", metavar="LIST", help=f"comma-separated: {', '.join(COMPARE_METHODS)} "
                            "(default: every one the model supports)")
    else:
        _add_ablation_arguments(parser)
    _add_common_arguments(parser, _number)


def _add_ablation_arguments(parser) -> None:
    parser.add_argument("--rows", metavar="LIST", help=f"comma-separated Table-5 rows: {', '.join(ROWS)} "
                        "(default: all) or none")
    parser.add_argument("--sweeps", metavar="LIST", help=f"comma-separated sweeps of full MIGA: "
                        f"{', '.join(SWEEPS)} (default: {','.join(DEFAULT_SWEEPS)}) or none")
    parser.add_argument("--thresholds", metavar="LIST", help="threshold sweep values (default "
                        f"{','.join(map(_value_text, SWEEPS['threshold'][2]))})")
    parser.add_argument("--guide-counts", metavar="LIST", help="guides sweep values (default "
                        f"{','.join(map(str, SWEEPS['guides'][2]))})")
    parser.add_argument("--reflection-modes", metavar="LIST", help="reflection sweep values (default "
                        f"{','.join(REFLECTION_MODES)}: no reflection, every pass, while the queue fills, the "
                        "calibrated threshold on every pass or while filling)")


def _add_common_arguments(parser, _number) -> None:
    parser.add_argument("--prompt", dest="prompt_list", action="append", default=[], metavar="TEXT",
                        help="a prompt (one video per prompt and seed); repeat for several")
    parser.add_argument("--prompts", metavar="FILE", help="a file of prompts, one per line (blank lines and "
                        "lines starting with # are ignored); default: a built-in set for the model")
    parser.add_argument("--seeds", default=",".join(map(str, DEFAULT_SEEDS)), metavar="LIST",
                        help="comma-separated seeds (default 0,1)")
    parser.add_argument("--frames", type=_number(minimum=3), default=DEFAULT_FRAMES, metavar="N",
                        help=f"frames per video (default {DEFAULT_FRAMES})")
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder: results.md, results.json and "
                        "runs/ (videos and per-run records; runs already recorded there are not repeated)")
    parser.add_argument("--height", type=_number(), help="frame height (Gaussian worlds)")
    parser.add_argument("--width", type=_number(), help="frame width (Gaussian worlds)")
    parser.add_argument("--window-batch", type=_number(), metavar="B", help="windows per model call where allowed")
    parser.add_argument("--threads", type=_number(), help="torch and OpenCV threads (default: their own choice)")
    parser.add_argument("--dino", metavar="PATH", help="DINO ViT-B/16 folder for S.C. (default: the offline proxy)")
    parser.add_argument("--clip", metavar="PATH", help="CLIP ViT-B/32 folder for B.C. (default: the offline proxy)")
    parser.add_argument("--amt", metavar="PATH", help="AMT-S weights (amt-s.pth) for M.S. (default: the OpenCV "
                        "flow-interpolation proxy)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def _list(text: str | None, flag: str, kind=str) -> list | None:
    if text is None:
        return None
    items = [t.strip() for t in text.split(",")]
    if items == ["none"]:
        return []
    if any(not t for t in items):
        raise MigaError(f"{flag} {text!r}: an empty item; give a comma-separated list")
    try:
        values = [kind(t) for t in items]
    except ValueError:
        raise MigaError(f"{flag} {text!r}: expected comma-separated {kind.__name__}s") from None
    if len(set(values)) != len(values):
        raise MigaError(f"{flag} {text!r}: a value is repeated")
    return values


def read_prompt_list(path: str) -> list[str]:
    """Prompts from a file: one per line; blank lines and ``#`` comments are skipped."""
    try:
        with open(path, encoding="utf-8") as fh:
            lines = fh.read().splitlines()
    except OSError as exc:
        raise MigaError(f"cannot read prompt file {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise MigaError(f"prompt file {path} is not UTF-8 text") from None
    prompts = [line.strip() for line in lines if line.strip() and not line.strip().startswith("#")]
    if not prompts:
        raise MigaError(f"prompt file {path} holds no prompt")
    return prompts


def _machine(threads: int) -> str:
    cpu = platform.processor() or platform.machine()
    return f"{cpu}, {os.cpu_count()} CPU(s), {threads} torch thread(s)"


def ablate(args) -> int:
    """``miga ablate``: the Table-5 rows and sweeps through :func:`run_table`."""
    return run_table(args, _ablation_rows(args))


def _ablation_rows(args) -> list[Row]:
    """The rows ``miga ablate``'s --rows, --sweeps and sweep values ask for."""
    values = {"threshold": _list(args.thresholds, "--thresholds", float),
              "guides": _list(args.guide_counts, "--guide-counts", int),
              "reflection": _list(getattr(args, "reflection_modes", None), "--reflection-modes")}
    flags = (("threshold", "--thresholds"), ("guides", "--guide-counts"), ("reflection", "--reflection-modes"))
    for name, flag in flags:
        if values[name] == []:
            raise MigaError(f"{flag}: give at least one value (or leave the sweep out of --sweeps)")
    sweeps = _list(args.sweeps, "--sweeps")
    for name, flag in flags:
        if values[name] is not None and name not in (DEFAULT_SWEEPS if sweeps is None else sweeps):
            raise MigaError(f"{flag} is given but the {name} sweep is not run; add it to --sweeps")
    return select_rows(_list(args.rows, "--rows"), sweeps, values)


def compare(args) -> int:
    """``miga compare``: the methods of the paper's Table 1 through :func:`run_table` (the same runner, resume and
    table as ``miga ablate``). By default every method the model supports; one it does not is refused."""
    from miga.baselines.methods import check_backbone
    from miga.pipeline import load_backbone

    methods = _list(args.methods, "--methods")
    rows = compare_rows(COMPARE_METHODS if methods is None else methods)
    backbone = load_backbone(args.model, height=args.height, width=args.width)
    supported = []
    for row in rows:
        try:
            check_backbone(backbone, row.key)
            preset(backbone.default_preset, row.key)
        except MigaError as exc:
            if methods is not None:
                raise
            print(f"miga: skipping {row.key}: {exc}", file=sys.stderr)
            continue
        supported.append(row)
    if args.dino:  # ScalingNoise's reward uses the same DINO as the S.C. metric
        supported = [Row(r.key, r.label, r.group, lambda p, make=r.make: make(p).with_(dino=args.dino))
                     if r.key == "scalingnoise" else r for r in supported]
    return run_table(args, supported, backbone=backbone)


def run_table(args, rows: Sequence[Row], backbone=None) -> int:
    """Plan, check everything, run (resuming), write results.md / results.json: the runner of ``miga ablate``
    and ``miga compare``."""
    import torch

    from miga.evaluation.features import ProxyFeatures, load_clip, load_dino
    from miga.evaluation.interpolation import FlowMidpoint, amt_interpolator
    from miga.pipeline import load_backbone
    from miga.video import atomic_write_text, check_new_folder

    check_new_folder(args.out, "--out")  # missing parents are created with it
    seeds = _list(args.seeds, "--seeds", int)
    if not seeds:
        raise MigaError("--seeds: give at least one seed")
    if args.prompts and args.prompt_list:
        raise MigaError("give prompts either with --prompt or with --prompts FILE, not both")
    prompts = read_prompt_list(args.prompts) if args.prompts else list(args.prompt_list)
    if any(not p.strip() for p in prompts):
        raise MigaError("a prompt is empty; give a non-empty prompt text")
    if args.threads:
        from miga.evaluation.interpolation import import_cv2

        torch.set_num_threads(args.threads)
        import_cv2().setNumThreads(args.threads)  # the motion-smoothness flow
    if backbone is None:
        backbone = load_backbone(args.model, height=args.height, width=args.width)
    world = backbone.name == "shapes"
    identity = "shapes" if world else "gaussian" if backbone.name == "gaussian" else None
    if not prompts:
        prompts = list(DEFAULT_PROMPTS["shapes" if world else "gaussian"])
    if len(set(prompts)) != len(prompts):
        raise MigaError("a prompt is given twice")
    for p in prompts:  # a prompt the model refuses fails before any run
        backbone.encode_prompt(p)
    meters = Meters(load_dino(args.dino) if args.dino else ProxyFeatures("dino"),
                    load_clip(args.clip) if args.clip else ProxyFeatures("clip"),
                    amt_interpolator(args.amt) if args.amt else FlowMidpoint(), world, identity, backbone)
    size = {"height": args.height, "width": args.width}
    preset_name = backbone.default_preset
    model_id = model_identity(args.model)
    configs, runs = plan(rows, preset_name, backbone.native_frames, prompts, seeds, args.frames, model_id, size,
                         args.window_batch)
    os.makedirs(args.out, exist_ok=True)
    command = "miga " + shlex.join(getattr(args, "argv", None) or sys.argv[1:])
    try:
        records, skipped = execute(backbone, runs, args.frames, args.out, meters, progress=not args.no_progress)
    except KeyboardInterrupt:
        print(f"miga: interrupted; finished runs are kept in {os.path.join(args.out, 'runs')}; run the same "
              "command to resume", file=sys.stderr)
        return 130
    first = records[runs[0].digest]
    h, w = first["height"], first["width"]
    result = {"command": command, "created": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "model": args.model,
              "model_id": model_id, "preset": preset_name, "native_frames": backbone.native_frames,
              "frame_size": f"{w}x{h}", "fps": float(backbone.fps), "frames": args.frames, "prompts": prompts,
              "seeds": seeds, "machine": _machine(torch.get_num_threads()), "extractors": meters.names,
              "proxy": meters.proxies, "runs": len(runs), "skipped": skipped,
              "rows": aggregate(rows, configs, runs, records, backbone.native_frames)}
    result["identity"] = identity_summary(result["rows"], args.frames)
    text = markdown(result)
    atomic_write_text(os.path.join(args.out, "results.md"), text)
    atomic_write_text(os.path.join(args.out, "results.json"), json.dumps(result, indent=1) + "\n")
    print(text)
    print(f"wrote {os.path.join(args.out, 'results.md')} and results.json: {len(runs)} run(s), {skipped} already "
          "done", file=sys.stderr)
    return 0
