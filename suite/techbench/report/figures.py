"""Seaborn figures, each returned as PNG bytes (``None`` when the data cannot support it).

Work per figure is capped (datasets, axes, techniques per panel, representative runs for
the layer x step heatmaps) so a 10,000-trial store draws as fast as a 50-trial one.
"""

from __future__ import annotations

import itertools
import math
import warnings
from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns

from ..htmlpage import figure_png

MAX_DATASETS = 4
MAX_AXES = 4
MAX_TECHNIQUES = 8
MAX_HEATMAPS = 6
MAX_PAIRS = 4
DPI = 80


def _short(text: str, n: int = 28) -> str:
    """Shortened, with ``$`` escaped so plugin names never reach matplotlib's mathtext."""
    text = text if len(text) <= n else text[: n - 1] + "…"
    return text.replace("$", r"\$")


def _top_techniques(runs: pd.DataFrame, axis: str) -> list[str]:
    higher = bool((runs["target_mode"] != "min").all())
    order = runs.groupby(runs[axis].astype(str))["score"].mean().sort_values(ascending=not higher)
    return list(order.index[:MAX_TECHNIQUES])


def _grid(nrows: int, ncols: int, w: float = 3.6, h: float = 2.8):
    sns.set_theme(style="whitegrid", context="notebook", font_scale=0.8)
    fig, axs = plt.subplots(
        nrows, ncols, figsize=(w * ncols, h * nrows), squeeze=False, layout="constrained"
    )
    return fig, axs


def learning_curves(curves: pd.DataFrame, runs: pd.DataFrame, axes: Sequence[str]) -> bytes | None:
    """Target metric per epoch: median and interquartile band over runs (seeds and other axes),
    one panel per compared axis (rows) x dataset (columns)."""
    if curves.empty:
        return None
    datasets = sorted(runs["dataset"].astype(str).unique())[:MAX_DATASETS]
    rows = list(axes[:MAX_AXES]) or ["config"]
    data = curves.merge(runs[["trial_id", "dataset", *rows]], on="trial_id")
    data["dataset"] = data["dataset"].astype(str)
    fig, axs = _grid(len(rows), len(datasets), 4.0, 3.0)
    palette = sns.color_palette("tab10", MAX_TECHNIQUES)
    metric = str(runs["target_metric"].iloc[0])
    for i, axis in enumerate(rows):
        techs = _top_techniques(runs, axis)
        labels = data[axis].astype(str)
        for j, ds in enumerate(datasets):
            ax = axs[i][j]
            in_ds = data["dataset"] == ds
            for c, tech in enumerate(techs):
                t = data[in_ds & (labels == tech)]
                if t.empty:
                    continue
                q = t.groupby("epoch")["curve"].quantile([0.25, 0.5, 0.75]).unstack()
                x = q.index.to_numpy() + 1
                ax.plot(x, q[0.5], color=palette[c], label=_short(tech), lw=1.5)
                ax.fill_between(x, q[0.25], q[0.75], color=palette[c], alpha=0.2, lw=0)
            ax.set_title(f"{_short(ds, 16)} · {axis}", fontsize=9)
            ax.set_xlabel("epoch")
            ax.set_ylabel(metric if j == 0 else "")
            if j == 0:
                ax.legend(fontsize=7, loc="best")
    fig.suptitle("Learning curves: median and IQR band over runs", fontsize=10)
    return figure_png(fig, DPI)


def profile_plot(profiles: dict[str, tuple[pd.DataFrame, pd.Series, int]]) -> bytes | None:
    """Performance profiles rho(tau) on time-to-target, one panel per compared axis."""
    items = [(a, p) for a, p in profiles.items() if p[2] > 0][:MAX_AXES]
    if not items:
        return None
    fig, axs = _grid(1, len(items), 4.2, 3.2)
    for ax, (axis, (rho, score, n)) in zip(axs[0], items, strict=False):
        best = score.sort_values(ascending=False).index[:MAX_TECHNIQUES]
        for tech in best:
            ax.step(rho.index, rho[tech], where="post", label=f"{_short(tech)} ({score[tech]:.2f})")
        ax.set_xlim(1, float(rho.index.max()))
        ax.set_ylim(-0.02, 1.02)
        ax.set_title(f"{axis} ({n} workloads)", fontsize=9)
        ax.set_xlabel("tau (time / best time)")
        ax.set_ylabel("fraction of workloads")
        ax.legend(fontsize=7, loc="lower right")
    return figure_png(fig, DPI)


