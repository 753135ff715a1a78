"""Built-in optimizers: specs only (no torch import here, so ``techbench list`` stays fast).

Implementations and references live in :mod:`techbench_builtins.optimizers_impl`, the stacked
implementations (members of a stack with per-member hyper-parameters, ``spec.stacked``) in
:mod:`techbench_builtins.optimizers_stacked`; the reference protocol the conformance checks
expect is stated in :mod:`techbench.testing.optimizer`.

Search ranges (what ``[tune]`` searches; see ``Param.search``):

- ``lr``: 1e-5 to 1, log: as wide as the learning-rate spaces of Schmidt et al. 2021 (Descending
  through a Crowded Valley, log-uniform learning rates over several decades) and the AlgoPerf
  baselines (Dahl et al. 2023), so that every optimizer's optimum lies inside on small problems.
- momentum-like coefficients (``momentum``, ``beta1``, ``beta2``, RMSprop's ``alpha``): on the
  1 - x log scale, as Choi et al. 2019 (On Empirical Comparisons of Optimizers for Deep Learning)
  searched them; momentum/beta1 0.5 to 0.999, beta2/alpha 0.9 to 0.9999.
- ``weight_decay``: 1e-6 to 1e-1, log (AlgoPerf baselines search it on a log scale).
- ``eps``: 1e-10 to 1e-3, log: Choi et al. 2019 show eps matters for adaptive methods.
- the rest as each doc states.

Every optimizer with a built-in ``weight_decay`` (coupled L2 or decoupled) also has ``decay``:
which parameters it acts on. The default ``"weights"`` decays tensors with two or more
dimensions only, not biases or normalizer scales, exactly as the ``l2`` and ``weight_decay``
regularizers do by default, so that "matched" comparisons differ in one way only; ``"all"``
is ``torch.optim``'s behaviour (every parameter).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from techbench.techniques.families import (
    Stability,
    ema_stability,
    heavy_ball_stability,
    nesterov_stability,
)
from techbench.techniques.spec import Param, TechniqueSpec

_IMPL = "techbench_builtins.optimizers_impl"
_STACKED = "techbench_builtins.optimizers_stacked"


def _lr(default: float) -> Param:
    return Param(
        name="lr",
        type=float,
        default=default,
        low=0.0,
        high=10.0,
        low_open=True,
        doc="learning rate alpha; search 1e-5..1 log (Schmidt et al. 2021; AlgoPerf)",
        search=(1e-5, 1.0),
        scale="log",
    )


def _wd(default: float = 0.0, doc: str = "coupled L2 term: g <- g + weight_decay * p") -> Param:
    return Param(
        name="weight_decay",
        type=float,
        default=default,
        low=0.0,
        high=1.0,
        doc=doc + "; search 1e-6..1e-1 log (AlgoPerf)",
        search=(1e-6, 0.1),
        scale="log",
    )


_DECAY = Param(
    name="decay",
    type=str,
    default="weights",
    choices=("weights", "all"),
    doc="which parameters weight_decay acts on: 'weights' (ndim >= 2; not biases or normalizer "
    "scales, as the l2/weight_decay regularizers by default) or 'all' (torch.optim's behaviour)",
)


def _beta(name: str, default: float, doc: str, search: tuple[float, float]) -> Param:
    return Param(
        name=name,
        type=float,
        default=default,
        low=0.0,
        high=1.0,
        high_open=True,
        doc=doc + f"; search {search[0]}..{search[1]} on log(1 - x) (Choi et al. 2019)",
        search=search,
        scale="log1m",
    )


_B1 = (0.5, 0.999)
_B2 = (0.9, 0.9999)


def _eps(default: float) -> Param:
    return Param(
        name="eps",
        type=float,
        default=default,
        low=0.0,
        high=1.0,
        low_open=True,
        doc="denominator guard epsilon; search 1e-10..1e-3 log (Choi et al. 2019)",
        search=(1e-10, 1e-3),
        scale="log",
    )


def _heavy_ball(momentum: float = 0.0, dampening: float = 0.0, **_: Any) -> Stability:
    return Stability(False, heavy_ball_stability(momentum, dampening))


def _nesterov(momentum: float, **_: Any) -> Stability:
    return Stability(False, nesterov_stability(momentum))


def _adam(beta1: float, **_: Any) -> Stability:
    return Stability(True, ema_stability(beta1))


def _rmsprop(momentum: float, **_: Any) -> Stability:
    return Stability(True, heavy_ball_stability(momentum))


def _adagrad(lr_decay: float, **_: Any) -> Stability | None:
    """Plain gradient descent on the preconditioned loss; with ``lr_decay`` the rate is not
    the schedule's, so no threshold is claimed."""
    return Stability(True, 2.0) if lr_decay == 0 else None


