"""The ``miga`` command: a thin layer over :class:`miga.pipeline.LongVideo`."""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from dataclasses import asdict

from miga.errors import MigaError

METHODS = ("miga", "fifo", "scalingnoise", "freenoise", "freelong", "freepca")
FULL_SEQUENCE = ("freenoise", "freelong", "freepca")  # all N latents at once (miga.engine.full_sequence)
WORLDS = ("shapes", "gaussian")
MIGA_ONLY = {  # flag -> config field; refused with any other --method
    "zigzag_width": "--zigzag-width", "stage2_steps": "--stage2-steps", "guides": "--guides",
    "reflection_threshold": "--reflection-threshold", "stride": "--stride", "stage2_mode": "--stage2-mode",
    "guide_selection": "--guide-selection", "reflect_during": "--reflect-during",
}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, status 2, no usage dump
        self.exit(2, f"miga: error: {message} (see 'miga {self.prog.split()[-1]} --help')\n"
                  if " " in self.prog else f"miga: error: {message}\n")


def _number(kind=int, minimum=1):
    """An argparse type: a ``kind`` number >= ``minimum``."""
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a {kind.__name__}, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {text}")
        return value
    return parse


def _threshold(text: str):
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


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="miga", description="Training-free long video generation with MIGA and FIFO-Diffusion.")
    parser.add_argument("--version", action="version", version=f"miga {_version()}")
    sub = parser.add_subparsers(dest="command", parser_class=_Parser, required=True)
    g = sub.add_parser("generate", help="generate a long video", description=(
        "Generate a long video. Frames are written as they finish; the file gets its final name only when "
        "the run completes."))
    g.add_argument("prompt", nargs="?", help="the prompt (or use --prompt / --prompts)")
    g.add_argument("--prompt", dest="prompt_list", action="append", default=[], metavar="TEXT",
                   help="a prompt; repeat it for prompts that follow each other, evenly split along the video")
    g.add_argument("--prompts", metavar="FILE", help="a prompt schedule file: one prompt per line, optionally "
                   "'FRAME: prompt' to say where each starts (see README)")
    g.add_argument("--model", default="shapes", help="shapes (the built-in shapes-world model, default), a "
                   ".safetensors file from 'miga train-toy', gaussian (exact Gaussian world), gaussian-clip (the same, "
                   "denoised like a one-level foundation model), VideoCrafter2's model.ckpt (or a folder holding it and "
                   "tokenizer/, or its diffusers conversion), or a local diffusers folder of Wan2.1-T2V, "
                   "SkyReels-V2-DF or a UNet3D text-to-video model (ModelScope, Zeroscope; see README)")
    g.add_argument("--device", help="where the model runs, e.g. cuda, cuda:1, cpu (default: cuda if available "
                   "for diffusers models, else cpu)")
    g.add_argument("--dtype", choices=("bfloat16", "float16", "float32"), help="diffusers models: transformer and "
                   "text-encoder precision (default bfloat16 on a GPU, float32 on the CPU; the VAE stays float32)")
    g.add_argument("--window-latents", type=_number(minimum=2), metavar="F", help="diffusers models: latent frames "
                   "per model window, f_0 (default: the training length, 21 for Wan2.1 = 81 frames, 16 for UNet3D)")
    g.add_argument("--model-batch", type=_number(), metavar="B", help="diffusers models: samples per transformer "
                   "call (default: all; 1 runs classifier-free guidance as two passes, for less GPU memory)")
    g.add_argument("--ddim-rescale", action="store_true", help="VideoCrafter2: apply its training-time latent "
                   "scaling (use_scale) in every DDIM step, as its own sampler does; off by default, as in "
                   "FIFO-Diffusion's and MIGA's code and the paper's numbers")
    g.add_argument("--method", choices=METHODS, default="miga", help="miga (default), fifo, scalingnoise (FIFO "
                   "with a beam search over each new tail noise, k=5 candidates, m=3 beams: about 4-5x FIFO's model "
                   "calls; every model), or a full-sequence baseline: freenoise, freelong, freepca (all frames "
                   "denoised together, memory grows with --frames; models with temporal attention only: "
                   "VideoCrafter2, UNet3D, built-in model v2)")
    g.add_argument("--dino", metavar="PATH", help="scalingnoise: DINO ViT-B/16 for its reward, a transformers folder "
                   "(config.json and model.safetensors, e.g. facebook/dino-vitb16); default: the offline proxy "
                   "extractor (miga eval's), labelled as a proxy in --stats")
    g.add_argument("--force", action="store_true", help="freenoise/freelong/freepca: run even when the estimated "
                   "peak memory exceeds the device's free memory")
    g.add_argument("--preset", help="preset: videocrafter2, modelscope, wan2.1, skyreels-v2-df, gaussian, shapes "
                   "(default: the model's own)")
    g.add_argument("--frames", type=_number(), default=128, metavar="N", help="output frames (default 128)")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--out", default="miga.mp4", metavar="FILE.mp4", help="output video (default miga.mp4)")
    g.add_argument("--stats", metavar="FILE.json", help="write run statistics as JSON")
    g.add_argument("--preview", metavar="FILE.png", help="write a contact sheet: a PNG grid of up to 24 frames "
                   "spread evenly over the video, each labelled with its index (written when the video completes)")
    g.add_argument("--save-latents", nargs="?", const="", metavar="FILE.safetensors", help="also write the "
                   "finished latents [N, C, H, W] (streamed, renamed when complete) for 'miga eval' (default FILE: "
                   "OUT with .latents.safetensors instead of .mp4, where miga eval finds it)")
    g.add_argument("--steps", type=_number(), metavar="T", help="denoising steps T (FIFO: a multiple of f_0)")
    g.add_argument("--height", type=_number(), help="frame height in pixels")
    g.add_argument("--width", type=_number(), help="frame width in pixels")
    g.add_argument("--guidance-scale", type=float, help="classifier-free guidance scale")
    g.add_argument("--zigzag-width", type=_number(), metavar="L", help="L_zig; 1 gives FIFO's ladder")
    g.add_argument("--stage2-steps", type=_number(minimum=0), metavar="K2", help="K2; 0 disables Stage 2")
    g.add_argument("--guides", type=_number(minimum=0), metavar="M", help="m_guid; 0 disables long-range guidance")
    g.add_argument("--stride", type=_number(), metavar="S", help="sliding-window stride s")
    g.add_argument("--guide-selection", choices=("uniform", "nearest"))
    g.add_argument("--stage2-mode", choices=("stream", "batch"))
    g.add_argument("--reflection-threshold", type=_threshold, metavar="D", help="delta_adju: a score drop larger "
                   "than D triggers a search; 'auto': a drop unusual for this video's own scores (the same meaning "
                   "on every backbone)")
    g.add_argument("--reflect-during", choices=("all", "fill"), help="self-reflection on every Stage-1 pass "
                   "(the paper) or only while the queue fills (the released code)")
    g.add_argument("--no-reflection", action="store_true", help="disable self-reflection")
    g.add_argument("--window-batch", type=_number(), metavar="B", help="windows per model call where allowed")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")
    g.add_argument("--run-dir", metavar="DIR", help="keep the run's whole state in DIR, checkpointed every "
                   "--checkpoint-every frames, so that a killed or stopped run continues where it was (run the same "
                   "command again, or --resume DIR); OUT.partial then always plays up to the last checkpoint")
    g.add_argument("--checkpoint-every", type=_number(), metavar="N", help="output frames between checkpoints "
                   "with --run-dir (default 16)")
    g.add_argument("--resume", metavar="DIR", help="continue the run saved in DIR by --run-dir; needs no other "
                   "options (--no-progress, --stats, --preview and --checkpoint-every may be given)")

    t = sub.add_parser("train-toy", help="train the built-in shapes model from a seed", description=(
        "Train the built-in shapes-world model (autoencoder, then denoiser) from a seed, with data rendered on "
        "the fly. Checkpoints go to RUN_DIR; running the same command again resumes from the last one. When "
        "training completes, RUN_DIR/shapes.safetensors holds the weights (use them with --model FILE)."))
    t.add_argument("run_dir", metavar="RUN_DIR", help="where checkpoints, loss.png and the weights go")
    t.add_argument("--seed", type=int, help="weights and data stream derive from it (default 0)")
    t.add_argument("--recipe", choices=("v1", "v2", "df"), help="what to train: v1 (the shipped model: "
                   "convolutions, the v1 world; the default for a new run), v2 (temporal self-attention, the world "
                   "with hidden attributes, one noise level per clip) or df (v2 trained with a noise level per frame, "
                   "diffusion forcing); a resumed run keeps its own")
    t.add_argument("--model-size", choices=("default", "tiny"), default="default",
                   help="architecture: the recipe's own, or a tiny one for smoke tests")
    t.add_argument("--steps", type=_number(minimum=0), help="denoiser steps (default 5000 for v1, 12000 for v2 and "
                   "df; may change on resume; 0 only with --ae-steps: the autoencoder alone)")
    t.add_argument("--ae-steps", type=_number(minimum=0), help="autoencoder steps (default 3000)")
    t.add_argument("--batch", type=_number(), help="clips per denoiser step (default 16)")
    t.add_argument("--checkpoint-every", type=_number(), metavar="N", help="steps between checkpoints (default 200)")
    t.add_argument("--time-limit", type=_number(float, 0), metavar="MIN",
                   help="stop (with a checkpoint) after this many minutes; run again to continue")
    t.add_argument("--threads", type=_number(), help="torch threads (default: torch's choice)")
    t.add_argument("--fresh", action="store_true", help="start over even if RUN_DIR holds a checkpoint")
    t.add_argument("--no-progress", action="store_true", help="no progress bar")

    e = sub.add_parser("eval", help="measure videos", description=(
        "Measure videos. Without --world: VBench's temporal flicker, motion smoothness, subject and background "
        "consistency under VBench-Long's protocol (2-second clips), from the decoded video; numbers from "
        "stand-ins for VBench's networks are marked as proxies. --world shapes: find the prompt's objects in "
        "every frame of a shapes-world video and report presence, shape, centroid jumps, background "
        "stability and the drift of the video's identity (hidden attributes) beside a true world clip. --world "
        "gaussian: the lag correlations and identity drift of the latents saved with each video (miga generate "
        "--model gaussian --save-latents) against the Gaussian world's prior and a true sample (see README)."))
    e.add_argument("videos", nargs="+", metavar="VIDEO", help="video files")
    e.add_argument("--world", choices=WORLDS, help="the world the videos show: its world metrics (shapes: from "
                   "the decoded frames; gaussian: from the saved latents)")
    e.add_argument("--prompt", metavar="TEXT", help="--world: judge every frame against this prompt (gaussian: "
                   "remove its mean) (default: the prompt schedule that miga generate stored in each video; the "
                   "identity is measured on the first prompt's frames)")
    e.add_argument("--json", metavar="FILE", help="write the full results (summary, per video, per clip or frame) "
                   "as JSON")
    e.add_argument("--plot", metavar="FILE.png", help="plot per-frame consistency over time (to the first and "
                   "to the previous frame; latent consistency when latents are found); --world shapes: each "
                   "attribute's drift per frame and drift vs distance beside the true world; --world gaussian: lag "
                   "correlation and identity drift vs distance beside the prior and a true sample's band")
    e.add_argument("--dino", metavar="PATH", help="DINO ViT-B/16 for subject consistency: a transformers folder "
                   "(config.json and model.safetensors, e.g. facebook/dino-vitb16); default: the offline proxy")
    e.add_argument("--clip", metavar="PATH", help="CLIP ViT-B/32 for background consistency: a transformers "
                   "folder (config.json and model.safetensors, e.g. openai/clip-vit-base-patch32); default: the "
                   "offline proxy")
    e.add_argument("--amt", metavar="PATH", help="AMT-S weights for motion smoothness, as VBench: amt-s.pth from "
                   "the Hugging Face repo lalala125/AMT; default: an OpenCV flow-interpolation proxy")
    e.add_argument("--latents", metavar="FILE", action="append", help="latents saved by miga generate "
                   "--save-latents, one per video in order (default: VIDEO's NAME.latents.safetensors if present; "
                   "--world gaussian needs them)")

    m = sub.add_parser("models", help="list the kinds of model miga loads, or the models in folders",
                       description=(
        "Without DIR: every kind of model miga loads, in the order in which --model is recognised, with what "
        "each needs and how to download it. With DIR: the entries of each DIR that miga recognises as a model, "
        "with their kind (from the files on disk; nothing is loaded)."))
    m.add_argument("dirs", nargs="*", metavar="DIR", help="folders to look in (their immediate entries)")

    from miga.bench import add_arguments as bench_arguments

    bench_arguments(sub.add_parser("bench", help="measure speed and memory of FIFO and MIGA", description=(
        "Measure NFE per frame, seconds per frame, the engine's own overhead as a fraction of model time, peak "
        "memory (RSS on the CPU, allocated on a GPU) and time to the first written frame, for each model, "
        "method and length, each in a fresh process, and print a table with ratios to FIFO from the same run. "
        "wan-1.3b-random is Wan2.1-1.3B's transformer and VAE at full size with random weights (GPU).")))
    from miga.ablation import add_arguments as ablate_arguments

    ablate_arguments(sub.add_parser("ablate", help="run the paper's ablation and sweeps, measured", description=(
        "Run the rows of the paper's Table 5 (FIFO, + Stage 1, + Stage 2 = TTA, DCE alone, MIGA) and sweeps of "
        "full MIGA's reflection threshold and guide count over prompts and seeds; every video is written to "
        "an MP4 and measured from the file (VBench-Long quality metrics, shapes-world metrics for the shapes "
        "model, NFE and seconds per frame). Prints a markdown table and saves it with results.json in DIR.")))
    ablate_arguments(sub.add_parser("compare", help="run the paper's Table 1: methods side by side, measured",
                                    description=(
        "Run FIFO-Diffusion, FreeNoise, FreeLong, FreePCA and MIGA (each with the model's own preset) over prompts "
        "and seeds on one model with the same frame count, measured as 'miga ablate' measures (the same runner: "
        "resumable, one table). Methods the model cannot run are skipped with a note unless named in "
        "--methods.")), command="compare")
    from miga.app.command import add_arguments as app_arguments

    app_arguments(sub.add_parser("app", help="a local web page: write a prompt timeline, watch the video grow",
                                 description=("Start a local web app (Gradio; pip install \"miga-video[app]\") "
                                              "to write a prompt timeline, generate while watching the video "
                                              "grow, stop, resume and download runs.")))
    return parser


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("miga-video")
    except Exception:  # pragma: no cover - running from a source tree
        return "unknown"


