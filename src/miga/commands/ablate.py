"""``miga ablate`` and ``miga compare``: rows of configs (:mod:`miga.ablation`) over prompts and seeds,
made and measured by the runner (:mod:`miga.runner`: resumable, in-process or on Ray, one table)."""

from __future__ import annotations

import json
import os
import shlex
import sys
import time
from typing import Sequence

from miga.ablation import (CODE_CHOICES, COMPARE_METHODS, DEFAULT_FRAMES, DEFAULT_PROMPTS, DEFAULT_SEEDS, DEFAULT_SWEEPS,
                           REFLECTION_MODES, ROWS, SWEEPS, Row, _value_text, compare_rows, select_rows)
from miga.backbones.shipped import model_names_help
from miga.common import machine, model_identity, number, parse_list as _list, read_prompt_list
from miga.config import preset
from miga.errors import MigaError

ABLATE_HELP = "run the paper's ablation and sweeps, measured"
ABLATE_DESCRIPTION = (
    "Run the rows of the paper's Table 5 (FIFO, + Stage 1, + Stage 2 = TTA, DCE alone, MIGA) and sweeps of "
    "full MIGA's reflection threshold and guide count over prompts and seeds; every video is written to "
    "an MP4 and measured from the file (VBench-Long quality metrics, shapes-world metrics for the shapes "
    "model, NFE and seconds per frame). Prints a markdown table and saves it with results.json in DIR.")
COMPARE_HELP = "run the paper's Table 1: methods side by side, measured"
COMPARE_DESCRIPTION = (
    "Run FIFO-Diffusion, FreeNoise, FreeLong, FreePCA and MIGA (each with the model's own preset) over prompts "
    "and seeds on one model with the same frame count, measured as 'miga ablate' measures (the same runner: "
    "resumable, one table). Methods the model cannot run are skipped with a note unless named in "
    "--methods.")


def add_ray_arguments(parser) -> None:
    """``--ray [ADDRESS]`` and ``--workers N``: run the videos on Ray."""
    parser.add_argument("--ray", nargs="?", const="", metavar="ADDRESS", help="run the videos on Ray: "
                        "a local cluster of this machine (no ADDRESS), 'auto' (the cluster this node belongs to) or "
                        "HOST:PORT / ray://HOST:PORT (RAY_ADDRESS is used when set); needs pip install "
                        "\"miga-video[cluster]\"")
    parser.add_argument("--workers", type=number(), metavar="N", help="Ray workers (default: one per GPU of the "
                        "cluster; without GPUs, its CPUs / --threads)")


def add_arguments(parser, command: str = "ablate") -> None:
    """``miga ablate``'s (or, with ``command="compare"``, ``miga compare``'s) options (``parser``: the
    subcommand's argparse parser)."""
    parser.add_argument("--model", default="shapes", help=f"{model_names_help()} ('miga models' says what each is), a "
                        ".safetensors file from 'miga train-toy', gaussian or gaussian-clip")
    if command == "compare":
        parser.add_argument("--methods", metavar="LIST", help=f"comma-separated: {', '.join(COMPARE_METHODS)} "
                            "(default: every one the model supports)")
        parser.add_argument("--force", action="store_true", help="run FreeNoise, FreeLong and FreePCA even when their "
                            "estimated peak memory at --frames exceeds this machine's free memory")
    else:
        _add_ablation_arguments(parser)
    _add_common_arguments(parser)


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
    parser.add_argument("--code-choices", metavar="LIST", help="code sweep values (default: all of "
                        f"{','.join(CODE_CHOICES)}: the paper's preset, each choice of the authors' released code "
                        "alone, and all of the Wan2.1 or VideoCrafter2 code's together; docs/reference.md)")