_EPS_PLACEMENT = Param(
    name="eps_placement",
    type=str,
    default="outside",
    choices=("outside", "inside"),
    doc="'outside': g / (sqrt(v) + eps) as torch; 'inside': g / sqrt(v + eps) as seed 002's slide",
)

_MOMENTUM = Param(
    name="momentum",
    type=float,
    default=0.9,
    low=0.0,
    high=1.0,
    high_open=True,
    doc="momentum coefficient mu; search 0.5..0.999 on log(1 - x) (Choi et al. 2019)",
    search=_B1,
    scale="log1m",
)

sgd = TechniqueSpec(
    name="sgd",
    family="optimizer",
    summary="Plain stochastic gradient descent: p <- p - lr * g.",
    citation="Robbins & Monro 1951, A Stochastic Approximation Method; lecture notes, seed 002",
    fast=f"{_IMPL}:sgd",
    reference=f"{_IMPL}:sgd_reference",
    stacked=f"{_STACKED}:sgd",
    params=(_lr(0.01), _wd(), _DECAY),
    properties={
        "adaptive": False,
        "update_rule": "sgd",
        "elementwise": True,
        "stability": _heavy_ball,
    },
)

momentum = TechniqueSpec(
    name="momentum",
    family="optimizer",
    summary="SGD with heavy-ball momentum: b <- mu*b + (1-dampening)*g; p <- p - lr*b.",
    citation="Polyak 1964, Some methods of speeding up the convergence of iteration methods",
    fast=f"{_IMPL}:momentum",
    reference=f"{_IMPL}:momentum_reference",
    stacked=f"{_STACKED}:momentum",
    params=(
        _lr(0.01),
        _MOMENTUM,
        Param(
            name="dampening",
            type=float,
            default=0.0,
            low=0.0,
            high=1.0,
            high_open=True,
            doc="scales the new gradient by (1 - dampening) after the first step; search 0..0.9",
            search=(0.0, 0.9),
        ),
        _wd(),
        _DECAY,
    ),
    properties={
        "adaptive": False,
        "update_rule": "sgd",
        "elementwise": True,
        "stability": _heavy_ball,
    },
)

nesterov = TechniqueSpec(
    name="nesterov",
    family="optimizer",
    summary="SGD with Nesterov momentum: b <- mu*b + g; p <- p - lr*(g + mu*b).",
    citation="Nesterov 1983; Sutskever et al. 2013, On the importance of initialization and "
    "momentum in deep learning",
    fast=f"{_IMPL}:nesterov",
    reference=f"{_IMPL}:nesterov_reference",
    stacked=f"{_STACKED}:nesterov",
    params=(_lr(0.01), _MOMENTUM, _wd(), _DECAY),
    properties={
        "adaptive": False,
        "update_rule": "sgd",
        "elementwise": True,
        "stability": _nesterov,
    },
)

adagrad = TechniqueSpec(
    name="adagrad",
    family="optimizer",
    summary="Adagrad: per-coordinate steps lr * g / (sqrt(sum of g^2) + eps).",
    citation="Duchi, Hazan & Singer 2011, Adaptive Subgradient Methods for Online Learning and "
    "Stochastic Optimization",
    fast=f"{_IMPL}:adagrad",
    reference=f"{_IMPL}:adagrad_reference",
    stacked=f"{_STACKED}:adagrad",
    params=(
        _lr(0.01),
        Param(
            name="lr_decay",
            type=float,
            default=0.0,
            low=0.0,
            high=1.0,
            doc="lr_t = lr / (1 + (t - 1) * lr_decay); search 1e-6..1e-2 log (halves lr "
            "somewhere between 100 and 10^6 steps)",
            search=(1e-6, 1e-2),
            scale="log",
        ),
        _wd(),
        _DECAY,
        Param(
            name="initial_accumulator_value",
            type=float,
            default=0.0,
            low=0.0,
            high=10.0,
            doc="initial value of the squared-gradient sum; search 0..1 (torch's default 0, "
            "Duchi et al.'s delta-style offset up to 1)",
            search=(0.0, 1.0),
        ),
        _eps(1e-10),
    ),
    properties={
        "adaptive": True,
        "update_rule": "adaptive",
        "elementwise": True,
        "stability": _adagrad,
    },
)

