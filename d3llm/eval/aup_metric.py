"""AUP, Accuracy Under Parallelism (SPEC 9.1): one number for a decoder's accuracy-parallelism curve.

A curve is a list of points ``(ρ, y)``: ρ the tokens per forward (TPF, > 0) of one decoder setting, y its accuracy
in **percent**. Points are sorted by ρ; the lowest-ρ point ``(ρ_1, y_1)`` is the anchor (on the public leaderboards
the one-token-per-forward decoding at ρ = 1). With the quality weight

    W(y) = min(exp(-α (1 - y / y_max)), 1)

where ``y_max`` is the best accuracy of any point of any method on the task,

    AUP = ρ_1 y_1 + Σ_i ½ (ρ_i - ρ_{i-1}) (y_i W(y_i) + y_{i-1} W(y_{i-1}))

over the points whose accuracy is at least ``y_1 - y_min_offset`` (the floor). The curve's highest-ρ point may not
lie below the floor (that is an error: sweep less far); intermediate points below it are dropped. Accuracy lost
against the best method costs through W (α = 3: a point 10% below ``y_max`` keeps about 74% of its height).

    >>> aup([(1.0, 74.02), (9.11, 73.09)], y_max=74.98)   # d3LLM-LLaDA on GSM8K-CoT (reference leaderboard)

This follows the reference's ``get_aup`` term for term (same order of floating-point operations), so values on
the reference's leaderboard files agree to the last digits.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Sequence

from d3llm.errors import AUPError


class FractionAccuracyWarning(UserWarning):
    """Accuracies below 1 were given: probably fractions (0-1) where AUP expects percent (0-100)."""


def weight(y: float, y_max: float, alpha: float = 3.0) -> float:
    """Quality weight ``W(y) = min(exp(-alpha * (1 - y / y_max)), 1)``: 1 at or above ``y_max``, decaying below."""
    return min(math.exp(-alpha * (1 - y / y_max)), 1.0)


def check_points(points: Iterable[Sequence[float]], what: str = "curve") -> list[tuple[float, float]]:
    """Validate a curve: a non-empty list of ``(TPF, accuracy %)`` pairs with TPF > 0 and 0 <= accuracy <= 100.

    Returns the pairs as floats, in the given order. Raises :class:`~d3llm.errors.AUPError` naming ``what``, the
    point and the value at fault; warns (:class:`FractionAccuracyWarning`) when any accuracy is below 1.
    """
    if isinstance(points, (str, bytes)) or not isinstance(points, Iterable):
        raise AUPError(f"{what}: expected a list of (TPF, accuracy %) pairs, got {points!r}")
    out = []
    for i, point in enumerate(points):
        if isinstance(point, (str, bytes)) or not isinstance(point, Sequence) or len(point) != 2:
            raise AUPError(f"{what}, point {i + 1}: expected a (TPF, accuracy %) pair, got {point!r}")
        tpf, acc = point
        for name, value in (("TPF", tpf), ("accuracy", acc)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise AUPError(f"{what}, point {i + 1}: {name} must be a finite number, got {value!r}")
        if tpf <= 0:
            raise AUPError(f"{what}, point {i + 1}: TPF must be positive (tokens per forward), got {tpf!r}")
        if not 0 <= acc <= 100:
            raise AUPError(f"{what}, point {i + 1}: accuracy must be a percentage in [0, 100], got {acc!r}")
        out.append((float(tpf), float(acc)))
    if not out:
        raise AUPError(f"{what}: no points; a curve needs at least one (TPF, accuracy %) pair")
    if any(acc < 1.0 for _, acc in out):
        warnings.warn(f"{what}: accuracies below 1 ({[acc for _, acc in out if acc < 1.0]}); AUP expects percent "
                      "(0-100), not fractions (0-1)", FractionAccuracyWarning, stacklevel=3)
    return out


def within_floor(points: Iterable[Sequence[float]], y_min_offset: float = 5.0) -> list[tuple[float, float]]:
    """The points of a curve, sorted by TPF, that lie at most ``y_min_offset`` below the lowest-TPF point's accuracy.

    What :func:`aup` keeps, without its error for a last point below the floor: a measured sweep that went
    further than the floor is scored on the part of the curve AUP counts.
    """
    ordered = sorted(check_points(points), key=lambda p: p[0])
    floor = ordered[0][1] - y_min_offset
    return [p for p in ordered if p[1] >= floor]


def aup(points, y_max, alpha=3.0, y_min_offset=5.0) -> float:
    """AUP of one curve: ``points`` are ``(TPF, accuracy %)`` pairs, ``y_max`` the task's best accuracy (of any
    point of any method, percent), ``alpha`` the penalty of the weight, ``y_min_offset`` the floor below the
    lowest-TPF accuracy (percentage points).

    Raises :class:`~d3llm.errors.AUPError` for an empty curve, a non-positive TPF, an accuracy outside [0, 100], a
    non-positive ``y_max``, or a highest-TPF point more than ``y_min_offset`` below the lowest-TPF one.
    """
    pts = check_points(points)
    if isinstance(y_max, bool) or not isinstance(y_max, (int, float)) or not math.isfinite(y_max) or y_max <= 0:
        raise AUPError(f"y_max must be a positive accuracy in percent (the task's best), got {y_max!r}")
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not math.isfinite(alpha) or alpha < 0:
        raise AUPError(f"alpha must be a non-negative number, got {alpha!r}")
    if not isinstance(y_min_offset, (int, float)) or not math.isfinite(y_min_offset) or y_min_offset < 0:
        raise AUPError(f"y_min_offset must be a non-negative number of percentage points, got {y_min_offset!r}")

    ordered = sorted(pts, key=lambda p: p[0])
    y_1, y_last = ordered[0][1], ordered[-1][1]
    if y_1 - y_last > y_min_offset:
        raise AUPError(f"accuracy drops by {y_1 - y_last:.4g} points from the lowest-TPF point ({ordered[0]}) to the "
                       f"highest-TPF point ({ordered[-1]}), more than y_min_offset={y_min_offset}; drop the points "
                       "below the floor (d3llm.eval.within_floor) or sweep less far")
    floor = y_1 - y_min_offset
    kept = [p for p in ordered if p[1] >= floor]

    area = kept[0][0] * kept[0][1]
    for (rho_prev, y_prev), (rho, y) in zip(kept, kept[1:]):
        area += 0.5 * (rho - rho_prev) * (y * weight(y, y_max, alpha) + y_prev * weight(y_prev, y_max, alpha))
    return area
