"""Queue invariants, tiling, Stage-2 streaming, batching independence and self-reflection, on the exact
Gaussian world (small sizes so the whole file runs in seconds)."""

import itertools

import pytest
import torch

from miga import FIFOConfig, LongVideo, MIGAConfig, load_backbone
from miga.engine.miga import miga_latents
from miga.engine.reflection import SelfReflection, consistency_score
from miga.engine.stepper import Slot, Stats
from miga.engine.tiling import fifo_windows, tiling, uniform_guides, nearest_chunk_guides

H = W = 32  # pixels -> 4x4 latents


@pytest.fixture(scope="module")
def world():
    return load_backbone("gaussian", height=H, width=W)


class Recorder:
    """Wraps a backbone: records each window's levels and the (index, level) of every solver step."""

    def __init__(self, backbone):
        self.bb = backbone
        self.windows = []
        for name in ("name", "native_frames", "prediction", "latent_shape", "default_schedule", "default_preset",
                     "negative_prompt", "fps", "frames_per_latent", "encode_prompt", "decoder"):
            setattr(self, name, getattr(backbone, name))

    def predict(self, latents, levels, conds):
        self.windows += [row for row in levels.timesteps.tolist()]
        return self.bb.predict(latents, levels, conds)


def record_steps(video):
    """A stepper for ``video`` and the {latent index: [levels it was stepped from]} it fills as it runs."""
    stepped = {}
    stepper = video._stepper()
    orig = stepper._run_group

    def run_group(jobs):
        for job in jobs:
            for i in job.targets:
                s = job.slots[i]
                stepped.setdefault(s.index, []).append(s.level)
        orig(jobs)

    stepper._run_group = run_group
    return stepper, stepped


# ---------------------------------------------------------------- tiling
@pytest.mark.parametrize("length,window,stride,offset",
                         [(216, 10, 8, 0), (216, 10, 8, 5), (37, 16, 8, 3), (16, 16, 8, 2), (9, 16, 8, 1),
                          (308, 17, 10, 7), (50, 12, 1, 0)])
def test_tiling_writes_every_latent_once(length, window, stride, offset):
    plan = tiling(length, window, stride, offset)
    written = [i for w in plan for i in w.targets]
    assert written == list(range(length))  # once each, head to tail
    assert all(0 <= w.start and w.start + w.length <= length for w in plan)
    assert all(w.length == min(window, length) for w in plan)


