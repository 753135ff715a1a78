"""The curvature probe in the engine, its config, the optimizers' declared thresholds and the
report's curvature section, against independent sources: the exact Hessian (float64,
``torch.autograd.functional.hessian``), the same trials run alone, optimizers run on a
quadratic, and hand-made probe rows."""

from __future__ import annotations

import math

import pandas as pd
import pytest
import torch

from techbench.engine import curvature_probe
from techbench.engine.trial import run_stack, run_trial
from techbench.plan.matrix import MatrixError, load_matrix
from techbench.report import curvature as report_curvature
from techbench.schema import CURVATURE_DEFAULTS, DEFAULT_CONFIG, complete_config, trial_id
from techbench.techniques.registry import get_spec
from techbench.testing.curvature import check_engine_probe, check_sharpness

SMALL = {
    "model": {"name": "mlp", "params": {"depth": 2, "width": 16}},
    "budget": {"epochs": 1, "batch_size": 64},
    "trainer": {"accelerator": "cpu"},
}
PROBE = {"every_n_steps": 4, "iterations": 20, "batch": 96}


def _curvature_rows(outcome):
    assert outcome.status == "completed", outcome.meta.error
    return [r for r in outcome.metrics if r["split"] == "curvature"]


@pytest.mark.parametrize(
    "optimizer",
    [{"name": "sgd", "params": {"lr": 0.05}}, {"name": "adam", "params": {"lr": 0.003}}],
)
def test_stack_equals_trials_alone(optimizer):
    """Member i of a stack records the rows trial i records alone (its own probe batch, start
    vector, preconditioner and lr), within float tolerance; different seeds differ."""
    configs = [
        {**SMALL, "optimizer": optimizer, "seed": s, "health": {"curvature": PROBE}}
        for s in range(3)
    ]
    stacked = run_stack(configs)
    for config, member in zip(configs, stacked, strict=True):
        alone = _curvature_rows(run_trial(config))
        rows = _curvature_rows(member)
        assert [(r["step"], r["metric"]) for r in rows] == [(r["step"], r["metric"]) for r in alone]
        for a, b in zip(rows, alone, strict=True):
            assert a["value"] == pytest.approx(b["value"], rel=1e-4), (a, b)
        assert member.meta.curvature_probes == len({r["step"] for r in rows})
        assert member.meta.curvature_overhead > 0
    firsts = [_curvature_rows(o)[0]["value"] for o in stacked]
    assert len(set(firsts)) == 3


def test_rows_and_thresholds():
    """SGD records sharpness and 2/lr; momentum (2 + 2 mu)/lr; Adam the preconditioned
    sharpness (only) and (2 + 2 beta1)/((1 - beta1) lr); a decaying schedule moves the threshold with
    the current lr; steps 0, 4, 8, ..."""
    cases = [
        ({"name": "sgd", "params": {"lr": 0.05}}, "threshold", 2 / 0.05),
        ({"name": "momentum", "params": {"lr": 0.01, "momentum": 0.5}}, "threshold", 3 / 0.01),
        ({"name": "adam", "params": {"lr": 0.002}}, "precond_threshold", 19 * 2 / 0.002),
    ]
    for optimizer, name, expected in cases:
        rows = _curvature_rows(
            run_trial({**SMALL, "optimizer": optimizer, "health": {"curvature": PROBE}})
        )
        by = {(r["step"], r["metric"]): r["value"] for r in rows}
        steps = sorted({r["step"] for r in rows})
        assert steps == list(range(0, steps[-1] + 1, 4))
        assert by[(0, name)] == pytest.approx(expected)
        preconditioned = name == "precond_threshold"  # then instead of the plain sharpness
        assert by[(0, "precond_sharpness" if preconditioned else "sharpness")] > 0
        assert ((0, "sharpness") in by) != preconditioned
    decay = {"name": "step", "params": {"step_size": 4, "gamma": 0.5}}
    rows = _curvature_rows(
        run_trial(
            {**SMALL, "optimizer": cases[0][0], "schedule": decay, "health": {"curvature": PROBE}}
        )
    )
    thresholds = [r["value"] for r in rows if r["metric"] == "threshold"]
    assert thresholds[:3] == pytest.approx([40.0, 80.0, 160.0])  # lr halves every 4 steps


