"""Built-in optimizers: fast factories and float64 references written from the update rules.

Fast side: ``factory(params, **hp) -> torch.optim.Optimizer``, given every hyper-parameter (the
defaults are the specs', :mod:`techbench_builtins.optimizers`). Where torch.optim implements the
rule exactly it is used as is (its default foreach/fused choice); the variants torch lacks
(epsilon inside the root, Adam without bias correction, Lion) are the stacked implementations'
rules at K = 1 (:class:`~techbench_builtins.optimizers_stacked.OneTrial`), so each rule is
written once, with the usual ``state_dict``/``load_state_dict``.

Reference side: an :class:`UpdateRule` of two functions over one parameter tensor, as stated in
:mod:`techbench.testing.optimizer`: ``init_state(p, **hp) -> dict`` and
``step(p, g, state, t, **hp) -> p_new`` (``t`` counts from 1; ``state`` is updated in place).
They are written straight from the formulas, elementwise, for float64 tensors.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from techbench.techniques.families import trial_ndim

from .optimizers_muon import Muon
from .optimizers_stacked import AdamVariant, Lion, RMSpropVariant

Params = Iterable[Tensor] | Iterable[dict[str, Any]]


@dataclass(frozen=True)
class UpdateRule:
    """A reference optimizer: per-tensor state initialisation and one update step."""

    init_state: Callable[..., dict[str, Any]]
    step: Callable[..., Tensor]


def decay_groups(params: Params, weight_decay: float, decay: str) -> Params:
    """``params`` split so that only the chosen ones decay (the ``decay`` hyper-parameter).

    ``"all"``: unchanged (torch.optim decays every parameter of a group). ``"weights"``: every
    group split into its tensors of two or more dimensions (:func:`techbench.techniques.families.trial_ndim`,
    so a stacked bias stays a bias), which keep the group's
    ``weight_decay``, and the others (biases, normalizer scales) with ``weight_decay`` 0, as the
    ``l2``/``weight_decay`` regularizers choose by default. Empty groups are left out.
    """
    if decay == "all" or weight_decay == 0.0:
        return params
    if decay != "weights":
        raise ValueError(f"decay must be 'weights' or 'all', got {decay!r}")
    items: list[Any] = list(params)
    groups: list[dict[str, Any]] = (
        [dict(g) for g in items] if items and isinstance(items[0], dict) else [{"params": items}]
    )
    out: list[dict[str, Any]] = []
    for group in groups:
        tensors = list(group["params"])
        weights = [p for p in tensors if trial_ndim(p) >= 2]
        others = [p for p in tensors if trial_ndim(p) < 2]
        if weights:
            out.append({**group, "params": weights})
        if others:
            out.append({**group, "params": others, "weight_decay": 0.0})
    return out


def _decays(rule_step: Callable[..., Tensor]) -> Callable[..., Tensor]:
    """A reference step that applies ``weight_decay`` only where ``decay`` says: with
    ``decay="weights"`` a tensor of fewer than two dimensions steps with weight_decay 0."""

    def step(p: Tensor, g: Tensor, state: dict, t: int, **hp: Any) -> Tensor:
        if hp.get("decay", "all") == "weights" and p.dim() < 2:
            hp = {**hp, "weight_decay": 0.0}
        return rule_step(p, g, state, t, **hp)

    step.__doc__ = rule_step.__doc__
    return step


# ---------------------------------------------------------------------------------------------
# Fast factories: (params, **hp) -> torch.optim.Optimizer, every hyper-parameter of the spec given
# (the defaults are the spec's)


def sgd(params: Params, *, lr: float, weight_decay: float, decay: str) -> torch.optim.Optimizer:
    params = decay_groups(params, weight_decay, decay)
    return torch.optim.SGD(params, lr=lr, weight_decay=weight_decay)


def momentum(
    params: Params,
    *,
    lr: float,
    momentum: float,
    dampening: float,
    weight_decay: float,
    decay: str,
) -> torch.optim.Optimizer:
    params = decay_groups(params, weight_decay, decay)
    return torch.optim.SGD(
        params, lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay
    )


def nesterov(
    params: Params, *, lr: float, momentum: float, weight_decay: float, decay: str
) -> torch.optim.Optimizer:
    params = decay_groups(params, weight_decay, decay)
    return torch.optim.SGD(
        params, lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=True
    )


def adagrad(
    params: Params,
    *,
    lr: float,
    lr_decay: float,
    weight_decay: float,
    decay: str,
    initial_accumulator_value: float,
    eps: float,
) -> torch.optim.Optimizer:
    params = decay_groups(params, weight_decay, decay)
    return torch.optim.Adagrad(
        params,
        lr=lr,
        lr_decay=lr_decay,
        weight_decay=weight_decay,
        initial_accumulator_value=initial_accumulator_value,
        eps=eps,
    )


def rmsprop(params: Params, **hp: Any) -> torch.optim.Optimizer:
    """torch's RMSprop, or the stacked rule at K = 1 for eps inside the root."""
    if hp["eps_placement"] == "inside":
        return RMSpropVariant(params, **hp)
    params = decay_groups(params, hp["weight_decay"], hp["decay"])
    keys = ("lr", "alpha", "eps", "weight_decay", "momentum")
    return torch.optim.RMSprop(params, **{k: hp[k] for k in keys})


