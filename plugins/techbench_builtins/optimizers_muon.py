"""Muon (Jordan et al. 2024): one trial's optimizer and the stacked implementation.

The rule (Jordan et al. 2024, "Muon: An optimizer for hidden layers in neural networks",
kellerjordan.github.io/posts/muon; the authors' ``muon.py`` and ``torch.optim.Muon``): for each
hidden matrix G (conv kernels ``[out, in, kh, kw]`` viewed as ``[out, in*kh*kw]``, as Jordan's
code does), with momentum mu,

- ``B <- mu B + (1 - mu) G`` (an exponential average, as ``buf.lerp_(grad, 1 - mu)``; the sum
  ``B <- mu B + G`` of torch's docstring is ``B / (1 - mu)``, the same step after the
  scale-invariant Newton-Schulz);
- ``U = (1 - mu) G + mu B`` with Nesterov, else ``U = B``;
- ``O = NS_5(U)``: ``X_0 = U / max(||U||_F, 1e-7)``, then five steps of the quintic
  ``X <- a X + (b A + c A^2) X`` with ``A = X X^T`` and ``(a, b, c) = (3.4445, -4.7750, 2.0315)``
  (on the transpose when the matrix is tall, so that ``A`` is the smaller Gram matrix). It maps
  each singular value of X_0 in about [3e-3, 1] into [0.68, 1.21]: O is about U's orthogonal
  polar factor;
- ``p <- p (1 - lr wd) - lr s O``, with the shape scale ``s = max(1, rows/cols)^0.5``
  (``adjust_lr="original"``, Jordan's code and torch's default) or ``0.2 sqrt(max(rows, cols))``
  (``"match_rms_adamw"``, Liu et al. 2025, "Muon is scalable for LLM training", arXiv
  2502.16982: the update's RMS matches AdamW's, so AdamW's lr and wd carry over).

Every other parameter (role ``input``, ``readout``, ``bias``, ``norm``:
:mod:`techbench.techniques.roles`) takes an AdamW step with its own rate ``adam_lr``, betas and
eps, as the authors run Muon (``MuonWithAuxAdam``); decoupled decay ``p <- p (1 - r wd)`` with
each side's rate r. An untagged tensor (a raw tensor of a conformance check) is a hidden
matrix when it has two or more dimensions (:func:`~techbench.techniques.families.trial_ndim`).

Dtype: Newton-Schulz runs in float32 (float64 for float64 parameters), not Jordan's bfloat16,
which pays on GPU tensor cores but not on a CPU, and whose 8-bit mantissa moves the update by
about 2-4% (the ``torch_muon`` check measures it): the fast side then agrees with the float64
reference within float32 tolerance.

Why a module of its own: the Muon step is not elementwise (a norm and matrix products per
matrix), its parameters route by role, and :mod:`techbench_builtins.optimizers_stacked` is large
already; the AdamW side is :class:`~techbench_builtins.optimizers_stacked.StackedAdam`'s update,
written once.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from functools import partial
from typing import Any

import torch
from torch import Tensor

from techbench.techniques.families import trial_ndim
from techbench.techniques.roles import role_of

from .optimizers_stacked import Coefficients, OneTrial, StackedAdam, _addcmul, _at

NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)
"""(a, b, c) of Jordan's quintic Newton-Schulz step (read at each call)."""

NS_EPS = 1e-7
"""Floor of the Frobenius norm that Newton-Schulz divides by (torch.optim.Muon's ``eps``)."""

ADJUST_LR = ("original", "match_rms_adamw")

_ADAMW: dict[str, Any] = {"decoupled": True, "bias_correction": True, "eps_placement": "outside"}
"""What the AdamW side of :class:`StackedAdam` fixes."""


def is_hidden(p: Tensor) -> bool:
    """Whether ``p`` takes the Muon step: its role is ``hidden`` (and it is a matrix), or,
    untagged, it has two or more dimensions of its own."""
    role = role_of(p)
    return (role is None or role == "hidden") and trial_ndim(p) >= 2


def as_matrices(t: Tensor, p: Tensor) -> Tensor:
    """``t`` (shaped like ``p``) as ``[B, rows, cols]``: B the member dimensions of a stacked
    ``p`` (1 for one trial), rows its first own dimension, cols the product of the others."""
    lead = p.dim() - trial_ndim(p)
    return t.reshape(math.prod(p.shape[:lead]), p.shape[lead], -1)


def shape_scale(p: Tensor, adjust_lr: str) -> float:
    """The shape-dependent factor s of the Muon step (module docstring)."""
    lead = p.dim() - trial_ndim(p)
    rows, cols = p.shape[lead], math.prod(p.shape[lead + 1 :])
    if adjust_lr == "original":
        return max(1.0, rows / cols) ** 0.5
    return 0.2 * math.sqrt(max(rows, cols))


def _check_adjust_lr(hp: Mapping[str, Any]) -> None:
    if hp.get("adjust_lr") not in ADJUST_LR:
        raise ValueError(
            f"adjust_lr must be one of {', '.join(ADJUST_LR)}, got {hp.get('adjust_lr')!r}"
        )


