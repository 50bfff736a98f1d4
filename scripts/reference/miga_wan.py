"""Reference harness: the MIGA authors' Wan2.1 sampler against miga, on one tiny random Wan model.

Runs ``WanT2V.generate_by_miga`` of the official repository (github.com/XiaokunFeng/MIGA, imported from
``--reference PATH``, never copied) on a tiny randomly initialised Wan transformer, on the CPU, with text
embeddings fed directly (no T5), no VAE and no file output, once with self-reflection off and once on. It
records every random draw the authors' code makes under miga's noise key, the authors' intermediate and final
latents, and the same weights in miga's layout (diffusers ``WanTransformer3DModel``) into one small
safetensors fixture. ``tests/test_reference_miga_wan.py`` then checks miga against the fixture with no
reference code present.

Usage::

    python scripts/reference/miga_wan.py --reference PATH/TO/MIGA --out tests/fixtures/reference/miga_wan.safetensors

PATH is a checkout of the repository at the commit below (the folder holding ``wan_based/``, or
``wan_based/`` itself).

The tiny setting (the yaml ``configs/wan2.1_1.3B.yaml`` scaled down in size and steps only)
-------------------------------------------------------------------------------------------
- T = ``sampling_steps`` = 27 (yaml 54); ``saw_width`` L_zig = 7, ``temporal_memory_len`` m = 4 as in the yaml;
  ``long_iter_nums`` = T - 14 = 13 chunks (yaml 20). With ``long_iter_nums >= T - 14`` the fill loop stops
  on the head level (``steps_list[0] >= fifo_end_noise_index - 2``) and Stage 1 then appends a chunk on
  every pass: the full zigzag ladder of the paper (Eq. 3). With the yaml's 20 < 54 - 14 the queue only
  drains (see the report in scripts/reference/README.md).
- Hard-coded constants of the authors' code kept as they are: f_0 = 21 latents (81 frames), stride 10,
  K2 = 10, f_judg = 10, n_ref = 2, n_samp = 3, CFG 5, shift 5, the last 21 latents dropped.
- Latents 16 x 2 x 4 (frame 32 x 16 px, 2 tokens per frame after the 1x2x2 patch); transformer of 2 layers,
  2 heads of 12, ffn 32, text_dim 32, text_len 16; all weights drawn by this script (seed 0).
- Self-reflection on: ``resample_threshold = -1`` so every judgement after the first triggers a search
  (a drop ``prev - cur > -1``); the run checks that at least one search adopts a candidate.

What is patched in memory in the authors' code (nothing on disk)
----------------------------------------------------------------
1. ``wan.modules.model.flash_attention`` -> PyTorch scaled-dot-product attention in float32 (flash-attn
   needs CUDA and casts to bfloat16).
2. ``torch`` as seen by ``wan/modules/model.py``: ``repeat_interleave`` with the hard-coded 1,560 tokens per
   frame of ``WanAttentionBlock.forward_by_different_e`` (480x832) repeats by the actual tokens per frame (2).
3. ``Head.forward`` modulates every token with its own frame's time embedding (the authors' head broadcasts
   per-frame embeddings and ``unpatchify`` keeps frame 0's, so every frame is modulated with the first
   frame's timestep). The quirk is measured separately (metadata ``quirk_*``).
4. ``torch`` as seen by ``wan/text2video.py``: ``randn``/``randn_like`` return miga's keyed noise for the
   draw's key (table below) and record it; ``save`` (the resample statistics) is captured in memory.
5. ``WanT2V.decode_and_save_video`` records its latents instead of decoding (captures the base clip, the
   queue after filling, the Stage-1 output and the final video); ``tqdm`` is the identity.
6. ``WanT2V`` is built without ``__init__`` (no checkpoints): CPU device, the tiny model, a stub text encoder
   returning the fixed embeddings, a stub VAE with ``z_dim`` 16, float32.
Third-party imports the sampler never uses (thop, imageio via ``wan.utils.utils``, the T5/VAE modules, FSDP)
are replaced by stub modules so that ``wan/__init__.py`` is not executed.
7. ``wan.modules.model.sinusoidal_embedding_1d`` computes the timestep sinusoid in float32, as diffusers'
   ``Timesteps`` (miga's Wan backbone) does, instead of float64: at t = 999 the phases differ by ~3e-5 rad,
   which moves one forward pass by ~3e-5 of the output's std with these weights (metadata ``forward_rel``,
   ``float64_sinusoid``). This is a difference between diffusers' Wan and the original Wan code, not a
   sampler difference; with it patched the two layouts agree to ~1e-6.

Noise map (authors' draw -> miga key ``(latent index, level, purpose)``; level = T - steps done)
--------------------------------------------------------------------------------------------------
- ``torch.randn(16, 21, h, w, generator=seed_g)`` (base clip): frame i -> ``(i, T, "clip/init")``.
- ``torch.randn(16, T*L, h, w, generator=seed_g)`` (queue noise, never used): NaN (would show if used).
- ``randn_like`` in "process_0" (clip chunk c, latent j, noised to ``noise_index``):
  ``(c*L + j, noise_index, "miga/init")``.
- ``randn_like`` of a fresh fill chunk: ``(len(latent_list), T, "miga/fresh")``.
- ``randn_like`` of a self-reflection candidate (search after the k-th judgement, 0-based, sample
  ``adjust_sample_index``, building iteration j, latent i): ``(judged_index*L + j*L + i, T,
  "reflect{k}/{sample}/fresh")`` (nothing has left the queue while it fills).
- ``randn_like`` of a fresh Stage-1 chunk: ``(len(saved_latents) + len(latent_list), T, "miga/fresh")``.
- ``randn_like`` of the add & re-denoise pass, latent i: ``(i, 10, "miga/refine0")``.
- ``randn_like`` replacing a never-updated Stage-1 latent (``prev_sample`` None): NaN; never happens here.
Every tensor is miga's ``KeyedNoise(seed=0, [16, h, w]).one(index, level, purpose)``, so the two runs share
the draws they have in common.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import importlib
import inspect
import io
import json
import math
import os
import sys
import tempfile
import types
import warnings

import torch

REPO_URL = "https://github.com/XiaokunFeng/MIGA"
COMMIT = "b5a98a4544279e96bb94a8c68f1085e8f5da3581"

SEED = 0
STEPS = 27  # T (yaml: 54)
ZIGZAG = 7  # saw_width (yaml)
GUIDES = 4  # temporal_memory_len (yaml)
ITERS = STEPS - 14  # long_iter_nums: the smallest value that fills the whole zigzag ladder
SHIFT = 5.0
CFG = 5.0
F0 = 21  # latents per window (81 frames), hard-coded by the authors' code
K2 = 10  # Stage-2 steps, hard-coded
STRIDE = 10  # hard-coded
CHANNELS, LAT_H, LAT_W = 16, 2, 4
PIXEL_SIZE = (LAT_W * 8, LAT_H * 8)  # (width, height) as the authors' `size`
TEXT_LEN, TEXT_DIM = 16, 32
AUTHORS_MODEL = dict(model_type="t2v", patch_size=(1, 2, 2), text_len=TEXT_LEN, in_dim=CHANNELS, dim=24, ffn_dim=32,
                     freq_dim=256, text_dim=TEXT_DIM, out_dim=CHANNELS, num_heads=2, num_layers=2, qk_norm=True,
                     cross_attn_norm=True, eps=1e-6)
MIGA_MODEL = dict(patch_size=[1, 2, 2], num_attention_heads=2, attention_head_dim=12, in_channels=CHANNELS,
                  out_channels=CHANNELS, text_dim=TEXT_DIM, freq_dim=256, ffn_dim=32, num_layers=2,
                  cross_attn_norm=True, qk_norm="rms_norm_across_heads", eps=1e-6, rope_max_seq_len=1024)
THRESHOLD_ON = -1.0
THRESHOLD_OFF = 0.01  # unused (involve_resample False); the yaml value
SITES = ("clip", "queue", "init", "fill", "candidate", "stage1_none", "stage1_fresh", "refine")
"""The random draws of ``generate_by_miga``, in source order."""


class HarnessError(Exception):
    pass


# ---------------------------------------------------------------------------------------------------------
# importing the authors' code
# ---------------------------------------------------------------------------------------------------------
def _package(name: str, path: str) -> None:
    mod = types.ModuleType(name)
    mod.__path__ = [path]
    sys.modules[name] = mod


def _stub(name: str, **attrs) -> None:
    mod = types.ModuleType(name)
    for key, value in attrs.items():
        setattr(mod, key, value)
    sys.modules[name] = mod


def _unused(*_args, **_kwargs):
    raise HarnessError("a stubbed function of the reference code was called")


def import_reference(path: str):
    """``(text2video, model, fm_solvers_unipc)`` modules of the authors' Wan code at ``path``."""
    if not os.path.isdir(path):
        raise HarnessError(f"--reference {path}: no such folder")
    root = path if os.path.isfile(os.path.join(path, "wan", "text2video.py")) else os.path.join(path, "wan_based")
    wan = os.path.join(root, "wan")
    needed = ("text2video.py", "modules/model.py", "modules/attention.py", "utils/fm_solvers_unipc.py",
              "utils/fm_solvers.py")
    missing = [n for n in needed if not os.path.isfile(os.path.join(wan, n))]
    if missing:
        raise HarnessError(f"--reference {path} is not a checkout of {REPO_URL}: wan_based/wan/{missing[0]} missing")
    for name, sub in (("wan", ""), ("wan.modules", "modules"), ("wan.utils", "utils"),
                      ("wan.distributed", "distributed")):
        _package(name, os.path.join(wan, sub) if sub else wan)
    _stub("wan.distributed.fsdp", shard_model=_unused)
    _stub("wan.modules.t5", T5EncoderModel=_unused)
    _stub("wan.modules.vae", WanVAE=_unused)
    _stub("wan.utils.utils", cache_video=_unused, cache_image=_unused, str2bool=_unused)
    _stub("thop", profile=_unused)
    _stub("thop.utils", clever_format=_unused)
    try:
        import cv2  # noqa: F401
    except ImportError:
        _stub("cv2")
    model = importlib.import_module("wan.modules.model")
    unipc = importlib.import_module("wan.utils.fm_solvers_unipc")
    t2v = importlib.import_module("wan.text2video")
    hashes = {}
    for n in ("text2video.py", "modules/model.py", "utils/fm_solvers_unipc.py"):
        with open(os.path.join(wan, n), "rb") as f:
            hashes[n] = hashlib.sha256(f.read()).hexdigest()
    return t2v, model, unipc, hashes


