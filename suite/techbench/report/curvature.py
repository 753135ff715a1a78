"""The curvature section: sharpness against each optimizer's stability threshold (the edge of
stability, Cohen et al. 2021, arXiv 2103.00065; adaptive methods, Cohen et al. 2022,
arXiv 2207.14484), from the rows of the curvature probe (:mod:`techbench.engine.curvature_probe`).

Each probe compares one quantity with its threshold: the preconditioned sharpness with
``precond_threshold`` when the run recorded them (adaptive optimizers), else the sharpness with
``threshold``; ``ratio`` is their quotient. A probe is *at the edge* when ``ratio >=`` 1 -
:data:`EDGE_BAND` (within 10% of the threshold, or above it: sharpness hovers around the
threshold, a little under it as often as over). Probes are evenly spaced, so the fraction of a
run's probes at the edge is the fraction of its training there. Absent when no run has
curvature rows.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from ..techniques.palette import technique_color
from . import figures
from . import htmlpage as html
from .context import ReportContext, Section
from .settings import AxisView

EDGE_BAND = 0.10
"""A probe within this fraction below its threshold (or above it) is at the edge of stability."""

PAIRS = (("precond_sharpness", "precond_threshold"), ("sharpness", "threshold"))
"""(quantity, its threshold), preferred first."""


def probes(metrics: pd.DataFrame) -> pd.DataFrame:
    """One row per (trial, probe step): ``sharpness`` (the compared quantity), ``threshold``
    (NaN when the optimizer declares none, or at a learning rate of 0, where the probe writes
    none: not at the edge), ``ratio`` and ``edge``; empty without curvature rows. A probe
    with the preconditioned sharpness but not its threshold falls back to the plain pair
    when it has the plain sharpness."""
    rows = metrics[metrics["split"] == "curvature"]
    if rows.empty:
        return pd.DataFrame(columns=["trial_id", "step", "sharpness", "threshold", "ratio"])
    wide = rows.pivot_table(index=["trial_id", "step"], columns="metric", values="value")
    out = pd.DataFrame(index=wide.index)
    out["sharpness"], out["threshold"] = np.nan, np.nan
    for quantity, limit in reversed(PAIRS):  # the preferred pair overwrites where it exists
        if quantity not in wide:
            continue
        has = wide[quantity].notna()
        if limit in wide and quantity != "sharpness" and "sharpness" in wide:
            has &= wide[limit].notna() | wide["sharpness"].isna()
        out.loc[has, "sharpness"] = wide.loc[has, quantity]
        out.loc[has, "threshold"] = wide[limit][has] if limit in wide else np.nan
    out["ratio"] = out["sharpness"] / out["threshold"]
    out["edge"] = out["ratio"] >= 1.0 - EDGE_BAND
    return out.reset_index()


def run_summary(table: pd.DataFrame) -> pd.DataFrame:
    """Per trial: ``edge_fraction`` (probes at the edge), ``first_edge_step`` (NaN: never),
    ``stay_fraction`` (probes at the edge from the first one on), the final ``sharpness``,
    ``threshold`` and ``ratio``, and ``max_ratio``."""
    out = []
    for trial, t in table.sort_values("step").groupby("trial_id", sort=False):
        known = t["threshold"].notna().any()
        edge = t["edge"].to_numpy(bool)
        first = int(np.argmax(edge)) if edge.any() else None
        out.append(
            {
                "trial_id": trial,
                "probes": len(t),
                "edge_fraction": edge.mean() if known else np.nan,
                "first_edge_step": t["step"].iloc[first] if first is not None else np.nan,
                "stay_fraction": edge[first:].mean() if first is not None else np.nan,
                "sharpness": t["sharpness"].iloc[-1],
                "threshold": t["threshold"].iloc[-1],
                "ratio": t["ratio"].iloc[-1],
                "max_ratio": t["ratio"].max() if known else np.nan,
            }
        )
    return pd.DataFrame(out)


def technique_table(
    summary: pd.DataFrame,
    runs: pd.DataFrame,
    axes: Sequence[str],
    views: Mapping[str, AxisView] | None = None,
) -> pd.DataFrame:
    """Per (dataset, axis, technique): runs, how many reached the edge, the medians over runs
    of the first step there, of the fraction of training at it and of the final sharpness,
    threshold and ratio, and the plain sentence (:func:`sentence`)."""
    rows = []
    for axis in list(axes) or ["config"]:
        tagged = figures.by_technique(runs, axis, views)
        data = summary.merge(tagged[["trial_id", "dataset", "_t"]], on="trial_id")
        for (dataset, tech), g in data.groupby([data["dataset"].astype(str), "_t"]):
            row = {
                "dataset": dataset,
                "axis": axis,
                "technique": tech,
                "n_runs": len(g),
                "n_reached": int(g["first_edge_step"].notna().sum()),
                "first_edge_step": g["first_edge_step"].median(),
                "edge_fraction": g["edge_fraction"].median(),
                "stay_fraction": g["stay_fraction"].median(),
                "final_sharpness": g["sharpness"].median(),
                "final_threshold": g["threshold"].median(),
                "final_ratio": g["ratio"].median(),
                "max_ratio": g["max_ratio"].median(),
            }
            row["sentence"] = sentence(row)
            rows.append(row)
    return pd.DataFrame(rows)


def sentence(row: Mapping[str, object]) -> str:
    """One plain sentence on a technique's edge of stability (``row`` of
    :func:`technique_table`)."""
    tech, n, reached = row["technique"], int(row["n_runs"]), int(row["n_reached"])  # type: ignore[call-overload]
    if pd.isna(row["final_threshold"]) and pd.isna(row["max_ratio"]):
        return (
            f"{tech}: its optimizer declares no stability threshold; final sharpness "
            f"{float(row['final_sharpness']):.3g} (median over {n} runs)."  # type: ignore[arg-type]
        )
    if reached == 0:
        return (
            f"{tech}: stayed below the edge of stability (at most "
            f"{float(row['max_ratio']):.0%} of its threshold, median over {n} runs)."  # type: ignore[arg-type]
        )
    runs_text = "every run" if reached == n else f"{reached} of {n} runs"
    return (
        f"{tech}: reached the edge of stability at step {float(row['first_edge_step']):.0f} "  # type: ignore[arg-type]
        f"({runs_text}; median) and stayed within {EDGE_BAND:.0%} of it or above for "
        f"{float(row['stay_fraction']):.0%} of the probes after."  # type: ignore[arg-type]
    )


def lr_table(summary: pd.DataFrame, runs: pd.DataFrame) -> pd.DataFrame:
    """For optimizers run at several learning rates: per (dataset, optimizer, lr) the median
    final sharpness, its threshold (2/lr for gradient descent) and their ratio."""
    data = summary.merge(runs[["trial_id", "dataset", "optimizer", "lr"]], on="trial_id")
    data["optimizer"] = data["optimizer"].astype(str).str.split("(").str[0]
    data = data[data["lr"].astype(str) != ""]
    keys = [data["dataset"].astype(str), "optimizer"]
    several = data.groupby(keys)["lr"].transform("nunique") > 1
    data = data[several]
    if data.empty:
        return pd.DataFrame()
    out = data.groupby([data["dataset"].astype(str), "optimizer", "lr"]).agg(
        n_runs=("trial_id", "size"),
        final_sharpness=("sharpness", "median"),
        threshold=("threshold", "median"),
        ratio=("ratio", "median"),
    )
    return out.reset_index()


def sharpness_figure(
    table: pd.DataFrame,
    runs: pd.DataFrame,
    axes: Sequence[str],
    views: Mapping[str, AxisView] | None = None,
) -> Figure | None:
    """Sharpness against step per technique (median and interquartile band over runs), its
    threshold dashed in the same colour; one panel per compared axis x dataset, log scale."""
    if table.empty:
        return None
    datasets = sorted(runs["dataset"].astype(str).unique())[: figures.MAX_DATASETS]
    rows = list(axes[: figures.MAX_AXES]) or ["config"]
    fig, axs = figures.panel_grid(len(rows), len(datasets), 4.0, 3.0, legend_w=2.6)
    for i, axis in enumerate(rows):
        tagged = figures.by_technique(runs, axis, views)
        data = table.merge(tagged[["trial_id", "dataset", "_t"]], on="trial_id")
        for j, dataset in enumerate(datasets):
            ax = axs[i][j]
            part = data[data["dataset"].astype(str) == dataset]
            for tech, g in part.groupby("_t"):
                q = g.groupby("step")["sharpness"].quantile([0.25, 0.5, 0.75]).unstack()
                color = technique_color(str(tech))
                ax.plot(q.index, q[0.5], color=color, lw=1.5, label=figures.short_label(str(tech)))
                ax.fill_between(q.index, q[0.25], q[0.75], color=color, alpha=0.2, lw=0)
                limit = g.groupby("step")["threshold"].median()
                ax.plot(limit.index, limit, color=color, lw=1.0, ls="--")
            ax.set_yscale("log")
            ax.set_title(f"{dataset} · {axis}")
            ax.set_xlabel("step")
            ax.set_ylabel("sharpness (dashed: threshold)")
        figures.legend_right(axs[i][-1], axs[i])
    return fig


def curvature(ctx: ReportContext) -> Section:
    """Sharpness against the stability threshold per technique; absent (no blocks) without
    curvature rows."""
    table = probes(ctx.metrics)
    table = table[table["trial_id"].isin(ctx.runs["trial_id"])]
    if table.empty:
        return Section("curvature", "Curvature", [])
    summary = run_summary(table)
    techs = technique_table(summary, ctx.runs, ctx.axes, ctx.views)
    how = (
        "Sharpness: the largest eigenvalue of the training loss's Hessian on a fixed probe batch "
        "(for adaptive optimizers, of the preconditioned Hessian), against the optimizer's "
        "stability threshold at its current learning rate (2/lr for gradient descent; "
        "(2+2·beta1)/((1-beta1)·lr) for Adam). A probe is at the edge of stability when the "
        f"sharpness is within {EDGE_BAND:.0%} of the threshold or above; edge_fraction is the "
        "fraction of a run's probes there, first_edge_step the first such probe, stay_fraction "
        "the fraction at the edge from then on (medians over runs)."
    )
    blocks = [html.para(how, "note")]
    blocks += [html.para(s) for s in techs["sentence"]]
    shown = techs.drop(columns=["sentence"])
    blocks.append(html.table(shown, csv_name="curvature.csv"))
    picture = sharpness_figure(table, ctx.runs, ctx.axes, ctx.views)
    blocks.append(html.image(figures.figure_png(picture), "Sharpness against step"))
    csvs = {"curvature.csv": shown}
    lrs = lr_table(summary, ctx.runs)
    if not lrs.empty:
        blocks.append(html.heading("Final sharpness against the threshold, per learning rate"))
        blocks.append(html.table(lrs, csv_name="curvature_lr.csv"))
        csvs["curvature_lr.csv"] = lrs
    return Section("curvature", "Curvature", blocks, csvs)
