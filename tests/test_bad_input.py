"""Bad input, table-driven (issue 6): every ``miga generate`` option and the other subcommands' main
options with invalid values, inconsistent combinations, missing or damaged files, damaged checkpoints and
run dirs of a different video. Each exits with status 2 and one line naming the problem, without a
traceback, and leaves every file that was there untouched (hashed before and after).

All cases run in-process against one folder of existing outputs (a video, its latents, a complete and
interrupted run dirs, damaged variants of them), hashed around every case, so the table costs seconds.
"""

import hashlib
import os
import shutil

import pytest
import torch

from miga.runs import CHECKPOINT, RUN_FILE, VideoRun
from cli_helpers import run

SIZE = ["--model", "gaussian", "--height", "32", "--width", "32"]
RUN = ["generate", "x", *SIZE, "--frames", "24", "--checkpoint-every", "8", "--no-progress"]
"""The runs kept in the fixture folder; a case that repeats this command with one change must be refused."""


def gen(*extra):
    """``miga generate`` of a small Gaussian-world video onto the existing ``out.mp4``, plus ``extra``."""
    return ["generate", "x", *SIZE, "--frames", "8", "--out", "{d}/out.mp4", "--no-progress", *extra]


def bare(*extra):
    """``miga generate`` without a prompt or size, for cases about those."""
    return ["generate", "--out", "{d}/out.mp4", "--no-progress", *extra]


def resume(name, *extra):
    return ["generate", "--resume", "{d}/" + name, "--no-progress", *extra]


def again(*extra):
    """The command that made ``{d}/run``, changed."""
    return [*RUN, "--out", "{d}/run.mp4", "--run-dir", "{d}/run", *extra]


