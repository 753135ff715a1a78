"""Tidy tables: one row per run, per (dataset, configuration) cell, and per technique.

Definitions (the target comes from each trial's ``config.target``; metric names are the
canonical keys of :func:`techbench.schema.metric_key`: ``val_acc`` is split ``val``, metric
``acc``; ``train_acc`` the training set's accuracy at an epoch's end):

- ``final_metric``: the target metric at the last recorded epoch; ``best_metric``: its best
  over epochs (max or min by ``target.mode``); ``best_epoch``: where that happened.
- ``epochs_to_target`` / ``steps_to_target`` / ``seconds_to_target``: the first epoch (counted
  from 1), global step, and cumulative training seconds (split ``time``) at which the target
  metric reaches ``target.value``; ``inf`` when missed. Diverged and failed runs are misses.
- ``auc``: mean of the target metric over the recorded epochs (normalised by epochs).
- ``gap_loss_*`` / ``gap_acc_*``: train minus validation (``train_loss``/``train_acc`` vs
  ``val_loss``/``val_acc``) at the end and at the best-validation epoch.
- gradient health: median and 90th percentile of ``grad_norm_global``; median over snapshots
  of (largest / smallest layer ``grad_norm``); mean ``dead_fraction`` and
  ``saturated_fraction`` over layers and snapshots; share of snapshots with non-finite
  gradients.
- ``modelled_seconds_to_target``: ``steps_to_target`` times the trial's ``step_seconds`` (the
  calibrated time of one step of that configuration measured alone); NaN when not recorded.
- ``test_score``: the test metric at the scored checkpoint (:mod:`.scoring`); never ranked.
- ``score``: what statistics rank: ``final_metric`` (rule ``final``, the default) or
  ``best_metric`` (rule ``best``) for completed runs (:mod:`.scoring`); a diverged or failed
  run gets the worst value (0 for an accuracy, else the worst value any run recorded on that
  dataset), so it counts against its technique instead of being dropped.

The run table's rows are in reading order (:func:`reading_order`: dataset, compared axes, seed).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

import numpy as np
import pandas as pd
from pandas.api.types import is_numeric_dtype

from ..schema import metric_key, metric_series
from .load import COMPARE_AXES
from .scoring import DEFAULT_SCORE, held_out_scores, held_out_table
from .stats import MIN_SEEDS, iqm, stratified_bootstrap_ci

HEALTH_COLUMNS = (
    "grad_norm_median",
    "grad_norm_p90",
    "layer_grad_ratio",
    "dead_fraction",
    "saturated_fraction",
    "nonfinite_share",
)


def varying_axes(trials: pd.DataFrame) -> list[str]:
    """The comparable axes whose value differs between trials (the techniques to compare)."""
    out = []
    for axis in COMPARE_AXES:
        if axis in trials and trials[axis].astype(str).nunique(dropna=False) > 1:
            out.append(axis)
    return out


def config_labels(trials: pd.DataFrame, axes: list[str]) -> pd.Series:
    """``"activation=relu, initializer=he_normal"`` over the varying axes (``"all"`` if none)."""
    if not axes:
        return pd.Series("all", index=trials.index)
    parts = [axis + "=" + trials[axis].astype(str) for axis in axes]
    label = parts[0]
    for p in parts[1:]:
        label = label + ", " + p
    return label


def _series_keys(split: pd.Series, metric: pd.Series) -> np.ndarray:
    """:func:`metric_key` of every row, computed once per distinct (split, metric) pair and
    spread by codes (a Python loop over 10^7 rows took most of a 100,000-trial report)."""
    sp, me = split.astype("category"), metric.astype("category")
    width = max(1, len(me.cat.categories))
    code = sp.cat.codes.to_numpy(np.int64) * width + me.cat.codes.to_numpy(np.int64)
    pairs, inverse = np.unique(code, return_inverse=True)
    names = [
        metric_key(str(sp.cat.categories[c // width]), str(me.cat.categories[c % width]))
        for c in pairs
    ]
    return np.asarray(names, dtype=object)[inverse]


def _trial_codes(trial_ids: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """``(codes, labels)``: ``labels[codes]`` are the ids as strings and codes follow the
    labels' sort order, so grouping by codes orders groups as grouping by the strings would,
    without turning 10^6-10^7 rows into strings first."""
    if isinstance(trial_ids.dtype, pd.CategoricalDtype):
        names = np.asarray([str(c) for c in trial_ids.cat.categories], dtype=object)
        codes = trial_ids.cat.codes.to_numpy(np.int64)
    else:
        uniq, codes = np.unique(trial_ids.astype(str).to_numpy(object), return_inverse=True)
        names = np.asarray(uniq, dtype=object)
    order = np.argsort(names, kind="stable")
    rank = np.empty(order.size, dtype=np.int64)
    rank[order] = np.arange(order.size)
    return rank[codes], names[order]


def _epoch_table(metrics: pd.DataFrame) -> pd.DataFrame:
    split, metric = metrics["split"], metrics["metric"]
    keep = (
        split.isin(["val", "train", "time"]).to_numpy()
        & ~((split == "train") & (metric == "loss")).to_numpy()
    )
    m = metrics.loc[keep, ["trial_id", "epoch", "split", "metric", "step", "value"]]
    codes, labels = _trial_codes(m["trial_id"])
    m = m.assign(key=_series_keys(m["split"], m["metric"]), trial_id=codes)
    wide = m.groupby(["trial_id", "epoch", "key"], sort=True)["value"].last().unstack("key")
    steps = m[m["split"] == "val"].groupby(["trial_id", "epoch"])["step"].max()
    wide["step"] = steps.reindex(wide.index)
    wide = wide.reset_index()
    wide["trial_id"] = pd.Series(labels[wide["trial_id"].to_numpy()], dtype=str)
    return wide


def _health(metrics: pd.DataFrame) -> pd.DataFrame:
    health = (metrics["split"] == "health").to_numpy()
    if not health.any():
        return pd.DataFrame(columns=list(HEALTH_COLUMNS), index=pd.Index([], name="trial_id"))
    is_global = (metrics["layer"] == "").to_numpy()
    metric = metrics["metric"]

    def rows(name: str, on_layers: bool) -> pd.DataFrame:
        """One metric's health rows, only the columns used (not copies of 10^7-row frames)."""
        mask = health & (~is_global if on_layers else is_global) & (metric == name).to_numpy()
        return metrics.loc[mask, ["trial_id", "step", "value"]]

    out = {}
    g = rows("grad_norm_global", False).groupby("trial_id", observed=True)["value"]
    out["grad_norm_median"] = g.median()
    out["grad_norm_p90"] = g.quantile(0.9)
    gn = rows("grad_norm", True)
    per_step = gn.groupby(["trial_id", "step"], observed=True)["value"].agg(["max", "min"])
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = per_step["max"] / per_step["min"]
    out["layer_grad_ratio"] = ratio.groupby(level="trial_id", observed=True).median()
    for name in ("dead_fraction", "saturated_fraction"):
        sub = rows(name, True)
        out[name] = sub.groupby("trial_id", observed=True)["value"].mean()
    nf = rows("nonfinite_grads", False)
    bad = (nf["value"] > 0) | nf["value"].isna()
    out["nonfinite_share"] = bad.groupby(nf["trial_id"], observed=True).mean()
    # plain string indexes: a metric with no rows (no saturating activation) groups to an empty
    # categorical index whose codes pandas can't align with 128+ trials' (int8 vs int16)
    frame = pd.DataFrame({k: v.set_axis(v.index.astype(str)) for k, v in out.items()})
    frame.index.name = "trial_id"
    return frame


