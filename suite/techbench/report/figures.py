"""Seaborn figures, each returned as a matplotlib Figure (``None`` when the data cannot support
it); :func:`figure_png` turns one into the PNG bytes the page embeds.

Work per figure is capped (datasets, axes, techniques per panel, representative runs for
the layer x step heatmaps) so a 10,000-trial store draws as fast as a 50-trial one.

Readable at 100 % zoom: figures are at most :data:`MAX_WIDTH` inches wide at :data:`DPI` (so
the page shows them unscaled in a 1400 px window), text is at least 9 pt, titles wrap instead of
being cut, layer axes have integer ticks, a panel without data says so, and every technique has
its colour of :func:`techbench.techniques.palette.technique_color` in every figure. Compared axes are
shown by technique (each at its selected setting when views are given, :mod:`.settings`).
Legends sit outside the axes, so they never cover data; the panels of a heatmap figure share
one colour scale and one colour bar, so they can be compared.
"""

from __future__ import annotations

import itertools
import math
import textwrap
import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.colors import LogNorm, Normalize
from matplotlib.figure import Figure
from matplotlib.ticker import LogFormatterSciNotation, MaxNLocator
from matplotlib.transforms import ScaledTranslation

from ..techniques.palette import technique_color
from . import htmlpage
from .settings import AxisView, technique_names

MAX_DATASETS = 4
MAX_AXES = 4
MAX_TECHNIQUES = 8
MAX_HEATMAPS = 6
MAX_PAIRS = 4
DPI = 110
MAX_WIDTH = 11.5
FONT = 9.5
NO_DATA = "not enough data for this panel"
LEGEND_DROP = 0.5
"""Inches from an axes' bottom edge to a legend placed below it: clears tick labels and x label."""


def short_label(text: str, n: int = 28) -> str:
    """Shortened, with ``$`` escaped so plugin names never reach matplotlib's mathtext."""
    text = text if len(text) <= n else text[: n - 1] + "…"
    return text.replace("$", r"\$")


def wrap_label(text: str, width: int = 38) -> str:
    """Wrapped onto lines (never cut), ``$`` escaped."""
    return textwrap.fill(str(text), width).replace("$", r"\$")


def _labels(runs: pd.DataFrame, axis: str) -> pd.Series:
    """Technique names when they differ, else the settings (a sweep of one technique)."""
    setting = runs[axis].astype(str)
    names = technique_names(setting)
    return names if names.nunique() > 1 else setting


def _by_technique(
    runs: pd.DataFrame, axis: str, views: Mapping[str, AxisView] | None
) -> pd.DataFrame:
    """The runs of ``axis`` with ``_t``: the selected-setting view when given, else all runs."""
    if views and axis in views:
        v = views[axis].runs
        return v.assign(_t=v["_tech"].astype(str))
    return runs.assign(_t=_labels(runs, axis) if axis in runs else "all")


def _top_techniques(runs: pd.DataFrame, axis: str) -> list[str]:
    higher = bool((runs["target_mode"] != "min").all())
    key = runs["_t"] if "_t" in runs else _labels(runs, axis)
    order = runs.groupby(key)["score"].mean().sort_values(ascending=not higher)
    return list(order.index[:MAX_TECHNIQUES])


@contextmanager
def quiet_figures() -> Iterator[None]:
    """Figure code's own warnings (tight layout, empty slices) stay off the terminal."""
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore", UserWarning)
        warnings.simplefilter("ignore", RuntimeWarning)
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        yield


def panel_grid(nrows: int, ncols: int, w: float = 3.6, h: float = 2.8, legend_w: float = 0.0):
    """Panels of ``w`` x ``h`` inches (shrunk to fit :data:`MAX_WIDTH`), plus ``legend_w``
    inches on the right for a legend outside the panels, so it does not squeeze them."""
    sns.set_theme(style="whitegrid", context="notebook", font_scale=0.9)
    plt.rcParams.update({"legend.fontsize": FONT, "xtick.labelsize": FONT,
                         "ytick.labelsize": FONT, "axes.titlesize": FONT + 0.5})  # fmt: skip
    scale = min(1.0, MAX_WIDTH / (w * ncols))
    fig, axs = plt.subplots(
        nrows, ncols, figsize=(w * ncols * scale + legend_w, h * nrows * max(scale, 0.8)),
        squeeze=False,
        layout="constrained",
    )  # fmt: skip
    return fig, axs


