"""Conformance checks for dataset plugins.

Protocol: ``spec.create(data_seed, **hp)`` returns a :class:`techbench.techniques.families.DatasetSplits`
whose ``x_*`` are float32 with equal trailing shapes, ``y_*`` int64 class indices in
``[0, num_classes)`` (classification) or float (regression, ``num_classes == 0``); for task
"language_model" ``x_*`` and ``y_*`` are int64 token windows (N, T) with ids in
``[0, num_classes)``. A reference is not required. The declared properties the checks read
(see ``techbench_builtins.datasets``): ``task``, ``num_classes``, ``split`` ("fractions", or
"blocks" for contiguous blocks of a token stream: val/test are ``round(n * val_fraction)`` /
``round(n * test_fraction)`` of all n samples; "official_test": val is
``round(n_train_files * val_fraction)`` and test is the files' test set) and, for
``source == "files"``, ``file_format`` ("idx", "cifar10-python", "cifar100-python" or "text":
one ``input.txt``): the checks then write small files of that format in a temporary folder
(:func:`write_idx_dataset`, :func:`write_cifar10_batches`, :func:`write_cifar100_files`,
:func:`write_text`) and pass it as the ``root`` parameter.

Checks: the splits' dtypes and shapes; sizes as declared; disjoint splits (no sample of one split
repeated in another beyond 1% of the smaller split, which catches leaked or reused indices);
labels in range and the declared task/number of classes; the same ``data_seed`` gives identical
tensors and another seed gives a different split.
"""

from __future__ import annotations

import contextlib
import gzip
import pickle
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..techniques.spec import TechniqueSpec
from .core import Check, CheckFailure

FIXTURE_TRAIN = 60
FIXTURE_TEST = 20


def write_idx(path: str | Path, array: Any, *, compress: bool = False) -> Path:
    """Write a uint8 array as an IDX file (magic 0x00000800 + ndim, big-endian dims, bytes)."""
    import numpy as np

    a = np.ascontiguousarray(array, dtype=np.uint8)
    header = bytes([0, 0, 0x08, a.ndim]) + np.asarray(a.shape, dtype=">i4").tobytes()
    data = header + a.tobytes()
    path = Path(path)
    if compress:
        path = path.with_name(path.name + ".gz")
        data = gzip.compress(data)
    path.write_bytes(data)
    return path


def write_idx_dataset(
    root: str | Path,
    n_train: int = FIXTURE_TRAIN,
    n_test: int = FIXTURE_TEST,
    *,
    seed: int = 0,
    compress: bool = False,
) -> tuple[Any, Any, Any, Any]:
    """MNIST-layout files of random 28x28 images and labels; returns the four arrays written."""
    import numpy as np

    rng = np.random.default_rng(seed)
    root = Path(root)
    xs = rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8)
    ys = (np.arange(n_train) % 10).astype(np.uint8)
    xt = rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8)
    yt = (np.arange(n_test) % 10).astype(np.uint8)
    write_idx(root / "train-images-idx3-ubyte", xs, compress=compress)
    write_idx(root / "train-labels-idx1-ubyte", ys, compress=compress)
    write_idx(root / "t10k-images-idx3-ubyte", xt, compress=compress)
    write_idx(root / "t10k-labels-idx1-ubyte", yt, compress=compress)
    return xs, ys, xt, yt


