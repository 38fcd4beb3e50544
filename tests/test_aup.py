"""AUP (SPEC 9.1): properties of the metric and its errors."""

import math
import warnings

import numpy as np
import pytest

from d3llm.errors import AUPError, D3LLMError
from d3llm.eval import aup, weight, within_floor
from d3llm.eval.aup_metric import FractionAccuracyWarning


def test_single_point_at_tpf_one_is_its_accuracy():
    for y in (12.5, 74.1, 100.0):
        assert aup([(1.0, y)], y_max=100.0) == pytest.approx(y, abs=1e-12)
    # y_max does not matter for a lone point: the first rectangle is unweighted
    assert aup([(1.0, 40.0)], y_max=90.0) == pytest.approx(40.0)


def _plain_area(points):
    """Area under the piecewise-linear curve through the points, flat from TPF 0 to the first point."""
    pts = sorted(points)
    xs = np.array([0.0] + [p[0] for p in pts])
    ys = np.array([pts[0][1]] + [p[1] for p in pts])
    return float(np.sum(0.5 * np.diff(xs) * (ys[1:] + ys[:-1])))


def test_weight_one_everywhere_is_plain_area_from_zero():
    points = [(3.5, 71.0), (1.0, 74.0), (2.0, 73.5), (6.0, 70.0)]
    # W = 1 when every accuracy reaches y_max, or when alpha = 0
    assert aup(points, y_max=70.0) == pytest.approx(_plain_area(points), rel=1e-12)
    assert aup(points, y_max=99.0, alpha=0.0) == pytest.approx(_plain_area(points), rel=1e-12)
    # with a real penalty the area is smaller
    assert aup(points, y_max=99.0) < _plain_area(points)


def test_weight_function():
    assert weight(80.0, 80.0) == 1.0
    assert weight(90.0, 80.0) == 1.0
    assert weight(72.0, 80.0) == pytest.approx(math.exp(-3.0 * 0.1))


def test_drop_beyond_offset_raises_clear_error():
    with pytest.raises(AUPError, match=r"drops by 6 points.*y_min_offset=5"):
        aup([(1.0, 80.0), (4.0, 74.0)], y_max=80.0)
    assert isinstance(AUPError("x"), D3LLMError)
    # a larger offset accepts it
    assert aup([(1.0, 80.0), (4.0, 74.0)], y_max=80.0, y_min_offset=6.5) > 80.0


def test_points_below_floor_are_dropped():
    base = [(1.0, 80.0), (3.0, 78.0), (8.0, 76.0)]
    with_dip = base + [(5.0, 70.0)]          # an intermediate point below the floor (80 - 5 = 75)
    assert aup(with_dip, y_max=80.0) == aup(base, y_max=80.0)
    assert within_floor(with_dip) == base
    # within_floor also drops a last point below the floor, which aup refuses
    assert within_floor(base + [(10.0, 60.0)]) == base


def test_sorting_by_tpf():
    assert aup([(5.0, 70.0), (1.0, 72.0)], y_max=72.0) == aup([(1.0, 72.0), (5.0, 70.0)], y_max=72.0)


def test_y_max_across_methods_changes_every_score():
    a = [(1.0, 70.0), (4.0, 69.0)]
    b = [(1.0, 71.0), (6.0, 68.0)]
    alone_a, alone_b = aup(a, y_max=71.0), aup(b, y_max=71.0)
    # a third method with a better point raises y_max: both lose, by the weight of their parallel points
    ya, yb = aup(a, y_max=80.0), aup(b, y_max=80.0)
    assert ya < alone_a and yb < alone_b
    expected_a = 70.0 + 0.5 * 3.0 * (69.0 * weight(69.0, 80.0) + 70.0 * weight(70.0, 80.0))
    assert ya == pytest.approx(expected_a, rel=1e-12)


def test_fraction_accuracies_warn():
    with pytest.warns(FractionAccuracyWarning, match="percent"):
        aup([(1.0, 0.74), (3.0, 0.73)], y_max=0.74)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        aup([(1.0, 74.0)], y_max=74.0)


@pytest.mark.parametrize("points, message", [
    ([], "no points"),
    ([(0.0, 50.0)], "TPF must be positive"),
    ([(-1.0, 50.0)], "TPF must be positive"),
    ([(1.0, 101.0)], r"accuracy must be a percentage in \[0, 100\], got 101"),
    ([(1.0, -2.0)], "accuracy must be a percentage"),
    ([(1.0, float("nan"))], "finite number"),
    ([(1.0,)], "pair"),
    ([("1", 50.0)], "finite number"),
    ("1,50", "list of"),
])
def test_bad_points(points, message):
    with pytest.raises(AUPError, match=message):
        aup(points, y_max=90.0)


def test_bad_y_max():
    for bad in (0, -3.0, float("inf"), None):
        with pytest.raises(AUPError, match="y_max"):
            aup([(1.0, 50.0)], y_max=bad)
