"""The scaling section's figures (conventions of :mod:`.figures`: palette colours per technique,
legends outside the panels, ``$`` escaped in labels, ``None`` when the data cannot draw one, a
panel without a finite value says so).

- :func:`size_figure`: median score against parameters and against compute, log-log, a 95 %
  bootstrap band per technique, the shared-exponent fit dashed;
- :func:`lr_figure`: loss against lr, one panel per technique, one line per rung (darker =
  larger), the best lr of each rung starred;
- :func:`transfer_figure`: the best lr against width, one line per technique (muP paper fig. 1).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.figure import Figure
from matplotlib.ticker import FixedLocator, FuncFormatter, LogLocator, NullFormatter

from ..techniques.palette import technique_color
from .figures import MAX_DATASETS, _legend_right, _no_data, panel_grid, short_label
from .scaling_fit import SharedFit

X_LABELS = {"num_parameters": "parameters N", "compute": "training FLOPs C"}
MAX_PANELS = 12


def _tidy_log(ax: Any, ticks: Sequence[float] = (), y: bool = False) -> None:
    """Log axes without overlapping minor labels: ``ticks`` (at most 8) labelled as numbers on
    x; a y axis labelled as plain numbers, at its minor ticks when it spans under 3x, else at
    1, 2 and 5 times the powers of ten."""
    plain = FuncFormatter(lambda v, _: f"{v:.3g}")
    ax.xaxis.set_minor_formatter(NullFormatter())
    values = sorted({float(t) for t in ticks if np.isfinite(t)})
    if 1 < len(values) <= 8:
        ax.xaxis.set_major_locator(FixedLocator(values))
        ax.xaxis.set_major_formatter(plain)
        if max(len(f"{v:.3g}") for v in values) > 4:
            ax.tick_params(axis="x", labelrotation=30)
    if y:
        lo, hi = ax.get_ylim()
        if lo > 0 and hi / lo < 3:
            ax.yaxis.set_minor_formatter(plain)
        else:
            ax.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
            ax.yaxis.set_minor_formatter(NullFormatter())
        ax.yaxis.set_major_formatter(plain)


def _finite(s: pd.Series) -> np.ndarray:
    v = s.to_numpy(float)
    return np.where(np.isfinite(v), v, np.nan)


def size_figure(
    points: pd.DataFrame,
    fits: Mapping[tuple[str, str], SharedFit],
    order: Sequence[str],
    score: str = "final score",
) -> Figure | None:
    """Rows: datasets; columns: parameters, compute (where recorded)."""
    xs = [x for x in X_LABELS if np.isfinite(points[x].to_numpy(float)).any()]
    datasets = sorted(points["dataset"].unique())[:MAX_DATASETS]
    if not xs or not datasets:
        return None
    fig, axs = panel_grid(len(datasets), len(xs), w=4.2, h=3.2, legend_w=1.8)
    for i, dataset in enumerate(datasets):
        d = points[points["dataset"] == dataset]
        for j, x in enumerate(xs):
            ax = axs[i, j]
            ax.set_title(short_label(str(dataset), 40))
            if not np.isfinite(d["median"].to_numpy(float)).any():
                _no_data(ax)
                continue
            for tech in [t for t in order if t in set(d["technique"])]:
                p = d[d["technique"] == tech].sort_values(x)
                color = technique_color(tech)
                xv = p[x].to_numpy(float)
                ax.plot(xv, _finite(p["median"]), "o-", color=color, label=short_label(tech))
                ax.fill_between(xv, _finite(p["ci_low"]), _finite(p["ci_high"]), color=color,
                                alpha=0.15)  # fmt: skip
                fit = fits.get((str(dataset), x))
                if fit is not None and tech in fit.a and np.isfinite(xv).any():
                    grid = np.geomspace(np.nanmin(xv), np.nanmax(xv), 50)
                    ax.plot(grid, fit.predict(tech, grid), "--", color=color, linewidth=1)
            ax.set_xscale("log")
            ax.set_yscale("log")
            _tidy_log(ax, y=True)
            ax.set_xlabel(X_LABELS[x])
            ax.set_ylabel(short_label(f"{score} (median)", 40))
        _legend_right(axs[i, -1], list(axs[i]))
    return fig


def lr_figure(
    curves: pd.DataFrame, best: pd.DataFrame, order: Sequence[str], score: str = "final score"
) -> Figure | None:
    """Loss against lr per (dataset, technique) with at least one swept rung."""
    swept = best[best["swept"]]
    panels = [
        (d, t)
        for d in sorted(swept["dataset"].unique())
        for t in order
        if ((swept["dataset"] == d) & (swept["technique"] == t)).any()
    ][:MAX_PANELS]
    if not panels:
        return None
    ncols = min(3, len(panels))
    nrows = -(-len(panels) // ncols)
    fig, axs = panel_grid(nrows, ncols, w=3.8, h=3.0, legend_w=1.2)
    rungs = sorted(curves["rung"].unique())
    cmap = colormaps["viridis"]
    shade = {r: cmap(0.85 - 0.75 * k / max(1, len(rungs) - 1)) for k, r in enumerate(rungs)}
    for ax, (dataset, tech) in zip(axs.ravel(), panels, strict=False):
        c = curves[(curves["dataset"] == dataset) & (curves["technique"] == tech)]
        for rung, g in c.groupby("rung", sort=True):
            if len(g) < 2:
                continue
            g = g.sort_values("lr")
            width = g["width_mult"].iat[0]
            label = f"rung {rung}" + (f" ({width:g}x)" if np.isfinite(width) else "")
            ax.plot(g["lr"], _finite(g["median"]), "o-", color=shade[rung], label=label, ms=3)
            top = g.loc[g["median"].idxmin()]
            if np.isfinite(top["median"]):
                ax.plot([top["lr"]], [top["median"]], "*", color=shade[rung], ms=11)
        ax.set_xscale("log")
        _tidy_log(ax, c["lr"].unique())
        ax.set_xlabel("learning rate")
        ax.set_ylabel(short_label(f"{score} (median)", 40))
        ax.set_title(short_label(f"{tech} ({dataset})", 40))
    for ax in axs.ravel()[len(panels) :]:
        ax.set_visible(False)
    _legend_right(axs[0, -1], list(axs.ravel()))
    return fig


def transfer_figure(best: pd.DataFrame, order: Sequence[str]) -> Figure | None:
    """Best lr against width multiplier (parameters when no width is recorded), log-log."""
    swept = best[best["swept"]]
    datasets = sorted(swept["dataset"].unique())[:MAX_DATASETS]
    if not datasets:
        return None
    fig, axs = panel_grid(1, len(datasets), w=4.2, h=3.2, legend_w=1.8)
    for ax, dataset in zip(axs[0], datasets, strict=True):
        d = swept[swept["dataset"] == dataset]
        ax.set_title(short_label(str(dataset), 40))
        if not np.isfinite(d["best_lr"].to_numpy(float)).any():
            _no_data(ax)
            continue
        x = "width_mult" if np.isfinite(d["width_mult"].to_numpy(float)).all() else "num_parameters"
        for tech in [t for t in order if t in set(d["technique"])]:
            g = d[d["technique"] == tech].sort_values("rung")
            color = technique_color(tech)
            ax.plot(g[x], g["best_lr"], "o-", color=color, label=short_label(tech))
            edge = g[g["at_edge"]]
            ax.plot(edge[x], edge["best_lr"], "o", mfc="white", color=color, ms=8)
        ax.set_xscale("log")
        ax.set_yscale("log")
        _tidy_log(ax, d[x].unique(), y=True)
        ax.set_xlabel("width multiplier" if x == "width_mult" else "parameters N")
        ax.set_ylabel("best learning rate")
    _legend_right(axs[0, -1], list(axs[0]))
    return fig
