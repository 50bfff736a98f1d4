"""Reference harness: FIFO-Diffusion's own VideoCrafter2 sampler on a tiny random UNet, recorded as a fixture.

    python scripts/reference/fifo_vc2.py --reference PATH \
        --out tests/fixtures/reference/fifo_vc2.safetensors

``PATH`` is a checkout of https://github.com/jjihwan/FIFO-Diffusion_public (the fixture in the repository was
made at commit b87ba5d1aec7e675c4fcadcc28e5cfeb47733451). Nothing of it is copied here or into miga: this
script imports the authors' modules from ``PATH`` and runs their entry script ``videocrafter_main.py`` as
``__main__`` (their argparse, ``base_ddim_sampling``, ``fifo_ddim_sampling`` with ``prepare_latents``,
``DDIMSampler.fifo_onestep``/``ddim_step``/``p_sample_ddim``, ``UNetModel`` of ``openaimodel3d.py``), with
these in-memory changes only:

- ``nn.Module.cuda`` returns the module and ``DDIMSampler.register_buffer`` keeps tensors where they are (the
  code moves everything to CUDA; this runs on the CPU).
- The first and text stages of ``LatentDiffusion`` are stand-ins named in the tiny config written to a
  temporary folder: the text stage returns precomputed embeddings (one per prompt: the prompt and ``""``),
  the first stage "decodes" to zeros (the harness records the latents handed to it instead).
- ``torch`` in ``lvdm.common``, ``lvdm.models.samplers.ddim`` and ``scripts.evaluation.funcs`` is a proxy
  whose ``randn``/``randn_like`` draw from a seeded generator (values rounded to float16, so the fixture
  stores them exactly in half the space) and record every draw with what it is for.
- Thin wrappers around ``ddim_sampling``, ``p_sample_ddim``, ``prepare_latents``, ``fifo_onestep``,
  ``shift_latents`` and ``decode_first_stage_2DAE`` say which phase a draw belongs to and record the base
  clip, the queue after initialisation and after every pass, and every output latent; each calls
  the original unchanged.
- Modules the run imports but never uses numerically are replaced by empty stand-ins only when they are not
  installed (``pytorch_lightning``: ``LightningModule`` as an ``nn.Module`` with ``.device``; ``torchvision``,
  ``decord``, ``imageio``, ``omegaconf`` (a dict with attribute access), ``cv2``). ``einops`` is needed.
- ``lvdm.common.ckpt`` (gradient checkpointing) calls the function directly (same numbers under no_grad).

The tiny UNet: LVDM's ``UNetModel`` from their ``configs/inference_t2v_512_v2.0.yaml`` with only the sizes
changed (``model_channels`` 32, ``channel_mult`` [1, 2], ``attention_resolutions`` [1], ``num_res_blocks`` 1,
``num_head_channels`` 8, ``context_dim`` 32; everything else, schedule and ``use_scale`` included, is theirs).
The second level matters: LVDM's GroupNorm has 32 groups, so at 32 channels every group is one channel and
the per-channel timestep embedding a ResBlock adds is normalised away (the output would not depend on the
timestep at all); at 64 channels it is not. The weights are random, built in miga's ``VideoCrafter2UNet``
(LVDM's state-dict names), temporal output layers scaled by 0.5 (``damp_temporal_outputs``), and every tensor
made an int8 times a power of two (exact in float32; stored as int8 with the exponents in the metadata). The
same state dict is loaded strictly into their UNet, and one forward of both must agree before anything else
runs: max |diff| / std 1.8e-14 in float64 (on copies, with their float32-only GroupNorm and timestep embedding
switched to float64 for that check only), about 1e-5 in float32, where this random net amplifies rounding
(the limits: 1e-10 and 1e-4).

Their run: ``--video_length 16`` (f_0, the model takes 16 frames), ``--num_partitions 2`` (T = 32),
``--new_video_length 8``, lookahead on (their default: passing ``--lookahead_denoising`` turns it *off*),
eta 1, CFG 12, fps 8 (their defaults), latents 4 x 4 x 4 (``--height/--width 32``). That is a base clip of
32 DDIM steps, then N + T - f_0 = 24 FIFO passes of 2n = 4 windows.

Noise map (their draw -> miga's key ``(latent index, level, purpose)``; warm-up = T - f_0 = 16, pad = f_0/2 = 8;
miga's level of DDIM index i is i + 1):

==========================================================  ==================================================
their draw                                                  miga key
==========================================================  ==================================================
``ddim.py`` ddim_sampling ``torch.randn(shape)`` (x_T),     ``(i, T, "clip/init")``
frame i of ``[1, C, f_0, h, w]``
``p_sample_ddim`` ``noise_like`` at DDIM index k >= 1,      ``(i, k + 1, "clip/eta")``
frame i
``p_sample_ddim`` at index 0 (sigma = 0)                    none (miga skips that identity step; unused)
``funcs.py`` prepare_latents, draw j < pad (lookahead        ``(-warm-up - pad + j, 0, "fifo/pad")``: no miga
padding, noised to ``ddim_alphas[0]``)                      key, miga's padding is the clean frame (see test)
prepare_latents, draw pad + i (queue slot at DDIM index i)   ``(i - warm-up, i + 1, "fifo/init")``
``fifo_onestep`` #c -> ``ddim_step`` ``noise_like`` for      ``(q - pad - warm-up + p, q - pad + 1,
window frame j >= f_0/2, pass p = c // 2n, rank              "fifo/eta")``
r = 2n - 1 - c % 2n, queue position q = r f_0/2 + j
``ddim_step`` for window frame j < f_0/2                    none (stepped, never written back; unused)
``shift_latents`` ``randn_like`` after pass p               ``(f_0 + p, T, "fifo/fresh")``
==========================================================  ==================================================

The fixture (one ``.safetensors``): ``unet.*`` (weights in miga's/LVDM's names, int8, times ``2**exponent``),
``text.cond``/``text.uncond``, ``noise.values`` ``[D, C, h, w]`` with ``noise.keys`` ``[D, 3]`` (index, level,
purpose id; purposes in the metadata), and the authors' states ``ref.base_clip`` ``[f_0, C, h, w]``,
``ref.init_queue`` ``[T + pad, C, h, w]`` (head first), ``ref.queues`` ``[P, T + pad, C, h, w]`` (the queue after
each of the P = N + T - f_0 passes, as ``shift_latents`` returns it), ``ref.outputs`` ``[P, C, h, w]`` (the latent
each pass decodes, warm-up included; their video is the last N); metadata: repository, commit, SHA-256 of the
files run, settings, weight exponents.
``tests/test_reference_fifo_vc2.py`` compares miga against it.
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

REPOSITORY = "https://github.com/jjihwan/FIFO-Diffusion_public"
KNOWN_COMMIT = "b87ba5d1aec7e675c4fcadcc28e5cfeb47733451"
REQUIRED = ("videocrafter_main.py", "scripts/evaluation/funcs.py", "lvdm/models/samplers/ddim.py",
            "lvdm/modules/networks/openaimodel3d.py", "lvdm/models/ddpm3d.py", "configs/inference_t2v_512_v2.0.yaml")
STANDINS = "fifo_vc2_standins"
PROMPT = "a red fox trotting through fresh snow"
TINY = dict(model_channels=32, channel_mult=[1, 2], attention_resolutions=[1], num_res_blocks=1, num_head_channels=8,
            context_dim=32)
PURPOSES = ("clip/init", "clip/eta", "fifo/pad", "fifo/init", "fifo/eta", "fifo/fresh")


class HarnessError(Exception):
    """A one-line reason to stop."""


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--reference", required=True, help="checkout of jjihwan/FIFO-Diffusion_public")
    p.add_argument("--out", default="tests/fixtures/reference/fifo_vc2.safetensors")
    p.add_argument("--commit", default=None, help="the checkout's commit when PATH is not a git work tree")
    p.add_argument("--seed", type=int, default=0, help="weights, text embeddings and noise")
    p.add_argument("--frames", type=int, default=16, help="f_0 (their --video_length)")
    p.add_argument("--partitions", type=int, default=2, help="n (their --num_partitions); T = f_0 * n")
    p.add_argument("--outputs", type=int, default=8, help="N (their --new_video_length)")
    p.add_argument("--latent-size", type=int, default=4, help="latent height and width (pixels / 8)")
    p.add_argument("--max-bytes", type=int, default=2_000_000)
    return p.parse_args(argv)


def check_reference(path: str) -> str:
    root = os.path.abspath(path)
    if not os.path.isdir(root):
        raise HarnessError(f"--reference {path}: no such folder (a checkout of {REPOSITORY})")
    missing = [f for f in REQUIRED if not os.path.isfile(os.path.join(root, f))]
    if missing:
        raise HarnessError(f"--reference {path} is not a FIFO-Diffusion checkout: missing {', '.join(missing)}")
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


# ---------------------------------------------------------------- stand-ins for what the run does not use
def _module(name: str, **attrs) -> types.ModuleType:
    mod = types.ModuleType(name)
    mod.__dict__.update(attrs)
    return mod


def install_standins(torch) -> None:
    """Stand-in modules for imports that play no part in the numbers, only where they are missing."""
    nn = torch.nn

    def missing(name: str) -> bool:
        try:
            __import__(name)
            return False
        except ImportError:
            return True

    if missing("pytorch_lightning"):
        class LightningModule(nn.Module):
            @property
            def device(self):
                for t in self.parameters():
                    return t.device
                for t in self.buffers():
                    return t.device
                return torch.device("cpu")

        sys.modules["pytorch_lightning"] = _module("pytorch_lightning", LightningModule=LightningModule,
                                                   seed_everything=lambda seed=None, **_: seed)
    if missing("torchvision"):
        utils = _module("torchvision.utils", make_grid=lambda *a, **k: None)
        sys.modules["torchvision.utils"] = utils
        sys.modules["torchvision"] = _module("torchvision", utils=utils, io=_module("torchvision.io"))
    if missing("decord"):
        sys.modules["decord"] = _module("decord", VideoReader=None, cpu=lambda *a: None)
    if missing("imageio"):
        sys.modules["imageio"] = _module("imageio", mimsave=lambda *a, **k: None)
    if missing("cv2"):
        sys.modules["cv2"] = _module("cv2")
    if missing("omegaconf"):
        import yaml

        class Node(dict):
            __getattr__ = dict.get

        def wrap(x):
            if isinstance(x, dict):
                return Node({k: wrap(v) for k, v in x.items()})
            return [wrap(v) for v in x] if isinstance(x, list) else x

        class OmegaConf:
            @staticmethod
            def load(path):
                with open(path) as f:
                    return wrap(yaml.safe_load(f))

            @staticmethod
            def create(x=None):
                return wrap(x or {})

        sys.modules["omegaconf"] = _module("omegaconf", OmegaConf=OmegaConf)

    class PrecomputedText(nn.Module):
        """The text stage: the embedding recorded for each prompt (``TEXT[prompt]``, ``[L, D]``)."""

        TEXT: dict = {}

        def forward(self, prompts):
            return torch.stack([self.TEXT[p] for p in prompts])

    class NullFirstStage(nn.Module):
        """The first stage: decoding gives zeros (the harness records the latents it is handed)."""

        def decode(self, z, **kwargs):
            return torch.zeros(z.shape[0], 3, z.shape[-2], z.shape[-1])

    sys.modules[STANDINS] = _module(STANDINS, PrecomputedText=PrecomputedText, NullFirstStage=NullFirstStage)


# ---------------------------------------------------------------- recording the authors' draws
class Recorder:
    """Replaces ``torch.randn``/``randn_like`` in their modules; every draw is logged with the phase it was
    made in (set by the wrappers below)."""

    def __init__(self, torch, seed: int):
        self.torch = torch
        self.gen = torch.Generator().manual_seed(seed)
        self.phase: tuple = ("outside",)
        self.draws: list = []  # (phase, tensor)
        self.states: dict = {}
        self.outputs: list = []
        self.queues: list = []  # the queue after each pass (shifted: its output is the newest padding latent)
        self.decoded_clip = None
        self.fifo_calls = 0
        self.shifts = 0

    def randn(self, *size, generator=None, dtype=None, device=None, **_):
        torch = self.torch
        shape = tuple(size[0]) if len(size) == 1 and isinstance(size[0], (tuple, list, torch.Size)) else size
        value = torch.randn(shape, generator=self.gen).half().float()  # exactly storable as float16
        self.draws.append((self.phase, value.clone()))
        return value.to(dtype=dtype or torch.float32, device=device or "cpu")

    def randn_like(self, x, dtype=None, device=None, **_):
        return self.randn(tuple(x.shape), dtype=dtype or x.dtype, device=device or x.device)

    def torch_proxy(self):
        recorder, real = self, self.torch

        class TorchProxy(types.ModuleType):
            randn = staticmethod(recorder.randn)
            randn_like = staticmethod(recorder.randn_like)

            def __getattr__(self, name):
                return getattr(real, name)

        return TorchProxy("torch")


def patch_reference(rec: Recorder, modules: dict) -> None:
    """In-memory wrappers (see the module docstring); each calls the authors' function unchanged."""
    torch = rec.torch
    ddim_mod, funcs, common, ddpm3d = (modules[k] for k in ("ddim", "funcs", "common", "ddpm3d"))
    proxy = rec.torch_proxy()
    for mod in (ddim_mod, funcs, common):
        mod.torch = proxy
    torch.nn.Module.cuda = lambda self, *a, **k: self
    sampler = ddim_mod.DDIMSampler
    sampler.register_buffer = lambda self, name, attr: setattr(self, name, attr)

    orig_sampling, orig_step, orig_onestep = sampler.ddim_sampling, sampler.p_sample_ddim, sampler.fifo_onestep

    def ddim_sampling(self, *args, **kwargs):
        rec.phase = ("clip", "init")
        img, inter = orig_sampling(self, *args, **kwargs)
        rec.phase = ("outside",)
        rec.states["base_clip"] = img.detach().clone()
        return img, inter

    def p_sample_ddim(self, x, c, t, index, *args, **kwargs):
        rec.phase = ("clip", int(index))
        return orig_step(self, x, c, t, index, *args, **kwargs)

    def fifo_onestep(self, *args, **kwargs):
        rec.phase = ("fifo", rec.fifo_calls)
        rec.fifo_calls += 1
        return orig_onestep(self, *args, **kwargs)

    sampler.ddim_sampling, sampler.p_sample_ddim, sampler.fifo_onestep = ddim_sampling, p_sample_ddim, fifo_onestep

    orig_prepare, orig_shift = funcs.prepare_latents, funcs.shift_latents

    def prepare_latents(*args, **kwargs):
        rec.phase = ("init",)
        latents = orig_prepare(*args, **kwargs)
        rec.phase = ("outside",)
        rec.states["init_queue"] = latents.detach().clone()
        return latents

    def shift_latents(latents):
        rec.phase = ("fresh", rec.shifts)
        out = orig_shift(latents)
        rec.phase = ("outside",)
        rec.queues.append(out.detach().clone())
        rec.shifts += 1
        return out

    funcs.prepare_latents, funcs.shift_latents = prepare_latents, shift_latents

    orig_decode = ddpm3d.LatentDiffusion.decode_first_stage_2DAE

    def decode_first_stage_2DAE(self, z, **kwargs):
        if rec.decoded_clip is None:
            rec.decoded_clip = z.detach().clone()
        else:
            rec.outputs.append(z.detach().clone())
        return orig_decode(self, z, **kwargs)

    ddpm3d.LatentDiffusion.decode_first_stage_2DAE = decode_first_stage_2DAE


