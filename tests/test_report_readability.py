"""The non-tuned report reads unambiguously: stop reasons count runs, heatmap panels share one
colour scale, legends sit outside the data, and the Runs table is in reading order."""

from __future__ import annotations

import html
import itertools
import re
from collections import Counter
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
import pytest
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure

from techbench.report import build_report, figures
from techbench.report.build import load_context
from techbench.report.sections import ReportContext

from .report_fixtures import write_store

EPOCHS = 4
SEEDS = range(3)
DATASETS = ("digits", "moons")
ACTIVATIONS = ("relu", "tanh", "sigmoid", "elu")
INITIALIZERS = ("he_normal", "xavier_uniform")
STATUSES = {("tanh", 1): "diverged", ("sigmoid", 2): "failed"}


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("readab") / "store"
    write_store(
        path,
        axes={"activation": list(ACTIVATIONS), "initializer": list(INITIALIZERS)},
        datasets=DATASETS,
        seeds=SEEDS,
        ceilings={"relu": 0.1, "sigmoid": -0.3},
        statuses=STATUSES,
        epochs=EPOCHS,
    )
    return path


@pytest.fixture(scope="module")
def ctx(store: Path, tmp_path_factory: pytest.TempPathFactory) -> ReportContext:
    loaded = load_context(store, tmp_path_factory.mktemp("unused"))
    assert loaded is not None
    return loaded


def _written_statuses() -> Counter[str]:
    """The status of every trial the fixture wrote, counted from its own loops."""
    counts: Counter[str] = Counter()
    for _, act, _, seed in itertools.product(DATASETS, ACTIVATIONS, INITIALIZERS, SEEDS):
        counts[STATUSES.get((act, seed), "completed")] += 1
    return counts


def _header_value(page: str, key: str) -> str:
    found = re.search(rf"<dt>{re.escape(key)}</dt><dd>([^<]*)</dd>", page)
    assert found, f"no {key!r} in the page header"
    return html.unescape(found.group(1))


# -- stop reasons -----------------------------------------------------------------------------


def test_stopped_by_counts_runs_and_names_the_budget(store: Path, tmp_path: Path) -> None:
    page = build_report(store, tmp_path / "r").read_text(encoding="utf-8")
    text = _header_value(page, "stopped by")
    parsed = {}
    for part in text.split("; "):
        what, n = re.fullmatch(r"(.+): (\d+) runs?", part).groups()  # type: ignore[union-attr]
        parsed[what] = int(n)
    written = _written_statuses()
    assert parsed == {
        f"epoch budget ({EPOCHS} epochs)": written["completed"],
        "divergence": written["diverged"],
        "an error (failed)": written["failed"],
    }
    assert sum(parsed.values()) == len(pd.read_csv(tmp_path / "r" / "runs.csv"))


def test_stop_summary_names_each_budget_with_its_size() -> None:
    from techbench.report.inputs import stop_summary  # here: absent before this text existed

    reasons = ["epochs"] * 5 + ["epochs"] * 2 + ["steps"] + ["early stopping"] * 3 + ["diverged"]
    runs = pd.DataFrame(
        {
            "stop_reason": reasons,
            "epochs": [10] * 5 + [1] * 2 + [10] + [10] * 3 + [10],
            "max_steps": [None] * 7 + [500] + [None] * 4,
        }
    )
    assert stop_summary(runs) == (
        "epoch budget (10 epochs): 5 runs; early stopping: 3 runs; epoch budget (1 epoch): 2 runs; "
        "step budget (500 steps): 1 run; divergence: 1 run"
    )


# -- heatmaps: one colour scale per figure ----------------------------------------------------


def _panels(fig: Figure) -> list[plt.Axes]:
    return [ax for ax in fig.axes if ax.get_visible() and ax.get_label() != "<colorbar>"]


def _colorbars(fig: Figure) -> list[plt.Axes]:
    return [ax for ax in fig.axes if ax.get_label() == "<colorbar>"]


def _shared_norm(fig: Figure) -> tuple[float, float]:
    """Every panel's image or mesh drawn with the same limits; the limits span all the data."""
    mappables = [m for ax in _panels(fig) for m in (*ax.images, *ax.collections)]
    assert len(mappables) == len(_panels(fig)) >= 2
    limits = {(m.norm.vmin, m.norm.vmax) for m in mappables}
    assert len(limits) == 1, f"panels have their own colour scales: {limits}"
    lo, hi = limits.pop()
    for m in mappables:
        data = m.get_array()
        assert lo <= data.min() and data.max() <= hi
    assert len(_colorbars(fig)) == 1
    return lo, hi


