"""Files shipped inside the package: the tiny teacher that commands default to, and its distilled student."""

from __future__ import annotations

from pathlib import Path

from d3llm.errors import CheckpointError

ASSETS = Path(__file__).resolve().parent
TEACHER = ASSETS / "arith-teacher"
STUDENT = ASSETS / "arith-student"


def default_model_path() -> Path:
    """The shipped teacher (LLaDA layout, trained on the built-in arithmetic task), used when no model is given."""
    if not (TEACHER / "config.json").is_file():
        raise CheckpointError(f"the shipped teacher is missing from {TEACHER}; pass --model DIR")
    return TEACHER


def student_model_path() -> Path:
    """The shipped student: the teacher after pseudo-trajectory distillation (``d3llm distill``), same layout."""
    if not (STUDENT / "config.json").is_file():
        raise CheckpointError(f"the shipped student is missing from {STUDENT}; pass --model DIR")
    return STUDENT
