"""The report's tuning section, for stores run from a matrix with ``[tune]`` (``OUT/tune.json``).

What a reader needs to trust a tuned comparison (Dodge et al. 2019; Sivaprasad et al. 2020;
AlgoPerf): the setting each technique got and whether it lies at the edge of the searched range;
the final test and validation scores on fresh seeds with bootstrap intervals; how the best
validation score grows with the number of search trials (so a ranking that only holds at large
budgets shows); and how sensitive each technique is to each searched hyper-parameter.
Selection is recomputed with :func:`techbench.plan.tune.select_stored`, the function the run used,
once, at the report's input (:class:`.inputs.Tuned`); this is the only section that sees the
search trials.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from ..plan.tune import Selection, TunePlan, trial_score
from ..schema import metric_series
from ..techniques.palette import technique_color
from . import expmax
from . import htmlpage as html
from .inputs import Tuned
from .stats import stratified_bootstrap_ci
from .tables import summarize

if TYPE_CHECKING:
    from .context import ReportContext, Section

MAX_PANELS = 12
FLOOR_TEXT = (
    "Diverged or failed search points count as the worst finite score of the same technique "
    "in the same context (its own floor: adding or removing another technique does not move "
    "this one's curve); a technique whose every point diverged has no curve."
)
"""The expected-max floor as the page states it; see :func:`_point_scores`."""


def _mean(a: np.ndarray, axis: int) -> np.ndarray:
    return np.mean(a, axis=axis)


def _interval(values: list[float]) -> tuple[float, float]:
    return stratified_bootstrap_ci(values, statistic=_mean)


def _series(metrics: pd.DataFrame, split: str, name: str) -> dict[str, list[float]]:
    part = metrics[(metrics["split"] == split) & (metrics["metric"] == name)]
    part = part.sort_values(["trial_id", "epoch", "step"], kind="stable")
    return {
        str(t): [float(v) for v in g["value"]]
        for t, g in part.groupby("trial_id", observed=True, sort=False)
    }


def search_table(plan: TunePlan, tuned: Tuned) -> pd.DataFrame:
    """One row per search trial: group, study, point index and values, seed, status, score."""
    _, name = metric_series(plan.spec.metric)
    val = _series(tuned.metrics, "val", name)
    status = dict(zip(tuned.trials["trial_id"], tuned.trials["status"], strict=True))
    sign = 1.0 if plan.spec.mode == "max" else -1.0
    rows = []
    for g in plan.groups:
        for study, points in enumerate(g.points):
            for i, point in enumerate(points):
                for seed in plan.spec.study_seeds(study):
                    tid = g.trial(point, seed, plan.follow).id
                    st = status.get(tid)
                    s = trial_score(st, val.get(tid, []), plan.spec.select, plan.spec.mode)
                    rows.append(
                        {
                            "group": g.id,
                            "technique": g.technique,
                            "context": g.context,
                            "study": study,
                            "point": i,
                            **point,
                            "seed": seed,
                            "trial_id": tid,
                            "status": st or "not run",
                            "val_score": sign * s if math.isfinite(s) else math.nan,
                        }
                    )
    return pd.DataFrame(rows)


def _point_scores(search: pd.DataFrame, plan: TunePlan) -> pd.DataFrame:
    """Mean validation score per (group, study, point), and ``score_filled`` for the
    expected-max estimators, which need a number for every point (:data:`FLOOR_TEXT`).

    A diverged point takes the worst finite score of its own technique in its context. Dodge
    et al. (2019, "Show your work", eq. 1) estimate E[max of n] from the empirical distribution
    of *one* model's N trials, so every value it draws must come from that model's trials: a
    floor from the other techniques (the context's worst) makes a technique's curve move when a
    technique is added or removed. A metric's worst possible value (0 accuracy) is not defined
    for a loss (unbounded) and, far below every observed score, would let one divergence drag
    the small-n estimate anywhere; the technique's own minimum ranks a divergence below every
    finite point (never selected, as :func:`techbench.plan.tune.trial_score` ranks it) while keeping
    the curve on the scale of that technique's own scores. It is optimistic (a divergence is
    worse than any finished run), so the page states the floor. A technique with no finite point
    keeps NaN and gets no curve.
    """
    ok = search["status"] != "not run"
    keys = ["group", "technique", "context", "study", "point"]
    dims = list(dict.fromkeys(d.key for g in plan.groups for d in g.dims))
    pts = search[ok].groupby(keys, sort=False)
    table = pts["val_score"].agg(lambda s: s.mean() if s.notna().all() else math.nan)
    table = table.rename("score").reset_index()
    if dims:
        table = table.merge(pts[dims].first().reset_index(), on=keys, how="left")
    higher = plan.spec.mode == "max"
    worst = table.groupby(["context", "technique"])["score"].transform("min" if higher else "max")
    table["diverged"] = table["score"].isna()
    table["score_filled"] = table["score"].fillna(worst)
    return table


def _final_rows(
    plan: TunePlan, selection: list[Selection], tuned: Tuned
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per final trial, and per selected (group, study): val and test means with intervals."""
    _, name = metric_series(plan.spec.metric)
    val = _series(tuned.metrics, "val", name)
    test_name = f"best_{name}" if plan.spec.select == "best" else name
    test = _series(tuned.metrics, "test", test_name)
    if not test:
        test_name, test = name, _series(tuned.metrics, "test", name)
    status = dict(zip(tuned.trials["trial_id"], tuned.trials["status"], strict=True))
    by_id = {g.id: g for g in plan.groups}
    sign = 1.0 if plan.spec.mode == "max" else -1.0
    trials, summary = [], []
    for s in selection:
        g = by_id[s.group]
        vals, tests, n_run, n_bad = [], [], 0, 0
        for seed in plan.spec.final_seeds:
            tid = g.trial(s.point, seed, plan.follow).id
            st = status.get(tid)
            v = trial_score(st, val.get(tid, []), plan.spec.select, plan.spec.mode)
            t_series = test.get(tid, [])
            t = t_series[-1] if st == "completed" and t_series else math.nan
            trials.append(
                {"group": g.id, "technique": g.technique, "context": g.context,
                 "study": s.study, "seed": seed, "trial_id": tid, "status": st or "not run",
                 f"val_{name}": sign * v if math.isfinite(v) else math.nan,
                 f"test_{test_name}": t}
            )  # fmt: skip
            if st is None:
                continue
            n_run += 1
            if st != "completed":
                n_bad += 1
                continue
            vals.append(sign * v)
            tests.append(t)
        row: dict[str, Any] = {
            "technique": g.technique,
            "context": g.context,
            "study": s.study,
            "n_final": n_run,
            "n_diverged": n_bad,
        }
        for label, xs in ((f"val_{name}", vals), (f"test_{test_name}", tests)):
            xs = [x for x in xs if x == x]
            lo, hi = _interval(xs)
            row[label] = float(np.mean(xs)) if xs else math.nan
            row[f"{label}_ci_low"], row[f"{label}_ci_high"] = lo, hi
        row["note"] = "all search trials diverged: defaults" if s.all_diverged else ""
        summary.append(row)
    return pd.DataFrame(trials), pd.DataFrame(summary)