class TorchView:
    """``torch`` with a few attributes replaced, installed as one module's global ``torch``."""

    def __init__(self, **overrides):
        self._overrides = overrides

    def __getattr__(self, name):
        if name in self._overrides:
            return self._overrides[name]
        return getattr(torch, name)


def sdpa_attention(q, k, v, q_lens=None, k_lens=None, dropout_p=0.0, softmax_scale=None, q_scale=None,
                   causal=False, window_size=(-1, -1), deterministic=False, dtype=None, version=None):
    """Stands in for the authors' flash attention: [B, L, heads, d] in and out, float32, keys past
    ``k_lens`` masked."""
    if q_scale is not None:
        q = q * q_scale
    qt, kt, vt = (t.transpose(1, 2).float() for t in (q, k, v))
    mask = None
    if k_lens is not None:
        keep = torch.arange(k.shape[1])[None, :] < k_lens.to(torch.long)[:, None]
        if not bool(keep.all()):
            mask = keep[:, None, None, :]
    out = torch.nn.functional.scaled_dot_product_attention(qt, kt, vt, attn_mask=mask, dropout_p=0.0,
                                                           is_causal=causal, scale=softmax_scale)
    return out.transpose(1, 2).to(q.dtype)


def sinusoid_float32(dim, position):
    """Patch 7: the timestep sinusoid computed in float32 as diffusers' ``Timesteps`` does (cos half first)."""
    half = dim // 2
    exponent = -math.log(10000) * torch.arange(0, half, dtype=torch.float32)
    freqs = torch.exp(exponent / half)
    args = position.float()[:, None] * freqs[None, :]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


