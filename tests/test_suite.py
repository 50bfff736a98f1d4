"""``miga suite`` and the runner: a real local Ray cluster (logical GPUs), the in-process path, resume, a worker
killed mid-video, bad input and output paths checked before any work."""

import json
import os
import shutil
import signal
import sys
import tempfile
import threading
import time

import pytest
import torch

from cli_helpers import run
from toy_helpers import tiny_v2_weights

GAUSSIAN = ["--model", "gaussian", "--height", "32", "--width", "32", "--frames", "16", "--dimension", "color",
            "--count", "2", "--methods", "miga,fifo", "--checkpoint-every", "4", "--no-progress"]
METRICS = ("temporal_flicker", "motion_smoothness", "subject_consistency", "background_consistency", "overall")


@pytest.fixture(scope="session")
def ray_cluster():
    """One local Ray cluster for the session: 2 CPUs, 2 logical GPUs, token auth off, state in a scratch dir."""
    ray = pytest.importorskip("ray")
    os.environ["RAY_AUTH_MODE"] = "disabled"
    scratch = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # short: Ray's socket paths must fit 107 bytes
    ray.init(address="local", num_cpus=2, num_gpus=2, include_dashboard=False, log_to_driver=False,
             _temp_dir=scratch)
    yield ray
    ray.shutdown()
    shutil.rmtree(scratch, ignore_errors=True)


def results(out) -> dict:
    return json.loads((out / "results.json").read_text())


def per_prompt(out) -> list:
    return [(r["entry"], r["method"], [round(r[m], 10) for m in METRICS]) for r in results(out)["per_prompt"]]


def mtimes(out) -> dict:
    return {p.name: p.stat().st_mtime_ns for p in (out / "runs").glob("*.mp4")}


@pytest.fixture(scope="module")
def ray_suite(ray_cluster, tmp_path_factory):
    """The Gaussian suite (2 prompts tagged 'color' x 2 methods) made on Ray, then run again."""
    out = tmp_path_factory.mktemp("suite") / "ray"
    from miga import cli

    first = cli.main(["suite", "vbench", *GAUSSIAN, "--out", str(out)])
    before = mtimes(out)
    return out, first, before


def test_the_suite_on_ray_writes_every_video_once_and_a_complete_table(ray_suite, capsys):
    out, code, before = ray_suite
    assert code == 0
    result = results(out)
    assert result["executor"] == "Ray" and result["made"] == 4 and result["failed"] == []
    assert len(before) == 4 and len(list((out / "runs").glob("*.worker"))) == 4
    assert [(r["entry"], r["method"]) for r in result["per_prompt"]] == [("408", "miga"), ("408", "fifo"),
                                                                         ("409", "miga"), ("409", "fifo")]
    assert all(r[m] is not None for r in result["per_prompt"] for m in METRICS)
    assert [a["videos"] for a in result["aggregates"]] == [2, 2]
    assert result["aggregates"][0]["stats"]["overall"]["ci95"] is not None
    assert {r["dimension"] for r in result["dimensions"]} >= {"color"}
    named = out / "vbench" / "fifo" / "a green bicycle-0.mp4"  # as VBench's evaluator names videos
    assert named.is_file() and os.path.samefile(named, out / result["per_prompt"][3]["videos"][0])
    text = (out / "results.md").read_text()
    assert "**Per VBench dimension**" in text and "| color | miga | 2 |" in text
    # the same command again: nothing new (no worker started, no video touched)
    code, _, err = run(capsys, "suite", "vbench", *GAUSSIAN, "--out", out)
    assert code == 0, err
    assert "0 made now, 4 already done" in err and mtimes(out) == before
    assert per_prompt(out) == per_prompt(out)


