"""``miga app``'s pure parts without a browser: the prompt timeline, path safety, settings checks with the
CLI's messages, the command's refusals, and a job run to completion and resumed."""

import os
import sys

import pytest

from miga.app import paths, settings, timeline
from miga.app.command import check_folders, is_loopback
from miga.errors import MigaError

# ---------------------------------------------------------------------------------------------------- timeline


def test_rows_become_a_schedule_with_frames_and_seconds():
    s = timeline.schedule([("0", "a red circle bouncing"), ("2s", "a blue square drifting"), ("", "")], 48, 12)
    assert s.starts == (0, 24) and s.prompts == ("a red circle bouncing", "a blue square drifting")


def test_rows_without_starts_split_evenly():
    assert timeline.schedule([("", "a"), ("", "b")], 10, 8).starts == (0, 5)


@pytest.mark.parametrize("rows, message, row", [
    ([("", ""), ("", "")], "timeline: no prompts; write at least one row", None),
    ([("0", "a"), ("0", "b")], "timeline row 2: frame numbers must increase (0 after 0)", 2),
    ([("0", "a"), ("30", "b"), ("20", "c")], "timeline row 3: frame numbers must increase (20 after 30)", 3),
    ([("5", "a")], "timeline row 1: the first prompt must start at frame 0 (got 5)", 1),
    ([("0", "a"), ("48", "b")], "timeline row 2: frame 48 is past the end of the video (48 frames, numbered 0 to 47)",
     2),
    ([("0", "a"), ("", "b")], "timeline row 2: mixes prompts with and without frame numbers", 2),
    ([("0", "a"), ("10", "")], "timeline row 2: no prompt after '10:'", 2),
    ([("0", "a"), ("soon", "b")], "timeline row 2: start 'soon' is neither a frame number (48) nor seconds (2s)", 2),
])
def test_bad_timelines_name_the_row(rows, message, row):
    with pytest.raises(timeline.RowError) as info:
        timeline.schedule(rows, 48, 8)
    assert str(info.value).startswith(message) and info.value.row == row


def test_the_timeline_message_is_the_prompt_files():
    from miga.engine.prompts import parse_prompt_file

    with pytest.raises(MigaError) as cli:
        parse_prompt_file("0: a\n30: b\n20: c\n", 48, source="timeline")
    with pytest.raises(MigaError) as app:
        timeline.schedule([("0", "a"), ("30", "b"), ("20", "c")], 48, 8)
    assert str(app.value) == str(cli.value).replace("timeline line", "timeline row")


def test_prompt_files_round_trip():
    rows = timeline.rows_from_file("# fox\na red fox\nthe fox runs\n", 10)
    assert rows == [("0", "a red fox"), ("5", "the fox runs")]
    assert timeline.file_text(rows, 10, 8) == "0: a red fox\n5: the fox runs\n"


def test_preview_move_and_remove():
    parsed = timeline.schedule([("0", "a"), ("6", "b")], 10, 8)
    assert timeline.preview(parsed, 10, 8) == [(0, 5, "a"), (6, 9, "b")]
    rows = [("0", "a"), ("6", "b"), ("", "")]
    assert timeline.move(rows, 1, -1) == [("0", "b"), ("6", "a"), ("", "")]
    assert timeline.move(rows, 0, -1) == rows
    assert timeline.remove(rows, 0) == [("6", "b"), ("", ""), ("", "")]
    assert "| 0–5 |" in timeline.preview_markdown(rows, 10, 8)


# ---------------------------------------------------------------------------------------------------- path safety

@pytest.mark.parametrize("name", ["..", "../x", "a/b", "/etc", "/etc/passwd", "", ".hidden", "a\\..\\b", "x/../..",
                                  "a\x00b", "..."])
def test_run_names_from_the_page_are_not_paths(tmp_path, name):
    with pytest.raises(MigaError, match="not a plain name"):
        paths.run_dir(str(tmp_path), name)


