"""Built-in models (specs only; the networks are in ``models_impl``).

Fast side: ``fast(input_shape, num_outputs, parts: ModelParts, **hp) -> torch.nn.Module``.

The model contract every model plugin keeps (the gradient-health callback, the probe and
``techbench.testing.model`` rely on it):

- ``model.weight_layers: list[nn.Module]``: the weight-bearing layers (Linear / Conv) in forward
  order; health metrics label them "0", "1", ...; ``parts.weight_init`` fills each ``.weight``
  and ``parts.bias_init`` each ``.bias``;
- ``model.activation_layers: list[nn.Module]``: the activation modules in forward order, one
  per hidden nonlinearity, each built by ``parts.activation()``;
- a normalizer (``parts.normalizer(num_features)``, skipped when it returns None or
  ``nn.Identity``) sits right before each hidden activation ("before") or right after it
  ("after"); the dropout module (``parts.dropout()``, skipped when None) follows each hidden
  activation (and its normalizer when "after");
- the output layer is linear: logits for classification, predictions for regression.

``mlp_parameter_count`` is the closed form of the MLP's parameter count without normalizer
parameters, used by the conformance check (pure Python: this module does not import torch).
"""

from __future__ import annotations

import math

from techbench.spec import Param, TechniqueSpec

_IMPL = "techbench_builtins.models_impl"


def mlp_parameter_count(
    input_shape: tuple[int, ...], num_outputs: int, depth: int, width: int
) -> int:
    """d*w + w + (depth - 1)(w*w + w) + w*k + k for d inputs, k outputs, ``depth`` hidden layers."""
    d = math.prod(input_shape)
    return (
        d * width
        + width
        + (depth - 1) * (width * width + width)
        + width * num_outputs
        + num_outputs
    )


mlp = TechniqueSpec(
    name="mlp",
    family="model",
    summary="Fully connected network: depth hidden layers of equal width (deep and narrow allowed).",
    citation="Lecture notes, seed 003 (k-layer networks; the 10 x 500 initialisation experiment)",
    fast=f"{_IMPL}:MLP",
    params=(
        Param(name="depth", type=int, default=2, low=1, high=1000, doc="hidden layers"),
        Param(name="width", type=int, default=128, low=1, high=1_000_000, doc="units per layer"),
    ),
    properties={
        "inputs": ("vector", "image"),
        "parameter_count": "techbench_builtins.models:mlp_parameter_count",
    },
    tags=("mlp",),
)

cnn = TechniqueSpec(
    name="cnn",
    family="model",
    summary="Small CNN: blocks of 3x3 conv, normalizer, activation, 2x2 max-pool; then a linear head.",
    citation="LeCun, Bottou, Bengio and Haffner 1998, Gradient-based learning (LeNet-style)",
    fast=f"{_IMPL}:CNN",
    params=(
        Param(name="blocks", type=int, default=2, low=1, high=8, doc="conv blocks"),
        Param(name="channels", type=int, default=16, low=1, high=4096, doc="first block channels"),
        Param(name="growth", type=int, default=2, low=1, high=4, doc="channel factor per block"),
        Param(
            name="hidden", type=int, default=0, low=0, doc="units of a hidden dense layer (0: none)"
        ),
    ),
    properties={"inputs": ("image",)},
    tags=("cnn", "image"),
)

resmlp = TechniqueSpec(
    name="resmlp",
    family="model",
    summary="Residual MLP: a linear stem, blocks x + W2 act(norm(W1 x)), then a linear head.",
    citation="He, Zhang, Ren and Sun 2016, Deep residual learning for image recognition",
    fast=f"{_IMPL}:ResMLP",
    params=(
        Param(name="blocks", type=int, default=4, low=1, high=1000, doc="residual blocks"),
        Param(name="width", type=int, default=128, low=1, high=1_000_000, doc="residual width"),
        Param(name="expansion", type=int, default=1, low=1, high=16, doc="inner width factor"),
    ),
    properties={"inputs": ("vector", "image")},
    tags=("mlp", "residual"),
)
