"""Could shorter runs have told? Early signals as predictors of the final score.

Per workload (a dataset, model and budget) with at least :data:`MIN_TRIALS` trials (seeds,
settings or population members; a seeded subset of :data:`MAX_POPULATION` beyond it), every recorded signal (validation and training metrics,
health metrics averaged over layers) is read at :data:`FRACTIONS` of each trial's steps: the
last record at or before that step. Against the final score it gets

- Kendall's tau-b (:func:`kendall_tau`, ties as in ``scipy.stats.kendalltau``) with a 95 %
  percentile bootstrap interval over trials;
- the top-k agreement: the share of the final top-:data:`TOP_K` among the top-k by the signal,
  the signal oriented by the sign of its tau (a loss predicts by being low).

Nothing is trained for this: the rows are the ones the runs recorded (Jiang et al. 2020,
"Fantastic generalization measures", measured such correlations offline, once).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from .stats import resample_counts

MIN_TRIALS = 30
FRACTIONS = (0.1, 0.25, 0.5)
TOP_K = 3
N_RESAMPLES = 1000
SPLITS = ("val", "train", "health")
SKIPPED = frozenset({"nonfinite_grads", "seconds"})
MAX_POPULATION = 500
"""Trials per workload used (a seeded random subset beyond it): tau's pair matrices are n x n."""
SAFE_TAU = 0.6
"""|tau| whose whole interval must lie beyond it for early validation loss to be a safe proxy."""
WORKLOAD = ("dataset", "model", "epochs", "max_steps", "batch_size")


