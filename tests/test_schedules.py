"""Schedules: hand-computed values, torch's own schedulers as independent sources, broken ones."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.optim.lr_scheduler import CosineAnnealingLR, LambdaLR, LinearLR

from techbench.techniques.registry import get_spec, list_techniques
from techbench.techniques.spec import Param, ParamError, TechniqueSpec
from techbench.testing import CheckFailure
from techbench.testing import schedule as sched_checks
from techbench_builtins import schedules_impl as impl

NAMES = ["constant", "step", "cosine", "exponential", "inverse_time"]


pytestmark = pytest.mark.usefixtures("one_thread")


def test_all_builtins_registered() -> None:
    assert {s.name for s in list_techniques("schedule")} >= set(NAMES)


def _lrs(scheduler_factory: Any, total: int, base_lr: float = 0.1) -> list[float]:
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=base_lr)
    sched = scheduler_factory(opt)
    out = []
    for _ in range(total):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


def _both(name: str, total: int, **hp: Any) -> tuple[list[float], list[float]]:
    spec = get_spec(name, "schedule")
    fast = _lrs(lambda opt: spec.create(opt, total, **hp), total)
    ref_fn = spec.load_reference()
    full = spec.hyperparams(hp)
    ref = [ref_fn(t, 0.1, total, **full) for t in range(total)]
    return fast, ref


HAND: list[tuple[str, dict[str, Any], int, list[float]]] = [
    ("constant", {}, 4, [0.1, 0.1, 0.1, 0.1]),
    ("step", {"step_size": 3, "gamma": 0.5}, 8, [0.1, 0.1, 0.1, 0.05, 0.05, 0.05, 0.025, 0.025]),
    ("exponential", {"gamma": 0.9}, 4, [0.1, 0.09, 0.081, 0.0729]),
    ("inverse_time", {"decay": 0.5}, 4, [0.1, 0.1 / 1.5, 0.05, 0.04]),
    # T = 11, no warm-up: lr_0, half way (t = 5) lr_0/2, last step (t = 10) min = 0
    ("cosine", {}, 11, [0.1, None, None, None, None, 0.05, None, None, None, None, 0.0]),
    # T = 13, W = 2, m = 0.1: 0.05, 0.1 (warm-up), 0.1 at t = W, 0.055 half way, 0.01 at the end
    (
        "cosine",
        {"warmup_steps": 2, "min_lr_ratio": 0.1},
        13,
        [0.05, 0.1, 0.1, None, None, None, None, 0.055, None, None, None, None, 0.01],
    ),
]


@pytest.mark.parametrize(
    ("name", "hp", "total", "want"), HAND, ids=[f"{h[0]}-{i}" for i, h in enumerate(HAND)]
)
def test_hand_computed_values(name: str, hp: dict, total: int, want: list) -> None:
    fast, ref = _both(name, total, **hp)
    for t, w in enumerate(want):
        if w is None:
            continue
        assert fast[t] == pytest.approx(w, rel=1e-12, abs=1e-15), f"fast, step {t}"
        assert ref[t] == pytest.approx(w, rel=1e-12, abs=1e-15), f"reference, step {t}"


@pytest.mark.parametrize("min_lr_ratio", [0.0, 0.2])
def test_cosine_without_warmup_equals_torch_cosine_annealing(min_lr_ratio: float) -> None:
    total = 50
    fast, ref = _both("cosine", total, min_lr_ratio=min_lr_ratio)
    want = _lrs(
        lambda opt: CosineAnnealingLR(opt, T_max=total - 1, eta_min=min_lr_ratio * 0.1), total
    )
    assert fast == pytest.approx(want, rel=1e-9, abs=1e-12)
    assert ref == pytest.approx(want, rel=1e-9, abs=1e-12)


def test_cosine_warmup_equals_torch_linear_lr() -> None:
    total, warmup = 40, 8
    fast, ref = _both("cosine", total, warmup_steps=warmup)
    want = _lrs(lambda opt: LinearLR(opt, start_factor=1 / warmup, total_iters=warmup - 1), warmup)
    assert fast[:warmup] == pytest.approx(want, rel=1e-12)
    assert ref[:warmup] == pytest.approx(want, rel=1e-12)
    assert max(fast) == pytest.approx(0.1)


def test_exponential_matches_closed_form_over_long_runs() -> None:
    fast, _ = _both("exponential", 2000, gamma=0.995)
    assert fast[-1] == pytest.approx(0.1 * 0.995**1999, rel=1e-9)


def test_scheduler_scales_every_param_group() -> None:
    groups = [{"params": [torch.zeros(1, requires_grad=True)], "lr": lr} for lr in (1.0, 0.01)]
    opt = torch.optim.SGD(groups, lr=1.0)
    sched = get_spec("inverse_time").create(opt, 10, decay=1.0)
    for _ in range(3):
        opt.step()
        sched.step()
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.25, 0.0025])


def test_invalid_hyperparameters_are_refused() -> None:
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    with pytest.raises(ParamError, match="step_size"):
        get_spec("step").create(opt, 10, step_size=0)
    with pytest.raises(ParamError, match="min_lr_ratio"):
        get_spec("cosine").create(opt, 10, min_lr_ratio=1.5)


# --- deliberately broken schedules must fail with a clear message -----------------------------


def _spec(
    fast: Any, reference: Any, monotonic: str = "nonincreasing", params: tuple[Param, ...] = ()
) -> TechniqueSpec:
    return TechniqueSpec(
        name="broken",
        family="schedule",
        summary="broken",
        fast=fast,
        reference=reference,
        citation="test",
        params=params,
        properties={"monotonic": monotonic},
    )


def test_off_by_one_step_fails_naming_the_step() -> None:
    def fast(opt: Any, total_steps: int) -> Any:
        return LambdaLR(opt, lambda t: 1 / (1 + 0.01 * (t + 1)))

    spec = _spec(fast, lambda t, base, total, **_: base / (1 + 0.01 * t))
    with pytest.raises(CheckFailure, match=r"vs closed form.*worst at input \d+"):
        sched_checks.check_lr_matches_closed_form(spec)


def test_fast_off_by_1e3_fails() -> None:
    def fast(opt: Any, total_steps: int) -> Any:
        return LambdaLR(opt, lambda t: 1.001)

    spec = _spec(fast, impl.constant_reference)
    with pytest.raises(CheckFailure, match=r"values differ"):
        sched_checks.check_lr_matches_closed_form(spec)


def test_ignored_hyperparameter_fails() -> None:
    gamma = Param(name="gamma", type=float, default=0.9, low=0.0, high=1.0, low_open=True)

    def fast(opt: Any, total_steps: int, *, gamma: float) -> Any:
        return LambdaLR(opt, lambda t: 0.9**t)

    spec = _spec(fast, lambda t, base, total, **_: base * 0.9**t, params=(gamma,))
    sched_checks.check_lr_matches_closed_form(spec)
    with pytest.raises(CheckFailure, match=r"'gamma': 0.45.*ignored"):
        sched_checks.check_hyperparams_honoured(spec)


def test_declared_monotonic_but_rising_fails() -> None:
    def fast(opt: Any, total_steps: int) -> Any:
        return LambdaLR(opt, lambda t: 1 + 0.5 * math.sin(t / 10))

    spec = _spec(fast, lambda t, base, total, **_: base * (1 + 0.5 * math.sin(t / 10)))
    sched_checks.check_lr_matches_closed_form(spec)
    with pytest.raises(CheckFailure, match=r"declared 'nonincreasing'.*param group 0 goes from"):
        sched_checks.check_monotonic(spec)


def test_state_not_in_state_dict_fails() -> None:
    counter: dict[str, int] = {"n": 0}

    groups = len(sched_checks.BASE_LRS)

    def factor(t: int) -> float:  # counts its own calls (one per group per step), ignores t
        counter["n"] += 1
        return 0.99 ** ((counter["n"] - 1) // groups)

    def fast(opt: Any, total_steps: int) -> Any:
        counter["n"] = 0
        return LambdaLR(opt, factor)

    spec = _spec(fast, lambda t, base, total, **_: base * 0.99**t)
    sched_checks.check_lr_matches_closed_form(spec)
    with pytest.raises(CheckFailure, match=r"resumed from a state_dict saved at step 120"):
        sched_checks.check_state_dict_round_trip(spec)


# --- property: fast and closed form agree across the declared ranges -------------------------


@settings(max_examples=20, deadline=None)
@given(
    total=st.integers(2, 200),
    warmup_steps=st.integers(0, 50),
    min_lr_ratio=st.floats(0.0, 1.0),
)
def test_cosine_agrees_with_closed_form(total: int, warmup_steps: int, min_lr_ratio: float) -> None:
    fast, ref = _both("cosine", total, warmup_steps=warmup_steps, min_lr_ratio=min_lr_ratio)
    assert fast == pytest.approx(ref, rel=1e-12, abs=1e-15)
    assert all(lr >= min_lr_ratio * 0.1 * (1 - 1e-12) for lr in fast[warmup_steps:])


@settings(max_examples=20, deadline=None)
@given(total=st.integers(1, 100), step_size=st.integers(1, 30), gamma=st.floats(0.01, 1.0))
def test_step_agrees_with_closed_form(total: int, step_size: int, gamma: float) -> None:
    fast, ref = _both("step", total, step_size=step_size, gamma=gamma)
    assert fast == pytest.approx(ref, rel=1e-12, abs=1e-300)
