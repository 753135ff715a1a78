"""The report's sections: each is a function ``(ReportContext) -> Section``.

A section reads the tables shared through :class:`ReportContext`, returns its escaped HTML
blocks and the CSVs it owns, and knows nothing of the other sections; :mod:`.build` runs the
functions of :data:`SECTIONS` in order. Adding a section to the report is adding one function
to that list.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from .. import htmlpage as html
from . import analyze, figures, tables
from .stats import MIN_SEEDS
from .tuning import tuning


@dataclass(frozen=True)
class ReportContext:
    """Everything the sections share: the loaded store, the derived tables and the options.

    ``runs`` has one row per trial, ``cells`` one per (dataset, configuration) with the
    best-configuration flags merged in, ``techs`` one per (axis, technique); ``fried`` holds
    the per-axis Friedman results, ``prof_seconds``/``prof_steps`` the performance profiles,
    ``poi`` the probability of improvement over ``baselines`` (empty without one).
    """

    results_dir: str | os.PathLike[str]
    out: Path
    baselines: Sequence[str]
    trials: pd.DataFrame
    metrics: pd.DataFrame
    matrix: Mapping[str, object]
    axes: list[str]
    curves: pd.DataFrame
    runs: pd.DataFrame
    cells: pd.DataFrame
    techs: pd.DataFrame
    flags: pd.DataFrame
    fried: list[analyze.FriedmanResult]
    prof_seconds: dict[str, tuple[pd.DataFrame, pd.Series, int]]
    prof_steps: dict[str, tuple[pd.DataFrame, pd.Series, int]]
    poi: pd.DataFrame
    few: pd.DataFrame

    @property
    def higher(self) -> bool:
        """Whether a higher target metric is better for every run."""
        return bool((self.runs["target_mode"] != "min").all())


@dataclass(frozen=True)
class Section:
    """One section of the page (anchor, heading, escaped HTML blocks) and the CSVs it writes."""

    anchor: str
    heading: str
    blocks: list[str]
    csvs: dict[str, pd.DataFrame] = field(default_factory=dict)


def _cols(df: pd.DataFrame, wanted: Sequence[str]) -> pd.DataFrame:
    return df[[c for c in wanted if c in df]]


def overview(ctx: ReportContext) -> Section:
    """Run counts by status, the runs that diverged or failed, and data-quality warnings."""
    runs, few = ctx.runs, ctx.few
    blocks = []
    counts = runs["status"].value_counts()
    blocks.append(
        html.para(
            f"{len(runs)} runs: "
            + ", ".join(f"{n} {s}" for s, n in counts.items())
            + f". Compared axes: {', '.join(ctx.axes) or 'none (a single configuration)'}."
        )
    )
    bad = runs[runs["status"] != "completed"]
    if not bad.empty:
        blocks.append(
            html.warning(
                f"{len(bad)} runs diverged or failed; they stay in every statistic as misses "
                "(time-to-target ∞, worst score)."
            )
        )
        view = _cols(
            bad, ["trial_id", "status", "dataset", "config", "seed", "diverged_step", "error"]
        )
        view = view.copy()
        if "error" in view:
            view["error"] = view["error"].map(
                lambda e: "" if not isinstance(e, str) else e.strip().splitlines()[-1][:200]
            )
        blocks.append(html.table(view, max_rows=50, csv_name="runs.csv"))
    if not few.empty:
        blocks.append(
            html.warning(
                f"{len(few)} cells have fewer than {MIN_SEEDS} seeds: intervals are wide and "
                "rank tests are underpowered."
            )
        )
    if np.isinf(runs["epochs_to_target"]).all():
        blocks.append(html.warning("No run reached the target: time-to-target is ∞ everywhere."))
    return Section("overview", "Overview", blocks)


def convergence(ctx: ReportContext) -> Section:
    """Per technique: score IQM with its interval, hit rate and time-to-target; curves."""
    tech_cols = [
        "axis", "technique", "n_runs", "n_seeds", "n_datasets", "n_completed", "n_diverged",
        "n_failed", "score_iqm", "score_ci_low", "score_ci_high", "hit_rate",
        "epochs_to_target", "steps_to_target", "seconds_to_target", "final_metric",
        "best_metric", "auc", "few_seeds",
    ]  # fmt: skip
    blocks = [
        html.para(
            "Score = best validation target metric per run (diverged/failed runs get the "
            "worst value). IQM with a 95% bootstrap interval stratified by dataset; "
            "time-to-target is the median over runs (∞ when most runs missed)."
        ),
        html.table(_cols(ctx.techs, tech_cols), csv_name="techniques.csv"),
        html.image(figures.learning_curves(ctx.curves, ctx.runs, ctx.axes), "Learning curves"),
    ]
    return Section("convergence", "Convergence", blocks, {"techniques.csv": ctx.techs})


def profiles(ctx: ReportContext) -> Section:
    """AlgoPerf performance profiles of time-to-target (Dahl et al. 2023)."""
    prof_df = pd.DataFrame(
        [
            {
                "axis": a,
                "technique": t,
                "score_seconds": s,
                "score_steps": ctx.prof_steps[a][1].get(t),
            }
            for a, (_, score, _) in ctx.prof_seconds.items()
            for t, s in score.items()
        ]
    )
    blocks = [
        html.para(
            "AlgoPerf-style performance profiles: per workload (a dataset with the other axes "
            "fixed) each technique's median time-to-target divided by the best technique's; "
            "rho(tau) is the fraction of workloads within tau of the best, the score its "
            "normalised integral over tau in [1, 4]. Misses never count as solved."
        ),
        html.image(
            figures.profile_plot(ctx.prof_seconds), "Performance profiles (seconds to target)"
        ),
        html.table(prof_df, csv_name="profiles.csv"),
    ]
    return Section("profiles", "Time-to-target profiles", blocks, {"profiles.csv": prof_df})


def _friedman_tables(fried: Sequence[analyze.FriedmanResult]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """One row per axis (the test or why it did not run) and one per (axis, technique) rank."""
    fried_rows, rank_rows = [], []
    for fr in fried:
        row = {"axis": fr.axis, "ran": fr.ran, "reason": fr.reason}
        if fr.ran:
            r = fr.result
            row.update(
                statistic=r["statistic"], pvalue=r["pvalue"], n_datasets=r["n_blocks"],
                k=r["k"], critical_difference=r["cd"],
            )  # fmt: skip
            ranks: pd.Series = r["ranks"]
            for tech, rank in ranks.items():
                rank_rows.append({"axis": fr.axis, "technique": tech, "mean_rank": rank})
        fried_rows.append(row)
    return pd.DataFrame(fried_rows), pd.DataFrame(rank_rows)


def statistics(ctx: ReportContext) -> Section:
    """Best-configuration tests per dataset, Friedman/Nemenyi per axis (Demsar 2006), and the
    probability of improvement over a baseline (Agarwal et al. 2021, rliable)."""
    cells, few = ctx.cells, ctx.few
    fried_df, ranks_df = _friedman_tables(ctx.fried)
    blocks = [
        html.para(
            "Per dataset, each configuration is tested against the best one (highest IQM) "
            "with a one-sided Mann-Whitney U over seeds, Holm-corrected across "
            "configurations; 'indistinguishable' means the data do not show it is worse ('tested' "
            "is no where either side has fewer than 2 runs)."
        )
    ]
    if not few.empty:
        blocks.append(
            html.warning(
                f"{len(few)} of {len(cells)} cells have fewer than {MIN_SEEDS} seeds "
                f"(as few as {int(few['n_seeds'].min())}); with 3 against 3 runs a rank test "
                "can never reach p < 0.05, so 'indistinguishable' there means 'untested'."
            )
        )
    cell_cols = [
        "dataset", "config", "n_seeds", "n_diverged", "n_failed", "score_iqm",
        "score_ci_low", "score_ci_high", "indistinguishable", "tested", "p_holm",
        "few_seeds",
    ]  # fmt: skip
    order = cells.sort_values(["dataset", "score_iqm"], ascending=[True, not ctx.higher])
    blocks.append(html.table(_cols(order, cell_cols), csv_name="cells.csv"))
    blocks.append(html.para("Friedman test across datasets (Demsar 2006), per axis:"))
    blocks.append(html.table(fried_df, csv_name="friedman.csv"))
    for fr in ctx.fried:
        if fr.ran and fr.result.get("nemenyi") is not None:
            title = (
                f"{fr.axis}: mean rank over {fr.result['n_blocks']} datasets, Friedman "
                f"p = {fr.result['pvalue']:.3g}, Nemenyi CD = {fr.result['cd']:.2f}"
            )
            png = figures.cd_diagram(fr.result["ranks"], fr.result["nemenyi"], title)
            blocks.append(html.image(png, f"Critical-difference diagram: {fr.axis}"))
    if ctx.baselines:
        blocks.append(
            html.para(
                "Probability of improvement over the baseline, P(X > B) + P(X = B)/2 over "
                "seeds within each context, averaged over contexts (rliable)."
            )
        )
        blocks.append(html.table(ctx.poi, csv_name="improvement.csv"))
    else:
        blocks.append(html.para("Probability of improvement: pass --baseline TECHNIQUE.", "note"))
    csvs = {
        "cells.csv": cells,
        "best_flags.csv": ctx.flags,
        "friedman.csv": fried_df,
        "ranks.csv": ranks_df,
        "improvement.csv": ctx.poi,
    }
    return Section("statistics", "Statistics", blocks, csvs)


def health(ctx: ReportContext) -> Section:
    """Gradient and activation health per technique, per layer and per step."""
    metrics, runs, axes = ctx.metrics, ctx.runs, ctx.axes
    health_cols = ["axis", "technique", "n_runs", *tables.HEALTH_COLUMNS]
    blocks = [
        html.table(_cols(ctx.techs, health_cols), csv_name="techniques.csv"),
        html.image(figures.health_heatmaps(metrics, runs, axes), "Gradient norm heatmaps"),
        html.image(
            figures.fraction_heatmaps(metrics, runs, axes),
            "Dead and saturated fractions per layer and step (median over runs)",
        ),
        html.image(figures.ratio_curves(metrics, runs, axes), "First/last layer gradient ratio"),
        html.image(
            figures.activation_stats(metrics, runs, axes), "Per-layer activation statistics"
        ),
    ]
    return Section("health", "Gradient health", blocks)


def generalization(ctx: ReportContext) -> Section:
    """Train minus validation loss and accuracy, at the end and at the best epoch."""
    gap_cols = ["axis", "technique", "gap_loss_end", "gap_acc_end", "gap_loss_best", "gap_acc_best"]
    blocks = [
        html.para("Train minus validation, at the end and at the best-validation epoch."),
        html.table(_cols(ctx.techs, gap_cols), csv_name="techniques.csv"),
        html.image(
            figures.gap_distributions(ctx.runs, ctx.axes), "Generalization gap distributions"
        ),
    ]
    return Section("generalization", "Generalization gap", blocks)


def interactions(ctx: ReportContext) -> Section:
    """Mean score over pairs of axes: does one technique's effect depend on another's?"""
    png = figures.interactions(ctx.runs, ctx.axes)
    return Section(
        "interactions", "Interactions", [html.image(png, "Interaction heatmaps: mean score")]
    )


def runs(ctx: ReportContext) -> Section:
    """Every run, best first (the full table is runs.csv)."""
    view = ctx.runs.sort_values("score", ascending=not ctx.higher).drop(
        columns=["versions", "error"], errors="ignore"
    )
    block = html.table(view, max_rows=200, csv_name="runs.csv")
    return Section("runs", "Runs", [block], {"runs.csv": ctx.runs})


SECTIONS: list[Callable[[ReportContext], Section]] = [
    overview,
    tuning,
    convergence,
    profiles,
    statistics,
    health,
    generalization,
    interactions,
    runs,
]
"""The report's sections in page order; :func:`build` runs each once."""