def target_curves(trials: pd.DataFrame, metrics: pd.DataFrame) -> pd.DataFrame:
    """Per (trial, epoch): the epoch-level metrics and ``curve``, the trial's target metric."""
    ep = _epoch_table(metrics)
    target = trials.assign(trial_id=trials["trial_id"].astype(str)).set_index("trial_id")
    target = target[["target_metric", "target_value", "target_mode"]]
    ep = ep.join(target, on="trial_id")
    ep["curve"] = np.nan
    for key in ep["target_metric"].dropna().unique():
        col = metric_key(*metric_series(str(key)))
        if col in ep:
            mask = ep["target_metric"] == key
            ep.loc[mask, "curve"] = ep.loc[mask, col]
    return ep[ep["curve"].notna()].reset_index(drop=True)


def run_table(
    trials: pd.DataFrame,
    metrics: pd.DataFrame,
    curves: pd.DataFrame | None = None,
    score: str = DEFAULT_SCORE,
    axes: list[str] | None = None,
) -> pd.DataFrame:
    """One row per trial with the convergence, generalization and gradient-health summaries;
    ``score`` is the rule of :mod:`.scoring` (``final`` or ``best``); ``axes`` the compared
    axes (default :func:`varying_axes`)."""
    axes = varying_axes(trials) if axes is None else axes
    runs = trials.copy()
    runs["trial_id"] = runs["trial_id"].astype(str)
    runs["config"] = config_labels(runs, axes)
    ep = (target_curves(trials, metrics) if curves is None else curves).copy()
    sign = np.where(ep["target_mode"] == "min", -1.0, 1.0)
    ep["signed"] = ep["curve"] * sign
    tv = pd.to_numeric(ep["target_value"], errors="coerce").to_numpy(float)
    ep["reached"] = ep["signed"] >= sign * tv
    base = 0 if (not ep.empty and ep["epoch"].min() == 0) else 1
    by = ep.groupby("trial_id", sort=False)
    final = ep.loc[by["epoch"].idxmax()].set_index("trial_id")
    best = ep.loc[by["signed"].idxmax()].set_index("trial_id")
    first = ep[ep["reached"]].sort_values(["trial_id", "epoch"]).groupby("trial_id").head(1)
    first = first.set_index("trial_id")

    def col(frame: pd.DataFrame, name: str) -> pd.Series:
        s = frame[name] if name in frame else pd.Series(np.nan, index=frame.index)
        return s.reindex(runs["trial_id"]).to_numpy()

    runs["epochs_recorded"] = by.size().reindex(runs["trial_id"]).fillna(0).to_numpy(int)
    runs["final_metric"] = col(final, "curve")
    runs["best_metric"] = col(best, "curve")
    runs["best_epoch"] = col(best, "epoch")
    runs["auc"] = by["curve"].mean().reindex(runs["trial_id"]).to_numpy()
    ok = (runs["status"] == "completed").to_numpy()
    for name, src in (("epochs", "epoch"), ("steps", "step"), ("seconds", "time_seconds")):
        v = col(first, src).astype(float)
        if name == "epochs":
            v = v + (1 - base)
        v[np.isnan(v) | ~ok] = np.inf
        runs[f"{name}_to_target"] = v
    step_s = runs["step_seconds"] if "step_seconds" in runs else pd.Series(np.nan, runs.index)
    step_s = pd.to_numeric(step_s, errors="coerce").to_numpy(float)
    modelled = runs["steps_to_target"].to_numpy(float) * step_s
    runs["modelled_seconds_to_target"] = np.where(
        np.isinf(runs["steps_to_target"]), np.inf, modelled
    )
    for when, frame in (("end", final), ("best", best)):
        for what in ("loss", "acc"):
            train = col(frame, f"train_{what}")
            val = col(frame, f"val_{what}")
            runs[f"gap_{what}_{when}"] = train.astype(float) - val.astype(float)
    health = _health(metrics)
    for name in HEALTH_COLUMNS:
        s = health[name] if name in health else pd.Series(dtype=float)
        runs[name] = s.reindex(runs["trial_id"]).to_numpy(float)
    runs["score"] = _score(runs, ep, score)
    runs["test_score"] = held_out_scores(runs, held_out_table(metrics), score)
    lead = ["trial_id", "status", "stop_reason", "dataset", "config", *axes, "seed", "data_seed"]
    lead = list(dict.fromkeys(c for c in lead if c in runs))
    return reading_order(runs[lead + [c for c in runs.columns if c not in lead]], axes)


