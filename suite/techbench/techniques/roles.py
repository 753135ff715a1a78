"""Parameter roles: what each parameter of a model is for (input, hidden matrix, readout, bias,
normalization), the one vocabulary parametrizations and matrix-aware optimizers read.

Why: width-aware rules treat a parameter by its role, not its shape. muP (Yang et al. 2021,
"Tensor Programs V", arXiv 2203.03466, Table 3) gives input weights, hidden matrices and the
readout different initialisation and learning-rate multipliers; Muon (Jordan et al. 2024)
orthogonalises the updates of hidden matrices only and leaves embeddings, the readout, biases and
gains to AdamW. A 2-D shape alone cannot tell an embedding or a readout from a hidden matrix.

How a model declares them (built-ins and third-party models alike):

1. by keeping the model contract (:mod:`techbench.testing.model`): ``weight_layers`` in forward
   order. Then :func:`parameter_roles` infers: an ``nn.Embedding`` among them, or the first
   weight layer when there is no embedding, is ``input``; the last weight layer's weight is
   ``readout``; every other weight layer's weight is ``hidden``; a weight layer's ``bias`` is
   ``bias``; any other parameter of at most one dimension (normalizer gains and shifts) is
   ``norm``;
2. and, where that rule is wrong or silent (a parameter of two or more dimensions outside
   ``weight_layers``, e.g. a learned position table kept as a bare parameter), with a mapping
   ``model.parameter_roles = {"name": "role", ...}`` (or a method returning one) that overrides
   the inferred role of the parameters it names. A parameter left without a role is an error
   naming it; the conformance check ``parameter_roles`` runs the same rule.

The engine tags every parameter it trains with its role (:data:`ROLE_ATTR`, read with
:func:`role_of`), the one-trial network's and each stacked leaf ``[K, ...]`` alike, so an
optimizer that takes a flat list of tensors still knows each one's role.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Literal, cast

import torch
from torch import nn

__all__ = ["ROLES", "ROLE_ATTR", "Role", "RoleError", "parameter_roles", "role_of", "tag_roles"]

Role = Literal["input", "hidden", "readout", "bias", "norm"]
ROLES: tuple[Role, ...] = ("input", "hidden", "readout", "bias", "norm")
"""``input``: weights that read the data (first layer, token and position embeddings);
``hidden``: weight matrices (and conv kernels) between hidden layers; ``readout``: the output
layer's weight; ``bias``: a weight layer's bias; ``norm``: a normalizer's gain or shift."""

ROLE_ATTR = "techbench_role"
"""Attribute the engine sets on every trained parameter (and stacked leaf): its :data:`Role`."""


class RoleError(ValueError):
    """A model whose parameters' roles cannot be told (names the parameter)."""


def _declared(model: nn.Module) -> dict[str, str]:
    declared = getattr(model, "parameter_roles", None)
    if callable(declared):
        declared = cast(Callable[[], Any], declared)()
    if declared is None:
        return {}
    if not isinstance(declared, Mapping):
        raise RoleError(f"model.parameter_roles must be a mapping name -> role, got {declared!r}")
    return {str(k): str(v) for k, v in declared.items()}


def _inferred(model: nn.Module) -> dict[int, Role]:
    """Roles by parameter identity from ``weight_layers`` (the contract's rule)."""
    layers = list(getattr(model, "weight_layers", []) or [])
    out: dict[int, Role] = {}
    embeddings = [layer for layer in layers if isinstance(layer, nn.Embedding)]
    for i, layer in enumerate(layers):
        weight = getattr(layer, "weight", None)
        if isinstance(weight, torch.Tensor):
            if isinstance(layer, nn.Embedding) or (not embeddings and i == 0 and len(layers) > 1):
                role: Role = "input"
            elif i == len(layers) - 1:
                role = "readout"
            else:
                role = "hidden"
            out.setdefault(id(weight), role)
        bias = getattr(layer, "bias", None)
        if isinstance(bias, torch.Tensor):
            out.setdefault(id(bias), "bias")
    return out


def parameter_roles(model: nn.Module) -> dict[str, Role]:
    """Name (as ``model.named_parameters()`` gives it) -> :data:`Role` for every parameter.

    The model's own ``parameter_roles`` first, then the rule of the module docstring; a
    :class:`RoleError` names the first parameter neither settles or a role not in :data:`ROLES`.
    """
    declared = _declared(model)
    inferred = _inferred(model)
    out: dict[str, Role] = {}
    for name, param in model.named_parameters():
        role = declared.get(name)
        if role is None:
            role = inferred.get(id(param))
        if role is None and param.dim() <= 1:
            role = "norm"
        if role is None:
            raise RoleError(
                f"parameter {name!r} {tuple(param.shape)} has no role: it is not in the model's "
                f"weight_layers; declare it in model.parameter_roles (one of {', '.join(ROLES)})"
            )
        if role not in ROLES:
            raise RoleError(
                f"parameter {name!r}: unknown role {role!r} (one of {', '.join(ROLES)})"
            )
        out[name] = cast(Role, role)
    unknown = set(declared) - set(out)
    if unknown:
        raise RoleError(f"model.parameter_roles names no parameter: {', '.join(sorted(unknown))}")
    return out


def tag_roles(model: nn.Module) -> dict[str, Role]:
    """Set :data:`ROLE_ATTR` on every parameter of ``model``; returns the roles by name."""
    roles = parameter_roles(model)
    for name, param in model.named_parameters():
        setattr(param, ROLE_ATTR, roles[name])
    return roles


def role_of(tensor: torch.Tensor) -> Role | None:
    """The role the engine tagged ``tensor`` with (None for an untagged tensor)."""
    return cast(Role | None, getattr(tensor, ROLE_ATTR, None))
