"""Built-in activations: specs only (no torch import here, so ``techbench list`` stays fast).

Fast implementations and references live in :mod:`techbench_builtins.activations_impl`. The
declared properties follow :class:`techbench.techniques.families.ActivationProperties` and are verified by
:mod:`techbench.testing.activation`; they hold for every hyper-parameter setting
(a property that depends on the hyper-parameters is a function of them; see ``properties_for``).
"""

from __future__ import annotations

from typing import Any

from techbench.techniques.spec import Param, TechniqueSpec

_IMPL = "techbench_builtins.activations_impl"
_INF = float("inf")

SELU_ALPHA = 1.6732632423543772848170429916717
SELU_SCALE = 1.0507009873554804934193349852946


def _spec(
    name: str,
    cls: str,
    summary: str,
    citation: str,
    properties: dict,
    params: tuple[Param, ...] = (),
) -> TechniqueSpec:
    return TechniqueSpec(
        name=name,
        family="activation",
        summary=summary,
        citation=citation,
        fast=f"{_IMPL}:{cls}",
        reference=f"{_IMPL}:{name}_reference",
        params=params,
        properties=properties,
    )


identity = _spec(
    "identity",
    "Identity",
    "Linear unit f(x) = x (no nonlinearity); the baseline.",
    "Lecture notes, seed 002 (a network of linear units is linear)",
    dict(
        output_range=(-_INF, _INF),
        zero_centered=True,
        monotonic=True,
        saturation=None,
        dead_below=None,
        kinks=(),
    ),
)

sigmoid = _spec(
    "sigmoid",
    "Sigmoid",
    "Logistic sigmoid 1 / (1 + exp(-x)); saturates at both ends.",
    "Rumelhart, Hinton & Williams, Learning representations by back-propagating errors, "
    "Nature 1986; lecture notes, seed 000",
    dict(
        output_range=(0.0, 1.0),
        zero_centered=False,
        monotonic=True,
        saturation=(0.01, 0.99),
        dead_below=None,
        kinks=(),
    ),
)

tanh = _spec(
    "tanh",
    "Tanh",
    "Hyperbolic tangent; zero-centred, saturates at +-1.",
    "LeCun, Bottou, Orr & Mueller, Efficient BackProp, 1998; lecture notes, seed 000",
    dict(
        output_range=(-1.0, 1.0),
        zero_centered=True,
        monotonic=True,
        saturation=(-0.99, 0.99),
        dead_below=None,
        kinks=(),
    ),
)


def _elu_range(alpha: float, **_: Any) -> tuple[float, float]:
    """ELU's infimum is -alpha (the limit of alpha * (exp(x) - 1))."""
    return (-alpha, _INF)


def _elu_saturation(alpha: float, **_: Any) -> tuple[float, float]:
    """Saturated where f'(x) = f(x) + alpha <= min(0.01 * alpha, 0.04) (below 0.05)."""
    return (-alpha + min(0.01 * alpha, 0.04), _INF)


def _gelu_range(approximate: str = "none", **_: Any) -> tuple[float, float]:
    """Minimum of x * Phi(x): -0.16997 exact; the tanh approximation dips to -0.17004."""
    return (-0.17 if approximate == "none" else -0.1701, _INF)


def _softplus_saturation(beta: float, **_: Any) -> tuple[float, float]:
    """f'(x) = 1 - exp(-beta * f(x)) < 0.01 exactly where f(x) < -log(0.99) / beta ~ 0.01/beta."""
    return (0.01 / beta, _INF)


relu = _spec(
    "relu",
    "ReLU",
    "Rectified linear unit max(0, x); units can die.",
    "Nair & Hinton, Rectified linear units improve restricted Boltzmann machines, ICML 2010; "
    "Glorot, Bordes & Bengio, Deep sparse rectifier neural networks, AISTATS 2011",
    dict(
        output_range=(0.0, _INF),
        zero_centered=False,
        monotonic=True,
        saturation=None,
        dead_below=0.0,
        kinks=(0.0,),
    ),
)

leaky_relu = _spec(
    "leaky_relu",
    "LeakyReLU",
    "Leaky ReLU max(alpha * x, x) with a fixed small negative slope.",
    "Maas, Hannun & Ng, Rectifier nonlinearities improve neural network acoustic models, ICML 2013",
    dict(
        output_range=(-_INF, _INF),
        zero_centered=True,
        monotonic=True,
        saturation=None,
        dead_below=None,
        kinks=(0.0,),
    ),
    (
        Param(
            name="alpha",
            type=float,
            default=0.01,
            low=0.0,
            high=1.0,
            doc="negative slope; search 0.01..0.3 log (0.01: Maas et al. 2013; Xu et al. 2015 "
            "find larger slopes, about 0.18, better)",
            search=(0.01, 0.3),
            scale="log",
        ),
    ),
)