def _with_answer_scores(
    finals: pd.DataFrame, final_trials: pd.DataFrame, runs: pd.DataFrame
) -> pd.DataFrame:
    """``finals`` with the Answer's statistic beside its means, in the Answer's order.

    The Answer ranks each selected setting by the IQM of its finals' scores, a diverged final
    at the worst value (:func:`.tables.summarize`); the means above leave diverged finals out.
    Ranking this table by the same statistic over the same runs makes it agree with the Answer
    by construction instead of by luck (the two orders differed whenever a trimmed mean and a
    mean disagreed).
    """
    keys = ["technique", "context", "study"]
    if finals.empty or final_trials.empty:
        return finals
    ids = final_trials[[*keys, "trial_id"]].astype({"trial_id": str})
    scored = runs.assign(trial_id=runs["trial_id"].astype(str)).drop(
        columns=[k for k in keys if k in runs.columns]
    )
    scored = scored.merge(ids, on="trial_id", how="inner")
    if scored.empty:
        return finals
    cols = ["score_iqm", "score_ci_low", "score_ci_high", "higher_is_better"]
    answer = summarize(scored, keys)[[*keys, *cols]]
    out = finals.merge(answer, on=keys, how="left")
    higher = bool(answer["higher_is_better"].all())
    out = out.sort_values(["context", "score_iqm"], ascending=[True, not higher], kind="stable")
    return out.drop(columns="higher_is_better").reset_index(drop=True)


