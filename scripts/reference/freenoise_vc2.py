"""Reference harness: FreeNoise's own VideoCrafter2 sampler on a tiny random UNet, recorded as a fixture.

    python scripts/reference/freenoise_vc2.py --reference PATH \
        --out tests/fixtures/reference/freenoise_vc2.safetensors

``PATH`` is a checkout of https://github.com/AILab-CVC/FreeNoise (the fixture in the repository was made at
commit 404b68b, the one ``shared/spec/baselines.md`` read). Nothing of it is copied here or into miga: this
script imports the authors' modules from ``PATH`` and runs their entry script
``scripts/evaluation/inference_freenoise.py`` (its own ``get_parser`` and ``run_inference``: the noise
rescheduling of ``x_T_total``, ``funcs.batch_ddim_sampling_freenoise`` with ``get_views``, LVDM's
``DDIMSampler`` of ``lvdm/models/samplers/ddim.py``, the ``UNetModel`` of
``lvdm/modules/networks/openaimodel3d_freenoise.py`` with the window-fused ``CrossAttention`` of
``lvdm/modules/attention_freenoise.py``) with these in-memory changes only:

- ``nn.Module.cuda`` returns the module and ``DDIMSampler.register_buffer`` keeps tensors where they are (the
  code moves everything to CUDA; this runs on the CPU).
- The first and text stages of ``LatentDiffusion`` are stand-ins named in the tiny config written to a
  temporary folder (``fifo_vc2.py``'s: the text stage returns precomputed embeddings, one for the prompt and
  one for ``""``; the first stage "decodes" to zeros, and the harness records the latents handed to it).
- ``torch`` in ``lvdm.common`` (``noise_like``), ``lvdm.models.samplers.ddim`` and the entry script is a proxy
  whose ``randn`` draws from a seeded generator (values rounded to float16, so the fixture stores them
  exactly) and records every draw; ``random`` in the entry script is a proxy whose ``shuffle`` is a seeded
  ``random.Random``'s and records each shuffled list (their ``seed_everything`` seeds the global ``random``
  instead; only the permutations matter, and they are recorded).
- The entry script's ``save_videos`` does nothing (it would write an mp4 of the zero frames).
- ``lvdm.common.ckpt`` (gradient checkpointing) calls the function directly (same numbers under no_grad).
- A wrapper around ``DDIMSampler.p_sample_ddim`` and forward hooks on the UNet and on four temporal
  self-attentions record states; the wrapper calls the original unchanged.
- Modules the run imports but never uses numerically are empty stand-ins when not installed
  (``fifo_vc2.install_standins``: ``pytorch_lightning``, ``torchvision``, ``decord``, ``imageio``, ``cv2``,
  ``omegaconf``). ``einops`` is needed.

Their run: the flags of ``scripts/run_text2video_freenoise_512.sh`` (``--mode base --ddim_eta 0.0
--unconditional_guidance_scale 12.0 --fps 16 --window_size 16 --window_stride 4 --seed 123 --bs 1``) with
``--frames 32`` (N = 32: five windows of 16 at stride 4, and four groups of 4 rescheduled frames),
``--ddim_steps 10`` (grid t = 1, 101, ..., 901: ``use_scale`` acts on the four steps below t = 400),
``--n_samples 1`` and 32x32 pixels (4x4 latents). The tiny UNet is ``fifo_vc2.py``'s (LVDM's
``UNetModel`` config of ``configs/inference_t2v_tconv512_v2.0_freenoise.yaml`` with ``model_channels`` 32,
``channel_mult`` [1, 2], ``attention_resolutions`` [1], ``num_res_blocks`` 1, ``num_head_channels`` 8,
``context_dim`` 32; two levels, because LVDM's 32-group GroupNorm erases the timestep at 32 channels), and the
same weights (miga's ``VideoCrafter2UNet``, random, int8 times a power of two) load strictly into their UNet.
Before the run, one forward of both UNets must agree in float64 (<= 1e-10 of the output's std): plain, and
with their windows (``context_next`` = the five views) against miga's ``WindowedAttention`` policy (that one
<= 1e-6: miga accumulates the window average in float32 even for float64 input; see ``LIMITS``).

Noise map (their draw -> miga's key; T = 10 steps, miga's level of DDIM index i is i + 1):

=========================================================  =====================================================
their draw                                                 miga
=========================================================  =====================================================
``inference_freenoise.py`` ``x_T_total = torch.randn(...)``  ``(i, T, "full/init")`` for frame i (before the
frame i of ``[1, 1, C, N, h, w]``                          rescheduling, as miga's engine draws it)
``random.shuffle(list_index)`` for ``frame_index`` =       ``rule.perms[g]`` = ``list_index - (frame_index - W)``:
W + g S                                                    what ``torch.randperm(S, generator)`` must return for
                                                           group g in ``freenoise_reschedule`` (the generator
                                                           miga keys ``draw_key(seed, 0, T, "full/rule")``); the
                                                           test feeds these to miga's rule through a stub
``p_sample_ddim`` ``noise_like`` (eta 0: times sigma = 0)  none (unused: counted in the metadata)
=========================================================  =====================================================

The fixture (one ``.safetensors``): ``unet.*`` (int8, times ``2**exponent``), ``text.cond``/``text.uncond``,
``noise.values`` ``[N, C, h, w]`` with ``noise.keys`` ``[N, 3]`` (index, level, purpose id), ``rule.perms``
``[G, S]``; the authors' states: ``ref.x_T`` ``[N, C, h, w]`` (after their rescheduling), ``ref.states``
``[T, N, C, h, w]`` (the latents after each DDIM step, the last = the latents they decode), ``ref.eps_cond`` /
``ref.eps_uncond`` ``[N, C, h, w]`` (the UNet's two outputs at the first step), ``ref.attn{j}.in`` /
``ref.attn{j}.out`` ``[4, N, C']`` (input and output, first 4 rows = spatial sites, of the temporal
self-attentions of ``ATTENTION_SITES``: ``init_attn``'s ``attn1``, the first input level's ``attn1`` and the
middle block's ``attn2`` in the first UNet call, the conditional one of step 1, and ``init_attn``'s ``attn1``
in the first call of the last step); metadata: repository, commit, SHA-256 of the files run, settings,
the forward checks, weight exponents. ``tests/test_reference_freenoise_vc2.py`` compares miga against it.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import os
import random as random_module
import subprocess
import sys
import tempfile
import types

REPOSITORY = "https://github.com/AILab-CVC/FreeNoise"
KNOWN_COMMIT = "404b68b"
ENTRY = "scripts/evaluation/inference_freenoise.py"
REQUIRED = (ENTRY, "scripts/evaluation/funcs.py", "lvdm/models/samplers/ddim.py",
            "lvdm/modules/attention_freenoise.py", "lvdm/modules/networks/openaimodel3d_freenoise.py",
            "lvdm/models/ddpm3d.py", "lvdm/models/utils_diffusion.py",
            "configs/inference_t2v_tconv512_v2.0_freenoise.yaml", "scripts/run_text2video_freenoise_512.sh")
CONFIG = "configs/inference_t2v_tconv512_v2.0_freenoise.yaml"
PROMPT = "a red fox trotting through fresh snow"
PURPOSES = ("full/init",)
HERE = os.path.dirname(os.path.abspath(__file__))
LIMITS = {"plain float32": 1e-4, "windowed float32": 1e-4, "plain float64": 1e-10, "windowed float64": 1e-6}
"""Forward-check limits (max |diff| / std). Windowed float64 is looser because miga's ``WindowedAttention``
accumulates the window average in float32 whatever the input dtype (``miga/baselines/attention.py``
``_windowed``): about 5e-8 here, float32 rounding, not a difference in what is computed."""


class HarnessError(Exception):
    """A one-line reason to stop."""


def load_fifo_harness():
    """``fifo_vc2.py`` beside this file (its stand-ins, weights and quantisation are reused)."""
    spec = importlib.util.spec_from_file_location("miga_reference_fifo_vc2", os.path.join(HERE, "fifo_vc2.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--reference", required=True, help="checkout of AILab-CVC/FreeNoise")
    p.add_argument("--out", default="tests/fixtures/reference/freenoise_vc2.safetensors")
    p.add_argument("--commit", default=None, help="the checkout's commit when PATH is not a git work tree")
    p.add_argument("--seed", type=int, default=0, help="weights, text embeddings and noise")
    p.add_argument("--frames", type=int, default=32, help="N (their --frames)")
    p.add_argument("--window", type=int, default=16, help="W (their --window_size)")
    p.add_argument("--stride", type=int, default=4, help="S (their --window_stride)")
    p.add_argument("--steps", type=int, default=10, help="DDIM steps (their --ddim_steps; a divisor of 1000)")
    p.add_argument("--latent-size", type=int, default=4, help="latent height and width (pixels / 8)")
    p.add_argument("--max-bytes", type=int, default=2_000_000)
    return p.parse_args(argv)


def check_reference(path: str) -> str:
    root = os.path.abspath(path)
    if not os.path.isdir(root):
        raise HarnessError(f"--reference {path}: no such folder (a checkout of {REPOSITORY})")
    missing = [f for f in REQUIRED if not os.path.isfile(os.path.join(root, f))]
    if missing:
        raise HarnessError(f"--reference {path} is not a FreeNoise checkout: missing {', '.join(missing)}")
    return root


def reference_commit(root: str, given: str | None) -> str:
    if given:
        return given
    try:
        top = subprocess.run(["git", "-C", root, "rev-parse", "--show-toplevel"], capture_output=True, text=True,
                             timeout=10)
        out = subprocess.run(["git", "-C", root, "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
        if (top.returncode == out.returncode == 0 and os.path.realpath(top.stdout.strip()) == os.path.realpath(root)
                and out.stdout.strip()):
            return out.stdout.strip()
    except OSError:
        pass
    raise HarnessError(f"--reference {root} is not a git work tree; say which commit it is with --commit "
                       f"(the recorded fixture used {KNOWN_COMMIT})")


def file_digests(root: str) -> dict:
    return {f: hashlib.sha256(open(os.path.join(root, f), "rb").read()).hexdigest() for f in REQUIRED}


# ---------------------------------------------------------------- recording the authors' run
class Recorder:
    """Seeded, recorded ``torch.randn`` and ``random.shuffle`` for their modules, and the states of the run."""

    def __init__(self, torch, seed: int):
        self.torch = torch
        self.gen = torch.Generator().manual_seed(seed)
        self.rng = random_module.Random(seed + 3)
        self.phase: tuple = ("script",)
        self.draws: list = []  # (phase, tensor)
        self.shuffles: list = []  # the lists after shuffling
        self.steps: list = []  # (index, x_in, x_prev)
        self.unet_outputs: list = []
        self.attn: dict = {}
        self.unet_calls = 0
        self.decoded = None

    def randn(self, *size, generator=None, dtype=None, device=None, **_):
        torch = self.torch
        shape = tuple(size[0]) if len(size) == 1 and isinstance(size[0], (tuple, list, torch.Size)) else size
        value = torch.randn(shape, generator=self.gen).half().float()
        self.draws.append((self.phase, value.clone()))
        return value.to(dtype=dtype or torch.float32, device=device or "cpu")

    def randn_like(self, x, dtype=None, device=None, **_):
        return self.randn(tuple(x.shape), dtype=dtype or x.dtype, device=device or x.device)

    def shuffle(self, x):
        self.rng.shuffle(x)
        self.shuffles.append(list(x))

    def torch_proxy(self):
        recorder, real = self, self.torch

        class TorchProxy(types.ModuleType):
            randn = staticmethod(recorder.randn)
            randn_like = staticmethod(recorder.randn_like)

            def __getattr__(self, name):
                return getattr(real, name)

        return TorchProxy("torch")

    def random_proxy(self):
        recorder = self

        class RandomProxy(types.ModuleType):
            shuffle = staticmethod(recorder.shuffle)

            def __getattr__(self, name):
                return getattr(random_module, name)

        return RandomProxy("random")


def patch_reference(rec: Recorder, entry, ddim_mod, common) -> None:
    """In-memory changes (module docstring); every wrapper calls the authors' function unchanged."""
    torch = rec.torch
    proxy = rec.torch_proxy()
    for mod in (entry, ddim_mod, common):
        mod.torch = proxy
    entry.random = rec.random_proxy()
    entry.save_videos = lambda *a, **k: None
    common.ckpt = lambda func, *inputs: func(*inputs)
    torch.nn.Module.cuda = lambda self, *a, **k: self
    sampler = ddim_mod.DDIMSampler
    sampler.register_buffer = lambda self, name, attr: setattr(self, name, attr)
    orig_step = sampler.p_sample_ddim

    def p_sample_ddim(self, x, c, t, index, *args, **kwargs):
        rec.phase = ("step", int(index))
        out = orig_step(self, x, c, t, index, *args, **kwargs)
        rec.phase = ("outside",)
        rec.steps.append((int(index), int(t[0]), x.detach().clone(), out[0].detach().clone()))
        return out

    sampler.p_sample_ddim = p_sample_ddim