def test_a_link_out_of_the_runs_folder_is_refused(tmp_path):
    (tmp_path / "runs").mkdir()
    (tmp_path / "elsewhere").mkdir()
    os.symlink(tmp_path / "elsewhere", tmp_path / "runs" / "escape")
    with pytest.raises(MigaError, match="not inside"):
        paths.run_dir(str(tmp_path / "runs"), "escape")
    assert paths.run_dir(str(tmp_path / "runs"), "ok-1") == os.path.realpath(tmp_path / "runs" / "ok-1")


@pytest.mark.parametrize("choice", ["/etc", "../models", "models/../x", "models//etc", "models/", "models/a/b",
                                    "gaussian/../../x", "models/missing"])
def test_models_come_only_from_the_list(tmp_path, choice):
    with pytest.raises(MigaError):
        paths.resolve_model(choice, str(tmp_path))


def test_models_found_under_models(tmp_path):
    from miga.toy.train import WEIGHTS

    assert paths.resolve_model("gaussian", None) == "gaussian"
    (tmp_path / "notes").mkdir()
    assert paths.found_models(str(tmp_path)) == []
    with pytest.raises(MigaError, match="without --models"):
        paths.resolve_model("models/notes", None)
    assert ("shapes (built in)", "shapes") in paths.model_choices(str(tmp_path))
    assert WEIGHTS  # train-toy weights are recognised by the registry like any model file


def test_new_run_names_are_plain_and_fresh(tmp_path):
    a = paths.new_run_name("/some/where/../model dir/", str(tmp_path))
    paths.safe_name(a, "run")
    os.mkdir(tmp_path / a)
    assert paths.new_run_name("/some/where/../model dir/", str(tmp_path)) == a + "-2"


# ---------------------------------------------------------------------------------------------------- settings

def page(rows=(("0", "a red circle bouncing"),), **kw):
    return settings.Settings(list(rows), **{"model": "shapes", "frames": 32, **kw})


@pytest.mark.parametrize("kw, field, text", [
    (dict(rows=[("0", "a purple hexagon")]), "timeline", "timeline row 1: prompt 'a purple hexagon': unknown word"),
    (dict(method="fifo", steps=20), "steps", "FIFO needs --steps to be a multiple of the model window f_0=16"),
    (dict(method="fifo", zigzag_width=2), "zigzag_width", "--zigzag-width only apply to --method miga"),
    (dict(method="freenoise"), "method", "--method: choose one of miga, fifo, scalingnoise"),
    (dict(preset="sora"), "preset", "unknown preset 'sora'"),
    (dict(frames=0), "frames", "--frames: must be >= 1, got 0"),
    (dict(frames=2.5), "frames", "--frames: expected an int"),
    (dict(model="/etc"), "model", "unknown model '/etc'"),
    (dict(reflection_threshold="high"), "reflection_threshold", "--reflection-threshold: expected a number"),
    (dict(reflection_threshold="0.1", no_reflection=True), "reflection_threshold",
     "--reflection-threshold sets how self-reflection runs, which --no-reflection turns off"),
])
def test_bad_settings_name_their_field(kw, field, text):
    with pytest.raises(settings.FieldError) as info:
        settings.check(page(**kw), None)
    assert info.value.field == field and text in str(info.value)


def test_the_prompt_message_is_the_clis(capsys):
    from miga.cli import main

    assert main(["generate", "a purple hexagon", "--frames", "8", "--out", os.devnull + ".mp4"]) == 2
    cli = capsys.readouterr().err.strip().removeprefix("miga: error: ")
    with pytest.raises(settings.FieldError) as info:
        settings.check(page(rows=[("", "a purple hexagon")]), None)
    assert str(info.value) == f"timeline row 1: {cli}"


def test_good_settings_build_the_video():
    plan = settings.check(page(rows=[("0", "a red circle bouncing"), ("1s", "a blue square drifting")],
                               method="fifo", seed=3), None)
    assert plan.video.prompts.starts == (0, 12) and plan.video.seed == 3 and plan.args.method == "fifo"


# ---------------------------------------------------------------------------------------------------- the command

@pytest.mark.parametrize("host, loop", [("127.0.0.1", True), ("localhost", True), ("::1", True), ("0.0.0.0", False),
                                        ("192.168.1.5", False), ("example.org", False)])
