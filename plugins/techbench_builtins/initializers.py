"""Built-in initializers: specs only (no torch import here, so ``techbench list`` stays fast).

Fast side (``techbench_builtins.initializers_impl``): ``spec.create(**hp)`` returns an
:class:`~techbench_builtins.initializers_impl.Initializer`; ``init(tensor)`` fills the tensor in
place from torch's global RNG (``torch.manual_seed`` makes it reproducible) and returns it. Fans
come from the shape as in ``torch.nn.init``: a weight ``(out, in, *k)`` has
``fan_in = in * prod(k)`` and ``fan_out = out * prod(k)``; a 1-D tensor (a bias) uses its length
for both. LSUV is data-dependent: ``init.fit(model, x)`` (see its spec).

Reference side: ``reference(shape, **hp)`` returns the target written from the math, in the
protocol of ``techbench.testing.initializer``: a scipy.stats distribution of every entry (i.i.d.;
zero variance for constants), ``OrthogonalTarget(gain)``, ``ExactTarget(values)`` or
``UnitVarianceTarget`` for LSUV.
"""

from __future__ import annotations

from techbench.techniques.spec import Param, TechniqueSpec

_IMPL = "techbench_builtins.initializers_impl"
_NOTES = "Lecture notes, seed 000 (weight initialisation) and seed 003 (10-layer experiment)"
_GLOROT = (
    "Glorot & Bengio 2010, Understanding the difficulty of training deep feedforward neural "
    "networks, AISTATS"
)
_HE = (
    "He, Zhang, Ren & Sun 2015, Delving deep into rectifiers: surpassing human-level "
    "performance on ImageNet classification, ICCV"
)
_LECUN = (
    "LeCun, Bottou, Orr & Müller 1998, Efficient BackProp (Neural Networks: Tricks of the Trade)"
)
_SAXE = (
    "Saxe, McClelland & Ganguli 2013, Exact solutions to the nonlinear dynamics of learning in "
    "deep linear neural networks, arXiv:1312.6120"
)
_MISHKIN = "Mishkin & Matas 2015, All you need is a good init, arXiv:1511.06422 (ICLR 2016)"

_GAIN = Param(name="gain", type=float, default=1.0, low=0.0, low_open=True, doc="scale factor")


def _spec(
    name: str,
    cls: str,
    ref: str,
    summary: str,
    citation: str,
    params: tuple[Param, ...] = (),
    applies_to: str = "weight",
    data_dependent: bool = False,
) -> TechniqueSpec:
    return TechniqueSpec(
        name=name,
        family="initializer",
        summary=summary,
        citation=citation,
        fast=f"{_IMPL}:{cls}",
        reference=f"{_IMPL}:{ref}",
        params=params,
        properties={"data_dependent": data_dependent, "applies_to": applies_to},
    )


zeros = _spec(
    "zeros",
    "Zeros",
    "zeros_target",
    "All entries 0: the usual bias init (as a weight init, all units stay identical).",
    "Lecture notes, seed 000",
    applies_to="any",
)
"""w = 0."""

constant = _spec(
    "constant",
    "Constant",
    "constant_target",
    "All entries equal to a constant value.",
    "Lecture notes, seed 000",
    (Param(name="value", type=float, default=0.0, doc="the constant"),),
    applies_to="any",
)
"""w = value."""

normal = _spec(
    "normal",
    "Normal",
    "normal_target",
    "i.i.d. N(mean, std^2) entries, independent of the fans.",
    _NOTES,
    (
        Param(name="mean", type=float, default=0.0, doc="mean of every entry"),
        Param(
            name="std",
            type=float,
            default=0.01,
            low=0.0,
            low_open=True,
            doc="standard deviation; search 1e-3..1 log (0.01: Krizhevsky et al. 2012; Glorot & "
            "Bengio 2010 show the right scale depends on the fans)",
            search=(1e-3, 1.0),
            scale="log",
        ),
    ),
    applies_to="any",
)
"""w ~ N(mean, std^2)."""

small_normal = _spec(
    "small_normal",
    "small_normal",
    "small_normal_target",
    "The notes' 'small random numbers' preset: w ~ N(0, 0.01^2); activations vanish with depth.",
    _NOTES,
    applies_to="any",
)
"""w ~ N(0, 0.01^2) (seed 003's first 10-layer experiment)."""

large_normal = _spec(
    "large_normal",
    "large_normal",
    "large_normal_target",
    "The notes' 'large weights' preset: w ~ N(0, 1); tanh units saturate with depth.",
    _NOTES,
    applies_to="any",
)
"""w ~ N(0, 1) (seed 003's second 10-layer experiment)."""

uniform = _spec(
    "uniform",
    "Uniform",
    "uniform_target",
    "i.i.d. U(a, b) entries, independent of the fans (requires a < b).",
    "Lecture notes, seed 000",
    (
        Param(name="a", type=float, default=-0.05, doc="lower bound"),
        Param(name="b", type=float, default=0.05, doc="upper bound (> a)"),
    ),
    applies_to="any",
)
"""w ~ U(a, b), Var = (b - a)^2 / 12."""

lecun_normal = _spec(
    "lecun_normal",
    "LecunNormal",
    "lecun_normal_target",
    "LeCun normal: w ~ N(0, 1/fan_in) (untruncated).",
    _LECUN,
)
"""w ~ N(0, 1/fan_in): keeps Var(Wx) = Var(x) for a linear unit (seed 004's n Var(w) = 1)."""

