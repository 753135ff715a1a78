"""Built-in learning-rate schedules: specs only (no torch import at import time).

Implementations and closed forms live in :mod:`techbench_builtins.schedules_impl`; the protocol
the conformance checks expect is stated in :mod:`techbench.testing.schedule`. A schedule is
stepped once per optimizer step; ``lr(t)`` is the rate used by optimizer step ``t`` (from 0).
"""

from __future__ import annotations

from techbench.techniques.spec import Param, TechniqueSpec

_IMPL = "techbench_builtins.schedules_impl"

constant = TechniqueSpec(
    name="constant",
    family="schedule",
    summary="Constant learning rate: lr_t = lr_0.",
    citation="Lecture notes, seed 002",
    fast=f"{_IMPL}:constant",
    reference=f"{_IMPL}:constant_reference",
    properties={"monotonic": "nonincreasing", "multiplicative": True},
)

step = TechniqueSpec(
    name="step",
    family="schedule",
    summary="Step decay: lr_t = lr_0 * gamma^floor(t / step_size).",
    citation="Krizhevsky, Sutskever & Hinton 2012; He et al. 2016 (divide by 10 on plateaus)",
    fast=f"{_IMPL}:step",
    reference=f"{_IMPL}:step_reference",
    params=(
        Param(name="step_size", type=int, default=100, low=1, doc="optimizer steps per decay"),
        Param(
            name="gamma",
            type=float,
            default=0.1,
            low=0.0,
            high=1.0,
            low_open=True,
            doc="multiplicative factor per decay; search 0.05..0.9 log (0.1: Krizhevsky et al. "
            "2012, He et al. 2016)",
            search=(0.05, 0.9),
            scale="log",
        ),
    ),
    properties={"monotonic": "nonincreasing", "multiplicative": True},
)

cosine = TechniqueSpec(
    name="cosine",
    family="schedule",
    summary="Linear warm-up then cosine annealing to min_lr_ratio * lr_0 at the last step.",
    citation="Loshchilov & Hutter 2017, SGDR: Stochastic Gradient Descent with Warm Restarts; "
    "Goyal et al. 2017, Accurate, Large Minibatch SGD (linear warm-up)",
    fast=f"{_IMPL}:cosine",
    reference=f"{_IMPL}:cosine_reference",
    params=(
        Param(
            name="warmup_steps",
            type=int,
            default=0,
            low=0,
            doc="lr_t = lr_0 * (t + 1) / warmup_steps for t < warmup_steps",
        ),
        Param(
            name="min_lr_ratio",
            type=float,
            default=0.0,
            low=0.0,
            high=1.0,
            doc="final learning rate as a fraction of lr_0; search 0..0.1 (0 in Loshchilov & "
            "Hutter 2017)",
            search=(0.0, 0.1),
        ),
    ),
    properties={"monotonic": "warmup_then_nonincreasing", "multiplicative": True},
)

exponential = TechniqueSpec(
    name="exponential",
    family="schedule",
    summary="Exponential decay: lr_t = lr_0 * gamma^t.",
    citation="Lecture notes, seed 002 (works well if alpha is slowly decreased)",
    fast=f"{_IMPL}:exponential",
    reference=f"{_IMPL}:exponential_reference",
    params=(
        Param(
            name="gamma",
            type=float,
            default=0.99,
            low=0.0,
            high=1.0,
            low_open=True,
            doc="per-step multiplicative factor; search 0.9..0.99999 on log(1 - x) (halves the "
            "rate after 7 to 70,000 steps)",
            search=(0.9, 0.99999),
            scale="log1m",
        ),
    ),
    properties={"monotonic": "nonincreasing", "multiplicative": True},
)

inverse_time = TechniqueSpec(
    name="inverse_time",
    family="schedule",
    summary="1/t decay: lr_t = lr_0 / (1 + decay * t).",
    citation="Robbins & Monro 1951; lecture notes, seed 002 (works well if alpha is slowly "
    "decreased)",
    fast=f"{_IMPL}:inverse_time",
    reference=f"{_IMPL}:inverse_time_reference",
    params=(
        Param(
            name="decay",
            type=float,
            default=0.01,
            low=0.0,
            doc="decay per optimizer step; search 1e-5..1e-1 log (halves the rate after 10 to "
            "100,000 steps)",
            search=(1e-5, 0.1),
            scale="log",
        ),
    ),
    properties={"monotonic": "nonincreasing", "multiplicative": True},
)
