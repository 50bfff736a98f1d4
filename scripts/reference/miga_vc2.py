"""Reference harness: the MIGA authors' VideoCrafter2 sampler on a tiny random UNet, recorded as a fixture.

    PYTHONPATH=EINOPS_DIR OMP_NUM_THREADS=1 python scripts/reference/miga_vc2.py --reference PATH \
        --commit b5a98a4544279e96bb94a8c68f1085e8f5da3581 --threshold -0.05 \
        --out tests/fixtures/reference/miga_vc2.safetensors

(about 90 s on one loaded core; byte-for-byte reproducible with the same torch version).

``PATH`` is a checkout of https://github.com/XiaokunFeng/MIGA (the folder holding ``videocraft_based/``, or that
folder itself; ``--commit`` is needed when it is not a git work tree). Nothing of it is copied here or into miga:
this script imports the authors' modules from ``PATH`` and runs their ``videocraft_based/generate.py`` as
``__main__`` (their argparse and yaml loading, ``base_ddim_sampling``, ``generate_by_miga`` with
``prepare_latents_by_step_initialize_with_temporal_memory_and_resample`` and ``adjust_judge``, the
``DDIMSampler`` of ``lvdm/models/samplers/ddim.py``, LVDM's ``UNetModel``), once with self-reflection off and once
on. It needs ``einops`` (``pip install einops``, e.g. into a folder on ``PYTHONPATH``).

The tiny setting (their ``configs/videocrafter2.yaml`` scaled down in size and steps only)
-------------------------------------------------------------------------------------------
- f_0 = 16 (``--video_length``), ``saw_width`` L_zig = 4, ``temporal_memory_len`` m = 4 as the yaml; DDIM eta 1,
  CFG 12, fps 8 (their defaults); the hard-coded stride 8, K2 = 10 (``fifo_end_noise_index``), n_ref = 3,
  n_samp = 5 and delta = 0.001 (``adjust_judge``'s default; the yaml's ``resample_threshold`` is never read) kept.
- T = ``sampling_steps`` = ``--num_inference_steps`` = 24 (yaml 64). Their Stage-1 loop hard-codes T = 64 in
  two places and f_judg = 13 as ``judged_step = 50``: those three constants are set in memory (patches 1-3).
  f_judg = 4 (``judged_step`` = T - 1 - 4 = 19), so that a judgement happens on 5 fill passes.
- ``long_iter_nums`` = T - 15 = 9 chunks (N = 36 latents; yaml 30). The fill loop runs at most
  ``long_iter_nums`` iterations and needs T - 15 to complete the zigzag ladder; with fewer (the yaml's 30 < 64 - 15)
  it stops early and Stage 1 then runs with a one-level gap in its ladder, the chunk behind the gap leaving
  Stage 1 one step early but labelled as the others. No preset reproduces that regime.
- Latents 4 x 4 x 4 (``--height/--width 32``); LVDM's ``UNetModel`` with only its sizes changed (as
  ``fifo_vc2.py``: ``model_channels`` 32, ``channel_mult`` [1, 2], one res block, heads of 8, ``context_dim`` 32;
  two levels so that LVDM's 32-group GroupNorm does not erase the timestep), text embeddings of 8 tokens.
  Weights: miga's ``VideoCrafter2UNet`` drawn at random (seed 0), int8 times a power of two, loaded strictly into
  theirs; one forward of both is checked first (as ``fifo_vc2.py``).
- Self-reflection on: ``--involve_resample true``; the run must trigger at least one search and adopt at least
  one candidate (it checks). With the code's delta = 0.001 the tiny model's judgement scores never drop by more than
  that (0.577, 0.823, 0.927, 0.956, 0.955: no search), so the fixture is made with ``--threshold -0.05`` (patch
  4): a search whenever the score rises by less than 0.05. 5 judgements; the 4th and 5th trigger a search and
  both adopt a candidate (scores 0.577, 0.823, 0.927, 0.979, 0.955 after adoption).

What is patched in memory (nothing on disk)
-------------------------------------------
1-4. ``scripts/evaluation/funcs.py`` is compiled from its text with constants replaced:
   ``noise_index = 63`` -> T - 1 and ``steps_list[-1]<= 62`` -> T - 2 (the Stage-1 append), ``judged_step = 50``
   -> T - 1 - f_judg, and with ``--threshold`` ``adjust_judge``'s default ``threshold=0.001``. Each must occur
   exactly once.
4. ``torch`` as seen by ``funcs``, ``lvdm.common`` and ``lvdm.models.samplers.ddim``: ``randn``/``randn_like``
   return miga's ``KeyedNoise(seed, [C, h, w])`` draw for the draw's key (table below), rounded to float16.
5. Wrappers (each calls the original unchanged) on ``DDIMSampler.ddim_sampling``, ``p_sample_ddim``,
   ``fifo_onestep`` and ``add_noise``, on ``funcs.adjust_judge``, ``funcs.prepare_latents_...``,
   ``funcs.export_to_video`` (no file) and ``LatentDiffusion.decode_first_stage_2DAE``: they say what each draw
   is for, identify every latent a window reads (by its value) with its latent index, see which window frames
   the code writes back (the tensor ``fifo_onestep`` returns logs the frames it is indexed at), and record the
   stages compared.
6. As in ``fifo_vc2.py``: ``nn.Module.cuda`` and ``DDIMSampler.register_buffer`` keep tensors on the CPU; the text
   and first stages are stand-ins (precomputed embeddings; decoding gives zeros); ``lvdm.common.ckpt`` calls the
   function; modules the run never uses numerically (``pytorch_lightning``, ``decord``, ``imageio``, ``PIL``,
   ``torchvision``, ``omegaconf``) are stand-ins only when not installed.

Noise map (their draw -> miga key ``(latent index, level, purpose)``; DDIM index i is miga level i + 1)
------------------------------------------------------------------------------------------------------
- ``ddim_sampling`` ``torch.randn`` (x_T), frame i: ``(i, T, "clip/init")``; ``p_sample_ddim`` ``noise_like``
  at index k >= 1, frame i: ``(i, k + 1, "clip/eta")`` (index 0: sigma 0, not used).
- ``randn_like`` of process_0 (clip latent j, noised to index T - 5 + j // L): ``(j, T - 4 + j // L, "miga/init")``.
- ``randn_like`` of a fresh chunk (fill loop: noised clip frame; Stage-1 loop: the latent itself), latent i:
  ``(i, T, "miga/fresh")``.
- ``randn_like`` of candidate c of the search after judgement k (0-based, every judgement counted), latent i:
  ``(i, T, "reflect{k}/{c}/fresh")``.
- ``ddim_step`` ``noise_like`` for a frame the code writes back, latent i at DDIM index d: ``(i, d + 1, P + "/eta")``
  with P ``stage1`` (fill and Stage-1 loops), ``reflect{k}/{c}`` (candidates), ``stage2``, ``refine0``. Frames a
  window reads but does not write draw too (the key of their latent and level; never used).
- ``randn_like`` of the re-noise to index 10, latent i: ``(i, 11, "miga/refine0")``.

The fixture: ``weights/*`` (int8, exponents in the metadata), ``text/cond``, ``text/uncond``, ``noise/table``
(float16, one row per key that affects the result, keys in the metadata with the keys each run used), ``ref/clip``,
``ref/queue_init`` and per run ``ref_{off,on}/{queue_fill,stage1,stage2,final}`` (``[N, C, h, w]``, latent order;
``queue_fill``: the queue their fill loop returns, its last chunk fresh; ``queue_end``: the Stage-1 queue after its
last pass, less the chunk that left, ``[M, C, h, w]``), the judgement scores and search counts.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import runpy
import subprocess
import sys
import tempfile
import types

REPOSITORY = "https://github.com/XiaokunFeng/MIGA"
KNOWN_COMMIT = "b5a98a4544279e96bb94a8c68f1085e8f5da3581"
REQUIRED = ("generate.py", "scripts/evaluation/funcs.py", "lvdm/models/samplers/ddim.py", "lvdm/common.py",
            "lvdm/modules/networks/openaimodel3d.py", "lvdm/models/ddpm3d.py", "configs/inference_t2v_512_v2.0.yaml")
PROMPT = "a red fox trotting through fresh snow"
TOKENS = 8
HERE = os.path.dirname(os.path.abspath(__file__))


class HarnessError(Exception):
    """A one-line reason to stop."""


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--reference", required=True, help="checkout of XiaokunFeng/MIGA (or its videocraft_based/)")
    p.add_argument("--out", default="tests/fixtures/reference/miga_vc2.safetensors")
    p.add_argument("--commit", default=None, help="the checkout's commit when PATH is not a git work tree")
    p.add_argument("--seed", type=int, default=0, help="weights, text embeddings and keyed noise")
    p.add_argument("--steps", type=int, default=24, help="T (sampling_steps = num_inference_steps)")
    p.add_argument("--judge-steps", type=int, default=4, help="f_judg (their judged_step = T - 1 - f_judg)")
    p.add_argument("--chunks", type=int, default=None, help="long_iter_nums (default T - 15)")
    p.add_argument("--threshold", type=float, default=None,
                   help="adjust_judge's hard-coded delta (0.001) replaced in memory (patch 4); default: kept")
    p.add_argument("--latent-size", type=int, default=4)
    p.add_argument("--max-bytes", type=int, default=2_000_000)
    return p.parse_args(argv)


def locate(path: str) -> str:
    root = os.path.abspath(path)
    if os.path.isdir(os.path.join(root, "videocraft_based")):
        root = os.path.join(root, "videocraft_based")
    missing = [f for f in REQUIRED if not os.path.isfile(os.path.join(root, f))]
    if missing:
        raise HarnessError(f"--reference {path} is not a MIGA checkout: missing {', '.join(missing)}")
    return root


def reference_commit(root: str, given: str | None) -> str:
    if given:
        return given
    try:
        out = subprocess.run(["git", "-C", root, "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
        if out.returncode == 0 and out.stdout.strip():
            return out.stdout.strip()
    except OSError:
        pass
    raise HarnessError(f"--reference {root} is not in a git work tree; say which commit it is with --commit "
                       f"(the recorded fixture used {KNOWN_COMMIT})")


def file_digests(root: str) -> dict:
    return {f: hashlib.sha256(open(os.path.join(root, f), "rb").read()).hexdigest() for f in REQUIRED}


def extra_standins() -> None:
    """PIL (``Image.fromarray``/``open``) for the frame conversions, only where it is missing."""
    try:
        import PIL  # noqa: F401
        import PIL.Image  # noqa: F401
    except ImportError:
        class Image:
            pass

        image = types.ModuleType("PIL.Image")
        image.Image, image.fromarray, image.open = Image, (lambda a, *k, **kw: a), (lambda *a, **k: None)
        pil = types.ModuleType("PIL")
        pil.Image = image
        sys.modules["PIL"], sys.modules["PIL.Image"] = pil, image


def load_funcs(root: str, steps: int, judged_step: int, threshold: float | None = None):
    """``scripts.evaluation.funcs`` compiled from its text with patches 1-3 (module docstring)."""
    path = os.path.join(root, "scripts/evaluation/funcs.py")
    src = open(path).read()
    for old, new in (("noise_index = 63", f"noise_index = {steps - 1}"),
                     ("steps_list[-1]<= 62", f"steps_list[-1]<= {steps - 2}"),
                     ("judged_step = 50", f"judged_step = {judged_step}"),
                     *([("threshold=0.001)", f"threshold={threshold!r})")] if threshold is not None else [])):
        if src.count(old) != 1:
            raise HarnessError(f"funcs.py: {old!r} occurs {src.count(old)} times, expected once (another commit?)")
        src = src.replace(old, new)
    import scripts.evaluation  # noqa: F401  (the packages, from root)

    mod = types.ModuleType("scripts.evaluation.funcs")
    mod.__file__ = path
    sys.modules["scripts.evaluation.funcs"] = mod
    exec(compile(src, path, "exec"), mod.__dict__)
    return mod


# ---------------------------------------------------------------- recording
class Recorder:
    """Keyed draws for their ``randn``/``randn_like`` and the bookkeeping of one run (module docstring)."""

    def __init__(self, torch, seed: int, steps: int, chunk: int, frames: int, judge_steps: int, shape):
        from miga.engine.rng import KeyedNoise

        self.torch, self.T, self.L, self.f0, self.fj = torch, steps, chunk, frames, judge_steps
        self.keyed = KeyedNoise(seed, shape)
        self.values: dict = {}  # key -> float16-exact tensor [C, h, w]
        self.used: set = set()  # keys whose draw affects the result
        self.registry: dict = {}  # latent bytes -> latent index
        self.reset()

    def reset(self):
        self.phase = "outside"  # clip, prepare, main, stage2, refine
        self.ctx = None  # ("clip_init",) ("clip_eta", k) ("call", frames, purpose, count)
        self.refl = "fill"  # fill, candidates, scoring
        self.checks = 0
        self.fresh_in_search = 0
        self.judged_first = None
        self.judge_score = None
        self.best = -10.0
        self.init_count = 0
        self.refine_count = 0
        self.next_index = self.f0  # the clip's latents are 0 .. f_0 - 1
        self.owner: dict = {}  # id(noise tensor) -> latent index
        self.pending_fresh: list = []  # (latent index, key) of fresh draws: used once a window reads them
        self.sim_list = []
        self.stats = {"judge_scores": [], "sim_result": [], "checks": 0, "triggers": 0, "adoptions": 0, "candidate_scores": []}
        self.states: dict = {"stage1": [], "stage2": [], "final": []}
        self.latest: dict = {}  # latent index -> its latest value written by a Stage-1 window
        self.calls = 0
        self.decoded_clip = None

    # -- keys
    def draw(self, key):
        if key not in self.values:
            self.values[key] = self.keyed.one(*key).half().float()
        return self.values[key]

    @staticmethod
    def fingerprint(x) -> bytes:
        return x.detach().float().contiguous().numpy().tobytes()

    def register(self, x, index: int) -> None:
        self.registry[self.fingerprint(x)] = index

    def index_of(self, x) -> int:
        fp = self.fingerprint(x)
        if fp not in self.registry:
            raise HarnessError("a window read a latent the harness cannot identify")
        return self.registry[fp]

    # -- their randn / randn_like
    def randn(self, *size, generator=None, dtype=None, device=None, **_):
        torch = self.torch
        shape = tuple(size[0]) if len(size) == 1 and isinstance(size[0], (tuple, list, torch.Size)) else tuple(size)
        ctx = self.ctx
        if ctx is not None and ctx[0] in ("clip_init", "clip_eta"):  # [1, C, F, h, w], one key per frame
            level, purpose = (self.T, "clip/init") if ctx[0] == "clip_init" else (ctx[1] + 1, "clip/eta")
            frames = []
            for i in range(shape[2]):
                key = (i, level, purpose)
                frames.append(self.draw(key))
                if purpose == "clip/init" or ctx[1] >= 1:
                    self.used.add(key)
            value = torch.stack(frames, dim=1)[None]
        elif ctx is not None and ctx[0] == "call":  # ddim_step: one frame at a time
            frames, purpose, count = ctx[1], ctx[2], ctx[3]
            index, level = frames[count]
            ctx[3] += 1
            value = self.draw((index, level, purpose + "/eta")).reshape(shape)
        else:
            value, index = self.free_draw()
            value = value.reshape(shape).to(dtype=dtype or torch.float32, device=device or "cpu")
            self.owner[id(value)] = index
            if self.phase == "main":  # the Stage-1 loop appends the draw itself
                self.register(value, index)
            return value
        return value.to(dtype=dtype or torch.float32, device=device or "cpu")

    def randn_like(self, x, dtype=None, device=None, **_):
        return self.randn(tuple(x.shape), dtype=dtype or x.dtype, device=device or x.device)

    def free_draw(self):
        """A draw of ``funcs`` outside a window: an initial, fresh, candidate or re-noise latent."""
        T, L = self.T, self.L
        if self.phase == "stage2":  # the first re-noise draw: Stage 2 is over
            self.phase = "refine"
        if self.phase == "prepare" and self.init_count < self.f0:
            j = self.init_count
            self.init_count += 1
            key = (j, T - self.f0 // L + j // L, "miga/init")
            self.used.add(key)
            index = j
        elif self.phase == "prepare" and self.refl == "candidates":
            pos, cand = self.fresh_in_search % (self.fj * L), self.fresh_in_search // (self.fj * L)
            self.fresh_in_search += 1
            index = self.judged_first + pos
            key = (index, T, f"reflect{self.checks - 1}/{cand}/fresh")
            self.pending_fresh.append((index, key))
        elif self.phase in ("prepare", "main"):
            if self.refl == "scoring":
                self.refl = "fill"
            index = self.next_index
            self.next_index += 1
            key = (index, T, "miga/fresh")
            self.pending_fresh.append((index, key))
        elif self.phase == "refine":
            index = self.refine_count
            self.refine_count += 1
            key = (index, 11, "miga/refine0")
            self.used.add(key)
        else:
            raise HarnessError(f"a random draw in phase {self.phase} that no key covers")
        return self.draw(key), index

    def torch_proxy(self):
        recorder, real = self, self.torch

        class TorchProxy(types.ModuleType):
            randn = staticmethod(recorder.randn)
            randn_like = staticmethod(recorder.randn_like)

            def __getattr__(self, name):
                return getattr(real, name)

        return TorchProxy("torch")


def patch_reference(rec: Recorder, modules: dict) -> None:
    """Patches 4-6 (module docstring); every wrapper calls the authors' function unchanged."""
    torch = rec.torch
    ddim_mod, funcs, common, ddpm3d = (modules[k] for k in ("ddim", "funcs", "common", "ddpm3d"))
    proxy = rec.torch_proxy()
    for mod in (ddim_mod, funcs, common):
        mod.torch = proxy
    torch.nn.Module.cuda = lambda self, *a, **k: self
    sampler = ddim_mod.DDIMSampler
    sampler.register_buffer = lambda self, name, attr: setattr(self, name, attr)
    orig = dict(sampling=sampler.ddim_sampling, step=sampler.p_sample_ddim, onestep=sampler.fifo_onestep,
                add_noise=sampler.add_noise, judge=funcs.adjust_judge,
                prepare=funcs.prepare_latents_by_step_initialize_with_temporal_memory_and_resample,
                decode=ddpm3d.LatentDiffusion.decode_first_stage_2DAE)

    def ddim_sampling(self, *args, **kwargs):
        rec.phase, rec.ctx = "clip", ("clip_init",)
        img, inter = orig["sampling"](self, *args, **kwargs)
        rec.phase, rec.ctx = "outside", None
        rec.states["clip"] = img.detach().clone()
        return img, inter

    def p_sample_ddim(self, x, c, t, index, *args, **kwargs):
        rec.ctx = ("clip_eta", int(index))
        out = orig["step"](self, x, c, t, index, *args, **kwargs)
        rec.ctx = None
        return out

    class Written(torch.Tensor):
        """What ``fifo_onestep`` returns: logs the frames the code indexes (writes back)."""

        def __getitem__(self, key):
            out = torch.Tensor.__getitem__(self.as_subclass(torch.Tensor), key)
            if not (isinstance(key, tuple) and len(key) == 3 and isinstance(key[2], list) and len(key[2]) == 1):
                raise HarnessError(f"the returned latents indexed as {key!r}, not one frame")
            index, level = self._frames[key[2][0]]
            rec.used.add((index, level, self._purpose + "/eta"))
            rec.register(out, index)
            if rec.phase == "main":
                rec.latest[index] = out.detach().clone()
            return out

    def purpose_now() -> str:
        if rec.phase == "prepare" and rec.refl == "candidates":
            return f"reflect{rec.checks - 1}/{(rec.fresh_in_search - 1) // (rec.fj * rec.L)}"
        if rec.phase in ("prepare", "main"):
            return "stage1"
        if rec.phase in ("stage2", "refine"):
            return rec.phase if rec.phase == "stage2" else "refine0"
        raise HarnessError(f"a window step in phase {rec.phase}")

    def fifo_onestep(self, cond, shape, latents=None, timesteps=None, indices=None, **kwargs):
        if rec.refl == "scoring":
            rec.refl = "fill"
        frames = []
        for j in range(latents.shape[2]):
            index = rec.index_of(latents[:, :, [j]])
            frames.append((index, int(indices[j]) + 1))
            for i, key in list(rec.pending_fresh):  # a fresh latent read by a window: its draw counts
                if i == index:
                    rec.used.add(key)
        rec.pending_fresh = [(i, k) for i, k in rec.pending_fresh if i not in {f[0] for f in frames}]
        purpose = purpose_now()
        rec.ctx = ["call", frames, purpose, 0]
        out, x0 = orig["onestep"](self, cond, shape, latents=latents, timesteps=timesteps, indices=indices, **kwargs)
        if rec.ctx[3] != len(frames):
            raise HarnessError(f"a window step drew {rec.ctx[3]} times for {len(frames)} frames")
        rec.ctx = None
        rec.calls += 1
        written = out.as_subclass(Written)
        written._frames, written._purpose = frames, purpose
        return written, x0

    def add_noise(self, x, noise, alpha_index):
        out = orig["add_noise"](self, x, noise, alpha_index)
        if id(noise) not in rec.owner:
            raise HarnessError("add_noise with noise the harness did not draw")
        index = rec.owner.pop(id(noise))
        rec.register(out, index)
        if rec.phase == "prepare" and len(rec.states.setdefault("queue_init", [])) < rec.f0 and \
                int(alpha_index) < rec.T - 1:
            rec.states["queue_init"].append(out.detach().clone())
        if rec.phase == "refine":
            rec.states["stage2"].append(x.detach().clone())
        return out

    def export_to_video(frames, path, fps):  # called once Stage 1 is over (and at the end)
        if rec.phase == "main":
            rec.phase = "stage2"  # until the first re-noise draw (Recorder.free_draw)
            n = len(rec.states["stage1"])  # the queue Stage 1 leaves: every latent past the video, as last written
            rec.states["queue_end"] = [rec.latest[i] for i in sorted(rec.latest) if i >= n]

    def adjust_judge(saved_latents, new_gen_latents, sim_result, *a, **k):
        if rec.refl == "candidates":
            rec.refl = "scoring"
        if rec.refl == "scoring":
            flag, res = orig["judge"](saved_latents, new_gen_latents, sim_result, *a, **k)
            score = float(res[-1])
            rec.stats["candidate_scores"].append(score)
            if score > rec.best:
                rec.best = score
            if len(rec.stats["candidate_scores"]) % 5 == 0 and rec.best > rec.judge_score:
                rec.stats["adoptions"] += 1
            return flag, res
        flag, res = orig["judge"](saved_latents, new_gen_latents, sim_result, *a, **k)
        rec.sim_list = res
        rec.checks += 1
        rec.stats["checks"] += 1
        rec.stats["judge_scores"].append(float(res[-1]))
        rec.judge_score = float(res[-1])
        if flag:
            rec.stats["triggers"] += 1
            rec.refl, rec.fresh_in_search, rec.best = "candidates", 0, -10.0
            rec.judged_first = rec.index_of(saved_latents[0])
        return flag, res

    def prepare(*args, **kwargs):
        rec.phase = "prepare"
        latent_list, steps_list, timesteps_list = orig["prepare"](*args, **kwargs)
        rec.states["queue_fill"] = [x.detach().clone() for x in latent_list]
        rec.phase, rec.refl = "main", "fill"
        return latent_list, steps_list, timesteps_list

    def decode(self, z, **kwargs):
        if rec.phase == "outside" and rec.decoded_clip is None:
            rec.decoded_clip = z.detach().clone()
        elif rec.phase == "main":
            rec.states["stage1"].append(z.detach().clone())
        elif rec.phase == "refine":
            rec.states["final"].append(z.detach().clone())
        return orig["decode"](self, z, **kwargs)

    sampler.ddim_sampling, sampler.p_sample_ddim, sampler.fifo_onestep = ddim_sampling, p_sample_ddim, fifo_onestep
    sampler.add_noise = add_noise
    funcs.adjust_judge, funcs.export_to_video = adjust_judge, export_to_video
    funcs.prepare_latents_by_step_initialize_with_temporal_memory_and_resample = prepare
    funcs.save_gif = lambda *a, **k: None
    ddpm3d.LatentDiffusion.decode_first_stage_2DAE = decode


