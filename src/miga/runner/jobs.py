"""One video job of the runner: generate it in its own resumable run dir, then measure it from the file.

A :class:`Job` is (prompt or prompt schedule, method config, seed, frames) on a model; its ``digest``
(SHA-256 of what determines the video) names its files under ``OUT/runs/``::

    DIGEST/          the job's run dir (:class:`miga.runs.VideoRun`): checkpoints, so a killed job continues
    DIGEST.mp4       the video
    DIGEST.json      its record: the key, the generation numbers and the metrics (written last)

A job whose record and video exist is done (skipped); one whose run dir holds a checkpoint continues from
it. For tables (``need_video=False``: ``miga ablate`` and ``miga compare``) the record alone suffices: every
number is in it, so videos may be deleted to save disk, or records kept (in git, say) without them.

Metrics come from the decoded MP4, as VBench does: the four VBench-Long quality scores, the shapes-world
metrics for the shapes model, identity drift for the shapes model (from the frames) and the Gaussian worlds
(from the latents saved beside the video). A record made before identity drift was measured gets it added
(a Gaussian world's latents are generated again, deterministically, if they were not saved).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

from miga.errors import MigaError


@dataclass
class Job:
    """One video: ``rows`` are the table rows (or suite methods) it serves, ``prompt`` its first prompt and
    ``schedule`` its ``(start frame, prompt)`` entries; ``digest`` names its files."""

    rows: list[str]
    config: object
    prompt_index: int
    prompt: str
    seed: int
    key: dict
    digest: str
    frames: int = 0
    schedule: list | None = None
    tags: dict = field(default_factory=dict)

    @property
    def label(self) -> str:
        return f"{self.rows[0]} p{self.prompt_index} s{self.seed}"


def make_job(row: str, config, prompt_index: int, prompt, seed: int, frames: int, model_id: str, size: dict,
             tags: dict | None = None) -> Job:
    """A job; ``prompt`` is a text or a list of ``(start frame, text)`` (a schedule)."""
    schedule = None
    if not isinstance(prompt, str):
        schedule = [[int(s), str(p)] for s, p in prompt]
        text, key_prompt = schedule[0][1], schedule
        if len(schedule) == 1 and schedule[0][0] == 0:
            schedule, key_prompt = None, text
    else:
        text = key_prompt = prompt
    from miga.config import config_record

    key = {"model": model_id, **size, "frames": frames, "method": type(config).__name__,
           "config": config_record(config), "prompt": key_prompt, "seed": seed}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return Job([row], config, prompt_index, text, seed, key, digest, frames, schedule, dict(tags or {}))


def merge(jobs: Sequence[Job]) -> list[Job]:
    """Jobs with the same digest as one (its rows joined), in order."""
    out: dict[str, Job] = {}
    for job in jobs:
        if job.digest in out:
            out[job.digest].rows += [r for r in job.rows if r not in out[job.digest].rows]
        else:
            out[job.digest] = job
    return list(out.values())


def _schedule(job: Job):
    from miga.engine.prompts import PromptSchedule

    entries = job.schedule or [[0, job.prompt]]
    return PromptSchedule(tuple(s for s, _ in entries), tuple(p for _, p in entries))


def latents_path_of(video_path: str) -> str:
    """Where a job's latents are kept (Gaussian worlds): beside its video, where ``miga eval`` finds them."""
    from miga.evaluation.latents import default_latents_path

    return default_latents_path(video_path)