def _config(args, backbone):
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
    if given and (args.model in ("shapes", "gaussian", "gaussian-clip") or args.model.endswith(".safetensors")):
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


def generate(args) -> int:
    import torch

    from miga.runs import RUN_FILE, read_record, recorded_threads, torch_threads

    t0 = time.perf_counter()
    if args.resume is not None:
        args = _resume_args(args)
    elif args.checkpoint_every is not None and args.run_dir is None:
        raise MigaError("--checkpoint-every needs --run-dir DIR (checkpoints are kept there)")
    threads = None  # a run continued: with its own torch thread count, from the prompts' encoding on
    if args.run_dir is not None and os.path.isfile(os.path.join(args.run_dir, RUN_FILE)):
        threads = recorded_threads(read_record(args.run_dir))
    args.threads_before = torch.get_num_threads()
    with torch_threads(threads):
        return _generate(args, t0)


def _generate(args, t0: float) -> int:
    from miga.pipeline import LongVideo, load_backbone
    from miga.preview import ContactSheet, check_preview_path
    from miga.video import VideoWriter, atomic_write_text, check_writable, latents_tag, prompts_metadata

    if not args.out.lower().endswith(".mp4"):
        raise MigaError(f"--out must name an .mp4 file, got {args.out}")
    for path in (args.out, args.stats):
        if path:
            check_writable(path)
    if args.preview:
        check_preview_path(args.preview)
    latents_path = _latents_path(args)
    prompts = getattr(args, "schedule", None) or _prompts(args)
    backbone = load_backbone(args.model, height=args.height, width=args.width, device=args.device,
                             dtype=args.dtype, **_diffusers_options(args))
    config = _config(args, backbone)
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
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for action in sub.choices["generate"]._actions:
        if action.dest != "help":
            action.default = argparse.SUPPRESS
    given = vars(parser.parse_args(argv))
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
               if key in stored and key not in PROMPT_OPTIONS and json.loads(json.dumps(value)) != stored[key]]
    return MigaError(str(exc).replace(exc.difference, ", ".join(changed))) if changed else exc


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


