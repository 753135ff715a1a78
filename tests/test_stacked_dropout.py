"""Dropout's masks are the trial's own, in the one-by-one path and in a stack.

The independent source for a stacked member is its trial run alone (:func:`run_trial`), whose
dropout law the regularizer conformance checks verify against the formula; for the one-by-one
path, the trial's rows with and without something else drawing from torch's global RNG during
training (the masks must come from the trial's generator, not the global stream).
"""

from __future__ import annotations

import math

import pytest
import pytorch_lightning as pl
import torch
from torch import nn

from techbench.engine.trial import run_stack, run_trial
from techbench.plan.stacking import plan_stacks, unstackable_reason
from techbench.schema import complete_config
from techbench.techniques.families import Regularizer
from techbench.techniques.registry import default_registry
from techbench.techniques.spec import Param, TechniqueSpec
from tests.test_population import BASE, _rows, assert_members_equal

pytestmark = pytest.mark.usefixtures("one_thread")


def _dropout(p: float) -> dict:
    return {"name": "dropout", "params": {"p": p}}


def _config(**over):
    return complete_config({**BASE, **over})


def _assert_rows_close(a: dict, b: dict, rel: float, abs_: float) -> None:
    assert a.keys() == b.keys(), sorted(set(a) ^ set(b))[:5]
    for key, va in a.items():
        vb = b[key]
        if math.isnan(va) or math.isnan(vb):
            assert math.isnan(va) and math.isnan(vb), key
        else:
            assert vb == pytest.approx(va, rel=rel, abs=abs_), key


# ------------------------------------------------------------------------------ one by one


class GlobalRngDrain(pl.Callback):
    """Draws from torch's global RNG between every forward (as a logger or a user's callback
    might): masks taken from the global stream would change."""

    def on_before_backward(self, trainer, pl_module, loss) -> None:  # type: ignore[no-untyped-def]
        torch.rand(97)


def test_one_by_one_masks_are_the_trials_own():
    config = _config(seed=3, regularizer=_dropout(0.5))
    first = run_trial(config)
    again = run_trial(config)
    torch.manual_seed(12345)
    drained = run_trial(config, callbacks=[GlobalRngDrain()])
    assert first.status == again.status == drained.status == "completed", first.meta.error
    assert _rows(again) == _rows(first)
    assert _rows(drained) == _rows(first)
    other_seed = run_trial({**config, "seed": 4})
    assert _rows(other_seed) != _rows(first)


def test_masks_differ_from_no_dropout_and_between_rates():
    """The generator drives real masks: p changes the numbers, p = 0 is no dropout at all."""
    rows = {p: _rows(run_trial(_config(seed=0, regularizer=_dropout(p)))) for p in (0.0, 0.3)}
    plain = _rows(run_trial(_config(seed=0)))
    assert rows[0.0] == plain
    assert rows[0.3] != plain


class GlobalDropout(Regularizer):
    """A third-party module regularizer drawing from the global RNG (torch's own dropout)."""

    def __init__(self, p: float = 0.5) -> None:
        self.p = p

    def make_module(self) -> nn.Module:
        return nn.Dropout(self.p)


class WithGlobalDropout:
    """The installed registry plus ``regularizer/global_dropout`` (no ``stacked_module``)."""

    spec = TechniqueSpec(
        name="global_dropout",
        family="regularizer",
        summary="torch dropout (third party)",
        fast=GlobalDropout,
        params=(Param(name="p", type=float, default=0.5, low=0.0, high=1.0, high_open=True),),
        properties={"hooks": ("make_module",)},
    )

    def get_spec(self, name: str, family: str | None = None) -> TechniqueSpec:
        if (name, family) == ("global_dropout", "regularizer"):
            return self.spec
        return default_registry().get_spec(name, family)


def test_a_global_rng_module_runs_one_by_one_and_says_why():
    registry = WithGlobalDropout()
    configs = [
        _config(seed=s, regularizer={"name": "global_dropout", "params": {}}) for s in (0, 1)
    ]
    assert "make_module" in unstackable_reason(configs[0], registry)
    stacks = plan_stacks(configs, None, registry)
    assert [len(s.configs) for s in stacks] == [1, 1]
    assert all("global_dropout" in s.reason for s in stacks)
    a, b = (run_trial(configs[0], registry=registry) for _ in range(2))
    assert a.status == b.status == "completed", a.meta.error
    assert _rows(a) == _rows(b)  # the trial seeds the global RNG itself


