"""Dataset loaders: ``fast(data_seed, **hp) -> DatasetSplits``.

Samples come from numpy (generated from ``numpy.random.default_rng(data_seed)`` or read from
files) and are split by one seeded permutation, so the split depends on ``data_seed`` only.
Inputs are float32, labels int64 (classification) or float32 (regression).

File datasets never unpickle arbitrary objects: IDX files are parsed with numpy, and the CIFAR-10
python batches go through :class:`RestrictedUnpickler`, which only rebuilds numpy arrays.
"""

from __future__ import annotations

import functools
import gzip
import importlib.util
import io
import os
import pickle
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from techbench.families import DatasetSplits


class DatasetFilesMissing(FileNotFoundError):
    """The files of a file-backed dataset are not where the config or environment says."""


def _split_sizes(n: int, val_fraction: float, test_fraction: float) -> tuple[int, int, int]:
    n_val = round(n * val_fraction)
    n_test = round(n * test_fraction)
    n_train = n - n_val - n_test
    if n_train < 1 or n_val < 1 or n_test < 1:
        raise ValueError(
            f"cannot split {n} samples into train/val/test with val_fraction={val_fraction}, "
            f"test_fraction={test_fraction}"
        )
    return n_train, n_val, n_test


def split_arrays(
    name: str,
    x: np.ndarray,
    y: np.ndarray,
    data_seed: int,
    val_fraction: float,
    test_fraction: float,
    task: Literal["classification", "regression"],
    num_classes: int,
) -> DatasetSplits:
    """Split (x, y) by a permutation drawn from ``data_seed``: test, then val, then train."""
    n = len(x)
    _, n_val, n_test = _split_sizes(n, val_fraction, test_fraction)
    perm = np.random.default_rng([data_seed, 0x5EED]).permutation(n)
    test_idx, val_idx, train_idx = np.split(perm, [n_test, n_test + n_val])
    return _to_splits(
        name,
        (x[train_idx], y[train_idx]),
        (x[val_idx], y[val_idx]),
        (x[test_idx], y[test_idx]),
        task,
        num_classes,
    )


def _to_splits(
    name: str,
    train: tuple[np.ndarray, np.ndarray],
    val: tuple[np.ndarray, np.ndarray],
    test: tuple[np.ndarray, np.ndarray],
    task: Literal["classification", "regression"],
    num_classes: int,
) -> DatasetSplits:
    ydtype = np.int64 if task == "classification" else np.float32

    def tx(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))

    def ty(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(a, dtype=ydtype))

    return DatasetSplits(
        name=name,
        x_train=tx(train[0]),
        y_train=ty(train[1]),
        x_val=tx(val[0]),
        y_val=ty(val[1]),
        x_test=tx(test[0]),
        y_test=ty(test[1]),
        task=task,
        num_classes=num_classes,
    )


def _rng(data_seed: int) -> np.random.Generator:
    return np.random.default_rng([data_seed, 0xDA7A])


@functools.lru_cache(maxsize=1)
def _digits_table() -> np.ndarray:
    """The (1797, 65) table of ``sklearn/datasets/data/digits.csv.gz`` (last column: label).

    Read straight from the installed package's data file: importing ``sklearn.datasets`` costs
    seconds, reading the file a fraction of one.
    """
    spec = importlib.util.find_spec("sklearn")
    locations = list(spec.submodule_search_locations or []) if spec else []
    for folder in locations:
        path = Path(folder) / "datasets" / "data" / "digits.csv.gz"
        if path.is_file():
            return np.loadtxt(path, delimiter=",")
    from sklearn.datasets import load_digits

    bunch = load_digits()
    return np.column_stack([bunch.data, bunch.target])


def digits(data_seed: int, val_fraction: float, test_fraction: float, image: bool) -> DatasetSplits:
    """scikit-learn's digits: 64 pixel intensities in [0, 16], 10 classes."""
    table = _digits_table()
    x = table[:, :-1].astype(np.float32)
    if image:
        x = x.reshape(-1, 1, 8, 8)
    y = table[:, -1].astype(np.int64)
    return split_arrays(
        "digits", x, y, data_seed, val_fraction, test_fraction, "classification", 10
    )


