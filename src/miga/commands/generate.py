"""``miga generate``: one long video (optionally a resumable run, :mod:`miga.runs`)."""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from dataclasses import asdict

from miga.backbones.shipped import model_names_help
from miga.common import ArgParser, number
from miga.errors import MigaError

METHODS = ("miga", "fifo", "scalingnoise", "freenoise", "freelong", "freepca")
FULL_SEQUENCE = ("freenoise", "freelong", "freepca")  # all N latents at once (miga.engine.full_sequence)
MIGA_ONLY = {  # flag -> config field; refused with any other --method
    "zigzag_width": "--zigzag-width", "stage2_steps": "--stage2-steps", "guides": "--guides",
    "reflection_threshold": "--reflection-threshold", "stride": "--stride", "stage2_mode": "--stage2-mode",
    "guide_selection": "--guide-selection", "reflect_during": "--reflect-during", "queue_end": "--queue-end",
    "refine_rounds": "--refine-rounds", "refine_level": "--refine-level",
}


HELP = "generate a long video"
DESCRIPTION = ("Generate a long video. Frames are written as they finish; the file gets its final name only when "
               "the run completes.")


def parse_threshold(text: str):
    """``--reflection-threshold``: ``auto`` (calibrated on the video's own scores) or a number >= 0."""
    if text == "auto":
        return text
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number >= 0 or 'auto', got {text!r}") from None
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be >= 0 or 'auto', got {text}")
    return value