ATTENTION_SITES = (("init_attn.0.transformer_blocks.0.attn1", "first"),
                   ("input_blocks.1.2.transformer_blocks.0.attn1", "first"),
                   ("middle_block.2.transformer_blocks.0.attn2", "first"),
                   ("init_attn.0.transformer_blocks.0.attn1", "last"))
"""Temporal self-attentions whose input and output are recorded (the same dotted names in miga's UNet), in the
first UNet call (step 1, conditional) or the first call of the last step; rows (sites) 0..ROWS-1 only."""
ROWS = 4


def instrument_model(rec: Recorder, model, steps: int) -> list:
    """Forward hooks on their UNet (outputs of the first step's two calls; a call counter) and on the
    temporal self-attentions of ``ATTENTION_SITES``."""
    unet = model.model.diffusion_model
    calls = {"first": 0, "last": 2 * (steps - 1)}  # two calls a step: conditional, then unconditional
    rec.unet_calls = 0

    def on_unet(module, args, out):
        if len(rec.unet_outputs) < 2:
            rec.unet_outputs.append(out.detach().clone())
        rec.unet_calls += 1

    def on_attn(j, when):
        def hook(module, args, kwargs, out):
            if rec.unet_calls == calls[when] and j not in rec.attn:
                rec.attn[j] = (args[0][:ROWS].detach().clone(), out[:ROWS].detach().clone())
        return hook

    hooks = [unet.register_forward_hook(on_unet)]
    for j, (name, when) in enumerate(ATTENTION_SITES):
        hooks.append(unet.get_submodule(name).register_forward_hook(on_attn(j, when), with_kwargs=True))
    return hooks


