"""The page (``gr.Blocks``): the prompt timeline and settings, Generate/Stop with the live video, latest frame,
progress and consistency plot, and the past runs (settings, video, stats, contact sheet, download)."""

from __future__ import annotations

import os
import shutil
import tempfile
import time

import gradio as gr
import pandas as pd

from miga.app import jobs, paths, settings, timeline
from miga.errors import MigaError

MAX_ROWS = 8
SWITCH_FIELDS = (*settings.MIGA_FIELDS, "no_reflection")
"""The settings inside the "MIGA switches" accordion."""
CHUNK_SECONDS = 1.0  # video per streamed chunk
PLOT_EVERY = 1.0  # seconds between redraws of the score plot
RUN_COLUMNS = ["run", "status", "model", "method", "frames", "seed", "prompts"]
EXAMPLE = [("0", "a red circle bouncing on a blue background"), ("", "")]
_SESSIONS: dict[str, jobs.Job] = {}
"""The job each browser session is running (Stop stops its own session's)."""


def _rows(values) -> list[tuple[str, str]]:
    starts, prompts = values[:MAX_ROWS], values[MAX_ROWS:2 * MAX_ROWS]
    return [(s or "", p or "") for s, p in zip(starts, prompts)]


def _settings(values) -> settings.Settings:
    rest = values[2 * MAX_ROWS:]
    names = ("model", "method", "preset", "frames", "seed", "steps", "height", "width", *settings.MIGA_FIELDS,
             "no_reflection")
    return settings.Settings(_rows(values), **dict(zip(names, rest)))


def _fps(model_choice: str, models_root: str | None) -> float:
    """Frames per second of a model, for starts given in seconds (loaded only if cheap; else 16)."""
    try:
        model = paths.resolve_model(model_choice, models_root)
        if settings.cheap(model):
            return float(settings.backbone(model, None, None).fps)
    except MigaError:
        pass
    return 16.0


def _run_table(runs_root: str) -> pd.DataFrame:
    rows = []
    for info in jobs.list_runs(runs_root):
        s = jobs.settings_summary(info)
        rows.append([info.name, info.status, s["model"], s["method"], s["frames"], s["seed"], " | ".join(s["prompts"])])
    return pd.DataFrame(rows, columns=RUN_COLUMNS)


def _scores_frame(scores) -> pd.DataFrame:
    return pd.DataFrame({"latent": [i for i, _ in scores], "score": [s for _, s in scores]})