def add_arguments(parser) -> None:
    """``miga generate``'s options."""
    parser.add_argument("prompt", nargs="?", help="the prompt (or use --prompt / --prompts)")
    parser.add_argument("--prompt", dest="prompt_list", action="append", default=[], metavar="TEXT",
                        help="a prompt; repeat it for prompts that follow each other, evenly split along the video")
    parser.add_argument("--prompts", metavar="FILE", help="a prompt schedule file: one prompt per line, optionally "
                        "'FRAME: prompt' to say where each starts (see README)")
    parser.add_argument("--model", default="shapes", help=f"{model_names_help()} ('miga models' says what each is), a .safetensors file from 'miga train-toy', gaussian (exact Gaussian world), gaussian-clip (the same, "
                        "denoised like a one-level foundation model), VideoCrafter2's model.ckpt (or a folder holding it and "
                        "tokenizer/, or its diffusers conversion), or a local diffusers folder of Wan2.1-T2V, "
                        "SkyReels-V2-DF or a UNet3D text-to-video model (ModelScope, Zeroscope; see README)")
    parser.add_argument("--device", help="where the model runs, e.g. cuda, cuda:1, cpu (default: cuda if available "
                        "for diffusers models, else cpu)")
    parser.add_argument("--dtype", choices=("bfloat16", "float16", "float32"), help="diffusers models: transformer and "
                        "text-encoder precision (default bfloat16 on a GPU, float32 on the CPU; the VAE stays float32)")
    parser.add_argument("--window-latents", type=number(minimum=2), metavar="F", help="diffusers models: latent frames "
                        "per model window, f_0 (default: the training length, 21 for Wan2.1 = 81 frames, 16 for UNet3D)")
    parser.add_argument("--model-batch", type=number(), metavar="B", help="diffusers models: samples per transformer "
                        "call (default: all; 1 runs classifier-free guidance as two passes, for less GPU memory)")
    parser.add_argument("--ddim-rescale", action="store_true", help="VideoCrafter2: apply its training-time latent "
                        "scaling (use_scale) in every DDIM step, as its own sampler does; off by default, as in "
                        "FIFO-Diffusion's and MIGA's code and the paper's numbers")
    parser.add_argument("--method", choices=METHODS, default="miga", help="miga (default), fifo, scalingnoise (FIFO "
                        "with a beam search over each new tail noise, k=5 candidates, m=3 beams: about 4-5x FIFO's model "
                        "calls; every model), or a full-sequence baseline: freenoise, freelong, freepca (all frames "
                        "denoised together, memory grows with --frames; models with temporal attention: "
                        "VideoCrafter2, UNet3D, built-in model v2; freenoise also Wan2.1/SkyReels as window fusion)")
    parser.add_argument("--dino", metavar="PATH", help="scalingnoise: DINO ViT-B/16 for its reward, a transformers folder "
                        "(config.json and model.safetensors, e.g. facebook/dino-vitb16); default: the offline proxy "
                        "extractor (miga eval's), labelled as a proxy in --stats")
    parser.add_argument("--force", action="store_true", help="freenoise/freelong/freepca: run even when the estimated "
                        "peak memory exceeds the device's free memory")
    parser.add_argument("--preset", help="preset: videocrafter2, modelscope, wan2.1, skyreels-v2-df, gaussian, shapes "
                        "(default: the model's own)")
    parser.add_argument("--frames", type=number(), default=128, metavar="N", help="output frames (default 128)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="miga.mp4", metavar="FILE.mp4", help="output video (default miga.mp4)")
    parser.add_argument("--stats", metavar="FILE.json", help="write run statistics as JSON")
    parser.add_argument("--preview", metavar="FILE.png", help="write a contact sheet: a PNG grid of up to 24 frames "
                        "spread evenly over the video, each labelled with its index (written when the video completes)")
    parser.add_argument("--save-latents", nargs="?", const="", metavar="FILE.safetensors", help="also write the "
                        "finished latents [N, C, H, W] (streamed, renamed when complete) for 'miga eval' (default FILE: "
                        "OUT with .latents.safetensors instead of .mp4, where miga eval finds it)")
    parser.add_argument("--steps", type=number(), metavar="T", help="denoising steps T (FIFO: a multiple of f_0)")
    parser.add_argument("--height", type=number(), help="frame height in pixels")
    parser.add_argument("--width", type=number(), help="frame width in pixels")
    parser.add_argument("--guidance-scale", type=float, help="classifier-free guidance scale")
    parser.add_argument("--zigzag-width", type=number(), metavar="L", help="L_zig; 1 gives FIFO's ladder")
    parser.add_argument("--stage2-steps", type=number(minimum=0), metavar="K2", help="K2; 0 disables Stage 2")
    parser.add_argument("--guides", type=number(minimum=0), metavar="M", help="m_guid; 0 disables long-range guidance")
    parser.add_argument("--stride", type=number(), metavar="S", help="sliding-window stride s")
    parser.add_argument("--guide-selection", choices=("uniform", "nearest"))
    parser.add_argument("--stage2-mode", choices=("stream", "batch"))
    parser.add_argument("--reflection-threshold", type=parse_threshold, metavar="D", help="delta_adju: a score drop larger "
                        "than D triggers a search; 'auto': a drop unusual for this video's own scores (the same meaning "
                        "on every backbone)")
    parser.add_argument("--reflect-during", choices=("all", "fill"), help="self-reflection on every Stage-1 pass "
                        "(the paper) or only while the queue fills (the released code)")
    parser.add_argument("--no-reflection", action="store_true", help="disable self-reflection")
    parser.add_argument("--queue-end", choices=("full", "drain"), help="full: a fresh chunk enters the zigzag queue on "
                        "every pass to the end, so the last latents are made like the others (the paper, default); "
                        "drain: the queue empties for the last latents")
    parser.add_argument("--refine-rounds", type=number(minimum=0), metavar="R", help="the released codes' refinement: "
                        "re-noise the finished latents to --refine-level and run the unified passes again, R times "
                        "(default 0, as in the paper)")
    parser.add_argument("--refine-level", type=number(), metavar="K", help="the level the refinement re-noises to "
                        "(default K2, the Stage-2 boundary)")
    parser.add_argument("--window-batch", type=number(), metavar="B", help="windows per model call where allowed")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--run-dir", metavar="DIR", help="keep the run's whole state in DIR, checkpointed every "
                        "--checkpoint-every frames, so that a killed or stopped run continues where it was (run the same "
                        "command again, or --resume DIR); OUT.partial then always plays up to the last checkpoint")
    parser.add_argument("--checkpoint-every", type=number(), metavar="N", help="output frames between checkpoints "
                        "with --run-dir (default 16)")
    parser.add_argument("--resume", metavar="DIR", help="continue the run saved in DIR by --run-dir; needs no other "
                        "options (--no-progress, --stats, --preview and --checkpoint-every may be given)")