def train_toy(args) -> int:
    import torch

    from dataclasses import replace

    from miga.toy.nets import ToyConfig
    from miga.toy.train import CHECKPOINT, TrainConfig, saved_recipe, start_or_resume

    from miga.video import check_new_folder

    check_new_folder(args.run_dir, "RUN_DIR")  # missing parents are created
    if args.steps == 0 and args.ae_steps is None:
        raise MigaError("--steps 0 trains no denoiser, only the autoencoder; give --steps N >= 1, or --steps 0 "
                        "--ae-steps N to train the autoencoder alone")
    if args.threads:
        torch.set_num_threads(args.threads)
    given = {"seed": args.seed, "steps": args.steps, "ae_steps": args.ae_steps, "batch": args.batch,
             "checkpoint_every": args.checkpoint_every}
    given = {k: v for k, v in given.items() if v is not None}
    resuming = os.path.exists(os.path.join(args.run_dir, CHECKPOINT)) and not args.fresh
    saved = saved_recipe(args.run_dir) if resuming else None
    recipes = {"v1": (TrainConfig, ToyConfig(), ToyConfig.tiny()),
               "v2": (TrainConfig.v2, ToyConfig.v2(), ToyConfig.tiny_v2()),
               "df": (TrainConfig.df, ToyConfig.v2(), ToyConfig.tiny_v2())}
    if saved is not None and args.recipe is None:  # a resumed run keeps its own recipe and architecture
        recipe = replace(saved, **given)
        name = "df" if saved.per_frame_noise else "v2" if saved.hidden_attributes else "v1"
    else:
        name = args.recipe or "v1"
        recipe = recipes[name][0](**given)
    model = recipes[name][2 if args.model_size == "tiny" else 1]
    trainer = start_or_resume(args.run_dir, recipe, model, fresh=args.fresh)
    if resuming:
        print(f"miga: resuming {args.run_dir} at autoencoder step {trainer.ae_step}, denoiser step {trainer.step}",
              file=sys.stderr)
    limit = None if args.time_limit is None else 60.0 * args.time_limit
    try:
        done = trainer.run(time_limit=limit, progress=not args.no_progress)
    except KeyboardInterrupt:
        print(f"miga: interrupted; checkpoint saved in {args.run_dir}; run the same command to resume",
              file=sys.stderr)
        return 130
    if done:
        print(f"trained: {os.path.join(args.run_dir, 'shapes.safetensors')} ({trainer.step} denoiser steps, "
              f"{trainer.seconds / 60:.1f} min); loss curve in {os.path.join(args.run_dir, 'loss.png')}",
              file=sys.stderr)
    elif trainer.ae_step < trainer.train.ae_steps:
        print(f"miga: stopped at autoencoder step {trainer.ae_step} of {trainer.train.ae_steps} (the denoiser's "
              f"{trainer.train.steps} steps follow); run the same command to continue", file=sys.stderr)
    else:
        print(f"miga: stopped at denoiser step {trainer.step} of {trainer.train.steps}; run the same command "
              "to continue", file=sys.stderr)
    return 0


