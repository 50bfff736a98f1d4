"""Long runs that survive a crash: checkpoint and resume (``miga generate --run-dir`` / ``--resume``).

A :class:`VideoRun` generates one :class:`~miga.pipeline.LongVideo` into an MP4 and keeps everything
needed to continue it in a run directory::

    run.json                 what is being made (written once): model and its identity, method, config,
                             prompt schedule, frames, seed, output paths, checkpoint interval
    checkpoint.safetensors   the last checkpoint (:mod:`miga.checkpoint`): the generator's whole state
                             (:meth:`LongVideo.state_dict`: queue latents and levels, solver histories,
                             Stage-2 band, reflection scores, counters and stats) and how far the outputs go
    latents.safetensors      every finished latent (``.partial`` while running), unless ``--save-latents``
                             names another file, which then plays this part
    segment.mp4.partial      the frames since the last checkpoint, being encoded
    lock                     held (flock) by the process working on the run

``run.json`` also records the number of torch threads the run started with: CPU kernels sum in another
order with another thread count, so a resume runs with the recorded count (and says so when it differs)
to make exactly the latents of an uninterrupted run.

How the outputs survive a kill
------------------------------
Every ``checkpoint_every`` output frames (at the next latent boundary) the run closes the current segment
(a fragmented MP4 of just those frames, starting with a keyframe), appends its fragments to ``OUT.partial``
(:class:`miga.mp4frag.FragmentedMP4`), fsyncs it and the latent file, and then replaces the checkpoint
atomically; the checkpoint records the byte length of the video and the number of latents at that moment.
``OUT.partial`` is therefore always a playable MP4 of the frames up to the last checkpoint (the frames of
the open segment are not in it yet). Resuming cuts ``OUT.partial`` and the latent file back to the lengths
the checkpoint records, so whatever was written after it (a segment appended just before the kill, latents
of a lost stretch) is dropped and made again: every frame ends up in the video exactly once. Generation
itself continues from the checkpointed state with keyed randomness (method.md decision 4), so the latents
equal those of an uninterrupted run, and since segment boundaries fall at the same frames as in an
uninterrupted run, so do the video's bytes.

A stop (Ctrl-C, :func:`VideoRun.generate` ``stop``) takes a checkpoint at the next pass or latent
boundary without closing the open segment: its frames are made again on resume by decoding the saved
latents (for a decoder that keeps state between latents, such as Wan's causal VAE, all latents from the
first are replayed through it), so segment boundaries, and the video, stay those of an uninterrupted run.
When the run completes, ``OUT.partial`` becomes ``OUT`` and the latent file loses its ``.partial``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
from typing import Any, Callable

import torch

from miga.checkpoint import durable_write_bytes, load_state, save_state
from miga.config import MIGAConfig, config_from_dict, config_record, method_name
from miga.engine.prompts import PromptSchedule
from miga.engine.queue import RunInterrupted
from miga.errors import MigaError, PartialFileMismatch
from miga.video import LATENTS_TAG, check_new_folder, latents_tag

FORMAT = "miga-run/1"
RUN_FILE = "run.json"
CHECKPOINT = "checkpoint.safetensors"
LATENTS = "latents.safetensors"
SEGMENT = "segment.mp4"
LOCK = "lock"
DEFAULT_CHECKPOINT_EVERY = 16
"""Output frames between checkpoints when none is given: small enough that a kill loses little, large
enough that checkpoint writes and segment keyframes cost little."""

_LABELS = {"model": "--model", "model_id": "the model's weights", "latent_shape": "the frame size (--height/--width)",
           "native_frames": "the model window f_0", "fps": "the frame rate", "frames_per_latent": "frames per latent",
           "method": "--method", "prompts": "the prompts", "frames": "--frames", "seed": "--seed", "out": "--out",
           "latents": "the latents file (--save-latents)", "keep_latents": "--save-latents"}


def _plain(value: Any) -> Any:
    """``value`` as JSON would give it back (tuples become lists)."""
    return json.loads(json.dumps(value))


def model_identity(model: str) -> str:
    """What makes a model's outputs reproducible: a world's name or a weights file's SHA-256."""
    from miga.common import model_identity as identity

    return identity(model)