def spirals(
    data_seed: int,
    n_samples: int,
    noise: float,
    turns: float,
    val_fraction: float,
    test_fraction: float,
) -> DatasetSplits:
    """Two spirals: r = t, angle = 2 pi turns t + pi c for t ~ U(0, 1), class c in {0, 1}."""
    rng = _rng(data_seed)
    c = np.arange(n_samples) % 2
    t = np.sqrt(rng.uniform(0.0, 1.0, n_samples)) * 0.95 + 0.05
    angle = 2 * np.pi * turns * t + np.pi * c
    x = np.stack([t * np.cos(angle), t * np.sin(angle)], axis=1)
    x += rng.normal(0.0, noise, x.shape)
    return split_arrays(
        "spirals", x, c, data_seed, val_fraction, test_fraction, "classification", 2
    )


def moons(
    data_seed: int, n_samples: int, noise: float, val_fraction: float, test_fraction: float
) -> DatasetSplits:
    """Two half circles as scikit-learn's ``make_moons``: (cos s, sin s) and
    (1 - cos s, 1/2 - sin s) for s evenly spaced in [0, pi], plus N(0, noise^2) noise."""
    rng = _rng(data_seed)
    n_out = n_samples // 2
    n_in = n_samples - n_out
    s_out = np.linspace(0.0, np.pi, n_out)
    s_in = np.linspace(0.0, np.pi, n_in)
    x = np.concatenate(
        [
            np.stack([np.cos(s_out), np.sin(s_out)], axis=1),
            np.stack([1.0 - np.cos(s_in), 0.5 - np.sin(s_in)], axis=1),
        ]
    )
    y = np.concatenate([np.zeros(n_out, np.int64), np.ones(n_in, np.int64)])
    x = x + rng.normal(0.0, noise, x.shape)
    return split_arrays("moons", x, y, data_seed, val_fraction, test_fraction, "classification", 2)


def blobs(
    data_seed: int,
    n_samples: int,
    centers: int,
    n_features: int,
    cluster_std: float,
    val_fraction: float,
    test_fraction: float,
) -> DatasetSplits:
    """Gaussian blobs: centres ~ U(-10, 10)^d, samples ~ N(centre, cluster_std^2 I)."""
    rng = _rng(data_seed)
    mu = rng.uniform(-10.0, 10.0, (centers, n_features))
    y = np.arange(n_samples) % centers
    x = mu[y] + rng.normal(0.0, cluster_std, (n_samples, n_features))
    return split_arrays(
        "blobs", x, y, data_seed, val_fraction, test_fraction, "classification", centers
    )


def xor(
    data_seed: int, n_samples: int, noise: float, val_fraction: float, test_fraction: float
) -> DatasetSplits:
    """Four Gaussian clusters at (+-1, +-1); the label is 1 where the signs of the centres differ."""
    rng = _rng(data_seed)
    signs = rng.choice([-1.0, 1.0], size=(n_samples, 2))
    x = signs + rng.normal(0.0, noise, (n_samples, 2))
    y = (signs[:, 0] * signs[:, 1] < 0).astype(np.int64)
    return split_arrays("xor", x, y, data_seed, val_fraction, test_fraction, "classification", 2)


def teacher_student(
    data_seed: int,
    n_samples: int,
    n_features: int,
    hidden: int,
    n_outputs: int,
    noise: float,
    val_fraction: float,
    test_fraction: float,
) -> DatasetSplits:
    """x ~ N(0, I); y = W2 tanh(W1 x / sqrt(d)) / sqrt(h) + noise, W ~ N(0, 1)."""
    rng = _rng(data_seed)
    x = rng.normal(0.0, 1.0, (n_samples, n_features))
    w1 = rng.normal(0.0, 1.0, (n_features, hidden))
    w2 = rng.normal(0.0, 1.0, (hidden, n_outputs))
    y = np.tanh(x @ w1 / np.sqrt(n_features)) @ w2 / np.sqrt(hidden)
    y += rng.normal(0.0, noise, y.shape)
    if n_outputs == 1:
        y = y[:, 0]
    return split_arrays(
        "teacher_student", x, y, data_seed, val_fraction, test_fraction, "regression", 0
    )


