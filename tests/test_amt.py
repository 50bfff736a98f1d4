"""AMT-S for motion smoothness (miga.evaluation.amt; evaluation.md Sec. 1.5): checkpoint layout, loading,
inference details and ``miga eval --amt``."""

import json

import numpy as np
import pytest
import torch

from miga.errors import MigaError
from miga.evaluation import motion_smoothness
from miga.evaluation.amt import AMTS, AMTMidpoint, padding_for
from miga.evaluation.interpolation import amt_interpolator
from miga.video import VideoWriter
from cli_helpers import run

# The layout of the official amt-s.pth (networks.AMT-S.Model, corr_radius=3, corr_lvls=4, num_flows=3): tensors
# per top-level module, and a sample of names and shapes covering every kind of block.
KEY_COUNT = 213
PARAMETERS = 2_990_543  # the AMT paper's 2.99 M for AMT-S
KEYS_PER_MODULE = {"feat_encoder": 44, "encoder": 24, "decoder4": 20, "decoder3": 20, "decoder2": 20, "decoder1": 20,
                   "update4": 20, "update3": 20, "update2": 20, "comb_block": 5}
SAMPLE_SHAPES = {
    "feat_encoder.conv1.weight": [32, 3, 7, 7],
    "feat_encoder.layer1.0.conv1.weight": [8, 32, 1, 1],
    "feat_encoder.layer1.1.conv3.bias": [32],
    "feat_encoder.layer2.0.conv2.weight": [16, 16, 3, 3],
    "feat_encoder.layer2.0.downsample.0.weight": [64, 32, 1, 1],
    "feat_encoder.layer3.0.downsample.0.bias": [96],
    "feat_encoder.layer3.1.conv1.weight": [24, 96, 1, 1],
    "feat_encoder.conv2.weight": [84, 96, 1, 1],
    "encoder.pyramid1.0.0.weight": [20, 3, 3, 3],
    "encoder.pyramid1.0.1.weight": [20],
    "encoder.pyramid4.0.0.weight": [56, 44, 3, 3],
    "encoder.pyramid4.1.1.weight": [56],
    "decoder4.convblock.0.0.weight": [112, 113, 3, 3],
    "decoder4.convblock.1.conv2.0.weight": [20, 20, 3, 3],
    "decoder4.convblock.1.conv5.weight": [112, 112, 3, 3],
    "decoder4.convblock.1.prelu.weight": [112],
    "decoder4.convblock.2.weight": [112, 48, 4, 4],
    "decoder3.convblock.0.0.weight": [132, 136, 3, 3],
    "decoder3.convblock.2.weight": [132, 36, 4, 4],
    "decoder2.convblock.1.conv4.1.weight": [20],
    "decoder2.convblock.2.bias": [24],
    "decoder1.convblock.0.0.weight": [60, 64, 3, 3],
    "decoder1.convblock.1.conv3.1.weight": [60],
    "decoder1.convblock.2.weight": [60, 24, 4, 4],
    "update4.convc1.weight": [64, 392, 1, 1],
    "update4.convf1.weight": [40, 4, 7, 7],
    "update4.convf2.weight": [20, 40, 3, 3],
    "update4.conv.weight": [68, 84, 3, 3],
    "update4.gru.0.weight": [76, 116, 3, 3],
    "update4.gru.2.weight": [76, 76, 3, 3],
    "update4.feat_head.2.weight": [44, 76, 3, 3],
    "update4.flow_head.2.bias": [4],
    "update3.gru.0.weight": [76, 104, 3, 3],
    "update3.feat_head.2.weight": [32, 76, 3, 3],
    "update2.gru.0.weight": [76, 92, 3, 3],
    "update2.feat_head.0.bias": [76],
    "comb_block.0.weight": [18, 9, 3, 3],
    "comb_block.1.weight": [18],
    "comb_block.2.weight": [3, 18, 3, 3],
    "comb_block.2.bias": [3],
}


@pytest.fixture(scope="module")
def weights():
    torch.manual_seed(0)
    return AMTS().state_dict()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, weights):
    """Random AMT-S weights saved as VBench's file is: ``{'state_dict': ...}``."""
    path = tmp_path_factory.mktemp("amt") / "amt-s.pth"
    torch.save({"state_dict": weights}, path)
    return path


def frames(h, w, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (h, w, 3), dtype=np.uint8), rng.integers(0, 256, (h, w, 3), dtype=np.uint8)


def one_line_error(path) -> str:
    with pytest.raises(MigaError) as info:
        amt_interpolator(str(path))
    message = str(info.value)
    assert "\n" not in message and f"--amt {path}" in message and "hf download lalala125/AMT amt-s.pth" in message
    return message


def test_state_dict_layout(weights):
    assert len(weights) == KEY_COUNT
    assert sum(v.numel() for v in weights.values()) == PARAMETERS
    counts = {}
    for key in weights:
        counts[key.split(".")[0]] = counts.get(key.split(".")[0], 0) + 1
    assert counts == KEYS_PER_MODULE
    assert {k: list(weights[k].shape) for k in SAMPLE_SHAPES} == SAMPLE_SHAPES
    assert all(v.dtype == torch.float32 for v in weights.values())


