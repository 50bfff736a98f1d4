"""Checkpoint and resume (issue 6): a run killed with SIGKILL more than once, or stopped with Ctrl-C, and
resumed gives the latents of an uninterrupted run and the same video file; the partial video plays.

Kill moments are found by watching the run dir (the checkpoint file being replaced, the next segment being
started), not by sleeping. Uninterrupted references run in-process; the runs that are killed are separate
processes forked from a server that imported miga once (:class:`cli_helpers.ForkedCLI`), and the Ctrl-C
test runs the real ``python -m miga`` (about 2 s of imports).
"""

import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest
import torch

from miga import FIFOConfig, LongVideo, MIGAConfig, load_backbone
from miga.checkpoint import load_state, save_state
from miga.errors import MigaError
from miga.evaluation.latents import read_latents
from miga.runs import CHECKPOINT, SEGMENT
from miga.video import read_video
from cli_helpers import ForkedCLI, run

GAUSSIAN = ["x", "--model", "gaussian", "--height", "32", "--width", "32", "--frames", "64", "--checkpoint-every", "8"]
SHAPES = ["a red circle bouncing", "--frames", "24", "--checkpoint-every", "4"]
CASES = {  # (model, method): generate options; the shapes model with fewer steps to keep the test short
    ("gaussian", "fifo"): GAUSSIAN + ["--method", "fifo"],
    ("gaussian", "miga"): GAUSSIAN + ["--method", "miga"],
    ("shapes", "fifo"): SHAPES + ["--method", "fifo", "--steps", "16"],
    ("shapes", "miga"): SHAPES + ["--method", "miga", "--steps", "18"],
}
_references = {}


def outputs(folder):
    """(run dir, video, latents file) of a run kept in ``folder``."""
    return str(folder / "run"), str(folder / "v.mp4"), str(folder / "v.latents.safetensors")


def argv_for(case, folder):
    run_dir, out, lat = outputs(folder)
    return ["generate", *CASES[case], "--out", out, "--save-latents", lat, "--run-dir", run_dir, "--no-progress"]


def reference(case, tmp_path_factory, capsys):
    """The uninterrupted run of ``case`` (in-process, once per session): (latents, video bytes)."""
    if case not in _references:
        folder = tmp_path_factory.mktemp("reference")
        code, _, err = run(capsys, *argv_for(case, folder))
        assert code == 0, err
        _, out, lat = outputs(folder)
        _references[case] = (read_latents(lat)[0], open(out, "rb").read())
    return _references[case]


def signature(path):
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return st.st_ino, st.st_mtime_ns, st.st_size


def start(argv):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "miga", *argv], stderr=subprocess.PIPE, env=env)


def stop_when(proc, ready, sig=signal.SIGKILL, timeout=120.0):
    """Send ``sig`` to ``proc`` as soon as ``ready()`` holds; return (exit status, stderr)."""
    deadline = time.monotonic() + timeout
    while proc.poll() is None and not ready():
        assert time.monotonic() < deadline, "the run never reached the moment to stop it"
        time.sleep(0.002)
    if proc.poll() is None:
        proc.send_signal(sig)
    proc.wait()
    if isinstance(proc, ForkedCLI):
        return proc.returncode, proc.stderr_text()
    return proc.returncode, proc.stderr.read().decode()


def after_checkpoints(run_dir, count):
    """A condition: the checkpoint was replaced ``count`` times since now."""
    path = os.path.join(run_dir, CHECKPOINT)
    seen = [signature(path)]

    def ready():
        sig = signature(path)
        if sig != seen[-1]:
            seen.append(sig)
        return len(seen) > count
    return ready


def frames_in(path, nbytes=None, scratch=None):
    """Frames PyAV decodes from ``path`` (or from its first ``nbytes`` bytes)."""
    if nbytes is not None:
        with open(path, "rb") as fh:
            data = fh.read(nbytes)
        path = scratch
        with open(path, "wb") as fh:
            fh.write(data)
    return len(read_video(path)[0])


def check_partial_video(run_dir, out, scratch):
    """The partial video plays: its first ``bytes`` (as the checkpoint records them) hold exactly the
    checkpointed frames, and the whole file (a segment may have been appended just before the kill) at
    least those."""
    done = load_state(os.path.join(run_dir, CHECKPOINT))["outputs"]["video"]
    assert done["frames"] > 0
    assert frames_in(out + ".partial", done["bytes"], scratch) == done["frames"]
    assert frames_in(out + ".partial") >= done["frames"]