def health_heatmaps(metrics: pd.DataFrame, runs: pd.DataFrame, axes: Sequence[str]) -> bytes | None:
    """log10 gradient norm, layer x step, for a bounded set of representative runs (the
    lowest seed of each technique of the first compared axis on the first dataset)."""
    h = metrics[(metrics["split"] == "health") & (metrics["metric"] == "grad_norm")]
    h = h[h["layer"] != ""]
    if h.empty:
        return None
    ok = runs[runs["trial_id"].isin(set(h["trial_id"].unique()))]
    if ok.empty:
        return None
    first_ds = sorted(ok["dataset"].astype(str).unique())[0]
    ok = ok[ok["dataset"].astype(str) == first_ds].sort_values("seed")
    key = axes[0] if axes else "config"
    reps = ok.groupby(ok[key].astype(str), sort=True).head(1).head(MAX_HEATMAPS)
    ncols = min(3, len(reps))
    nrows = math.ceil(len(reps) / ncols)
    fig, axs = _grid(nrows, ncols, 4.0, 2.6)
    ids = set(reps["trial_id"])
    h = h[h["trial_id"].isin(ids)]
    h = h.assign(trial_id=h["trial_id"].astype(str))
    for ax in axs.ravel()[len(reps) :]:
        ax.set_visible(False)
    for ax, (_, rep) in zip(axs.ravel(), reps.iterrows(), strict=False):
        sub = h[h["trial_id"].astype(str) == rep["trial_id"]]
        grid = sub.pivot_table(index="layer", columns="step", values="value", observed=True)
        grid = grid.reindex(sorted(grid.index, key=lambda s: int(s) if s.isdigit() else s))
        with np.errstate(divide="ignore", invalid="ignore"):
            z = np.log10(grid.to_numpy(float))
        steps = grid.columns.to_numpy()
        im = ax.imshow(
            z,
            aspect="auto",
            cmap="viridis",
            interpolation="nearest",
            extent=(steps.min(), steps.max(), len(grid) - 0.5, -0.5),
        )
        fig.colorbar(im, ax=ax, label="log10 |g|")
        ax.set_yticks(range(len(grid)), list(grid.index))
        ax.grid(False)
        ax.set_title(_short(f"{key}={rep[key]} · seed {rep['seed']}", 40), fontsize=9)
        ax.set_xlabel("step")
        ax.set_ylabel("layer")
    fig.suptitle(f"Gradient norm per layer and step ({first_ds})")
    return figure_png(fig, DPI)


def _per_row(trial_ids: pd.Series, by_trial: pd.Series) -> np.ndarray:
    """``by_trial[trial_id]`` for every row, through the categorical codes when possible."""
    if isinstance(trial_ids.dtype, pd.CategoricalDtype):
        lut = by_trial.reindex(trial_ids.cat.categories.astype(str)).to_numpy(object)
        return lut[trial_ids.cat.codes.to_numpy()]
    return trial_ids.astype(str).map(by_trial).to_numpy(object)