def adam(params: Params, **hp: Any) -> torch.optim.Optimizer:
    """torch's Adam, or the stacked rule at K = 1 for eps inside or no bias correction."""
    if not hp["bias_correction"] or hp["eps_placement"] == "inside":
        return AdamVariant(params, decoupled=False, **hp)
    params = decay_groups(params, hp["weight_decay"], hp["decay"])
    return torch.optim.Adam(params, **_adam_kwargs(hp))


def _adam_kwargs(hp: dict[str, Any]) -> dict[str, Any]:
    """torch.optim's Adam-family keywords (``betas`` a pair) from the spec's."""
    return {
        "lr": hp["lr"],
        "betas": (hp["beta1"], hp["beta2"]),
        "eps": hp["eps"],
        "weight_decay": hp["weight_decay"],
    }


def adamw(params: Params, **hp: Any) -> torch.optim.Optimizer:
    params = decay_groups(params, hp["weight_decay"], hp["decay"])
    return torch.optim.AdamW(params, **_adam_kwargs(hp))


def nadam(params: Params, **hp: Any) -> torch.optim.Optimizer:
    params = decay_groups(params, hp["weight_decay"], hp["decay"])
    return torch.optim.NAdam(params, momentum_decay=hp["momentum_decay"], **_adam_kwargs(hp))


def radam(params: Params, **hp: Any) -> torch.optim.Optimizer:
    params = decay_groups(params, hp["weight_decay"], hp["decay"])
    return torch.optim.RAdam(params, **_adam_kwargs(hp))


def lion(params: Params, **hp: Any) -> torch.optim.Optimizer:
    """The stacked rule at K = 1 (torch has no Lion)."""
    return Lion(params, **hp)


def muon(params: Params, **hp: Any) -> torch.optim.Optimizer:
    """The stacked rule at K = 1 with AdamW for non-hidden parameters (torch.optim.Muon takes
    2-D parameters only, and bfloat16 Newton-Schulz): :class:`~.optimizers_muon.Muon`."""
    return Muon(params, **hp)


# ---------------------------------------------------------------------------------------------
# References: the update rules written out, one float64 tensor at a time


def _zeros(p: Tensor) -> Tensor:
    return torch.zeros_like(p, dtype=torch.float64)


def _l2(p: Tensor, g: Tensor, weight_decay: float) -> Tensor:
    """Coupled L2 (seed 001/003): the gradient of (weight_decay/2)*||p||^2 is added to g."""
    return g + weight_decay * p


def _no_state(p: Tensor, **hp: Any) -> dict[str, Any]:
    return {}


def _sgd_step(
    p: Tensor, g: Tensor, state: dict, t: int, *, lr: float, weight_decay: float, **_: Any
) -> Tensor:
    """``p <- p - lr * (g + weight_decay * p)``."""
    return p - lr * _l2(p, g, weight_decay)