def figure_png(fig: Figure | None) -> bytes | None:
    """The figure at :data:`DPI` (warnings of the layout engine kept quiet); ``None`` stays
    ``None`` (the page then says the data were too few)."""
    if fig is None:
        return None
    with quiet_figures():
        return htmlpage.figure_png(fig, DPI)


def _no_data(ax: plt.Axes) -> None:
    ax.text(0.5, 0.5, NO_DATA, ha="center", va="center", transform=ax.transAxes, fontsize=FONT,
            color="#666")  # fmt: skip
    ax.set_xticks([])
    ax.set_yticks([])


def _entries(axs: Iterable[plt.Axes]) -> tuple[list[Any], list[str]]:
    """The legend entries of ``axs``, one per label (a technique has one colour in every panel)."""
    seen: dict[str, Any] = {}
    for ax in axs:
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            seen.setdefault(label, handle)
    return list(seen.values()), list(seen)


def _legend_right(ax: plt.Axes, panels: Sequence[plt.Axes] = (), **kw: Any) -> None:
    """A legend just right of ``ax``, outside it, with the entries of ``panels`` (default ``ax``)."""
    handles, labels = _entries(list(panels) or [ax])
    if handles:
        ax.legend(handles, labels, loc="upper left", bbox_to_anchor=(1.02, 1.0),
                  borderaxespad=0.0, fontsize=FONT, title_fontsize=FONT, **kw)  # fmt: skip


def _legend_below(ax: plt.Axes, **kw: Any) -> None:
    """A legend under ``ax``, below its tick labels and x label (panels side by side keep their
    width, where legends to their right would squeeze them)."""
    handles, labels = _entries([ax])
    if handles:
        drop = ScaledTranslation(0.0, -LEGEND_DROP, ax.figure.dpi_scale_trans)
        ax.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, 0.0),
                  bbox_transform=ax.transAxes + drop, ncols=2, borderaxespad=0.0,
                  fontsize=FONT, title_fontsize=FONT, **kw)  # fmt: skip


def _shown(axis: str, shown: int, total: int) -> str:
    """A legend title that says when only the best techniques are drawn."""
    return axis if shown >= total else f"{axis}: best {shown} of {total} by score"


def _health_rows(
    metrics: pd.DataFrame, names: Sequence[str], columns: Sequence[str], on_layers: bool
) -> pd.DataFrame:
    """Health rows of ``names`` (per-layer rows, or with ``on_layers`` false all of them) with
    only ``columns``: one mask over the metrics, not copies of every column of 10^7 rows."""
    mask = (metrics["split"] == "health").to_numpy() & metrics["metric"].isin(names).to_numpy()
    if on_layers:
        mask = mask & (metrics["layer"] != "").to_numpy()
    return metrics.loc[mask, list(columns)]


def learning_curves(
    curves: pd.DataFrame,
    runs: pd.DataFrame,
    axes: Sequence[str],
    views: Mapping[str, AxisView] | None = None,
) -> Figure | None:
    """Target metric per epoch: median and interquartile band over runs (seeds and other axes),
    one panel per compared axis (rows) x dataset (columns); markers when there are few epochs."""
    if curves.empty:
        return None
    datasets = sorted(runs["dataset"].astype(str).unique())[:MAX_DATASETS]
    rows = list(axes[:MAX_AXES]) or ["config"]
    fig, axs = panel_grid(len(rows), len(datasets), 4.0, 3.0, legend_w=2.6)
    metric = str(runs["target_metric"].iloc[0])
    for i, axis in enumerate(rows):
        tagged = _by_technique(runs, axis, views)
        techs = _top_techniques(tagged, axis)
        shown = tagged[tagged["_t"].isin(techs) & tagged["dataset"].astype(str).isin(datasets)]
        data = curves[["trial_id", "epoch", "curve"]].merge(
            shown[["trial_id", "dataset", "_t"]], on="trial_id"
        )
        data["dataset"] = data["dataset"].astype(str)
        band = pd.DataFrame()
        if not data.empty:  # one grouped pass: median and IQR per (dataset, technique, epoch)
            keys = ["dataset", "_t", "epoch"]
            band = data.groupby(keys)["curve"].quantile([0.25, 0.5, 0.75]).unstack()
        have = set(band.index.droplevel("epoch")) if not band.empty else set()
        for j, ds in enumerate(datasets):
            ax = axs[i][j]
            drawn = False
            for tech in techs:
                if (ds, tech) not in have:
                    continue
                q = band.loc[(ds, tech)]
                x = q.index.to_numpy() + 1
                color = technique_color(tech)
                marker = "o" if len(x) <= 3 else None
                ax.plot(x, q[0.5], color=color, label=short_label(tech), lw=1.5, marker=marker)
                ax.fill_between(x, q[0.25], q[0.75], color=color, alpha=0.2, lw=0)
                drawn = True
            ax.set_title(wrap_label(f"{ds} · {axis}", 40))
            if not drawn:
                _no_data(ax)
                continue
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.set_xlabel("epoch")
            ax.set_ylabel(metric if j == 0 else "")
        title = _shown(axis, len(techs), tagged["_t"].nunique())
        _legend_right(axs[i][-1], axs[i], title=title)
    fig.suptitle("Learning curves: median and IQR band over runs")
    return fig


