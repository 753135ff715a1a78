"""A tuned store's report (issue 22): everything ranked comes from the finals of the selected
settings, expected-max curves use each technique's own floor, equal scores tie, the headline's
runs are the best's own, and the tuning figures use the palette at a readable legend size.

Stores are written by :func:`techbench.plan.tune.run_tuned` with a test-only trial function (no
training): validation accuracy is a known function of the optimizer, lr and seed."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from scipy import stats as sstats

from techbench.execute.local import execute
from techbench.plan.matrix import loads_matrix
from techbench.plan.tune import TunePlan, read_plan, run_tuned
from techbench.report import build_report
from techbench.report import figures as report_figures
from techbench.report.build import load_context
from techbench.schema import trial_id
from techbench.techniques.palette import technique_color

from .report_fixtures import epoch_rows, make_config, write_trial
from .test_report_answer import _count, _pngs

FINAL_SEEDS = 3
SEARCH_BONUS = {"sgd": 0.05}  # on the search seed, sgd looks better than adam ...
FINAL_DROP = {"sgd": 0.30, "adam": 0.10, "adagrad": 0.0}  # ... and is worse on fresh seeds


def _base(lr: float) -> float:
    return 0.9 - 0.05 * (math.log10(lr) + 2.5) ** 2


def val_acc(optimizer: str, lr: float, seed: int) -> float:
    """The fake's last-epoch validation accuracy; adagrad is far below the others."""
    if optimizer == "adagrad":
        return 0.2 + 0.01 * seed
    if seed == 0:  # the search seed
        return _base(lr) + SEARCH_BONUS.get(optimizer, 0.0)
    return _base(lr) - FINAL_DROP[optimizer] + 0.002 * seed


def fake_trial(config: dict[str, Any]) -> dict[str, Any]:
    """Two epochs; sgd diverges above lr 0.05 (so its search has diverged points)."""
    name, lr = config["optimizer"]["name"], config["optimizer"]["params"]["lr"]
    val = val_acc(name, lr, config["seed"])
    rows = [
        {"step": 10, "epoch": 0, "split": "val", "metric": "acc", "layer": "", "value": val - 0.1},
        {"step": 20, "epoch": 1, "split": "val", "metric": "acc", "layer": "", "value": val},
        {"step": 20, "epoch": 1, "split": "test", "metric": "acc", "layer": "", "value": val},
    ]
    status = "diverged" if name == "sgd" and lr > 0.05 else "completed"
    return {"status": status, "metrics": rows, "meta": {}}


def _matrix(optimizers: list[str]) -> str:
    return f"""
name = "tuned-small"
[axes]
dataset = ["moons"]
optimizer = {optimizers!r}
[tune]
budget = 8
seeds = 1
final_seeds = {FINAL_SEEDS}
[tune.search]
optimizer = ["lr"]
"""


def _tuned_store(out: Path, optimizers: list[str]) -> TunePlan:
    plan = loads_matrix(_matrix(optimizers), "m.toml").tune_plan()

    def phase(configs: list[dict[str, Any]], name: str) -> Any:
        return execute(configs, out, workers=1, run_fn=fake_trial, progress=False)

    result = run_tuned(plan, out, phase, note=lambda s: None)
    assert not result.interrupted and not result.pending
    stored = read_plan(out)
    assert stored is not None
    return stored


def _finals_by_technique(plan: TunePlan) -> dict[str, set[str]]:
    """The final ids of each technique's selected lr, chosen here from the fake's formula (the
    search seed's score, sgd's diverged points excluded): not from the code under test."""
    out = {}
    for g in plan.groups:
        ok = [p for p in g.points[0] if g.technique != "sgd" or p["optimizer.lr"] <= 0.05]
        best = max(ok, key=lambda p: val_acc(g.technique, p["optimizer.lr"], 0))
        out[g.technique] = {
            trial_id(g.config(best, seed, plan.follow)) for seed in plan.spec.final_seeds
        }
    return out


@pytest.fixture(scope="module")
def two(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, TunePlan]:
    out = tmp_path_factory.mktemp("tuned") / "two"
    return out, _tuned_store(out, ["sgd", "adam"])


