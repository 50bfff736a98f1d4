"""``miga eval``: VBench-Long quality metrics, or a world's metrics (shapes, Gaussian), of videos."""

from __future__ import annotations

import json
import os
import sys

from miga.common import check_output as _check_output
from miga.errors import MigaError

WORLDS = ("shapes", "gaussian")
HELP = "measure videos"
DESCRIPTION = ("Measure videos. Without --world: VBench's temporal flicker, motion smoothness, subject and background "
               "consistency under VBench-Long's protocol (2-second clips), from the decoded video; numbers from "
               "stand-ins for VBench's networks are marked as proxies. --world shapes: find the prompt's objects in "
               "every frame of a shapes-world video and report presence, shape, centroid jumps, background "
               "stability and the drift of the video's identity (hidden attributes) beside a true world clip. --world "
               "gaussian: the lag correlations and identity drift of the latents saved with each video (miga generate "
               "--model gaussian --save-latents) against the Gaussian world's prior and a true sample (see README).")


def add_arguments(parser) -> None:
    """``miga eval``'s options."""
    parser.add_argument("videos", nargs="+", metavar="VIDEO", help="video files")
    parser.add_argument("--world", choices=WORLDS, help="the world the videos show: its world metrics (shapes: from "
                        "the decoded frames; gaussian: from the saved latents)")
    parser.add_argument("--prompt", metavar="TEXT", help="--world: judge every frame against this prompt (gaussian: "
                        "remove its mean) (default: the prompt schedule that miga generate stored in each video; the "
                        "identity is measured on the first prompt's frames)")
    parser.add_argument("--json", metavar="FILE", help="write the full results (summary, per video, per clip or frame) "
                        "as JSON")
    parser.add_argument("--plot", metavar="FILE.png", help="plot per-frame consistency over time (to the first and "
                        "to the previous frame; latent consistency when latents are found); --world shapes: each "
                        "attribute's drift per frame and drift vs distance beside the true world; --world gaussian: lag "
                        "correlation and identity drift vs distance beside the prior and a true sample's band")
    parser.add_argument("--dino", metavar="PATH", help="DINO ViT-B/16 for subject consistency: a transformers folder "
                        "(config.json and model.safetensors, e.g. facebook/dino-vitb16); default: the offline proxy")
    parser.add_argument("--clip", metavar="PATH", help="CLIP ViT-B/32 for background consistency: a transformers "
                        "folder (config.json and model.safetensors, e.g. openai/clip-vit-base-patch32); default: the "
                        "offline proxy")
    parser.add_argument("--amt", metavar="PATH", help="AMT-S weights for motion smoothness, as VBench: amt-s.pth from "
                        "the Hugging Face repo lalala125/AMT; default: an OpenCV flow-interpolation proxy")
    parser.add_argument("--latents", metavar="FILE", action="append", help="latents saved by miga generate "
                        "--save-latents, one per video in order (default: VIDEO's NAME.latents.safetensors if present; "
                        "--world gaussian needs them)")


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



def _video_latents(video: str, given: str | None, frames: int) -> dict | None:
    """MIGA's latent consistency over time from the latents saved with ``video`` (``None`` if none)."""
    from miga.evaluation.latents import default_latents_path, find_latents, latent_consistency, read_latents

    path, _, stale = (given, [given], None) if given else find_latents(video)
    if stale:
        print(f"miga: not using the latents {default_latents_path(video)}: {stale}", file=sys.stderr)
        return None
    if path is None:
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


def run(args) -> int:
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
    from miga.evaluation.latents import default_latents_path, find_latents

    if args.latents and len(args.latents) != len(args.videos):
        raise MigaError(f"give --latents once per video: {len(args.videos)} video(s), {len(args.latents)} --latents")
    paths = []
    for i, video in enumerate(args.videos):
        if args.latents:
            if not os.path.isfile(args.latents[i]):
                raise MigaError(f"cannot read latents {args.latents[i]}: no such file")
            paths.append(args.latents[i])
            continue
        if not os.path.exists(video):
            raise MigaError(f"cannot read video {video}: No such file or directory")
        path, looked, stale = find_latents(video)
        if stale:
            raise MigaError(f"not using the latents {default_latents_path(video)}: {stale}")
        if path is None:
            raise MigaError(f"{video} has no latents ({' nor '.join(looked)} found): --world gaussian measures the "
                            "latents that miga generate --save-latents writes (or give --latents FILE)")
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