def _add_common_arguments(parser) -> None:
    parser.add_argument("--prompt", dest="prompt_list", action="append", default=[], metavar="TEXT",
                        help="a prompt (one video per prompt and seed); repeat for several")
    parser.add_argument("--prompts", metavar="FILE", help="a file of prompts, one per line (blank lines and "
                        "lines starting with # are ignored); default: a built-in set for the model")
    parser.add_argument("--seeds", default=",".join(map(str, DEFAULT_SEEDS)), metavar="LIST",
                        help="comma-separated seeds (default 0,1)")
    parser.add_argument("--frames", type=number(minimum=3), default=DEFAULT_FRAMES, metavar="N",
                        help=f"frames per video (default {DEFAULT_FRAMES})")
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder: results.md, results.json and "
                        "runs/ (videos and per-run records; runs already recorded there are not repeated, and a "
                        "record is enough: videos may be deleted to save disk)")
    parser.add_argument("--recorded-only", action="store_true", help="make nothing: the table of the runs already "
                        "recorded in DIR (rows with none are left out), e.g. to read a long sweep while it runs")
    parser.add_argument("--queue-end", choices=("full", "drain"), help="how every MIGA row's zigzag queue ends: full "
                        "(the default: a fresh chunk on every pass to the end) or drain (the last latents in a "
                        "shrinking queue, as miga made them before December 2026: the records of docs/runs)")
    parser.add_argument("--no-table", action="store_true", help="make the runs but leave DIR's results.md and "
                        "results.json as they are, e.g. to fill a big table one prompt at a time; the full command "
                        "with --recorded-only then writes the table of every run")
    parser.add_argument("--height", type=number(), help="frame height (Gaussian worlds)")
    parser.add_argument("--width", type=number(), help="frame width (Gaussian worlds)")
    parser.add_argument("--window-batch", type=number(), metavar="B", help="windows per model call where allowed")
    parser.add_argument("--threads", type=number(), help="torch and OpenCV threads (default: their own choice)")
    parser.add_argument("--dino", metavar="PATH", help="DINO ViT-B/16 folder for S.C. (default: the offline proxy)")
    parser.add_argument("--clip", metavar="PATH", help="CLIP ViT-B/32 folder for B.C. (default: the offline proxy)")
    parser.add_argument("--amt", metavar="PATH", help="AMT-S weights (amt-s.pth) for M.S. (default: the OpenCV "
                        "flow-interpolation proxy)")
    add_ray_arguments(parser)
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")



def ablate(args) -> int:
    """``miga ablate``: the Table-5 rows and sweeps through :func:`run_table`."""
    return run_table(args, _ablation_rows(args))


def _ablation_rows(args) -> list[Row]:
    """The rows ``miga ablate``'s --rows, --sweeps and sweep values ask for."""
    values = {"threshold": _list(args.thresholds, "--thresholds", float),
              "guides": _list(args.guide_counts, "--guide-counts", int),
              "reflection": _list(getattr(args, "reflection_modes", None), "--reflection-modes"),
              "code": _list(getattr(args, "code_choices", None), "--code-choices")}
    flags = (("threshold", "--thresholds"), ("guides", "--guide-counts"), ("reflection", "--reflection-modes"),
             ("code", "--code-choices"))
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

    check_outputs(args.out)
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
        supported = [Row(r.key, r.label, r.group, lambda p, make=r.make: make(p).with_(dino=os.path.abspath(args.dino)))
                     if r.key == "scalingnoise" else r for r in supported]
    return run_table(args, supported, backbone=backbone)




def plan(rows: Sequence[Row], preset_name: str, native_frames: int, prompts: Sequence[str], seeds: Sequence[int],
         frames: int, model_id: str, size: dict, window_batch: int | None = None,
         queue_end: str | None = None) -> tuple[dict, list]:
    """Each row's config (validated) and the distinct jobs (rows with the same config share them); ``queue_end``
    applies to the MIGA rows."""
    from miga.config import MIGAConfig
    from miga.runner.jobs import make_job, merge

    configs = {}
    for row in rows:
        try:
            cfg = row.config(preset_name).with_(window_batch=window_batch)
            if isinstance(cfg, MIGAConfig):
                cfg = cfg.with_(queue_end=queue_end)
            cfg.validate(native_frames)
        except MigaError as exc:
            raise MigaError(f"row {row.key}: {exc}") from None
        configs[row.key] = cfg
    jobs = [make_job(row.key, configs[row.key], i, prompt, seed, frames, model_id, size)
            for row in rows for i, prompt in enumerate(prompts) for seed in seeds]
    return configs, merge(jobs)