def test_without_ray_the_suite_runs_in_process_with_the_same_table(ray_suite, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray fails
    out = tmp_path / "here"
    code, _, err = run(capsys, "suite", "vbench", *GAUSSIAN, "--out", out)
    assert code == 0, err
    assert "Ray is not installed" in err and 'pip install "miga-video[cluster]"' in err
    assert results(out)["executor"] == "in-process"
    assert per_prompt(out) == per_prompt(ray_suite[0])


def test_an_interrupted_suite_resumes(ray_suite, tmp_path, capsys, monkeypatch):
    from miga.runs import VideoRun

    real, commits = VideoRun._commit, []

    def commit_then_interrupt(self, complete=False):
        real(self, complete)
        commits.append(complete)
        if len(commits) == 6:  # the second video, after its first checkpoint
            raise KeyboardInterrupt

    monkeypatch.setattr(VideoRun, "_commit", commit_then_interrupt)
    out = tmp_path / "cut"
    code, _, err = run(capsys, "suite", "vbench", *GAUSSIAN, "--in-process", "--out", out)
    assert code == 130 and "run the same command to continue" in err
    assert len(list((out / "runs").glob("*.mp4"))) == 1
    assert len(list((out / "runs").glob("*/checkpoint.safetensors"))) == 2
    monkeypatch.setattr(VideoRun, "_commit", real)
    code, _, err = run(capsys, "suite", "vbench", *GAUSSIAN, "--in-process", "--out", out)
    assert code == 0, err
    assert "3 made now, 1 already done" in err
    assert per_prompt(out) == per_prompt(ray_suite[0])


def test_a_deleted_video_is_made_again(ray_suite, tmp_path, capsys):
    """The suite links every video under VBench's names, so a video deleted after its run finished is made
    again (its finished run dir is cleared, not resumed), with the same numbers."""
    out = tmp_path / "again"
    shutil.copytree(ray_suite[0], out)
    victim = sorted((out / "runs").glob("*.mp4"))[0]
    victim.unlink()
    assert (out / "runs" / victim.stem).is_dir()
    code, _, err = run(capsys, "suite", "vbench", *GAUSSIAN, "--in-process", "--out", out)
    assert code == 0, err
    assert "1 made now, 3 already done" in err and victim.is_file()
    assert per_prompt(out) == per_prompt(ray_suite[0])


def test_a_changed_config_is_refused_in_one_line_and_safe_changes_are_not(ray_suite, tmp_path, capsys):
    out = ray_suite[0]
    changed = [a if a != "16" else "12" for a in GAUSSIAN]
    code, _, err = run(capsys, "suite", "vbench", *changed, "--out", out)
    assert code == 2 and "frames differs (16 there, 12 now)" in err and len(err.strip().splitlines()) == 1
    code, _, err = run(capsys, "suite", "vbench", *GAUSSIAN, "--count", "1", "--in-process", "--out", out)
    assert code == 0 and "0 made now, 2 already done" in err  # fewer prompts: a safe change


def test_a_worker_killed_mid_video_is_retried_and_makes_the_same_latents(ray_cluster, tmp_path):
    from miga.config import preset
    from miga.evaluation.latents import read_latents
    from miga.runner.execute import Outcome, RayPool, Worker, WorkerSpec
    from miga.runner.jobs import make_job

    job = make_job("miga", preset("gaussian", "miga"), 0, "drifting clouds", 3, 32, "gaussian",
                   {"height": 32, "width": 32})
    load = {"model": "gaussian", "height": 32, "width": 32}
    out = tmp_path / "killed"
    spec = WorkerSpec(load, str(out), checkpoint_every=8, frame_delay=0.05)
    pool = RayPool(spec, None, 2, 2)
    outcome, raising = Outcome(), Outcome()
    thread = threading.Thread(target=pool.run, args=([job], outcome, 1, False, "suite"))
    try:
        thread.start()
        checkpoint, who = out / "runs" / job.digest / "checkpoint.safetensors", out / "runs" / (job.digest + ".worker")
        deadline = time.time() + 60
        while not (checkpoint.exists() and who.exists()) and time.time() < deadline:
            time.sleep(0.05)
        assert checkpoint.exists(), "no checkpoint within a minute"
        killed = json.loads(who.read_text())["pid"]
        os.kill(killed, signal.SIGKILL)
        thread.join(120)
        # a job that raises (2 frames: too few for the metrics) fails once, with its error, not retried
        short = make_job("fifo", preset("gaussian", "fifo"), 1, "drifting clouds", 0, 2, "gaussian",
                         {"height": 32, "width": 32})
        pool.run([short], raising, 1, False, "suite")
    finally:
        pool.close()
    assert not thread.is_alive()
    assert outcome.failed == {} and outcome.retried == 1 and outcome.made == 1
    assert raising.retried == 0 and "the VBench metrics need at least 3" in raising.failed[short.digest]
    assert json.loads(who.read_text())["pid"] != killed  # continued by another process
    # the same job uninterrupted, here
    here = tmp_path / "here"
    torch.set_num_threads(1)
    Worker(WorkerSpec(load, str(here), threads=1, checkpoint_every=8)).run(job)
    a, _ = read_latents(str(out / "runs" / (job.digest + ".latents.safetensors")))
    b, _ = read_latents(str(here / "runs" / (job.digest + ".latents.safetensors")))
    assert torch.equal(a, b)


def test_a_copied_out_folder_continues_its_unfinished_run(tmp_path):
    """Run dirs record absolute output paths; a runner's outputs sit beside its run dir, so an --out folder
    copied elsewhere continues there (writing there) and makes the latents of an uninterrupted run."""
    from miga.config import preset
    from miga.evaluation.latents import read_latents
    from miga.runner.execute import Worker, WorkerSpec
    from miga.runner.jobs import make_job

    class Stop(Exception):
        pass

    job = make_job("fifo", preset("gaussian", "fifo"), 0, "drifting clouds", 3, 32, "gaussian",
                   {"height": 32, "width": 32})
    load = {"model": "gaussian", "height": 32, "width": 32}
    torch.set_num_threads(1)
    first, copied, here = tmp_path / "first", tmp_path / "copied", tmp_path / "here"
    frames = []

    def stop_at_20():
        frames.append(1)
        if len(frames) == 20:
            raise Stop

    with pytest.raises(Stop):
        Worker(WorkerSpec(load, str(first), threads=1, checkpoint_every=8)).run(job, on_frame=stop_at_20)
    assert (first / "runs" / job.digest / "checkpoint.safetensors").is_file()
    shutil.copytree(first, copied)
    shutil.rmtree(first)
    record, state = Worker(WorkerSpec(load, str(copied), threads=1, checkpoint_every=8)).run(job)
    assert state == "made" and (copied / "runs" / (job.digest + ".mp4")).is_file() and not first.exists()
    Worker(WorkerSpec(load, str(here), threads=1, checkpoint_every=8)).run(job)
    name = job.digest + ".latents.safetensors"
    assert torch.equal(read_latents(str(copied / "runs" / name))[0], read_latents(str(here / "runs" / name))[0])


def test_a_lone_worker_killed_mid_video_is_waited_for_not_given_up(ray_cluster, tmp_path):
    """With one worker, the retried job must wait while Ray restarts it: sent at once, it would bounce off the
    restarting worker until its attempts ran out."""
    from miga.config import preset
    from miga.runner.execute import Outcome, RayPool, WorkerSpec
    from miga.runner.jobs import make_job

    job = make_job("fifo", preset("gaussian", "fifo"), 0, "drifting clouds", 5, 32, "gaussian",
                   {"height": 32, "width": 32})
    out = tmp_path / "lone"
    pool = RayPool(WorkerSpec({"model": "gaussian", "height": 32, "width": 32}, str(out), checkpoint_every=8,
                              frame_delay=0.05), None, 1, 1)
    outcome = Outcome()
    thread = threading.Thread(target=pool.run, args=([job], outcome, 1, False, "suite"))
    try:
        thread.start()
        who = out / "runs" / (job.digest + ".worker")
        deadline = time.time() + 60
        while not (out / "runs" / job.digest / "checkpoint.safetensors").exists() and time.time() < deadline:
            time.sleep(0.05)
        os.kill(json.loads(who.read_text())["pid"], signal.SIGKILL)
        thread.join(120)
    finally:
        pool.close()
    assert not thread.is_alive()
    assert outcome.failed == {} and outcome.retried == 1 and outcome.made == 1


def test_ablate_on_ray_gives_the_in_process_table(ray_cluster, tmp_path, capsys):
    argv = ["ablate", "--model", "gaussian", "--height", "32", "--width", "32", "--frames", "16", "--seeds", "0",
            "--rows", "fifo,miga", "--sweeps", "none", "--prompt", "drifting clouds", "--no-progress"]
    code, here, err = run(capsys, *argv, "--out", tmp_path / "here")
    assert code == 0, err
    code, there, err = run(capsys, *argv, "--ray", "--workers", "1", "--out", tmp_path / "ray")
    assert code == 0, err
    assert json.loads((tmp_path / "ray" / "results.json").read_text())["executor"] == "Ray"

    def cells(text):  # the metric columns (not s/frame: timings differ)
        return [ln.split("|")[1:9] for ln in text.splitlines() if ln.startswith("| FIFO") or ln.startswith("| MIGA")]

    assert cells(there) == cells(here) and len(cells(here)) == 2


def test_a_tiny_built_in_model_on_ray(ray_cluster, tmp_path, capsys):
    weights = tiny_v2_weights(str(tmp_path / "tiny.safetensors"))
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("# shapes\na red circle bouncing on a blue background\n")
    code, out, err = run(capsys, "suite", prompts, "--model", weights, "--methods", "fifo", "--frames", "8",
                         "--seeds", "0,1", "--workers", "1", "--no-progress", "--out", tmp_path / "s")
    assert code == 0, err
    result = results(tmp_path / "s")
    assert result["executor"] == "Ray" and result["made"] == 2 and len(result["per_prompt"]) == 1
    assert result["dimensions"] == [] and "| 0 | a red circle bouncing on a blue background | fifo | 2 |" in out


def test_a_folder_of_prompt_schedules(tmp_path, capsys):
    stories = tmp_path / "stories"
    stories.mkdir()
    (stories / "a.txt").write_text("0: drifting clouds\n8: ocean waves at sunset\n")
    (stories / "b.txt").write_text("a red circle bouncing\n")
    code, out, err = run(capsys, "suite", stories, "--model", "gaussian", "--height", "32", "--width", "32",
                         "--frames", "16", "--methods", "fifo", "--in-process", "--no-progress", "--out", tmp_path / "s")
    assert code == 0, err
    rows = results(tmp_path / "s")["per_prompt"]
    assert [(r["entry"], r["prompt"]) for r in rows] == [("a", "drifting clouds | ocean waves at sunset"),
                                                         ("b", "a red circle bouncing")]
    from miga.video import read_prompts_metadata

    video = tmp_path / "s" / rows[0]["videos"][0]
    assert read_prompts_metadata(str(video)) == [(0, "drifting clouds"), (8, "ocean waves at sunset")]


def test_suite_selection():
    from miga import suites

    _, entries = suites.load("vbench", 16)
    assert len(entries) == 944  # 946 entries, two prompts listed under two dimension groups
    assert len(suites.select(entries, ["temporal_flickering"])) == 75
    half = suites.select(entries, subset=0.5, subset_seed=0)
    assert len(half) == 472 and half == suites.select(entries, subset=0.5, subset_seed=0)
    assert half != suites.select(entries, subset=0.5, subset_seed=1)
    _, wan = suites.load("vbench-wan", 16)
    assert len(wan) == 944 and wan[0].dimensions == entries[0].dimensions and len(wan[0].text) > len(entries[0].text)
    assert suites.select(entries, count=3) == entries[:3]


# ---------------------------------------------------------------------------------------------------- bad input


def one_line(code, err, needle):
    assert code == 2 and needle in err and "Traceback" not in err, err
    assert len(err.strip().splitlines()) == 1, err


@pytest.mark.parametrize("argv, needle", [
    (["suite", "nosuch"], "unknown suite 'nosuch'"),
    (["suite", "vbench", "--dimension", "colour"], "unknown dimension 'colour'"),
    (["suite", "{empty}"], "holds no prompt"),
    (["suite", "vbench", "--subset", "0"], "--subset must be a fraction"),
    (["suite", "vbench", "--methods", "magic"], "unknown method 'magic'"),
    (["suite", "vbench", "--model", "gaussian", "--ray", "127.0.0.1:1"], "cannot reach the Ray cluster at 127.0.0.1:1"),
])
def test_bad_suite_input_is_one_line_exit_2_nothing_written(tmp_path, capsys, argv, needle):
    empty = tmp_path / "empty.txt"
    empty.write_text("# nothing\n\n")
    out = tmp_path / "out"
    t0 = time.perf_counter()
    code, _, err = run(capsys, *[a.format(empty=empty) for a in argv], "--count", "2", "--frames", "8",
                       "--out", out)
    assert time.perf_counter() - t0 < 15
    one_line(code, err, needle)
    assert not out.exists()


@pytest.mark.parametrize("argv, needle", [
    (["generate", "a cat", "--model", "gaussian", "--frames", "4", "--stats", "/proc/x.json"], "/proc"),
    (["generate", "a cat", "--model", "gaussian", "--frames", "4", "--preview", "/proc/x.png"], "/proc"),
    (["generate", "a cat", "--model", "gaussian", "--frames", "4", "--save-latents", "/proc/x.safetensors"], "/proc"),
    (["generate", "a cat", "--model", "gaussian", "--frames", "4", "--out", "/proc/x.mp4"], "/proc"),
    (["generate", "a cat", "--model", "gaussian", "--frames", "4", "--run-dir", "/proc/x"], "/proc"),
    (["eval", "{video}", "--json", "/proc/x.json"], "/proc"),
    (["eval", "{video}", "--plot", "/proc/x.png"], "/proc"),
    (["bench", "--json", "/proc/x.json"], "/proc"),
    (["ablate", "--model", "gaussian", "--out", "/proc/x"], "/proc"),
    (["compare", "--model", "gaussian", "--out", "/proc/x"], "/proc"),
    (["suite", "vbench", "--model", "gaussian", "--out", "/proc/x"], "/proc"),
])
def test_every_output_path_is_checked_before_any_work(tmp_path, capsys, argv, needle):
    video = tmp_path / "v.mp4"
    video.write_bytes(b"")
    out = tmp_path / "miga.mp4"
    t0 = time.perf_counter()
    argv = [a.format(video=video) for a in argv]
    if argv[0] == "generate" and "--out" not in argv:
        argv += ["--out", str(out)]
    code, _, err = run(capsys, *argv)
    assert time.perf_counter() - t0 < 10
    one_line(code, err, needle)
    assert not out.exists() and not os.path.exists(str(out) + ".partial")


def test_the_suite_gives_scalingnoise_the_dino_of_its_metric(tmp_path, capsys):
    """``--dino`` is both the S.C. embedder and ScalingNoise's reward embedder, as in ``miga ablate``."""
    tf = pytest.importorskip("transformers")
    torch.manual_seed(0)
    vit = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64, image_size=224)
    tf.ViTModel(tf.ViTConfig(patch_size=16, **vit), add_pooling_layer=False).save_pretrained(tmp_path / "dino")
    code, _, err = run(capsys, "suite", "vbench", "--model", "gaussian", "--height", "32", "--width", "32",
                       "--frames", "8", "--dimension", "color", "--count", "1", "--methods", "scalingnoise",
                       "--dino", tmp_path / "dino", "--in-process", "--no-progress", "--out", tmp_path / "s")
    assert code == 0, err
    from miga.commands.suite import SUITE_FILE

    decides = json.loads((tmp_path / "s" / SUITE_FILE).read_text())["decides"]
    assert decides["configs"]["scalingnoise"]["dino"] == str(tmp_path / "dino")


def test_a_new_local_cluster_logs_only_warnings(monkeypatch):
    """Ray's INFO lines ('Started a local Ray instance', ...) would land on stderr between our progress bars."""
    import logging

    ray = pytest.importorskip("ray")
    from miga.runner.execute import connect

    calls = []
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda **kwargs: calls.append(kwargs))
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert connect(None) is True
    assert calls and calls[0]["address"] == "local" and calls[0]["logging_level"] == logging.WARNING
