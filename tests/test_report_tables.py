"""Per-run and aggregated tables against hand-made stores with known curves."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from techbench.report import analyze, tables
from techbench.report.load import load_store

from .report_fixtures import epoch_rows, make_config, table_from_rows, write_store, write_trial


def _runs(out: Path, score: str = "final"):
    trials, metrics = load_store(out)
    return tables.run_table(trials, metrics, score=score).set_index("trial_id")


def test_run_table_hand_curve(tmp_path: Path) -> None:
    cfg = make_config(activation="relu", seed=0)
    val = [0.5, 0.8, 0.95, 0.9]
    rows = epoch_rows(
        val,
        steps_per_epoch=10,
        seconds_per_epoch=2.0,
        train_loss=[1.0, 0.6, 0.3, 0.2],
        val_loss=[1.1, 0.7, 0.5, 0.6],
        train_acc=[0.55, 0.85, 0.97, 0.99],
    )
    rows.append({"step": 5, "epoch": 0, "split": "train", "metric": "loss", "value": 9.0})
    tid = write_trial(tmp_path, cfg, table_from_rows(rows))
    r = _runs(tmp_path).loc[tid]
    assert r["final_metric"] == pytest.approx(0.9)
    assert r["best_metric"] == pytest.approx(0.95)
    assert r["best_epoch"] == 2
    # Target 0.9 is first reached at the third epoch (index 2): step 30, 6 s of training.
    assert r["epochs_to_target"] == 3
    assert r["steps_to_target"] == 30
    assert r["seconds_to_target"] == pytest.approx(6.0)
    assert r["auc"] == pytest.approx(np.mean(val))
    assert r["gap_loss_end"] == pytest.approx(0.2 - 0.6)
    assert r["gap_acc_end"] == pytest.approx(0.99 - 0.9)
    assert r["gap_loss_best"] == pytest.approx(0.3 - 0.5)
    assert r["gap_acc_best"] == pytest.approx(0.97 - 0.95)
    assert r["score"] == pytest.approx(0.9)  # the default rule scores the final epoch
    assert _runs(tmp_path, "best").loc[tid, "score"] == pytest.approx(0.95)


def test_min_mode_target_and_miss(tmp_path: Path) -> None:
    cfg = make_config(target={"metric": "val_loss", "value": 0.55, "mode": "min"})
    rows = epoch_rows([0.1] * 4, val_loss=[1.0, 0.6, 0.5, 0.7])
    hit = write_trial(tmp_path, cfg, table_from_rows(rows))
    cfg2 = make_config(seed=1, target={"metric": "val_loss", "value": 0.1, "mode": "min"})
    miss = write_trial(tmp_path, cfg2, table_from_rows(rows))
    runs = _runs(tmp_path)
    assert runs.loc[hit, "best_metric"] == pytest.approx(0.5)
    assert runs.loc[hit, "epochs_to_target"] == 3
    assert math.isinf(runs.loc[miss, "epochs_to_target"])
    assert math.isinf(runs.loc[miss, "seconds_to_target"])


def test_diverged_and_failed_runs_count_as_misses(tmp_path: Path) -> None:
    ok = write_trial(tmp_path, make_config(seed=0), table_from_rows(epoch_rows([0.95, 0.97])))
    # Diverged after reaching the target: still a miss, and the worst score.
    dv = write_trial(
        tmp_path,
        make_config(seed=1),
        table_from_rows(epoch_rows([0.95])),
        status="diverged",
    )
    # Failed before writing any metric row.
    fl = write_trial(tmp_path, make_config(seed=2), table_from_rows([]), status="failed")
    runs = _runs(tmp_path)
    assert set(runs.index) == {ok, dv, fl}
    assert runs.loc[ok, "epochs_to_target"] == 1
    for tid in (dv, fl):
        assert math.isinf(runs.loc[tid, "epochs_to_target"])
        assert runs.loc[tid, "score"] == 0.0
    summary = tables.technique_table(runs.reset_index(), [])
    assert summary.loc[0, "n_runs"] == 3
    assert summary.loc[0, "n_diverged"] == 1 and summary.loc[0, "n_failed"] == 1
    assert summary.loc[0, "hit_rate"] == pytest.approx(1 / 3)


def test_health_summaries(tmp_path: Path) -> None:
    rows = epoch_rows([0.5, 0.6])
    for step, (g0, g1, glob, bad) in enumerate([(4.0, 1.0, 3.0, 0), (9.0, 1.0, 5.0, 2)]):
        s = step * 10
        for layer, g, dead in (("0", g0, 0.2), ("1", g1, 0.4)):
            rows += [
                {"step": s, "epoch": 0, "split": "health", "metric": "grad_norm", "layer": layer,
                 "value": g},
                {"step": s, "epoch": 0, "split": "health", "metric": "dead_fraction",
                 "layer": layer, "value": dead},
                {"step": s, "epoch": 0, "split": "health", "metric": "saturated_fraction",
                 "layer": layer, "value": 0.0},
            ]  # fmt: skip
        rows.append({"step": s, "epoch": 0, "split": "health", "metric": "grad_norm_global",
                     "value": glob})  # fmt: skip
        rows.append({"step": s, "epoch": 0, "split": "health", "metric": "nonfinite_grads",
                     "value": bad})  # fmt: skip
    tid = write_trial(tmp_path, make_config(), table_from_rows(rows))
    r = _runs(tmp_path).loc[tid]
    assert r["grad_norm_median"] == pytest.approx(4.0)
    assert r["grad_norm_p90"] == pytest.approx(np.quantile([3.0, 5.0], 0.9))
    assert r["layer_grad_ratio"] == pytest.approx(np.median([4.0, 9.0]))
    assert r["dead_fraction"] == pytest.approx(0.3)
    assert r["nonfinite_share"] == pytest.approx(0.5)


def test_health_summaries_of_200_trials_without_saturating_activations() -> None:
    """Over 127 trials the trial-id categories need 16-bit codes; a health metric no trial
    recorded (GELU never saturates) must not break the table (it did: pandas' int8/int16 codes
    mismatch), and every trial's median is numpy's."""
    import pandas as pd

    rng = np.random.default_rng(0)
    ids = [f"t{i:03d}" for i in range(200)]
    values = rng.uniform(0.5, 2.0, size=(200, 3))
    rows = [
        {"trial_id": t, "epoch": 0, "split": "health", "metric": m, "step": s, "layer": layer,
         "value": float(values[i, s]) if m != "nonfinite_grads" else 0.0}
        for i, t in enumerate(ids)
        for s in range(3)
        for m, layer in (("grad_norm_global", ""), ("grad_norm", "0"), ("nonfinite_grads", ""))
    ]  # fmt: skip
    metrics = pd.DataFrame(rows)
    metrics["trial_id"] = metrics["trial_id"].astype("category")
    metrics["layer"] = metrics["layer"].astype("category")
    health = tables._health(metrics)
    assert list(health.index) == ids
    assert health["grad_norm_median"].to_numpy() == pytest.approx(np.median(values, axis=1))
    assert health["saturated_fraction"].isna().all()


def test_technique_table_and_improvement(tmp_path: Path) -> None:
    write_store(
        tmp_path,
        axes={"activation": ["relu", "tanh"], "initializer": ["he_normal", "xavier_normal"]},
        datasets=["digits", "moons"],
        seeds=range(5),
        ceilings={"relu": 0.15},
        epochs=4,
    )
    trials, metrics = load_store(tmp_path)
    runs = tables.run_table(trials, metrics)
    axes = tables.varying_axes(trials)
    assert axes == ["activation", "initializer"]
    tech = tables.technique_table(runs, axes).set_index(["axis", "technique"])
    assert tech.loc[("activation", "relu"), "n_runs"] == 20
    assert tech.loc[("activation", "relu"), "n_datasets"] == 2
    assert (
        tech.loc[("activation", "relu"), "score_iqm"]
        > tech.loc[("activation", "tanh"), "score_ci_high"]
    )
    assert not tech["few_seeds"].any()
    poi = analyze.improvement_table(runs, axes, ["tanh"])
    assert poi.loc[0, "technique"] == "relu" and poi.loc[0, "p_improvement"] == 1.0
    # 2 datasets x 2 initializers = 4 contexts.
    assert poi.loc[0, "n_contexts"] == 4
    with pytest.raises(analyze.ReportInputError):
        analyze.improvement_table(runs, axes, ["selu"])
    flags = analyze.best_flags(runs)
    best = flags[flags["is_best"]]
    assert set(best["config"].str.contains("relu")) == {True}
    worse = flags[flags["config"].str.contains("tanh")]
    assert not worse["indistinguishable"].any()