prelu = _spec(
    "prelu",
    "PReLU",
    "Parametric ReLU max(a * x, x) with a learnable negative slope a.",
    "He, Zhang, Ren & Sun, Delving deep into rectifiers, ICCV 2015",
    dict(
        output_range=(-_INF, _INF),
        zero_centered=True,
        monotonic=True,
        saturation=None,
        dead_below=None,
        kinks=(0.0,),
    ),
    (
        Param(name="learnable", type=bool, default=True, doc="train the slope"),
        Param(name="init", type=float, default=0.25, low=0.0, high=1.0, doc="initial slope a"),
    ),
)

elu = _spec(
    "elu",
    "ELU",
    "Exponential linear unit: x for x >= 0, alpha * (exp(x) - 1) below.",
    "Clevert, Unterthiner & Hochreiter, Fast and accurate deep network learning by "
    "exponential linear units (ELUs), ICLR 2016",
    dict(
        output_range=_elu_range,
        zero_centered=True,
        monotonic=True,
        saturation=_elu_saturation,
        dead_below=None,
        kinks=(0.0,),
    ),
    (
        Param(
            name="alpha",
            type=float,
            default=1.0,
            low=0.0,
            low_open=True,
            high=10.0,
            doc="negative saturation value -alpha; search 0.1..3 log around Clevert et al. "
            "2016's 1.0",
            search=(0.1, 3.0),
            scale="log",
        ),
    ),
)

selu = _spec(
    "selu",
    "SELU",
    "Scaled ELU with the self-normalizing constants lambda ~ 1.0507, alpha ~ 1.6733.",
    "Klambauer, Unterthiner, Mayr & Hochreiter, Self-normalizing neural networks, NeurIPS 2017",
    dict(
        output_range=(-SELU_SCALE * SELU_ALPHA, _INF),
        zero_centered=True,
        monotonic=True,
        saturation=(-1.74, _INF),
        dead_below=None,
        kinks=(0.0,),
    ),
)

gelu = _spec(
    "gelu",
    "GELU",
    "Gaussian error linear unit x * Phi(x), exact or with the tanh approximation.",
    "Hendrycks & Gimpel, Gaussian error linear units (GELUs), arXiv:1606.08415, 2016",
    dict(
        output_range=_gelu_range,
        zero_centered=True,
        monotonic=False,
        saturation=None,
        dead_below=None,
        kinks=(),
    ),
    (
        Param(
            name="approximate",
            type=str,
            default="none",
            choices=("none", "tanh"),
            doc="'none': exact erf form; 'tanh': the tanh approximation",
        ),
    ),
)

silu = _spec(
    "silu",
    "SiLU",
    "Sigmoid-weighted linear unit (swish) x * sigmoid(x).",
    "Elfwing, Uchibe & Doya, Sigmoid-weighted linear units for neural network function "
    "approximation in reinforcement learning, Neural Networks 2018; Ramachandran, Zoph & Le, "
    "Searching for activation functions, arXiv:1710.05941, 2017",
    dict(
        output_range=(-0.2785, _INF),
        zero_centered=True,
        monotonic=False,
        saturation=None,
        dead_below=None,
        kinks=(),
    ),
)

softplus = _spec(
    "softplus",
    "Softplus",
    "Softplus log(1 + exp(beta * x)) / beta, linear above the threshold.",
    "Dugas, Bengio, Belisle, Nadeau & Garcia, Incorporating second-order functional knowledge "
    "for better option pricing, NIPS 2000",
    dict(
        output_range=(0.0, _INF),
        zero_centered=False,
        monotonic=True,
        saturation=_softplus_saturation,
        dead_below=None,
        kinks=(20.0,),
    ),
    (
        Param(name="beta", type=float, default=1.0, low=0.0, low_open=True, high=100.0),
        Param(
            name="threshold",
            type=float,
            default=20.0,
            low=0.0,
            low_open=True,
            doc="above beta * x > threshold the output is x",
        ),
    ),
)

mish = _spec(
    "mish",
    "Mish",
    "Mish x * tanh(softplus(x)); smooth and non-monotonic.",
    "Misra, Mish: a self regularized non-monotonic activation function, BMVC 2020",
    dict(
        output_range=(-0.3089, _INF),
        zero_centered=True,
        monotonic=False,
        saturation=None,
        dead_below=None,
        kinks=(),
    ),
)

softsign = _spec(
    "softsign",
    "Softsign",
    "Softsign x / (1 + |x|); saturates polynomially at +-1.",
    "Bergstra, Desjardins, Lamblin & Bengio, Quadratic polynomials learn better image features, "
    "2009; Glorot & Bengio, AISTATS 2010",
    dict(
        output_range=(-1.0, 1.0),
        zero_centered=True,
        monotonic=True,
        saturation=(-0.9, 0.9),
        dead_below=None,
        kinks=(),
    ),
)
