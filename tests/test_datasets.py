"""Built-in datasets against independent sources (scikit-learn, the generating formulas, the files
the tests write) and the dataset conformance checks, including plugins that must fail them."""

from __future__ import annotations

import io
import os
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from techbench.techniques.families import DatasetSplits
from techbench.techniques.registry import get_spec
from techbench.techniques.spec import Param, TechniqueSpec
from techbench.testing import checks_for, failed_checks
from techbench.testing.dataset import (
    write_cifar10_batches,
    write_cifar100_files,
    write_idx,
    write_idx_dataset,
)
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
    "cifar100",
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
    monkeypatch.setenv("TECHBENCH_DATA", str(tmp_path / "empty-cache"))
    with pytest.raises(impl.DatasetFilesMissing, match="TECHBENCH_MNIST_DIR") as exc:
        spec.create(0)
    assert "techbench data fetch mnist" in str(exc.value)
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


def test_cifar100_reads_fine_labels(tmp_path) -> None:
    sub = tmp_path / "cifar-100-python"
    sub.mkdir()
    xs, ys, xt, yt = write_cifar100_files(sub, n_train=50, n_test=9)
    s = get_spec("cifar100", "dataset").create(0, root=str(tmp_path), val_fraction=0.2)
    assert s.num_classes == 100 and s.input_shape == (3, 32, 32)
    assert (len(s.x_train), len(s.x_val), len(s.x_test)) == (40, 10, 9)
    assert torch.equal(
        s.x_test, torch.from_numpy(xt.reshape(-1, 3, 32, 32).astype(np.float32) / 255)
    )
    assert s.y_test.tolist() == yt.tolist()
    assert sorted(s.y_train.tolist() + s.y_val.tolist()) == sorted(ys.tolist())
    assert _rows(s.x_train.numpy(), s.x_val.numpy()) == _rows(
        xs.reshape(-1, 3, 32, 32).astype(np.float32) / 255
    )


def _tar_folder(folder: Path, archive: Path) -> Path:
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folder, arcname=folder.name)
    return archive