def map_draws(rec: Recorder, f0: int, n: int, steps: int) -> tuple[list, dict]:
    """Each recorded draw -> [(index, level, purpose, tensor [C, h, w])] (module docstring's table)."""
    pad, warmup, windows = f0 // 2, steps - f0, 2 * n
    table, unused = [], {"clip index-0 step": 0, "fifo first halves": 0}
    init_count = 0
    for phase, value in rec.draws:
        kind = phase[0]
        if kind == "clip":
            frames = value[0].transpose(0, 1)  # [F, C, h, w]
            if phase[1] == "init":
                table += [(i, steps, "clip/init", frames[i]) for i in range(f0)]
            elif phase[1] == 0:
                unused["clip index-0 step"] += f0
            else:
                table += [(i, phase[1] + 1, "clip/eta", frames[i]) for i in range(f0)]
        elif kind == "init":
            j, init_count = init_count, init_count + 1
            if j < pad:
                table.append((-warmup - pad + j, 0, "fifo/pad", value[0, :, 0]))
            else:
                i = j - pad
                table.append((i - warmup, i + 1, "fifo/init", value[0, :, 0]))
        elif kind == "fifo":
            continue  # mapped below, per window
        elif kind == "fresh":
            table.append((f0 + phase[1], steps, "fifo/fresh", value[0]))
        else:
            raise HarnessError(f"a random draw of shape {tuple(value.shape)} outside every known phase ({phase})")
    # fifo draws: per fifo_onestep call, one per window frame, in frame order
    per_call: dict = {}
    for phase, value in rec.draws:
        if phase[0] == "fifo":
            per_call.setdefault(phase[1], []).append(value)
    for call, values in per_call.items():
        if len(values) != f0:
            raise HarnessError(f"fifo_onestep call {call} drew {len(values)} times, expected {f0}")
        p, rank = divmod(call, windows)
        rank = windows - 1 - rank
        for j, value in enumerate(values):
            if j < pad:
                unused["fifo first halves"] += 1
                continue
            q = rank * pad + j
            table.append((q - pad - warmup + p, q - pad + 1, "fifo/eta", value[0, :, 0]))
    keys = [(i, k, u) for i, k, u, _ in table]
    if len(set(keys)) != len(keys):
        raise HarnessError("two draws mapped to the same miga key: the noise map is wrong")
    if init_count != pad + steps:
        raise HarnessError(f"prepare_latents drew {init_count} times, expected {pad + steps}")
    return table, unused


