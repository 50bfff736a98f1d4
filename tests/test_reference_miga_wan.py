"""miga against the MIGA authors' Wan2.1 sampler, from a recorded fixture (no reference code needed).

``tests/fixtures/reference/miga_wan.safetensors`` was written by ``scripts/reference/miga_wan.py``: a tiny random
Wan transformer (weights in miga's diffusers layout), the text embeddings, the authors' sigma grid, every random
draw of the authors' ``generate_by_miga`` under miga's noise key, and the authors' latents at each stage, for
self-reflection off and on. Here miga's own parts run on it: ``WanModel.predict`` (diffusers), ``Schedule``,
``UniPC``, ``WindowStepper``, ``MIGAEngine`` (queue, tiling, guides, self-reflection, streamed Stage 2,
refinement) with a replay of the recorded noise.

The authors' code differs from the paper in eight ways, each a ``MIGAConfig`` field that the preset
``MIGAConfig.wan21_released()`` sets (:data:`RELEASED`; ``docs/reference.md`` lists them with file and line):
``flow_grid="wan"``, ``static_tiling="remainder_first"``, ``fill_lead=2``, ``steady_guides="pre_pass"``,
``reflection_lead_chunks=1``, ``stage2_entry="relabel"``, ``stage2_history="reset"``, ``unified_offset_from=0``,
besides the existing ``guide_selection="nearest"``, ``reflect_during="fill"`` and ``refine_rounds=1``. The tests run
miga's ``MIGAEngine`` as it is, with that preset's fields on the fixture's scaled-down numbers; :func:`report`
leaves each field out in turn and shows what it changes.
"""

from __future__ import annotations

import json
import math
import os
from types import SimpleNamespace

import pytest
import torch

FIXTURE = os.path.join(os.path.dirname(__file__), "fixtures", "reference", "miga_wan.safetensors")
TOL = 1e-4
STAGES = ("clip", "queue_init", "queue_pass0", "queue_fill", "stage1", "stage2", "final")


# ---------------------------------------------------------------------------------------------------------
# fixture
# ---------------------------------------------------------------------------------------------------------
def load_fixture(path: str = FIXTURE) -> SimpleNamespace:
    from safetensors import safe_open

    with safe_open(path, "pt") as f:
        meta = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    cfg = json.loads(meta["config"])
    keys = [tuple(k) for k in json.loads(meta["noise_keys"])]
    runs = {run: {keys[i] for i in idx} for run, idx in json.loads(meta["noise_runs"]).items()}
    return SimpleNamespace(meta=meta, cfg=cfg, t=tensors, keys=keys, run_keys=runs,
                           weights={k[len("weights/"):]: v for k, v in tensors.items() if k.startswith("weights/")},
                           stats={"off": json.loads(meta["stats_off"]), "on": json.loads(meta["stats_on"])})


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| / std(b)."""
    a, b = a.double(), b.double()
    if a.shape != b.shape:
        return math.inf
    return float((a - b).abs().max() / b.std())


def reference(fx, run: str, stage: str) -> torch.Tensor:
    return fx.t[f"ref/{stage}"] if f"ref/{stage}" in fx.t else fx.t[f"ref_{run}/{stage}"]


class ReplayNoise:
    """miga's noise interface (``one``/``many``/``shape``/``seed``) serving the recorded draws; a key the
    authors never drew falls back to ``KeyedNoise`` with the same seed and is listed in ``misses``."""

    def __init__(self, fx):
        from miga.engine.rng import KeyedNoise

        self.seed = int(fx.cfg["seed"])
        self.shape = tuple(fx.cfg["latent_shape"])
        self.device = torch.device("cpu")
        self.table = {k: fx.t["noise/table"][i] for i, k in enumerate(fx.keys)}
        self.fallback = KeyedNoise(self.seed, self.shape)
        self.misses: list[tuple] = []
        self.used: set[tuple] = set()

    def one(self, index: int, level: int, purpose: str) -> torch.Tensor:
        key = (int(index), int(level), purpose)
        if key in self.table:
            self.used.add(key)
            return self.table[key].clone()
        self.misses.append(key)
        return self.fallback.one(*key)

    def many(self, indices, levels, purpose: str) -> torch.Tensor:
        return torch.stack([self.one(i, k, purpose) for i, k in zip(indices, levels)])


# ---------------------------------------------------------------------------------------------------------
# miga's parts on the fixture
# ---------------------------------------------------------------------------------------------------------
def build_backbone(fx):
    """miga's Wan backbone over a diffusers ``WanTransformer3DModel`` holding the fixture's weights."""
    from diffusers import WanTransformer3DModel

    from miga.backbones.wan import WanModel

    net = WanTransformer3DModel(**fx.cfg["miga_model"])
    net.load_state_dict(fx.weights, strict=True)
    net.eval().requires_grad_(False)
    c, h, w = fx.cfg["latent_shape"]
    vae = SimpleNamespace(config=SimpleNamespace(z_dim=c), spatial_compression_ratio=8)
    return WanModel(net, vae, None, None, height=h * 8, width=w * 8, device="cpu", dtype=torch.float32,
                    window_latents=fx.cfg["native_frames"], flow_shift=fx.cfg["shift"], owns_modules=False)


def released_fields() -> dict:
    """The fields in which ``MIGAConfig.wan21_released()`` differs from ``MIGAConfig.wan21()``."""
    from dataclasses import asdict

    from miga.config import MIGAConfig

    paper, code = asdict(MIGAConfig.wan21()), asdict(MIGAConfig.wan21_released())
    return {k: v for k, v in code.items() if paper[k] != v}


RELEASED_NEW = ("flow_grid", "static_tiling", "fill_lead", "steady_guides", "reflection_lead_chunks", "stage2_entry",
                "stage2_history", "unified_offset_from")
"""The fields added to reproduce the authors' Wan code (the others of :func:`released_fields` existed before)."""