def profile_plot(
    profiles: Mapping[str, tuple[pd.DataFrame, pd.Series, int]], measure: str = "steps"
) -> Figure | None:
    """Performance profiles rho(tau) on time-to-target, one panel per compared axis."""
    items = [(a, p) for a, p in profiles.items() if p[2] > 0][:MAX_AXES]
    if not items:
        return None
    fig, axs = panel_grid(1, len(items), 4.2, 3.2)
    for ax, (axis, (rho, score, n)) in zip(axs[0], items, strict=False):
        best = score.sort_values(ascending=False).index[:MAX_TECHNIQUES]
        for tech in best:
            ax.step(
                rho.index, rho[tech], where="post", color=technique_color(str(tech)),
                label=f"{short_label(str(tech))} ({score[tech]:.2f})",
            )  # fmt: skip
        ax.set_xlim(1, float(rho.index.max()))
        ax.set_ylim(-0.02, 1.02)
        ax.set_title(wrap_label(f"{axis} ({n} workloads)"))
        ax.set_xlabel(f"tau ({measure} / best)")
        ax.set_ylabel("fraction of workloads")
        _legend_below(ax, title=_shown("technique (score)", len(best), len(score)))
    return fig


def health_heatmaps(
    metrics: pd.DataFrame, runs: pd.DataFrame, axes: Sequence[str]
) -> Figure | None:
    """Gradient norm, layer x step, for a bounded set of representative runs (the lowest seed of
    each technique of the first compared axis on the first dataset): one logarithmic colour
    scale over every panel (norms span decades across layers and techniques) and one colour bar."""
    h = _health_rows(metrics, ["grad_norm"], ["trial_id", "step", "layer", "value"], True)
    if h.empty:
        return None
    ok = runs[runs["trial_id"].isin(set(h["trial_id"].unique()))]
    if ok.empty:
        return None
    first_ds = sorted(ok["dataset"].astype(str).unique())[0]
    ok = ok[ok["dataset"].astype(str) == first_ds].sort_values("seed")
    key = axes[0] if axes else "config"
    reps = ok.groupby(ok[key].astype(str), sort=True).head(1).head(MAX_HEATMAPS)
    h = h[h["trial_id"].isin(set(reps["trial_id"]))]
    h = h.assign(trial_id=h["trial_id"].astype(str))
    grids = [
        _layer_grid(h[h["trial_id"] == tid].pivot_table(
            index="layer", columns="step", values="value", observed=True))
        for tid in reps["trial_id"].astype(str)
    ]  # fmt: skip
    values = np.concatenate([g.to_numpy(float).ravel() for g in grids])
    values = values[np.isfinite(values) & (values > 0)]
    lo, hi = (values.min(), values.max()) if values.size else (1e-3, 1.0)
    norm = LogNorm(vmin=lo, vmax=hi if hi > lo else lo * 10)
    titles = [f"{key}={rep[key]} · seed {rep['seed']}" for _, rep in reps.iterrows()]
    fig = _heatmap_panels(grids, titles, norm, "viridis", "gradient norm |g| (log scale)")
    fig.suptitle(f"Gradient norm per layer and step ({first_ds})")
    return fig


