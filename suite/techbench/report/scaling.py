"""The scaling section's data: which runs form a ladder, their score, per-rung medians with
bootstrap bands, the ranking at each rung and its rank correlation between rungs.

- Rows: the runs with a ``rung`` (trial meta of a ``[scale]`` ladder: 0 = the base, smallest
  rung). A run's *technique* is the technique names of the compared axes whose names differ
  (``adamw · mup``); settings of one technique (an lr grid, a model's width) are not
  techniques. Per (dataset, technique, rung) the setting with the lowest median score is
  selected (:func:`select_settings`), as the report's axis views select by IQM
  (:mod:`.settings`); in a tuned store only the selected settings' finals are there.
- Score (:func:`final_values`): lower is better. The matrix's target metric at the last epoch
  when every run's target is minimised (a loss, bits per character); else the validation loss
  at the last epoch (an accuracy target says nothing a power law in N can fit). Diverged and
  failed runs have no value: they count as worst (+inf) in medians and ranks and are left out
  of the fit (:mod:`.scaling_fit`).
- Per cell: the median over seeds and its 95 % percentile bootstrap interval (seeds resampled,
  :data:`N_RESAMPLES`); the median, not the IQM, because a diverged seed at +inf leaves a
  median finite while it is a minority.
- Ranks per rung (1 = lowest median) and, per pair of rungs, Kendall's tau-b between the
  techniques' medians (:func:`.signals.kendall_tau`) with a bootstrap interval from the same
  resampled medians, and the share of resamples in which one technique wins both rungs.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.stats import rankdata

from ..schema import metric_key
from .settings import technique_name, technique_names
from .signals import kendall_tau
from .tables import config_labels

N_RESAMPLES = 1000
CELL = ["dataset", "technique", "rung"]
SEP = " · "
"""Joins the technique names of several compared axes into one technique label."""
LADDER_COLUMNS = ("num_parameters", "compute", "width_mult")


def final_values(trials: pd.DataFrame, curves: pd.DataFrame) -> tuple[pd.Series, str, str]:
    """``(values by trial id, series name, sentence)``: each trial's score at its last epoch
    (see the module doc; NaN for a run that did not complete or recorded no value)."""
    lower = bool(len(trials)) and bool((trials["target_mode"] == "min").all())
    if lower:
        metrics = sorted(trials["target_metric"].astype(str).unique())
        column, name = "curve", " / ".join(metrics)
        why = f"final {name}, the matrix's target metric (lower is better), at the last epoch"
    else:
        column, name = metric_key("val", "loss"), metric_key("val", "loss")
        targets = ", ".join(sorted(trials["target_metric"].astype(str).unique()))
        why = (
            f"final {name}, the validation loss at the last epoch (the target {targets} is "
            "higher-is-better: a power law in N is fitted to the loss)"
        )
    ids = trials["trial_id"].astype(str)
    if column not in curves or curves.empty:
        return pd.Series(np.nan, index=ids), name, why
    last = curves.sort_values(["trial_id", "epoch"], kind="stable").groupby("trial_id").tail(1)
    value = last.set_index(last["trial_id"].astype(str))[column].astype(float)
    out = value.reindex(ids.to_numpy())
    out[(trials["status"] != "completed").to_numpy()] = np.nan
    out.index = ids.to_numpy()
    return out, name, why


def technique_labels(frame: pd.DataFrame, axes: Sequence[str]) -> pd.Series:
    """Per run: the names of the compared axes whose technique names differ, joined by
    :data:`SEP` (``"all"`` when none differ: one technique, its settings swept)."""
    parts = []
    for axis in axes:
        if axis in frame:
            names = technique_names(frame[axis].astype(str))
            if names.nunique() > 1:
                parts.append(names)
    if not parts:
        return pd.Series("all", index=frame.index)
    label = parts[0]
    for p in parts[1:]:
        label = label + SEP + p
    return label


def scale_frame(trials: pd.DataFrame, curves: pd.DataFrame, axes: Sequence[str]) -> pd.DataFrame:
    """One row per run of a ladder: dataset, technique, setting, rung, seed, trial_id, the
    ladder columns, ``lr`` (float, NaN when none) and ``value`` (:func:`final_values`).
    Empty without a ``rung`` column or when no run has one. ``attrs``: ``score_name`` and
    ``score_text``."""
    if "rung" not in trials:
        return pd.DataFrame()
    rung = pd.to_numeric(trials["rung"], errors="coerce")
    t = trials[rung.notna().to_numpy()]
    if t.empty:
        return pd.DataFrame()
    values, name, why = final_values(t, curves)
    out = pd.DataFrame(
        {
            "dataset": t["dataset"].astype(str).to_numpy(),
            "technique": technique_labels(t, axes).to_numpy(),
            "setting": config_labels(t, list(axes)).to_numpy(),
            "rung": pd.to_numeric(t["rung"]).astype(int).to_numpy(),
            "seed": t["seed"].to_numpy(),
            "trial_id": t["trial_id"].astype(str).to_numpy(),
            "status": t["status"].astype(str).to_numpy(),
            "lr": pd.to_numeric(t["lr"], errors="coerce").to_numpy(float) if "lr" in t else np.nan,
            "value": values.to_numpy(float),
        }
    )
    for col in LADDER_COLUMNS:
        src = t[col] if col in t else pd.Series(np.nan, index=t.index)
        out[col] = pd.to_numeric(src, errors="coerce").to_numpy(float)
    out.attrs.update(score_name=name, score_text=why)
    return out


def worst(values: np.ndarray) -> np.ndarray:
    """Scores with a missing value (diverged, failed) at +inf: worst for a lower-is-better score."""
    v = np.asarray(values, dtype=float)
    return np.where(np.isnan(v), np.inf, v)


def select_settings(frame: pd.DataFrame) -> pd.DataFrame:
    """The runs of each (dataset, technique, rung)'s setting with the lowest median score
    (ties: the first setting in name order); ``n_settings`` says how many it was chosen from."""
    if frame.empty:
        return frame
    med = frame.assign(_v=worst(frame["value"].to_numpy()))
    med = med.groupby([*CELL, "setting"], sort=True)["_v"].median().rename("_m").reset_index()
    med["n_settings"] = med.groupby(CELL)["setting"].transform("size")
    best = med.sort_values([*CELL, "_m", "setting"], kind="stable").drop_duplicates(CELL)
    return frame.merge(best[[*CELL, "setting", "n_settings"]], on=[*CELL, "setting"])


def _quantiles(boot: np.ndarray) -> tuple[float, float]:
    """95 % percentile interval; lower/higher order statistics, so +inf values stay +inf."""
    lo = np.quantile(boot, 0.025, method="lower")
    hi = np.quantile(boot, 0.975, method="higher")
    return float(lo), float(hi)


def cell_points(
    selected: pd.DataFrame, *, n_resamples: int = N_RESAMPLES, seed: int = 0
) -> tuple[pd.DataFrame, dict[tuple[str, str, int], np.ndarray]]:
    """Per (dataset, technique, rung): runs, diverged, the ladder columns (median over runs),
    the median score and its 95 % bootstrap interval; and each cell's bootstrap medians."""
    rows, boots = [], {}
    rng = np.random.default_rng(seed)
    for key, g in selected.groupby(CELL, sort=True):
        v = worst(g["value"].to_numpy())
        draws = v[rng.integers(0, v.size, size=(n_resamples, v.size))]
        boot = np.median(draws, axis=1)
        boots[(str(key[0]), str(key[1]), int(key[2]))] = boot
        lo, hi = _quantiles(boot)
        row = dict(zip(CELL, key, strict=True))
        row.update(
            setting=str(g["setting"].iat[0]),
            n_settings=int(g["n_settings"].iat[0]) if "n_settings" in g else 1,
            n_runs=len(g),
            n_diverged=int(np.isinf(v).sum()),
            **{c: float(g[c].median()) for c in LADDER_COLUMNS},
            median=float(np.median(v)),
            ci_low=lo,
            ci_high=hi,
        )
        rows.append(row)
    return pd.DataFrame(rows), boots


