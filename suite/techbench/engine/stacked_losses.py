"""Each member's training loss in a stack: its task loss (or its regularizer's ``loss``) plus its
regularizer's ``penalty``, as ``[K]``.

Why: the stack's objective is the sum of the members' losses, whose gradient with respect to
member i's parameters is member i's gradient (:mod:`techbench.engine.population`), so each entry must
be exactly the loss trial i minimizes when run alone: its own mean loss. Regularizer hooks see
one member's network: they run inside ``vmap`` through ``functional_call`` on the stack's
meta-tensor skeleton (:class:`_Probe`), with members[0]'s instance when every member's
regularizer is set alike, else in a loop of ``functional_call`` with each member's own instance.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.func import functional_call, vmap


class _Probe(nn.Module):
    """Calls a regularizer hook on the wrapped network inside ``functional_call``, so that the
    hook sees one member's parameters (vmap hides the member dimension)."""

    def __init__(self, net: nn.Module, hook: Callable[[nn.Module], Any]) -> None:
        super().__init__()
        self.net = net
        self.hook = hook

    def forward(self) -> Any:
        return self.hook(self.net)


@dataclass(frozen=True)
class MemberLosses:
    """The members' loss for a stack of one network shape and one regularizer kind.

    ``regularizers[k]`` is member k's instance; ``replaced`` / ``penalized``: the regularizer
    overrides ``loss`` / ``penalty``; ``shared``: every member's is set alike.
    """

    task: str
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    base: nn.Module
    regularizers: Sequence[Any]
    replaced: bool
    penalized: bool
    shared: bool

    def __call__(
        self, out: torch.Tensor, y: torch.Tensor, params: Mapping[str, torch.Tensor]
    ) -> torch.Tensor:
        """Each member's training loss ``[K]`` for outputs ``out[K, ...]`` and targets
        ``y[K, ...]`` at stacked parameters ``params``."""
        r, replaced = self.regularizers[0], self.replaced

        def loss_with(reg: Any) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
            def member_loss(o: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
                if replaced:
                    value = reg.loss(o, t)
                    if value is not None:
                        return value
                return self.loss_fn(o, t)

            return member_loss

        if not replaced and self.task == "classification":
            # the per-member mean cross-entropy in one call (vmap costs more than the math)
            flat = nn.functional.cross_entropy(out.flatten(0, 1), y.flatten(), reduction="none")
            losses = flat.view(y.shape[0], -1).mean(dim=1)
        elif replaced and not self.shared:
            losses = torch.stack(
                [loss_with(reg)(out[k], y[k]) for k, reg in enumerate(self.regularizers)]
            )
        else:
            losses = vmap(loss_with(r))(out, y)
        if self.penalized:
            named = {"net." + k: v for k, v in params.items()}

            def penalty_with(reg: Any) -> Callable[[dict[str, torch.Tensor]], torch.Tensor]:
                probe = _Probe(self.base, reg.penalty)

                def member_penalty(p: dict[str, torch.Tensor]) -> torch.Tensor:
                    term = functional_call(probe, p, ())
                    if term is None:
                        return torch.zeros((), dtype=losses.dtype, device=losses.device)
                    return term

                return member_penalty

            if self.shared:
                losses = losses + vmap(penalty_with(r))(named)
            else:  # members set differently: one call each
                terms = [
                    penalty_with(reg)({n: v[k] for n, v in named.items()})
                    for k, reg in enumerate(self.regularizers)
                ]
                losses = losses + torch.stack(terms).to(losses.device)
        return losses