lecun_uniform = _spec(
    "lecun_uniform",
    "LecunUniform",
    "lecun_uniform_target",
    "LeCun uniform: w ~ U(-sqrt(3/fan_in), sqrt(3/fan_in)), Var = 1/fan_in.",
    _LECUN,
)
"""w ~ U(-b, b), b = sqrt(3 / fan_in) so Var = b^2 / 3 = 1/fan_in."""

xavier_normal = _spec(
    "xavier_normal",
    "XavierNormal",
    "xavier_normal_target",
    "Glorot/Xavier normal: w ~ N(0, gain^2 * 2/(fan_in + fan_out)).",
    _GLOROT,
    (_GAIN,),
)
"""w ~ N(0, gain^2 * 2 / (fan_in + fan_out)) (Glorot & Bengio 2010, eq. 12's compromise)."""

xavier_uniform = _spec(
    "xavier_uniform",
    "XavierUniform",
    "xavier_uniform_target",
    "Glorot/Xavier uniform: w ~ U(-b, b), b = gain * sqrt(6/(fan_in + fan_out)).",
    _GLOROT,
    (_GAIN,),
)
"""w ~ U(-b, b), b = gain * sqrt(6 / (fan_in + fan_out)): Var = gain^2 * 2/(fan_in + fan_out)."""

_HE_PARAMS = (
    Param(
        name="mode",
        type=str,
        default="fan_in",
        choices=("fan_in", "fan_out"),
        doc="preserve the forward (fan_in) or backward (fan_out) variance",
    ),
    Param(
        name="nonlinearity",
        type=str,
        default="relu",
        choices=("relu", "leaky_relu"),
        doc="gain sqrt(2) for relu, sqrt(2/(1+a^2)) for leaky_relu",
    ),
    Param(
        name="negative_slope",
        type=float,
        default=0.01,
        low=0.0,
        high=1.0,
        doc="leaky_relu's slope a (ignored for relu)",
    ),
)

he_normal = _spec(
    "he_normal",
    "HeNormal",
    "he_normal_target",
    "He/Kaiming normal: w ~ N(0, gain^2/fan), gain^2 = 2 (relu) or 2/(1+a^2) (leaky_relu).",
    _HE,
    _HE_PARAMS,
)
"""w ~ N(0, gain^2 / fan), fan = fan_in or fan_out, gain^2 = 2/(1 + a^2) (a = 0 for ReLU).

He et al. 2015, eq. 10 (forward) / eq. 14 (backward); seed 004 derives Var(w) = 2/n.
"""

he_uniform = _spec(
    "he_uniform",
    "HeUniform",
    "he_uniform_target",
    "He/Kaiming uniform: w ~ U(-b, b), b = gain * sqrt(3/fan), so Var = gain^2/fan.",
    _HE,
    _HE_PARAMS,
)
"""w ~ U(-b, b), b = gain * sqrt(3 / fan); Var = gain^2 / fan as for :data:`he_normal`."""

orthogonal = _spec(
    "orthogonal",
    "Orthogonal",
    "orthogonal_target",
    "Random (Haar) orthogonal weight times gain: W W^T = gain^2 I (wide) or W^T W (tall).",
    _SAXE,
    (_GAIN,),
)
"""The weight flattened to (out, in * prod(k)) is gain * Q, Q Haar-orthogonal (QR of a Gaussian
matrix with the signs of R's diagonal fixed), Saxe et al. 2013."""

identity = _spec(
    "identity",
    "Identity",
    "identity_target",
    "Identity weight: eye for (out, in) weights, Dirac delta at the kernel centre for convs.",
    "Lecture notes, seed 000; Le, Jaitly & Hinton 2015 (identity init, arXiv:1504.00941)",
)
"""W[i, j] = [i == j] for 2-D; W[o, i, *k] = [o == i] * [k == centre] for 3-5-D (convs)."""

lsuv = _spec(
    "lsuv",
    "LSUV",
    "lsuv_target",
    "Layer-sequential unit-variance: orthogonal start, then rescale each layer to Var(out) = 1.",
    _MISHKIN,
    (
        Param(
            name="tol",
            type=float,
            default=0.1,
            low=0.0,
            high=1.0,
            low_open=True,
            high_open=True,
            doc="stop when |Var(layer output) - 1| < tol",
        ),
        Param(name="max_iter", type=int, default=10, low=1, high=1000, doc="rescalings per layer"),
    ),
    data_dependent=True,
)
"""LSUV (Mishkin & Matas 2015, Algorithm 1). ``init(tensor)`` alone gives the orthogonal start.

``init.fit(model, x, layers=None, reinit=True)``: ``layers`` defaults to every Linear/Conv module
of ``model`` in ``model.modules()`` order (must be forward order); if ``reinit`` each weight is
orthogonal-initialised; then for each layer in turn, ``model(x)`` is run (eval mode, no grad) and
``W <- W / sqrt(Var(B))`` with ``B`` the layer's output, until ``|Var(B) - 1| < tol`` or
``max_iter`` rescalings. Biases are left alone. Returns one record per layer.
"""

small_positive = _spec(
    "small_positive",
    "small_positive",
    "small_positive_target",
    "Bias preset: constant 0.01, as the notes advise for ReLU biases (units start active).",
    "Lecture notes, seed 000",
    applies_to="bias",
)
"""b = 0.01."""

__all__ = [
    "constant",
    "he_normal",
    "he_uniform",
    "identity",
    "large_normal",
    "lecun_normal",
    "lecun_uniform",
    "lsuv",
    "normal",
    "orthogonal",
    "small_normal",
    "small_positive",
    "uniform",
    "xavier_normal",
    "xavier_uniform",
    "zeros",
]
