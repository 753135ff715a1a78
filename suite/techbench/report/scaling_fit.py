"""A scaling law with one shared exponent and a factor per technique, and each technique's
parameter (or compute) multiplier over a baseline.

Model (Volkova et al. 2026, arXiv 2602.07712: per-technique exponents are ill-conditioned on a
few rungs, so techniques share them):

    L_i = E + A_t(i) * N_i^(-alpha),   E >= 0 and alpha > 0 shared, A_t > 0 per technique,

fitted by nonlinear least squares on log residuals, ``sum_i (log L_i - log(E + A_t N_i^-a))^2``
(:func:`scipy.optimize.least_squares`, trust-region reflective with bounds, analytic Jacobian,
the best of a small grid of starts), over every completed run. Log residuals weigh a rung's
relative error alike at every size (the losses of small and large rungs differ by a factor,
not an offset). ``N`` is the parameter count or the training compute.

Multiplier of technique t over the baseline b: the m with ``E + A_b (m N)^-a = E + A_t N^-a``
for every N, ``m = (A_b / A_t)^(1/a)``: the baseline needs m times the parameters (compute) to
match t; m > 1 when t is better. Intervals: seeds resampled within each (technique, rung) cell,
the model refitted (:data:`N_RESAMPLES` times, warm-started at the point fit), 95 % percentile
intervals (the per-rung selection of settings is not redone per resample).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.optimize import least_squares

N_RESAMPLES = 200
MIN_SIZES = 3
"""Distinct sizes (rungs) the fit needs: E, alpha and A are not identified on two."""
ALPHA_BOUNDS = (1e-3, 10.0)
A_FLOOR = 1e-6
"""Lower bound on A_t, relative to the technique's smallest loss: at the floor the law's size term
is under a millionth of every loss of t (``u = N / N_min >= 1``), so t's fitted loss does not fall
with size and its multiplier is not defined (``SharedFit.at_bound``)."""
MODEL_TEXT = (
    "L = E + A_t · N^(−α), with E ≥ 0 and α shared by all techniques and A_t > 0 per technique"
)
LOSS_TEXT = "Σ_i (log L_i − log(E + A_t(i) · N_i^(−α)))², nonlinear least squares on log residuals"


@dataclass(frozen=True)
class SharedFit:
    """A fitted law: ``e``, ``alpha``, ``a`` per technique (in the units of N), the root mean
    squared log residual and the number of points; ``at_bound``: the techniques whose A_t sits
    at its floor (:data:`A_FLOOR`: the loss does not fall with size)."""

    e: float
    alpha: float
    a: dict[str, float]
    rmse: float
    n_points: int
    at_bound: frozenset[str] = frozenset()

    def predict(self, technique: str, n: np.ndarray | float) -> np.ndarray:
        """``E + A_t N^-alpha``."""
        return np.asarray(self.e + self.a[technique] * np.asarray(n, float) ** -self.alpha)


def multiplier(a_base: float, a_t: float, alpha: float) -> float:
    """``(A_base / A_t)^(1/alpha)``: how many times the parameters (compute) the baseline needs
    to match technique t; NaN when either factor or alpha is not finite and positive, or the
    ratio overflows (computed in logs)."""
    if not all(math.isfinite(v) and v > 0 for v in (a_base, a_t, alpha)):
        return math.nan
    log_m = (math.log(a_base) - math.log(a_t)) / alpha
    return math.exp(log_m) if abs(log_m) < 700 else math.nan


def _residuals(z: np.ndarray, u: np.ndarray, ly: np.ndarray, codes: np.ndarray) -> np.ndarray:
    return np.log(z[0] + np.exp(z[2:][codes]) * u ** -z[1]) - ly


def _jacobian(z: np.ndarray, u: np.ndarray, ly: np.ndarray, codes: np.ndarray) -> np.ndarray:
    term = np.exp(z[2:][codes]) * u ** -z[1]
    p = z[0] + term
    jac = np.zeros((u.size, z.size))
    jac[:, 0] = 1.0 / p
    jac[:, 1] = -term * np.log(u) / p
    jac[np.arange(u.size), 2 + codes] = term / p
    return jac


def _starts(u: np.ndarray, y: np.ndarray, codes: np.ndarray, k: int) -> list[np.ndarray]:
    """A grid of starts: E a share of the smallest loss, alpha small to large, each A_t the
    median of ``(y - E) u^alpha`` over its points."""
    out = []
    for share in (0.0, 0.5, 0.9):
        e = share * float(y.min())
        for alpha in (0.1, 0.3, 1.0):
            gap = np.maximum(y - e, 1e-3 * y) * u**alpha
            la = [math.log(float(np.median(gap[codes == j]))) for j in range(k)]
            out.append(np.array([e, alpha, *la]))
    return out


def fit_shared(
    n: np.ndarray,
    loss: np.ndarray,
    technique: Sequence[str] | np.ndarray,
    start: SharedFit | None = None,
) -> SharedFit | None:
    """The least-squares :class:`SharedFit` (module doc) of the points with finite, positive
    N and loss; None with fewer than :data:`MIN_SIZES` distinct N or no more points than
    parameters. ``start``: a fit to start from (the bootstrap's warm start) instead of the grid."""
    n, loss = np.asarray(n, float), np.asarray(loss, float)
    tech = np.asarray(technique, dtype=object)
    ok = np.isfinite(n) & np.isfinite(loss) & (n > 0) & (loss > 0)
    n, loss, tech = n[ok], loss[ok], tech[ok]
    names, codes = np.unique(tech.astype(str), return_inverse=True)
    k = names.size
    if np.unique(n).size < MIN_SIZES or n.size <= k + 2:
        return None
    n0 = float(n.min())
    u, ly = n / n0, np.log(loss)
    if start is not None and all(t in start.a for t in names):
        la = [math.log(start.a[t] * n0**-start.alpha) for t in names]
        starts = [np.array([start.e, start.alpha, *la])]
    else:
        starts = _starts(u, loss, codes, k)
    floor = [math.log(A_FLOOR * float(loss[codes == j].min())) for j in range(k)]
    lower = np.array([0.0, ALPHA_BOUNDS[0], *floor])
    upper = np.array([np.inf, ALPHA_BOUNDS[1], *([np.inf] * k)])
    best = None
    for z0 in starts:
        z0 = np.clip(z0, lower, upper)
        res = least_squares(
            _residuals, z0, jac=_jacobian, bounds=(lower, upper), args=(u, ly, codes),
            method="trf", x_scale="jac",
        )  # fmt: skip
        if best is None or res.cost < best.cost:
            best = res
    assert best is not None
    e, alpha, la = float(best.x[0]), float(best.x[1]), best.x[2:]
    a = {str(t): float(math.exp(v) * n0**alpha) for t, v in zip(names, la, strict=True)}
    rmse = float(np.sqrt(np.mean(best.fun**2)))
    low = (best.active_mask[2:] == -1) | (la - lower[2:] < 1e-6)
    at_bound = frozenset(str(t) for t, b in zip(names, low, strict=True) if b)
    return SharedFit(e, alpha, a, rmse, int(n.size), at_bound)


def _interval(values: list[float]) -> tuple[float, float]:
    v = np.asarray(values, float)
    v = v[np.isfinite(v)]
    if v.size < 2:
        return (math.nan, math.nan)
    lo, hi = np.quantile(v, [0.025, 0.975])
    return float(lo), float(hi)


def bootstrap_fits(
    points: pd.DataFrame,
    x: str,
    fit: SharedFit,
    *,
    n_resamples: int = N_RESAMPLES,
    seed: int = 0,
) -> list[SharedFit]:
    """Refits of ``points`` (columns ``technique``, ``rung``, ``x``, ``value``) with the runs
    of each (technique, rung) cell resampled with replacement (finite values only)."""
    ok = np.isfinite(points[x].to_numpy(float)) & np.isfinite(points["value"].to_numpy(float))
    p = points[ok & (points["value"].to_numpy(float) > 0)]
    cells = [g.index.to_numpy() for _, g in p.groupby(["technique", "rung"], sort=True)]
    rng = np.random.default_rng(seed)
    xv, yv, tv = (p[c] for c in (x, "value", "technique"))
    out = []
    for _ in range(n_resamples):
        idx = np.concatenate([c[rng.integers(0, c.size, c.size)] for c in cells])
        refit = fit_shared(
            xv.loc[idx].to_numpy(), yv.loc[idx].to_numpy(), tv.loc[idx].to_numpy(), start=fit
        )
        if refit is not None:
            out.append(refit)
    return out


FLAT_NOTE = "loss does not fall with size: no multiplier"


def _fit_falling(p: pd.DataFrame, x: str) -> tuple[SharedFit | None, dict[str, float]]:
    """The fit of the techniques whose A_t is off its floor, refitted without those at it (a
    technique the law cannot describe would bend the shared exponent); with their floor A_t."""
    flat: dict[str, float] = {}
    fit = fit_shared(p[x].to_numpy(), p["value"].to_numpy(), p["technique"].to_numpy())
    while fit is not None and fit.at_bound:
        flat.update({t: fit.a[t] for t in fit.at_bound})
        p = p[~p["technique"].astype(str).isin(flat)]
        fit = fit_shared(p[x].to_numpy(), p["value"].to_numpy(), p["technique"].to_numpy())
    return fit, flat


def fit_table(
    points: pd.DataFrame,
    x: str,
    baseline: str,
    *,
    n_resamples: int = N_RESAMPLES,
    seed: int = 0,
) -> tuple[pd.DataFrame, SharedFit | None]:
    """One row per technique of one dataset's runs: E, alpha, A_t and the multiplier over
    ``baseline`` on ``x`` (``num_parameters`` or ``compute``), each with its 95 % interval.
    A technique whose A_t sits at its floor is left out of the fit, its multiplier NaN and its
    ``note`` :data:`FLAT_NOTE`. Empty (and None) when the fit is not identified
    (:func:`fit_shared`)."""
    p = points.reset_index(drop=True)
    fit, flat = _fit_falling(p, x)
    if fit is None:
        return pd.DataFrame(), None
    p = p[p["technique"].astype(str).isin(list(fit.a))]
    boots = bootstrap_fits(p, x, fit, n_resamples=n_resamples, seed=seed)
    e_ci = _interval([b.e for b in boots])
    alpha_ci = _interval([b.alpha for b in boots])
    rows = []
    for t in [*fit.a, *flat]:
        ms = [
            multiplier(b.a[baseline], b.a[t], b.alpha) if {baseline, t}.isdisjoint(b.at_bound)
            else math.nan
            for b in boots if baseline in b.a and t in b.a
        ]  # fmt: skip
        m = (
            multiplier(fit.a[baseline], fit.a[t], fit.alpha)
            if {baseline, t} <= set(fit.a)
            else math.nan
        )
        ci = _interval(ms) if math.isfinite(m) else (math.nan, math.nan)
        rows.append(
            {
                "technique": t, "baseline": baseline, "x": x, "E": fit.e,
                "E_ci_low": e_ci[0], "E_ci_high": e_ci[1], "alpha": fit.alpha,
                "alpha_ci_low": alpha_ci[0], "alpha_ci_high": alpha_ci[1],
                "A": fit.a.get(t, flat.get(t)), "multiplier": m, "multiplier_ci_low": ci[0],
                "multiplier_ci_high": ci[1], "rmse_log": fit.rmse, "n_points": fit.n_points,
                "n_resamples": len(boots), "note": FLAT_NOTE if t in flat else "",
            }
        )  # fmt: skip
    return pd.DataFrame(rows), fit