def write_cifar10_batches(
    root: str | Path,
    per_batch: int = 12,
    n_test: int = FIXTURE_TEST,
    *,
    seed: int = 0,
    batches: int = 5,
) -> tuple[Any, Any, Any, Any]:
    """CIFAR-10 python batches (dicts of bytes keys, uint8 data (N, 3072), label lists)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    root = Path(root)
    xs, ys = [], []
    for b in range(1, batches + 1):
        data = rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, 10, per_batch)]
        with open(root / f"data_batch_{b}", "wb") as fh:
            pickle.dump(
                {b"batch_label": b"training", b"data": data, b"labels": labels}, fh, protocol=4
            )
        xs.append(data)
        ys += labels
    data = rng.integers(0, 256, (n_test, 3072), dtype=np.uint8)
    labels = [int(v) for v in rng.integers(0, 10, n_test)]
    with open(root / "test_batch", "wb") as fh:
        pickle.dump({b"batch_label": b"testing", b"data": data, b"labels": labels}, fh, protocol=4)
    return np.concatenate(xs), np.asarray(ys), data, np.asarray(labels)


def write_cifar100_files(
    root: str | Path, n_train: int = FIXTURE_TRAIN, n_test: int = FIXTURE_TEST, *, seed: int = 0
) -> tuple[Any, Any, Any, Any]:
    """CIFAR-100 python files ``train`` and ``test``: dicts of bytes keys, uint8 data (N, 3072),
    ``fine_labels`` in 0..99 and ``coarse_labels`` in 0..19 (lists of ints)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    root = Path(root)
    out = []
    for split, n in (("train", n_train), ("test", n_test)):
        data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        fine = [int(v) for v in rng.integers(0, 100, n)]
        blob = {
            b"batch_label": split.encode(),
            b"data": data,
            b"fine_labels": fine,
            b"coarse_labels": [f // 5 for f in fine],
        }
        with open(root / split, "wb") as fh:
            pickle.dump(blob, fh, protocol=4)
        out += [data, np.asarray(fine)]
    return out[0], out[1], out[2], out[3]


def write_text(path: str | Path, n_chars: int = 20_000, *, seed: int = 0) -> str:
    """A UTF-8 text file of seeded random words (lower-case letters, spaces, newlines)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    words = ["".join(rng.choice(letters, rng.integers(1, 9))) for _ in range(n_chars // 4)]
    text = "".join(w + ("\n" if i % 12 == 11 else " ") for i, w in enumerate(words))[:n_chars]
    Path(path).write_text(text, encoding="utf-8")
    return text


@contextlib.contextmanager
def _fixture_params(spec: TechniqueSpec) -> Iterator[dict[str, Any]]:
    props = spec.properties
    if props.get("source") != "files":
        yield {}
        return
    fmt = props.get("file_format")
    with tempfile.TemporaryDirectory(prefix="techbench-check-") as tmp:
        if fmt == "idx":
            write_idx_dataset(tmp)
        elif fmt == "cifar10-python":
            write_cifar10_batches(tmp)
        elif fmt == "cifar100-python":
            write_cifar100_files(tmp)
        elif fmt == "text":
            write_text(Path(tmp) / "input.txt")
        else:
            raise CheckFailure(
                f"{spec.qualified_name}: unknown file_format {fmt!r}; cannot write fixtures"
            )
        yield {"root": tmp}


def _load(spec: TechniqueSpec, seed: int, params: dict[str, Any]) -> Any:
    from ..techniques.families import DatasetSplits

    splits = spec.create(seed, **params)
    if not isinstance(splits, DatasetSplits):
        raise CheckFailure(
            f"{spec.qualified_name}: fast returned {type(splits).__name__}, not DatasetSplits"
        )
    return splits


_NAMES = ("train", "val", "test")


def _check_types(spec: TechniqueSpec, s: Any) -> None:
    import torch

    task = spec.properties.get("task", s.task)
    if s.task != task:
        raise CheckFailure(f"{spec.qualified_name}: task {s.task!r}, declared {task!r}")
    shape = None
    for name in _NAMES:
        x, y = getattr(s, f"x_{name}"), getattr(s, f"y_{name}")
        tokens = s.task == "language_model"
        want_x = torch.int64 if tokens else torch.float32
        if x.dtype != want_x:
            raise CheckFailure(
                f"{spec.qualified_name}: x_{name} has dtype {x.dtype}, expected "
                f"{str(want_x).removeprefix('torch.')}"
            )
        if tokens and (x.shape != y.shape or x.dim() != 2):
            raise CheckFailure(
                f"{spec.qualified_name}: {name} windows x {tuple(x.shape)} and targets "
                f"y {tuple(y.shape)} must both be (N, T)"
            )
        want = torch.int64 if s.task in ("classification", "language_model") else torch.float32
        if y.dtype != want:
            raise CheckFailure(
                f"{spec.qualified_name}: y_{name} has dtype {y.dtype}, expected {want}"
            )
        if len(x) != len(y) or len(x) == 0:
            raise CheckFailure(
                f"{spec.qualified_name}: {name} split has {len(x)} inputs and {len(y)} targets"
            )
        if shape is not None and tuple(x.shape[1:]) != shape:
            raise CheckFailure(
                f"{spec.qualified_name}: x_{name} sample shape {tuple(x.shape[1:])} != {shape}"
            )
        shape = tuple(x.shape[1:])
        if not bool(torch.isfinite(x).all()):
            raise CheckFailure(f"{spec.qualified_name}: x_{name} has non-finite values")
        if s.task != "regression" and len(y):
            both = torch.cat([x.reshape(-1), y.reshape(-1)]) if tokens else y
            lo, hi = int(both.min()), int(both.max())
            if lo < 0 or hi >= s.num_classes:
                raise CheckFailure(
                    f"{spec.qualified_name}: y_{name} labels span [{lo}, {hi}], outside [0, {s.num_classes})"
                )
    declared = spec.properties.get("num_classes")
    if declared is not None and s.num_classes != declared:
        raise CheckFailure(
            f"{spec.qualified_name}: num_classes {s.num_classes}, declared {declared}"
        )


def _check_sizes(spec: TechniqueSpec, s: Any, params: dict[str, Any]) -> None:
    hp = spec.hyperparams(params)
    sizes = {n: len(getattr(s, f"x_{n}")) for n in _NAMES}
    split = spec.properties.get("split")
    if split in ("fractions", "blocks"):
        total = sum(sizes.values())
        want = {
            "val": round(total * hp["val_fraction"]),
            "test": round(total * hp["test_fraction"]),
        }
    elif split == "official_test":
        pool = sizes["train"] + sizes["val"]
        want = {"val": round(pool * hp["val_fraction"])}
        if spec.properties.get("source") == "files":
            want["test"] = FIXTURE_TEST
    else:
        return
    for name, n in want.items():
        if abs(sizes[name] - n) > 1:
            raise CheckFailure(
                f"{spec.qualified_name}: {name} split has {sizes[name]} samples, expected {n} "
                f"(split {split!r}, sizes {sizes})"
            )


def _check_disjoint(spec: TechniqueSpec, s: Any) -> None:
    rows = {}
    for name in _NAMES:
        x = getattr(s, f"x_{name}").reshape(len(getattr(s, f"x_{name}")), -1).numpy()
        rows[name] = {r.tobytes() for r in x}
    for a, b in (("train", "val"), ("train", "test"), ("val", "test")):
        shared = len(rows[a] & rows[b])
        limit = 0.01 * min(len(rows[a]), len(rows[b]))
        if shared > limit:
            raise CheckFailure(
                f"{spec.qualified_name}: {shared} samples appear in both {a} and {b} "
                f"(allowed {limit:.0f}); the splits are not disjoint"
            )


def _check_determinism(spec: TechniqueSpec, first: Any, again: Any, other: Any) -> None:
    import torch

    for name in _NAMES:
        for part in ("x", "y"):
            a, b = getattr(first, f"{part}_{name}"), getattr(again, f"{part}_{name}")
            if a.shape != b.shape or not torch.equal(a, b):
                raise CheckFailure(
                    f"{spec.qualified_name}: data_seed=0 twice gave different {part}_{name}"
                )
    if first.x_train.shape == other.x_train.shape and torch.equal(first.x_train, other.x_train):
        raise CheckFailure(
            f"{spec.qualified_name}: data_seed=1 gave the same x_train as data_seed=0"
        )


_cache: list[Any] = []


def _loads(spec: TechniqueSpec) -> tuple[Any, Any, Any, dict[str, Any]]:
    """(seed 0, seed 0 again, seed 1, params), loaded once per spec (the last spec is kept).

    The cache holds the spec itself and matches by identity, so a new spec can never be served
    an older one's loads.
    """
    if not _cache or _cache[0] is not spec:
        _cache.clear()
        with _fixture_params(spec) as params:
            loads = (_load(spec, 0, params), _load(spec, 0, params), _load(spec, 1, params))
        _cache.extend([spec, (*loads, params)])
    return _cache[1]


def checks(spec: TechniqueSpec) -> list[Check]:
    """Dtypes and labels, split sizes, disjointness, determinism under ``data_seed``."""
    return [
        Check("dtypes_and_labels", lambda sp: _check_types(sp, _loads(sp)[0])),
        Check("split_sizes", lambda sp: _check_sizes(sp, _loads(sp)[0], _loads(sp)[3])),
        Check("disjoint_splits", lambda sp: _check_disjoint(sp, _loads(sp)[0])),
        Check("deterministic_data_seed", lambda sp: _check_determinism(sp, *_loads(sp)[:3])),
    ]