def patch_model_module(model_mod, tokens_per_frame: int) -> None:
    """Patches 1 and 2 of the module docstring."""
    model_mod.flash_attention = sdpa_attention

    def repeat_interleave(x, repeats=None, dim=None, **kw):
        if isinstance(repeats, int) and repeats in (1559, 1560):  # int(L / (L / 1560)) may round down
            repeats = tokens_per_frame
        return torch.repeat_interleave(x, repeats=repeats, dim=dim, **kw)

    model_mod.torch = TorchView(repeat_interleave=repeat_interleave)


def head_per_frame(self, x, e):
    """Patch 3: the output head with each frame's own modulation (``e``: [frames, dim], tokens frame-major)."""
    mod = self.modulation.float() + e.float().unsqueeze(1)  # [F, 2, dim]
    per_frame = x.shape[1] // e.shape[0]
    shift = mod[:, 0].repeat_interleave(per_frame, dim=0)[None]
    scale = mod[:, 1].repeat_interleave(per_frame, dim=0)[None]
    return self.head(self.norm(x) * (1 + scale) + shift)


# ---------------------------------------------------------------------------------------------------------
# the tiny model, in both layouts
# ---------------------------------------------------------------------------------------------------------
def build_authors_model(model_mod, seed: int):
    torch.manual_seed(seed)
    net = model_mod.WanModel(**AUTHORS_MODEL).eval().requires_grad_(False)
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in sorted(net.named_parameters()):
            if name.endswith("bias"):
                p.copy_(0.05 * torch.randn(p.shape, generator=gen))
            elif "norm" in name:  # RMSNorm / affine LayerNorm gains
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=gen))
            elif name.endswith("modulation"):
                p.copy_(torch.randn(p.shape, generator=gen) / p.shape[-1] ** 0.5)
            else:
                fan_in = p[0].numel()
                p.copy_(torch.randn(p.shape, generator=gen) / fan_in ** 0.5)
    return net


