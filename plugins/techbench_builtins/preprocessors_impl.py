"""Preprocessors: torch implementations and numpy float64 references of the same laws.

Every preprocessor is an affine map fitted on the training split. For ``x`` of shape
(N, *F) a *feature* is one element of ``F``; statistics are taken over the N samples:

- zero_center: ``z = x - mu`` with ``mu`` the per-feature training mean;
- standardize: ``z = (x - mu) / sqrt(var + eps)``, ``var`` the biased per-feature variance; a
  feature constant on the training split (``var == 0``) is only centred (scale 1, as
  scikit-learn's StandardScaler), so that a pixel that is always 0 in training cannot blow up
  the test data by ``1 / sqrt(eps)``;
- channel_mean: ``z = x - m_c`` with ``m_c`` the mean of channel ``c`` (dim 1) over the samples and
  the spatial dims (VGG); for flat (N, D) input a channel is a feature, as zero_center;
- pca_whiten: flatten to (N, D), ``Sigma = Xc^T Xc / (N - 1)`` (unbiased, as scikit-learn's PCA)
  ``= U diag(lambda) U^T`` with eigenvalues in decreasing order and each eigenvector's largest
  component made positive (a deterministic sign); ``z = (x - mu) U diag(lambda + eps)^(-1/2)``;
- zca_whiten: ``z = (x - mu) W`` with the symmetric ``W = U diag(lambda + eps)^(-1/2) U^T``
  ``= (Sigma + eps I)^(-1/2)``.

Statistics are computed in float64 whatever the input dtype; ``transform`` returns the input's
dtype and shape. Whitening keeps all D components, so the shape is preserved.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "ChannelMean",
    "Identity",
    "PCAWhiten",
    "Standardize",
    "ZCAWhiten",
    "ZeroCenter",
    "channel_mean_reference",
    "identity_reference",
    "pca_whiten_reference",
    "standardize_reference",
    "zca_whiten_reference",
    "zero_center_reference",
]


_CHUNK = 8192


def _chunks(x: Tensor) -> Iterator[Tensor]:
    """Rows of ``x`` in float64, a block at a time (no float64 copy of a large training set)."""
    for start in range(0, x.shape[0], _CHUNK):
        yield x[start : start + _CHUNK].to(torch.float64)


def _mean(x: Tensor) -> Tensor:
    """Per-feature mean over dim 0, in float64."""
    return sum((c.sum(dim=0) for c in _chunks(x)), torch.zeros(())) / x.shape[0]


def _centred_sq(x: Tensor, mean: Tensor) -> Tensor:
    """``sum_i (x_i - mean)^2`` per feature, in float64."""
    return sum((((c - mean) ** 2).sum(dim=0) for c in _chunks(x)), torch.zeros(()))


class _Fitted:
    """Shared plumbing: remember the fitted feature shape, refuse to transform before fit."""

    _feature_shape: tuple[int, ...] | None = None

    def fit(self, x: Tensor) -> _Fitted:
        if x.dim() < 2 or x.shape[0] < 2:
            raise ValueError(
                f"{type(self).__name__}.fit expects (N, *features) with N >= 2, got {tuple(x.shape)}"
            )
        self._feature_shape = tuple(x.shape[1:])
        self._fit(x.detach())
        return self

    def transform(self, x: Tensor) -> Tensor:
        if not x.is_floating_point():
            x = x.to(torch.get_default_dtype())
        if self._feature_shape is None:
            raise RuntimeError(f"{type(self).__name__}: call fit(x_train) before transform")
        if tuple(x.shape[1:]) != self._feature_shape:
            raise ValueError(
                f"{type(self).__name__} was fitted on features {self._feature_shape}, "
                f"got input {tuple(x.shape)}"
            )
        return self._transform(x)

    def _fit(self, x: Tensor) -> None:
        raise NotImplementedError

    def _transform(self, x: Tensor) -> Tensor:
        raise NotImplementedError


class Identity(_Fitted):
    """No preprocessing: ``z = x``."""

    def _fit(self, x: Tensor) -> None:
        pass

    def _transform(self, x: Tensor) -> Tensor:
        return x


class ZeroCenter(_Fitted):
    """``z = x - mu``, ``mu`` the per-feature training mean."""

    def _fit(self, x: Tensor) -> None:
        self.mean = _mean(x)

    def _transform(self, x: Tensor) -> Tensor:
        return x - self.mean.to(device=x.device, dtype=x.dtype)


class Standardize(_Fitted):
    """``z = (x - mu) / sqrt(var + eps)`` per feature, ``var`` the biased training variance.

    Features constant on the training split (``var == 0``) keep scale 1 (only centred).
    """

    def __init__(self, eps: float = 1e-8) -> None:
        self.eps = eps

    def _fit(self, x: Tensor) -> None:
        self.mean = _mean(x)
        var = _centred_sq(x, self.mean) / x.shape[0]
        self.scale = torch.where(var > 0, torch.sqrt(var + self.eps), torch.ones_like(var))

    def _transform(self, x: Tensor) -> Tensor:
        return (x - self.mean.to(device=x.device, dtype=x.dtype)) / self.scale.to(
            device=x.device, dtype=x.dtype
        )


class ChannelMean(_Fitted):
    """``z = x - m_c``: per-channel training mean over samples and spatial dims (VGG)."""

    def _fit(self, x: Tensor) -> None:
        mean = _mean(x)
        if x.dim() > 2:
            dims = tuple(range(1, mean.dim()))
            mean = mean.mean(dim=dims, keepdim=True)
        self.mean = mean

    def _transform(self, x: Tensor) -> Tensor:
        return x - self.mean.to(device=x.device, dtype=x.dtype)


def _eigh_descending(cov: Tensor) -> tuple[Tensor, Tensor]:
    """Eigenvalues (clamped at 0, decreasing) and eigenvectors, largest component positive."""
    lam, u = torch.linalg.eigh(cov)
    lam, u = lam.flip(0).clamp_min(0.0), u.flip(1)
    pivot = u.abs().argmax(dim=0)
    signs = torch.sign(u[pivot, torch.arange(u.shape[1])])
    return lam, u * torch.where(signs == 0, torch.ones_like(signs), signs)


class _Whiten(_Fitted):
    def __init__(self, eps: float = 1e-5) -> None:
        self.eps = eps

    def _fit(self, x: Tensor) -> None:
        flat = x.reshape(x.shape[0], -1)
        self.mean = _mean(flat)
        cov = sum(((c - self.mean).T @ (c - self.mean) for c in _chunks(flat)), torch.zeros(()))
        cov = cov / (flat.shape[0] - 1)
        lam, u = _eigh_descending(cov)
        self.matrix = self._matrix(lam, u)

    def _matrix(self, lam: Tensor, u: Tensor) -> Tensor:
        raise NotImplementedError

    def _transform(self, x: Tensor) -> Tensor:
        flat = x.reshape(x.shape[0], -1)
        z = (flat - self.mean.to(device=x.device, dtype=x.dtype)) @ self.matrix.to(
            device=x.device, dtype=x.dtype
        )
        return z.reshape(x.shape)


class PCAWhiten(_Whiten):
    """``z = (x - mu) U diag(lambda + eps)^(-1/2)``, principal axes in decreasing variance."""

    def _matrix(self, lam: Tensor, u: Tensor) -> Tensor:
        return u / torch.sqrt(lam + self.eps)


class ZCAWhiten(_Whiten):
    """``z = (x - mu) (Sigma + eps I)^(-1/2)``: whitened, then rotated back to the input axes."""

    def _matrix(self, lam: Tensor, u: Tensor) -> Tensor:
        return (u / torch.sqrt(lam + self.eps)) @ u.T


def _np(x: Any) -> np.ndarray:
    return np.asarray(x, dtype=np.float64)


def identity_reference(x_train: np.ndarray, x: np.ndarray, **hp: Any) -> np.ndarray:
    """``z = x``."""
    return _np(x).copy()


def zero_center_reference(x_train: np.ndarray, x: np.ndarray, **hp: Any) -> np.ndarray:
    """``z = x - mean(x_train, axis=0)``."""
    return _np(x) - _np(x_train).mean(axis=0)


def standardize_reference(x_train: np.ndarray, x: np.ndarray, eps: float, **hp: Any) -> np.ndarray:
    """``z = (x - mean) / sqrt(var + eps)``, per feature, biased variance of x_train (scale 1
    where it is 0)."""
    xt = _np(x_train)
    var = xt.var(axis=0)
    scale = np.sqrt(var + eps)
    scale[var == 0] = 1.0
    return (_np(x) - xt.mean(axis=0)) / scale


def channel_mean_reference(x_train: np.ndarray, x: np.ndarray, **hp: Any) -> np.ndarray:
    """``z = x - m_c``, ``m_c`` averaged over axis 0 and every axis after 1."""
    xt = _np(x_train)
    axes = (0, *range(2, xt.ndim))
    return _np(x) - xt.mean(axis=axes, keepdims=True)


def _whitening(x_train: np.ndarray, eps: float, zca: bool) -> tuple[np.ndarray, np.ndarray]:
    flat = _np(x_train).reshape(len(x_train), -1)
    mean = flat.mean(axis=0)
    cov = np.atleast_2d(np.cov(flat, rowvar=False, ddof=1))
    lam, u = np.linalg.eigh(cov)
    lam, u = np.clip(lam[::-1], 0.0, None), u[:, ::-1]
    u = u * np.sign(u[np.abs(u).argmax(axis=0), np.arange(u.shape[1])])
    w = u / np.sqrt(lam + eps)
    return mean, (w @ u.T if zca else w)


def pca_whiten_reference(x_train: np.ndarray, x: np.ndarray, eps: float, **hp: Any) -> np.ndarray:
    """``z = (x - mu) U diag(lambda + eps)^(-1/2)`` with numpy's ``cov`` (ddof=1) and ``eigh``."""
    mean, w = _whitening(x_train, eps, zca=False)
    x = _np(x)
    return ((x.reshape(len(x), -1) - mean) @ w).reshape(x.shape)


def zca_whiten_reference(x_train: np.ndarray, x: np.ndarray, eps: float, **hp: Any) -> np.ndarray:
    """``z = (x - mu) U diag(lambda + eps)^(-1/2) U^T``."""
    mean, w = _whitening(x_train, eps, zca=True)
    x = _np(x)
    return ((x.reshape(len(x), -1) - mean) @ w).reshape(x.shape)