def recorded(out: str, rows: Sequence[Row], jobs: list, meters) -> tuple[list[Row], list]:
    """``--recorded-only``: the jobs already recorded in ``out`` (their videos may be gone) and the rows that
    have any; refused in one line when there are none."""
    from miga.runner.jobs import finished

    done = [j for j in jobs if finished(out, j, meters.names, need_video=False,
                                        need_identity=bool(meters.identity)) is not None]
    if not done:
        raise MigaError(f"--recorded-only: no run of this command is recorded in {os.path.join(out, 'runs')} yet; "
                        "drop --recorded-only to make them")
    keys = {k for j in done for k in j.rows}
    return [r for r in rows if r.key in keys], done


def check_full_sequence_memory(backbone, configs: dict, frames: int, prompt: str, *, force: bool = False) -> None:
    """Refuse (one line, before any run) a full-sequence method (FreeNoise, FreeLong, FreePCA) whose estimated peak
    at ``frames`` exceeds this machine's free memory, as ``miga generate`` does, unless ``force`` (``--force``)."""
    from miga.pipeline import is_full_sequence, latents_for_frames

    full = {key: cfg for key, cfg in configs.items() if is_full_sequence(cfg)}
    if not full:
        return
    from miga.baselines.methods import check_memory

    cond, latents = backbone.encode_prompt(prompt), latents_for_frames(backbone, frames)
    for key, cfg in full.items():
        try:
            check_memory(backbone, cfg, latents, cond, force=force)
        except MigaError as exc:
            raise MigaError(f"row {key}: {exc} (--force runs every row anyway)") from None


def check_outputs(out: str) -> None:
    """The output folder and the files the table goes to, before any work (missing parents are created)."""
    from miga.common import check_output
    from miga.video import check_new_folder

    check_new_folder(out, "--out")
    if os.path.isdir(out):
        for name in ("results.md", "results.json"):
            check_output(os.path.join(out, name))


def ray_choice(args) -> tuple[bool, str | None]:
    """Whether to run on Ray (``--ray``) and where; refused in one line without ray installed."""
    if args.ray is None:
        return False, None
    from miga.runner.execute import RAY_HINT, ray_available

    if not ray_available():
        raise MigaError(f"--ray needs Ray, which is not installed; {RAY_HINT}")
    return True, args.ray or None  # no ADDRESS: RAY_ADDRESS, else a local cluster