def _outputs(args) -> str | None:
    """Check every output path before any work; return the ``--save-latents`` file (or None)."""
    from miga.preview import check_preview_path
    from miga.video import check_new_folder, check_writable

    if args.run_dir is not None:
        check_new_folder(args.run_dir, "--run-dir")
    if not args.out.lower().endswith(".mp4"):
        raise MigaError(f"--out must name an .mp4 file, got {args.out}")
    for path in (args.out, args.stats):
        if path:
            check_writable(path)
    if args.preview:
        check_preview_path(args.preview)
    return _latents_path(args)


def config_from_args(args, backbone):
    """The method config ``miga generate`` runs for its parsed ``args`` on ``backbone`` (also used by ``miga app``)."""
    from miga.config import FIFOConfig, preset

    if args.method in FULL_SEQUENCE:
        from miga.baselines.methods import check_backbone

        check_backbone(backbone, args.method)  # before the preset: say which models work
        if args.run_dir is not None:
            raise MigaError(f"--run-dir does not apply to --method {args.method}: a full-sequence method finishes no "
                            f"frame before its last step, so there is nothing to checkpoint frame by frame")
    if getattr(args, "dino", None) is not None and args.method != "scalingnoise":
        raise MigaError("--dino only applies to --method scalingnoise (the embedder of its reward); miga eval takes "
                        "its own --dino")
    cfg = preset(args.preset or backbone.default_preset, args.method)
    if args.method == "scalingnoise" and getattr(args, "dino", None) is not None:
        cfg = cfg.with_(dino=os.path.abspath(args.dino))
    common = dict(guidance_scale=args.guidance_scale, window_batch=args.window_batch)
    if args.method in FULL_SEQUENCE:
        given = [flag for field, flag in MIGA_ONLY.items() if getattr(args, field) is not None]
        if args.no_reflection:
            given.append("--no-reflection")
        if given:
            raise MigaError(f"{', '.join(given)} only apply to --method miga")
        return cfg.with_(steps=args.steps, **common)
    if getattr(args, "force", False):
        raise MigaError("--force only applies to --method freenoise, freelong or freepca (their memory check)")
    if isinstance(cfg, FIFOConfig):
        given = [flag for field, flag in MIGA_ONLY.items() if getattr(args, field) is not None]
        if args.no_reflection:
            given.append("--no-reflection")
        if given:
            raise MigaError(f"{', '.join(given)} only apply to --method miga")
        if args.steps is not None:
            f0 = backbone.native_frames
            if args.steps % f0:
                raise MigaError(f"FIFO needs --steps to be a multiple of the model window f_0={f0} (T = f_0 * n); "
                                f"got {args.steps}")
            common["partitions"] = args.steps // f0
        return cfg.with_(**common)
    for flag, value in (("--reflection-threshold", args.reflection_threshold),
                        ("--reflect-during", args.reflect_during)):
        if args.no_reflection and value is not None:
            raise MigaError(f"{flag} sets how self-reflection runs, which --no-reflection turns off; give one of them")
    fields = {field: getattr(args, field) for field in MIGA_ONLY}
    if fields["reflection_threshold"] == "auto":
        fields.update(reflection_threshold=None, reflection_calibration="auto")
    elif fields["reflection_threshold"] is not None:
        fields["reflection_calibration"] = "fixed"
    cfg = cfg.with_(steps=args.steps, **fields, **common)
    if args.no_reflection:
        cfg = cfg.with_(reflection=False)
    return cfg


