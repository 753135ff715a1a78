"""Built-in activations: fast factories (torch's own modules) and references from the formulas.

Fast side: ``Factory(**hp) -> torch.nn.Module`` (elementwise). Reference side: an object with
``value(x, **hp)`` and ``derivative(x, **hp)``, written from the formulas in plain float64 torch
arithmetic (exp, log1p, erf, where) without calling the corresponding torch activation, as
:mod:`techbench.testing.activation` expects. Formulas are in each reference's docstring.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from .activations import SELU_ALPHA, SELU_SCALE

# ---------------------------------------------------------------------------------------------
# Fast implementations


def Identity() -> nn.Module:
    """f(x) = x."""
    return nn.Identity()


def Sigmoid() -> nn.Module:
    """sigma(x) = 1 / (1 + exp(-x))."""
    return nn.Sigmoid()


def Tanh() -> nn.Module:
    """tanh(x) = (e^x - e^-x) / (e^x + e^-x)."""
    return nn.Tanh()


def ReLU() -> nn.Module:
    """max(0, x) (Nair & Hinton 2010)."""
    return nn.ReLU()


def LeakyReLU(alpha: float = 0.01) -> nn.Module:
    """max(alpha x, x) (Maas et al. 2013)."""
    return nn.LeakyReLU(negative_slope=alpha)


def PReLU(learnable: bool = True, init: float = 0.25) -> nn.Module:
    """max(a x, x) with one slope ``a`` shared by all units, trained when ``learnable``."""
    module = nn.PReLU(num_parameters=1, init=init)
    module.weight.requires_grad_(learnable)
    return module


def ELU(alpha: float = 1.0) -> nn.Module:
    """x for x >= 0, alpha (e^x - 1) below (Clevert et al. 2016)."""
    return nn.ELU(alpha=alpha)


def SELU() -> nn.Module:
    """lambda * ELU_alpha(x) with the self-normalizing constants (Klambauer et al. 2017)."""
    return nn.SELU()


def GELU(approximate: str = "none") -> nn.Module:
    """x Phi(x), or the tanh approximation (Hendrycks & Gimpel 2016)."""
    return nn.GELU(approximate=approximate)


def SiLU() -> nn.Module:
    """x sigma(x) (Elfwing et al. 2018; swish with beta = 1)."""
    return nn.SiLU()


def Softplus(beta: float = 1.0, threshold: float = 20.0) -> nn.Module:
    """log(1 + e^(beta x)) / beta, and x where beta x > threshold."""
    return nn.Softplus(beta=beta, threshold=threshold)


def Mish() -> nn.Module:
    """x tanh(softplus(x)) (Misra 2020)."""
    return nn.Mish()


def Softsign() -> nn.Module:
    """x / (1 + |x|)."""
    return nn.Softsign()


# ---------------------------------------------------------------------------------------------
# References: float64 arithmetic straight from the formulas


def _f64(x: Tensor) -> Tensor:
    return torch.as_tensor(x).to(torch.float64)


def _sigma(x: Tensor) -> Tensor:
    """1 / (1 + e^-x), evaluated as e^x / (1 + e^x) for x < 0 so that no exp overflows."""
    e = torch.exp(-x.abs())
    return torch.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


def _tanh(x: Tensor) -> Tensor:
    """(e^x - e^-x) / (e^x + e^-x) = sign(x) (1 - e^-2|x|) / (1 + e^-2|x|), with expm1."""
    e = torch.expm1(-2.0 * x.abs())
    return -torch.sign(x) * e / (2.0 + e)


def _softplus(x: Tensor) -> Tensor:
    """log(1 + e^x) = max(x, 0) + log(1 + e^-|x|)."""
    return x.clamp(min=0) + torch.log1p(torch.exp(-x.abs()))


def _phi(x: Tensor) -> Tensor:
    """Standard normal CDF Phi(x) = (1 + erf(x / sqrt 2)) / 2 = erfc(-x / sqrt 2) / 2 (no
    cancellation in the lower tail)."""
    return 0.5 * torch.erfc(-x / math.sqrt(2.0))


class ActivationReference:
    """Base of the references: ``value`` and ``derivative`` take float64 tensors and the hp."""

    def value(self, x: Tensor, **hp: Any) -> Tensor:
        raise NotImplementedError

    def derivative(self, x: Tensor, **hp: Any) -> Tensor:
        raise NotImplementedError


class _IdentityRef(ActivationReference):
    """f(x) = x, f'(x) = 1."""

    def value(self, x: Tensor, **hp: Any) -> Tensor:
        return _f64(x).clone()

    def derivative(self, x: Tensor, **hp: Any) -> Tensor:
        return torch.ones_like(_f64(x))