def _buffer_state(p: Tensor, **hp: Any) -> dict[str, Any]:
    return {"b": _zeros(p)}


def _momentum_step(
    p: Tensor,
    g: Tensor,
    state: dict,
    t: int,
    *,
    lr: float,
    momentum: float,
    dampening: float,
    weight_decay: float,
    **_: Any,
) -> Tensor:
    """Heavy ball: ``b_1 = g_1``; ``b_t = mu*b_{t-1} + (1-dampening)*g_t``; ``p <- p - lr*b_t``."""
    g = _l2(p, g, weight_decay)
    state["b"] = g if t == 1 else momentum * state["b"] + (1 - dampening) * g
    return p - lr * state["b"]


def _nesterov_step(
    p: Tensor,
    g: Tensor,
    state: dict,
    t: int,
    *,
    lr: float,
    momentum: float,
    weight_decay: float,
    **_: Any,
) -> Tensor:
    """Sutskever's form: ``b_t = mu*b_{t-1} + g_t`` (b_1 = g_1); ``p <- p - lr*(g_t + mu*b_t)``."""
    g = _l2(p, g, weight_decay)
    state["b"] = g if t == 1 else momentum * state["b"] + g
    return p - lr * (g + momentum * state["b"])


def _adagrad_state(p: Tensor, *, initial_accumulator_value: float, **_: Any) -> dict:
    return {"s": _zeros(p) + initial_accumulator_value}


def _adagrad_step(
    p: Tensor,
    g: Tensor,
    state: dict,
    t: int,
    *,
    lr: float,
    lr_decay: float,
    weight_decay: float,
    eps: float,
    **_: Any,
) -> Tensor:
    """``s <- s + g^2``; ``p <- p - lr/(1 + (t-1)*lr_decay) * g / (sqrt(s) + eps)``."""
    g = _l2(p, g, weight_decay)
    state["s"] = state["s"] + g * g
    return p - lr / (1 + (t - 1) * lr_decay) * g / (torch.sqrt(state["s"]) + eps)


def _rmsprop_state(p: Tensor, **_: Any) -> dict[str, Any]:
    return {"v": _zeros(p), "b": _zeros(p)}


def _rmsprop_step(
    p: Tensor,
    g: Tensor,
    state: dict,
    t: int,
    *,
    lr: float,
    alpha: float,
    eps: float,
    weight_decay: float,
    momentum: float,
    eps_placement: str,
    **_: Any,
) -> Tensor:
    """``v <- alpha*v + (1-alpha)*g^2``; ``d = g/(sqrt(v)+eps)`` or ``g/sqrt(v+eps)`` (inside);
    ``b <- mu*b + d``; ``p <- p - lr*b`` (``mu = 0``: ``p <- p - lr*d``)."""
    g = _l2(p, g, weight_decay)
    state["v"] = alpha * state["v"] + (1 - alpha) * g * g
    v = state["v"]
    d = g / torch.sqrt(v + eps) if eps_placement == "inside" else g / (torch.sqrt(v) + eps)
    state["b"] = momentum * state["b"] + d
    return p - lr * state["b"]


def _moments_state(p: Tensor, **_: Any) -> dict[str, Any]:
    return {"m": _zeros(p), "v": _zeros(p)}


def _moments(g: Tensor, state: dict, beta1: float, beta2: float) -> tuple[Tensor, Tensor]:
    state["m"] = beta1 * state["m"] + (1 - beta1) * g
    state["v"] = beta2 * state["v"] + (1 - beta2) * g * g
    return state["m"], state["v"]


def _adam_step(
    p: Tensor,
    g: Tensor,
    state: dict,
    t: int,
    *,
    lr: float,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float,
    bias_correction: bool,
    eps_placement: str,
    **_: Any,
) -> Tensor:
    """Kingma & Ba 2015, Algorithm 1: ``m_hat = m/(1-b1^t)``, ``v_hat = v/(1-b2^t)``;
    ``p <- p - lr*m_hat/(sqrt(v_hat)+eps)`` (or ``/sqrt(v_hat+eps)`` inside)."""
    m, v = _moments(_l2(p, g, weight_decay), state, beta1, beta2)
    if bias_correction:
        m, v = m / (1 - beta1**t), v / (1 - beta2**t)
    denom = torch.sqrt(v + eps) if eps_placement == "inside" else torch.sqrt(v) + eps
    return p - lr * m / denom