# ---------------------------------------------------------------- files


def _resolve_root(name: str, root: str, env_var: str) -> Path:
    text = root or os.environ.get(env_var, "")
    if not text:
        raise DatasetFilesMissing(
            f"{name}: no data folder; pass the dataset parameter root=... or set {env_var}"
        )
    path = Path(text).expanduser()
    if not path.is_dir():
        raise DatasetFilesMissing(f"{name}: data folder {str(path)!r} does not exist")
    return path


def _find(root: Path, stems: tuple[str, ...], name: str) -> Path:
    for stem in stems:
        for candidate in (root / stem, root / f"{stem}.gz"):
            if candidate.is_file():
                return candidate
    raise DatasetFilesMissing(
        f"{name}: none of {', '.join(stems)} (optionally .gz) found in {str(root)!r}"
    )


_IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """Parse an IDX file (raw or gzip): magic 0x0000 TT DD, DD big-endian int32 dims, data."""
    raw = Path(path).read_bytes()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise ValueError(f"{path}: not an IDX file (bad magic number)")
    dtype = _IDX_DTYPES[raw[2]]
    ndim = raw[3]
    dims = tuple(int(d) for d in np.frombuffer(raw, dtype=">i4", count=ndim, offset=4))
    offset = 4 + 4 * ndim
    count = int(np.prod(dims)) if dims else 1
    if len(raw) - offset < count * dtype.itemsize:
        raise ValueError(f"{path}: truncated IDX file, expected shape {dims}")
    return np.frombuffer(raw, dtype=dtype, count=count, offset=offset).reshape(dims)


def _split_train_val(
    x: np.ndarray, y: np.ndarray, data_seed: int, val_fraction: float
) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    n = len(x)
    n_val = round(n * val_fraction)
    if n_val < 1 or n - n_val < 1:
        raise ValueError(f"cannot hold out val_fraction={val_fraction} of {n} training samples")
    perm = np.random.default_rng([data_seed, 0x5EED]).permutation(n)
    val_idx, train_idx = perm[:n_val], perm[n_val:]
    return (x[train_idx], y[train_idx]), (x[val_idx], y[val_idx])