def newton_schulz(g: Tensor, steps: int) -> Tensor:
    """Jordan's quintic iteration on each matrix of ``g`` ``[B, m, n]`` (normalised per matrix,
    so members never see each other), in float32 or float64 (module docstring)."""
    a, b, c = NS_COEFFICIENTS
    x = g.to(torch.promote_types(g.dtype, torch.float32))
    tall = x.size(-2) > x.size(-1)
    if tall:
        x = x.mT
    x = x / x.norm(dim=(-2, -1), keepdim=True).clamp(min=NS_EPS)
    for _ in range(steps):
        gram = x @ x.mT
        x = torch.baddbmm(x, torch.baddbmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
    return x.mT if tall else x


class StackedMuon(StackedAdam):
    """Muon for hidden matrices, AdamW (:class:`StackedAdam`, decoupled) for the rest, per
    member: ``lr`` and ``adam_lr`` are both member rates times the group's multiplier.

    No diagonal preconditioner for a hidden matrix (:meth:`preconditioner` is None there; the
    orthogonalised step divides by none); AdamW's for the others."""

    MEMBER = ("lr", "momentum", "weight_decay", "adam_lr", "beta1", "beta2", "eps")  # type: ignore[assignment]

    def __init__(self, params: Iterable[Tensor], **hp: Any) -> None:
        _check_adjust_lr(hp)
        super().__init__(params, **hp)

    def step_coefficients(
        self, group: dict[str, Any], p: Tensor, t: int
    ) -> tuple[Coefficients, Coefficients]:
        hp = self.group_hp(group, p.device)
        f = float(group["lr"])
        c64 = self.rule_coefficients(hp, hp["lr"] * f, hp["adam_lr"] * f, t)
        return {k: v.to(p.dtype) for k, v in c64.items()}, c64

    def coefficients(self, hp: Mapping[str, Any], lr: Any, t: int) -> Coefficients:
        """One trial (:class:`Muon`): each param group holds one side, ``lr`` its own rate."""
        return self.rule_coefficients(hp, lr, lr, t)

    def rule_coefficients(
        self, hp: Mapping[str, Any], lr: Any, adam_lr: Any, t: int
    ) -> Coefficients:
        """AdamW's coefficients at rate ``adam_lr`` and Muon's at rate ``lr``."""
        mu = hp["momentum"]
        return {
            **StackedAdam.coefficients(self, hp, adam_lr, t),
            "neg_lr": -lr,
            "momentum": mu,
            "one_minus_momentum": 1 - mu,
            "muon_shrink": 1 - lr * hp["weight_decay"],
        }

    def update(
        self,
        p: Tensor,
        g: Tensor,
        state: dict[str, Any],
        c: Coefficients,
        c64: Coefficients,
    ) -> None:
        if not is_hidden(p):
            super().update(p, g, state, c, c64)
            return
        if "momentum_buffer" not in state:
            state["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        buf = state["momentum_buffer"]
        buf.lerp_(g, _at(c["one_minus_momentum"], p))
        u = g.lerp(buf, _at(c["momentum"], p)) if self.group["nesterov"] else buf
        o = newton_schulz(as_matrices(u, p), int(self.group["ns_steps"]))
        if self.decays(p):
            p.mul_(_at(c["muon_shrink"], p))
        step = _at(c["neg_lr"], p) * shape_scale(p, self.group["adjust_lr"])
        _addcmul(p, o.reshape(p.shape).to(p.dtype), step, inplace=True)

    def rate_key(self, p: Tensor) -> str:
        """The member rate ``p`` steps at: ``lr`` for a hidden matrix, ``adam_lr`` otherwise
        (what a regularizer's ``after_step`` reads as the group's ``lr``, as for :class:`Muon`)."""
        return "lr" if is_hidden(p) else "adam_lr"

    def preconditioner(self, p: Tensor) -> Tensor | None:
        """None for a hidden matrix; AdamW's ``sqrt(v / (1 - beta2^t)) + eps`` otherwise."""
        return None if is_hidden(p) else super().preconditioner(p)


class Muon(OneTrial, StackedMuon):
    """Muon with auxiliary AdamW for one trial's parameters: two param groups, the hidden
    matrices at ``lr`` and the others at ``adam_lr`` (as ``MuonWithAuxAdam``), so a schedule
    scales each side's own rate."""

    def __init__(self, params: Iterable[Any], **hp: Any) -> None:
        _check_adjust_lr(hp)
        super().__init__(_route(params, hp.get("adam_lr")), **_ADAMW, **hp)


def _route(params: Iterable[Any], adam_lr: float | None) -> list[dict[str, Any]]:
    """Each param group split into its hidden matrices and the others (rate ``adam_lr``)."""
    items = list(params)
    groups = (
        [dict(g) for g in items] if items and isinstance(items[0], dict) else [{"params": items}]
    )
    out = []
    for group in groups:
        tensors = list(group["params"])
        hidden = [p for p in tensors if is_hidden(p)]
        others = [p for p in tensors if not is_hidden(p)]
        if hidden:
            out.append({**group, "params": hidden})
        if others:
            out.append({**group, "params": others, "lr": group.get("adam_lr", adam_lr)})
    return out


stacked = partial(StackedMuon, **_ADAMW)
"""The stacked factory (``spec.stacked``): one param group, per-member ``float`` values."""
