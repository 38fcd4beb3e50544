"""Files shipped inside the package: the tiny teacher that commands default to, its distilled student, and the
autoregressive baseline of the same size."""

from __future__ import annotations

from pathlib import Path

from d3llm.errors import CheckpointError

ASSETS = Path(__file__).resolve().parent
TEACHER = ASSETS / "arith-teacher"
STUDENT = ASSETS / "arith-student"
AR = ASSETS / "arith-ar"


def _shipped(folder: Path, what: str) -> Path:
    if not (folder / "config.json").is_file():
        raise CheckpointError(f"the shipped {what} is missing from {folder}; pass --model DIR")
    return folder


def default_model_path() -> Path:
    """The shipped teacher (LLaDA layout, trained on the built-in arithmetic task), used when no model is given."""
    return _shipped(TEACHER, "teacher")


def student_model_path() -> Path:
    """The shipped student: the teacher after pseudo-trajectory distillation (``d3llm distill``), same layout."""
    return _shipped(STUDENT, "student")


def ar_model_path() -> Path:
    """The shipped autoregressive baseline: a causal Llama of the teacher's size trained on the same task."""
    return _shipped(AR, "autoregressive baseline")
