"""Built-in datasets against independent sources (scikit-learn, the generating formulas, the files
the tests write) and the dataset conformance checks, including plugins that must fail them."""

from __future__ import annotations

import io
import os
import pickle

import numpy as np
import pytest
import torch

from techbench.families import DatasetSplits
from techbench.registry import get_spec
from techbench.spec import Param, TechniqueSpec
from techbench.testing import checks_for, failed_checks
from techbench.testing.dataset import write_cifar10_batches, write_idx, write_idx_dataset
from techbench_builtins import datasets_impl as impl

BUILTINS = [
    "digits",
    "spirals",
    "moons",
    "blobs",
    "xor",
    "teacher_student",
    "mnist",
    "fashion_mnist",
    "cifar10",
]


def _rows(*arrays: np.ndarray) -> list[bytes]:
    return sorted(
        r.tobytes() for a in arrays for r in np.ascontiguousarray(a, np.float32).reshape(len(a), -1)
    )


def test_digits_is_sklearn_digits_split_by_fractions() -> None:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    s = get_spec("digits", "dataset").create(3)
    assert (len(s.x_train), len(s.x_val), len(s.x_test)) == (1797 - 359 - 359, 359, 359)
    got = _rows(s.x_train.numpy(), s.x_val.numpy(), s.x_test.numpy())
    assert got == _rows(bunch.data)
    # every sample keeps its own label
    lookup = {
        r.astype(np.float32).tobytes(): int(t)
        for r, t in zip(bunch.data, bunch.target, strict=True)
    }
    for x, y in ((s.x_train, s.y_train), (s.x_test, s.y_test)):
        assert [lookup[r.tobytes()] for r in x.numpy()] == y.tolist()
    img = get_spec("digits", "dataset").create(3, image=True)
    assert img.input_shape == (1, 8, 8)
    assert torch.equal(img.x_train.reshape(len(img.x_train), -1), s.x_train)


@pytest.mark.parametrize("name", ["digits", "spirals", "moons", "blobs", "xor", "teacher_student"])
def test_split_fixed_by_data_seed(name: str) -> None:
    spec = get_spec(name, "dataset")
    a, b, c = spec.create(0), spec.create(0), spec.create(1)
    for part in ("x_train", "y_train", "x_val", "x_test"):
        assert torch.equal(getattr(a, part), getattr(b, part))
    assert not torch.equal(a.x_train, c.x_train)


def test_moons_without_noise_lie_on_the_two_half_circles() -> None:
    s = get_spec("moons", "dataset").create(0, noise=0.0, n_samples=400)
    x = torch.cat([s.x_train, s.x_val, s.x_test]).double()
    y = torch.cat([s.y_train, s.y_val, s.y_test])
    outer, inner = x[y == 0], x[y == 1]
    assert torch.allclose(outer.norm(dim=1), torch.ones(len(outer), dtype=torch.float64), atol=1e-6)
    assert bool((outer[:, 1] >= -1e-6).all())
    centre = torch.tensor([1.0, 0.5], dtype=torch.float64)
    assert torch.allclose(
        (inner - centre).norm(dim=1), torch.ones(len(inner), dtype=torch.float64), atol=1e-6
    )
    assert len(outer) == len(inner) == 200


def test_xor_labels_follow_the_signs_of_the_centres() -> None:
    s = get_spec("xor", "dataset").create(0, noise=0.0)
    assert set(map(tuple, s.x_train.tolist())) <= {
        (1.0, 1.0),
        (1.0, -1.0),
        (-1.0, 1.0),
        (-1.0, -1.0),
    }
    expected = (s.x_train[:, 0] * s.x_train[:, 1] < 0).long()
    assert torch.equal(s.y_train, expected)


def test_spirals_without_noise_are_two_spirals() -> None:
    s = get_spec("spirals", "dataset").create(0, noise=0.0, turns=1.0)
    x, y = s.x_train.double(), s.y_train
    r = x.norm(dim=1)
    theta = torch.atan2(x[:, 1], x[:, 0])
    # angle = 2 pi turns r + pi c (mod 2 pi)
    want = 2 * torch.pi * r + torch.pi * y.double()
    diff = torch.remainder(theta - want + torch.pi, 2 * torch.pi) - torch.pi
    assert float(diff.abs().max()) < 1e-4
    assert set(y.tolist()) == {0, 1}


def test_blobs_classes_are_gaussian_around_their_centres() -> None:
    s = get_spec("blobs", "dataset").create(
        0, n_samples=4000, cluster_std=0.5, centers=3, n_features=2
    )
    assert s.num_classes == 3
    for c in range(3):
        pts = s.x_train[s.y_train == c].double()
        std = (pts - pts.mean(0)).std(0)
        assert torch.allclose(std, torch.full((2,), 0.5, dtype=torch.float64), rtol=0.1)


