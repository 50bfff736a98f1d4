"""Per-frame solvers against diffusers' schedulers on uniform timesteps, and staggered stepping equals
running each frame alone."""

import pytest
import torch
from diffusers import DDIMScheduler, UniPCMultistepScheduler

from miga.engine.schedules import Schedule, ScheduleConfig
from miga.engine.solvers import DDIM, FlowEuler, UniPC, to_denoised

SHAPE = (2, 3, 4)  # C, H, W of one latent frame


def toy_model(x: torch.Tensor, level: int) -> torch.Tensor:
    """A smooth, level-dependent, nonlinear stand-in for a network (same function on both sides)."""
    return torch.tanh(0.7 * x + 0.01 * level) + 0.1 * torch.sin(x * 3.0)


def run_reference(ref, x, T):
    """Step diffusers' scheduler ``ref`` over its timesteps; return the trajectory."""
    traj = []
    for i, t in enumerate(ref.timesteps):
        x = ref.step(toy_model(x, T - i), t, x).prev_sample
        traj.append(x)
    return traj


def run_ours(solver, schedule, x, prediction, noises=None, start_level=None):
    """Step one frame from ``start_level`` to 0; return the trajectory."""
    level = schedule.top if start_level is None else start_level
    state, traj = None, []
    while level > 0:
        out = toy_model(x, level)
        a = torch.tensor([[schedule.alphas[level]]], dtype=torch.float64)
        s = torch.tensor([[schedule.sigmas[level]]], dtype=torch.float64)
        x0 = to_denoised(out[None, :, None], x[None, :, None], a, s, prediction)[0, :, 0]
        noise = None if noises is None else noises[level][None]
        new, states = solver.step(x[None], x0[None], [level], [state], noise)
        x, state, level = new[0], states[0], level - 1
        traj.append(x)
    return traj


