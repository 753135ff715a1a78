"""Built-in preprocessors against independent sources (scikit-learn, scipy, numpy), and the
conformance checks against deliberately broken plugins."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import numpy as np
import pytest
import scipy.linalg
import torch
from sklearn.decomposition import PCA
from sklearn.preprocessing import StandardScaler

from techbench.techniques.registry import get_spec
from techbench.techniques.spec import TechniqueSpec
from techbench.testing import failed_checks
from techbench_builtins import preprocessors_impl as impl

NAMES = ["none", "zero_center", "standardize", "channel_mean", "pca_whiten", "zca_whiten"]


def _split(n=400, d=8, seed=0):
    rng = np.random.default_rng(seed)
    mix = rng.normal(size=(d, d)) + 2 * np.eye(d)
    x = rng.normal(size=(n, d)) @ mix + rng.normal(size=d) * 4
    return x[: n * 3 // 4], x[n * 3 // 4 :]


def _fit_transform(name, train, x, **hp):
    pre = get_spec(f"preprocessor/{name}").create(**hp).fit(torch.as_tensor(train))
    return pre.transform(torch.as_tensor(x)).numpy()


def test_zero_center_vs_numpy():
    train, val = _split()
    np.testing.assert_allclose(_fit_transform("zero_center", train, val), val - train.mean(0))


def test_standardize_vs_sklearn_standard_scaler():
    train, val = _split()
    train[:, 3] = 2.5  # a constant feature: sklearn keeps scale 1 there, so do we
    scaler = StandardScaler().fit(train)
    got = _fit_transform("standardize", train, val, eps=1e-300)
    np.testing.assert_allclose(got, scaler.transform(val), rtol=1e-12, atol=1e-12)
    default = _fit_transform("standardize", train, train)
    np.testing.assert_allclose(default.mean(0), 0, atol=1e-12)
    np.testing.assert_allclose(np.delete(default.std(0), 3), 1, atol=1e-8)


def test_channel_mean_images_and_flat():
    rng = np.random.default_rng(1)
    train = rng.random((50, 3, 5, 5)) + np.array([0.1, 0.5, 2.0])[None, :, None, None]
    test = rng.random((7, 3, 5, 5))
    got = _fit_transform("channel_mean", train, test)
    means = [train[:, c].mean() for c in range(3)]  # one number per channel, VGG style
    expected = test - np.array(means)[None, :, None, None]
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-12)
    flat_train, flat_val = _split()
    np.testing.assert_allclose(
        _fit_transform("channel_mean", flat_train, flat_val), flat_val - flat_train.mean(0)
    )


@pytest.mark.parametrize("shape", [(300, 8), (300, 2, 2, 2)])
def test_pca_whiten_vs_sklearn_up_to_sign(shape):
    train, val = _split(n=400)
    train = train.reshape(-1, *shape[1:])
    val = val.reshape(-1, *shape[1:])
    got = _fit_transform("pca_whiten", train, val, eps=1e-14).reshape(len(val), -1)
    pca = PCA(whiten=True).fit(train.reshape(len(train), -1))
    expected = pca.transform(val.reshape(len(val), -1))
    signs = np.sign((got * expected).sum(0))
    assert set(signs) <= {-1.0, 1.0}
    np.testing.assert_allclose(got * signs, expected, rtol=1e-8, atol=1e-8)


def test_zca_whiten_vs_scipy_inverse_square_root():
    train, val = _split()
    eps = 1e-3
    cov = np.cov(train, rowvar=False)
    w = np.real(scipy.linalg.fractional_matrix_power(cov + eps * np.eye(len(cov)), -0.5))
    got = _fit_transform("zca_whiten", train, val, eps=eps)
    np.testing.assert_allclose(got, (val - train.mean(0)) @ w, rtol=1e-8, atol=1e-8)


def test_zca_is_pca_rotated_back():
    """sklearn's PCA whitening followed by the inverse rotation is ZCA (Kessy et al. 2018)."""
    train, val = _split()
    pca = PCA(whiten=True).fit(train)
    expected = pca.transform(val) @ pca.components_
    np.testing.assert_allclose(
        _fit_transform("zca_whiten", train, val, eps=1e-14), expected, rtol=1e-8, atol=1e-8
    )


@pytest.mark.parametrize("name", ["pca_whiten", "zca_whiten"])
def test_whitening_gives_identity_covariance_on_train(name):
    train, _ = _split()
    z = _fit_transform(name, train, train, eps=1e-12)
    np.testing.assert_allclose(np.cov(z, rowvar=False), np.eye(z.shape[1]), atol=1e-8)


def test_whitening_float32_input_keeps_dtype_and_is_accurate():
    train, val = _split()
    pre = get_spec("zca_whiten").create().fit(torch.as_tensor(train, dtype=torch.float32))
    z = pre.transform(torch.as_tensor(val, dtype=torch.float32))
    assert z.dtype == torch.float32 and z.shape == val.shape
    ref = impl.zca_whiten_reference(train.astype(np.float32), val.astype(np.float32), eps=1e-5)
    np.testing.assert_allclose(z.numpy(), ref, rtol=1e-4, atol=1e-4)


def test_transform_before_fit_and_feature_mismatch_are_clear_errors():
    pre = get_spec("standardize").create()
    with pytest.raises(RuntimeError, match="call fit"):
        pre.transform(torch.zeros(3, 4))
    pre.fit(torch.randn(10, 4))
    with pytest.raises(ValueError, match=r"fitted on features \(4,\)"):
        pre.transform(torch.zeros(3, 5))


