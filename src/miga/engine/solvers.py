"""Per-frame solvers: every frame steps from its own level to the level below (method.md Sec. 6).

All solvers share one signature, in the k-diffusion style::

    new_x, new_states = solver.step(x, denoised, levels, states, noise)

- ``x``: ``[N, C, H, W]``, N frames gathered from anywhere in the queue, each at its own level;
- ``denoised``: the model's estimate of the clean latent for each frame (see :func:`to_denoised`);
- ``levels``: each frame's current level k >= 1 (the step goes to k - 1);
- ``states``: each frame's solver history (``None`` when fresh); the solver returns new ones and never
  mutates its inputs, so a history can travel with its frame through the queue;
- ``noise``: ``[N, C, H, W]`` fresh Gaussian noise for stochastic solvers (DDIM with eta > 0), else None.

Coefficients are computed per frame in float64, then applied as one fused linear combination.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import torch

from miga.engine.schedules import Schedule


def to_denoised(output: torch.Tensor, x: torch.Tensor, alphas: torch.Tensor, sigmas: torch.Tensor,
                prediction: str) -> torch.Tensor:
    """Convert a model output to the clean-latent estimate x0.

    ``output``/``x``: ``[B, C, F, H, W]``; ``alphas``/``sigmas``: ``[B, F]``.
    """
    a = alphas.to(x.device, torch.float64)[:, None, :, None, None]
    s = sigmas.to(x.device, torch.float64)[:, None, :, None, None]
    if prediction == "x0":
        return output.to(x.dtype)
    if prediction == "epsilon":
        return ((x.double() - s * output.double()) / a).to(x.dtype)
    if prediction == "flow":  # v = eps - x0 with x = (1 - s) x0 + s eps  =>  x0 = x - s v
        return (x.double() - s * output.double()).to(x.dtype)
    raise ValueError(f"unknown prediction type {prediction!r}")


def _combine(terms: Sequence[tuple[list[float], torch.Tensor | None]]) -> torch.Tensor:
    """sum_i coef_i[n] * tensor_i[n] over frames n; a None tensor must have all-zero coefficients."""
    out = None
    for coefs, tensor in terms:
        if tensor is None:
            continue
        c = torch.tensor(coefs, dtype=torch.float64, device=tensor.device).to(tensor.dtype)
        term = c.view(-1, *([1] * (tensor.ndim - 1))) * tensor
        out = term if out is None else out + term
    assert out is not None
    return out


@dataclass(frozen=True)
class DDIM:
    """DDIM with stochasticity eta (Song et al.), written for any (alpha, sigma) ladder.

    ``x_prev = a_p x0 + sqrt(s_p^2 - s_eta^2) eps + s_eta xi``, with
    ``s_eta = eta * (s_p / s) * sqrt(s^2 - (a / a_p)^2 s_p^2)``: with ``alpha^2 + sigma^2 = 1`` this is the
    DDIM of VideoCrafter2/FIFO (method.md Eq. 1); eta = 1 is the DDPM posterior, eta = 0 the ODE. With a
    schedule signal scale (VideoCrafter2's ``use_scale``) the x0 term is multiplied by
    ``scale(t_prev) / scale(t)`` (the direction and noise terms are not), as LVDM's native DDIM does and
    FIFO/MIGA's per-frame DDIM does not.
    """

    schedule: Schedule
    eta: float = 1.0

    # A step between two levels of equal alpha and sigma (VideoCrafter2's last one, t = 16 -> t = 0 with
    # alpha_bar of timestep 0 at level 0) returns its input: the stepper then calls no model.
    identity_on_equal_levels = True

    @property
    def stochastic(self) -> bool:
        return self.eta > 0

    def step(self, x: torch.Tensor, denoised: torch.Tensor, levels: Sequence[int], states: Sequence[Any],
             noise: torch.Tensor | None = None) -> tuple[torch.Tensor, list[Any]]:
        sch = self.schedule
        c_x, c_x0, c_noise = [], [], []
        for k in levels:
            a, s, ap, sp = sch.alphas[k], sch.sigmas[k], sch.alphas[k - 1], sch.sigmas[k - 1]
            var = (sp / s) ** 2 * max(0.0, s * s - (a / ap) ** 2 * sp * sp)
            s_eta = self.eta * math.sqrt(var)
            direction = math.sqrt(max(0.0, sp * sp - s_eta * s_eta))
            rescale = sch.signal_scales[k - 1] / sch.signal_scales[k]  # 1 unless the model uses a signal scale
            # eps = (x - a x0) / s; only the x0 term is rescaled (LVDM's p_sample_ddim with use_scale)
            c_x.append(direction / s)
            c_x0.append(ap * rescale - direction * a / s)
            c_noise.append(s_eta)
        terms = [(c_x, x), (c_x0, denoised)]
        if self.stochastic:
            if noise is None:
                raise ValueError("DDIM with eta > 0 needs noise")
            terms.append((c_noise, noise))
        return _combine(terms), list(states)


@dataclass(frozen=True)
class FlowEuler:
    """First-order Euler on the flow ODE: ``x_prev = x + (s_p - s) * (x - x0) / s``."""

    schedule: Schedule

    stochastic = False

    def step(self, x, denoised, levels, states, noise=None):
        sch = self.schedule
        ratio = [sch.sigmas[k - 1] / sch.sigmas[k] for k in levels]
        return _combine([(ratio, x), ([1.0 - r for r in ratio], denoised)]), list(states)


@dataclass(frozen=True)
class UniPCState:
    """One frame's UniPC memory: recent x0 estimates (oldest first, at levels k+len..k+1), the sample
    before the last predictor step, and that step's order (used by the corrector)."""

    history: tuple[torch.Tensor, ...]
    last_sample: torch.Tensor | None
    last_order: int


@dataclass(frozen=True)
class UniPC:
    """UniPC (Zhao et al. 2023), B(h) = e^h - 1 ("bh2"), x0-predictor with the UniC corrector, order 2 and
    lower-order final steps: the multistep solver Wan uses. The multistep history lives in each frame's
    :class:`UniPCState`, so frames at different levels step together (method.md Sec. 6, item 6).
    """

    schedule: Schedule
    order: int = 2
    corrector: bool = True
    lower_order_final: bool = True

    stochastic = False

    def _phis(self, h: float) -> tuple[float, float, float]:
        hh = -h
        h_phi_1 = math.expm1(hh)
        b_h = math.expm1(hh)
        return hh, h_phi_1, b_h

    def _rhos(self, rks: list[float], hh: float, h_phi_1: float, b_h: float, order: int) -> list[float]:
        """Solve R rho = b for the corrector weights (R_ij = rk_j^(i-1))."""
        h_phi_k = h_phi_1 / hh - 1.0
        factorial = 1
        R, b = [], []
        for i in range(1, order + 1):
            R.append([r ** (i - 1) for r in rks])
            b.append(h_phi_k * factorial / b_h)
            factorial *= i + 1
            h_phi_k = h_phi_k / hh - 1.0 / factorial
        sol = torch.linalg.solve(torch.tensor(R, dtype=torch.float64), torch.tensor(b, dtype=torch.float64))
        return sol.tolist()

    def step(self, x, denoised, levels, states, noise=None):
        sch, lam = self.schedule, self.schedule.log_snr
        n = len(levels)
        states = [s if s is not None else UniPCState((), None, 0) for s in states]
        # ---- corrector (UniC) on the current sample, using the x0 just computed at it ----
        cx = [1.0] * n
        cl, c0, c1, cm = [0.0] * n, [0.0] * n, [0.0] * n, [0.0] * n
        any_corr = False
        for i, (k, st) in enumerate(zip(levels, states)):
            if not (self.corrector and st.last_sample is not None and st.history):
                continue
            any_corr = True
            p = st.last_order
            a_t, s_t, s_s0 = sch.alphas[k], sch.sigmas[k], sch.sigmas[k + 1]
            h = lam[k] - lam[k + 1]
            hh, h_phi_1, b_h = self._phis(h)
            rks = []
            if p >= 2:
                rks.append((lam[k + 2] - lam[k + 1]) / h)
            rks.append(1.0)
            rhos = [0.5] if p == 1 else self._rhos(rks, hh, h_phi_1, b_h, p)
            cx[i] = 0.0
            cl[i] = s_t / s_s0
            c0[i] = -a_t * h_phi_1 + a_t * b_h * rhos[-1]
            cm[i] = -a_t * b_h * rhos[-1]
            if p >= 2:
                c1[i] = -a_t * b_h * rhos[0] / rks[0]
                c0[i] += a_t * b_h * rhos[0] / rks[0]
        if any_corr:
            last = _stack_or_zeros([s.last_sample for s in states], x)
            m0 = _stack_or_zeros([s.history[-1] if s.history else None for s in states], x)
            m1 = _stack_or_zeros([s.history[-2] if len(s.history) >= 2 else None for s in states], x)
            x = _combine([(cx, x), (cl, last), (c0, m0), (c1, m1), (cm, denoised)])
        # ---- predictor (UniP) from the (corrected) sample ----
        new_states, pc_x, pc_0, pc_1 = [], [], [], []
        for i, (k, st) in enumerate(zip(levels, states)):
            order = min(self.order, len(st.history) + 1)
            if self.lower_order_final:
                order = min(order, k)
            a_t, s_t, s_s0 = sch.alphas[k - 1], sch.sigmas[k - 1], sch.sigmas[k]
            h = lam[k - 1] - lam[k]
            hh, h_phi_1, b_h = self._phis(h)
            px, p0, p1 = s_t / s_s0, -a_t * h_phi_1, 0.0
            if order >= 2:
                rk = (lam[k + 1] - lam[k]) / h
                # rho_p = 0.5 for order 2 (diffusers' simplified form)
                p1 = -a_t * b_h * 0.5 / rk
                p0 += a_t * b_h * 0.5 / rk
            pc_x.append(px), pc_0.append(p0), pc_1.append(p1)
            hist = (st.history + (denoised[i],))[-self.order:]
            new_states.append(UniPCState(history=hist, last_sample=x[i], last_order=order))
        m1 = _stack_or_zeros([s.history[-1] if s.history else None for s in states], x)
        out = _combine([(pc_x, x), (pc_0, denoised), (pc_1, m1)])
        return out, new_states


def pack_solver_state(state: Any) -> dict | None:
    """A frame's solver history as a plain dict of ints and tensors (for checkpoints); None stays None."""
    if state is None:
        return None
    if isinstance(state, UniPCState):
        return {"kind": "unipc", "history": list(state.history), "last_sample": state.last_sample,
                "last_order": state.last_order}
    raise TypeError(f"cannot pack solver state {type(state).__name__}")


def unpack_solver_state(packed: dict | None) -> Any:
    """The inverse of :func:`pack_solver_state`."""
    if packed is None:
        return None
    if packed.get("kind") == "unipc":
        return UniPCState(tuple(packed["history"]), packed["last_sample"], int(packed["last_order"]))
    raise ValueError(f"unknown solver state {packed.get('kind')!r}")


def _stack_or_zeros(items: Sequence[torch.Tensor | None], like: torch.Tensor) -> torch.Tensor | None:
    if all(t is None for t in items):
        return None
    zero = torch.zeros_like(like[0])
    return torch.stack([t if t is not None else zero for t in items])


SOLVERS = {"ddim": DDIM, "euler": FlowEuler, "unipc": UniPC}


def make_solver(name: str, schedule: Schedule, eta: float = 1.0):
    """Build a solver by name: ``ddim`` (uses eta), ``euler``, ``unipc``."""
    if name == "ddim":
        return DDIM(schedule, eta=eta)
    if name == "euler":
        return FlowEuler(schedule)
    if name == "unipc":
        return UniPC(schedule)
    raise ValueError(f"unknown solver {name!r}; choose one of {', '.join(SOLVERS)}")