@pytest.mark.parametrize("eta", [0.0, 1.0])
@pytest.mark.parametrize("final_alpha_one", [True, False])
def test_ddim_matches_diffusers(eta, final_alpha_one):
    T = 20
    cfg = ScheduleConfig(kind="ddpm", timestep_spacing="leading", final_alpha_one=final_alpha_one)
    sch = Schedule(cfg, T)
    ref = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                        set_alpha_to_one=final_alpha_one, timestep_spacing="leading", steps_offset=0)
    ref.set_timesteps(T)
    assert [int(t) for t in ref.timesteps] == [int(sch.timesteps[k]) for k in range(T, 0, -1)]
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(SHAPE, generator=gen)
    noises = {k: torch.randn(SHAPE, generator=gen) for k in range(1, T + 1)}
    ours = run_ours(DDIM(sch, eta=eta), sch, x.clone(), "epsilon", noises)
    y = x.clone()
    for i, t in enumerate(ref.timesteps):
        level = T - i
        y = ref.step(toy_model(y, level), t, y, eta=eta, variance_noise=noises[level]).prev_sample
        torch.testing.assert_close(ours[i], y, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("shift", [1.0, 5.0])
@pytest.mark.parametrize("T", [6, 25])
def test_unipc_flow_matches_diffusers(shift, T):
    sch = Schedule(ScheduleConfig(kind="flow", shift=shift), T)
    ref = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=shift,
                                  solver_order=2, solver_type="bh2", predict_x0=True, lower_order_final=True,
                                  num_train_timesteps=1000)
    ref.set_timesteps(T)
    torch.testing.assert_close(torch.tensor(sch.sigmas[::-1], dtype=torch.float32), ref.sigmas,
                               rtol=1e-6, atol=1e-7)
    x = torch.randn(SHAPE, generator=torch.Generator().manual_seed(1))
    ours = run_ours(UniPC(sch), sch, x.clone(), "flow")
    for a, b in zip(ours, run_reference(ref, x.clone(), T), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_unipc_epsilon_ddpm_matches_diffusers():
    T = 15
    sch = Schedule(ScheduleConfig(kind="ddpm", timestep_spacing="linspace", final_alpha_one=True), T)
    ref = UniPCMultistepScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                  prediction_type="epsilon", timestep_spacing="linspace", solver_order=2,
                                  final_sigmas_type="zero")
    ref.set_timesteps(T)
    # diffusers' linspace grid has T + 1 points; compare on its own timesteps by building ours from them
    grid = [int(t) for t in ref.timesteps.flip(0)]
    import miga.engine.schedules as S

    abar = S.ddpm_alphas_cumprod(sch.config)
    sch.timesteps = [0.0] + [float(t) for t in grid]
    sch.alphas = [1.0] + [float(abar[t]) ** 0.5 for t in grid]
    sch.sigmas = [0.0] + [float(1 - abar[t]) ** 0.5 for t in grid]
    import math

    sch.log_snr = [math.inf] + [math.log(a) - math.log(s) for a, s in zip(sch.alphas[1:], sch.sigmas[1:])]
    x = torch.randn(SHAPE, generator=torch.Generator().manual_seed(2))
    ours = run_ours(UniPC(sch), sch, x.clone(), "epsilon")
    for a, b in zip(ours, run_reference(ref, x.clone(), T), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_euler_flow_matches_closed_form():
    sch = Schedule(ScheduleConfig(kind="flow", shift=3.0), 10)
    x = torch.randn(SHAPE)
    x0 = torch.randn(SHAPE)
    out, _ = FlowEuler(sch).step(x[None], x0[None], [7], [None])
    v = (x - x0) / sch.sigmas[7]
    torch.testing.assert_close(out[0], x + (sch.sigmas[6] - sch.sigmas[7]) * v)


@pytest.mark.parametrize("name", ["ddim", "unipc", "euler"])
def test_staggered_stepping_equals_each_frame_alone(name):
    """Frames entering at different levels and stepped together in one call (FIFO-style) give exactly
    what each frame gets when stepped alone: the history travels with the frame."""
    T = 12
    kind = "ddpm" if name == "ddim" else "flow"
    sch = Schedule(ScheduleConfig(kind=kind, shift=3.0), T)
    solver = {"ddim": DDIM(sch, eta=1.0), "unipc": UniPC(sch), "euler": FlowEuler(sch)}[name]
    prediction = "epsilon" if kind == "ddpm" else "flow"
    gen = torch.Generator().manual_seed(3)
    n = 5
    starts = [T - 2 * i for i in range(n)]  # frame i enters at level T - 2i (staggered)
    xs = [torch.randn(SHAPE, generator=gen) for _ in range(n)]
    noises = [{k: torch.randn(SHAPE, generator=gen) for k in range(1, T + 1)} for _ in range(n)]
    alone = [run_ours(solver, sch, xs[i].clone(), prediction, noises[i], starts[i])[-1] for i in range(n)]
    # together: every call steps all frames that are still noisy, each at its own level
    x, lv, st = list(xs), list(starts), [None] * n
    while any(k > 0 for k in lv):
        idx = [i for i in range(n) if lv[i] > 0]
        X = torch.stack([x[i] for i in idx])
        outs = torch.stack([toy_model(x[i], lv[i]) for i in idx])
        a = torch.tensor([[sch.alphas[lv[i]] for i in idx]], dtype=torch.float64)
        s = torch.tensor([[sch.sigmas[lv[i]] for i in idx]], dtype=torch.float64)
        x0 = to_denoised(outs.transpose(0, 1)[None], X.transpose(0, 1)[None], a, s, prediction)[0].transpose(0, 1)
        noise = torch.stack([noises[i][lv[i]] for i in idx])
        new, states = solver.step(X, x0, [lv[i] for i in idx], [st[i] for i in idx], noise)
        for j, i in enumerate(idx):
            x[i], st[i], lv[i] = new[j], states[j], lv[i] - 1
    for i in range(n):
        torch.testing.assert_close(x[i], alone[i], rtol=1e-5, atol=1e-6)
