"""Assemble the report: load and tabulate once, then run each of :data:`.sections.SECTIONS`
and write its CSVs, then the page (``index.html``, via :func:`techbench.htmlpage.write_page`).
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

from .. import htmlpage as html
from . import analyze, sections, tables
from .load import load_matrix, load_store
from .sections import ReportContext

REPORT_LIBS = ("techbench", "pandas", "scipy", "seaborn", "matplotlib", "scikit-posthocs")


def load_context(
    results_dir: str | os.PathLike[str], out: Path, baselines: Sequence[str] = ()
) -> ReportContext | None:
    """Load the store and derive every shared table; ``None`` when the store has no trials."""
    trials, metrics = load_store(results_dir)
    if trials.empty:
        return None
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
    return ReportContext(
        results_dir=results_dir,
        out=out,
        baselines=tuple(baselines),
        trials=trials,
        metrics=metrics,
        matrix=matrix,
        axes=axes,
        curves=curves,
        runs=runs,
        cells=cells,
        techs=techs,
        flags=flags,
        fried=analyze.friedman_by_axis(runs, axes),
        prof_seconds=analyze.profiles(runs, axes, "seconds_to_target"),
        prof_steps=analyze.profiles(runs, axes, "steps_to_target"),
        poi=analyze.improvement_table(runs, axes, baselines) if baselines else pd.DataFrame(),
        few=analyze.few_seed_cells(cells),
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


def _targets(trials: pd.DataFrame) -> set[str]:
    cols = ["target_metric", "target_mode", "target_value"]
    return {f"{m} ({mode}) reaches {v}" for m, mode, v in trials[cols].drop_duplicates().values}


def _header(ctx: ReportContext, seconds: float) -> str:
    trials, matrix = ctx.trials, ctx.matrix
    status = trials["status"].value_counts().to_dict()
    items: list[tuple[str, object]] = [
        ("matrix", matrix.get("name") or ", ".join(sorted(trials["matrix"].dropna().unique()))),
        ("trials", f"{len(trials)} stored ({', '.join(f'{v} {k}' for k, v in status.items())})"),
        *_corrupt_item(trials),
        ("datasets", ", ".join(sorted(trials["dataset"].astype(str).unique()))),
        ("compared axes", "; ".join(f"{a}: {trials[a].astype(str).nunique()}" for a in ctx.axes)),
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


def _corrupt_item(trials: pd.DataFrame) -> list[tuple[str, object]]:
    bad = trials.attrs.get("corrupt") or {}
    text = "; ".join(f"{t} ({why})" for t, why in list(bad.items())[:20])
    more = f"; and {len(bad) - 20} more" if len(bad) > 20 else ""
    return [("corrupt, not scored", f"{len(bad)}: {text}{more}")] if bad else []


def _empty_report(out: Path, results_dir: str | os.PathLike[str]) -> Path:
    return html.write_page(
        out / "index.html",
        "techbench report",
        html.meta_list([("results", str(results_dir))]),
        [("empty", "No trials", [html.warning("The store holds no trials yet.")])],
    )


def build(
    results_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    baselines: Sequence[str] = (),
) -> Path:
    """Write ``out_dir/index.html`` and each section's CSVs; returns the page's path."""
    start = time.perf_counter()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ctx = load_context(results_dir, out, baselines)
    if ctx is None:
        return _empty_report(out, results_dir)
    page: list[html.PageSection] = []
    written: set[str] = set()
    for make in sections.SECTIONS:
        section = make(ctx)
        for name, df in section.csvs.items():
            if name in written:
                raise RuntimeError(f"report sections write {name} twice ({make.__name__})")
            written.add(name)
            df.to_csv(out / name, index=False)
        if section.blocks:
            page.append((section.anchor, section.heading, section.blocks))
    header = _header(ctx, time.perf_counter() - start)
    title = f"techbench report: {ctx.matrix.get('name') or out.name}"
    return html.write_page(out / "index.html", title, header, page)
