"""Microbenchmarks of the runner's bookkeeping (no training): matrix loading and expansion,
one atomic trial write, and loading a 50-trial store into DataFrames.

The store rows mimic a demo trial (~350 metric rows: per-step loss, per-epoch metrics, health).
Run with ``pytest benchmarks --benchmark-enable --benchmark-only``.
"""

from __future__ import annotations

import json

import pytest

from techbench.plan.matrix import load_matrix
from techbench.schema import DEFAULT_CONFIG, trial_id
from techbench.store import ResultStore
from techbench.store.reader import load_results


def _outcome(seed: int) -> dict:
    config = json.loads(json.dumps(DEFAULT_CONFIG))
    config["seed"] = seed
    rows = [
        {"step": s, "epoch": s // 9, "split": "train", "metric": "loss", "layer": "", "value": 1.0}
        for s in range(90)
    ]
    rows += [
        {"step": s, "epoch": 0, "split": "health", "metric": m, "layer": str(layer), "value": 0.5}
        for s in range(0, 90, 10)
        for layer in range(3)
        for m in (
            "grad_norm",
            "weight_norm",
            "update_ratio",
            "act_mean",
            "act_std",
            "dead_fraction",
        )
    ]
    meta = {"wall_seconds": 1.0, "train_seconds": 0.8, "device": "cpu", "steps": 90, "epochs": 10}
    return {
        "trial_id": trial_id(config),
        "config": config,
        "status": "completed",
        "metrics": rows,
        "meta": meta,
    }


@pytest.mark.benchmark(group="runner")
def test_bench_load_and_expand_optimizers_matrix(benchmark):
    trials = benchmark(lambda: load_matrix("optimizers").trials())
    assert len(trials) == 120


@pytest.mark.benchmark(group="runner")
def test_bench_store_write_one_trial(benchmark, tmp_path):
    store = ResultStore(tmp_path)
    outcome = _outcome(0)
    benchmark(store.write, outcome, "bench")
    assert store.trial_ids() == [outcome["trial_id"]]


@pytest.mark.benchmark(group="runner")
def test_bench_load_results_50_trials(benchmark, tmp_path):
    store = ResultStore(tmp_path)
    for seed in range(50):
        store.write(_outcome(seed), "bench")
    trials, metrics = benchmark(load_results, tmp_path)
    assert len(trials) == 50 and len(metrics) == 50 * len(_outcome(0)["metrics"])