def video_identity(video, model: str | None = None) -> dict:
    """The part of a run record that fixes the latents: changing any of it changes the video."""
    bb, cfg = video.backbone, video.config
    return _plain({
        "model": model if model is not None else bb.name,
        "model_id": model_identity(model) if model is not None else bb.name,
        "latent_shape": list(bb.latent_shape), "native_frames": bb.native_frames, "fps": bb.fps,
        "frames_per_latent": bb.frames_per_latent, "method": method_name(cfg),
        "config": config_record(cfg), "prompts": [[s, p] for s, p in zip(video.prompts.starts,
                                                                               video.prompts.prompts)],
        "frames": video.num_frames, "seed": video.seed})


class RunDifference(MigaError):
    """A run dir holds a run of another video than the one asked for: ``difference`` is the first field
    that differs (said for a person, as in the message), ``record`` the run's ``run.json``."""

    def __init__(self, message: str, difference: str, record: dict):
        super().__init__(message)
        self.difference, self.record = difference, record


def difference(stored: dict, new: dict) -> str | None:
    """The first field in which two run records' ``video``/``outputs`` differ, said for a person, or None."""
    for section in ("video", "outputs"):
        a, b = stored.get(section, {}), new.get(section, {})
        for key in list(a) + [k for k in b if k not in a]:
            if key == "config":
                ca, cb = a.get(key) or {}, b.get(key) or {}
                for field in list(ca) + [f for f in cb if f not in ca]:
                    if ca.get(field) != cb.get(field):
                        return f"config field {field} differs ({_short(ca.get(field))} in the run, " \
                               f"{_short(cb.get(field))} now)"
            elif a.get(key) != b.get(key):
                return f"{_LABELS.get(key, key)} differs ({_short(a.get(key))} in the run, {_short(b.get(key))} now)"
    return None


