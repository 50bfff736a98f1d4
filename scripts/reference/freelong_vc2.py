"""Reference harness: FreeLong's own VideoCrafter2 sampler on a tiny random UNet, recorded as a fixture.

    python scripts/reference/freelong_vc2.py --reference PATH \
        --out tests/fixtures/reference/freelong_vc2.safetensors

``PATH`` is a checkout of https://github.com/aniki-ly/FreeLong (the fixture in the repository was made at
commit 98cf95e, the one ``shared/spec/baselines.md`` read); the code run is ``PATH/examples/VideoCrafter2``.
Nothing of it is copied here or into miga: this script imports the authors' modules and runs their entry script
``scripts/evaluation/inference.py`` (its ``get_parser`` and ``run_inference``: FreeNoise's rescheduling of
``x_T_total`` with their hard-coded 16 and 4, ``funcs.batch_ddim_sampling``, LVDM's ``DDIMSampler``, the
``UNetModel`` of ``lvdm/modules/networks/openaimodel3d.py`` whose temporal blocks are FreeLong's
``TemporalBasicTransformerBlock`` of ``lvdm/modules/attention.py``: local (masked) and global attention, blended
by ``combine`` with ``freelong_utils.freq_mix_3d`` and ``gaussian_low_pass_filter``). The in-memory changes are
``freenoise_vc2.py``'s (``.cuda()``, ``register_buffer``, seeded and recorded ``torch.randn`` in ``lvdm.common``,
the sampler and the entry script, recorded ``random.shuffle`` in the entry script, ``save_videos`` off,
gradient checkpointing a plain call, ``fifo_vc2.py``'s stand-ins for the text and first stages and for unused
imports), plus three for FreeLong's constants, which the code fixes for 128 frames at 320x512 (its README:
"Modify this parameters should also modify the length local_masks"):

- every ``CrossAttention.local_mask`` is rebuilt by their own ``get_local_mask(N, 16)`` (built for 128 frames in
  ``__init__``; the strict band clipped to N frames is the same thing as the first N rows and columns);
- every ``TemporalBasicTransformerBlock`` gets entries for the tiny model's grids in its ``d2hw`` table (tokens
  per frame -> (h, w)) and ``filters`` made by their ``gaussian_low_pass_filter([N, h, w], d_s=0.25,
  d_t=0.25)``, as ``__init__`` makes them for (128, 40, 64) ... (128, 5, 8);
- their ``combine`` sends the finest level (2560 tokens per frame at 320x512) to the local branch by the literal
  ``d != 2560``. The tiny model's finest level has h w = 32 tokens per frame; a wrapper hands ``combine`` those
  rows tiled to 2560 (so their own ``else`` branch runs) and keeps the first 32 rows of what it returns. Other
  levels go to ``combine`` unchanged.

Their run: the flags of ``examples/VideoCrafter2/scripts/run_text2video.sh`` (``--mode base --ddim_eta 1.0
--unconditional_guidance_scale 12.0 --fps 28 --seed 123 --n_samples 1 --bs 1``) with ``--frames 32`` (the local
band +-8 restricts, and the rescheduling makes four groups of 4), ``--ddim_steps 10`` (t = 1, 101, ..., 901)
and 32x64 pixels: 4x8 latents, not square, so a swapped h and w in the spectral blend would show. The tiny UNet
is ``fifo_vc2.py``'s (two levels; ``attention_resolutions`` [1]), with the same weights: its temporal levels
are 4x8 (``init_attn``, the input and output blocks: FreeLong's finest level, local only) and 2x4 (the middle
block: global and local blended by the 3-D Gaussian low-pass over (N, h, w) = (32, 2, 4)). Before the run, one
forward of both UNets with FreeLong (theirs always; miga's with ``SpectralBlendAttention``) must agree to 1e-6
in float64 (their blend and miga's run the FFT in float32).

Noise map (their draw -> miga's key; T = 10 steps; miga's level of DDIM index i is i + 1):

==============================================================  ==================================================
their draw                                                      miga
==============================================================  ==================================================
``inference.py`` ``x_T_total = torch.randn(...)``, frame i      ``(i, T, "full/init")`` (before the rescheduling)
``random.shuffle(list_index)`` for ``frame_index`` = 16 + 4 g   ``rule.perms[g]`` = ``list_index - (frame_index -
                                                                16)``, fed to miga's rule by the test's stub
``p_sample_ddim`` ``noise_like`` at DDIM index i, frame f       ``(f, i + 1, "full/eta")``
==============================================================  ==================================================

The fixture: ``unet.*`` (int8, times ``2**exponent``), ``text.cond``/``text.uncond``, ``noise.values``
``[D, C, h, w]`` with ``noise.keys`` ``[D, 3]``, ``rule.perms`` ``[G, 4]``; the authors' ``ref.x_T``,
``ref.states`` ``[T, N, C, h, w]`` (after each step; the last is what they decode), ``ref.eps_cond`` /
``ref.eps_uncond`` (the first step's two UNet outputs) and ``ref.block{j}.in`` / ``.out`` (input and output of
the temporal transformer blocks of ``BLOCK_SITES``, the rows kept given there); metadata: repository, commit,
SHA-256 of the files run, settings, the forward check, weight exponents.
``tests/test_reference_freelong_vc2.py`` compares miga against it.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import os
import sys
import tempfile

REPOSITORY = "https://github.com/aniki-ly/FreeLong"
KNOWN_COMMIT = "98cf95e"
SUBDIR = "examples/VideoCrafter2"
ENTRY = "scripts/evaluation/inference.py"
CONFIG = "configs/inference_t2v_512_v2.0.yaml"
REQUIRED = (ENTRY, "scripts/evaluation/funcs.py", "scripts/run_text2video.sh", CONFIG,
            "lvdm/models/samplers/ddim.py", "lvdm/models/utils_diffusion.py", "lvdm/models/ddpm3d.py",
            "lvdm/modules/attention.py", "lvdm/modules/freelong_utils.py", "lvdm/modules/networks/openaimodel3d.py")
PROMPT = "a red fox trotting through fresh snow"
PURPOSES = ("full/init", "full/eta")
HERE = os.path.dirname(os.path.abspath(__file__))
FINEST_TOKENS_AT_512 = 2560
BLOCK_SITES = (("init_attn.0.transformer_blocks.0", "first", 2),
               ("input_blocks.1.2.transformer_blocks.0", "last", 2),
               ("middle_block.2.transformer_blocks.0", "first", None))
"""Temporal transformer blocks whose input and output are recorded (same dotted names in miga's UNet): in the
first UNet call (step 1, conditional) or the first call of the last step; the first ``rows`` rows (spatial
sites; the local-only levels are row by row) or all (None: the middle block's blend mixes rows)."""
LIMITS = {"float32": 1e-4, "float64": 1e-6}


class HarnessError(Exception):
    """A one-line reason to stop."""


def load_sibling(name: str):
    spec = importlib.util.spec_from_file_location(f"miga_reference_{name}", os.path.join(HERE, f"{name}.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--reference", required=True, help="checkout of aniki-ly/FreeLong (the repository root)")
    p.add_argument("--out", default="tests/fixtures/reference/freelong_vc2.safetensors")
    p.add_argument("--commit", default=None, help="the checkout's commit when PATH is not a git work tree")
    p.add_argument("--seed", type=int, default=0, help="weights, text embeddings and noise")
    p.add_argument("--frames", type=int, default=32, help="N (their --frames; (N - 16) % 4 == 0)")
    p.add_argument("--steps", type=int, default=10, help="DDIM steps (a divisor of 1000)")
    p.add_argument("--latent-height", type=int, default=4)
    p.add_argument("--latent-width", type=int, default=8)
    p.add_argument("--max-bytes", type=int, default=2_000_000)
    return p.parse_args(argv)


def check_reference(path: str) -> tuple[str, str]:
    repo = os.path.abspath(path)
    root = os.path.join(repo, SUBDIR)
    missing = [f for f in REQUIRED if not os.path.isfile(os.path.join(root, f))]
    if not os.path.isdir(repo) or missing:
        raise HarnessError(f"--reference {path} is not a FreeLong checkout ({REPOSITORY}): missing "
                           f"{', '.join(os.path.join(SUBDIR, f) for f in missing) or 'the folder'}")
    return repo, root


def file_digests(root: str) -> dict:
    return {os.path.join(SUBDIR, f): hashlib.sha256(open(os.path.join(root, f), "rb").read()).hexdigest()
            for f in REQUIRED}


# ---------------------------------------------------------------- FreeLong's constants for the tiny model
def adapt_constants(model, frames: int, grids: list, finest: tuple) -> None:
    """The three in-memory changes of the module docstring, on their built model."""
    import lvdm.modules.attention as attention
    from lvdm.modules.freelong_utils import gaussian_low_pass_filter

    finest_tokens = finest[0] * finest[1]
    blocks = 0
    for module in model.modules():
        if isinstance(module, attention.CrossAttention):
            module.local_mask = module.get_local_mask(frames, 16)
        if isinstance(module, attention.TemporalBasicTransformerBlock):
            blocks += 1
            for h, w in grids:
                module.d2hw[h * w] = (h, w)
                module.filters[h * w] = gaussian_low_pass_filter([frames, h, w], d_s=0.25, d_t=0.25)
    if not blocks:
        raise HarnessError("their UNet has no TemporalBasicTransformerBlock: not FreeLong's attention.py?")
    block_class = attention.TemporalBasicTransformerBlock
    original = block_class.combine
    if getattr(original, "finest_wrapper", False):
        return

    def combine(self, global_feat, local_feat, video_length):
        if global_feat.shape[0] != finest_tokens:
            return original(self, global_feat, local_feat, video_length)
        reps = FINEST_TOKENS_AT_512 // finest_tokens + 1
        tile = (lambda t: t.repeat(reps, 1, 1)[:FINEST_TOKENS_AT_512])  # noqa: E731
        return original(self, tile(global_feat), tile(local_feat), video_length)[:finest_tokens]

    combine.finest_wrapper = True
    block_class.combine = combine


def instrument_model(rec, model, steps: int) -> list:
    unet = model.model.diffusion_model
    calls = {"first": 0, "last": 2 * (steps - 1)}
    rec.unet_calls = 0
    rec.blocks = {}

    def on_unet(module, args, out):
        if len(rec.unet_outputs) < 2:
            rec.unet_outputs.append(out.detach().clone())
        rec.unet_calls += 1

    def on_block(j, when, rows):
        def hook(module, args, kwargs, out):
            if rec.unet_calls == calls[when] and j not in rec.blocks:
                rec.blocks[j] = (args[0][:rows].detach().clone(), out[:rows].detach().clone())
        return hook

    hooks = [unet.register_forward_hook(on_unet)]
    for j, (name, when, rows) in enumerate(BLOCK_SITES):
        hooks.append(unet.get_submodule(name).register_forward_hook(on_block(j, when, rows), with_kwargs=True))
    return hooks


def check_forward(torch, theirs, ours, frames: int, shape, context_dim: int, seed: int) -> dict:
    """One forward of both UNets with FreeLong (same input, t = 731, fps 28): max |diff| / std, float32 and
    float64 (copies; their float32 GroupNorm and timestep embedding switched to float64 for that check)."""
    import copy

    import lvdm.basics as basics
    import lvdm.modules.networks.openaimodel3d as net_mod
    from miga.backbones import videocrafter2_unet
    from miga.baselines.attention import FreeLongConfig, SpectralBlendAttention
    from miga.baselines.hooks import attention_policy

    policy = SpectralBlendAttention(FreeLongConfig(window=16))
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
    repo, root = check_reference(args.reference)
    freenoise = load_sibling("freenoise_vc2")
    fifo = freenoise.load_fifo_harness()
    try:
        commit = freenoise.reference_commit(repo, args.commit)
    except freenoise.HarnessError as e:
        raise HarnessError(str(e).replace(freenoise.KNOWN_COMMIT, KNOWN_COMMIT)) from None
    import torch

    torch.set_num_threads(1)
    n, steps, shape = args.frames, args.steps, (args.latent_height, args.latent_width)
    if n <= 16 or (n - 16) % 4 or 1000 % steps or shape[0] % 2 or shape[1] % 2:
        raise HarnessError("need frames > 16 with (frames - 16) % 4 == 0, steps dividing 1000, even latent sizes")
    grids = [shape, (shape[0] // 2, shape[1] // 2)]
    if shape[0] * shape[1] >= FINEST_TOKENS_AT_512:
        raise HarnessError("the tiny model's finest level must have fewer than 2560 tokens per frame")
    fifo.install_standins(torch)
    try:
        entry = freenoise.import_entry(root, ENTRY, "freelong_inference")
    except freenoise.HarnessError as e:
        raise HarnessError(str(e)) from None
    import lvdm.common as common
    import lvdm.models.samplers.ddim as ddim_mod
    from utils.utils import instantiate_from_config

    common.ckpt = lambda func, *inputs: func(*inputs)
    rec = freenoise.Recorder(torch, args.seed)
    gen = torch.Generator().manual_seed(args.seed + 2)
    dim = fifo.TINY["context_dim"]
    text = {PROMPT: torch.randn(77, dim, generator=gen).half().float(),
            "": torch.randn(77, dim, generator=gen).half().float()}
    sys.modules[fifo.STANDINS].PrecomputedText.TEXT = text
    ours = fifo.miga_weights(torch, args.seed)
    state = {k: v.detach().clone() for k, v in ours.state_dict().items()}

    with tempfile.TemporaryDirectory(prefix="freelong_vc2_") as work:
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
        adapt_constants(model, n, grids, shape)
        theirs = model.model.diffusion_model
        from miga.backbones.videocrafter2_unet import match_projection_shapes

        theirs.load_state_dict(match_projection_shapes(state, theirs), strict=True)
        model.eval()
        rel = check_forward(torch, theirs, ours, n, shape, dim, args.seed)
        print("UNet forward with FreeLong, authors' vs miga's, same weights: max |diff| / std = "
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
            adapt_constants(model, n, grids, shape)
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
                settings=dict(frames=n, noise_window=16, noise_stride=4, local_window=16, d_s=0.25, d_t=0.25,
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
    groups = list(range(16, n, 4))
    if len(rec.shuffles) != len(groups):
        raise HarnessError(f"{len(rec.shuffles)} shuffles, expected {len(groups)}")
    perms = torch.tensor([[v - (i - 16) for v in shuffled] for i, shuffled in zip(groups, rec.shuffles)])
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
        "rule.perms": perms.to(torch.int64),
        "ref.x_T": frames(rec.steps[0][2]),
        "ref.states": states,
        "ref.eps_cond": frames(rec.unet_outputs[0]),
        "ref.eps_uncond": frames(rec.unet_outputs[1]),
        **{f"ref.block{j}.in": rec.blocks[j][0] for j in rec.blocks},
        **{f"ref.block{j}.out": rec.blocks[j][1] for j in rec.blocks},
    }
    if not torch.equal(tensors["noise.values"].float(), torch.stack(values)):
        raise HarnessError("a recorded draw is not exactly a float16 value")
    return tensors, dict(timesteps=[t for _, t, *_ in rec.steps])


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
            "settings": json.dumps(settings), "harness": "scripts/reference/freelong_vc2.py"}
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
        print(f"freelong_vc2: {e}", file=sys.stderr)
        return 2
    s = result["settings"]
    print(f"wrote {args.out} ({size} bytes): N = {s['frames']}, {s['steps']} steps (t = {s['timesteps']}), "
          f"grids {s['grids']}, commit {result['commit']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