rmsprop = TechniqueSpec(
    name="rmsprop",
    family="optimizer",
    summary="RMSprop: divide the gradient by a running RMS, eps outside or inside the root.",
    citation="Tieleman & Hinton 2012, Lecture 6.5 (COURSERA: Neural Networks for Machine "
    "Learning); lecture notes, seed 002 (eps inside the root)",
    fast=f"{_IMPL}:rmsprop",
    reference=f"{_IMPL}:rmsprop_reference",
    stacked=f"{_STACKED}:rmsprop",
    params=(
        _lr(0.01),
        _beta("alpha", 0.99, "decay of the mean square: v <- alpha*v + (1-alpha)*g^2", _B2),
        _eps(1e-8),
        _wd(),
        _DECAY,
        Param(
            name="momentum",
            type=float,
            default=0.0,
            low=0.0,
            high=1.0,
            high_open=True,
            doc="momentum on the normalised step (torch's RMSprop momentum); search 0..0.99 "
            "on log(1 - x) (Choi et al. 2019)",
            search=(0.0, 0.99),
            scale="log1m",
        ),
        _EPS_PLACEMENT,
    ),
    properties={
        "adaptive": True,
        "update_rule": "adaptive",
        "elementwise": True,
        "stability": _rmsprop,
    },
)

_ADAM_PARAMS = (
    _beta("beta1", 0.9, "first-moment decay", _B1),
    _beta("beta2", 0.999, "second-moment decay", _B2),
    _eps(1e-8),
)

adam = TechniqueSpec(
    name="adam",
    family="optimizer",
    summary="Adam: bias-corrected first and second moment estimates (eps placement selectable).",
    citation="Kingma & Ba 2015, Adam: A Method for Stochastic Optimization; lecture notes, "
    "seed 002 (eps inside the root, no bias correction)",
    fast=f"{_IMPL}:adam",
    reference=f"{_IMPL}:adam_reference",
    stacked=f"{_STACKED}:adam",
    params=(
        _lr(1e-3),
        *_ADAM_PARAMS,
        _wd(),
        _DECAY,
        Param(
            name="bias_correction",
            type=bool,
            default=True,
            doc="divide m by 1-beta1^t and v by 1-beta2^t",
        ),
        _EPS_PLACEMENT,
    ),
    properties={
        "adaptive": True,
        "update_rule": "adaptive",
        "elementwise": True,
        "stability": _adam,
    },
)

adamw = TechniqueSpec(
    name="adamw",
    family="optimizer",
    summary="AdamW: Adam with decoupled weight decay p <- p*(1 - lr*weight_decay).",
    citation="Loshchilov & Hutter 2019, Decoupled Weight Decay Regularization (ICLR)",
    fast=f"{_IMPL}:adamw",
    reference=f"{_IMPL}:adamw_reference",
    stacked=f"{_STACKED}:adamw",
    params=(
        _lr(1e-3),
        *_ADAM_PARAMS,
        _wd(0.01, "decoupled decay: p <- p * (1 - lr * weight_decay) before the Adam step"),
        _DECAY,
    ),
    properties={
        "adaptive": True,
        "update_rule": "adaptive",
        "elementwise": True,
        "stability": _adam,
    },
)

nadam = TechniqueSpec(
    name="nadam",
    family="optimizer",
    summary="NAdam: Adam with Nesterov momentum and the mu_t momentum-decay schedule.",
    citation="Dozat 2016, Incorporating Nesterov Momentum into Adam (ICLR workshop)",
    fast=f"{_IMPL}:nadam",
    reference=f"{_IMPL}:nadam_reference",
    stacked=f"{_STACKED}:nadam",
    params=(
        _lr(2e-3),
        *_ADAM_PARAMS,
        _wd(),
        _DECAY,
        Param(
            name="momentum_decay",
            type=float,
            default=0.004,
            low=0.0,
            high=1.0,
            doc="psi in mu_t = beta1 * (1 - 0.5 * 0.96^(t * psi)); search 1e-4..1e-1 log "
            "around Dozat 2016's 0.004",
            search=(1e-4, 0.1),
            scale="log",
        ),
    ),
    properties={"adaptive": True, "update_rule": "adaptive", "elementwise": True},
)

radam = TechniqueSpec(
    name="radam",
    family="optimizer",
    summary="RAdam: Adam with the variance rectification term r_t (SGD-momentum while rho_t <= 5).",
    citation="Liu et al. 2020, On the Variance of the Adaptive Learning Rate and Beyond (ICLR)",
    fast=f"{_IMPL}:radam",
    reference=f"{_IMPL}:radam_reference",
    stacked=f"{_STACKED}:radam",
    params=(_lr(1e-3), *_ADAM_PARAMS, _wd(), _DECAY),
    properties={
        "adaptive": True,
        "update_rule": "adaptive",
        "elementwise": True,
        "stability": _adam,
    },
)

