"""Assemble the report: load, tabulate, test, draw, write CSVs and ``index.html``."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import time
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path

import numpy as np
import pandas as pd

from . import analyze, figures, html, tables
from .load import load_matrix, load_store
from .stats import MIN_SEEDS

REPORT_LIBS = ("techbench", "pandas", "scipy", "seaborn", "matplotlib", "scikit-posthocs")


def _load(results_dir: str | os.PathLike[str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    return load_store(results_dir)


def _versions(trials: pd.DataFrame) -> list[tuple[str, object]]:
    out: list[tuple[str, object]] = []
    seen = sorted({v for v in trials.get("versions", pd.Series(dtype=object)).dropna()})
    for blob in seen[:3]:
        try:
            d = json.loads(blob)
        except ValueError:
            continue
        out.append(("runs used", ", ".join(f"{k} {v}" for k, v in sorted(d.items()))))
    if len(seen) > 3:
        out.append(("runs used", f"... and {len(seen) - 3} more version sets"))
    mine = []
    for lib in REPORT_LIBS:
        with contextlib.suppress(metadata.PackageNotFoundError):
            mine.append(f"{lib} {metadata.version(lib)}")
    out.append(("report built with", ", ".join(mine) + f", python {platform.python_version()}"))
    return out


def _overhead(trials: pd.DataFrame) -> str:
    if "health_overhead" not in trials:
        return "not measured"
    sec = pd.to_numeric(trials["health_overhead"], errors="coerce")
    train = pd.to_numeric(trials.get("train_seconds"), errors="coerce")
    ok = sec.notna()
    if not ok.any():
        return "not measured"
    text = f"median {sec[ok].median():.3g} s per run in health hooks ({int(ok.sum())} runs)"
    with np.errstate(divide="ignore", invalid="ignore"):
        share = (sec / train)[ok & (train > 0)]
    if not share.empty:
        text += f", median {share.median():.1%} of training time"
    return text


def _header(trials: pd.DataFrame, matrix: dict, axes: list[str], seconds: float) -> str:
    status = trials["status"].value_counts().to_dict()
    items: list[tuple[str, object]] = [
        ("matrix", matrix.get("name") or ", ".join(sorted(trials["matrix"].dropna().unique()))),
        ("trials", f"{len(trials)} stored ({', '.join(f'{v} {k}' for k, v in status.items())})"),
        ("datasets", ", ".join(sorted(trials["dataset"].astype(str).unique()))),
        ("compared axes", "; ".join(f"{a}: {trials[a].astype(str).nunique()}" for a in axes)),
        ("seeds", ", ".join(map(str, sorted(trials["seed"].unique())))),
        ("target", ", ".join(sorted(_targets(trials)))),
    ]
    for key in ("description", "axes", "defaults", "budget"):
        if matrix.get(key):
            value = matrix[key]
            text = value if isinstance(value, str) else json.dumps(value)
            items.append((f"matrix {key}", text[:600]))
    devices = trials["device"].dropna().astype(str).value_counts()
    items.append(("hardware", ", ".join(f"{d} ({n} runs)" for d, n in devices.items()) or "?"))
    items += _versions(trials)
    items.append(("instrumentation overhead", _overhead(trials)))
    items.append(("report host", f"{platform.platform()}, built in {seconds:.1f} s"))
    return html.meta_list(items)


def _targets(trials: pd.DataFrame) -> set[str]:
    cols = ["target_metric", "target_mode", "target_value"]
    return {f"{m} ({mode}) reaches {v}" for m, mode, v in trials[cols].drop_duplicates().values}


def _empty_report(out: Path, results_dir: str | os.PathLike[str]) -> Path:
    page = html.page(
        "techbench report",
        html.meta_list([("results", str(results_dir))]),
        [("empty", "No trials", [html.warning("The store holds no trials yet.")])],
    )
    path = out / "index.html"
    path.write_text(page, encoding="utf-8")
    return path


def build(
    results_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    baselines: Sequence[str] = (),
) -> Path:
    start = time.perf_counter()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    trials, metrics = _load(results_dir)
    if trials.empty:
        return _empty_report(out, results_dir)
    matrix = load_matrix(results_dir)
    axes = tables.varying_axes(trials)
    curves = tables.target_curves(trials, metrics)
    runs = tables.run_table(trials, metrics, curves)
    cells = tables.cell_table(runs)
    techs = tables.technique_table(runs, axes)
    flags = analyze.best_flags(runs)
    if not flags.empty:
        cells = cells.merge(
            flags[["dataset", "config", "indistinguishable", "tested", "p_holm"]],
            on=["dataset", "config"],
            how="left",
        )
    fried = analyze.friedman_by_axis(runs, axes)
    prof_s = analyze.profiles(runs, axes, "seconds_to_target")
    prof_k = analyze.profiles(runs, axes, "steps_to_target")
    poi = analyze.improvement_table(runs, axes, baselines) if baselines else pd.DataFrame()
    few = analyze.few_seed_cells(cells)

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
    fried_df = pd.DataFrame(fried_rows)
    ranks_df = pd.DataFrame(rank_rows)
    prof_df = pd.DataFrame(
        [
            {"axis": a, "technique": t, "score_seconds": s, "score_steps": prof_k[a][1].get(t)}
            for a, (_, score, _) in prof_s.items()
            for t, s in score.items()
        ]
    )

    csvs = {
        "runs.csv": runs,
        "cells.csv": cells,
        "techniques.csv": techs,
        "best_flags.csv": flags,
        "friedman.csv": fried_df,
        "ranks.csv": ranks_df,
        "profiles.csv": prof_df,
        "improvement.csv": poi,
    }
    for name, df in csvs.items():
        df.to_csv(out / name, index=False)

    higher = bool((runs["target_mode"] != "min").all())
    sections = []
    sections.append(("overview", "Overview", _overview(runs, few, axes)))

    tech_cols = [
        "axis", "technique", "n_runs", "n_seeds", "n_datasets", "n_completed", "n_diverged",
        "n_failed", "score_iqm", "score_ci_low", "score_ci_high", "hit_rate",
        "epochs_to_target", "steps_to_target", "seconds_to_target", "final_metric",
        "best_metric", "auc", "few_seeds",
    ]  # fmt: skip
    conv = [
        html.para(
            "Score = best validation target metric per run (diverged/failed runs get the "
            "worst value). IQM with a 95% bootstrap interval stratified by dataset; "
            "time-to-target is the median over runs (∞ when most runs missed)."
        ),
        html.table(techs[[c for c in tech_cols if c in techs]], csv_name="techniques.csv"),
        html.image(figures.learning_curves(curves, runs, axes), "Learning curves"),
    ]
    sections.append(("convergence", "Convergence", conv))

    prof_blocks = [
        html.para(
            "AlgoPerf-style performance profiles: per workload (a dataset with the other axes "
            "fixed) each technique's median time-to-target divided by the best technique's; "
            "rho(tau) is the fraction of workloads within tau of the best, the score its "
            "normalised integral over tau in [1, 4]. Misses never count as solved."
        ),
        html.image(figures.profile_plot(prof_s), "Performance profiles (seconds to target)"),
        html.table(prof_df, csv_name="profiles.csv"),
    ]
    sections.append(("profiles", "Time-to-target profiles", prof_blocks))

    stat_blocks = [
        html.para(
            "Per dataset, each configuration is tested against the best one (highest IQM) "
            "with a one-sided Mann-Whitney U over seeds, Holm-corrected across "
            "configurations; 'indistinguishable' means the data do not show it is worse ('tested' "
            "is no where either side has fewer than 2 runs)."
        )
    ]
    if not few.empty:
        stat_blocks.append(
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
    order = cells.sort_values(["dataset", "score_iqm"], ascending=[True, not higher])
    stat_blocks.append(
        html.table(order[[c for c in cell_cols if c in cells]], csv_name="cells.csv")
    )
    stat_blocks.append(html.para("Friedman test across datasets (Demsar 2006), per axis:"))
    stat_blocks.append(html.table(fried_df, csv_name="friedman.csv"))
    for fr in fried:
        if fr.ran and fr.result.get("nemenyi") is not None:
            title = (
                f"{fr.axis}: mean rank over {fr.result['n_blocks']} datasets, Friedman "
                f"p = {fr.result['pvalue']:.3g}, Nemenyi CD = {fr.result['cd']:.2f}"
            )
            png = figures.cd_diagram(fr.result["ranks"], fr.result["nemenyi"], title)
            stat_blocks.append(html.image(png, f"Critical-difference diagram: {fr.axis}"))
    if baselines:
        stat_blocks.append(
            html.para(
                "Probability of improvement over the baseline, P(X > B) + P(X = B)/2 over "
                "seeds within each context, averaged over contexts (rliable)."
            )
        )
        stat_blocks.append(html.table(poi, csv_name="improvement.csv"))
    else:
        stat_blocks.append(
            html.para("Probability of improvement: pass --baseline TECHNIQUE.", "note")
        )
    sections.append(("statistics", "Statistics", stat_blocks))

    health_cols = ["axis", "technique", "n_runs", *tables.HEALTH_COLUMNS]
    health = [
        html.table(techs[[c for c in health_cols if c in techs]], csv_name="techniques.csv"),
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
    sections.append(("health", "Gradient health", health))

    gap_cols = ["axis", "technique", "gap_loss_end", "gap_acc_end", "gap_loss_best", "gap_acc_best"]
    gen = [
        html.para("Train minus validation, at the end and at the best-validation epoch."),
        html.table(techs[[c for c in gap_cols if c in techs]], csv_name="techniques.csv"),
        html.image(figures.gap_distributions(runs, axes), "Generalization gap distributions"),
    ]
    sections.append(("generalization", "Generalization gap", gen))
    sections.append(
        (
            "interactions",
            "Interactions",
            [html.image(figures.interactions(runs, axes), "Interaction heatmaps: mean score")],
        )
    )
    run_view = runs.sort_values("score", ascending=not higher).drop(
        columns=["versions", "error"], errors="ignore"
    )
    sections.append(("runs", "Runs", [html.table(run_view, max_rows=200, csv_name="runs.csv")]))

    seconds = time.perf_counter() - start
    header = _header(trials, matrix, axes, seconds)
    page = html.page(f"techbench report: {matrix.get('name') or out.name}", header, sections)
    path = out / "index.html"
    path.write_text(page, encoding="utf-8")
    return path


def _overview(runs: pd.DataFrame, few: pd.DataFrame, axes: list[str]) -> list[str]:
    blocks = []
    counts = runs["status"].value_counts()
    blocks.append(
        html.para(
            f"{len(runs)} runs: "
            + ", ".join(f"{n} {s}" for s, n in counts.items())
            + f". Compared axes: {', '.join(axes) or 'none (a single configuration)'}."
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
        cols = ["trial_id", "status", "dataset", "config", "seed", "diverged_step", "error"]
        view = bad[[c for c in cols if c in bad]].copy()
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
    return blocks
