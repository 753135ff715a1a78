"""Built-in regularizers: specs only (no torch import; see ``regularizers_impl`` for the code).

Each spec's ``properties["hooks"]`` names the :class:`techbench.techniques.families.Regularizer` hooks its
fast side overrides; the conformance checks in ``techbench.testing.regularizer`` pick the
reference protocol from it.
"""

from __future__ import annotations

from techbench.techniques.spec import Param, TechniqueSpec

_IMPL = "techbench_builtins.regularizers_impl"

_INCLUDE_BIAS = Param(
    name="include_bias",
    type=bool,
    default=False,
    doc="also act on 1-D parameters (biases, normalizer scales); default: weights (ndim >= 2) only",
)

none = TechniqueSpec(
    name="none",
    family="regularizer",
    summary="No regularization: every hook keeps its default.",
    fast=f"{_IMPL}:NoRegularizer",
    reference=f"{_IMPL}:none_reference",
    citation="Lecture notes, seed 004 (unregularized baseline)",
    properties={"hooks": ()},
)

l2 = TechniqueSpec(
    name="l2",
    family="regularizer",
    summary="L2 penalty lambda*||W||^2 (gradient 2*lambda*W) added to the training loss.",
    fast=f"{_IMPL}:L2Penalty",
    reference=f"{_IMPL}:l2_reference",
    citation="Lecture notes, seed 003 (L2 regularisation in the cost, gradient 2*lambda*W)",
    params=(
        Param(
            name="lam",
            type=float,
            default=1e-4,
            low=0.0,
            doc="penalty strength lambda; search 1e-6..1e-1 log (as weight decay in AlgoPerf)",
            search=(1e-6, 0.1),
            scale="log",
        ),
        Param(
            name="convention",
            type=str,
            default="lambda",
            choices=("lambda", "half_lambda"),
            doc="'lambda': lambda*||W||^2 (seed 003); 'half_lambda': lambda/2*||W||^2 (libraries)",
        ),
        _INCLUDE_BIAS,
    ),
    properties={"hooks": ("penalty",)},
)

weight_decay = TechniqueSpec(
    name="weight_decay",
    family="regularizer",
    summary="Decoupled weight decay: w <- w - lr*u - lr*lambda*w, the decay from pre-step weights.",
    fast=f"{_IMPL}:DecoupledWeightDecay",
    reference=f"{_IMPL}:weight_decay_reference",
    citation=(
        "Loshchilov & Hutter, Decoupled Weight Decay Regularization, ICLR 2019 (arXiv:1711.05101)"
    ),
    params=(
        Param(
            name="lam",
            type=float,
            default=1e-2,
            low=0.0,
            doc="decay rate lambda (per unit lr); search 1e-5..1 log (Loshchilov & Hutter 2019 "
            "tune the normalized decay over decades)",
            search=(1e-5, 1.0),
            scale="log",
        ),
        _INCLUDE_BIAS,
    ),
    properties={"hooks": ("transform_gradients", "after_step")},
)

l1 = TechniqueSpec(
    name="l1",
    family="regularizer",
    summary="L1 penalty lambda*sum|W| (subgradient lambda*sign(W)) added to the training loss.",
    fast=f"{_IMPL}:L1Penalty",
    reference=f"{_IMPL}:l1_reference",
    citation="Tibshirani, Regression Shrinkage and Selection via the Lasso, JRSS-B 1996",
    params=(
        Param(
            name="lam",
            type=float,
            default=1e-5,
            low=0.0,
            doc="penalty strength lambda; search 1e-7..1e-2 log (lasso paths span decades; "
            "Tibshirani 1996)",
            search=(1e-7, 1e-2),
            scale="log",
        ),
        _INCLUDE_BIAS,
    ),
    properties={"hooks": ("penalty",)},
)

