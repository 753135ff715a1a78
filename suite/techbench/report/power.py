"""How many seeds: per headline comparison, the seeds per technique at which a comparison like
this one would separate (its 95 % margin interval excluding 0) with 80 % probability.

Resampling (the default): a simulated study draws ``n`` seeds per context for each of the two
techniques from their observed per-seed scores (with replacement, within each context) and takes
the IQM margin, as the headline does. Over :data:`N_STUDIES` studies this gives the margin's
sampling distribution at ``n``; a study *separates* when its margin is more than
``z_{0.975}`` standard deviations of that distribution from 0 (the width of the interval the
study's own bootstrap would draw). The separation rate grows with ``n``; :func:`seeds_needed`
finds the smallest ``n`` reaching :data:`POWER` by doubling then bisection (capped at
:data:`MAX_SEEDS`).

Parametric fallback, where a technique has fewer than :data:`.stats.MIN_SEEDS` seeds in a
context (too few to resample): normal scores with the observed standard deviations,
``n = (z_{1-a/2} + z_{power})^2 (s_1^2 + s_2^2) v / delta^2``, where ``v`` is the asymptotic
variance of the 25 %-trimmed mean (the IQM) of a standard normal relative to the mean's.

A smallest effect that matters (``min_effect``, in the score's units): the seeds needed to
detect it (the same noise, the runner-up shifted so the margin equals it), and *equivalent
within min_effect* when the observed 95 % margin interval lies inside ``(-min_effect,
min_effect)``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
from scipy import stats as sps

from .settings import AxisView, comparison_group
from .stats import MIN_SEEDS, trim_mean

POWER = 0.8
ALPHA = 0.05
N_STUDIES = 1000
MAX_SEEDS = 10_000
MAX_WORK = 4_000_000
"""Resampled scores per power evaluation: fewer studies for large ``n`` (never below 200)."""


def _iqm_variance_factor() -> float:
    """Asymptotic variance of the 25 %-trimmed mean of N(0, 1) (Stigler 1973), ~1.195."""
    c = float(sps.norm.ppf(0.75))
    inner = (2 * sps.norm.cdf(c) - 1) - 2 * c * sps.norm.pdf(c)
    return float((inner + 2 * 0.25 * c**2) / 0.5**2)


IQM_VARIANCE = _iqm_variance_factor()


def _z(power: float, alpha: float) -> tuple[float, float]:
    return float(sps.norm.ppf(1 - alpha / 2)), float(sps.norm.ppf(power))


def normal_seeds(
    sd_a: float, sd_b: float, delta: float, *, power: float = POWER, alpha: float = ALPHA
) -> float:
    """The parametric fallback: seeds per technique for normal scores (IQM compared)."""
    if not delta or not math.isfinite(delta):
        return math.inf
    za, zp = _z(power, alpha)
    return float(max(2, math.ceil((za + zp) ** 2 * (sd_a**2 + sd_b**2) * IQM_VARIANCE / delta**2)))


def separation_rate(
    a: Sequence[np.ndarray], b: Sequence[np.ndarray], n: int, *, alpha: float = ALPHA, seed: int = 0
) -> float:
    """The share of simulated studies of ``n`` seeds per context whose IQM margin of ``a`` over
    ``b`` is separated from 0 (see the module doc). ``a``/``b``: per-context score arrays."""
    rng = np.random.default_rng(seed)
    studies = int(max(200, min(N_STUDIES, MAX_WORK // max(1, 2 * n * len(a)))))
    diff = _study_iqm(a, n, studies, rng) - _study_iqm(b, n, studies, rng)
    sd = float(np.std(diff))
    if sd == 0.0:
        return float(np.mean(diff != 0))
    z = float(sps.norm.ppf(1 - alpha / 2))
    return float(np.mean(np.abs(diff) > z * sd))


def _study_iqm(groups: Sequence[np.ndarray], n: int, studies: int, rng: np.random.Generator):
    draws = [g[rng.integers(0, g.size, size=(studies, n))] for g in groups]
    return trim_mean(np.concatenate(draws, axis=1), axis=1)


def seeds_needed(
    a: Sequence[np.ndarray],
    b: Sequence[np.ndarray],
    *,
    power: float = POWER,
    seed: int = 0,
    cap: int = MAX_SEEDS,
) -> float:
    """Smallest ``n`` (seeds per technique per context) whose separation rate reaches
    ``power``; ``inf`` when even ``cap`` seeds do not (e.g. equal IQMs). A seed plan passes its
    own cap: above it the answer is "more than the cap", found without simulating larger n."""

    def rate(n: int) -> float:
        return separation_rate(a, b, n, seed=seed)

    lo, hi = 1, 2
    while rate(hi) < power:
        lo, hi = hi, hi * 2
        if hi > cap:
            return math.inf if rate(cap) < power else float(cap)
    while hi - lo > max(1, lo // 50):  # 2 % resolution: finer is below the Monte Carlo noise
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if rate(mid) >= power else (mid, hi)
    return float(hi)


def _groups(g: pd.DataFrame, tech: str, sign: float) -> dict[object, np.ndarray]:
    r = g[g["_tech"] == tech]
    return {c: sign * v.to_numpy(float) for c, v in r.groupby("_ctx", sort=True)["score"]}


def comparison(
    a: dict[object, np.ndarray],
    b: dict[object, np.ndarray],
    margin_ci: tuple[float, float],
    min_effect: float | None,
    seed: int = 0,
    *,
    power: float = POWER,
    cap: int = MAX_SEEDS,
) -> dict[str, object]:
    """One headline comparison's power row: seeds now, the method, the seeds needed at the
    observed margin and (with ``min_effect``) at the smallest effect, and equivalence."""
    ctxs = sorted(set(a) & set(b), key=str)
    xa = [a[c][np.isfinite(a[c])] for c in ctxs]
    xb = [b[c][np.isfinite(b[c])] for c in ctxs]
    n_now = min((min(x.size, y.size) for x, y in zip(xa, xb, strict=True)), default=0)
    margin = float(trim_mean(np.concatenate(xa))) - float(trim_mean(np.concatenate(xb)))
    resample = n_now >= MIN_SEEDS
    row: dict[str, object] = {
        "seeds_now": n_now,
        "method": "resampling" if resample else "normal",
        "margin": margin,
    }
    if n_now < 2:
        row.update(
            method="none", seeds_needed=math.nan, seeds_for_min_effect=math.nan, equivalent=False
        )
        return row

    def needed(shift: float, delta: float) -> float:
        if resample:
            return seeds_needed(xa, [x + shift for x in xb], seed=seed, power=power, cap=cap)
        sa = float(np.mean([np.std(x, ddof=1) for x in xa]))
        sb = float(np.mean([np.std(x, ddof=1) for x in xb]))
        n = normal_seeds(sa, sb, delta, power=power)
        return n if n <= cap else math.inf

    row["seeds_needed"] = needed(0.0, margin)
    if min_effect:
        row["seeds_for_min_effect"] = needed(margin - min_effect, min_effect)
        lo, hi = margin_ci
        row["equivalent"] = bool(-min_effect < lo and hi < min_effect)
    else:
        row.update(seeds_for_min_effect=math.nan, equivalent=False)
    return row


def power_table(
    views: Mapping[str, AxisView],
    head: pd.DataFrame,
    higher: bool,
    min_effect: float | None,
    *,
    power: float = POWER,
    cap: int = MAX_SEEDS,
) -> pd.DataFrame:
    """One row per headline comparison (best against runner-up) with :func:`comparison`."""
    sign = 1.0 if higher else -1.0
    rows = []
    for h in head.itertuples(index=False):
        if not isinstance(h.runner_up, str) or h.axis not in views:
            continue
        runs = views[h.axis].runs
        g = comparison_group(runs[runs["dataset"] == h.dataset])
        row: dict[str, object] = {
            "dataset": h.dataset, "axis": h.axis, "best": h.best, "runner_up": h.runner_up,
        }  # fmt: skip
        found = comparison(
            _groups(g, h.best, sign),
            _groups(g, h.runner_up, sign),
            h.margin_ci,
            min_effect,
            power=power,
            cap=cap,
        )
        if h.tied_with:
            found["seeds_needed"] = math.inf  # equal IQMs: nothing to separate
        row.update(found)
        row.update(margin_ci_low=h.margin_ci[0], margin_ci_high=h.margin_ci[1])
        row["min_effect"] = min_effect if min_effect else math.nan
        rows.append(row)
    return pd.DataFrame(rows)


def sentences(table: pd.DataFrame) -> list[str]:
    """One plain sentence per comparison."""
    out = []
    for r in table.itertuples(index=False):
        text = (
            f"{r.dataset} · {r.axis}: {r.best} over {r.runner_up}, margin {r.margin:.3g} "
            f"[{r.margin_ci_low:.3g}, {r.margin_ci_high:.3g}] with {r.seeds_now} "
            f"seed{'s' if r.seeds_now != 1 else ''} each; "
        )
        need = float(r.seeds_needed)
        if math.isnan(need):
            text += "too few seeds to estimate the seeds needed"
        elif math.isinf(need) and r.margin == 0:
            text += "equal IQMs: no number of seeds separates a margin of 0"
        elif math.isinf(need):
            text += f"no number of seeds up to {MAX_SEEDS} separates a margin like this one"
        else:
            text += f"about {need:.0f} seeds per technique would separate it with 80% probability"
        text += f" ({r.method})" if r.method != "none" else ""
        if isinstance(r.min_effect, float) and not math.isnan(r.min_effect):
            for_min = float(r.seeds_for_min_effect)
            text += f"; a margin of min_effect {r.min_effect:g} needs {_seeds(for_min)}" + (
                f", and the observed interval lies within ±{r.min_effect:g}: equivalent within "
                "min_effect"
                if r.equivalent
                else ", and the observed interval does not rule it out"
            )
        out.append(text + ".")
    return out


def _seeds(n: float) -> str:
    if math.isnan(n):
        return "an unknown number of seeds (too few to estimate)"
    return f"more than {MAX_SEEDS} seeds" if math.isinf(n) else f"{n:.0f} seeds per technique"


def read_min_effect(matrix: Mapping[str, object], override: float | None) -> float | None:
    """``--min-effect`` when given, else the matrix's ``[report] min_effect``, else None."""
    if override is not None:
        return float(override)
    report = matrix.get("report")
    value = report.get("min_effect") if isinstance(report, Mapping) else None
    return float(value) if isinstance(value, int | float) and value > 0 else None