def run_table(args, rows: Sequence[Row], backbone=None) -> int:
    """Plan, check everything, run (resuming; in-process or on Ray), write results.md / results.json: the
    runner of ``miga ablate`` and ``miga compare``."""
    import torch

    from miga.pipeline import load_backbone
    from miga.runner.execute import WorkerSpec, execute, make_meters
    from miga.runner.table import aggregate, identity_summary, markdown
    from miga.video import atomic_write_text

    check_outputs(args.out)
    if getattr(args, "no_table", False) and getattr(args, "recorded_only", False):
        raise MigaError("--no-table makes runs without a table and --recorded-only a table without runs; give one")
    seeds = _list(args.seeds, "--seeds", int)
    if not seeds:
        raise MigaError("--seeds: give at least one seed")
    if args.prompts and args.prompt_list:
        raise MigaError("give prompts either with --prompt or with --prompts FILE, not both")
    prompts = read_prompt_list(args.prompts) if args.prompts else list(args.prompt_list)
    if any(not p.strip() for p in prompts):
        raise MigaError("a prompt is empty; give a non-empty prompt text")
    use_ray, address = ray_choice(args)
    if args.workers is not None and not use_ray:
        raise MigaError("--workers applies to --ray")
    if args.threads:
        from miga.evaluation.interpolation import import_cv2

        torch.set_num_threads(args.threads)
        import_cv2().setNumThreads(args.threads)  # the motion-smoothness flow
    load = {"model": args.model, "height": args.height, "width": args.width}
    if backbone is None:
        backbone = load_backbone(**load)
    world = backbone.name == "shapes"
    if not prompts:
        prompts = list(DEFAULT_PROMPTS["shapes" if world else "gaussian"])
    if len(set(prompts)) != len(prompts):
        raise MigaError("a prompt is given twice")
    for p in prompts:  # a prompt the model refuses fails before any run
        backbone.encode_prompt(p)
    spec = WorkerSpec(load, args.out, args.dino, args.clip, args.amt, args.threads, need_video=False,
                      backbone=backbone)
    meters = spec.meters = make_meters(spec, backbone)
    size = {"height": args.height, "width": args.width}
    preset_name = backbone.default_preset
    model_id = model_identity(args.model)
    configs, jobs = plan(rows, preset_name, backbone.native_frames, prompts, seeds, args.frames, model_id, size,
                         args.window_batch, getattr(args, "queue_end", None))
    planned = len(jobs)
    planned_rows = [r.key for r in rows]
    if getattr(args, "recorded_only", False):
        rows, jobs = recorded(args.out, rows, jobs, meters)
    check_full_sequence_memory(backbone, configs, args.frames, prompts[0], force=getattr(args, "force", False))
    os.makedirs(args.out, exist_ok=True)
    command = "miga " + shlex.join(getattr(args, "argv", None) or sys.argv[1:])
    try:
        outcome = execute(jobs, spec, use_ray=use_ray, ray_address=address, workers=args.workers,
                          progress=not args.no_progress, desc=args.command, names=meters.names,
                          identity=meters.identity is not None)
    except KeyboardInterrupt:
        print(f"miga: interrupted; finished runs are kept in {os.path.join(args.out, 'runs')}; run the same "
              "command to resume", file=sys.stderr)
        return 130
    if outcome.added:
        print(f"miga: identity drift added to {outcome.added} run(s) recorded without it"
              + (f" (their latents generated again for {outcome.regenerated})" if outcome.regenerated else ""),
              file=sys.stderr)
    if outcome.failed:
        for line in list(outcome.failed.values())[:5]:
            print(f"miga: failed: {line}", file=sys.stderr)
        raise MigaError(f"{len(outcome.failed)} of {len(jobs)} run(s) failed; the others are kept in "
                        f"{os.path.join(args.out, 'runs')}; run the same command to retry")
    records = outcome.records
    if getattr(args, "no_table", False):
        print(f"miga: {len(jobs)} run(s) in {os.path.join(args.out, 'runs')} ({outcome.done} already done); "
              "results.md and results.json left as they were (--no-table)", file=sys.stderr)
        return 0
    alone = sum(not os.path.isfile(os.path.join(args.out, r["video"])) for r in records.values())
    if alone:
        print(f"miga: {alone} run(s) counted from their records alone (their videos were deleted)", file=sys.stderr)
    first = records[jobs[0].digest]
    h, w = first["height"], first["width"]
    result = {"command": command, "created": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "model": args.model,
              "model_id": model_id, "preset": preset_name, "native_frames": backbone.native_frames,
              "frame_size": f"{w}x{h}", "fps": float(backbone.fps), "frames": args.frames, "prompts": prompts,
              "seeds": seeds, "planned_runs": planned,
              "missing_rows": [k for k in planned_rows if k not in {r.key for r in rows}], "machine": machine(torch.get_num_threads()),
              "extractors": meters.names,
              "proxy": meters.proxies, "runs": len(jobs), "skipped": outcome.done, "executor": outcome.where,
              "rows": aggregate(rows, configs, jobs, records, backbone.native_frames)}
    result["identity"] = identity_summary(result["rows"], args.frames)
    text = markdown(result)
    atomic_write_text(os.path.join(args.out, "results.md"), text)
    atomic_write_text(os.path.join(args.out, "results.json"), json.dumps(result, indent=1) + "\n")
    print(text)
    print(f"wrote {os.path.join(args.out, 'results.md')} and results.json: {len(jobs)} run(s), {outcome.done} already "
          "done", file=sys.stderr)
    return 0
