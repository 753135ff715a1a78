"""How sure: seeds needed against the normal closed form, min_effect and equivalence, Kendall
tau against scipy, the early-signal table on a population built here, and the answer picture
(its intervals are the CSV's numbers, the best is marked, 20 techniques stay readable)."""

from __future__ import annotations

import itertools
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from matplotlib.collections import LineCollection
from matplotlib.figure import Figure
from scipy import integrate, stats

from techbench.plan.matrix import MatrixError, loads_matrix
from techbench.report import build_report
from techbench.report.answer_figures import BEST_MARK, answer_intervals
from techbench.report.power import comparison, normal_seeds, read_min_effect, seeds_needed
from techbench.report.signals import (
    early_values,
    kendall_tau,
    predictor_table,
    tau_with_ci,
    verdicts,
)
from techbench.report.stats import resample_counts

from .report_fixtures import write_store

Z = stats.norm.ppf(0.975) + stats.norm.ppf(0.8)


def _iqm_variance() -> float:
    """Asymptotic variance of the 25 % trimmed mean of N(0, 1), by numerical integration of
    ``(int_{q1}^{q3} x^2 phi(x) dx + 2 a q^2) / (1 - 2a)^2`` (Stigler 1973)."""
    q = stats.norm.ppf(0.75)
    inner, _ = integrate.quad(lambda x: x * x * stats.norm.pdf(x), -q, q)
    return (inner + 2 * 0.25 * q * q) / 0.5**2


def _closed_form(sigma: float, delta: float) -> float:
    """Seeds per group for 80 % power of a two-sided 5 % two-sample comparison of IQMs:
    ``2 (z_0.975 + z_0.8)^2 sigma^2 / delta^2`` times the IQM's variance factor."""
    return 2 * Z**2 * sigma**2 * _iqm_variance() / delta**2


def _normal(mean: float, sigma: float, n: int = 4000) -> np.ndarray:
    """Exactly normal-shaped scores: the quantiles at (i + 1/2) / n."""
    return mean + sigma * stats.norm.ppf((np.arange(n) + 0.5) / n)


@pytest.mark.parametrize(("sigma", "delta"), [(1.0, 0.5), (0.02, 0.006), (1.0, 0.3)])
def test_seeds_needed_by_resampling_match_the_normal_closed_form(sigma, delta) -> None:
    found = seeds_needed([_normal(delta, sigma)], [_normal(0.0, sigma)], seed=1)
    assert found == pytest.approx(_closed_form(sigma, delta), rel=0.15)


def test_parametric_fallback_is_the_closed_form_and_used_with_few_seeds() -> None:
    assert normal_seeds(1.0, 1.0, 0.5) == math.ceil(_closed_form(1.0, 0.5))
    a = {"c": np.array([1.0, 1.2, 0.9])}
    b = {"c": np.array([0.5, 0.8, 0.6])}
    row = comparison(a, b, (0.1, 0.6), None)
    sa, sb = np.std(a["c"], ddof=1), np.std(b["c"], ddof=1)
    delta = stats.trim_mean(a["c"], 0.25) - stats.trim_mean(b["c"], 0.25)
    expected = Z**2 * (sa**2 + sb**2) * _iqm_variance() / delta**2
    assert row["method"] == "normal" and row["seeds_now"] == 3
    assert row["seeds_needed"] == max(2, math.ceil(expected))


def test_min_effect_seeds_and_equivalence() -> None:
    sigma, effect = 1.0, 0.5
    same = {"c": _normal(0.0, sigma)}
    row = comparison(same, {"c": _normal(0.0, sigma)}, (-0.1, 0.2), effect)
    assert math.isinf(float(row["seeds_needed"]))  # equal IQMs never separate
    assert row["seeds_for_min_effect"] == pytest.approx(_closed_form(sigma, effect), rel=0.15)
    assert row["equivalent"] is True  # [-0.1, 0.2] lies inside (-0.5, 0.5)
    assert comparison(same, same, (-0.1, 0.6), effect)["equivalent"] is False
    assert comparison(same, same, (-0.6, 0.1), effect)["equivalent"] is False


@pytest.mark.parametrize("n", [2, 7, 40])
def test_kendall_tau_matches_scipy_with_ties(n: int) -> None:
    rng = np.random.default_rng(n)
    for _ in range(5):
        x = rng.integers(0, 4, n).astype(float)
        y = x + rng.integers(0, 3, n)
        expected = stats.kendalltau(x, y).statistic
        got = float(kendall_tau(x, y))
        assert (math.isnan(got) and math.isnan(expected)) or got == pytest.approx(expected)