def _limit(x: np.ndarray, y: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    return (x[:n], y[:n]) if n else (x, y)


def _idx_dataset(
    name: str, env_var: str, data_seed: int, root: str, val_fraction: float, limit: int
) -> DatasetSplits:
    folder = _resolve_root(name, root, env_var)
    xs = read_idx(_find(folder, ("train-images-idx3-ubyte", "train-images.idx3-ubyte"), name))
    ys = read_idx(_find(folder, ("train-labels-idx1-ubyte", "train-labels.idx1-ubyte"), name))
    xt = read_idx(_find(folder, ("t10k-images-idx3-ubyte", "t10k-images.idx3-ubyte"), name))
    yt = read_idx(_find(folder, ("t10k-labels-idx1-ubyte", "t10k-labels.idx1-ubyte"), name))
    if len(xs) != len(ys) or len(xt) != len(yt):
        raise ValueError(f"{name}: image and label files disagree on the number of samples")
    xs, ys = _limit(xs, ys, limit)
    xt, yt = _limit(xt, yt, max(1, limit // 6) if limit else 0)
    train, val = _split_train_val(xs, ys, data_seed, val_fraction)

    def scale(a: np.ndarray) -> np.ndarray:
        return (a.astype(np.float32) / 255.0)[:, None]

    return _to_splits(
        name,
        (scale(train[0]), train[1]),
        (scale(val[0]), val[1]),
        (scale(xt), yt),
        "classification",
        10,
    )


def mnist(data_seed: int, root: str, val_fraction: float, limit: int) -> DatasetSplits:
    """MNIST from IDX files; pixels scaled to [0, 1], shape (N, 1, 28, 28)."""
    return _idx_dataset("mnist", "TECHBENCH_MNIST_DIR", data_seed, root, val_fraction, limit)


def fashion_mnist(data_seed: int, root: str, val_fraction: float, limit: int) -> DatasetSplits:
    """Fashion-MNIST from IDX files; pixels scaled to [0, 1], shape (N, 1, 28, 28)."""
    return _idx_dataset(
        "fashion_mnist", "TECHBENCH_FASHION_MNIST_DIR", data_seed, root, val_fraction, limit
    )


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that can rebuild numpy arrays and nothing else.

    Why: pickle runs whatever callable a file names, so unpickling a user's file is running the
    user's code. The CIFAR-10 batches are dicts of bytes, lists of ints and one uint8 array; the
    only callables they need are numpy's array reconstruction functions (and ``_codecs.encode``
    for bytes written with protocol 2 by Python 3). Every other global is refused.
    """

    ALLOWED: frozenset[tuple[str, str]] = frozenset(
        {
            ("numpy.core.multiarray", "_reconstruct"),
            ("numpy._core.multiarray", "_reconstruct"),
            ("numpy.core.numeric", "_frombuffer"),
            ("numpy._core.numeric", "_frombuffer"),
            ("numpy", "ndarray"),
            ("numpy", "dtype"),
            ("_codecs", "encode"),
        }
    )

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(
                f"refusing to load {module}.{name}: only numpy arrays may be unpickled "
                "from dataset files"
            )
        return super().find_class(module, name)


def read_cifar_batch(path: str | os.PathLike[str]) -> tuple[np.ndarray, np.ndarray]:
    """One CIFAR-10 python batch -> (uint8 images (N, 3, 32, 32), int64 labels)."""
    with open(path, "rb") as fh:
        obj = RestrictedUnpickler(io.BufferedReader(fh), encoding="bytes").load()
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: not a CIFAR-10 batch (expected a dict)")
    obj = {(k.decode() if isinstance(k, bytes) else k): v for k, v in obj.items()}
    data = np.asarray(obj["data"], dtype=np.uint8)
    labels = np.asarray(obj["labels"], dtype=np.int64)
    if data.ndim != 2 or data.shape[1] != 3072 or len(labels) != len(data):
        raise ValueError(f"{path}: expected data (N, 3072) and N labels, got {data.shape}")
    return data.reshape(-1, 3, 32, 32), labels


def cifar10(data_seed: int, root: str, val_fraction: float, limit: int) -> DatasetSplits:
    """CIFAR-10 from ``data_batch_1..5`` and ``test_batch``; pixels in [0, 1], (N, 3, 32, 32)."""
    folder = _resolve_root("cifar10", root, "TECHBENCH_CIFAR10_DIR")
    if not (folder / "test_batch").is_file() and (folder / "cifar-10-batches-py").is_dir():
        folder = folder / "cifar-10-batches-py"
    train_files = sorted(folder.glob("data_batch_*"))
    if not train_files or not (folder / "test_batch").is_file():
        raise DatasetFilesMissing(
            f"cifar10: expected data_batch_1..5 and test_batch in {str(folder)!r}"
        )
    parts = [read_cifar_batch(p) for p in train_files]
    xs = np.concatenate([p[0] for p in parts])
    ys = np.concatenate([p[1] for p in parts])
    xt, yt = read_cifar_batch(folder / "test_batch")
    xs, ys = _limit(xs, ys, limit)
    xt, yt = _limit(xt, yt, max(1, limit // 6) if limit else 0)
    train, val = _split_train_val(xs, ys, data_seed, val_fraction)

    def scale(a: np.ndarray) -> np.ndarray:
        return a.astype(np.float32) / 255.0

    return _to_splits(
        "cifar10",
        (scale(train[0]), train[1]),
        (scale(val[0]), val[1]),
        (scale(xt), yt),
        "classification",
        10,
    )
