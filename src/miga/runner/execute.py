"""Run a list of :class:`~miga.runner.jobs.Job` in-process or on Ray, with resume and a progress bar.

On Ray, one long-lived worker (actor) per GPU (on a cluster without GPUs: ``workers`` CPU workers) loads
the model once and takes jobs from the driver's queue. A worker that dies (killed, out of memory, node
lost) is restarted by Ray; its job goes back to the front of the queue and continues from its last
checkpoint on the next free worker. Jobs that are done on disk are never sent out. Results are small
records (paths and numbers); videos go to ``OUT`` (shared storage on a multi-node cluster).
"""

from __future__ import annotations

import os
import socket
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

from miga.errors import MigaError
from miga.runner.jobs import Job, Meters, finished, run_job

ATTEMPTS = 3
"""Times a job is tried when its worker dies under it (a raised error is not retried: it would repeat)."""
PROBE_INTERVAL = 0.2
"""Seconds between questions to a worker Ray is restarting."""
RAY_HINT = 'to run the videos in parallel on this machine\'s GPUs or a cluster: pip install "miga-video[cluster]"'


@dataclass
class WorkerSpec:
    """What a worker needs: the :func:`~miga.pipeline.load_backbone` arguments, the metric extractors'
    paths (None: the offline proxies), torch threads, the checkpoint interval and the output folder.
    ``frame_delay`` (seconds slept per frame) slows runs down for tests and demos."""

    load: dict
    out_dir: str
    dino: str | None = None
    clip: str | None = None
    amt: str | None = None
    threads: int | None = None
    checkpoint_every: int | None = None
    frame_delay: float = 0.0
    need_video: bool = True  # False: a record whose video was deleted still counts as done (tables only)
    backbone: object = field(default=None, compare=False, repr=False)  # in-process: an already loaded one
    meters: object = field(default=None, compare=False, repr=False)  # and its extractors


def make_meters(spec: WorkerSpec, backbone) -> Meters:
    """The extractors of ``spec`` for ``backbone`` (world metrics and identity by the model's kind)."""
    from miga.evaluation.features import ProxyFeatures, load_clip, load_dino
    from miga.evaluation.interpolation import FlowMidpoint, amt_interpolator

    world = backbone.name == "shapes"
    identity = "shapes" if world else "gaussian" if backbone.name == "gaussian" else None
    return Meters(load_dino(spec.dino) if spec.dino else ProxyFeatures("dino"),
                  load_clip(spec.clip) if spec.clip else ProxyFeatures("clip"),
                  amt_interpolator(spec.amt) if spec.amt else FlowMidpoint(), world, identity, backbone)


def describe(backbone, meters: Meters) -> dict:
    """A model's name, preset, window and frame rate, and the extractors' names and proxies."""
    return {"name": backbone.name, "default_preset": backbone.default_preset, "native_frames": backbone.native_frames,
            "fps": float(backbone.fps), "names": meters.names, "proxies": meters.proxies,
            "identity": meters.identity}


class Worker:
    """Loads the model and the extractors once, then makes jobs (in-process, or as a Ray actor)."""

    def __init__(self, spec: WorkerSpec):
        import torch

        self.spec = spec
        if spec.threads:
            from miga.evaluation.interpolation import import_cv2

            torch.set_num_threads(spec.threads)
            import_cv2().setNumThreads(spec.threads)  # the motion-smoothness flow
        if spec.backbone is not None:
            self.backbone = spec.backbone
        else:
            from miga.pipeline import load_backbone

            self.backbone = load_backbone(**spec.load)
        self.meters = spec.meters if spec.meters is not None else make_meters(spec, self.backbone)

    def names(self) -> dict:
        return self.meters.names

    def describe(self) -> dict:
        """What the driver needs to plan jobs without loading the model itself."""
        return describe(self.backbone, self.meters)

    def run_timed(self, job: Job) -> tuple[dict, str, float]:
        """:meth:`run`, and the seconds it took here (the driver subtracts them from its round trip)."""
        t0 = time.perf_counter()
        record, status = self.run(job)
        return record, status, time.perf_counter() - t0

    def run(self, job: Job, on_frame: Callable[[], None] | None = None) -> tuple[dict, str]:
        """Make and measure ``job`` (see :func:`~miga.runner.jobs.run_job`); unless it is done already, first
        says which process works on it (``runs/DIGEST.worker``)."""
        import json

        from miga.video import atomic_write_text

        def claim():
            atomic_write_text(os.path.join(self.spec.out_dir, "runs", job.digest + ".worker"),
                              json.dumps({"host": socket.gethostname(), "pid": os.getpid()}) + "\n")

        return run_job(self.backbone, job, self.spec.out_dir, self.meters, on_frame=on_frame,
                       checkpoint_every=self.spec.checkpoint_every, frame_delay=self.spec.frame_delay,
                       need_video=self.spec.need_video, on_claim=claim)


