"""Identity drift in the commands: ``miga eval --world shapes`` (columns, JSON, plot), ``miga eval --world
gaussian`` (lag correlations and drift from the saved latents against the prior), ``miga ablate`` (identity
columns for the shapes model and the Gaussian worlds, old records kept), and their one-line refusals."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from miga.runner import jobs
from miga.backbones.gaussian import GaussianWorld
from miga.evaluation.identity import identity_report, prior_sample
from miga.evaluation.latents import LatentWriter, read_latents
from miga.video import VideoWriter, prompts_metadata, read_video
from miga.worlds.identity import identity_drift, true_world_clip
from miga.worlds.shapes import SceneBatch, parse_prompt, sample_hidden
from cli_helpers import run
from world_helpers import two_identities

CYAN = "a cyan square bouncing on a white background"
RED = "a red circle bouncing on a blue background"
CLOUDS = "drifting clouds"


def write(path, frames, schedule=None):
    with VideoWriter(path, fps=8, metadata=prompts_metadata(schedule) if schedule else None) as writer:
        for f in frames:
            writer.write(f)


def identities():
    """Two clearly different identities of CYAN's scene."""
    return two_identities(CYAN)


def kept_and_forgotten(frames):
    """A clip of CYAN that keeps its identity, and one whose identity changes halfway."""
    scene, first, second = identities()
    kept = true_world_clip(scene, first, frames, seed=1)
    half = frames // 2
    forgot = np.concatenate([true_world_clip(scene, first, half, seed=1),
                             true_world_clip(scene, second, frames - half, seed=2)])
    return kept, forgot


def one_line_error(code, out, err, needle):
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2 and len(lines) == 1 and needle in lines[0] and "Traceback" not in err, err
    assert out == ""


def is_png(path):
    with Image.open(path) as im:
        return im.format == "PNG" and im.size[0] > 200 and im.size[1] > 100


# ---------------------------------------------------------------------------------------------------- shapes


@pytest.fixture(scope="module")
def shapes_videos(tmp_path_factory):
    root = tmp_path_factory.mktemp("shapes")
    kept, forgot = kept_and_forgotten(140)
    write(root / "kept.mp4", kept, [(0, CYAN)])
    write(root / "forgot.mp4", forgot, [(0, CYAN)])
    return root


def test_eval_shapes_adds_identity_drift(shapes_videos, tmp_path, capsys):
    kept, forgot = shapes_videos / "kept.mp4", shapes_videos / "forgot.mp4"
    code, out, err = run(capsys, "eval", "--world", "shapes", kept, forgot, "--json", tmp_path / "r.json",
                         "--plot", tmp_path / "p.png")
    assert code == 0, err
    table, notes = out.strip().split("\n\n")
    head, row_kept, row_forgot = table.splitlines()
    assert head.split()[-4:] == ["drift", "64", "drift", "128"] and "hidden attribute" in notes
    cells = {}
    for row in (row_kept, row_forgot):  # "0.041 (0.012)": the video, the true world clip in brackets
        parts = row.split()
        cells[parts[0]] = [(float(parts[i]), float(parts[i + 1].strip("()"))) for i in (-4, -2)]
    # the video that keeps its identity drifts like the true world; the one that changed, as far as a new clip
    assert all(v < 0.15 and w < 0.15 for v, w in cells[str(kept)])
    assert cells[str(forgot)][1][0] > 0.8 > 0.15 > cells[str(forgot)][1][1]
    data = json.loads((tmp_path / "r.json").read_text())
    assert data["identity"]["DISTANCES"][:2] == [64, 128] and "prior" in data["identity"]["definition"]
    ident = data["videos"][1]["identity"]
    assert ident["frames"] == 140 and ident["prompt"] == CYAN and ident["distances"] == [64, 128]
    assert cells[str(forgot)][1][0] == pytest.approx(ident["identity_drift"]["128"], abs=5e-4)
    assert ident["true_world"]["degraded"] and ident["true_world"]["frames"] == 140
    # the same numbers as the library on the decoded video
    direct = identity_drift(read_video(forgot)[0], parse_prompt(CYAN), true_world=False)
    assert direct["identity_drift"] == ident["identity_drift"]
    assert {a["attribute"] for a in ident["per_frame"]} == {"radius", "shade", "speed", "bg_angle", "bg_tilt"}
    radius = next(a for a in ident["per_frame"] if a["attribute"] == "radius")["values"]
    assert len(radius) == 140 and np.nanmean(np.array(radius[100:], float)) > 1.5  # 2.4 px apart / 1 px spread
    assert len(ident["track"]["radius"][0]) == 140
    json.dumps(data, allow_nan=False)
    assert is_png(tmp_path / "p.png")


