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
- the output layer is linear: logits for classification, predictions for regression, logits
  per position (N, T, V) for a language model (``inputs`` ("tokens",): int64 windows (N, T));
- ``model.features_last`` (optional, default False): hidden activations are (N, ..., C) with the
  features on the last dim (token models) rather than (N, C, *spatial);
- a model declaring ``norm_layout = "transformer"`` places its normalizers on the residual
  stream rather than at each activation (see ``techbench.testing.model``);
- parameter roles (:mod:`techbench.techniques.roles`), which the ``mup`` parametrization and
  matrix-aware optimizers read: from ``weight_layers``, an ``nn.Embedding`` (or, without one,
  the first layer) is ``input``, the last layer's weight the ``readout``, the others
  ``hidden``, their biases ``bias``, other vectors ``norm``; a model overrides what that rule
  gets wrong with ``model.parameter_roles = {"name": "role"}`` (a bare position table is
  ``"input"``; a tied head leaves the last block's matrix ``"hidden"``). For ``mup`` the model
  must also take its width as a hyper-parameter (``width_param``, default ``width``) and build
  at another width with the same parameter names and ranks (the base model is built at
  ``base_width`` on the meta device, so constructors must not need real tensors), and its
  weight initializer should scale as 1/fan_in (He, LeCun; the default ``he_normal`` does).

``mlp_parameter_count`` is the closed form of the MLP's parameter count without normalizer
parameters, used by the conformance check (pure Python: this module does not import torch).

``scale_params`` names the hyper-parameter a scale ladder multiplies for ``width`` and, where a
multiple makes sense, ``depth`` (:mod:`techbench.plan.scale`; resnet's depths are fixed 6n+2 and
the CNN's blocks each halve the image, so those two scale in width only).
"""

from __future__ import annotations

import math

from techbench.techniques.spec import Param, TechniqueSpec

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
        "scale_params": {"width": "width", "depth": "depth"},
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
    properties={"inputs": ("image",), "scale_params": {"width": "channels"}},
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
    properties={
        "inputs": ("vector", "image"),
        "scale_params": {"width": "width", "depth": "blocks"},
    },
    tags=("mlp", "residual"),
)


RESNET_DEPTHS = (8, 14, 20, 32, 44, 56, 110)


def resnet_parameter_count(
    input_shape: tuple[int, ...],
    num_outputs: int,
    depth: int = 20,
    width: int = 16,
    norm_params_per_channel: int = 0,
) -> int:
    """Parameters of :class:`~techbench_builtins.models_impl.ResNet` (He et al. 2016, sec. 4.2).

    Convs: a stem c_in -> w, then per stage s (widths w, 2w, 4w) 2n 3x3 convs, the first from
    the previous width; a linear head 4w -> k. Without a normalizer every conv has a bias; with
    one placed before the activation (``norm_params_per_channel`` affine parameters per channel,
    2 for batch norm) the convs have none and each conv is followed by a normalizer.
    """
    n = (depth - 2) // 6
    bias = 0 if norm_params_per_channel else 1
    convs = [(input_shape[0], width)]
    c_in = width
    for stage in range(3):
        c = width * 2**stage
        for _ in range(2 * n):
            convs.append((c_in, c))
            c_in = c
    per_conv = sum(9 * a * b + b * (bias + norm_params_per_channel) for a, b in convs)
    return per_conv + c_in * num_outputs + num_outputs


resnet = TechniqueSpec(
    name="resnet",
    family="model",
    summary="CIFAR ResNet-(6n+2): 3 stages of basic blocks, zero-padding shortcuts (option A).",
    citation="He, Zhang, Ren and Sun 2016, Deep residual learning for image recognition (sec. 4.2)",
    fast=f"{_IMPL}:ResNet",
    params=(
        Param(
            name="depth",
            type=int,
            default=20,
            choices=RESNET_DEPTHS,
            doc="6n + 2 layers (20: ResNet-20, 0.27M parameters; 32: 0.46M; 56: 0.85M)",
        ),
        Param(name="width", type=int, default=16, low=1, high=4096, doc="channels of stage 1"),
    ),
    properties={
        "inputs": ("image",),
        "parameter_count": "techbench_builtins.models:resnet_parameter_count",
        "scale_params": {"width": "width"},
    },
    tags=("cnn", "image", "residual"),
)

transformer = TechniqueSpec(
    name="transformer",
    family="model",
    summary="Decoder-only character-level transformer LM: causal attention + MLP blocks, pre/post-norm.",
    citation=(
        "Vaswani et al. 2017, Attention is all you need; Radford et al. 2019, GPT-2 "
        "(pre-norm, learned positions); Press and Wolf 2017 (weight tying)"
    ),
    fast=f"{_IMPL}:Transformer",
    params=(
        Param(name="width", type=int, default=128, low=1, high=65536, doc="model width"),
        Param(name="depth", type=int, default=2, low=1, high=256, doc="transformer blocks"),
        Param(name="heads", type=int, default=4, low=1, high=256, doc="attention heads"),
        Param(
            name="head_dim",
            type=int,
            default=0,
            low=0,
            high=65536,
            doc="width per head; when set, heads = width / head_dim (a width ladder then keeps "
            "the attention's 1/sqrt(head_dim) scale fixed, as muP's coordinate check assumes); "
            "0: use heads",
        ),
        Param(name="mlp_ratio", type=int, default=4, low=1, high=16, doc="MLP inner width factor"),
        Param(
            name="tie_weights",
            type=bool,
            default=False,
            doc="share the token embedding with the output head",
        ),
    ),
    properties={
        "inputs": ("tokens",),
        "norm_layout": "transformer",
        "scale_params": {"width": "width", "depth": "depth"},
    },
    tags=("transformer", "sequence", "residual"),
)
