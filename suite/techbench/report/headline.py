"""The answer first: per dataset and compared axis, which technique is best, by how much, how sure.

For one axis on one dataset the comparison uses the contexts (every other axis fixed) that hold
the largest set of techniques (ties: more contexts, then more runs); each technique is its
selected setting there (:mod:`.settings`). Then (Agarwal et al. 2021, "Deep RL at the edge of the
statistical precipice", the rliable recipe):

- score: IQM of the runs' validation scores (:mod:`.scoring`), 95 % stratified-bootstrap
  interval (runs resampled within each context); equal IQMs *tie* (:func:`tied`): they share
  a rank and the page says they tie (listed by mean, then name);
- margin: IQM(best) - IQM(runner-up), interval from the same resampling of both;
- probability of improvement of the best over each other technique: ``P(X > Y) + P(X = Y) / 2``
  over runs within a context, averaged over contexts, with its bootstrap interval;
- the test metric (IQM over the same runs, at the scored checkpoint) and the hit rate (share of
  runs that reached the target) are shown, never ranked on; ``n_runs`` is the best technique's
  own run count, ``n_runs_compared`` and ``n_cut_short`` count every run of the comparison.

Across datasets (:func:`summary`): raw scores of different datasets are not pooled. Each
dataset's technique scores are min-max normalised between the worst and the best technique on
that dataset (0 = worst, 1 = best), then averaged; the mean rank is given beside it. The
Friedman/Nemenyi test over datasets stays in the statistics section.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from . import stats
from .inputs import CUT_SHORT
from .parallel import fork_map
from .settings import AxisView, comparison_group

N_RESAMPLES = 1000


def _boot_iqm(values: np.ndarray, strata: np.ndarray, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    boot = stats.stratified_resamples(values, strata, N_RESAMPLES, rng)
    return np.asarray(stats.iqm(boot, axis=1), dtype=float)


def _ci(boot: np.ndarray) -> tuple[float, float]:
    if boot.size == 0 or not np.isfinite(boot).any():
        return (math.nan, math.nan)
    lo, hi = np.nanquantile(boot, [0.025, 0.975])
    return (float(lo), float(hi))


def tied(a: float, b: float) -> bool:
    """Whether two IQM scores are equal (to rounding): a tie, never a "0 ahead" ranking."""
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    return math.isclose(a, b, rel_tol=1e-12, abs_tol=1e-12)


def _settings_text(g: pd.DataFrame) -> str:
    values = sorted({str(v) for v in g["_setting"].unique()})
    return values[0] if len(values) == 1 else f"{len(values)} settings: " + ", ".join(values[:3])


def compare(view: AxisView, higher: bool) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``(headline, leaderboard)`` of one axis: one headline row per dataset, one leaderboard
    row per (dataset, technique), best first."""
    units = [
        (view.axis, dataset, d, higher) for dataset, d in view.runs.groupby("dataset", sort=True)
    ]
    return _frames([_compare_dataset(u) for u in units])


def _frames(done: list[tuple[dict | None, list[dict]]]) -> tuple[pd.DataFrame, pd.DataFrame]:
    heads = [h for h, _ in done if h is not None]
    return pd.DataFrame(heads), pd.DataFrame([row for _, rows in done for row in rows])


Unit = tuple[str, object, pd.DataFrame, bool]
"""One dataset of one axis: ``(axis, dataset, its runs in the axis view, higher)``."""