# ---------------------------------------------------------------- the run
def tiny_yaml(root: str, folder: str, latent: int, fifo) -> str:
    import yaml

    with open(os.path.join(root, CONFIG)) as f:
        config = yaml.safe_load(f)
    params = config["model"]["params"]
    params["unet_config"]["params"].update(fifo.TINY)
    params["image_size"] = [latent, latent]
    params["first_stage_config"] = {"target": f"{fifo.STANDINS}.NullFirstStage"}
    params["cond_stage_config"] = {"target": f"{fifo.STANDINS}.PrecomputedText"}
    path = os.path.join(folder, "tiny.yaml")
    with open(path, "w") as f:
        yaml.safe_dump(config, f)
    return path


def views_of(frames: int, window: int, stride: int) -> list:
    """The windows their ``funcs.get_views`` makes (asserted equal to theirs in :func:`run`)."""
    return [(s, s + window) for s in range(0, frames - window + 1, stride)]


def check_forward(torch, theirs, ours, frames: int, latent: int, context_dim: int, seed: int, views) -> dict:
    """One forward of both UNets (same input, timestep 731, fps 16), plain and window-fused (theirs with
    ``context_next`` = ``views``, miga's with its ``WindowedAttention`` policy): max |diff| / std in float32 and
    float64 (on copies; their float32-only GroupNorm and timestep embedding switched to the input's dtype for
    the float64 check only)."""
    import copy

    import lvdm.basics as basics
    import lvdm.modules.networks.openaimodel3d_freenoise as net_mod
    from miga.backbones import videocrafter2_unet
    from miga.baselines.attention import FreeNoiseConfig, WindowedAttention
    from miga.baselines.hooks import attention_policy

    window, stride = views[0][1] - views[0][0], (views[1][0] - views[0][0]) if len(views) > 1 else 1
    policy = WindowedAttention(FreeNoiseConfig(window=window, stride=stride))
    gen = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(1, 4, frames, latent, latent, generator=gen)
    ctx = torch.randn(1, 77, context_dim, generator=gen)
    t = torch.tensor([731])
    out = {}
    norms = (basics.GroupNormSpecific, videocrafter2_unet.Float32GroupNorm)
    saved = [n.forward for n in norms] + [net_mod.timestep_embedding]
    for dtype in (torch.float32, torch.float64):
        a_net, b_net = (theirs, ours) if dtype == torch.float32 else (copy.deepcopy(theirs).double(),
                                                                        copy.deepcopy(ours).double())
        if dtype == torch.float64:
            a_net.dtype = dtype
            for n in norms:
                n.forward = lambda self, h: torch.nn.GroupNorm.forward(self, h)
            net_mod.timestep_embedding = lambda *a, **k: saved[-1](*a, **k).double()
        try:
            with torch.no_grad():
                for fused in (False, True):
                    kwargs = {"context_next": views} if fused else {}
                    a = a_net(x.to(dtype), t, context=ctx.to(dtype), fps=torch.tensor([16]), **kwargs)
                    with attention_policy(b_net, policy if fused else None):
                        b = b_net(x.to(dtype), t.to(dtype), ctx.to(dtype), fps=16.0)
                    key = f"{'windowed' if fused else 'plain'} {str(dtype).replace('torch.', '')}"
                    out[key] = float((a - b).abs().max() / a.std())
        finally:
            for n, f in zip(norms, saved):
                n.forward = f
            net_mod.timestep_embedding = saved[-1]
    return out


