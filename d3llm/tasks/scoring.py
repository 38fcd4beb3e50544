"""Answer extraction and exact-match scoring, GSM8K style (SPEC 8.3).

* **strict**: the number on the ``#### N`` line (the first such line).
* **flexible**: the last number anywhere in the text.

Numbers are normalised before comparison: ``,`` and ``$`` removed, a trailing ``.`` dropped, and a numeric value
compared numerically (``"42.0"`` equals ``"42"``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

STRICT_RE = re.compile(r"####\s*(-?[$0-9.,]+)")
FLEX_RE = re.compile(r"(-?[$0-9.,]{2,})|(-?[0-9]+)")


def normalize_number(text: str | None) -> str | None:
    """``"$1,234."`` -> ``"1234"``; ``"42.0"`` -> ``"42"``; ``None`` or no digits -> ``None``."""
    if text is None:
        return None
    text = text.strip().replace(",", "").replace("$", "").rstrip(".")
    if not re.search(r"[0-9]", text):
        return None
    try:
        value = float(text)
    except ValueError:
        return text
    if value == int(value) and abs(value) < 1e15:
        return str(int(value))
    return repr(value)


def extract_answer(text: str, mode: str = "strict") -> str | None:
    """The answer of a model output: ``mode="strict"`` reads the ``#### N`` line, ``"flexible"`` the last number.

    Returns the normalised number as a string, or None when there is none.
    """
    if mode == "strict":
        match = STRICT_RE.search(text)
        return normalize_number(match.group(1)) if match else None
    if mode == "flexible":
        found = [a or b for a, b in FLEX_RE.findall(text)]
        for candidate in reversed(found):
            value = normalize_number(candidate)
            if value is not None:
                return value
        return None
    raise ValueError(f"unknown extraction mode {mode!r}; expected 'strict' or 'flexible'")


def reference_answer(answer: str) -> str | None:
    """The gold number of a reference solution: its ``#### N`` line, else its last number."""
    return extract_answer(answer, "strict") or extract_answer(answer, "flexible")


@dataclass
class Score:
    """Exact-match counts over a set of predictions; ``strict``/``flexible`` are percentages."""

    n: int
    strict_correct: int
    flexible_correct: int

    @property
    def strict(self) -> float:
        return 100.0 * self.strict_correct / self.n if self.n else 0.0

    @property
    def flexible(self) -> float:
        return 100.0 * self.flexible_correct / self.n if self.n else 0.0

    def to_dict(self) -> dict:
        return {"n": self.n, "strict": self.strict, "flexible": self.flexible}


def is_correct(prediction: str, gold: str | int, mode: str = "strict") -> bool:
    """Whether ``prediction``'s extracted answer equals ``gold`` (a number or a reference solution)."""
    gold_value = normalize_number(str(gold)) if isinstance(gold, int) else reference_answer(gold)
    got = extract_answer(prediction, mode)
    return got is not None and got == gold_value


def score(predictions: list[str], golds: list[str | int]) -> Score:
    """Strict and flexible exact match of ``predictions`` against ``golds`` (numbers or reference solutions)."""
    if len(predictions) != len(golds):
        raise ValueError(f"{len(predictions)} predictions but {len(golds)} references")
    strict = sum(is_correct(p, g, "strict") for p, g in zip(predictions, golds))
    flexible = sum(is_correct(p, g, "flexible") for p, g in zip(predictions, golds))
    return Score(n=len(predictions), strict_correct=strict, flexible_correct=flexible)
