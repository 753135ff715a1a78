"""Conformance checks for input preprocessors (family ``preprocessor``).

Reference protocol
==================

Fast side (``spec.fast``): ``fast(**hp) -> Preprocessor`` with ``fit(x_train) -> self`` and
``transform(x) -> Tensor``. ``x`` is (N, *features): flat (N, D) or images (N, C, H, W);
``transform`` returns a tensor of the input's shape and dtype, computed from statistics of the
training split only (it must not look at the statistics of the data it transforms) and row by
row (sample i of the output depends on sample i of the input only).

Reference side (``spec.reference``): a function (or ``"module:attr"`` string naming one)

``reference(x_train, x, **hp) -> numpy.ndarray``
    the same law written in numpy float64: fit on ``x_train`` and return the transform of ``x``
    (both float64 arrays of shape (N, *features)); ``hp`` holds every hyper-parameter. For PCA
    whitening, whose axes are defined up to sign, the reference and the fast side must use the
    same sign convention (the built-ins make each eigenvector's largest component positive).

Declared property ``laws``, a tuple of what the transformed *training* split satisfies:

=====================  ====================================================================
identity               ``transform(x) == x``
zero_mean              every feature has mean 0 over the samples
unit_variance          every non-constant feature has (biased) variance 1, up to eps
zero_channel_mean      every channel (dim 1) has mean 0 over the samples and spatial dims
identity_covariance    the flattened features have covariance (ddof=1) I, up to eps
closest_to_input       a whitening that is the closest to its centred input (ZCA): its
                       matrix ``W`` (read off the affine map) is symmetric, and no rotation
                       ``z Q`` of the output is closer to ``x - mu`` in Frobenius norm
=====================  ====================================================================

Data: a correlated Gaussian training split (300, 10) (covariance eigenvalues about 0.25 to 9,
non-zero means) with a validation split (60, 10) drawn from a shifted distribution (so using
its own statistics shows), and images (150, 3, 4, 4) with per-channel offsets. Tolerances:
float64 ``rtol=1e-7, atol=1e-9``; float32 input against the float64 reference
``rtol=1e-4, atol=1e-4``; laws ``1e-4 + 4 eps / lambda_min``, ``lambda_min`` the smallest
variance (covariance eigenvalue) of the training split.

Checks: ``matches_reference_float64``/``matches_reference_float32`` (fit on train, transform of
train and val, both layouts; ``fit`` returns the preprocessor; shape and dtype kept);
``no_leakage`` (transforming val neither refits nor depends on the other val rows; ``fit`` leaves
its input unchanged); ``deterministic`` (two fits and a refit: bit-identical); ``laws``. The
closest-to-input law reads ``W`` off the map, so it assumes an affine transform. Checks run
single-threaded (torch and BLAS).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..techniques.spec import TechniqueSpec
from .core import Check, CheckFailure
from .tolerances import assert_close

LAWS = (
    "identity",
    "zero_mean",
    "unit_variance",
    "zero_channel_mean",
    "identity_covariance",
    "closest_to_input",
)
F32 = {"rtol": 1e-4, "atol": 1e-4}


def _data(seed: int = 0) -> dict[str, Any]:
    """{'flat': (train, val), 'image': (train, val)} as float64 tensors."""
    import torch

    g = torch.Generator().manual_seed(seed)
    d = 10
    q1, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))
    q2, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))
    mix = q1 @ torch.diag(torch.linspace(0.5, 3.0, d, dtype=torch.float64)) @ q2
    mean = torch.randn(d, generator=g, dtype=torch.float64) * 3
    train = torch.randn(300, d, generator=g, dtype=torch.float64) @ mix + mean
    val = torch.randn(60, d, generator=g, dtype=torch.float64) @ mix * 1.5 + mean + 0.5
    offsets = torch.tensor([0.5, -1.0, 2.0], dtype=torch.float64).reshape(1, 3, 1, 1)
    scales = torch.tensor([1.0, 0.5, 2.0], dtype=torch.float64).reshape(1, 3, 1, 1)
    img_train = torch.rand(150, 3, 4, 4, generator=g, dtype=torch.float64) * scales + offsets
    img_val = torch.rand(40, 3, 4, 4, generator=g, dtype=torch.float64) * scales + offsets + 0.3
    return {"flat": (train, val), "image": (img_train, img_val)}


def _fit(spec: TechniqueSpec, x_train: Any, **overrides: Any) -> Any:
    pre = spec.create(**overrides)
    for method in ("fit", "transform"):
        if not callable(getattr(pre, method, None)):
            raise CheckFailure(
                f"{spec.qualified_name}: fast factory returned {type(pre).__name__} without "
                f"{method}()"
            )
    out = pre.fit(x_train)
    if out is not pre:
        raise CheckFailure(
            f"{spec.qualified_name}: fit(x_train) must return the preprocessor itself"
        )
    return pre


def _transform(spec: TechniqueSpec, pre: Any, x: Any, what: str) -> Any:
    z = pre.transform(x)
    if tuple(z.shape) != tuple(x.shape) or z.dtype != x.dtype:
        raise CheckFailure(
            f"{spec.qualified_name}: transform of {what} returned {tuple(z.shape)} {z.dtype}; "
            f"expected the input's shape {tuple(x.shape)} and dtype {x.dtype}"
        )
    return z


def _reference(spec: TechniqueSpec, x_train: Any, x: Any, hp: dict) -> Any:
    import numpy as np

    ref = spec.load_reference()
    if not callable(ref):
        raise CheckFailure(
            f"{spec.qualified_name}: reference {spec.reference!r} is not callable as "
            "reference(x_train, x, **hp) (see techbench.testing.preprocessor)"
        )
    out = np.asarray(ref(x_train.numpy(), x.numpy(), **hp), dtype=np.float64)
    if out.shape != tuple(x.shape):
        raise CheckFailure(
            f"{spec.qualified_name}: reference returned shape {out.shape} for input {tuple(x.shape)}"
        )
    return out


def check_matches_reference(dtype_name: str) -> Callable[[TechniqueSpec], None]:
    def check(spec: TechniqueSpec) -> None:
        import torch

        dtype = getattr(torch, dtype_name)
        tol = F32 if dtype_name == "float32" else {}
        hp = spec.hyperparams()
        for layout, (train, val) in _data().items():
            pre = _fit(spec, train.to(dtype))
            for split, x in (("train", train), ("val", val)):
                z = _transform(spec, pre, x.to(dtype), f"{layout} {split}")
                assert_close(
                    z,
                    _reference(spec, train, x, hp),
                    what=f"{spec.qualified_name} transform of the {layout} {split} split "
                    f"{tuple(x.shape)} ({dtype_name}, fitted on train)",
                    inputs=x,
                    dtype=dtype,
                    **tol,
                )

    return check


def check_no_leakage(spec: TechniqueSpec) -> None:
    """Transforming other data neither refits nor uses its statistics; rows are independent."""
    import torch

    for layout, (train, val) in _data().items():
        pre = _fit(spec, train)
        before = pre.transform(train).clone()
        z_val = pre.transform(val)
        assert_close(
            pre.transform(train),
            before,
            what=f"{spec.qualified_name}: transform of the {layout} train split changed after "
            "transforming the val split (transform refits)",
        )
        assert_close(
            pre.transform(val[:5]),
            z_val[:5],
            what=f"{spec.qualified_name}: the first 5 {layout} val samples transformed alone vs "
            f"within the {len(val)}-sample split (transform uses the batch's statistics)",
            inputs=val[:5],
        )
        shifted = torch.cat([val[:5], val[5:] * 3 + 7])
        assert_close(
            pre.transform(shifted)[:5],
            z_val[:5],
            what=f"{spec.qualified_name}: {layout} val samples changed when the other samples of "
            "the batch changed",
            inputs=val[:5],
        )
        copy = train.clone()
        _fit(spec, copy)
        if not torch.equal(copy, train):
            raise CheckFailure(f"{spec.qualified_name}: fit modified its input ({layout})")


def check_deterministic(spec: TechniqueSpec) -> None:
    """Two fresh fits, and a refit, on the same data give bit-identical outputs."""
    import torch

    for layout, (train, val) in _data().items():
        first = _fit(spec, train)
        a = first.transform(val)
        b = _fit(spec, train).transform(val)
        c = first.fit(train).transform(val)
        for other, how in ((b, "a second fit"), (c, "a refit of the same instance")):
            if not torch.equal(a, other):
                gap = float((a - other).abs().max())
                raise CheckFailure(
                    f"{spec.qualified_name}: {how} on the same {layout} data gives a different "
                    f"transform (max |diff| {gap:.3g})"
                )


def _lambda_min(train: Any) -> float:
    import torch

    flat = train.reshape(len(train), -1)
    cov = torch.cov(flat.T)
    return float(torch.linalg.eigvalsh(cov).min())


def check_laws(spec: TechniqueSpec) -> None:
    """The declared ``laws`` hold on the transformed training split."""
    import torch

    laws = spec.properties.get("laws")
    if not isinstance(laws, tuple | list) or not laws:
        raise CheckFailure(
            f"{spec.qualified_name}: property 'laws' must be a non-empty tuple of {', '.join(LAWS)}"
        )
    unknown = [law for law in laws if law not in LAWS]
    if unknown:
        raise CheckFailure(
            f"{spec.qualified_name}: unknown laws {unknown}; known: {', '.join(LAWS)}"
        )
    eps = float(spec.hyperparams().get("eps", 0.0))
    for layout, (train, _) in _data().items():
        pre = _fit(spec, train)
        z = pre.transform(train)
        flat, xc = z.reshape(len(z), -1), (train - train.mean(dim=0)).reshape(len(z), -1)
        tol = 1e-4 + 4 * eps / min(_lambda_min(train), float(train.var(dim=0).min()))
        what = f"{spec.qualified_name} law %r on the {layout} train split {tuple(train.shape)}"
        for law in laws:
            if law == "identity":
                assert_close(z, train, what=what % law, inputs=train)
            elif law == "zero_mean":
                mean = flat.mean(dim=0)
                assert_close(mean, torch.zeros_like(mean), what=what % law + ": feature means")
            elif law == "unit_variance":
                var = flat.var(dim=0, unbiased=False)
                assert_close(
                    var,
                    torch.ones_like(var),
                    what=what % law + ": feature variances",
                    rtol=0,
                    atol=tol,
                )
            elif law == "zero_channel_mean":
                dims = [0, *range(2, z.dim())]
                mean = z.mean(dim=dims)
                assert_close(mean, torch.zeros_like(mean), what=what % law + ": channel means")
            elif law == "identity_covariance":
                cov = torch.cov(flat.T)
                assert_close(
                    cov,
                    torch.eye(len(cov), dtype=cov.dtype),
                    what=what % law + ": covariance (ddof=1)",
                    rtol=0,
                    atol=tol,
                )
            elif law == "closest_to_input":
                _check_closest(spec, pre, train, flat, xc, what % law)


def _check_closest(
    spec: TechniqueSpec, pre: Any, train: Any, flat: Any, xc: Any, what: str
) -> None:
    import torch

    d = flat.shape[1]
    base = train[:1].expand(d + 1, *train.shape[1:]).clone()
    base.reshape(d + 1, -1)[1:] += torch.eye(d, dtype=train.dtype)
    out = pre.transform(base).reshape(d + 1, -1)
    w = out[1:] - out[:1]
    assert_close(
        w, w.T, what=f"{what}: the whitening matrix W (read off the map) vs W^T", atol=1e-8
    )
    own = float(torch.linalg.matrix_norm(flat - xc))
    g = torch.Generator().manual_seed(7)
    for trial in range(5):
        q, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=flat.dtype))
        rotated = float(torch.linalg.matrix_norm(flat @ q - xc))
        if rotated < own * (1 - 1e-9):
            raise CheckFailure(
                f"{what}: a rotation of the output (trial {trial}) is closer to the centred input "
                f"(||zQ - xc|| = {rotated:.6g} < ||z - xc|| = {own:.6g}); not the ZCA whitening"
            )


def checks(spec: TechniqueSpec) -> list[Check]:
    """The conformance checks every preprocessor must pass."""
    return [
        Check(name, func)
        for name, func in (
            ("matches_reference_float64", check_matches_reference("float64")),
            ("matches_reference_float32", check_matches_reference("float32")),
            ("no_leakage", check_no_leakage),
            ("deterministic", check_deterministic),
            ("laws", check_laws),
        )
    ]