@pytest.mark.parametrize("case", list(CASES), ids=["-".join(c) for c in CASES])
def test_killed_twice_and_resumed_equals_uninterrupted(case, tmp_path, tmp_path_factory, capsys):
    run_dir, out, lat = outputs(tmp_path)
    # 1. killed right after a checkpoint
    code, err = stop_when(ForkedCLI(argv_for(case, tmp_path), tmp_path / "err1"), after_checkpoints(run_dir, 1))
    assert code == -signal.SIGKILL, f"the run ended before it was killed: {err}"
    check_partial_video(run_dir, out, str(tmp_path / "cut.mp4"))
    # 2. resumed, then killed in the middle of a segment (frames made since the last checkpoint are lost)
    changed, segment, seen = after_checkpoints(run_dir, 1), os.path.join(run_dir, SEGMENT + ".partial"), []

    def mid_segment():  # a checkpoint was taken, and the next segment has frames
        if not seen and changed():
            seen.append(True)
        return bool(seen) and os.path.exists(segment)
    code, err = stop_when(ForkedCLI(["generate", "--resume", run_dir, "--no-progress"], tmp_path / "err2"),
                          mid_segment)
    assert code == -signal.SIGKILL, f"the resumed run ended before it was killed: {err}"
    # 3. resumed to the end (in-process: it is not killed)
    code, _, err = run(capsys, "generate", "--resume", run_dir, "--no-progress")
    assert code == 0, err
    latents, video = reference(case, tmp_path_factory, capsys)
    assert torch.equal(read_latents(lat)[0], latents)
    assert open(out, "rb").read() == video  # same segments, same encoder: the same file
    frames = int(CASES[case][CASES[case].index("--frames") + 1])
    assert frames_in(out) == frames and not os.path.exists(out + ".partial")


def test_ctrl_c_leaves_a_checkpoint_and_a_playable_video(tmp_path, tmp_path_factory, capsys):
    case = ("gaussian", "miga")
    run_dir, out, lat = outputs(tmp_path)
    code, err = stop_when(start(argv_for(case, tmp_path)), after_checkpoints(run_dir, 1), signal.SIGINT)
    lines = err.strip().splitlines()
    assert code == 130 and len(lines) == 1 and f"miga generate --resume {run_dir}" in lines[0], err
    check_partial_video(run_dir, out, str(tmp_path / "cut.mp4"))
    assert not os.path.exists(out)
    code, _, err = run(capsys, "generate", "--resume", run_dir, "--no-progress")
    assert code == 0, err
    latents, video = reference(case, tmp_path_factory, capsys)
    assert torch.equal(read_latents(lat)[0], latents) and open(out, "rb").read() == video


# ---------------------------------------------------------------- the library API, in-process
class KeepState:
    """A decoder wrapper without ``stateless``: resuming then replays every latent through it."""

    def __init__(self, decoder):
        self.decoder = decoder

    def push(self, latent):
        return self.decoder.push(latent)

    def flush(self):
        return self.decoder.flush()


@pytest.mark.parametrize("cfg,stateful", [(MIGAConfig.gaussian(), False), (FIFOConfig.gaussian(), True)],
                         ids=["miga", "fifo-stateful-decoder"])
def test_library_run_stopped_anywhere_resumes_exactly(tmp_path, cfg, stateful):
    """``LongVideo.start_run`` stopped at many moments (between passes during the fill, between latents,
    mid-segment) and ``LongVideo.resume`` to the end: the same latents and video as one uninterrupted run."""
    world = load_backbone("gaussian", height=32, width=32)
    if stateful:
        world.decoder = lambda d=world.decoder: KeepState(d())
    whole = LongVideo(world, "x", 45, cfg, seed=3).start_run(str(tmp_path / "a"), str(tmp_path / "a.mp4"),
                                                              checkpoint_every=8)
    assert whole.generate() is True
    ref_latents = torch.stack(list(LongVideo(world, "x", 45, cfg, seed=3).latents()))
    run = LongVideo(world, "x", 45, cfg, seed=3).start_run(str(tmp_path / "b"), str(tmp_path / "b.mp4"),
                                                            checkpoint_every=8)
    stops = 0
    for at in (2, 7, 19, 11):  # the stop callback is asked before every pass and after every latent
        calls = [0]

        def stop():
            calls[0] += 1
            return calls[0] >= at
        assert run.generate(stop=stop) is False
        stops += 1
        run = LongVideo.resume(str(tmp_path / "b"), backbone=world)
    assert run.generate() is True and stops == 4
    assert torch.equal(read_latents(run.latents_path)[0], ref_latents)
    assert (tmp_path / "b.mp4").read_bytes() == (tmp_path / "a.mp4").read_bytes()
    assert run.video.stats.nfe == whole.video.stats.nfe  # counters survive too


