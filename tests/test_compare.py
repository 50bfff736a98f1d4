"""``miga compare``: the paper's Table 1 on the ablation runner (same runs, resume and table)."""

import json

import pytest

from cli_helpers import run
from toy_helpers import tiny_v2_weights


@pytest.fixture(scope="module")
def v2_path(tmp_path_factory):
    return tiny_v2_weights(str(tmp_path_factory.mktemp("toy") / "tiny_v2.safetensors"))


def test_default_methods_are_those_the_model_supports(tmp_path, capsys):
    out = tmp_path / "cmp"
    code, text, err = run(capsys, "compare", "--model", "gaussian", "--height", "32", "--width", "32", "--frames",
                          "40", "--seeds", "0", "--prompt", "drifting clouds", "--out", out, "--no-progress")
    assert code == 0, err
    assert "**Methods (the paper's Table 1)**" in text
    rows = json.loads((out / "results.json").read_text())["rows"]
    assert [r["key"] for r in rows] == ["fifo", "scalingnoise", "miga"]  # ScalingNoise needs only FIFO's queue
    assert rows[1]["switches"].endswith("k=5 m=3") and "k=" not in rows[0]["switches"]
    assert rows[1]["label"] == "ScalingNoise"
    for method in ("freenoise", "freelong", "freepca"):  # the Gaussian world has no temporal attention
        assert f"skipping {method}: --method {method}:" in err


def test_baselines_run_side_by_side_and_resume(tmp_path, capsys, v2_path):
    out = tmp_path / "cmp"
    argv = ("compare", "--model", v2_path, "--methods", "fifo,freenoise,freepca,miga", "--frames", "24", "--seeds",
            "0", "--prompt", "a red circle bouncing on a blue background", "--out", out, "--no-progress")
    code, text, err = run(capsys, *argv)
    assert code == 0, err
    result = json.loads((out / "results.json").read_text())
    rows = {r["key"]: r for r in result["rows"]}
    assert list(rows) == ["fifo", "freenoise", "freepca", "miga"]
    assert "all frames, W=16 S=4" in rows["freenoise"]["switches"]
    nfe = {k: r["stats"]["nfe_per_frame"]["mean"] for k, r in rows.items()}
    assert nfe["freenoise"] < nfe["fifo"]  # one call per step on all frames, against FIFO's windows per frame
    assert result["runs"] == 4 and result["skipped"] == 0
    code, _, err = run(capsys, *argv)  # the same command again: nothing is generated twice
    assert code == 0 and json.loads((out / "results.json").read_text())["skipped"] == 4, err


def test_an_unsupported_or_unknown_method_is_refused_in_one_line(tmp_path, capsys):
    for methods, message in (("fifo,freelong", "--method freelong:"), ("fifo,sora", "unknown method 'sora'"),
                             ("fifo,fifo", "a value is repeated")):
        code, _, err = run(capsys, "compare", "--model", "gaussian", "--methods", methods, "--out",
                           tmp_path / "x", "--no-progress")
        assert code == 2 and message in err and err.count("\n") == 1, err
        assert not (tmp_path / "x").exists()


def test_a_full_sequence_method_that_cannot_fit_is_refused_before_any_run_unless_forced(tmp_path, capsys,
                                                                                         v2_path, monkeypatch):
    from miga.baselines import methods

    monkeypatch.setattr(methods, "available_bytes", lambda device: 1000)
    out = tmp_path / "cmp"
    argv = ("compare", "--model", v2_path, "--methods", "fifo,freelong", "--frames", "20", "--seeds", "0",
            "--prompt", "a red circle bouncing on a blue background", "--out", out, "--no-progress")
    code, _, err = run(capsys, *argv)
    assert code == 2 and "row freelong:" in err and "GiB at its peak" in err and "--force" in err, err
    assert err.count("\n") == 1 and not out.exists()
    code, _, err = run(capsys, *argv, "--force")
    assert code == 0, err
    assert json.loads((out / "results.json").read_text())["runs"] == 2
