"""Apply the statistics of :mod:`.stats` to the run table: what the report may claim.

A *context* is one dataset with every other varying axis fixed, so that inside it only the
compared axis changes; seeds are the replicates. Blocks of the Friedman test are datasets
(a technique's score on a dataset is its mean over seeds and the other axes).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from . import stats
from .settings import AxisView, comparison_group

MIN_FRIEDMAN_DATASETS = 3


class ReportInputError(ValueError):
    """Bad report input from the user (e.g. an unknown ``--baseline``)."""


def _higher(runs: pd.DataFrame) -> bool:
    return bool((runs["target_mode"] != "min").all())


def _contexts(runs: pd.DataFrame, axis: str, axes: Sequence[str]) -> pd.Series:
    others = ["dataset", *(a for a in axes if a != axis)]
    label = runs[others[0]].astype(str)
    for a in others[1:]:
        label = label + " | " + runs[a].astype(str)
    return label


def best_flags(runs: pd.DataFrame) -> pd.DataFrame:
    """Per dataset: is each configuration indistinguishable from the best one (Holm, 5 %)?"""
    frames = []
    higher = _higher(runs)
    for dataset, g in runs.groupby("dataset", sort=True):
        groups = {c: gg["score"].to_numpy(float) for c, gg in g.groupby("config", sort=True)}
        res = stats.indistinguishable_from_best(groups, higher_is_better=higher)
        res.insert(0, "dataset", dataset)
        res["n_runs"] = [len(groups[c]) for c in res["group"]]
        frames.append(res.rename(columns={"group": "config"}))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


@dataclass
class FriedmanResult:
    axis: str
    ran: bool
    reason: str = ""
    result: dict[str, object] = field(default_factory=dict)


def friedman_by_axis(runs: pd.DataFrame, axes: Sequence[str]) -> list[FriedmanResult]:
    """Friedman test over datasets for each axis with at least 3 techniques."""
    out = []
    higher = _higher(runs)
    n_ds = runs["dataset"].nunique()
    for axis in axes:
        matrix = runs.groupby(["dataset", axis])["score"].mean().unstack(axis)
        complete = matrix.dropna(axis=0, how="any")
        k = matrix.shape[1]
        if k < 3:
            out.append(FriedmanResult(axis, False, f"{k} techniques: a rank test needs >= 3"))
            continue
        if len(complete) < MIN_FRIEDMAN_DATASETS:
            why = (
                f"{len(complete)} of {n_ds} datasets have every technique; the test across "
                f"datasets needs >= {MIN_FRIEDMAN_DATASETS}"
            )
            out.append(FriedmanResult(axis, False, why))
            continue
        complete.columns = [str(c) for c in complete.columns]
        res = stats.friedman(complete, higher_is_better=higher)
        out.append(FriedmanResult(axis, True, "", res))
    return out


def resolve_baseline(runs: pd.DataFrame, axes: Sequence[str], name: str) -> tuple[str, str]:
    """``(axis, value)`` of a ``--baseline``: an exact technique string or a unique name."""
    exact = [(a, name) for a in axes if (runs[a].astype(str) == name).any()]
    if len(exact) == 1:
        return exact[0]
    loose = sorted(
        {
            (a, v)
            for a in axes
            for v in runs[a].astype(str).unique()
            if v.split("(", 1)[0] == name or v == name
        }
    )
    if len(loose) == 1:
        return loose[0]
    if not loose and not exact:
        raise ReportInputError(f"baseline {name!r} is not a value of any varying axis {list(axes)}")
    raise ReportInputError(f"baseline {name!r} is ambiguous: {exact or loose}")


def improvement_table(
    runs: pd.DataFrame, axes: Sequence[str], baselines: Sequence[str]
) -> pd.DataFrame:
    """Probability of improvement of every technique over each baseline on its axis.

    Within each context, ``P(X > B)`` over seeds (``<`` for a minimised target); averaged over
    the contexts that ran both.
    """
    rows = []
    sign = 1.0 if _higher(runs) else -1.0
    for name in baselines:
        axis, base = resolve_baseline(runs, axes, name)
        ctx = _contexts(runs, axis, axes)
        values = runs[axis].astype(str)
        for tech in sorted(values.unique()):
            if tech == base:
                continue
            pois = []
            for _, idx in runs.groupby(ctx).groups.items():
                sub = runs.loc[idx]
                v = values.loc[idx]
                x = sign * sub.loc[v == tech, "score"].to_numpy(float)
                y = sign * sub.loc[v == base, "score"].to_numpy(float)
                if x.size and y.size:
                    pois.append(stats.probability_of_improvement(x, y))
            rows.append(
                {
                    "axis": axis,
                    "baseline": base,
                    "technique": tech,
                    "p_improvement": float(np.mean(pois)) if pois else math.nan,
                    "n_contexts": len(pois),
                }
            )
    return pd.DataFrame(rows)


def profiles(
    views: Mapping[str, AxisView], column: str = "steps_to_target"
) -> dict[str, tuple[pd.DataFrame, pd.Series, int]]:
    """Per axis: AlgoPerf performance profile over the workloads (contexts) that hold the
    largest technique set, each technique at its selected setting (median time over seeds)."""
    out = {}
    for axis, view in views.items():
        times = comparison_group(view.runs)
        if times.empty:
            continue
        table = times.groupby(["_ctx", "_tech"])[column].median().unstack("_tech")
        rho, score = stats.performance_profile(table)
        out[axis] = (rho, score, int(table.dropna().shape[0]))
    return out


def few_seed_cells(cells: pd.DataFrame) -> pd.DataFrame:
    """The (dataset, configuration) cells with fewer than ``stats.MIN_SEEDS`` seeds."""
    if cells.empty:
        return cells
    return cells.loc[cells["n_seeds"] < stats.MIN_SEEDS, ["dataset", "config", "n_seeds"]]
