"""The built-in parametrizations and their references (Yang et al. 2021, Tensor Programs V,
arXiv 2203.03466, Table 3).

Relative to a base model. The trial's initializer and learning rate are the *standard*
parametrization (SP) at every width; muP multiplies them so that each tensor's initial variance
and learning rate follow Table 3's muP column as functions of its fans, equal to SP's at the base
width (the ``mup`` package's ``set_base_shapes`` convention: tune at the base, transfer up). With
``m_in`` = fan_in / base fan_in of a weight:

=========  ==============================  ===================  =====================
role       init (std multiplier)           Adam-like lr         SGD lr
=========  ==============================  ===================  =====================
input      1 (sqrt(m) for an embedding)    1                    fan_out ratio
hidden     1                               1 / m_in             1
readout    1 / sqrt(m_in)                  1 / m_in             1 / m_in
bias/norm  1                               1                    fan_out ratio
=========  ==============================  ===================  =====================

An ``orthogonalized`` optimizer (Muon: hidden matrices orthogonalised, the rest AdamW) takes the
Adam-like column with hidden ``1``, or ``1 / sqrt(m_in)`` with Muon's RMS-matched shape scale
(``orthogonalized_rms``; :data:`MUP_TABLE`).

The readout is Table 3's form: initial variance 1/fan_in^2 and learning rate 1/fan_in, with no
multiplier in the forward pass. It is the same network function, step by step, as Table 8's
output multiplier 1/fan_in on logits with a width-independent readout variance, and lr fan_in
(SGD) or 1 (Adam): with W_eff = W / m, var(W_eff) = var(W) / m^2, an SGD step on W moves W_eff
by lr / m^2 times its gradient, an Adam step by lr / m (up to Adam's epsilon, which Table 3's
form keeps relative to the true gradient). Chosen because it needs no change to any model's
forward: every model that declares its roles gets muP.

Assumptions, as ``set_base_shapes(rescale_params=True)`` makes them: the trial's weight
initializer has variance proportional to 1/fan_in in torch's convention (``prod(shape[1:])``:
He, LeCun, Glorot when both fans scale), so an ``nn.Embedding`` (vocab, d), whose torch fan_in
is d, is rescaled by sqrt(d / base d) to the table's width-independent input variance; biases
and normalizer gains start width-independent (zeros, ones). Hidden matrices follow the table's
``1`` for SGD (fan_in and fan_out scale together; the ``mup`` package's fan_out/fan_in ratio
agrees whenever they do). A readout tied to the input embedding is not supported.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from techbench.techniques.families import Parametrization, ParamScale

__all__ = ["MUP_TABLE", "MuP", "Standard", "mup_reference", "standard_reference"]

UPDATE_RULES = ("adaptive", "sgd", "orthogonalized", "orthogonalized_rms")


class Standard(Parametrization):
    """The standard parametrization: the base class's defaults (no base, multipliers 1)."""


def standard_reference(
    role: str, shape: tuple[int, ...], base_shape: tuple[int, ...], update_rule: str | None
) -> tuple[float, float]:
    """SP (Table 3's gray text, with the trial's own initializer and lr): ``(1, 1)``."""
    return 1.0, 1.0


def _ratio(shape: tuple[int, ...], base: tuple[int, ...]) -> float:
    return math.prod(shape) / math.prod(base)


class MuP(Parametrization):
    """muP relative to ``base_width`` of the model's ``width_param`` (the module docstring)."""

    def __init__(
        self, base_width: int = 128, width_param: str = "width", readout_zero_init: bool = False
    ) -> None:
        self.base_width = int(base_width)
        self.width_param = width_param
        self.readout_zero_init = bool(readout_zero_init)

    def base_model_params(self, model_params: Mapping[str, Any]) -> Mapping[str, Any]:
        if self.width_param not in model_params:
            raise ValueError(
                f"parametrization mup: the model has no hyper-parameter {self.width_param!r} "
                f"(it has {', '.join(sorted(model_params)) or 'none'}); set width_param"
            )
        return {**model_params, self.width_param: self.base_width}

    def check_roles(self, roles: Mapping[str, str]) -> None:
        if "readout" not in roles.values():
            raise ValueError(
                "parametrization mup needs a readout (the output layer's weight, role "
                "'readout'); this model has none (a head tied to the input embedding is not "
                "supported)"
            )

    def scale(
        self,
        role: str,
        shape: tuple[int, ...],
        base_shape: tuple[int, ...],
        update_rule: str | None,
    ) -> ParamScale:
        if update_rule not in UPDATE_RULES:
            raise ValueError(
                "parametrization mup needs the optimizer's properties['update_rule'] "
                f"({', '.join(map(repr, UPDATE_RULES))}); this optimizer declares {update_rule!r}"
            )
        adam = update_rule != "sgd"
        if role in ("input", "bias", "norm"):
            lr = 1.0 if adam else _ratio(shape, base_shape)
            if role != "input" or len(shape) < 2:
                return ParamScale(1.0, lr)
            return ParamScale(math.sqrt(_ratio(shape[1:], base_shape[1:])), lr)
        if len(shape) < 2:
            raise ValueError(f"parametrization mup: a {role} weight of shape {shape} is not 2-D")
        m_in = _ratio(shape[1:], base_shape[1:])
        if role == "hidden":
            hidden_lr = {"adaptive": 1.0 / m_in, "orthogonalized_rms": m_in**-0.5}
            return ParamScale(1.0, hidden_lr.get(str(update_rule), 1.0))
        if role == "readout":
            init = 0.0 if self.readout_zero_init else 1.0 / math.sqrt(m_in)
            return ParamScale(init, 1.0 / m_in)
        raise ValueError(f"parametrization mup: unknown role {role!r}")


