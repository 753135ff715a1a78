"""The report's scaling section: the shared-exponent fit against a synthetic ladder with known
E, alpha and A_t, the multiplier against its defining equation solved numerically, rank
correlations against ``scipy.stats.kendalltau``, the lr drift against an optimum placed by
hand, and a whole report built from a synthetic ladder store."""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from scipy import optimize
from scipy import stats as sstats

from techbench.report import build_report
from techbench.report.build import load_context
from techbench.report.scaling import (
    cell_points,
    final_values,
    pick_baseline,
    rank_correlations,
    select_settings,
    winner_sentences,
)
from techbench.report.scaling_fit import FLAT_NOTE, fit_shared, fit_table, multiplier
from techbench.report.scaling_lr import best_lrs, drift_sentences, lr_curves, lr_drift
from techbench.report.scaling_section import scaling
from techbench.store import ResultStore

from .report_fixtures import epoch_rows, make_config, write_trial

E_TRUE, ALPHA_TRUE = 1.5, 0.35
A_TRUE = {"a": 8.0, "b": 6.0, "c": 11.0}


def _ladder(noise: float, seeds: int = 5, rungs: int = 5, seed: int = 1) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for t, a in A_TRUE.items():
        for r in range(rungs):
            n = 1e4 * 2.0**r
            for _ in range(seeds):
                loss = (E_TRUE + a * n**-ALPHA_TRUE) * math.exp(noise * rng.standard_normal())
                rows.append({"technique": t, "rung": r, "num_parameters": n, "value": loss})
    return pd.DataFrame(rows)


def test_the_fit_recovers_a_synthetic_ladder_with_known_exponent_and_factors() -> None:
    table, fit = fit_table(_ladder(noise=0.005), "num_parameters", "a", n_resamples=100)
    assert fit is not None
    assert fit.e == pytest.approx(E_TRUE, abs=0.05)
    assert fit.alpha == pytest.approx(ALPHA_TRUE, abs=0.05)
    rows = table.set_index("technique")
    for t, a in A_TRUE.items():
        truth = (A_TRUE["a"] / a) ** (1 / ALPHA_TRUE)
        assert rows.loc[t, "multiplier"] == pytest.approx(truth, rel=0.05)
        assert rows.loc[t, "multiplier_ci_low"] <= truth <= rows.loc[t, "multiplier_ci_high"]
    assert rows.loc["a", "multiplier"] == 1.0
    assert rows.loc["b", "multiplier"] > 1 > rows.loc["c", "multiplier"]  # b better, c worse


def test_the_fit_is_exact_on_noiseless_points() -> None:
    fit = fit_shared(*(_ladder(noise=0.0, seeds=1)[c] for c in ("num_parameters", "value",
                                                                 "technique")))  # fmt: skip
    assert fit is not None and fit.rmse < 1e-8
    assert fit.alpha == pytest.approx(ALPHA_TRUE, rel=1e-5)
    for t, a in A_TRUE.items():
        assert fit.a[t] == pytest.approx(a, rel=1e-4)


def test_the_multiplier_solves_its_defining_equation() -> None:
    """m from the closed form equals the root of E + A_b (m N)^-a = E + A_t N^-a at any N."""
    e, alpha, a_base, a_t = 1.2, 0.3, 9.0, 5.0
    for n in (1e3, 1e6):
        target = e + a_t * n**-alpha

        def gap(m: float, n: float = n, target: float = target) -> float:
            return e + a_base * (m * n) ** -alpha - target

        root = optimize.brentq(gap, 1e-3, 1e6)
        assert multiplier(a_base, a_t, alpha) == pytest.approx(root, rel=1e-9)


def test_two_sizes_do_not_identify_the_fit() -> None:
    assert fit_shared(*(_ladder(0.01, rungs=2)[c] for c in ("num_parameters", "value",
                                                            "technique"))) is None  # fmt: skip