def _layer_grid(grid: pd.DataFrame) -> pd.DataFrame:
    """Rows in layer order (numeric layer names as numbers)."""
    return grid.reindex(sorted(grid.index, key=lambda s: int(s) if s.isdigit() else s))


def _heatmap_panels(
    grids: Sequence[pd.DataFrame], titles: Sequence[str], norm: Normalize, cmap: str, label: str
) -> Figure:
    """Layer x step panels, three per row, all drawn with ``norm`` and read on one colour bar."""
    ncols = min(3, len(grids))
    fig, axs = panel_grid(math.ceil(len(grids) / ncols), ncols, 4.0, 2.5)
    for ax in axs.ravel()[len(grids) :]:
        ax.remove()
    shown = list(axs.ravel()[: len(grids)])
    colours = matplotlib.colormaps[cmap].with_extremes(bad="#dddddd")
    for ax, grid, title in zip(shown, grids, titles, strict=True):
        im = ax.imshow(
            grid.to_numpy(float), aspect="auto", cmap=colours, norm=norm,
            interpolation="nearest", extent=(*_span(grid.columns.to_numpy()), len(grid) - 0.5, -0.5),
        )  # fmt: skip
        ax.set_yticks(range(len(grid)), [str(i) for i in grid.index])
        ax.grid(False)
        ax.set_title(wrap_label(title))
        ax.set_xlabel("step")
        ax.set_ylabel("layer")
    bar = fig.colorbar(im, ax=shown, label=label, shrink=0.9, pad=0.02)
    if isinstance(norm, LogNorm):  # label 2x and 5x ticks too: a norm may span under 2 decades
        bar.ax.yaxis.set_minor_formatter(LogFormatterSciNotation(minor_thresholds=(2, 0.5)))
    return fig


def _span(steps: np.ndarray) -> tuple[float, float]:
    """x extent of a step axis (a single snapshot gets a width of one step)."""
    lo, hi = float(steps.min()), float(steps.max())
    return (lo - 0.5, hi + 0.5) if hi <= lo else (lo, hi)


def _per_row(trial_ids: pd.Series, by_trial: pd.Series) -> np.ndarray:
    """``by_trial[trial_id]`` for every row, through the categorical codes when possible."""
    if isinstance(trial_ids.dtype, pd.CategoricalDtype):
        lut = by_trial.reindex(trial_ids.cat.categories.astype(str)).to_numpy(object)
        return lut[trial_ids.cat.codes.to_numpy()]
    return trial_ids.astype(str).map(by_trial).to_numpy(object)


def _technique_of(tagged: pd.DataFrame) -> pd.Series:
    """``_t`` by trial id (string), for :func:`_per_row`."""
    return pd.Series(tagged["_t"].to_numpy(), index=tagged["trial_id"].astype(str).to_numpy())


def _numbers(values: pd.Series) -> pd.Series:
    """``pd.to_numeric(values.astype(str), errors="coerce")``, parsed once per distinct value
    of a categorical (layer names of 10^6 rows)."""
    if not isinstance(values.dtype, pd.CategoricalDtype):
        return pd.to_numeric(values.astype(str), errors="coerce")
    codes = values.cat.codes.to_numpy()
    used, inverse = np.unique(codes, return_inverse=True)
    cats = values.cat.categories
    words = pd.Series([str(cats[c]) if c >= 0 else "nan" for c in used], dtype=object)
    parsed = pd.to_numeric(words, errors="coerce").to_numpy()
    return pd.Series(parsed[inverse], index=values.index)


def fraction_heatmaps(
    metrics: pd.DataFrame, runs: pd.DataFrame, axes: Sequence[str]
) -> Figure | None:
    """Dead and saturated fractions, layer x step, median over runs, for the techniques of
    the first compared axis that record them (at most ``MAX_HEATMAPS`` panels)."""
    names = ["dead_fraction", "saturated_fraction"]
    h = _health_rows(metrics, names, ["trial_id", "step", "metric", "layer", "value"], True)
    if h.empty:
        return None
    axis = axes[0] if axes else "config"
    techs = _top_techniques(runs, axis)
    h = h.assign(
        _t=_per_row(h["trial_id"], pd.Series(_labels(runs, axis).to_numpy(), runs["trial_id"]))
    )
    h = h[h["_t"].isin(techs)].assign(metric=lambda d: d["metric"].astype(str))
    med = h.groupby(["_t", "metric", "layer", "step"], observed=True)["value"].median()
    have = set(zip(med.index.get_level_values(0), med.index.get_level_values(1), strict=True))
    panels = [(t, m) for t in techs for m in names if (t, m) in have][:MAX_HEATMAPS]
    if not panels:
        return None
    grids = [_layer_grid(med.loc[(tech, metric)].unstack("step")) for tech, metric in panels]
    peaks = [float(np.nanmax(g.to_numpy(float))) for g in grids if g.notna().to_numpy().any()]
    top = max([0.05, *peaks])
    titles = [f"{tech} · {metric}" for tech, metric in panels]
    return _heatmap_panels(grids, titles, Normalize(0.0, top), "magma", "fraction of units")


