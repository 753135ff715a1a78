"""Gradient health of a whole stack: every member's statistics from the stacked tensors at once.

Why: a stack of K members with one health callback each costs K host transfers and K times the
small reductions per snapshot, which on a GPU is K synchronisations per snapshot. Here the
statistics are the one-by-one callback's (:class:`techbench.engine.health.MemberHealth`, the one
definition of each) reduced over the member dimension of the stacked tensors: the activation
outputs ``[K, B, ...]`` that the snapshot step's vmapped forward returns, the stacked gradients
and weights ``[K, ...]`` and their update; all members' values reach the host in one transfer
per snapshot, and each member's :class:`~techbench.engine.health.GradientHealth` receives exactly the
rows it records when the trial runs alone (same metrics, layers and steps).

``health_overhead`` of a member is the stack's time in health (its share of the stack's training
time is then what the one-by-one overhead means).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Protocol

import torch
from torch import nn

from .health import GradientHealth, MemberHealth, emit_rows, row_keys, weight_layers_of


class StackedTensors(Protocol):
    """What the health reads of the stacked engine (:class:`techbench.engine.population.StackedModule`):
    parameter name -> ``[K, ...]`` tensor, and their gradients (None: none)."""

    def stacked_params(self) -> dict[str, torch.Tensor]: ...

    def stacked_grads(self) -> dict[str, torch.Tensor | None]: ...


class StackedHealth:
    """The members' gradient health, one :class:`MemberHealth` over the stack.

    ``sinks[k]`` is member k's :class:`GradientHealth` (its cadence, activation properties,
    rows and seconds); ``model`` is one member's network (the layout: weight layers and
    activations in forward order); ``pre_transform``: gradient transforms run between
    :meth:`after_backward` and :meth:`before_update`, and the global norm before them is
    recorded, as in the one-by-one path.
    """

    def __init__(
        self,
        sinks: Sequence[GradientHealth],
        model: nn.Module,
        source: StackedTensors,
        pre_transform: bool = False,
    ) -> None:
        self.sinks = list(sinks)
        self.source = source
        self.every_n_steps = self.sinks[0].every_n_steps
        self.pre_transform = pre_transform
        name_of = {id(p): name for name, p in model.named_parameters()}
        self.param_names = [name for name, p in model.named_parameters() if p.requires_grad]
        self.weight_names = [name_of.get(id(layer.weight)) for layer in weight_layers_of(model)]
        if None in self.weight_names:
            raise ValueError("stacked gradient health needs every weight to be a parameter")
        num_acts = len(getattr(model, "activation_layers", []))
        first = self.sinks[0]
        self.core = MemberHealth(
            len(self.sinks),
            num_acts,
            first.properties,
            features_last=bool(getattr(model, "features_last", False)),
        )
        self._keys = row_keys(len(self.weight_names), num_acts, first.act_metrics, pre_transform)
        self._step = self._epoch = 0
        self.seconds = 0.0

    def due(self, step: int) -> bool:
        """Whether optimizer step ``step`` is a snapshot."""
        return step % self.every_n_steps == 0

    def _weights(self) -> list[torch.Tensor]:
        params = self.source.stacked_params()
        return [params[name].detach() for name in self.weight_names if name is not None]

    def start(self) -> None:
        """At fit start: every member's initial weights ``W_0``."""
        self.core.start(self._weights())

    def begin(self, step: int, epoch: int, activations: Sequence[torch.Tensor]) -> None:
        """A snapshot step: activation layer ``i``'s outputs ``[K, B, ...]`` of its forward."""
        start = time.perf_counter()
        self._step, self._epoch = step, epoch
        for i, output in enumerate(activations):
            self.core.observe(i, output)
        self.seconds += time.perf_counter() - start

    def after_backward(self) -> None:
        """Straight after backward: each member's global gradient norm before any gradient
        transform (only when transforms run; a device op)."""
        if not self.pre_transform:
            return
        start = time.perf_counter()
        grads = self.source.stacked_grads()
        self.core.after_backward([g for n in self.param_names if (g := grads[n]) is not None])
        self.seconds += time.perf_counter() - start

    def before_update(self) -> None:
        """Before the optimizer step: gradient norms and a copy of the weights (device ops)."""
        start = time.perf_counter()
        grads = self.source.stacked_grads()
        names = [n for n in self.param_names if grads[n] is not None]
        position = {name: j for j, name in enumerate(names)}
        layers = [position.get(name) if name is not None else None for name in self.weight_names]
        self.core.before_update(
            [g for n in names if (g := grads[n]) is not None], layers, self._weights()
        )
        self.seconds += time.perf_counter() - start

    def end(self, live: Sequence[bool]) -> None:
        """After the optimizer step: one transfer for the whole stack, then the rows of each
        ``live`` member."""
        start = time.perf_counter()
        values = self.core.after_update(self._weights(), self.pre_transform)
        for sink, member_values, alive in zip(self.sinks, values, live, strict=True):
            if alive:
                emit_rows(sink.rows, self._keys, self._step, self._epoch, member_values)
        spent = time.perf_counter() - start + self.seconds
        self.seconds = 0.0
        for sink, alive in zip(self.sinks, live, strict=True):
            if alive:
                sink.seconds += spent
