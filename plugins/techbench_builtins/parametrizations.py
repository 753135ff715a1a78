"""Built-in parametrizations: specs only (no torch import at import time).

``standard`` is today's network: every multiplier 1. ``mup`` is the maximal update
parametrization (Yang et al. 2021, "Tensor Programs V", arXiv 2203.03466, Table 3), relative to a
base width as the ``mup`` package's ``set_base_shapes`` makes it: at ``base_width`` it *is* the
standard parametrization, so a learning rate tuned there carries to every width. Rules, the
reference written from the table and the protocol: :mod:`techbench_builtins.parametrizations_impl`
and :mod:`techbench.testing.parametrization`.
"""

from __future__ import annotations

from techbench.techniques.spec import Param, TechniqueSpec

_IMPL = "techbench_builtins.parametrizations_impl"

standard = TechniqueSpec(
    name="standard",
    family="parametrization",
    summary="Standard parametrization: the network as built, every learning rate as given.",
    citation="Yang et al. 2021, Tensor Programs V (arXiv 2203.03466), Table 3, SP (gray text)",
    fast=f"{_IMPL}:Standard",
    reference=f"{_IMPL}:standard_reference",
    properties={"width_stable": False},
)

mup = TechniqueSpec(
    name="mup",
    family="parametrization",
    summary="Maximal update parametrization: per-role init and lr multipliers vs a base width.",
    citation="Yang et al. 2021, Tensor Programs V: Tuning Large Neural Networks via Zero-Shot "
    "Hyperparameter Transfer (arXiv 2203.03466), Table 3 (muP for SGD and Adam)",
    fast=f"{_IMPL}:MuP",
    reference=f"{_IMPL}:mup_reference",
    params=(
        Param(
            name="base_width",
            type=int,
            default=128,
            low=1,
            doc="the model's width hyper-parameter at which mup equals the standard "
            "parametrization (tune there; 128: the built-in MLP's and transformer's default)",
        ),
        Param(
            name="width_param",
            type=str,
            default="width",
            doc="the model hyper-parameter that is the width (the base model sets it to "
            "base_width, everything else as the trial's)",
        ),
        Param(
            name="readout_zero_init",
            type=bool,
            default=False,
            doc="start the readout at zero (the mup package README recommends it) instead of "
            "variance 1/(fan_in * width ratio), whose init part of the output shrinks as width^-1/2",
        ),
    ),
    properties={"width_stable": True},
)
