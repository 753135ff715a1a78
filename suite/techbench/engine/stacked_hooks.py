"""Regularizer gradient and after-step hooks in the stacked engine, member by member.

Why: ``transform_gradients`` (clipping, gradient noise, the pre-step copy of decoupled weight
decay) and ``after_step`` (max-norm, decoupled weight decay) read and write a trial's parameters
and gradients, often with reductions over the whole trial (the global gradient norm of
Pascanu et al. 2013's clipping). Run on the stacked tensors they would couple the members. So
each member's own regularizer instance (its own hyper-parameters) is called on the member's own
network, whose parameters and gradients are views of its rows of the stack (no copies): what it
reads and writes in place is exactly member k's slice. ``transform_gradients`` gets the member's
step count and its own noise generator (the stream the one-by-one path gives the trial),
``after_step`` a :class:`MemberOptimizer` whose parameter groups hold the member's parameters
with its optimizer group's current hyper-parameters (``lr``), so member k's calls are the calls
the trial alone makes (a stack of one calls them on its own network). Frozen members are
skipped.

A regularizer may also act on all members at once: a class that overrides the declared hook
:meth:`techbench.techniques.families.Regularizer.stacked_transform_gradients` (``grads``: the stacked
``[K, ...]`` gradients of the members given, in member order) is called once instead of the loop
(see :class:`techbench_builtins.regularizers_impl.ClipNorm`); one that keeps the default runs
member by member. The conformance check ``stacked_gradients``
(:mod:`techbench.testing.regularizer_stacked`) proves member k of a stacked call equals member k
alone.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from ..techniques.families import Regularizer, StackedOptimizer
from .callbacks import overrides

GRADIENT_HOOKS = ("transform_gradients", "after_step")
"""The regularizer hooks this module drives per member."""

STACKED_IMPLEMENTATIONS = True
"""Use regularizers' ``stacked_transform_gradients`` (False: every member's own hook, one by
one; the benchmark and the equivalence tests compare the two)."""


class MemberOptimizer:
    """What a regularizer's ``after_step`` reads of the optimizer, for one member.

    ``param_groups`` mirrors the stack's optimizer of the member's group, group by group, with
    each stacked leaf replaced by the member's own parameter (a view of its row) and every other
    entry (``lr``, ``weight_decay``, ...) read live, so a schedule's current ``lr`` is seen. A
    stacked optimizer with per-member hyper-parameters (``stacked``:
    :class:`techbench.techniques.families.StackedOptimizer`, its group ``lr`` the schedule's multiplier)
    shows the member's own values from ``member_hyperparams()``, ``lr`` being the multiplier
    times its rate; the group's own tensor or mapping entries (how an implementation stores its
    values) are left out. A stacked optimizer whose parameters step at different member rates
    declares ``rate_key(param) -> str`` (the member hyper-parameter that is ``param``'s rate,
    e.g. Muon's ``adam_lr`` for non-hidden parameters): the member's group is then split into
    one entry per rate, as the optimizer alone would group them.
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        own: dict[int, nn.Parameter],
        row: int,
        stacked: bool = False,
    ) -> None:
        if stacked and not isinstance(optimizer, StackedOptimizer):
            raise TypeError(
                f"{type(optimizer).__name__} is used as a stacked optimizer but has no "
                "member_hyperparams() (techbench.techniques.families.StackedOptimizer)"
            )
        self.optimizer = optimizer
        self._own = own
        self._row = row
        self._stacked = stacked

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        member: Mapping[str, torch.Tensor] = {}
        if self._stacked:
            member = self.optimizer.member_hyperparams()  # type: ignore[attr-defined]
        rate_key = getattr(self.optimizer, "rate_key", None) if self._stacked else None
        out = []
        for group in self.optimizer.param_groups:
            entry = {
                k: v
                for k, v in group.items()
                if k != "params" and not (self._stacked and isinstance(v, Mapping | torch.Tensor))
            }
            for name, values in member.items():
                entry[name] = float(values[self._row])
            params = [p for p in group["params"] if id(p) in self._own]
            keys = [rate_key(p) if callable(rate_key) else "lr" for p in params]
            for key in dict.fromkeys(keys) or ["lr"]:  # one entry per rate, as alone
                part = dict(entry)
                if key in member:
                    part["lr"] = float(group["lr"]) * float(member[key][self._row])
                part["params"] = [
                    self._own[id(p)] for p, k in zip(params, keys, strict=True) if k == key
                ]
                out.append(part)
        return out

    @property
    def defaults(self) -> dict[str, Any]:
        return self.optimizer.defaults