def _prompts(args):
    from miga.engine.prompts import parse_prompt_file
    from miga.pipeline import prompt_schedule

    given = [p for p in [args.prompt] + args.prompt_list if p is not None]
    if args.prompts and given:
        raise MigaError("give prompts either as text or with --prompts FILE, not both")
    if args.prompts:
        try:
            with open(args.prompts, encoding="utf-8") as fh:
                text = fh.read()
        except OSError as exc:
            raise MigaError(f"cannot read prompt file {args.prompts}: {exc.strerror}") from None
        except UnicodeDecodeError:
            raise MigaError(f"prompt file {args.prompts} is not UTF-8 text") from None
        return parse_prompt_file(text, args.frames, source=args.prompts)
    if not given:
        raise MigaError("no prompt given; pass one, e.g. miga generate \"a red circle bouncing\"")
    return prompt_schedule(given, args.frames)


def _latents_path(args) -> str | None:
    """The ``--save-latents`` file (``""``: the default beside ``--out``), checked before any work."""
    if args.save_latents is None:
        return None
    from miga.evaluation.latents import default_latents_path
    from miga.video import check_writable

    path = args.save_latents or default_latents_path(args.out)
    if not path.lower().endswith(".safetensors"):
        raise MigaError(f"--save-latents must name a .safetensors file, got {path}")
    check_writable(path)
    return path


def _latent_writer(path: str, video):
    from miga.evaluation.latents import LatentWriter
    from miga.runs import latent_metadata

    return LatentWriter(path, video.num_latents, tuple(video.backbone.latent_shape), latent_metadata(video))


def _diffusers_options(args) -> dict:
    """``--window-latents``/``--model-batch``, which only diffusers models take."""
    given = {k: v for k, v in (("window_latents", args.window_latents), ("model_batch", args.model_batch),
                               ("ddim_rescale", args.ddim_rescale or None)) if v is not None}
    from miga.backbones.registry import builtin_names

    if given and (args.model in builtin_names() or args.model.endswith(".safetensors")):
        flag = "--" + next(iter(given)).replace("_", "-")
        raise MigaError(f"{flag} applies to diffusers models (a Wan2.1, SkyReels-V2, UNet3D or VideoCrafter2 "
                        f"model), not {args.model}")
    return given


def _explain_frame_rounding(video, frames: int) -> None:
    """Say how many latents a frame count needs when the VAE decodes more frames than asked (Wan: 4k+1)."""
    from miga.pipeline import frames_for_latents

    decoded = frames_for_latents(video.backbone, video.num_latents)
    if decoded != frames:
        print(f"miga: {video.backbone.name}'s causal VAE decodes k+1 latents to 4k+1 frames: {frames} frames need "
              f"{video.num_latents} latents ({decoded} frames); the last {decoded - frames} are not written",
              file=sys.stderr)


def run(args) -> int:
    import torch

    from miga.runs import RUN_FILE, read_record, recorded_threads, torch_threads

    t0 = time.perf_counter()
    if args.resume is not None:
        args = _resume_args(args)
    elif args.checkpoint_every is not None and args.run_dir is None:
        raise MigaError("--checkpoint-every needs --run-dir DIR (checkpoints are kept there)")
    if args.resume is None:
        args.model_as_given = args.model  # for messages; the run rebuilds the model from the absolute path
    args.model = _absolute_model(args.model)
    threads = None  # a run continued: with its own torch thread count, from the prompts' encoding on
    if args.run_dir is not None and os.path.isfile(os.path.join(args.run_dir, RUN_FILE)):
        threads = recorded_threads(read_record(args.run_dir))
    args.threads_before = torch.get_num_threads()
    with torch_threads(threads):
        return _generate(args, t0)


