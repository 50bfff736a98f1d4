"""``miga bench``: cells, figures and the table (speed itself is measured by the command, not by tests)."""

import json

import pytest

from cli_helpers import run
from miga.commands.bench import METHOD_NAMES, METHODS, length_summary, method_config, plan_cells, run_cell, table


def test_plan_runs_native_once_and_every_other_method_at_every_length():
    cells = plan_cells(["gaussian"], ["native", "fifo", "miga"], [200, 1000], threads=1)
    assert [(c["method"], c["frames"]) for c in cells] == [("native", 200), ("fifo", 200), ("fifo", 1000),
                                                         ("miga", 200), ("miga", 1000)]
    assert all(c["threads"] == 1 and c["model"] == "gaussian" for c in cells)


@pytest.mark.parametrize("method", ["fifo", "miga-no-dce", "native"])
def test_a_cell_reports_consistent_figures(method):
    r = run_cell({"model": "gaussian", "method": method, "frames": 20, "threads": 1})
    frames = 16 if method == "native" else 20
    assert r["frames"] == frames and r["latents"] == frames
    assert r["nfe"] > 0 and r["nfe_per_frame"] == pytest.approx(r["nfe"] / frames)
    parts = r["model_seconds"] + r["decode_seconds"] + r["write_seconds"] + r["engine_seconds"]
    assert parts == pytest.approx(r["seconds"]) and r["engine_seconds"] >= 0
    assert 0 < r["first_frame_seconds"] <= r["seconds"] and 0 < r["first_frame_nfe"] <= r["nfe"]
    assert 0 < r["calls"] <= r["nfe"] and r["calls_per_frame"] == pytest.approx(r["calls"] / frames)
    assert r["peak_rss_mib"] > 50 and r["peak_gpu_mib"] is None
    if method == "native":  # T model calls on one clip, no guidance
        assert r["nfe"] == 32


def test_miga_without_dce_costs_fewer_model_calls_than_full_miga():
    lean = run_cell({"model": "gaussian", "method": "miga-no-dce", "frames": 96})
    full = run_cell({"model": "gaussian", "method": "miga-all", "frames": 96})
    assert lean["nfe"] < full["nfe"]
    assert lean["reflection_checks"] == 0 and full["reflection_checks"] >= full["reflection_triggers"] > 0
    assert full["reflection_triggers"] >= full["reflection_adoptions"]
    assert full["calls"] < full["nfe"]  # the candidates of a search share model calls
    assert 0 < full["reflection_nfe"] < full["nfe"] and lean["reflection_nfe"] == 0
    assert full["first_frame_reflection_nfe"] <= full["first_frame_nfe"]


@pytest.mark.parametrize("method, reflection, during, calibration", [
    ("miga", True, "fill", "auto"), ("miga-off", False, "all", "fixed"), ("miga-all", True, "all", "fixed"),
    ("miga-fill", True, "fill", "fixed"), ("miga-auto", True, "all", "auto"), ("miga-auto-fill", True, "fill", "auto")])
def test_reflection_mode_methods_change_only_the_reflection_mode(method, reflection, during, calibration):
    from miga.backbones.gaussian import GaussianWorld
    from miga.config import preset

    assert method in METHODS and set(METHODS) <= set(METHOD_NAMES)  # a new mode needs its table label
    backbone = GaussianWorld()
    config = method_config(backbone, method)  # "miga": the Gaussian preset's own mode (issue 15)
    assert (config.reflection, config.reflect_during, config.reflection_calibration) == (reflection, during,
                                                                                         calibration)
    base = preset(backbone.default_preset, "miga")
    assert config.with_(reflection=True, reflect_during="fill", reflection_calibration="auto") == base


def _row(method, frames, seconds, rss):
    return {"model": "m", "method": method, "frames": frames, "nfe_per_frame": 2.0, "seconds": seconds,
            "seconds_per_frame": seconds / frames, "engine_overhead": 0.02, "first_frame_seconds": 1.0,
            "peak_rss_mib": rss, "peak_gpu_mib": None}


def test_table_ratios_are_to_fifo_at_the_same_length():
    rows = [_row("fifo", 200, 10.0, 100.0), _row("miga", 200, 25.0, 110.0), _row("fifo", 1000, 50.0, 100.0)]
    text = table(rows)
    line = next(row for row in text.splitlines() if "| MIGA |" in row)
    assert "| 2.50 |" in line and "| 1.100 |" in line and "2.0 %" in line
    rows[1].update(reflection_checks=9, reflection_triggers=4, reflection_adoptions=3, first_frame_nfe=700,
                   first_frame_reflection_nfe=300, calls_per_frame=1.25)
    line = next(row for row in table(rows).splitlines() if "| MIGA |" in row)
    assert "| 9 / 4 / 3 |" in line and "| 1.00 (700, refl. 300) |" in line and "| 1.25 |" in line
    assert "peak memory at 1000 frames / at 200: 1.000" in length_summary(rows)


@pytest.mark.parametrize("argv, message", [
    (["--models", "wan"], "--models: unknown 'wan'"),
    (["--methods", "fifo,dce"], "--methods: unknown 'dce'"),
    (["--frames", "100,x"], "--frames: 'x' is not an integer"),
    (["--frames", "0"], "--frames: lengths must be >= 1"),
    (["--models", "wan-1.3b-random"], "wan-1.3b-random needs a GPU"),
    (["--models", "shapes,videocrafter2-random"], "videocrafter2-random needs a GPU"),
])
def test_bad_bench_options_get_one_line(capsys, argv, message):
    code, _, err = run(capsys, "bench", *argv)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1


def test_bench_command_prints_the_table_and_writes_json(tmp_path, capsys):
    out = tmp_path / "bench.json"
    code, text, err = run(capsys, "bench", "--models", "gaussian", "--methods", "fifo", "--frames", "12",
                          "--json", out, "--no-progress")
    assert code == 0, err
    assert "| gaussian | FIFO | 12 |" in text
    cells = json.loads(out.read_text())["cells"]
    assert len(cells) == 1 and cells[0]["frames"] == 12
