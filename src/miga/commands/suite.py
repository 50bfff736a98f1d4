"""``miga suite``: every (prompt or prompt schedule) x method x seed of a suite as one resumable video, made
in-process or on Ray (:mod:`miga.runner`), then measured into one table (per prompt, per method with 95 %
bootstrap intervals, per VBench dimension where the suite has tags)."""

from __future__ import annotations

import json
import os
import shlex
import sys
import time

from miga.backbones.shipped import model_names_help
from miga.common import check_output, machine, model_identity, number, parse_list
from miga.errors import MigaError

HELP = "run a prompt suite (VBench's, a prompt file, or prompt schedules), locally or on a Ray cluster"
DESCRIPTION = (
    "Make one video per prompt (or prompt-schedule file), method and seed of a suite, each in its own resumable "
    "run dir under OUT/runs, and measure them all into OUT/results.md and results.json (per prompt, per method "
    "with 95 % bootstrap intervals, per VBench dimension). On Ray (pip install \"miga-video[cluster]\"): a local "
    "cluster by default, or --ray auto / HOST:PORT / RAY_ADDRESS; one worker per GPU loads the model once; a "
    "worker that dies has its video continued from its last checkpoint on another. Running the same command "
    "again skips finished videos and continues unfinished ones.")
BUILTIN = ("shapes", "gaussian", "gaussian-clip")
SAFE = ("the prompt selection", "--seeds", "--ray/--workers", "the extractors", "--checkpoint-every")
SUITE_FILE = "suite.json"


