"""The README's three lines for a diffusers user, run as written on a tiny random WanPipeline (only the
frame count and size are made small enough for a CPU test)."""

import os
import re

import pytest
import torch

pytest.importorskip("diffusers")

import diffusers  # noqa: E402

import miga  # noqa: E402
from miga.backbones.wan_random import SCHEDULER, random_wan_components  # noqa: E402
from miga.video import read_video  # noqa: E402

README = os.path.join(os.path.dirname(__file__), "..", "README.md")


def readme_lines() -> str:
    text = open(README, encoding="utf-8").read()
    match = re.search(r"<!-- readme-diffusers-example[^>]*-->\s*```python\n(.*?)```", text, re.S)
    assert match, "the README lost its diffusers example"
    return match.group(1)


def test_readme_diffusers_lines_run_on_a_tiny_wan_pipeline(tmp_path, monkeypatch):
    code = readme_lines()
    assert code.count("\n") == 3 and "LongVideoPipeline.from_pipe(pipe)" in code
    small = code.replace("num_frames=481", "num_frames=29, height=32, width=32")
    assert small != code
    pipe = diffusers.WanPipeline(scheduler=diffusers.UniPCMultistepScheduler(**SCHEDULER),
                                 **random_wan_components("tiny", seed=5))
    dtypes = {name: p.dtype for name, p in pipe.transformer.named_parameters()}
    monkeypatch.chdir(tmp_path)
    namespace = {"miga": miga, "pipe": pipe, "export_to_video": diffusers.utils.export_to_video}
    exec(compile(small, "README.md", "exec"), namespace)
    video = namespace["video"]
    assert video.shape == (29, 32, 32, 3) and video.dtype.kind == "f" and 0 <= video.min() and video.max() <= 1
    frames, fps = read_video(str(tmp_path / "corgi.mp4"))
    assert len(frames) == 29 and round(fps) == 16
    assert {name: p.dtype for name, p in pipe.transformer.named_parameters()} == dtypes
    assert isinstance(namespace["long_pipe"], miga.LongVideoPipeline) and torch.is_grad_enabled()