def _generate(args, t0: float) -> int:
    from miga.pipeline import LongVideo, load_backbone
    from miga.preview import ContactSheet
    from miga.video import VideoWriter, atomic_write_text, latents_tag, prompts_metadata

    latents_path = _outputs(args)
    prompts = getattr(args, "schedule", None) or _prompts(args)
    backbone = load_backbone(args.model, height=args.height, width=args.width, device=args.device,
                             dtype=args.dtype, **_diffusers_options(args))
    config = config_from_args(args, backbone)
    video = LongVideo(backbone, prompts, args.frames, config, seed=args.seed)
    _explain_frame_rounding(video, args.frames)
    memory = None
    if args.method in FULL_SEQUENCE:
        from miga.baselines.methods import check_memory

        memory = check_memory(backbone, config, video.num_latents, video._conds[0], force=getattr(args, "force", False)).total
    if args.run_dir is not None:
        return _generate_run(args, video, latents_path)
    sheet = ContactSheet(args.frames) if args.preview else None
    latents = _latent_writer(latents_path, video) if latents_path else None
    bar = _progress(args, args.frames, backbone.name)
    try:
        tags = prompts_metadata(zip(prompts.starts, prompts.prompts), miga_latents=latents_tag(args.out, latents_path))
        with VideoWriter(args.out, backbone.fps, metadata=tags) as writer:
            for i, frame in enumerate(video.frames() if latents is None else video.frames(on_latent=latents.write)):
                writer.write(frame)
                if sheet is not None:
                    sheet.offer(i, frame)
                _count_frame(bar)
            if latents is not None:
                latents.close()
    except KeyboardInterrupt:
        bar.close()
        if latents is not None:
            latents.abort()
        print(f"miga: interrupted; the unfinished video is {args.out}.partial", file=sys.stderr)
        return 130
    except BaseException:
        bar.close()  # before the error line, so that it does not continue the bar's line
        if latents is not None:
            latents.abort()
        raise
    bar.close()
    if sheet is not None:
        sheet.save(args.preview)
    total = time.perf_counter() - t0
    if args.stats:
        s = video.stats
        stats = {
            "frames": args.frames, "latents": video.num_latents, "nfe": s.nfe,
            "nfe_per_frame": s.nfe / args.frames, "model_seconds": s.model_seconds, "total_seconds": total,
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "reflection_checks": s.reflection_checks, "reflection_triggers": s.reflection_triggers,
            "reflection_adoptions": s.reflection_adoptions, "method": args.method, "model": args.model,
            "seed": args.seed, "config": asdict(config),
        }
        if video.method_counts is not None:
            stats["search"] = video.method_counts
        if memory is not None:
            stats["memory_estimate_bytes"] = memory
        atomic_write_text(args.stats, json.dumps(stats, indent=2) + "\n")
    saved = f"; latents in {latents_path}" if latents_path else ""
    print(f"wrote {args.out}: {args.frames} frames, {video.stats.nfe} model calls, {total:.1f} s{saved}",
          file=sys.stderr)
    return 0


RUN_SESSION_OPTIONS = ("command", "argv", "resume", "run_dir", "checkpoint_every", "no_progress", "stats", "preview",
                       "schedule", "threads_before")
"""``miga generate`` options that belong to one session of a run, not to the video it makes: they may be
given with ``--resume`` and are not recorded in the run."""


def _given_options(argv: list[str]) -> dict:
    """The ``miga generate`` options written on the command line ``argv`` (defaults left out)."""
    parser = ArgParser(prog="miga generate")
    add_arguments(parser)
    for action in parser._actions:
        if action.dest != "help":
            action.default = argparse.SUPPRESS
    given = vars(parser.parse_args(argv[1:] if argv[:1] == ["generate"] else argv))
    given.pop("command", None)
    return given


def _recorded_options(args) -> dict:
    """The generation options of a run as ``run.json`` keeps them (paths made absolute)."""
    options = {k: v for k, v in vars(args).items() if k not in RUN_SESSION_OPTIONS}
    for key in ("out", "prompts", "dino"):
        if options.get(key):
            options[key] = os.path.abspath(options[key])
    if options.get("save_latents"):
        options["save_latents"] = os.path.abspath(options["save_latents"])
    return options