def test_teacher_student_noise_has_the_declared_std() -> None:
    spec = get_spec("teacher_student", "dataset")
    clean = spec.create(0, noise=0.0, n_samples=20000)
    noisy = spec.create(0, noise=0.3, n_samples=20000)
    assert clean.task == noisy.task == "regression" and clean.num_classes == 0
    assert torch.equal(clean.x_train, noisy.x_train)
    resid = (noisy.y_train - clean.y_train).double()
    assert abs(float(resid.std()) - 0.3) < 0.01 and abs(float(resid.mean())) < 0.01
    assert clean.num_outputs == 1 and clean.y_train.dtype == torch.float32
    multi = spec.create(0, n_outputs=3)
    assert multi.y_train.shape[1] == 3 and multi.num_outputs == 3


# ---------------------------------------------------------------- files


@pytest.mark.parametrize("compress", [False, True])
def test_idx_round_trip(tmp_path, compress: bool) -> None:
    a = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    path = write_idx(tmp_path / "a-idx3-ubyte", a, compress=compress)
    assert np.array_equal(impl.read_idx(path), a)
    raw = (
        bytes([0, 0, 0x0D, 1])
        + np.asarray([3], ">i4").tobytes()
        + np.asarray([1.5, -2, 3], ">f4").tobytes()
    )
    (tmp_path / "f").write_bytes(raw)
    assert impl.read_idx(tmp_path / "f").tolist() == [1.5, -2.0, 3.0]


def test_idx_rejects_bad_files(tmp_path) -> None:
    (tmp_path / "bad").write_bytes(b"\x01\x02\x03\x04garbage")
    with pytest.raises(ValueError, match="magic"):
        impl.read_idx(tmp_path / "bad")
    (tmp_path / "short").write_bytes(
        bytes([0, 0, 8, 1]) + np.asarray([10], ">i4").tobytes() + b"\x00"
    )
    with pytest.raises(ValueError, match="truncated"):
        impl.read_idx(tmp_path / "short")


@pytest.mark.parametrize("name", ["mnist", "fashion_mnist"])
def test_idx_dataset_reads_the_files(tmp_path, name: str) -> None:
    xs, ys, xt, yt = write_idx_dataset(tmp_path, n_train=60, n_test=20, compress=True)
    s = get_spec(name, "dataset").create(0, root=str(tmp_path), val_fraction=0.25)
    assert s.input_shape == (1, 28, 28) and (len(s.x_train), len(s.x_val), len(s.x_test)) == (
        45,
        15,
        20,
    )
    assert torch.equal(s.x_test, torch.from_numpy(xt.astype(np.float32) / 255)[:, None])
    assert s.y_test.tolist() == yt.tolist()
    pool = _rows(s.x_train.numpy(), s.x_val.numpy())
    assert pool == _rows((xs.astype(np.float32) / 255)[:, None])
    assert sorted(s.y_train.tolist() + s.y_val.tolist()) == sorted(ys.tolist())
    assert float(s.x_train.max()) <= 1.0 and float(s.x_train.min()) >= 0.0


def test_idx_dataset_root_from_env_and_clear_error(tmp_path, monkeypatch) -> None:
    spec = get_spec("mnist", "dataset")
    monkeypatch.delenv("TECHBENCH_MNIST_DIR", raising=False)
    with pytest.raises(impl.DatasetFilesMissing, match="TECHBENCH_MNIST_DIR"):
        spec.create(0)
    monkeypatch.setenv("TECHBENCH_MNIST_DIR", str(tmp_path))
    with pytest.raises(impl.DatasetFilesMissing, match="train-images-idx3-ubyte"):
        spec.create(0)
    write_idx_dataset(tmp_path)
    assert len(spec.create(0).x_test) == 20
    with pytest.raises(impl.DatasetFilesMissing, match="does not exist"):
        spec.create(0, root=str(tmp_path / "nope"))


