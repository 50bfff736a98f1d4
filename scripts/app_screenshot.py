"""Take ``docs/app.png`` (the running ``miga app`` in headless Chromium) and measure, in one run, the time from
clicking Generate to the first frame on the page and the app's overhead over ``miga generate`` for the same
video (same prompts, frames, seed, model and run checkpoints).

    OMP_NUM_THREADS=1 python scripts/app_screenshot.py [--out docs/app.png] [--model shapes] [--frames 48]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time

PROMPTS = [("0", "a red circle bouncing on a blue background"),
           ("24", "a yellow square and a red circle orbiting on a gradient black background")]


def miga_generate(args, scratch: str, tag: str) -> tuple[float, float]:
    """``miga generate --run-dir`` of the same video: (its generation seconds, the process's wall seconds)."""
    prompts = os.path.join(scratch, "prompts.txt")
    with open(prompts, "w", encoding="utf-8") as fh:
        fh.writelines(f"{s}: {p}\n" for s, p in PROMPTS)
    stats = os.path.join(scratch, f"stats-{tag}.json")
    command = [sys.executable, "-m", "miga", "generate", "--prompts", prompts, "--model", args.model, "--frames",
               str(args.frames), "--seed", "0", "--out", os.path.join(scratch, f"cli-{tag}.mp4"), "--run-dir",
               os.path.join(scratch, f"cli-run-{tag}"), "--stats", stats, "--no-progress"]
    t0 = time.perf_counter()
    subprocess.run(command, check=True, env={**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")})
    wall = time.perf_counter() - t0
    with open(stats, encoding="utf-8") as fh:
        return json.load(fh)["total_seconds"], wall


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="docs/app.png")
    parser.add_argument("--model", default="shapes")
    parser.add_argument("--frames", type=int, default=48)
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    args = parser.parse_args()
    scratch = tempfile.mkdtemp(prefix="miga-app-shot-")
    os.environ.setdefault("GRADIO_TEMP_DIR", os.path.join(scratch, "gradio"))
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
    import torch

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    from playwright.sync_api import expect, sync_playwright

    from miga.app.command import create, launch

    cli_before = miga_generate(args, scratch, "before")
    runs = os.path.join(scratch, "runs")
    os.makedirs(runs)
    demo = create(None, runs)
    _, url, _ = launch(demo, runs, prevent_thread_lock=True, quiet=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=args.chromium, args=[
            "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
            "--autoplay-policy=no-user-gesture-required"])
        page = browser.new_page(viewport={"width": 1300, "height": 1000})
        page.goto(url)
        page.locator("#model input").click()
        page.get_by_role("option", name=f"{args.model} (built in)").click()
        page.locator("#frames input").fill(str(args.frames))
        for i, (start, prompt) in enumerate(PROMPTS):
            page.locator(f"#start-{i} textarea").fill(start)
            page.locator(f"#prompt-{i} textarea").fill(prompt)
        expect(page.locator("#preview")).to_contain_text(f"{PROMPTS[1][0]}–{args.frames - 1}")
        t0 = time.perf_counter()
        page.click("#generate")
        page.locator("#latest img").wait_for(state="visible", timeout=600_000)
        first_frame = time.perf_counter() - t0
        status = page.locator("#status textarea")
        expect(status).to_have_value(re.compile(r"complete"), timeout=600_000)
        app_seconds = time.perf_counter() - t0
        page.wait_for_timeout(1500)  # the run list, details and contact sheet
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        page.screenshot(path=args.out, full_page=True)
        browser.close()
    demo.close()

    cli_after = miga_generate(args, scratch, "after")
    cli_seconds = (cli_before[0] + cli_after[0]) / 2
    from miga.video import read_video

    (run,) = os.listdir(runs)
    app_video = read_video(os.path.join(runs, run, "video.mp4"))[0]
    same = app_video.shape == read_video(os.path.join(scratch, "cli-before.mp4"))[0].shape and (
        app_video == read_video(os.path.join(scratch, "cli-before.mp4"))[0]).all()
    from miga.checkpoint import load_state

    app_generating = float(load_state(os.path.join(runs, run, "checkpoint.safetensors"))["outputs"]["seconds"])
    print(f"wrote {args.out}")
    print(f"{args.model}, {args.frames} frames, torch threads {torch.get_num_threads()}:")
    print(f"  the app's video equals miga generate's: {bool(same)}")
    print(f"  Generate click -> first frame on the page: {first_frame:.1f} s")
    print(f"  Generate click -> 'complete' on the page:  {app_seconds:.1f} s ({app_generating:.1f} s of it generating, "
          f"{app_seconds - app_generating:.1f} s the page around it)")
    for when, (seconds, wall) in (("before", cli_before), ("after", cli_after)):
        print(f"  miga generate --run-dir, same video, {when} the app: {seconds:.1f} s generating ({wall:.1f} s with "
              f"Python start and model load)")
    print(f"  app overhead over miga generate: {app_seconds - cli_seconds:+.1f} s "
          f"({100 * (app_seconds / cli_seconds - 1):+.0f}%)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