def _compare_dataset(unit: Unit) -> tuple[dict | None, list[dict]]:
    """The headline row (None without a comparison group) and leaderboard rows of one unit."""
    axis, dataset, d, higher = unit
    sign = 1.0 if higher else -1.0
    board: list[dict] = []
    g = comparison_group(d)
    if g.empty:
        return None, board
    per: dict[str, pd.DataFrame] = dict(tuple(g.groupby("_tech", sort=True)))
    centre = {t: float(stats.iqm(r["score"].to_numpy(float))) for t, r in per.items()}
    mean = {t: float(np.nanmean(r["score"].to_numpy(float))) for t, r in per.items()}
    keys = {
        t: (math.inf, math.inf) if math.isnan(centre[t]) else (-sign * centre[t], -sign * mean[t])
        for t in per
    }
    order = sorted(per, key=keys.__getitem__)
    best = order[0]
    boots = {
        t: _boot_iqm(per[t]["score"].to_numpy(float), per[t]["_ctx"].to_numpy(), seed=i)
        for i, t in enumerate(order)
    }
    ctxs = sorted(set(g["_ctx"].unique()))
    scores = {
        t: {c: v.to_numpy(float) for c, v in r.groupby("_ctx", sort=False)["score"]}
        for t, r in per.items()
    }
    none = np.empty(0)
    for i, t in enumerate(order):
        r = per[t]
        lo, hi = _ci(boots[t])
        rank = 1 + sum(not tied(centre[u], centre[t]) for u in order[:i])
        row = {
            "dataset": dataset, "axis": axis, "rank": rank, "technique": t,
            "setting": _settings_text(r), "n_runs": len(r), "score_iqm": centre[t],
            "score_ci_low": lo, "score_ci_high": hi,
        }  # fmt: skip
        if t != best:
            pairs = []
            for c in ctxs:
                pairs.append((sign * scores[best].get(c, none), sign * scores[t].get(c, none)))
            p, plo, phi = stats.poi_with_ci(pairs, n_resamples=N_RESAMPLES, seed=i + 1)
        else:
            p = plo = phi = math.nan
        row.update(
            p_best_better=p, p_ci_low=plo, p_ci_high=phi,
            test_iqm=stats.iqm(r["test_score"].dropna().to_numpy(float)),
            hit_rate=float(np.isfinite(r["steps_to_target"].to_numpy(float)).mean()),
            n_cut_short=int(r["stop_reason"].isin(CUT_SHORT).sum()),
        )  # fmt: skip
        board.append(row)
    first = board[-len(order)]
    head = {
        "dataset": dataset, "axis": axis, "best": best, "setting": first["setting"],
        "score_iqm": first["score_iqm"], "score_ci": (first["score_ci_low"],
                                                      first["score_ci_high"]),
        "test_iqm": first["test_iqm"], "hit_rate": first["hit_rate"],
        "runner_up": None, "margin": math.nan, "margin_ci": (math.nan, math.nan),
        "p_over_runner_up": math.nan, "p_ci": (math.nan, math.nan), "p_min_others": math.nan,
        "n_techniques": len(order), "n_contexts": len(ctxs),
        "n_contexts_all": int(d["_ctx"].nunique()), "n_runs": first["n_runs"],
        "n_runs_compared": len(g), "n_cut_short": int(g["stop_reason"].isin(CUT_SHORT).sum()),
        "tied_with": ", ".join(t for t in order[1:] if tied(centre[t], centre[best])),
    }  # fmt: skip
    if len(order) > 1:
        second = board[-len(order) + 1]
        head.update(
            runner_up=order[1],
            margin=sign * (centre[best] - centre[order[1]]),
            margin_ci=_ci(sign * (boots[best] - boots[order[1]])),
            p_over_runner_up=second["p_best_better"],
            p_ci=(second["p_ci_low"], second["p_ci_high"]),
            p_min_others=min(b["p_best_better"] for b in board[-len(order) + 1 :]),
        )
    return head, board