def _block_key(rest: str) -> str:
    """One block parameter name from the authors' layout to diffusers'."""
    attn = {"self_attn": "attn1", "cross_attn": "attn2"}
    proj = {"q": "to_q", "k": "to_k", "v": "to_v", "o": "to_out.0", "norm_q": "norm_q", "norm_k": "norm_k"}
    parts = rest.split(".")
    if parts[0] in attn:
        return ".".join([attn[parts[0]], proj[parts[1]], *parts[2:]])
    if parts[0] == "norm3":  # the authors' affine cross-attention norm is diffusers' norm2
        return ".".join(["norm2", *parts[1:]])
    if parts[0] == "ffn":
        return ".".join(["ffn", {"0": "net.0.proj", "2": "net.2"}[parts[1]], *parts[2:]])
    if parts[0] == "modulation":
        return "scale_shift_table"
    raise HarnessError(f"unmapped block parameter {rest}")


def to_miga_layout(authors_state: dict) -> dict:
    """The authors' ``WanModel`` state dict as diffusers ``WanTransformer3DModel`` weights."""
    top = {"text_embedding.0": "condition_embedder.text_embedder.linear_1",
           "text_embedding.2": "condition_embedder.text_embedder.linear_2",
           "time_embedding.0": "condition_embedder.time_embedder.linear_1",
           "time_embedding.2": "condition_embedder.time_embedder.linear_2",
           "time_projection.1": "condition_embedder.time_proj",
           "head.head": "proj_out", "patch_embedding": "patch_embedding"}
    out = {}
    for name, value in authors_state.items():
        if name.startswith("blocks."):
            _, i, rest = name.split(".", 2)
            out[f"blocks.{i}.{_block_key(rest)}"] = value
        elif name == "head.modulation":
            out["scale_shift_table"] = value
        else:
            module, leaf = name.rsplit(".", 1)
            if module not in top:
                raise HarnessError(f"unmapped parameter {name}")
            out[f"{top[module]}.{leaf}"] = value
    return {k: v.detach().clone().contiguous() for k, v in out.items()}


