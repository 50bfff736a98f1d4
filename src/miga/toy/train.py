"""Training the built-in model from a seed: ``miga train-toy``.

Two stages, like real latent video models: first the per-frame autoencoder, then the space-time denoiser
on its latents, trained the way foundation video models are, with **one noise level per clip** (rectified
flow, logit-normal σ). Clips are rendered on the fly from the shapes world; the data of step k is drawn
from a generator keyed by (seed, stage, k), so a run that is stopped and resumed sees exactly the data of
an uninterrupted one. Everything needed to continue lives in ``<run dir>/checkpoint.pt``, written
atomically every ``checkpoint_every`` steps and when the run stops.
"""

from __future__ import annotations

import json
import math
import os
import platform
import signal
import threading
import time
from dataclasses import asdict, dataclass, fields, replace

import torch
import torch.nn.functional as F

from miga.errors import MigaError
from miga.toy.nets import FrameAutoencoder, ToyConfig, make_denoiser
from miga.worlds.shapes import batch_tokens, world_batch

CHECKPOINT = "checkpoint.pt"
WEIGHTS = "shapes.safetensors"
LOSS_PLOT = "loss.png"


@dataclass(frozen=True)
class TrainConfig:
    """Training recipe. ``steps`` may grow between runs (resume continues to the new total); every other
    field must stay as the run dir was started with.

    Attributes:
        seed: initial weights and the whole data stream derive from it.
        ae_steps, ae_batch, ae_lr: autoencoder stage (batch counted in frames; cosine lr decay).
        ae_object_weight: extra weight of object pixels in the reconstruction loss.
        ae_latent_noise: Gaussian noise (times the latent std) added before decoding while training, so the
            decoder tolerates imperfect latents from the denoiser.
        ae_loss: reconstruction loss, ``mse`` (v1) or ``l1`` (sharper edges: corners of squares and triangles).
        steps, batch, lr, warmup: denoiser stage (batch counted in 16-frame clips); constant lr after a
            linear warmup, so extending ``steps`` is safe.
        ema: decay of the exponential moving average of the denoiser's weights (the shipped weights).
        cond_dropout: probability of training a clip unconditionally (classifier-free guidance).
        two_objects: fraction of scenes with two objects.
        logit_normal_std: σ = sigmoid(N(0, std²)) per clip (or per frame).
        per_frame_noise: draw σ for every frame on its own (diffusion forcing, the ``shapes-df`` model)
            instead of one σ per clip (how foundation video models are trained; the default).
        hidden_attributes: train on the world with hidden attributes (model v2 and ``shapes-df``;
            ``miga.worlds.shapes.sample_hidden``) rather than the v1 world.
        checkpoint_every: steps between checkpoints.
        init_weights: start from a weights file (a built-in name such as ``shapes-v2`` or a path) instead of
            a seed: its autoencoder (kept frozen: ``ae_steps`` must be 0) and its EMA denoiser, which both the
            trained weights and the EMA start from; the optimiser starts fresh (model v3 continues v2).
        lr_decay: ``constant`` (after the warmup; extending ``steps`` is safe) or ``cosine`` (from ``lr`` to
            ``lr_final`` over ``steps``; extending ``steps`` stretches what is left of the curve).
        lr_final: the learning rate a cosine decay ends at.
        snapshot_every: also write the EMA weights as ``shapes-step{N}.safetensors`` every this many denoiser
            steps (0: never), so quality can be measured against steps.
    """

    seed: int = 0
    ae_steps: int = 3000
    ae_batch: int = 16
    ae_lr: float = 2e-3
    ae_latent_noise: float = 0.1
    ae_object_weight: float = 9.0
    steps: int = 5000
    batch: int = 16
    lr: float = 6e-4
    warmup: int = 200
    ema: float = 0.999
    cond_dropout: float = 0.1
    two_objects: float = 0.25
    logit_normal_std: float = 1.0
    checkpoint_every: int = 200
    per_frame_noise: bool = False
    hidden_attributes: bool = False
    ae_loss: str = "mse"
    init_weights: str = ""
    lr_decay: str = "constant"
    lr_final: float = 0.0
    snapshot_every: int = 0

    @classmethod
    def v2(cls, **changes) -> "TrainConfig":
        """Model v2's recipe: the world with hidden attributes, 2,500 autoencoder steps, one noise level per
        clip, 12,000 denoiser steps."""
        return replace(cls(hidden_attributes=True, ae_steps=2500, steps=12000), **changes)

    @classmethod
    def df(cls, **changes) -> "TrainConfig":
        """``shapes-df``: model v2's recipe with an independent noise level per frame (diffusion forcing)."""
        return replace(cls.v2(per_frame_noise=True), **changes)

    @classmethod
    def v3(cls, **changes) -> "TrainConfig":
        """Model v3's recipe: model v2's weights trained on (its autoencoder frozen) for 8,000 more denoiser
        steps, the learning rate decaying from 6e-4 to 1e-5 on a cosine, EMA 0.9995, snapshots every 1,000."""
        return replace(cls.v2(init_weights="shapes-v2", ae_steps=0, steps=8000, lr_decay="cosine",
                              lr_final=1e-5, snapshot_every=1000, ema=0.9995), **changes)

    def validate(self) -> "TrainConfig":
        for f in ("ae_steps", "steps"):
            if getattr(self, f) < 0:
                raise MigaError(f"{f} must be >= 0, got {getattr(self, f)}")
        for f in ("ae_batch", "batch", "checkpoint_every"):
            if getattr(self, f) < 1:
                raise MigaError(f"{f} must be >= 1, got {getattr(self, f)}")
        if self.ae_loss not in ("mse", "l1"):
            raise MigaError(f"ae_loss must be mse or l1, got {self.ae_loss!r}")
        if self.lr_decay not in ("constant", "cosine"):
            raise MigaError(f"lr_decay must be constant or cosine, got {self.lr_decay!r}")
        if self.snapshot_every < 0:
            raise MigaError(f"snapshot_every must be >= 0, got {self.snapshot_every}")
        if self.init_weights and self.ae_steps:
            raise MigaError("a run that starts from init_weights keeps their autoencoder; set ae_steps to 0")
        return self

    def learning_rate(self, step: int) -> float:
        """The denoiser's learning rate at ``step``: linear warmup, then constant or a cosine to ``lr_final``."""
        warm = min(1.0, (step + 1) / max(1, self.warmup))
        if self.lr_decay == "constant" or step < self.warmup:
            return self.lr * warm
        done = min(1.0, (step - self.warmup) / max(1, self.steps - self.warmup))
        return self.lr_final + (self.lr - self.lr_final) * 0.5 * (1 + math.cos(math.pi * done))