@dataclass
class Outcome:
    """What :func:`execute` did: ``records`` by digest, counts of jobs already ``done`` and ``made`` now,
    ``failed`` (digest -> error line), identity ``added`` to old records (``regenerated``: their latents)."""

    records: dict = field(default_factory=dict)
    done: int = 0
    made: int = 0
    added: int = 0
    regenerated: int = 0
    retried: int = 0
    failed: dict = field(default_factory=dict)
    where: str = "in-process"
    timing: dict = field(default_factory=dict)  # Ray: seconds to connect, to start the workers, per video

    def count(self, record: dict, status: str) -> None:
        if status == "done" or status.startswith("identity"):
            self.done += 1
        else:
            self.made += 1
        self.added += status.startswith("identity")
        self.regenerated += status == "identity+latents"


def _bar(total: int, initial: int, desc: str, progress: bool):
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, unit="video", desc=desc, disable=not progress, dynamic_ncols=True)


def execute(jobs: Sequence[Job], spec: WorkerSpec, *, ray_address: str | None = None, use_ray: bool = False,
            workers: int | None = None, progress: bool = True, desc: str = "videos",
            names: dict | None = None, identity: bool = False) -> Outcome:
    """Make every job not done yet; in-process one after another, or on Ray (``use_ray``: the cluster this
    process is connected to, the one at ``ray_address`` or ``RAY_ADDRESS``, or a new local one). On Ray, a
    job whose record (and video, if ``spec.need_video``) exist (measured with ``names``, when given; with
    identity drift, when ``identity``) is not sent out."""
    if use_ray:
        return _execute_ray(jobs, spec, ray_address, workers, progress, desc, names, identity)
    return _execute_here(jobs, spec, progress, desc)


def _execute_here(jobs: Sequence[Job], spec: WorkerSpec, progress: bool, desc: str) -> Outcome:
    outcome = Outcome()
    run_here(Worker(spec), jobs, outcome, len(jobs), progress, desc)
    return outcome


def run_here(worker, todo: Sequence[Job], outcome: Outcome, total: int, progress: bool, desc: str) -> None:
    """Run ``todo`` one after another on ``worker`` in this process, into ``outcome``, with a bar over ``total``
    (the jobs already done count as done)."""
    bar = _bar(total, total - len(todo), desc, progress)
    try:
        for job in todo:
            bar.set_postfix_str(job.label)
            record, status = worker.run(job)
            outcome.records[job.digest] = record
            outcome.count(record, status)
            bar.update(1)
    finally:
        bar.close()


# ---------------------------------------------------------------------------------------------------- Ray


def ray_available() -> bool:
    try:
        import ray  # noqa: F401
    except ImportError:
        return False
    return True


def _reachable(address: str, timeout: float = 3.0) -> None:
    """Refuse at once (one line) a ``HOST:PORT`` or ``ray://HOST:PORT`` address nothing listens on."""
    target = address.split("://", 1)[-1]
    host, _, port = target.rpartition(":")
    if not host or not port.isdigit():
        return  # "auto", or a form Ray resolves itself
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as exc:
        raise MigaError(f"cannot reach the Ray cluster at {address}: {exc.strerror or exc}; start one with "
                        "'ray start --head' or drop --ray to run on this machine") from None