def _points(medians: dict[int, dict[str, float]]) -> pd.DataFrame:
    rows = [
        {"dataset": "d", "technique": t, "rung": r, "setting": t, "seed": s, "value": m + 1e-3 * s,
         "num_parameters": 1e3 * 2**r, "compute": np.nan, "width_mult": 2.0**r}
        for r, per in medians.items() for t, m in per.items() for s in range(5)
    ]  # fmt: skip
    return pd.DataFrame(rows)


def test_rank_correlation_between_rungs_is_scipys_kendall_tau() -> None:
    medians = {
        0: {"a": 1.0, "b": 2.0, "c": 3.0, "d": 4.0, "e": 4.0},
        1: {"a": 2.0, "b": 1.0, "c": 3.0, "d": 5.0, "e": 4.0},
        2: {"a": 4.0, "b": 3.0, "c": 2.0, "d": 1.0, "e": 1.0},
    }
    frame = select_settings(_points(medians))
    points, boots = cell_points(frame, n_resamples=300)
    corr = rank_correlations(points, boots)
    assert len(corr) == 3
    for row in corr.itertuples():
        techs = sorted(medians[row.rung_a])
        x = [points.query(f"rung == {row.rung_a} and technique == @t")["median"].iat[0]
             for t in techs]  # fmt: skip
        y = [points.query(f"rung == {row.rung_b} and technique == @t")["median"].iat[0]
             for t in techs]  # fmt: skip
        assert row.tau == pytest.approx(sstats.kendalltau(x, y).statistic, abs=1e-12)
        assert -1 <= row.ci_low <= row.ci_high <= 1
    text = winner_sentences(points, corr)[0]
    assert "the smallest rung's winner (a, rung 0) is not the largest rung's winner (d = e" in text


def test_a_diverged_seed_is_worst_and_a_diverged_majority_makes_the_median_infinite() -> None:
    frame = _points({0: {"a": 1.0, "b": 2.0}})
    frame.loc[(frame["technique"] == "a") & (frame["seed"] < 2), "value"] = np.nan
    frame.loc[(frame["technique"] == "b") & (frame["seed"] < 3), "value"] = np.nan
    points, _ = cell_points(select_settings(frame), n_resamples=200)
    p = points.set_index("technique")
    assert p.loc["a", "median"] == pytest.approx(np.median([1.002, 1.003, 1.004, np.inf, np.inf]))
    assert math.isinf(p.loc["b", "median"]) and list(p["n_diverged"]) == [2, 3]
    assert p.loc["a", "ci_low"] <= p.loc["a", "median"] <= p.loc["a", "ci_high"]


def test_the_setting_of_lowest_median_represents_its_technique_at_a_rung() -> None:
    frame = pd.concat(
        [_points({0: {"a": 2.0}}).assign(setting="a(lr=0.1)"),
         _points({0: {"a": 1.0}}).assign(setting="a(lr=0.01)")]
    )  # fmt: skip
    chosen = select_settings(frame)
    assert set(chosen["setting"]) == {"a(lr=0.01)"} and set(chosen["n_settings"]) == {2}


def _placed(width: float, tech: str, lr: float) -> float:
    """Loss with its optimum at 0.04 / width (standard) or at 0.01 at every width (mup)."""
    best = 0.04 / width if tech == "standard" else 0.01
    return 1.0 + 0.1 / width + 0.05 * math.log2(lr / best) ** 2


def _lr_frame() -> pd.DataFrame:
    rows = []
    for tech in ("standard", "mup"):
        for rung in range(4):
            w = 2.0**rung
            for k in range(6):
                lr = 0.0025 * 2**k
                for s in range(3):
                    rows.append({"dataset": "d", "technique": tech, "rung": rung, "lr": lr,
                                 "setting": f"x(lr={lr})", "seed": s, "width_mult": w,
                                 "num_parameters": 1e3 * w * w,
                                 "value": _placed(w, tech, lr) + 1e-4 * s})  # fmt: skip
    return pd.DataFrame(rows)