def rank_table(points: pd.DataFrame) -> pd.DataFrame:
    """Per (dataset, rung, technique): the rank of its median (1 = lowest; ties share the
    lowest rank)."""
    if points.empty:
        return pd.DataFrame(columns=["dataset", "rung", "technique", "median", "rank"])
    out = points[["dataset", "rung", "technique", "num_parameters", "median"]].copy()
    out["rank"] = out.groupby(["dataset", "rung"])["median"].rank(method="min").astype(int)
    return out.sort_values(["dataset", "rung", "rank", "technique"]).reset_index(drop=True)


@dataclass(frozen=True)
class RungPair:
    """Kendall's tau-b between two rungs' technique medians, with a bootstrap interval."""

    dataset: str
    rung_a: int
    rung_b: int
    n_techniques: int
    tau: float
    ci_low: float
    ci_high: float
    winner_a: str
    winner_b: str
    same_winner_share: float


def _winners(medians: np.ndarray) -> np.ndarray:
    """Per row, whether each column is the (possibly tied) lowest."""
    return medians == medians.min(axis=-1, keepdims=True)


def rung_pair(
    dataset: str,
    rung_a: int,
    rung_b: int,
    points: pd.DataFrame,
    boots: Mapping[tuple[str, str, int], np.ndarray],
) -> RungPair | None:
    """The :class:`RungPair` of two rungs of one dataset over the techniques at both (None
    with fewer than two)."""
    p = points[points["dataset"] == dataset]
    a = p[p["rung"] == rung_a].set_index("technique")["median"]
    b = p[p["rung"] == rung_b].set_index("technique")["median"]
    techs = sorted(set(a.index) & set(b.index))
    if len(techs) < 2:
        return None
    x, y = a.reindex(techs).to_numpy(float), b.reindex(techs).to_numpy(float)
    tau = float(kendall_tau(rankdata(x), rankdata(y)))
    bx = np.stack([boots[(dataset, t, rung_a)] for t in techs], axis=1)
    by = np.stack([boots[(dataset, t, rung_b)] for t in techs], axis=1)
    taus = kendall_tau(rankdata(bx, axis=1), rankdata(by, axis=1))
    taus = taus[np.isfinite(taus)]
    lo, hi = _quantiles(taus) if taus.size else (math.nan, math.nan)
    same = (_winners(bx) & _winners(by)).any(axis=1).mean()
    return RungPair(
        dataset, rung_a, rung_b, len(techs), tau, lo, hi,
        _winner_text(techs, x), _winner_text(techs, y), float(same),
    )  # fmt: skip