CASES = [
    # ---- miga generate: types and ranges
    (gen("--frames", "0"), "--frames"),
    (gen("--frames", "ten"), "--frames"),
    (gen("--frames", "2.5"), "--frames"),
    (gen("--seed", "abc"), "--seed"),
    (gen("--steps", "0"), "--steps"),
    (gen("--steps", "1"), "steps must be >= 2"),
    (gen("--height", "30"), "multiple of 8"),
    (gen("--width", "wide"), "--width"),
    (gen("--guidance-scale", "-2"), "guidance scale"),
    (gen("--guidance-scale", "nan"), "guidance scale"),
    (gen("--zigzag-width", "0"), "--zigzag-width"),
    (gen("--zigzag-width", "20"), "zigzag width"),
    (gen("--stage2-steps", "-1"), "--stage2-steps"),
    (gen("--stage2-steps", "32"), "K2"),
    (gen("--guides", "16"), "guides"),
    (gen("--guides", "-1"), "--guides"),
    (gen("--stride", "0"), "--stride"),
    (gen("--stride", "20"), "stride"),
    (gen("--guide-selection", "random"), "--guide-selection"),
    (gen("--stage2-mode", "lazy"), "--stage2-mode"),
    (gen("--reflection-threshold", "-1"), "--reflection-threshold"),
    (gen("--window-batch", "0"), "--window-batch"),
    (gen("--method", "sora"), "--method"),
    (gen("--preset", "nope"), "unknown preset"),
    (gen("--dtype", "float16"), "--dtype"),
    (gen("--dtype", "float8"), "--dtype"),
    (gen("--window-latents", "4"), "diffusers"),
    (gen("--model-batch", "0"), "--model-batch"),
    (gen("--checkpoint-every", "0"), "--checkpoint-every"),
    # ---- inconsistent combinations
    (gen("--method", "fifo", "--guides", "2"), "only apply to --method miga"),
    (gen("--method", "fifo", "--no-reflection"), "only apply to --method miga"),
    (gen("--method", "fifo", "--refine-rounds", "1"), "only apply to --method miga"),
    (gen("--queue-end", "empty"), "--queue-end"),
    (gen("--refine-rounds", "1", "--refine-level", "40"), "refine_level must be in"),
    (gen("--method", "fifo", "--steps", "20"), "multiple of the model window"),
    (gen("--checkpoint-every", "8"), "needs --run-dir"),
    (bare("x", "--prompts", "{d}/prompts.txt", *SIZE), "not both"),
    (bare(*SIZE), "no prompt"),
    (bare("", *SIZE), "empty"),
    (bare("--prompt", "a", "--prompt", " ", *SIZE), "empty"),
    (bare("a red circle", "--height", "128"), "64x64"),
    (bare("drifting clouds"), "unknown word"),
    # ---- missing or damaged files, bad output paths
    (gen("--model", "nope"), "unknown model"),
    (bare("a red circle", "--model", "{d}/missing.safetensors"), "not found"),
    (bare("a red circle", "--model", "{d}/junk.safetensors"), "junk.safetensors"),
    (bare("--prompts", "{d}/missing.txt", *SIZE), "cannot read prompt file"),
    (bare("--prompts", "{d}/binary.txt", *SIZE), "not UTF-8"),
    (bare("--prompts", "{d}/bad_prompts.txt", *SIZE), "line 2"),
    (gen("--out", "{d}/out.gif"), ".mp4"),
    (gen("--out", "{d}/nodir/v.mp4"), "does not exist"),
    (gen("--stats", "{d}/nodir/s.json"), "does not exist"),
    (gen("--preview", "{d}/sheet.jpg"), ".png"),
    (gen("--preview", "{d}/nodir/sheet.png"), "does not exist"),
    (gen("--save-latents", "{d}/lat.npy"), ".safetensors"),
    (gen("--save-latents", "{d}/nodir/lat.safetensors"), "does not exist"),
    # ---- run dirs
    (gen("--run-dir", "{d}/out.mp4"), "not a folder"),
    (gen("--run-dir", "{d}/out.mp4/run"), "is a file"),  # a missing parent is created (issue 19.4)
    (gen("--run-dir", "{d}/notrun"), "not empty"),
    (again("--seed", "5"), "--seed differs"),
    (again("--stride", "4"), "--stride differs"),
    (again("--method", "fifo"), "--method differs"),
    (resume("missing"), "does not exist"),
    (resume("notrun"), "holds no miga run"),
    (resume("run", "--run-dir", "{d}/run"), "not both"),
    (resume("run", "--seed", "5"), "--seed differs"),
    (resume("run", "--frames", "25"), "--frames differs"),
    (resume("run", "another prompt"), "the prompts differs"),
    (resume("run", "--out", "{d}/other.mp4"), "--out differs"),
    (resume("run", "--save-latents"), "--save-latents"),
    (resume("run", "--guidance-scale", "2"), "--guidance-scale differs"),
    (resume("run", "--frames", "x"), "--frames"),
    (resume("run_badjson"), "damaged"),
    (resume("run_notjson"), "not a miga run record"),
    (resume("run_flipped"), "checksum"),
    (resume("run_truncated"), "damaged"),
    (resume("run_foreign"), "belongs to a different run"),
    (resume("stopped_novideo"), "holds 0 bytes"),
    (resume("stopped_nolatents"), "latents"),
    # ---- miga train-toy
    (["train-toy", "{d}/tt", "--steps", "-1"], "--steps"),
    (["train-toy", "{d}/tt", "--batch", "0"], "--batch"),
    (["train-toy", "{d}/tt", "--checkpoint-every", "0"], "--checkpoint-every"),
    (["train-toy", "{d}/tt", "--time-limit", "-1"], "--time-limit"),
    (["train-toy", "{d}/tt", "--threads", "0"], "--threads"),
    (["train-toy", "{d}/tt", "--model-size", "huge"], "--model-size"),
    (["train-toy", "{d}/tt", "--seed", "one"], "--seed"),
    (["train-toy", "{d}/out.mp4"], "not a folder"),  # issue 19.3: RUN_DIR is a file
    (["train-toy", "{d}/out.mp4/run"], "is a file"),
    (["train-toy", "{d}/tt", "--steps", "0"], "--steps 0 trains no denoiser"),  # issue 19.6: trained 3000 steps
    # ---- miga eval
    (["eval", "{d}/missing.mp4"], "cannot read video"),
    (["eval", "{d}/junk.mp4"], "cannot read video"),
    (["eval", "{d}/out.mp4", "--world", "moon"], "--world"),
    (["eval", "{d}/out.mp4", "--json", "{d}/nodir/r.json"], "does not exist"),
    (["eval", "{d}/out.mp4", "--plot", "{d}/plot.jpg"], ".png"),
    (["eval", "{d}/out.mp4", "--latents", "{d}/missing.safetensors"], "no such file"),
    (["eval", "{d}/out.mp4", "--latents", "{d}/lat.safetensors", "--latents", "{d}/lat.safetensors"], "once per video"),
    (["eval", "{d}/out.mp4", "--prompt", "a red circle"], "--world shapes only"),
    (["eval", "{d}/out.mp4", "--world", "shapes", "--dino", "{d}"], "--world"),
    (["eval", "{d}/out.mp4", "--world", "shapes", "--prompt", "drifting clouds"], "unknown word"),
    # ---- miga ablate
    (["ablate", "--out", "{d}/abl", "--frames", "2"], "--frames"),
    (["ablate", "--out", "{d}/abl", "--rows", "bogus"], "bogus"),
    (["ablate", "--out", "{d}/abl", "--seeds", "x"], "seed"),
    (["ablate", "--out", "{d}/out.mp4/abl"], "is a file"),  # a missing parent is created (issue 19.4)
    (["ablate", "--out", "{d}/abl", "--model", "nope"], "unknown model"),
    (["ablate"], "--out"),
    # ---- issue 19
    *([(gen("--device", "cuda"), "built without CUDA")] if torch.version.cuda is None else []),
    *([(gen("--device", "cuda:0"), "no CUDA GPU")] if torch.version.cuda and not torch.cuda.is_available() else []),
    *([(gen("--device", "mps"), "MPS")] if not torch.backends.mps.is_available() else []),
    (gen("--device", "tpu"), "unknown device 'tpu'"),
    (gen("--device", "meta"), "miga runs on cpu, cuda or mps"),
    (gen("--stats", "{d}"), "it is a folder"),  # failed after the whole video
    (gen("--stats", "/sys/miga-stats.json"), "cannot write /sys/miga-stats.json"),
    (gen("--preview", "/sys/miga-sheet.png"), "cannot write /sys/miga-sheet.png"),
    (gen("--save-latents", "/sys/miga.safetensors"), "cannot write /sys/miga.safetensors"),
    (gen("--out", "{d}/folder.mp4"), "it is a folder"),
    (["eval", "{d}/out.mp4", "--json", "{d}"], "it is a folder"),
    (bare("x", "--model", "{d}/models/wan2.1-1.3b"), "download the model into it first"),  # not a "hub id"
    (bare("a red circle", "--model", "{d}/toyrun/loss.png"), "is a file of the 'miga train-toy' run"),
    (bare("a red circle", "--model", "{d}/toyrun/checkpoint.pt"), "toyrun/shapes.safetensors"),
    (resume("run_file", "--prompt", "b"), "the prompts differs"),  # said "not both"
    (resume("run", "--steps", "20"), "--steps differs (null in the run, 20 now)"),  # said "config field steps"
    (resume("run", "--preset", "shapes"), "--preset differs"),
    (again("--steps", "20"), "--steps differs"),
    (resume("gone"), "gone.mp4 no longer exist(s)"),  # said "wrote gone.mp4" and wrote nothing
    (gen("--no-reflection", "--reflection-threshold", "0.02"), "--no-reflection"),
]