PROMPT_OPTIONS = ("prompt", "prompt_list", "prompts")
"""The ``miga generate`` options that give the prompts: one of them replaces the others."""


def _named_difference(exc: MigaError, args) -> MigaError:
    """A run refused for a config field that options changed (``--steps`` changes FIFO's ``partitions``,
    ``--preset`` many fields) names the options given, with their values in the run and now."""
    from miga.runs import RunDifference

    if not isinstance(exc, RunDifference) or not exc.difference.startswith("config field"):
        return exc
    stored, current = exc.record.get("cli") or {}, _recorded_options(args)
    changed = [f"--{key.replace('_', '-')} differs ({json.dumps(stored[key])} in the run, {json.dumps(value)} now)"
               for key, value in current.items()
               if key in stored and key not in PROMPT_OPTIONS + ("model_as_given",) and json.loads(json.dumps(value)) != stored[key]]
    return MigaError(str(exc).replace(exc.difference, ", ".join(changed))) if changed else exc


def _absolute_model(model: str) -> str:
    """A model file or folder as an absolute path (so its run resumes from any folder); names unchanged."""
    from miga.backbones.registry import builtin_names

    return os.path.abspath(model) if model not in builtin_names() and os.path.exists(model) else model


def _resume_args(args):
    """``--resume DIR``: the recorded options of the run, with those given now on top (the run refuses
    them later if they change the video)."""
    from miga.engine.prompts import PromptSchedule
    from miga.runs import read_record

    given = _given_options(args.argv)
    if "run_dir" in given:
        raise MigaError("give either --resume DIR or --run-dir DIR, not both")
    record = read_record(args.resume)
    stored = record.get("cli")
    if not isinstance(stored, dict):
        raise MigaError(f"the run in {args.resume} was not started by miga generate; resume it from Python with "
                        "LongVideo.resume(run_dir)")
    merged = argparse.Namespace(**stored)
    if any(key in given for key in PROMPT_OPTIONS):  # prompts given now replace the recorded ones
        merged.prompt, merged.prompt_list, merged.prompts = None, [], None
    for key in RUN_SESSION_OPTIONS:
        setattr(merged, key, getattr(args, key, None))
    for key, value in given.items():
        setattr(merged, key, value)
    model = getattr(merged, "model", None)
    if "model" not in given and model and os.path.isabs(model) and not os.path.exists(model):
        typed = getattr(merged, "model_as_given", None) or model
        raise MigaError(f"the run in {args.resume} was made with the model {typed!r} ({model}), which is not there any "
                        f"more; if it moved, continue with: miga generate --resume {args.resume} --model NEW_PATH")
    merged.run_dir, merged.no_progress = args.resume, args.no_progress
    if not any(k in given for k in PROMPT_OPTIONS):
        entries = record["video"]["prompts"]
        merged.prompt, merged.prompt_list, merged.prompts = None, [], None
        merged.schedule = PromptSchedule(tuple(s for s, _ in entries), tuple(p for _, p in entries))
    return merged


def _progress(args, total: int, name: str, initial: int = 0):
    """The progress bar of a generation; until the first frame it says the queue is filling (MIGA's first
    frame comes after a whole Stage-1 and Stage-2 fill, minutes on a large model)."""
    from tqdm import tqdm

    bar = tqdm(total=total, initial=initial, unit="frame", desc=f"{args.method} {name}", disable=args.no_progress,
               dynamic_ncols=True)
    if not initial:
        bar.set_postfix_str("filling the queue")
    return bar


def _count_frame(bar) -> None:
    """One frame done on a bar from :func:`_progress` (the filling status goes with the first)."""
    if getattr(bar, "postfix", None):
        bar.set_postfix_str("", refresh=False)
    bar.update(1)


