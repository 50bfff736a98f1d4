"""The table of built-in models (``--model NAME``): light, so command-line help can list them without torch."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ShippedWeights:
    """One built-in model: its name (``--model NAME``), its file in ``miga/weights/``, the file's SHA-256
    (``tests/test_shapes_model.py`` checks it) and what it is, one line."""

    name: str
    file: str
    sha256: str
    summary: str


SHIPPED = {w.name: w for w in (
    ShippedWeights("shapes", "shapes-v2.safetensors",
                   "01bb50cc0794cd8756e6b3088e5976967ed7b7ca6b316d9a795781a8ba1f69dd",
                   "model v2 (default): space-time denoiser with temporal self-attention, trained on the world with "
                   "hidden attributes, one noise level per clip"),
    ShippedWeights("shapes-df", "shapes-df.safetensors",
                   "e5685f4bc38f28befbb7f807d364b0b922fa6d52d9d4275d18441527b9f3c9d1",
                   "model v2's recipe trained with an independent noise level per frame (diffusion forcing): no "
                   "training-inference gap for FIFO and MIGA"),
    ShippedWeights("shapes-v1", "shapes-v1.safetensors",
                   "5fe9630c88a0850deadfd35c0efcc52dbd0eafab6004a059f6cebede46e47ee1",
                   "model v1: convolutional denoiser, trained with one noise level per clip, no hidden attributes"),
)}
"""The built-in shapes models by name; ``shapes`` is the default model of ``miga generate``."""


def model_names_help() -> str:
    """The built-in names for ``--model`` help texts, the default first: ``shapes (the built-in model, default),
    shapes-df, ...``."""
    first, *rest = SHIPPED.values()
    return ", ".join([f"{first.name} (the built-in model, default)"] + [w.name for w in rest])
