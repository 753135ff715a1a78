"""Gradient health over a leading member dimension (the stacked engine's health) against float64
numpy per member, and its cost: one host transfer per snapshot for a whole stack.

Rows of a stacked member equal the one-by-one run's rows (``tests/test_population.py``); here
the statistics of K members at once are checked against each member computed alone in numpy.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from techbench.engine.health import MemberHealth
from techbench.engine.trial import run_stack
from techbench.schema import complete_config

PROPS = {"dead_below": 0.0, "saturation": (0.05, 0.95)}


def _norm(a: np.ndarray) -> float:
    return float(np.sqrt((a.astype(np.float64) ** 2).sum()))


def test_member_statistics_equal_each_member_alone_in_float64() -> None:
    g = torch.Generator().manual_seed(0)
    k = 3
    w0 = [torch.randn(k, 4, 5, generator=g), torch.randn(k, 2, 4, generator=g)]
    bias = torch.randn(k, 4, generator=g)
    grads = [torch.randn(k, 4, 5, generator=g), torch.randn(k, 4, generator=g)]
    grads.append(torch.randn(k, 2, 4, generator=g))
    grads[0][1] *= 10  # members differ in scale
    acts = [torch.relu(torch.randn(k, 6, 4, generator=g) - 0.5), torch.rand(k, 6, 2, generator=g)]
    health = MemberHealth(k, len(acts), PROPS)
    health.start(w0)
    w_before = [w + 0.1 * torch.randn(w.shape, generator=g) for w in w0]
    for i, a in enumerate(acts):
        health.observe(i, a)
    health.before_update(grads, [0, 2], w_before, num_global=3)
    w_after = [w - 0.05 * torch.randn(w.shape, generator=g) for w in w_before]
    values = health.after_update(w_after)
    assert len(values) == k and bias.shape[0] == k
    for m in range(k):
        v = values[m]
        gm = [gr[m].numpy() for gr in grads]
        expected_global = math.sqrt(sum(_norm(x) ** 2 for x in gm))
        assert v["grad_norm_global"][0] == pytest.approx(expected_global, rel=1e-6)
        assert v["nonfinite_grads"] == [0.0]
        assert v["grad_norm"] == pytest.approx([_norm(gm[0]), _norm(gm[2])], rel=1e-6)
        assert v["grad_ratio_first_last"][0] == pytest.approx(_norm(gm[0]) / _norm(gm[2]), 1e-6)
        for i in range(2):
            before, after, init = (t[i][m].double().numpy() for t in (w_before, w_after, w0))
            assert v["weight_norm"][i] == pytest.approx(_norm(after), rel=1e-6)
            assert v["update_ratio"][i] == pytest.approx(
                _norm(after - before) / _norm(before), rel=1e-5
            )
            assert v["dist_from_init"][i] == pytest.approx(_norm(after - init), rel=1e-5)
        for i, a in enumerate(acts):
            y = a[m].double().numpy()  # (N, C): a unit is a column
            assert v["act_mean"][i] == pytest.approx(y.mean(), rel=1e-6)
            assert v["act_std"][i] == pytest.approx(y.std(), rel=1e-5)
            assert v["dead_fraction"][i] == pytest.approx((y.max(axis=0) <= 0).mean())
            assert v["saturated_fraction"][i] == pytest.approx(((y <= 0.05) | (y >= 0.95)).mean())


def test_nonfinite_entries_are_counted_per_member() -> None:
    k = 3
    w = [torch.ones(k, 2, 2)]
    grads = [torch.ones(k, 2, 2), torch.ones(k, 3)]
    grads[0][1, 0, 0] = math.nan
    grads[1][1, :2] = math.inf
    grads[1][2, 0] = math.nan
    health = MemberHealth(k, 0, {})
    health.start(w)
    health.before_update(grads, [0], w)
    values = health.after_update(w)
    assert [v["nonfinite_grads"][0] for v in values] == [0.0, 3.0, 1.0]
    assert math.isfinite(values[0]["grad_norm_global"][0])
    assert all(math.isnan(v["grad_norm_global"][0]) for v in values[1:])


def _count_syncs(monkeypatch) -> dict[str, int]:
    """Counts the tensor methods that move values to the host (each is a synchronisation)."""
    counts = {"n": 0}
    for name in ("tolist", "item", "cpu", "numpy", "__float__", "__bool__", "__int__"):
        original = getattr(torch.Tensor, name)

        def wrapper(self, *a, _original=original, **kw):
            counts["n"] += 1
            return _original(self, *a, **kw)

        monkeypatch.setattr(torch.Tensor, name, wrapper)
    return counts


@pytest.mark.usefixtures("one_thread")
def test_one_host_transfer_per_snapshot_for_the_whole_stack(monkeypatch) -> None:
    base = {
        "dataset": {"name": "moons", "params": {"n_samples": 300}},
        "model": {"name": "mlp", "params": {"depth": 3, "width": 16}},
        "budget": {"epochs": 2, "batch_size": 32, "max_steps": 14},
        "trainer": {"accelerator": "cpu"},
    }
    counts = _count_syncs(monkeypatch)

    def syncs(health: dict) -> tuple[int, list]:
        configs = [complete_config({**base, "seed": s, "health": health}) for s in range(4)]
        counts["n"] = 0
        outcomes = run_stack(configs)
        assert all(o.status == "completed" for o in outcomes)
        return counts["n"], outcomes

    without, _ = syncs({"enabled": False})
    with_health, outcomes = syncs({"enabled": True, "every_n_steps": 5})
    for o in outcomes:
        assert sorted({r["step"] for r in o.metrics if r["split"] == "health"}) == [0, 5, 10]
    assert with_health - without == 3  # 3 snapshots of 4 members, one transfer each
