"""Reference harness: FreePCA's own VideoCrafter2 sampler on a tiny random UNet, recorded as a fixture.

    python scripts/reference/freepca_vc2.py --reference PATH \
        --out tests/fixtures/reference/freepca_vc2.safetensors

``PATH`` is a checkout of https://github.com/JosephTiTan/FreePCA (the fixture in the repository was made at
commit 66dcf4e, the one ``shared/spec/baselines.md`` read). Nothing of it is copied here or into miga: this script
imports the authors' modules from ``PATH`` and runs their entry script ``scripts/evaluation/inference.py`` (its
``get_parser`` and ``run_inference``: the "reuse mean statistics" initial noise of ``x_T_total``,
``funcs.batch_ddim_sampling``, LVDM's ``DDIMSampler``, the ``UNetModel`` of
``lvdm/modules/networks/openaimodel3d.py`` that routes the timestep to every temporal transformer, whose
``CrossAttention.forward`` of ``lvdm/modules/attention.py`` is FreePCA: windows ``get_views(64, 16, 4)``, the
entropy-scaled global branch and the PCA fusion while t > 250). The in-memory changes are ``freenoise_vc2.py``'s
(``.cuda()`` -- here ``.cuda(1)`` -- a no-op, ``register_buffer``, seeded and recorded ``torch.randn`` in
``lvdm.common``, the sampler and the entry script, recorded ``random.shuffle`` in the entry script,
``save_videos`` off, gradient checkpointing a plain call, ``fifo_vc2.py``'s stand-ins for the text and first
stages and for unused imports) plus two stand-ins for modules their code imports:

- ``xformers`` (``xformers.ops.memory_efficient_attention`` = plain ``softmax(q kᵀ / √d) v``), always, before
  their ``attention.py`` is imported. Their spatial attentions take ``efficient_forward`` only when xformers is
  importable (``attention.py`` L80-82); without it every spatial self-attention would enter the FreePCA path
  (windows over spatial tokens) and fail. The stand-in keeps their set-up: FreePCA on the temporal layers only
  (spec §3.2).
- ``scipy`` / ``scipy.io`` when missing (imported by ``attention.py``, never used).

No constant of theirs is changed: the run uses N = 64 frames, the number their code hard-codes three times (the
views ``get_views(64, 16, 4)``, γ = √(log₁₆ 64) and the noise loop ``range(16, 64, 16)``).

Their run: the flags of ``scripts/run_text2video.sh`` (``--mode base --ddim_eta 1.0
--unconditional_guidance_scale 12.0 --fps 28 --seed 123 --n_samples 1 --bs 1 --frames 64``) with
``--ddim_steps 10`` (t = 901, 801, ..., 1: the PCA fusion runs at the seven steps with t > 250, not at the last
three; ``use_scale`` acts below t = 400) and 32x32 pixels (4x4 latents; at 2x4 this tiny random net with CFG 12
turned a 1e-6 relative change of x_T into 3e-3 after two steps, windows alone included, so no float32 run could
be compared there). The tiny UNet is ``fifo_vc2.py``'s (two levels; ``attention_resolutions`` [1]) with the
same weights: its temporal levels are 4x4 (``init_attn``, the input and output blocks) and 2x2 (the middle
block). Before the run, one forward of both
UNets with FreePCA at t = 731 (theirs always; miga's with ``PCAFuseAttention``) must agree (``LIMITS``).

Noise map (their draw -> miga's key; T = 10 steps; miga's level of DDIM index i is i + 1):

==============================================================  ==================================================
their draw                                                      miga
==============================================================  ==================================================
``inference.py`` ``x_T_total = torch.randn(...)``, frame i      ``(i, T, "full/init")`` (before the mean reuse)
``random.shuffle(list_index)`` for ``frame_index`` 16, 32, 48   none (their block mean does not depend on it;
                                                                counted in the metadata)
``p_sample_ddim`` ``noise_like`` at DDIM index i, frame f       ``(f, i + 1, "full/eta")``
==============================================================  ==================================================

The fixture: ``unet.*`` (int8, times ``2**exponent``), ``text.cond``/``text.uncond``, ``noise.values``
``[D, C, h, w]`` with ``noise.keys`` ``[D, 3]``; the authors' ``ref.x_T`` (after the mean reuse),
``ref.states`` ``[T, N, C, h, w]`` (after each step; the last is what they decode), ``ref.eps_cond`` /
``ref.eps_uncond`` (the first step's two UNet outputs) and ``ref.block0.in`` / ``.out`` (input and output, all
rows, of the temporal transformer block of ``BLOCK_SITES``); metadata: repository, commit, SHA-256 of the files
run, settings, the forward check, weight exponents. ``tests/test_reference_freepca_vc2.py`` compares miga
against it.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import math
import os
import sys
import tempfile
import types

REPOSITORY = "https://github.com/JosephTiTan/FreePCA"
KNOWN_COMMIT = "66dcf4e"
ENTRY = "scripts/evaluation/inference.py"
CONFIG = "config/inference_t2v_512_v2.0.yaml"
REQUIRED = (ENTRY, "scripts/evaluation/funcs.py", "scripts/run_text2video.sh", CONFIG,
            "lvdm/models/samplers/ddim.py", "lvdm/models/utils_diffusion.py", "lvdm/models/ddpm3d.py",
            "lvdm/modules/attention.py", "lvdm/modules/networks/openaimodel3d.py")
PROMPT = "a red fox trotting through fresh snow"
PURPOSES = ("full/init", "full/eta")
HERE = os.path.dirname(os.path.abspath(__file__))
FRAMES = 64
"""N: the number their code hard-codes (views, γ, the noise loop)."""
BLOCK_SITES = (("middle_block.2.transformer_blocks.0", "first"),)
"""The temporal transformer block whose input and output (all rows: the PCA pools them) are recorded (same dotted
name in miga's UNet), in the first UNet call (step 1, conditional, t = 901: fusion on). The fixture has no room
for ``init_attn`` (16 rows; 0.5 MB) or a block with the fusion off (the last three steps' states cover it)."""
LIMITS = {"float32": 1e-4, "float64": 1e-6}
"""The forward check (float64: miga's ``pca_fuse`` works in float32, its eigenvectors in float64, even for float64
input)."""


class HarnessError(Exception):
    """A one-line reason to stop."""


def load_sibling(name: str):
    spec = importlib.util.spec_from_file_location(f"miga_reference_{name}", os.path.join(HERE, f"{name}.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--reference", required=True, help="checkout of JosephTiTan/FreePCA (the repository root)")
    p.add_argument("--out", default="tests/fixtures/reference/freepca_vc2.safetensors")
    p.add_argument("--commit", default=None, help="the checkout's commit when PATH is not a git work tree")
    p.add_argument("--seed", type=int, default=0, help="weights, text embeddings and noise")
    p.add_argument("--steps", type=int, default=10, help="DDIM steps (a divisor of 1000)")
    p.add_argument("--latent-height", type=int, default=4)
    p.add_argument("--latent-width", type=int, default=4)
    p.add_argument("--max-bytes", type=int, default=2_000_000)
    return p.parse_args(argv)


def check_reference(path: str) -> str:
    root = os.path.abspath(path)
    missing = [f for f in REQUIRED if not os.path.isfile(os.path.join(root, f))]
    if not os.path.isdir(root) or missing:
        raise HarnessError(f"--reference {path} is not a FreePCA checkout ({REPOSITORY}): missing "
                           f"{', '.join(missing) or 'the folder'}")
    return root


def file_digests(root: str) -> dict:
    return {f: hashlib.sha256(open(os.path.join(root, f), "rb").read()).hexdigest() for f in REQUIRED}


# ---------------------------------------------------------------- stand-ins
def install_xformers_standin(torch) -> None:
    """``xformers.ops.memory_efficient_attention`` as plain softmax attention over ``[B, n, d]`` (their spatial
    layers' ``efficient_forward``); installed whatever is installed, before their ``attention.py`` is imported."""

    def memory_efficient_attention(q, k, v, attn_bias=None, op=None):
        if attn_bias is not None:
            raise HarnessError("their spatial attention passed an attn_bias; the stand-in has none")
        sim = torch.einsum("bid,bjd->bij", q, k) * q.shape[-1] ** -0.5
        return torch.einsum("bij,bjd->bid", sim.softmax(dim=-1), v)

    ops = types.ModuleType("xformers.ops")
    ops.memory_efficient_attention = memory_efficient_attention
    mod = types.ModuleType("xformers")
    mod.ops = ops
    sys.modules["xformers"], sys.modules["xformers.ops"] = mod, ops
    attention = sys.modules.get("lvdm.modules.attention")
    if attention is not None and not getattr(attention, "XFORMERS_IS_AVAILBLE", False):
        raise HarnessError("their attention.py was imported before the xformers stand-in")


def install_scipy_standin() -> None:
    try:
        import scipy.io  # noqa: F401
    except ImportError:
        io = types.ModuleType("scipy.io")
        sys.modules["scipy"] = types.ModuleType("scipy")
        sys.modules["scipy"].io = io
        sys.modules["scipy.io"] = io


# ---------------------------------------------------------------- recording
def instrument_model(rec, model, steps: int) -> list:
    unet = model.model.diffusion_model
    calls = {"first": 0, "last": 2 * (steps - 1)}
    rec.unet_calls = 0
    rec.blocks = {}

    def on_unet(module, args, out):
        if len(rec.unet_outputs) < 2:
            rec.unet_outputs.append(out.detach().clone())
        rec.unet_calls += 1

    def on_block(j, when):
        def hook(module, args, kwargs, out):
            if rec.unet_calls == calls[when] and j not in rec.blocks:
                rec.blocks[j] = (args[0].detach().clone(), out.detach().clone(),
                                 float(kwargs["timesteps"].reshape(-1)[0]))
        return hook

    hooks = [unet.register_forward_hook(on_unet)]
    for j, (name, when) in enumerate(BLOCK_SITES):
        hooks.append(unet.get_submodule(name).register_forward_hook(on_block(j, when), with_kwargs=True))
    return hooks


def check_forward(torch, theirs, ours, frames: int, shape, context_dim: int, seed: int) -> dict:
    """One forward of both UNets with FreePCA (same input, t = 731: fusion on, fps 28): max |diff| / std, float32
    and float64 (copies; their float32 GroupNorm and timestep embedding switched to float64 for that check)."""
    import copy

    import lvdm.basics as basics
    import lvdm.modules.networks.openaimodel3d as net_mod
    from miga.backbones import videocrafter2_unet
    from miga.baselines.attention import FreePCAConfig, PCAFuseAttention
    from miga.baselines.hooks import attention_policy

    policy = PCAFuseAttention(FreePCAConfig(window=16, stride=4))
    gen = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(1, 4, frames, *shape, generator=gen)
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
            with torch.no_grad(), attention_policy(b_net, policy):
                a = a_net(x.to(dtype), t, context=ctx.to(dtype), fps=torch.tensor([28]))
                b = b_net(x.to(dtype), t.to(dtype), ctx.to(dtype), fps=28.0)
            out[str(dtype).replace("torch.", "")] = float((a - b).abs().max() / a.std())
        finally:
            for n, f in zip(norms, saved):
                n.forward = f
            net_mod.timestep_embedding = saved[-1]
    return out


def run(args: argparse.Namespace) -> dict:
    root = check_reference(args.reference)
    freenoise = load_sibling("freenoise_vc2")
    fifo = freenoise.load_fifo_harness()
    try:
        commit = freenoise.reference_commit(root, args.commit)
    except freenoise.HarnessError as e:
        raise HarnessError(str(e).replace(freenoise.KNOWN_COMMIT, KNOWN_COMMIT)) from None
    import torch

    torch.set_num_threads(1)
    n, steps, shape = FRAMES, args.steps, (args.latent_height, args.latent_width)
    if 1000 % steps or shape[0] % 2 or shape[1] % 2:
        raise HarnessError("need steps dividing 1000 and even latent sizes")
    grids = [shape, (shape[0] // 2, shape[1] // 2)]
    fifo.install_standins(torch)
    install_xformers_standin(torch)
    install_scipy_standin()
    try:
        entry = freenoise.import_entry(root, ENTRY, "freepca_inference")
    except freenoise.HarnessError as e:
        raise HarnessError(str(e)) from None
    import lvdm.common as common
    import lvdm.modules.attention as attention
    import lvdm.models.samplers.ddim as ddim_mod
    from utils.utils import instantiate_from_config

    if not attention.XFORMERS_IS_AVAILBLE:
        raise HarnessError("their attention.py did not take the xformers stand-in")
    common.ckpt = lambda func, *inputs: func(*inputs)
    rec = freenoise.Recorder(torch, args.seed)
    gen = torch.Generator().manual_seed(args.seed + 2)
    dim = fifo.TINY["context_dim"]
    text = {PROMPT: torch.randn(77, dim, generator=gen).half().float(),
            "": torch.randn(77, dim, generator=gen).half().float()}
    sys.modules[fifo.STANDINS].PrecomputedText.TEXT = text
    ours = fifo.miga_weights(torch, args.seed)
    state = {k: v.detach().clone() for k, v in ours.state_dict().items()}

    with tempfile.TemporaryDirectory(prefix="freepca_vc2_") as work:
        import yaml

        with open(os.path.join(root, CONFIG)) as f:
            config = yaml.safe_load(f)
        params = config["model"]["params"]
        params["unet_config"]["params"].update(fifo.TINY)
        params["image_size"] = list(shape)
        params["first_stage_config"] = {"target": f"{fifo.STANDINS}.NullFirstStage"}
        params["cond_stage_config"] = {"target": f"{fifo.STANDINS}.PrecomputedText"}
        config_path = os.path.join(work, "tiny.yaml")
        with open(config_path, "w") as f:
            yaml.safe_dump(config, f)
        from omegaconf import OmegaConf

        model = instantiate_from_config(OmegaConf.load(config_path).pop("model"))
        theirs = model.model.diffusion_model
        from miga.backbones.videocrafter2_unet import match_projection_shapes

        theirs.load_state_dict(match_projection_shapes(state, theirs), strict=True)
        model.eval()
        rel = check_forward(torch, theirs, ours, n, shape, dim, args.seed)
        print("UNet forward with FreePCA, authors' vs miga's, same weights: max |diff| / std = "
              + ", ".join(f"{v:.2e} ({k})" for k, v in rel.items()))
        if not all(v <= LIMITS[k] for k, v in rel.items()):
            raise HarnessError(f"the authors' UNet and miga's disagree on one forward ({rel}; limits {LIMITS})")
        ckpt = os.path.join(work, "model.ckpt")
        torch.save({"state_dict": model.state_dict()}, ckpt)
        del model, theirs
        prompts = os.path.join(work, "prompts.txt")
        with open(prompts, "w") as f:
            f.write(PROMPT + "\n")

        freenoise.patch_reference(rec, entry, ddim_mod, common)
        orig_instantiate = entry.instantiate_from_config
        hooks: list = []

        def instantiate(cfg):
            model = orig_instantiate(cfg)
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
                "--height", str(8 * shape[0]), "--width", str(8 * shape[1]),
                "--unconditional_guidance_scale", "12.0", "--ddim_steps", str(steps), "--ddim_eta", "1.0",
                "--frames", str(n), "--prompt_file", prompts, "--fps", "28"]
        their_args = entry.get_parser().parse_args(argv)
        entry.seed_everything(their_args.seed)
        old_cwd = os.getcwd()
        os.chdir(work)
        try:
            entry.run_inference(their_args, 1, 0)
        finally:
            os.chdir(old_cwd)
            for h in hooks:
                h.remove()
    return dict(root=root, commit=commit, state=state, text=text, rec=rec, fifo=fifo,
                settings=dict(frames=n, window=16, stride=4, max_components=3, tau=250.0,
                              gamma=math.sqrt(math.log(64) / math.log(16)),
                              steps=steps, eta=1.0, guidance_scale=12.0, fps=28, use_scale=True,
                              latent_shape=[4, *shape], grids=[list(g) for g in grids], seed=args.seed,
                              their_seed=123, prompt=PROMPT, unet=fifo.TINY, forward_check=rel,
                              block_sites=[list(b) for b in BLOCK_SITES]))


def collect(result: dict, torch) -> tuple[dict, dict]:
    rec, s = result["rec"], result["settings"]
    n, steps = s["frames"], s["steps"]
    frames = lambda z: z[0].transpose(0, 1).contiguous()  # noqa: E731  [1, C, N, h, w] -> [N, C, h, w]
    script = [v for phase, v in rec.draws if phase[0] == "script"]
    if len(script) != 1 or tuple(script[0].shape) != (1, 1, *s["latent_shape"][:1], n, *s["latent_shape"][1:]):
        raise HarnessError(f"expected one x_T draw in the script, got {[tuple(v.shape) for v in script]}")
    keys, values = [], []
    x_t = script[0][0, 0].transpose(0, 1)
    for i in range(n):
        keys.append((i, steps, 0))
        values.append(x_t[i])
    per_step: dict = {}
    for phase, v in rec.draws:
        if phase[0] == "step":
            per_step.setdefault(phase[1], []).append(v)
        elif phase[0] != "script":
            raise HarnessError(f"a random draw outside every known phase ({phase})")
    if sorted(per_step) != list(range(steps)) or any(len(v) != 1 for v in per_step.values()):
        counts = {k: len(v) for k, v in per_step.items()}
        raise HarnessError(f"expected one noise_like draw per DDIM index, got {counts}")
    for index, (v,) in sorted(per_step.items()):
        for f, value in enumerate(frames(v)):
            keys.append((f, index + 1, 1))
            values.append(value)
    if len(rec.shuffles) != 3:
        raise HarnessError(f"{len(rec.shuffles)} shuffles, expected 3 (frame_index 16, 32, 48)")
    if [i for i, *_ in rec.steps] != list(range(steps - 1, -1, -1)):
        raise HarnessError(f"their sampler made {len(rec.steps)} steps, expected {steps}")
    states = torch.stack([frames(x) for *_, x in rec.steps])
    if rec.decoded is None or not torch.equal(frames(rec.decoded), states[-1]):
        raise HarnessError("the latents they decoded are not their last DDIM state")
    if (rec.unet_calls != 2 * steps or len(rec.unet_outputs) != 2
            or sorted(rec.blocks) != list(range(len(BLOCK_SITES)))):
        raise HarnessError("the UNet or block hooks did not fire as expected")
    tensors = {
        "noise.values": torch.stack(values).half().contiguous(),
        "noise.keys": torch.tensor(keys, dtype=torch.int64),
        "ref.x_T": frames(rec.steps[0][2]),
        "ref.states": states,
        "ref.eps_cond": frames(rec.unet_outputs[0]),
        "ref.eps_uncond": frames(rec.unet_outputs[1]),
        **{f"ref.block{j}.in": rec.blocks[j][0] for j in rec.blocks},
        **{f"ref.block{j}.out": rec.blocks[j][1] for j in rec.blocks},
    }
    if not torch.equal(tensors["noise.values"].float(), torch.stack(values)):
        raise HarnessError("a recorded draw is not exactly a float16 value")
    return tensors, dict(timesteps=[t for _, t, *_ in rec.steps], shuffles=len(rec.shuffles),
                         block_timesteps=[rec.blocks[j][2] for j in sorted(rec.blocks)])


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
            "settings": json.dumps(settings), "harness": "scripts/reference/freepca_vc2.py"}
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
        print(f"freepca_vc2: {e}", file=sys.stderr)
        return 2
    s = result["settings"]
    print(f"wrote {args.out} ({size} bytes): N = {s['frames']}, {s['steps']} steps (t = {s['timesteps']}), "
          f"grids {s['grids']}, commit {result['commit']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