lion = TechniqueSpec(
    name="lion",
    family="optimizer",
    summary="Lion: sign of an interpolated momentum, with decoupled weight decay.",
    citation="Chen et al. 2023, Symbolic Discovery of Optimization Algorithms (NeurIPS)",
    fast=f"{_IMPL}:lion",
    reference=f"{_IMPL}:lion_reference",
    stacked=f"{_STACKED}:lion",
    params=(
        _lr(1e-4),
        _beta("beta1", 0.9, "interpolation for the update direction", _B1),
        _beta("beta2", 0.99, "momentum decay", _B2),
        _wd(0.0, "decoupled decay: p <- p - lr * weight_decay * p"),
        _DECAY,
    ),
    properties={"adaptive": False, "update_rule": "adaptive", "elementwise": True},
)


def _muon_rule(adjust_lr: str = "original", **_: Any) -> str:
    """muP's rule for Muon's hidden step (:mod:`techbench_builtins.parametrizations_impl`): its
    spectral norm is lr under ``"original"`` (``"orthogonalized"``), 0.2 sqrt(max(rows, cols))
    lr under ``"match_rms_adamw"`` (``"orthogonalized_rms"``)."""
    return "orthogonalized" if adjust_lr == "original" else "orthogonalized_rms"


muon = TechniqueSpec(
    name="muon",
    family="optimizer",
    summary="Muon: Newton-Schulz-orthogonalised momentum for hidden matrices, AdamW for the rest.",
    citation="Jordan et al. 2024, Muon: An optimizer for hidden layers in neural networks "
    "(kellerjordan.github.io/posts/muon); Liu et al. 2025, Muon is scalable for LLM training "
    "(arXiv 2502.16982) for adjust_lr='match_rms_adamw'",
    fast=f"{_IMPL}:muon",
    reference=f"{_IMPL}:muon_reference",
    stacked="techbench_builtins.optimizers_muon:stacked",
    params=(
        Param(
            name="lr",
            type=float,
            default=0.02,
            low=0.0,
            high=10.0,
            low_open=True,
            doc="Muon's rate for hidden matrices (Jordan's default 0.02; in units of spectral "
            "norm per step times the shape scale); search 1e-5..1 log (Schmidt et al. 2021)",
            search=(1e-5, 1.0),
            scale="log",
        ),
        _beta("momentum", 0.95, "Muon's momentum mu: B <- mu*B + (1-mu)*G (Jordan's 0.95)", _B1),
        Param(
            name="nesterov",
            type=bool,
            default=True,
            doc="orthogonalise (1-mu)*G + mu*B (Nesterov, the authors' default) instead of B",
        ),
        Param(
            name="ns_steps",
            type=int,
            default=5,
            low=1,
            high=99,
            doc="Newton-Schulz steps; not searched: the quintic's coefficients are tuned for 5 "
            "(Jordan et al. 2024)",
        ),
        Param(
            name="adjust_lr",
            type=str,
            default="original",
            choices=("original", "match_rms_adamw"),
            doc="shape scale of the Muon step: 'original' max(1, rows/cols)^0.5 (Jordan's code, "
            "torch.optim.Muon's default) or 'match_rms_adamw' 0.2*sqrt(max(rows, cols)) (Liu et "
            "al. 2025: the update's RMS matches AdamW's, so AdamW's lr carries over)",
        ),
        _wd(
            0.01,
            "decoupled decay p <- p*(1 - r*weight_decay) before each step, r each side's rate "
            "(lr or adam_lr; the authors' MuonWithAuxAdam example uses 0.01 on both)",
        ),
        _DECAY,
        Param(
            name="adam_lr",
            type=float,
            default=3e-4,
            low=0.0,
            high=10.0,
            low_open=True,
            doc="the AdamW side's own rate (input, readout, bias and norm parameters), apart from "
            "lr as in Jordan's MuonWithAuxAdam (3e-4); search 1e-5..1 log",
            search=(1e-5, 1.0),
            scale="log",
        ),
        _beta("beta1", 0.9, "the AdamW side's first-moment decay (MuonWithAuxAdam: 0.9)", _B1),
        _beta("beta2", 0.95, "the AdamW side's second-moment decay (MuonWithAuxAdam: 0.95)", _B2),
        replace(
            _eps(1e-10),
            doc="the AdamW side's denominator guard (MuonWithAuxAdam: 1e-10); search 1e-10..1e-3 "
            "log (Choi et al. 2019)",
        ),
    ),
    properties={
        "adaptive": False,
        "elementwise": False,
        "stacks": True,
        "reads_roles": True,
        "orthogonalized": True,
        "update_rule": _muon_rule,
        "rates": ("lr", "adam_lr"),
    },
)