dropout = TechniqueSpec(
    name="dropout",
    family="regularizer",
    summary="Inverted dropout: zero each unit with probability p, scale survivors by 1/(1-p).",
    fast=f"{_IMPL}:Dropout",
    reference=f"{_IMPL}:dropout_reference",
    citation=(
        "Srivastava et al., Dropout: A Simple Way to Prevent Neural Networks from Overfitting, "
        "JMLR 2014"
    ),
    params=(
        Param(
            name="p",
            type=float,
            default=0.5,
            low=0.0,
            high=1.0,
            high_open=True,
            doc="drop rate; search 0..0.7 linear (Srivastava et al. 2014 use 0.2-0.5 and find "
            "0.4-0.8 retention works)",
            search=(0.0, 0.7),
        ),
    ),
    properties={"hooks": ("make_module",), "stacked_module": True},
)

gaussian_noise = TechniqueSpec(
    name="gaussian_noise",
    family="regularizer",
    summary="Additive Gaussian input noise x + std*N(0, 1) on training batches only.",
    fast=f"{_IMPL}:GaussianNoise",
    reference=f"{_IMPL}:gaussian_noise_reference",
    citation="Bishop, Training with Noise is Equivalent to Tikhonov Regularization, Neural Comp. 1995",
    params=(
        Param(
            name="std",
            type=float,
            default=0.1,
            low=0.0,
            doc="noise standard deviation; search 0.01..1 log (inputs are standardized; "
            "Bishop 1995: the Tikhonov strength grows as std^2)",
            search=(0.01, 1.0),
            scale="log",
        ),
    ),
    properties={"hooks": ("transform_batch",), "law": "additive_noise"},
)

augment = TechniqueSpec(
    name="augment",
    family="regularizer",
    summary="Random crop of the zero-padded image plus random horizontal flip, per sample.",
    fast=f"{_IMPL}:Augment",
    reference=f"{_IMPL}:augment_reference",
    citation=(
        "Krizhevsky et al., ImageNet Classification with Deep Convolutional Neural Networks, "
        "NeurIPS 2012; lecture notes, seed 004"
    ),
    params=(
        Param(
            name="padding",
            type=int,
            default=4,
            low=0,
            high=64,
            doc="zero padding per side; search 0..8 (Krizhevsky et al. 2012 crop 224 of 256)",
            search=(0, 8),
        ),
        Param(
            name="flip_p",
            type=float,
            default=0.5,
            low=0.0,
            high=1.0,
            doc="flip probability; search 0..0.5 (0.5: Krizhevsky et al. 2012)",
            search=(0.0, 0.5),
        ),
    ),
    properties={"hooks": ("transform_batch",), "law": "crop_flip"},
)

label_smoothing = TechniqueSpec(
    name="label_smoothing",
    family="regularizer",
    summary="Cross-entropy against (1-eps)*one_hot + eps/K instead of the one-hot target.",
    fast=f"{_IMPL}:LabelSmoothing",
    reference=f"{_IMPL}:label_smoothing_reference",
    citation=(
        "Szegedy et al., Rethinking the Inception Architecture for Computer Vision, CVPR 2016"
    ),
    params=(
        Param(
            name="epsilon",
            type=float,
            default=0.1,
            low=0.0,
            high=1.0,
            doc="smoothing mass eps; search 0..0.3 linear (Szegedy et al. 2016 use 0.1; AlgoPerf "
            "baselines search 0.1 and 0.2)",
            search=(0.0, 0.3),
        ),
    ),
    properties={"hooks": ("loss",)},
)

max_norm = TechniqueSpec(
    name="max_norm",
    family="regularizer",
    summary="After each step, project every unit's incoming weight vector onto ||w|| <= c.",
    fast=f"{_IMPL}:MaxNorm",
    reference=f"{_IMPL}:max_norm_reference",
    citation=(
        "Srivastava et al., Dropout: A Simple Way to Prevent Neural Networks from Overfitting, "
        "JMLR 2014 (max-norm constraint)"
    ),
    params=(
        Param(
            name="c",
            type=float,
            default=3.0,
            low=0.0,
            low_open=True,
            doc="norm bound c; search 0.5..10 log (Srivastava et al. 2014 use 3-4)",
            search=(0.5, 10.0),
            scale="log",
        ),
    ),
    properties={"hooks": ("after_step",)},
)

