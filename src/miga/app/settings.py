"""The page's settings as ``miga generate`` options: checked with the command's own rules and messages,
each error attached to the field that caused it (no Gradio here)."""

from __future__ import annotations

import argparse
import os
import threading
from dataclasses import dataclass, field

from miga.app import paths, timeline
from miga.errors import MigaError

METHODS = ("miga", "fifo", "scalingnoise")
"""Methods the app runs: those that finish frames one by one, so a run can stop and resume."""

MIGA_FIELDS = ("zigzag_width", "stage2_steps", "guides", "stride", "reflection_threshold")
FIELDS = ("timeline", "model", "method", "preset", "frames", "seed", "steps", "height", "width", *MIGA_FIELDS,
          "no_reflection")
"""The settings fields, in the order the page lists them (``timeline``: the prompt rows)."""

_FLAGS = {"--zigzag-width": "zigzag_width", "--stage2-steps": "stage2_steps", "--guides": "guides",
          "--stride": "stride", "--reflection-threshold": "reflection_threshold", "--reflect-during": "no_reflection",
          "--no-reflection": "no_reflection", "--steps": "steps", "--height": "height", "--width": "width",
          "frame size": "height", "--preset": "preset", "preset": "preset", "--method": "method", "--frames": "frames",
          "frames": "frames", "prompt": "timeline", "steps": "steps", "stride": "stride", "zigzag": "zigzag_width",
          "guide": "guides", "stage2": "stage2_steps", "reflection": "reflection_threshold"}
"""Words of an error message -> the field it is about (the first that occurs wins)."""


class FieldError(MigaError):
    """A setting refused: ``field`` is one of :data:`FIELDS`, ``row`` a timeline row (or None)."""

    def __init__(self, message: str, field: str, row: int | None = None):
        super().__init__(message)
        self.field, self.row = field, row


def field_of(message: str) -> str:
    """The field an error message is about (``model`` when it names none)."""
    for word, name in _FLAGS.items():
        if word in message:
            return name
    return "model"


@dataclass
class Settings:
    """What the page sends (strings and numbers, none trusted)."""

    rows: list[tuple[str, str]]
    model: str = "shapes"
    method: str = "miga"
    preset: str = ""
    frames: int = 128
    seed: int = 0
    steps: int | None = None
    height: int | None = None
    width: int | None = None
    zigzag_width: int | None = None
    stage2_steps: int | None = None
    guides: int | None = None
    stride: int | None = None
    reflection_threshold: str = ""
    no_reflection: bool = False
    extra: dict = field(default_factory=dict)


@dataclass
class Plan:
    """A checked generation: the ``miga generate`` options, the model path, the schedule, the video."""

    args: argparse.Namespace
    model: str
    video: object = None


def _whole(value, name: str, minimum: int, optional: bool = True) -> int | None:
    if value is None or value == "":
        if optional:
            return None
        raise FieldError(f"--{name.replace('_', '-')} is required", name)
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise FieldError(f"--{name.replace('_', '-')}: expected an int, got {value!r}", name) from None
    if number != int(number):
        raise FieldError(f"--{name.replace('_', '-')}: expected an int, got {value!r}", name)
    if int(number) < minimum:
        raise FieldError(f"--{name.replace('_', '-')}: must be >= {minimum}, got {int(number)}", name)
    return int(number)


def _optional(value, name: str, minimum: int) -> int | None:
    """A page number where empty or 0 (for sizes and steps) means "the preset's"."""
    if value in (None, "") or (minimum > 0 and value == 0):
        return None
    return _whole(value, name, minimum)


