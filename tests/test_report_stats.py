"""Report statistics against hand-computed cases, published tables and scipy."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sst

from techbench.report import stats


def test_iqm_of_known_arrays() -> None:
    # 1..8: the middle half is 3, 4, 5, 6.
    assert stats.iqm(np.arange(1, 9)) == pytest.approx(4.5)
    # Outliers in the outer quartiles do not move it: middle of 10 values = items 3..8.
    assert stats.iqm([0, 0, 1, 2, 3, 4, 5, 6, 100, 100]) == pytest.approx(3.5)
    assert math.isnan(stats.iqm([]))


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 7, 10, 33, 100])
def test_iqm_matches_scipy_trim_mean(n: int) -> None:
    x = np.random.default_rng(n).standard_cauchy(n)
    assert stats.iqm(x) == pytest.approx(sst.trim_mean(x, 0.25))
    batch = np.random.default_rng(n + 1).normal(size=(6, n))
    np.testing.assert_allclose(stats.iqm(batch, axis=1), sst.trim_mean(batch, 0.25, axis=1))


def test_bootstrap_single_stratum_matches_scipy_percentile() -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(size=40)
    lo, hi = stats.stratified_bootstrap_ci(x, n_resamples=4000, seed=3)
    ref = sst.bootstrap(
        (x,),
        lambda a, axis: sst.trim_mean(a, 0.25, axis=axis),
        n_resamples=4000,
        method="percentile",
        rng=np.random.default_rng(4),
    ).confidence_interval
    assert lo == pytest.approx(ref.low, abs=0.06)
    assert hi == pytest.approx(ref.high, abs=0.06)
    assert lo < stats.iqm(x) < hi


def test_bootstrap_interval_coverage_is_near_nominal() -> None:
    # The IQM of a symmetric distribution is its centre (0 here).
    rng = np.random.default_rng(0)
    hits = 0
    trials = 200
    for i in range(trials):
        x = rng.normal(size=25)
        lo, hi = stats.stratified_bootstrap_ci(x, n_resamples=1000, seed=i)
        hits += lo <= 0.0 <= hi
    assert 0.85 <= hits / trials <= 0.99


def test_bootstrap_is_stratified() -> None:
    # Two constant strata of equal size: every stratified resample has mean exactly 5.
    x = np.array([0.0] * 5 + [10.0] * 5)
    strata = ["a"] * 5 + ["b"] * 5
    lo, hi = stats.stratified_bootstrap_ci(x, strata, statistic=np.mean)
    assert lo == pytest.approx(5.0) and hi == pytest.approx(5.0)
    lo2, hi2 = stats.stratified_bootstrap_ci(x, statistic=np.mean)
    assert hi2 - lo2 > 2.0
    assert all(math.isnan(v) for v in stats.stratified_bootstrap_ci([1.0]))


def test_holm_hand_example() -> None:
    # Sorted 0.01, 0.03, 0.04 -> 3*0.01, max(.., 2*0.03), max(.., 1*0.04).
    np.testing.assert_allclose(stats.holm([0.01, 0.04, 0.03]), [0.03, 0.06, 0.06])


def test_friedman_matches_scipy_and_hand_ranks() -> None:
    scores = pd.DataFrame(
        {"a": [0.9, 0.8, 0.85, 0.7], "b": [0.8, 0.7, 0.9, 0.6], "c": [0.5, 0.6, 0.4, 0.65]}
    )
    res = stats.friedman(scores)
    ref = sst.friedmanchisquare(scores["a"], scores["b"], scores["c"])
    assert res["statistic"] == pytest.approx(ref.statistic)
    assert res["pvalue"] == pytest.approx(ref.pvalue)
    # Ranks per row (1 = best): a: 1,1,2,1 ; b: 2,2,1,3 ; c: 3,3,3,2.
    ranks = res["ranks"]
    assert ranks["a"] == pytest.approx(1.25)
    assert ranks["b"] == pytest.approx(2.0)
    assert ranks["c"] == pytest.approx(2.75)
    nem = res["nemenyi"]
    assert nem.shape == (3, 3) and nem.loc["a", "a"] == pytest.approx(1.0)


def test_friedman_lower_is_better_flips_ranks() -> None:
    scores = pd.DataFrame({"a": [1.0, 1.0, 1.0], "b": [2.0, 2.0, 2.0], "c": [3.0, 3.0, 3.0]})
    assert stats.friedman(scores, higher_is_better=False)["ranks"]["a"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match=">= 3 techniques"):
        stats.friedman(scores[["a", "b"]])


@pytest.mark.parametrize(("k", "q"), [(2, 1.960), (3, 2.343), (4, 2.569), (5, 2.728)])
def test_critical_difference_uses_demsar_table(k: int, q: float) -> None:
    # Demsar (2006), Table 5(a): q_0.05 for the Nemenyi test.
    n = 10
    expected = q * math.sqrt(k * (k + 1) / (6 * n))
    assert stats.critical_difference(k, n) == pytest.approx(expected, rel=2e-3)


def test_probability_of_improvement_hand_count() -> None:
    # x=[1,2,3] vs y=[2,2]: wins 3>2 (x2), ties 2=2 (x2) -> (2 + 0.5*2) / 6.
    assert stats.probability_of_improvement([1, 2, 3], [2, 2]) == pytest.approx(0.5)
    # x=[3,4] vs y=[1,2,3]: 3 beats 1,2 and ties 3; 4 beats all -> 5.5 / 6.
    assert stats.probability_of_improvement([3, 4], [1, 2, 3]) == pytest.approx(5.5 / 6)
    rng = np.random.default_rng(2)
    x, y = rng.integers(0, 5, 12), rng.integers(0, 5, 9)
    u = sst.mannwhitneyu(x, y).statistic
    assert stats.probability_of_improvement(x, y) == pytest.approx(u / (12 * 9))


def test_performance_profile_hand_example() -> None:
    inf = math.inf
    times = pd.DataFrame({"A": [1.0, 3.0, inf], "B": [2.0, 1.0, 4.0]}, index=["w1", "w2", "w3"])
    # Ratios: A = 1, 3, inf ; B = 2, 1, 1.
    rho, score = stats.performance_profile(times, taus=[1.0, 2.0, 3.0, 4.0])
    np.testing.assert_allclose(rho["A"], [1 / 3, 1 / 3, 2 / 3, 2 / 3])
    np.testing.assert_allclose(rho["B"], [2 / 3, 1.0, 1.0, 1.0])
    # Score = mean over workloads of (4 - r)+ / 3: A = (1 + 1/3 + 0)/3, B = (2/3 + 1 + 1)/3.
    assert score["A"] == pytest.approx(4 / 9)
    assert score["B"] == pytest.approx(8 / 9)
    # ... which is the normalised integral of rho over [1, 4].
    fine = np.linspace(1, 4, 30001)
    rho_f, _ = stats.performance_profile(times, taus=fine)
    assert np.trapezoid(rho_f["A"], fine) / 3 == pytest.approx(4 / 9, abs=1e-3)


def test_performance_profile_all_missed_workload_and_missing_cells() -> None:
    inf = math.inf
    times = pd.DataFrame({"A": [inf, 1.0, np.nan], "B": [inf, 1.0, 2.0]})
    rho, score = stats.performance_profile(times, taus=[1.0, 4.0])
    # Row 3 (A not run) is dropped; row 1 is a miss for both; row 2 a tie.
    np.testing.assert_allclose(rho["A"], [0.5, 0.5])
    assert score["A"] == pytest.approx(0.5) and score["B"] == pytest.approx(0.5)


def test_indistinguishable_from_best_needs_enough_seeds() -> None:
    strong = {"best": [0.9, 0.91, 0.92], "worse": [0.5, 0.51, 0.52]}
    res = stats.indistinguishable_from_best(strong).set_index("group")
    # 3 against 3: the smallest one-sided Mann-Whitney p is 1/20 = 0.05, never below.
    assert res.loc["worse", "p_raw"] == pytest.approx(0.05)
    assert res.loc["worse", "indistinguishable"] and res.loc["worse", "tested"]
    single = stats.indistinguishable_from_best({"a": [0.9], "b": [0.1]}).set_index("group")
    assert not single["tested"].any()
    many = {
        "best": np.linspace(0.9, 0.95, 8),
        "close": np.linspace(0.9, 0.95, 8) - 0.001,
        "worse": np.linspace(0.5, 0.55, 8),
    }
    res = stats.indistinguishable_from_best(many).set_index("group")
    assert res.loc["best", "is_best"]
    assert not res.loc["worse", "indistinguishable"]
    assert res.loc["close", "indistinguishable"]
    low = stats.indistinguishable_from_best(
        {"a": [1.0, 1.1, 1.2, 1.3, 1.4], "b": [5.0, 5.1, 5.2, 5.3, 5.4]}, higher_is_better=False
    ).set_index("group")
    assert low.loc["a", "is_best"] and not low.loc["b", "indistinguishable"]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_poi_interval_equals_the_pairwise_bootstrap(seed):
    """The counted bootstrap of ``poi_with_ci`` gives exactly the numbers of comparing every
    resampled pair (the rliable definition), with ties, NaN and infinities."""
    rng = np.random.default_rng(seed)
    pairs = []
    for n, m in ((5, 7), (30, 1), (16, 16)):
        x = rng.integers(0, 6, n).astype(float)
        y = rng.integers(0, 6, m).astype(float)
        x[0], y[-1] = np.nan, np.inf
        pairs.append((x, y))
    draws = np.random.default_rng(seed + 10)
    boot = np.zeros(300)
    for x, y in pairs:
        xb = x[draws.integers(0, x.size, size=(300, x.size))][:, :, None]
        yb = y[draws.integers(0, y.size, size=(300, y.size))][:, None, :]
        boot += ((xb > yb).mean(axis=(1, 2)) + 0.5 * (xb == yb).mean(axis=(1, 2))) / len(pairs)
    alpha = (1.0 - 0.95) / 2.0  # the 95 % interval, computed as the function does
    lo, hi = np.quantile(boot, [alpha, 1.0 - alpha])
    p, plo, phi = stats.poi_with_ci(pairs, n_resamples=300, seed=seed + 10)
    assert (plo, phi) == (float(lo), float(hi))
    brute = [
        ((x[:, None] > y[None, :]).mean() + 0.5 * (x[:, None] == y[None, :]).mean())
        for x, y in pairs
    ]
    assert p == pytest.approx(np.mean(brute), abs=1e-12)


def _reference_interval(x: np.ndarray, strata: np.ndarray, n: int, seed: int) -> np.ndarray:
    """The documented bootstrap rebuilt: each stratum (first-seen order) resampled with
    replacement from ``default_rng(seed)``, each resample's IQM by scipy's ``trim_mean``, except
    that NaN sorts last and is cut (as ``np.partition``) where scipy would propagate it."""
    draw = np.random.default_rng(seed)
    parts = []
    for s in pd.unique(pd.Series(strata)):
        g = x[strata == s]
        parts.append(g[draw.integers(0, g.size, size=(n, g.size))])
    boot = np.concatenate(parts, axis=1)
    k = int(0.25 * x.size)
    ref = np.array(
        [
            np.partition(r, (k, x.size - k - 1))[k : x.size - k].mean()
            if np.isnan(r).any()
            else sst.trim_mean(r, 0.25)
            for r in boot
        ]
    )
    np.testing.assert_allclose(stats.iqm(boot, axis=1), ref, rtol=1e-12, atol=1e-12)
    with np.errstate(invalid="ignore"):
        return np.quantile(ref, [0.025, 0.975])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_bootstrap_iqm_equals_scipy_trim_mean_of_each_resample(seed: int) -> None:
    # Equal up to summation order (atol); ties, infinities and NaN included. The second call
    # has the same strata sizes and seed, so it reuses the first call's draws.
    rng = np.random.default_rng(seed)
    x = np.round(rng.normal(size=57), 1)
    x[[3, 9]] = np.inf
    x[20] = -np.inf
    if seed == 2:
        x[5] = np.nan
    strata = rng.choice(["b", "a", "c"], size=x.size)
    for values in (x, np.round(rng.normal(size=x.size), 2)):
        got = stats.stratified_bootstrap_ci(values, strata, n_resamples=700, seed=seed)
        want = _reference_interval(values, strata, 700, seed)
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


def test_strata_split_equals_one_mask_per_stratum() -> None:
    # Brute force: one boolean mask per distinct label, labels in first-seen order.
    rng = np.random.default_rng(0)
    for _ in range(100):
        n = int(rng.integers(0, 60))
        x = rng.normal(size=n)
        labels = rng.choice(np.array(["b", "a", "c", "dd", "e"], dtype=object), size=n)
        want = [x[labels == s] for s in dict.fromkeys(labels)]
        got = stats._by_stratum(x, labels)
        assert len(got) == len(want)
        for a, b in zip(got, want, strict=True):
            np.testing.assert_array_equal(a, b)