def fraction_heatmaps(
    metrics: pd.DataFrame, runs: pd.DataFrame, axes: Sequence[str]
) -> bytes | None:
    """Dead and saturated fractions, layer x step, median over runs, for the techniques of
    the first compared axis that record them (at most ``MAX_HEATMAPS`` panels)."""
    names = ["dead_fraction", "saturated_fraction"]
    h = metrics[(metrics["split"] == "health") & metrics["metric"].isin(names)]
    h = h[h["layer"] != ""]
    if h.empty:
        return None
    axis = axes[0] if axes else "config"
    techs = _top_techniques(runs, axis)
    h = h[["trial_id", "step", "metric", "layer", "value"]].assign(
        _t=_per_row(h["trial_id"], runs.set_index("trial_id")[axis].astype(str))
    )
    h = h[h["_t"].isin(techs)].assign(metric=lambda d: d["metric"].astype(str))
    med = h.groupby(["_t", "metric", "layer", "step"], observed=True)["value"].median()
    have = set(zip(med.index.get_level_values(0), med.index.get_level_values(1), strict=True))
    panels = [(t, m) for t in techs for m in names if (t, m) in have][:MAX_HEATMAPS]
    if not panels:
        return None
    ncols = min(3, len(panels))
    fig, axs = _grid(math.ceil(len(panels) / ncols), ncols, 4.0, 2.4)
    for ax in axs.ravel()[len(panels) :]:
        ax.set_visible(False)
    for ax, (tech, metric) in zip(axs.ravel(), panels, strict=False):
        grid = med.loc[(tech, metric)].unstack("step")
        grid = grid.reindex(sorted(grid.index, key=lambda s: int(s) if s.isdigit() else s))
        z = grid.to_numpy(float)
        steps = grid.columns.to_numpy()
        top = max(0.05, float(np.nanmax(z))) if np.isfinite(z).any() else 1.0
        im = ax.imshow(
            z, aspect="auto", cmap="magma", vmin=0.0, vmax=top, interpolation="nearest",
            extent=(steps.min(), steps.max(), len(grid) - 0.5, -0.5),
        )  # fmt: skip
        fig.colorbar(im, ax=ax)
        ax.set_yticks(range(len(grid)), [str(i) for i in grid.index])
        ax.grid(False)
        ax.set_title(f"{_short(tech)} · {metric}", fontsize=9)
        ax.set_xlabel("step")
        ax.set_ylabel("layer")
    return figure_png(fig, DPI)


def ratio_curves(metrics: pd.DataFrame, runs: pd.DataFrame, axes: Sequence[str]) -> bytes | None:
    """First/last layer gradient-norm ratio over steps: median over runs per technique."""
    g = metrics[(metrics["split"] == "health") & (metrics["metric"] == "grad_ratio_first_last")]
    if g.empty:
        return None
    cols = list(axes[:MAX_AXES]) or ["config"]
    g = g[["trial_id", "step", "value"]].assign(trial_id=g["trial_id"].astype(str))
    data = g.merge(runs[["trial_id", *cols]], on="trial_id")
    fig, axs = _grid(1, len(cols), 4.0, 3.0)
    for ax, axis in zip(axs[0], cols, strict=False):
        for tech in _top_techniques(runs, axis):
            t = data[data[axis].astype(str) == tech]
            med = t.groupby("step")["value"].median()
            ax.plot(med.index, med.to_numpy(), label=_short(tech))
        ax.set_yscale("log")
        ax.axhline(1.0, color="grey", lw=0.8, ls="--")
        ax.set_title(axis, fontsize=9)
        ax.set_xlabel("step")
        ax.set_ylabel("|g first| / |g last|")
        ax.legend(fontsize=7)
    return figure_png(fig, DPI)


