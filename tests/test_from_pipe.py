"""``miga.LongVideoPipeline.from_pipe`` on diffusers pipelines a user already loaded (WanPipeline,
SkyReelsV2DiffusionForcingPipeline, TextToVideoSDPipeline, the VideoCrafter2 community pipeline), built from
tiny random components: the user's pipeline is left exactly as it was (modules, dtypes, devices, flags,
hooks, weights, its own output), the output layouts follow diffusers', frames stream to the callback, prompts
and seeds are taken as documented, and bad input gets one line. Nothing is downloaded."""

from __future__ import annotations

import numpy as np
import pytest
import torch

diffusers = pytest.importorskip("diffusers")
pytest.importorskip("accelerate")

import miga  # noqa: E402
from accelerate import cpu_offload, cpu_offload_with_hook  # noqa: E402
from accelerate.hooks import CpuOffload, add_hook_to_module  # noqa: E402
from miga.backbones.diffusers_common import cast_model, offload_hooks  # noqa: E402
from miga.backbones.unet3d import MODELSCOPE_SCHEDULER  # noqa: E402
from miga.backbones.unet3d_random import random_unet3d_components  # noqa: E402
from miga.backbones.videocrafter2_random import random_diffusers_unet, random_videocrafter2_components  # noqa: E402
from miga.backbones.wan_random import SCHEDULER as WAN_SCHEDULER, random_wan_components  # noqa: E402
from miga.video import read_video  # noqa: E402

WINDOW = 4  # latents per model window: small, and shorter than every video below
SIZES = {"wan": (32, 32), "skyreels": (32, 32), "t2v": (64, 64), "videocrafter2": (32, 32)}
PRESETS = {"wan": "wan2.1", "skyreels": "skyreels-v2-df", "t2v": "modelscope", "videocrafter2": "videocrafter2"}
NAMES = {"wan": "wan2.1", "skyreels": "skyreels-v2-df", "t2v": "unet3d", "videocrafter2": "videocrafter2"}
FRAMES = {"wan": 22, "skyreels": 22, "t2v": 7, "videocrafter2": 7}  # Wan: 7 latents decode to 25, cut to 22
SMALL_MIGA = dict(steps=8, zigzag_width=2, stage2_steps=2, stride=2, guides=1, reflection_samples=2,
                  reflection_judge_steps=2, reflection_ref_chunks=1)


class VideoCrafterPipeline(diffusers.TextToVideoSDPipeline):
    """The VideoCrafter2 community conversion's pipeline (Video-Infinity): TextToVideoSD with an fps UNet."""


def base(kind: str) -> str:
    """``wan-bf16`` -> ``wan``: the model family of a pipeline variant."""
    return kind.split("-")[0]


