"""Helpers shared by the CLI tests."""

import os

from miga import cli


def run(capsys, *argv):
    """Run ``miga ARGV``; return (exit status, stdout, stderr), argparse exits included."""
    try:
        code = cli.main([str(a) for a in argv])
    except SystemExit as exc:  # argparse errors
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


def generate_video(capsys, model, method, out, frames, size, *extra):
    """``miga generate`` on ``model`` (CPU, ``size`` x ``size``, no progress bar); asserts it succeeds and
    returns (frames ``[N, H, W, 3]``, fps, stderr)."""
    from miga.video import read_video

    code, _, err = run(capsys, "generate", "a cat walking on the beach", "--model", model, "--method", method,
                       "--frames", frames, "--height", size, "--width", size, "--device", "cpu", "--out", out,
                       "--no-progress", *extra)
    assert code == 0, err
    return (*read_video(out), err)


def assert_generate_refused(capsys, model, message, out, *argv):
    """``miga generate`` on ``model`` exits 2 with one line containing ``message`` and writes no ``out``."""
    code, _, err = run(capsys, "generate", "a cat", "--model", model, "--frames", 5, "--out", out, *argv)
    assert code == 2 and message in err and "Traceback" not in err, err
    assert len(err.strip().splitlines()) == 1, err
    assert not os.path.exists(out)


def interrupt_frames_after(monkeypatch, count: int) -> None:
    """Make every ``LongVideo.frames`` raise KeyboardInterrupt after ``count`` frames (a Ctrl-C mid-run)."""
    from miga.pipeline import LongVideo

    real = LongVideo.frames

    def frames_then_interrupt(self, *args, **kwargs):
        for i, frame in enumerate(real(self, *args, **kwargs)):
            if i == count:
                raise KeyboardInterrupt
            yield frame

    monkeypatch.setattr(LongVideo, "frames", frames_then_interrupt)


PRELOAD = ["torch", "av", "tqdm", "miga.cli", "miga.pipeline", "miga.runs", "miga.video", "miga.mp4frag",
           "miga.evaluation.latents", "miga.backbones.gaussian", "miga.backbones.shapes"]


def _cli_in_child(argv, err_path, threads):
    import os
    import sys

    import torch

    torch.set_num_threads(threads)  # the forkserver's torch took OMP_NUM_THREADS; the test says how many
    fd = os.open(err_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(fd, 2)
    sys.exit(cli.main(list(argv)))


class ForkedCLI:
    """``miga ARGV`` in a separate process forked from a server that imported miga and torch once, so a
    test can start (and SIGKILL) many runs without paying the imports each time; torch runs with ``threads``
    threads (default: the test process's count, whatever ``OMP_NUM_THREADS`` says). Popen-like: ``poll``,
    ``send_signal``, ``wait``, ``returncode`` (negative: killed by that signal) and ``stderr_text()``."""

    _context = None

    def __init__(self, argv, err_path, threads=None):
        import multiprocessing

        import torch

        if ForkedCLI._context is None:
            ForkedCLI._context = multiprocessing.get_context("forkserver")
            ForkedCLI._context.set_forkserver_preload(PRELOAD)
        self.err_path = str(err_path)
        args = ([str(a) for a in argv], self.err_path, threads or torch.get_num_threads())
        self.process = ForkedCLI._context.Process(target=_cli_in_child, args=args)
        self.process.start()

    def poll(self):
        return self.process.exitcode

    def send_signal(self, sig):
        import os

        os.kill(self.process.pid, sig)

    def wait(self):
        self.process.join()
        return self.process.exitcode

    @property
    def returncode(self):
        return self.process.exitcode

    def stderr_text(self):
        with open(self.err_path, encoding="utf-8", errors="replace") as fh:
            return fh.read()