MUP_TABLE: dict[str, dict[str, tuple[float, float]]] = {
    "input": {"init_var": (-1, 0), "sgd": (0, 1), "adaptive": (0, 0), "orthogonalized": (0, 0)},
    "bias": {"init_var": (-1, 0), "sgd": (0, 1), "adaptive": (0, 0), "orthogonalized": (0, 0)},
    "hidden": {"init_var": (-1, 0), "sgd": (0, 0), "adaptive": (-1, 0), "orthogonalized": (0, 0)},
    "readout": {
        "init_var": (-2, 0),
        "sgd": (-1, 0),
        "adaptive": (-1, 0),
        "orthogonalized": (-1, 0),
    },
}
for _row in MUP_TABLE.values():  # Muon with Moonlight's RMS-matched scale: hidden fan_in^-1/2
    _row["orthogonalized_rms"] = _row["orthogonalized"]
MUP_TABLE["hidden"]["orthogonalized_rms"] = (-0.5, 0)
"""Table 3 of Tensor Programs V, muP column: each entry fan_in^a * fan_out^b as (a, b).
Columns "input weights & all biases" (normalizer gains are biases here: vectors of width),
"output weights" (readout), "hidden weights"; rows initial variance, SGD lr, Adam lr.
``orthogonalized`` (Muon: hidden matrices orthogonalised, the rest AdamW): the Adam column but
hidden ``1``: the orthogonalised update already has the spectral norm the spectral condition
asks of a hidden matrix, Theta(sqrt(fan_out / fan_in)) (Yang, Simon and Bernstein 2023, "A
spectral condition for feature learning", arXiv 2310.17813; Muon's shape scale
max(1, fan_out / fan_in)^(1/2) times lr), so its rate needs no width factor.
``orthogonalized_rms`` (Muon with Moonlight's ``match_rms_adamw`` scale 0.2 sqrt(max(rows, cols))
times lr, whose spectral norm grows as sqrt(width)): hidden fan_in^(-1/2) to keep it flat."""


def mup_reference(
    role: str,
    shape: tuple[int, ...],
    base_shape: tuple[int, ...],
    update_rule: str | None,
    base_width: int = 128,
    width_param: str = "width",
    readout_zero_init: bool = False,
) -> tuple[float, float]:
    """``(init std multiplier, lr multiplier)`` straight from :data:`MUP_TABLE`, relative to the
    base shape: each fan is a ratio to the base's (the table's monomials are scale-free); a
    vector's fan_in is 1 and its fan_out its length; an input weight's fan_in is finite (the
    data's), so only its width dimension, its fan_out, changes. The trial's initializer gives
    variance ~ 1/(torch fan_in) to tensors of two or more dimensions and a width-independent
    one to vectors; the init multiplier is the square root of the table's variance over that.
    """
    row = MUP_TABLE["bias" if role == "norm" else role]
    whole = math.prod(shape) / math.prod(base_shape)
    torch_fan_in = math.prod(shape[1:]) / math.prod(base_shape[1:]) if len(shape) > 1 else 1.0
    if role in ("input", "bias", "norm"):
        fan_in, fan_out = 1.0, whole
    else:
        fan_in, fan_out = torch_fan_in, shape[0] / base_shape[0]
    initializer_var = 1.0 / torch_fan_in
    a, b = row["init_var"]
    init = math.sqrt(fan_in**a * fan_out**b / initializer_var)
    if role == "readout" and readout_zero_init:  # the mup README: the limit of variance -> 0
        init = 0.0
    a, b = row[str(update_rule)]
    return init, fan_in**a * fan_out**b
