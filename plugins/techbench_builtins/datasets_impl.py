"""Dataset loaders: ``fast(data_seed, **hp) -> DatasetSplits``.

Samples come from numpy (generated from ``numpy.random.default_rng(data_seed)`` or read from
files) and are split by one seeded permutation, so the split depends on ``data_seed`` only.
Inputs are float32, labels int64 (classification) or float32 (regression).

File datasets never unpickle arbitrary objects: IDX files are parsed with numpy, and the CIFAR
python batches go through :class:`RestrictedUnpickler`, which only rebuilds numpy arrays. Their
files are found in the ``root`` parameter, else the dataset's environment variable, else the
cache that ``techbench data fetch`` fills (:func:`techbench.data.dataset_dir`). Every file is
validated (format, shape, dtype, label range, counts, truncation) and a bad one raises
:class:`~techbench.data.DatasetFileError` with one line that starts with the file's path.
"""

from __future__ import annotations

import functools
import gzip
import importlib.util
import io
import os
import pickle
import tarfile
import zlib
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from techbench.data import DatasetFileError, DatasetFilesMissing, dataset_dir
from techbench.techniques.families import DatasetSplits


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
    """``root``, else ``$env_var``, else the cache folder ``techbench data fetch NAME`` fills."""
    text = root or os.environ.get(env_var, "")
    if not text:
        path = dataset_dir(name)
        if not path.is_dir():
            raise DatasetFilesMissing(
                f"{name}: no data in {str(path)!r}; run `techbench data fetch {name}`, pass "
                f"the dataset parameter root=... or set {env_var}"
            )
        return path
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


def _read_maybe_gzip(path: str | os.PathLike[str]) -> bytes:
    raw = Path(path).read_bytes()
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (EOFError, OSError, zlib.error) as exc:
            raise DatasetFileError(f"{path}: truncated or corrupt gzip file ({exc})") from None
    return raw


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """Parse an IDX file (raw or gzip): magic 0x0000 TT DD, DD big-endian int32 dims, data.

    The format is LeCun's (http://yann.lecun.com/exdb/mnist/, "file formats"); the data must
    fill the declared shape exactly, so truncated and padded files are both refused.
    """
    raw = _read_maybe_gzip(path)
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise DatasetFileError(f"{path}: not an IDX file (bad magic number {raw[:4].hex()})")
    dtype = _IDX_DTYPES[raw[2]]
    ndim = raw[3]
    offset = 4 + 4 * ndim
    if len(raw) < offset:
        raise DatasetFileError(f"{path}: truncated IDX header ({ndim} dimensions declared)")
    dims = tuple(int(d) for d in np.frombuffer(raw, dtype=">i4", count=ndim, offset=4))
    if any(d < 0 for d in dims):
        raise DatasetFileError(f"{path}: negative dimension in the IDX header {dims}")
    count = int(np.prod(dims)) if dims else 1
    have = len(raw) - offset
    if have < count * dtype.itemsize:
        raise DatasetFileError(
            f"{path}: truncated IDX file, expected shape {dims} ({count * dtype.itemsize} "
            f"bytes of data) but found {have} bytes"
        )
    if have > count * dtype.itemsize:
        raise DatasetFileError(
            f"{path}: {have - count * dtype.itemsize} bytes after the data of shape {dims}"
        )
    return np.frombuffer(raw, dtype=dtype, count=count, offset=offset).reshape(dims)


def _check_labels(labels: np.ndarray, where: object, num_classes: int) -> None:
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise DatasetFileError(
            f"{where}: expected one integer label per image, got {labels.dtype} of shape "
            f"{labels.shape}"
        )
    if len(labels) and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        bad = int(labels.max()) if int(labels.max()) >= num_classes else int(labels.min())
        raise DatasetFileError(f"{where}: label {bad} outside 0..{num_classes - 1}")


def _read_idx_pair(
    folder: Path, name: str, prefix: str, hw: tuple[int, int], num_classes: int
) -> tuple[np.ndarray, np.ndarray]:
    """One split's images (N, H, W) uint8 and labels (N,), checked against each other."""
    img_path = _find(folder, (f"{prefix}-images-idx3-ubyte", f"{prefix}-images.idx3-ubyte"), name)
    lab_path = _find(folder, (f"{prefix}-labels-idx1-ubyte", f"{prefix}-labels.idx1-ubyte"), name)
    x, y = read_idx(img_path), read_idx(lab_path)
    swapped = "; are the image and label files swapped?"
    if x.ndim == 1:
        raise DatasetFileError(f"{img_path}: holds {len(x)} labels, not images{swapped}")
    if x.ndim != 3 or x.shape[1:] != hw:
        raise DatasetFileError(
            f"{img_path}: images of shape {x.shape[1:]}, expected {hw[0]}x{hw[1]} for {name}"
        )
    if x.dtype != np.uint8:
        raise DatasetFileError(f"{img_path}: pixels are {x.dtype}, expected uint8")
    if y.ndim > 1:
        raise DatasetFileError(f"{lab_path}: holds images of shape {y.shape}, not labels{swapped}")
    if y.dtype != np.uint8:
        raise DatasetFileError(f"{lab_path}: labels are {y.dtype}, expected uint8")
    _check_labels(y, lab_path, num_classes)
    if len(x) != len(y):
        raise DatasetFileError(f"{img_path}: {len(x)} images but {lab_path} has {len(y)} labels")
    return x, y


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