def test_the_lr_drift_is_the_placed_optimums_ratio() -> None:
    best = best_lrs(lr_curves(_lr_frame()))
    for r in best.itertuples():
        expected = 0.04 / r.width_mult if r.technique == "standard" else 0.01
        assert r.best_lr == pytest.approx(expected) and r.n_lrs == 6 and not r.at_edge
    drift = lr_drift(best).set_index("technique")
    assert drift.loc["standard", "drift"] == pytest.approx(1 / 8)
    assert drift.loc["mup", "drift"] == pytest.approx(1.0)
    assert drift.loc["mup", "width_ratio"] == 8.0


def test_a_best_lr_at_the_grid_edge_is_flagged() -> None:
    frame = _lr_frame()
    frame = frame[~((frame["technique"] == "standard") & (frame["lr"] > 0.03))]  # cut 0.04, 0.08
    best = best_lrs(lr_curves(frame)).set_index(["technique", "rung"])
    assert best.loc[("standard", 0), "at_edge"] and best.loc[("standard", 0), "best_lr"] == 0.02
    assert lr_drift(best.reset_index()).set_index("technique").loc["standard", "at_edge"]


def test_the_baseline_is_the_matrix_first_or_the_named_one() -> None:
    order = ["sgd · standard", "sgd · mup", "adam · standard", "adam · mup"]
    assert pick_baseline(order, [])[0] == "sgd · standard"
    assert pick_baseline(order, ["adam"])[0] == "adam · standard"
    assert pick_baseline(order, ["adam(lr=0.1)"])[0] == "adam · standard"
    assert pick_baseline(order, ["mup"])[0] == "sgd · mup"


def test_final_values_read_the_loss_for_an_accuracy_target_and_the_target_when_minimised(
    tmp_path: Path,
) -> None:
    store = tmp_path / "s"
    for target in ("val_acc", "val_loss"):
        config = make_config(seed=0 if target == "val_acc" else 1)
        mode = "max" if target == "val_acc" else "min"
        config["target"] = {"metric": target, "value": 0.5 if mode == "max" else 0.1, "mode": mode}
        write_trial(store, config, epoch_rows([0.5, 0.6], val_loss=[2.0, 1.5]))
    ctx = load_context(store, tmp_path / "r")
    assert ctx is not None
    for target in ("val_acc", "val_loss"):
        runs = ctx.runs[ctx.runs["target_metric"] == target]
        values, name, _ = final_values(runs, ctx.curves)
        assert name == "val_loss" and list(values) == [1.5]
    values, name, text = final_values(ctx.runs[ctx.runs["target_metric"] == "val_acc"], ctx.curves)
    assert "higher-is-better" in text


OPTIMUM = {"sgd": lambda w: 0.04 / w, "adam": lambda w: 0.01}
A_OPT = {"sgd": 4.0, "adam": 2.5}


def _loss(opt: str, rung: int, lr: float, seed: int) -> float:
    """sgd's optimum falls as 1/width, adam's stays; ``adam<i>`` (a name to escape) is adam."""
    opt = opt.removesuffix("<i>")
    w = 2.0**rung
    n = 1000.0 * w * w
    base = E_TRUE + A_OPT[opt] * n**-ALPHA_TRUE
    rng = np.random.default_rng(1000 * rung + 10 * seed + len(opt))
    return base * (1 + 0.05 * math.log2(lr / OPTIMUM[opt](w)) ** 2) * (1 + 1e-3 * rng.random())


