"""Helpers shared by the CLI tests."""

from miga import cli


def run(capsys, *argv):
    """Run ``miga ARGV``; return (exit status, stdout, stderr), argparse exits included."""
    try:
        code = cli.main([str(a) for a in argv])
    except SystemExit as exc:  # argparse errors
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


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
