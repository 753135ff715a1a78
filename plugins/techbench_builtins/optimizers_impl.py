"""Built-in optimizers: fast factories and float64 references written from the update rules.

Fast side: ``factory(params, **hp) -> torch.optim.Optimizer``. Where torch.optim implements the
rule exactly it is used as is (its default foreach/fused choice); the variants torch lacks (epsilon
inside the root, Adam without bias correction, Lion) are :class:`torch.optim.Optimizer`
subclasses here, with the usual ``state_dict``/``load_state_dict``.

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

from techbench.families import trial_ndim

Params = Iterable[Tensor] | Iterable[dict[str, Any]]


@dataclass(frozen=True)
class UpdateRule:
    """A reference optimizer: per-tensor state initialisation and one update step."""

    init_state: Callable[..., dict[str, Any]]
    step: Callable[..., Tensor]


# ---------------------------------------------------------------------------------------------
# Optimizers torch lacks


class RMSpropVariant(torch.optim.Optimizer):
    """RMSprop with a selectable epsilon placement (Tieleman & Hinton 2012; seed 002).

    ``v <- alpha*v + (1-alpha)*g^2``; ``d = g / (sqrt(v) + eps)`` (outside) or
    ``d = g / sqrt(v + eps)`` (inside, the lecture slide); with momentum ``b <- mu*b + d`` and
    ``p <- p - lr*b``, else ``p <- p - lr*d``. ``g`` includes the coupled ``weight_decay * p``.
    """

    def __init__(
        self,
        params: Params,
        lr: float = 0.01,
        alpha: float = 0.99,
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        momentum: float = 0.0,
        eps_inside: bool = True,
    ) -> None:
        defaults = dict(
            lr=lr,
            alpha=alpha,
            eps=eps,
            weight_decay=weight_decay,
            momentum=momentum,
            eps_inside=eps_inside,
        )
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, alpha, eps = group["lr"], group["alpha"], group["eps"]
            wd, mu = group["weight_decay"], group["momentum"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad if wd == 0 else p.grad.add(p, alpha=wd)
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    state["square_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    if mu > 0:
                        state["momentum_buffer"] = torch.zeros_like(p)
                state["step"] += 1
                v = state["square_avg"]
                v.mul_(alpha).addcmul_(g, g, value=1 - alpha)
                denom = v.add(eps).sqrt_() if group["eps_inside"] else v.sqrt().add_(eps)
                if mu > 0:
                    buf = state["momentum_buffer"]
                    buf.mul_(mu).addcdiv_(g, denom)
                    p.add_(buf, alpha=-lr)
                else:
                    p.addcdiv_(g, denom, value=-lr)
        return loss


class AdamVariant(torch.optim.Optimizer):
    """Adam (Kingma & Ba 2015) with optional bias correction and epsilon placement.

    ``m <- b1*m + (1-b1)*g``, ``v <- b2*v + (1-b2)*g^2``; with bias correction
    ``m_hat = m/(1-b1^t)``, ``v_hat = v/(1-b2^t)`` (else ``m_hat = m``, ``v_hat = v``);
    ``p <- p - lr * m_hat / (sqrt(v_hat) + eps)`` (outside) or ``/ sqrt(v_hat + eps)`` (inside,
    as seed 002's slide). ``g`` includes the coupled ``weight_decay * p``.
    """

    def __init__(
        self,
        params: Params,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        bias_correction: bool = True,
        eps_inside: bool = False,
    ) -> None:
        defaults = dict(
            lr=lr,
            betas=betas,
            eps=eps,
            weight_decay=weight_decay,
            bias_correction=bias_correction,
            eps_inside=eps_inside,
        )
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, (b1, b2), eps, wd = group["lr"], group["betas"], group["eps"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad if wd == 0 else p.grad.add(p, alpha=wd)
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["step"] += 1
                t = state["step"]
                m, v = state["exp_avg"], state["exp_avg_sq"]
                m.lerp_(g, 1 - b1)
                v.mul_(b2).addcmul_(g, g, value=1 - b2)
                bc1, bc2 = (1 - b1**t, 1 - b2**t) if group["bias_correction"] else (1.0, 1.0)
                if group["eps_inside"]:
                    denom = v.div(bc2).add_(eps).sqrt_()
                else:
                    denom = v.sqrt().div_(math.sqrt(bc2)).add_(eps)
                p.addcdiv_(m, denom, value=-lr / bc1)
        return loss


class Lion(torch.optim.Optimizer):
    """Lion (Chen et al. 2023, Algorithm 2).

    ``c = b1*m + (1-b1)*g``; ``p <- p - lr*(sign(c) + weight_decay*p)``;
    ``m <- b2*m + (1-b2)*g``.
    """

    def __init__(
        self,
        params: Params,
        lr: float = 1e-4,
        betas: tuple[float, float] = (0.9, 0.99),
        weight_decay: float = 0.0,
    ) -> None:
        super().__init__(params, dict(lr=lr, betas=betas, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, (b1, b2), wd = group["lr"], group["betas"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["step"] += 1
                m = state["exp_avg"]
                c = m.lerp(p.grad, 1 - b1)
                if wd != 0:
                    p.mul_(1 - lr * wd)
                p.add_(c.sign_(), alpha=-lr)
                m.lerp_(p.grad, 1 - b2)
        return loss


def decay_groups(params: Params, weight_decay: float, decay: str) -> Params:
    """``params`` split so that only the chosen ones decay (the ``decay`` hyper-parameter).

    ``"all"``: unchanged (torch.optim decays every parameter of a group). ``"weights"``: every
    group split into its tensors of two or more dimensions (:func:`techbench.families.trial_ndim`,
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
# Fast factories: (params, **hp) -> torch.optim.Optimizer


def sgd(
    params: Params, *, lr: float, weight_decay: float = 0.0, decay: str = "weights"
) -> torch.optim.Optimizer:
    params = decay_groups(params, weight_decay, decay)
    return torch.optim.SGD(params, lr=lr, weight_decay=weight_decay)


def momentum(
    params: Params,
    *,
    lr: float,
    momentum: float,
    dampening: float = 0.0,
    weight_decay: float = 0.0,
    decay: str = "weights",
) -> torch.optim.Optimizer:
    params = decay_groups(params, weight_decay, decay)
    return torch.optim.SGD(
        params, lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay
    )


def nesterov(
    params: Params,
    *,
    lr: float,
    momentum: float,
    weight_decay: float = 0.0,
    decay: str = "weights",
) -> torch.optim.Optimizer:
    params = decay_groups(params, weight_decay, decay)
    return torch.optim.SGD(
        params, lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=True
    )


def adagrad(
    params: Params,
    *,
    lr: float,
    lr_decay: float = 0.0,
    weight_decay: float = 0.0,
    decay: str = "weights",
    initial_accumulator_value: float = 0.0,
    eps: float = 1e-10,
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


def rmsprop(
    params: Params,
    *,
    lr: float,
    alpha: float = 0.99,
    eps: float = 1e-8,
    weight_decay: float = 0.0,
    decay: str = "weights",
    momentum: float = 0.0,
    eps_placement: str = "outside",
) -> torch.optim.Optimizer:
    params = decay_groups(params, weight_decay, decay)
    if eps_placement == "outside":
        return torch.optim.RMSprop(
            params, lr=lr, alpha=alpha, eps=eps, weight_decay=weight_decay, momentum=momentum
        )
    return RMSpropVariant(
        params,
        lr=lr,
        alpha=alpha,
        eps=eps,
        weight_decay=weight_decay,
        momentum=momentum,
        eps_inside=True,
    )


def adam(
    params: Params,
    *,
    lr: float,
    beta1: float = 0.9,
    beta2: float = 0.999,
    eps: float = 1e-8,
    weight_decay: float = 0.0,
    decay: str = "weights",
    bias_correction: bool = True,
    eps_placement: str = "outside",
) -> torch.optim.Optimizer:
    params = decay_groups(params, weight_decay, decay)
    if bias_correction and eps_placement == "outside":
        return torch.optim.Adam(
            params, lr=lr, betas=(beta1, beta2), eps=eps, weight_decay=weight_decay
        )
    return AdamVariant(
        params,
        lr=lr,
        betas=(beta1, beta2),
        eps=eps,
        weight_decay=weight_decay,
        bias_correction=bias_correction,
        eps_inside=eps_placement == "inside",
    )


def adamw(
    params: Params,
    *,
    lr: float,
    beta1: float = 0.9,
    beta2: float = 0.999,
    eps: float = 1e-8,
    weight_decay: float = 0.01,
    decay: str = "weights",
) -> torch.optim.Optimizer:
    params = decay_groups(params, weight_decay, decay)
    return torch.optim.AdamW(
        params, lr=lr, betas=(beta1, beta2), eps=eps, weight_decay=weight_decay
    )


def nadam(
    params: Params,
    *,
    lr: float,
    beta1: float = 0.9,
    beta2: float = 0.999,
    eps: float = 1e-8,
    weight_decay: float = 0.0,
    decay: str = "weights",
    momentum_decay: float = 0.004,
) -> torch.optim.Optimizer:
    params = decay_groups(params, weight_decay, decay)
    return torch.optim.NAdam(
        params,
        lr=lr,
        betas=(beta1, beta2),
        eps=eps,
        weight_decay=weight_decay,
        momentum_decay=momentum_decay,
    )


def radam(
    params: Params,
    *,
    lr: float,
    beta1: float = 0.9,
    beta2: float = 0.999,
    eps: float = 1e-8,
    weight_decay: float = 0.0,
    decay: str = "weights",
) -> torch.optim.Optimizer:
    params = decay_groups(params, weight_decay, decay)
    return torch.optim.RAdam(
        params, lr=lr, betas=(beta1, beta2), eps=eps, weight_decay=weight_decay
    )


def lion(
    params: Params,
    *,
    lr: float,
    beta1: float = 0.9,
    beta2: float = 0.99,
    weight_decay: float = 0.0,
    decay: str = "weights",
) -> torch.optim.Optimizer:
    params = decay_groups(params, weight_decay, decay)
    return Lion(params, lr=lr, betas=(beta1, beta2), weight_decay=weight_decay)


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
    p: Tensor, g: Tensor, state: dict, t: int, *, lr: float, weight_decay: float = 0.0, **_: Any
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
    dampening: float = 0.0,
    weight_decay: float = 0.0,
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
    weight_decay: float = 0.0,
    **_: Any,
) -> Tensor:
    """Sutskever's form: ``b_t = mu*b_{t-1} + g_t`` (b_1 = g_1); ``p <- p - lr*(g_t + mu*b_t)``."""
    g = _l2(p, g, weight_decay)
    state["b"] = g if t == 1 else momentum * state["b"] + g
    return p - lr * (g + momentum * state["b"])


def _adagrad_state(p: Tensor, *, initial_accumulator_value: float = 0.0, **_: Any) -> dict:
    return {"s": _zeros(p) + initial_accumulator_value}


def _adagrad_step(
    p: Tensor,
    g: Tensor,
    state: dict,
    t: int,
    *,
    lr: float,
    lr_decay: float = 0.0,
    weight_decay: float = 0.0,
    eps: float = 1e-10,
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
    weight_decay: float = 0.0,
    momentum: float = 0.0,
    eps_placement: str = "outside",
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
    weight_decay: float = 0.0,
    bias_correction: bool = True,
    eps_placement: str = "outside",
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
    weight_decay: float = 0.01,
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
    weight_decay: float = 0.0,
    momentum_decay: float = 0.004,
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
    weight_decay: float = 0.0,
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
    weight_decay: float = 0.0,
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
