"""Fast implementations and references for the example plugins.

Each reference is written from the formula in float64, independently of the fast side, and
follows the protocol of its family's checks (``techbench.testing.<family>``).
"""

from __future__ import annotations

import math
from types import SimpleNamespace
from typing import Any

import torch
from scipy import stats
from torch import nn

from techbench.techniques.families import Regularizer

# --- activation: bent identity --------------------------------------------------------------


class BentIdentity(nn.Module):
    """f(x) = (sqrt(x^2 + 1) - 1) / 2 + x."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (torch.sqrt(x * x + 1) - 1) / 2 + x


bent_identity_reference = SimpleNamespace(
    value=lambda x, **_: (torch.sqrt(x**2 + 1.0) - 1.0) / 2.0 + x,
    derivative=lambda x, **_: x / (2.0 * torch.sqrt(x**2 + 1.0)) + 1.0,
)

# --- initializer: truncated variance-scaling normal -------------------------------------------

_TRUNC_STD = 0.87962566103423978
"""Std of a unit normal truncated to [-2, 2]: dividing by it makes Var(w) = scale / fan_in."""


def _fan_in(shape: tuple[int, ...]) -> int:
    if len(shape) < 2:
        return shape[0]
    return shape[1] * math.prod(shape[2:])


class TruncNormal:
    """w ~ N(0, s^2) truncated to [-2s, 2s], s = sqrt(scale / fan_in) / 0.8796."""

    def __init__(self, scale: float) -> None:
        self.scale = scale

    def __call__(self, tensor: torch.Tensor) -> torch.Tensor:
        std = math.sqrt(self.scale / _fan_in(tuple(tensor.shape))) / _TRUNC_STD
        with torch.no_grad():
            return nn.init.trunc_normal_(tensor, 0.0, std, -2 * std, 2 * std)


def trunc_normal_target(shape: tuple[int, ...], *, scale: float, **_: Any) -> Any:
    std = math.sqrt(scale / _fan_in(tuple(shape))) / _TRUNC_STD
    return stats.truncnorm(-2.0, 2.0, loc=0.0, scale=std)


# --- normalizer: mean-only batch norm ---------------------------------------------------------


def _channel_dims(x: torch.Tensor) -> list[int]:
    return [d for d in range(x.dim()) if d != 1]


def _per_channel(v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return v.reshape(1, -1, *([1] * (x.dim() - 2)))


class MeanOnlyBatchNorm(nn.Module):
    """y = x - mean_batch(x) + b per channel; eval mode uses the running mean."""

    def __init__(self, num_features: int, momentum: float) -> None:
        super().__init__()
        self.momentum = momentum
        self.bias = nn.Parameter(torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            mean = x.mean(dim=_channel_dims(x))
            with torch.no_grad():
                self.running_mean.lerp_(mean.detach().to(self.running_mean.dtype), self.momentum)
        else:
            mean = self.running_mean.to(x.dtype)
        return x - _per_channel(mean, x) + _per_channel(self.bias, x)


class MeanOnlyBatchNormReference:
    """Forward from the formula; the backward is autograd's (the checks do that)."""

    @staticmethod
    def forward(x, params, state, training, *, momentum, **_):
        if training:
            mu = x.mean(dim=_channel_dims(x))
            state["running_mean"] = (1 - momentum) * state["running_mean"] + momentum * mu.detach()
        else:
            mu = state["running_mean"]
        return x - _per_channel(mu, x) + _per_channel(params["bias"], x), None


# --- regularizer: elastic net -----------------------------------------------------------------


class ElasticNet(Regularizer):
    """Penalty l1 * sum|W| + l2 * sum W^2 over weight matrices and kernels (dim >= 2)."""

    def __init__(self, l1: float, l2: float) -> None:
        self.l1, self.l2 = l1, l2

    def penalty(self, model: nn.Module) -> torch.Tensor | None:
        weights = [p for p in model.parameters() if p.dim() >= 2]
        if not weights:
            return None
        return sum(self.l1 * w.abs().sum() + self.l2 * w.square().sum() for w in weights)


def elastic_net_reference(named_params, *, l1: float, l2: float, **_: Any):
    """Value and gradient: d/dW = l1 * sign(W) + 2 * l2 * W on weights, 0 on biases."""
    value = torch.zeros((), dtype=torch.float64)
    grads = []
    for _name, p in named_params:
        p = p.detach().double()
        if p.dim() >= 2:
            value = value + l1 * p.abs().sum() + l2 * (p * p).sum()
            grads.append(l1 * torch.sign(p) + 2.0 * l2 * p)
        else:
            grads.append(torch.zeros_like(p))
    return value, grads


# --- optimizer: Signum ------------------------------------------------------------------------


class Signum(torch.optim.Optimizer):
    """m <- beta m + (1 - beta) g;  w <- w - lr sign(m)  (Bernstein et al. 2018)."""

    def __init__(self, params: Any, lr: float, beta: float) -> None:
        super().__init__(params, {"lr": lr, "beta": beta})

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if "momentum" not in state:
                    state["momentum"] = torch.zeros_like(p)
                m = state["momentum"]
                m.mul_(group["beta"]).add_(p.grad, alpha=1 - group["beta"])
                p.add_(torch.sign(m), alpha=-group["lr"])
        return loss


def _signum_init(p: torch.Tensor, **_: Any) -> dict:
    return {"m": torch.zeros_like(p)}


def _signum_step(p, g, state, t, *, lr: float, beta: float, **_: Any):
    state["m"] = beta * state["m"] + (1.0 - beta) * g
    return p - lr * torch.sign(state["m"])


SIGNUM_RULE = SimpleNamespace(init_state=_signum_init, step=_signum_step)