# --------------------------------------------------------------------------------- stacked


def test_dropout_trials_stack():
    configs = [_config(seed=s, regularizer=_dropout(0.5)) for s in range(3)]
    assert unstackable_reason(configs[0]) == ""
    assert [len(s.configs) for s in plan_stacks(configs, None)] == [3]


def test_mlp_members_with_own_seeds_and_rates_equal_their_trials():
    """Three dropout layers (depth 3), members differing in seed and p (p = 0 included),
    gradient health every 5 steps; float32 tolerances on every row."""
    mlp = {"name": "mlp", "params": {"depth": 3, "width": 16}}
    configs = [
        _config(seed=s, model=mlp, regularizer=_dropout(p))
        for s, p in ((0, 0.5), (1, 0.2), (2, 0.0), (0, 0.3))
    ]
    assert_members_equal(configs)


def test_cnn_members_equal_their_trials():
    """Dropout on conv feature maps (4-D masks) and after the dense layer."""
    image = {
        "dataset": {"name": "digits", "params": {"image": True}},
        "model": {"name": "cnn", "params": {}},
        "budget": {"epochs": 1, "batch_size": 64, "max_steps": 6},
    }
    configs = [_config(seed=s, regularizer=_dropout(p), **image) for s, p in ((0, 0.5), (1, 0.25))]
    assert_members_equal(configs)


def test_resmlp_members_with_batchnorm_equal_their_trials():
    """Dropout inside residual branches next to batch norm (per-member running statistics)."""
    configs = [
        _config(
            seed=s,
            model={"name": "resmlp", "params": {"blocks": 2, "width": 16}},
            normalizer={"name": "batchnorm", "params": {}},
            optimizer={"name": "sgd", "params": {"lr": 0.1}},
            regularizer=_dropout(p),
        )
        for s, p in ((0, 0.4), (1, 0.1))
    ]
    assert_members_equal(configs)


def test_float64_dropout_members_equal_their_trials_to_1e_9():
    float64 = {"trainer": {"accelerator": "cpu", "precision": "64-true"}}
    configs = [
        _config(
            seed=s,
            model={"name": "mlp", "params": {"depth": 3, "width": 16}},
            regularizer=_dropout(p),
            **float64,
        )
        for s, p in ((0, 0.5), (1, 0.2))
    ]
    for config, member in zip(configs, run_stack(configs), strict=True):
        alone = run_trial(config)
        assert member.status == alone.status == "completed", member.meta.error
        _assert_rows_close(_rows(alone), _rows(member), rel=1e-9, abs_=1e-12)


def test_executor_stacks_dropout_and_stores_the_one_by_one_rows(tmp_path):
    """Through the executor (plan, stack, store): the stacked store's dropout trials have the
    one-by-one store's ids and rows; p is a member's own, so two seeds x two p are one stack."""
    from techbench.execute.local import execute
    from techbench.store.reader import load_results

    configs = [_config(seed=s, regularizer=_dropout(p)) for p in (0.5, 0.2) for s in (0, 1)]
    alone = execute(configs, tmp_path / "alone", workers=1, stack="off", progress=False)
    stacked = execute(configs, tmp_path / "stacked", workers=1, stack="auto", progress=False)
    assert alone.counts == stacked.counts and alone.counts["completed"] == 4
    ta, ma = load_results(tmp_path / "alone")
    ts, ms = load_results(tmp_path / "stacked")
    assert set(ts["stack_size"]) == {4}
    assert sorted(ta["trial_id"]) == sorted(ts["trial_id"])

    def rows(frame):
        frame = frame[frame["split"].astype(str) != "time"]
        keys = zip(
            frame["trial_id"].astype(str),
            frame["split"].astype(str),
            frame["metric"].astype(str),
            frame["layer"].astype(str),
            frame["step"],
            strict=True,
        )
        return dict(zip(keys, frame["value"].astype(float), strict=True))

    _assert_rows_close(rows(ma), rows(ms), rel=1e-4, abs_=1e-6)