def generate_video(backbone, job: Job, frames: int, path: str, latents_path: str | None = None, *,
                   run_dir: str | None = None, checkpoint_every: int | None = None, on_frame=None,
                   frame_delay: float = 0.0) -> dict:
    """Generate one video into ``path`` through a resumable run in ``run_dir`` (default: ``path`` without
    ``.mp4``), continuing from its last checkpoint if there is one; the generation numbers."""
    from miga.pipeline import LongVideo
    from miga.runs import VideoRun
    from miga.video import iter_frames

    video = LongVideo(backbone, _schedule(job), frames, job.config, seed=job.seed)
    run = VideoRun.create(video, run_dir or path[:-len(".mp4")], path, checkpoint_every=checkpoint_every,
                          save_latents=latents_path, load=getattr(backbone, "load_args", None) or {},
                          moved_with_run=run_dir is not None)

    def frame_done():
        if frame_delay:
            time.sleep(frame_delay)
        if on_frame is not None:
            on_frame()

    run.generate(on_frame=frame_done)
    shape = next(iter_frames(path)).shape
    s = video.stats
    seconds = run.seconds
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


def measure(path: str, job: Job, meters: Meters) -> dict:
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
    first = len(frames)  # a schedule: identity over its first prompt's frames
    if job.schedule:
        first = min(len(frames), sorted(int(s) for s, _ in job.schedule)[1])
    if meters.world:
        from miga.worlds.metrics import evaluate_frames
        from miga.worlds.shapes import parse_prompt

        if job.schedule:
            schedule = _schedule(job)
            scenes = {p: parse_prompt(p) for p in schedule.prompts}
            out["world"] = evaluate_frames(frames, [scenes[schedule.prompt_at(t)] for t in range(len(frames))]).summary
        else:
            out["world"] = evaluate_frames(frames, parse_prompt(job.prompt)).summary
    if meters.identity:
        out["identity"] = _identity(frames[:first], fps, path, job.prompt, meters, first)
    out["eval_seconds"] = time.perf_counter() - t0
    return out