def _video_scenes(path: str, num_frames: int, prompt: str | None):
    """The shapes scene each frame of a video is judged against, and the ``(start, prompt)`` schedule."""
    from miga.engine.prompts import PromptSchedule
    from miga.video import read_prompts_metadata
    from miga.worlds.shapes import parse_prompt

    if prompt is not None:
        entries = [(0, prompt)]
    else:
        entries = read_prompts_metadata(path)
        if entries is None:
            raise MigaError(f"{path} holds no prompt (it was not made by miga generate); pass --prompt TEXT")
    try:
        schedule = PromptSchedule(tuple(s for s, _ in entries), tuple(p for _, p in entries))
        scenes = {text: parse_prompt(text) for text in schedule.prompts}
    except MigaError as exc:
        raise MigaError(f"{path}: {exc}") from None
    return [scenes[schedule.prompt_at(t)] for t in range(num_frames)], entries


def _cell(value, fmt: str, unit: str = "") -> str:
    return "-" if value is None else format(value, fmt) + unit


def _check_output(path: str | None, suffix: str | None = None, flag: str = "") -> None:
    if path is None:
        return
    if suffix and not path.lower().endswith(suffix):
        raise MigaError(f"{flag} must name a {suffix} file, got {path}")
    from miga.video import check_writable

    check_writable(path)


def _stale_latents(video: str, path: str) -> str | None:
    """Why the latents file ``path`` found beside ``video`` is not the video's own (the video records that it
    saved none, or saved them elsewhere: the file is left by an earlier run), or None."""
    from miga.video import saved_latents

    recorded, saved = saved_latents(video)
    if not recorded or (saved is not None and os.path.realpath(saved) == os.path.realpath(path)):
        return None
    where = "saved none" if saved is None else f"saved them to {saved}"
    return (f"{video} was made after it (miga generate {where}), so it is left by an earlier run; make the video "
            "again with --save-latents, or give --latents FILE")


