"""The paper's ablation (Table 5 rows), parameter sweeps and Table-1 methods, as config transforms.

Every row is a config transform of the model's own preset (README's switch table)::

    fifo     FIFO-Diffusion        preset(name, "fifo")
    stage1   + Stage 1             MIGA preset, guides=0, stage2_steps=0, reflection=False
    tta      + Stage 2 (= TTA)     MIGA preset, guides=0, reflection=False
    dce      DCE alone             MIGA preset, zigzag_width=1, stage2_steps=0 (guides and reflection on)
    miga     MIGA                  the MIGA preset as it is

and the sweeps vary one field of the full MIGA preset (``threshold``: delta_adju, ``guides``: m_guid) or its
self-reflection mode (``reflection``: :data:`REFLECTION_MODES`). Data only: ``miga ablate`` and ``miga compare``
(:mod:`miga.commands.ablate`) run them through :mod:`miga.runner`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

from miga.config import FIFOConfig, MIGAConfig, preset
from miga.errors import MigaError

Config = MIGAConfig | FIFOConfig


# ----------------------------------------------------------------------------------------------------
# rows


@dataclass(frozen=True)
class Row:
    """One line of the table: a name for ``--rows``, a label, and a config transform of a preset name."""

    key: str
    label: str
    group: str  # "table5" or the sweep's name
    make: Callable[[str], Config] = field(compare=False, repr=False)

    def config(self, preset_name: str) -> Config:
        return self.make(preset_name)


def _miga(name: str) -> MIGAConfig:
    return preset(name, "miga")


TABLE5 = (
    Row("fifo", "FIFO-Diffusion", "table5", lambda p: preset(p, "fifo")),
    Row("stage1", "+ Stage 1", "table5", lambda p: _miga(p).with_(guides=0, stage2_steps=0, reflection=False)),
    Row("tta", "+ Stage 2 (= TTA)", "table5", lambda p: _miga(p).with_(guides=0, reflection=False)),
    Row("dce", "DCE alone", "table5", lambda p: _miga(p).with_(zigzag_width=1, stage2_steps=0)),
    Row("miga", "MIGA", "table5", _miga),
)
"""The rows of the paper's Table 5, in its order."""
ROWS = {row.key: row for row in TABLE5}

REFLECTION_MODES = {
    "off": {"reflection": False, "reflect_during": "all", "reflection_calibration": "fixed"},
    "all": {"reflect_during": "all", "reflection_calibration": "fixed"},
    "fill": {"reflect_during": "fill", "reflection_calibration": "fixed"},
    "auto": {"reflect_during": "all", "reflection_calibration": "auto"},
    "auto-fill": {"reflect_during": "fill", "reflection_calibration": "auto"},
}
"""Self-reflection modes (issue 15): off, every Stage-1 pass with delta_adju (paper A.1.3), only while the
queue fills (released code), and the calibrated threshold (``reflection_calibration="auto"``) each way."""

ENDINGS = {
    "full": {"queue_end": "full", "refine_rounds": 0},
    "drain": {"queue_end": "drain", "refine_rounds": 0},
    "refine": {"queue_end": "full", "refine_rounds": 1},
}
"""How a video's last latents are finished and whether the released codes' refinement round runs: a full queue
to the end (the paper), a draining queue (miga before 2026-12-03), and a full queue plus one refinement round
(re-noise to the Stage-2 boundary, the unified passes again)."""

def _wan_code(config: MIGAConfig) -> dict:
    """Every choice of the authors' Wan2.1 code that :meth:`MIGAConfig.wan21_released` sets."""
    return dict(guide_selection="nearest", reflect_during="fill", refine_rounds=1, flow_grid="wan",
                static_tiling="remainder_first", fill_lead=2, steady_guides="pre_pass", reflection_lead_chunks=1,
                stage2_entry="relabel", stage2_history="reset", unified_offset_from=0)


def _vc2_code(config: MIGAConfig) -> dict:
    """The choices of the authors' VideoCrafter2 code (:meth:`MIGAConfig.videocrafter2_released`) that apply to
    any backbone: all but m = 4, the yaml's reflection off and LVDM's ``use_scale`` base clip; the refinement from
    level K2 + 1 (DDIM index 10 of 64)."""
    return dict(guide_selection="nearest", reflection_threshold=0.001, score_mode="chunk", reflect_during="fill",
                reflection_lead_chunks=1, static_tiling="remainder_first", fill_lead=2, steady_fresh="noise",
                unified_offset_from=0, refine_rounds=1, refine_level=config.stage2_steps + 1)


CODE_CHOICES = {
    "paper": {},
    "nearest-guides": {"guide_selection": "nearest"},
    "remainder-first": {"static_tiling": "remainder_first"},
    "fill-lead": {"fill_lead": 2},
    "pre-pass-guides": {"steady_guides": "pre_pass"},
    "lead-chunk": {"reflection_lead_chunks": 1},
    "reflect-fill": {"reflect_during": "fill"},
    "chunk-score": {"score_mode": "chunk"},
    "noise-fresh": {"steady_fresh": "noise"},
    "relabel": {"stage2_entry": "relabel"},
    "reset-history": {"stage2_history": "reset"},
    "offset-from-0": {"unified_offset_from": 0},
    "refine": {"refine_rounds": 1},
    "wan-grid": {"flow_grid": "wan"},
    "wan-code": _wan_code,
    "vc2-code": _vc2_code,
}
"""Where the authors' released codes differ from the paper (``docs/reference.md``): the paper's preset, each
choice of the code alone (a :class:`MIGAConfig` field at the code's value), and every choice of the Wan2.1 or
VideoCrafter2 code together. A value is field changes or a function of the preset that returns them."""

