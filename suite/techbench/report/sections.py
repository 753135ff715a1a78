"""The report's sections: each is a function ``(ReportContext) -> Section``.

A section reads the tables shared through :class:`ReportContext`, returns its escaped HTML
blocks and the CSVs it owns, and knows nothing of the other sections; :mod:`.build` runs the
functions of :data:`SECTIONS` in order. Adding a section to the report is adding one function
to that list.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from . import analyze, answer_figures, figures, headline, scoring, tables
from . import htmlpage as html
from .context import ReportContext, Section
from .curvature import curvature
from .howsure import how_sure
from .inputs import CUT_SHORT
from .scaling_section import scaling
from .stats import MIN_SEEDS
from .tuning import tuning

__all__ = ["SECTIONS", "ReportContext", "Section"]


def _cols(df: pd.DataFrame, wanted: Sequence[str]) -> pd.DataFrame:
    return df[[c for c in wanted if c in df]]


def _image(fig: Figure | None, caption: str) -> str:
    return html.image(figures.figure_png(fig), caption)


def _test_name(ctx: ReportContext) -> str:
    metric = str(ctx.runs["target_metric"].iloc[0])
    return scoring.held_out_column(metric, ctx.score_rule).replace("_best_", "_")


def answer(ctx: ReportContext) -> Section:
    """The headline per dataset and compared axis, the per-technique leaderboard and the
    cross-dataset summary on normalised scores (:mod:`.headline`)."""
    metric = str(ctx.runs["target_metric"].iloc[0])
    head = ctx.headline
    if head.empty:
        note = "No axis has two techniques in one context: nothing to compare."
        return Section("answer", "Answer", [html.warning(note)])
    blocks = [html.table(headline.display(head, metric, _test_name(ctx)), csv_name="headline.csv")]
    picture = answer_figures.answer_intervals(ctx.leaderboard, metric)
    blocks.append(_image(picture, "Each technique's score and P(best > technique), 95% CIs"))
    blocks += [html.para(t) for t in headline.sentences(head, metric)]
    selected = [v.axis for v in ctx.views.values() if v.by_name and v.n_settings > 1]
    how = (
        f"Score: {scoring.describe(ctx.score_rule)}. Per dataset and axis, the techniques of the "
        "contexts (other axes fixed) holding the most techniques; IQM over runs with a 95% "
        "stratified-bootstrap interval; P(X > Y) is the rliable probability of improvement over "
        "runs, averaged over contexts. Test metrics are shown, never ranked on."
    )
    if selected:
        how += (
            f" Axes with several settings per technique ({', '.join(selected)}): each technique "
            "is its best setting per context by validation IQM (optimistic for techniques with "
            "more settings; every setting has its row in the statistics section)."
        )
    if ctx.tuned:
        how += " " + ctx.tuned.describe()
    blocks.append(html.para(how, "note"))
    board_cols = [
        "dataset", "axis", "rank", "technique", "setting", "n_runs", "score_iqm",
        "score_ci_low", "score_ci_high", "p_best_better", "p_ci_low", "p_ci_high",
        "test_iqm", "hit_rate", "n_cut_short",
    ]  # fmt: skip
    blocks.append(html.heading("Every technique against the best (P(best > technique))"))
    blocks.append(html.table(_cols(ctx.leaderboard, board_cols), csv_name="leaderboard.csv"))
    csvs = {"headline.csv": head, "leaderboard.csv": ctx.leaderboard}
    if not ctx.summary.empty:
        blocks.append(html.heading("Across datasets (normalised scores, not pooled accuracies)"))
        blocks.append(
            html.para(
                "Per dataset, each technique's IQM score is min-max normalised between the worst "
                "(0) and the best (1) technique on that dataset, then averaged over datasets; "
                "mean rank (1 = best) beside it. The Friedman/Nemenyi test is in Statistics.",
                "note",
            )
        )
        blocks.append(html.table(ctx.summary, csv_name="summary.csv"))
        csvs["summary.csv"] = ctx.summary
    return Section("answer", "Answer", blocks, csvs)


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
    cut = runs[runs["stop_reason"].isin(CUT_SHORT)]
    if not cut.empty:
        blocks.append(
            html.warning(
                f"{len(cut)} of {len(runs)} runs were cut short (stopped by the time budget "
                "max_seconds or for no recorded reason before their epochs/steps): they are "
                "scored where they stopped and counted as 'cut' in the answer table."
            )
        )
        view = _cols(cut, ["trial_id", "stop_reason", "dataset", "config", "seed", "epochs_run",
                           "epochs", "steps", "train_seconds"])  # fmt: skip
        blocks.append(html.table(view, max_rows=50, csv_name="runs.csv"))
    if not ctx.confounded.empty:
        blocks.append(
            html.warning(
                f"{len(ctx.confounded)} configurations change two or more axes at once against "
                "every other configuration (e.g. an [[include]] setting both): one cell is not "
                "two effects, so they are compared on no axis."
            )
        )
        blocks.append(html.table(ctx.confounded, csv_name="confounded.csv"))
    return Section("overview", "Overview", blocks, {"confounded.csv": ctx.confounded})


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
            f"Score = {scoring.describe(ctx.score_rule)} (diverged/failed runs get the worst "
            "value). One row per setting, over datasets and the other axes (the answer "
            "section compares within contexts). IQM with a 95% bootstrap interval stratified "
            "by dataset; time-to-target is the median over runs (∞ when most runs missed)."
        ),
        html.table(_cols(ctx.techs, tech_cols), csv_name="techniques.csv"),
        _image(
            figures.learning_curves(ctx.curves, ctx.runs, ctx.axes, ctx.views), "Learning curves"
        ),
    ]
    blocks += [html.para(t, "note") for t in _curves_left_out(ctx)]
    return Section("convergence", "Convergence", blocks, {"techniques.csv": ctx.techs})


def _curves_left_out(ctx: ReportContext) -> list[str]:
    """Per compared axis whose learning-curve panels leave techniques out: which are drawn and
    why (the figure draws at most ``MAX_TECHNIQUES``, the best by mean score)."""
    out = []
    for axis in ctx.axes[: figures.MAX_AXES]:
        tagged = figures._by_technique(ctx.runs, axis, ctx.views)
        drawn = figures._top_techniques(tagged, axis)
        left = sorted(set(tagged["_t"].astype(str)) - set(drawn))
        if left:
            out.append(
                f"Learning curves, {axis}: the {len(drawn)} of {len(drawn) + len(left)} "
                f"techniques with the best mean score are drawn ({', '.join(drawn)}); more "
                f"bands would hide each other. Not drawn: {', '.join(left)} (in the tables)."
            )
    return out


def profiles(ctx: ReportContext) -> Section:
    """AlgoPerf performance profiles of time-to-target (Dahl et al. 2023) on steps, on modelled
    seconds (steps x the configuration's calibrated step time) and, when asked, on wall-clock."""
    rows = [
        {"measure": m, "axis": a, "technique": t, "score": s, "workloads": n}
        for m, per_axis in ctx.profiles.items()
        for a, (_, score, n) in per_axis.items()
        for t, s in score.items()
    ]
    prof_df = pd.DataFrame(rows)
    blocks = [
        html.para(
            "AlgoPerf-style performance profiles: per workload (a dataset with the other axes "
            "fixed) each technique's median time-to-target divided by the best technique's; "
            "rho(tau) is the fraction of workloads within tau of the best, the score its "
            "normalised integral over tau in [1, 4]. Misses never count as solved. Each "
            "technique at its selected setting."
        )
    ]
    for measure, per_axis in ctx.profiles.items():
        if measure == "wall-clock seconds":
            blocks.append(
                html.warning(
                    "Raw wall-clock seconds: runs that shared a machine (stacks, parallel "
                    "workers, other load) are timed with that noise; rankings by seconds can "
                    "flip under load. Prefer steps or modelled seconds."
                )
            )
        blocks.append(
            _image(figures.profile_plot(per_axis, measure), f"Performance profiles ({measure})")
        )
    blocks.append(html.table(prof_df, csv_name="profiles.csv"))
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
            fig = figures.cd_diagram(fr.result["ranks"], fr.result["nemenyi"], title)
            blocks.append(_image(fig, f"Critical-difference diagram: {fr.axis}"))
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
        _image(figures.health_heatmaps(metrics, runs, axes), "Gradient norm heatmaps"),
        _image(
            figures.fraction_heatmaps(metrics, runs, axes),
            "Dead and saturated fractions per layer and step (median over runs)",
        ),
        _image(
            figures.ratio_curves(metrics, runs, axes, ctx.views), "First/last layer gradient ratio"
        ),
        _image(
            figures.activation_stats(metrics, runs, axes, ctx.views),
            "Per-layer activation statistics",
        ),
    ]
    return Section("health", "Gradient health", blocks)


