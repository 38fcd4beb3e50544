"""Models shipped inside the package, by name: the tiny teacher that commands default to, its distilled student, and
the autoregressive baseline of the same size.

Every command's ``--model`` and the Python API (``d3llm.load_model("student")``) accept these names from any working
directory; a real path always wins over a name, so a folder called ``student`` in the working directory is that
folder. ``d3llm models`` lists them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from d3llm.errors import CheckpointError

ASSETS = Path(__file__).resolve().parent


@dataclass(frozen=True)
class ShippedModel:
    """One shipped model folder: its short ``name``, the other names it answers to, and what it is."""

    name: str
    folder: Path
    aliases: tuple[str, ...]
    description: str

    @property
    def names(self) -> tuple[str, ...]:
        return (self.name, *self.aliases)


SHIPPED = (
    ShippedModel("teacher", ASSETS / "arith-teacher", ("arith-teacher",),
                 "LLaDA trained on the built-in arith task; the default model of every command"),
    ShippedModel("student", ASSETS / "arith-student", ("arith-student",),
                 "the teacher after d3LLM pseudo-trajectory distillation: many more tokens per forward"),
    ShippedModel("ar", ASSETS / "arith-ar", ("arith-ar",),
                 "autoregressive baseline: a causal Llama of the teacher's size trained on the same task"),
)
TEACHER, STUDENT, AR = (m.folder for m in SHIPPED)


def shipped_model(name: str) -> ShippedModel | None:
    """The shipped model answering to ``name`` (``teacher``, ``arith-teacher``, ...), else None."""
    return next((m for m in SHIPPED if name in m.names), None)


def shipped_names() -> str:
    """The shipped models' names for an error message: ``teacher, student, ar``."""
    return ", ".join(m.name for m in SHIPPED)


def resolve_model(spec: str | os.PathLike) -> Path:
    """The folder ``spec`` names: an existing path as it is (a real path wins over a name), else a shipped model's
    folder when ``spec`` is one of its names, else ``spec`` unchanged as a path (the caller's check then says that
    it does not exist, see :func:`unknown_model_hint`)."""
    path = Path(spec).expanduser()
    if path.exists():
        return path
    shipped = shipped_model(str(spec))
    return _shipped(shipped) if shipped is not None else path


def unknown_model_hint(spec: str | os.PathLike) -> str:
    """The tail of a "does not exist" error: the shipped name closest to ``spec``, and which names exist."""
    from d3llm.errors import did_you_mean

    names = [n for m in SHIPPED for n in m.names]
    return f"{did_you_mean(spec, names)}; shipped models: {shipped_names()} (`d3llm models` lists them)"


def _shipped(model: ShippedModel) -> Path:
    if not (model.folder / "config.json").is_file():
        raise CheckpointError(f"the shipped model '{model.name}' is missing from {model.folder} (an incomplete "
                              f"install?); reinstall d3llm or pass --model DIR")
    return model.folder


def default_model_path() -> Path:
    """The shipped teacher (LLaDA layout, trained on the built-in arithmetic task), used when no model is given."""
    return _shipped(SHIPPED[0])


def student_model_path() -> Path:
    """The shipped student: the teacher after pseudo-trajectory distillation (``d3llm distill``), same layout."""
    return _shipped(SHIPPED[1])


def ar_model_path() -> Path:
    """The shipped autoregressive baseline: a causal Llama of the teacher's size trained on the same task."""
    return _shipped(SHIPPED[2])