def test_eval_shapes_identity_of_a_multi_prompt_video_uses_the_first_prompt(shapes_videos, tmp_path, capsys):
    kept, _ = kept_and_forgotten(80)
    red = true_world_clip(parse_prompt(RED), sample_hidden(SceneBatch.of([parse_prompt(RED)]),
                                                           torch.Generator().manual_seed(1)), 40)
    path = tmp_path / "two.mp4"
    write(path, np.concatenate([kept, red]), [(0, CYAN), (80, RED)])
    code, out, err = run(capsys, "eval", "--world", "shapes", path, "--json", tmp_path / "r.json")
    assert code == 0, err
    assert out.splitlines()[0].split()[-2:] == ["drift", "64"]  # 80 frames of the first prompt: 64, not 128
    assert f"{path}: identity measured on the first prompt's frames 0-79 only" in out
    ident = json.loads((tmp_path / "r.json").read_text())["videos"][0]["identity"]
    assert ident["frames"] == 80 and ident["distances"] == [64] and ident["identity_drift"]["64"] < 0.15
    # --prompt judges (and measures) the whole video against one prompt
    code, out, err = run(capsys, "eval", "--world", "shapes", path, "--prompt", CYAN, "--json", tmp_path / "s.json")
    assert code == 0, err
    ident = json.loads((tmp_path / "s.json").read_text())["videos"][0]["identity"]
    assert ident["frames"] == 120 and ident["prompt"] == CYAN and "first prompt" not in out


# ---------------------------------------------------------------------------------------------------- gaussian


def save_gaussian(root, name, latents, schedule, size=32):
    """A video of ``latents`` decoded by the Gaussian world's decoder, with its latents beside it."""
    world = GaussianWorld(height=size, width=size)
    decoder = world.decoder()
    write(root / f"{name}.mp4", [decoder.push(x)[0] for x in latents], schedule)
    writer = LatentWriter(str(root / f"{name}.latents.safetensors"), len(latents), tuple(latents.shape[1:]),
                          {"frames": len(latents), "frames_per_latent": 1, "fps": 8, "method": "miga", "chunk": 4,
                           "refs": 2, "score_mode": "frame"})
    for x in latents:
        writer.write(x)
    writer.close()
    return root / f"{name}.mp4"


@pytest.fixture(scope="module")
def gaussian_videos(tmp_path_factory):
    """Exact prior draws of the 32x32 world (200 latents) with the prompt's mean: ``true`` keeps its identity;
    ``forgot`` switches to an independent draw halfway (a new identity)."""
    root = tmp_path_factory.mktemp("gaussian")
    world = GaussianWorld(height=32, width=32)
    mu = world.encode_prompt(CLOUDS).float().reshape(1, -1, 1, 1)
    true = prior_sample(world, 200, seed=3).float() + mu
    other = prior_sample(world, 200, seed=4).float() + mu
    forgot = torch.cat([true[:100], other[100:]])
    return {"root": root, "true": save_gaussian(root, "true", true, [(0, CLOUDS)]),
            "forgot": save_gaussian(root, "forgot", forgot, [(0, CLOUDS)]), "latents": true}


def table_rows(out):
    """``{(video, measure, d): [measured, prior, mean, sd, z, draw]}`` from the gaussian table."""
    rows, video = {}, None
    for line in out.splitlines():
        if line.endswith("rho 0.9") and ": " in line:
            video = line.split(": ")[0]
        parts = line.split()
        if line.startswith("  ") and parts[0] in ("lag", "identity") and parts[2].isdigit():
            rows[(video, f"{parts[0]} {parts[1]}", int(parts[2]))] = [
                float(parts[3]), float(parts[4]), float(parts[5]), float(parts[7]), float(parts[8]), float(parts[9])]
    return rows


