"""Statistics the report is allowed to claim, each a small pure function.

- :func:`iqm`: interquartile mean (mean of the middle 50 %, ``scipy.stats.trim_mean(x, 0.25)``),
  the robust point estimate of rliable (Agarwal et al., 2021, "Deep RL at the edge of the
  statistical precipice").
- :func:`stratified_bootstrap_ci`: percentile bootstrap interval where each stratum (dataset)
  is resampled with replacement independently, as rliable does across tasks.
- :func:`indistinguishable_from_best`: one-sided Mann-Whitney U of each candidate against the
  best, Holm-corrected (Holm 1979) across candidates.
- :func:`friedman`: Friedman test over blocks (datasets) with average ranks, Nemenyi post-hoc
  and the critical difference ``q_alpha * sqrt(k (k + 1) / (6 N))`` (Demsar 2006, JMLR 7).
- :func:`probability_of_improvement`: ``P(X > Y) + P(X = Y) / 2`` (rliable).
- :func:`stratified_resamples` / :func:`poi_with_ci`: the stratified bootstrap of rliable applied
  to a difference of IQMs and to the probability of improvement averaged over contexts.
- :func:`performance_profile`: AlgoPerf (Dahl et al., 2023) profiles
  ``rho_s(tau) = |{w : t_sw / min_s' t_s'w <= tau}| / |W|`` and the score
  ``(1 / (tau_max - 1)) * integral_1^tau_max rho_s(tau) dtau``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import pandas as pd
from scipy import stats

MIN_SEEDS = 5


def trim_mean(a: np.ndarray, axis: int = -1) -> np.ndarray:
    """``scipy.stats.trim_mean(a, 0.25, axis)``: the same middle values (NaN sorts last, as in
    its partition), found by one sort of the last axis, which numpy vectorizes; the two-pivot
    ``np.partition`` of a bootstrap matrix is about 4x slower (``benchmarks/trim_mean.py``)."""
    a = np.moveaxis(np.asarray(a, dtype=float), axis, -1)
    n = a.shape[-1]
    k = int(0.25 * n)
    if k == 0:
        return a.mean(axis=-1)
    return np.sort(a, axis=-1)[..., k : n - k].mean(axis=-1)


def iqm(values: Sequence[float] | np.ndarray, axis: int | None = None) -> float | np.ndarray:
    """Interquartile mean: the mean of the values between the 25th and 75th percentile
    (``int(n / 4)`` values cut from each end, as ``scipy.stats.trim_mean(x, 0.25)``)."""
    arr = np.asarray(values, dtype=float)
    if axis is None:
        arr = arr.ravel()
        if arr.size == 0:
            return math.nan
        return float(trim_mean(arr))
    return trim_mean(arr, axis)


def stratified_bootstrap_ci(
    values: Sequence[float] | np.ndarray,
    strata: Sequence[object] | np.ndarray | None = None,
    *,
    statistic: Callable[..., np.ndarray] | None = None,
    n_resamples: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
    max_work: int = 4_000_000,
) -> tuple[float, float]:
    """Percentile bootstrap interval of ``statistic`` (default IQM), resampling within strata.

    Returns ``(nan, nan)`` with fewer than 2 values: one run supports no interval. For very
    large samples the number of resamples is lowered so that resamples x values stays under
    ``max_work`` (never below 500); such intervals are narrow anyway.
    """
    x = np.asarray(values, dtype=float)
    if x.size < 2:
        return (math.nan, math.nan)
    n_resamples = max(500, min(n_resamples, max_work // x.size))
    stat = statistic or (lambda a, axis: trim_mean(a, axis))
    groups = [x] if strata is None else _by_stratum(x, strata)
    draws = _draws(tuple(g.size for g in groups if g.size), n_resamples, seed)
    parts = [g[d] for g, d in zip((g for g in groups if g.size), draws, strict=True)]
    boot = stat(np.concatenate(parts, axis=1), axis=1)
    alpha = (1.0 - confidence) / 2.0
    lo, hi = np.quantile(boot, [alpha, 1.0 - alpha])
    return (float(lo), float(hi))


def _by_stratum(x: np.ndarray, strata: Sequence[object] | np.ndarray) -> list[np.ndarray]:
    """``[x[strata == s] for s in pd.unique(strata)]`` (a missing label matches nothing) from
    one factorization and a stable sort, not one comparison of every label per stratum."""
    codes, uniques = pd.factorize(pd.Series(np.asarray(strata)))
    if not len(uniques):
        return []
    kept = codes >= 0
    x, codes = x[kept], codes[kept]
    order = np.argsort(codes, kind="stable")
    bounds = np.cumsum(np.bincount(codes, minlength=len(uniques)))[:-1]
    return np.split(x[order], bounds)


_DRAWS: dict[tuple[tuple[int, ...], int, int], list[np.ndarray]] = {}


def _draws(sizes: tuple[int, ...], n_resamples: int, seed: int) -> list[np.ndarray]:
    """``rng.integers(0, size, (n_resamples, size))`` per stratum, in order, from
    ``default_rng(seed)``; the last set is kept, as a report's cells of equal strata sizes
    (the same seed) draw the same indices, and drawing them is most of a small bootstrap."""
    key = (sizes, n_resamples, seed)
    if key not in _DRAWS:
        rng = np.random.default_rng(seed)
        draws = [rng.integers(0, s, size=(n_resamples, s)) for s in sizes]
        for d in draws:
            d.flags.writeable = False
        _DRAWS.clear()
        _DRAWS[key] = draws
    return _DRAWS[key]


def stratified_resamples(
    values: np.ndarray, strata: np.ndarray, n_resamples: int, rng: np.random.Generator
) -> np.ndarray:
    """``(n_resamples, n)`` bootstrap samples of ``values``, each stratum resampled with
    replacement on its own (so every resample keeps each stratum's size)."""
    parts = []
    for g in _by_stratum(np.asarray(values, dtype=float), strata):
        parts.append(g[rng.integers(0, g.size, size=(n_resamples, g.size))])
    return np.concatenate(parts, axis=1) if parts else np.empty((n_resamples, 0))


def poi_with_ci(
    pairs: Sequence[tuple[np.ndarray, np.ndarray]],
    *,
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> tuple[float, float, float]:
    """Probability of improvement of X over Y averaged over contexts (rliable: the mean over
    tasks of ``P(X > Y) + P(X = Y) / 2``), with a percentile interval from resampling X and Y
    within each context independently. ``pairs`` holds ``(x, y)`` per context; NaN when empty."""
    pairs = [(np.asarray(x, float), np.asarray(y, float)) for x, y in pairs if len(x) and len(y)]
    if not pairs:
        return (math.nan, math.nan, math.nan)
    point = float(np.mean([probability_of_improvement(x, y) for x, y in pairs]))
    rng = np.random.default_rng(seed)
    boot = np.zeros(n_resamples)
    for x, y in pairs:
        cx = resample_counts(x.size, n_resamples, rng)
        cy = resample_counts(y.size, n_resamples, rng)
        greater, equal = _pair_counts(x, y, cx, cy)
        total = x.size * y.size
        boot += (greater / total + 0.5 * (equal / total)) / len(pairs)
    alpha = (1.0 - confidence) / 2.0
    lo, hi = np.quantile(boot, [alpha, 1.0 - alpha])
    return (point, float(lo), float(hi))


def resample_counts(n: int, n_resamples: int, rng: np.random.Generator) -> np.ndarray:
    """``(n_resamples, n)``: how often each value is drawn in each bootstrap resample (the
    draws of ``rng.integers(0, n, size=(n_resamples, n))``, counted)."""
    draws = rng.integers(0, n, size=(n_resamples, n))
    draws += np.arange(n_resamples)[:, None] * n
    return np.bincount(draws.ravel(), minlength=n_resamples * n).reshape(n_resamples, n)


def _pair_counts(
    x: np.ndarray, y: np.ndarray, cx: np.ndarray, cy: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Per resample, the number of (x, y) pairs with ``x > y`` and with ``x == y`` among the
    values drawn ``cx`` and ``cy`` times: ``sum_i cx_i #{draws of y below x_i}`` from cumulative
    counts over the sorted ``y``, O(resamples (n + m)) instead of the n x m comparisons (NaN
    compares false, as with ``>`` and ``==``)."""
    order = np.argsort(y, kind="stable")
    cum = np.zeros((cy.shape[0], y.size + 1), dtype=np.int64)
    np.cumsum(cy[:, order], axis=1, out=cum[:, 1:])
    ys = y[order]
    lo, hi = np.searchsorted(ys, x, "left"), np.searchsorted(ys, x, "right")
    weight = np.where(np.isnan(x), 0, cx)
    below = cum[:, lo]
    greater = (weight * below).sum(axis=1)
    equal = (weight * (cum[:, hi] - below)).sum(axis=1)
    return greater, equal


def holm(pvalues: Sequence[float]) -> np.ndarray:
    """Holm-Bonferroni adjusted p-values (monotone, capped at 1)."""
    p = np.asarray(pvalues, dtype=float)
    m = p.size
    order = np.argsort(p)
    adj = np.empty(m)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, (m - rank) * p[i])
        adj[i] = min(1.0, running)
    return adj


def indistinguishable_from_best(
    groups: Mapping[str, Sequence[float]],
    *,
    higher_is_better: bool = True,
    alpha: float = 0.05,
) -> pd.DataFrame:
    """For each group: is it worse than the best group at Holm-corrected level ``alpha``?

    The best group has the highest IQM (lowest when ``higher_is_better`` is false). Every other
    group is tested with a one-sided Mann-Whitney U (H1: the best is better); groups that are
    not rejected are "indistinguishable from the best". A group with fewer than 2 values
    cannot be told apart (p = 1, ``tested`` false).
    """
    sign = 1.0 if higher_is_better else -1.0
    names = list(groups)
    centre = {n: sign * iqm(groups[n]) for n in names}
    best = max(names, key=lambda n: -math.inf if math.isnan(centre[n]) else centre[n])
    b = sign * np.asarray(groups[best], dtype=float)
    raw, tested = [], []
    for n in names:
        o = sign * np.asarray(groups[n], dtype=float)
        ok = n != best and b.size >= 2 and o.size >= 2
        tested.append(ok)
        raw.append(float(stats.mannwhitneyu(b, o, alternative="greater").pvalue) if ok else 1.0)
    adj = holm(raw)
    return pd.DataFrame(
        {
            "group": names,
            "iqm": [sign * centre[n] for n in names],
            "is_best": [n == best for n in names],
            "tested": tested,
            "p_raw": raw,
            "p_holm": adj,
            "indistinguishable": [n == best or p >= alpha for n, p in zip(names, adj, strict=True)],
        }
    )


def average_ranks(scores: pd.DataFrame, *, higher_is_better: bool = True) -> pd.Series:
    """Mean rank of each column over the rows (blocks); rank 1 is the best, ties averaged."""
    ranked = scores.rank(axis=1, ascending=not higher_is_better, method="average")
    return ranked.mean(axis=0)


def critical_difference(k: int, n_blocks: int, alpha: float = 0.05) -> float:
    """Nemenyi critical difference of average ranks (Demsar 2006, eq. in section 3.2.2)."""
    q = stats.studentized_range.ppf(1 - alpha, k, 1e6) / math.sqrt(2.0)
    return float(q * math.sqrt(k * (k + 1) / (6.0 * n_blocks)))


def friedman(scores: pd.DataFrame, *, higher_is_better: bool = True) -> dict[str, object]:
    """Friedman test of the columns (treatments) over complete rows (blocks).

    Returns the statistic, p-value, average ranks, the Nemenyi p-value matrix
    (scikit-posthocs) and the critical difference. Needs at least 3 treatments and 2 blocks.
    """
    complete = scores.dropna(axis=0, how="any")
    k, n = complete.shape[1], complete.shape[0]
    if k < 3 or n < 2:
        raise ValueError(f"Friedman needs >= 3 techniques and >= 2 blocks, got {k} and {n}")
    res = stats.friedmanchisquare(*(complete[c].to_numpy(float) for c in complete.columns))
    out: dict[str, object] = {
        "statistic": float(res.statistic),
        "pvalue": float(res.pvalue),
        "n_blocks": n,
        "k": k,
        "ranks": average_ranks(complete, higher_is_better=higher_is_better),
        "cd": critical_difference(k, n),
    }
    try:
        import scikit_posthocs as sp

        oriented = complete if higher_is_better else -complete
        nem = sp.posthoc_nemenyi_friedman(oriented.reset_index(drop=True))
        nem.index = nem.columns = list(complete.columns)
        out["nemenyi"] = nem
    except ImportError:  # pragma: no cover - scikit-posthocs is a declared dependency
        out["nemenyi"] = None
    return out


def probability_of_improvement(
    x: Sequence[float] | np.ndarray, y: Sequence[float] | np.ndarray
) -> float:
    """``P(X > Y) + 0.5 P(X = Y)`` over all pairs (the Mann-Whitney U statistic / (n m))."""
    a = np.asarray(x, dtype=float)[:, None]
    b = np.asarray(y, dtype=float)[None, :]
    if a.size == 0 or b.size == 0:
        return math.nan
    return float(((a > b).sum() + 0.5 * (a == b).sum()) / (a.size * b.size))


def performance_profile(
    times: pd.DataFrame,
    taus: Sequence[float] | np.ndarray | None = None,
    *,
    tau_max: float = 4.0,
) -> tuple[pd.DataFrame, pd.Series]:
    """AlgoPerf performance profiles of the columns (techniques) over the rows (workloads).

    ``times`` holds time-to-target, ``inf`` for a miss; rows with a missing (NaN) entry are
    dropped. A workload every technique missed counts as a miss for all. Returns
    ``(rho, score)``: ``rho`` indexed by tau, one column per technique, and the score
    ``(1 / (tau_max - 1)) * integral_1^tau_max rho(tau) dtau`` (exact for the step function).
    """
    t = times.dropna(axis=0, how="any").astype(float)
    taus = np.linspace(1.0, tau_max, 301) if taus is None else np.asarray(taus, dtype=float)
    if t.empty:
        empty = pd.DataFrame(index=pd.Index(taus, name="tau"), columns=times.columns, dtype=float)
        return empty, pd.Series(math.nan, index=times.columns, dtype=float)
    best = t.min(axis=1).to_numpy()
    tv = t.to_numpy()
    with np.errstate(invalid="ignore", divide="ignore"):
        ratio = tv / best[:, None]
    ratio = np.where((tv == best[:, None]) & np.isfinite(tv), 1.0, ratio)
    ratio[~np.isfinite(ratio)] = np.inf
    rho = (ratio[None, :, :] <= taus[:, None, None]).mean(axis=1)
    rho_df = pd.DataFrame(rho, index=pd.Index(taus, name="tau"), columns=t.columns)
    credit = np.clip(tau_max - np.maximum(ratio, 1.0), 0.0, None) / (tau_max - 1.0)
    score = pd.Series(credit.mean(axis=0), index=t.columns)
    return rho_df, score
