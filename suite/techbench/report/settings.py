"""Techniques and their settings: what one axis of the report compares.

A matrix value ``{name = "sgd", lr = [0.01, 0.1]}`` expands to two *settings*
(``sgd(lr=0.01)``, ``sgd(lr=0.1)``) of one *technique* (``sgd``): the compared axis stays
``optimizer`` and the learning rate is not an axis of its own. Per axis:

- when technique names differ, the *techniques* are compared, each represented within a context
  (a dataset with every other axis fixed) by its best setting there: the setting with the highest
  IQM validation score over seeds (never a test metric). This is the per-technique view of
  grid-tuned comparisons (Choi et al. 2019, "On empirical comparisons of optimizers"; Schmidt
  et al. 2021, "Descending through a crowded valley"); selecting on the same seeds it is scored
  on is optimistic for a technique with more settings, and the page says so;
- when only settings differ (a sweep of one technique), the settings are what is compared.

Every setting keeps its own row in the per-setting tables (``cells``/``techniques``).

A *confounded* cell is a configuration that differs from every other configuration of its
dataset in two or more axes at once (e.g. an ``[[include]]`` that changes activation and
initializer together): nothing isolates either change, so it is one cell, not two effects.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from .stats import iqm


def technique_name(label: str) -> str:
    """``"sgd(lr=0.1)"`` -> ``"sgd"``."""
    return label.split("(", 1)[0]


def contexts(runs: pd.DataFrame, axis: str, axes: Sequence[str]) -> pd.Series:
    """Per run: its dataset and the values of every other compared axis, as one label."""
    others = ["dataset", *(a for a in axes if a != axis)]
    label = runs[others[0]].astype(str)
    for a in others[1:]:
        label = label + " | " + runs[a].astype(str)
    return label


@dataclass(frozen=True)
class AxisView:
    """The runs that compare one axis: ``_ctx`` (context), ``_tech`` (technique, or setting for
    a single-technique sweep), ``_setting`` (full label); each (context, technique) keeps only
    its selected setting. ``by_name``: techniques (not settings) are compared; ``n_settings``:
    the most settings any technique had in one context."""

    axis: str
    by_name: bool
    runs: pd.DataFrame
    n_settings: int


def technique_names(settings: pd.Series) -> pd.Series:
    """:func:`technique_name` of each setting, computed once per distinct setting."""
    return settings.map({v: technique_name(v) for v in settings.unique()})


def axis_view(runs: pd.DataFrame, axis: str, axes: Sequence[str], higher: bool) -> AxisView:
    """Select, per context and technique, the setting with the best IQM score (see module doc)."""
    setting = runs[axis].astype(str)
    names = technique_names(setting)
    by_name = names.nunique() > 1
    r = runs.assign(_ctx=contexts(runs, axis, axes), _setting=setting)
    r["_tech"] = names if by_name else setting
    groups = r.groupby(["_ctx", "_tech", "_setting"], sort=True)["score"]
    centre = groups.agg(lambda s: iqm(s.to_numpy(float))).rename("centre").reset_index()
    centre["key"] = centre["centre"] if higher else -centre["centre"]
    counts = centre.groupby(["_ctx", "_tech"])["_setting"].size()
    n_settings = int(counts.max()) if not counts.empty else 0
    if n_settings > 1:
        best = centre.sort_values("key", ascending=False, kind="stable")
        best = best.drop_duplicates(["_ctx", "_tech"])[["_ctx", "_tech", "_setting"]]
        r = r.merge(best, on=["_ctx", "_tech", "_setting"], how="inner")
    return AxisView(axis, by_name, r, n_settings)


def comparison_group(view_runs: pd.DataFrame) -> pd.DataFrame:
    """The runs of the contexts that share the largest technique set (see module doc)."""
    pairs = view_runs[["_ctx", "_tech"]].drop_duplicates()  # not a Python set per 10^5 runs
    techs = pairs.groupby("_ctx", sort=True)["_tech"].agg(lambda s: tuple(sorted(set(s))))
    techs = techs[techs.map(len) >= 2]
    if techs.empty:
        return view_runs.iloc[0:0]
    n_runs = view_runs.groupby("_ctx").size()
    table = pd.DataFrame({"set": techs, "runs": n_runs.reindex(techs.index)})
    ranked = table.groupby("set").agg(n_ctx=("runs", "size"), runs=("runs", "sum")).reset_index()
    ranked["k"] = ranked["set"].map(len)
    best = ranked.sort_values(["k", "n_ctx", "runs"], ascending=False, kind="stable").iloc[0]
    keep = set(table.index[table["set"] == best["set"]])
    return view_runs[view_runs["_ctx"].isin(keep)]


def confounded_cells(runs: pd.DataFrame, axes: Sequence[str]) -> pd.DataFrame:
    """Configurations whose nearest other configuration (same dataset) differs in >= 2 axes.

    One row per such cell: dataset, config, the axes that change together, and the nearest
    configuration(s). Empty when every cell differs from some other cell in one axis only.
    """
    rows = []
    if len(axes) < 2:
        return pd.DataFrame(columns=["dataset", "config", "changes_together", "nearest"])
    cells = runs.drop_duplicates(["dataset", "config"])[["dataset", "config", *axes]]
    for dataset, g in cells.groupby("dataset", sort=True):
        if len(g) < 2:
            continue
        values = g[list(axes)].astype(str).to_numpy()
        diff = values[:, None, :] != values[None, :, :]
        dist = diff.sum(axis=2)
        np.fill_diagonal(dist, len(axes) + 1)
        nearest = dist.min(axis=1)
        for i in np.flatnonzero(nearest >= 2):
            near = np.flatnonzero(dist[i] == nearest[i])
            changed = sorted({a for j in near for a, d in zip(axes, diff[i, j], strict=True) if d})
            rows.append(
                {
                    "dataset": dataset,
                    "config": g["config"].iat[i],
                    "changes_together": ", ".join(changed),
                    "nearest": "; ".join(str(g["config"].iat[j]) for j in near[:3]),
                }
            )
    return pd.DataFrame(rows, columns=["dataset", "config", "changes_together", "nearest"])