@pytest.mark.parametrize("f0, n", [(16, 4), (21, 3), (5, 2)])
@pytest.mark.parametrize("lookahead", [True, False])
def test_fifo_windows_write_every_queue_slot_once(lookahead, f0, n):
    qlen = f0 * n + (f0 // 2 if lookahead else 0)
    plan = fifo_windows(qlen, f0, lookahead)
    written = sorted(i for w in plan for i in w.targets)
    assert written == list(range(f0 // 2 if lookahead else 0, qlen))
    assert all(w.length == f0 and 0 <= w.start and w.start + w.length <= qlen for w in plan)
    assert len(plan) == (-(-f0 * n // (f0 - f0 // 2)) if lookahead else n)
    if lookahead:  # each window writes its latter part
        assert all(w.write_offset + w.n_update == w.length for w in plan)
    # tail first, so a window never reads a latent written earlier in the same pass (Jacobi)
    for a, b in itertools.combinations(plan, 2):
        assert not set(b.targets) & set(range(a.start, a.start + a.length)) or b.start < a.start


def test_guide_choices():
    assert uniform_guides(100, 4) == [0, 25, 50, 75]
    assert nearest_chunk_guides(100, 4, 4) == [86, 90, 94, 98]  # start - 14, -10, -6, -2 (VC2 code)
    assert nearest_chunk_guides(100, 4, 7) == [76, 83, 90, 97]  # start - 24, -17, -10, -3 (Wan code)


# ---------------------------------------------------------------- queue invariants
@pytest.mark.parametrize("cfg", [
    FIFOConfig.gaussian(),
    FIFOConfig.gaussian().with_(lookahead=False),
    MIGAConfig.gaussian().with_(reflection=False),
    MIGAConfig.gaussian().with_(reflection=False, guides=0, stage2_steps=0, zigzag_width=1),
    MIGAConfig.gaussian().with_(reflection=False, stage2_mode="batch", guide_selection="nearest"),
])
def test_every_frame_gets_every_step_once(world, cfg):
    n = 45
    rec = Recorder(world)
    video = LongVideo(rec, "x", n, cfg, seed=1)
    stepper, stepped = record_steps(video)
    video._stepper = lambda: stepper
    out = list(video.latents())
    assert len(out) == n
    T = video.schedule.top
    for i in range(n):
        levels = stepped[i]
        if isinstance(cfg, FIFOConfig) and i < world.native_frames:
            # the base clip's frames ran the clip's T steps, then the queue's from their slot's level
            levels = levels[T:]
            assert sorted(levels, reverse=True) == levels and levels[-1] == 1
            continue
        if isinstance(cfg, MIGAConfig) and i < (world.native_frames // cfg.zigzag_width) * cfg.zigzag_width:
            levels = levels[T:]  # Alg. 4: the clip's chunks re-enter below the top
            assert levels == list(range(levels[0], 0, -1))
            continue
        assert levels == list(range(T, 0, -1)), f"latent {i}: {levels}"
    # levels are monotone (non-decreasing) along every FIFO window, and along MIGA's local latents
    m = 0 if isinstance(cfg, FIFOConfig) else cfg.guides
    for row in rec.windows:  # (guides, when present, sit in front and carry their own lower levels)
        assert row[m:] == sorted(row[m:])


def test_fifo_bookkeeping_and_nfe(world):
    cfg = FIFOConfig.gaussian()
    n = 30
    video = LongVideo(world, "x", n, cfg, seed=0)
    list(video.latents())
    f0, T = world.native_frames, video.schedule.top
    passes = n + (T - f0)  # warm-up passes are dropped from the output
    assert video.stats.nfe == T + passes * 2 * cfg.partitions  # base clip + 2n lookahead windows a pass


def test_miga_zigzag_queue_matches_eq3(world):
    cfg = MIGAConfig.gaussian().with_(reflection=False)
    T, K2, L = cfg.steps, cfg.stage2_steps, cfg.zigzag_width
    video = LongVideo(world, "x", 120, cfg, seed=0)
    queues = []
    stepper = video._stepper()
    list(miga_latents(stepper, cfg, world.native_frames, 240, video.stats,
                      on_pass=lambda q: queues.append([s.level for s in q])))
    k0 = world.native_frames // L
    # filling (Alg. 4): one chunk more per pass, nothing leaves
    assert [len(q) for q in queues[:3]] == [(k0 + 1) * L, (k0 + 2) * L, (k0 + 3) * L]
    full = [q for q in queues if len(q) == (T - K2) * L]
    assert len(full) > 10
    ladder = [lv for lv in range(K2, T) for _ in range(L)]  # after a pass: tau_{e-1} .. top-1, L each
    assert full[5] == ladder and full[-1] == ladder


# ---------------------------------------------------------------- streaming and batching
@pytest.mark.parametrize("K2", [3, 6])
def test_streaming_stage2_equals_batch(world, K2):
    cfg = MIGAConfig.gaussian().with_(stage2_steps=K2, reflection=False)
    a = torch.stack(list(LongVideo(world, "x", 70, cfg.with_(stage2_mode="stream"), seed=3).latents()))
    b = torch.stack(list(LongVideo(world, "x", 70, cfg.with_(stage2_mode="batch"), seed=3).latents()))
    assert torch.equal(a, b)


def test_streaming_stage2_memory_is_bounded(world):
    from miga.engine.miga import Stage2Stream

    cfg = MIGAConfig.gaussian()
    video = LongVideo(world, "x", 400, cfg, seed=0)
    stage = Stage2Stream(video._stepper(), window=16, stride=8, steps=6, dynamic_offset=True, total=400)
    held = []
    for i in range(0, 400, 4):
        stage.push([Slot(j, torch.zeros(world.latent_shape), 6) for j in range(i, i + 4)])
        held.append(len(stage.slots))
    assert max(held) <= 6 * (16 + 8) + 8 and len(stage.slots) == 0


@pytest.mark.parametrize("cfg", [
    FIFOConfig.gaussian().with_(solver="ddim", eta=1.0),
    MIGAConfig.gaussian().with_(guides=0, solver="ddim", eta=1.0, reflection=False),
])
def test_output_independent_of_window_batching(world, cfg):
    a = torch.stack(list(LongVideo(world, "x", 40, cfg.with_(window_batch=1), seed=5).latents()))
    b = torch.stack(list(LongVideo(world, "x", 40, cfg.with_(window_batch=4), seed=5).latents()))
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    c = torch.stack(list(LongVideo(world, "x", 40, cfg, seed=6).latents()))
    assert not torch.allclose(a, c)  # the seed matters


def test_prefix_does_not_depend_on_requested_length(world):
    cfg = FIFOConfig.gaussian()
    a = torch.stack(list(LongVideo(world, "x", 20, cfg, seed=2).latents()))
    b = torch.stack(list(LongVideo(world, "x", 35, cfg, seed=2).latents()))
    assert torch.equal(a, b[:20])


# ---------------------------------------------------------------- self-reflection
def test_consistency_score_properties():
    x = torch.randn(3, 4, 5, 5)
    assert consistency_score(x, x[:1].repeat(2, 1, 1, 1)) == pytest.approx(
        float(torch.nn.functional.cosine_similarity(x.mean(1).flatten(1), x[0].mean(0).flatten()[None]).mean()))
    assert consistency_score(x[:1], x[:1]) == pytest.approx(1.0)
    assert consistency_score(x[:1], -x[:1]) == pytest.approx(-1.0)
    assert consistency_score(x, x, "chunk") == pytest.approx(1.0)


def test_self_reflection_triggers_and_adopts_on_an_inconsistent_chunk(world):
    """Build a steady MIGA queue, record a good score, then make the judged chunk inconsistent (an
    unrelated field): the drop triggers a search and a candidate consistent with the references wins."""
    cfg = MIGAConfig.gaussian()
    video = LongVideo(world, "x", 200, cfg.with_(reflection=False), seed=0)
    stepper = video._stepper()
    snapshot = []
    gen = miga_latents(stepper, cfg.with_(reflection=False), world.native_frames, 200, video.stats,
                       on_pass=lambda q: snapshot.append([s.copy() for s in q]))
    full = (cfg.steps - cfg.stage2_steps) * cfg.zigzag_width
    while len(snapshot) < 2 or len(snapshot[-1]) != full:  # a steady, full zigzag ladder
        next(gen)
    queue = snapshot[-1]
    stats = Stats()
    refl = SelfReflection(stepper, chunk=cfg.zigzag_width, window=world.native_frames, stride=cfg.stride,
                          judge_steps=cfg.reflection_judge_steps, ref_chunks=cfg.reflection_ref_chunks,
                          samples=cfg.reflection_samples, threshold=cfg.reflection_threshold,
                          fresh=lambda i, p: stepper.noise.one(i, cfg.steps, p), stats=stats)
    assert refl(queue) is False and stats.reflection_checks == 1  # first check only records a score
    p = refl.judged_position(queue)
    original_tail = [s.latent for s in queue[p:]]
    bad = torch.randn((cfg.zigzag_width,) + world.latent_shape, generator=torch.Generator().manual_seed(9))
    for s, b in zip(queue[p:p + cfg.zigzag_width], bad):
        s.latent = -s.latent + 2 * b  # unrelated to the chunks in front of it
    refs = torch.stack([s.latent for s in queue[p - cfg.reflection_ref_chunks * cfg.zigzag_width:p]])
    bad_score = consistency_score(torch.stack([s.latent for s in queue[p:p + cfg.zigzag_width]]), refs)
    refl.history[-1] = max(refl.history[-1], bad_score + 0.2)
    assert refl(queue) is True
    assert stats.reflection_triggers == 1 and stats.reflection_adoptions == 1
    assert refl.history[-1] > bad_score
    assert [s.level for s in queue[p:]] == [lv for lv in range(cfg.steps - cfg.reflection_judge_steps, cfg.steps)
                                            for _ in range(cfg.zigzag_width)]
    assert not torch.equal(queue[p].latent, original_tail[0])


def test_reflection_does_not_trigger_below_threshold(world):
    cfg = MIGAConfig.gaussian().with_(reflection_threshold=10.0)
    video = LongVideo(world, "x", 80, cfg, seed=0)
    list(video.latents())
    assert video.stats.reflection_checks > 5 and video.stats.reflection_triggers == 0


# ---------------------------------------------------------------- prompt schedule (A3)
@pytest.mark.parametrize("cfg", [FIFOConfig.gaussian(), MIGAConfig.gaussian()])
def test_window_prompt_follows_its_first_latent(world, cfg):
    """Each window is conditioned by the prompt of its first local latent's absolute frame index."""
    from miga.engine.prompts import PromptSchedule

    sched = PromptSchedule(starts=(0, 30), prompts=("warm clouds", "cold sea"))
    video = LongVideo(world, sched, 60, cfg, seed=0)
    stepper = video._stepper()
    seen = []
    orig = stepper.predict_denoised

    def spy(jobs):
        for job in jobs:
            guided = job.purpose == "stage1" and isinstance(cfg, MIGAConfig) and job.targets[0] >= cfg.guides
            first = job.slots[cfg.guides if guided else 0]
            seen.append((max(first.index, 0), stepper.prompt_index(job.prompt_at)))
        return orig(jobs)

    stepper.predict_denoised = spy
    video._stepper = lambda: stepper
    list(video.latents())
    assert {p for _, p in seen} == {0, 1}
    assert all(p == (1 if i >= 30 else 0) for i, p in seen)


def test_engine_imports_no_model_code():
    """architecture.md: no arrow from engine/ to backbones/, diffusers or transformers."""
    import ast
    import pathlib

    import miga.engine

    for path in pathlib.Path(miga.engine.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            for name in names:
                assert not name.startswith(("miga.backbones", "diffusers", "transformers", "miga.cli")), \
                    f"{path.name} imports {name}"


# ---------------------------------------------------------------- the end of a MIGA video, refinement, identity steps
def test_every_miga_output_latent_is_made_in_a_full_queue(world):
    """Paper / method.md decision 1: a fresh chunk enters on every Stage-1 pass up to the end; the chunks
    past the video are made and dropped (the old engine let the queue drain for the last latents)."""
    cfg = MIGAConfig.gaussian().with_(reflection=False)
    T, K2, L, f0 = cfg.steps, cfg.stage2_steps, cfg.zigzag_width, world.native_frames
    rec = Recorder(world)
    video = LongVideo(rec, "x", 60, cfg, seed=0)
    queues = []
    list(miga_latents(video._stepper(), cfg, f0, 60, video.stats, on_pass=lambda q: queues.append(len(q))))
    steady = queues[queues.index((T - K2) * L):]
    assert steady and all(n == (T - K2) * L for n in steady)
    assert all(len(row) == f0 for row in rec.windows)  # no Stage-1 window shorter than f_0
    drained = []
    list(miga_latents(video._stepper(), cfg.with_(queue_end="drain"), f0, 60, video.stats,
                      on_pass=lambda q: drained.append(len(q))))
    assert len(drained) == len(queues) and drained[-1] < (T - K2) * L  # the old behaviour, kept as an option


@pytest.mark.parametrize("reflection", [False, True])
def test_miga_stage1_output_does_not_depend_on_the_requested_length(world, reflection):
    """With a full queue to the end and keyed noise, the first latents of a video are those of a longer one
    (Stage 2 off: its tiling plans over the known total)."""
    cfg = MIGAConfig.gaussian().with_(stage2_steps=0, reflection=reflection)
    a = torch.stack(list(LongVideo(world, "x", 24, cfg, seed=2).latents()))
    b = torch.stack(list(LongVideo(world, "x", 44, cfg, seed=2).latents()))
    assert torch.equal(a, b[:24])


@pytest.mark.parametrize("level", [None, 5])
def test_refinement_renoises_and_runs_the_unified_passes_again(world, level):
    """The released codes' extra round (Alg. 5 lines 11-12): every Stage-2 output re-noised to the refinement
    level, then that many unified passes down to clean; streamed and batched agree."""
    cfg = MIGAConfig.gaussian().with_(reflection=False, refine_rounds=1, refine_level=level)
    n, K2 = 40, cfg.stage2_steps
    base = LongVideo(world, "x", n, cfg.with_(refine_rounds=0), seed=4)
    plain = torch.stack(list(base.latents()))
    video = LongVideo(world, "x", n, cfg, seed=4)
    stepper, stepped = record_steps(video)
    video._stepper = lambda: stepper
    refined = torch.stack(list(video.latents()))
    top = K2 if level is None else level
    T = video.schedule.top
    for i in range(n):
        assert stepped[i][-top:] == list(range(top, 0, -1))  # the refinement's steps, after the normal ones
    assert not torch.allclose(plain, refined)
    total = -(-n // cfg.zigzag_width) * cfg.zigzag_width  # every Stage-2 latent, not only the output
    windows = sum(len(tiling(total, world.native_frames, cfg.stride, p % cfg.stride)) for p in range(1, top + 1))
    assert cfg.guidance_scale == 1 and video.stats.nfe == base.stats.nfe + windows
    batch = torch.stack(list(LongVideo(world, "x", n, cfg.with_(stage2_mode="batch"), seed=4).latents()))
    assert torch.equal(batch, refined)
    assert T > top


def test_an_identity_step_calls_no_model():
    """VideoCrafter2's DDIM grid ends with t = 0 at alpha_bar of timestep 0, as its level 0 is: the last step
    changes nothing and the released samplers skip it; so does the stepper (no NFE), with the same latents."""
    from miga.engine.rng import KeyedNoise
    from miga.engine.schedules import Schedule, ScheduleConfig
    from miga.engine.solvers import DDIM
    from miga.engine.stepper import WindowStepper, sample_clip

    class Linear:  # a fixed linear eps-predictor, so the result is deterministic and depends on every call
        prediction = "epsilon"

        def predict(self, x, levels, conds):
            return 0.5 * x + 0.01 * levels.timesteps[:, None, :, None, None].to(x.dtype)

    sch = Schedule(ScheduleConfig(kind="ddpm"), 16)
    assert sch.is_identity_step(1) and not any(sch.is_identity_step(k) for k in range(2, 17))
    assert not Schedule(ScheduleConfig(kind="ddpm", final_alpha_one=True), 16).is_identity_step(1)
    outs = {}
    for skip in (True, False):
        solver = DDIM(sch, eta=1.0)
        if not skip:
            solver = type("DDIMNoSkip", (DDIM,), {"identity_on_equal_levels": False})(sch, eta=1.0)
        stats = Stats()
        stepper = WindowStepper(Linear(), sch, solver, KeyedNoise(3, (2, 4, 4)), lambda i: 0, [None], None, 1.0,
                                stats)
        clip = sample_clip(stepper, 5)
        outs[skip] = (torch.stack([s.latent for s in clip]), stats.nfe, [s.level for s in clip])
    assert outs[True][1] == 15 and outs[False][1] == 16
    assert outs[True][2] == outs[False][2] == [0] * 5
    torch.testing.assert_close(outs[True][0], outs[False][0], rtol=1e-6, atol=1e-6)


def test_generate_takes_the_ending_switches(tmp_path, capsys):
    """``--queue-end`` and ``--refine-rounds`` reach the engine: each changes the video's latents."""
    from cli_helpers import run
    from safetensors.torch import load_file

    latents = {}
    for name, extra in (("full", []), ("drain", ["--queue-end", "drain"]), ("refine", ["--refine-rounds", "1"])):
        code, _, err = run(capsys, "generate", "x", "--model", "gaussian", "--height", 32, "--width", 32, "--frames", 40,
                           "--out", tmp_path / f"{name}.mp4", "--save-latents", tmp_path / f"{name}.safetensors",
                           "--no-progress", *extra)
        assert code == 0, err
        latents[name] = load_file(str(tmp_path / f"{name}.safetensors"))["latents"]
    assert not torch.equal(latents["full"], latents["drain"]) and not torch.equal(latents["full"], latents["refine"])