def _stop_after(frames: int):
    """Make every ``VideoRun.generate`` stop (with a checkpoint, like Ctrl-C) once ``frames`` are made."""
    real = VideoRun.generate

    def generate(self, on_frame=None, stop=None, **kwargs):
        return real(self, on_frame, lambda: self.frames_done >= frames, **kwargs)
    return generate


@pytest.fixture(scope="module")
def outputs(tmp_path_factory):
    """A folder of existing outputs and run dirs that the cases must leave as they are."""
    d = tmp_path_factory.mktemp("existing")
    mp = pytest.MonkeyPatch()
    try:
        code = _quiet(gen("--save-latents", "{d}/lat.safetensors", "--stats", "{d}/stats.json"), d)
        assert code == 0
        (d / "sheet.png").write_bytes(b"\x89PNG not really")
        (d / "prompts.txt").write_text("a\n")
        (d / "bad_prompts.txt").write_text("0: a\n0: b\n")
        (d / "binary.txt").write_bytes(b"\xff\xfe\x00bad")
        (d / "junk.safetensors").write_bytes(b"not a weights file")
        (d / "junk.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42 garbage")
        (d / "notrun").mkdir()
        (d / "notrun" / "notes.txt").write_text("mine")
        assert _quiet(again(), d) == 0  # a complete run
        for name in ("run_badjson", "run_notjson", "run_flipped", "run_truncated", "run_foreign"):
            shutil.copytree(d / "run", d / name)
        (d / "run_badjson" / RUN_FILE).write_text("{ not json")
        (d / "run_notjson" / RUN_FILE).write_text("[1, 2]")
        ckpt = (d / "run_flipped" / CHECKPOINT).read_bytes()
        (d / "run_flipped" / CHECKPOINT).write_bytes(ckpt[:-40] + bytes(b ^ 0xFF for b in ckpt[-40:]))
        (d / "run_truncated" / CHECKPOINT).write_bytes(ckpt[:len(ckpt) // 2])
        mp.setattr(VideoRun, "generate", _stop_after(12))
        for name in ("stopped_novideo", "stopped_nolatents", "other"):
            code = _quiet([*RUN, "--out", f"{{d}}/{name}.mp4", "--run-dir", f"{{d}}/{name}"], d)
            assert code == 130 and os.path.getsize(d / f"{name}.mp4.partial") > 0
        shutil.copy(d / "other" / CHECKPOINT, d / "run_foreign" / CHECKPOINT)
        mp.undo()
        assert _quiet(["generate", "--prompts", "{d}/prompts.txt", *RUN[2:], "--out", "{d}/run_file.mp4",
                       "--run-dir", "{d}/run_file"], d) == 0
        assert _quiet([*RUN, "--out", "{d}/gone.mp4", "--run-dir", "{d}/gone"], d) == 0
        os.remove(d / "gone.mp4")  # a complete run whose video was deleted
        (d / "folder.mp4").mkdir()
        (d / "toyrun").mkdir()  # a train-toy run dir before training completed
        (d / "toyrun" / "checkpoint.pt").write_bytes(b"a training checkpoint")
        (d / "toyrun" / "loss.png").write_bytes(b"\x89PNG a loss plot")
        os.remove(d / "stopped_novideo.mp4.partial")
        os.remove(d / "stopped_nolatents" / "latents.safetensors.partial")
    finally:
        mp.undo()
    return d


def _quiet(argv, d):
    from miga import cli

    try:
        return cli.main([a.replace("{d}", str(d)) for a in argv])
    except SystemExit as exc:
        return exc.code


def tree_digest(folder) -> dict:
    digests = {}
    for root, dirs, files in os.walk(folder):
        for name in files + dirs:
            path = os.path.join(root, name)
            key = os.path.relpath(path, folder)
            digests[key] = "dir" if os.path.isdir(path) else hashlib.sha256(open(path, "rb").read()).hexdigest()
    return digests


@pytest.mark.parametrize("argv,needle", CASES, ids=[" ".join(a[:1] + a[-2:]) for a, _ in CASES])
def test_bad_input_exits_2_with_one_line_and_touches_nothing(outputs, capsys, argv, needle):
    d = outputs
    before = tree_digest(d)
    code, out, err = run(capsys, *[a.replace("{d}", str(d)) for a in argv])
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2, err
    assert len(lines) == 1 and needle in lines[0], err
    assert "Traceback" not in err + out
    assert tree_digest(d) == before