def import_entry(root: str, entry_path: str = ENTRY, name: str = "freenoise_inference"):
    """Their entry script as a module (its ``__main__`` block not run: :func:`run` does what it does)."""
    evaluation = os.path.join(root, "scripts", "evaluation")
    sys.path[:0] = [evaluation, root]  # their funcs.py finds the root from sys.path[0]/../..
    for other in ("scripts", "utils", "lvdm", "funcs"):  # never a same-named module from elsewhere
        mod = sys.modules.get(other)
        where = getattr(mod, "__file__", None) or "".join(getattr(mod, "__path__", []) or [])
        if mod is not None and not os.path.abspath(where or "/").startswith(root):
            del sys.modules[other]
    spec = importlib.util.spec_from_file_location(name, os.path.join(root, entry_path))
    entry = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(entry)
    except ImportError as e:
        raise HarnessError(f"cannot import the reference code from {root}: {e} (it needs einops)") from None
    return entry


def run(args: argparse.Namespace) -> dict:
    root = check_reference(args.reference)
    commit = reference_commit(root, args.commit)
    import torch

    torch.set_num_threads(1)
    n, w, s, steps, latent = args.frames, args.window, args.stride, args.steps, args.latent_size
    if n <= w or (n - w) % s or 1000 % steps:
        raise HarnessError("need frames > window, (frames - window) % stride == 0 and steps dividing 1000")
    fifo = load_fifo_harness()
    fifo.install_standins(torch)
    entry = import_entry(root)
    import lvdm.common as common

    common.ckpt = lambda func, *inputs: func(*inputs)  # gradient checkpointing: a plain call under no_grad
    import lvdm.models.samplers.ddim as ddim_mod
    from utils.utils import instantiate_from_config

    funcs = sys.modules["funcs"]
    views = views_of(n, w, s)
    if funcs.get_views(n, w, s) != views:
        raise HarnessError(f"their get_views({n}, {w}, {s}) = {funcs.get_views(n, w, s)}, expected {views}")

    rec = Recorder(torch, args.seed)
    gen = torch.Generator().manual_seed(args.seed + 2)
    dim = fifo.TINY["context_dim"]
    text = {PROMPT: torch.randn(77, dim, generator=gen).half().float(),
            "": torch.randn(77, dim, generator=gen).half().float()}
    sys.modules[fifo.STANDINS].PrecomputedText.TEXT = text
    ours = fifo.miga_weights(torch, args.seed)
    state = {k: v.detach().clone() for k, v in ours.state_dict().items()}

    with tempfile.TemporaryDirectory(prefix="freenoise_vc2_") as work:
        config_path = tiny_yaml(root, work, latent, fifo)
        from omegaconf import OmegaConf

        model = instantiate_from_config(OmegaConf.load(config_path).pop("model"))
        theirs = model.model.diffusion_model
        from miga.backbones.videocrafter2_unet import match_projection_shapes

        theirs.load_state_dict(match_projection_shapes(state, theirs), strict=True)
        model.eval()
        rel = check_forward(torch, theirs, ours, n, latent, dim, args.seed, views)
        print("UNet forward, authors' vs miga's, same weights: max |diff| / std = "
              + ", ".join(f"{v:.2e} ({k})" for k, v in rel.items()))
        if not all(v <= LIMITS[k] for k, v in rel.items()):
            raise HarnessError(f"the authors' UNet and miga's disagree on one forward ({rel}; limits {LIMITS})")
        ckpt = os.path.join(work, "model.ckpt")
        torch.save({"state_dict": model.state_dict()}, ckpt)
        del model, theirs
        prompts = os.path.join(work, "prompts.txt")
        with open(prompts, "w") as f:
            f.write(PROMPT + "\n")

        patch_reference(rec, entry, ddim_mod, common)
        orig_instantiate = entry.instantiate_from_config
        hooks: list = []

        def instantiate(config):  # their model, instrumented once built
            model = orig_instantiate(config)
            orig_decode = model.decode_first_stage_2DAE

            def decode(z, **kwargs):
                rec.decoded = z.detach().clone()
                return orig_decode(z, **kwargs)

            model.decode_first_stage_2DAE = decode
            hooks.extend(instrument_model(rec, model, steps))
            return model

        entry.instantiate_from_config = instantiate
        argv = ["--seed", "123", "--mode", "base", "--ckpt_path", ckpt, "--config", config_path,
                "--savedir", os.path.join(work, "out"), "--n_samples", "1", "--bs", "1",
                "--height", str(8 * latent), "--width", str(8 * latent), "--unconditional_guidance_scale", "12.0",
                "--ddim_steps", str(steps), "--ddim_eta", "0.0", "--prompt_file", prompts, "--fps", "16",
                "--frames", str(n), "--window_size", str(w), "--window_stride", str(s)]
        their_args = entry.get_parser().parse_args(argv)
        entry.seed_everything(their_args.seed)  # their __main__ block: seed, then run_inference(args, 1, 0)
        old_cwd = os.getcwd()
        os.chdir(work)
        try:
            entry.run_inference(their_args, 1, 0)
        finally:
            os.chdir(old_cwd)
            for h in hooks:
                h.remove()
    return dict(root=root, commit=commit, state=state, text=text, rec=rec, views=views, fifo=fifo,
                settings=dict(frames=n, window=w, stride=s, steps=steps, eta=0.0, guidance_scale=12.0, fps=16,
                              use_scale=True, latent_shape=[4, latent, latent], seed=args.seed, their_seed=123,
                              prompt=PROMPT, unet=fifo.TINY, views=views, forward_check=rel))