def build_miga_transformer(weights: dict):
    from diffusers import WanTransformer3DModel

    net = WanTransformer3DModel(**MIGA_MODEL)
    net.load_state_dict(weights, strict=True)
    return net.eval().requires_grad_(False)


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| / std(b)."""
    a, b = a.double(), b.double()
    return float((a - b).abs().max() / b.std())


def forward_check(authors, miga_net, cond_ctx, cond_padded, seed: int) -> dict:
    """One forward of both models: all frames at one timestep (authors' scalar path) and per-frame
    timesteps (``forward_by_different_e``, patched head)."""
    gen = torch.Generator().manual_seed(seed + 2)
    x = torch.randn(CHANNELS, F0, LAT_H, LAT_W, generator=gen)
    seq_len = F0 * (LAT_H // 2) * (LAT_W // 2)
    t_single = torch.tensor([999], dtype=torch.long)
    t_frames = torch.randint(0, 1000, (F0,), generator=gen)
    with torch.no_grad():
        a1 = authors([x], t=t_single, context=[cond_ctx], seq_len=seq_len)[0]
        a2 = authors([x], t=t_frames, context=[cond_ctx], seq_len=seq_len)[0]
        m1 = miga_net(hidden_states=x[None], timestep=t_single.float(), encoder_hidden_states=cond_padded[None],
                      return_dict=False)[0][0]
        per_token = t_frames.float().repeat_interleave(seq_len // F0)[None]
        m2 = miga_net(hidden_states=x[None], timestep=per_token, encoder_hidden_states=cond_padded[None],
                      return_dict=False)[0][0]
    return {"x": x, "t_single": t_single, "t_frames": t_frames, "out_single": a1, "out_frames": a2,
            "rel_single": rel(m1, a1), "rel_frames": rel(m2, a2)}


# ---------------------------------------------------------------------------------------------------------
# running generate_by_miga with recorded noise
# ---------------------------------------------------------------------------------------------------------
class Recorder:
    """Replaces ``torch.randn``/``randn_like``/``save`` inside ``wan/text2video.py`` (patch 4) and
    ``decode_and_save_video`` (patch 5); keeps every draw under its miga key and the captured states."""

    def __init__(self, t2v_mod, keyed):
        self.keyed, self.table, self.order = keyed, {}, []
        self.captured: dict[str, object] = {}
        self.decodes: list[list[torch.Tensor]] = []
        fn = t2v_mod.WanT2V.generate_by_miga
        lines, first = inspect.getsourcelines(fn)
        self.site_lines = [first + i for i, text in enumerate(lines) if "torch.randn" in text]
        if len(self.site_lines) != len(SITES):
            raise HarnessError(f"generate_by_miga makes {len(self.site_lines)} random draws, expected "
                               f"{len(SITES)}: not the reference commit {COMMIT[:10]}")
        self.code = fn.__code__

    def site(self, frame) -> str:
        if frame.f_code is not self.code:
            raise HarnessError("a random draw outside generate_by_miga")
        line = frame.f_lineno
        best = max((i for i, start in enumerate(self.site_lines) if start <= line), default=None)
        if best is None:
            raise HarnessError(f"unexpected random draw at line {line}")
        return SITES[best]

    def key_draw(self, index: int, level: int, purpose: str) -> torch.Tensor:
        key = (int(index), int(level), purpose)
        value = self.keyed.one(*key)
        if key in self.table and not torch.equal(self.table[key], value):
            raise HarnessError(f"key {key} drawn twice with different values")
        if key not in self.table:
            self.order.append(key)
        self.table[key] = value
        return value

    def randn(self, *size, generator=None, dtype=None, device=None, **_kw):
        frame = sys._getframe(1)
        site = self.site(frame)
        loc = frame.f_locals
        shape = tuple(size[0]) if len(size) == 1 and isinstance(size[0], (tuple, list)) else tuple(size)
        if site == "clip":
            top = loc["sampling_steps"]
            return torch.stack([self.key_draw(i, top, "clip/init") for i in range(shape[1])], dim=1)
        return torch.full(shape, float("nan"))  # the queue noise the sampler never reads

    def randn_like(self, x, **_kw):
        frame = sys._getframe(1)
        site = self.site(frame)
        loc = frame.f_locals
        T, L = loc["sampling_steps"], loc["saw_width"]
        if site == "init":
            value = self.key_draw(loc["chunk_index"] * L + loc["chunk_index_inner"], loc["noise_index"], "miga/init")
        elif site == "fill":
            it, inner = loc["timesteps_iter_index"], loc["chunk_index_inner"]
            if inner == 0 and it == 0:
                self.captured["queue_init"] = [t.clone() for t in loc["latent_list"]]
            if inner == 0 and it == 1:
                self.captured["queue_pass0"] = [t.clone() for t in loc["latent_list"]]
            value = self.key_draw(len(loc["latent_list"]), T, "miga/fresh")
        elif site == "candidate":
            check = len(loc["sim_result"]) - 1
            index = (loc["judged_index"] + loc["adjust_timesteps_iter_index"]) * L + loc["chunk_index_inner"]
            value = self.key_draw(index, T, f"reflect{check}/{loc['adjust_sample_index']}/fresh")
        elif site == "stage1_fresh":
            value = self.key_draw(len(loc["saved_latents"]) + len(loc["latent_list"]), T, "miga/fresh")
        elif site == "refine":
            if "stage2" not in self.captured:
                self.captured["stage2"] = [t.clone() for t in loc["initial_latent_list"]]
            value = self.key_draw(loc["frame_index"], loc["noise_index"], "miga/refine0")
        else:  # stage1_none: a latent no window updated
            self.captured.setdefault("nan_draws", []).append(site)
            return torch.full_like(x, float("nan"))
        return value.unsqueeze(1).to(x.dtype)

    def save(self, obj, path, *args, **kw):
        self.captured["resample_info"] = obj

    def decode(self, _t2v, latents, save_file):
        if os.path.basename(save_file) == "saved_video_final_long.mp4":
            frame = sys._getframe(1)
            while frame is not None and frame.f_code is not self.code:
                frame = frame.f_back
            self.captured["final_full"] = [t.clone() for t in frame.f_locals["latent_list"]]
        self.decodes.append([t.clone() for t in latents])


class TextStub:
    def __init__(self, embeddings: dict):
        self.embeddings = embeddings
        self.model = torch.nn.Identity()

    def __call__(self, texts, device):
        return [self.embeddings[t].to(device) for t in texts]


def run_authors(t2v_mod, authors_model, texts: dict, keyed, *, reflection: bool) -> dict:
    """``generate_by_miga`` on the CPU; returns the captured latents and draws."""
    rec = Recorder(t2v_mod, keyed)
    t2v_mod.torch = TorchView(randn=rec.randn, randn_like=rec.randn_like, save=rec.save)
    t2v_mod.tqdm = lambda it, *a, **k: it
    t2v_mod.WanT2V.decode_and_save_video = lambda self, latents, save_file: rec.decode(self, latents, save_file)
    pipe = t2v_mod.WanT2V.__new__(t2v_mod.WanT2V)
    pipe.device = torch.device("cpu")
    pipe.rank = 0
    pipe.t5_cpu = False
    pipe.num_train_timesteps = 1000
    pipe.param_dtype = torch.float32
    pipe.text_encoder = TextStub(texts)
    pipe.vae = types.SimpleNamespace(model=types.SimpleNamespace(z_dim=CHANNELS))
    pipe.vae_stride = (4, 8, 8)
    pipe.patch_size = (1, 2, 2)
    pipe.sp_size = 1
    pipe.model = authors_model
    pipe.sample_neg_prompt = "negative"
    with tempfile.TemporaryDirectory() as tmp:
        setting = types.SimpleNamespace(
            exp_name="tiny", save_dir=tmp, saw_width=ZIGZAG, sampling_steps=STEPS, long_iter_nums=ITERS,
            temporal_memory_len=GUIDES, involve_resample=reflection,
            resample_threshold=THRESHOLD_ON if reflection else THRESHOLD_OFF, save_inter_results=True)
        log = io.StringIO()
        with contextlib.redirect_stdout(log):
            pipe.generate_by_miga("prompt", size=PIXEL_SIZE, frame_num_initial_wan=4 * (F0 - 1) + 1, shift=SHIFT,
                                  sample_solver="unipc", sampling_steps=STEPS, guide_scale=CFG, n_prompt="negative",
                                  seed=SEED, offload_model=False, long_generate_setting=setting)
    if rec.captured.get("nan_draws"):
        raise HarnessError(f"the reference drew noise this harness does not map: {rec.captured['nan_draws']}")
    if len(rec.decodes) != 4:
        raise HarnessError(f"expected 4 decodes (clip, filled queue, stage 1, final), got {len(rec.decodes)}")
    clip, filled, stage1, final = rec.decodes
    frames = lambda items: torch.stack([t.squeeze(1) for t in items])  # noqa: E731 - [16, 1, h, w] -> [N, 16, h, w]
    info = rec.captured.get("resample_info", {})
    out = {
        "clip": clip[0].permute(1, 0, 2, 3).contiguous(),
        "queue_init": frames(rec.captured["queue_init"]),
        "queue_pass0": frames(rec.captured["queue_pass0"]),
        "queue_fill": frames(filled[:-ZIGZAG]),  # the chunk appended at the loop's break has had no pass
        "stage1": frames(stage1),
        "stage2": frames(rec.captured["stage2"]),
        "final": frames(rec.captured["final_full"]),
        "final_dropped": frames(final),
    }
    stats = {"sim_result": [float(s) for s in info.get("sim_result", [])],
             "resample_ratio": [int(v) for v in info.get("resample_ratio", [])]}
    if any(torch.isnan(v).any() for v in out.values()):
        raise HarnessError("NaN in the reference's latents: an unmapped random draw was used")
    return {"latents": out, "table": rec.table, "order": rec.order, "stats": stats, "log": log.getvalue()}


# ---------------------------------------------------------------------------------------------------------
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reference", required=True, help="checkout of github.com/XiaokunFeng/MIGA at " + COMMIT[:10])
    ap.add_argument("--out", default="tests/fixtures/reference/miga_wan.safetensors")
    ap.add_argument("--check", action="store_true", help="after writing, run miga against the fixture")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    try:
        return _main(args)
    except HarnessError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


def _main(args) -> int:
    from safetensors.torch import save_file

    from miga.engine.rng import KeyedNoise

    t2v_mod, model_mod, unipc_mod, hashes = import_reference(args.reference)
    patch_model_module(model_mod, tokens_per_frame=(LAT_H // 2) * (LAT_W // 2))
    original_head = model_mod.Head.forward
    model_mod.Head.forward = head_per_frame

    authors = build_authors_model(model_mod, SEED)
    weights = to_miga_layout(authors.state_dict())
    miga_net = build_miga_transformer(weights)
    gen = torch.Generator().manual_seed(SEED + 3)
    cond_ctx = torch.randn(5, TEXT_DIM, generator=gen)
    uncond_ctx = torch.randn(3, TEXT_DIM, generator=gen)
    pad = lambda c: torch.cat([c, c.new_zeros(TEXT_LEN - c.shape[0], TEXT_DIM)])  # noqa: E731

    # 1. one forward pass must agree before anything else
    unpatched = forward_check(authors, miga_net, cond_ctx, pad(cond_ctx), SEED)
    print(f"forward with the authors' float64 timestep sinusoid: max|diff|/std = {unpatched['rel_single']:.2e} "
          f"(one timestep), {unpatched['rel_frames']:.2e} (per-frame)")
    model_mod.sinusoidal_embedding_1d = sinusoid_float32
    probe = forward_check(authors, miga_net, cond_ctx, pad(cond_ctx), SEED)
    print(f"forward, one timestep: max|diff|/std = {probe['rel_single']:.2e}; "
          f"per-frame timesteps (patched head): {probe['rel_frames']:.2e}")
    if max(probe["rel_single"], probe["rel_frames"]) > 1e-5:
        raise HarnessError("the two layouts of the tiny model disagree on one forward pass; stopping")

    # 2. the authors' sampler, reflection off and on, per-frame head
    sched = unipc_mod.FlowUniPCMultistepScheduler(num_train_timesteps=1000, shift=1, use_dynamic_shifting=False)
    sched.set_timesteps(STEPS, device="cpu", shift=SHIFT)
    if len(set(sched.timesteps.tolist())) != STEPS:
        raise HarnessError("duplicate integer timesteps: the reference would take wrong step indices")
    keyed = KeyedNoise(SEED, (CHANNELS, LAT_H, LAT_W))
    texts = {"prompt": cond_ctx, "negative": uncond_ctx}
    runs = {}
    for name, reflection in (("off", False), ("on", True)):
        runs[name] = run_authors(t2v_mod, authors, texts, keyed, reflection=reflection)
        st = runs[name]["stats"]
        print(f"reflection {name}: {len(runs[name]['table'])} draws; sim_result {st['sim_result']}; "
              f"[passes, triggered, adopted] = {st['resample_ratio']}")
    ratio = runs["on"]["stats"]["resample_ratio"]
    if len(ratio) != 3 or ratio[1] < 1 or ratio[2] < 1:
        raise HarnessError(f"reflection run triggered/adopted {ratio[1:]} searches; need >= 1 of each")
    for k in ("clip", "queue_init", "queue_pass0"):
        if not torch.equal(runs["off"]["latents"][k], runs["on"]["latents"][k]):
            raise HarnessError(f"{k} differs between the two runs before any reflection")

    # 3. the head quirk: the same runs with the authors' own head
    model_mod.Head.forward = original_head
    quirk = {}
    for name, reflection in (("off", False), ("on", True)):
        q = run_authors(t2v_mod, authors, texts, keyed, reflection=reflection)
        quirk[name] = {"final": rel(q["latents"]["final"], runs[name]["latents"]["final"]),
                       "stage1": rel(q["latents"]["stage1"], runs[name]["latents"]["stage1"]),
                       "resample_ratio": q["stats"]["resample_ratio"]}
        print(f"head quirk (frame 0's modulation for all frames), reflection {name}: final max|diff|/std = "
              f"{quirk[name]['final']:.3f}, stage 1 {quirk[name]['stage1']:.3f}")
    model_mod.Head.forward = head_per_frame

    # 4. the fixture
    keys = []
    for name in ("off", "on"):
        keys += [k for k in runs[name]["order"] if k not in keys]
    table = {**runs["off"]["table"], **runs["on"]["table"]}
    tensors = {f"weights/{k}": v for k, v in weights.items()}
    tensors["text/cond"] = pad(cond_ctx)
    tensors["text/uncond"] = pad(uncond_ctx)
    tensors["schedule/sigmas"] = sched.sigmas.float().clone()
    tensors["schedule/timesteps"] = sched.timesteps.clone()
    tensors["noise/table"] = torch.stack([table[k] for k in keys])
    for k in ("x", "t_single", "t_frames", "out_single", "out_frames"):
        tensors[f"probe/{k}"] = probe[k].contiguous()
    for k in ("clip", "queue_init", "queue_pass0"):
        tensors[f"ref/{k}"] = runs["off"]["latents"][k]
    for name in ("off", "on"):
        for k in ("queue_fill", "stage1", "stage2", "final"):
            tensors[f"ref_{name}/{k}"] = runs[name]["latents"][k]
    config = {"steps": STEPS, "zigzag_width": ZIGZAG, "guides": GUIDES, "long_iter_nums": ITERS, "shift": SHIFT,
              "guidance_scale": CFG, "native_frames": F0, "stage2_steps": K2, "stride": STRIDE,
              "judge_steps": 10, "ref_chunks": 2, "samples": 3, "threshold_on": THRESHOLD_ON,
              "threshold_off": THRESHOLD_OFF, "seed": SEED, "latent_shape": [CHANNELS, LAT_H, LAT_W],
              "pixel_size_wh": list(PIXEL_SIZE), "text_len": TEXT_LEN, "dropped_tail": 21,
              "authors_model": {k: list(v) if isinstance(v, tuple) else v for k, v in AUTHORS_MODEL.items()},
              "miga_model": MIGA_MODEL}
    meta = {
        "reference_repository": REPO_URL, "reference_commit": COMMIT, "reference_sha256": json.dumps(hashes),
        "harness": "scripts/reference/miga_wan.py", "config": json.dumps(config),
        "noise_keys": json.dumps([list(k) for k in keys]),
        "noise_runs": json.dumps({name: [keys.index(k) for k in runs[name]["order"]] for name in ("off", "on")}),
        "stats_off": json.dumps(runs["off"]["stats"]), "stats_on": json.dumps(runs["on"]["stats"]),
        "forward_rel": json.dumps({"single": probe["rel_single"], "frames": probe["rel_frames"],
                                   "float64_sinusoid": {"single": unpatched["rel_single"],
                                                        "frames": unpatched["rel_frames"]}}),
        "quirk_head": json.dumps(quirk),
    }
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    save_file({k: v.contiguous() for k, v in tensors.items()}, args.out, metadata=meta)
    size = os.path.getsize(args.out)
    print(f"wrote {args.out} ({size / 1e6:.2f} MB, {len(keys)} noise draws)")
    if size > 2_000_000:
        raise HarnessError(f"fixture is {size} bytes, over the 2 MB budget")
    if args.check:
        here = os.path.dirname(os.path.abspath(__file__))
        spec = importlib.util.spec_from_file_location(
            "reference_test", os.path.join(here, "..", "..", "tests", "test_reference_miga_wan.py"))
        test = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(test)
        test.report(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