def test_a_tuned_answer_ranks_the_finals_of_the_selected_settings_only(
    two: tuple[Path, TunePlan], tmp_path: Path
) -> None:
    out, plan = two
    finals = _finals_by_technique(plan)
    every_final = set().union(*finals.values())
    ctx = load_context(out, tmp_path / "unused")
    assert ctx is not None
    # the one filter at the input: every ranked table sees exactly the finals
    assert set(ctx.runs["trial_id"]) == every_final
    view = ctx.views["optimizer"].runs
    for tech, ids in finals.items():
        assert set(view.loc[view["_tech"] == tech, "trial_id"]) == ids
    board = ctx.leaderboard
    assert list(board["n_runs"]) == [FINAL_SEEDS, FINAL_SEEDS]
    # ranking by the finals' IQM, computed here from the fake's formula (last epoch = val)
    iqm = {}
    for tech, ids in finals.items():
        g = next(g for g in plan.groups if g.technique == tech)
        point = next(
            p for p in g.points[0] if trial_id(g.config(p, 1, plan.follow)) in ids
        )  # the selected lr
        scores = [val_acc(tech, point["optimizer.lr"], s) for s in plan.spec.final_seeds]
        iqm[tech] = sstats.trim_mean(scores, 0.25)
    assert list(board["technique"]) == sorted(iqm, key=iqm.__getitem__, reverse=True)
    assert list(board["score_iqm"]) == pytest.approx(sorted(iqm.values(), reverse=True))
    head = ctx.headline.iloc[0]
    assert head["best"] == "adam" and head["runner_up"] == "sgd"  # sgd led on the search seed
    assert head["n_runs"] == FINAL_SEEDS
    # the tuning section still sees every search trial
    assert ctx.tuned is not None
    assert ctx.tuned.n_search == len(plan.search_trials()) and ctx.tuned.n_other == 0


def test_the_tuned_page_ranks_finals_and_keeps_the_search_in_the_tuning_section(
    two: tuple[Path, TunePlan], tmp_path: Path
) -> None:
    out, plan = two
    rep = tmp_path / "rep"
    text = build_report(out, rep).read_text(encoding="utf-8")
    every_final = set().union(*_finals_by_technique(plan).values())
    assert set(pd.read_csv(rep / "runs.csv")["trial_id"]) == every_final
    search = pd.read_csv(rep / "tuning_search.csv")
    assert len(search) == len(plan.search_trials()) and (search["status"] != "not run").all()
    finals = pd.read_csv(rep / "tuning_finals.csv").sort_values("val_acc", ascending=False)
    board = pd.read_csv(rep / "leaderboard.csv")
    assert list(board["technique"]) == list(finals["technique"])  # Answer = tuning finals
    assert f"the {len(every_final)} final runs of the selected settings" in text


def _sgd_curve(out: Path, rep: Path) -> pd.DataFrame:
    build_report(out, rep)
    emax = pd.read_csv(rep / "tuning_expected_max.csv")
    return emax[emax["technique"] == "sgd"].reset_index(drop=True)


def test_expected_max_floor_is_the_techniques_own(
    two: tuple[Path, TunePlan], tmp_path: Path
) -> None:
    out, _ = two
    alone = _sgd_curve(out, tmp_path / "a")
    search = pd.read_csv(tmp_path / "a" / "tuning_search.csv")
    sgd = search[search["technique"] == "sgd"]
    finite = sgd["val_score"].dropna()
    n_div = int(sgd["val_score"].isna().sum())
    assert n_div >= 1  # the fake's sgd diverges above lr 0.05
    # n = 1 is the mean with each diverged point at sgd's own worst finite score
    expected = (finite.sum() + n_div * finite.min()) / len(sgd)
    assert alone.loc[0, "dodge_mean"] == pytest.approx(expected)
    assert alone["tang_mean"].iloc[-1] == pytest.approx(finite.max())
    # adding a far worse technique to the matrix leaves sgd's curve where it was
    out3 = tmp_path / "three"
    _tuned_store(out3, ["sgd", "adam", "adagrad"])
    pd.testing.assert_frame_equal(_sgd_curve(out3, tmp_path / "b"), alone)
    page = (tmp_path / "b" / "index.html").read_text(encoding="utf-8")
    assert "worst finite score of the same technique" in page