def _winner_text(techs: Sequence[str], medians: np.ndarray) -> str:
    best = medians.min()
    return " = ".join(t for t, m in zip(techs, medians, strict=True) if m == best)


def rank_correlations(
    points: pd.DataFrame, boots: Mapping[tuple[str, str, int], np.ndarray]
) -> pd.DataFrame:
    """Every pair of rungs per dataset (:func:`rung_pair`), one row each."""
    rows = []
    for dataset, p in points.groupby("dataset", sort=True):
        rungs = sorted(p["rung"].unique())
        for i, ra in enumerate(rungs):
            for rb in rungs[i + 1 :]:
                pair = rung_pair(str(dataset), int(ra), int(rb), points, boots)
                if pair is not None:
                    rows.append(vars(pair))
    cols = list(RungPair.__dataclass_fields__)
    return pd.DataFrame(rows, columns=cols)


def winner_sentences(points: pd.DataFrame, corr: pd.DataFrame) -> list[str]:
    """Per dataset: is the smallest rung's winner the largest rung's winner?"""
    out = []
    for dataset, p in points.groupby("dataset", sort=True):
        lo, hi = int(p["rung"].min()), int(p["rung"].max())
        c = corr[(corr["dataset"] == dataset) & (corr["rung_a"] == lo) & (corr["rung_b"] == hi)]
        if lo == hi or c.empty:
            out.append(f"{dataset}: one rung or one technique only: no ranking across scale.")
            continue
        r = c.iloc[0]
        same = r["winner_a"] == r["winner_b"]
        out.append(
            f"{dataset}: the smallest rung's winner ({r['winner_a']}, rung {lo}) "
            f"{'is' if same else 'is not'} the largest rung's winner ({r['winner_b']}, rung "
            f"{hi}); one technique wins both in {r['same_winner_share']:.0%} of bootstrap "
            f"resamples; Kendall tau between the two rungs' rankings {r['tau']:.2f} "
            f"[{r['ci_low']:.2f}, {r['ci_high']:.2f}] over {r['n_techniques']} techniques."
        )
    return out


def technique_order(
    frame: pd.DataFrame, axes: Sequence[str], matrix: Mapping[str, object]
) -> list[str]:
    """The techniques in the matrix's order: by the position of each component name among
    its axis's values in ``matrix.json`` (unknown names last), then by label."""
    listed = matrix.get("axes") if isinstance(matrix.get("axes"), Mapping) else {}
    position: dict[str, int] = {}
    for axis in axes:
        for i, label in enumerate((listed or {}).get(axis) or []):  # type: ignore[attr-defined]
            position.setdefault(technique_name(str(label)), i)
    labels = sorted(frame["technique"].astype(str).unique())

    def key(label: str) -> tuple[list[int], str]:
        return ([position.get(part, 10**6) for part in label.split(SEP)], label)

    return sorted(labels, key=key)


def pick_baseline(order: Sequence[str], baselines: Sequence[str]) -> tuple[str, str]:
    """``(technique, why)``: the first technique (matrix order) containing the first
    ``--baseline`` name that matches one, else the matrix's first technique."""
    for b in baselines:
        name = technique_name(str(b))
        hits = [t for t in order if t == b or name in t.split(SEP)]
        if hits:
            how = "" if len(hits) == 1 else ", the first in the matrix's order of those with it"
            return hits[0], f"--baseline {b}{how}"
    return order[0], "the matrix's first technique; choose another with --baseline NAME"
