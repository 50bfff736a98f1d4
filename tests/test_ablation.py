"""``miga ablate``: the Table-5 rows and sweeps as configs, a tiny end-to-end run, resume, refusals."""

import hashlib
import json
from dataclasses import replace

import pytest

from miga import ablation, cli
from miga.runner import jobs
from miga.config import FIFOConfig, MIGAConfig, preset
from miga.worlds.shapes import parse_prompt
from cli_helpers import run

TINY = ["ablate", "--model", "gaussian", "--height", "32", "--width", "32", "--frames", "24", "--seeds", "0",
        "--no-progress"]
METRICS = ("temporal_flicker", "motion_smoothness", "subject_consistency", "background_consistency")


def table_rows(markdown):
    """``{label: [cells]}`` of every data row of the markdown tables."""
    rows = {}
    for line in markdown.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("| ") and cells[0] != "row":
            rows[cells[0]] = cells
    return rows


# ---------------------------------------------------------------------------------------------------- rows


@pytest.mark.parametrize("name", ["gaussian", "shapes"])
def test_table5_rows_are_the_readme_switches(name):
    base = preset(name, "miga")
    rows = {row.key: row.config(name) for row in ablation.TABLE5}
    assert list(rows) == ["fifo", "stage1", "tta", "dce", "miga"]
    assert rows["fifo"] == preset(name, "fifo") and isinstance(rows["fifo"], FIFOConfig)
    assert rows["stage1"] == replace(base, guides=0, stage2_steps=0, reflection=False)
    assert rows["tta"] == replace(base, guides=0, reflection=False)
    assert rows["dce"] == replace(base, zigzag_width=1, stage2_steps=0)
    assert rows["miga"] == base
    # spelled out: what README's table says each row switches
    s1, tta, dce = rows["stage1"], rows["tta"], rows["dce"]
    assert (s1.zigzag_width, s1.stage2_steps, s1.guides, s1.reflection) == (4, 0, 0, False)
    assert (tta.zigzag_width, tta.stage2_steps, tta.guides, tta.reflection) == (4, base.stage2_steps, 0, False)
    assert tta.stage2_steps > 0
    assert (dce.zigzag_width, dce.stage2_steps, dce.guides, dce.reflection) == (1, 0, base.guides, True)
    assert base.guides > 0 and base.reflection
    for cfg in rows.values():
        cfg.validate(16)


def test_sweeps_change_one_field_of_full_miga_and_validate():
    base = preset("gaussian", "miga")
    rows = ablation.select_rows([], ["threshold", "guides"])
    assert [r.key for r in rows] == ["threshold=0.005", "threshold=0.01", "threshold=0.02", "threshold=0.05",
                                     "guides=0", "guides=2", "guides=4", "guides=6"]
    for row in rows:
        cfg = row.config("gaussian")
        field, value = row.key.split("=")
        field = {"threshold": "reflection_threshold", "guides": "guides"}[field]
        assert isinstance(cfg, MIGAConfig) and cfg == replace(base, **{field: type(getattr(base, field))(value)})
        cfg.validate(16)
    assert [r.key for r in ablation.select_rows(["miga", "fifo"], [])] == ["miga", "fifo"]
    assert [r.key for r in ablation.select_rows(None, ["guides"], {"guides": [1, 3]})][-2:] == ["guides=1", "guides=3"]


def test_reflection_mode_sweep():
    base = preset("shapes", "miga")
    rows = {r.key: r.config("shapes") for r in ablation.select_rows([], ["reflection"])}
    assert rows == {"reflection=off": replace(base, reflection=False),
                    "reflection=all": base,
                    "reflection=fill": replace(base, reflect_during="fill"),
                    "reflection=auto": replace(base, reflection_calibration="auto"),
                    "reflection=auto-fill": replace(base, reflection_calibration="auto", reflect_during="fill")}
    assert [ablation.describe(c, 16).split()[-1] for c in rows.values()] == ["refl.", "delta=0.01", "(fill)",
                                                                             "delta=auto", "(fill)"]
    assert [r.key for r in ablation.select_rows([], None)][-1] == "guides=6"  # not run unless asked for


