"""Runs behind the page: a generation in a thread (a checkpointed :class:`~miga.runs.VideoRun` under
``--runs``), its frames and scores handed to the page, Stop, Resume, and the list of past runs."""

from __future__ import annotations

import json
import os
import queue
import threading
import time
from dataclasses import dataclass, field

import numpy as np

from miga.app import paths
from miga.errors import MigaError
from miga.runs import RUN_FILE, VideoRun, read_record

VIDEO = "video.mp4"
SHEET = "contact_sheet.png"


@dataclass
class Update:
    """What the page shows: new frames since the last update, the run's counters and its end."""

    frames: list = field(default_factory=list)
    done: int = 0
    total: int = 0
    fps: float = 0.0
    scores: list = field(default_factory=list)
    finished: bool = False
    complete: bool = False
    error: str | None = None


class Job:
    """One generation of a run in a background thread; :meth:`updates` yields :class:`Update` s until it ends."""

    def __init__(self, run_dir: str, start):
        self.run_dir, self.name = run_dir, os.path.basename(run_dir)
        self._start = start  # () -> VideoRun, called in the thread
        self.stop_event = threading.Event()
        self._queue: queue.Queue = queue.Queue()
        self.done = self.total = self.first = 0
        self.run, self.fps = None, None
        self.scores: list[tuple[int, float]] = []
        self.complete = False
        self.error: str | None = None
        self.thread = threading.Thread(target=self._main, name=f"miga-app {self.name}", daemon=True)

    def begin(self) -> "Job":
        _ACTIVE[self.name] = self
        self.thread.start()
        return self

    def stop(self) -> None:
        self.stop_event.set()

    def _main(self) -> None:
        try:
            run = self._start()
            self.run, self.fps, self.total = run, float(run.video.backbone.fps), run.video.num_frames
            _watch_latents(run.video, self.scores)

            def started(frames: int) -> None:
                self.done = self.first = frames
                self._t0 = time.perf_counter()
                self._queue.put(None)

            def frame(image) -> None:
                self.done = run.frames_done
                self._queue.put(image)

            self.complete = run.generate(on_image=frame, stop=self.stop_event.is_set, on_start=started)
            self.seconds = run.seconds
            if self.complete:
                _write_sheet(run)
        except MigaError as exc:
            self.error = str(exc)
        except Exception as exc:  # shown on the page in one line; the checkpoint stands
            self.error = f"{type(exc).__name__}: {exc}"
        finally:
            _ACTIVE.pop(self.name, None)
            self._queue.put(StopIteration)

    def updates(self, every: float = 0.25):
        """Updates at most every ``every`` seconds (frames batched) until the job ends."""
        ended = False
        while not ended:
            frames = []
            deadline = time.perf_counter() + every
            while True:
                try:
                    item = self._queue.get(timeout=max(0.0, deadline - time.perf_counter()))
                except queue.Empty:
                    break
                if item is StopIteration:
                    ended = True
                    break
                if item is not None:
                    frames.append(item)
            if not frames and not ended and not self.done:
                yield self._update([])  # keeps the page's progress alive while the queue fills
                continue
            if frames or ended:
                yield self._update(frames, ended)

    def _update(self, frames: list, ended: bool = False) -> Update:
        t0 = getattr(self, "_t0", None)
        made = self.done - self.first
        rate = made / (time.perf_counter() - t0) if t0 and made else 0.0
        return Update(frames, self.done, self.total, rate, list(self.scores), ended, self.complete, self.error)


_ACTIVE: dict[str, Job] = {}
"""Jobs running now, by run name (the page's Stop finds its job here)."""


def active(name: str | None) -> Job | None:
    return _ACTIVE.get(name) if name else None


def _watch_latents(video, scores: list) -> None:
    """Record the latent consistency score (``miga.engine.reflection.consistency_score`` of each finished
    latent against the one before it, as ``miga eval``'s ``to_previous``): one cheap cosine per latent."""
    from miga.engine.reflection import consistency_score

    latents = video.latents
    state = {"previous": None}

    def watched():
        for latent in latents():
            if state["previous"] is not None:
                score = consistency_score(latent[None].float(), state["previous"][None].float())
                scores.append((video.latents_done - 1, float(score)))
            state["previous"] = latent
            yield latent

    video.latents = watched


def start_new(plan, runs_root: str, name: str, checkpoint_every: int | None = None) -> Job:
    """A job that makes the checked ``plan`` (:func:`miga.app.settings.check`) as a new run ``name``."""
    from miga.app import settings

    folder = paths.run_dir(runs_root, name)
    args = plan.args
    args.out = os.path.join(folder, VIDEO)

    def start():
        video = plan.video
        if video is None:  # a model too big to load while checking: load it now, check the rest
            bb = settings.backbone(plan.model, args.height, args.width)
            video = settings.build_video(args, bb)
        load = {"model": plan.model, "height": args.height, "width": args.width, "device": None, "dtype": None}
        return VideoRun.create(video, folder, args.out, checkpoint_every=checkpoint_every, load=load,
                              cli=settings.recorded_options(args))

    return Job(folder, start)


