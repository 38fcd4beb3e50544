"""AUP leaderboards: methods ranked over tasks, as the paper's public leaderboards (SPEC 9).

A leaderboard's data is ``{task: {method: [(TPF, accuracy %), ...]}}``: the layout of the reference's YAML files
(``AUP_leaderboard/data_llada.yaml`` and friends of hao-ai-lab/d3LLM)::

    GSM8K-CoT:
      LLaDA:
      - [1.0, 72.55]
      d3LLM-LLaDA:
      - [1.0, 74.02]
      - [9.11, 73.09]

Per task, ``y_max`` is the best accuracy of any point of any method (so adding or removing a method can change
everyone's score); each method's AUP is :func:`d3llm.eval.aup` of its points; a method's average is the mean of its
AUP over the tasks it has, and methods are ranked by that average.

The reference's own aggregation (``AUP_leaderboard/main.py``) differs, and :func:`reference_average` reproduces it
for comparison: the sum of a method's AUP over every task of every file given, divided by 5 whatever the number of
tasks, with an exclusion of ``humaneval+`` / ``mbpp+`` that never matches the files' capitalised task names.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from d3llm.errors import AUPError, ConfigError
from d3llm.eval.aup_metric import aup, check_points, within_floor
from d3llm.eval.yaml_file import read_yaml

LeaderboardData = Mapping[str, Mapping[str, Sequence[Sequence[float]]]]

REFERENCE_DIVISOR = 5.0                              # main.py divides every method's sum by 5
REFERENCE_EXCLUDED_TASKS = ("humaneval+", "mbpp+")   # compared case-sensitively with the task names, as main.py


@dataclass
class Leaderboard:
    """AUP of every method on every task, ``y_max`` per task, each method's average and its rank (1 = best).

    ``dropped[task][method]`` counts the points left out below the floor (only with ``below_floor="drop"``).
    """

    tasks: dict[str, dict[str, float]]
    y_max: dict[str, float]
    average: dict[str, float]
    points: dict[str, dict[str, list[tuple[float, float]]]] = field(default_factory=dict, repr=False)
    dropped: dict[str, dict[str, int]] = field(default_factory=dict)
    name: str = ""

    @property
    def methods(self) -> list[str]:
        """Methods, best average first (ties keep their order of appearance)."""
        return sorted(self.average, key=lambda m: -self.average[m])

    @property
    def rank(self) -> dict[str, int]:
        return {m: i + 1 for i, m in enumerate(self.methods)}

    def to_json(self) -> dict:
        return {"tasks": self.tasks, "y_max": self.y_max, "average": self.average}

    def to_markdown(self, average: Mapping[str, float] | None = None, digits: int = 2) -> str:
        """A Markdown table: one row per method (best first), AUP per task, the average and the rank.

        ``average`` replaces the averages (and the order) shown, e.g. with :func:`reference_average`.
        """
        average = dict(self.average if average is None else average)
        methods = sorted(average, key=lambda m: -average[m])
        tasks = list(self.tasks)
        lines = ["| rank | method | " + " | ".join(tasks) + " | average |",
                 "|---:|---|" + "---:|" * len(tasks) + "---:|"]
        for rank, method in enumerate(methods, start=1):
            cells = []
            for task in tasks:
                value = self.tasks[task].get(method)
                cell = "–" if value is None else f"{value:.{digits}f}"
                if self.dropped.get(task, {}).get(method):
                    cell += f" ({self.dropped[task][method]} below floor)"
                cells.append(cell)
            lines.append(f"| {rank} | {method} | " + " | ".join(cells) + f" | {average[method]:.{digits}f} |")
        lines.append("")
        lines.append("y_max: " + ", ".join(f"{t} {self.y_max[t]:g}" for t in tasks))
        return "\n".join(lines)


def leaderboard(data: LeaderboardData, *, alpha: float = 3.0, y_min_offset: float = 5.0,
                below_floor: str = "error", name: str = "") -> Leaderboard:
    """Score every method on every task of ``data`` (``{task: {method: [(TPF, accuracy %), ...]}}``).

    ``below_floor``: ``"error"`` (as the reference: a method whose highest-TPF point is more than ``y_min_offset``
    below its lowest-TPF point is an :class:`~d3llm.errors.AUPError` naming the task and method) or ``"drop"``
    (score the part of the curve within the floor; a measured sweep may go further than AUP counts).
    """
    if below_floor not in ("error", "drop"):
        raise ValueError(f"below_floor must be 'error' or 'drop', got {below_floor!r}")
    where = f"{name}: " if name else ""
    if not isinstance(data, Mapping) or not data:
        raise ConfigError(f"{where}expected a mapping of task -> method -> list of (TPF, accuracy %) pairs, "
                          f"got {type(data).__name__ if data is not None else 'nothing'}")
    tasks: dict[str, dict[str, float]] = {}
    y_max: dict[str, float] = {}
    points: dict[str, dict[str, list[tuple[float, float]]]] = {}
    dropped: dict[str, dict[str, int]] = {}
    for task, methods in data.items():
        if not isinstance(methods, Mapping) or not methods:
            raise ConfigError(f"{where}task {task!r}: expected a mapping of method -> list of (TPF, accuracy %) "
                              f"pairs, got {methods!r}")
        checked = {str(m): check_points(pts, f"{where}task {task!r}, method {m!r}") for m, pts in methods.items()}
        y_max[str(task)] = top = max(y for pts in checked.values() for _, y in pts)
        if top <= 0:
            raise AUPError(f"{where}task {task!r}: every accuracy is 0, so there is no y_max to weight by")
        tasks[str(task)], points[str(task)] = {}, checked
        for method, pts in checked.items():
            if below_floor == "drop":
                kept = within_floor(pts, y_min_offset)
                if len(kept) < len(pts):
                    dropped.setdefault(str(task), {})[method] = len(pts) - len(kept)
                pts = kept
            try:
                tasks[str(task)][method] = aup(pts, top, alpha=alpha, y_min_offset=y_min_offset)
            except AUPError as exc:
                raise AUPError(f"{where}task {task!r}, method {method!r}: {exc}") from None
    return Leaderboard(tasks=tasks, y_max=y_max, average=averages(tasks), points=points, dropped=dropped, name=name)


def averages(tasks: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
    """Each method's mean AUP over the tasks it has (``tasks``: ``{task: {method: AUP}}``)."""
    scores: dict[str, list[float]] = {}
    for per_method in tasks.values():
        for method, value in per_method.items():
            scores.setdefault(method, []).append(value)
    return {m: math.fsum(v) / len(v) for m, v in scores.items()}


