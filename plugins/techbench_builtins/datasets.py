"""Built-in datasets (specs only; the loaders are in ``datasets_impl``).

Every dataset's fast side is ``fast(data_seed, **hp) -> DatasetSplits``. The train / validation /
test split is fixed by ``data_seed`` alone, so every trial of a matrix that shares a data seed sees
the same samples; "best" epochs and early stopping read validation only, test is reported apart.

Declared properties (read by ``techbench.testing.dataset``):

- ``task``: "classification" or "regression"; ``num_classes`` (0 for regression);
- ``source``: "bundled" (ships with a package), "synthetic" (generated from the seed) or
  "files" (read from a local folder: ``root`` parameter, else an environment variable);
- ``split``: "fractions" (val and test are ``val_fraction`` / ``test_fraction`` of all samples)
  or "official_test" (test is the files' test set; val is ``val_fraction`` of the train files);
- ``file_format`` (files only): "idx" (MNIST layout), "cifar10-python" or "cifar100-python";
  ``env_var``. With neither ``root`` nor the variable set, the files are read from the cache that
  ``techbench data fetch NAME`` fills (see :mod:`techbench.data`).
"""

from __future__ import annotations

from techbench.techniques.spec import Param, TechniqueSpec

_IMPL = "techbench_builtins.datasets_impl"


def _fractions(val: float = 0.2, test: float = 0.2) -> tuple[Param, ...]:
    return (
        Param(
            name="val_fraction",
            type=float,
            default=val,
            low=0.0,
            high=0.5,
            low_open=True,
            doc="share of the samples held out for validation",
        ),
        Param(
            name="test_fraction",
            type=float,
            default=test,
            low=0.0,
            high=0.5,
            low_open=True,
            doc="share of the samples held out for test",
        ),
    )


def _n_samples(default: int) -> Param:
    return Param(
        name="n_samples", type=int, default=default, low=30, high=10_000_000, doc="total samples"
    )


def _noise(default: float, doc: str) -> Param:
    return Param(name="noise", type=float, default=default, low=0.0, high=100.0, doc=doc)


digits = TechniqueSpec(
    name="digits",
    family="dataset",
    summary="scikit-learn's bundled 8x8 handwritten digits (1797 images, 10 classes), offline.",
    citation="Alpaydin and Kaynak 1998, UCI Optical Recognition of Handwritten Digits",
    fast=f"{_IMPL}:digits",
    params=(
        *_fractions(),
        Param(
            name="image",
            type=bool,
            default=False,
            doc="shape (1, 8, 8) instead of 64 features",
        ),
    ),
    properties={
        "task": "classification",
        "num_classes": 10,
        "source": "bundled",
        "split": "fractions",
    },
    tags=("image", "small"),
)

spirals = TechniqueSpec(
    name="spirals",
    family="dataset",
    summary="Two interleaved 2-D spirals with Gaussian noise (binary classification).",
    citation="Lang and Witbrock 1988, Learning to tell two spirals apart",
    fast=f"{_IMPL}:spirals",
    params=(
        _n_samples(2000),
        _noise(0.05, "std of the Gaussian noise added to each coordinate (radius <= 1)"),
        Param(name="turns", type=float, default=1.5, low=0.25, high=10.0, doc="turns per spiral"),
        *_fractions(),
    ),
    properties={
        "task": "classification",
        "num_classes": 2,
        "source": "synthetic",
        "split": "fractions",
    },
    tags=("synthetic", "2d"),
)

moons = TechniqueSpec(
    name="moons",
    family="dataset",
    summary="Two interleaving half circles with Gaussian noise, as sklearn's make_moons (binary).",
    citation="scikit-learn sklearn.datasets.make_moons (Pedregosa et al. 2011)",
    fast=f"{_IMPL}:moons",
    params=(_n_samples(2000), _noise(0.2, "std of the Gaussian noise"), *_fractions()),
    properties={
        "task": "classification",
        "num_classes": 2,
        "source": "synthetic",
        "split": "fractions",
    },
    tags=("synthetic", "2d"),
)

blobs = TechniqueSpec(
    name="blobs",
    family="dataset",
    summary="Isotropic Gaussian blobs around random centres (multi-class).",
    citation="scikit-learn sklearn.datasets.make_blobs (Pedregosa et al. 2011)",
    fast=f"{_IMPL}:blobs",
    params=(
        _n_samples(2000),
        Param(name="centers", type=int, default=4, low=2, high=1000, doc="number of classes"),
        Param(name="n_features", type=int, default=2, low=1, high=100_000, doc="dimension"),
        Param(name="cluster_std", type=float, default=1.0, low=0.0, high=100.0, low_open=True),
        *_fractions(),
    ),
    properties={
        "task": "classification",
        "num_classes": 4,
        "source": "synthetic",
        "split": "fractions",
    },
    tags=("synthetic",),
)