def build(kind: str):
    """One user pipeline: the four supported kinds, plus Wan with a bfloat16 transformer next to a float32
    VAE (``wan-bf16``), and pipelines with accelerate offload hooks (``wan-offload``: the chain
    ``enable_model_cpu_offload`` makes; ``t2v-offload``: a bare ``CpuOffload`` hook on the UNet and the VAE;
    ``*-sequential``: the hooks of ``enable_sequential_cpu_offload``).
    Flags are set unevenly so that any switch shows: the denoiser trains (its dropout layers excepted) with
    gradients on, the text encoder is in eval mode, the VAE has no gradients."""
    family = base(kind)
    if family in ("wan", "skyreels"):
        parts = random_wan_components("tiny", seed=1 if family == "wan" else 2, skyreels=family == "skyreels")
        cls = diffusers.WanPipeline if family == "wan" else diffusers.SkyReelsV2DiffusionForcingPipeline
        pipe = cls(scheduler=diffusers.UniPCMultistepScheduler(**WAN_SCHEDULER), **parts)
        denoiser = pipe.transformer
    elif family == "t2v":
        parts = random_unet3d_components(seed=1)
        pipe = diffusers.TextToVideoSDPipeline(scheduler=diffusers.DDIMScheduler(**MODELSCOPE_SCHEDULER), **parts)
        denoiser = pipe.unet
    else:
        parts = random_videocrafter2_components(seed=1)
        pipe = VideoCrafterPipeline(unet=random_diffusers_unet(seed=2), vae=parts["vae"],
                                    text_encoder=parts["text_encoder"], tokenizer=parts["tokenizer"],
                                    scheduler=diffusers.DDIMScheduler(**MODELSCOPE_SCHEDULER))
        denoiser = pipe.unet
    denoiser.train().requires_grad_(True)
    for module in denoiser.modules():  # training mode without dropout, so the user's own call stays reproducible
        if isinstance(module, torch.nn.Dropout):
            module.eval()
    pipe.text_encoder.eval()
    pipe.vae.requires_grad_(False)
    if kind == "wan-bf16":  # as from_pretrained(torch_dtype=bfloat16) leaves it: Wan's fp32 modules stay fp32
        cast_model(pipe.transformer, torch.bfloat16)
    if kind == "wan-offload":
        _, hook = cpu_offload_with_hook(pipe.text_encoder, execution_device="cpu")
        _, hook = cpu_offload_with_hook(pipe.transformer, execution_device="cpu", prev_module_hook=hook)
        cpu_offload_with_hook(pipe.vae, execution_device="cpu", prev_module_hook=hook)
    if kind == "t2v-offload":
        add_hook_to_module(pipe.unet, CpuOffload(execution_device="cpu"))
        add_hook_to_module(pipe.vae, CpuOffload(execution_device="cpu"))
    if kind.endswith("-sequential"):  # enable_sequential_cpu_offload's hooks: weights on the meta device
        for module in (pipe.text_encoder, denoiser, pipe.vae):
            cpu_offload(module, execution_device="cpu")
    pipe.set_progress_bar_config(disable=True)
    return pipe


class Pipelines:
    """Each pipeline built once for the module, on first use, with the user's own output and a snapshot of
    it taken then, before miga has seen it (so any later change shows, whichever test made it)."""

    def __init__(self):
        self.built: dict = {}

    def __call__(self, kind: str):
        if kind not in self.built:
            pipe = build(kind)
            own = user_call(pipe, kind)
            self.built[kind] = (pipe, own, snapshot(pipe))
        return self.built[kind][0]

    def pristine(self, kind: str):
        """``(the user's own output, snapshot)`` from before miga first saw the pipeline."""
        self(kind)
        return self.built[kind][1:]


@pytest.fixture(scope="module")
def pipes():
    return Pipelines()


def config(kind: str, method: str):
    """The model's preset cut down to a few steps that fit a window of WINDOW latents."""
    cfg = miga.preset(PRESETS[base(kind)], method)
    return cfg.with_(**SMALL_MIGA) if method == "miga" else cfg.with_(partitions=1)


def long_video(pipe, kind: str, method: str = "miga", prompt="a cat", **kwargs):
    height, width = SIZES[base(kind)]
    kwargs.setdefault("num_frames", FRAMES[base(kind)])
    if "config" not in kwargs:
        kwargs["config"] = config(kind, method)
    return miga.LongVideoPipeline.from_pipe(pipe, window_latents=WINDOW)(
        prompt, method=method, height=height, width=width, progress=False, **kwargs)


def user_call(pipe, kind: str):
    """The user's own plain pipeline call: fixed generator, two steps, decoded."""
    height, width = SIZES[base(kind)]
    frames = 5 if base(kind) in ("wan", "skyreels") else 3
    return pipe("a red ball", height=height, width=width, num_frames=frames, num_inference_steps=2,
                generator=torch.Generator().manual_seed(3), output_type="np").frames


# ---------------------------------------------------------------- snapshots of the user's pipeline
HOOK_DICTS = ("_forward_hooks", "_forward_hooks_with_kwargs", "_forward_hooks_always_called", "_forward_pre_hooks",
              "_forward_pre_hooks_with_kwargs", "_backward_hooks", "_backward_pre_hooks", "_state_dict_hooks",
              "_state_dict_pre_hooks", "_load_state_dict_pre_hooks", "_load_state_dict_post_hooks")