@pytest.mark.parametrize("mode", [dict(reflection_threshold=0.0, reflection_calibration="fixed", reflect_during="all"),
                                  dict(reflection_calibration="auto", reflect_during="all", reflection_auto_factor=0.5,
                                       reflection_auto_warmup=1)])
def test_state_dict_round_trip_through_a_checkpoint_file(tmp_path, mode):
    """``LongVideo.state_dict`` saved and loaded between any two latents continues with the same latents
    (MIGA with self-reflection triggering, fixed and calibrated thresholds, batch Stage 2)."""
    world = load_backbone("gaussian", height=32, width=32)
    cfg = MIGAConfig.gaussian().with_(stage2_mode="batch", **mode)
    ref = torch.stack(list(LongVideo(world, "x", 80, cfg, seed=1).latents()))
    video = LongVideo(world, "x", 80, cfg, seed=1)
    got, it = [], video.latents()
    for k in (1, 13, 30, 55):
        while len(got) < k:
            got.append(next(it))
        save_state(str(tmp_path / "c.safetensors"), video.state_dict())
        video = LongVideo(world, "x", 80, cfg, seed=1)
        video.load_state_dict(load_state(str(tmp_path / "c.safetensors")))
        it = video.latents()
    got += list(it)
    assert torch.equal(torch.stack(got), ref) and video.stats.reflection_triggers > 0


def test_same_command_again_continues_and_a_complete_run_is_kept(tmp_path, capsys):
    argv = ["generate", "x", "--model", "gaussian", "--height", "32", "--width", "32", "--frames", "20",
            "--out", str(tmp_path / "v.mp4"), "--run-dir", str(tmp_path / "r"), "--no-progress"]
    code, _, err = run(capsys, *argv, "--stats", tmp_path / "s.json", "--preview", tmp_path / "p.png")
    assert code == 0, err
    stats = json.loads((tmp_path / "s.json").read_text())
    assert stats["frames"] == 20 and stats["run_dir"] == str(tmp_path / "r") and not stats["resumed"]
    assert (tmp_path / "p.png").stat().st_size > 0 and (tmp_path / "r" / "latents.safetensors").exists()
    first = (tmp_path / "v.mp4").read_bytes()
    code, _, err = run(capsys, *argv)  # the run is complete: nothing is redone
    assert code == 0 and (tmp_path / "v.mp4").read_bytes() == first, err


def test_a_run_dir_in_use_is_refused(tmp_path, capsys):
    import fcntl

    argv = ["generate", "x", "--model", "gaussian", "--height", "32", "--width", "32", "--frames", "8",
            "--out", str(tmp_path / "v.mp4"), "--run-dir", str(tmp_path / "r"), "--no-progress"]
    assert run(capsys, *argv)[0] == 0
    before = (tmp_path / "v.mp4").read_bytes()
    with open(tmp_path / "r" / "lock", "w") as held:  # another process working on the run
        fcntl.flock(held, fcntl.LOCK_EX)
        code, _, err = run(capsys, *argv)
    assert code == 2 and "in use by another miga process" in err and len(err.strip().splitlines()) == 1
    assert (tmp_path / "v.mp4").read_bytes() == before


# ---------------------------------------------------------------- issue 19
def frames_made(err_path):
    """The last frame count the progress bar wrote to ``err_path`` (0 before the first)."""
    try:
        text = open(err_path, encoding="utf-8", errors="replace").read()
    except FileNotFoundError:
        return 0
    counts = re.findall(r"\| *(\d+)/\d+ \[", text)
    return int(counts[-1]) if counts else 0