def ratio_curves(
    metrics: pd.DataFrame,
    runs: pd.DataFrame,
    axes: Sequence[str],
    views: Mapping[str, AxisView] | None = None,
) -> Figure | None:
    """First/last layer gradient-norm ratio over steps: median over runs per technique."""
    g = _health_rows(metrics, ["grad_ratio_first_last"], ["trial_id", "step", "value"], False)
    if g.empty:
        return None
    cols = list(axes[:MAX_AXES]) or ["config"]
    fig, axs = panel_grid(1, len(cols), 4.0, 3.0)
    for ax, axis in zip(axs[0], cols, strict=False):
        tagged = _by_technique(runs, axis, views)
        techs = _top_techniques(tagged, axis)
        data = g.assign(_t=_per_row(g["trial_id"], _technique_of(tagged)))
        data = data[data["_t"].isin(techs)]
        medians = data.groupby(["_t", "step"])["value"].median()
        drawn = set(medians.index.get_level_values(0))
        for tech in techs:
            if tech not in drawn:
                continue
            med = medians.loc[tech]
            med = med[med > 0]
            if not med.empty:
                ax.plot(
                    med.index, med.to_numpy(), label=short_label(tech), color=technique_color(tech)
                )
        ax.set_title(wrap_label(axis))
        if not ax.lines:
            _no_data(ax)
            continue
        ax.set_yscale("log")
        ax.axhline(1.0, color="grey", lw=0.8, ls="--")
        ax.set_xlabel("step")
        ax.set_ylabel("|g first| / |g last|")
        _legend_below(ax, title=_shown(axis, len(techs), tagged["_t"].nunique()))
    return fig


def activation_stats(
    metrics: pd.DataFrame,
    runs: pd.DataFrame,
    axes: Sequence[str],
    views: Mapping[str, AxisView] | None = None,
) -> Figure | None:
    """Per-layer activation mean and std at the first and last health snapshot (median over
    runs per technique): the lecture's 10-layer activation-statistics plot."""
    cols = ["trial_id", "step", "metric", "layer", "value"]
    h = _health_rows(metrics, ["act_mean", "act_std"], cols, True)
    if h.empty:
        return None
    steps = h.groupby("trial_id", observed=True)["step"]
    last, first = steps.transform("max"), steps.transform("min")
    keep = (h["step"] == last) | (h["step"] == first)
    is_first = (h["step"] == first)[keep]
    h = h[keep]
    axis = axes[0] if axes else "config"
    tagged = _by_technique(runs, axis, views)
    techs = _top_techniques(tagged, axis)
    h = h.assign(
        _t=_per_row(h["trial_id"], _technique_of(tagged)), when=np.where(is_first, "first", "last")
    )
    data = h[h["_t"].isin(techs)]
    data = data.assign(metric=data["metric"].astype(str), layer=_numbers(data["layer"]))
    med = data.groupby(["_t", "metric", "when", "layer"])["value"].median().reset_index()
    fig, axs = panel_grid(2, 2, 4.6, 2.8)
    for ax, (metric, when) in zip(
        axs.ravel(), itertools.product(["act_mean", "act_std"], ["first", "last"]), strict=True
    ):
        sub = med[(med["metric"] == metric) & (med["when"] == when)]
        for tech in techs:
            t = sub[sub["_t"] == tech].sort_values("layer")
            if not t.empty:
                ax.plot(t["layer"], t["value"], marker="o", color=technique_color(tech),
                        label=short_label(tech))  # fmt: skip
        ax.set_title(wrap_label(f"{metric} ({when} snapshot)"))
        if not ax.lines:
            _no_data(ax)
            continue
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("layer")
    handles, labels = _entries(axs.ravel())
    if handles:
        title = _shown(axis, len(techs), tagged["_t"].nunique())
        fig.legend(handles, labels, loc="outside right upper", title=title, fontsize=FONT,
                   title_fontsize=FONT)  # fmt: skip
    return fig


