"""The backbone registry: the order of recognition, which kind takes which name, file or folder (tiny model
folders saved by the random-weight helpers; nothing is loaded or downloaded), one-line errors for inputs no
kind takes, ``miga models [DIR ...]``, and that the registry and the CLI import without diffusers."""

import os
import subprocess
import sys

import pytest

from cli_helpers import run
from miga.backbones import registry
from miga.errors import MigaError
from miga.pipeline import load_backbone

ORDER = ("shapes", "gaussian", "videocrafter2", "unet3d", "wan")
BUILTIN = {"shapes": "shapes", "shapes-df": "shapes", "shapes-v1": "shapes", "gaussian": "gaussian", "gaussian-clip": "gaussian"}
MODELS = {"modelscope": "unet3d", "skyreels": "wan", "vc2-community": "videocrafter2",
          "vc2-official": "videocrafter2", "wan": "wan"}
"""The model folders in the ``models`` fixture and the kind each must be recognised as."""


def kind(name: str) -> registry.BackboneKind:
    return next(k for k in registry.kinds() if k.name == name)


def flat(text: str) -> str:
    """``text`` with shell line continuations joined and all runs of white space made one space."""
    return " ".join(text.replace(" \\\n", " ").split())


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A folder holding one tiny folder of each diffusers-backed kind (``MODELS``), a junk file and an empty
    folder."""
    pytest.importorskip("diffusers")
    from miga.backbones.unet3d_random import random_unet3d_components, save_unet3d_folder
    from miga.backbones.videocrafter2_random import (random_diffusers_unet, random_videocrafter2_components,
                                                     save_community_folder, save_official_checkpoint)
    from miga.backbones.wan_random import random_wan_components, save_wan_folder

    root = tmp_path_factory.mktemp("models")
    save_wan_folder(random_wan_components("tiny", seed=1), str(root / "wan"))
    save_wan_folder(random_wan_components("tiny", skyreels=True, seed=2), str(root / "skyreels"))
    save_unet3d_folder(random_unet3d_components(seed=1), str(root / "modelscope"))
    vc2 = random_videocrafter2_components(seed=1)
    save_official_checkpoint(vc2, str(root / "vc2-official"))
    save_community_folder(random_diffusers_unet(seed=2), vc2, str(root / "vc2-community"))
    (root / "junk.bin").write_bytes(os.urandom(256))
    (root / "empty").mkdir()
    return root


# ---------------------------------------------------------------- the order and the names
def test_order_of_recognition():
    assert tuple(k.name for k in registry.kinds()) == ORDER
    assert registry.builtin_names() == tuple(BUILTIN)


@pytest.mark.parametrize("name", BUILTIN)
def test_each_builtin_name_maps_to_its_kind(name):
    assert registry.kind_of(name).name == BUILTIN[name]
    assert sum(k.recognises(name) for k in registry.kinds()) == 1


def test_every_kind_describes_itself():
    for k in registry.kinds():
        assert k.summary.strip() and k.needs.strip() and callable(k.load), k.name
        assert "\n" not in k.summary + k.needs + k.download, k.name
        assert (k.recognises_pipe is None) == (k.from_pipe is None) == (not k.pipelines), k.name
    assert [k.name for k in registry.kinds() if "ddim_rescale" in k.options] == ["videocrafter2"]


def test_unknown_names_and_files_are_not_recognised(tmp_path):
    junk = tmp_path / "junk.bin"
    junk.write_bytes(os.urandom(64))
    for model in ("nosuchmodel", "Shapes", "gaussian-", str(junk), str(tmp_path), str(tmp_path / "missing")):
        assert registry.kind_of(model) is None, model


# ---------------------------------------------------------------- folders on disk
@pytest.mark.parametrize("name", MODELS)
def test_model_folders_are_recognised_as_their_kind(models, name):
    assert registry.kind_of(str(models / name)).name == MODELS[name]


def test_videocrafter2_checkpoint_file_is_recognised(models):
    assert registry.kind_of(str(models / "vc2-official" / "model.ckpt")).name == "videocrafter2"


def test_community_videocrafter2_folder_goes_to_videocrafter2_not_unet3d(models):
    """Its unet/ is an fps-conditioned UNet3D, which unet3d would also take: the order decides."""
    folder = str(models / "vc2-community")
    assert kind("unet3d").recognises(folder) and kind("videocrafter2").recognises(folder)
    assert registry.kind_of(folder).name == "videocrafter2"
    assert not kind("videocrafter2").recognises(str(models / "modelscope"))


def test_other_folders_are_taken_by_no_kind_and_loaded_as_wan(models):
    """An unrecognised folder falls to the last kind (Wan), whose one-line error lists the missing parts."""
    for path in (models / "empty", models):
        assert registry.kind_of(str(path)) is None
        with pytest.raises(MigaError) as info:
            registry.load(str(path), device="cpu")
        message = str(info.value)
        assert "\n" not in message and "missing transformer/" in message and "hf download" in message, message


# ---------------------------------------------------------------- one-line errors
def test_unknown_name_names_the_builtins():
    with pytest.raises(MigaError) as info:
        load_backbone("nosuchmodel")
    message = str(info.value)
    assert "\n" not in message and "'nosuchmodel'" in message
    assert all(name in message for name in BUILTIN), message


def test_random_file_is_described(tmp_path):
    junk = tmp_path / "weights.bin"
    junk.write_bytes(os.urandom(256))
    with pytest.raises(MigaError) as info:
        load_backbone(str(junk))
    message = str(info.value)
    assert "\n" not in message and "single checkpoint file (.bin)" in message and "hf download" in message, message


def test_foreign_safetensors_file_is_described(tmp_path):
    from safetensors.torch import save_file
    import torch

    path = str(tmp_path / "model.safetensors")
    save_file({"conv_in.weight": torch.zeros(2)}, path)
    with pytest.raises(MigaError) as info:
        load_backbone(path)
    message = str(info.value)
    assert "\n" not in message and "not a miga shapes weights file" in message, message


@pytest.mark.parametrize("model", ["shapes", "gaussian", "gaussian-clip"])
def test_ddim_rescale_is_refused_for_builtin_models(model):
    with pytest.raises(MigaError) as info:
        registry.load(model, ddim_rescale=True)
    message = str(info.value)
    assert "\n" not in message and "VideoCrafter2" in message and model in message, message


@pytest.mark.parametrize("name", ["wan", "modelscope"])
def test_ddim_rescale_is_refused_for_other_diffusers_models(models, name):
    with pytest.raises(MigaError) as info:
        load_backbone(str(models / name), device="cpu", ddim_rescale=True)
    message = str(info.value)
    assert "\n" not in message and "applies to VideoCrafter2" in message, message


# ---------------------------------------------------------------- miga models
def test_models_lists_every_kind_in_order(capsys):
    code, out, err = run(capsys, "models")
    assert code == 0 and err == "", err
    lines = out.splitlines()
    assert all(len(line) <= 100 for line in lines), max(lines, key=len)
    assert "order of recognition" in flat(out)
    rows = [next(i for i, line in enumerate(lines) if line.split()[:1] == [name]) for name in ORDER]
    assert rows == sorted(rows), rows
    for k, start, end in zip(registry.kinds(), rows, rows[1:] + [len(lines)]):
        block = flat("\n".join(lines[start:end]))
        for text in (k.summary, k.needs, *k.download.split("; "), *k.pipelines, *k.names):
            assert flat(text) in block, (k.name, text)


def test_models_dir_lists_the_model_folders_with_their_kinds(models, capsys, monkeypatch):
    def no_loading(*args, **kwargs):
        raise AssertionError("miga models loaded a model")

    from miga.backbones.unet3d import UNet3DModel
    from miga.backbones.videocrafter2 import VideoCrafter2Model
    from miga.backbones.wan import WanModel

    monkeypatch.setattr(registry, "load", no_loading)
    monkeypatch.setattr(WanModel, "from_folder", no_loading)
    monkeypatch.setattr(UNet3DModel, "from_folder", no_loading)
    monkeypatch.setattr(VideoCrafter2Model, "from_path", no_loading)
    code, out, err = run(capsys, "models", models)
    assert code == 0 and err == "", err
    rows = [line.split() for line in out.splitlines()]
    assert rows == [[str(models / name), MODELS[name]] for name in sorted(MODELS)], out


def test_models_dir_that_is_itself_a_model(models, capsys):
    code, out, err = run(capsys, "models", models / "vc2-official", models / "wan")
    assert code == 0 and err == "", err
    rows = [line.split() for line in out.splitlines()]
    assert rows == [[str(models / "vc2-official"), "videocrafter2"],
                    [str(models / "vc2-official" / "model.ckpt"), "videocrafter2"],
                    [str(models / "wan"), "wan"]], out


def test_models_dir_with_nothing_recognised_says_what_miga_looks_for(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("no models here\n")
    (tmp_path / "sub").mkdir()
    code, out, err = run(capsys, "models", tmp_path)
    assert code == 0 and err == "", err
    assert out.splitlines()[0].startswith(f"no model in {tmp_path}")
    for k in registry.kinds():
        if k.recognises_path is not None:
            assert k.name in out and flat(k.needs) in flat(out), k.name


def test_models_dir_with_an_unreadable_model_folder_says_why(tmp_path, capsys):
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "model_index.json").write_text("{ not json")
    code, out, err = run(capsys, "models", tmp_path)
    assert code == 0 and err == "", err
    (line,) = out.splitlines()
    assert line.startswith(str(broken)) and "?" in line and "model_index.json" in line, out


@pytest.mark.parametrize("what", ["missing", "file"])
def test_models_refuses_a_missing_dir_or_a_file_in_one_line(tmp_path, capsys, what):
    path = tmp_path / "nothing"
    if what == "file":
        path.write_text("x")
    code, out, err = run(capsys, "models", tmp_path, path)
    assert code == 2 and out == "" and "Traceback" not in err, err
    assert err.startswith("miga: error: ") and str(path) in err and len(err.strip().splitlines()) == 1, err


# ---------------------------------------------------------------- cheap imports
def test_registry_and_cli_import_without_diffusers():
    code = ("import miga.cli, sys; from miga.backbones import registry; registry.kinds(); "
            "print('diffusers' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False", result.stdout