def _zoomed(frame, side: int = 192):
    """A small frame enlarged (nearest neighbour) to about ``side`` pixels, for the latest-frame view."""
    k = max(1, side // max(1, min(frame.shape[:2])))
    return frame.repeat(k, axis=0).repeat(k, axis=1) if k > 1 else frame


def _status(name: str, update: jobs.Update) -> str:
    if update.error:
        return f"run {name}: error: {update.error}"
    if update.finished:
        if update.complete:
            return f"run {name}: complete, {update.total} frames"
        return f"run {name}: stopped at frame {update.done}/{update.total}; checkpoint saved, Resume continues it"
    if not update.done or not update.fps:
        return f"run {name}: frame {update.done}/{update.total or '?'} · filling the queue"
    left = (update.total - update.done) / update.fps
    return f"run {name}: frame {update.done}/{update.total} · {update.fps:.1f} frames/s · {left:.0f} s left"


def build(models_root: str | None, runs_root: str, checkpoint_every: int | None = None) -> gr.Blocks:
    """The app over ``models_root`` (read) and ``runs_root`` (written)."""
    choices = paths.model_choices(models_root)
    from miga.config import PRESETS

    with gr.Blocks(title="miga", delete_cache=(3600, 3600)) as demo:
        gr.Markdown("## miga: long video from a prompt timeline")
        with gr.Row():
            with gr.Column(scale=5):
                gr.Markdown("**Prompt timeline**: each row's prompt starts at its frame (`48`) or second (`2s`); "
                            "leave every start empty to split the video evenly.")
                starts, prompts, lines, buttons = [], [], [], []
                for i in range(MAX_ROWS):
                    with gr.Row(visible=i < 2, equal_height=True) as line:
                        start = gr.Textbox(EXAMPLE[i][0] if i < 2 else "", show_label=i == 0, label="start",
                                           elem_id=f"start-{i}", scale=1, min_width=70)
                        prompt = gr.Textbox(EXAMPLE[i][1] if i < 2 else "", show_label=i == 0, label="prompt",
                                            elem_id=f"prompt-{i}", scale=6)
                        up = gr.Button("↑", size="sm", scale=0, min_width=30, elem_id=f"up-{i}")
                        down = gr.Button("↓", size="sm", scale=0, min_width=30, elem_id=f"down-{i}")
                        drop = gr.Button("✕", size="sm", scale=0, min_width=30, elem_id=f"remove-{i}")
                    starts.append(start)
                    prompts.append(prompt)
                    lines.append(line)
                    buttons.append((up, down, drop))
                count = gr.State(2)
                with gr.Row():
                    add = gr.Button("Add row", size="sm", elem_id="add-row")
                    load = gr.UploadButton("Load prompt file", size="sm", file_types=[".txt"], elem_id="load")
                    save = gr.Button("Save prompt file", size="sm", elem_id="save")
                saved = gr.File(label="prompt file", visible=False, elem_id="saved")
                preview = gr.Markdown(elem_id="preview")
                with gr.Row():
                    model = gr.Dropdown(choices, value=choices[0][1], label="model", elem_id="model")
                    method = gr.Dropdown(list(settings.METHODS), value="miga", label="method", elem_id="method")
                    preset = gr.Dropdown([("the model's own", "")] + [(p, p) for p in PRESETS], value="",
                                         label="preset", elem_id="preset")
                with gr.Row():
                    frames = gr.Number(128, label="frames", precision=0, minimum=1, elem_id="frames")
                    seed = gr.Number(0, label="seed", precision=0, elem_id="seed")
                    steps = gr.Number(0, label="steps (0: preset)", precision=0, minimum=0, elem_id="steps")
                    height = gr.Number(0, label="height (0: model's)", precision=0, minimum=0, elem_id="height")
                    width = gr.Number(0, label="width (0: model's)", precision=0, minimum=0, elem_id="width")
                with gr.Accordion("MIGA switches (empty: the preset's)", open=False, elem_id="switches") as switches:
                    with gr.Row():
                        zigzag = gr.Number(None, label="zigzag width L", precision=0, elem_id="zigzag_width")
                        stage2 = gr.Number(None, label="Stage-2 steps K2 (0: off)", precision=0,
                                           elem_id="stage2_steps")
                        guides = gr.Number(None, label="guides m (0: off)", precision=0, elem_id="guides")
                        stride = gr.Number(None, label="stride s", precision=0, elem_id="stride")
                    with gr.Row():
                        threshold = gr.Textbox("", label="reflection threshold (number or auto)",
                                               elem_id="reflection_threshold")
                        no_reflection = gr.Checkbox(False, label="no self-reflection", elem_id="no_reflection")
                with gr.Row():
                    go = gr.Button("Generate", variant="primary", elem_id="generate")
                    stop = gr.Button("Stop", variant="stop", elem_id="stop")
            with gr.Column(scale=4):
                status = gr.Textbox(label="status", interactive=False, elem_id="status")
                live = gr.Video(label="video so far", streaming=True, autoplay=True, elem_id="live")
                latest = gr.Image(label="latest frame", interactive=False, elem_id="latest", height=200)
                plot = gr.LinePlot(_scores_frame([]), x="latent", y="score", elem_id="scores", height=200,
                                   label="latent consistency (each finished latent vs. the one before)")
        gr.Markdown("### Runs")
        table = gr.Dataframe(_run_table(runs_root), interactive=False, elem_id="runs", wrap=True)
        with gr.Row():
            pick = gr.Dropdown([info.name for info in jobs.list_runs(runs_root)], label="run", value=None,
                               elem_id="pick", scale=3)
            resume = gr.Button("Resume", elem_id="resume", scale=1)
            refresh = gr.Button("Refresh", elem_id="refresh", scale=1)
        with gr.Row():
            details = gr.JSON(label="settings and stats", elem_id="details")
            video = gr.Video(label="video", interactive=False, elem_id="run-video")
            sheet = gr.Image(label="contact sheet", interactive=False, elem_id="sheet")
        download = gr.DownloadButton("Download MP4", elem_id="download", interactive=False)

        row_inputs = starts + prompts
        inputs = row_inputs + [model, method, preset, frames, seed, steps, height, width, zigzag, stage2, guides,
                               stride, threshold, no_reflection]
        field_components = dict(zip(settings.FIELDS[1:], inputs[2 * MAX_ROWS:]))

        # ------------------------------------------------------------------------------------------ timeline
        def show_preview(*values):
            rows, frames_value = _rows(values), values[2 * MAX_ROWS]
            try:
                n = int(frames_value or 0)
            except (TypeError, ValueError):
                return "**frames must be a whole number**"
            return timeline.preview_markdown(rows, max(n, 1), _fps(values[-1], models_root))

        preview_inputs = row_inputs + [frames, model]
        gr.on([c.change for c in preview_inputs], show_preview, preview_inputs, preview, queue=False)
        demo.load(show_preview, preview_inputs, preview, queue=False)

        def visible(n):
            return [gr.Row(visible=i < n) for i in range(MAX_ROWS)]

        def add_row(n):
            n = min(n + 1, MAX_ROWS)
            return [n, *visible(n)]

        add.click(add_row, count, [count, *lines], queue=False)
        for i, (up, down, drop) in enumerate(buttons):
            def moved(*values, i=i, step=0, remove=False):
                n, rows = values[-1], _rows(values)
                rows = timeline.remove(rows, i) if remove else timeline.move(rows, i, step)
                n = max(1, n - 1) if remove else n
                return [s for s, _ in rows] + [p for _, p in rows] + [n, *visible(n)]

            outs = row_inputs + [count, *lines]
            up.click(lambda *v, i=i: moved(*v, i=i, step=-1), row_inputs + [count], outs, queue=False)
            down.click(lambda *v, i=i: moved(*v, i=i, step=1), row_inputs + [count], outs, queue=False)
            drop.click(lambda *v, i=i: moved(*v, i=i, remove=True), row_inputs + [count], outs, queue=False)

        def load_file(path, frames_value):
            try:
                with open(path, encoding="utf-8") as fh:
                    text = fh.read()
                rows = timeline.rows_from_file(text, int(frames_value or 1))
            except UnicodeDecodeError:
                return [gr.skip()] * (2 * MAX_ROWS + 1 + MAX_ROWS) + ["**prompt file is not UTF-8 text**"]
            except MigaError as exc:
                return [gr.skip()] * (2 * MAX_ROWS + 1 + MAX_ROWS) + [f"**{exc}**"]
            if len(rows) > MAX_ROWS:
                return [gr.skip()] * (2 * MAX_ROWS + 1 + MAX_ROWS) + [
                    f"**prompt file has {len(rows)} prompts; the page takes {MAX_ROWS}: run longer schedules "
                    f"with `miga generate --prompts FILE`**"]
            rows += [("", "")] * (MAX_ROWS - len(rows))
            n = max(2, sum(1 for s, p in rows if p))
            return [s for s, _ in rows] + [p for _, p in rows] + [n, *visible(n), gr.skip()]

        load.upload(load_file, [load, frames], row_inputs + [count, *lines, preview], queue=False)

        def save_file(*values):
            rows, n = _rows(values), int(values[2 * MAX_ROWS] or 1)
            try:
                text = timeline.file_text(rows, n, _fps(values[-1], models_root))
            except MigaError as exc:
                return gr.File(visible=False), f"**{exc}**"
            folder = tempfile.mkdtemp(prefix="miga-app-")
            path = os.path.join(folder, "prompts.txt")
            with open(path, "w", encoding="utf-8") as fh:
                fh.write(text)
            return gr.File(path, visible=True), gr.skip()

        save.click(save_file, preview_inputs, [saved, preview], queue=False)

        # ------------------------------------------------------------------------------------------ generate
        def validate(*values):
            result = [gr.validate(True, "") for _ in inputs]
            try:
                settings.check(_settings(values), models_root)
            except settings.FieldError as exc:
                if exc.field == "timeline":
                    row = (exc.row or 1) - 1
                    on_start = "start" in str(exc) or "frame" in str(exc).split(":", 1)[-1][:40]
                    index = row if on_start and "prompt '" not in str(exc) else MAX_ROWS + row
                else:
                    index = inputs.index(field_components[exc.field])
                result[index] = gr.validate(False, str(exc))
            return result

        def stream(job: jobs.Job, request: gr.Request | None, progress):
            key = request.session_hash if request is not None else None
            if key:
                _SESSIONS[key] = job
            chunk_dir = tempfile.mkdtemp(prefix="miga-app-chunks-")
            buffer, last, k = [], None, 0
            fps, plotted = None, (0, 0.0)  # scores plotted, when
            try:
                job.begin()
                for update in job.updates():
                    if fps is None and update.total:
                        fps = job.fps or 8.0
                    buffer += update.frames
                    chunk = None
                    if buffer and (update.finished or len(buffer) >= max(1, int((fps or 8) * CHUNK_SECONDS))):
                        k += 1
                        chunk = jobs.ts_chunk(buffer, fps or 8, os.path.join(chunk_dir, f"{k:05d}.ts"))
                        buffer = []
                    if update.frames:
                        last = _zoomed(update.frames[-1])
                    if update.total:
                        progress((update.done, update.total), desc="frames", unit="frames")
                    plot_now = len(update.scores) > plotted[0] and (
                        update.finished or time.monotonic() - plotted[1] >= PLOT_EVERY)
                    if plot_now:
                        plotted = (len(update.scores), time.monotonic())
                    yield (_status(job.name, update), chunk if chunk else gr.skip(),
                           last if update.frames else gr.skip(),
                           _scores_frame(update.scores) if plot_now else gr.skip(),
                           gr.skip(), gr.skip())
                names = [info.name for info in jobs.list_runs(runs_root)]
                yield (gr.skip(), gr.skip(), gr.skip(), gr.skip(), _run_table(runs_root),
                       gr.Dropdown(choices=names, value=job.name))
            finally:
                job.stop()  # the page went away (or the job ended): checkpoint and end
                if job.thread.ident is not None:
                    job.thread.join()
                if key and _SESSIONS.get(key) is job:
                    del _SESSIONS[key]
                shutil.rmtree(chunk_dir, ignore_errors=True)

        def generate(request: gr.Request, *values, progress=gr.Progress()):
            try:
                plan = settings.check(_settings(values), models_root)
            except settings.FieldError as exc:
                raise gr.Error(str(exc), print_exception=False) from None
            name = paths.new_run_name(plan.model, runs_root)
            yield from stream(jobs.start_new(plan, runs_root, name, checkpoint_every), request, progress)

        def resume_run(request: gr.Request, name, progress=gr.Progress()):
            try:
                job = jobs.start_resume(runs_root, name or "")
            except MigaError as exc:
                raise gr.Error(str(exc), print_exception=False) from None
            yield from stream(job, request, progress)

        def open_switches(*values):
            """Open the MIGA switches when the setting refused is one of them: its message is on the field,
            which a closed accordion would hide."""
            try:
                settings.check(_settings(values), models_root)
            except settings.FieldError as exc:
                if exc.field in SWITCH_FIELDS:
                    return gr.Accordion(open=True)
            return gr.skip()

        go.click(open_switches, inputs, switches, queue=False)
        outputs = [status, live, latest, plot, table, pick]
        gen_event = go.click(generate, inputs, outputs, validator=validate, concurrency_limit=1,
                             concurrency_id="gpu", show_progress_on=[status])
        res_event = resume.click(resume_run, pick, outputs, concurrency_limit=1, concurrency_id="gpu",
                                 show_progress_on=[status])

        def stop_job(request: gr.Request = None):
            job = _SESSIONS.get(request.session_hash) if request is not None else None
            if job is None:
                return gr.skip()
            job.stop()
            return f"run {job.name}: stopping at the next checkpoint…"

        stop.click(stop_job, None, status, queue=False)

        # ------------------------------------------------------------------------------------------ runs
        def show_run(name):
            if not name:
                return None, None, None, gr.DownloadButton(value=None, interactive=False)
            try:
                info = jobs.run_info(runs_root, name)
            except MigaError as exc:
                return {"error": str(exc)}, None, None, gr.DownloadButton(value=None, interactive=False)
            playable = info.video
            if playable and playable.endswith(".partial"):  # the part up to the last checkpoint
                copy = os.path.join(tempfile.mkdtemp(prefix="miga-app-"), f"{name}-partial.mp4")
                shutil.copyfile(playable, copy)
                playable = copy
            return (jobs.settings_summary(info), playable, info.sheet,
                    gr.DownloadButton(value=playable, interactive=playable is not None,
                                      label="Download MP4" if info.status == "complete" else "Download MP4 (so far)"))

        pick.change(show_run, pick, [details, video, sheet, download])
        for event in (gen_event, res_event):
            event.then(show_run, pick, [details, video, sheet, download])

        def refresh_runs(name):
            names = [info.name for info in jobs.list_runs(runs_root)]
            return _run_table(runs_root), gr.Dropdown(choices=names, value=name if name in names else None)

        refresh.click(refresh_runs, pick, [table, pick])
    return demo