def kendall_tau(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Kendall's tau-b of each row pair of ``x`` and ``y`` (shape ``(..., n)``): concordant
    minus discordant pairs over ``sqrt((n0 - ties_x) (n0 - ties_y))``; NaN when a side is
    constant."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    sx = np.sign(x[..., :, None] - x[..., None, :])
    sy = np.sign(y[..., :, None] - y[..., None, :])
    s = (sx * sy).sum(axis=(-1, -2))
    nx = np.abs(sx).sum(axis=(-1, -2))
    ny = np.abs(sy).sum(axis=(-1, -2))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.asarray(s / np.sqrt(nx * ny), dtype=float)


def tau_with_ci(
    x: np.ndarray, y: np.ndarray, *, n_resamples: int = N_RESAMPLES, seed: int = 0
) -> tuple[float, float, float]:
    """``(tau, low, high)``: tau-b and its 95 % percentile bootstrap interval (trials resampled)."""
    n = x.size
    point = float(kendall_tau(x, y))
    rng = np.random.default_rng(seed)
    counts = resample_counts(n, n_resamples, rng).astype(float)
    sx = np.sign(x[:, None] - x[None, :])
    sy = np.sign(y[:, None] - y[None, :])
    with np.errstate(invalid="ignore", divide="ignore"):
        boot = _quad(counts, sx * sy) / np.sqrt(
            _quad(counts, np.abs(sx)) * _quad(counts, np.abs(sy))
        )
    boot = boot[np.isfinite(boot)]
    if boot.size == 0:
        return (point, math.nan, math.nan)
    lo, hi = np.quantile(boot, [0.025, 0.975])
    return (point, float(lo), float(hi))


def _quad(counts: np.ndarray, a: np.ndarray) -> np.ndarray:
    """``c^T a c`` per resample: the pair sum over a resample drawing trial i ``c_i`` times
    (a trial drawn twice ties with itself on both sides, as tau-b counts it)."""
    return np.einsum("bi,bi->b", counts @ a, counts)


def top_k_agreement(signal: np.ndarray, score: np.ndarray, k: int = TOP_K) -> float:
    """Share of the ``k`` highest ``score`` among the ``k`` highest ``signal`` (ties by order)."""
    k = min(k, signal.size)
    if k == 0:
        return math.nan
    early = set(np.argsort(-signal, kind="stable")[:k])
    final = set(np.argsort(-score, kind="stable")[:k])
    return len(early & final) / k


def early_values(metrics: pd.DataFrame, runs: pd.DataFrame, fraction: float) -> pd.DataFrame:
    """Per trial (index) and signal (column): the last value recorded at or before
    ``fraction`` of the trial's steps (health metrics averaged over layers)."""
    m = metrics[metrics["split"].isin(SPLITS) & ~metrics["metric"].isin(SKIPPED)]
    total = runs.set_index("trial_id")["steps"].astype(float)
    limit = m["trial_id"].map(total * fraction)
    m = m[m["step"].astype(float) <= limit]
    if m.empty:
        return pd.DataFrame(index=pd.Index([], name="trial_id"))
    name = m["split"].astype(str) + " " + m["metric"].astype(str)
    per = m.assign(signal=name).groupby(["trial_id", "signal", "step"], sort=True)["value"].mean()
    last = per.reset_index().drop_duplicates(["trial_id", "signal"], keep="last")
    return last.pivot(index="trial_id", columns="signal", values="value")


def predictor_table(
    metrics: pd.DataFrame, runs: pd.DataFrame, higher: bool, *, seed: int = 0
) -> pd.DataFrame:
    """One row per (workload, signal, fraction): n, tau with its interval, top-k agreement."""
    rows = []
    keys = [c for c in WORKLOAD if c in runs]
    sign = 1.0 if higher else -1.0
    metrics = metrics[metrics["split"].isin(SPLITS) & ~metrics["metric"].isin(SKIPPED)]
    for key, group in runs.groupby([runs[c].astype(str) for c in keys], sort=True, dropna=False):
        if len(group) < MIN_TRIALS:
            continue
        if len(group) > MAX_POPULATION:
            group = group.sample(MAX_POPULATION, random_state=seed)
        own = metrics[metrics["trial_id"].isin(group["trial_id"])]
        score = sign * group.set_index("trial_id")["score"].astype(float)
        workload = " · ".join(str(k) for k in (key if isinstance(key, tuple) else (key,))[:2])
        for fraction in FRACTIONS:
            early = early_values(own, group, fraction).reindex(score.index)
            for signal in early.columns:
                s = early[signal].to_numpy(float)
                y = score.to_numpy(float)
                ok = np.isfinite(s) & np.isfinite(y)
                if ok.sum() < MIN_TRIALS:
                    continue
                tau, lo, hi = tau_with_ci(s[ok], y[ok], seed=seed)
                oriented = s[ok] if not tau < 0 else -s[ok]
                rows.append({
                    "workload": workload, "signal": signal, "fraction": fraction,
                    "n_trials": int(ok.sum()), "tau": tau, "tau_ci_low": lo, "tau_ci_high": hi,
                    f"top{TOP_K}_agreement": top_k_agreement(oriented, y[ok]),
                })  # fmt: skip
    out = pd.DataFrame(rows)
    if out.empty:
        return out
    out["abs_tau"] = out["tau"].abs()
    return out.sort_values(["workload", "abs_tau"], ascending=[True, False]).reset_index(drop=True)


def verdicts(table: pd.DataFrame) -> list[str]:
    """Per workload, one sentence: was early validation loss a safe proxy here?"""
    out = []
    for workload, t in table.groupby("workload", sort=True):
        top = t.iloc[0]
        text = (
            f"{workload}: the best predictor is {top['signal']} at {top['fraction']:.0%} of the "
            f"budget (tau {top['tau']:.2f} [{top['tau_ci_low']:.2f}, {top['tau_ci_high']:.2f}])"
        )
        loss = t[(t["signal"] == "val loss") & (t["fraction"] == 0.25)]
        if loss.empty:
            out.append(text + "; no validation loss was recorded by 25% of the budget.")
            continue
        r = loss.iloc[0]
        near = min(abs(r["tau_ci_low"]), abs(r["tau_ci_high"]))
        ranks = r["tau_ci_low"] * r["tau_ci_high"] > 0 and near >= SAFE_TAU
        held = round(r[f"top{TOP_K}_agreement"] * TOP_K)
        text += (
            f"; validation loss at 25% (tau {r['tau']:.2f} [{r['tau_ci_low']:.2f}, "
            f"{r['tau_ci_high']:.2f}], its top-{TOP_K} held {held} of the final top-{TOP_K}) "
        )
        if ranks and held >= TOP_K - 1:
            text += "was a safe proxy here"
        elif ranks:
            text += "ranked the population well but would not have picked the final best: "
            text += "a safe proxy for pruning the worst, not for choosing the winner"
        else:
            text += "was not a safe proxy here"
        text += f" (safe: |tau| >= {SAFE_TAU} over its whole 95% interval and the top-{TOP_K} "
        text += f"holding at least {TOP_K - 1} of the final top-{TOP_K})."
        out.append(text)
    return out
