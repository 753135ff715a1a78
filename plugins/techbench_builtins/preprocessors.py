"""Built-in input preprocessors: specs only (no torch/numpy import here).

Fast side: ``fast(**hp) -> Preprocessor`` with ``fit(x_train) -> self`` and ``transform(x)``
(shape- and dtype-preserving; statistics come from the training split only and are applied
unchanged to validation and test data). Implementations and numpy references live in
:mod:`techbench_builtins.preprocessors_impl`; the protocol is stated in
:mod:`techbench.testing.preprocessor`.

"Feature" means one element of ``x.shape[1:]`` (a pixel of one channel for images); whitening
works on the flattened features. Declared property ``laws``: what the output of the training
split satisfies (checked by the suite).
"""

from __future__ import annotations

from techbench.techniques.spec import Param, TechniqueSpec

_IMPL = "techbench_builtins.preprocessors_impl"
_SEED = "Lecture notes, seed 000 (data preprocessing) and seed 002 (input normalisation)"


def _eps(default: float, doc: str) -> Param:
    return Param(name="eps", type=float, default=default, low=0.0, low_open=True, doc=doc)


none = TechniqueSpec(
    name="none",
    family="preprocessor",
    summary="No preprocessing: the inputs as the dataset gives them.",
    fast=f"{_IMPL}:Identity",
    reference=f"{_IMPL}:identity_reference",
    citation=_SEED,
    properties={"laws": ("identity",)},
)

zero_center = TechniqueSpec(
    name="zero_center",
    family="preprocessor",
    summary="Subtract the training mean of every feature (the 'mean image' of AlexNet).",
    fast=f"{_IMPL}:ZeroCenter",
    reference=f"{_IMPL}:zero_center_reference",
    citation=_SEED,
    properties={"laws": ("zero_mean",)},
)

standardize = TechniqueSpec(
    name="standardize",
    family="preprocessor",
    summary="Zero mean and unit variance per feature: (x - mean) / sqrt(var + eps).",
    fast=f"{_IMPL}:Standardize",
    reference=f"{_IMPL}:standardize_reference",
    citation=_SEED,
    params=(_eps(1e-8, "added to the (biased) training variance of each feature"),),
    properties={"laws": ("zero_mean", "unit_variance")},
)

channel_mean = TechniqueSpec(
    name="channel_mean",
    family="preprocessor",
    summary="Subtract the per-channel training mean (VGG); per feature for flat (N, D) inputs.",
    fast=f"{_IMPL}:ChannelMean",
    reference=f"{_IMPL}:channel_mean_reference",
    citation=(
        "K. Simonyan, A. Zisserman. Very Deep Convolutional Networks for Large-Scale Image "
        "Recognition. ICLR 2015; lecture notes, seed 000"
    ),
    properties={"laws": ("zero_channel_mean",)},
)

_WHITEN_EPS = _eps(1e-5, "added to the covariance eigenvalues: (lambda + eps)^(-1/2)")

pca_whiten = TechniqueSpec(
    name="pca_whiten",
    family="preprocessor",
    summary="PCA whitening: rotate onto the principal axes and scale each to unit variance.",
    fast=f"{_IMPL}:PCAWhiten",
    reference=f"{_IMPL}:pca_whiten_reference",
    citation=(
        "Lecture notes, seed 002 ('make full decorrelation'); A. Kessy, A. Lewin, K. Strimmer. "
        "Optimal Whitening and Decorrelation. The American Statistician 72(4), 2018"
    ),
    params=(_WHITEN_EPS,),
    properties={"laws": ("zero_mean", "identity_covariance")},
)

zca_whiten = TechniqueSpec(
    name="zca_whiten",
    family="preprocessor",
    summary="ZCA whitening: (x - mean) Sigma^(-1/2), the whitening closest to the input.",
    fast=f"{_IMPL}:ZCAWhiten",
    reference=f"{_IMPL}:zca_whiten_reference",
    citation=(
        "A. J. Bell, T. J. Sejnowski. The 'independent components' of natural scenes are edge "
        "filters. Vision Research 37(23), 1997; Kessy et al. 2018; lecture notes, seed 002"
    ),
    params=(_WHITEN_EPS,),
    properties={"laws": ("zero_mean", "identity_covariance", "closest_to_input")},
)