def describe(value, depth: int = 0):
    """A comparable picture of an attribute: plain values as they are, tensors by dtype, device, shape and
    storage, containers element-wise, any other object by identity (a replaced object shows)."""
    if value is None or isinstance(value, (bool, int, float, str, bytes)):
        return value
    if isinstance(value, (torch.dtype, torch.device)):
        return str(value)
    if isinstance(value, torch.Tensor):
        return ("tensor", str(value.dtype), str(value.device), tuple(value.shape), value.data_ptr())
    if isinstance(value, (list, tuple)) and depth < 3:
        return (type(value).__name__, [describe(v, depth + 1) for v in value])
    if isinstance(value, dict) and depth < 3:
        return (type(value).__name__, {k: describe(v, depth + 1) for k, v in value.items()})
    return (type(value).__name__, id(value))


def attributes(obj) -> dict:
    skip = {"_parameters", "_buffers", "_modules", "_non_persistent_buffers_set", *HOOK_DICTS}
    return {k: describe(v) for k, v in vars(obj).items() if k not in skip}


def snapshot(pipe) -> dict:
    """Everything of ``pipe`` a borrower could change: which objects its components are; for every
    submodule its identity, training flag, attributes (accelerate's ``_hf_hook`` and replaced ``forward``
    included) and hooks; for every parameter and buffer its object, dtype, device, ``requires_grad`` and
    storage; and a copy of every weight's value (with sequential offload: of the CPU copy the hooks keep)."""
    modules, values = {}, {}
    for name, component in pipe.components.items():
        if not isinstance(component, torch.nn.Module):
            continue
        for sub_name, sub in component.named_modules(remove_duplicate=False):
            modules[f"{name}.{sub_name}"] = dict(
                id=id(sub), training=sub.training, attributes=attributes(sub),
                hooks={h: [(k, id(f)) for k, f in getattr(sub, h, {}).items()] for h in HOOK_DICTS},
                params={n: (None if p.is_meta else id(p), str(p.dtype), str(p.device), p.requires_grad,
                            p.data_ptr()) for n, p in sub.named_parameters(recurse=False)},  # meta: new each load
                buffers={n: (id(b), str(b.dtype), str(b.device), b.data_ptr())
                         for n, b in sub.named_buffers(recurse=False)})
        for key, tensor in component.state_dict(keep_vars=True).items():
            values[f"{name}.{key}"] = describe(tensor) if tensor.is_meta else tensor.detach().clone()
        for sub in component.modules():  # sequential offload: the weights wait in the hooks' CPU copy
            weights = getattr(getattr(sub, "_hf_hook", None), "weights_map", None)
            if weights is not None:
                values.update({f"{name}.offloaded.{k}": v.clone() for k, v in weights.dataset.items()})
                break
    scheduler = pipe.scheduler
    return dict(components={k: id(v) for k, v in pipe.components.items()}, pipe=attributes(pipe),
                scheduler=(attributes(scheduler), dict(scheduler.config)), modules=modules, values=values,
                global_hooks=(len(torch.nn.modules.module._global_forward_hooks),
                              len(torch.nn.modules.module._global_forward_pre_hooks)))


def assert_same(before: dict, after: dict) -> None:
    values_before, values_after = before["values"], after["values"]
    assert values_before.keys() == values_after.keys()

    def same(a, b):
        if isinstance(a, torch.Tensor):
            return a.dtype == b.dtype and torch.equal(a, b)
        return a == b

    changed = [k for k in values_before if not same(values_before[k], values_after[k])]
    assert not changed, f"weights changed: {changed[:5]}"
    for part in before:
        if part == "values":
            continue
        if part == "modules":
            assert before[part].keys() == after[part].keys()
            for name in before[part]:
                assert before[part][name] == after[part][name], f"module {name} changed"
        else:
            assert before[part] == after[part], f"{part} changed"