def test_loopback(host, loop):
    assert is_loopback(host) is loop


def test_folders_are_checked(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(MigaError, match="--models .*: not a folder"):
        check_folders(str(tmp_path / "nope"), str(tmp_path / "runs"))
    with pytest.raises(MigaError, match="--runs .*: not a folder"):
        check_folders(None, str(tmp_path / "file"))
    check_folders(None, str(tmp_path / "runs"))
    assert os.path.isdir(tmp_path / "runs")


def test_without_gradio_one_line_names_the_extra(tmp_path, monkeypatch, capsys):
    from miga.cli import main

    monkeypatch.setitem(sys.modules, "gradio", None)
    assert main(["app", "--runs", str(tmp_path / "runs")]) == 2
    err = capsys.readouterr().err
    assert err == 'miga: error: miga app needs Gradio: pip install "miga-video[app]"\n'


# ---------------------------------------------------------------------------------------------------- jobs

def test_a_job_stops_resumes_and_is_listed(tmp_path):
    from miga.app import jobs
    from miga.video import read_video

    runs = str(tmp_path)
    plan = settings.check(page(rows=[("0", "red"), ("40", "blue")], model="gaussian", frames=64), None)
    job = jobs.start_new(plan, runs, "r1", checkpoint_every=8)
    seen = []
    job.begin()
    for update in job.updates(every=0.05):
        seen += update.frames
        if len(seen) >= 8:
            job.stop()
    job.thread.join()
    assert job.error is None and not job.complete and 8 <= job.done < 64
    info = jobs.run_info(runs, "r1")
    assert info.status.startswith("stopped at") and info.video.endswith(".partial")
    assert jobs.settings_summary(info)["prompts"] == ["0: red", "40: blue"]

    job = jobs.start_resume(runs, "r1").begin()
    last = list(job.updates(every=0.05))[-1]
    assert last.finished and last.complete and last.done == 64 and last.scores
    info = jobs.run_info(runs, "r1")
    assert info.status == "complete" and info.sheet and len(read_video(info.video)[0]) == 64
    assert [i.name for i in jobs.list_runs(runs)] == ["r1"]
    with pytest.raises(MigaError, match="not a run"):
        jobs.start_resume(runs, "r2")


def test_the_cli_resumes_an_app_run(tmp_path):
    """An app run records its options as miga generate does: ``miga generate --resume`` takes it."""
    from miga.app import jobs
    from miga.cli import main

    plan = settings.check(page(model="gaussian", frames=24), None)
    job = jobs.start_new(plan, str(tmp_path), "r", checkpoint_every=8)
    job.stop()  # stops at the first chance
    job.begin().thread.join()
    assert not job.complete and job.error is None
    assert main(["generate", "--resume", str(tmp_path / "r"), "--no-progress"]) == 0
    assert jobs.run_info(str(tmp_path), "r").status == "complete"


def test_a_run_whose_video_points_outside_is_not_served(tmp_path):
    import json

    from miga.app import jobs

    plan = settings.check(page(model="gaussian", frames=16), None)
    job = jobs.start_new(plan, str(tmp_path / "runs"), "r", checkpoint_every=8).begin()
    job.thread.join()
    record_path = tmp_path / "runs" / "r" / "run.json"
    record = json.loads(record_path.read_text())
    (tmp_path / "secret.mp4").write_bytes(b"x")
    record["outputs"]["out"] = str(tmp_path / "secret.mp4")
    record_path.write_text(json.dumps(record))
    assert jobs.run_info(str(tmp_path / "runs"), "r").video is None


def test_ts_chunks_are_h264(tmp_path):
    import av
    import numpy as np

    from miga.app.jobs import ts_chunk

    frames = [np.full((33, 47, 3), i * 20, np.uint8) for i in range(8)]
    path = ts_chunk(frames, 8, str(tmp_path / "c.ts"))
    with av.open(path) as c:
        s = c.streams.video[0]
        assert s.codec_context.name == "h264" and (s.width, s.height) == (46, 32)
        assert sum(1 for _ in c.decode(video=0)) == 8