def activation_stats(
    metrics: pd.DataFrame, runs: pd.DataFrame, axes: Sequence[str]
) -> bytes | None:
    """Per-layer activation mean and std at the first and last health snapshot (median over
    runs per technique): the lecture's 10-layer activation-statistics plot."""
    h = metrics[(metrics["split"] == "health") & metrics["metric"].isin(["act_mean", "act_std"])]
    h = h[h["layer"] != ""]
    if h.empty:
        return None
    h = h[["trial_id", "step", "metric", "layer", "value"]]
    steps = h.groupby("trial_id", observed=True)["step"]
    last, first = steps.transform("max"), steps.transform("min")
    keep = (h["step"] == last) | (h["step"] == first)
    is_first = (h["step"] == first)[keep]
    h = h[keep]
    h = h.assign(
        trial_id=h["trial_id"].astype(str),
        metric=h["metric"].astype(str),
        when=np.where(is_first, "first", "last"),
        layer=pd.to_numeric(h["layer"].astype(str), errors="coerce"),
    )
    axis = axes[0] if axes else "config"
    data = h.merge(runs[["trial_id", axis]], on="trial_id")
    data[axis] = data[axis].astype(str)
    data = data[data[axis].isin(_top_techniques(runs, axis))]
    data[axis] = data[axis].map(_short)
    med = data.groupby([axis, "metric", "when", "layer"])["value"].median().reset_index()
    fig, axs = _grid(1, 4, 3.4, 2.8)
    for ax, (metric, when) in zip(
        axs[0], itertools.product(["act_mean", "act_std"], ["first", "last"]), strict=True
    ):
        sub = med[(med["metric"] == metric) & (med["when"] == when)]
        sns.lineplot(
            sub, x="layer", y="value", hue=axis, marker="o", errorbar=None, ax=ax,
            legend=ax is axs[0][0],
        )  # fmt: skip
        ax.set_title(f"{metric} ({when} snapshot)", fontsize=9)
    if axs[0][0].get_legend():
        sns.move_legend(axs[0][0], "upper left", fontsize=7, title=axis)
    return figure_png(fig, DPI)


def gap_distributions(runs: pd.DataFrame, axes: Sequence[str]) -> bytes | None:
    """Generalization gap (train minus validation loss, end of training) per technique."""
    cols = list(axes[:MAX_AXES]) or ["config"]
    if runs["gap_loss_end"].notna().sum() == 0:
        return None
    fig, axs = _grid(1, len(cols), 4.0, 3.2)
    for ax, axis in zip(axs[0], cols, strict=False):
        order = _top_techniques(runs, axis)
        sub = runs[runs[axis].astype(str).isin(order)].assign(_t=runs[axis].astype(str))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # seaborn 0.13 on mpl >= 3.11
            sns.boxplot(
                sub, x="gap_loss_end", y="_t", order=order, ax=ax, fliersize=2, color="#9ecae1"
            )
        ax.set_ylabel(axis)
        ax.set_xlabel("train − val loss (end)")
        ax.set_yticks(range(len(order)), [_short(o, 20) for o in order])
    return figure_png(fig, DPI)


def interactions(runs: pd.DataFrame, axes: Sequence[str]) -> bytes | None:
    """Mean score for each pair of compared axes (e.g. activation x initializer)."""
    pairs = list(itertools.combinations(axes, 2))
    preferred = [("activation", "initializer"), ("normalizer", "lr"), ("normalizer", "optimizer")]
    pairs.sort(key=lambda p: (p not in preferred, axes.index(p[0]), axes.index(p[1])))
    pairs = pairs[:MAX_PAIRS]
    if not pairs:
        return None
    fig, axs = _grid(1, len(pairs), 4.6, 3.8)
    for ax, (a, b) in zip(axs[0], pairs, strict=False):
        grid = runs.groupby([runs[a].astype(str), runs[b].astype(str)])["score"].mean().unstack(b)
        grid = grid.iloc[:12, :12]
        grid.index = [_short(i, 18) for i in grid.index]
        grid.columns = [_short(c, 18) for c in grid.columns]
        sns.heatmap(grid, annot=grid.size <= 64, fmt=".2f", cmap="mako", ax=ax, cbar=True)
        ax.set_title(f"mean score: {a} × {b}", fontsize=9)
    return figure_png(fig, DPI)


def cd_diagram(ranks: pd.Series, nemenyi: pd.DataFrame, title: str) -> bytes | None:
    """Critical-difference diagram (Demsar 2006) drawn by scikit-posthocs."""
    try:
        import scikit_posthocs as sp
    except ImportError:  # pragma: no cover
        return None
    sns.set_theme(style="white", font_scale=0.8)
    fig, ax = plt.subplots(figsize=(7, 2.4), layout="constrained")
    labelled = {_short(str(k), 30): float(v) for k, v in ranks.items()}
    sig = nemenyi.copy()
    sig.index = sig.columns = list(labelled)
    sp.critical_difference_diagram(labelled, sig, ax=ax)
    ax.set_title(title, fontsize=9)
    return figure_png(fig, DPI)