def test_probe_matches_exact_hessian_in_a_stack_of_8():
    """Acceptance: the probe's top eigenvalue within 1% of the exact one, per member of a
    stack of 8 tiny float64 MLPs with different seeds."""
    error = check_sharpness()
    print(f"stack of 8, float64: max relative error {error:.2e}")
    assert error < 0.01


def test_engine_probe_is_the_hessian_of_the_task_loss():
    """The engine's step-0 sharpness equals the exact Hessian's top eigenvalue of the task
    loss at the trial's weights on its probe batch (float64 trials in a stack)."""
    error = check_engine_probe()
    print(f"engine probe against exact: max relative error {error:.2e}")
    assert error < 0.01


def _power_without_renormalisation(loss, params, batch, iterations=20):
    """Planted bug: power iteration that never re-normalises and reads the eigenvalue as
    ||H^t v|| / ||H^(t-1) v|| only from the unnormalised first vector."""
    from techbench.engine.curvature import StackedHessian

    hessian = StackedHessian(loss, params, batch)
    v = torch.ones(hessian.shape, dtype=hessian.dtype)
    for _ in range(iterations):
        v = hessian(v)  # no v / ||v||
    return ((v * hessian(v)).sum(-1) / (v * v).sum(-1).sqrt(),)


def test_planted_bugs_fail_the_conformance_checks(monkeypatch):
    """A probe without re-normalisation fails check_sharpness; an engine probe of the wrong
    loss (the summed instead of the mean loss) fails check_engine_probe."""
    with pytest.raises(AssertionError, match="stacked sharpness"):
        check_sharpness(_power_without_renormalisation)
    right = curvature_probe.probe_loss

    def summed(base, loss_fn, buffer_names):
        inner = right(base, loss_fn, buffer_names)
        return lambda params, *data: inner(params, *data) * data[-1].shape[0]

    monkeypatch.setattr(curvature_probe, "probe_loss", summed)
    with pytest.raises(AssertionError, match="engine step-0 sharpness"):
        check_engine_probe()


def test_warm_start_converges_in_fewer_steps():
    """Along a training run, probes after the first start from the previous Ritz vector and
    stop at convergence in fewer Lanczos steps than the first one; their values stay within
    1% of a cold 30-step Lanczos at the same weights."""
    import techbench.engine.curvature as curvature

    seen = []
    original = curvature.lanczos_top

    def spy(operator, shape, iterations, dtype, device, generator=None, start=None, tol=None):
        answer = original(operator, shape, iterations, dtype, device, generator, start, tol)
        cold = original(operator, shape, 30, dtype, device)
        seen.append((int(answer.steps[0]), float(answer.values[0]), float(cold.values[0])))
        return answer

    curvature.lanczos_top = spy
    try:
        config = {**SMALL, "optimizer": {"name": "sgd", "params": {"lr": 0.1}}}
        config["budget"] = {"epochs": 3, "batch_size": 64}
        run_trial({**config, "health": {"curvature": {**PROBE, "every_n_steps": 10}}})
    finally:
        curvature.lanczos_top = original
    assert len(seen) >= 5
    first, later = seen[0][0], [s for s, _, _ in seen[1:]]
    print("Lanczos steps per probe:", [s for s, _, _ in seen])
    assert sum(later) / len(later) < first
    for _, warm, cold in seen:
        assert warm == pytest.approx(cold, rel=0.01)