def connect(address: str | None) -> bool:
    """Connect to Ray: the cluster this process is connected to already, ``address`` (``auto``, ``HOST:PORT``,
    ``ray://HOST:PORT``), ``RAY_ADDRESS``, or else a new local cluster of this machine's CPUs and GPUs.
    Returns True when this call started the connection (and should end it)."""
    import logging

    import ray

    if address and address not in ("local", "auto"):
        _reachable(address)
    if ray.is_initialized():
        return False
    options = dict(include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
    address = address or os.environ.get("RAY_ADDRESS") or None
    if address and address != "local":
        _reachable(address)
        try:
            ray.init(address=address, **options)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise MigaError(f"cannot connect to the Ray cluster at {address}: {' '.join(str(exc).split())[:160]}") \
                from None
        return True
    ray.init(address="local", **options)
    return True


def worker_count(workers: int | None, threads: int) -> tuple[int, dict]:
    """How many workers and each one's resources: one per GPU of the cluster, else ``workers`` (default:
    the cluster's CPUs / ``threads``) CPU workers."""
    import ray

    resources = ray.cluster_resources()
    gpus = int(resources.get("GPU", 0))
    if gpus and workers is None:
        return gpus, {"num_gpus": 1, "num_cpus": 0}
    if gpus:
        return workers, {"num_gpus": 1, "num_cpus": 0} if workers <= gpus else {"num_cpus": threads}
    cpus = int(resources.get("CPU", 1))
    return workers or max(1, cpus // max(1, threads)), {"num_cpus": threads}


def _execute_ray(jobs, spec, address, workers, progress, desc, names, identity) -> Outcome:
    outcome = Outcome(where="Ray")
    todo = []
    for job in jobs:  # done on disk: never sent out
        record = finished(spec.out_dir, job, names, need_video=spec.need_video, need_identity=bool(identity))
        if record is not None:
            outcome.records[job.digest] = record
            outcome.done += 1
        else:
            todo.append(job)
    if not todo:
        return outcome
    pool = RayPool(spec, address, workers, len(todo))
    try:
        pool.run(todo, outcome, len(jobs), progress, desc)
    finally:
        pool.close()
    return outcome


class RayPool:
    """Workers (actors) on Ray: one per GPU of the cluster (else ``workers`` CPU workers), at most ``limit``."""

    def __init__(self, spec: WorkerSpec, address: str | None, workers: int | None, limit: int):
        import ray

        t0 = time.perf_counter()
        self.ray, self.started = ray, connect(address)
        self.timing = {"connect_seconds": time.perf_counter() - t0}
        try:
            threads = spec.threads or 1
            count, resources = worker_count(workers, threads)
            count = max(1, min(count, limit))
            remote = ray.remote(Worker).options(max_restarts=ATTEMPTS, max_task_retries=0, **resources)
            self.spec = WorkerSpec(**{**spec.__dict__, "backbone": None, "meters": None, "threads": threads})
            t1 = time.perf_counter()
            self.actors = [remote.remote(self.spec) for _ in range(count)]
            self.model = self._ready()
            self.timing.update(workers=count, workers_ready_seconds=time.perf_counter() - t1)
        except BaseException:
            self.close()
            raise

    def _ready(self) -> dict:
        """Wait until every worker has loaded the model; a load error is raised here, in one line."""
        from ray.exceptions import RayActorError, RayTaskError

        try:
            return self.ray.get([actor.describe.remote() for actor in self.actors])[0]
        except (RayTaskError, RayActorError) as exc:
            cause = getattr(exc, "cause", None)
            if isinstance(cause, MigaError):
                raise MigaError(str(cause)) from None
            if isinstance(getattr(cause, "cause", None), MigaError):  # raised in the worker's constructor
                raise MigaError(str(cause.cause)) from None
            raise MigaError(f"a Ray worker could not load the model: {_cause(exc)}") from None

    def describe(self) -> dict:
        """The model as the workers loaded it."""
        return self.model

    def close(self) -> None:
        t0 = time.perf_counter()
        for actor in getattr(self, "actors", []):
            try:
                self.ray.kill(actor, no_restart=True)
            except Exception:  # already gone
                pass
        self.actors = []
        if self.started and self.ray.is_initialized():
            self.ray.shutdown()
        self.started = False
        if hasattr(self, "timing"):
            self.timing["close_seconds"] = time.perf_counter() - t0

    def run(self, todo, outcome: Outcome, total: int, progress: bool, desc: str) -> None:
        """Run ``todo`` on the workers. A job is sent only to a worker that has answered a probe, so a worker
        Ray is still restarting (after it died) is waited for, not handed jobs that would bounce off it."""
        from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError, RayTaskError

        ray = self.ray
        idle: list = []
        probes = {actor.names.remote(): actor for actor in self.actors}  # ref -> worker not known to be up
        queue = list(todo)
        attempts = {job.digest: 0 for job in todo}
        running: dict = {}  # ref -> (job, actor, sent)
        overheads: list[float] = []  # per video: the driver's round trip less the worker's own time
        outcome.timing = self.timing
        bar = _bar(total, total - len(todo), desc, progress)

        def status():
            bar.set_postfix_str(f"running {len(running)}, failed {len(outcome.failed)}"
                                + (f", retried {outcome.retried}" if outcome.retried else ""))

        try:
            while queue or running:
                while queue and idle:
                    job, actor = queue.pop(0), idle.pop(0)
                    attempts[job.digest] += 1
                    running[actor.run_timed.remote(job)] = (job, actor, time.perf_counter())
                status()
                if not running and not probes:
                    break  # no worker left
                ready, _ = ray.wait(list(running) + list(probes), num_returns=1)
                for ref in ready:
                    if ref in probes:
                        actor = probes.pop(ref)
                        try:
                            ray.get(ref)
                            idle.append(actor)
                        except ActorUnavailableError:  # restarting: ask again shortly
                            time.sleep(PROBE_INTERVAL)
                            probes[actor.names.remote()] = actor
                        except RayActorError:  # out of restarts: gone for good
                            pass
                        continue
                    job, actor, sent = running.pop(ref)
                    try:
                        record, state, seconds = ray.get(ref)
                        overheads.append(time.perf_counter() - sent - seconds)
                    except RayTaskError as exc:  # the job raised: it would raise again
                        outcome.failed[job.digest] = f"{job.label}: {_cause(exc)}"
                        bar.update(1)
                        idle.append(actor)
                        continue
                    except (ActorDiedError, ActorUnavailableError, RayActorError) as exc:
                        if attempts[job.digest] < ATTEMPTS:
                            outcome.retried += 1
                            queue.insert(0, job)  # continues from its checkpoint on the next free worker
                        else:
                            outcome.failed[job.digest] = (f"{job.label}: its worker died {ATTEMPTS} times "
                                                          f"({type(exc).__name__})")
                            bar.update(1)
                        probes[actor.names.remote()] = actor  # Ray restarts it (max_restarts), or it is gone
                        continue
                    outcome.records[job.digest] = record
                    outcome.count(record, state)
                    bar.update(1)
                    idle.append(actor)
                status()
            for job in queue:  # no worker left for them
                outcome.failed[job.digest] = f"{job.label}: no worker left"
        finally:
            bar.close()
            if overheads:
                self.timing["per_video_overhead_seconds"] = sum(overheads) / len(overheads)


def _cause(exc) -> str:
    cause = getattr(exc, "cause", None)
    if cause is not None:
        return f"{type(cause).__name__}: {' '.join(str(cause).split())[:200]}"
    return " ".join(str(exc).split())[-200:]
