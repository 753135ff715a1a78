"""The answer as a picture (rliable's interval estimates and probability-of-improvement plots):
per dataset and compared axis, each technique's IQM score with its 95 % interval, best at the
top and marked, and beside it P(best > technique) with its interval.

The numbers are the leaderboard's (:mod:`.headline`), so the picture and the tables agree by
construction. One row of dots per technique, :data:`ROW_INCHES` apart, so 20 techniques stay
readable; the P panel shares the score panel's rows (technique names are written once).
"""

from __future__ import annotations

import math

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from ..techniques.palette import technique_color
from .figures import FONT, MAX_WIDTH, quiet_figures, short_label, wrap_label

MAX_UNITS = 6
"""Headline rows (dataset x axis) drawn; the rest are in the tables."""
MAX_ROWS = 24
"""Techniques drawn per comparison (the best by rank); every one is in the leaderboard table."""
ROW_INCHES = 0.27
BEST_MARK = "★ "


def units(board: pd.DataFrame) -> list[tuple[object, str, pd.DataFrame]]:
    """``(dataset, axis, its leaderboard rows in rank order)`` for each comparison drawn."""
    if board.empty:
        return []
    out = []
    for (dataset, axis), b in board.groupby(["dataset", "axis"], sort=True):
        if len(b) >= 2:
            out.append((dataset, str(axis), b.head(MAX_ROWS).reset_index(drop=True)))
    return out[:MAX_UNITS]


def answer_intervals(board: pd.DataFrame, metric: str) -> Figure | None:
    """The interval figure of the headline comparisons (``None`` without a comparison)."""
    drawn = units(board)
    if not drawn:
        return None
    per_row = 2 if len(drawn) > 1 and max(len(b) for *_, b in drawn) <= 12 else 1
    nrows = math.ceil(len(drawn) / per_row)
    heights = [
        max(len(b) for *_, b in drawn[i * per_row : (i + 1) * per_row]) * ROW_INCHES + 0.95
        for i in range(nrows)
    ]
    width = min(MAX_WIDTH, 5.6 * per_row if per_row > 1 else 8.0)
    with quiet_figures():
        fig = plt.figure(figsize=(width, sum(heights)), layout="constrained")
        rows = fig.subfigures(nrows, 1, height_ratios=heights, squeeze=False)[:, 0]
        for i, (dataset, axis, b) in enumerate(drawn):
            row = rows[i // per_row]
            sub = row.subfigures(1, per_row, squeeze=False)[0, i % per_row] if per_row > 1 else row
            n = int(((board["dataset"] == dataset) & (board["axis"] == axis)).sum())
            shown = f" · best {len(b)} of {n}" if n > len(b) else ""
            _unit(sub, b, f"{dataset} · {axis}{shown}", metric, 24 if per_row > 1 else 34)
        for j in range(len(drawn), nrows * per_row):
            rows[j // per_row].subfigures(1, per_row, squeeze=False)[0, j % per_row]
    return fig


def _unit(sub: Figure, b: pd.DataFrame, title: str, metric: str, label_chars: int) -> None:
    score_ax, p_ax = sub.subplots(1, 2, sharey=True, width_ratios=[1.35, 1.0])
    y = np.arange(len(b))
    colors = [technique_color(t) for t in b["technique"].astype(str)]
    lines = score_ax.hlines(y, b["score_ci_low"], b["score_ci_high"], colors=colors, lw=2.4)
    lines.set_gid("score_ci")
    score_ax.scatter(b["score_iqm"], y, c=colors, s=22, zorder=3, edgecolors="black", lw=0.5)
    labels = [
        (BEST_MARK if r == 1 else "") + short_label(str(t), label_chars)
        for r, t in zip(b["rank"], b["technique"], strict=True)
    ]
    score_ax.set_yticks(y, labels, fontsize=FONT)
    for tick, r in zip(score_ax.get_yticklabels(), b["rank"], strict=True):
        if r == 1:
            tick.set_fontweight("bold")
    score_ax.set_ylim(len(b) - 0.5, -0.5)
    others = b[b["p_best_better"].notna()]
    oy = others.index.to_numpy()
    oc = [technique_color(t) for t in others["technique"].astype(str)]
    p_lines = p_ax.hlines(oy, others["p_ci_low"], others["p_ci_high"], colors=oc, lw=2.4)
    p_lines.set_gid("p_ci")
    p_ax.scatter(others["p_best_better"], oy, c=oc, s=22, zorder=3, edgecolors="black", lw=0.5)
    p_ax.axvline(0.5, color="#888", lw=0.8, ls="--")
    p_ax.set_xlim(-0.02, 1.02)
    p_ax.set_xlabel("P(★ best > technique)\n95% CI", fontsize=FONT)
    score_ax.set_xlabel(f"{short_label(metric)} IQM\n95% CI", fontsize=FONT)
    for ax in (score_ax, p_ax):
        ax.xaxis.set_major_locator(MaxNLocator(nbins=4))
        ax.tick_params(labelsize=FONT)
        ax.grid(axis="x", color="#eee")
    p_ax.tick_params(axis="y", left=False, labelleft=False)
    best = short_label(str(b["technique"].iloc[0]), 40)
    sub.suptitle(wrap_label(f"{title} (★ best: {best})", 70), fontsize=FONT + 0.5)
