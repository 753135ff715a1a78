"""Normalizers: fast modules (torch's fused ops) and references written from the formulas.

Shapes: (N, C) or (N, C, *spatial), channels on dim 1. Reductions, for the input ``x``:

- batch norm: per channel, over N and the spatial dims (n = N * prod(spatial) values);
- layer norm, RMS norm, ScaleNorm: per sample, over C and the spatial dims (all but dim 0);
- group norm: per sample and group of C / G consecutive channels, over those channels and the
  spatial dims.

Affine parameters are per channel (shape (C,)), broadcast over the spatial dims.

The references follow the protocol of :mod:`techbench.testing.normalizer`: ``forward(x, params,
state, training, **hp) -> (y, cache)`` in plain tensor arithmetic (differentiable, run in
float64 by the checks), and for batch norm the backward pass derived by hand in the lecture
notes (seed 003), ``backward(dy, cache) -> {"x": dx, "weight": dgamma, "bias": dbeta}``.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "BatchNorm",
    "GroupNorm",
    "Identity",
    "LayerNorm",
    "RMSNorm",
    "ScaleNorm",
    "batchnorm_reference",
    "groupnorm_reference",
    "identity_reference",
    "layernorm_reference",
    "rmsnorm_reference",
    "scalenorm_reference",
]


def _check_input(module: nn.Module, x: Tensor, num_features: int) -> None:
    if x.dim() < 2 or x.shape[1] != num_features:
        raise ValueError(
            f"{type(module).__name__}({num_features}) expects input (N, {num_features}) or "
            f"(N, {num_features}, *spatial), got shape {tuple(x.shape)}"
        )


def _affine_params(module: nn.Module, num_features: int, affine: bool, bias: bool = True) -> None:
    if affine:
        module.weight = nn.Parameter(torch.ones(num_features))
        if bias:
            module.bias = nn.Parameter(torch.zeros(num_features))
        else:
            module.register_parameter("bias", None)
    else:
        module.register_parameter("weight", None)
        module.register_parameter("bias", None)


class Identity(nn.Identity):
    """No normalisation: ``y = x``. An ``nn.Identity``, so models leave it out of the network."""

    def __init__(self, num_features: int) -> None:
        super().__init__()
        self.num_features = num_features

    def forward(self, x: Tensor) -> Tensor:
        return x


class _Affine(nn.Module):
    weight: Tensor | None
    bias: Tensor | None


class BatchNorm(_Affine):
    """Batch normalisation (Ioffe & Szegedy 2015), for (N, C) and (N, C, *spatial).

    Training: ``y = gamma * (x - mu_B) / sqrt(var_B + eps) + beta`` with the biased batch
    variance ``var_B``; the running statistics move by ``r <- (1 - momentum) r + momentum s``
    where the running variance uses the *unbiased* batch variance ``var_B * n / (n - 1)`` (as
    torch does). Eval: ``y = gamma * (x - running_mean) / sqrt(running_var + eps) + beta``.
    """

    running_mean: Tensor
    running_var: Tensor

    def __init__(
        self, num_features: int, momentum: float = 0.1, eps: float = 1e-5, affine: bool = True
    ) -> None:
        super().__init__()
        self.num_features, self.momentum, self.eps = num_features, momentum, eps
        _affine_params(self, num_features, affine)
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))

    def forward(self, x: Tensor) -> Tensor:
        _check_input(self, x, self.num_features)
        return F.batch_norm(
            x,
            self.running_mean,
            self.running_var,
            self.weight,
            self.bias,
            self.training,
            self.momentum,
            self.eps,
        )

    def extra_repr(self) -> str:
        return f"{self.num_features}, momentum={self.momentum}, eps={self.eps}"


class LayerNorm(_Affine):
    """Layer normalisation (Ba et al. 2016): per sample, over C and the spatial dims.

    ``y = gamma_c * (x - mu) / sqrt(var + eps) + beta_c`` with ``mu``, ``var`` (biased) taken over
    every non-batch dim; on (N, C, *spatial) this is group norm with one group.
    """

    def __init__(self, num_features: int, eps: float = 1e-5, affine: bool = True) -> None:
        super().__init__()
        self.num_features, self.eps = num_features, eps
        _affine_params(self, num_features, affine)

    def forward(self, x: Tensor) -> Tensor:
        _check_input(self, x, self.num_features)
        if x.dim() == 2:
            return F.layer_norm(x, (self.num_features,), self.weight, self.bias, self.eps)
        return F.group_norm(x, 1, self.weight, self.bias, self.eps)

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}"


class GroupNorm(_Affine):
    """Group normalisation (Wu & He 2018): per sample, over groups of C/G channels and space."""

    def __init__(
        self, num_features: int, num_groups: int = 4, eps: float = 1e-5, affine: bool = True
    ) -> None:
        super().__init__()
        if num_groups < 1 or num_features % num_groups:
            divisors = [d for d in range(1, num_features + 1) if num_features % d == 0]
            raise ValueError(
                f"groupnorm: num_groups={num_groups} does not divide num_features={num_features}; "
                f"choose one of {divisors}"
            )
        self.num_features, self.num_groups, self.eps = num_features, num_groups, eps
        _affine_params(self, num_features, affine)

    def forward(self, x: Tensor) -> Tensor:
        _check_input(self, x, self.num_features)
        return F.group_norm(x, self.num_groups, self.weight, self.bias, self.eps)

    def extra_repr(self) -> str:
        return f"{self.num_features}, num_groups={self.num_groups}, eps={self.eps}"


class RMSNorm(_Affine):
    """RMS normalisation (Zhang & Sennrich 2019): ``y = g_c * x / sqrt(mean(x^2) + eps)``.

    The mean square is taken per sample over C and the spatial dims; there is no shift.
    """

    def __init__(self, num_features: int, eps: float = 1e-6, affine: bool = True) -> None:
        super().__init__()
        self.num_features, self.eps = num_features, eps
        _affine_params(self, num_features, affine, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        _check_input(self, x, self.num_features)
        if x.dim() == 2:
            return F.rms_norm(x, (self.num_features,), self.weight, self.eps)
        weight = self.weight
        if weight is not None:
            weight = weight.view(-1, *([1] * (x.dim() - 2))).expand(x.shape[1:])
        return F.rms_norm(x, x.shape[1:], weight, self.eps)

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}"


class ScaleNorm(nn.Module):
    """ScaleNorm (Nguyen & Salazar 2019): ``y = g * x / max(||x||_2, eps)``, one scalar ``g``.

    The norm is per sample over C and the spatial dims; ``g`` starts at ``init_scale``, or at
    ``sqrt(num_features)`` when ``init_scale`` is 0 (the paper's choice).
    """

    def __init__(self, num_features: int, eps: float = 1e-5, init_scale: float = 0.0) -> None:
        super().__init__()
        self.num_features, self.eps = num_features, eps
        self.g = nn.Parameter(torch.tensor(init_scale or math.sqrt(num_features)))

    def forward(self, x: Tensor) -> Tensor:
        _check_input(self, x, self.num_features)
        dims = tuple(range(1, x.dim()))
        norm = torch.linalg.vector_norm(x, dim=dims, keepdim=True).clamp_min(self.eps)
        return x * (self.g / norm)

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}"


def _channel_view(p: Tensor, x: Tensor) -> Tensor:
    """A (C,) parameter shaped to broadcast against (N, C, *spatial)."""
    return p.reshape(1, -1, *([1] * (x.dim() - 2)))


def _affine(y: Tensor, params: dict[str, Tensor]) -> Tensor:
    if params.get("weight") is not None:
        y = y * _channel_view(params["weight"], y)
    if params.get("bias") is not None:
        y = y + _channel_view(params["bias"], y)
    return y


class IdentityReference:
    """``y = x``."""

    def forward(
        self,
        x: Tensor,
        params: dict[str, Tensor],
        state: dict[str, Tensor],
        training: bool,
        **hp: Any,
    ) -> tuple[Tensor, None]:
        return x, None


class BatchNormReference:
    """Batch norm from the lecture notes (seed 003), written out step by step.

    Forward, per channel j over the n = N * prod(spatial) values s_i:
    ``mu_b = (1/n) sum_i s_i``, ``v_b = (1/n) sum_i (s_i - mu_b)^2``,
    ``s_hat_i = (v_b + eps)^(-1/2) (s_i - mu_b)``, ``y_i = gamma s_hat_i + beta``.
    Training also updates ``running_mean <- (1-m) running_mean + m mu_b`` and
    ``running_var <- (1-m) running_var + m v_b n/(n-1)`` (unbiased, as torch). Eval mode uses the
    running statistics in place of ``mu_b``, ``v_b``.
    """

    def forward(
        self,
        x: Tensor,
        params: dict[str, Tensor],
        state: dict[str, Tensor],
        training: bool,
        **hp: Any,
    ) -> tuple[Tensor, dict[str, Any]]:
        eps, momentum = hp["eps"], hp["momentum"]
        dims = [0, *range(2, x.dim())]
        if training:
            n = x.numel() // x.shape[1]
            mu = x.mean(dim=dims, keepdim=True)
            v = ((x - mu) ** 2).mean(dim=dims, keepdim=True)
            if "running_mean" in state:
                state["running_mean"] = (1 - momentum) * state[
                    "running_mean"
                ] + momentum * mu.reshape(-1)
                state["running_var"] = (1 - momentum) * state["running_var"] + momentum * v.reshape(
                    -1
                ) * (n / (n - 1))
        else:
            mu = _channel_view(state["running_mean"], x)
            v = _channel_view(state["running_var"], x)
        s_hat = (x - mu) / torch.sqrt(v + eps)
        cache = {"x": x, "mu": mu, "v": v, "s_hat": s_hat, "eps": eps, "training": training}
        cache["weight"] = params.get("weight")
        cache["has_bias"] = params.get("bias") is not None
        return _affine(s_hat, params), cache

    def backward(self, dy: Tensor, cache: dict[str, Any]) -> dict[str, Tensor]:
        """The hand-derived backward pass of seed 003 ("Putting everything together").

        With ``g_i = dJ/ds_hat_i = gamma dy_i`` and sums over the n values of a channel:
        ``dJ/dv_b = -1/2 sum_i g_i (v_b + eps)^(-3/2) (s_i - mu_b)``,
        ``dJ/dmu_b = -sum_i g_i (v_b + eps)^(-1/2)``,
        ``dJ/ds_i = g_i (v_b + eps)^(-1/2) + (2/n) dJ/dv_b (s_i - mu_b) + (1/n) dJ/dmu_b``;
        ``dJ/dgamma = sum_i dy_i s_hat_i``, ``dJ/dbeta = sum_i dy_i``. In eval mode mu and v are
        constants, so ``dJ/ds_i = g_i (v + eps)^(-1/2)``.
        """
        x, mu, v, eps = cache["x"], cache["mu"], cache["v"], cache["eps"]
        dims = [0, *range(2, x.dim())]
        weight = cache["weight"]
        g = dy * _channel_view(weight, dy) if weight is not None else dy
        inv_std = (v + eps) ** -0.5
        if cache["training"]:
            n = x.numel() // x.shape[1]
            centred = x - mu
            dv = -0.5 * (g * (v + eps) ** -1.5 * centred).sum(dim=dims, keepdim=True)
            dmu = -(g * inv_std).sum(dim=dims, keepdim=True)
            dx = g * inv_std + (2.0 / n) * dv * centred + dmu / n
        else:
            dx = g * inv_std
        grads = {"x": dx}
        if weight is not None:
            grads["weight"] = (dy * cache["s_hat"]).sum(dim=dims)
        if cache["has_bias"]:
            grads["bias"] = dy.sum(dim=dims)
        return grads


class LayerNormReference:
    """``y = gamma_c (x - mu) / sqrt(var + eps) + beta_c``, mu/var (biased) over all but dim 0."""

    def forward(
        self,
        x: Tensor,
        params: dict[str, Tensor],
        state: dict[str, Tensor],
        training: bool,
        **hp: Any,
    ) -> tuple[Tensor, None]:
        dims = tuple(range(1, x.dim()))
        mu = x.mean(dim=dims, keepdim=True)
        var = ((x - mu) ** 2).mean(dim=dims, keepdim=True)
        return _affine((x - mu) / torch.sqrt(var + hp["eps"]), params), None


class GroupNormReference:
    """Group norm: reshape to (N, G, C/G * spatial), standardise each row (biased var), affine."""

    def forward(
        self,
        x: Tensor,
        params: dict[str, Tensor],
        state: dict[str, Tensor],
        training: bool,
        **hp: Any,
    ) -> tuple[Tensor, None]:
        groups = x.reshape(x.shape[0], hp["num_groups"], -1)
        mu = groups.mean(dim=2, keepdim=True)
        var = ((groups - mu) ** 2).mean(dim=2, keepdim=True)
        y = ((groups - mu) / torch.sqrt(var + hp["eps"])).reshape(x.shape)
        return _affine(y, params), None


class RMSNormReference:
    """``y = g_c x / sqrt(mean(x^2) + eps)``, the mean over all but dim 0."""

    def forward(
        self,
        x: Tensor,
        params: dict[str, Tensor],
        state: dict[str, Tensor],
        training: bool,
        **hp: Any,
    ) -> tuple[Tensor, None]:
        dims = tuple(range(1, x.dim()))
        rms = torch.sqrt((x * x).mean(dim=dims, keepdim=True) + hp["eps"])
        return _affine(x / rms, params), None


class ScaleNormReference:
    """``y = g x / max(||x||_2, eps)``, the norm over all but dim 0."""

    def forward(
        self,
        x: Tensor,
        params: dict[str, Tensor],
        state: dict[str, Tensor],
        training: bool,
        **hp: Any,
    ) -> tuple[Tensor, None]:
        dims = tuple(range(1, x.dim()))
        norm = torch.sqrt((x * x).sum(dim=dims, keepdim=True))
        norm = torch.maximum(norm, torch.full_like(norm, hp["eps"]))
        return params["g"] * x / norm, None


identity_reference = IdentityReference()
batchnorm_reference = BatchNormReference()
layernorm_reference = LayerNormReference()
groupnorm_reference = GroupNormReference()
rmsnorm_reference = RMSNormReference()
scalenorm_reference = ScaleNormReference()