def _adamw_step(
    p: Tensor,
    g: Tensor,
    state: dict,
    t: int,
    *,
    lr: float,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float,
    **_: Any,
) -> Tensor:
    """Loshchilov & Hutter 2019, Algorithm 2 (schedule multiplier 1, decay scaled by lr as in
    torch): ``p <- p*(1 - lr*weight_decay)``, then the bias-corrected Adam step on ``g``."""
    p = p * (1 - lr * weight_decay)
    m, v = _moments(g, state, beta1, beta2)
    return p - lr * (m / (1 - beta1**t)) / (torch.sqrt(v / (1 - beta2**t)) + eps)


def _nadam_state(p: Tensor, **_: Any) -> dict[str, Any]:
    return {"m": _zeros(p), "v": _zeros(p), "mu_product": 1.0}


def _nadam_step(
    p: Tensor,
    g: Tensor,
    state: dict,
    t: int,
    *,
    lr: float,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float,
    momentum_decay: float,
    **_: Any,
) -> Tensor:
    """Dozat 2016: ``mu_t = b1*(1 - 0.5*0.96^(t*psi))``;
    ``p <- p - lr*[(1-mu_t) g / (1 - prod_{i<=t} mu_i) + mu_{t+1} m / (1 - prod_{i<=t+1} mu_i)]
    / (sqrt(v/(1-b2^t)) + eps)``."""
    g = _l2(p, g, weight_decay)
    mu_t = beta1 * (1 - 0.5 * 0.96 ** (t * momentum_decay))
    mu_next = beta1 * (1 - 0.5 * 0.96 ** ((t + 1) * momentum_decay))
    state["mu_product"] *= mu_t
    prod_t = state["mu_product"]
    m, v = _moments(g, state, beta1, beta2)
    denom = torch.sqrt(v / (1 - beta2**t)) + eps
    direction = (1 - mu_t) * g / (1 - prod_t) + mu_next * m / (1 - prod_t * mu_next)
    return p - lr * direction / denom


def _radam_step(
    p: Tensor,
    g: Tensor,
    state: dict,
    t: int,
    *,
    lr: float,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float,
    **_: Any,
) -> Tensor:
    """Liu et al. 2020, Algorithm 2: ``rho_inf = 2/(1-b2) - 1``,
    ``rho_t = rho_inf - 2 t b2^t/(1-b2^t)``. If ``rho_t > 5`` (the threshold of torch and of the
    authors' code; the paper's text says 4): ``r_t = sqrt((rho_t-4)(rho_t-2)rho_inf /
    ((rho_inf-4)(rho_inf-2)rho_t))``, ``l_t = sqrt(1-b2^t) / (sqrt(v) + eps)`` and
    ``p <- p - lr*m_hat*r_t*l_t``; else the un-adapted ``p <- p - lr*m_hat``."""
    m, v = _moments(_l2(p, g, weight_decay), state, beta1, beta2)
    m_hat = m / (1 - beta1**t)
    rho_inf = 2 / (1 - beta2) - 1
    rho_t = rho_inf - 2 * t * beta2**t / (1 - beta2**t)
    if rho_t > 5:
        r = math.sqrt((rho_t - 4) * (rho_t - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho_t))
        return p - lr * m_hat * r * math.sqrt(1 - beta2**t) / (torch.sqrt(v) + eps)
    return p - lr * m_hat


def _lion_state(p: Tensor, **_: Any) -> dict[str, Any]:
    return {"m": _zeros(p)}