# ---------------------------------------------------------------- 1. the user's pipeline is unchanged
@pytest.mark.parametrize("kind", ["wan", "skyreels", "t2v", "videocrafter2", "wan-bf16", "wan-offload",
                                  "t2v-offload", "wan-sequential", "t2v-sequential"])
def test_the_users_pipeline_is_unchanged_after_use(pipes, kind, monkeypatch):
    pipe = pipes(kind)
    own_before, before = pipes.pristine(kind)
    hooked = {n: getattr(m, "_hf_hook", None) for n, m in pipe.components.items() if hasattr(m, "_hf_hook")}
    assert bool(hooked) == kind.endswith(("offload", "sequential"))
    assert miga.from_pipe(pipe).name == NAMES[base(kind)]

    onloaded = []  # modules whose offload hook miga asked to put them in place
    pre_forward = CpuOffload.pre_forward
    monkeypatch.setattr(CpuOffload, "pre_forward",
                        lambda self, module, *a, **k: onloaded.append(id(module)) or pre_forward(self, module, *a, **k))
    height, width = SIZES[base(kind)]
    runs = [long_video(pipe, kind, "miga"), long_video(pipe, kind, "fifo"),
            long_video(pipe, kind, "plain", num_frames=5, num_inference_steps=3, config=None)]
    monkeypatch.undo()
    for out, frames in zip(runs, (FRAMES[base(kind)], FRAMES[base(kind)], 5)):
        assert out.frames.shape == (1, frames, height, width, 3) and out.frames.dtype == np.float32
        assert np.isfinite(out.frames).all() and out.frames.std() > 0 and out.stats.nfe > 0
    # the denoisers' hooks ran (miga calls their forward); a decoder's VAE is onloaded only when it is not on
    # its execution device already (test_onload_moves_only_a_module_that_is_elsewhere)
    denoisers = {"transformer", "unet"}
    assert {id(pipe.components[n]) for n in hooked if offload_hooks(pipe.components[n]) and n in denoisers} \
        <= set(onloaded)

    after = snapshot(pipe)
    assert_same(before, after)
    for name, hook in hooked.items():
        assert pipe.components[name]._hf_hook is hook
    assert np.array_equal(user_call(pipe, kind), own_before)


def test_mixed_dtypes_are_kept_and_run_on_the_cpu(pipes):
    pipe = pipes("wan-bf16")
    dtypes = {p.dtype for p in pipe.transformer.parameters()}
    assert pipe.transformer.dtype == torch.bfloat16 and dtypes == {torch.bfloat16, torch.float32}
    backbone = miga.from_pipe(pipe, height=32, width=32, window_latents=WINDOW)
    assert backbone.dtype == torch.bfloat16 and backbone.device == torch.device("cpu")
    assert backbone.transformer is pipe.transformer and backbone.vae is pipe.vae
    out = long_video(pipe, "wan-bf16", output_type="latent")
    assert out.frames.dtype == torch.float32 and torch.isfinite(out.frames).all()
    assert {p.dtype for p in pipe.transformer.parameters()} == dtypes
    assert {p.dtype for p in pipe.vae.parameters()} == {torch.float32}


def test_videocrafter2s_unet_view_shares_the_users_weights(pipes):
    pipe = pipes("videocrafter2")
    backbone = miga.from_pipe(pipe, height=32, width=32)
    storages = {p.untyped_storage().data_ptr() for p in pipe.unet.parameters()}
    assert all(p.untyped_storage().data_ptr() in storages for p in backbone.unet.parameters())
    assert sum(p.numel() for p in backbone.unet.parameters()) == sum(p.numel() for p in pipe.unet.parameters())


@pytest.mark.parametrize("kind", ["wan", "t2v"])
def test_sequential_offload_runs_where_its_hooks_compute_and_changes_nothing(pipes, kind):
    """``enable_sequential_cpu_offload`` leaves the weights on the meta device; miga computes where the
    hooks put them and makes the video it makes without offload."""
    offloaded = pipes(f"{kind}-sequential")
    denoiser = offloaded.transformer if kind == "wan" else offloaded.unet
    assert next(denoiser.parameters()).is_meta
    backbone = miga.from_pipe(offloaded, height=SIZES[kind][0], width=SIZES[kind][1], window_latents=WINDOW)
    assert backbone.device == torch.device("cpu") and backbone.decoder().device == torch.device("cpu")
    np.testing.assert_allclose(long_video(offloaded, f"{kind}-sequential", "fifo", seed=3).frames,
                               long_video(pipes(kind), kind, "fifo", seed=3).frames, rtol=0, atol=1e-6)


