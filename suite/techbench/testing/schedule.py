"""Conformance checks for learning-rate schedules.

Reference protocol
------------------
A schedule's ``spec.reference`` is the closed form

``lr(step, base_lr, total_steps, **hp) -> float``
    the learning rate used by optimizer step ``step`` (counting from 0) of a run of
    ``total_steps`` steps, for a param group whose initial rate is ``base_lr``. ``hp`` is the full
    validated hyper-parameter dict (accept unused ones with ``**_``).

The fast side is ``spec.create(optimizer, total_steps, **hp) -> LRScheduler``, stepped once per
optimizer step: right after creation every group's ``lr`` is ``lr(0, ...)``, and after ``t`` calls
of ``scheduler.step()`` it is ``lr(t, ...)``.

Checks
------
The run: an SGD optimizer with two param groups (base rates 0.1 and 0.03) and
``total_steps = 300``; each step is ``optimizer.step()`` then ``scheduler.step()``.

``lr_matches_closed_form``
    the sequence of both groups' rates over the 300 steps equals the closed form
    (rtol 1e-9: torch's recursive schedulers, e.g. ExponentialLR, multiply step by step).
``hyperparams_honoured``
    for each declared parameter, one other valid value: the sequence still matches the closed
    form and differs from the defaults' sequence.
``state_dict_round_trip``
    after 120 steps the optimizer's and scheduler's ``state_dict`` are saved through
    ``torch.save``, loaded into a fresh optimizer and scheduler, and the remaining rates equal the
    uninterrupted run's exactly.
``monotonic``
    ``properties["monotonic"]``: ``"nonincreasing"`` (every step), or
    ``"warmup_then_nonincreasing"`` (non-decreasing for ``t < warmup_steps``, then
    non-increasing); checked with the defaults and the alternative values.
``multiplicative``
    ``properties["multiplicative"]`` (what lets a stacked optimizer carry per-member learning
    rates, :class:`techbench.techniques.families.ScheduleProperties`): with the defaults and each
    alternative value, the two groups' rates stay in the ratio of their base rates,
    ``lr_0(t) / 0.1 == lr_1(t) / 0.03`` (rtol 1e-12), and a third run with base rate 1.0
    gives the same factor.
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from typing import Any

from ..techniques.spec import TechniqueSpec
from .core import Check, CheckFailure
from .optimizer import alternative_value
from .tolerances import assert_close

TOTAL_STEPS = 300
BASE_LRS = (0.1, 0.03)
ROUND_TRIP_AT = 120


def _optimizer(base_lrs: tuple[float, ...] = BASE_LRS) -> Any:
    import torch

    groups = [{"params": [torch.zeros(1, requires_grad=True)], "lr": lr} for lr in base_lrs]
    return torch.optim.SGD(groups, lr=base_lrs[0])


def _label(spec: TechniqueSpec, hp: Mapping[str, Any]) -> str:
    args = ", ".join(f"{k}={v!r}" for k, v in hp.items())
    return f"{spec.qualified_name}({args})"


def run_fast(
    spec: TechniqueSpec, hp: Mapping[str, Any], total_steps: int = TOTAL_STEPS
) -> list[list[float]]:
    """``lrs[t][g]``: the rate of group ``g`` used by optimizer step ``t``."""
    return _run_on(spec, hp, BASE_LRS, total_steps)


def reference_lrs(
    spec: TechniqueSpec, hp: Mapping[str, Any], total_steps: int = TOTAL_STEPS
) -> list[list[float]]:
    ref = spec.load_reference()
    return [
        [float(ref(t, base, total_steps, **hp)) for base in BASE_LRS] for t in range(total_steps)
    ]


def compare_with_reference(spec: TechniqueSpec, hp: Mapping[str, Any]) -> list[list[float]]:
    import torch

    hp = spec.hyperparams(hp)
    fast = run_fast(spec, hp)
    ref = reference_lrs(spec, hp)
    steps = torch.arange(TOTAL_STEPS, dtype=torch.float64)[:, None].expand(-1, len(BASE_LRS))
    assert_close(
        torch.tensor(fast, dtype=torch.float64),
        torch.tensor(ref, dtype=torch.float64),
        what=f"{_label(spec, hp)}: lr per (step, param group) vs closed form, total_steps "
        f"{TOTAL_STEPS}, base lrs {BASE_LRS}",
        inputs=steps,
        rtol=1e-9,
        atol=1e-15,
    )
    return fast


def check_lr_matches_closed_form(spec: TechniqueSpec) -> None:
    compare_with_reference(spec, spec.defaults())


def _alternatives(spec: TechniqueSpec) -> list[dict[str, Any]]:
    base = spec.defaults()
    out = []
    for p in spec.params:
        alt = alternative_value(p, base[p.name])
        if p.type is int and p.name.endswith("steps") and base[p.name] == 0:
            alt = 10
        if alt is not None:
            out.append({**base, p.name: alt})
    return out


def check_hyperparams_honoured(spec: TechniqueSpec) -> None:
    base = compare_with_reference(spec, spec.defaults())
    for hp in _alternatives(spec):
        lrs = compare_with_reference(spec, hp)
        if lrs == base:
            changed = {k: v for k, v in hp.items() if spec.defaults()[k] != v}
            raise CheckFailure(
                f"{spec.qualified_name}: hyper-parameter {changed} is ignored: the lr sequence "
                f"over {TOTAL_STEPS} steps equals the defaults' sequence"
            )


def check_state_dict_round_trip(spec: TechniqueSpec) -> None:
    import warnings

    import torch

    hp = spec.defaults()
    uninterrupted = run_fast(spec, hp)
    opt = _optimizer()
    sched = spec.create(opt, TOTAL_STEPS, **hp)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        for _ in range(ROUND_TRIP_AT):
            opt.step()
            sched.step()
        buffer = io.BytesIO()
        torch.save({"opt": opt.state_dict(), "sched": sched.state_dict()}, buffer)
        buffer.seek(0)
        saved = torch.load(buffer, weights_only=False)
        opt2 = _optimizer(base_lrs=(0.5, 0.5))
        sched2 = spec.create(opt2, TOTAL_STEPS, **hp)
        opt2.load_state_dict(saved["opt"])
        sched2.load_state_dict(saved["sched"])
        for t in range(ROUND_TRIP_AT, TOTAL_STEPS):
            got = [float(g["lr"]) for g in opt2.param_groups]
            if got != uninterrupted[t]:
                raise CheckFailure(
                    f"{_label(spec, hp)}: resumed from a state_dict saved at step "
                    f"{ROUND_TRIP_AT}, step {t} has lrs {got}, uninterrupted {uninterrupted[t]}"
                )
            opt2.step()
            sched2.step()


def _assert_monotonic(spec: TechniqueSpec, hp: Mapping[str, Any], kind: str) -> None:
    lrs = run_fast(spec, hp)
    warmup = int(hp.get("warmup_steps", 0)) if kind == "warmup_then_nonincreasing" else 0
    for t in range(1, TOTAL_STEPS):
        for g in range(len(BASE_LRS)):
            prev, cur = lrs[t - 1][g], lrs[t][g]
            rising = t < warmup
            if (rising and cur < prev) or (not rising and cur > prev * (1 + 1e-12)):
                raise CheckFailure(
                    f"{_label(spec, hp)}: declared {kind!r} but the lr of param group {g} goes "
                    f"from {prev:.8g} at step {t - 1} to {cur:.8g} at step {t}"
                )


def check_monotonic(spec: TechniqueSpec) -> None:
    kind = spec.properties.get("monotonic")
    if kind not in ("nonincreasing", "warmup_then_nonincreasing"):
        raise CheckFailure(f"{spec.qualified_name}: unknown monotonic property {kind!r}")
    for hp in [spec.defaults(), *_alternatives(spec)]:
        _assert_monotonic(spec, hp, kind)


def check_multiplicative(spec: TechniqueSpec) -> None:
    import torch

    for hp in [spec.defaults(), *_alternatives(spec)]:
        lrs = torch.tensor(run_fast(spec, hp), dtype=torch.float64)
        factors = lrs / torch.tensor(BASE_LRS, dtype=torch.float64)
        unit = torch.tensor(_run_on(spec, hp, (1.0,)), dtype=torch.float64)
        assert_close(
            torch.cat([factors, unit], dim=1),
            factors[:, :1].expand(-1, len(BASE_LRS) + 1),
            what=f"{_label(spec, hp)}: declared multiplicative, but lr(t) / base lr (bases "
            f"{BASE_LRS} and 1.0, columns) differs between param groups",
            rtol=1e-12,
            atol=0.0,
        )


def _run_on(
    spec: TechniqueSpec,
    hp: Mapping[str, Any],
    base_lrs: tuple[float, ...],
    total_steps: int = TOTAL_STEPS,
) -> list[list[float]]:
    """``lrs[t][g]`` for an optimizer whose groups start at ``base_lrs``."""
    import warnings

    opt = _optimizer(base_lrs)
    sched = spec.create(opt, total_steps, **hp)
    lrs = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        for _ in range(total_steps):
            lrs.append([float(g["lr"]) for g in opt.param_groups])
            opt.step()
            sched.step()
    return lrs


def checks(spec: TechniqueSpec) -> list[Check]:
    """The schedule conformance checks (see the module docstring)."""
    out = [
        Check("lr_matches_closed_form", check_lr_matches_closed_form),
        Check("hyperparams_honoured", check_hyperparams_honoured),
        Check("state_dict_round_trip", check_state_dict_round_trip),
    ]
    if spec.properties.get("monotonic"):
        out.append(Check("monotonic", check_monotonic))
    if spec.properties.get("multiplicative"):
        out.append(Check("multiplicative", check_multiplicative))
    return out