def _write_ladder(
    store: Path,
    opts: tuple[str, ...] = ("sgd", "adam<i>"),
    loss: Callable[[str, int, float, int], float] = _loss,
    status: str = "completed",
) -> Path:
    """A ladder of 4 rungs (width 16 to 128) x 6 lrs x 3 seeds per optimizer, final val loss
    ``loss(opt, rung, lr, seed)``."""
    for opt in opts:
        for rung in range(4):
            w = 2**rung
            for k in range(6):
                lr = 0.0025 * 2**k
                for seed in range(3):
                    config = make_config(
                        model=("mlp", {"width": 16 * w}), optimizer=(opt, {"lr": lr}), seed=seed
                    )
                    config["budget"]["epochs"] = 2
                    value = loss(opt, rung, lr, seed)
                    n = 1000 * w * w
                    meta = {"rung": rung, "width_mult": float(w), "num_parameters": n,
                            "compute": 6.0 * n * 1e4}  # fmt: skip
                    rows = epoch_rows([0.5, 0.6], val_loss=[value + 0.5, value])
                    write_trial(store, config, rows, status=status, meta=meta)
    ResultStore(store).write_matrix({"name": "ladder", "axes": {"optimizer": list(opts)}})
    return store


@pytest.fixture(scope="module")
def ladder_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _write_ladder(tmp_path_factory.mktemp("scaling") / "store")


def test_a_ladder_report_has_the_scaling_section_and_its_csvs(
    ladder_store: Path, tmp_path: Path
) -> None:
    page = build_report(ladder_store, tmp_path / "report")
    text = page.read_text()
    assert '<section id="scaling">' in text
    out = page.parent
    fit = pd.read_csv(out / "scaling_fit.csv")
    params = fit[fit["x"] == "num_parameters"].set_index("technique")
    truth = (A_OPT["sgd"] / A_OPT["adam"]) ** (1 / ALPHA_TRUE)  # sgd is the baseline
    assert params.loc["adam<i>", "multiplier"] == pytest.approx(truth, rel=0.1)
    assert set(fit["baseline"]) == {"sgd"} and set(fit["x"]) == {"num_parameters", "compute"}
    drift = pd.read_csv(out / "scaling_lr_drift.csv").set_index("technique")
    assert drift.loc["sgd", "drift"] == pytest.approx(1 / 8)
    assert drift.loc["adam<i>", "drift"] == pytest.approx(1.0)
    points = pd.read_csv(out / "scaling_points.csv")
    assert len(points) == 8 and set(points["n_settings"]) == {6} and set(points["n_runs"]) == {3}
    corr = pd.read_csv(out / "scaling_rank_correlation.csv")
    assert len(corr) == 6 and (corr["tau"] == 1.0).all()  # adam<i> wins every rung
    for name in ("scaling_ranks.csv", "scaling_lr.csv", "scaling_lr_best.csv"):
        assert not pd.read_csv(out / name).empty
    section = text.split('<section id="scaling">', 1)[1].split("</section>", 1)[0]
    assert "adam&lt;i&gt;" in section and "<i>" not in section
    assert "the smallest rung&#x27;s winner (adam&lt;i&gt;, rung 0) is the largest" in section
    assert len(re.findall(r"<img ", section)) == 3


def test_the_section_is_absent_without_rungs(tmp_path: Path) -> None:
    store = tmp_path / "s"
    for opt in ("sgd", "adam"):
        write_trial(store, make_config(optimizer=opt), epoch_rows([0.5, 0.6]))
    ctx = load_context(store, tmp_path / "r")
    assert ctx is not None and scaling(ctx).blocks == []


def _tuned_fake(config: dict[str, Any]) -> dict[str, Any]:
    """A tuned ladder's trial: rung from the model's width, loss optimal at ``OPTIMUM``."""
    opt, lr = config["optimizer"]["name"], config["optimizer"]["params"]["lr"]
    w = config["model"]["params"]["width"] // 16
    loss = _loss(opt, int(math.log2(w)), lr, config["seed"])
    rows = [
        {"step": 10 * (e + 1), "epoch": e, "split": "val", "metric": m, "layer": "", "value": v}
        for e in (0, 1)
        for m, v in (("loss", loss + 0.5 * (1 - e)), ("acc", math.exp(-loss - 0.5 * (1 - e))))
    ]
    n = 1000 * w * w
    meta = {"rung": int(math.log2(w)), "width_mult": float(w), "num_parameters": n,
            "compute": 6.0 * n * 1e4}  # fmt: skip
    return {"status": "completed", "metrics": rows, "meta": meta}