def reading_order(runs: pd.DataFrame, axes: Sequence[str]) -> pd.DataFrame:
    """``runs`` in the order a reader scans them: by dataset, then each compared axis (settings
    in natural order, ``lr=0.003`` before ``lr=0.01`` before ``lr=1e-1``), then seed; the trial
    id breaks ties, so the order never depends on how the store listed its files."""
    keys = [c for c in dict.fromkeys(["dataset", *axes, "seed", "trial_id"]) if c in runs]
    return runs.sort_values(keys, key=_natural_rank, kind="stable")


_NUMBER = re.compile(r"(\d+(?:\.\d*)?(?:[eE][-+]?\d+)?)")


def _natural_rank(column: pd.Series) -> pd.Series:
    """Numbers as they are; text ranked with its embedded numbers compared as numbers."""
    if is_numeric_dtype(column):
        return column
    text = column.astype(str)

    def key(word: str) -> tuple[str | float, ...]:
        parts = _NUMBER.split(word)  # text at even positions, numbers at odd ones
        return tuple(float(p) if i % 2 else p for i, p in enumerate(parts))

    rank = {word: i for i, word in enumerate(sorted(text.unique(), key=key))}
    return text.map(rank)


def _score(runs: pd.DataFrame, ep: pd.DataFrame, rule: str) -> np.ndarray:
    score = runs["best_metric" if rule == "best" else "final_metric"].to_numpy(float).copy()
    bad = (runs["status"] != "completed").to_numpy() | np.isnan(score)
    if not bad.any():
        return score
    worst_seen = ep.join(runs.set_index("trial_id")["dataset"], on="trial_id")
    lo = worst_seen.groupby("dataset")["curve"].min()
    hi = worst_seen.groupby("dataset")["curve"].max()
    for i in np.flatnonzero(bad):
        metric = str(runs["target_metric"].iat[i])
        ds = runs["dataset"].iat[i]
        if runs["target_mode"].iat[i] == "min":
            score[i] = hi.get(ds, math.inf)
        elif metric.endswith("acc"):
            score[i] = min(0.0, lo.get(ds, 0.0))
        else:
            score[i] = lo.get(ds, -math.inf)
    return score