@pytest.mark.parametrize(
    ("name", "hp"),
    [
        ("sgd", {}),
        ("momentum", {"momentum": 0.9, "dampening": 0.0}),
        ("momentum", {"momentum": 0.5, "dampening": 0.3}),
        ("nesterov", {"momentum": 0.9}),
    ],
)
def test_declared_threshold_is_where_the_optimizer_diverges(name, hp):
    """On f(x) = a x^2 / 2 the optimizer (its own fast implementation) converges at
    a = 0.95 constant / lr and diverges at a = 1.05 constant / lr."""
    spec = get_spec(name, "optimizer")
    lr = 0.1
    rule = spec.properties_for({"lr": lr, **hp})["stability"]
    assert not rule.preconditioned
    for factor, diverges in ((0.95, False), (1.05, True)):
        x = torch.nn.Parameter(torch.ones(1, dtype=torch.float64))
        opt = spec.create([x], **{"lr": lr, "weight_decay": 0.0, **hp})
        a = factor * rule.constant / lr
        for _ in range(2000):
            opt.zero_grad()
            (0.5 * a * x**2).sum().backward()
            opt.step()
        value = float(x.detach())
        assert (not abs(value) <= 1.0) == diverges, (name, hp, factor, value)  # NaN: diverged


def test_adam_threshold_on_a_frozen_preconditioner():
    """Adam's declared constant (2 + 2 beta1)/(1 - beta1): its EMA momentum step with a fixed
    P diverges on curvature a P just above constant / lr and converges just below."""
    spec = get_spec("adam", "optimizer")
    beta1, lr = 0.9, 0.01
    rule = spec.properties_for({"beta1": beta1})["stability"]
    assert rule.preconditioned and rule.constant == pytest.approx(38.0)
    for factor, diverges in ((0.95, False), (1.05, True)):
        a, x, m = factor * rule.constant / lr, 1.0, 0.0  # P = 1: the preconditioned curvature
        for _ in range(3000):
            m = beta1 * m + (1 - beta1) * a * x
            x -= lr * m
        assert (not abs(x) <= 1.0) == diverges


def test_config_defaults_and_ids():
    """health.curvature is None by default and out of the id; a matrix table fills every
    default; bad keys and bounds are one-line errors naming the key."""
    assert DEFAULT_CONFIG["health"]["curvature"] is None
    plain = complete_config({})
    legacy = complete_config({})
    del legacy["health"]["curvature"]
    assert trial_id(plain) == trial_id(legacy)
    on = complete_config({"health": {"curvature": dict(CURVATURE_DEFAULTS)}})
    assert trial_id(on) != trial_id(plain)


def _load(tmp_path, health: str):
    path = tmp_path / "m.toml"
    path.write_text(f'name = "m"\n[health]\n{health}\n[defaults]\noptimizer = "sgd"\n')
    return load_matrix(str(path))


def test_matrix_curvature_keys(tmp_path):
    m = _load(tmp_path, "curvature = { every_n_steps = 10 }")
    (config,) = [t.config if hasattr(t, "config") else t for t in m.trials()]
    assert config["health"]["curvature"] == {**CURVATURE_DEFAULTS, "every_n_steps": 10}
    assert _load(tmp_path, "curvature = true").health["curvature"] == CURVATURE_DEFAULTS
    assert _load(tmp_path, "curvature = false").health["curvature"] is None
    for text, where in [
        ("curvature = { every = 10 }", "health.curvature.every"),
        ("curvature = { iterations = 1 }", "health.curvature.iterations"),
        ("curvature = { batch = 1.5 }", "health.curvature.batch"),
        ("curvature = 3", "health.curvature"),
        ('curvature = { plain = "yes" }', "health.curvature.plain: must be true or false"),
    ]:
        with pytest.raises(MatrixError) as caught:
            _load(tmp_path, text)
        lines = str(caught.value).splitlines()
        assert len(lines) == 1 and where in lines[0], lines


def _rows(trial: str, ratios: list[float], threshold: float = 100.0) -> list[dict]:
    return [
        {"trial_id": trial, "step": 10 * i, "split": "curvature", "metric": m, "layer": "",
         "value": v}
        for i, r in enumerate(ratios)
        for m, v in (("sharpness", r * threshold), ("threshold", threshold))
    ]  # fmt: skip