def _generate_run(args, video, latents_path: str | None) -> int:
    """``miga generate --run-dir DIR`` / ``--resume DIR``: a checkpointed run (:mod:`miga.runs`)."""
    import signal

    import torch

    from miga.runs import VideoRun
    from miga.video import atomic_write_text

    load = {"model": args.model, "height": args.height, "width": args.width, "device": args.device,
            "dtype": args.dtype, **_diffusers_options(args)}
    try:
        run = VideoRun.create(video, args.run_dir, args.out, checkpoint_every=args.checkpoint_every,
                              save_latents=latents_path, load=load, cli=_recorded_options(args),
                              resuming=args.resume is not None)
    except MigaError as exc:
        raise _named_difference(exc, args) from None
    resumed = os.path.exists(run.checkpoint_path)
    threads, before = "", getattr(args, "threads_before", torch.get_num_threads())
    if run.threads is not None and run.threads != before:
        threads = (f"; with {run.threads} torch threads, as it started (this process had {before}): the same "
                        "count keeps the resume exact")
    bars = []  # the bar starts once the checkpoint is loaded, so that an error before stands on its own line

    def on_start(frames: int) -> None:
        if resumed or threads:
            where = f" at frame {frames} of {video.num_frames}" if resumed else ""
            print(f"miga: resuming {args.run_dir}{where}{threads}", file=sys.stderr)
        bars.append(_progress(args, video.num_frames, video.backbone.name, initial=frames))

    received: list[int] = []

    def on_signal(signum, frame):  # the first stops at the next step with a checkpoint, a second at once
        if received:
            raise KeyboardInterrupt
        received.append(signum)

    handlers = {}
    try:
        for sig in (signal.SIGINT, signal.SIGTERM):
            handlers[sig] = signal.signal(sig, on_signal)
    except ValueError:  # not the main thread: no graceful stop
        pass
    try:
        complete = run.generate(on_frame=lambda: _count_frame(bars[0]), stop=lambda: bool(received),
                                on_start=on_start)
    except KeyboardInterrupt:
        for bar in bars:
            bar.close()
        print(f"miga: stopped at once; the last checkpoint in {args.run_dir} stands; continue with: miga generate "
              f"--resume {args.run_dir}", file=sys.stderr)
        return 130
    finally:
        for bar in bars:  # before any error line, so that it does not continue the bar's line
            bar.close()
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
    if not complete:
        print(f"miga: interrupted; checkpoint saved in {args.run_dir} at frame {run.frames_done} ({args.out}.partial "
              f"plays its first {run.video_frames}); continue with: miga generate --resume {args.run_dir}",
              file=sys.stderr)
        return 128 + (received[0] if received else signal.SIGINT)
    if args.preview:
        from miga.preview import ContactSheet
        from miga.video import iter_frames

        sheet = ContactSheet(video.num_frames)
        for i, frame in enumerate(iter_frames(run.out)):
            sheet.offer(i, frame)
        sheet.save(args.preview)
    if args.stats:
        s = video.stats
        stats = {
            "frames": video.num_frames, "latents": video.num_latents, "nfe": s.nfe,
            "nfe_per_frame": s.nfe / video.num_frames, "model_seconds": s.model_seconds,
            "total_seconds": run.seconds, "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "reflection_checks": s.reflection_checks, "reflection_triggers": s.reflection_triggers,
            "reflection_adoptions": s.reflection_adoptions, "method": args.method, "model": args.model,
            "seed": args.seed, "config": asdict(video.config), "run_dir": args.run_dir, "resumed": resumed,
        }
        if video.method_counts is not None:
            stats["search"] = video.method_counts
        atomic_write_text(args.stats, json.dumps(stats, indent=2) + "\n")
    saved = f"; latents in {run.latents_path}" if latents_path else ""
    if not bars:
        print(f"miga: {args.out} is complete already (run {args.run_dir}); nothing to do{saved}", file=sys.stderr)
        return 0
    print(f"wrote {args.out}: {video.num_frames} frames, {video.stats.nfe} model calls, {run.seconds:.1f} s{saved}",
          file=sys.stderr)
    return 0