def test_padding_follows_vbench():
    # InputPadder(divisor=16): pad to the next multiple, half before, the odd pixel after; at least 128 here
    assert padding_for(256) == (0, 0) and padding_for(135) == (4, 5) and padding_for(130) == (7, 7)
    assert padding_for(64) == (32, 32) and padding_for(37) == (45, 46)


def test_checkpoint_loads_and_interpolates(checkpoint, weights, tmp_path):
    interp = amt_interpolator(str(checkpoint))
    assert isinstance(interp, AMTMidpoint) and interp.name == "AMT-S (amt-s.pth)" and interp.proxy is False
    assert not interp.model.training and all(torch.equal(interp.model.state_dict()[k], v) for k, v in weights.items())
    for h, w in ((64, 64), (37, 53)):  # the second needs uneven padding
        a, b = frames(h, w)
        mid = interp(a, b)
        assert mid.dtype == np.uint8 and mid.shape == (h, w, 3)
        assert np.array_equal(mid, interp(a, b))  # deterministic
    bare = tmp_path / "bare.pth"  # a bare state dict loads too
    torch.save(weights, bare)
    a, b = frames(64, 64)
    assert np.array_equal(amt_interpolator(str(bare))(a, b), interp(a, b))
    video = np.stack([frames(32, 48, s)[0] for s in range(5)])
    assert 0.0 <= motion_smoothness(video, interp) <= 1.0


def test_inference_details(checkpoint):
    """Inputs in [0, 1], replicate-padded; embt 0.5; the crop of the prediction times 255, truncated to uint8."""
    interp = amt_interpolator(str(checkpoint))
    seen = {}

    def model(x0, x1, embt):
        seen.update(x0=x0, x1=x1, embt=embt)
        return torch.full_like(x0, 0.999)  # 254.745: truncated, not rounded

    interp.model = model
    a, b = frames(40, 50)
    mid = interp(a, b)
    assert mid.shape == (40, 50, 3) and (mid == 254).all()
    x0 = seen["x0"]
    assert x0.shape == (1, 3, 128, 128) and seen["embt"].shape == (1, 1, 1, 1) and seen["embt"].item() == 0.5
    top, left = padding_for(40)[0], padding_for(50)[0]
    assert torch.equal(x0[0, :, top:top + 40, left:left + 50], torch.from_numpy(a).permute(2, 0, 1).float() / 255)
    assert torch.equal(x0[0, :, 0, left:left + 50], x0[0, :, top, left:left + 50])  # replicated rows
    assert torch.equal(seen["x1"][0, :, top:top + 40, left:left + 50],
                       torch.from_numpy(b).permute(2, 0, 1).float() / 255)


def test_bad_files_are_one_line_errors(tmp_path, weights):
    assert "no such file" in one_line_error(tmp_path / "missing.pth")
    text = tmp_path / "notes.pth"
    text.write_text("not a checkpoint\n")
    assert "not a readable torch checkpoint" in one_line_error(text)
    missing = dict(weights)
    del missing["comb_block.2.bias"]
    torch.save({"state_dict": missing}, tmp_path / "missing_key.pth")
    assert "missing 1 keys such as 'comb_block.2.bias'" in one_line_error(tmp_path / "missing_key.pth")
    renamed = {k.replace("update4.", "refine4."): v for k, v in weights.items()}
    torch.save({"state_dict": renamed}, tmp_path / "renamed.pth")
    message = one_line_error(tmp_path / "renamed.pth")
    assert "missing 20 keys such as 'update4.convc1.weight'" in message and "20 unexpected keys such as" in message
    reshaped = dict(weights, **{"comb_block.0.weight": torch.zeros(18, 6, 3, 3)})
    torch.save({"state_dict": reshaped}, tmp_path / "reshaped.pth")
    assert "wrong shape such as 'comb_block.0.weight' [18, 6, 3, 3] (AMT-S has [18, 9, 3, 3])" in one_line_error(
        tmp_path / "reshaped.pth")
    torch.save({"epoch": 3}, tmp_path / "no_state.pth")
    assert "holds no state dict of tensors" in one_line_error(tmp_path / "no_state.pth")


def test_eval_cli_uses_amt(checkpoint, tmp_path, capsys):
    video, report = tmp_path / "v.mp4", tmp_path / "r.json"
    rng = np.random.default_rng(1)
    with VideoWriter(video, fps=8) as writer:
        for f in rng.integers(0, 256, (10, 32, 32, 3), dtype=np.uint8):
            writer.write(f)
    code, out, err = run(capsys, "eval", video, "--amt", checkpoint, "--json", report)
    assert code == 0, err
    data = json.loads(report.read_text())
    ms = data["extractors"]["motion_smoothness"]
    assert ms == {"name": "AMT-S (amt-s.pth)", "proxy": False}
    assert data["proxy"] == ["subject_consistency", "background_consistency"]
    assert 0.0 <= data["motion_smoothness"] <= 1.0
    assert out.splitlines()[0].split()[4:8] == ["T.F.", "M.S.", "S.C.*", "B.C.*"]
    assert not any(ln.startswith("M.S.* proxy") for ln in out.splitlines())