def test_report_edge_of_stability_summary():
    """Hand-made probes: a run that reaches 90% of its threshold at step 30 and stays there,
    one that stays below; the fractions, first step and sentences follow the definitions."""
    metrics = pd.DataFrame(
        _rows("a", [0.2, 0.5, 0.8, 0.95, 1.02, 0.93, 1.0, 0.97])
        + _rows("b", [0.1, 0.2, 0.3, 0.4, 0.5, 0.5, 0.6, 0.6])
    )
    table = report_curvature.probes(metrics)
    summary = report_curvature.run_summary(table).set_index("trial_id")
    assert summary.loc["a", "first_edge_step"] == 30
    assert summary.loc["a", "edge_fraction"] == pytest.approx(5 / 8)
    assert summary.loc["a", "stay_fraction"] == pytest.approx(1.0)
    assert math.isnan(summary.loc["b", "first_edge_step"])
    assert summary.loc["b", "max_ratio"] == pytest.approx(0.6)
    runs = pd.DataFrame(
        {"trial_id": ["a", "b"], "dataset": ["d", "d"], "optimizer": ["sgd", "adam"],
         "target_mode": ["max", "max"], "score": [1.0, 0.5]}
    )  # fmt: skip
    techs = report_curvature.technique_table(summary.reset_index(), runs, ["optimizer"])
    said = dict(zip(techs["technique"], techs["sentence"], strict=True))
    assert "reached the edge of stability at step 30" in said["sgd"]
    assert "stayed within 10% of it or above for 100%" in said["sgd"]
    assert "stayed below" in said["adam"] and "60%" in said["adam"]


def test_report_prefers_the_preconditioned_pair():
    rows = [
        {"trial_id": "a", "step": 0, "split": "curvature", "metric": m, "layer": "", "value": v}
        for m, v in (("sharpness", 5.0), ("precond_sharpness", 300.0), ("precond_threshold", 380.0))
    ]
    table = report_curvature.probes(pd.DataFrame(rows))
    assert table.loc[0, "sharpness"] == 300.0
    assert table.loc[0, "ratio"] == pytest.approx(300 / 380)
    empty = report_curvature.probes(pd.DataFrame(columns=["trial_id", "split"]))
    assert empty.empty


def test_plain_true_records_the_hessians_own_sharpness_beside_the_preconditioned():
    """``plain = true``: Adam records both; at step 0 (the probe follows the first step; at a
    tiny lr and the same seed the weights and probe batch are SGD's) its plain sharpness is the
    one an SGD trial records, and its preconditioned one is still there."""
    both = {**PROBE, "plain": True}
    adam = {"name": "adam", "params": {"lr": 1e-8}}
    rows = _curvature_rows(run_trial({**SMALL, "optimizer": adam, "health": {"curvature": both}}))
    by = {(r["step"], r["metric"]): r["value"] for r in rows}
    sgd = _curvature_rows(
        run_trial(
            {
                **SMALL,
                "optimizer": {"name": "sgd", "params": {"lr": 1e-8}},
                "health": {"curvature": PROBE},
            }
        )
    )
    sgd0 = next(r["value"] for r in sgd if r["step"] == 0 and r["metric"] == "sharpness")
    assert by[(0, "sharpness")] == pytest.approx(sgd0, rel=1e-3)
    assert by[(0, "precond_sharpness")] > 0