def add_arguments(parser) -> None:
    """``miga suite``'s options."""
    from miga.suites import SUITES

    parser.add_argument("suite", metavar="SUITE", help=f"{', '.join(SUITES)} (shipped), a prompt file (one "
                        "prompt per line) or a folder of prompt-schedule files (*.txt, miga generate --prompts format)")
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder: runs/, results.md, results.json")
    parser.add_argument("--model", default="shapes", help=f"{model_names_help()} ('miga models' says what each is), "
                        "a .safetensors file from 'miga train-toy', gaussian, gaussian-clip, or a diffusers folder "
                        "(as miga generate --model)")
    parser.add_argument("--methods", default="miga", metavar="LIST", help="comma-separated methods, each with the "
                        "model's preset: miga, fifo, scalingnoise, freenoise, freelong, freepca (default miga)")
    parser.add_argument("--seeds", default="0", metavar="LIST", help="comma-separated seeds: videos per prompt "
                        "(default 0; VBench samples 5: 0,1,2,3,4)")
    parser.add_argument("--frames", type=number(minimum=3), default=128, metavar="N", help="frames per video "
                        "(default 128)")
    parser.add_argument("--dimension", metavar="LIST", help="only prompts tagged with these VBench dimensions")
    parser.add_argument("--count", type=number(), metavar="N", help="only the first N prompts (after the other "
                        "selections)")
    parser.add_argument("--subset", type=float, metavar="FRACTION", help="a random fraction of the prompts, e.g. "
                        "0.5 (the paper's ablation subset)")
    parser.add_argument("--subset-seed", type=int, default=0, metavar="S", help="seed of --subset (default 0)")
    parser.add_argument("--ray", metavar="ADDRESS", help="a Ray cluster: 'auto' (the one this node belongs to), "
                        "HOST:PORT or ray://HOST:PORT (default: RAY_ADDRESS, else a local cluster of this machine)")
    parser.add_argument("--workers", type=number(), metavar="N", help="Ray workers (default: one per GPU of the "
                        "cluster; without GPUs, its CPUs / --threads)")
    parser.add_argument("--in-process", action="store_true", help="no Ray: the videos one after another here")
    parser.add_argument("--height", type=number(), help="frame height")
    parser.add_argument("--width", type=number(), help="frame width")
    parser.add_argument("--device", help="where the model runs (default: as miga generate)")
    parser.add_argument("--dtype", choices=("bfloat16", "float16", "float32"), help="diffusers models' precision")
    parser.add_argument("--window-batch", type=number(), metavar="B", help="windows per model call where allowed")
    parser.add_argument("--checkpoint-every", type=number(), metavar="N", help="frames between checkpoints of "
                        "each video (default 16)")
    parser.add_argument("--threads", type=number(), help="torch threads per worker (default: 1 on Ray; torch's "
                        "choice in-process)")
    parser.add_argument("--dino", metavar="PATH", help="DINO ViT-B/16 folder for S.C. (default: the offline proxy)")
    parser.add_argument("--clip", metavar="PATH", help="CLIP ViT-B/32 folder for B.C. (default: the offline proxy)")
    parser.add_argument("--amt", metavar="PATH", help="AMT-S weights for M.S. (default: the OpenCV proxy)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def _inputs(args):
    """Everything checked before any work: the suite, the selection, the methods, the seeds, the outputs."""
    from miga import suites
    from miga.ablation import COMPARE_METHODS
    from miga.video import check_new_folder

    methods = parse_list(args.methods, "--methods")
    if not methods:
        raise MigaError("--methods: give at least one method")
    unknown = [m for m in methods if m not in COMPARE_METHODS]
    if unknown:
        raise MigaError(f"unknown method {unknown[0]!r}; choose from {', '.join(COMPARE_METHODS)}")
    seeds = parse_list(args.seeds, "--seeds", int)
    if not seeds:
        raise MigaError("--seeds: give at least one seed")
    kind, entries = suites.load(args.suite, args.frames)
    entries = suites.select(entries, parse_list(args.dimension, "--dimension"), args.count, args.subset,
                            args.subset_seed)
    check_new_folder(args.out, "--out")
    for name in ("results.md", "results.json", SUITE_FILE):
        if os.path.isdir(args.out):
            check_output(os.path.join(args.out, name))
    if args.in_process and (args.ray or args.workers):
        raise MigaError("--in-process runs here; leave out --ray and --workers")
    for path, flag in ((args.dino, "--dino"), (args.clip, "--clip"), (args.amt, "--amt")):
        if path is not None and not os.path.exists(path):
            raise MigaError(f"{flag} {path} does not exist")
    return kind, entries, methods, seeds


def _settings(args, model: dict, methods: list[str]) -> tuple[dict, dict]:
    """Each method's config (the model's preset) and what decides the videos (recorded in suite.json)."""
    from dataclasses import asdict

    from miga.config import preset

    configs = {}
    for m in methods:
        try:
            cfg = preset(model["default_preset"], m).with_(window_batch=args.window_batch)
            if m == "scalingnoise" and args.dino:  # its reward uses the same DINO as the S.C. metric
                cfg = cfg.with_(dino=os.path.abspath(args.dino))
            cfg.validate(model["native_frames"])
        except MigaError as exc:
            raise MigaError(f"method {m}: {exc}") from None
        configs[m] = cfg
    decides = {"model_id": model_identity(args.model), "height": args.height, "width": args.width,
               "frames": args.frames, "configs": {m: {"method": type(c).__name__, **asdict(c)}
                                                  for m, c in configs.items()}}
    return configs, json.loads(json.dumps(decides))


def _check_suite_file(out: str, decides: dict) -> dict | None:
    """The folder's suite.json; refused in one line if it describes other videos (other than by adding
    methods)."""
    path = os.path.join(out, SUITE_FILE)
    try:
        with open(path, encoding="utf-8") as fh:
            stored = json.load(fh)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise MigaError(f"{path} is damaged ({exc}); use another --out") from None
    old = stored.get("decides", {})
    for key in ("model_id", "height", "width", "frames"):
        if old.get(key) != decides[key]:
            raise MigaError(f"{out} holds a suite of other videos: {key} differs ({json.dumps(old.get(key))} there, "
                            f"{json.dumps(decides[key])} now); use another --out (safe to change: {', '.join(SAFE)})")
    for m, cfg in decides["configs"].items():
        if m in old.get("configs", {}) and old["configs"][m] != cfg:
            field = next((k for k in cfg if old["configs"][m].get(k) != cfg.get(k)), "config")
            raise MigaError(f"{out} holds a suite of other videos: method {m}'s {field} differs "
                            f"({json.dumps(old['configs'][m].get(field))} there, {json.dumps(cfg.get(field))} now); "
                            f"use another --out (safe to change: {', '.join(SAFE)})")
    return stored


def run(args) -> int:
    """``miga suite``."""
    from miga.runner.execute import RAY_HINT, RayPool, Worker, WorkerSpec, describe, ray_available

    kind, entries, methods, seeds = _inputs(args)
    use_ray = not args.in_process
    if use_ray and not ray_available():
        if args.ray or args.workers:
            raise MigaError(f"--ray/--workers need Ray, which is not installed; {RAY_HINT}")
        print(f"miga: Ray is not installed: the videos run one after another here; {RAY_HINT}", file=sys.stderr)
        use_ray = False
    load = {"model": args.model, "height": args.height, "width": args.width, "device": args.device,
            "dtype": args.dtype}
    load = {k: v for k, v in load.items() if v is not None or k in ("height", "width")}
    spec = WorkerSpec(load, os.path.abspath(args.out), args.dino, args.clip, args.amt, args.threads,
                      args.checkpoint_every)
    local = None  # the model loaded here: the built-in ones always (cheap; prompts checked), any in-process
    if not use_ray or args.model in BUILTIN or args.model.endswith(".safetensors"):
        local = Worker(spec)
        for e in entries:  # a prompt the model refuses fails before any video
            for text in ([e.prompt] if isinstance(e.prompt, str) else [p for _, p in e.prompt]):
                try:
                    local.backbone.encode_prompt(text)
                except MigaError as exc:
                    raise MigaError(f"prompt {e.name} of the suite: {exc}") from None
    t0 = time.perf_counter()
    pool = None
    try:
        if local is not None:
            model = describe(local.backbone, local.meters)
        else:  # a model only the workers load: as the folder recorded it, or as the first worker says
            model = _recorded_model(args.out, model_identity(args.model))
            if model is None:
                pool = RayPool(spec, args.ray, args.workers, len(entries) * len(methods) * len(seeds))
                model = pool.describe()

        def start_pool(count: int):
            nonlocal pool
            if pool is None:
                pool = RayPool(spec, args.ray, args.workers, count)
            return pool

        return _run(args, kind, entries, methods, seeds, model, local, start_pool if use_ray else None, t0)
    finally:
        if pool is not None:
            pool.close()


def _recorded_model(out: str, model_id: str) -> dict | None:
    try:
        with open(os.path.join(out, SUITE_FILE), encoding="utf-8") as fh:
            stored = json.load(fh)
        return stored["model"] if stored["decides"]["model_id"] == model_id else None
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _run(args, kind, entries, methods, seeds, model, local, start_pool, t0) -> int:
    import torch

    from miga.runner.execute import Outcome, run_here
    from miga.runner.jobs import finished, make_job, merge
    from miga.runner.table import suite_markdown, suite_table
    from miga.video import atomic_write_text

    configs, decides = _settings(args, model, methods)
    stored = _check_suite_file(args.out, decides) if os.path.isdir(args.out) else None
    size = {"height": args.height, "width": args.width}
    jobs = merge([make_job(m, configs[m], i, e.prompt, seed, args.frames, decides["model_id"], size,
                           tags={"entry": e.name, "dimensions": list(e.dimensions)})
                  for i, e in enumerate(entries) for m in methods for seed in seeds])
    outcome = Outcome(where="Ray" if start_pool is not None else "in-process")
    todo = []
    for job in jobs:  # done on disk: never sent out
        done = finished(args.out, job, model["names"], need_identity=bool(model["identity"]))
        if done is not None:
            outcome.records[job.digest] = done
            outcome.done += 1
        else:
            todo.append(job)
    pool = start_pool(len(todo)) if todo and start_pool is not None else None  # connects: before any write
    os.makedirs(os.path.join(args.out, "runs"), exist_ok=True)
    record = {"format": "miga-suite/1", "decides": decides, "model": model,
              "methods": sorted(set(methods) | set((stored or {}).get("methods", [])))}
    if stored is not None:
        record["decides"]["configs"] = {**stored["decides"].get("configs", {}), **decides["configs"]}
    atomic_write_text(os.path.join(args.out, SUITE_FILE), json.dumps(record, indent=1) + "\n")
    try:
        if pool is not None:
            pool.run(todo, outcome, len(jobs), not args.no_progress, "suite")
        elif todo:
            run_here(local, todo, outcome, len(jobs), not args.no_progress, "suite")
    except KeyboardInterrupt:
        print(f"miga: interrupted; finished videos are kept in {os.path.join(args.out, 'runs')}, unfinished ones at "
              "their last checkpoint; run the same command to continue", file=sys.stderr)
        return 130
    seconds = time.perf_counter() - t0
    ok = [j for j in jobs if j.digest in outcome.records]
    threads = args.threads or (1 if start_pool is not None else torch.get_num_threads())
    result = {"command": "miga " + shlex.join(getattr(args, "argv", None) or sys.argv[1:]),
              "created": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "suite": args.suite, "suite_kind": kind,
              "model": args.model, "model_id": decides["model_id"], "preset": model["default_preset"],
              "native_frames": model["native_frames"], "fps": model["fps"], "frames": args.frames,
              "methods": methods, "seeds": seeds, "prompts": len(entries), "videos": len(jobs),
              "made": outcome.made, "skipped": outcome.done, "failed": list(outcome.failed.values()),
              "retried": outcome.retried, "executor": outcome.where, "wall_seconds": seconds,
              "ray": outcome.timing or None,
              "machine": machine(threads), "extractors": model["names"], "proxy": model["proxies"],
              **suite_table(entries, methods, ok, outcome.records)}
    named = _vbench_names(args.out, entries, seeds, jobs, outcome.records)
    if named:
        result["vbench_videos"] = named
    text = suite_markdown(result)
    atomic_write_text(os.path.join(args.out, "results.md"), text)
    atomic_write_text(os.path.join(args.out, "results.json"), json.dumps(result, indent=1) + "\n")
    print(text)
    print(f"wrote {os.path.join(args.out, 'results.md')} and results.json: {len(jobs)} video(s), {outcome.made} made "
          f"now, {outcome.done} already done, {len(outcome.failed)} failed ({outcome.where}, {seconds:.1f} s)",
          file=sys.stderr)
    if outcome.failed:
        for line in list(outcome.failed.values())[:3]:
            print(f"miga: failed: {line}", file=sys.stderr)
        return 1
    return 0


def _vbench_names(out: str, entries, seeds, jobs, records) -> str | None:
    """VBench's suites: each finished video also as ``OUT/vbench/METHOD/PROMPT-K.mp4`` (K: the seed's place
    in --seeds; hard links), the names VBench's own evaluator reads (``vbench evaluate --videos_path``)."""
    if not any(e.vbench_name for e in entries):
        return None
    folder = os.path.join(out, "vbench")
    for job in jobs:
        record = records.get(job.digest)
        entry = entries[job.prompt_index]
        if record is None or entry.vbench_name is None:
            continue
        for method in job.rows:
            target = os.path.join(folder, method, f"{entry.vbench_name}-{seeds.index(job.seed)}.mp4")
            os.makedirs(os.path.dirname(target), exist_ok=True)
            source = os.path.join(out, record["video"])
            if os.path.exists(target):
                if os.path.samefile(source, target):
                    continue
                os.remove(target)
            try:
                os.link(source, target)
            except OSError:  # a file system without hard links
                os.symlink(os.path.relpath(source, os.path.dirname(target)), target)
    return folder
