"""The report's scaling section, for stores whose trials carry a ladder ``rung`` (``[scale]``):
score against size with bootstrap bands, the shared-exponent fit and each technique's
multiplier over the baseline (:mod:`.scaling_fit`), the ranking per rung and its rank
correlation between rungs (:mod:`.scaling`), and the learning rate across widths
(:mod:`.scaling_lr`). Absent (no blocks) when no trial has a rung."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from . import figures, tables
from . import htmlpage as html
from .scaling import (
    cell_points,
    pick_baseline,
    rank_correlations,
    rank_table,
    scale_frame,
    select_settings,
    technique_order,
    winner_sentences,
)
from .scaling_figures import lr_figure, size_figure, transfer_figure
from .scaling_fit import (
    FLAT_NOTE,
    LOSS_TEXT,
    MIN_SIZES,
    MODEL_TEXT,
    N_RESAMPLES,
    SharedFit,
    fit_table,
)
from .scaling_lr import best_lrs, drift_sentences, lr_curves, lr_drift

if TYPE_CHECKING:
    from .context import ReportContext, Section

FIT_X = ("num_parameters", "compute")


def _lr_frame(ctx: ReportContext, frame: pd.DataFrame) -> tuple[pd.DataFrame, str]:
    """The runs whose lr curves are drawn: a tuned store's search trials, else the ladder."""
    tuned = ctx.tuned
    if tuned is None:
        return frame, "the ladder's runs (each lr a setting of its technique)"
    search = tuned.trials[~tuned.trials["trial_id"].astype(str).isin(tuned.final_ids)]
    ids = set(search["trial_id"].astype(str))
    metrics = tuned.metrics[tuned.metrics["trial_id"].astype(str).isin(ids)]
    curves = tables.target_curves(search, metrics)
    return scale_frame(search, curves, ctx.axes), "the tuned store's search trials"


def _fits(
    selected: pd.DataFrame, baseline: str
) -> tuple[pd.DataFrame, dict[tuple[str, str], SharedFit]]:
    frames, fits = [], {}
    for i, (dataset, d) in enumerate(selected.groupby("dataset", sort=True)):
        for j, x in enumerate(FIT_X):
            if not np.isfinite(d[x].to_numpy(float)).any():
                continue
            table, fit = fit_table(d, x, baseline, seed=10 * i + j)
            if fit is not None:
                fits[(str(dataset), x)] = fit
                frames.append(table.assign(dataset=dataset))
    if not frames:
        return pd.DataFrame(), fits
    out = pd.concat(frames, ignore_index=True)
    return out[["dataset", *[c for c in out.columns if c != "dataset"]]], fits


def _fit_sentences(fit: pd.DataFrame) -> list[str]:
    out = []
    unit = {"num_parameters": "parameters", "compute": "compute"}
    for (dataset, x), g in fit.groupby(["dataset", "x"], sort=False):
        r0 = g.iloc[0]
        text = (
            f"{dataset}, against {unit[str(x)]}: alpha = {r0['alpha']:.3g} "
            f"[{r0['alpha_ci_low']:.3g}, {r0['alpha_ci_high']:.3g}], E = {r0['E']:.3g} "
            f"[{r0['E_ci_low']:.3g}, {r0['E_ci_high']:.3g}]"
        )
        parts = [
            f"{r['technique']} {r['multiplier']:.3g}x [{r['multiplier_ci_low']:.3g}, "
            f"{r['multiplier_ci_high']:.3g}]"
            for _, r in g.iterrows()
            if r["technique"] != r["baseline"] and not math.isnan(r["multiplier"])
        ]
        if parts:
            text += (
                f"; the baseline {r0['baseline']} needs this many times the {unit[str(x)]} to "
                "match: " + "; ".join(parts)
            )
        flat = [str(t) for t, n in zip(g["technique"], g["note"], strict=True) if n == FLAT_NOTE]
        if flat:
            text += "; left out of the fit: " + "; ".join(f"{t}: {FLAT_NOTE}" for t in flat)
        out.append(text + ".")
    return out


def _rank_display(ranks: pd.DataFrame) -> pd.DataFrame:
    """Ranks wide: one row per (dataset, technique), one column per rung."""
    if ranks.empty:
        return ranks
    wide = ranks.pivot_table(index=["dataset", "technique"], columns="rung", values="rank")
    wide.columns = [f"rank at rung {c}" for c in wide.columns]
    return wide.reset_index()


def _method(score_text: str, base: str, why: str, n_cells: int) -> str:
    return (
        f"Score: {score_text}; lower is better. A technique is the technique names of the "
        "compared axes whose names differ; per rung, each technique is its setting with the "
        f"lowest median over seeds ({n_cells} cells; selected on the seeds it is scored on, "
        "optimistic for techniques with more settings). Median over seeds with a 95% "
        f"percentile bootstrap interval (seeds resampled); diverged or failed runs count as "
        f"worst (+inf) there and are left out of the fit. Baseline: {base} ({why})."
    )