class CpuOffloadLike:
    """Stands for accelerate's ``CpuOffload`` (found by class name) with an execution device of choice."""

    def __init__(self, execution_device):
        self.execution_device, self.calls = execution_device, 0

    def pre_forward(self, module, *args, **kwargs):
        self.calls += 1
        return args, kwargs


CpuOffloadLike.__name__ = "CpuOffload"


@pytest.mark.parametrize("where, calls", [("cpu", 0), ("meta", 1)])
def test_onload_moves_only_a_module_that_is_elsewhere(where, calls):
    from miga.backbones.diffusers_common import onload

    module = torch.nn.Linear(2, 2)
    module._hf_hook = CpuOffloadLike(where)
    assert onload(module) == torch.device(where) and module._hf_hook.calls == calls


# ---------------------------------------------------------------- 2. output layouts
@pytest.mark.parametrize("kind", ["wan", "t2v"])
def test_output_types_follow_diffusers_layouts(pipes, kind):
    pipe, frames = pipes(kind), FRAMES[kind]
    height, width = SIZES[kind]
    out = {t: long_video(pipe, kind, output_type=t, seed=1).frames for t in ("np", "pil", "pt", "latent")}

    video = out["np"]
    assert isinstance(video, np.ndarray) and video.dtype == np.float32
    assert video.shape == (1, frames, height, width, 3)
    assert video.min() >= 0.0 and video.max() <= 1.0 and video.std() > 0

    assert isinstance(out["pt"], torch.Tensor) and out["pt"].dtype == torch.float32
    assert out["pt"].shape == (1, frames, 3, height, width)
    assert torch.equal(out["pt"], torch.from_numpy(video).permute(0, 1, 4, 2, 3))

    images = out["pil"]
    assert len(images) == 1 and len(images[0]) == frames
    assert all(im.size == (width, height) and im.mode == "RGB" for im in images[0])
    assert np.array_equal(np.stack([np.asarray(im) for im in images[0]]),
                          (video[0] * 255).round().clip(0, 255).astype(np.uint8))

    latents = out["latent"]
    backbone = miga.from_pipe(pipe, height=height, width=width, window_latents=WINDOW)
    count = miga.pipeline.latents_for_frames(backbone, frames)
    assert latents.shape == (1, backbone.latent_shape[0], count, *backbone.latent_shape[1:])
    # the latents are the ones the frames were decoded from (Wan: 4k+1 frames, cut to the length asked for)
    decoder = backbone.decoder()
    decoded = [f for i in range(count) for f in decoder.push_float(latents[0, :, i])] + decoder.flush()
    assert len(decoded) == miga.pipeline.frames_for_latents(backbone, count) >= frames
    np.testing.assert_array_equal(np.stack(decoded[:frames]), video[0])


@pytest.mark.parametrize("output_type", ["np", "pil"])
def test_frames_go_to_export_to_video_and_read_back_whole(pipes, tmp_path, output_type):
    """``export_to_video(out.frames[0], path, fps=...)`` (imageio, or without it diffusers' OpenCV fallback)
    writes every frame; miga reads the file back."""
    pipe, frames = pipes("wan"), FRAMES["wan"]
    out = long_video(pipe, "wan", seed=2, output_type=output_type).frames[0]
    video = np.stack([np.asarray(f, dtype=np.float32) / 255 for f in out]) if output_type == "pil" else out
    path = diffusers.utils.export_to_video(out, str(tmp_path / "fox.mp4"), fps=16)
    back, fps = read_video(path)
    assert back.shape == (frames, 32, 32, 3) and fps == 16
    error = np.abs(back.astype(np.float32) / 255 - video).mean()
    assert error < 0.06, error  # lossy (OpenCV's mp4v without imageio), but these frames (BGR order: 0.23)