class _SigmoidRef(ActivationReference):
    """sigma(x) = 1 / (1 + e^-x); sigma'(x) = sigma(x) (1 - sigma(x)) (seed 000)."""

    def value(self, x: Tensor, **hp: Any) -> Tensor:
        return _sigma(_f64(x))

    def derivative(self, x: Tensor, **hp: Any) -> Tensor:
        s = _sigma(_f64(x))
        return s * (1.0 - s)


class _TanhRef(ActivationReference):
    """tanh(x) = (e^x - e^-x) / (e^x + e^-x); tanh'(x) = 1 - tanh(x)^2 (seed 000)."""

    def value(self, x: Tensor, **hp: Any) -> Tensor:
        return _tanh(_f64(x))

    def derivative(self, x: Tensor, **hp: Any) -> Tensor:
        t = _tanh(_f64(x))
        return 1.0 - t * t


class _LeakyRef(ActivationReference):
    """f(x) = x for x >= 0, alpha x below; f'(x) = 1 or alpha (seed 000, alpha = 0.01)."""

    def __init__(self, hp_name: str, default: float) -> None:
        self.hp_name, self.default = hp_name, default

    def _slope(self, hp: dict[str, Any]) -> float:
        return float(hp.get(self.hp_name, self.default))

    def value(self, x: Tensor, **hp: Any) -> Tensor:
        x = _f64(x)
        return torch.where(x >= 0, x, self._slope(hp) * x)

    def derivative(self, x: Tensor, **hp: Any) -> Tensor:
        x = _f64(x)
        return torch.where(x >= 0, torch.ones_like(x), torch.full_like(x, self._slope(hp)))


class _ELURef(ActivationReference):
    """ELU(x) = x for x >= 0, alpha (e^x - 1) below; ELU'(x) = 1, or ELU(x) + alpha (seed 000)."""

    def value(self, x: Tensor, alpha: float = 1.0, **hp: Any) -> Tensor:
        x = _f64(x)
        return torch.where(x >= 0, x, alpha * torch.expm1(x.clamp(max=0)))

    def derivative(self, x: Tensor, alpha: float = 1.0, **hp: Any) -> Tensor:
        x = _f64(x)
        return torch.where(x >= 0, torch.ones_like(x), self.value(x, alpha) + alpha)


class _SELURef(ActivationReference):
    """SELU(x) = lambda x for x >= 0, lambda alpha (e^x - 1) below; derivative lambda or
    lambda alpha e^x, with lambda = 1.0507..., alpha = 1.6733... (Klambauer et al. 2017)."""

    def value(self, x: Tensor, **hp: Any) -> Tensor:
        x = _f64(x)
        return SELU_SCALE * torch.where(x >= 0, x, SELU_ALPHA * torch.expm1(x.clamp(max=0)))

    def derivative(self, x: Tensor, **hp: Any) -> Tensor:
        x = _f64(x)
        neg = SELU_SCALE * SELU_ALPHA * torch.exp(x.clamp(max=0))
        return torch.where(x >= 0, torch.full_like(x, SELU_SCALE), neg)


_GELU_C = math.sqrt(2.0 / math.pi)


