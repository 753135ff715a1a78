"""Expected max of n search trials: hand-computed cases and brute force over all draws."""

from __future__ import annotations

import itertools
import statistics
from fractions import Fraction

import pytest

from techbench.report.expmax import curves, expected_max, expected_max_without_replacement


def test_hand_computed_three_scores() -> None:
    # with replacement, n=2 over {1,2,3}: P(max=1)=1/9, P(max=2)=3/9, P(max=3)=5/9
    mean, var = expected_max([3.0, 1.0, 2.0], 2)
    assert mean == pytest.approx(22 / 9)
    assert var == pytest.approx((1 + 3 * 4 + 5 * 9) / 9 - (22 / 9) ** 2)
    # without replacement, n=2: pairs {1,2},{1,3},{2,3} -> maxima 2, 3, 3
    mean, var = expected_max_without_replacement([3.0, 1.0, 2.0], 2)
    assert mean == pytest.approx(8 / 3)
    assert var == pytest.approx(statistics.pvariance([2, 3, 3]))
    # n = 1 is the mean; without replacement at n = N is the max, with zero variance
    assert expected_max([1.0, 2.0, 6.0], 1)[0] == pytest.approx(3.0)
    assert expected_max_without_replacement([1.0, 2.0, 6.0], 3) == pytest.approx((6.0, 0.0))


@pytest.mark.parametrize("scores", [[0.1, 0.5, 0.5, 0.9, 0.2], [3.0, -1.0, 2.5, 2.5], [7.0]])
def test_brute_force_over_all_draws(scores: list[float]) -> None:
    big_n = len(scores)
    exact = [Fraction(s) for s in scores]
    for n in range(1, big_n + 1):
        tuples = [max(t) for t in itertools.product(exact, repeat=n)]
        subsets = [max(c) for c in itertools.combinations(exact, n)]
        for maxima, est in ((tuples, expected_max), (subsets, expected_max_without_replacement)):
            mean, var = est(scores, n)
            assert mean == pytest.approx(float(statistics.fmean(maxima)), abs=1e-12)
            assert var == pytest.approx(float(statistics.pvariance(maxima)), abs=1e-12)
    rows = curves(scores)
    assert [r["n"] for r in rows] == list(range(1, big_n + 1))
    assert rows[-1]["tang_mean"] == max(scores)
    assert all(a["dodge_mean"] <= b["dodge_mean"] + 1e-12 for a, b in itertools.pairwise(rows))


def test_rejects_what_it_cannot_estimate() -> None:
    with pytest.raises(ValueError):
        expected_max([], 1)
    with pytest.raises(ValueError):
        expected_max([1.0, float("-inf")], 2)
    with pytest.raises(ValueError):
        expected_max_without_replacement([1.0, 2.0], 3)