# ---------------------------------------------------------------- the run
def run(args: argparse.Namespace) -> dict:
    root = locate(args.reference)
    commit = reference_commit(root, args.commit)
    import torch
    import yaml

    torch.set_num_threads(1)
    sys.path.insert(0, HERE)
    import fifo_vc2  # this folder's FIFO harness: stand-ins, tiny yaml, weights, forward check

    T, L, f0, m, latent = args.steps, 4, 16, 4, args.latent_size
    chunks = args.chunks or T - 15
    judged_step = T - 1 - args.judge_steps
    if judged_step - 3 <= 11 or T - 15 < 1:
        raise HarnessError("no judgement would happen: raise --steps or lower --judge-steps")
    sys.path.insert(0, root)
    fifo_vc2.install_standins(torch)
    extra_standins()
    for name in ("scripts", "utils", "lvdm"):  # never a same-named package from elsewhere
        mod = sys.modules.get(name)
        if mod is not None and not any(os.path.abspath(p).startswith(root) for p in getattr(mod, "__path__", [])):
            for key in [k for k in sys.modules if k == name or k.startswith(name + ".")]:
                del sys.modules[key]
    try:
        import lvdm.common as common
        import lvdm.models.ddpm3d as ddpm3d
        import lvdm.models.samplers.ddim as ddim_mod
        from utils.utils import instantiate_from_config
        funcs = load_funcs(root, T, judged_step, args.threshold)
    except ImportError as e:
        raise HarnessError(f"cannot import the reference code from {root}: {e} (it needs einops)") from None
    common.ckpt = lambda func, *inputs: func(*inputs)

    gen = torch.Generator().manual_seed(args.seed + 2)
    text = {PROMPT: torch.randn(TOKENS, fifo_vc2.TINY["context_dim"], generator=gen).half().float(),
            "": torch.randn(TOKENS, fifo_vc2.TINY["context_dim"], generator=gen).half().float()}
    sys.modules[fifo_vc2.STANDINS].PrecomputedText.TEXT = text
    ours = fifo_vc2.miga_weights(torch, args.seed)
    state = {k: v.detach().clone() for k, v in ours.state_dict().items()}
    rec = Recorder(torch, args.seed, T, L, f0, args.judge_steps, (4, latent, latent))
    runs = {}
    with tempfile.TemporaryDirectory(prefix="miga_vc2_") as work:
        config_path = fifo_vc2.tiny_yaml(root, work, latent)
        from omegaconf import OmegaConf

        model = instantiate_from_config(OmegaConf.load(config_path).pop("model"))
        theirs = model.model.diffusion_model
        from miga.backbones.videocrafter2_unet import match_projection_shapes

        theirs.load_state_dict(match_projection_shapes(state, theirs), strict=True)
        model.eval()
        fwd = fifo_vc2.check_forward(torch, theirs, ours, f0, latent, fifo_vc2.TINY["context_dim"], args.seed)
        print("UNet forward, authors' vs miga's: " + ", ".join(f"{v:.2e} ({k})" for k, v in fwd.items()))
        if not (fwd["float64"] <= 1e-10 and fwd["float32"] <= 1e-4):
            raise HarnessError(f"the authors' UNet and miga's disagree on one forward ({fwd})")
        ckpt = os.path.join(work, "model.ckpt")
        torch.save({"state_dict": model.state_dict()}, ckpt)
        del model, theirs
        patch_reference(rec, {"ddim": ddim_mod, "funcs": funcs, "common": common, "ddpm3d": ddpm3d})
        for name, reflect in (("off", False), ("on", True)):
            rec.reset()
            rec.used = set()
            miga_yaml = os.path.join(work, f"miga_{name}.yaml")
            with open(miga_yaml, "w") as f:
                yaml.safe_dump({"miga": {"sampling_steps": T, "saw_width": L, "long_iter_nums": chunks,
                                         "temporal_memory_len": m, "involve_resample": reflect,
                                         "resample_threshold": 0.5, "save_inter_results": True}}, f)
            argv = ["generate.py", "--ckpt_path", ckpt, "--config", config_path, "--video_length", str(f0),
                    "--num_inference_steps", str(T), "--height", str(8 * latent), "--width", str(8 * latent),
                    "--miga_config", miga_yaml, "--prompt", PROMPT, "--save_dir", work, "--exp_name", name]
            old_argv, old_cwd = sys.argv, os.getcwd()
            sys.argv = argv
            os.chdir(root)
            try:
                with contextlib.redirect_stderr(open(os.devnull, "w")), contextlib.redirect_stdout(io_sink()):
                    runpy.run_path(os.path.join(root, "generate.py"), run_name="__main__")
            finally:
                sys.argv = old_argv
                os.chdir(old_cwd)
            st = rec.states
            n = chunks * L
            for key in ("stage1", "stage2", "final"):
                if len(st[key]) != n:
                    raise HarnessError(f"run {name}: {len(st[key])} latents at {key}, expected {n}")
            rec.stats["sim_result"] = [float(v) for v in rec.sim_list]
            runs[name] = dict(states={k: v for k, v in st.items()}, used=set(rec.used), stats=dict(rec.stats),
                              calls=rec.calls)
            print(f"run {name}: {rec.calls} window steps, checks {rec.stats['checks']}, triggers "
                  f"{rec.stats['triggers']}, adoptions {rec.stats['adoptions']}, scores "
                  + " ".join(f"{v:.4f}" for v in rec.stats["judge_scores"]))
    on = runs["on"]["stats"]
    if on["triggers"] < 1 or on["adoptions"] < 1:
        raise HarnessError(f"self-reflection on: {on['triggers']} searches, {on['adoptions']} adoptions (need >= 1)")
    if not torch.equal(runs["off"]["states"]["clip"], runs["on"]["states"]["clip"]):
        raise HarnessError("the two runs' base clips differ")
    return dict(root=root, commit=commit, state=state, text=text, rec=rec, runs=runs,
                settings=dict(native_frames=f0, steps=T, zigzag_width=L, guides=m, stride=8, stage2_steps=10,
                              long_iter_nums=chunks, judge_steps=args.judge_steps, judged_step=judged_step,
                              ref_chunks=3, samples=5,
                              threshold=0.001 if args.threshold is None else args.threshold, eta=1.0, guidance_scale=12.0, fps=8,
                              latent_shape=[4, latent, latent], seed=args.seed, prompt=PROMPT, tokens=TOKENS,
                              unet=fifo_vc2.TINY, forward_check=fwd))