def _selection_table(plan: TunePlan, selection: list[Selection]) -> pd.DataFrame:
    by_id = {g.id: g for g in plan.groups}
    rows = []
    for s in selection:
        g = by_id[s.group]
        rows.append(
            {
                "technique": g.technique,
                "context": g.context,
                "study": s.study,
                "selected": ", ".join(f"{k}={v!r}" for k, v in s.point.items()) or "(nothing)",
                "at_edge": ", ".join(f"{k} {e}" for k, e in s.edges.items()),
                f"search_{plan.spec.metric}": s.score,
                "points": s.n_points,
                "diverged_points": s.n_bad,
                "all_diverged": s.all_diverged,
                **{f"value:{k}": v for k, v in s.point.items()},
            }
        )
    return pd.DataFrame(rows)


def _expected_max_table(points: pd.DataFrame, plan: TunePlan) -> pd.DataFrame:
    sign = 1.0 if plan.spec.mode == "max" else -1.0
    rows = []
    for (context, technique), part in points.groupby(["context", "technique"], sort=False):
        scores = (sign * part["score_filled"]).dropna().tolist()
        if not scores:
            continue
        for r in expmax.curves(scores):
            for k in ("dodge_mean", "tang_mean"):
                r[k] *= sign
            rows.append({"context": context, "technique": technique, **r})
    return pd.DataFrame(rows)


def _expected_max_figure(table: pd.DataFrame, plan: TunePlan) -> bytes | None:
    if table.empty:
        return None
    from .figures import figure_png, panel_grid, short_label

    contexts = list(dict.fromkeys(table["context"]))[:MAX_PANELS]
    fig, axs = panel_grid(1, len(contexts), w=4.4, h=3.2)
    for ax, context in zip(axs[0], contexts, strict=False):
        part = table[table["context"] == context]
        for tech, t in part.groupby("technique", sort=False):
            color = technique_color(str(tech))
            ax.plot(t["n"], t["dodge_mean"], color=color, label=short_label(str(tech)))
            ax.fill_between(
                t["n"],
                t["dodge_mean"] - t["dodge_std"],
                t["dodge_mean"] + t["dodge_std"],
                color=color,
                alpha=0.12,
            )
            ax.plot(t["n"], t["tang_mean"], color=color, linestyle="--", linewidth=0.9)
        ax.set_title(short_label(context or "all", 40))
        ax.set_xlabel("search trials n")
        ax.set_ylabel(f"expected best {plan.spec.metric}")
    _outside_legend(fig)
    return figure_png(fig)


def _outside_legend(fig: Any) -> None:
    """One legend for every panel, beside them at the report's figure font (never over data)."""
    from .figures import FONT

    seen: dict[str, Any] = {}
    for ax in fig.axes:
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            seen.setdefault(label, handle)
    if seen:
        fig.legend(list(seen.values()), list(seen), loc="outside right upper", fontsize=FONT)


def _sensitivity_figure(points: pd.DataFrame, plan: TunePlan) -> bytes | None:
    dims: dict[str, Any] = {}
    for g in plan.groups:
        for d in g.dims:
            dims.setdefault(d.key, d)
    data = points.dropna(subset=["score"])
    if data.empty or not dims:
        return None
    from .figures import figure_png, panel_grid, short_label

    contexts = list(dict.fromkeys(data["context"]))
    panels = [(k, c) for k in dims for c in contexts][:MAX_PANELS]
    ncols = min(4, len(panels))
    nrows = math.ceil(len(panels) / ncols)
    fig, axs = panel_grid(nrows, ncols, w=3.6, h=2.8)
    for ax, (key, context) in zip(axs.ravel(), panels, strict=False):
        d = dims[key]
        part = data[(data["context"] == context) & data[key].notna()]
        for tech, t in part.groupby("technique", sort=False):
            x = t[key].astype(float)
            if d.param.scale == "log1m":
                x = 1.0 - x
            color = technique_color(str(tech))
            # points, not lines: with several searched dimensions the others vary along x
            ax.scatter(x, t["score"], s=12, color=color, label=short_label(str(tech)))
        if d.param.scale in ("log", "log1m"):
            ax.set_xscale("log")
        ax.set_xlabel(f"1 - {key}" if d.param.scale == "log1m" else key)
        ax.set_ylabel(plan.spec.metric)
        ax.set_title(short_label(context or "all", 40))
    for ax in axs.ravel()[len(panels) :]:
        ax.set_visible(False)
    _outside_legend(fig)
    return figure_png(fig)


