"""FreeNoise's noise rescheduling, FreePCA's mean reuse and its step gate (``shared/spec/baselines.md`` §3.6, §4.5)."""

import pytest
import torch

from miga.baselines.noise import (FREEPCA_FUSED_FRACTION, freenoise_reschedule, freepca_gate, freepca_gate_by_step,
                                  freepca_mean_reuse)
from miga.errors import MigaError


def noise(frames, seed=0, batch=2):
    return torch.randn(batch, 4, frames, 3, 5, generator=torch.Generator().manual_seed(seed))


def frame_ids(x, reference):
    """For each frame of ``x`` (dim 2), the index of the identical frame of ``reference`` (or -1)."""
    ids = []
    for i in range(x.shape[2]):
        same = [j for j in range(reference.shape[2]) if torch.equal(x[:, :, i], reference[:, :, j])]
        ids.append(same[0] if same else -1)
    return ids


@pytest.mark.parametrize("frames", [16, 12])
def test_freenoise_leaves_one_window_unchanged(frames):
    x = noise(frames)
    out = freenoise_reschedule(x, 16, 4, generator=torch.Generator().manual_seed(1))
    assert torch.equal(out, x) and out is not x


def test_freenoise_groups_are_shuffled_copies_of_the_first_window():
    x = noise(64)
    before = x.clone()
    out = freenoise_reschedule(x, 16, 4, generator=torch.Generator().manual_seed(1))
    assert torch.equal(x, before)  # the input is not modified
    ids = frame_ids(out, x)
    assert ids[:16] == list(range(16)) and -1 not in ids  # every frame's noise is one of the first 16
    for i in range(16, 64, 4):  # group i holds a permutation of group i - W (as rescheduled)
        assert sorted(ids[i:i + 4]) == sorted(ids[i - 16:i - 12])
        assert sorted(ids[i:i + 4]) == list(range(i % 16, i % 16 + 4))  # group g draws from group g mod W/S
    assert ids[16:] != list(range(16)) * 3  # it does shuffle
    again = freenoise_reschedule(x, 16, 4, generator=torch.Generator().manual_seed(1))
    other = freenoise_reschedule(x, 16, 4, generator=torch.Generator().manual_seed(2))
    assert torch.equal(out, again) and not torch.equal(out, other)


def test_freenoise_acts_on_the_given_frame_axis():
    x = noise(24).movedim(2, 0)  # [N, B, C, h, w]
    out = freenoise_reschedule(x, 16, 4, generator=torch.Generator().manual_seed(1), dim=0)
    ref = freenoise_reschedule(x.movedim(0, 2), 16, 4, generator=torch.Generator().manual_seed(1))
    assert torch.equal(out.movedim(0, 2), ref)


def test_freenoise_coverage_guard_and_partial_tail():
    x = noise(22)
    with pytest.raises(MigaError, match="multiple of 4"):
        freenoise_reschedule(x, 16, 4)
    out = freenoise_reschedule(x, 16, 4, generator=torch.Generator().manual_seed(1), tail="extra_window")
    ids = frame_ids(out, x)
    assert set(ids[16:20]) == {0, 1, 2, 3} and set(ids[20:22]) <= {4, 5, 6, 7} and len(set(ids[20:22])) == 2
    with pytest.raises(MigaError):
        freenoise_reschedule(x, 16, 0)


def test_freepca_mean_reuse_carries_block_zeros_mean():
    x = noise(64)
    out = freepca_mean_reuse(x, 16)
    means = [out[:, :, s:s + 16].mean(2) for s in range(0, 64, 16)]
    assert torch.equal(out[:, :, :16], x[:, :, :16])
    for s, m in zip(range(0, 64, 16), means):
        torch.testing.assert_close(m, x[:, :, :16].mean(2), atol=1e-6, rtol=0)
        fluctuation = lambda z: z[:, :, s:s + 16] - z[:, :, s:s + 16].mean(2, keepdim=True)  # noqa: E731
        torch.testing.assert_close(fluctuation(out), fluctuation(x), atol=1e-6, rtol=0)  # its own fluctuation
    assert not torch.allclose(out, x)


def test_freepca_mean_reuse_keeps_unit_variance_and_short_inputs():
    x = torch.randn(400, 1, 64, 4, 4, generator=torch.Generator().manual_seed(3))
    assert freepca_mean_reuse(x).std().item() == pytest.approx(1.0, abs=0.02)
    short = noise(16)
    assert torch.equal(freepca_mean_reuse(short), short)
    tail = freepca_mean_reuse(noise(40))  # a short last block [32, 40) gets block 1's (= block 0's) mean
    torch.testing.assert_close(tail[:, :, 32:].mean(2), tail[:, :, :16].mean(2), atol=1e-6, rtol=0)


def test_freepca_gate_on_videocrafter2s_ddim_grid():
    grid = [1 + 20 * k for k in range(50)]  # LVDM's 'uniform' DDIM timesteps, S = 50
    assert sum(freepca_gate(t) for t in grid) == 37
    assert freepca_gate(251) and not freepca_gate(250) and freepca_gate(300, tau=299.5)
    assert [freepca_gate_by_step(i, 50) for i in range(50)] == [t > 250 for t in reversed(grid)]
    assert FREEPCA_FUSED_FRACTION == 0.74 and sum(freepca_gate_by_step(i, 20) for i in range(20)) == 15
    with pytest.raises(MigaError):
        freepca_gate_by_step(50, 50)
