"""The full-sequence baselines on VideoCrafter2 run the stock LVDM DDIM sampler of their repositories
(``shared/spec/baselines.md`` §1): grid ``range(0, 1000, 1000 // T) + 1``, ``use_scale`` on, the method's fps
condition, where FIFO and MIGA keep miga's VideoCrafter2 defaults."""

import os

import pytest
import torch

pytest.importorskip("diffusers")

from miga.backbones.videocrafter2 import USE_SCALE  # noqa: E402
from miga.backbones.videocrafter2_random import random_videocrafter2_components, save_official_checkpoint  # noqa: E402
from miga.config import FreeLongMethod, FreeNoiseMethod, FreePCAMethod, preset  # noqa: E402
from miga.errors import MigaError  # noqa: E402
from miga.pipeline import LongVideo, load_backbone  # noqa: E402


@pytest.fixture(scope="module")
def vc2(tmp_path_factory):
    folder = str(tmp_path_factory.mktemp("vc2"))
    save_official_checkpoint(random_videocrafter2_components(seed=1), folder)
    return load_backbone(os.path.join(folder, "model.ckpt"), height=32, width=32, device="cpu")


def test_the_lvdm_grid_is_diffusers_leading_grid_with_offset_one(vc2):
    from diffusers import DDIMScheduler

    video = LongVideo(vc2, "a cat", 16, FreeNoiseMethod.videocrafter2())
    reference = DDIMScheduler(num_train_timesteps=1000, timestep_spacing="leading", steps_offset=1)
    reference.set_timesteps(50)
    assert video.schedule.timesteps[1:] == sorted(reference.timesteps.tolist())
    assert video.schedule.timesteps[1:] == [float(t) for t in range(1, 1000, 20)]  # spec §1.1: 1, 21, ..., 981
    assert video.schedule.config.signal_scale_end == USE_SCALE["signal_scale_end"]
    assert video.schedule.signal_scales[-1] == pytest.approx(0.7)
    fifo = LongVideo(vc2, "a cat", 16, preset("videocrafter2", "fifo"))
    assert fifo.schedule.config.timestep_spacing == "linspace" and fifo.schedule.signal_scales[-1] == 1.0


@pytest.mark.parametrize("cls, fps", [(FreeNoiseMethod, 16.0), (FreeLongMethod, 28.0), (FreePCAMethod, 28.0)])
def test_each_method_conditions_on_its_fps_and_restores_the_models(vc2, cls, fps, monkeypatch):
    seen = []
    real = vc2.unet.forward

    def recording(*args, **kwargs):
        seen.append(kwargs.get("fps"))
        return real(*args, **kwargs)

    monkeypatch.setattr(vc2.unet, "forward", recording)
    config = cls.videocrafter2().with_(steps=2)
    assert config.fps_condition == fps
    before = vc2.fps_condition
    frames = list(LongVideo(vc2, "a cat", 16, config).frames())
    assert len(frames) == 16 and seen and set(seen) == {fps}
    assert vc2.fps_condition == before


def test_an_fps_condition_on_a_model_without_one_and_a_grid_on_a_flow_model_are_refused(tmp_path):
    from miga.baselines.methods import check_fps_condition
    from toy_helpers import tiny_v2_weights

    v2 = load_backbone(tiny_v2_weights(str(tmp_path / "v2.safetensors")))
    for config, message in [(FreeNoiseMethod.shapes().with_(fps_condition=16.0), "needs an fps-conditioned model"),
                            (FreeNoiseMethod.shapes().with_(timestep_spacing="leading"), "apply to DDPM models")]:
        with pytest.raises(MigaError, match=message) as e:
            LongVideo(v2, "a red circle bouncing", 20, config)
        assert "\n" not in str(e.value)
    check_fps_condition(v2, FreeNoiseMethod.shapes())  # no fps asked: nothing to refuse
    with pytest.raises(MigaError, match="timestep spacing must be"):
        FreeNoiseMethod.videocrafter2().with_(timestep_spacing="odd").validate(16)
    with pytest.raises(MigaError, match="signal scale end"):
        FreeNoiseMethod.videocrafter2().with_(signal_scale_end=0.0).validate(16)