def gap_distributions(
    runs: pd.DataFrame, axes: Sequence[str], views: Mapping[str, AxisView] | None = None
) -> Figure | None:
    """Generalization gap (train minus validation loss, end of training) per technique."""
    cols = list(axes[:MAX_AXES]) or ["config"]
    if runs["gap_loss_end"].notna().sum() == 0:
        return None
    fig, axs = panel_grid(len(cols), 1, 8.0, 0.6 + 0.32 * MAX_TECHNIQUES)
    for ax, axis in zip(axs[:, 0], cols, strict=False):
        tagged = _by_technique(runs, axis, views)
        order = _top_techniques(tagged, axis)
        sub = tagged[tagged["_t"].isin(order) & tagged["gap_loss_end"].notna()]
        order = [o for o in order if (sub["_t"] == o).any()]
        if not order:
            _no_data(ax)
            continue
        with quiet_figures():  # seaborn 0.13 passes vert= to matplotlib >= 3.11
            sns.boxplot(
                sub, x="gap_loss_end", y="_t", order=order, ax=ax, fliersize=2, hue="_t",
                palette={o: technique_color(o) for o in order}, legend=False,
            )  # fmt: skip
        ax.set_ylabel(axis)
        ax.set_xlabel("train − val loss (end)")
        ax.set_yticks(range(len(order)), [short_label(o, 24) for o in order])
    return fig


def interactions(runs: pd.DataFrame, axes: Sequence[str]) -> Figure | None:
    """Mean score for each pair of compared axes (e.g. activation x initializer)."""
    pairs = list(itertools.combinations(axes, 2))
    preferred = [("activation", "initializer"), ("normalizer", "optimizer")]
    pairs.sort(key=lambda p: (p not in preferred, axes.index(p[0]), axes.index(p[1])))
    pairs = pairs[:MAX_PAIRS]
    if not pairs:
        return None
    grids = []
    for a, b in pairs:
        grid = runs.groupby([runs[a].astype(str), runs[b].astype(str)])["score"].mean().unstack(b)
        grid = grid.iloc[:12, :12]
        grid.index = [short_label(i, 18) for i in grid.index]
        grid.columns = [short_label(c, 18) for c in grid.columns]
        grids.append(grid)
    values = np.concatenate([g.to_numpy(float).ravel() for g in grids])
    lo, hi = (np.nanmin(values), np.nanmax(values)) if np.isfinite(values).any() else (0.0, 1.0)
    fig, axs = panel_grid(1, len(pairs), 4.6, 3.8)
    for ax, (a, b), grid in zip(axs[0], pairs, grids, strict=True):
        sns.heatmap(grid, annot=grid.size <= 64, fmt=".2f", cmap="mako", ax=ax, cbar=False,
                    vmin=lo, vmax=hi, annot_kws={"fontsize": FONT})  # fmt: skip
        ax.set_title(wrap_label(f"mean score: {a} × {b}"))
    fig.colorbar(
        axs[0][0].collections[0], ax=list(axs[0]), label="mean score", shrink=0.9, pad=0.02
    )
    return fig


def cd_diagram(ranks: pd.Series, nemenyi: pd.DataFrame, title: str) -> Figure | None:
    """Critical-difference diagram (Demsar 2006) drawn by scikit-posthocs."""
    try:
        import scikit_posthocs as sp
    except ImportError:  # pragma: no cover
        return None
    sns.set_theme(style="white", font_scale=0.9)
    fig, ax = plt.subplots(figsize=(8, 2.6), layout="constrained")
    labelled = {short_label(str(k), 30): float(v) for k, v in ranks.items()}
    sig = nemenyi.copy()
    sig.index = sig.columns = list(labelled)
    sp.critical_difference_diagram(labelled, sig, ax=ax)
    ax.set_title(wrap_label(title, 90))
    return fig


by_technique = _by_technique
"""The runs of an axis with ``_t``, its technique label (for sections outside this module)."""

legend_right = _legend_right
"""A legend right of a row of panels (for sections outside this module)."""