class _GELURef(ActivationReference):
    """Exact: GELU(x) = x Phi(x), GELU'(x) = Phi(x) + x phi(x).

    ``approximate="tanh"``: 0.5 x (1 + tanh(u)) with u = sqrt(2/pi) (x + 0.044715 x^3); its
    derivative 0.5 (1 + tanh u) + 0.5 x (1 - tanh^2 u) sqrt(2/pi) (1 + 3 * 0.044715 x^2)
    (Hendrycks & Gimpel 2016).
    """

    def value(self, x: Tensor, approximate: str = "none", **hp: Any) -> Tensor:
        x = _f64(x)
        if approximate == "tanh":
            return 0.5 * x * (1.0 + _tanh(_GELU_C * (x + 0.044715 * x**3)))
        return x * _phi(x)

    def derivative(self, x: Tensor, approximate: str = "none", **hp: Any) -> Tensor:
        x = _f64(x)
        if approximate == "tanh":
            t = _tanh(_GELU_C * (x + 0.044715 * x**3))
            du = _GELU_C * (1.0 + 3 * 0.044715 * x * x)
            return 0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * du
        pdf = torch.exp(-0.5 * x * x) / math.sqrt(2.0 * math.pi)
        return _phi(x) + x * pdf


class _SiLURef(ActivationReference):
    """SiLU(x) = x sigma(x); SiLU'(x) = sigma(x) (1 + x (1 - sigma(x)))."""

    def value(self, x: Tensor, **hp: Any) -> Tensor:
        x = _f64(x)
        return x * _sigma(x)

    def derivative(self, x: Tensor, **hp: Any) -> Tensor:
        x = _f64(x)
        s = _sigma(x)
        return s * (1.0 + x * (1.0 - s))


class _SoftplusRef(ActivationReference):
    """softplus(x) = log(1 + e^(beta x)) / beta, derivative sigma(beta x); where
    beta x > threshold the value is x and the derivative 1 (torch's convention)."""

    def value(self, x: Tensor, beta: float = 1.0, threshold: float = 20.0, **hp: Any) -> Tensor:
        x = _f64(x)
        return torch.where(beta * x > threshold, x, _softplus(beta * x) / beta)

    def derivative(
        self, x: Tensor, beta: float = 1.0, threshold: float = 20.0, **hp: Any
    ) -> Tensor:
        x = _f64(x)
        return torch.where(beta * x > threshold, torch.ones_like(x), _sigma(beta * x))


class _MishRef(ActivationReference):
    """Mish(x) = x tanh(sp(x)), sp = softplus; Mish'(x) = tanh(sp) + x (1 - tanh^2(sp)) sigma(x)."""

    def value(self, x: Tensor, **hp: Any) -> Tensor:
        x = _f64(x)
        return x * _tanh(_softplus(x))

    def derivative(self, x: Tensor, **hp: Any) -> Tensor:
        x = _f64(x)
        t = _tanh(_softplus(x))
        return t + x * (1.0 - t * t) * _sigma(x)


class _SoftsignRef(ActivationReference):
    """softsign(x) = x / (1 + |x|); derivative 1 / (1 + |x|)^2."""

    def value(self, x: Tensor, **hp: Any) -> Tensor:
        x = _f64(x)
        return x / (1.0 + x.abs())

    def derivative(self, x: Tensor, **hp: Any) -> Tensor:
        x = _f64(x)
        return 1.0 / (1.0 + x.abs()) ** 2


class _ReLURef(_LeakyRef):
    """ReLU(x) = max(0, x); ReLU'(x) = 0 for x < 0, 1 for x >= 0 (seed 000)."""

    def __init__(self) -> None:
        super().__init__("_unused", 0.0)


identity_reference = _IdentityRef()
sigmoid_reference = _SigmoidRef()
tanh_reference = _TanhRef()
relu_reference = _ReLURef()
leaky_relu_reference = _LeakyRef("alpha", 0.01)
prelu_reference = _LeakyRef("init", 0.25)
elu_reference = _ELURef()
selu_reference = _SELURef()
gelu_reference = _GELURef()
silu_reference = _SiLURef()
softplus_reference = _SoftplusRef()
mish_reference = _MishRef()
softsign_reference = _SoftsignRef()