xor = TechniqueSpec(
    name="xor",
    family="dataset",
    summary="XOR of four Gaussian clusters at (+-1, +-1): label = [x1 * x2 < 0] (binary).",
    citation="Minsky and Papert 1969, Perceptrons (the XOR problem)",
    fast=f"{_IMPL}:xor",
    params=(_n_samples(2000), _noise(0.35, "std of each Gaussian cluster"), *_fractions()),
    properties={
        "task": "classification",
        "num_classes": 2,
        "source": "synthetic",
        "split": "fractions",
    },
    tags=("synthetic", "2d"),
)

teacher_student = TechniqueSpec(
    name="teacher_student",
    family="dataset",
    summary="Regression on the outputs of a random one-hidden-layer tanh teacher network plus noise.",
    citation="Gardner and Derrida 1989; Saad and Solla 1995 (teacher-student learning)",
    fast=f"{_IMPL}:teacher_student",
    params=(
        _n_samples(4000),
        Param(name="n_features", type=int, default=20, low=1, high=100_000, doc="input dimension"),
        Param(name="hidden", type=int, default=16, low=1, high=100_000, doc="teacher hidden units"),
        Param(name="n_outputs", type=int, default=1, low=1, high=1000, doc="regression targets"),
        _noise(0.1, "std of the Gaussian label noise"),
        *_fractions(),
    ),
    properties={
        "task": "regression",
        "num_classes": 0,
        "source": "synthetic",
        "split": "fractions",
    },
    tags=("synthetic", "regression"),
)


def _file_params(limit_doc: str) -> tuple[Param, ...]:
    return (
        Param(
            name="root",
            type=str,
            default="",
            doc="folder with the files; empty: the environment variable, else the data cache",
        ),
        Param(
            name="val_fraction",
            type=float,
            default=1 / 6,
            low=0.0,
            high=0.5,
            low_open=True,
            doc="share of the training files held out for validation",
        ),
        Param(name="limit", type=int, default=0, low=0, doc=limit_doc),
    )


_LIMIT = "use only the first N training and N // 6 test samples (0: all)"

mnist = TechniqueSpec(
    name="mnist",
    family="dataset",
    summary="MNIST handwritten digits (28x28, 10 classes) from local IDX files.",
    citation="LeCun, Bottou, Bengio and Haffner 1998, Gradient-based learning",
    fast=f"{_IMPL}:mnist",
    params=_file_params(_LIMIT),
    properties={
        "task": "classification",
        "num_classes": 10,
        "source": "files",
        "split": "official_test",
        "file_format": "idx",
        "env_var": "TECHBENCH_MNIST_DIR",
    },
    tags=("image", "files"),
)

fashion_mnist = TechniqueSpec(
    name="fashion_mnist",
    family="dataset",
    summary="Fashion-MNIST clothing images (28x28, 10 classes) from local IDX files.",
    citation="Xiao, Rasul and Vollgraf 2017, Fashion-MNIST (arXiv:1708.07747)",
    fast=f"{_IMPL}:fashion_mnist",
    params=_file_params(_LIMIT),
    properties={
        "task": "classification",
        "num_classes": 10,
        "source": "files",
        "split": "official_test",
        "file_format": "idx",
        "env_var": "TECHBENCH_FASHION_MNIST_DIR",
    },
    tags=("image", "files"),
)

cifar10 = TechniqueSpec(
    name="cifar10",
    family="dataset",
    summary="CIFAR-10 colour images (3x32x32, 10 classes) from the local python batches.",
    citation="Krizhevsky 2009, Learning multiple layers of features from tiny images",
    fast=f"{_IMPL}:cifar10",
    params=_file_params(_LIMIT),
    properties={
        "task": "classification",
        "num_classes": 10,
        "source": "files",
        "split": "official_test",
        "file_format": "cifar10-python",
        "env_var": "TECHBENCH_CIFAR10_DIR",
    },
    tags=("image", "files"),
)

cifar100 = TechniqueSpec(
    name="cifar100",
    family="dataset",
    summary="CIFAR-100 colour images (3x32x32, 100 fine classes) from the local python files.",
    citation="Krizhevsky 2009, Learning multiple layers of features from tiny images",
    fast=f"{_IMPL}:cifar100",
    params=_file_params(_LIMIT),
    properties={
        "task": "classification",
        "num_classes": 100,
        "source": "files",
        "split": "official_test",
        "file_format": "cifar100-python",
        "env_var": "TECHBENCH_CIFAR100_DIR",
    },
    tags=("image", "files"),
)