def test_cifar10_reads_python_batches(tmp_path) -> None:
    sub = tmp_path / "cifar-10-batches-py"
    sub.mkdir()
    xs, ys, xt, yt = write_cifar10_batches(sub, per_batch=10, n_test=7)
    s = get_spec("cifar10", "dataset").create(0, root=str(tmp_path), val_fraction=0.2)
    assert s.input_shape == (3, 32, 32) and (len(s.x_train), len(s.x_val), len(s.x_test)) == (
        40,
        10,
        7,
    )
    assert torch.equal(
        s.x_test, torch.from_numpy(xt.reshape(-1, 3, 32, 32).astype(np.float32) / 255)
    )
    assert s.y_test.tolist() == yt.tolist()
    assert sorted(s.y_train.tolist() + s.y_val.tolist()) == sorted(ys.tolist())
    assert _rows(s.x_train.numpy(), s.x_val.numpy()) == _rows(
        xs.reshape(-1, 3, 32, 32).astype(np.float32) / 255
    )


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def test_restricted_unpickler_refuses_code(tmp_path) -> None:
    payload = pickle.dumps({b"data": _Evil(), b"labels": [1]}, protocol=2)
    (tmp_path / "data_batch_1").write_bytes(payload)
    with pytest.raises(pickle.UnpicklingError, match="refusing to load"):
        impl.read_cifar_batch(tmp_path / "data_batch_1")
    with pytest.raises(pickle.UnpicklingError, match="refusing"):
        impl.RestrictedUnpickler(io.BytesIO(pickle.dumps(print))).load()
    arr = np.arange(6, dtype=np.uint8)
    for protocol in (2, 3, 4, 5):
        assert np.array_equal(
            impl.RestrictedUnpickler(io.BytesIO(pickle.dumps(arr, protocol=protocol))).load(), arr
        )


# ---------------------------------------------------------------- conformance


@pytest.mark.parametrize("name", BUILTINS)
def test_builtin_datasets_have_every_dataset_check(name: str) -> None:
    """Every check runs once, in test_builtins; here only that none is missing."""
    assert len(checks_for(f"dataset/{name}")) == 5


def _bad_spec(fast, name: str = "bad") -> TechniqueSpec:
    return TechniqueSpec(
        name=name,
        family="dataset",
        summary="a deliberately wrong dataset",
        fast=fast,
        params=(
            Param(name="val_fraction", type=float, default=0.2),
            Param(name="test_fraction", type=float, default=0.2),
        ),
        properties={"task": "classification", "num_classes": 2, "split": "fractions"},
    )


def _good(data_seed: int, val_fraction: float, test_fraction: float) -> DatasetSplits:
    rng = np.random.default_rng(data_seed)
    x = rng.normal(size=(100, 3))
    return impl.split_arrays(
        "good",
        x,
        (x[:, 0] > 0).astype(np.int64),
        data_seed,
        val_fraction,
        test_fraction,
        "classification",
        2,
    )


def _failures(fast) -> dict[str, str]:
    return failed_checks(_bad_spec(fast))


def test_reference_dataset_passes() -> None:
    assert _failures(_good) == {}


def test_overlapping_splits_fail() -> None:
    def leaky(data_seed, val_fraction, test_fraction):
        s = _good(data_seed, val_fraction, test_fraction)
        return DatasetSplits(
            "bad", s.x_train, s.y_train, s.x_val, s.y_val, s.x_val, s.y_val, "classification", 2
        )

    failures = _failures(leaky)
    assert (
        "disjoint_splits" in failures
        and "appear in both val and test" in failures["disjoint_splits"]
    )


def test_unseeded_dataset_fails() -> None:
    counter = iter(range(1000))

    def unseeded(data_seed, val_fraction, test_fraction):
        return _good(next(counter), val_fraction, test_fraction)

    assert "data_seed=0 twice" in _failures(unseeded)["deterministic_data_seed"]

    def ignores_seed(data_seed, val_fraction, test_fraction):
        return _good(0, val_fraction, test_fraction)

    assert "data_seed=1 gave the same" in _failures(ignores_seed)["deterministic_data_seed"]


def test_wrong_labels_dtypes_and_sizes_fail() -> None:
    def out_of_range(data_seed, val_fraction, test_fraction):
        s = _good(data_seed, val_fraction, test_fraction)
        return DatasetSplits(
            "bad",
            s.x_train,
            s.y_train + 1,
            s.x_val,
            s.y_val,
            s.x_test,
            s.y_test,
            "classification",
            2,
        )

    assert "outside [0, 2)" in _failures(out_of_range)["dtypes_and_labels"]

    def float64(data_seed, val_fraction, test_fraction):
        s = _good(data_seed, val_fraction, test_fraction)
        return DatasetSplits(
            "bad",
            s.x_train.double(),
            s.y_train,
            s.x_val,
            s.y_val,
            s.x_test,
            s.y_test,
            "classification",
            2,
        )

    assert "expected float32" in _failures(float64)["dtypes_and_labels"]

    def ignores_fraction(data_seed, val_fraction, test_fraction):
        return _good(data_seed, 0.1, test_fraction)

    assert "val split has 10 samples, expected 20" in _failures(ignores_fraction)["split_sizes"]