def test_spec_module_does_not_import_torch_or_numpy():
    code = (
        "import sys, techbench_builtins.preprocessors as p; "
        "assert 'torch' not in sys.modules and 'numpy' not in sys.modules; "
        f"assert all(getattr(p, k).name == k for k in {NAMES!r})"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# ---------------------------------------------------------------------------------------------
# Broken plugins: the checks must fail, saying what differed.


def _broken(fast, base, **props):
    spec = get_spec(f"preprocessor/{base}")
    return TechniqueSpec(
        name=f"broken_{base}",
        family="preprocessor",
        summary="deliberately broken",
        fast=fast,
        reference=spec.reference,
        params=spec.params,
        properties={**spec.properties, **props},
    )


class LeakyStandardize(impl.Standardize):
    """Standardises every batch with its own statistics (fits on val/test data)."""

    def _transform(self, x):
        mean, var = x.mean(0), x.var(0, unbiased=False)
        return (x - mean) / torch.sqrt(var + self.eps)


class BiasedCovariancePCA(impl.PCAWhiten):
    def _fit(self, x):
        super()._fit(x)
        n = x.shape[0]
        self.matrix = self.matrix * ((n - 1) / n) ** 0.5


class RandomSignPCA(impl.PCAWhiten):
    def _matrix(self, lam, u):
        signs = torch.randint(0, 2, (u.shape[1],), dtype=u.dtype) * 2 - 1
        return super()._matrix(lam, u * signs)


class FlatOutput(impl.ZeroCenter):
    def _transform(self, x):
        return super()._transform(x).reshape(len(x), -1)


class OffBy1e3(impl.ZeroCenter):
    def _transform(self, x):
        return super()._transform(x) + 1e-3


def test_correct_plugins_built_from_spec_objects_pass():
    assert failed_checks(_broken(impl.ZCAWhiten, "zca_whiten")) == {}
    assert failed_checks(_broken(impl.Standardize, "standardize")) == {}


def test_leaking_val_statistics_fails():
    failures = failed_checks(_broken(LeakyStandardize, "standardize"))
    assert {"matches_reference_float64", "no_leakage"} <= set(failures)
    assert "val split" in failures["matches_reference_float64"]
    assert "alone vs within" in failures["no_leakage"]


def test_biased_covariance_fails_reference_and_law():
    failures = failed_checks(_broken(BiasedCovariancePCA, "pca_whiten"))
    assert {"matches_reference_float64", "laws"} <= set(failures)
    assert "identity_covariance" in failures["laws"]


def test_pca_declared_closest_to_input_fails():
    failures = failed_checks(
        _broken(impl.PCAWhiten, "pca_whiten", laws=("zero_mean", "closest_to_input"))
    )
    assert set(failures) == {"laws"}
    assert "W^T" in failures["laws"] or "rotation" in failures["laws"]


def test_zca_without_symmetric_matrix_fails_closest_law():
    class RotatedZCA(impl.ZCAWhiten):
        def _matrix(self, lam, u):
            return u / torch.sqrt(lam + self.eps)  # PCA under a ZCA name

    failures = failed_checks(_broken(RotatedZCA, "zca_whiten"))
    assert "laws" in failures and "closest_to_input" in failures["laws"]


def test_nondeterministic_sign_fails():
    torch.manual_seed(0)
    failures = failed_checks(_broken(RandomSignPCA, "pca_whiten"))
    assert "deterministic" in failures
    assert "different transform" in failures["deterministic"]


def test_shape_not_preserved_fails():
    failures = failed_checks(_broken(FlatOutput, "zero_center"))
    assert "expected the input's shape (150, 3, 4, 4)" in failures["matches_reference_float64"]


def test_output_off_by_1e3_fails_both_dtypes():
    failures = failed_checks(_broken(OffBy1e3, "zero_center"))
    assert {"matches_reference_float32", "matches_reference_float64", "laws"} <= set(failures)
    assert "|diff| = 0.001" in failures["matches_reference_float64"]


def test_undeclared_or_unknown_laws_fail():
    failures = failed_checks(_broken(impl.ZeroCenter, "zero_center", laws=("zero_mean", "magic")))
    assert "unknown laws ['magic']" in failures["laws"]


LARGE_TRAIN_ROWS = 2 * 8192 + 123
"""Over two of the fitting blocks of 8192 rows that preprocessors_impl accumulates in float64."""


@pytest.mark.parametrize("name", ["standardize", "channel_mean", "zca_whiten"])
def test_fit_in_blocks_on_a_large_float32_training_set(name):
    """More rows than one fitting block: statistics still equal numpy's float64 ones."""
    rng = np.random.default_rng(5)
    train = (rng.normal(size=(LARGE_TRAIN_ROWS, 3, 2, 1)) * 3 + 1e3).astype(np.float32)
    val = rng.normal(size=(11, 3, 2, 1)).astype(np.float32) + 1e3
    got = _fit_transform(name, train, val.astype(np.float64))
    ref = get_spec(f"preprocessor/{name}").load_reference()
    hp = get_spec(f"preprocessor/{name}").hyperparams()
    np.testing.assert_allclose(got, ref(train, val, **hp), rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize(
    ("base", "eps"), [("standardize", 1e-3), ("pca_whiten", 1e-2), ("zca_whiten", 1e-9)]
)
def test_builtins_conform_at_other_eps(base, eps):
    spec = get_spec(f"preprocessor/{base}")
    params = tuple(dataclasses.replace(p, default=eps) for p in spec.params)
    variant = dataclasses.replace(spec, name=f"{base}_variant", params=params)
    assert failed_checks(variant) == {}