def miga_config(fx, reflection: bool, fields: dict, **changes):
    """The fixture's scaled-down numbers with ``fields`` (the released preset's, or the paper's)."""
    from miga.config import MIGAConfig

    c = fx.cfg
    cfg = MIGAConfig.wan21().with_(**fields).with_(
        steps=c["steps"], zigzag_width=c["zigzag_width"], stage2_steps=c["stage2_steps"], stride=c["stride"],
        guides=c["guides"], reflection_samples=c["samples"], reflection_judge_steps=c["judge_steps"],
        reflection_ref_chunks=c["ref_chunks"], guidance_scale=c["guidance_scale"], flow_shift=c["shift"])
    cfg = cfg.with_(reflection=reflection, reflection_threshold=c["threshold_on"], reflection_calibration="fixed")
    return cfg.with_(**changes)


def _record_push(stage, into: dict, name_in: str | None, name_out: str) -> None:
    """Wrap a unified stage's ``push`` to keep copies of what enters and what leaves it."""
    push = stage.push

    def recorded(slots):
        if name_in is not None:
            into.setdefault(name_in, []).extend(s.latent.clone() for s in slots)
        out = push(slots)
        into.setdefault(name_out, []).extend(s.latent.clone() for s in out)
        return out

    stage.push = recorded