# ---------------------------------------------------------------- 3. frames stream to the callback
@pytest.mark.parametrize("output_type, method, frames", [("np", "fifo", 22), ("pil", "fifo", 22),
                                                         ("latent", "fifo", 22), ("np", "miga", 66)])
def test_callback_gets_each_frame_in_order_while_the_video_is_made(pipes, output_type, method, frames):
    pipe = pipes("wan")
    calls, seen = [], []
    handle = pipe.transformer.register_forward_hook(lambda *args: calls.append(None))
    try:
        out = long_video(pipe, "wan", method, seed=4, num_frames=frames, output_type=output_type,
                         callback_on_frame=lambda i, frame: seen.append((i, frame, len(calls))))
    finally:
        handle.remove()
    result = out.frames[0] if output_type != "latent" else out.frames[0].unbind(1)
    count = (frames + 2) // 4 + 1 if output_type == "latent" else frames  # Wan: 4k+1 frames from k+1 latents
    assert [i for i, _, _ in seen] == list(range(count)) and len(result) == count
    for (_, frame, _), returned in zip(seen, result):
        if output_type == "latent":
            assert torch.equal(frame, returned)
        else:
            assert np.array_equal(np.asarray(frame), np.asarray(returned))
    model_calls = [n for _, _, n in seen]
    # model calls made when each frame came: frames come while the video is made, not all at the end
    assert model_calls == sorted(model_calls) and model_calls[0] < model_calls[-1] <= len(calls)


# ---------------------------------------------------------------- 4. prompts and seeds
def test_prompts_as_a_string_a_list_or_a_schedule(pipes):
    pipe, frames = pipes("t2v"), FRAMES["t2v"]

    def make(prompt):
        return long_video(pipe, "t2v", prompt=prompt, seed=5).frames

    one = make("a cat")
    np.testing.assert_array_equal(make(miga.PromptSchedule.single("a cat")), one)
    np.testing.assert_array_equal(make(["a cat"]), one)
    two = make(["a cat", "a dog"])
    assert not np.array_equal(two, one)
    np.testing.assert_array_equal(make(miga.PromptSchedule.even(["a cat", "a dog"], frames)), two)
    assert miga.PromptSchedule.even(["a cat", "a dog"], frames).starts == (0, 4)
    assert not np.array_equal(make(miga.PromptSchedule((0, 2), ("a cat", "a dog"))), two)


def test_a_generator_gives_the_video_of_its_seed_without_being_drawn_from(pipes):
    pipe = pipes("wan")
    generator = torch.Generator().manual_seed(7)
    state = generator.get_state()
    with_generator = long_video(pipe, "wan", generator=generator).frames
    assert torch.equal(generator.get_state(), state)
    np.testing.assert_array_equal(with_generator, long_video(pipe, "wan", seed=7).frames)
    np.testing.assert_array_equal(with_generator, long_video(pipe, "wan", generator=[generator]).frames)
    assert not np.array_equal(with_generator, long_video(pipe, "wan", seed=8).frames)


# ---------------------------------------------------------------- 5. one-line errors
def _ddim_pipeline():
    unet = diffusers.UNet2DModel(sample_size=8, block_out_channels=(8, 8), norm_num_groups=4,
                                 down_block_types=("DownBlock2D", "DownBlock2D"),
                                 up_block_types=("UpBlock2D", "UpBlock2D"), layers_per_block=1)
    return diffusers.DDIMPipeline(unet=unet, scheduler=diffusers.DDIMScheduler())