def start_resume(runs_root: str, name: str) -> Job:
    """A job that continues run ``name`` from its last checkpoint."""
    folder = paths.run_dir(runs_root, name)
    if not os.path.isfile(os.path.join(folder, RUN_FILE)):
        raise MigaError(f"run {name!r} is not a run under {runs_root}")
    if name in _ACTIVE:
        raise MigaError(f"run {name!r} is generating already")
    return Job(folder, lambda: VideoRun.resume(folder))


def _write_sheet(run) -> None:
    from miga.preview import ContactSheet
    from miga.video import iter_frames

    sheet = ContactSheet(run.video.num_frames)
    for i, frame in enumerate(iter_frames(run.out)):
        sheet.offer(i, frame)
    sheet.save(os.path.join(run.run_dir, SHEET))


# ---------------------------------------------------------------------------------------------------- past runs

@dataclass
class RunInfo:
    """A run under ``--runs`` as the page lists it."""

    name: str
    status: str
    frames_done: int
    frames: int
    record: dict
    video: str | None
    sheet: str | None
    stats: dict


def run_info(runs_root: str, name: str) -> RunInfo:
    """What run ``name`` holds: its settings, how far it is, its video and contact sheet."""
    from miga.checkpoint import load_state

    folder = paths.run_dir(runs_root, name)
    record = read_record(folder)
    ident = record.get("video", {})
    total = int(ident.get("frames", 0))
    out = record.get("outputs", {}).get("out", "")
    stats, done, complete = {}, 0, False
    checkpoint = os.path.join(folder, "checkpoint.safetensors")
    if os.path.exists(checkpoint):
        try:
            state = load_state(checkpoint)
            outputs = state["outputs"]
            complete, done = bool(state["complete"]), int(outputs["video"].get("frames", outputs.get("frames", 0)))
            video_stats = state["video"]["stats"]
            stats = {"seconds": round(float(outputs["seconds"]), 2), "nfe": int(video_stats["nfe"]),
                     "model_seconds": round(float(video_stats["model_seconds"]), 2),
                     "reflection_checks": int(video_stats["reflection_checks"]),
                     "reflection_triggers": int(video_stats["reflection_triggers"])}
        except Exception:  # noqa: BLE001 - a damaged checkpoint: listed, resume says why
            stats = {"checkpoint": "unreadable"}
    # the output must stay inside the run (a run.json from elsewhere is not followed out of --runs)
    inside_run = os.path.realpath(out).startswith(os.path.realpath(folder) + os.sep) if out else False
    video = None
    if inside_run:
        video = out if os.path.exists(out) else (out + ".partial" if os.path.exists(out + ".partial") else None)
    if complete:
        done = total
    status = ("generating" if name in _ACTIVE else "complete" if complete else
              f"stopped at {done}/{total}" if os.path.exists(checkpoint) else "not started")
    sheet = os.path.join(folder, SHEET)
    return RunInfo(name, status, done, total, record, video, sheet if os.path.exists(sheet) else None, stats)


def list_runs(runs_root: str) -> list[RunInfo]:
    """The runs under ``runs_root``, newest first (folders without a run are left out)."""
    if not os.path.isdir(runs_root):
        return []
    found = []
    for name in sorted(os.listdir(runs_root), reverse=True):
        try:
            if os.path.isfile(os.path.join(runs_root, name, RUN_FILE)):
                found.append(run_info(runs_root, name))
        except MigaError:
            continue
    return found


def settings_summary(info: RunInfo) -> dict:
    """A run's settings for the page: model, method, frames, seed, prompts, config, stats."""
    ident = info.record.get("video", {})
    cli = info.record.get("cli") or {}
    return {"run": info.name, "status": info.status, "model": cli.get("model") or ident.get("model"),
            "method": ident.get("method"), "frames": ident.get("frames"), "seed": ident.get("seed"),
            "prompts": [f"{s}: {p}" for s, p in ident.get("prompts", [])], "stats": info.stats,
            "config": ident.get("config")}


def ts_chunk(frames: list, fps: float, path: str) -> str:
    """RGB frames as an H.264 (yuv420p) MPEG-TS file at ``path``, for Gradio's streaming video."""
    import av

    h, w = frames[0].shape[:2]
    with av.open(path, "w", format="mpegts") as container:
        stream = container.add_stream("libx264", rate=int(round(fps)))
        stream.width, stream.height, stream.pix_fmt = w - w % 2, h - h % 2, "yuv420p"
        stream.options = {"preset": "ultrafast", "tune": "zerolatency"}
        for frame in frames:
            image = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame[: h - h % 2, : w - w % 2]), format="rgb24")
            for packet in stream.encode(image):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def record_json(info: RunInfo) -> str:
    return json.dumps(settings_summary(info), indent=1)