def test_eval_gaussian_against_the_prior(gaussian_videos, tmp_path, capsys):
    true, forgot = gaussian_videos["true"], gaussian_videos["forgot"]
    code, out, err = run(capsys, "eval", "--world", "gaussian", true, forgot, "--json", tmp_path / "r.json",
                         "--plot", tmp_path / "p.png")
    assert code == 0, err
    rows = table_rows(out)
    assert {d for v, m, d in rows if v == str(true) and m == "lag correlation"} == {1, 16, 64, 128}
    assert {d for v, m, d in rows if v == str(true) and m == "identity drift"} == {1, 16, 64, 128}
    for (video, measure, d), (measured, prior, mean, sd, z, draw) in rows.items():
        if measure == "lag correlation":
            assert prior == pytest.approx(0.5 + 0.5 * 0.9 ** d, abs=1e-4)  # s_id^2 + s_m^2 rho^d
        assert sd > 0
        if sd > 0.01:  # the printed z is the measured one's (rounded numbers only check it roughly)
            assert z == pytest.approx((measured - mean) / sd, abs=0.06)
        if video == str(true):  # a true sample is consistent with the prior
            assert abs(z) < 4, (measure, d, z)
    # a video whose identity changed halfway: frames 128 apart straddle the change, and do not correlate
    lag = rows[(str(forgot), "lag correlation", 128)]
    assert abs(lag[0]) < 0.2 and lag[4] < -4
    assert rows[(str(forgot), "identity drift", 128)][0] < 0.3 < rows[(str(true), "identity drift", 128)][0]
    data = json.loads((tmp_path / "r.json").read_text())
    v = data["videos"][0]
    assert v["prompt"] == CLOUDS and v["prompt_source"] == "metadata" and v["latents_measured"] == 200
    assert v["world"] == {"identity_share": 0.5, "rho": 0.9, "beta": 1.2, "k0": 1.0, "latent_shape": [4, 4, 4]}
    world = GaussianWorld(height=32, width=32)
    latents, _ = read_latents(str(gaussian_videos["root"] / "true.latents.safetensors"))
    direct = identity_report(latents, world, world.encode_prompt(CLOUDS))
    assert v["identity"] == direct["video"] and v["prior_sample"] == direct["prior_sample"]
    assert is_png(tmp_path / "p.png")
    # the prompt's mean matters: another prompt leaves a mean in the latents, which then all correlate
    code, out, err = run(capsys, "eval", "--world", "gaussian", true, "--prompt", "ocean waves at sunset")
    assert code == 0, err
    wrong = table_rows(out)[(str(true), "lag correlation", 128)]
    assert wrong[0] > 0.7 and wrong[4] > 3


def test_eval_gaussian_multi_prompt_and_explicit_latents(gaussian_videos, tmp_path, capsys):
    latents = gaussian_videos["latents"]
    video = save_gaussian(tmp_path, "two", latents, [(0, CLOUDS), (120, "ocean waves at sunset")])
    moved = tmp_path / "elsewhere.safetensors"
    (tmp_path / "two.latents.safetensors").rename(moved)
    code, out, err = run(capsys, "eval", "--world", "gaussian", video, "--latents", moved, "--json",
                         tmp_path / "r.json")
    assert code == 0, err
    v = json.loads((tmp_path / "r.json").read_text())["videos"][0]
    assert v["latents"] == str(moved) and v["latents_measured"] == 120 and v["frames"] == 200
    assert [r["lag"] for r in v["identity"]["lag_correlation"]] == [1, 16, 64]
    assert "120 latents [4, 4, 4] (its first prompt's; 200 frames in all)" in out


