"""Contact sheets: frame choice, memory, the PNG, and ``miga generate --preview``."""

import numpy as np
import pytest
from PIL import Image

from miga import cli
from miga.errors import MigaError
from miga.preview import GAP, LABEL_HEIGHT, ContactSheet, evenly_spaced
from cli_helpers import interrupt_frames_after


def solid(index, size=16):
    """A frame whose colour encodes its index."""
    frame = np.zeros((size, size, 3), np.uint8)
    frame[:] = (index % 256, (index * 7) % 256, 200)
    return frame


def test_evenly_spaced():
    assert evenly_spaced(10, 24) == list(range(10))
    idx = evenly_spaced(1000, 24)
    assert len(idx) == 24 and idx[0] == 0 and idx[-1] == 999 and idx == sorted(set(idx))
    gaps = np.diff(idx)
    assert gaps.min() >= 43 and gaps.max() <= 44
    assert evenly_spaced(25, 24) == sorted(set(evenly_spaced(25, 24))) and len(evenly_spaced(25, 24)) == 24
    assert evenly_spaced(7, 1) == [0]
    with pytest.raises(MigaError):
        evenly_spaced(0, 24)


def test_keeps_only_the_chosen_frames(tmp_path):
    sheet = ContactSheet(500, tiles=24)
    kept = [i for i in range(500) if sheet.offer(i, solid(i))]
    assert kept == sheet.indices and len(sheet._frames) == 24
    path = tmp_path / "sheet.png"
    sheet.save(path)
    image = np.asarray(Image.open(path).convert("RGB"))
    zoom = 128 // 16
    tile = 16 * zoom
    assert sheet.columns == 6
    assert image.shape == (4 * (tile + LABEL_HEIGHT) + 5 * GAP, 6 * tile + 7 * GAP, 3)
    for k, index in enumerate(sheet.indices):  # each tile shows its frame
        y = GAP + (k // 6) * (tile + LABEL_HEIGHT + GAP) + tile // 2
        x = GAP + (k % 6) * (tile + GAP) + tile // 2
        assert tuple(image[y, x]) == tuple(solid(index)[0, 0])
    # the label strip under a tile has light text on it
    label = image[GAP + tile: GAP + tile + LABEL_HEIGHT, GAP: GAP + tile]
    assert label.max() > 150 and label.min() < 40
    assert not list(tmp_path.glob(".*.tmp"))


def test_incomplete_sheet_is_not_saved(tmp_path):
    sheet = ContactSheet(50, tiles=8)
    for i in range(30):
        sheet.offer(i, solid(i))
    assert not sheet.complete
    with pytest.raises(ValueError, match="lacks"):
        sheet.save(tmp_path / "s.png")
    assert not list(tmp_path.iterdir())


def test_short_video_large_frames(tmp_path):
    sheet = ContactSheet(3, tiles=24)
    for i in range(3):
        sheet.offer(i, solid(i, size=200))
    assert sheet.complete
    sheet.save(tmp_path / "s.png")
    w, h = Image.open(tmp_path / "s.png").size
    assert (w, h) == (3 * 200 + 4 * GAP, 200 + LABEL_HEIGHT + 2 * GAP)  # no zoom: already large


SMALL = ["--model", "gaussian", "--height", "32", "--width", "32", "--no-progress"]


def test_generate_writes_a_preview(tmp_path, capsys):
    out, sheet = tmp_path / "v.mp4", tmp_path / "sheet.png"
    code = cli.main(["generate", "a red circle bouncing", "--frames", "20", "--out", str(out), "--preview",
                     str(sheet), *SMALL])
    assert code == 0, capsys.readouterr().err
    image = Image.open(sheet)
    assert image.format == "PNG"
    tile = 32 * 4  # 32-px frames enlarged to 128
    assert image.size == (6 * tile + 7 * GAP, 4 * (tile + LABEL_HEIGHT) + 5 * GAP)  # 20 tiles: 6 x 4


@pytest.mark.parametrize("preview,needle", [("sheet.jpg", ".png"), ("missing/sheet.png", "does not exist")])
def test_bad_preview_path_exits_2_before_work(tmp_path, capsys, preview, needle):
    out = tmp_path / "v.mp4"
    code = cli.main(["generate", "x", "--frames", "20", "--out", str(out), "--preview", str(tmp_path / preview),
                     *SMALL])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and needle in err and "Traceback" not in err
    assert not out.exists() and not (tmp_path / "v.mp4.partial").exists()


def test_interrupted_run_writes_no_preview(tmp_path, capsys, monkeypatch):
    interrupt_frames_after(monkeypatch, 5)
    sheet = tmp_path / "sheet.png"
    code = cli.main(["generate", "x", "--frames", "20", "--out", str(tmp_path / "v.mp4"), "--preview", str(sheet),
                     *SMALL])
    assert code == 130 and not sheet.exists()