TUNED = """
name = "tuned-ladder"
[axes]
dataset = ["moons"]
model = { name = "mlp", width = [16, 32, 64, 128] }
optimizer = ["sgd", "adam"]
[tune]
budget = 6
seeds = 1
final_seeds = 2
[tune.search]
optimizer = ["lr"]
"""


def test_a_retuned_ladder_draws_its_lr_curves_from_the_search_trials(tmp_path: Path) -> None:
    """Every rung is a tuning context (retuned): the best lr per rung is the search point the
    fake's formula ranks first, and the finals (one lr per rung) draw no curve of their own."""
    from techbench.execute.local import execute
    from techbench.plan.matrix import loads_matrix
    from techbench.plan.tune import read_plan, run_tuned

    plan = loads_matrix(TUNED, "m.toml").tune_plan()
    out = tmp_path / "store"

    def phase(configs: list[dict[str, Any]], name: str) -> Any:
        return execute(configs, out, workers=1, run_fn=_tuned_fake, progress=False)

    run_tuned(plan, out, phase, note=lambda s: None)
    stored = read_plan(out)
    assert stored is not None
    expected = {}
    for g in stored.groups:
        point = g.points[0][0]  # any point: the group's config fixes the width
        rung = int(math.log2(g.config(point, 0, stored.follow)["model"]["params"]["width"] // 16))
        lrs = [p["optimizer.lr"] for p in g.points[0]]
        expected[(g.technique, rung)] = min(lrs, key=lambda lr: _loss(g.technique, rung, lr, 0))
    page = build_report(out, tmp_path / "report")
    best = pd.read_csv(page.parent / "scaling_lr_best.csv")
    got = {(r.technique, r.rung): r.best_lr for r in best.itertuples()}
    assert got == pytest.approx(expected)
    assert set(best["n_lrs"]) == {6}
    assert "the tuned store&#x27;s search trials" in page.read_text()


def test_two_rungs_are_ranked_but_not_fitted(tmp_path: Path) -> None:
    store = tmp_path / "s"
    for opt in ("sgd", "adam"):
        for rung in (0, 1):
            for seed in (0, 1):
                config = make_config(model=("mlp", {"width": 16 << rung}), optimizer=opt,
                                     seed=seed)  # fmt: skip
                loss = _loss(opt, rung, OPTIMUM[opt](2.0**rung), seed)
                meta = {"rung": rung, "num_parameters": 1000 * 4**rung}
                write_trial(store, config, epoch_rows([0.5], val_loss=[loss]), meta=meta)
    ctx = load_context(store, tmp_path / "r")
    assert ctx is not None
    section = scaling(ctx)
    text = "".join(section.blocks)
    assert "No fit: it needs at least 3 rungs" in text and section.csvs["scaling_fit.csv"].empty
    corr = section.csvs["scaling_rank_correlation.csv"]
    assert list(corr["tau"]) == [1.0] and "scaling_lr.csv" not in section.csvs


def test_a_technique_whose_loss_does_not_fall_with_size_gets_no_multiplier() -> None:
    """A third technique whose loss rises with N (from E at the smallest rung) drives its A_t to
    the floor: its multiplier is NaN and flagged, and a and b are still recovered (the law's
    multiplier from the true factors) with the flat technique left out of the fit."""
    ladder = _ladder(noise=0.005)
    rng = np.random.default_rng(2)
    rising = ladder[ladder["technique"] == "a"].assign(technique="up")
    rising["value"] = E_TRUE * (rising["num_parameters"] / 1e4) ** 0.05
    rising["value"] *= np.exp(0.005 * rng.standard_normal(len(rising)))
    frame = pd.concat([ladder[ladder["technique"] != "c"], rising], ignore_index=True)
    table, fit = fit_table(frame, "num_parameters", "a", n_resamples=50)
    rows = table.set_index("technique")
    assert fit is not None and "up" not in fit.a
    assert math.isnan(rows.loc["up", "multiplier"]) and rows.loc["up", "note"] == FLAT_NOTE
    assert math.isnan(rows.loc["up", "multiplier_ci_low"])
    truth = (A_TRUE["a"] / A_TRUE["b"]) ** (1 / ALPHA_TRUE)
    assert rows.loc["b", "multiplier"] == pytest.approx(truth, rel=0.05)
    assert fit.alpha == pytest.approx(ALPHA_TRUE, abs=0.05)


def test_the_multiplier_is_nan_for_a_factor_that_is_not_positive() -> None:
    assert math.isnan(multiplier(8.0, 0.0, 0.35)) and math.isnan(multiplier(8.0, math.inf, 0.35))
    assert math.isnan(multiplier(8.0, 1e-300, 1e-3))  # (8e300)^1000 overflows


def _rising(opt: str, rung: int, lr: float, seed: int) -> float:
    """sgd and adam<i> as :func:`_loss`; ``flat``: loss rising with size from E."""
    if opt != "flat":
        return _loss(opt, rung, lr, seed)
    return E_TRUE * 1.05**rung * (1 + 0.05 * math.log2(lr / 0.01) ** 2)


def test_a_ladder_with_a_technique_whose_loss_rises_with_size_builds_a_report(
    tmp_path: Path,
) -> None:
    store = _write_ladder(tmp_path / "s", ("sgd", "adam<i>", "flat"), _rising)
    page = build_report(store, tmp_path / "report")
    fit = pd.read_csv(page.parent / "scaling_fit.csv")
    params = fit[fit["x"] == "num_parameters"].set_index("technique")
    assert math.isnan(params.loc["flat", "multiplier"]) and params.loc["flat", "note"] == FLAT_NOTE
    truth = (A_OPT["sgd"] / A_OPT["adam"]) ** (1 / ALPHA_TRUE)
    assert params.loc["adam<i>", "multiplier"] == pytest.approx(truth, rel=0.1)
    section = page.read_text().split('<section id="scaling">', 1)[1].split("</section>", 1)[0]
    assert "flat: " + FLAT_NOTE in section


def test_a_ladder_whose_runs_all_diverged_builds_a_report(tmp_path: Path) -> None:
    store = _write_ladder(tmp_path / "s", ("sgd", "adam"), lambda *a: math.nan, "diverged")
    page = build_report(store, tmp_path / "report")
    points = pd.read_csv(page.parent / "scaling_points.csv")
    assert len(points) == 8 and not np.isfinite(points["median"]).any()
    assert "No fit: it needs at least 3 rungs" in page.read_text()
    assert pd.read_csv(page.parent / "scaling_lr_best.csv")["best_lr"].isna().all()


def test_a_rung_where_every_lr_diverged_has_no_best_lr_and_is_left_out_of_the_drift() -> None:
    frame = _lr_frame()
    frame.loc[(frame["technique"] == "standard") & (frame["rung"] == 3), "value"] = np.nan
    best = best_lrs(lr_curves(frame)).set_index(["technique", "rung"])
    assert math.isnan(best.loc[("standard", 3), "best_lr"])
    assert not best.loc[("standard", 3), "at_edge"]
    drift = lr_drift(best.reset_index()).set_index("technique")
    assert drift.loc["standard", "drift"] == pytest.approx(1 / 4)  # 0.04/4 over 0.04/1
    assert drift.loc["standard", "rung_large"] == 2
    assert drift.loc["mup", "drift"] == pytest.approx(1.0)
    text = " ".join(drift_sentences(drift.reset_index()))
    assert "standard: " in text and "rung 3 left out: every lr diverged" in text
