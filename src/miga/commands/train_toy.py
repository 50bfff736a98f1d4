"""``miga train-toy``: train the built-in shapes model from a seed (resumable)."""

from __future__ import annotations

import os
import sys

from miga.common import number
from miga.errors import MigaError

HELP = "train the built-in shapes model from a seed"
DESCRIPTION = ("Train the built-in shapes-world model (autoencoder, then denoiser) from a seed, with data rendered on "
               "the fly. Checkpoints go to RUN_DIR; running the same command again resumes from the last one. When "
               "training completes, RUN_DIR/shapes.safetensors holds the weights (use them with --model FILE).")


def add_arguments(parser) -> None:
    """``miga train-toy``'s options."""
    parser.add_argument("run_dir", metavar="RUN_DIR", help="where checkpoints, loss.png and the weights go")
    parser.add_argument("--seed", type=int, help="weights and data stream derive from it (default 0)")
    parser.add_argument("--recipe", choices=("v1", "v2", "v3", "df"), help="what to train: v2 (--model "
                        "shapes, the default for a new run: temporal self-attention, the world with hidden attributes, one "
                        "noise level per clip), v3 (v2's weights trained on with a decaying learning rate), df (--model shapes-df: v2 trained with a noise level per frame, diffusion "
                        "forcing) or v1 (--model shapes-v1: convolutions, the v1 world); a resumed run keeps its own")
    parser.add_argument("--model-size", choices=("default", "tiny"), default="default",
                        help="architecture: the recipe's own, or a tiny one for smoke tests")
    parser.add_argument("--steps", type=number(minimum=0), help="denoiser steps (default 5000 for v1, 12000 for v2 and "
                        "df; may change on resume; 0 only with --ae-steps: the autoencoder alone)")
    parser.add_argument("--ae-steps", type=number(minimum=0), help="autoencoder steps (default 2500 for v2 and df, 3000 for v1)")
    parser.add_argument("--batch", type=number(), help="clips per denoiser step (default 16)")
    parser.add_argument("--checkpoint-every", type=number(), metavar="N", help="steps between checkpoints (default 200)")
    parser.add_argument("--time-limit", type=number(float, 0), metavar="MIN",
                        help="stop (with a checkpoint) after this many minutes; run again to continue")
    parser.add_argument("--threads", type=number(), help="torch threads (default: torch's choice)")
    parser.add_argument("--fresh", action="store_true", help="start over even if RUN_DIR holds a checkpoint")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args) -> int:
    import torch

    from dataclasses import replace

    from miga.toy.nets import ToyConfig
    from miga.toy.train import CHECKPOINT, TrainConfig, saved_recipe, start_or_resume

    from miga.video import check_new_folder

    check_new_folder(args.run_dir, "RUN_DIR")  # missing parents are created
    if args.steps == 0 and args.ae_steps is None:
        raise MigaError("--steps 0 trains no denoiser, only the autoencoder; give --steps N >= 1, or --steps 0 "
                        "--ae-steps N to train the autoencoder alone")
    if args.threads:
        torch.set_num_threads(args.threads)
    given = {"seed": args.seed, "steps": args.steps, "ae_steps": args.ae_steps, "batch": args.batch,
             "checkpoint_every": args.checkpoint_every}
    given = {k: v for k, v in given.items() if v is not None}
    resuming = os.path.exists(os.path.join(args.run_dir, CHECKPOINT)) and not args.fresh
    saved = saved_recipe(args.run_dir) if resuming else None
    recipes = {"v1": (TrainConfig, ToyConfig(), ToyConfig.tiny()),
               "v2": (TrainConfig.v2, ToyConfig.v2(), ToyConfig.tiny_v2()),
               "v3": (TrainConfig.v3, ToyConfig.v2(), ToyConfig.tiny_v2()),
               "df": (TrainConfig.df, ToyConfig.v2(), ToyConfig.tiny_v2())}
    if saved is not None and args.recipe is None:  # a resumed run keeps its own recipe and architecture
        recipe = replace(saved, **given)
        name = ("df" if saved.per_frame_noise else "v3" if saved.init_weights else "v2" if saved.hidden_attributes
                else "v1")
    else:
        name = args.recipe or "v2"
        recipe = recipes[name][0](**given)
    model = recipes[name][2 if args.model_size == "tiny" else 1]
    trainer = start_or_resume(args.run_dir, recipe, model, fresh=args.fresh)
    if resuming:
        print(f"miga: resuming {args.run_dir} at autoencoder step {trainer.ae_step}, denoiser step {trainer.step}",
              file=sys.stderr)
    limit = None if args.time_limit is None else 60.0 * args.time_limit
    try:
        done = trainer.run(time_limit=limit, progress=not args.no_progress)
    except KeyboardInterrupt:
        print(f"miga: interrupted; checkpoint saved in {args.run_dir}; run the same command to resume",
              file=sys.stderr)
        return 130
    if done:
        print(f"trained: {os.path.join(args.run_dir, 'shapes.safetensors')} ({trainer.step} denoiser steps, "
              f"{trainer.seconds / 60:.1f} min); loss curve in {os.path.join(args.run_dir, 'loss.png')}",
              file=sys.stderr)
    elif trainer.ae_step < trainer.train.ae_steps:
        print(f"miga: stopped at autoencoder step {trainer.ae_step} of {trainer.train.ae_steps} (the denoiser's "
              f"{trainer.train.steps} steps follow); run the same command to continue", file=sys.stderr)
    else:
        print(f"miga: stopped at denoiser step {trainer.step} of {trainer.train.steps}; run the same command "
              "to continue", file=sys.stderr)
    return 0
