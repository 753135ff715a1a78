"""Applying a parametrization (:class:`~techbench.techniques.families.Parametrization`) to a
trial's network and optimizer: the one mechanism the engine, the checks and the coordinate
check share.

1. :func:`base_shapes`: the base model, built on the meta device (no memory, no values) from the
   parametrization's :meth:`~techbench.techniques.families.Parametrization.base_model_params`,
   gives each parameter's base shape, by name (as the ``mup`` package's ``set_base_shapes``
   compares a model with its base, parameter by parameter).
2. :func:`parametrize`: each parameter is multiplied by its ``init`` scale and tagged with its
   ``lr`` multiplier (:data:`LR_MULT_ATTR`); a stacked leaf ``[K, ...]`` carries its
   parameter's tag (members of a stack share the parametrization and the shapes).
3. :func:`scale_updates`: an optimizer's step pre- and post-hooks turn each tagged tensor's step
   ``p_new - p_old`` into ``lr_mult * (p_new - p_old)``.

Why step hooks rather than param groups or a reparametrization ``W = c W'``: the update of every
optimizer that declares ``properties["update_rule"]`` is proportional to its ``lr`` (checked by
``lr_multiplier``, :mod:`techbench.testing.parametrization`), so scaling the step is exactly a
per-tensor learning rate (the ``mup`` package's ``MuAdam``/``MuSGD`` param groups, decoupled
weight decay included), and it needs nothing of the optimizer: torch's optimizers given a flat
list of tensors (a trial alone), the stacked optimizers over ``[K, ...]`` leaves with per-member
``lr`` tensors and third-party optimizers alike, with no hook a third-party stacked optimizer
could silently ignore. A forward reparametrization would change what the weights are (their
decay, norms and health metrics) and Adam's epsilon relative to the gradient.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from .families import ModelParts, Parametrization, ParamScale
from .roles import parameter_roles

__all__ = [
    "LR_MULT_ATTR",
    "base_shapes",
    "lr_multiplier",
    "parametrize",
    "scale_updates",
]

LR_MULT_ATTR = "techbench_lr_mult"
"""Attribute :func:`parametrize` sets on a parameter (and the engine on its stacked leaf) whose
learning-rate multiplier is not 1."""


def lr_multiplier(tensor: torch.Tensor) -> float:
    """The learning-rate multiplier ``tensor`` was tagged with (1.0 when untagged)."""
    return float(getattr(tensor, LR_MULT_ATTR, 1.0))


def base_shapes(
    parametrization: Parametrization,
    build: Callable[[Mapping[str, Any]], nn.Module],
    model_params: Mapping[str, Any],
) -> dict[str, tuple[int, ...]] | None:
    """Name -> shape of every parameter of the base model, or None when the parametrization has
    no base (the standard one). ``build(params)`` makes the model with those hyper-parameters;
    it runs under ``torch.device("meta")``, so the base costs neither memory nor random draws."""
    params = parametrization.base_model_params(model_params)
    if params is None:
        return None
    with torch.device("meta"):
        base = build(params)
    return {name: tuple(p.shape) for name, p in base.named_parameters()}


def meta_parts(parts: ModelParts) -> ModelParts:
    """``parts`` whose initializers do nothing (a base model on the meta device has no values)."""
    return ModelParts(
        activation=parts.activation,
        weight_init=lambda t: t,
        bias_init=lambda t: t,
        normalizer=parts.normalizer,
        norm_placement=parts.norm_placement,
        dropout=None,
    )


def parametrize(
    model: nn.Module,
    parametrization: Parametrization,
    bases: Mapping[str, tuple[int, ...]] | None,
    update_rule: str | None,
) -> dict[str, ParamScale]:
    """Multiply each parameter of ``model`` by its ``init`` scale and tag its ``lr`` multiplier
    (:data:`LR_MULT_ATTR`); returns the scales by name (empty without a base: nothing changes).

    ``ValueError`` naming the parameter for a model whose roles can't be told
    (:class:`~techbench.techniques.roles.RoleError`), a parameter the base model lacks or has
    with another number of dimensions, or what the parametrization refuses.
    """
    if bases is None:
        return {}
    roles = parameter_roles(model)
    parametrization.check_roles(roles)
    scales: dict[str, ParamScale] = {}
    for name, p in model.named_parameters():
        base = bases.get(name)
        if base is None or len(base) != p.dim():
            raise ValueError(
                f"parameter {name!r} {tuple(p.shape)} has no counterpart of the same rank in the "
                f"base model ({'missing' if base is None else base}); the base must differ from "
                "the model in widths only"
            )
        scale = parametrization.scale(roles[name], tuple(p.shape), base, update_rule)
        if not (math.isfinite(scale.init) and math.isfinite(scale.lr) and scale.lr > 0):
            raise ValueError(f"parameter {name!r}: invalid scale {scale}")
        if scale.init != 1.0:
            with torch.no_grad():
                p.mul_(scale.init)
        if scale.lr != 1.0:
            setattr(p, LR_MULT_ATTR, float(scale.lr))
        scales[name] = scale
    return scales


def scale_updates(optimizer: torch.optim.Optimizer) -> bool:
    """Make every step of ``optimizer`` move each tensor tagged with a learning-rate multiplier
    ``m`` by ``m`` times its plain step: ``p <- p_old + m (p_new - p_old)`` (step hooks; see
    the module docstring for why this is the per-tensor learning rate). Returns whether any
    tensor is tagged (no hook is registered otherwise)."""
    by_mult: dict[float, list[torch.Tensor]] = {}
    for group in optimizer.param_groups:
        for p in group["params"]:
            m = lr_multiplier(p)
            if m != 1.0:
                by_mult.setdefault(m, []).append(p)
    if not by_mult:
        return False
    saved: dict[float, list[torch.Tensor]] = {}

    def before(opt: Any, args: Any, kwargs: Any) -> None:
        for m, ps in by_mult.items():
            saved[m] = [p.detach().clone() for p in ps]

    def after(opt: Any, args: Any, kwargs: Any) -> None:
        with torch.no_grad():
            for m, ps in by_mult.items():
                old = saved.pop(m)
                new = [p.detach() for p in ps]
                torch._foreach_lerp_(old, new, m)  # old + m (new - old)
                torch._foreach_copy_(new, old)

    optimizer.register_step_pre_hook(before)
    optimizer.register_step_post_hook(after)
    return True