# ---------------------------------------------------------------- the run
def tiny_yaml(root: str, folder: str, latent: int) -> str:
    from omegaconf import OmegaConf  # theirs when installed, else the stand-in above

    with open(os.path.join(root, "configs/inference_t2v_512_v2.0.yaml")) as f:
        import yaml

        config = yaml.safe_load(f)
    params = config["model"]["params"]
    params["unet_config"]["params"].update(TINY)
    params["image_size"] = [latent, latent]
    params["first_stage_config"] = {"target": f"{STANDINS}.NullFirstStage"}
    params["cond_stage_config"] = {"target": f"{STANDINS}.PrecomputedText"}
    path = os.path.join(folder, "tiny.yaml")
    with open(path, "w") as f:
        yaml.safe_dump(config, f)
    OmegaConf.load(path)  # parses
    return path


def quantise(torch, w):
    """``(q, e)``: int8 ``q`` and exponent ``e`` with ``q * 2**e`` (exact in float32) close to ``w``."""
    top = float(w.abs().max())
    e = int(torch.tensor(top / 127.0).log2().ceil()) if top > 0 else 0
    q = torch.clamp(torch.round(w / 2.0 ** e), -127, 127).to(torch.int8)
    return q, e


def miga_weights(torch, seed: int):
    """miga's VideoCrafter2UNet at the tiny size, random, every weight an int8 times a power of two (stored so)."""
    from dataclasses import replace

    from miga.backbones.videocrafter2_random import TINY_UNET, damp_temporal_outputs
    from miga.backbones.videocrafter2_unet import VideoCrafter2UNet

    config = replace(TINY_UNET, **{k: tuple(v) if isinstance(v, list) else v for k, v in TINY.items()})
    unet = VideoCrafter2UNet(config)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in unet.named_parameters():
            if p.ndim > 1:
                p.copy_(torch.randn(p.shape, generator=gen) * (0.5 / p[0].numel() ** 0.5))
            elif name.endswith("weight"):
                p.copy_(1.0 + 0.05 * torch.randn(p.shape, generator=gen))
            else:
                p.copy_(0.05 * torch.randn(p.shape, generator=gen))
        damp_temporal_outputs(unet, 0.5)
        for p in unet.parameters():
            q, e = quantise(torch, p)
            p.copy_(q.float() * 2.0 ** e)
    return unet.eval()


