"""Sampled modules (dropout) in a stack: each member's samples drawn outside ``vmap`` with its
own generator, fed into the vmapped forward.

Why: inside ``vmap`` there is one random stream for all members, but member i must draw exactly
what trial i draws alone (:class:`techbench.techniques.families.SampledModule`): its own generator, seeded
``seed +`` :data:`~techbench.techniques.families.MODULE_SEED_OFFSET`, the same shapes, in the same order
(layer by layer in forward order, step after step). So before each training forward
:meth:`StackedSamples.draw` loops over the members and calls every sampled layer's ``sample``
of the member's *own* network (which carries that member's hyper-parameters, e.g. its dropout
``p``) with the member's generator; the shapes come from a one-time forward of the network on
meta tensors (no compute, no randomness) per input shape. Inside ``vmap``,
:meth:`StackedSamples.feeding` makes each sampled layer of the shared skeleton compute
``forward_with(x, its next sample)``, each member seeing its slice. Eval mode is the layers' own
forward (no sampling), so evaluation, best weights and health snapshots are unchanged.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import nn
from torch.func import functional_call

from ..techniques.families import SampledModule, bind_module_generator

_Call = tuple[int, tuple[int, ...], torch.dtype]


class StackedSamples:
    """The sampled layers of a stack: ``skeleton``'s, and each member's own (by module name)."""

    def __init__(
        self, skeleton: nn.Module, members: Sequence[nn.Module], seeds: Sequence[int]
    ) -> None:
        self.skeleton = skeleton
        self.names = [n for n, m in skeleton.named_modules() if isinstance(m, SampledModule)]
        self.layers = [skeleton.get_submodule(n) for n in self.names]
        self.members = list(members)
        self.member_layers: list[list[Any]] = [
            [model.get_submodule(n) for n in self.names] for model in members
        ]
        self.seeds = [int(s) for s in seeds]
        self.generators: list[torch.Generator] = []
        self._calls: dict[tuple[int, ...], list[_Call]] = {}

    @classmethod
    def of(
        cls, skeleton: nn.Module, members: Sequence[nn.Module], seeds: Sequence[int]
    ) -> StackedSamples | None:
        """The stack's sampled layers, or None when its network has none."""
        out = cls(skeleton, members, seeds)
        return out if out.names else None

    def start(self, device: torch.device) -> None:
        """One generator per member on ``device``, bound to the member's layers as the
        one-by-one run binds its own (:func:`techbench.techniques.families.bind_module_generator`)."""
        bound = [
            bind_module_generator(model, s, device)
            for model, s in zip(self.members, self.seeds, strict=True)
        ]
        self.generators = [g for g in bound if g is not None]
        assert len(self.generators) == len(self.members), "every member has sampled layers"

    def calls(
        self,
        params: Mapping[str, torch.Tensor],
        buffers: Mapping[str, torch.Tensor],
        x: torch.Tensor,
    ) -> list[_Call]:
        """``(layer index, input shape, dtype)`` of every sampled-layer call of one member's training
        forward on ``x`` (one member's batch), in call order; found once per input shape by a
        forward on meta tensors."""
        key = tuple(x.shape)
        if key not in self._calls:
            meta = {n: torch.empty_like(v[0], device="meta") for n, v in params.items()}
            meta_b = {n: torch.empty_like(v[0], device="meta") for n, v in buffers.items()}
            calls: list[_Call] = []

            def record(i: int) -> Any:
                def forward(h: torch.Tensor) -> torch.Tensor:
                    calls.append((i, tuple(h.shape), h.dtype))
                    return h

                return forward

            with _patched(self.layers, [record(i) for i in range(len(self.layers))]):
                was_training = self.skeleton.training
                self.skeleton.train()
                try:
                    functional_call(
                        self.skeleton, (meta, meta_b), (torch.empty_like(x, device="meta"),)
                    )
                finally:
                    self.skeleton.train(was_training)
            self._calls[key] = calls
        return self._calls[key]

    def draw(
        self,
        params: Mapping[str, torch.Tensor],
        buffers: Mapping[str, torch.Tensor],
        x: torch.Tensor,
    ) -> tuple[torch.Tensor, ...]:
        """Every member's samples for one training forward on ``x`` (``[K, B, ...]``): one
        ``[K, ...]`` tensor per sampled-layer call, in call order."""
        calls = self.calls(params, buffers, x[0])
        per_member = [
            [
                layers[i].sample(shape, dtype, x.device, g)
                for i, shape, dtype in calls  # the order of the one-by-one forward's draws
            ]
            for layers, g in zip(self.member_layers, self.generators, strict=True)
        ]
        return tuple(torch.stack(column) for column in zip(*per_member, strict=True))

    @contextlib.contextmanager
    def feeding(self, samples: Sequence[torch.Tensor]) -> Iterator[None]:
        """Inside ``vmap``: the skeleton's sampled layers compute ``forward_with(x, sample)``
        with ``samples`` (one member's, in call order); nothing changes when empty."""
        if not samples:
            yield
            return
        queue = iter(samples)

        def fed(layer: Any) -> Any:
            def forward(h: torch.Tensor) -> torch.Tensor:
                if not layer.training:
                    return type(layer).forward(layer, h)
                return layer.forward_with(h, next(queue))

            return forward

        with _patched(self.layers, [fed(layer) for layer in self.layers]):
            yield
        if next(queue, None) is not None:
            raise RuntimeError("the stacked forward called fewer sampled layers than its probe")


@contextlib.contextmanager
def _patched(layers: Sequence[nn.Module], forwards: Sequence[Any]) -> Iterator[None]:
    """``layer.forward`` replaced by the given function while inside (an instance attribute,
    which ``nn.Module.__call__`` prefers to the class's method)."""
    for layer, forward in zip(layers, forwards, strict=True):
        layer.forward = forward
    try:
        yield
    finally:
        for layer in layers:
            del layer.forward