def _key(seed: int, stage: str, step: int) -> torch.Generator:
    """The data generator of one step (keyed, so resuming reproduces the stream)."""
    code = {"ae": 1, "denoiser": 2, "stats": 3}[stage]
    return torch.Generator().manual_seed((seed * 1_000_003 + code) * 10_000_019 + step)


def world_clips(n: int, frames: int, g: torch.Generator, cfg: ToyConfig, two_objects: float, hidden: bool = False):
    """``n`` random clips ``[n, F, 3, S, S]``, their prompt tokens ``[n, 7]`` and object masks ``[n, F, S, S]``
    (with ``hidden``: the world with hidden attributes)."""
    batch = world_batch(n, frames, g, cfg.frame_size, two_objects, hidden=hidden)
    return batch.frames, batch_tokens(batch.scenes), batch.mask


class ToyTrainer:
    """State of one training run; ``run(...)`` advances it, checkpointing as it goes."""

    def __init__(self, run_dir: str, train: TrainConfig, model: ToyConfig = ToyConfig(), *, initial: bool = True):
        """``initial``: start from ``train.init_weights`` when the recipe names some (False when a checkpoint's
        state follows, :meth:`resume`)."""
        self.run_dir = run_dir
        self.train = train.validate()
        self.model_cfg = model
        torch.manual_seed(train.seed)
        self.ae = FrameAutoencoder(model)
        self.denoiser = make_denoiser(model)
        self.ema = {k: v.detach().clone() for k, v in self.denoiser.state_dict().items()}
        self.ae_opt = torch.optim.AdamW(self.ae.parameters(), lr=train.ae_lr, weight_decay=0.0)
        self.opt = torch.optim.AdamW(self.denoiser.parameters(), lr=train.lr, weight_decay=0.0)
        self.ae_step = 0
        self.step = 0
        self.stats_done = False
        self.history: dict[str, list[list[float]]] = {"ae": [], "denoiser": []}
        self.seconds = 0.0
        if train.init_weights and initial:
            self.load_initial_weights(train.init_weights)

    def load_initial_weights(self, name_or_path: str) -> None:
        """Start from a weights file: its autoencoder (with its latent statistics) and its EMA denoiser."""
        from safetensors import safe_open

        path = weights_path(name_or_path)
        try:
            with safe_open(path, "pt") as f:
                meta = f.metadata() or {}
                tensors = {k: f.get_tensor(k) for k in f.keys()}
            cfg = ToyConfig.from_dict(json.loads(meta["model"]))
        except Exception as e:  # noqa: BLE001 - one message for any unreadable file
            raise MigaError(f"cannot start from {path}: {e.__class__.__name__}: {e}"[:300]) from None
        if cfg != self.model_cfg:
            raise MigaError(f"{path} holds a model of another architecture than this run's; start from weights "
                            "of the same architecture")
        for prefix, module in (("autoencoder.", self.ae), ("denoiser.", self.denoiser)):
            module.load_state_dict({k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)})
        self.ema = {k: v.detach().clone() for k, v in self.denoiser.state_dict().items()}
        self.stats_done = True

    # -- persistence ---------------------------------------------------------------------------------

    @property
    def checkpoint_path(self) -> str:
        return os.path.join(self.run_dir, CHECKPOINT)

    def save(self) -> None:
        state = {
            "train": asdict(self.train), "model": self.model_cfg.to_dict(),
            "ae": self.ae.state_dict(), "denoiser": self.denoiser.state_dict(), "ema": self.ema,
            "ae_opt": self.ae_opt.state_dict(), "opt": self.opt.state_dict(),
            "ae_step": self.ae_step, "step": self.step, "stats_done": self.stats_done,
            "history": self.history, "seconds": self.seconds,
        }
        tmp = self.checkpoint_path + ".tmp"
        torch.save(state, tmp)
        os.replace(tmp, self.checkpoint_path)

    @classmethod
    def resume(cls, run_dir: str, train: TrainConfig | None = None) -> "ToyTrainer":
        """Continue the run in ``run_dir``; ``train`` may only change ``steps`` and ``checkpoint_every``."""
        path = os.path.join(run_dir, CHECKPOINT)
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
            saved = TrainConfig(**state["train"])
            model = ToyConfig.from_dict(state["model"])
        except Exception as e:  # noqa: BLE001 - any unreadable checkpoint gets one message
            raise MigaError(f"cannot resume from {path}: {e.__class__.__name__}: {e}"[:300]) from None
        if train is not None:
            safe = {"steps", "checkpoint_every"}
            changed = [f.name for f in fields(TrainConfig)
                       if f.name not in safe and getattr(train, f.name) != getattr(saved, f.name)]
            if changed:
                raise MigaError(f"{run_dir} was trained with different {', '.join(changed)}; "
                                "use the same settings or a new run dir")
            saved = replace(saved, steps=train.steps, checkpoint_every=train.checkpoint_every)
        self = cls(run_dir, saved, model, initial=False)  # the checkpoint holds every weight
        self.ae.load_state_dict(state["ae"])
        self.denoiser.load_state_dict(state["denoiser"])
        self.ema = state["ema"]
        self.ae_opt.load_state_dict(state["ae_opt"])
        self.opt.load_state_dict(state["opt"])
        self.ae_step, self.step, self.stats_done = state["ae_step"], state["step"], state["stats_done"]
        self.history, self.seconds = state["history"], state["seconds"]
        return self

    # -- stages --------------------------------------------------------------------------------------

    def ae_train_step(self) -> float:
        t = self.train
        g = _key(t.seed, "ae", self.ae_step)
        clips, _, mask = world_clips(t.ae_batch, 1, g, self.model_cfg, t.two_objects, t.hidden_attributes)
        frames = clips[:, 0]
        z = self.ae.encode_raw(frames)
        z_noisy = z + t.ae_latent_noise * z.detach().std() * torch.randn(z.shape, generator=g)
        recon = self.ae.decode_raw(z_noisy)
        weight = 1.0 + t.ae_object_weight * mask[:, 0, None]  # objects are small: weigh their pixels up
        error = (recon - frames).abs() if t.ae_loss == "l1" else (recon - frames) ** 2
        loss = (weight * error).mean() + 1e-4 * z.pow(2).mean()
        lr = t.ae_lr * 0.5 * (1 + math.cos(math.pi * self.ae_step / max(1, t.ae_steps)))  # cosine to 0
        for group in self.ae_opt.param_groups:
            group["lr"] = lr
        self.ae_opt.zero_grad(set_to_none=True)
        loss.backward()
        self.ae_opt.step()
        self.ae_step += 1
        return float(loss.detach())

    @torch.no_grad()
    def measure_latent_stats(self) -> None:
        """Per-channel mean and std of the autoencoder's latents over 512 world frames."""
        g = _key(self.train.seed, "stats", 0)
        clips, _, _ = world_clips(512, 1, g, self.model_cfg, self.train.two_objects, self.train.hidden_attributes)
        z = self.ae.encode_raw(clips[:, 0])
        self.ae.latent_mean.copy_(z.mean(dim=(0, 2, 3)))
        self.ae.latent_std.copy_(z.std(dim=(0, 2, 3)))
        self.stats_done = True

    def denoiser_train_step(self) -> float:
        t, cfg = self.train, self.model_cfg
        g = _key(t.seed, "denoiser", self.step)
        clips, tokens, _ = world_clips(t.batch, cfg.native_frames, g, cfg, t.two_objects, t.hidden_attributes)
        b, f = clips.shape[:2]
        with torch.no_grad():
            x0 = self.ae.encode_many(clips.flatten(0, 1)).reshape(b, f, cfg.latent_channels, cfg.latent_size,
                                                            cfg.latent_size).transpose(1, 2)
        drop = torch.rand(b, generator=g) < t.cond_dropout
        tokens = torch.where(drop[:, None], torch.zeros_like(tokens), tokens)
        if t.per_frame_noise:  # diffusion forcing: every frame at its own level
            sigma = torch.sigmoid(t.logit_normal_std * torch.randn(b, f, generator=g))
        else:  # one level per clip
            sigma = torch.sigmoid(t.logit_normal_std * torch.randn(b, generator=g)).reshape(b, 1).expand(b, f)
        noise = torch.randn(x0.shape, generator=g)
        s = sigma.reshape(b, 1, f, 1, 1)
        xt = (1 - s) * x0 + s * noise
        v = self.denoiser(xt, sigma * 1000, tokens)
        loss = F.mse_loss(v, noise - x0)
        lr = t.learning_rate(self.step)
        for group in self.opt.param_groups:
            group["lr"] = lr
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.denoiser.parameters(), 1.0)
        self.opt.step()
        with torch.no_grad():
            for k, v_ in self.denoiser.state_dict().items():
                if v_.dtype.is_floating_point:
                    self.ema[k].lerp_(v_, 1 - t.ema)
                else:
                    self.ema[k].copy_(v_)
        self.step += 1
        return float(loss.detach())

    @property
    def done(self) -> bool:
        return self.ae_step >= self.train.ae_steps and self.stats_done and self.step >= self.train.steps

    def run(self, *, time_limit: float | None = None, progress: bool = True) -> bool:
        """Train until done or ``time_limit`` seconds pass; checkpoint on the way and at the end (also on
        Ctrl-C, and on SIGTERM, which a cluster scheduler or ``kill`` sends: the step under way finishes, then
        the run stops). Returns whether training is complete."""
        from tqdm.auto import tqdm

        os.makedirs(self.run_dir, exist_ok=True)
        t = self.train
        start = time.monotonic()
        total = t.ae_steps + t.steps
        bar = tqdm(total=total, initial=min(self.ae_step, t.ae_steps) + min(self.step, t.steps),
                   disable=not progress, unit="step", desc="train-toy")
        terminated: list[int] = []
        previous = None
        if threading.current_thread() is threading.main_thread():
            previous = signal.signal(signal.SIGTERM, lambda signum, frame: terminated.append(signum))
        try:
            while not self.done:
                if terminated or (time_limit is not None and time.monotonic() - start >= time_limit):
                    break
                t0 = time.monotonic()
                denoising = self.ae_step >= t.ae_steps and self.stats_done
                if self.ae_step < t.ae_steps:
                    loss = self.ae_train_step()
                    self.history["ae"].append([self.ae_step, loss])
                    bar.set_postfix(stage="autoencoder", loss=f"{loss:.4f}", refresh=False)
                    k = self.ae_step
                elif not self.stats_done:
                    self.measure_latent_stats()
                    continue
                else:
                    loss = self.denoiser_train_step()
                    self.history["denoiser"].append([self.step, loss])
                    bar.set_postfix(stage="denoiser", loss=f"{loss:.4f}", refresh=False)
                    k = self.step
                self.seconds += time.monotonic() - t0
                bar.update(1)
                if k % t.checkpoint_every == 0:
                    self.save()
                if denoising and t.snapshot_every and k % t.snapshot_every == 0:
                    self.export(os.path.join(self.run_dir, f"shapes-step{k}.safetensors"))
        finally:
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)
            bar.close()
            self.save()
        if self.done:
            self.export()
        self.plot_loss()
        return self.done

    # -- outputs -------------------------------------------------------------------------------------

    def export(self, path: str | None = None) -> str:
        """Write the shippable weights: autoencoder + EMA denoiser, with the configs as metadata."""
        from safetensors.torch import save_file

        path = path or os.path.join(self.run_dir, WEIGHTS)
        tensors = {f"autoencoder.{k}": v.contiguous() for k, v in self.ae.state_dict().items()}
        tensors.update({f"denoiser.{k}": v.contiguous() for k, v in self.ema.items()})
        training = {**asdict(self.train), "ae_steps_done": self.ae_step, "steps_done": self.step,
                    "train_seconds": round(self.seconds), "machine": f"{platform.machine()} CPU, "
                    f"{torch.get_num_threads()} torch thread(s), torch {torch.__version__}"}
        meta = {"format": "miga-shapes-v1", "model": json.dumps(self.model_cfg.to_dict()),
                "training": json.dumps(training)}
        tmp = path + ".tmp"
        save_file(tensors, tmp, metadata=meta)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
        return path

    def plot_loss(self, path: str | None = None) -> str:
        """Loss curves of both stages (raw and smoothed, log scale) as a PNG."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        path = path or os.path.join(self.run_dir, LOSS_PLOT)
        fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
        for ax, (stage, title) in zip(axes, (("ae", "autoencoder (MSE)"), ("denoiser", "denoiser (flow MSE)"))):
            h = self.history[stage]
            if h:
                steps, losses = zip(*h)
                ax.plot(steps, losses, lw=0.5, alpha=0.35, color="tab:blue")
                k = max(1, len(losses) // 50)
                smooth = [sum(losses[max(0, i - k):i + 1]) / len(losses[max(0, i - k):i + 1]) for i in range(len(losses))]
                ax.plot(steps, smooth, lw=1.5, color="tab:blue")
                ax.set_yscale("log")
            ax.set_title(title)
            ax.set_xlabel("step")
        fig.tight_layout()
        tmp = path + ".tmp.png"
        fig.savefig(tmp, dpi=100)
        plt.close(fig)
        os.replace(tmp, path)
        return path


def weights_path(name_or_path: str) -> str:
    """A built-in model's file (``shapes-v2``, ``shapes`` for the default, ``shapes-df``...) or a given path."""
    from miga.backbones.shapes import shipped_weights
    from miga.backbones.shipped import SHIPPED

    by_file = {w.file.removesuffix(".safetensors"): w for w in SHIPPED.values()}
    shipped = SHIPPED.get(name_or_path) or by_file.get(name_or_path)
    path = shipped_weights(shipped.name) if shipped else name_or_path
    if not os.path.isfile(path):
        raise MigaError(f"weights {name_or_path!r} not found: give a built-in name ({', '.join(sorted(by_file))}) "
                        "or a .safetensors file from 'miga train-toy'")
    return path


def saved_recipe(run_dir: str) -> TrainConfig | None:
    """The recipe a run dir was started with, or None when it holds no readable checkpoint."""
    try:
        state = torch.load(os.path.join(run_dir, CHECKPOINT), map_location="cpu", weights_only=True)
        return TrainConfig(**state["train"])
    except Exception:  # noqa: BLE001 - start_or_resume reports unreadable checkpoints
        return None


def start_or_resume(run_dir: str, train: TrainConfig, model: ToyConfig = ToyConfig(),
                    fresh: bool = False) -> ToyTrainer:
    """The trainer for ``run_dir``: resumed from its checkpoint when there is one (unless ``fresh``)."""
    if not fresh and os.path.exists(os.path.join(run_dir, CHECKPOINT)):
        trainer = ToyTrainer.resume(run_dir, train)
        if trainer.model_cfg != model:
            raise MigaError(f"{run_dir} holds a model of a different architecture; use a new run dir")
        return trainer
    if os.path.isdir(run_dir) and os.listdir(run_dir) and not fresh:
        raise MigaError(f"{run_dir} is not empty and holds no {CHECKPOINT}; pick a new run dir")
    return ToyTrainer(run_dir, train, model)