def check_forward(torch, theirs, ours, f0: int, latent: int, context_dim: int, seed: int) -> dict:
    """One forward of both UNets, with per-frame timesteps (as FIFO feeds them) and with one timestep per clip:
    max |diff| / std in float32, and in float64 on copies (exact arithmetic aside, the two must be one function).

    For float64 their ``GroupNormSpecific`` and miga's ``Float32GroupNorm`` (both compute in float32 by design)
    and their ``timestep_embedding`` (float32) are switched to the input's dtype for the duration only.
    """
    import copy

    import lvdm.basics as basics
    import lvdm.modules.networks.openaimodel3d as openaimodel3d
    from miga.backbones import videocrafter2_unet

    gen = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(1, 4, f0, latent, latent, generator=gen)
    ctx = torch.randn(1, 77, context_dim, generator=gen)
    times = (torch.randint(0, 1000, (f0,), generator=gen), torch.tensor([731]))
    out = {}
    norms = (basics.GroupNormSpecific, videocrafter2_unet.Float32GroupNorm)
    saved = [n.forward for n in norms] + [openaimodel3d.timestep_embedding]
    for dtype in (torch.float32, torch.float64):
        a_net, b_net = (theirs, ours) if dtype == torch.float32 else (copy.deepcopy(theirs).double(),
                                                                        copy.deepcopy(ours).double())
        if dtype == torch.float64:
            a_net.dtype = dtype
            for n in norms:
                n.forward = lambda self, h: torch.nn.GroupNorm.forward(self, h)
            openaimodel3d.timestep_embedding = lambda *a, **k: saved[-1](*a, **k).double()
        worst = 0.0
        try:
            with torch.no_grad():
                for t in times:
                    a = a_net(x.to(dtype), t.long(), context=ctx.to(dtype), fps=torch.tensor([8]))
                    b = b_net(x.to(dtype), t.to(dtype)[None] if t.numel() == f0 else t.to(dtype), ctx.to(dtype),
                              fps=8.0)
                    worst = max(worst, float((a - b).abs().max() / a.std()))
        finally:
            for n, f in zip(norms, saved):
                n.forward = f
            openaimodel3d.timestep_embedding = saved[-1]
        out[str(dtype).replace("torch.", "")] = worst
    return out