def tuning(ctx: ReportContext) -> Section:
    """Selected settings, finals with intervals, expected max vs budget, sensitivity."""
    from .context import Section

    tuned = ctx.tuned
    if tuned is None:
        return Section("tuning", "Tuning", [])
    plan, selection, pending = tuned.plan, tuned.selection, tuned.pending
    spec = plan.spec
    search = search_table(plan, tuned)
    points = _point_scores(search, plan)
    chosen = _selection_table(plan, selection)
    final_trials, finals = _final_rows(plan, selection, tuned)
    emax = _expected_max_table(points, plan)
    order = spec.mode != "max"
    val_col = f"val_{metric_series(spec.metric)[1]}"
    if not finals.empty:
        finals = finals.sort_values(["context", val_col], ascending=[True, order])
    finals = _with_answer_scores(finals, final_trials, ctx.runs)
    blocks = [
        html.para(
            f"Each technique was tuned per context: {spec.method} search of {spec.budget} "
            f"points over its search space (ranges and scales declared by the plugins) on "
            f"{len(spec.seeds)} seed(s) per point, {spec.studies} stud{'y' if spec.studies == 1 else 'ies'}; "
            f"the point with the best mean {spec.metric} ({spec.mode}, at the "
            f"{'last' if spec.select == 'final' else 'best'} epoch) was selected on validation "
            f"only, then run on {len(spec.final_seeds)} fresh seeds {list(spec.final_seeds)}."
        ),
    ]
    if pending:
        blocks.append(html.warning(f"{len(pending)} searches are not complete: run again."))
    bad = chosen[chosen["all_diverged"]] if not chosen.empty else chosen
    for _, r in bad.iterrows():
        blocks.append(
            html.warning(
                f"{r['technique']} ({r['context'] or 'all'}): every search trial diverged or "
                "failed; its finals ran at the spec defaults and say nothing about a tuned setting."
            )
        )
    edges = chosen[chosen["at_edge"] != ""] if not chosen.empty else chosen
    if not edges.empty:
        blocks.append(
            html.warning(
                f"{len(edges)} selected settings lie in the outer 10% of a search range "
                "(column at_edge): the optimum may lie outside the range; widen it."
            )
        )
    blocks += [
        html.heading("Selected settings"),
        html.table(chosen, csv_name="tuning_selection.csv"),
        html.heading("Final runs on fresh seeds"),
        html.para(
            "Mean over the final seeds with a 95% percentile bootstrap interval of the mean; "
            "diverged finals are counted in n_diverged and left out of the means. score_iqm "
            "is the Answer's statistic over the same finals (interquartile mean of the scored "
            "metric, a diverged final at the worst value): the rows are in its order, the "
            "Answer's order."
        ),
        html.table(finals, csv_name="tuning_finals.csv"),
        html.heading("Expected best validation score vs search budget"),
        html.para(
            "Solid: E[max of n] with replacement (Dodge et al. 2019) with a one-standard-"
            "deviation band; dashed: without replacement (Tang et al. 2020). "
            + FLOOR_TEXT
            + " A ranking that flips along n depends on the tuning budget."
        ),
        html.image(_expected_max_figure(emax, plan), "Expected best validation score"),
        html.table(emax, max_rows=60, csv_name="tuning_expected_max.csv"),
        html.heading("Sensitivity"),
        html.image(
            _sensitivity_figure(points, plan),
            f"Validation {spec.metric} (mean over search seeds) vs each searched "
            "hyper-parameter; log axis for log scales, 1 - x for log1m",
        ),
        html.table(search, max_rows=100, csv_name="tuning_search.csv"),
    ]
    csvs = {
        "tuning_selection.csv": chosen,
        "tuning_finals.csv": finals,
        "tuning_final_trials.csv": final_trials,
        "tuning_expected_max.csv": emax,
        "tuning_search.csv": search,
    }
    return Section("tuning", "Tuning", blocks, csvs)