def run_miga(fx, run: str, *, leave_out=(), paper: bool = False, **changes) -> dict:
    """miga's ``MIGAEngine`` on the fixture with the released preset's fields (but those in ``leave_out``, which
    keep the paper's value), or with the paper's (``paper``). Returns the latents at each stage of the reference,
    the stats and the noise replay."""
    from dataclasses import asdict

    from miga.config import MIGAConfig
    from miga.engine import miga as miga_mod
    from miga.engine.schedules import Schedule, ScheduleConfig
    from miga.engine.solvers import UniPC
    from miga.engine.stepper import Stats, WindowStepper

    torch.manual_seed(0)
    reflection = run == "on"
    default = asdict(MIGAConfig())
    fields = {} if paper else {k: (default[k] if k in leave_out else v) for k, v in released_fields().items()}
    if paper:  # the closest config without the new fields: the released code's older switches only
        fields = {k: v for k, v in released_fields().items() if k not in RELEASED_NEW}
    cfg = miga_config(fx, reflection, fields, **changes)
    backbone = build_backbone(fx)
    schedule = Schedule(ScheduleConfig(kind="flow", shift=cfg.flow_shift, integer_timesteps=True,
                                       flow_grid=cfg.flow_grid), cfg.steps)
    noise = ReplayNoise(fx)
    stats = Stats()
    stepper = WindowStepper(backbone, schedule, UniPC(schedule), noise, lambda i: 0, [fx.t["text/cond"]],
                            fx.t["text/uncond"], cfg.guidance_scale, stats)
    f0, L, K2 = fx.cfg["native_frames"], cfg.zigzag_width, cfg.stage2_steps
    n = fx.cfg["long_iter_nums"] * L
    got: dict = {}

    def on_pass(queue):
        got["passes"] = got.get("passes", 0) + 1
        if got["passes"] == 1:
            got["queue_pass0"] = [s.latent.clone() for s in queue]
        if queue[0].level == K2 + 2 and "queue_fill" not in got:  # the last pass of the authors' fill loop
            got["queue_fill"] = [s.latent.clone() for s in queue]

    eng = miga_mod.MIGAEngine(stepper, cfg, f0, n, stats, on_pass)
    _record_push(eng.stage2, got, "stage1", "stage2")
    for stage in eng.refine:
        _record_push(stage, got, None, "final_out")
    real_sample_clip = miga_mod.sample_clip

    def recorded_clip(*a, **k):
        slots = real_sample_clip(*a, **k)
        got["clip"] = [s.latent.clone() for s in slots]
        return slots

    real_start = eng.start

    def start():
        real_start()
        got["queue_init"] = [s.latent.clone() for s in eng.queue]

    eng.start = start
    miga_mod.sample_clip = recorded_clip
    try:
        final = [s.latent for s in eng]
    finally:
        miga_mod.sample_clip = real_sample_clip
    got["final"] = final
    latents = {k: torch.stack(got[k]) for k in STAGES if k in got}
    history = list(eng.reflect.history) if eng.reflect is not None else []
    return {"latents": latents, "stats": stats, "noise": noise, "history": history}


def compare(fx, run: str, result: dict) -> dict:
    return {k: rel(result["latents"][k], reference(fx, run, k)) if k in result["latents"] else math.inf
            for k in STAGES}


# ---------------------------------------------------------------------------------------------------------
# tests
# ---------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def fx():
    pytest.importorskip("diffusers")
    torch.set_num_threads(1)
    return load_fixture()


@pytest.fixture(scope="module")
def released(fx):
    return {run: run_miga(fx, run) for run in ("off", "on")}


def test_fixture_provenance(fx):
    assert fx.meta["reference_repository"] == "https://github.com/XiaokunFeng/MIGA"
    assert fx.meta["reference_commit"] == "b5a98a4544279e96bb94a8c68f1085e8f5da3581"
    assert os.path.getsize(FIXTURE) <= 2_000_000
    on = fx.stats["on"]["resample_ratio"]
    assert on[1] >= 1 and on[2] >= 1  # the reflection run triggered and adopted at least one search


def test_backbone_matches_authors_model(fx):
    """miga's Wan backbone (diffusers layout) reproduces the authors' WanModel on one window."""
    from miga.engine.schedules import NoiseLevels

    bb = build_backbone(fx)
    x = fx.t["probe/x"][None]
    F = x.shape[2]
    for key, t in (("single", fx.t["probe/t_single"].repeat(F)), ("frames", fx.t["probe/t_frames"])):
        t = t.double()[None]
        out = bb.predict(x, NoiseLevels(t, 1 - t / 1000, t / 1000), [fx.t["text/cond"]])[0]
        assert rel(out, fx.t[f"probe/out_{key}"]) <= 1e-5, key