def _short(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= 60 else text[:57] + "..."


def read_record(run_dir: str) -> dict:
    """The ``run.json`` of ``run_dir``; :class:`MigaError` (one line) if it is missing or damaged."""
    path = os.path.join(run_dir, RUN_FILE)
    if not os.path.isdir(run_dir):
        raise MigaError(f"cannot resume: run dir {run_dir} does not exist")
    try:
        with open(path, encoding="utf-8") as fh:
            record = json.load(fh)
    except FileNotFoundError:
        raise MigaError(f"cannot resume: {run_dir} holds no miga run ({RUN_FILE} is missing)") from None
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise MigaError(f"cannot resume: {path} is damaged ({' '.join(str(exc).split())[:100]})") from None
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        raise MigaError(f"cannot resume: {path} is not a miga run record (format {FORMAT} expected)")
    for key in ("video", "outputs", "checkpoint_every"):
        if key not in record:
            raise MigaError(f"cannot resume: {path} is damaged (no {key!r})")
    return record


def _model_moved(stored: dict, new: dict) -> bool:
    """Whether two run records name the same model weights (``model_id``) at different paths."""
    a, b = stored.get("video", {}), new.get("video", {})
    return a.get("model") != b.get("model") and a.get("model_id") == b.get("model_id") and \
        a.get("model_id") not in (None, a.get("model"))


def _only_moved(stored: dict, new: dict) -> bool:
    """Whether two run records differ only in where their outputs are, each output under the same name (a run
    folder copied or moved with its outputs)."""
    a, b = stored.get("outputs", {}), new.get("outputs", {})
    if stored.get("video") != new.get("video") or set(a) != set(b):
        return False
    for key in a:
        if key in ("out", "latents") and a[key] is not None and b[key] is not None:
            if os.path.basename(a[key]) != os.path.basename(b[key]):
                return False
        elif a[key] != b[key]:
            return False
    return True


def _digest(record: dict) -> str:
    text = json.dumps({"video": record["video"], "outputs": record["outputs"]}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def latent_metadata(video) -> dict:
    """The ``--save-latents`` metadata (:data:`miga.evaluation.latents.METADATA_KEYS`) of a video."""
    bb, cfg = video.backbone, video.config
    miga_cfg = isinstance(cfg, MIGAConfig)
    return {"frames": video.num_frames, "frames_per_latent": bb.frames_per_latent, "fps": bb.fps,
            "method": method_name(cfg), "chunk": cfg.zigzag_width if miga_cfg else 1,
            "refs": cfg.reflection_ref_chunks if miga_cfg else 1,
            "score_mode": cfg.score_mode if miga_cfg else "frame"}


def recorded_threads(record: dict) -> int | None:
    """The torch thread count a run record says the run started with (None in runs recorded before miga kept
    it)."""
    threads = record.get("threads")
    return threads if isinstance(threads, int) and not isinstance(threads, bool) and threads > 0 else None


@contextlib.contextmanager
def torch_threads(threads: int | None):
    """Run with ``threads`` torch threads (None: as they are), then give the caller's count back."""
    before = torch.get_num_threads()
    if threads is not None and threads != before:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)


class VideoRun:
    """A checkpointed, resumable generation of ``video`` (see the module docstring).

    Build one with :meth:`create` (or :meth:`LongVideo.start_run`) or :meth:`resume` (or
    :meth:`LongVideo.resume`), then call :meth:`generate`.
    """

    def __init__(self, video, run_dir: str, record: dict):
        self.video, self.run_dir, self.record = video, run_dir, record
        self.out = record["outputs"]["out"]
        self.latents_path = record["outputs"]["latents"] or os.path.join(run_dir, LATENTS)
        self.checkpoint_every = int(record["checkpoint_every"])
        # where the video says its latents are (LATENTS_TAG); runs recorded before miga kept it: not said
        self.tags = {LATENTS_TAG: record["latents_tag"]} if "latents_tag" in record else {}
        self.seconds = 0.0  # generation time over all sessions, once generate() returns
        self.frames_done = 0  # frames in the video and the open segment
        self._on_frame = self._on_image = None  # generate()'s callbacks

    # ------------------------------------------------------------------ construction
    @classmethod
    def create(cls, video, run_dir: str, out: str, *, checkpoint_every: int | None = None,
               save_latents: str | None = None, load: dict | None = None, cli: dict | None = None,
               resuming: bool = False, moved_with_run: bool = False) -> "VideoRun":
        """A run of ``video`` in ``run_dir`` writing ``out``. If ``run_dir`` already holds a run of the same
        video, that run is continued; one of a different video is refused, naming the difference.

        ``load``: the :func:`~miga.pipeline.load_backbone` arguments that rebuild the backbone on
        :meth:`resume` (default: those a backbone from ``load_backbone`` keeps in ``load_args``; without
        them, pass the backbone to :meth:`resume`); ``cli``: the command-line
        options, recorded for ``miga generate --resume``; ``resuming``: the run must exist already;
        ``moved_with_run``: the outputs sit beside ``run_dir`` and travel with it (the runner's ``OUT/runs``),
        so a run whose folder was copied or moved continues, writing its outputs where they are now.
        """
        if load is None:  # a backbone from load_backbone() says how it was built
            load = getattr(video.backbone, "load_args", None)
        every = DEFAULT_CHECKPOINT_EVERY if checkpoint_every is None else checkpoint_every
        if not isinstance(every, int) or isinstance(every, bool) or every < 1:
            raise MigaError(f"the checkpoint interval must be a positive number of frames, got {every!r}")
        if not out.lower().endswith(".mp4"):
            raise MigaError(f"the output must be an .mp4 file, got {out}")
        check_new_folder(run_dir, "run dir")  # missing parents are created, as train-toy does
        record = _plain({
            "format": FORMAT, "video": video_identity(video, (load or {}).get("model")),
            "outputs": {"out": os.path.abspath(out),  # the latents: None for LATENTS in the run dir
                        "latents": os.path.abspath(save_latents) if save_latents else None,
                        "keep_latents": save_latents is not None},
            "checkpoint_every": every, "load": load, "cli": cli, "threads": torch.get_num_threads()})
        record["latents_tag"] = latents_tag(out, save_latents)  # those kept in the run dir are not beside it
        path = os.path.join(run_dir, RUN_FILE)
        if resuming or os.path.exists(path):
            stored = read_record(run_dir)
            diff = difference(stored, record)
            if diff and moved_with_run and _only_moved(stored, record):
                stored.setdefault("moved_from", []).append(stored["outputs"])  # checkpoints name the run by these
                stored["outputs"] = {**stored["outputs"], "out": record["outputs"]["out"],
                                     "latents": record["outputs"]["latents"]}
                durable_write_bytes(path, (json.dumps(stored, indent=1) + "\n").encode())
                diff = None
            if diff and _model_moved(stored, record):  # the same weights at a new place: follow them
                stored.setdefault("model_moved_from", []).append(stored["video"]["model"])  # checkpoints name it
                for section in ("video", "load", "cli"):
                    if isinstance(stored.get(section), dict) and "model" in stored[section]:
                        stored[section]["model"] = record["video"]["model"]
                durable_write_bytes(path, (json.dumps(stored, indent=1) + "\n").encode())
                diff = difference(stored, record)
            if diff and resuming:
                raise RunDifference(f"cannot resume {run_dir} with these options: {diff}; leave the option out to "
                                    "continue the run as it was, or start a new --run-dir", diff, stored)
            if diff:
                raise RunDifference(f"run dir {run_dir} holds a run of a different video: {diff}; use another "
                                    "--run-dir, or --resume it as it is", diff, stored)
            if checkpoint_every is not None and stored.get("checkpoint_every") != every:  # safe: where segments end
                stored["checkpoint_every"] = every
                durable_write_bytes(path, (json.dumps(stored, indent=1) + "\n").encode())
            return cls(video, run_dir, stored)
        if os.path.isdir(run_dir) and os.listdir(run_dir):
            raise MigaError(f"run dir {run_dir} is not empty and holds no miga run; give a new or empty folder")
        os.makedirs(run_dir, exist_ok=True)
        durable_write_bytes(path, (json.dumps(record, indent=1) + "\n").encode())
        return cls(video, run_dir, record)

    @classmethod
    def resume(cls, run_dir: str, backbone=None) -> "VideoRun":
        """The run in ``run_dir``, rebuilt from its ``run.json`` (the backbone from its recorded
        :func:`~miga.pipeline.load_backbone` arguments unless ``backbone`` is given)."""
        from miga.pipeline import load_backbone

        record = read_record(run_dir)
        load = record.get("load")
        if backbone is None and not load:
            raise MigaError(f"the run in {run_dir} was started from Python with a backbone that cannot be "
                            "rebuilt by name (not one from miga.load_backbone); pass it: "
                            "LongVideo.resume(run_dir, backbone=...)")
        with torch_threads(recorded_threads(record)):  # the prompts are encoded as when the run started
            return cls._rebuild(run_dir, record, backbone or load_backbone(**load))

    @classmethod
    def _rebuild(cls, run_dir: str, record: dict, backbone) -> "VideoRun":
        from miga.pipeline import LongVideo

        ident, load = record["video"], record.get("load")
        try:
            config = config_from_dict(ident["method"], ident["config"])
            prompts = PromptSchedule(tuple(s for s, _ in ident["prompts"]), tuple(p for _, p in ident["prompts"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise MigaError(f"cannot resume: {os.path.join(run_dir, RUN_FILE)} does not describe a video this "
                            f"miga can make ({' '.join(str(exc).split())[:100]})") from None
        video = LongVideo(backbone, prompts, int(ident["frames"]), config, seed=int(ident["seed"]))
        diff = difference({"video": ident}, {"video": video_identity(video, (load or {}).get("model"))})
        if diff:
            raise MigaError(f"cannot resume {run_dir}: {diff}")
        return cls(video, run_dir, record)

    @property
    def threads(self) -> int | None:
        """The torch threads :meth:`generate` runs with: those the run started with (None for a run recorded
        before miga kept them: then the caller's)."""
        return recorded_threads(self.record)

    @property
    def video_frames(self) -> int:
        """Frames in ``OUT.partial`` (or ``OUT``) as of the last checkpoint of this session."""
        mp4 = getattr(self, "_mp4", None)
        return mp4.frames if mp4 is not None else 0

    # ------------------------------------------------------------------ state on disk
    @property
    def checkpoint_path(self) -> str:
        return os.path.join(self.run_dir, CHECKPOINT)

    def checkpoint(self) -> dict | None:
        """The last checkpoint's record (without the generator state), or None before the first."""
        state = self._load_checkpoint()
        return None if state is None else {k: v for k, v in state.items() if k != "video"}

    def _load_checkpoint(self) -> dict | None:
        if not os.path.exists(self.checkpoint_path):
            return None
        state = load_state(self.checkpoint_path)
        videos = [self.record["video"]] + [{**self.record["video"], "model": model}  # the model moved since
                                           for model in self.record.get("model_moved_from", [])]
        names = set()
        for video in videos:
            names.add(_digest({**self.record, "video": video}))
            for outputs in self.record.get("moved_from", []):  # a moved run: checkpoints taken before a move
                names.add(_digest({**self.record, "video": video, "outputs": outputs}))
        if not isinstance(state, dict) or state.get("run") not in names:
            raise MigaError(f"checkpoint {self.checkpoint_path} belongs to a different run than "
                            f"{os.path.join(self.run_dir, RUN_FILE)}")
        try:
            if not state["complete"]:
                engine = self.video._new_engine()  # check the state fits before any output is touched
                engine.load_state_dict(state["video"]["engine"])
            outputs = state["outputs"]
            int(outputs["latents"]), int(outputs["segment_latent"]), dict(outputs["video"])
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise MigaError(f"checkpoint {self.checkpoint_path} does not fit this run "
                            f"({type(exc).__name__}: {' '.join(str(exc).split())[:80]})") from None
        return state

    @contextlib.contextmanager
    def _locked(self):
        import fcntl

        fd = os.open(os.path.join(self.run_dir, LOCK), os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise MigaError(f"run dir {self.run_dir} is in use by another miga process") from None
        try:
            yield
        finally:
            os.close(fd)

    # ------------------------------------------------------------------ generation
    def generate(self, on_frame: Callable[[], None] | None = None, stop: Callable[[], bool] | None = None,
                 on_start: Callable[[int], None] | None = None,
                 on_image: Callable[[Any], None] | None = None) -> bool:
        """Generate from the last checkpoint to the end: True when the video is complete (``OUT`` written),
        False when ``stop()`` said so (checked between passes and latents; a checkpoint was taken).
        ``on_start(frames)`` is called once the checkpoint is loaded, with the frames it already holds;
        ``on_frame`` once per frame made after them (:attr:`frames_done` counts them all), ``on_image(frame)``
        likewise with the frame (``[H, W, 3]`` uint8)."""
        from miga.evaluation.latents import LatentWriter
        from miga.mp4frag import FragmentedMP4

        video = self.video
        with self._locked(), torch_threads(self.threads):
            state = self._load_checkpoint()
            if state is not None and state["complete"]:
                gone = [path for path in (self.out, self.latents_path)
                        if not os.path.exists(path) and not os.path.exists(path + ".partial")]
                if gone:
                    raise MigaError(f"the run in {self.run_dir} is complete, but {' and '.join(gone)} no longer "
                                    f"exist(s) (moved or deleted?); nothing is left to resume: delete {self.run_dir} (or "
                                    "use a new run dir) to make the video again")
                self.seconds = float(state["outputs"]["seconds"])
                self.frames_done = video.num_frames
                video.load_state_dict(state["video"])
                self._finish()
                return True
            outputs = state["outputs"] if state is not None else {"latents": 0, "segment_latent": 0, "video": {},
                                                                  "seconds": 0.0}
            try:  # both check, before writing, that their files hold what the checkpoint says
                self._mp4 = FragmentedMP4(self.out + ".partial", outputs["video"] or None)
                self._store = LatentWriter(self.latents_path, video.num_latents, tuple(video.backbone.latent_shape),
                                           latent_metadata(video), resume=int(outputs["latents"]))
            except PartialFileMismatch as exc:
                raise MigaError(f"{exc}; put it back to resume, or delete {self.run_dir} to make the video again "
                                "from the start") from None
            self._mp4.restore()
            self._clear_segment()
            if state is not None:
                video.load_state_dict(state["video"])
            self._segment, self._segment_latent = None, int(outputs["segment_latent"])
            self._previous_seconds, self._t0 = float(outputs["seconds"]), time.perf_counter()
            self.frames_done = self._mp4.frames
            self._on_frame, self._on_image = on_frame, on_image
            if on_start is not None:
                on_start(self.frames_done)
            try:
                decoder = self._replay(video.backbone.decoder(), int(outputs["latents"]))
                video.should_stop = stop
                try:
                    for latent in video.latents():
                        self._store.write(latent)
                        for frame in decoder.push(latent):
                            self._emit(frame)
                        if self._segment is not None and self._segment.frames_written >= self.checkpoint_every:
                            self._commit()
                        if stop is not None and stop():
                            raise RunInterrupted
                except RunInterrupted:
                    self._stop()
                    return False
                finally:
                    video.should_stop = None
                for frame in decoder.flush():
                    self._emit(frame)
                self._commit(complete=True)
            except BaseException:
                if self._segment is not None:
                    self._segment.abort()
                self._store.abort()
                raise
            self._finish()
            return True

    def _replay(self, decoder, latents_done: int):
        """Bring a fresh decoder to where the checkpoint stood, re-making the open segment's frames from the
        saved latents (only those latents for a decoder without state between latents; all of them, the
        frames already in the video dropped, for one with state)."""
        stateless = bool(getattr(decoder, "stateless", False))
        first = self._segment_latent if stateless else 0
        skip = 0 if stateless else self._mp4.frames
        for i in range(first, latents_done):
            for frame in decoder.push(self._store.read(i)):
                if skip:
                    skip -= 1
                else:
                    self._emit(frame)
        return decoder

    def _emit(self, frame) -> None:
        from miga.video import VideoWriter, prompts_metadata

        if self.frames_done >= self.video.num_frames:
            return
        if self._segment is None:
            schedule = self.video.prompts
            self._segment = VideoWriter(os.path.join(self.run_dir, SEGMENT), self.video.backbone.fps,
                                        metadata=prompts_metadata(zip(schedule.starts, schedule.prompts),
                                                                  **self.tags))
        self._segment.write(frame)
        self.frames_done += 1
        if self._on_image is not None:
            self._on_image(frame)
        if self._on_frame is not None:
            self._on_frame()

    def _clear_segment(self) -> None:
        for name in (SEGMENT, SEGMENT + ".partial"):
            with contextlib.suppress(FileNotFoundError):
                os.remove(os.path.join(self.run_dir, name))

    def _commit(self, complete: bool = False) -> None:
        """Close the open segment into the video, then checkpoint (the video and latents first, so that a
        checkpoint never counts on bytes that are not on disk)."""
        if self._segment is not None:
            frames = self._segment.frames_written
            self._segment.close()
            path = os.path.join(self.run_dir, SEGMENT)
            with open(path, "rb") as fh:
                self._mp4.append(fh.read(), frames)
            os.remove(path)
            self._segment = None
        self._segment_latent = self.video.latents_done
        self._store.sync()
        self._save(complete)

    def _stop(self) -> None:
        """A checkpoint without closing the open segment (its frames are re-made on resume)."""
        if self._segment is not None:
            self._segment.abort()
            self._segment = None
            self._clear_segment()
        self._store.sync()
        self._save(False)
        self._store.abort()

    def _save(self, complete: bool) -> None:
        self.seconds = self._previous_seconds + time.perf_counter() - self._t0
        save_state(self.checkpoint_path, {
            "run": _digest(self.record), "complete": complete, "video": self.video.state_dict(),
            "outputs": {"latents": self._store.written, "segment_latent": self._segment_latent,
                        "video": self._mp4.state, "frames": self.frames_done, "seconds": self.seconds}})

    def _finish(self) -> None:
        """Give the outputs their final names (again, if a crash came between the last checkpoint and this)."""
        store = getattr(self, "_store", None)
        if store is not None and store.written == store.count and os.path.exists(store.partial_path):
            store.close()
        for path in (self.out, self.latents_path):
            if os.path.exists(path + ".partial"):
                os.replace(path + ".partial", path)