MEDIAN_COLUMNS = (
    "epochs_to_target",
    "steps_to_target",
    "seconds_to_target",
    "modelled_seconds_to_target",
    "final_metric",
    "best_metric",
    "auc",
    "test_score",
    "gap_loss_end",
    "gap_acc_end",
    "gap_loss_best",
    "gap_acc_best",
    *HEALTH_COLUMNS,
)


def summarize(runs: pd.DataFrame, by: list[str]) -> pd.DataFrame:
    """Aggregate runs per group: counts, hit rate, medians, IQM of the score with a 95 %
    stratified (by dataset) bootstrap interval, and a ``few_seeds`` flag (< 5 seeds)."""
    status = runs["status"]
    r = runs.assign(
        _completed=(status == "completed"),
        _diverged=(status == "diverged"),
        _failed=(status == "failed"),
        _hit=np.isfinite(runs["epochs_to_target"].to_numpy(float)),
        _min=(runs["target_mode"] == "min"),
    )
    g = r.groupby(by, sort=True, dropna=False)
    out = g.agg(
        n_runs=("trial_id", "size"),
        n_seeds=("seed", "nunique"),
        n_datasets=("dataset", "nunique"),
        n_completed=("_completed", "sum"),
        n_diverged=("_diverged", "sum"),
        n_failed=("_failed", "sum"),
        _any_min=("_min", "any"),
        hit_rate=("_hit", "mean"),
    )
    score = r["score"].to_numpy(float)
    dataset = r["dataset"].astype(str).to_numpy()
    iqms, lows, highs = [], [], []
    indices = g.indices
    for key in out.index:
        idx = indices[key]
        iqms.append(iqm(score[idx]))
        lo, hi = stratified_bootstrap_ci(score[idx], dataset[idx])
        lows.append(lo)
        highs.append(hi)
    out.insert(6, "score_iqm", iqms)
    out.insert(7, "score_ci_low", lows)
    out.insert(8, "score_ci_high", highs)
    out.insert(9, "higher_is_better", ~out.pop("_any_min"))
    med = g[list(MEDIAN_COLUMNS)].median()
    out = out.join(med)
    out["few_seeds"] = out["n_seeds"] < MIN_SEEDS
    return out.reset_index()


def cell_table(runs: pd.DataFrame) -> pd.DataFrame:
    """Per (dataset, configuration): the seeds aggregated."""
    return summarize(runs, ["dataset", "config"])


def technique_table(runs: pd.DataFrame, axes: list[str]) -> pd.DataFrame:
    """Per (axis, technique), aggregated over seeds, datasets and the other axes."""
    frames = []
    for axis in axes:
        s = summarize(runs.assign(technique=runs[axis].astype(str)), ["technique"])
        s.insert(0, "axis", axis)
        frames.append(s)
    if not frames:
        s = summarize(runs.assign(technique="all"), ["technique"])
        s.insert(0, "axis", "(none varies)")
        frames.append(s)
    return pd.concat(frames, ignore_index=True)