@pytest.mark.parametrize(
    ("optimizer", "pair"),
    [
        ({"name": "sgd", "params": {"lr": 0.05}}, ("sharpness", "threshold")),
        ({"name": "adam", "params": {"lr": 0.003}}, ("precond_sharpness", "precond_threshold")),
    ],
)
def test_zero_schedule_rate_has_no_finite_threshold(optimizer, pair):
    """Cosine to 0 (its default ``min_lr_ratio``) reaches rate 0 at the last step, probed at
    step 8 of 9: the threshold constant / (lr * 0) is +inf (any curvature is stable), so that
    probe records its sharpness but no threshold; the trial completes and the report counts
    that probe as below the edge, its sharpness still the compared quantity."""
    config = {
        **SMALL,
        "optimizer": optimizer,
        "budget": {"max_steps": 9, "epochs": None, "batch_size": 64},
        "schedule": "cosine",
        "health": {"curvature": PROBE},
    }
    outcome = run_trial(config)
    rows = _curvature_rows(outcome)
    quantity, limit = pair
    by = {(r["step"], r["metric"]): r["value"] for r in rows}
    assert sorted({r["step"] for r in rows}) == [0, 4, 8]
    assert (8, limit) not in by and by[(8, quantity)] > 0
    assert math.isfinite(by[(4, limit)]) and by[(4, limit)] > by[(0, limit)]
    metrics = pd.DataFrame([{**r, "trial_id": "t"} for r in rows])
    table = report_curvature.probes(metrics).set_index("step")
    assert table.loc[8, "sharpness"] == by[(8, quantity)]
    assert math.isnan(table.loc[8, "threshold"]) and not table.loc[8, "edge"]
    summary = report_curvature.run_summary(table.reset_index())
    at_edge = [
        r >= 1 - report_curvature.EDGE_BAND
        for r in (by[(s, quantity)] / by[(s, limit)] for s in (0, 4))
    ]
    assert summary.loc[0, "edge_fraction"] == pytest.approx(sum(at_edge) / 3)
    assert summary.loc[0, "sharpness"] == by[(8, quantity)]


MUP_NARROW = {"name": "mup", "params": {"base_width": 2}}


@pytest.mark.parametrize("optimizer", ["sgd", "momentum"])
def test_probe_under_mup_is_the_effective_operator(optimizer):
    """Under muP (width 8 over base 2: multipliers 4 and 1/4 for SGD) tensor t steps at
    lr * m_t, so the sharpness compared with 2/lr is the top eigenvalue of M^{1/2} H M^{1/2}:
    the engine's step-0 value against the exact float64 Hessian's, within 1%."""
    from techbench.engine.trial import build_model, prepare
    from techbench.schema import complete_config
    from techbench.techniques.parametrize import lr_multiplier

    cfg = complete_config(
        {
            "model": {"name": "mlp", "params": {"depth": 1, "width": 8}},
            "optimizer": optimizer,
            "parametrization": MUP_NARROW,
        }
    )
    specs, splits = prepare(cfg, None)
    model, _ = build_model(cfg, specs, splits)
    assert {lr_multiplier(p) for p in model.parameters()} >= {4.0, 0.25}  # not vacuous
    error = check_engine_probe(parametrization=MUP_NARROW, optimizer=optimizer)
    assert error < 0.01


def test_probe_under_mup_folds_multipliers_into_the_preconditioner(monkeypatch):
    """Adam under muP: the preconditioner is P / m; with P frozen at 1 (planted) the recorded
    precond_sharpness is the exact top eigenvalue of M^{1/2} H M^{1/2}, within 1%."""
    monkeypatch.setattr(
        curvature_probe, "diagonal_preconditioner", lambda opt, p: torch.ones_like(p)
    )
    error = check_engine_probe(
        parametrization=MUP_NARROW, optimizer="adam", metric="precond_sharpness"
    )
    assert error < 0.01


def test_mup_at_its_base_width_probes_as_standard():
    """All multipliers 1 (muP at its base width): the recorded rows equal the standard
    trial's."""
    base = {**SMALL, "optimizer": {"name": "sgd", "params": {"lr": 0.05}}}
    base["health"] = {"curvature": PROBE}
    plain = _curvature_rows(run_trial(base))
    at_base = {"name": "mup", "params": {"base_width": 16}}
    mup = _curvature_rows(run_trial({**base, "parametrization": at_base}))
    assert [(r["step"], r["metric"], r["value"]) for r in mup] == [
        (r["step"], r["metric"], r["value"]) for r in plain
    ]
