"""``miga bench``: speed and memory of FIFO, MIGA without DCE and full MIGA, measured in one run.

Each cell (model, method, length) runs in a fresh subprocess, so its peak memory (RSS on the CPU,
``torch.cuda.max_memory_allocated`` on a GPU) is its own. Per cell:

- NFE per output frame (windows through the model, each guidance branch counted) and model calls per frame
  (batches of them: batched reflection candidates share calls);
- seconds per output frame (generation and writing the MP4, after the model is loaded);
- engine overhead: time in miga's own code (queue, solvers, reflection scores, tiling) as a fraction of
  model time, i.e. ``(total - model - decode - write) / model``;
- time to the first written frame, from the start of generation, and the NFE spent before it (and how many
  of those self-reflection's searches spent);
- self-reflection checks, triggered searches and adopted candidates (MIGA);
- time relative to FIFO on the same model and length, measured in the same run.

``miga`` is full MIGA as the model's preset has it; ``miga-MODE`` is full MIGA with self-reflection mode
MODE of ``ablation.REFLECTION_MODES`` (issue 15's): ``off``, ``all`` (every pass at the paper's delta_adju),
``fill`` (only while the queue fills: released code), ``auto`` (the calibrated threshold) and ``auto-fill``.
``native`` is plain sampling of one f_0-latent clip (Eq. 1), the reference for seconds per latent.
``wan-1.3b-random`` is Wan2.1-T2V-1.3B's transformer and VAE at full size with random weights, and
``videocrafter2-random`` VideoCrafter2's UNet (``base_512_v2``, 1.41 B parameters) and SD VAE at full size
with random weights, 320x512 (GPU benchmarks: no real weights are needed for speed and memory; paper
Tables A3/A4 report VideoCrafter2's).
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from typing import Sequence

from miga.ablation import REFLECTION_MODES
from miga.errors import MigaError

METHODS = ("native", "fifo", "miga-no-dce", "miga") + tuple(f"miga-{mode}" for mode in REFLECTION_MODES)
MODELS = ("gaussian", "shapes", "wan-1.3b-random", "videocrafter2-random")
GPU_MODELS = ("wan-1.3b-random", "videocrafter2-random")
METHOD_NAMES = {"native": "native clip", "fifo": "FIFO", "miga-no-dce": "MIGA w/o DCE", "miga": "MIGA",
                "miga-off": "MIGA, no self-reflection",
                "miga-all": "MIGA, paper threshold, every pass",
                "miga-fill": "MIGA, reflection while filling", "miga-auto": "MIGA, calibrated reflection",
                "miga-auto-fill": "MIGA, calibrated, while filling"}
PROMPTS = {"shapes": "a red circle bouncing on a blue background", "gaussian": "drifting clouds",
           "wan-1.3b-random": "a corgi running along a beach at sunset",
           "videocrafter2-random": "a corgi running along a beach at sunset"}


def method_config(backbone, method: str):
    """The config of a bench method on ``backbone``'s preset (MIGA w/o DCE = Table 5's "+ Stage 2";
    ``miga-MODE`` = MIGA with self-reflection mode MODE of ``ablation.REFLECTION_MODES``)."""
    from miga.ablation import ROWS
    from miga.config import preset

    name = backbone.default_preset
    if method == "fifo":
        return preset(name, "fifo")
    if method == "miga-no-dce":
        return ROWS["tta"].config(name)
    if method.startswith("miga-"):
        return preset(name, "miga").with_(**REFLECTION_MODES[method[len("miga-"):]])
    return preset(name, "miga")


def load_bench_model(model: str, device: str | None, dtype: str | None, height: int | None, width: int | None):
    from miga.pipeline import load_backbone

    if model == "wan-1.3b-random":
        from miga.backbones.wan import WanModel
        from miga.backbones.wan_random import random_wan_components

        return WanModel.from_components(random_wan_components("1.3b"), device=device, dtype=dtype,
                                        height=height, width=width)
    if model == "videocrafter2-random":
        from miga.backbones.videocrafter2 import VideoCrafter2Model
        from miga.backbones.videocrafter2_random import random_videocrafter2_components

        return VideoCrafter2Model.from_components(random_videocrafter2_components(size="full"), device=device,
                                                  dtype=dtype, height=height, width=width)
    return load_backbone(model, device=device, height=height, width=width)


class TimedDecoder:
    """Wraps a backbone's streaming decoder and adds up the seconds it spends."""

    def __init__(self, decoder, sync):
        self.decoder, self.sync, self.seconds = decoder, sync, 0.0

    def push(self, latent):
        t = time.perf_counter()
        out = self.decoder.push(latent)
        self.sync()
        self.seconds += time.perf_counter() - t
        return out

    def flush(self):
        t = time.perf_counter()
        out = self.decoder.flush()
        self.seconds += time.perf_counter() - t
        return out