def generalization(ctx: ReportContext) -> Section:
    """Train minus validation loss and accuracy, at the end and at the best epoch."""
    gap_cols = ["axis", "technique", "gap_loss_end", "gap_acc_end", "gap_loss_best", "gap_acc_best"]
    blocks = [
        html.para("Train minus validation, at the end and at the best-validation epoch."),
        html.table(_cols(ctx.techs, gap_cols), csv_name="techniques.csv"),
        _image(
            figures.gap_distributions(ctx.runs, ctx.axes, ctx.views),
            "Generalization gap distributions",
        ),
    ]
    return Section("generalization", "Generalization gap", blocks)


def interactions(ctx: ReportContext) -> Section:
    """Mean score over pairs of axes: does one technique's effect depend on another's?"""
    fig = figures.interactions(ctx.runs, ctx.axes)
    return Section(
        "interactions", "Interactions", [_image(fig, "Interaction heatmaps: mean score")]
    )


def runs(ctx: ReportContext) -> Section:
    """Every run in reading order (:func:`.tables.reading_order`; the full table is runs.csv)."""
    view = ctx.runs.drop(columns=["versions", "techniques", "plugins", "error"], errors="ignore")
    order = ", then ".join(["dataset", *ctx.axes, "seed"])
    note = f"One row per run, sorted by {order}; click a column heading to sort by it."
    block = html.table(view, max_rows=200, csv_name="runs.csv")
    return Section("runs", "Runs", [html.para(note, "note"), block], {"runs.csv": ctx.runs})


SECTIONS: list[Callable[[ReportContext], Section]] = [
    answer,
    how_sure,
    overview,
    tuning,
    scaling,
    convergence,
    profiles,
    statistics,
    health,
    curvature,
    generalization,
    interactions,
    runs,
]
"""The report's sections in page order; :func:`build` runs each once."""
