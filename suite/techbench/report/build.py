"""Assemble the report: load and tabulate once, then run each of :data:`.sections.SECTIONS`
and write its CSVs (:mod:`.parallel`: on both cores for a large store), then the page
(``index.html``, via :func:`techbench.report.htmlpage.write_page`).
"""

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

from . import analyze, atomic, headline, inputs, parallel, scoring, sections, settings, tables
from . import htmlpage as html
from .power import read_min_effect
from .sections import ReportContext

REPORT_LIBS = ("techbench", "pandas", "scipy", "seaborn", "matplotlib", "scikit-posthocs")


def load_context(
    results_dir: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    out: Path,
    baselines: Sequence[str] = (),
    *,
    score: str | None = None,
    matrix: str | None = None,
    wall_clock: bool = False,
    min_effect: float | None = None,
) -> ReportContext | None:
    """Load the store(s) and derive every shared table; ``None`` when there are no trials.

    ``score`` overrides the matrix's score rule (:mod:`.scoring`); ``matrix`` picks one matrix
    of a mixed store (:mod:`.inputs`); ``wall_clock`` adds profiles on raw wall-clock seconds.
    """
    dirs = [results_dir] if isinstance(results_dir, str | os.PathLike) else list(results_dir)
    trials, metrics, info = inputs.load_stores(dirs, matrix)
    trials, metrics, tuned = inputs.finals_only(trials, metrics, dirs)
    if trials.empty and tuned is not None:
        raise analyze.ReportInputError(
            f"{dirs[0]} is a tuned store with {tuned.n_search} search trials and no finals of "
            "the selected settings yet (a tuned report ranks finals only): run the matrix again"
        )
    if trials.empty:
        return None
    try:
        rule = scoring.score_rule(info, score)
    except ValueError as exc:
        raise analyze.ReportInputError(str(exc)) from exc
    trials["stop_reason"] = inputs.stop_reasons(trials)
    axes = tables.varying_axes(trials)
    curves = tables.target_curves(trials, metrics)
    runs = tables.run_table(trials, metrics, curves, score=rule, axes=axes)
    cells, techs, flags = parallel.fork_map(
        lambda table: table(),
        [
            lambda: tables.cell_table(runs),
            lambda: tables.technique_table(runs, axes),
            lambda: analyze.best_flags(runs),
        ],
        len(runs),
    )
    if not flags.empty:
        cells = cells.merge(
            flags[["dataset", "config", "indistinguishable", "tested", "p_holm"]],
            on=["dataset", "config"],
            how="left",
        )
    higher = bool((runs["target_mode"] != "min").all())
    views = {a: settings.axis_view(runs, a, axes, higher) for a in axes}
    head, board = headline.headline_tables(views, higher)
    measures = {"steps": "steps_to_target"}
    if np.isfinite(runs["modelled_seconds_to_target"]).any():
        measures["modelled seconds"] = "modelled_seconds_to_target"
    if wall_clock or "modelled seconds" not in measures:
        measures["wall-clock seconds"] = "seconds_to_target"
    tech_runs = {a: v.runs.assign(**{a: v.runs["_tech"]}) for a, v in views.items()}
    return ReportContext(
        results_dir=dirs[0],
        out=out,
        baselines=tuple(baselines),
        trials=trials,
        metrics=metrics,
        matrix=info,
        axes=axes,
        curves=curves,
        runs=runs,
        cells=cells,
        techs=techs,
        flags=flags,
        fried=[f for a, r in tech_runs.items() for f in analyze.friedman_by_axis(r, [a])],
        profiles={m: analyze.profiles(views, col) for m, col in measures.items()},
        poi=analyze.improvement_table(runs, axes, baselines) if baselines else pd.DataFrame(),
        few=analyze.few_seed_cells(cells),
        score_rule=rule,
        views=views,
        headline=head,
        leaderboard=board,
        summary=headline.summary(board, higher),
        confounded=settings.confounded_cells(runs, axes),
        stores=tuple(os.fspath(d) for d in dirs),
        wall_clock=wall_clock,
        tuned=tuned,
        min_effect=read_min_effect(info, min_effect),
    )


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
    plugins = sorted(
        {
            p
            for blob in trials.get("plugins", pd.Series(dtype=object)).dropna()
            for p in json.loads(blob)
        }
    )
    if plugins:
        out.append(("plugins (not built in)", ", ".join(plugins)))
    mine = []
    for lib in REPORT_LIBS:
        with contextlib.suppress(metadata.PackageNotFoundError):
            mine.append(f"{lib} {metadata.version(lib)}")
    out.append(("report built with", ", ".join(mine) + f", python {platform.python_version()}"))
    return out