def collect(result: dict, torch) -> dict:
    """The recorded run as fixture tensors (checks the run did what the settings say)."""
    rec, s = result["rec"], result["settings"]
    n, w, st, steps = s["frames"], s["window"], s["stride"], s["steps"]
    script = [v for phase, v in rec.draws if phase[0] == "script"]
    step_draws = [v for phase, v in rec.draws if phase[0] == "step"]
    other = [phase for phase, v in rec.draws if phase[0] not in ("script", "step")]
    if len(script) != 1 or tuple(script[0].shape) != (1, 1, 4, n, *s["latent_shape"][1:]) or other:
        raise HarnessError(f"expected one x_T draw of [1, 1, 4, {n}, h, w] in the script and none elsewhere; got "
                           f"{[tuple(v.shape) for v in script]} and {other}")
    x_t = script[0][0, 0].transpose(0, 1).contiguous()  # [N, C, h, w], before the rescheduling
    groups = list(range(w, n, st))
    if len(rec.shuffles) != len(groups):
        raise HarnessError(f"{len(rec.shuffles)} shuffles, expected {len(groups)}")
    perms = torch.tensor([[v - (i - w) for v in shuffled] for i, shuffled in zip(groups, rec.shuffles)])
    if len(rec.steps) != steps or [i for i, *_ in rec.steps] != list(range(steps - 1, -1, -1)):
        raise HarnessError(f"their sampler made {len(rec.steps)} steps, expected {steps}")
    frames = lambda z: z[0].transpose(0, 1).contiguous()  # noqa: E731  [1, C, N, h, w] -> [N, C, h, w]
    first_in = frames(rec.steps[0][2])
    states = torch.stack([frames(x) for *_, x in rec.steps])
    if rec.decoded is None or not torch.equal(frames(rec.decoded), states[-1]):
        raise HarnessError("the latents they decoded are not their last DDIM state")
    if len(rec.unet_outputs) != 2 or sorted(rec.attn) != list(range(len(ATTENTION_SITES))):
        raise HarnessError("the UNet or attention hooks did not fire")
    if rec.unet_calls != 2 * steps:
        raise HarnessError(f"their run called the UNet {rec.unet_calls} times, expected {2 * steps}")
    timesteps = [t for _, t, *_ in rec.steps]
    return {
        "noise.values": x_t.half(),
        "noise.keys": torch.tensor([[i, steps, 0] for i in range(n)], dtype=torch.int64),
        "rule.perms": perms.to(torch.int64),
        "ref.x_T": first_in,
        "ref.states": states,
        "ref.eps_cond": frames(rec.unet_outputs[0]),
        "ref.eps_uncond": frames(rec.unet_outputs[1]),
        **{f"ref.attn{j}.in": rec.attn[j][0] for j in rec.attn},
        **{f"ref.attn{j}.out": rec.attn[j][1] for j in rec.attn},
    }, dict(timesteps=timesteps, unused_draws={"p_sample_ddim noise_like (times sigma = 0)": len(step_draws)},
            attention_sites=[list(site) for site in ATTENTION_SITES], attention_rows=ROWS)