def run_cell(cell: dict) -> dict:
    """Measure one (model, method, frames) cell in this process; return its figures."""
    import torch

    from miga.pipeline import LongVideo, frames_for_latents
    from miga.video import VideoWriter

    if cell.get("threads"):
        torch.set_num_threads(cell["threads"])
    backbone = load_bench_model(cell["model"], cell.get("device"), cell.get("dtype"), cell.get("height"),
                                cell.get("width"))
    cuda = getattr(backbone, "device", torch.device("cpu"))
    cuda = torch.device(cuda).type == "cuda"

    def sync():
        if cuda:
            torch.cuda.synchronize()

    if cuda:
        torch.cuda.reset_peak_memory_stats()
    method = cell["method"]
    frames = frames_for_latents(backbone, backbone.native_frames) if method == "native" else cell["frames"]
    config = method_config(backbone, "miga" if method == "native" else method)
    t0 = time.perf_counter()
    video = LongVideo(backbone, PROMPTS[cell["model"]], frames, config, seed=cell.get("seed", 0))
    timed = TimedDecoder(backbone.decoder(), sync)
    video.backbone = _WithDecoder(backbone, timed)
    first, first_nfe, first_reflection_nfe = None, None, None
    write_seconds = 0.0
    with tempfile.TemporaryDirectory() as tmp:
        with VideoWriter(os.path.join(tmp, "bench.mp4"), backbone.fps) as writer:
            stream = native_stream(video, timed) if method == "native" else video.frames()
            for frame in stream:
                t = time.perf_counter()
                writer.write(frame)
                write_seconds += time.perf_counter() - t
                if first is None:
                    first, first_nfe = time.perf_counter() - t0, video.stats.nfe
                    first_reflection_nfe = video.stats.reflection_nfe
    sync()
    total = time.perf_counter() - t0
    s = video.stats
    latents = video.num_latents
    engine = total - s.model_seconds - timed.seconds - write_seconds
    return {
        "model": cell["model"], "method": method, "frames": frames, "latents": latents,
        "nfe": s.nfe, "nfe_per_frame": s.nfe / frames, "seconds": total, "seconds_per_frame": total / frames,
        "seconds_per_latent": total / latents, "model_seconds": s.model_seconds, "decode_seconds": timed.seconds,
        "write_seconds": write_seconds, "engine_seconds": engine,
        "engine_overhead": engine / s.model_seconds if s.model_seconds else None,
        "first_frame_seconds": first, "first_frame_nfe": first_nfe,
        "first_frame_reflection_nfe": first_reflection_nfe, "reflection_nfe": s.reflection_nfe, "calls": s.calls,
        "calls_per_frame": s.calls / frames, "reflection_checks": s.reflection_checks,
        "reflection_triggers": s.reflection_triggers, "reflection_adoptions": s.reflection_adoptions,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "peak_gpu_mib": torch.cuda.max_memory_allocated() / 2**20 if cuda else None,
        "device": str(getattr(backbone, "device", "cpu")),
    }


def native_stream(video, decoder):
    """Frames of plain f_0-latent sampling (Eq. 1) with ``video``'s backbone, config and stats."""
    from miga.engine.stepper import sample_clip

    for slot in sample_clip(video._stepper(), video.backbone.native_frames, purpose="native"):
        yield from decoder.push(slot.latent)
    yield from decoder.flush()