class StackedHooks:
    """The ``transform_gradients`` and ``after_step`` hooks of a stack's members.

    ``regularizers[k]`` is member k's own instance, ``models[k]`` its network, whose parameters
    :meth:`bind` makes views of its rows of the stack.
    """

    def __init__(self, regularizers: Sequence[Any], models: Sequence[nn.Module]) -> None:
        self.regularizers = list(regularizers)
        self.models = list(models)
        self.transforms = [overrides(r, "transform_gradients", Regularizer) for r in regularizers]
        self.after = [overrides(r, "after_step", Regularizer) for r in regularizers]
        self.active = any(self.transforms) or any(self.after)
        self._optimizers: list[MemberOptimizer] = []
        self._leaf_of: Callable[[str, int], tuple[nn.Parameter, int]] | None = None
        self._plan: tuple[tuple[int, ...], list[tuple[type, list[int]]]] | None = None

    def bind(
        self,
        leaf_of: Callable[[str, int], tuple[nn.Parameter, int]],
        optimizers: Sequence[torch.optim.Optimizer],
        group_of: Sequence[int],
        stacked: bool = False,
    ) -> None:
        """Make member k's parameters views of its rows (``leaf_of(name, k) -> (leaf, row)``)
        and give it the view of its group's optimizer ``optimizers[group_of[k]]`` (``stacked``:
        they are stacked optimizers with per-member values, ``spec.stacked``)."""
        self._optimizers = []
        self._leaf_of = leaf_of
        for k, model in enumerate(self.models):
            own: dict[int, nn.Parameter] = {}
            row = 0
            for name, p in model.named_parameters():
                leaf, row = leaf_of(name, k)
                p.data = leaf.detach()[row]
                own[id(leaf)] = p
            self._optimizers.append(MemberOptimizer(optimizers[group_of[k]], own, row, stacked))

    def bind_grads(self, ks: Sequence[int]) -> None:
        """Members ``ks``' parameters' ``grad``: views of their rows of the stacked gradients."""
        assert self._leaf_of is not None, "bind() first"
        for k in ks:
            for name, p in self.models[k].named_parameters():
                leaf, row = self._leaf_of(name, k)
                p.grad = None if leaf.grad is None else leaf.grad[row]

    def release_grads(self, ks: Sequence[int]) -> None:
        for k in ks:
            for p in self.models[k].parameters():
                p.grad = None

    def _runs(self, live: Sequence[int], group_of: Sequence[int]) -> list[tuple[type, list[int]]]:
        """Live members with a gradient transform, in runs of one class, one optimizer group
        and consecutive indices (a run of a class with ``stacked_transform_gradients`` is one
        call on contiguous rows)."""
        key = tuple(live)
        if self._plan is not None and self._plan[0] == key:
            return self._plan[1]
        runs: list[tuple[type, list[int]]] = []
        for k in live:
            if not self.transforms[k]:
                continue
            cls = type(self.regularizers[k])
            last = runs[-1] if runs else None
            if (
                last is not None
                and last[0] is cls
                and last[1][-1] == k - 1
                and group_of[k - 1] == group_of[k]
                and stacked_transform(cls) is not None
            ):
                last[1].append(k)
            else:
                runs.append((cls, [k]))
        self._plan = (key, runs)
        return runs

    def needs_grads(self, live: Sequence[int], group_of: Sequence[int]) -> list[int]:
        """The members whose own parameters must hold their gradient rows for this step's
        transforms (those not handled by a stacked implementation)."""
        return [
            k
            for cls, ks in self._runs(live, group_of)
            if len(ks) == 1 or stacked_transform(cls) is None
            for k in ks
        ]

    @torch.no_grad()
    def transform_gradients(
        self,
        live: Sequence[int],
        group_of: Sequence[int],
        step: int,
        generators: Sequence[torch.Generator],
        rows: Callable[[int, int], list[torch.Tensor]],
    ) -> None:
        """Each live member's ``transform_gradients``, in member order; a run of members of a
        class with ``stacked_transform_gradients`` is one call on ``rows(lo, hi)``, the
        gradient rows ``lo..hi-1`` of every stacked parameter (views, changed in place)."""
        for cls, ks in self._runs(live, group_of):
            batched = stacked_transform(cls)
            if batched is not None and len(ks) > 1:
                batched(
                    [self.regularizers[k] for k in ks],
                    rows(ks[0], ks[-1] + 1),
                    step,
                    [generators[k] for k in ks],
                )
                continue
            for k in ks:
                self.regularizers[k].transform_gradients(self.models[k], step, generators[k])

    @torch.no_grad()
    def after_step(self, live: Sequence[int]) -> None:
        """Each live member's ``after_step`` on its own network and optimizer view."""
        for k in live:
            if self.after[k]:
                self.regularizers[k].after_step(self.models[k], self._optimizers[k])


def stacked_transform(cls: type) -> Callable[..., None] | None:
    """``cls.stacked_transform_gradients`` when ``cls`` overrides the declared default
    (:meth:`Regularizer.stacked_transform_gradients`), else None: run each member's own."""
    if not STACKED_IMPLEMENTATIONS:
        return None
    hook = getattr(cls, "stacked_transform_gradients", None)
    return None if hook is Regularizer.stacked_transform_gradients else hook


def member_values(regularizers: Sequence[Any], attr: str, like: torch.Tensor) -> torch.Tensor:
    """``[getattr(r, attr) for r in regularizers]`` as a ``[K]`` tensor on ``like``'s device and
    dtype (made once per distinct setting, so a step pays no host-to-device copy)."""
    key = (tuple(float(getattr(r, attr)) for r in regularizers), like.device, like.dtype)
    value = _VALUES.get(key)
    if value is None:
        if len(_VALUES) > 256:
            _VALUES.clear()
        value = _VALUES[key] = torch.tensor(key[0], device=like.device, dtype=like.dtype)
    return value


_VALUES: dict[tuple[Any, ...], torch.Tensor] = {}