def _identity(frames, fps: float, path: str, prompt: str, meters: Meters, first: int | None = None) -> dict:
    """A run's identity drift: shapes, from the decoded frames (the whole video judged against its prompt);
    Gaussian worlds, from the latents saved beside the video against the world's prior."""
    if meters.identity == "shapes":
        from miga.worlds.identity import video_identity_drift
        from miga.worlds.shapes import parse_prompt

        return {"kind": "shapes", **video_identity_drift(frames, parse_prompt(prompt), fps)}
    from miga.evaluation.identity import Prior, identity_metrics
    from miga.evaluation.latents import read_latents

    world = meters.backbone
    latents, meta = read_latents(latents_path_of(path))
    if first is not None:
        latents = latents[:max(1, first // int(meta.get("frames_per_latent", 1)))]
    return {"kind": "gaussian", **identity_metrics(latents, Prior.of(world), world.encode_prompt(prompt))}


def _clear_orphan_run(run_dir: str, video_path: str) -> None:
    """Remove the job's run dir when neither its video nor the video's ``.partial`` exists: a finished run
    whose video was deleted has nothing left to resume, so the job is made again from the start."""
    import shutil

    if os.path.isdir(run_dir) and not os.path.exists(video_path + ".partial"):
        shutil.rmtree(run_dir)


def _measure_identity(backbone, run: Job, frames: int, video_path: str, meters: Meters) -> dict:
    """The identity drift of a recorded run that has none (recorded before it was measured)."""
    from miga.video import read_video

    _ensure_latents(backbone, run, frames, video_path, meters)
    decoded, fps = read_video(video_path) if meters.identity == "shapes" else (None, 0.0)
    first = sorted(int(s) for s, _ in run.schedule)[1] if run.schedule else None
    if decoded is not None and first is not None:
        decoded = decoded[:first]
    return _identity(decoded, fps, video_path, run.prompt, meters, first)


def _ensure_latents(backbone, run: Job, frames: int, video_path: str, meters: Meters) -> None:
    """A Gaussian-world run recorded without its latents gets them generated again (keyed randomness: the
    same latents as its video's); the video and the record's numbers are kept."""
    if meters.identity != "gaussian" or os.path.isfile(latents_path_of(video_path)):
        return
    from miga.pipeline import LongVideo

    video = LongVideo(backbone, _schedule(run), frames, run.config, seed=run.seed)
    writer = _latent_writer(backbone, video, latents_path_of(video_path))
    try:
        for latent in video.latents():
            writer.write(latent)
        writer.close()
    except BaseException:
        writer.abort()
        raise


def _latent_writer(backbone, video, path: str):
    """A ``--save-latents`` file writer for ``video`` (the metadata ``miga generate`` stores)."""
    from miga.evaluation.latents import LatentWriter
    from miga.runs import latent_metadata

    return LatentWriter(path, video.num_latents, tuple(backbone.latent_shape), latent_metadata(video))


def load_record(path: str, job: Job) -> dict | None:
    """The job's record at ``path`` if it is one (its key matches), else None."""
    try:
        with open(path, encoding="utf-8") as fh:
            record = json.load(fh)
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and record.get("key") == job.key else None


def paths(out_dir: str, job: Job) -> tuple[str, str, str]:
    """The job's record, video and run dir under ``out_dir/runs``."""
    base = os.path.join(out_dir, "runs", job.digest)
    return base + ".json", base + ".mp4", base


def finished(out_dir: str, job: Job, names: dict | None = None, need_video: bool = True,
             need_identity: bool = False) -> dict | None:
    """The job's record if it is done on disk, else None: its record is there, and its video unless not
    ``need_video``; with ``names``, measured with those extractors; with ``need_identity``, holding identity
    drift (records made before it was measured do not)."""
    json_path, video_path, _ = paths(out_dir, job)
    if need_video and not os.path.isfile(video_path):
        return None
    record = load_record(json_path, job)
    if record is None or (names is not None and record.get("extractors") != names):
        return None
    if need_identity and record.get("identity") is None:
        return None
    return record


def run_job(backbone, job: Job, out_dir: str, meters: Meters, *, checkpoint_every: int | None = None,
            on_frame=None, frame_delay: float = 0.0, need_video: bool = True,
            on_claim: Callable[[], None] | None = None) -> tuple[dict, str]:
    """Make and measure ``job`` under ``out_dir/runs`` unless its record says it is done; returns the record
    and what happened: ``done`` (nothing to do), ``identity`` (identity drift added to an old record,
    ``identity+latents`` with its latents generated again), ``measured`` (new extractors) or ``made``.
    Without ``need_video``, a record whose video is gone is done while it needs nothing from the video.
    ``on_claim`` is called once it is clear there is work to do, before any of it."""
    from miga.video import atomic_write_text

    json_path, video_path, run_dir = paths(out_dir, job)
    os.makedirs(os.path.dirname(json_path), exist_ok=True)
    frames = job.frames
    latents_path = latents_path_of(video_path) if meters.identity == "gaussian" else None
    done = finished(out_dir, job, meters.names, need_video=need_video, need_identity=bool(meters.identity))
    if done is not None:
        return done, "done"
    if on_claim is not None:
        on_claim()
    record = load_record(json_path, job)
    if record is not None and not os.path.isfile(video_path):  # its video is needed: make the run again
        record = None
        _clear_orphan_run(run_dir, video_path)
    if record is not None and record.get("extractors") == meters.names:  # recorded before identity was measured
        regenerated = latents_path is not None and not os.path.isfile(latents_path)
        record["identity"] = _measure_identity(backbone, job, frames, video_path, meters)
        atomic_write_text(json_path, json.dumps(record, indent=1) + "\n")
        return record, "identity+latents" if regenerated else "identity"
    if record is None:  # generate; otherwise only the metrics changed (other extractors)
        status = "made"
        record = {"key": job.key, "video": os.path.relpath(video_path, out_dir),
                  **generate_video(backbone, job, frames, video_path, latents_path, run_dir=run_dir,
                                   checkpoint_every=checkpoint_every, on_frame=on_frame, frame_delay=frame_delay)}
    else:
        status = "measured"
        _ensure_latents(backbone, job, frames, video_path, meters)
    record.update(measure(video_path, job, meters))
    if job.tags:
        record["tags"] = job.tags
    atomic_write_text(json_path, json.dumps(record, indent=1) + "\n")
    return record, status
