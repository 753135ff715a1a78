"""The "How sure" section: seeds needed per headline comparison (:mod:`.power`) and which
early signals predict the final score (:mod:`.signals`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pandas as pd

from . import htmlpage as html
from . import power, signals

if TYPE_CHECKING:
    from .context import ReportContext, Section


def how_sure(ctx: ReportContext) -> Section:
    """Power per headline comparison, then the early-signal predictor table."""
    from .context import Section

    blocks: list[str] = []
    csvs: dict[str, pd.DataFrame] = {}
    table = power.power_table(ctx.views, ctx.headline, ctx.higher, ctx.min_effect)
    if not table.empty:
        blocks.append(html.heading("Seeds needed"))
        blocks += _seed_plan(ctx.results_dir)
        blocks += [html.para(t) for t in power.sentences(table)]
        blocks.append(html.table(table, csv_name="power.csv"))
        blocks.append(html.para(_power_method(ctx.min_effect), "note"))
        csvs["power.csv"] = table
    pred = signals.predictor_table(ctx.metrics, ctx.runs, ctx.higher)
    blocks.append(html.heading("Early signals as predictors of the final score"))
    if pred.empty:
        blocks.append(
            html.para(
                f"No workload has {signals.MIN_TRIALS} or more trials with early records: "
                "too few to rank predictors.",
                "note",
            )
        )
    else:
        blocks += [html.para(t) for t in signals.verdicts(pred)]
        blocks.append(html.table(pred, max_rows=60, csv_name="predictors.csv"))
        blocks.append(html.para(_signals_method(), "note"))
        csvs["predictors.csv"] = pred
    return Section("how-sure", "How sure", blocks, csvs)


def _seed_plan(store: object) -> list[str]:
    """The procedure of a two-stage seed plan, when the store ran one (:mod:`..seedplan`)."""
    from ..plan.seedplan import describe, read_stage2

    stage = read_stage2(str(store))
    if stage is None:
        return []
    return [html.para(stage.plan.procedure() + " Planned: " + "; ".join(describe(stage)) + ".")]


def _power_method(min_effect: float | None) -> str:
    text = (
        "Seeds needed (per technique, per context): simulated studies draw n seeds of each "
        "technique from its observed per-seed scores (with replacement) and take the IQM "
        "margin; n is the smallest where 80% of studies put the margin more than 1.96 of its "
        f"standard deviations from 0 (the 95% interval excludes 0), capped at {power.MAX_SEEDS}. "
        f"Under {power.MIN_SEEDS} seeds per technique: the normal formula n = (z_0.975 + z_0.8)^2 "
        "(s1^2 + s2^2) v / margin^2, v = 1.195 (the IQM's variance relative to the mean's). "
        "Equal IQMs (a tie) are never separated."
    )
    if min_effect:
        text += (
            f" min_effect = {min_effect:g}: the same noise with the margin set to it; "
            "'equivalent' when the observed 95% margin interval lies inside ±min_effect."
        )
    else:
        text += " Set --min-effect or [report] min_effect for the seeds to detect an effect."
    return text


def _signals_method() -> str:
    return (
        f"Per workload with >= {signals.MIN_TRIALS} trials: each recorded signal (health "
        "metrics averaged over layers) at the last record by 10/25/50% of the trial's steps, "
        "against the final score: Kendall tau-b with a 95% bootstrap interval over trials, "
        f"and the share of the final top-{signals.TOP_K} among the signal's top-"
        f"{signals.TOP_K} (oriented by the sign of tau). Sorted by |tau|."
    )