def headline_tables(
    views: Mapping[str, AxisView], higher: bool
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """:func:`compare` for every axis, concatenated (dataset-major order). The (axis, dataset)
    units are independent bootstraps with their own seeds, so a large store has them computed
    by two processes (:func:`.parallel.fork_map`); the numbers are the same."""
    units = [
        [(view.axis, dataset, d, higher) for dataset, d in view.runs.groupby("dataset", sort=True)]
        for view in views.values()
    ]
    flat = [u for axis_units in units for u in axis_units]
    done = iter(fork_map(_compare_dataset, flat, sum(len(u[2]) for u in flat)))
    heads, boards = [], []
    for axis_units in units:
        h, b = _frames([next(done) for _ in axis_units])
        heads.append(h)
        boards.append(b)
    head = pd.concat(heads, ignore_index=True) if heads else pd.DataFrame()
    board = pd.concat(boards, ignore_index=True) if boards else pd.DataFrame()
    if not head.empty:
        head = head.sort_values(["dataset", "axis"], kind="stable").reset_index(drop=True)
    return head, board


def summary(leaderboard: pd.DataFrame, higher: bool) -> pd.DataFrame:
    """Per (axis, technique) across datasets: mean min-max normalised score, mean rank."""
    if leaderboard.empty:
        return pd.DataFrame()
    rows = []
    for axis, b in leaderboard.groupby("axis", sort=False):
        wide = b.pivot_table(index="dataset", columns="technique", values="score_iqm")
        if len(wide) < 2:
            continue
        lo = wide.min(axis=1)
        span = (wide.max(axis=1) - lo).replace(0.0, np.nan)
        norm = wide.sub(lo, axis=0).div(span, axis=0)
        if not higher:
            norm = 1.0 - norm
        ranks = wide.rank(axis=1, ascending=not higher, method="average")
        for tech in wide.columns:
            present = wide[tech].notna()
            rows.append(
                {
                    "axis": axis,
                    "technique": tech,
                    "n_datasets": int(present.sum()),
                    "normalized_score": float(norm[tech][present].fillna(1.0).mean()),
                    "mean_rank": float(ranks[tech][present].mean()),
                    "wins": int((ranks[tech] == 1).sum()),
                }
            )
    out = pd.DataFrame(rows)
    if not out.empty:
        out = out.sort_values(["axis", "normalized_score"], ascending=[True, False])
    return out.reset_index(drop=True)


def _fmt(x: float, digits: int = 3) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}g}"


def _with_ci(x: float, ci: tuple[float, float]) -> str:
    if math.isnan(ci[0]):
        return _fmt(x)
    return f"{_fmt(x)} [{_fmt(ci[0])}, {_fmt(ci[1])}]"


def display(head: pd.DataFrame, metric: str, test_metric: str) -> pd.DataFrame:
    """The headline as the page shows it: one row per (dataset, axis), intervals inline."""
    rows = []
    for h in head.itertuples(index=False):
        rows.append(
            {
                "dataset": h.dataset,
                "axis": h.axis,
                "best": _best_text(h),
                f"{metric} (IQM [95% CI])": _with_ci(h.score_iqm, h.score_ci),
                "runner-up": h.runner_up or "–",
                "margin [95% CI]": _with_ci(h.margin, h.margin_ci),
                "P(best > runner-up) [95% CI]": _with_ci(h.p_over_runner_up, h.p_ci),
                "min P(best > other)": _fmt(h.p_min_others, 2),
                f"{test_metric} (IQM)": _fmt(h.test_iqm),
                "hit rate": _fmt(h.hit_rate, 2),
                "runs": _runs_text(h),
            }
        )
    return pd.DataFrame(rows)


def _runs_text(h: Any) -> str:
    """The best technique's runs; cut-short runs of the whole comparison (they bias it)."""
    if not h.n_cut_short:
        return str(h.n_runs)
    return f"{h.n_runs} ({h.n_cut_short} of {h.n_runs_compared} compared cut)"


def _best_text(h: Any) -> str:
    text = h.best if h.setting == h.best else f"{h.best}: {h.setting}"
    return f"{text} (tied with {h.tied_with})" if h.tied_with else text


def sentences(head: pd.DataFrame, metric: str) -> list[str]:
    """One plain sentence per headline row, saying when the margin is not resolved."""
    out = []
    for h in head.itertuples(index=False):
        text = f"{h.dataset} · {h.axis}: {h.best} scores {_with_ci(h.score_iqm, h.score_ci)}"
        if h.tied_with:
            text += (
                f" and ties with {h.tied_with} (equal {metric} IQM: no technique is ahead); "
                f"P({h.best} > {h.runner_up}) = {_with_ci(h.p_over_runner_up, h.p_ci)}"
            )
        elif h.runner_up:
            lo, hi = h.margin_ci
            sure = (
                "the interval of the margin includes 0: not separated from the runner-up"
                if math.isnan(lo) or lo <= 0 <= hi
                else "the margin's interval excludes 0"
            )
            text += (
                f", {_fmt(h.margin)} ahead of {h.runner_up} ({sure}); "
                f"P({h.best} > {h.runner_up}) = {_with_ci(h.p_over_runner_up, h.p_ci)}"
            )
        else:
            text += " (no other technique shares a context with it)"
        if h.n_contexts_all > h.n_contexts:
            text += f"; compared in {h.n_contexts} of {h.n_contexts_all} contexts"
        out.append(text + ".")
    return out