def _fingerprints(trials: pd.DataFrame) -> list[tuple[str, object]]:
    """Per dataset with a data fingerprint: its hash, or a warning when runs trained on
    different data under the same name (e.g. ``pysource`` from two Python versions)."""
    if "data_fingerprint" not in trials:
        return []
    out: list[tuple[str, object]] = []
    known = trials.dropna(subset=["data_fingerprint"])
    for dataset, group in known.groupby(known["dataset"].astype(str)):
        hashes = sorted(group["data_fingerprint"].astype(str).unique())
        if len(hashes) == 1:
            out.append((f"data {dataset}", f"sha256 {hashes[0][:16]}"))
        else:
            text = ", ".join(
                f"{h[:12]} ({(group['data_fingerprint'] == h).sum()} runs)" for h in hashes
            )
            out.append(
                (f"data {dataset}", f"WARNING: MIXED DATA, {len(hashes)} fingerprints: {text}")
            )
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


def _probe_cost(trials: pd.DataFrame) -> str:
    """The curvature probe's cost (``curvature_overhead`` over ``curvature_probes``), "" when
    no run probed."""
    if "curvature_overhead" not in trials or "curvature_probes" not in trials:
        return ""
    sec = pd.to_numeric(trials["curvature_overhead"], errors="coerce")
    count = pd.to_numeric(trials["curvature_probes"], errors="coerce")
    train = pd.to_numeric(trials.get("train_seconds"), errors="coerce")
    ok = sec.notna() & (count > 0)
    if not ok.any():
        return ""
    per = (sec / count)[ok].median()
    text = (
        f"median {sec[ok].median():.3g} s per run over {count[ok].median():.0f} probes "
        f"({1000 * per:.3g} ms per probe; a stack's probe serves all its members)"
    )
    with np.errstate(divide="ignore", invalid="ignore"):
        share = (sec / train)[ok & (train > 0)]
    if not share.empty:
        text += f", median {share.median():.1%} of training time"
    return text


def _targets(trials: pd.DataFrame) -> set[str]:
    cols = ["target_metric", "target_mode", "target_value"]
    return {f"{m} ({mode}) reaches {v}" for m, mode, v in trials[cols].drop_duplicates().values}


def _axis_text(ctx: ReportContext, axis: str) -> str:
    view = ctx.views.get(axis)
    n_settings = ctx.runs[axis].astype(str).nunique()
    if view is None or not view.by_name:
        return f"{axis}: {n_settings} settings"
    n_names = view.runs["_tech"].nunique()
    extra = f" ({n_settings} settings)" if n_settings > n_names else ""
    return f"{axis}: {n_names} techniques{extra}"