def scaling(ctx: ReportContext) -> Section:
    """Score against size, shared-exponent fit, rankings per rung, lr transfer."""
    from .context import Section

    frame = scale_frame(ctx.runs, ctx.curves, ctx.axes)
    if frame.empty:
        return Section("scaling", "Scaling", [])
    selected = select_settings(frame)
    points, boots = cell_points(selected)
    order = technique_order(frame, ctx.axes, ctx.matrix)
    base, why = pick_baseline(order, ctx.baselines)
    fit, fits = _fits(selected, base)
    ranks = rank_table(points)
    corr = rank_correlations(points, boots)
    lr_source, lr_text = _lr_frame(ctx, frame)
    curves = lr_curves(lr_source) if not lr_source.empty else pd.DataFrame()
    best = best_lrs(curves) if not curves.empty else pd.DataFrame()
    drift = lr_drift(best) if not best.empty else pd.DataFrame()
    score = f"final {frame.attrs['score_name']}"
    blocks = [html.para(_method(frame.attrs["score_text"], base, why, len(points)))]
    blocks += [
        html.heading("Score against size"),
        html.image(
            figures.figure_png(size_figure(points, fits, order, score)),
            "Median final score per rung with its 95% bootstrap band (log-log); dashed: the "
            "shared-exponent fit",
        ),
        html.table(points, csv_name="scaling_points.csv"),
        html.heading("Shared-exponent fit and multipliers over the baseline"),
        html.para(
            f"Model: {MODEL_TEXT}; loss: {LOSS_TEXT} (scipy least_squares, bounded), over every "
            "completed run; N is the parameter count, or the training compute (FLOPs, proxy 6 x "
            "parameters x examples or tokens seen). Multiplier of t: m = (A_base / A_t)^(1/α), "
            "the factor of N the baseline needs to match t (m > 1: t is better). Intervals: "
            f"seeds resampled within each (technique, rung) cell and the model refitted, "
            f"{N_RESAMPLES} times; 95% percentile intervals."
        ),
    ]
    if fit.empty:
        blocks.append(
            html.warning(
                f"No fit: it needs at least {MIN_SIZES} rungs of distinct size with completed "
                "runs, and more runs than parameters."
            )
        )
    blocks += [html.para(t) for t in _fit_sentences(fit)] if not fit.empty else []
    blocks.append(html.table(fit, csv_name="scaling_fit.csv"))
    blocks += [html.heading("Ranking per rung")]
    blocks += [html.para(t) for t in winner_sentences(points, corr)]
    blocks += [
        html.table(_rank_display(ranks), csv_name="scaling_ranks.csv"),
        html.para(
            "Rank 1 = lowest median score at the rung. Kendall tau-b between two rungs' "
            "rankings over the techniques at both, with a 95% interval from the bootstrap "
            "medians above; same_winner_share: the share of resamples in which one technique "
            "wins both rungs.",
            "note",
        ),
        html.table(corr, csv_name="scaling_rank_correlation.csv"),
    ]
    csvs = {
        "scaling_points.csv": points,
        "scaling_fit.csv": fit,
        "scaling_ranks.csv": ranks,
        "scaling_rank_correlation.csv": corr,
    }
    if not best.empty and best["swept"].any():
        blocks += _lr_blocks(curves, best, drift, order, lr_text, score)
        csvs.update({"scaling_lr.csv": curves, "scaling_lr_best.csv": best,
                     "scaling_lr_drift.csv": drift})  # fmt: skip
    return Section("scaling", "Scaling", blocks, csvs)


def _lr_blocks(
    curves: pd.DataFrame,
    best: pd.DataFrame,
    drift: pd.DataFrame,
    order: list[str],
    source: str,
    score: str,
) -> list[str]:
    blocks = [
        html.heading("Learning rate across widths"),
        html.para(
            f"From {source}: per rung and lr, the median final score over seeds of the lr's "
            "best setting; the best lr of a rung is the lr of the lowest median (starred). "
            "Drift factor = best lr at the largest swept rung / best lr at the smallest: 1 when "
            "the optimum transfers across widths (muP's claim, Yang et al. 2021, fig. 1); a "
            "best lr at the edge of its grid (hollow marker) bounds the optimum only."
        ),
    ]
    blocks += [html.para(t) for t in drift_sentences(drift)]
    blocks += [
        html.image(figures.figure_png(lr_figure(curves, best, order, score)), "Final score against lr, "
                   "one line per rung"),
        html.image(figures.figure_png(transfer_figure(best, order)), "Best lr against width"),
        html.table(drift, csv_name="scaling_lr_drift.csv"),
        html.table(best, csv_name="scaling_lr_best.csv"),
        html.table(curves, max_rows=100, csv_name="scaling_lr.csv"),
    ]  # fmt: skip
    return blocks
