"""Per-member hyper-parameters for a technique's stacked implementation (``spec.stacked``).

Why: a tuning search trains members that differ in learning rate, betas or momentum; giving
each setting its own optimizer over its slice of the stack costs K optimizers and K leaves per
parameter. A stacked implementation instead takes every ``float`` hyper-parameter (a continuum
that only scales the arithmetic: rates, momenta, betas, eps, decay strengths) as a float64 tensor
``[K]``, member k's value at k. The other hyper-parameters (``bool``, ``int``, ``str``) choose the
computation itself (eps placement, bias correction, which tensors decay), so they are *shared*:
members that differ in one train under separate stacked optimizers (:func:`shared_key` groups
them). The family signatures are in :mod:`techbench.techniques.families`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from ..techniques.spec import TechniqueError, TechniqueSpec


def member_names(spec: TechniqueSpec) -> tuple[str, ...]:
    """The hyper-parameters a stacked implementation of ``spec`` takes per member."""
    return tuple(p.name for p in spec.params if p.type is float)


def shared_key(spec: TechniqueSpec, hp: Mapping[str, Any]) -> str:
    """Canonical JSON of the shared (non-``float``) hyper-parameters of a validated ``hp``:
    members with equal keys can share one stacked implementation."""
    numeric = set(member_names(spec))
    return json.dumps({k: v for k, v in hp.items() if k not in numeric}, sort_keys=True)


def stacked_arguments(spec: TechniqueSpec, settings: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Keyword arguments of ``spec.stacked`` for members with hyper-parameters ``settings``:
    each ``float`` one as a float64 tensor ``[K]``, the shared ones as plain values.

    Raises :class:`~techbench.techniques.spec.TechniqueError` when the members differ in a shared one."""
    import torch

    if not settings:
        raise TechniqueError(f"{spec.qualified_name}: a stack needs at least one member")
    full = [spec.hyperparams(hp) for hp in settings]
    keys = {shared_key(spec, hp) for hp in full}
    if len(keys) > 1:
        raise TechniqueError(
            f"{spec.qualified_name}: members of one stacked implementation must share their "
            f"non-numeric hyper-parameters, got {sorted(keys)}"
        )
    numeric = member_names(spec)
    out: dict[str, Any] = {k: v for k, v in full[0].items() if k not in numeric}
    for name in numeric:
        out[name] = torch.tensor([float(hp[name]) for hp in full], dtype=torch.float64)
    return out


def create_stacked(
    spec: TechniqueSpec, structural: Any, settings: Sequence[Mapping[str, Any]]
) -> Any:
    """``spec.stacked(structural, **stacked_arguments(spec, settings))``: for an optimizer, one
    optimizer over the stacked parameters ``structural`` whose member k uses ``settings[k]``.

    Raises :class:`~techbench.techniques.spec.TechniqueError` when an optimizer does not declare where its
    members' values are (:class:`techbench.techniques.families.StackedOptimizer`): the engine would
    otherwise read the schedule's multiplier as every member's ``lr``."""
    from ..techniques.families import StackedOptimizer

    factory = spec.load_stacked()
    if factory is None:
        raise TechniqueError(f"{spec.qualified_name} declares no stacked implementation")
    made = factory(structural, **stacked_arguments(spec, settings))
    if spec.family == "optimizer" and not isinstance(made, StackedOptimizer):
        raise TechniqueError(
            f"{spec.qualified_name}: its stacked implementation returned a "
            f"{type(made).__name__} without member_hyperparams(); a stacked optimizer shows "
            "each member's values through it (techbench.techniques.families.StackedOptimizer)"
        )
    return made


def optimizer_stacks_hyperparams(
    optimizer: TechniqueSpec, schedule: TechniqueSpec | None, schedule_hp: Mapping[str, Any]
) -> bool:
    """Whether members may carry their own ``float`` optimizer hyper-parameters in one stacked
    optimizer: it declares ``spec.stacked`` and the schedule (if any) declares
    ``properties["multiplicative"]``, since the stacked optimizer's group ``lr`` is a multiplier
    that the schedule drives from 1.0 (:class:`techbench.techniques.families.ScheduleProperties`)."""
    if optimizer.stacked is None:
        return False
    return schedule is None or bool(schedule.properties_for(schedule_hp).get("multiplicative"))