def _lion_step(
    p: Tensor,
    g: Tensor,
    state: dict,
    t: int,
    *,
    lr: float,
    beta1: float,
    beta2: float,
    weight_decay: float,
    **_: Any,
) -> Tensor:
    """Chen et al. 2023, Algorithm 2: ``c = b1*m + (1-b1)*g``;
    ``p <- p - lr*(sign(c) + weight_decay*p)``; ``m <- b2*m + (1-b2)*g``."""
    c = beta1 * state["m"] + (1 - beta1) * g
    p_new = p - lr * (torch.sign(c) + weight_decay * p)
    state["m"] = beta2 * state["m"] + (1 - beta2) * g
    return p_new


sgd_reference = UpdateRule(_no_state, _decays(_sgd_step))
momentum_reference = UpdateRule(_buffer_state, _decays(_momentum_step))
nesterov_reference = UpdateRule(_buffer_state, _decays(_nesterov_step))
adagrad_reference = UpdateRule(_adagrad_state, _decays(_adagrad_step))
rmsprop_reference = UpdateRule(_rmsprop_state, _decays(_rmsprop_step))
adam_reference = UpdateRule(_moments_state, _decays(_adam_step))
adamw_reference = UpdateRule(_moments_state, _decays(_adamw_step))
nadam_reference = UpdateRule(_nadam_state, _decays(_nadam_step))
radam_reference = UpdateRule(_moments_state, _decays(_radam_step))
lion_reference = UpdateRule(_lion_state, _decays(_lion_step))


_QUINTIC = (3.4445, -4.7750, 2.0315)
"""Jordan et al. 2024's Newton-Schulz coefficients, written here apart from the fast side's."""


def _muon_state(p: Tensor, **_: Any) -> dict[str, Any]:
    return {"b": _zeros(p), "m": _zeros(p), "v": _zeros(p)}


def _orthogonalise(u: Tensor, steps: int) -> Tensor:
    """``X_0 = U / max(||U||_F, 1e-7)``; ``X <- a X + b (X X^T) X + c (X X^T)^2 X``, ``steps``
    times: an odd polynomial of X, so U's singular vectors stay and each singular value
    ``s / ||U||_F`` goes through the scalar quintic ``a x + b x^3 + c x^5``."""
    a, b, c = _QUINTIC
    x = u / max(float(torch.linalg.matrix_norm(u)), 1e-7)
    for _ in range(steps):
        gram = x @ x.T
        x = a * x + b * (gram @ x) + c * (gram @ (gram @ x))
    return x


def _muon_step(
    p: Tensor,
    g: Tensor,
    state: dict,
    t: int,
    *,
    lr: float,
    momentum: float,
    nesterov: bool,
    ns_steps: int,
    adjust_lr: str,
    weight_decay: float,
    adam_lr: float,
    beta1: float,
    beta2: float,
    eps: float,
    **_: Any,
) -> Tensor:
    """Jordan et al. 2024 for a matrix (here: two or more dimensions, viewed ``[rows, cols]``):
    ``B <- mu B + (1-mu) G``; ``U = (1-mu) G + mu B`` (Nesterov) or ``B``;
    ``p <- p (1 - lr wd) - lr s NS(U)`` with ``s = max(1, rows/cols)^0.5`` (``"original"``) or
    ``0.2 sqrt(max(rows, cols))`` (``"match_rms_adamw"``, Liu et al. 2025). Any other tensor:
    the AdamW step at rate ``adam_lr`` (:func:`_adamw_step`)."""
    if p.dim() < 2:
        hp = {"beta1": beta1, "beta2": beta2, "eps": eps, "weight_decay": weight_decay}
        return _adamw_step(p, g, state, t, lr=adam_lr, **hp)
    state["b"] = momentum * state["b"] + (1 - momentum) * g
    u = (1 - momentum) * g + momentum * state["b"] if nesterov else state["b"]
    rows, cols = p.shape[0], p[0].numel()
    o = _orthogonalise(u.reshape(rows, cols), ns_steps).reshape(p.shape)
    s = max(1.0, rows / cols) ** 0.5 if adjust_lr == "original" else 0.2 * max(rows, cols) ** 0.5
    return p * (1 - lr * weight_decay) - lr * s * o


muon_reference = UpdateRule(_muon_state, _decays(_muon_step))