ERRORS = [
    ("unknown method", lambda p: long_video(p, "wan", method="zigzag", config=None),
     "unknown method 'zigzag'; choose one of miga, fifo, plain"),
    ("unknown output type", lambda p: long_video(p, "wan", output_type="mp4"),
     "unknown output_type 'mp4'; choose one of np, pil, pt, latent"),
    ("latents for miga", lambda p: long_video(p, "wan", latents=torch.zeros(1, 16, WINDOW, 4, 4)),
     "latents (the initial noise) apply to method='plain'"),
    ("seed and generator", lambda p: long_video(p, "wan", seed=1, generator=torch.Generator().manual_seed(1)),
     "give seed or generator, not both"),
    ("two generators", lambda p: long_video(p, "wan", generator=[torch.Generator(), torch.Generator()]),
     "miga makes one video per call; got 2 generators"),
    ("plain: more frames than the latents hold",
     lambda p: long_video(p, "wan", method="plain", config=None, num_frames=6, latents=torch.zeros(1, 16, 2, 4, 4)),
     "method='plain' makes one window of 5 frames; ask for 1 to 5 frames"),
    ("plain: more frames than a fixed backbone's window",
     lambda p: miga.LongVideoPipeline(miga.from_pipe(p, height=32, width=32, window_latents=2))(
         "a cat", num_frames=6, method="plain", progress=False),
     "method='plain' makes one window of 5 frames; ask for 1 to 5 frames"),
    ("plain: several prompts", lambda p: long_video(p, "wan", method="plain", config=None, num_frames=5,
                                                      prompt=["a cat", "a dog"]),
     "method='plain' takes one prompt (a string)"),
    ("a DDIMPipeline", lambda p: miga.LongVideoPipeline.from_pipe(_ddim_pipeline()),
     "miga cannot run a DDIMPipeline; it takes "),
    ("any object", lambda p: miga.LongVideoPipeline.from_pipe(object()), "miga cannot run a object; it takes"),
    ("VideoCrafter2, sequentially offloaded",
     lambda p: miga.LongVideoPipeline.from_pipe(build("videocrafter2-sequential")),
     "the pipeline's UNet is sequentially offloaded (enable_sequential_cpu_offload"),
    ("a hub id, miga.from_pipe", lambda p: miga.from_pipe("Wan-AI/Wan2.1-T2V-1.3B-Diffusers"),
     "miga cannot run a str; it takes"),
]


@pytest.mark.parametrize("what, call, message", ERRORS, ids=[e[0] for e in ERRORS])
def test_bad_input_gets_one_line(pipes, what, call, message):
    with pytest.raises(miga.MigaError) as info:
        call(pipes("wan"))
    text = str(info.value)
    assert message in text and "\n" not in text, text
    if "cannot run" in text:
        for name in ("WanPipeline", "SkyReelsV2DiffusionForcingPipeline", "TextToVideoSDPipeline", "VideoCrafter"):
            assert name in text


def test_plain_with_a_loaded_pipeline_makes_the_window_the_frames_need(pipes):
    """``plain`` with a pipeline (not a fixed backbone) sizes its one window to ``num_frames``, as the
    pipeline itself would; ``latents`` fix that window."""
    pipe = pipes("wan")
    out = long_video(pipe, "wan", method="plain", config=None, num_frames=9, num_inference_steps=3,
                     output_type="latent")
    assert out.frames.shape == (1, 16, 3, 4, 4)
    noise = torch.randn(1, 16, 2, 4, 4, generator=torch.Generator().manual_seed(0))
    out = long_video(pipe, "wan", method="plain", config=None, num_frames=None, num_inference_steps=3,
                     latents=noise)
    assert out.frames.shape == (1, 5, 32, 32, 3)


def test_model_offloaded_modules_are_put_back_after_a_call(pipes, monkeypatch):
    """As a diffusers call ends (``maybe_free_model_hooks``), every module a ``CpuOffload`` hook manages goes
    back to the CPU: miga asks each hook to do its offload (``init_hook``)."""
    pipe = pipes("wan-offload")
    offloaded = []
    init_hook = CpuOffload.init_hook
    monkeypatch.setattr(CpuOffload, "init_hook",
                        lambda self, module: offloaded.append(id(module)) or init_hook(self, module))
    long_video(pipe, "wan-offload", "fifo")
    assert set(offloaded) == {id(pipe.text_encoder), id(pipe.transformer), id(pipe.vae)}