def _official_splits(
    name: str,
    train: tuple[np.ndarray, np.ndarray],
    test: tuple[np.ndarray, np.ndarray],
    data_seed: int,
    val_fraction: float,
    limit: int,
    num_classes: int,
) -> DatasetSplits:
    """Official test set; validation held out of the training files; uint8 pixels -> [0, 1]."""
    xs, ys = _limit(*train, limit)
    xt, yt = _limit(*test, max(1, limit // 6) if limit else 0)
    tr, val = _split_train_val(xs, ys, data_seed, val_fraction)

    def scale(a: np.ndarray) -> np.ndarray:
        return a.astype(np.float32) / 255.0

    return _to_splits(
        name,
        (scale(tr[0]), tr[1]),
        (scale(val[0]), val[1]),
        (scale(xt), yt),
        "classification",
        num_classes,
    )


def _idx_dataset(
    name: str, env_var: str, data_seed: int, root: str, val_fraction: float, limit: int
) -> DatasetSplits:
    folder = _resolve_root(name, root, env_var)
    xs, ys = _read_idx_pair(folder, name, "train", (28, 28), 10)
    xt, yt = _read_idx_pair(folder, name, "t10k", (28, 28), 10)
    return _official_splits(
        name, (xs[:, None], ys), (xt[:, None], yt), data_seed, val_fraction, limit, 10
    )


def mnist(data_seed: int, root: str, val_fraction: float, limit: int) -> DatasetSplits:
    """MNIST from IDX files; pixels scaled to [0, 1], shape (N, 1, 28, 28)."""
    return _idx_dataset("mnist", "TECHBENCH_MNIST_DIR", data_seed, root, val_fraction, limit)


def fashion_mnist(data_seed: int, root: str, val_fraction: float, limit: int) -> DatasetSplits:
    """Fashion-MNIST from IDX files; pixels scaled to [0, 1], shape (N, 1, 28, 28)."""
    return _idx_dataset(
        "fashion_mnist", "TECHBENCH_FASHION_MNIST_DIR", data_seed, root, val_fraction, limit
    )


class RefusedGlobal(pickle.UnpicklingError):
    """A pickle asked for a callable that is not on :attr:`RestrictedUnpickler.ALLOWED`."""


class UnsafeDatasetFile(DatasetFileError, pickle.UnpicklingError):
    """A dataset file whose pickle names a callable other than numpy's array rebuilders."""


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that can rebuild numpy arrays and nothing else.

    Why: pickle runs whatever callable a file names, so unpickling a user's file is running the
    user's code. The CIFAR python batches are dicts of bytes, lists of ints and one uint8 array;
    the only callables they need are numpy's array reconstruction functions (and
    ``_codecs.encode`` for bytes written with protocol 2 by Python 3). Every other global is
    refused.
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
            raise RefusedGlobal(
                f"refusing to load {module}.{name}: only numpy arrays may be unpickled "
                "from dataset files"
            )
        return super().find_class(module, name)


_PICKLE_FAULTS = (
    pickle.UnpicklingError,
    EOFError,
    ValueError,
    TypeError,
    AttributeError,
    ImportError,
    IndexError,
    KeyError,
)


def _parse_cifar(
    source: Path | bytes, where: object, label_key: str, num_classes: int
) -> tuple[np.ndarray, np.ndarray]:
    try:
        with open(source, "rb") if isinstance(source, Path) else io.BytesIO(source) as fh:
            obj = RestrictedUnpickler(io.BufferedReader(fh), encoding="bytes").load()
    except RefusedGlobal as exc:
        raise UnsafeDatasetFile(f"{where}: {exc}") from None
    except _PICKLE_FAULTS as exc:
        raise DatasetFileError(
            f"{where}: not a readable CIFAR python batch ({type(exc).__name__}: {exc})"
        ) from None
    if not isinstance(obj, dict):
        raise DatasetFileError(f"{where}: not a CIFAR python batch (expected a dict)")
    obj = {(k.decode() if isinstance(k, bytes) else k): v for k, v in obj.items()}
    if "data" not in obj or label_key not in obj:
        other = {"labels": "fine_labels", "fine_labels": "labels"}.get(label_key, "")
        hint = f"; {other!r} suggests the other CIFAR" if other in obj else ""
        raise DatasetFileError(
            f"{where}: no 'data' and {label_key!r} entries (has {sorted(obj)}){hint}"
        )
    data = np.asarray(obj["data"])
    if data.dtype != np.uint8:
        raise DatasetFileError(f"{where}: pixels are {data.dtype}, expected uint8")
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise DatasetFileError(
            f"{where}: data of shape {data.shape}, expected (N, 3072) = N images of 3x32x32"
        )
    labels = np.asarray(obj[label_key])
    _check_labels(labels, where, num_classes)
    if len(labels) != len(data):
        raise DatasetFileError(f"{where}: {len(data)} images but {len(labels)} labels")
    return data.reshape(-1, 3, 32, 32), labels.astype(np.int64)


def read_cifar_batch(
    path: str | os.PathLike[str], label_key: str = "labels", num_classes: int = 10
) -> tuple[np.ndarray, np.ndarray]:
    """One CIFAR python batch -> (uint8 images (N, 3, 32, 32), int64 labels), validated.

    CIFAR-10 batches keep their labels under ``labels``, CIFAR-100's under ``fine_labels``
    (100 classes) and ``coarse_labels`` (20 superclasses); see Krizhevsky's page
    https://www.cs.toronto.edu/~kriz/cifar.html.
    """
    return _parse_cifar(Path(path), path, label_key, num_classes)


def _cifar_sources(
    folder: Path, top: str, archive: str, wanted: tuple[str, ...]
) -> dict[str, tuple[str, Path | bytes]]:
    """The batch files named ``wanted`` (or ``data_batch_*`` for the pattern ``data_batch_``):
    from ``folder``, ``folder/top``, or else straight from ``folder/archive`` (the tarball as
    published, put there by hand)."""

    def pick(names: list[str]) -> list[str]:
        return sorted(
            n
            for n in names
            if n in wanted or any(w.endswith("_") and n.startswith(w) for w in wanted)
        )

    for d in (folder, folder / top):
        if d.is_dir():
            found = pick([p.name for p in d.iterdir() if p.is_file()])
            if found:
                return {n: (str(d / n), d / n) for n in found}
    tar_path = folder / archive
    if not tar_path.is_file():
        return {}
    out: dict[str, tuple[str, Path | bytes]] = {}
    try:
        with tarfile.open(tar_path, "r:*") as tar:
            for member in tar.getmembers():
                base = member.name.rsplit("/", 1)[-1]
                if member.isfile() and member.name.startswith(f"{top}/") and pick([base]):
                    fh = tar.extractfile(member)
                    if fh is not None:
                        out[base] = (f"{tar_path}:{member.name}", fh.read())
    except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as exc:
        raise DatasetFileError(f"{tar_path}: truncated or corrupt archive ({exc})") from None
    return out


def cifar10(data_seed: int, root: str, val_fraction: float, limit: int) -> DatasetSplits:
    """CIFAR-10 from ``data_batch_1..5`` and ``test_batch``; pixels in [0, 1], (N, 3, 32, 32)."""
    folder = _resolve_root("cifar10", root, "TECHBENCH_CIFAR10_DIR")
    sources = _cifar_sources(
        folder,
        "cifar-10-batches-py",
        "cifar-10-python.tar.gz",
        ("data_batch_", "test_batch"),
    )
    train_names = [n for n in sources if n.startswith("data_batch_")]
    if not train_names or "test_batch" not in sources:
        raise DatasetFilesMissing(
            f"cifar10: expected data_batch_1..5 and test_batch (or cifar-10-python.tar.gz) in "
            f"{str(folder)!r}"
        )
    parts = [_parse_cifar(sources[n][1], sources[n][0], "labels", 10) for n in train_names]
    train = (np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]))
    test = _parse_cifar(sources["test_batch"][1], sources["test_batch"][0], "labels", 10)
    return _official_splits("cifar10", train, test, data_seed, val_fraction, limit, 10)


def cifar100(data_seed: int, root: str, val_fraction: float, limit: int) -> DatasetSplits:
    """CIFAR-100 from ``train`` and ``test`` with the 100 fine labels; pixels in [0, 1]."""
    folder = _resolve_root("cifar100", root, "TECHBENCH_CIFAR100_DIR")
    sources = _cifar_sources(
        folder, "cifar-100-python", "cifar-100-python.tar.gz", ("train", "test")
    )
    if set(sources) != {"train", "test"}:
        raise DatasetFilesMissing(
            f"cifar100: expected train and test (or cifar-100-python.tar.gz) in {str(folder)!r}"
        )
    train = _parse_cifar(sources["train"][1], sources["train"][0], "fine_labels", 100)
    test = _parse_cifar(sources["test"][1], sources["test"][0], "fine_labels", 100)
    return _official_splits("cifar100", train, test, data_seed, val_fraction, limit, 100)
