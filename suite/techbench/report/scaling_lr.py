"""Learning rate across a ladder: loss-vs-lr curves per rung and the optimal lr against width.

The muP paper's transfer test (Yang et al. 2021, "Tensor Programs V", arXiv 2203.03466, fig. 1):
under a parametrization that transfers, the loss-vs-lr curves of every width share their
optimum; under the standard parametrization with Adam, the optimum moves (roughly as
1/width). Per (dataset, technique, rung) and lr, the median score over seeds of the best
setting at that lr (:func:`lr_curves`); the best lr of a rung is the lr of the lowest median
(:func:`best_lrs`, a rung with at least two lrs is *swept*); the *drift* is best lr at the
largest swept rung over best lr at the smallest (:func:`lr_drift`): 1 when the optimum
transfers, 1/8 for an optimum that falls as 1/width over an 8x width range. A best lr at the
edge of its grid bounds the optimum only, and the drift with it: the table says so.

Sources: the ladder's runs where lr is a swept setting; for a tuned store, its search trials
(the finals of the selected settings are one lr per rung and say nothing of the curve).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from .scaling import worst

CURVE_KEYS = ["dataset", "technique", "rung", "lr"]


def lr_curves(frame: pd.DataFrame) -> pd.DataFrame:
    """Per (dataset, technique, rung, lr): the median score over seeds of the lr's best
    setting (diverged runs at +inf), its run count, and the rung's width and parameters."""
    f = frame[np.isfinite(frame["lr"].to_numpy(float))]
    if f.empty:
        return pd.DataFrame(columns=[*CURVE_KEYS, "median", "n_runs"])
    f = f.assign(_v=worst(f["value"].to_numpy()))
    per = f.groupby([*CURVE_KEYS, "setting"], sort=True).agg(
        median=("_v", "median"), n_runs=("_v", "size"), n_diverged=("_v", lambda v: np.isinf(v).sum()),
        width_mult=("width_mult", "median"), num_parameters=("num_parameters", "median"),
    ).reset_index()  # fmt: skip
    best = per.sort_values([*CURVE_KEYS, "median", "setting"], kind="stable")
    return best.drop_duplicates(CURVE_KEYS).reset_index(drop=True)


def best_lrs(curves: pd.DataFrame) -> pd.DataFrame:
    """Per (dataset, technique, rung): the lr of the lowest median (ties: the smaller lr; NaN
    when every lr diverged, no median finite), the number of lrs, whether it was swept (>= 2 lrs) and whether the best lies at the grid's
    edge (the smallest or largest lr tried)."""
    rows = []
    for (dataset, tech, rung), g in curves.groupby(["dataset", "technique", "rung"], sort=True):
        g = g.sort_values(["median", "lr"], kind="stable")
        lrs = g["lr"].to_numpy(float)
        best = float(lrs[0]) if np.isfinite(g["median"].iat[0]) else math.nan
        swept = lrs.size >= 2
        rows.append({
            "dataset": dataset, "technique": tech, "rung": int(rung),
            "width_mult": float(g["width_mult"].iat[0]),
            "num_parameters": float(g["num_parameters"].iat[0]), "best_lr": best,
            "best_median": float(g["median"].iat[0]), "n_lrs": int(lrs.size), "swept": swept,
            "at_edge": bool(swept and best in (lrs.min(), lrs.max())),
        })  # fmt: skip
    return pd.DataFrame(rows)


def lr_drift(best: pd.DataFrame) -> pd.DataFrame:
    """Per (dataset, technique): best lr at the largest swept rung over the smallest's, the
    width and parameter ratios between those rungs, and whether either best is at an edge;
    NaN drift (with ``note``) when fewer than two rungs were swept. A rung where every lr
    diverged (NaN best lr) is left out, listed in ``diverged_rungs``."""
    rows = []
    for (dataset, tech), g in best.groupby(["dataset", "technique"], sort=True):
        swept = g[g["swept"]].sort_values("rung")
        lost = swept[~np.isfinite(swept["best_lr"].to_numpy(float))]
        swept = swept.drop(lost.index)
        row: dict[str, object] = {
            "dataset": dataset, "technique": tech,
            "diverged_rungs": ", ".join(str(r) for r in lost["rung"]),
        }  # fmt: skip
        if len(swept) < 2:
            rungs = ", ".join(str(r) for r in swept["rung"]) or "none"
            row.update(drift=math.nan, note=f"lr swept at fewer than two rungs (swept: {rungs})")
            rows.append(row)
            continue
        lo, hi = swept.iloc[0], swept.iloc[-1]
        row.update(
            rung_small=int(lo["rung"]), rung_large=int(hi["rung"]), lr_small=lo["best_lr"],
            lr_large=hi["best_lr"], drift=hi["best_lr"] / lo["best_lr"],
            width_ratio=hi["width_mult"] / lo["width_mult"],
            parameter_ratio=hi["num_parameters"] / lo["num_parameters"],
            at_edge=bool(lo["at_edge"] or hi["at_edge"]),
            note="a best lr at the edge of its grid: the drift is a bound"
            if lo["at_edge"] or hi["at_edge"] else "",
        )  # fmt: skip
        rows.append(row)
    return pd.DataFrame(rows)


def drift_sentences(drift: pd.DataFrame) -> list[str]:
    """One plain sentence per (dataset, technique) with a measured drift, or with a rung where
    every lr diverged."""
    out = []
    for r in drift.itertuples(index=False):
        many = "s" if "," in str(r.diverged_rungs) else ""
        lost = (
            f"rung{many} {r.diverged_rungs} left out: every lr diverged" if r.diverged_rungs else ""
        )
        if not isinstance(r.drift, float) or math.isnan(r.drift):
            if lost:
                out.append(f"{r.dataset} · {r.technique}: no drift, {r.note}; {lost}.")
            continue
        width = (
            f"a {r.width_ratio:.3g}x width range"
            if np.isfinite(r.width_ratio)
            else f"a {r.parameter_ratio:.3g}x parameter range"
        )
        text = (
            f"{r.dataset} · {r.technique}: the best lr moves from {r.lr_small:.3g} (rung "
            f"{r.rung_small}) to {r.lr_large:.3g} (rung {r.rung_large}) over {width}: drift "
            f"factor {r.drift:.3g}"
        )
        text += " (1 = the optimum transfers)"
        if r.at_edge:
            text += "; a best lr lies at the edge of its grid, so the drift is a bound"
        if lost:
            text += f"; {lost}"
        out.append(text + ".")
    return out