class _WithDecoder:
    """A backbone whose ``decoder()`` is a given (timed) decoder; everything else passes through."""

    def __init__(self, backbone, decoder):
        self._backbone, self._decoder = backbone, decoder

    def decoder(self):
        return self._decoder

    def __getattr__(self, name):
        return getattr(self._backbone, name)


def _run_subprocess(cell: dict) -> dict:
    env = dict(os.environ)
    if cell.get("threads"):
        env["OMP_NUM_THREADS"] = str(cell["threads"])
    proc = subprocess.run([sys.executable, "-m", "miga.commands.bench", json.dumps(cell)], capture_output=True, text=True,
                          env=env)
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise MigaError(f"bench cell {cell['model']}/{cell['method']}/{cell.get('frames')} failed: {tail}")
    return json.loads(lines[-1])


def plan_cells(models: Sequence[str], methods: Sequence[str], frames: Sequence[int], **common) -> list[dict]:
    cells = []
    for model in models:
        for method in methods:
            for n in ([frames[0]] if method == "native" else frames):
                cells.append({"model": model, "method": method, "frames": n, **common})
    return cells


def table(results: Sequence[dict]) -> str:
    """A markdown table; ratios are to FIFO on the same model and length, from the same run."""
    fifo = {(r["model"], r["frames"]): r for r in results if r["method"] == "fifo"}
    gpu = any(r["peak_gpu_mib"] is not None for r in results)
    mem = "peak GPU MiB" if gpu else "peak RSS MiB"
    lines = [f"| model | method | frames | NFE/frame | calls/frame | s/frame | time / FIFO | engine overhead | "
             f"first frame s (NFE) | refl. checks / trig. / adopt. | {mem} | {mem.split()[1]} / FIFO |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        ref = fifo.get((r["model"], r["frames"]))
        peak = r["peak_gpu_mib"] if gpu else r["peak_rss_mib"]
        ref_peak = None if ref is None else (ref["peak_gpu_mib"] if gpu else ref["peak_rss_mib"])
        ratio = f"{r['seconds'] / ref['seconds']:.2f}" if ref else "-"
        mem_ratio = f"{peak / ref_peak:.3f}" if ref and peak and ref_peak else "-"
        overhead = "-" if r["engine_overhead"] is None else f"{100 * r['engine_overhead']:.1f} %"
        calls = f"{r['calls_per_frame']:.2f}" if "calls_per_frame" in r else "-"
        first = f"{r['first_frame_seconds']:.2f}"
        if r.get("first_frame_nfe"):
            first += f" ({r['first_frame_nfe']}" + (f", refl. {r['first_frame_reflection_nfe']}"
                                                    if r.get("first_frame_reflection_nfe") else "") + ")"
        refl = (f"{r['reflection_checks']} / {r['reflection_triggers']} / {r['reflection_adoptions']}"
                if r.get("reflection_checks") else "-")
        lines.append(f"| {r['model']} | {METHOD_NAMES[r['method']]} | {r['frames']} | {r['nfe_per_frame']:.2f} | "
                     f"{calls} | {r['seconds_per_frame']:.4f} | {ratio} | {overhead} | {first} | {refl} | "
                     f"{peak:.0f} | {mem_ratio} |")
    return "\n".join(lines)


def length_summary(results: Sequence[dict]) -> str:
    """Peak memory and time to first frame at the longest length relative to the shortest, per model/method."""
    out = []
    keys = sorted({(r["model"], r["method"]) for r in results if r["method"] != "native"})
    for model, method in keys:
        rows = sorted((r for r in results if r["model"] == model and r["method"] == method), key=lambda r: r["frames"])
        if len(rows) < 2:
            continue
        a, b = rows[0], rows[-1]
        mem = "peak_gpu_mib" if a["peak_gpu_mib"] is not None else "peak_rss_mib"
        out.append(f"- {model} {METHOD_NAMES[method]}: peak memory at {b['frames']} frames / at {a['frames']}: "
                   f"{b[mem] / a[mem]:.3f}; first frame {b['first_frame_seconds']:.2f} s vs "
                   f"{a['first_frame_seconds']:.2f} s")
    return "\n".join(out)


HELP = "measure speed and memory of FIFO and MIGA"
DESCRIPTION = (
    "Measure NFE per frame, seconds per frame, the engine's own overhead as a fraction of model time, peak "
    "memory (RSS on the CPU, allocated on a GPU) and time to the first written frame, for each model, "
    "method and length, each in a fresh process, and print a table with ratios to FIFO from the same run. "
    "wan-1.3b-random is Wan2.1-1.3B's transformer and VAE at full size with random weights (GPU).")


def add_arguments(parser) -> None:
    """``miga bench``'s options."""
    parser.add_argument("--models", default="gaussian,shapes", metavar="LIST",
                        help=f"comma-separated: {', '.join(MODELS)} (default gaussian,shapes; the last two need a GPU)")
    parser.add_argument("--methods", default="fifo,miga-no-dce,miga", metavar="LIST",
                        help=f"comma-separated: {', '.join(METHODS)} (default fifo,miga-no-dce,miga)")
    parser.add_argument("--frames", default="200,1000,2000", metavar="LIST",
                        help="comma-separated output lengths (default 200,1000,2000)")
    parser.add_argument("--device", help="cuda or cpu (default: cuda for the random full-size models, else cpu)")
    parser.add_argument("--dtype", choices=("bfloat16", "float16", "float32"), help="precision of the random "
                        "full-size models (default bfloat16 on a GPU)")
    parser.add_argument("--height", type=int, help="frame height (wan-1.3b-random default 480, "
                        "videocrafter2-random 320)")
    parser.add_argument("--width", type=int, help="frame width (wan-1.3b-random default 832, "
                        "videocrafter2-random 512)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per cell (default 1)")
    parser.add_argument("--json", metavar="FILE", help="also write every figure as JSON")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def _list(text: str, allowed: Sequence[str] | None, flag: str, kind=str) -> list:
    items = [t.strip() for t in text.split(",") if t.strip()]
    if not items:
        raise MigaError(f"{flag} is empty")
    out = []
    for item in items:
        try:
            value = kind(item)
        except ValueError:
            raise MigaError(f"{flag}: {item!r} is not {'an integer' if kind is int else 'valid'}") from None
        if allowed is not None and value not in allowed:
            raise MigaError(f"{flag}: unknown {item!r}; choose from {', '.join(allowed)}")
        if kind is int and value < 1:
            raise MigaError(f"{flag}: lengths must be >= 1, got {value}")
        out.append(value)
    return out


def run(args) -> int:
    """``miga bench``."""
    return bench(args)


def bench(args) -> int:
    from tqdm import tqdm

    from miga.common import check_output, machine as _machine
    from miga.video import atomic_write_text

    models = _list(args.models, MODELS, "--models")
    methods = _list(args.methods, METHODS, "--methods")
    frames = _list(args.frames, None, "--frames", int)
    if args.threads < 1:
        raise MigaError(f"--threads must be >= 1, got {args.threads}")
    check_output(args.json)
    gpu_models = [m for m in models if m in GPU_MODELS]
    if gpu_models and (args.device or "cuda").startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise MigaError(f"{gpu_models[0]} needs a GPU (no CUDA device found); pass --device cpu to force it")
    common = {k: v for k, v in (("device", args.device), ("dtype", args.dtype), ("height", args.height),
                                ("width", args.width), ("threads", args.threads)) if v is not None}
    cells = plan_cells(models, methods, frames, **common)
    results = []
    for cell in tqdm(cells, unit="cell", disable=args.no_progress, dynamic_ncols=True):
        results.append(_run_subprocess(cell))
    text = table(results)
    summary = length_summary(results)
    print(text)
    if summary:
        print("\n" + summary)
    print(f"\nmachine: {_machine(args.threads)}")
    if args.json:
        atomic_write_text(args.json, json.dumps({"machine": _machine(args.threads), "cells": results}, indent=2) + "\n")
    return 0


if __name__ == "__main__":  # one cell, run by bench() in a fresh process
    print(json.dumps(run_cell(json.loads(sys.argv[1]))))
