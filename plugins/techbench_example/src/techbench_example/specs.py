"""The specs this package registers: metadata only, so ``techbench list`` never imports torch.

``fast`` and ``reference`` name objects in ``techbench_example.impl``; techbench imports them on
first use. Each family's reference protocol is stated in ``techbench.testing.<family>``.
"""

from __future__ import annotations

import math

from techbench import Param, TechniqueSpec

bent_identity = TechniqueSpec(
    name="bent_identity",
    family="activation",
    summary="Bent identity: f(x) = (sqrt(x^2 + 1) - 1) / 2 + x, smooth and never flat.",
    citation="Folklore; e.g. the activation tables of Godfrey 2019 (arXiv:1901.05894)",
    fast="techbench_example.impl:BentIdentity",
    reference="techbench_example.impl:bent_identity_reference",
    properties={
        "output_range": (-math.inf, math.inf),
        "zero_centered": True,
        "monotonic": True,
        "saturation": None,
        "dead_below": None,
        "kinks": (),
    },
)

trunc_normal = TechniqueSpec(
    name="trunc_normal",
    family="initializer",
    summary="Variance-scaling normal truncated at 2 std: Var(w) = scale / fan_in.",
    citation="Klambauer et al. 2017 / TensorFlow VarianceScaling(truncated_normal)",
    fast="techbench_example.impl:TruncNormal",
    reference="techbench_example.impl:trunc_normal_target",
    params=(Param(name="scale", type=float, default=1.0, low=0.0, low_open=True),),
    properties={"data_dependent": False, "applies_to": "weight"},
)

mean_only_batchnorm = TechniqueSpec(
    name="mean_only_batchnorm",
    family="normalizer",
    summary="Mean-only batch norm: subtract the batch mean per channel, add a learned bias.",
    citation="Salimans and Kingma 2016, Weight Normalization (section 3.2)",
    fast="techbench_example.impl:MeanOnlyBatchNorm",
    reference="techbench_example.impl:MeanOnlyBatchNormReference",
    params=(Param(name="momentum", type=float, default=0.1, low=0.0, high=1.0),),
    properties={"batch_dependent": True},
)

elastic_net = TechniqueSpec(
    name="elastic_net",
    family="regularizer",
    summary="Elastic net penalty l1 * sum|W| + l2 * sum W^2 on the weights (not biases).",
    citation="Zou and Hastie 2005",
    fast="techbench_example.impl:ElasticNet",
    reference="techbench_example.impl:elastic_net_reference",
    params=(
        Param(name="l1", type=float, default=1e-4, low=0.0),
        Param(name="l2", type=float, default=1e-4, low=0.0),
    ),
    properties={"hooks": ("penalty",)},
)

signum = TechniqueSpec(
    name="signum",
    family="optimizer",
    summary="Signum: step by the sign of the momentum, w -= lr * sign(m); signSGD at beta = 0.",
    citation="Bernstein et al. 2018, signSGD: compressed optimisation for non-convex problems",
    fast="techbench_example.impl:Signum",
    reference="techbench_example.impl:SIGNUM_RULE",
    params=(
        Param(name="lr", type=float, default=1e-3, low=0.0, low_open=True),
        Param(name="beta", type=float, default=0.9, low=0.0, high=1.0, high_open=True),
    ),
    properties={"adaptive": False},
)