def test_generate_with_latents_then_eval_gaussian(tmp_path, capsys):
    """End to end at 32x32 and 200 frames: miga generate --save-latents, then miga eval --world gaussian."""
    out = tmp_path / "g.mp4"
    code, _, err = run(capsys, "generate", CLOUDS, "--model", "gaussian", "--method", "fifo", "--frames", 200,
                       "--height", 32, "--width", 32, "--window-batch", 8, "--out", out, "--save-latents",
                       "--no-progress")
    assert code == 0, err
    code, stdout, err = run(capsys, "eval", "--world", "gaussian", out, "--json", tmp_path / "r.json")
    assert code == 0, err
    v = json.loads((tmp_path / "r.json").read_text())["videos"][0]
    assert v["latents"] == str(tmp_path / "g.latents.safetensors") and v["latents_measured"] == 200
    rows = {r["lag"]: r for r in v["identity"]["lag_correlation"]}
    assert set(rows) == {1, 16, 64, 128}
    # FIFO forgets the identity (docs/notes.md): far below what a true sample keeps at lag 128
    assert rows[128]["measured"] < rows[128]["prior_mean"] - 3 * rows[128]["prior_sd"]
    assert abs(rows[1]["z"]) < 10 and rows[1]["measured"] > 0.85  # short range is nearly right
    assert table_rows(stdout)[(str(out), "lag correlation", 128)][0] == pytest.approx(rows[128]["measured"],
                                                                                       abs=5e-5)


def test_eval_reads_the_latents_where_the_video_says_they_are(tmp_path, capsys, monkeypatch):
    """``--save-latents g.safetensors`` (not the default name) is recorded in the MP4; eval reads it from there,
    from another working directory too, and names every path it looked at when the file is gone."""
    monkeypatch.chdir(tmp_path)
    code, _, err = run(capsys, "generate", CLOUDS, "--model", "gaussian", "--height", 32, "--width", 32,
                       "--frames", 64, "--out", "g.mp4", "--save-latents", "g.safetensors", "--no-progress")
    assert code == 0, err
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    code, _, err = run(capsys, "eval", "--world", "gaussian", tmp_path / "g.mp4", "--json", "r.json")
    assert code == 0, err
    assert json.loads((elsewhere / "r.json").read_text())["videos"][0]["latents"] == str(tmp_path / "g.safetensors")
    (tmp_path / "g.safetensors").rename(tmp_path / "moved.safetensors")
    code, _, err = run(capsys, "eval", "--world", "gaussian", tmp_path / "g.mp4")
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert str(tmp_path / "g.safetensors") in err and "g.latents.safetensors" in err


# ---------------------------------------------------------------------------------------------------- refusals


