"""Expected best validation score after n search trials, from the N trials that were run.

Reporting only the best of N search trials hides how much of a technique's advantage is bought
with budget. Two estimators of E[max of n] from the observed scores v_(1) <= ... <= v_(N):

- **with replacement** (Dodge et al. 2019, Show Your Work: Improved Reporting of Experimental
  Results, eq. 1): the n draws are i.i.d. from the empirical distribution, so
  P(max = v_(i)) = (i/N)^n - ((i-1)/N)^n and E[max_n] = sum_i v_(i) [(i/N)^n - ((i-1)/N)^n].
  Defined for every n >= 1; biased low for n close to N (it may redraw the same trial).
- **without replacement** (Tang et al. 2020, Showing Your Work Doesn't Always Work, the unbiased
  estimator): n of the N trials are drawn without replacement, so
  P(max = v_(i)) = C(i-1, n-1) / C(N, n) and E[max_n] = sum_i v_(i) C(i-1, n-1) / C(N, n);
  defined for 1 <= n <= N and equal to max(v) at n = N.

Both also give the variance sum_i w_i (v_(i) - E)^2 under the same weights, the band Dodge et al.
draw around the curve. Positions, not values, carry the weights, so ties are handled exactly.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np


def _sorted(scores: Sequence[float]) -> np.ndarray:
    v = np.sort(np.asarray(scores, dtype=float))
    if v.size == 0:
        raise ValueError("expected-max needs at least one score")
    if not np.isfinite(v).all():
        raise ValueError("expected-max needs finite scores (map diverged trials first)")
    return v


def weights_with_replacement(big_n: int, n: int) -> np.ndarray:
    """P(the max of n i.i.d. draws is the i-th smallest of N), i = 1..N (Dodge et al. 2019)."""
    i = np.arange(1, big_n + 1, dtype=float)
    return (i / big_n) ** n - ((i - 1) / big_n) ** n


def weights_without_replacement(big_n: int, n: int) -> np.ndarray:
    """P(the max of n draws without replacement is the i-th smallest of N) (Tang et al. 2020)."""
    if not 1 <= n <= big_n:
        raise ValueError(f"n must be in [1, {big_n}], got {n}")
    total = math.comb(big_n, n)
    return np.array([math.comb(i - 1, n - 1) / total for i in range(1, big_n + 1)])


def _moments(v: np.ndarray, w: np.ndarray) -> tuple[float, float]:
    mean = float(np.dot(w, v))
    var = float(np.dot(w, (v - mean) ** 2))
    return mean, max(0.0, var)


def expected_max(scores: Sequence[float], n: int) -> tuple[float, float]:
    """``(E[max_n], Var[max_n])`` with replacement (Dodge et al. 2019); higher is better."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    v = _sorted(scores)
    return _moments(v, weights_with_replacement(v.size, n))


def expected_max_without_replacement(scores: Sequence[float], n: int) -> tuple[float, float]:
    """``(E[max_n], Var[max_n])`` drawing n of the N trials without replacement (Tang et al.)."""
    v = _sorted(scores)
    return _moments(v, weights_without_replacement(v.size, n))


def curves(scores: Sequence[float]) -> list[dict[str, float]]:
    """Both estimators for n = 1..N: rows ``n, dodge_mean, dodge_std, tang_mean, tang_std``."""
    rows = []
    for n in range(1, len(scores) + 1):
        dm, dv = expected_max(scores, n)
        tm, tv = expected_max_without_replacement(scores, n)
        rows.append(
            {
                "n": n,
                "dodge_mean": dm,
                "dodge_std": math.sqrt(dv),
                "tang_mean": tm,
                "tang_std": math.sqrt(tv),
            }
        )
    return rows