def run(args: argparse.Namespace) -> dict:
    root = check_reference(args.reference)
    commit = reference_commit(root, args.commit)
    import torch

    torch.set_num_threads(1)
    f0, n, latent = args.frames, args.partitions, args.latent_size
    steps = f0 * n
    if f0 % 2 or n < 1 or args.outputs < 1:
        raise HarnessError("--frames must be even, --partitions and --outputs >= 1")
    sys.path.insert(0, root)
    install_standins(torch)
    for name in ("scripts", "utils", "lvdm"):  # never a same-named package from elsewhere
        mod = sys.modules.get(name)
        if mod is not None and not any(os.path.abspath(p).startswith(root) for p in getattr(mod, "__path__", [])):
            del sys.modules[name]
    try:
        import lvdm.common as common
        import lvdm.models.ddpm3d as ddpm3d
        import lvdm.models.samplers.ddim as ddim_mod
        import scripts.evaluation.funcs as funcs
        from utils.utils import instantiate_from_config
    except ImportError as e:
        raise HarnessError(f"cannot import the reference code from {root}: {e} (it needs einops)") from None
    if not os.path.abspath(funcs.__file__).startswith(root):
        raise HarnessError(f"scripts.evaluation.funcs resolved to {funcs.__file__}, not inside {root}")
    common.ckpt = lambda func, *inputs: func(*inputs)  # gradient checkpointing: a plain call under no_grad

    rec = Recorder(torch, args.seed)
    gen = torch.Generator().manual_seed(args.seed + 2)
    text = {PROMPT: (torch.randn(77, TINY["context_dim"], generator=gen)).half().float(),
            "": (torch.randn(77, TINY["context_dim"], generator=gen)).half().float()}
    sys.modules[STANDINS].PrecomputedText.TEXT = text
    ours = miga_weights(torch, args.seed)
    state = {k: v.detach().clone() for k, v in ours.state_dict().items()}

    with tempfile.TemporaryDirectory(prefix="fifo_vc2_") as work:
        config_path = tiny_yaml(root, work, latent)
        from omegaconf import OmegaConf

        model = instantiate_from_config(OmegaConf.load(config_path).pop("model"))
        theirs = model.model.diffusion_model
        from miga.backbones.videocrafter2_unet import match_projection_shapes

        theirs.load_state_dict(match_projection_shapes(state, theirs), strict=True)
        model.eval()
        rel = check_forward(torch, theirs, ours, f0, latent, TINY["context_dim"], args.seed)
        print("UNet forward, authors' vs miga's, same weights: max |diff| / std = "
              + ", ".join(f"{v:.2e} ({k})" for k, v in rel.items()))
        if not (rel["float64"] <= 1e-10 and rel["float32"] <= 1e-4):
            raise HarnessError(f"the authors' UNet and miga's disagree on one forward ({rel}; must be <= 1e-10 in "
                               f"float64 and 1e-4 in float32)")
        if rel["float32"] > 1e-5:
            print("note: float32 rounding alone puts the two above 1e-5 here (float64 agrees)")
        ckpt = os.path.join(work, "model.ckpt")
        torch.save({"state_dict": model.state_dict()}, ckpt)
        del model, theirs
        prompts = os.path.join(work, "prompts.txt")
        with open(prompts, "w") as f:
            f.write(PROMPT + "\n")
        patch_reference(rec, {"ddim": ddim_mod, "funcs": funcs, "common": common, "ddpm3d": ddpm3d})
        argv = ["videocrafter_main.py", "--ckpt_path", ckpt, "--config", config_path, "--prompt_file", prompts,
                "--video_length", str(f0), "--num_partitions", str(n), "--new_video_length", str(args.outputs),
                "--height", str(8 * latent), "--width", str(8 * latent), "--output_dir", os.path.join(work, "out")]
        old_argv, old_cwd = sys.argv, os.getcwd()
        sys.argv = argv
        os.chdir(work)  # their latents_dir is relative ("results/...")
        try:
            with contextlib.redirect_stderr(open(os.devnull, "w")):  # tqdm bars
                runpy.run_path(os.path.join(root, "videocrafter_main.py"), run_name="__main__")
        finally:
            sys.argv = old_argv
            os.chdir(old_cwd)

    passes = args.outputs + steps - f0
    if len(rec.outputs) != passes or rec.fifo_calls != passes * 2 * n:
        raise HarnessError(f"their run made {len(rec.outputs)} outputs in {rec.fifo_calls} window steps; expected "
                           f"{passes} and {passes * 2 * n} (are the flags right?)")
    if not torch.equal(rec.decoded_clip, rec.states["base_clip"]):
        raise HarnessError("the clip they decoded is not the clip ddim_sampling returned")
    table, unused = map_draws(rec, f0, n, steps)
    return dict(root=root, commit=commit, state=state, text=text, table=table, unused=unused, rec=rec,
                settings=dict(frames=f0, partitions=n, steps=steps, outputs=args.outputs, passes=passes, eta=1.0,
                              guidance_scale=12.0, fps=8, lookahead=True, latent_shape=[4, latent, latent],
                              seed=args.seed, prompt=PROMPT, unet=TINY, forward_check=rel,
                              unused_draws=unused))