def test_gradient_norm_panels_share_one_log_scale(ctx: ReportContext) -> None:
    fig = figures.health_heatmaps(ctx.metrics, ctx.runs, ctx.axes)
    assert isinstance(fig, Figure)
    lo, hi = _shared_norm(fig)
    assert all(isinstance(im.norm, LogNorm) for ax in _panels(fig) for im in ax.images)
    shown = [im.get_array() for ax in _panels(fig) for im in ax.images]
    assert lo == min(a.min() for a in shown) and hi == max(a.max() for a in shown)
    plt.close(fig)


def test_fraction_and_interaction_panels_share_one_scale(ctx: ReportContext) -> None:
    fractions = figures.fraction_heatmaps(ctx.metrics, ctx.runs, ctx.axes)
    assert isinstance(fractions, Figure)
    assert _shared_norm(fractions)[0] == 0.0
    plt.close(fractions)
    three = ctx.runs.assign(norm_placement=ctx.runs["seed"].map(lambda s: f"p{s % 2}"))
    pairs = figures.interactions(three, [*ctx.axes, "norm_placement"])
    assert isinstance(pairs, Figure)
    lo, hi = _shared_norm(pairs)
    means = [three.groupby([a, b])["score"].mean() for a, b in itertools.combinations(
        [*ctx.axes, "norm_placement"], 2)]  # fmt: skip
    assert lo == pytest.approx(min(m.min() for m in means))
    assert hi == pytest.approx(max(m.max() for m in means))
    plt.close(pairs)


# -- legends outside the data -----------------------------------------------------------------


def _legend_figures(ctx: ReportContext) -> dict[str, Figure | None]:
    return {
        "learning curves": figures.learning_curves(ctx.curves, ctx.runs, ctx.axes, ctx.views),
        "profiles": figures.profile_plot(ctx.profiles["steps"], "steps"),
        "gradient ratio": figures.ratio_curves(ctx.metrics, ctx.runs, ctx.axes, ctx.views),
        "activation means": figures.activation_stats(ctx.metrics, ctx.runs, ctx.axes, ctx.views),
    }


def test_legends_never_cover_a_panel(ctx: ReportContext) -> None:
    for name, fig in _legend_figures(ctx).items():
        assert isinstance(fig, Figure), name
        fig.canvas.draw()
        legends = [*fig.legends, *(ax.get_legend() for ax in fig.axes if ax.get_legend())]
        assert legends, name
        for legend in legends:
            box = legend.get_window_extent()
            for ax in _panels(fig):
                assert not box.overlaps(ax.get_window_extent()), f"{name}: legend over a panel"
            assert min(t.get_fontsize() for t in legend.get_texts()) >= 8, name
            assert fig.bbox.contains(box.x0, box.y0) and fig.bbox.contains(box.x1, box.y1), name
        plt.close(fig)


# -- the Runs table ---------------------------------------------------------------------------


def test_runs_table_is_in_reading_order(tmp_path: Path) -> None:
    lrs = (0.1, 1e-05, 0.003, 2.0)  # "1e-05" sorts after "0.1" as text
    store = tmp_path / "s"
    write_store(
        store,
        axes={"optimizer": [("sgd", {"lr": lr}) for lr in lrs]},
        datasets=("moons", "digits"),
        seeds=(11, 2, 0),
        epochs=2,
    )
    build_report(store, tmp_path / "r")
    runs = pd.read_csv(tmp_path / "r" / "runs.csv")
    lr_of = runs["optimizer"].map(lambda s: float(re.search(r"lr=([^,)]+)", s).group(1)))  # type: ignore[union-attr]
    got = list(zip(runs["dataset"], lr_of, runs["seed"], strict=True))
    expected = sorted(itertools.product(("moons", "digits"), lrs, (11, 2, 0)))
    assert got == expected
    page = (tmp_path / "r" / "index.html").read_text(encoding="utf-8")
    section = page[page.index('<section id="runs">') :]
    assert "sorted by dataset, then optimizer, then seed" in section
    shown = re.findall(r"<tr><td[^>]*>([0-9a-f]{16})</td>", section)
    assert shown == list(runs["trial_id"])