def test_tuning_figures_use_the_palette_and_a_readable_legend(
    two: tuple[Path, TunePlan], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out, _ = two
    drawn: list[Any] = []
    real = report_figures.figure_png

    def keep(fig: Any) -> bytes:
        drawn.append(fig)
        return real(fig)

    monkeypatch.setattr(report_figures, "figure_png", keep)
    text = build_report(out, tmp_path / "rep").read_text(encoding="utf-8")
    png = _pngs(text)["Expected best validation score"]
    for tech in ("sgd", "adam"):
        assert _count(png, technique_color(tech)) >= 20, tech
    emax = next(f for f in drawn if "search trials n" in [a.get_xlabel() for a in f.axes])
    legends = [*emax.legends, *(a.get_legend() for a in emax.axes if a.get_legend())]
    sizes = [t.get_fontsize() for lg in legends for t in lg.get_texts()]
    assert sizes and min(sizes) >= 8


def test_equal_scores_tie_and_headline_runs_are_the_bests_own(tmp_path: Path) -> None:
    store = tmp_path / "s"
    curves = {"relu": [0.6, 0.9], "tanh": [0.6, 0.9], "sigmoid": [0.5, 0.7]}
    seeds = {"relu": 3, "tanh": 3, "sigmoid": 5}
    for act, n in seeds.items():
        for seed in range(n):
            config = make_config(activation=act, seed=seed)
            config["budget"]["epochs"] = 2
            write_trial(store, config, epoch_rows([v + 0.01 * seed for v in curves[act]]))
    ctx = load_context(store, tmp_path / "unused")
    assert ctx is not None
    board = ctx.leaderboard.set_index("technique")
    assert board.loc["relu", "rank"] == board.loc["tanh", "rank"] == 1
    assert board.loc["sigmoid", "rank"] == 3
    head = ctx.headline.iloc[0]
    assert head["n_runs"] == seeds[head["best"]] == 3  # not the 11 runs compared
    rep = tmp_path / "rep"
    text = build_report(store, rep).read_text(encoding="utf-8")
    assert "ties with" in text and "0 ahead" not in text
    shown = pd.read_csv(rep / "headline.csv")
    assert int(shown.loc[0, "n_runs"]) == 3


def test_a_tuned_store_without_finals_is_refused_in_one_line(
    two: tuple[Path, TunePlan], tmp_path: Path
) -> None:
    import shutil

    from techbench.report.analyze import ReportInputError

    out, plan = two
    copy = tmp_path / "search-only"
    shutil.copytree(out, copy)
    for ids in _finals_by_technique(plan).values():
        for tid in ids:
            shutil.rmtree(copy / "trials" / tid)
    with pytest.raises(ReportInputError, match="no finals of the selected settings"):
        load_context(copy, tmp_path / "unused")


def test_the_page_names_the_techniques_the_learning_curves_leave_out(tmp_path: Path) -> None:
    from .report_fixtures import write_store

    names = ["adagrad", "adam", "adamw", "lion", "momentum", "nadam", "nesterov", "radam",
             "rmsprop", "sgd"]  # fmt: skip
    ceilings = {n: 0.01 * i for i, n in enumerate(names)}  # sgd best ... adagrad worst
    store = tmp_path / "s"
    write_store(
        store, axes={"optimizer": names}, seeds=range(2), ceilings=ceilings, epochs=2, noise=0.0
    )
    text = build_report(store, tmp_path / "rep").read_text(encoding="utf-8")
    assert "the 8 of 10 techniques with the best mean score are drawn" in text
    assert "Not drawn: adagrad, adam (in the tables)" in text


def _outlier_trial(config: dict[str, Any]) -> dict[str, Any]:
    """adam: 0.9 on every final seed but one at 0.1 (mean 0.7, IQM 0.9); sgd: 0.8 everywhere."""
    name, seed = config["optimizer"]["name"], config["seed"]
    val = 0.8 if name == "sgd" else (0.1 if seed == 4 else 0.9)
    rows = [
        {"step": 10, "epoch": 0, "split": "val", "metric": "acc", "layer": "", "value": val},
        {"step": 10, "epoch": 0, "split": "test", "metric": "acc", "layer": "", "value": val},
    ]
    return {"status": "completed", "metrics": rows, "meta": {}}


def test_tuning_finals_are_in_the_answers_order_when_mean_and_iqm_disagree(
    tmp_path: Path,
) -> None:
    text = _matrix(["sgd", "adam"]).replace(f"final_seeds = {FINAL_SEEDS}", "final_seeds = 4")
    plan = loads_matrix(text, "m.toml").tune_plan()
    out = tmp_path / "store"

    def phase(configs: list[dict[str, Any]], name: str) -> Any:
        return execute(configs, out, workers=1, run_fn=_outlier_trial, progress=False)

    assert not run_tuned(plan, out, phase, note=lambda s: None).interrupted
    rep = tmp_path / "rep"
    build_report(out, rep)
    board = pd.read_csv(rep / "leaderboard.csv")
    finals = pd.read_csv(rep / "tuning_finals.csv")
    # IQM over 4 seeds drops one value at each end: adam 0.9 (its 0.1 is cut), sgd 0.8
    assert list(board["technique"]) == ["adam", "sgd"]
    assert list(finals["technique"]) == ["adam", "sgd"]  # by mean it would be sgd first
    assert finals.set_index("technique")["val_acc"].to_dict() == pytest.approx(
        {"adam": 0.7, "sgd": 0.8}
    )
    assert finals.set_index("technique")["score_iqm"].to_dict() == pytest.approx(
        {"adam": 0.9, "sgd": 0.8}
    )