def to_frames(x):
    """``[1, C, F, h, w]`` -> ``[F, C, h, w]``."""
    return x[0].transpose(0, 1).contiguous()


def write_fixture(result: dict, out: str, max_bytes: int) -> int:
    import torch
    from safetensors.torch import save_file

    rec, table = result["rec"], result["table"]
    tensors, exponents = {}, {}
    for k, v in result["state"].items():
        q, e = quantise(torch, v)
        if not torch.equal(q.float() * 2.0 ** e, v):
            raise HarnessError(f"weight {k} is not exactly an int8 times a power of two")
        tensors["unet." + k], exponents[k] = q.contiguous(), e
    tensors["text.cond"] = result["text"][PROMPT].half()
    tensors["text.uncond"] = result["text"][""].half()
    tensors["noise.values"] = torch.stack([t for *_, t in table]).half().contiguous()
    tensors["noise.keys"] = torch.tensor([[i, k, PURPOSES.index(u)] for i, k, u, _ in table], dtype=torch.int64)
    if not torch.equal(tensors["noise.values"].float(), torch.stack([t for *_, t in table])):
        raise HarnessError("a recorded draw is not exactly a float16 value")
    tensors["ref.base_clip"] = to_frames(rec.states["base_clip"])
    tensors["ref.init_queue"] = to_frames(rec.states["init_queue"])
    tensors["ref.queues"] = torch.stack([to_frames(q) for q in rec.queues])
    tensors["ref.outputs"] = torch.cat([to_frames(z) for z in rec.outputs])
    meta = {"unet_exponents": json.dumps(exponents), "repository": REPOSITORY, "commit": result["commit"],
            "files_sha256": json.dumps(file_digests(result["root"])),
            "noise_purposes": json.dumps(PURPOSES), "settings": json.dumps(result["settings"]),
            "harness": "scripts/reference/fifo_vc2.py"}
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
        print(f"fifo_vc2: {e}", file=sys.stderr)
        return 2
    s = result["settings"]
    print(f"wrote {args.out} ({size} bytes): {len(result['table'])} draws, {s['passes']} outputs, "
          f"commit {result['commit']}; unused draws {result['unused']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