def _header(ctx: ReportContext, seconds: float) -> str:
    trials, matrix = ctx.trials, ctx.matrix
    stored = ctx.tuned.trials if ctx.tuned else trials  # search trials are stored, not ranked
    status = stored["status"].value_counts().to_dict()
    items: list[tuple[str, object]] = [
        ("matrix", matrix.get("name") or ", ".join(sorted(trials["matrix"].dropna().unique()))),
        ("scored", f"{ctx.score_rule}: {scoring.describe(ctx.score_rule)}"),
        ("trials", f"{len(stored)} stored ({', '.join(f'{v} {k}' for k, v in status.items())})"),
        *_corrupt_item(trials),
        *([("tuned", ctx.tuned.describe())] if ctx.tuned else []),
        *_duplicates_item(trials),
        ("datasets", ", ".join(sorted(trials["dataset"].astype(str).unique()))),
        ("compared axes", "; ".join(_axis_text(ctx, a) for a in ctx.axes) or "none"),
        ("seeds", ", ".join(map(str, sorted(trials["seed"].unique())))),
        ("stopped by", inputs.stop_summary(ctx.runs)),
        ("target", ", ".join(sorted(_targets(trials)))),
    ]
    more: list[tuple[str, object]] = []
    for key in ("description", "axes", "defaults", "budget"):
        if matrix.get(key):
            value = matrix[key]
            text = value if isinstance(value, str) else json.dumps(value)
            (items if key == "description" else more).append((f"matrix {key}", text[:600]))
    if len(ctx.stores) > 1:
        per = trials.groupby("store")["matrix"].agg(lambda m: ", ".join(sorted(set(map(str, m)))))
        items.insert(1, ("stores", "; ".join(f"{k} (matrix {v})" for k, v in per.items())))
    devices = trials["device"].dropna().astype(str).value_counts()
    more.append(("hardware", ", ".join(f"{d} ({n} runs)" for d, n in devices.items()) or "?"))
    more += _versions(trials)
    for item in _fingerprints(trials):  # mixed data is shown up front, a single hash with the rest
        (items if "MIXED" in str(item[1]) else more).append(item)
    more.append(("instrumentation overhead", _overhead(trials)))
    probe = _probe_cost(trials)
    if probe:
        more.append(("curvature probe", probe))
    more.append(("report host", f"{platform.platform()}, built in {seconds:.1f} s"))
    details = "<details><summary>matrix, hardware, versions</summary>"
    return html.meta_list(items) + details + html.meta_list(more) + "</details>"


def _corrupt_item(trials: pd.DataFrame) -> list[tuple[str, object]]:
    bad = trials.attrs.get("corrupt") or {}
    text = "; ".join(f"{t} ({why})" for t, why in list(bad.items())[:20])
    more = f"; and {len(bad) - 20} more" if len(bad) > 20 else ""
    return [("corrupt, not scored", f"{len(bad)}: {text}{more}")] if bad else []


def _duplicates_item(trials: pd.DataFrame) -> list[tuple[str, object]]:
    dropped = trials.attrs.get("duplicates") or {}
    text = "; ".join(f"from {store}: {what}" for store, what in dropped.items())
    return [("duplicate trials, counted once", text)] if dropped else []


def _empty_report(out: Path, results_dir: object) -> Path:
    return html.write_page(
        out / "index.html",
        "techbench report",
        html.meta_list([("results", str(results_dir))]),
        [("empty", "No trials", [html.warning("The store holds no trials yet.")])],
    )


def build(
    results_dir: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    out_dir: str | os.PathLike[str],
    baselines: Sequence[str] = (),
    *,
    score: str | None = None,
    matrix: str | None = None,
    wall_clock: bool = False,
    min_effect: float | None = None,
) -> Path:
    """Write ``out_dir/index.html`` and each section's CSVs; returns the page's path.

    Everything is written into a fresh sibling folder first; :func:`.atomic.publish` then swaps
    it in, so a failed or killed build leaves the previous report (or none), never a mix.
    """
    start = time.perf_counter()
    out = Path(out_dir)
    with atomic.staging(out) as stage:
        ctx = load_context(
            results_dir, out, baselines, score=score, matrix=matrix, wall_clock=wall_clock,
            min_effect=min_effect,
        )  # fmt: skip
        if ctx is None:
            _empty_report(stage, results_dir)
        else:
            _write(ctx, stage, start)
    return out / "index.html"


def _write(ctx: ReportContext, stage: Path, start: float) -> None:
    page: list[html.PageSection] = []
    written: set[str] = set()
    makers = list(sections.SECTIONS)
    for make, (anchor, heading, blocks, csvs) in zip(
        makers, parallel.render_sections(makers, ctx, stage), strict=True
    ):
        for name in csvs:
            if name in written:
                raise RuntimeError(f"report sections write {name} twice ({make.__name__})")
            written.add(name)
        if blocks:
            page.append((anchor, heading, blocks))
    header = _header(ctx, time.perf_counter() - start)
    title = f"techbench report: {ctx.matrix.get('name') or ctx.out.name}"
    html.write_page(stage / "index.html", title, header, page)