def _video_latents(video: str, given: str | None, frames: int) -> dict | None:
    """MIGA's latent consistency over time from the latents saved with ``video`` (``None`` if none)."""
    from miga.evaluation.latents import default_latents_path, latent_consistency, read_latents

    path = given or default_latents_path(video)
    if given is None and not os.path.isfile(path):
        return None
    stale = None if given else _stale_latents(video, path)
    if stale:
        print(f"miga: not using the latents {path}: {stale}", file=sys.stderr)
        return None
    latents, meta = read_latents(path)
    k = int(meta.get("frames_per_latent", 1))
    if -(-frames // k) != len(latents):
        raise MigaError(f"latents {path} hold {len(latents)} latents ({k} frame(s) each), but {video} has "
                        f"{frames} frames")
    if len(latents) < 2:
        return None
    result = latent_consistency(latents, int(meta.get("chunk", 1)), int(meta.get("refs", 1)),
                                str(meta.get("score_mode", "frame")))
    return {"file": path, "frames_per_latent": k, **result}


VBENCH_PROTOCOL = ("VBench-Long: each video is split into consecutive 2-second clips at its own fps (the last clip "
                   "back-padded); each clip is scored, clips are averaged per video, then videos are averaged. "
                   "S.C./B.C. are the in-clip scores; their clip-to-clip, fused and whole-video modes are in "
                   "*_consistency_modes.")
OVERALL_DEFINITION = {"overall": "plain mean of the four raw scores",
                      "overall_normalized": "mean of the four scores after VBench's min-max normalisation "
                                            "(normalization: [min, max] per dimension; not clamped)"}


def _vbench_table(results: list[dict], summary: dict, extractors: dict) -> str:
    from miga.evaluation.vbench import DIMENSIONS

    star = {d: "*" if extractors[d]["proxy"] else "" for d in DIMENSIONS}
    heads = {"temporal_flicker": "T.F.", "motion_smoothness": "M.S.", "subject_consistency": "S.C.",
             "background_consistency": "B.C."}
    rows = [(r["video"], str(r["frames"]), f"{r['fps']:g}", str(len(r["clips"])), r) for r in results]
    if len(results) > 1:
        rows.append((f"mean of {len(results)}", "", "", "", summary))
    width = max(5, *(len(row[0]) for row in rows))
    cols = [heads[d] + star[d] for d in DIMENSIONS] + ["overall", "normalized"]
    lines = [f"{'video':<{width}}  {'frames':>6}  {'fps':>5}  {'clips':>5}  " + "  ".join(f"{c:>10}" for c in cols)]
    for name, frames, fps, clips, r in rows:
        nums = [r[d] for d in DIMENSIONS] + [r["overall"], r["overall_normalized"]]
        lines.append(f"{name:<{width}}  {frames:>6}  {fps:>5}  {clips:>5}  " + "  ".join(f"{v:>10.4f}" for v in nums))
    lines.append("")
    lines.append(f"{'video':<{width}}  {'':>5}  {'in-clip':>10}  {'clip2clip':>10}  {'fused':>10}  {'whole':>10}")
    for name, _, _, _, r in rows:
        for d in ("subject_consistency", "background_consistency"):
            m = r[f"{d}_modes"]
            lines.append(f"{name:<{width}}  {heads[d] + star[d]:>5}  " + "  ".join(
                f"{_cell(m[k], '.4f'):>10}" for k in ("inclip", "clip2clip", "fused", "whole_video")))
    latent_rows = [r for r in results if r.get("latent_consistency")]
    if latent_rows:
        lines.append("")
        lines.append("MIGA latent consistency score (method.md Eqs. 5-7) from the saved latents, not the video:")
        for r in latent_rows:
            lc = r["latent_consistency"]
            lines.append(f"{r['video']:<{width}}  to first {_cell(lc['mean_to_first'], '.4f')}  to previous "
                         f"{_cell(lc['mean_to_previous'], '.4f')}  chunk of {lc['chunk']} to {lc['refs']} in "
                         f"front {_cell(lc['mean_chunk_score'], '.4f')}  ({lc['file']})")
    lines.append("")
    lines.append("T.F., M.S., S.C., B.C. from the decoded video; 2-s clips (VBench-Long), S.C./B.C. in-clip. "
                 "overall: plain mean of the four; normalized: mean after VBench's min-max normalisation.")
    lines.append("fused: 0.5 in-clip + 0.5 clip2clip (first frame of each clip; identity mapping); whole: the "
                 "formula over all frames.")
    for d in DIMENSIONS:
        if extractors[d]["proxy"]:
            lines.append(f"{heads[d]}* proxy: {extractors[d]['name']}")
    return "\n".join(lines)


def evaluate_vbench(args) -> int:
    """``miga eval`` without ``--world``: VBench-Long quality metrics from the decoded videos."""
    from miga.evaluation.features import ProxyFeatures, load_clip, load_dino
    from miga.evaluation.interpolation import FlowMidpoint, amt_interpolator
    from miga.evaluation.vbench import DIMENSIONS, NORMALIZATION, aggregate, evaluate_video
    from miga.video import atomic_write_text, read_video

    if args.prompt is not None:
        raise MigaError("--prompt applies to --world gaussian and --world shapes only")
    _check_output(args.json)
    _check_output(args.plot, ".png", "--plot")
    if args.latents and len(args.latents) != len(args.videos):
        raise MigaError(f"give --latents once per video: {len(args.videos)} video(s), {len(args.latents)} --latents")
    for path in args.latents or []:
        if not os.path.isfile(path):
            raise MigaError(f"cannot read latents {path}: no such file")
    interpolator = amt_interpolator(args.amt) if args.amt else FlowMidpoint()
    subject = load_dino(args.dino) if args.dino else ProxyFeatures("dino")
    background = load_clip(args.clip) if args.clip else ProxyFeatures("clip")
    extractors = {"temporal_flicker": {"name": "pixels of the decoded frames (exact)", "proxy": False},
                  "motion_smoothness": {"name": interpolator.name, "proxy": interpolator.proxy},
                  "subject_consistency": {"name": subject.name, "proxy": subject.proxy},
                  "background_consistency": {"name": background.name, "proxy": background.proxy}}
    results = []
    for i, path in enumerate(args.videos):
        frames, fps = read_video(path)
        if len(frames) < 3:
            raise MigaError(f"{path} has {len(frames)} frame(s); the VBench metrics need at least 3")
        if not fps > 0:
            raise MigaError(f"{path} has no frame rate")
        result = {"video": path, **evaluate_video(frames, fps, subject, background, interpolator)}
        del frames
        result["latent_consistency"] = _video_latents(path, args.latents[i] if args.latents else None,
                                                      result["frames"])
        results.append(result)
    summary = aggregate(results)
    print(_vbench_table(results, summary, extractors))
    if args.json:
        from statistics import fmean

        lcs = [r["latent_consistency"] for r in results if r["latent_consistency"]]
        latent = None
        if lcs:  # the mean over the videos that have latents (and chunk scores)
            latent = {"videos": len(lcs)}
            for key in ("mean_to_first", "mean_to_previous", "mean_chunk_score"):
                values = [lc[key] for lc in lcs if lc[key] is not None]
                latent[key] = fmean(values) if values else None
        report = {"protocol": VBENCH_PROTOCOL, **{d: summary[d] for d in DIMENSIONS},
                  "overall": summary["overall"], "overall_normalized": summary["overall_normalized"],
                  "overall_definition": OVERALL_DEFINITION, "normalization": NORMALIZATION,
                  "subject_consistency_modes": summary["subject_consistency_modes"],
                  "background_consistency_modes": summary["background_consistency_modes"],
                  "extractors": extractors, "proxy": [d for d in DIMENSIONS if extractors[d]["proxy"]],
                  "latent_consistency": latent, "videos": results}
        atomic_write_text(args.json, json.dumps(report, indent=1) + "\n")
    if args.plot:
        from miga.evaluation.plot import plot_consistency

        plot_consistency(results, args.plot, {d: e["name"] for d, e in extractors.items()})  # proxies say so
    return 0


def _identity_frames(entries: list, num_frames: int, given_prompt: bool) -> int:
    """Frames over which a video's identity is measured: all of them with ``--prompt``; otherwise those of
    the first prompt of the stored schedule (the scene, and the Gaussian world's mean, change at the next)."""
    if given_prompt or len(entries) < 2:
        return num_frames
    return min(num_frames, sorted(int(s) for s, _ in entries)[1])


SHAPES_IDENTITY_NOTE = (
    "drift D: identity drift D frames from the start: each hidden attribute (radius, shade, speed, background "
    "lighting) estimated over frames D-8..D+7 against its value over the first 16 frames, divided by its spread "
    "in the world's prior (0: kept, 1: as different as an unrelated clip), mean over the attributes; in "
    "brackets the same for a true world clip with the video's starting identity, after the same H.264 codec.")


def _shapes_table(results: list[dict]) -> list[str]:
    width = max(5, *(len(r["video"]) for r in results))
    distances = sorted({d for r in results for d in r["identity"]["distances"]})
    lines = [f"{'video':<{width}}  {'frames':>6}  {'present':>7}  {'shape':>6}  {'jump mean':>9}  {'jump max':>8}  "
             f"{'bg change':>9}  {'bg error':>8}" + "".join(f"  {'drift ' + str(d):>15}" for d in distances)]
    for r in results:
        s, ident = r["summary"], r["identity"]
        cells = []
        for d in distances:
            v, w = ident["identity_drift"].get(str(d)), ident["true_world"]["identity_drift"].get(str(d))
            cells.append("-" if v is None else f"{v:.3f} ({_cell(w, '.3f')})")
        lines.append(f"{r['video']:<{width}}  {s['frames']:>6}  {_cell(s['presence'], '.1%'):>7}  "
                     f"{_cell(s['shape_accuracy'], '.1%'):>6}  {_cell(s['jump_mean_px'], '.2f', ' px'):>9}  "
                     f"{_cell(s['jump_max_px'], '.1f', ' px'):>8}  {_cell(s['background_change'], '.4f'):>9}  "
                     f"{_cell(s['background_error'], '.4f'):>8}" + "".join(f"  {c:>15}" for c in cells))
    lines.append("")
    if distances:
        lines.append(SHAPES_IDENTITY_NOTE)
    else:
        lines.append("identity drift: no video reaches 64 frames (drift is measured at 64, 128, 256, ... frames "
                     "from the start).")
    for r in results:
        if r["identity"]["frames"] < r["summary"]["frames"]:
            lines.append(f"{r['video']}: identity measured on the first prompt's frames 0-"
                         f"{r['identity']['frames'] - 1} only (the scene changes at frame {r['identity']['frames']}).")
    return lines


def evaluate(args) -> int:
    if args.world is None:
        return evaluate_vbench(args)
    given = [flag for flag in ("dino", "clip", "amt") if getattr(args, flag)]
    if given:
        raise MigaError(f"{', '.join('--' + f for f in given)} apply to the VBench metrics, not --world")
    if args.prompt is not None and not args.prompt.strip():
        raise MigaError("--prompt is empty")
    _check_output(args.json)
    _check_output(args.plot, ".png", "--plot")
    if args.world == "gaussian":
        return evaluate_gaussian(args)
    if args.latents:
        raise MigaError("--latents applies to --world gaussian and the VBench metrics, not --world shapes")
    import torch

    from miga.video import atomic_write_text, read_video
    from miga.worlds import metrics
    from miga.worlds.identity import video_identity_drift
    from miga.worlds.shapes import parse_prompt

    torch.set_num_threads(1)  # the metrics' only torch work is small shape templates, where threads only cost
    if args.prompt is not None:
        parse_prompt(args.prompt)  # refuse a prompt outside the grammar before reading any video
    results = []
    for path in args.videos:
        frames, fps = read_video(path)
        if len(frames) == 0:
            raise MigaError(f"cannot read video {path}: it has no frames")
        scenes, entries = _video_scenes(path, len(frames), args.prompt)
        result = metrics.evaluate_frames(frames, scenes)
        n = _identity_frames(entries, len(frames), args.prompt is not None)
        identity = {"frames": n, "prompt": args.prompt if args.prompt is not None else entries[0][1],
                    **video_identity_drift(frames[:n], scenes[0], fps, per_frame=True)}
        del frames
        results.append({"video": path, "fps": fps, "prompts": [list(e) for e in entries],
                        "prompt_source": "--prompt" if args.prompt is not None else "metadata", **result.to_dict(),
                        "identity": identity})
    print("\n".join(_shapes_table(results)))
    if args.json:
        from miga.worlds import identity as world_identity

        thresholds = {name: getattr(metrics, name) for name in (
            "COLOUR_TOLERANCE", "MIN_AREA_FRACTION", "MAX_AREA_FACTOR", "TRIANGLE_SKEW", "SQUARE_DIAGONAL",
            "SHAPE_MIN_IOU", "BACKGROUND_MARGIN", "TOUCH_MARGIN")}
        settings = {name: getattr(world_identity, name) for name in (
            "DISTANCES", "REFERENCE_FRAMES", "WINDOW", "MIN_MEASURED", "SPEED_STEPS")}
        atomic_write_text(args.json, json.dumps({"world": args.world, "thresholds": thresholds,
                                                 "identity": {**settings, "definition": SHAPES_IDENTITY_NOTE},
                                                 "videos": results}, indent=1) + "\n")
    if args.plot:
        from miga.evaluation.identity_plot import plot_shapes_identity

        plot_shapes_identity(results, args.plot)
    return 0


GAUSSIAN_IDENTITY_NOTE = (
    "lag correlation d: pooled correlation of latents d frames apart, the prompt mean removed; prior: "
    "s_id^2 + s_m^2 rho^d. identity drift d: correlation of the mean of the first 32 latents (all of a shorter "
    "video) with the mean of as many latents d later; prior: c_B(d) / c_B(0). true sample: mean ± sd of the "
    "same estimator on an exact draw of the world's prior of this length and latent size; z = (measured - mean) "
    "/ sd; prior draw: the estimator on one such draw (seed 0).")


def _gaussian_latents(args) -> list[str]:
    """Each video's latents file, checked before any work (one line naming --save-latents when missing)."""
    from miga.evaluation.latents import default_latents_path

    if args.latents and len(args.latents) != len(args.videos):
        raise MigaError(f"give --latents once per video: {len(args.videos)} video(s), {len(args.latents)} --latents")
    paths = []
    for i, video in enumerate(args.videos):
        if args.latents:
            if not os.path.isfile(args.latents[i]):
                raise MigaError(f"cannot read latents {args.latents[i]}: no such file")
            paths.append(args.latents[i])
            continue
        path = default_latents_path(video)
        if not os.path.isfile(path):
            if not os.path.exists(video):
                raise MigaError(f"cannot read video {video}: No such file or directory")
            raise MigaError(f"{video} has no latents ({path} not found): --world gaussian measures the latents "
                            "that miga generate --save-latents writes beside the video (or give --latents FILE)")
        paths.append(path)
    return paths


def gaussian_world_for(latent_shape, source: str):
    """The Gaussian world (default ``identity_share`` and ``rho``) whose latents have ``latent_shape``
    ``(C, H, W)``; a one-line error naming ``source`` if no Gaussian world has latents of that shape."""
    from miga.backbones.gaussian import GaussianWorld

    c, h, w = (int(x) for x in latent_shape)
    try:
        return GaussianWorld(channels=c, height=8 * h, width=8 * w)
    except MigaError as exc:
        raise MigaError(f"latents {source} of shape [{c}, {h}, {w}] are not the Gaussian world's ({exc})") from None


GAUSSIAN_DECODE_TOLERANCE = 16.0
"""``miga eval --world gaussian`` refuses a video whose frames differ from the Gaussian world's decoding of its
latents by more than this (mean absolute difference, 0-255 levels, on 8 frames spread over the video): H.264
leaves about 3 at 32x32; another model's video (the shapes model's latents are also [4, 8, 8] per 64x64 frame)
differs by about 60."""


def _gaussian_frames(video: str, latents, world) -> tuple[int, float, tuple | None]:
    """The number of frames of ``video``, the mean absolute difference (0-255) between 8 of them, spread over
    the video, and ``world``'s decoding of their latents (``inf`` if the frame size differs), and the frames'
    ``(height, width)``."""
    import numpy as np

    from miga.video import iter_frames

    decoder = world.decoder()
    picks = set(np.linspace(0, len(latents) - 1, min(8, len(latents))).round().astype(int).tolist())
    count, errors, size = 0, [], None
    for i, frame in enumerate(iter_frames(video)):
        count += 1
        size = size or frame.shape[:2]
        if i in picks:
            want = decoder.push(latents[i])[0]
            errors.append(float(np.abs(frame.astype(np.float64) - want).mean()) if frame.shape == want.shape
                          else float("inf"))
    return count, (float(np.mean(errors)) if errors else 0.0), size


def evaluate_gaussian(args) -> int:
    """``miga eval --world gaussian``: identity metrics of the saved latents against the world's prior."""
    from miga.engine.prompts import PromptSchedule
    from miga.evaluation.identity import identity_report
    from miga.evaluation.latents import read_latents
    from miga.video import atomic_write_text, read_prompts_metadata

    paths = _gaussian_latents(args)
    results = []
    for video, latents_path in zip(args.videos, paths):
        entries = [(0, args.prompt)] if args.prompt is not None else read_prompts_metadata(video)
        if entries is None:
            raise MigaError(f"{video} holds no prompt (it was not made by miga generate); pass --prompt TEXT")
        stale = None if args.latents else _stale_latents(video, latents_path)
        if stale:
            raise MigaError(f"not using the latents {latents_path}: {stale}")
        latents, meta = read_latents(latents_path)
        k = int(meta.get("frames_per_latent", 1))
        world = gaussian_world_for(latents.shape[1:], latents_path)
        if k != 1:
            raise MigaError(f"latents {latents_path} hold {k} frames per latent; the Gaussian world's hold 1")
        frames, error, size = _gaussian_frames(video, latents, world)
        if frames != len(latents):
            raise MigaError(f"latents {latents_path} hold {len(latents)} latents ({k} frame(s) each), but {video} "
                            f"has {frames} frames")
        _, h, w = world.latent_shape
        if size is not None and tuple(size) != (8 * h, 8 * w):
            raise MigaError(f"{video} has {size[1]}x{size[0]} frames, but the Gaussian world decodes the latents of "
                            f"{latents_path} to {8 * w}x{8 * h}")
        if error > GAUSSIAN_DECODE_TOLERANCE:
            raise MigaError(f"{video} is not the Gaussian world's decoding of {latents_path} (its frames differ by "
                            f"{error:.0f} of 255 levels on average): --world gaussian measures videos of miga generate "
                            "--model gaussian or gaussian-clip")
        try:
            schedule = PromptSchedule(tuple(s for s, _ in entries), tuple(p for _, p in entries))
        except MigaError as exc:
            raise MigaError(f"{video}: {exc}") from None
        n = _identity_frames(entries, frames, args.prompt is not None) // k
        if n < 2:
            raise MigaError(f"{video}: the identity metrics need at least 2 latents of its first prompt, got {n}")
        report = identity_report(latents[:n], world, world.encode_prompt(schedule.prompts[0]))
        results.append({"video": video, "latents": latents_path, "frames": frames, "frames_per_latent": k,
                        "latents_measured": n, "prompt": schedule.prompts[0], "prompts": [list(e) for e in entries],
                        "prompt_source": "--prompt" if args.prompt is not None else "metadata",
                        "world": {"identity_share": world.identity_share, "rho": world.rho, "beta": world.beta,
                                  "k0": world.k0, "latent_shape": list(world.latent_shape)},
                        "identity": report["video"], "prior_sample": report["prior_sample"],
                        "prior_seed": report["prior_seed"]})
    lines = []
    for r in results:
        lines += _gaussian_block(r) + [""]
    note = GAUSSIAN_IDENTITY_NOTE
    lines.append(note)
    print("\n".join(lines))
    if args.json:
        atomic_write_text(args.json, json.dumps({"world": args.world, "definition": note, "videos": results},
                                                indent=1) + "\n")
    if args.plot:
        from miga.evaluation.identity_plot import plot_gaussian_identity

        plot_gaussian_identity(results, args.plot)
    return 0


def _gaussian_block(r: dict) -> list[str]:
    """One video's lag-correlation and identity-drift rows against the prior."""
    m, draw, w = r["identity"], r["prior_sample"], r["world"]
    segment = (f" (its first prompt's; {r['frames']} frames in all)" if r["latents_measured"] * r["frames_per_latent"]
               < r["frames"] else "")
    lines = [f"{r['video']}: {r['latents_measured']} latents [{', '.join(map(str, w['latent_shape']))}]"
             f"{segment} from {r['latents']}; prompt {r['prompt']!r} ({r['prompt_source']}); Gaussian world "
             f"identity_share {w['identity_share']:g}, rho {w['rho']:g}",
             f"  {'measure':<16}  {'d':>5}  {'measured':>8}  {'prior':>7}  {'true sample (mean ± sd)':>23}  "
             f"{'z':>6}  {'prior draw':>10}"]
    for key, label, d_key in (("lag_correlation", "lag correlation", "lag"),
                              ("identity_drift", "identity drift", "distance")):
        drawn = {row[d_key]: row["measured"] for row in draw[key]}
        for row in m[key]:
            band = ("-" if row["prior_sd"] is None else f"{row['prior_mean']:.4f} ± {row['prior_sd']:.4f}")
            lines.append(f"  {label:<16}  {row[d_key]:>5}  {row['measured']:>8.4f}  {row['prior']:>7.4f}  "
                         f"{band:>23}  {_cell(row['z'], '+.1f'):>6}  {_cell(drawn.get(row[d_key]), '.4f'):>10}")
    return lines


MODELS_WIDTH = 100
"""``miga models`` fits its table in this many columns."""


def _wrapped(text: str, indent: int, width: int = MODELS_WIDTH) -> list[str]:
    """``text`` wrapped to ``width`` columns after ``indent`` (the first line's indent is the caller's)."""
    import textwrap

    return textwrap.wrap(text, width - indent, break_long_words=False, break_on_hyphens=False) or [""]


def _command_lines(command: str, indent: int, width: int = MODELS_WIDTH) -> list[str]:
    """A shell command in lines of at most ``width - indent`` columns, continued with `` \\`` (so it still
    pastes into a shell) and the continuation indented two more."""
    lines, line = [], ""
    for word in command.split():
        room = width - indent - (2 if lines else 0) - 2  # the continuation's " \\"
        if line and len(line) + 1 + len(word) > room:
            lines.append(line + " \\")
            line = word
        else:
            line = f"{line} {word}" if line else word
    lines.append(line)
    return [lines[0]] + ["  " + line for line in lines[1:]]


def _kinds_table() -> str:
    """``miga models``: every kind in the order of recognition, what it is, needs, and which pipelines
    ``miga.from_pipe`` takes."""
    from miga.backbones import registry

    kinds = registry.kinds()
    name_width = max(len(kind.name) for kind in kinds) + 3
    label_width = len("from_pipe: ")
    text_at = name_width + label_width
    lines = _wrapped("Models miga loads, in the order of recognition: --model NAME or PATH goes to the first kind "
                     "below that recognises it; any other folder goes to the last one, which says what it lacks.", 0)
    lines += ["", f"{'kind':<{name_width}}what it is, what it needs"]
    for kind in kinds:
        summary = _wrapped(kind.summary, name_width)
        lines.append(f"{kind.name:<{name_width}}{summary[0]}")
        lines += [" " * name_width + more for more in summary[1:]]
        rows = []
        if kind.names:
            rows.append(("names", _wrapped(", ".join(kind.names), text_at)))
        rows.append(("needs", _wrapped(kind.needs, text_at)))
        if kind.download:
            rows.append(("download", [line for command in kind.download.split("; ")
                                      for line in _command_lines(command, text_at)]))
        if kind.pipelines:
            rows.append(("from_pipe", _wrapped(", ".join(kind.pipelines), text_at)))
        for label, text in rows:
            lines.append(" " * name_width + f"{label + ':':<{label_width}}{text[0]}")
            lines += [" " * text_at + more for more in text[1:]]
    lines.append("")
    lines += _wrapped("names: built in, no files needed; download: a command that fetches the weights into DIR "
                      "(then --model DIR); from_pipe: the diffusers pipelines that miga.from_pipe(pipe) takes. "
                      "'miga models DIR' lists the models in DIR.", 0)
    return "\n".join(lines)


def _models_in(folder: str) -> list[tuple[str, str]]:
    """``(path, kind name)`` for ``folder`` itself if it is a model, then for each of its entries (sorted) that
    a kind recognises; an entry whose files cannot be read gets ``?`` and why."""
    from miga.backbones import registry

    def row(path: str) -> tuple[str, str] | None:
        try:
            kind = registry.kind_of(path)
        except MigaError as exc:
            return path, f"?  {exc}"
        except OSError as exc:
            return path, f"?  cannot read {exc.filename or path}: {exc.strerror}"
        return None if kind is None else (path, kind.name)

    try:
        names = sorted(os.listdir(folder))
    except OSError as exc:
        raise MigaError(f"cannot read {folder}: {exc.strerror}") from None
    rows = [row(folder.rstrip("/\\") or folder)]
    rows += [row(os.path.join(folder, name)) for name in names]
    return [r for r in rows if r is not None]


def models(args) -> int:
    """``miga models [DIR ...]``: the kinds of model, or the models found in folders (recognised, not loaded)."""
    if not args.dirs:
        print(_kinds_table())
        return 0
    for folder in args.dirs:
        if not os.path.exists(folder):
            raise MigaError(f"{folder} does not exist")
        if not os.path.isdir(folder):
            raise MigaError(f"{folder} is not a folder; give the folder that holds the models")
    found = {folder: _models_in(folder) for folder in args.dirs}
    rows = [r for folder in args.dirs for r in found[folder]]
    width = max((len(path) for path, _ in rows), default=0) + 3
    for folder in args.dirs:
        for path, kind in found[folder]:
            print(f"{path:<{width}}{kind}")
        if not found[folder]:
            from miga.backbones import registry

            print(f"no model in {folder} that miga recognises; it looks for:")
            kinds = [kind for kind in registry.kinds() if kind.recognises_path is not None]
            name_width = max(len(kind.name) for kind in kinds) + 3
            for kind in kinds:
                needs = _wrapped(kind.needs, 2 + name_width)
                print(f"  {kind.name:<{name_width}}{needs[0]}")
                for more in needs[1:]:
                    print(" " * (2 + name_width) + more)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # the command line, for results that record it
    try:
        if args.command == "generate":
            return generate(args)
        if args.command == "train-toy":
            return train_toy(args)
        if args.command == "eval":
            return evaluate(args)
        if args.command == "models":
            return models(args)
        if args.command == "bench":
            from miga.bench import bench

            return bench(args)
        if args.command == "ablate":
            from miga.ablation import ablate

            return ablate(args)
        if args.command == "compare":
            from miga.ablation import compare

            return compare(args)
        if args.command == "app":
            from miga.app.command import run as run_app

            return run_app(args)
    except MigaError as exc:
        print(f"miga: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