@pytest.mark.parametrize("argv, needle", [
    (["--world", "gaussian", "{d}/bare.mp4"], "--save-latents"),
    (["--world", "gaussian", "{d}/missing.mp4"], "cannot read video"),
    (["--world", "gaussian", "{d}/true.mp4", "--latents", "{d}/none.safetensors"], "no such file"),
    (["--world", "gaussian", "{d}/true.mp4", "--latents", "{d}/short.latents.safetensors"], "hold 10 latents"),
    (["--world", "gaussian", "{d}/true.mp4", "{d}/true.mp4", "--latents", "{d}/true.latents.safetensors"],
     "once per video"),
    (["--world", "gaussian", "{d}/noprompt.mp4"], "holds no prompt"),
    (["--world", "gaussian", "{d}/true.mp4", "--prompt", " "], "--prompt is empty"),
    (["--world", "gaussian", "{d}/tiny.mp4"], "not the Gaussian world's"),
    (["--world", "gaussian", "{d}/one.mp4"], "at least 2 latents"),
    (["--world", "gaussian", "{d}/other.mp4"], "is not the Gaussian world's decoding"),  # another model's video
    (["--world", "gaussian", "{d}/big.mp4"], "has 64x64 frames, but the Gaussian world decodes"),
    (["--world", "gaussian", "{d}/true.mp4", "--dino", "{d}/dino"], "--dino apply to the VBench metrics"),
    (["--world", "gaussian", "{d}/true.mp4", "--plot", "{d}/p.jpg"], "must name a .png"),
    (["--world", "gaussian", "{d}/true.mp4", "--json", "{d}/no/r.json"], "does not exist"),
    (["--world", "shapes", "{d}/kept.mp4", "--latents", "{d}/true.latents.safetensors"],
     "--latents applies to --world gaussian"),
    (["--world", "shapes", "{d}/kept.mp4", "--amt", "{d}/amt.pth", "--clip", "{d}/c"], "--clip, --amt apply"),
    (["--world", "shapes", "{d}/kept.mp4", "--plot", "{d}/no/p.png"], "does not exist"),
])
def test_eval_world_refusals_are_one_line(gaussian_videos, shapes_videos, tmp_path, capsys, argv, needle):
    d = tmp_path
    for name in ("true.mp4", "true.latents.safetensors"):
        (d / name).symlink_to(gaussian_videos["root"] / name)
    (d / "kept.mp4").symlink_to(shapes_videos / "kept.mp4")
    world = GaussianWorld(height=32, width=32)
    write(d / "bare.mp4", [np.zeros((32, 32, 3), np.uint8)] * 4, [(0, CLOUDS)])
    save_gaussian(d, "short", gaussian_videos["latents"][:10], [(0, CLOUDS)])
    save_gaussian(d, "noprompt", gaussian_videos["latents"][:10], None)
    save_gaussian(d, "one", gaussian_videos["latents"][:1], [(0, CLOUDS)])
    save_gaussian(d, "other", gaussian_videos["latents"][:10], [(0, CLOUDS)])
    write(d / "other.mp4", [np.zeros((32, 32, 3), np.uint8)] * 10, [(0, CLOUDS)])  # frames of another model
    save_gaussian(d, "big", gaussian_videos["latents"][:10], [(0, CLOUDS)])
    write(d / "big.mp4", [np.full((64, 64, 3), 128, np.uint8)] * 10, [(0, CLOUDS)])
    tiny = torch.zeros(6, 4, 1, 1)
    write(d / "tiny.mp4", [np.zeros((8, 8, 3), np.uint8)] * 6, [(0, CLOUDS)])
    writer = LatentWriter(str(d / "tiny.latents.safetensors"), 6, (4, 1, 1), {"frames_per_latent": 1})
    for x in tiny:
        writer.write(x)
    writer.close()
    assert world.latent_shape == (4, 4, 4)
    code, out, err = run(capsys, "eval", *[a.format(d=d) for a in argv])
    one_line_error(code, out, err, needle)
    assert not (d / "p.png").exists() and not (d / "no").exists()


# ---------------------------------------------------------------------------------------------------- ablate


def test_ablate_gaussian_adds_identity_columns_and_keeps_old_records(tmp_path, capsys, monkeypatch):
    argv = ["ablate", "--model", "gaussian", "--height", 32, "--width", 32, "--frames", 96, "--seeds", 0,
            "--rows", "fifo", "--sweeps", "none", "--prompt", CLOUDS, "--window-batch", 8, "--out", tmp_path / "a",
            "--no-progress"]
    code, out, err = run(capsys, *argv)
    assert code == 0, err
    header = next(line for line in out.splitlines() if line.startswith("| row"))
    assert header.split("|")[-5].strip() == "id corr 64"  # 96 frames: 64 + a 32-latent block
    assert "the prior gives 0.704 at 64 (a true sample: 0.700 ± 0.080)" in out
    result = json.loads((tmp_path / "a" / "results.json").read_text())
    row = result["rows"][0]
    assert row["identity"] == {"kind": "gaussian", "distances": [64]} and result["identity"]["distances"] == [64]
    measured = row["stats"]["identity_drift_64"]["mean"]
    video = tmp_path / "a" / row["videos"][0]
    assert video.with_name(video.stem + ".latents.safetensors").is_file()
    # what miga eval --world gaussian says of the same video, from the latents saved beside it
    code, _, err = run(capsys, "eval", "--world", "gaussian", video, "--json", tmp_path / "e.json")
    assert code == 0, err
    drift = json.loads((tmp_path / "e.json").read_text())["videos"][0]["identity"]["identity_drift"]
    assert measured == next(r["measured"] for r in drift if r["distance"] == 64)
    assert measured < 0.5  # FIFO forgets
    # a record from before identity was measured (no identity, no latents): added without generating again
    record_path = next((tmp_path / "a" / "runs").glob("*.json"))
    record = json.loads(record_path.read_text())
    record.pop("identity")
    record_path.write_text(json.dumps(record))
    video.with_name(video.stem + ".latents.safetensors").unlink()
    before = video.read_bytes()
    monkeypatch.setattr(jobs, "generate_video", lambda *a, **k: pytest.fail("generated again"))
    code, out, err = run(capsys, *argv)
    assert code == 0, err
    assert "1 run(s), 1 already done" in err and "identity drift added to 1 run(s)" in err and "latents" in err
    assert video.read_bytes() == before
    again = json.loads((tmp_path / "a" / "results.json").read_text())["rows"][0]["stats"]["identity_drift_64"]
    assert again["mean"] == measured
    assert json.loads(record_path.read_text())["seconds"] == record["seconds"]