@pytest.mark.parametrize("name", ["gaussian", "shapes"])
def test_code_sweep_changes_one_released_choice_at_a_time(name):
    """Each single-choice row is the paper preset with one field at the released code's value; the combined rows
    set every field the released presets set (but the backbone-bound ones: m, the yaml's reflection switch,
    LVDM's use_scale), so a released preset is the model's preset plus them."""
    base = preset(name, "miga")
    rows = {r.key.split("=", 1)[1]: r.config(name) for r in ablation.select_rows([], ["code"])}
    assert rows["paper"] == base
    singles = {k: c for k, c in rows.items() if k not in ("paper", "wan-code", "vc2-code")}
    assert len(singles) == 13
    for key, cfg in singles.items():
        (field, value), = ablation.CODE_CHOICES[key].items()  # one field each
        assert cfg == replace(base, **{field: value})
        cfg.validate(16)
    released = {"wan-code": MIGAConfig.wan21_released(), "vc2-code": MIGAConfig.videocrafter2_released()}
    paper = {"wan-code": MIGAConfig.wan21(), "vc2-code": MIGAConfig.videocrafter2()}
    bound = {"guides", "reflection", "clip_signal_scale_end", "clip_signal_scale_steps", "refine_level"}
    for key, code in released.items():
        cfg = rows[key]
        cfg.validate(16)
        want = {f for f in code.__dataclass_fields__ if getattr(code, f) != getattr(paper[key], f)} - bound
        got = {f for f in base.__dataclass_fields__ if getattr(cfg, f) != getattr(base, f)}
        assert want <= got | {f for f in want if getattr(base, f) == getattr(code, f)}, (key, want - got)
        assert all(getattr(cfg, f) == getattr(code, f) for f in want)
    assert rows["vc2-code"].refine_level == base.stage2_steps + 1  # DDIM index 10 of 64 = level K2 + 1
    assert [r.key for r in ablation.select_rows([], ["code"], {"code": ["paper", "refine"]})] == [
        "code=paper", "code=refine"]


def test_default_prompts_fit_the_models():
    for prompt in ablation.DEFAULT_PROMPTS["shapes"]:
        parse_prompt(prompt)  # the shapes grammar
    assert len(ablation.DEFAULT_PROMPTS["gaussian"]) >= 2


# ---------------------------------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("ablate") / "tmp"
    assert cli.main(TINY + ["--rows", "fifo,miga", "--sweeps", "none", "--out", str(out)]) == 0
    return out