@pytest.mark.parametrize(
    ("name", "top", "archive"),
    [
        ("cifar10", "cifar-10-batches-py", "cifar-10-python.tar.gz"),
        ("cifar100", "cifar-100-python", "cifar-100-python.tar.gz"),
    ],
)
def test_cifar_reads_the_published_tarball_put_there_by_hand(tmp_path, name, top, archive) -> None:
    src = tmp_path / "src" / top
    src.mkdir(parents=True)
    if name == "cifar10":
        _, _, xt, yt = write_cifar10_batches(src, per_batch=6, n_test=5)
    else:
        _, _, xt, yt = write_cifar100_files(src, n_train=30, n_test=5)
    root = tmp_path / "root"
    root.mkdir()
    _tar_folder(src, root / archive)
    s = get_spec(name, "dataset").create(0, root=str(root))
    assert torch.equal(
        s.x_test, torch.from_numpy(xt.reshape(-1, 3, 32, 32).astype(np.float32) / 255)
    )
    assert s.y_test.tolist() == yt.tolist()
    # a truncated tarball: one line naming it
    blob = (root / archive).read_bytes()
    (root / archive).write_bytes(blob[: len(blob) // 2])
    _bad_file(
        lambda: get_spec(name, "dataset").create(0, root=str(root)), root / archive, "truncated"
    )


# ---------------------------------------------------------------- malformed files


def _bad_file(load, path: Path, what: str) -> str:
    """``load()`` raises DatasetFileError: one line, starting with ``path``, containing ``what``."""
    with pytest.raises(impl.DatasetFileError) as exc:
        load()
    msg = str(exc.value)
    assert "\n" not in msg and msg.startswith(str(path)), msg
    assert what in msg, msg
    return msg


def _mnist_dir(tmp_path: Path, **replace: np.ndarray) -> Path:
    """MNIST files of 60 train / 20 test samples, with some arrays replaced."""
    root = tmp_path / "mnist"
    root.mkdir(parents=True)
    rng = np.random.default_rng(0)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (60, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": (np.arange(60) % 10).astype(np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (20, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": (np.arange(20) % 10).astype(np.uint8),
    }
    arrays.update({k.replace("_", "-"): v for k, v in replace.items()})
    for stem, a in arrays.items():
        write_idx(root / stem, a)
    return root


def _mnist(root: Path):
    return lambda: get_spec("mnist", "dataset").create(0, root=str(root))


def test_truncated_gzip_names_the_file(tmp_path) -> None:
    root = tmp_path / "m"
    root.mkdir()
    write_idx_dataset(root, compress=True)
    gz = root / "train-images-idx3-ubyte.gz"
    gz.write_bytes(gz.read_bytes()[:-200])
    _bad_file(_mnist(root), gz, "truncated or corrupt gzip")
    gz.write_bytes(b"\x1f\x8b" + b"\x00" * 40)
    _bad_file(_mnist(root), gz, "truncated or corrupt gzip")


def test_idx_header_and_size_errors(tmp_path) -> None:
    f = tmp_path / "f"
    f.write_bytes(b"\x00\x00\x08\x03\x00\x00")
    _bad_file(lambda: impl.read_idx(f), f, "truncated IDX header")
    write_idx(f, np.zeros((2, 3), np.uint8))
    f.write_bytes(f.read_bytes() + b"\x00\x00")
    _bad_file(lambda: impl.read_idx(f), f, "2 bytes after the data")
    f.write_bytes(b"PK\x03\x04" + b"\x00" * 20)
    _bad_file(lambda: impl.read_idx(f), f, "bad magic number 504b0304")


def test_20x20_images_are_not_mnist(tmp_path) -> None:
    root = _mnist_dir(tmp_path, train_images_idx3_ubyte=np.zeros((60, 20, 20), np.uint8))
    msg = _bad_file(_mnist(root), root / "train-images-idx3-ubyte", "expected 28x28 for mnist")
    assert "(20, 20)" in msg


def test_swapped_image_and_label_files(tmp_path) -> None:
    rng = np.random.default_rng(0)
    root = _mnist_dir(
        tmp_path,
        train_images_idx3_ubyte=(np.arange(60) % 10).astype(np.uint8),
        train_labels_idx1_ubyte=rng.integers(0, 256, (60, 28, 28), dtype=np.uint8),
    )
    _bad_file(_mnist(root), root / "train-images-idx3-ubyte", "swapped")
    # only the label file wrong: named as such
    root2 = _mnist_dir(tmp_path / "b", t10k_labels_idx1_ubyte=np.zeros((20, 28, 28), np.uint8))
    _bad_file(_mnist(root2), root2 / "t10k-labels-idx1-ubyte", "not labels")


def test_labels_out_of_range(tmp_path) -> None:
    labels = (np.arange(60) % 10).astype(np.uint8)
    labels[5] = 12
    root = _mnist_dir(tmp_path, train_labels_idx1_ubyte=labels)
    _bad_file(_mnist(root), root / "train-labels-idx1-ubyte", "label 12 outside 0..9")


def test_image_and_label_counts_must_match(tmp_path) -> None:
    root = _mnist_dir(tmp_path, t10k_labels_idx1_ubyte=(np.arange(19) % 10).astype(np.uint8))
    msg = _bad_file(_mnist(root), root / "t10k-images-idx3-ubyte", "20 images but")
    assert str(root / "t10k-labels-idx1-ubyte") in msg and "19 labels" in msg


def test_idx_dtypes(tmp_path) -> None:
    root = _mnist_dir(tmp_path)
    lab = root / "train-labels-idx1-ubyte"
    lab.write_bytes(
        bytes([0, 0, 0x0C, 1]) + np.asarray([60], ">i4").tobytes() + np.zeros(60, ">i4").tobytes()
    )
    _bad_file(_mnist(root), lab, "expected uint8")
    img = root / "t10k-images-idx3-ubyte"
    img.write_bytes(
        bytes([0, 0, 0x0D, 3])
        + np.asarray([20, 28, 28], ">i4").tobytes()
        + np.zeros(20 * 28 * 28, ">f4").tobytes()
    )
    write_idx(lab, (np.arange(60) % 10).astype(np.uint8))
    _bad_file(_mnist(root), img, "pixels are >f4, expected uint8")


def _cifar_file(path: Path, **blob) -> Path:
    with open(path, "wb") as fh:
        pickle.dump({k.encode(): v for k, v in blob.items()}, fh, protocol=4)
    return path


def test_cifar_batch_errors_name_the_file(tmp_path) -> None:
    ok = np.zeros((4, 3072), np.uint8)
    f = tmp_path / "data_batch_1"
    _cifar_file(f, data=ok, labels=[0, 1, 12, 3])
    _bad_file(lambda: impl.read_cifar_batch(f), f, "label 12 outside 0..9")
    _cifar_file(f, data=np.zeros((4, 1024), np.uint8), labels=[0, 1, 2, 3])
    _bad_file(lambda: impl.read_cifar_batch(f), f, "expected (N, 3072)")
    _cifar_file(f, data=ok.astype(np.float32), labels=[0, 1, 2, 3])
    _bad_file(lambda: impl.read_cifar_batch(f), f, "pixels are float32, expected uint8")
    _cifar_file(f, data=ok, labels=[0, 1, 2])
    _bad_file(lambda: impl.read_cifar_batch(f), f, "4 images but 3 labels")
    _cifar_file(f, data=ok, fine_labels=[0, 1, 2, 3])
    _bad_file(lambda: impl.read_cifar_batch(f), f, "'fine_labels' suggests the other CIFAR")
    _cifar_file(f, data=ok, fine_labels=[0, 1, 99, 100])
    _bad_file(lambda: impl.read_cifar_batch(f, "fine_labels", 100), f, "label 100 outside 0..99")
    _cifar_file(f, data=ok, labels=[0, 1, 2, 3])
    f.write_bytes(f.read_bytes()[:-50])
    _bad_file(lambda: impl.read_cifar_batch(f), f, "not a readable CIFAR python batch")


def test_malformed_cifar_files_in_a_dataset_name_the_file(tmp_path) -> None:
    write_cifar100_files(tmp_path, n_train=10, n_test=4)
    bad = _cifar_file(
        tmp_path / "test", data=np.zeros((4, 3072), np.uint8), fine_labels=[1, 2, 3, 400]
    )
    _bad_file(
        lambda: get_spec("cifar100", "dataset").create(0, root=str(tmp_path)),
        bad,
        "label 400 outside 0..99",
    )


def test_a_failed_trial_records_the_one_line_naming_the_file(tmp_path) -> None:
    from techbench.engine.trial import run_trial

    root = _mnist_dir(tmp_path, train_images_idx3_ubyte=np.zeros((60, 20, 20), np.uint8))
    outcome = run_trial(
        {"dataset": {"name": "mnist", "params": {"root": str(root)}}, "model": "mlp"}
    )
    assert outcome.status == "failed"
    last = (outcome.meta.error or "").strip().splitlines()[-1]
    assert last.startswith("techbench.data.DatasetFileError: ")
    assert str(root / "train-images-idx3-ubyte") in last and "28x28" in last


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def test_restricted_unpickler_refuses_code(tmp_path) -> None:
    payload = pickle.dumps({b"data": _Evil(), b"labels": [1]}, protocol=2)
    (tmp_path / "data_batch_1").write_bytes(payload)
    with pytest.raises(pickle.UnpicklingError, match="refusing to load"):
        impl.read_cifar_batch(tmp_path / "data_batch_1")
    _bad_file(
        lambda: impl.read_cifar_batch(tmp_path / "data_batch_1"),
        tmp_path / "data_batch_1",
        "refusing to load posix.system",
    )
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