def test_ablate_shapes_adds_identity_drift_columns(tmp_path, capsys, monkeypatch):
    """The shapes model's rows get identity drift from their decoded videos (videos stand in for the model
    here: FIFO's identity changes halfway, MIGA's is kept), the same numbers as miga eval --world shapes."""
    kept, forgot = kept_and_forgotten(140)

    def fake_generate(backbone, run, frames, path, latents_path=None, **kw):
        assert latents_path is None  # only the Gaussian worlds save latents
        write(path, forgot if run.rows[0] == "fifo" else kept, [(0, run.prompt)])
        return {"frames": frames, "height": 64, "width": 64, "latents": frames, "nfe": frames, "nfe_per_frame": 1.0,
                "seconds": 1.0, "seconds_per_frame": 1.0 / frames, "model_seconds": 1.0, "reflection_checks": 0,
                "reflection_triggers": 0, "reflection_adoptions": 0}

    monkeypatch.setattr(jobs, "generate_video", fake_generate)
    argv = ["ablate", "--frames", 140, "--seeds", 0, "--rows", "fifo,miga", "--sweeps", "none", "--prompt", CYAN,
            "--out", tmp_path / "a", "--no-progress"]
    code, out, err = run(capsys, *argv)
    assert code == 0, err
    lines = out.splitlines()
    heads = [c.strip() for c in next(ln for ln in lines if ln.startswith("| row")).strip("|").split("|")]
    assert heads[-5:-3] == ["id drift 64", "id drift 128"] and "bg error" in heads
    cells = {ln.split("|")[1].strip(): [c.strip() for c in ln.strip("|").split("|")] for ln in lines
             if ln.startswith("| FIFO") or ln.startswith("| MIGA")}
    fifo, miga = (float(cells[k][heads.index("id drift 128")]) for k in ("FIFO-Diffusion", "MIGA"))
    assert fifo > 0.8 > 0.15 > miga
    assert "true world clips starting with each video's identity drift" in out
    result = json.loads((tmp_path / "a" / "results.json").read_text())
    stats = result["rows"][0]["stats"]
    assert stats["identity_true_world_128"]["mean"] < 0.15
    code, _, err = run(capsys, "eval", "--world", "shapes", tmp_path / "a" / result["rows"][0]["videos"][0],
                       "--json", tmp_path / "e.json")
    assert code == 0, err
    ident = json.loads((tmp_path / "e.json").read_text())["videos"][0]["identity"]
    assert stats["identity_drift_128"]["mean"] == ident["identity_drift"]["128"]
    assert stats["identity_true_world_128"]["mean"] == ident["true_world"]["identity_drift"]["128"]
    # records from before identity was measured get it from their videos, nothing generated
    for path in (tmp_path / "a" / "runs").glob("*.json"):
        record = json.loads(path.read_text())
        record.pop("identity")
        path.write_text(json.dumps(record))
    monkeypatch.setattr(jobs, "generate_video", lambda *a, **k: pytest.fail("generated again"))
    code, out2, err = run(capsys, *argv)
    assert code == 0, err
    assert "2 run(s), 2 already done" in err and "identity drift added to 2 run(s)" in err
    assert [ln for ln in out2.splitlines() if ln.startswith("| ")] == [ln for ln in lines if ln.startswith("| ")]