def io_sink():
    import io

    return io.StringIO()


def to_frames(xs):
    """A list of ``[1, C, 1, h, w]`` (or one ``[1, C, F, h, w]``) -> ``[F, C, h, w]``."""
    import torch

    x = torch.cat(xs, dim=2) if isinstance(xs, list) else xs
    return x[0].transpose(0, 1).contiguous().float()


def write_fixture(result: dict, out: str, max_bytes: int) -> int:
    import torch
    from safetensors.torch import save_file

    sys.path.insert(0, HERE)
    import fifo_vc2

    rec, runs = result["rec"], result["runs"]
    tensors, exponents = {}, {}
    for k, v in result["state"].items():
        q, e = fifo_vc2.quantise(torch, v)
        if not torch.equal(q.float() * 2.0 ** e, v):
            raise HarnessError(f"weight {k} is not exactly an int8 times a power of two")
        tensors["weights/" + k], exponents[k] = q.contiguous(), e
    tensors["text/cond"] = result["text"][PROMPT].half()
    tensors["text/uncond"] = result["text"][""].half()
    keys = sorted(runs["off"]["used"] | runs["on"]["used"], key=lambda k: (k[2], k[0], k[1]))
    tensors["noise/table"] = torch.stack([rec.values[k] for k in keys]).half().contiguous()
    position = {k: i for i, k in enumerate(keys)}
    tensors["ref/clip"] = to_frames(runs["off"]["states"]["clip"])
    tensors["ref/queue_init"] = to_frames(runs["off"]["states"]["queue_init"])
    for name, r in runs.items():
        for stage in ("queue_fill", "stage1", "queue_end", "stage2", "final"):
            tensors[f"ref_{name}/{stage}"] = to_frames(r["states"][stage])
    meta = {"reference_repository": REPOSITORY, "reference_commit": result["commit"],
            "files_sha256": json.dumps(file_digests(result["root"])), "weights_exponents": json.dumps(exponents),
            "noise_keys": json.dumps([list(k) for k in keys]),
            "noise_runs": json.dumps({n: sorted(position[k] for k in r["used"]) for n, r in runs.items()}),
            "stats_off": json.dumps(runs["off"]["stats"]), "stats_on": json.dumps(runs["on"]["stats"]),
            "config": json.dumps(result["settings"]), "harness": "scripts/reference/miga_vc2.py"}
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    save_file({k: v.contiguous() for k, v in tensors.items()}, out, metadata=meta)
    size = os.path.getsize(out)
    if size > max_bytes:
        raise HarnessError(f"{out} is {size} bytes, over --max-bytes {max_bytes}")
    return size


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        result = run(args)
        size = write_fixture(result, args.out, args.max_bytes)
    except HarnessError as e:
        print(f"miga_vc2: {e}", file=sys.stderr)
        return 2
    print(f"wrote {args.out} ({size} bytes), commit {result['commit']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