def test_bootstrap_script_reads_the_records(tiny_run, tmp_path):
    """scripts/bootstrap_table.py (the intervals in docs/results.md): each row's mean is its records' mean, and
    the paired table pairs every video of a row with the first row's."""
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "scripts" / "bootstrap_table.py"
    done = subprocess.run([sys.executable, str(script), str(tiny_run), "200"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    tables = [t for t in done.stdout.split("\n\n") if t.startswith("|")]
    head, *body = [line.split("|")[1:-1] for line in tables[0].splitlines() if not line.startswith("|---")]
    head = [h.strip() for h in head]
    result = json.loads((tiny_run / "results.json").read_text())
    for row, cells in zip(result["rows"], body):
        records = [json.loads((tiny_run / (v[:-len(".mp4")] + ".json")).read_text()) for v in row["videos"]]
        mean = sum(r["vbench"]["overall"] for r in records) / len(records)
        assert cells[0].strip() == row["label"] and int(cells[1]) == len(records)
        assert float(cells[head.index("overall")].split("[")[0]) == pytest.approx(mean, abs=5e-4)
    paired = [line.split("|")[1:-1] for line in tables[1].splitlines()[2:]]
    assert [(c[0].strip(), int(c[1])) for c in paired] == [(r["label"], len(r["videos"])) for r in result["rows"][1:]]
    # two folders (two models, say): side by side, paired across them by prompt and seed
    other = tmp_path / "other"
    shutil.copytree(tiny_run, other)
    done = subprocess.run([sys.executable, str(script), str(tiny_run), str(other), "200", "--against=other:fifo"],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    paired = [line.split("|")[1:-1] for line in done.stdout.split("\n\n")[-1].splitlines()[2:]]
    labels = [r["label"] for r in result["rows"]]
    assert [c[0].strip() for c in paired] == [f"{x} ({tiny_run.name})" for x in labels] + [
        f"{x} (other)" for x in labels[1:]]
    assert paired[0][-1].strip() == "0.000 [0.000, 0.000]"  # FIFO against its own copy: overall differs by 0
    # --median: a row of three videos scoring 0.1, 0.2 and 0.9 shows 0.2 (the mean would be 0.4)
    skew = tmp_path / "skew"
    shutil.copytree(tiny_run, skew)
    skewed = json.loads((skew / "results.json").read_text())
    for i, row in enumerate(skewed["rows"]):
        record = json.loads((skew / (row["videos"][0][:-len(".mp4")] + ".json")).read_text())
        row["videos"] = []
        for j, overall in enumerate((0.1, 0.9, 0.2)):
            record["vbench"]["overall"] = overall
            (skew / "runs" / f"skew{i}{j}.json").write_text(json.dumps(record))
            row["videos"].append(f"runs/skew{i}{j}.mp4")
    (skew / "results.json").write_text(json.dumps(skewed))
    done = subprocess.run([sys.executable, str(script), str(skew), "200", "--median"], capture_output=True,
                          text=True)
    assert done.returncode == 0, done.stderr
    body = [line.split("|")[1:-1] for line in done.stdout.split("\n\n")[0].splitlines()[2:]]
    assert [float(cells[head.index("overall")].split("[")[0]) for cells in body] == [0.2] * len(skewed["rows"])
    assert "median [95 % bootstrap interval]" in done.stdout
    # the same figures give the same interval wherever they stand (each interval resamples from seed 0)
    shutil.copytree(skew, tmp_path / "copy")
    done = subprocess.run([sys.executable, str(script), str(skew), str(tmp_path / "copy"), "200"],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    cells = {c[0].strip(): c[head.index("overall")].strip()
             for c in (line.split("|")[1:-1] for line in done.stdout.split("\n\n")[0].splitlines()[2:])}
    first = skewed["rows"][0]["label"]
    assert cells[f"{first} (skew)"] == cells[f"{first} (copy)"] != "0.400 [0.400, 0.400]", cells
    done = subprocess.run([sys.executable, str(script), str(tiny_run), "--mean"], capture_output=True, text=True)
    assert done.returncode != 0 and done.stderr.strip().splitlines()[-1].endswith("unrecognized arguments: --mean")


def test_video_distance_script_compares_rows_pixel_for_pixel(tiny_run):
    """scripts/video_distance.py: a row against itself is 0 levels apart; FIFO against MIGA is not."""
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "scripts" / "video_distance.py"
    done = subprocess.run([sys.executable, str(script), str(tiny_run), "fifo", "fifo", "miga"], capture_output=True,
                          text=True)
    assert done.returncode == 0, done.stderr
    cells = {c[0].strip(): [x.strip() for x in c[1:]] for c in
             (line.split("|")[1:-1] for line in done.stdout.splitlines()[2:])}
    videos = len(json.loads((tiny_run / "results.json").read_text())["rows"][0]["videos"])
    assert cells["fifo"] == [str(videos), "0", "0.00 [0.00, 0.00]"], cells
    assert cells["miga"][:2] == [str(videos), "0"] and float(cells["miga"][2].split()[0]) > 1, cells
    done = subprocess.run([sys.executable, str(script), str(tiny_run), "fifo", "tta"], capture_output=True, text=True)
    assert done.returncode == 2 and "has no row 'tta'" in done.stderr.strip().splitlines()[-1]


def test_end_to_end_writes_a_table_per_config(tiny_run):
    text = (tiny_run / "results.md").read_text()
    assert text.startswith("Command: `miga ablate --model gaussian --height 32 --width 32 --frames 24 --seeds 0 ")
    rows = table_rows(text)
    assert set(rows) == {"FIFO-Diffusion", "MIGA"}
    for cells in rows.values():
        assert cells[2] == str(len(ablation.DEFAULT_PROMPTS["gaussian"]))  # runs: prompts x 1 seed
        for cell in cells[3:7]:  # T.F., M.S., S.C., B.C.
            assert 0 <= float(cell.split("±")[0]) <= 1
    result = json.loads((tiny_run / "results.json").read_text())
    assert [r["key"] for r in result["rows"]] == ["fifo", "miga"]
    assert result["frame_size"] == "32x32" and result["frames"] == 24
    for row in result["rows"]:
        for d in METRICS:
            s = row["stats"][d]
            assert 0 <= s["min"] <= s["mean"] <= s["max"] <= 1
        assert row["stats"]["nfe_per_frame"]["mean"] > 0 and row["stats"]["seconds_per_frame"]["mean"] > 0
        assert "presence" not in row["stats"]  # no world metrics for the Gaussian world
        for video in row["videos"]:
            assert (tiny_run / video).is_file()
    assert len(list((tiny_run / "runs").glob("*.mp4"))) == 2 * len(ablation.DEFAULT_PROMPTS["gaussian"])
    assert not list((tiny_run / "runs").glob("*.partial"))
    fifo = result["rows"][0]["config"]
    assert fifo["method"] == "FIFOConfig" and fifo["partitions"] == preset("gaussian", "fifo").partitions


def test_records_match_their_videos(tiny_run):
    """A run's numbers are those of its video file: NFE from the run, metrics from the decoded MP4."""
    from miga.evaluation import evaluate_video
    from miga.evaluation.features import ProxyFeatures
    from miga.evaluation.interpolation import FlowMidpoint
    from miga.video import read_prompts_metadata, read_video

    path = sorted((tiny_run / "runs").glob("*.json"))[0]
    record = json.loads(path.read_text())
    frames, fps = read_video(tiny_run / record["video"])
    assert len(frames) == record["frames"] == 24
    assert read_prompts_metadata(tiny_run / record["video"]) == [(0, record["key"]["prompt"])]
    scores = evaluate_video(frames, fps, ProxyFeatures("dino"), ProxyFeatures("clip"), FlowMidpoint())
    for d in METRICS:
        assert record["vbench"][d] == pytest.approx(scores[d], abs=1e-12)
    assert record["nfe_per_frame"] == record["nfe"] / 24 > 0


def test_resume_skips_finished_runs(tiny_run, capsys, monkeypatch):
    calls = []
    generate = jobs.generate_video
    monkeypatch.setattr(jobs, "generate_video", lambda *a, **k: calls.append(a[1].rows) or generate(*a, **k))
    before = (tiny_run / "results.md").read_text()
    code, out, err = run(capsys, *TINY, "--rows", "fifo,miga", "--sweeps", "none", "--out", tiny_run)
    assert code == 0 and calls == []
    assert "6 run(s), 6 already done" in err
    assert table_rows(out) == table_rows(before)  # the same numbers, from the records
    # a lost record is redone, and a new row runs only its own videos; a sweep value equal to the preset
    # shares the preset's runs
    victim = sorted((tiny_run / "runs").glob("*.json"))[0]
    victim.unlink()
    code, out, err = run(capsys, *TINY, "--rows", "fifo,miga", "--sweeps", "threshold", "--thresholds",
                         "0.01,0.02", "--out", tiny_run)
    assert code == 0
    assert len(calls) == 1 + 3 and sum(r == ["threshold=0.02"] for r in calls) == 3
    rows = table_rows(out)
    assert "MIGA, delta_adju = 0.01 (= miga)" in rows
    assert rows["MIGA, delta_adju = 0.01 (= miga)"][3:] == rows["MIGA"][3:]
    # a record measured with other extractors gets its metrics again, from the video, without generating
    record = json.loads(victim.read_text())
    kept = json.loads(json.dumps({k: record[k] for k in ("nfe", "seconds", "vbench")}))
    record["extractors"] = {"subject_consistency": "some other network"}
    record["vbench"]["temporal_flicker"] = -1.0
    victim.write_text(json.dumps(record))
    calls.clear()
    code, out, err = run(capsys, *TINY, "--rows", "fifo,miga", "--sweeps", "none", "--out", tiny_run)
    assert code == 0 and calls == [] and "6 run(s), 5 already done" in err
    record = json.loads(victim.read_text())
    assert {k: record[k] for k in kept} == kept and record["extractors"]["world"] is None


def test_records_alone_make_the_table(tiny_run, tmp_path, capsys, monkeypatch):
    """Videos deleted (or records kept without them): the table comes from the records, nothing is generated;
    a record that needs its video (other extractors) is made again from the start, run dir and all."""
    import shutil

    out = tmp_path / "copy"
    shutil.copytree(tiny_run, out)
    before = table_rows((out / "results.md").read_text())
    for video in (out / "runs").glob("*.mp4"):
        video.unlink()
    calls = []
    generate = jobs.generate_video
    monkeypatch.setattr(jobs, "generate_video", lambda *a, **k: calls.append(a[1].rows) or generate(*a, **k))
    code, out_text, err = run(capsys, *TINY, "--rows", "fifo,miga", "--sweeps", "none", "--out", out)
    assert code == 0 and calls == [], err
    assert "6 run(s) counted from their records alone" in err and "6 already done" in err
    assert table_rows(out_text) == before
    video = json.loads((out / "results.json").read_text())["rows"][0]["videos"][0]  # one of this table's runs
    victim = (out / video).with_suffix(".json")
    record = json.loads(victim.read_text())
    kept = {k: record[k] for k in ("nfe", "vbench", "identity")}
    record["extractors"] = {"subject_consistency": "some other network"}
    victim.write_text(json.dumps(record))
    assert (out / "runs" / victim.stem).is_dir()  # a finished run dir: resuming it would find no video
    code, out_text, err = run(capsys, *TINY, "--rows", "fifo,miga", "--sweeps", "none", "--out", out)
    assert code == 0 and len(calls) == 1, err
    assert (out / "runs" / (victim.stem + ".mp4")).is_file() and "5 run(s) counted from their records alone" in err
    record = json.loads(victim.read_text())
    assert {k: record[k] for k in kept} == kept  # the same video again: the same numbers


def test_recorded_only_makes_nothing_and_says_what_is_missing(tiny_run, tmp_path, capsys, monkeypatch):
    import shutil

    out = tmp_path / "partial"
    shutil.copytree(tiny_run, out)
    result = json.loads((out / "results.json").read_text())
    fifo = next(r for r in result["rows"] if r["key"] == "fifo")
    for video in fifo["videos"]:  # FIFO's runs were never made
        (out / video).with_suffix(".json").unlink()
    for worker in (out / "runs").glob("*.worker"):
        worker.unlink()
    calls = []
    monkeypatch.setattr(jobs, "generate_video", lambda *a, **k: calls.append(a[1].rows))
    code, text, err = run(capsys, *TINY, "--rows", "fifo,miga", "--sweeps", "threshold", "--thresholds", "0.01",
                          "--recorded-only", "--out", out)
    assert code == 0 and calls == [], err
    assert not list((out / "runs").glob("*.worker"))  # no process claimed a job it did not work on
    rows = table_rows(text)
    assert "FIFO-Diffusion" not in rows and rows["MIGA"][2] == "3" and "delta_adju = 0.01 (= miga)" in "".join(rows)
    assert "Only the 3 of 6 runs recorded so far" in text
    assert json.loads((out / "results.json").read_text())["planned_runs"] == 6
    code, _, err = run(capsys, *TINY, "--rows", "fifo", "--sweeps", "none", "--recorded-only", "--out", out)
    assert code == 2 and "no run of this command is recorded" in err and len(err.strip().splitlines()) == 1


def test_no_table_fills_runs_one_prompt_at_a_time_and_leaves_the_table(tiny_run, tmp_path, capsys):
    """``--no-table`` makes the runs of a subset without rewriting the folder's table for that subset; the full
    command with ``--recorded-only`` then tables every run and names the incomplete rows."""
    import shutil

    out = tmp_path / "fill"
    shutil.copytree(tiny_run, out)
    before = {name: (out / name).read_bytes() for name in ("results.md", "results.json")}
    prompts = json.loads(before["results.json"])["prompts"]
    records = len(list((out / "runs").glob("*.json")))
    code, _, err = run(capsys, *TINY[:-3], "--seeds", "1", "--no-progress", "--rows", "fifo,miga", "--sweeps", "none",
                       "--prompt", prompts[0], "--no-table", "--out", out)
    assert code == 0 and "--no-table" in err, err
    assert {name: (out / name).read_bytes() for name in before} == before
    assert len(list((out / "runs").glob("*.json"))) == records + 2
    code, text, err = run(capsys, *TINY[:-3], "--seeds", "0,1", "--no-progress", "--rows", "fifo,miga", "--sweeps",
                          "none", "--recorded-only", "--out", out)
    assert code == 0, err
    n = len(prompts)
    assert f"Only the {2 * n + 2} of {4 * n} runs" in text
    assert f"Incomplete rows: fifo ({n + 1} of {2 * n}), miga ({n + 1} of {2 * n})" in text
    assert json.loads((out / "results.json").read_text())["seeds"] == [0, 1]
    code, _, err = run(capsys, *TINY, "--rows", "fifo", "--sweeps", "none", "--recorded-only", "--no-table",
                       "--out", out)
    assert code == 2 and "give one" in err


# ---------------------------------------------------------------------------------------------------- refusals


@pytest.mark.parametrize("extra, message", [
    (["--rows", "fifo,foo"], "unknown row 'foo'"),
    (["--sweeps", "speed"], "unknown sweep 'speed'"),
    (["--rows", "none", "--sweeps", "none"], "nothing to run"),
    (["--seeds", "0,a"], "--seeds"),
    (["--seeds", "0,0"], "repeated"),
    (["--frames", "2"], "--frames"),
    (["--guide-counts", "2,16"], "row guides=16: guides (m_guid=16) must be in [0, 15]"),
    (["--thresholds", "-0.1"], "reflection threshold must be >= 0"),
    (["--sweeps", "guides", "--thresholds", "0.1"], "--thresholds is given but the threshold sweep is not run"),
    (["--guide-counts", "none"], "--guide-counts: give at least one value"),
    (["--sweeps", "reflection", "--reflection-modes", "all,sometimes"], "unknown self-reflection mode 'sometimes'"),
    (["--reflection-modes", "off"], "--reflection-modes is given but the reflection sweep is not run"),
    (["--prompts", "/nonexistent/prompts.txt"], "cannot read prompt file"),
    (["--prompt", "  "], "a prompt is empty"),
    (["--prompt", "a", "--prompt", "a"], "given twice"),
    (["--height", "30"], "multiple of 8"),
    (["--model", "nosuchmodel"], "unknown model"),
    (["--amt", "/nonexistent/amt-s.pth"], "hf download lalala125/AMT amt-s.pth"),
])
def test_bad_input_exits_2_with_one_line(tmp_path, capsys, extra, message):
    out = tmp_path / "out"
    code, stdout, err = run(capsys, *TINY, "--out", out, *extra)
    assert code == 2, err
    assert err.count("\n") == 1 and err.startswith("miga: error:") and message in err, err
    assert stdout == "" and not out.exists()


def test_bad_output_and_model_combinations(tmp_path, capsys):
    afile = tmp_path / "file"
    afile.write_text("x")
    code, _, err = run(capsys, *TINY, "--out", afile)
    assert code == 2 and "is a file" in err and err.count("\n") == 1
    code, _, err = run(capsys, *TINY[:-1])  # no --out
    assert code == 2 and "--out" in err and err.count("\n") == 1
    code, _, err = run(capsys, "ablate", "--model", "shapes", "--height", "32", "--out", tmp_path / "o")
    assert code == 2 and err.count("\n") == 1 and not (tmp_path / "o").exists()
    empty = tmp_path / "prompts.txt"
    empty.write_text("# nothing\n\n")
    code, _, err = run(capsys, *TINY, "--prompts", empty, "--out", tmp_path / "o")
    assert code == 2 and "holds no prompt" in err


# ---------------------------------------------------------------------------------------------------- shapes


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory):
    """A barely trained tiny shapes model (the shipped weights may not exist yet)."""
    from miga.toy.nets import ToyConfig
    from miga.toy.train import WEIGHTS, TrainConfig, start_or_resume

    root = tmp_path_factory.mktemp("toy")
    recipe = TrainConfig(ae_steps=2, ae_batch=2, steps=2, batch=2, warmup=1, checkpoint_every=2)
    assert start_or_resume(str(root), recipe, ToyConfig.tiny()).run(progress=False)
    return root / WEIGHTS


def test_shapes_model_adds_world_metrics(tiny_weights, tmp_path, capsys):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("# one video per line\na red circle bouncing on a blue background\n\n")
    code, out, err = run(capsys, "ablate", "--model", tiny_weights, "--prompts", prompts, "--frames", "16",
                         "--seeds", "3", "--rows", "fifo", "--sweeps", "none", "--out", tmp_path / "o",
                         "--no-progress")
    assert code == 0, err
    header = next(line for line in out.splitlines() if line.startswith("| row"))
    assert "| present | shape |" in header and "bg error" in header
    result = json.loads((tmp_path / "o" / "results.json").read_text())
    stats = result["rows"][0]["stats"]
    assert 0 <= stats["presence"]["mean"] <= 1 and stats["background_error"]["mean"] is not None
    assert result["prompts"] == ["a red circle bouncing on a blue background"] and result["seeds"] == [3]
    assert result["model_id"].startswith("file:sha256=")
    # a prompt outside the grammar is refused before any run
    code, _, err = run(capsys, "ablate", "--model", tiny_weights, "--prompt", "drifting clouds", "--out",
                       tmp_path / "p", "--no-progress")
    assert code == 2 and "unknown word" in err and err.count("\n") == 1 and not (tmp_path / "p").exists()


def test_records_made_before_new_config_fields_still_match():
    """Fields added later leave the record when they hold the value earlier runs had in effect, so a FIFO run
    keeps its digest, and a MIGA run made before the full-queue ending matches ``queue_end="drain"`` alone."""
    from dataclasses import asdict

    from miga.config import RECORD_DEFAULTS, FIFOConfig, MIGAConfig, config_from_dict, preset
    from miga.runner.jobs import make_job

    def old_digest(config):  # the key as runs recorded it before the fields existed
        job = make_job("r", config, 0, "x", 0, 16, "gaussian", {})
        key = dict(job.key, config={k: v for k, v in asdict(config).items()
                                    if k not in RECORD_DEFAULTS[type(config)]})
        return job.digest, hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]

    new, old = old_digest(preset("shapes", "fifo"))
    assert new == old
    new, old = old_digest(preset("shapes", "miga").with_(queue_end="drain"))
    assert new == old
    new, old = old_digest(preset("shapes", "miga"))
    assert new != old  # the full-queue ending makes other videos
    assert config_from_dict("miga", {k: v for k, v in asdict(MIGAConfig()).items() if k != "queue_end"}).queue_end == \
        "drain"
    assert config_from_dict("fifo", asdict(FIFOConfig())) == FIFOConfig()