def test_a_killed_run_without_run_dir_leaves_a_partial_video_that_plays(tmp_path):
    """Issue 19.1: ``miga generate`` without ``--run-dir`` killed with -9 leaves an ``OUT.partial`` that plays
    up to its last fragment (before, FFmpeg's write buffer held everything: 28 bytes, "moov atom not found")."""
    out, err = tmp_path / "k.mp4", tmp_path / "err"
    proc = ForkedCLI(["generate", "x", "--model", "gaussian", "--height", "32", "--width", "32", "--method", "fifo",
                      "--frames", "5000", "--out", out], err)
    code, text = stop_when(proc, lambda: frames_made(err) >= 120)
    assert code == -signal.SIGKILL, f"the run ended before it was killed: {text}"
    made = frames_made(err)  # at least this many were handed to the encoder
    # lost: the frames x264 holds (4, its B-frames) and the open fragment (up to 1 s = 8 frames), and a few
    # more for a cut fragment
    assert made - 16 <= frames_in(str(out) + ".partial") <= 5000
    assert not out.exists()


def test_resume_at_another_thread_count_is_exact(tmp_path, tmp_path_factory, capsys):
    """Issue 19.2: a run started with 2 torch threads, killed, and resumed by a process with 1 thread makes
    the latents and video of an uninterrupted 2-thread run (CPU kernels sum in another order with another
    thread count: 5.9e-6 apart before): the run records its thread count and a resume uses it, saying so."""
    case = ("shapes", "fifo")
    run_dir, out, lat = outputs(tmp_path)
    code, err = stop_when(ForkedCLI(argv_for(case, tmp_path), tmp_path / "err", threads=2),
                          after_checkpoints(run_dir, 1))
    assert code == -signal.SIGKILL, f"the run ended before it was killed: {err}"
    assert torch.get_num_threads() == 1
    code, _, err = run(capsys, "generate", "--resume", run_dir, "--no-progress")
    assert code == 0, err
    assert "2 torch threads" in err and torch.get_num_threads() == 1, err
    torch.set_num_threads(2)
    try:
        folder = tmp_path_factory.mktemp("two-threads")
        code, _, err = run(capsys, *argv_for(case, folder))
        assert code == 0, err
    finally:
        torch.set_num_threads(1)
    assert torch.equal(read_latents(lat)[0], read_latents(outputs(folder)[2])[0])
    assert open(out, "rb").read() == open(outputs(folder)[1], "rb").read()
    assert not torch.equal(read_latents(lat)[0], reference(case, tmp_path_factory, capsys)[0])  # 1 thread differs


def test_a_run_started_from_python_resumes_without_its_backbone(tmp_path):
    """``LongVideo.resume(DIR)`` as the README writes it: the backbone from ``load_backbone`` is rebuilt from
    what the run recorded (it needed ``backbone=``, and the error named ``VideoRun``)."""
    world = load_backbone("gaussian", height=32, width=32)
    cfg = MIGAConfig.gaussian()
    first = LongVideo(world, "x", 40, cfg, seed=2).start_run(str(tmp_path / "r"), str(tmp_path / "v.mp4"),
                                                              checkpoint_every=8)
    calls = [0]

    def stop():
        calls[0] += 1
        return calls[0] >= 12
    assert first.generate(stop=stop) is False
    resumed = LongVideo.resume(str(tmp_path / "r"))
    assert resumed.video.backbone is not world and resumed.generate() is True
    reference = torch.stack(list(LongVideo(world, "x", 40, cfg, seed=2).latents()))
    assert torch.equal(read_latents(resumed.latents_path)[0], reference)


def test_a_backbone_that_cannot_be_rebuilt_is_named_in_the_public_api(tmp_path):
    world = load_backbone("gaussian", height=32, width=32)
    del world.load_args  # as a backbone from from_pipe or the user's own adapter
    LongVideo(world, "x", 16, MIGAConfig.gaussian(), seed=0).start_run(str(tmp_path / "r"), str(tmp_path / "v.mp4"))
    with pytest.raises(MigaError, match=r"LongVideo\.resume\(run_dir, backbone=\.\.\.\)"):
        LongVideo.resume(str(tmp_path / "r"))


