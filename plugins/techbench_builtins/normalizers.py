"""Built-in normalizers: specs only (no torch import here, so ``techbench list`` stays fast).

Fast side: ``fast(num_features, **hp) -> torch.nn.Module`` for (N, C) and (N, C, *spatial)
inputs, channels on dim 1. Per-sample normalizers (layernorm, rmsnorm, scalenorm) normalise over
every non-batch dimension (C and the spatial ones) with a per-channel affine. The implementations
and the references live in :mod:`techbench_builtins.normalizers_impl`; the reference protocol is
stated in :mod:`techbench.testing.normalizer`.

Declared properties: ``batch_dependent`` (output depends on other samples; eval mode differs) and
``invariant``, the statistic the output has before the affine map (checked by the suite).
"""

from __future__ import annotations

from techbench.techniques.spec import Param, TechniqueSpec

_IMPL = "techbench_builtins.normalizers_impl"


def _eps(default: float) -> Param:
    return Param(
        name="eps",
        type=float,
        default=default,
        low=0.0,
        low_open=True,
        high=1.0,
        doc="added to the variance (mean square, norm) before the square root",
    )


_AFFINE = Param(name="affine", type=bool, default=True, doc="learnable per-channel scale and shift")

none = TechniqueSpec(
    name="none",
    family="normalizer",
    summary="No normalisation: the identity, the baseline every normalizer is compared with.",
    fast=f"{_IMPL}:Identity",
    reference=f"{_IMPL}:identity_reference",
    citation="Lecture notes, seed 003 (networks without batch normalisation)",
    properties={"batch_dependent": False, "invariant": "identity"},
)

batchnorm = TechniqueSpec(
    name="batchnorm",
    family="normalizer",
    summary="Batch normalisation: standardise each channel over the batch, then scale and shift.",
    fast=f"{_IMPL}:BatchNorm",
    reference=f"{_IMPL}:batchnorm_reference",
    citation=(
        "S. Ioffe, C. Szegedy. Batch Normalization: Accelerating Deep Network Training by "
        "Reducing Internal Covariate Shift. ICML 2015 (arXiv:1502.03167); lecture notes, seed 003"
    ),
    params=(
        Param(
            name="momentum",
            type=float,
            default=0.1,
            low=0.0,
            high=1.0,
            doc="running stat <- (1 - momentum) * running stat + momentum * batch stat; search "
            "0.01..0.5 log around Ioffe & Szegedy's (torch's) 0.1",
            search=(0.01, 0.5),
            scale="log",
        ),
        _eps(1e-5),
        _AFFINE,
    ),
    properties={"batch_dependent": True, "invariant": "channel"},
    tags=("batch",),
)

layernorm = TechniqueSpec(
    name="layernorm",
    family="normalizer",
    summary="Layer normalisation: standardise each sample over all its features (C and spatial).",
    fast=f"{_IMPL}:LayerNorm",
    reference=f"{_IMPL}:layernorm_reference",
    citation="J. L. Ba, J. R. Kiros, G. E. Hinton. Layer Normalization. arXiv:1607.06450, 2016",
    params=(_eps(1e-5), _AFFINE),
    properties={"batch_dependent": False, "invariant": "sample"},
)

groupnorm = TechniqueSpec(
    name="groupnorm",
    family="normalizer",
    summary="Group normalisation: standardise each sample over groups of channels.",
    fast=f"{_IMPL}:GroupNorm",
    reference=f"{_IMPL}:groupnorm_reference",
    citation="Y. Wu, K. He. Group Normalization. ECCV 2018 (arXiv:1803.08494)",
    params=(
        Param(
            name="num_groups",
            type=int,
            default=4,
            low=1,
            doc="number of channel groups; must divide num_features",
        ),
        _eps(1e-5),
        _AFFINE,
    ),
    properties={"batch_dependent": False, "invariant": "group"},
)

rmsnorm = TechniqueSpec(
    name="rmsnorm",
    family="normalizer",
    summary="RMS normalisation: divide each sample by its root mean square, then scale (no shift).",
    fast=f"{_IMPL}:RMSNorm",
    reference=f"{_IMPL}:rmsnorm_reference",
    citation="B. Zhang, R. Sennrich. Root Mean Square Layer Normalization. NeurIPS 2019",
    params=(
        _eps(1e-6),
        Param(name="affine", type=bool, default=True, doc="learnable per-channel gain"),
    ),
    properties={"batch_dependent": False, "invariant": "sample_rms"},
)

scalenorm = TechniqueSpec(
    name="scalenorm",
    family="normalizer",
    summary="ScaleNorm: project each sample onto the sphere and scale by one learnable scalar g.",
    fast=f"{_IMPL}:ScaleNorm",
    reference=f"{_IMPL}:scalenorm_reference",
    citation=(
        "T. Q. Nguyen, J. Salazar. Transformers without Tears: Improving the Normalization of "
        "Self-Attention. IWSLT 2019 (arXiv:1910.05895)"
    ),
    params=(
        Param(
            name="eps",
            type=float,
            default=1e-5,
            low=0.0,
            low_open=True,
            high=1.0,
            doc="lower bound of the norm: y = g * x / max(||x||, eps)",
        ),
        Param(
            name="init_scale",
            type=float,
            default=0.0,
            low=0.0,
            doc="initial g; 0 means sqrt(num_features) as in the paper",
        ),
    ),
    properties={"batch_dependent": False, "invariant": "sample_norm"},
)