@pytest.mark.parametrize("run", ["off", "on"])
def test_the_released_preset_reproduces_the_authors_code(fx, released, run):
    """Every stage of the authors' sampler, with ``wan21_released``'s fields (module docstring)."""
    res = released[run]
    figures = compare(fx, run, res)
    assert all(v <= TOL for v in figures.values()), figures
    noise = res["noise"]
    assert noise.misses == []  # miga asked for no draw the authors did not make
    unused = fx.run_keys[run] - noise.used
    # ... and used all of theirs but the fresh chunk they append after their last Stage-1 pass
    assert len(unused) == fx.cfg["zigzag_width"] and all(k[2] == "miga/fresh" for k in unused), sorted(unused)
    st, ref = res["stats"], fx.stats[run]
    assert st.reflection_checks == len(ref["sim_result"])
    assert [st.reflection_triggers, st.reflection_adoptions] == ref["resample_ratio"][1:]
    # score history, an adopted candidate's score replacing the judged one (both codes)
    assert len(res["history"]) == len(ref["sim_result"])
    assert all(abs(a - b) < 1e-4 for a, b in zip(res["history"], ref["sim_result"]))


def test_released_fields_are_the_preset_s():
    from miga.config import MIGAConfig, preset

    assert set(RELEASED_NEW) <= set(released_fields())
    assert preset("wan2.1-released", "miga") == MIGAConfig.wan21_released().validate(21)
    assert preset("videocrafter2-released", "miga") == MIGAConfig.videocrafter2_released().validate(16)


@pytest.mark.parametrize("left_out", ["flow_grid", "fill_lead", "stage2_entry", "unified_offset_from"])
def test_each_code_choice_matters(fx, left_out):
    """Leaving one of the code's choices out (the paper's value) moves the final latents past the tolerance:
    the comparison can fail (mutation check)."""
    res = run_miga(fx, "off", leave_out=(left_out,))
    assert rel(res["latents"]["final"], reference(fx, "off", "final")) > 10 * TOL


def test_the_paper_settings_differ_from_the_code(fx):
    """With the paper's values for the eight fields the final latents are far from the authors' (0.76 max |diff|
    / std when measured): the released preset is what reproduces their code."""
    res = run_miga(fx, "off", paper=True)
    assert rel(res["latents"]["final"], reference(fx, "off", "final")) > 0.1


# ---------------------------------------------------------------------------------------------------------
# report (used by scripts/reference/miga_wan.py --check; not a test)
# ---------------------------------------------------------------------------------------------------------
def report(path: str = FIXTURE) -> None:
    """Print every figure: the released preset, each new field left out, the paper's values, and mutations."""
    torch.set_num_threads(1)
    fx = load_fixture(path)

    def line(name, figures):
        return f"{name:<40}" + " ".join(f"{figures[k]:>10.2e}" for k in STAGES)

    print(f"{'max|diff|/std':<40}" + " ".join(f"{k:>10}" for k in STAGES))
    for run in ("off", "on"):
        print(f"-- self-reflection {run}")
        res = run_miga(fx, run)
        print(line("wan21_released fields", compare(fx, run, res)) + f"  misses={len(res['noise'].misses)}")
        for name in RELEASED_NEW:
            res = run_miga(fx, run, leave_out=(name,))
            st = res["stats"]
            print(line(f"without {name}", compare(fx, run, res)) +
                  f"  checks/trig/adopt={st.reflection_checks}/{st.reflection_triggers}/{st.reflection_adoptions}")
        res = run_miga(fx, run, paper=True)
        print(line("paper values for the new fields", compare(fx, run, res)))
        for name, changes in (("mutation: K2 9 (ladder a level lower)", {"stage2_steps": 9}),
                              ("mutation: guides 3", {"guides": 3}),
                              ("mutation: uniform guides", {"guide_selection": "uniform"}),
                              ("mutation: refine level K2+1", {"refine_level": fx.cfg["stage2_steps"] + 1}),
                              ("mutation: judge steps 9", {"reflection_judge_steps": 9})):
            res = run_miga(fx, run, **changes)
            print(line(name, compare(fx, run, res)))


if __name__ == "__main__":
    report()