def write_fixture(result: dict, out: str, max_bytes: int) -> int:
    import torch
    from safetensors.torch import save_file

    fifo = result["fifo"]
    tensors, exponents = {}, {}
    for k, v in result["state"].items():
        q, e = fifo.quantise(torch, v)
        if not torch.equal(q.float() * 2.0 ** e, v):
            raise HarnessError(f"weight {k} is not exactly an int8 times a power of two")
        tensors["unet." + k], exponents[k] = q.contiguous(), e
    tensors["text.cond"] = result["text"][PROMPT].half()
    tensors["text.uncond"] = result["text"][""].half()
    recorded, extra = collect(result, torch)
    tensors.update(recorded)
    settings = {**result["settings"], **extra}
    meta = {"unet_exponents": json.dumps(exponents), "repository": REPOSITORY, "commit": result["commit"],
            "files_sha256": json.dumps(file_digests(result["root"])), "noise_purposes": json.dumps(PURPOSES),
            "settings": json.dumps(settings), "harness": "scripts/reference/freenoise_vc2.py"}
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    save_file({k: v.contiguous() for k, v in tensors.items()}, out, metadata=meta)
    size = os.path.getsize(out)
    if size > max_bytes:
        raise HarnessError(f"{out} is {size} bytes, over --max-bytes {max_bytes}")
    result["settings"] = settings
    return size


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        result = run(args)
        size = write_fixture(result, args.out, args.max_bytes)
    except HarnessError as e:
        print(f"freenoise_vc2: {e}", file=sys.stderr)
        return 2
    s = result["settings"]
    print(f"wrote {args.out} ({size} bytes): N = {s['frames']}, {s['steps']} steps (t = {s['timesteps']}), "
          f"views {s['views']}, commit {result['commit']}; unused draws {s['unused_draws']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