def test_tau_interval_is_the_percentile_of_scipy_on_each_resample() -> None:
    rng = np.random.default_rng(3)
    x = rng.normal(size=25)
    y = x + rng.normal(size=25)
    tau, lo, hi = tau_with_ci(x, y, n_resamples=300, seed=7)
    counts = resample_counts(25, 300, np.random.default_rng(7))
    brute = [stats.kendalltau(x[np.repeat(np.arange(25), c)], y[np.repeat(np.arange(25), c)])[0]
             for c in counts]  # fmt: skip
    assert tau == pytest.approx(stats.kendalltau(x, y).statistic)
    assert (lo, hi) == pytest.approx(tuple(np.quantile(brute, [0.025, 0.975])))


def _population(n: int = 40, swap: bool = False) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``n`` trials of 100 steps: final score i; 'val loss' at step 20 is -i (a perfect early
    predictor) and becomes noise from step 30 on; 'health grad_norm' (two layers) is noise.
    ``swap``: the final top 3 get the early losses of the next 3 (and the reverse)."""
    early = {i: -float(i) for i in range(n)}
    if swap:
        for i in range(n - 3, n):
            early[i], early[i - 3] = early[i - 3], early[i]
    rng = np.random.default_rng(0)
    runs = pd.DataFrame({"trial_id": [f"t{i}" for i in range(n)], "steps": 100,
                         "dataset": "digits", "model": "mlp", "score": np.arange(n, dtype=float)})  # fmt: skip
    rows = []
    for i in range(n):
        rows.append((f"t{i}", 20, "val", "loss", "", early[i]))
        rows.append((f"t{i}", 30, "val", "loss", "", float(rng.normal())))
        for step, layer in itertools.product((10, 40), ("0", "1")):
            rows.append((f"t{i}", step, "health", "grad_norm", layer, float(rng.normal())))
    metrics = pd.DataFrame(rows, columns=["trial_id", "step", "split", "metric", "layer", "value"])
    return runs, metrics


def test_early_values_take_the_last_record_by_the_fraction() -> None:
    runs, metrics = _population()
    at25 = early_values(metrics, runs, 0.25)
    assert at25.loc["t5", "val loss"] == -5.0  # step 20 <= 25, step 30 > 25
    g = metrics[(metrics["trial_id"] == "t5") & (metrics["step"] == 10)]
    assert at25.loc["t5", "health grad_norm"] == pytest.approx(g["value"].mean())
    assert "val loss" not in early_values(metrics, runs, 0.1)  # nothing recorded by step 10


def test_predictor_table_ranks_the_perfect_signal_first() -> None:
    runs, metrics = _population()
    table = predictor_table(metrics, runs, higher=True)
    first = table.iloc[0]
    assert (first["signal"], first["fraction"]) == ("val loss", 0.25)
    assert first["tau"] == pytest.approx(-1.0) and first["top3_agreement"] == 1.0
    noise = table[(table["signal"] == "val loss") & (table["fraction"] == 0.5)].iloc[0]
    assert noise["tau"] == pytest.approx(stats.kendalltau(
        metrics[(metrics["step"] == 30)]["value"], runs["score"]).statistic)  # fmt: skip
    assert noise["tau_ci_low"] < 0 < noise["tau_ci_high"]
    assert predictor_table(metrics, runs.head(29), higher=True).empty  # under 30 trials
    assert "was a safe proxy here" in verdicts(table)[0]


def test_a_signal_that_ranks_well_but_misses_the_top_is_not_called_safe() -> None:
    runs, metrics = _population(swap=True)
    table = predictor_table(metrics, runs, higher=True)
    row = table[(table["signal"] == "val loss") & (table["fraction"] == 0.25)].iloc[0]
    n_pairs = 40 * 39 / 2
    assert row["tau"] == pytest.approx(-(n_pairs - 2 * 9) / n_pairs)  # 9 discordant pairs
    assert row["top3_agreement"] == 0.0
    assert "would not have picked the final best" in verdicts(table)[0]


# -- the answer as a picture ---------------------------------------------------------------


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("howsure")
    write_store(root / "store", axes={"activation": ["relu", "tanh", "elu"]},
                datasets=("digits", "moons"), ceilings={"tanh": 0.1, "relu": -0.2})  # fmt: skip
    build_report(root / "store", root / "rep", min_effect=0.01)
    return root / "rep"


def _segments(fig: Figure, gid: str) -> list[list[tuple[float, float]]]:
    found = [c for ax in fig.axes for c in ax.collections if c.get_gid() == gid]
    assert found and all(isinstance(c, LineCollection) for c in found)
    return [[(s[0][0], s[1][0]) for s in c.get_segments()] for c in found]  # type: ignore[union-attr]


def test_drawn_intervals_are_the_csv_numbers_and_the_best_is_marked(report: Path) -> None:
    board = pd.read_csv(report / "leaderboard.csv")
    head = pd.read_csv(report / "headline.csv")
    fig = answer_intervals(board, "val_acc")
    assert fig is not None
    units = list(board.groupby(["dataset", "axis"], sort=True))
    for drawn, (_, b) in zip(_segments(fig, "score_ci"), units, strict=True):
        expected = b[["score_ci_low", "score_ci_high"]].to_numpy(float)
        np.testing.assert_allclose(np.array(drawn), expected, rtol=1e-12)
    for drawn, (_, b) in zip(_segments(fig, "p_ci"), units, strict=True):
        others = b[b["technique"] != b["technique"].iloc[0]]
        expected = others[["p_ci_low", "p_ci_high"]].to_numpy(float)
        np.testing.assert_allclose(np.array(drawn), expected, rtol=1e-12)
    marked = [t.get_text() for ax in fig.axes for t in ax.get_yticklabels()
              if t.get_text().startswith(BEST_MARK)]  # fmt: skip
    assert marked == [BEST_MARK + b for b in head["best"]]
    page = (report / "index.html").read_text(encoding="utf-8")
    answer = page[page.index('id="answer"') : page.index('id="how-sure"')]
    assert "P(best &gt; technique), 95% CIs" in answer


def test_twenty_techniques_stay_readable() -> None:
    rows = []
    for i in range(20):
        s = 0.9 - 0.01 * i
        p = math.nan if i == 0 else 0.5 + i / 40
        rows.append({"dataset": "d", "axis": "optimizer", "rank": i + 1, "technique":
                     f"optimizer_{i}(lr=0.0{i})", "score_iqm": s, "score_ci_low": s - 0.02,
                     "score_ci_high": s + 0.01, "p_best_better": p, "p_ci_low": p - 0.2,
                     "p_ci_high": min(1.0, p + 0.2)})  # fmt: skip
    fig = answer_intervals(pd.DataFrame(rows), "val_acc")
    assert fig is not None
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()  # type: ignore[attr-defined]
    page = fig.bbox
    for ax in fig.axes:
        lo, hi = sorted(ax.get_xlim())
        shown_x = [t for t, x in zip(ax.get_xticklabels(), ax.get_xticks(), strict=True)
                   if lo <= x <= hi]  # fmt: skip
        for ticks in (ax.get_yticklabels(), shown_x):
            boxes = [t.get_window_extent(renderer) for t in ticks if t.get_text()]
            for a, b in itertools.combinations(boxes, 2):
                assert not a.overlaps(b), "tick labels overlap"
            assert all(page.x0 - 1 <= bx.x0 and bx.x1 <= page.x1 + 1 for bx in boxes)
        assert len([t for t in ax.get_yticklabels() if t.get_text()]) in (0, 20)
    assert all(t.get_fontsize() >= 9 for ax in fig.axes for t in ax.get_yticklabels())


def test_power_csv_and_min_effect_option(report: Path, tmp_path: Path) -> None:
    power = pd.read_csv(report / "power.csv")
    head = pd.read_csv(report / "headline.csv")
    assert list(power["best"]) == list(head["best"])
    assert (power["min_effect"] == 0.01).all()
    bad = subprocess.run(
        [sys.executable, "-m", "techbench", "report", str(report.parent / "store"),
         "--out", str(tmp_path / "r"), "--min-effect", "-1"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert bad.returncode == 2 and "--min-effect" in bad.stderr and "Traceback" not in bad.stderr


def test_matrix_min_effect_is_validated_and_read_with_the_flag_first() -> None:
    m = loads_matrix('name = "x"\n[report]\nmin_effect = 0.01\n[axes]\nactivation = ["relu"]\n')
    assert m.report == {"min_effect": 0.01}
    assert read_min_effect(m.describe(), None) == 0.01
    assert read_min_effect(m.describe(), 0.5) == 0.5
    assert read_min_effect({}, None) is None
    for bad in ("-0.1", "0", '"big"', "true", "inf"):
        with pytest.raises(MatrixError, match=r"report\.min_effect"):
            loads_matrix(f'name = "x"\n[report]\nmin_effect = {bad}\n')


def test_a_large_workload_is_subsampled_to_the_cap(monkeypatch: pytest.MonkeyPatch) -> None:
    from techbench.report import signals

    monkeypatch.setattr(signals, "MAX_POPULATION", 35)
    runs, metrics = _population()
    table = predictor_table(metrics, runs, higher=True)
    assert set(table["n_trials"]) == {35}