def generate_args(s: Settings, model: str) -> argparse.Namespace:
    """``miga generate``'s options for the settings (its parser's defaults for the rest)."""
    from miga.commands.generate import add_arguments, parse_threshold
    from miga.common import ArgParser

    parser = ArgParser(prog="miga generate")
    add_arguments(parser)
    args = parser.parse_args([])
    if s.method not in METHODS:
        raise FieldError(f"--method: choose one of {', '.join(METHODS)} (the app runs methods that can stop "
                         f"and resume), got {s.method!r}", "method")
    if s.preset:
        from miga.config import PRESETS

        if s.preset not in PRESETS:
            raise FieldError(f"unknown preset {s.preset!r}; choose one of {', '.join(PRESETS)}", "preset")
    args.model, args.method, args.preset = model, s.method, s.preset or None
    args.frames = _whole(s.frames, "frames", 1, optional=False)
    try:
        args.seed = int(s.seed or 0)
    except (TypeError, ValueError):
        raise FieldError(f"--seed: expected an int, got {s.seed!r}", "seed") from None
    args.steps = _optional(s.steps, "steps", 1)
    args.height, args.width = _optional(s.height, "height", 1), _optional(s.width, "width", 1)
    args.zigzag_width = _optional(s.zigzag_width, "zigzag_width", 1)  # given with another method: refused as
    for name in ("stage2_steps", "guides"):                            # the CLI refuses them
        value = getattr(s, name)
        setattr(args, name, None if value in (None, "") else _whole(value, name, 0))
    args.stride = _optional(s.stride, "stride", 1)
    text = (s.reflection_threshold or "").strip()
    if text:
        try:
            args.reflection_threshold = parse_threshold(text)
        except argparse.ArgumentTypeError as exc:
            raise FieldError(f"--reflection-threshold: {exc}", "reflection_threshold") from None
    args.no_reflection = bool(s.no_reflection)
    args.no_progress = True
    return args


_CACHE_LOCK = threading.Lock()
_CACHE: dict = {}


def backbone(model: str, height: int | None, width: int | None):
    """The backbone for ``model`` (the last one is kept: checking and generating share it)."""
    from miga.pipeline import load_backbone

    key = (model, height, width)
    with _CACHE_LOCK:
        if key not in _CACHE:
            _CACHE.clear()
            _CACHE[key] = load_backbone(model, height=height, width=width)
        return _CACHE[key]


def cheap(model: str) -> bool:
    """Whether a model loads in a moment (built-ins and ``miga train-toy`` weights): the page loads it to
    check the settings before anything starts; bigger ones are checked when the job loads them."""
    return model in paths.builtin_models() or model.endswith(".safetensors")


def check(s: Settings, models_root: str | None, load: bool = True) -> Plan:
    """The plan of settings ``s``, or a :class:`FieldError` naming the field. With ``load`` (and a
    :func:`cheap` model), the model is loaded and the video built, so every ``miga generate`` check runs."""
    try:
        model = paths.resolve_model(s.model, models_root)
    except MigaError as exc:
        raise FieldError(str(exc), "model") from None
    args = generate_args(s, model)
    fps = 8.0
    if load and cheap(model):
        try:
            bb = backbone(model, args.height, args.width)
        except MigaError as exc:
            raise FieldError(str(exc), field_of(str(exc)) if "--" in str(exc) else "model") from None
        fps = float(bb.fps)
    try:
        schedule = timeline.schedule(s.rows, args.frames, fps)
    except timeline.RowError as exc:
        raise FieldError(str(exc), "timeline", exc.row) from None
    args.schedule = schedule
    plan = Plan(args, model)
    if not (load and cheap(model)):
        return plan
    _check_prompts(bb, s.rows)
    plan.video = build_video(args, bb)
    return plan


def _check_prompts(bb, rows) -> None:
    """Each row's prompt through the model's prompt check (the built-in model's grammar), naming the row."""
    for number, _, prompt in timeline.used_rows(rows):
        if not prompt:
            continue
        try:
            bb.encode_prompt(prompt)
        except MigaError as exc:
            raise FieldError(f"{timeline.SOURCE} row {number}: {exc}", "timeline", number) from None


def build_video(args, bb):
    """The :class:`~miga.pipeline.LongVideo` of checked options (``miga generate``'s config rules)."""
    from miga.commands.generate import config_from_args
    from miga.pipeline import LongVideo

    try:
        args.run_dir = args.run_dir or "app"  # a run: full-sequence methods are refused as the CLI does
        config = config_from_args(args, bb)
        return LongVideo(bb, args.schedule, args.frames, config, seed=args.seed)
    except MigaError as exc:
        raise FieldError(str(exc), field_of(str(exc))) from None


SESSION_OPTIONS = ("command", "argv", "resume", "run_dir", "checkpoint_every", "no_progress", "stats", "preview",
                   "schedule", "threads_before")


def recorded_options(args) -> dict:
    """The options a run records for ``miga generate --resume`` (as the command records them)."""
    options = {k: v for k, v in vars(args).items() if k not in SESSION_OPTIONS}
    options["out"] = os.path.abspath(options["out"])
    return options
