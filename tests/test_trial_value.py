"""One trial value (issue 23 item 2): a trial that can't stack is planned alone up front, the
engine records why a trial stopped, and ``stack_error`` is a meta field that 0.3.0 metas fill."""

from __future__ import annotations

import json

import pandas as pd

from techbench.engine.trial import run_trial
from techbench.plan.stacking import describe_stacks, plan_stacks
from techbench.report.inputs import stop_reasons
from techbench.schema import Trial, TrialMeta

BASE = {
    "dataset": {"name": "moons", "params": {"n_samples": 120}},
    "model": {"name": "mlp", "params": {"depth": 1, "width": 8}},
    "budget": {"epochs": 2, "batch_size": 32},
    "trainer": {"accelerator": "cpu"},
    "health": {"enabled": False},
}


def _config(seed: int, **trainer) -> dict:
    return {**BASE, "seed": seed, "trainer": {**BASE["trainer"], **trainer}}


def test_a_mixed_precision_trial_is_planned_alone_and_dry_run_says_why():
    mixed = [_config(s, precision="bf16-mixed") for s in range(3)]
    plain = [_config(s) for s in range(3)]
    stacks = plan_stacks([*mixed, *plain], None)
    assert [len(s.trials) for s in stacks] == [1, 1, 1, 3]
    assert all("bf16-mixed" in s.reason for s in stacks[:3])
    assert any("3 alone: precision 'bf16-mixed'" in line for line in describe_stacks(stacks))


def test_two_devices_are_planned_alone():
    stacks = plan_stacks([_config(s, devices=2) for s in range(2)], None)
    assert [len(s.trials) for s in stacks] == [1, 1] and "one device" in stacks[0].reason


def test_the_engine_records_why_a_trial_stopped():
    by_epochs = run_trial(Trial.of(_config(0)))
    steps_config = {**_config(0), "budget": {**BASE["budget"], "max_steps": 3}}
    by_steps = run_trial(Trial.of(steps_config))
    # 120 samples, 0.8 for training at batch 32: 3 steps an epoch, so 2 epochs run 6 steps
    assert (by_epochs.status, by_epochs.meta.epochs) == ("completed", 2)
    assert by_epochs.meta.stop_reason == "epochs"
    assert by_steps.meta.steps == 3 and by_steps.meta.stop_reason == "steps"
    assert json.loads(json.dumps(by_steps.meta.to_dict()))["stop_reason"] == "steps"


def test_a_planned_trial_keeps_its_id_through_the_engine():
    trial = Trial.of(_config(1))
    assert run_trial(trial).trial_id == trial.id


def test_stack_error_of_a_030_meta_is_the_field():
    old = {"steps": 4, "stack_error": "RuntimeError: vmap: cannot batch"}  # 0.3.0: an extra key
    meta = TrialMeta.from_dict(old)
    assert meta.stack_error == "RuntimeError: vmap: cannot batch" and meta.extra == {}
    assert meta.stop_reason is None
    assert TrialMeta.from_dict(meta.to_dict()) == meta


def test_the_report_reads_a_stored_reason_and_derives_one_only_when_missing():
    budget = {"epochs": 10, "max_steps": None, "max_seconds": 60}
    trials = pd.DataFrame(
        {
            "status": ["completed", "completed", "completed", "diverged"],
            "stop_reason": ["stopped early", None, None, None],
            "steps": [40, 40, 100, 7],
            "epochs_run": [4, 4, 10, 1],
            "config": [json.dumps({"budget": budget})] * 4,
        }
    )
    # row 0: stored; row 1: 4 of 10 epochs under a time budget; row 2: all epochs; row 3
    want = ["stopped early", "time budget", "epochs", "diverged"]
    assert list(stop_reasons(trials)) == want