def reference_average(boards: Sequence[Leaderboard]) -> dict[str, float]:
    """The reference's overall leaderboard score (``AUP_leaderboard/main.py``), quirks included: per method, the
    sum of its AUP over every task of every leaderboard given (a method in two files counts in both), skipping
    tasks named exactly ``humaneval+`` or ``mbpp+`` (which the reference files spell ``HumanEval+`` / ``MBPP+``, so
    nothing is skipped), divided by 5."""
    sums: dict[str, float] = {}
    for board in boards:
        for task, per_method in board.tasks.items():
            for method, value in per_method.items():
                sums.setdefault(method, 0.0)
                if task not in REFERENCE_EXCLUDED_TASKS:
                    sums[method] += value
    return {m: s / REFERENCE_DIVISOR for m, s in sums.items()}


def read_leaderboard_yaml(path: str | os.PathLike) -> dict[str, dict[str, list[tuple[float, float]]]]:
    """Read a leaderboard file in the reference's YAML layout (task -> method -> list of ``[TPF, accuracy %]``).

    Every problem is a :class:`~d3llm.errors.D3LLMError` naming the file, the task, the method and the point.
    """
    file = Path(path).expanduser()
    data = read_yaml(file, "leaderboard file", "a YAML file of task -> method -> list of [TPF, accuracy %] pairs")
    if not isinstance(data, dict) or not data:
        raise ConfigError(f"{file}: expected a mapping of task -> method -> list of [TPF, accuracy %] pairs, "
                          f"got {type(data).__name__ if data is not None else 'an empty file'}")
    out: dict[str, dict[str, list[tuple[float, float]]]] = {}
    for task, methods in data.items():
        if not isinstance(methods, dict) or not methods:
            raise ConfigError(f"{file}: task {task!r}: expected a mapping of method -> list of [TPF, accuracy %] "
                              f"pairs, got {methods!r}")
        out[str(task)] = {}
        for method, pts in methods.items():
            what = f"{file}: task {task!r}, method {method!r}"
            if not isinstance(pts, list) or not pts:
                raise ConfigError(f"{what}: expected a non-empty list of [TPF, accuracy %] pairs, got {pts!r}")
            for i, point in enumerate(pts):
                if not isinstance(point, list) or len(point) != 2:
                    raise ConfigError(f"{what}, point {i + 1}: expected [TPF, accuracy %], got {point!r} "
                                      f"({'a field is missing' if isinstance(point, list) and len(point) < 2 else 'wrong shape'})")
            out[str(task)][str(method)] = check_points(pts, what)
    return out
