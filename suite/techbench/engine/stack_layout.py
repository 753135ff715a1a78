"""The layout of a stack's tensors: which members share an optimizer, in which order, and the
meta-tensor skeleton ``functional_call`` fills with one member's parameters.

Why a module of its own: members with equal optimizer settings (or equal shared settings under a
stacked optimizer, :mod:`techbench.engine.member_hp`) share one optimizer over a contiguous slice of the
stacked tensors (:class:`techbench.engine.population.StackedModule`), so the trials are ordered before
they are stacked (:func:`order_members`) and the stack is cut into runs of equal settings
(:func:`setting_groups`); one parameter-less copy of the network (:func:`meta_skeleton`) serves
every member's ``vmap``-ed forward.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import nn


def meta_skeleton(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with meta tensors, for ``functional_call``; tied parameters stay tied
    (``.to("meta")`` would untie them: a tied head would keep a meta weight)."""
    memo: dict[int, Any] = {}
    for p in model.parameters():
        memo[id(p)] = nn.Parameter(torch.empty_like(p, device="meta"), p.requires_grad)
    for b in model.buffers():
        memo[id(b)] = torch.empty_like(b, device="meta")
    return copy.deepcopy(model, memo)


def setting_groups(
    settings: Sequence[Mapping[str, Any]], key: Callable[[Mapping[str, Any]], Any] | None = None
) -> list[tuple[int, int, dict[str, Any]]]:
    """Contiguous runs of optimizer settings equal under ``key`` (default: equal settings):
    ``(start, stop, first setting)``.

    The caller orders members so that equal keys are adjacent (:func:`order_members`).
    """
    out: list[tuple[int, int, dict[str, Any]]] = []
    keys: list[Any] = []
    for i, hp in enumerate(settings):
        k = dict(hp) if key is None else key(hp)
        if out and keys[-1] == k:
            out[-1] = (out[-1][0], i + 1, out[-1][2])
        else:
            out.append((i, i + 1, dict(hp)))
            keys.append(k)
    return out


def order_members(
    configs: Sequence[Mapping[str, Any]], key: Callable[[Mapping[str, Any]], Any] | None = None
) -> list[int]:
    """Indices of ``configs`` with equal optimizer settings (equal ``key(settings)`` when
    given) adjacent, in first appearance order."""

    keys = [
        json.dumps(c["optimizer"]["params"], sort_keys=True)
        if key is None
        else key(c["optimizer"]["params"])
        for c in configs
    ]
    first = {key: i for i, key in reversed(list(enumerate(keys)))}
    return sorted(range(len(configs)), key=lambda i: (first[keys[i]], i))