early_stopping = TechniqueSpec(
    name="early_stopping",
    family="regularizer",
    summary="Stop training after `patience` validation checks without val_loss improvement.",
    fast=f"{_IMPL}:EarlyStop",
    reference=f"{_IMPL}:early_stopping_reference",
    citation="Prechelt, Early Stopping - But When?, Neural Networks: Tricks of the Trade, 1998",
    params=(
        Param(
            name="patience",
            type=int,
            default=5,
            low=1,
            doc="checks without improvement; search 1..20 log (Prechelt 1998 compares strips of "
            "5 epochs and patience criteria over that span)",
            search=(1, 20),
            scale="log",
        ),
        Param(
            name="min_delta",
            type=float,
            default=0.0,
            low=0.0,
            doc="an improvement must lower val_loss by more than this",
        ),
    ),
    properties={"hooks": ("callbacks",)},
)

clip_norm = TechniqueSpec(
    name="clip_norm",
    family="regularizer",
    summary="Rescale the gradient to global L2 norm max_norm when it is larger (one norm, all params).",
    fast=f"{_IMPL}:ClipNorm",
    reference=f"{_IMPL}:clip_norm_reference",
    citation=(
        "Pascanu, Mikolov & Bengio, On the difficulty of training recurrent neural networks, "
        "ICML 2013 (Algorithm 1)"
    ),
    params=(
        Param(
            name="max_norm",
            type=float,
            default=1.0,
            low=0.0,
            low_open=True,
            doc="threshold on the global gradient norm; search 0.1..10 log (Pascanu et al. 2013 "
            "set it from the average norm, which is of this order on small networks)",
            search=(0.1, 10.0),
            scale="log",
        ),
    ),
    properties={"hooks": ("transform_gradients",), "gradient_law": "deterministic"},
)

clip_value = TechniqueSpec(
    name="clip_value",
    family="regularizer",
    summary="Clamp every gradient entry to [-clip, clip].",
    fast=f"{_IMPL}:ClipValue",
    reference=f"{_IMPL}:clip_value_reference",
    citation=(
        "Mikolov, Statistical Language Models Based on Neural Networks, PhD thesis, Brno 2012 "
        "(section 3.3.2); Pascanu et al., ICML 2013"
    ),
    params=(
        Param(
            name="clip",
            type=float,
            default=1.0,
            low=0.0,
            low_open=True,
            doc="bound per entry; search 0.01..10 log",
            search=(0.01, 10.0),
            scale="log",
        ),
    ),
    properties={"hooks": ("transform_gradients",), "gradient_law": "deterministic"},
)

grad_noise = TechniqueSpec(
    name="grad_noise",
    family="regularizer",
    summary="Add N(0, eta/(1+t)^gamma) noise to every gradient entry at step t (annealed).",
    fast=f"{_IMPL}:GradNoise",
    reference=f"{_IMPL}:grad_noise_reference",
    citation=(
        "Neelakantan et al., Adding Gradient Noise Improves Learning for Very Deep Networks, "
        "arXiv:1511.06807, 2015 (eta in {0.01, 0.3, 1.0}, gamma = 0.55)"
    ),
    params=(
        Param(
            name="eta",
            type=float,
            default=0.01,
            low=0.0,
            doc="noise variance at step 0; search 0.01..1 log (the paper tries 0.01, 0.3, 1.0)",
            search=(0.01, 1.0),
            scale="log",
        ),
        Param(name="gamma", type=float, default=0.55, low=0.0, doc="annealing exponent"),
    ),
    properties={"hooks": ("transform_gradients",), "gradient_law": "additive_noise"},
)
