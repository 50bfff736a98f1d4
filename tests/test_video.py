import numpy as np
import pytest

from miga.errors import MigaError
from miga.video import VideoWriter, atomic_write_text, read_video


def smooth_frames(n, h, w):
    """Smooth gradients that drift a little from frame to frame."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    frames = []
    for t in range(n):
        r = 40 + 160 * x / max(w - 1, 1)
        g = 40 + 160 * y / max(h - 1, 1)
        b = np.full_like(x, 60 + 10 * t)
        frames.append(np.stack([r, g, b], -1).round().astype(np.uint8))
    return frames


@pytest.mark.parametrize("h,w", [(48, 64), (21, 33)])
def test_roundtrip(tmp_path, h, w):
    path = tmp_path / "demo.mp4"
    frames = smooth_frames(7, h, w)
    with VideoWriter(path, fps=8) as vw:
        for f in frames:
            vw.write(f)
        assert vw.frames_written == 7
    video, fps = read_video(path)
    assert video.dtype == np.uint8
    assert video.shape == (7, h + h % 2, w + w % 2, 3)
    assert fps == pytest.approx(8)
    err = np.abs(video[:, :h, :w].astype(np.float32) - np.stack(frames)).mean()
    assert err < 3, err
    if h % 2:  # padding repeats the last row
        assert np.abs(video[:, h].astype(int) - video[:, h - 1]).mean() < 3


def test_fractional_fps(tmp_path):
    path = tmp_path / "a.mp4"
    with VideoWriter(path, fps=7.5) as vw:
        for f in smooth_frames(3, 16, 16):
            vw.write(f)
    video, fps = read_video(path)
    assert len(video) == 3 and fps == pytest.approx(7.5)


def test_partial_name_until_close(tmp_path):
    path = tmp_path / "demo.mp4"
    partial = tmp_path / "demo.mp4.partial"
    vw = VideoWriter(str(path), fps=8)
    for f in smooth_frames(3, 16, 16):
        vw.write(f)
    assert partial.exists() and not path.exists()
    vw.close()
    assert path.exists() and not partial.exists()
    vw.close()  # idempotent


@pytest.mark.parametrize("exc", [RuntimeError, KeyboardInterrupt])
def test_exception_leaves_only_partial(tmp_path, exc):
    path = tmp_path / "demo.mp4"
    with pytest.raises(exc):
        with VideoWriter(path, fps=8) as vw:
            for f in smooth_frames(3, 16, 16):
                vw.write(f)
            raise exc()
    assert not path.exists()
    assert (tmp_path / "demo.mp4.partial").exists()
    vw.abort()  # never raises, even twice


def test_bad_frames(tmp_path):
    vw = VideoWriter(tmp_path / "x.mp4", fps=8)
    with pytest.raises(ValueError):
        vw.write(np.zeros((16, 16, 3), np.float32))
    with pytest.raises(ValueError):
        vw.write(np.zeros((16, 16), np.uint8))
    with pytest.raises(ValueError):
        vw.write(np.zeros((16, 16, 4), np.uint8))
    vw.write(np.zeros((16, 16, 3), np.uint8))
    with pytest.raises(ValueError, match="differs"):
        vw.write(np.zeros((16, 18, 3), np.uint8))
    vw.abort()


def test_missing_directory(tmp_path):
    with pytest.raises(MigaError, match="directory .* does not exist"):
        VideoWriter(tmp_path / "nope" / "x.mp4", fps=8)


def test_atomic_write_text(tmp_path):
    path = tmp_path / "meta.json"
    atomic_write_text(path, "one")
    atomic_write_text(path, "two ü")
    assert path.read_text(encoding="utf-8") == "two ü"
    assert [p.name for p in tmp_path.iterdir()] == ["meta.json"]
    with pytest.raises(MigaError):
        atomic_write_text(tmp_path / "nope" / "x.txt", "x")


def test_the_same_frames_give_the_same_file(tmp_path):
    """One encoder thread: eval numbers of a regenerated video do not depend on thread timing."""
    import hashlib

    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 255, (64, 64, 3), dtype=np.uint8) for _ in range(40)]
    digests = []
    for k in range(4):
        with VideoWriter(str(tmp_path / f"{k}.mp4"), 12) as writer:
            for f in frames:
                writer.write(f)
        digests.append(hashlib.sha256((tmp_path / f"{k}.mp4").read_bytes()).hexdigest())
    assert len(set(digests)) == 1


def noisy_frames(n, side, seed=0):
    """Frames that H.264 cannot shrink much (so fragments have some size)."""
    rng = np.random.default_rng(seed)
    return [(rng.random((side, side, 3)) * 60 + 3 * t).astype(np.uint8) for t in range(n)]


def test_an_open_writers_partial_file_plays_up_to_its_last_fragment(tmp_path):
    """Issue 19.1: the ``.partial`` file of a writer still open (a process killed with -9 leaves it so) holds
    every finished fragment, not just the 28-byte ``ftyp`` that FFmpeg's 32 KB write buffer let through."""
    path, copy = tmp_path / "v.mp4", tmp_path / "copy.mp4"
    vw = VideoWriter(path, fps=12)
    for f in noisy_frames(72, 64):  # 6 s of video, about 40 KB: less than FFmpeg's buffer
        vw.write(f)
    copy.write_bytes((tmp_path / "v.mp4.partial").read_bytes())  # what a kill -9 now would leave
    # x264 holds a few frames (its B-frames) and the muxer the open fragment (up to 1 s): 60 play here
    assert len(read_video(copy)[0]) >= 72 - 4 - 12
    vw.abort()


def test_a_file_cut_mid_fragment_reads_up_to_the_cut(tmp_path):
    """Issue 19.1: a fragmented MP4 cut in the middle of a fragment (a kill during its write) still reads:
    every frame before the cut packet, no error."""
    from miga.mp4frag import top_boxes

    path, cut = tmp_path / "v.mp4", tmp_path / "cut.mp4"
    with VideoWriter(path, fps=12) as vw:
        for f in noisy_frames(48, 64):
            vw.write(f)
    data = path.read_bytes()
    mdats = [(off, size) for kind, off, size in top_boxes(data) if kind == "mdat"]
    assert len(mdats) >= 3
    off, size = mdats[2]
    cut.write_bytes(data[:off + size // 2])  # half of the third fragment's frames
    frames = read_video(cut)[0]
    assert 24 < len(frames) < 36
    assert np.abs(frames.astype(int) - read_video(path)[0][:len(frames)]).max() == 0