SWEEPS = {
    "threshold": ("reflection_threshold", "delta_adju", (0.005, 0.01, 0.02, 0.05)),
    "guides": ("guides", "m_guid", (0, 2, 4, 6)),
    "reflection": (REFLECTION_MODES, "self-reflection mode", tuple(REFLECTION_MODES)),
    "ending": (ENDINGS, "ending", tuple(ENDINGS)),
    "code": (CODE_CHOICES, "released-code choice", tuple(CODE_CHOICES)),
}
"""Sweep name -> (config field, or a dict from each value to its field changes; paper symbol or name; default
values); each value is the full MIGA preset with that change. The defaults all validate for f_0 = 16 (the
built-in models)."""
DEFAULT_SWEEPS = ("threshold", "guides")

COMPARE_METHODS = ("fifo", "scalingnoise", "freenoise", "freelong", "freepca", "miga")
"""``miga compare``'s methods (the paper's Table 1 rows that run on the same engine), in its order."""
METHOD_LABELS = {"fifo": "FIFO-Diffusion", "scalingnoise": "ScalingNoise", "freenoise": "FreeNoise", "freelong": "FreeLong", "freepca": "FreePCA",
                 "miga": "MIGA"}


def compare_rows(methods: Sequence[str]) -> list[Row]:
    """One row per method: the model's own preset of that method."""
    unknown = [m for m in methods if m not in COMPARE_METHODS]
    if unknown:
        raise MigaError(f"unknown method {unknown[0]!r}; choose from {', '.join(COMPARE_METHODS)}")
    if not methods:
        raise MigaError("nothing to run: give --methods")
    return [Row(m, METHOD_LABELS[m], "table1", lambda p, m=m: preset(p, m)) for m in methods]


DEFAULT_PROMPTS = {
    "shapes": (
        "a red circle bouncing on a blue background",
        "a yellow triangle drifting on a gradient gray background",
        "a white square orbiting on a green background",
        "a cyan circle and an orange square bouncing on a black background",
    ),
    "gaussian": (
        "drifting clouds",
        "a red circle bouncing",
        "ocean waves at sunset",
    ),
}
"""Built-in prompt sets: the shapes grammar for the shapes model, free text for the Gaussian worlds."""
DEFAULT_SEEDS = (0, 1)
DEFAULT_FRAMES = 128


def _value_text(value) -> str:
    return format(value, "g") if isinstance(value, float) else str(value)


def _with(config: MIGAConfig, changes) -> MIGAConfig:
    return config.with_(**(changes(config) if callable(changes) else changes))


def sweep_rows(name: str, values: Sequence | None = None) -> list[Row]:
    """The rows of one sweep: the MIGA preset with the sweep's field set to each value."""
    if name not in SWEEPS:
        raise MigaError(f"unknown sweep {name!r}; choose from {', '.join(SWEEPS)} (or none)")
    fld, symbol, default = SWEEPS[name]
    rows = []
    for v in default if values is None else values:
        text = _value_text(v)
        if isinstance(fld, dict) and v not in fld:
            raise MigaError(f"unknown {symbol} {v!r}; choose from {', '.join(fld)}")
        changes = fld[v] if isinstance(fld, dict) else {fld: v}
        rows.append(Row(f"{name}={text}", f"MIGA, {symbol} = {text}", name, lambda p, changes=changes: _with(_miga(p), changes)))
    return rows


def select_rows(rows: Sequence[str] | None = None, sweeps: Sequence[str] | None = None,
                values: dict[str, Sequence] | None = None) -> list[Row]:
    """Table-5 rows by key (default: all, in the paper's order) followed by the named sweeps' rows."""
    keys = list(ROWS) if rows is None else list(rows)
    unknown = [k for k in keys if k not in ROWS]
    if unknown:
        raise MigaError(f"unknown row {unknown[0]!r}; choose from {', '.join(ROWS)}")
    if len(set(keys)) != len(keys):
        raise MigaError("a row is named twice in --rows")
    out = [ROWS[k] for k in keys]
    for name in DEFAULT_SWEEPS if sweeps is None else sweeps:
        out += sweep_rows(name, (values or {}).get(name))
    if not out:
        raise MigaError("nothing to run: give --rows or --sweeps")
    return out


def describe(config: Config, native_frames: int) -> str:
    """The config's switches in the paper's symbols, e.g. ``T=32 L_zig=4 K2=6 m=4 delta=0.01``."""
    if isinstance(config, FIFOConfig):
        search = getattr(config, "search", None)  # ScalingNoise: FIFO plus a beam search over the tail noise
        return (f"T={config.steps(native_frames)} (n={config.partitions})"
                + (", lookahead" if config.lookahead else "")
                + (f", k={search.candidates} m={search.beams}" if search is not None else ""))
    if not isinstance(config, MIGAConfig):  # a full-sequence baseline: all frames at every step
        att = config.attention_config(native_frames)
        return f"T={config.steps}, all frames, W={att.window}" + (f" S={att.stride}" if hasattr(att, "stride") else "")
    parts = [f"T={config.steps}", f"L_zig={config.zigzag_width}", f"K2={config.stage2_steps}",
             f"m={config.guides}", _reflection_text(config)]
    return " ".join(parts)


def _reflection_text(config: MIGAConfig) -> str:
    if not config.reflection:
        return "no refl."
    delta = "auto" if config.reflection_calibration == "auto" else _value_text(config.reflection_threshold)
    return f"delta={delta}" + (" (fill)" if config.reflect_during == "fill" else "")