def test_the_bar_says_what_it_waits_for_and_a_resume_where_it_resumes(tmp_path, capsys, monkeypatch):
    from miga.runs import VideoRun

    small = ["--model", "gaussian", "--height", "32", "--width", "32", "--frames", "24"]
    code, _, err = run(capsys, "generate", "x", *small, "--out", tmp_path / "v.mp4")
    assert code == 0 and "filling the queue" in err, err
    real = VideoRun.generate

    def stop_at_12(self, on_frame=None, stop=None, **kwargs):
        return real(self, on_frame, lambda: self.frames_done >= 12, **kwargs)
    monkeypatch.setattr(VideoRun, "generate", stop_at_12)
    argv = ["generate", "x", *small, "--out", tmp_path / "w.mp4", "--run-dir", tmp_path / "r", "--checkpoint-every",
            "8", "--no-progress"]
    assert run(capsys, *argv)[0] == 130
    monkeypatch.undo()
    code, _, err = run(capsys, "generate", "--resume", tmp_path / "r", "--no-progress")
    assert code == 0 and f"miga: resuming {tmp_path / 'r'} at frame 8 of 24" in err, err
    code, _, err = run(capsys, *argv)  # complete: says so rather than "wrote"
    assert code == 0 and "complete already" in err and "wrote" not in err, err
    assert os.path.getsize(tmp_path / "w.mp4") > 0


def test_a_model_given_by_a_relative_path_resumes_from_another_folder(tmp_path, capsys, monkeypatch):
    from miga.runs import VideoRun
    from toy_helpers import tiny_v2_weights

    work = tmp_path / "work"
    work.mkdir()
    tiny_v2_weights(str(work / "w.safetensors"))
    monkeypatch.chdir(work)
    real = VideoRun.generate

    def stop_at_4(self, on_frame=None, stop=None, **kwargs):
        return real(self, on_frame, lambda: self.frames_done >= 4, **kwargs)
    monkeypatch.setattr(VideoRun, "generate", stop_at_4)
    code, _, err = run(capsys, "generate", "a red circle", "--model", "w.safetensors", "--method", "fifo",
                       "--frames", "8", "--run-dir", "r", "--out", "v.mp4", "--checkpoint-every", "4",
                       "--no-progress")
    assert code == 130, err
    monkeypatch.setattr(VideoRun, "generate", real)
    record = json.loads((work / "r" / "run.json").read_text())
    # everything that rebuilds the model on resume names it by its absolute path
    assert record["cli"]["model"] == record["load"]["model"] == str(work / "w.safetensors")
    assert record["cli"]["model_as_given"] == "w.safetensors"  # for messages
    monkeypatch.chdir(tmp_path)
    # the model moved: one line naming where it was (as typed and absolute) and how to point the run at it
    os.rename(work / "w.safetensors", tmp_path / "moved.safetensors")
    code, _, err = run(capsys, "generate", "--resume", "work/r", "--no-progress")
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert str(work / "w.safetensors") in err and "'w.safetensors'" in err and "--model NEW_PATH" in err, err
    code, _, err = run(capsys, "generate", "--resume", "work/r", "--model", "moved.safetensors", "--no-progress")
    assert code == 0 and "resuming" in err, err


@pytest.mark.parametrize("deleted", ["video", "latents"])
def test_a_checkpoint_whose_partial_file_was_deleted_says_how_to_start_over(tmp_path, deleted):
    """A run whose ``OUT.partial`` (or latent file) was deleted cannot resume; the error names the run dir to
    delete (a missing latent file said only "cannot write ...: No such file or directory")."""
    world = load_backbone("gaussian", height=32, width=32)
    run_dir, out = str(tmp_path / "r"), str(tmp_path / "v.mp4")
    first = LongVideo(world, "x", 40, FIFOConfig.gaussian(), seed=1).start_run(run_dir, out, checkpoint_every=8)
    assert first.generate(stop=lambda: first.frames_done >= 20) is False
    os.remove(out + ".partial" if deleted == "video" else first.latents_path + ".partial")
    what = "the video .* holds 0 bytes" if deleted == "video" else ".* is missing, but the checkpoint says"
    expected = rf"cannot resume: {what}.*; put it back .* delete {re.escape(run_dir)} to make the video again"
    with pytest.raises(MigaError, match=expected):
        LongVideo.resume(run_dir).generate()
