"""Synthetic results stores, written through the package's own store writer.

Each trial is a :class:`techbench.schema.TrialOutcome` (id from :func:`techbench.schema.trial_id`,
rows from :func:`techbench.schema.metric_row`) stored by :meth:`techbench.store.ResultStore.write`,
so the files the report tests read are exactly what the runner writes. Accuracy curves rise
towards a per-technique ceiling, so tests and the scale benchmark have known differences to find.
"""

from __future__ import annotations

import copy
import itertools
import math
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from techbench.schema import DEFAULT_CONFIG, TrialMeta, TrialOutcome, metric_row, trial_id
from techbench.store import ResultStore

Rows = list[dict[str, Any]]
HEALTH_LAYER = (
    "grad_norm",
    "weight_norm",
    "update_ratio",
    "dist_from_init",
    "act_mean",
    "act_std",
    "dead_fraction",
    "saturated_fraction",
)


def make_config(**axes: Any) -> dict[str, Any]:
    """A full config; ``activation="tanh"`` or ``optimizer=("sgd", {"lr": 0.1})``, ``seed=3``."""
    config = copy.deepcopy(DEFAULT_CONFIG)
    for key, value in axes.items():
        if key not in config:
            raise KeyError(key)
        if isinstance(config[key], dict) and "name" in config[key]:
            name, params = value if isinstance(value, tuple) else (value, {})
            config[key] = {"name": name, "params": dict(params)}
        elif isinstance(config[key], dict):
            config[key] = {**config[key], **value}
        else:
            config[key] = value
    return config


def synthetic_metrics(
    config: Mapping[str, Any],
    *,
    ceiling: float,
    status: str = "completed",
    steps_per_epoch: int = 12,
    n_layers: int = 3,
    noise: float = 0.01,
    stop_epoch: int | None = None,
) -> Rows:
    """Metric rows for one trial: accuracy rises to ``ceiling`` with seeded noise."""
    rng = np.random.default_rng(int(trial_id(config), 16) % 2**32)
    epochs = int(config["budget"]["epochs"])
    every = int(config["health"]["every_n_steps"])
    if status != "completed":
        epochs = max(0, stop_epoch if stop_epoch is not None else epochs // 2)
    rows: Rows = []

    def add(step: int, epoch: int, split: str, metric: str, layer: str, value: float) -> None:
        rows.append(metric_row(step, epoch, split, metric, float(value), layer))

    n_steps = epochs * steps_per_epoch
    for step in range(n_steps):
        add(step, step // steps_per_epoch, "train", "loss", "", 2.3 * math.exp(-step / 40) + 0.05)
    for step in range(0, n_steps + 1, every):
        epoch = min(step // steps_per_epoch, max(epochs - 1, 0))
        for layer in range(n_layers):
            g = 0.5 * (0.6**layer) * (1 + 0.1 * rng.standard_normal())
            vals = (g, 3.0, 1e-3, 0.1 * step / (n_steps + 1), 0.0, 1.0 / (1 + layer), 0.1, 0.02)
            for metric, v in zip(HEALTH_LAYER, vals, strict=True):
                add(step, epoch, "health", metric, str(layer), v)
        glob = 0.6 * (1 + 0.1 * rng.standard_normal())
        add(step, epoch, "health", "grad_norm_global", "", glob)
        add(step, epoch, "health", "nonfinite_grads", "", 0.0)
        add(step, epoch, "health", "grad_ratio_first_last", "", 0.5 / 0.18)
    seconds = 0.0
    for epoch in range(epochs):
        step = (epoch + 1) * steps_per_epoch
        acc = ceiling - (ceiling - 0.1) * math.exp(-(epoch + 1) / 2.0)
        acc = min(1.0, acc + noise * rng.standard_normal())
        loss = -math.log(max(acc, 1e-3))
        seconds += 0.5 + 0.05 * rng.random()
        add(step, epoch, "train", "epoch_loss", "", loss * 0.8)
        add(step, epoch, "train", "epoch_acc", "", min(1.0, acc + 0.03))
        add(step, epoch, "val", "loss", "", loss)
        add(step, epoch, "val", "acc", "", acc)
        add(step, epoch, "time", "seconds", "", seconds)
    if status == "completed" and epochs:
        for metric, v in (("loss", loss), ("acc", acc), ("best_loss", loss), ("best_acc", acc)):
            add(n_steps, epochs - 1, "test", metric, "", v)
    return rows


def write_trial(
    out: str | os.PathLike[str],
    config: Mapping[str, Any],
    rows: Iterable[Mapping[str, Any]],
    *,
    status: str = "completed",
    matrix: str = "synthetic",
    meta: Mapping[str, Any] | None = None,
) -> str:
    """Store one trial through :meth:`ResultStore.write` and return its id."""
    rows = [dict(r) for r in rows]
    record = {
        "started_at": "2026-01-01T00:00:00+00:00",
        "finished_at": "2026-01-01T00:00:05+00:00",
        "wall_seconds": 5.0,
        "train_seconds": 4.5,
        "device": "cpu",
        "versions": {"techbench": "0.1.0", "torch": "2.13", "pytorch_lightning": "2.6"},
        "diverged_step": 30 if status == "diverged" else None,
        "error": "Traceback: boom" if status == "failed" else None,
        "steps": max((int(r["step"]) for r in rows), default=0),
        "epochs": int(config["budget"]["epochs"]),
        "num_parameters": 1000,
        **(meta or {}),
    }
    outcome = TrialOutcome.from_value(
        {
            "trial_id": trial_id(config),
            "config": dict(config),
            "status": status,
            "metrics": rows,
            "meta": TrialMeta.from_dict(record),
        }
    )
    ResultStore(out).write(outcome, matrix_name=matrix)
    return outcome.trial_id


def write_store(
    out: str | os.PathLike[str],
    *,
    axes: Mapping[str, Iterable[Any]] | None = None,
    datasets: Iterable[str] = ("digits",),
    seeds: Iterable[int] = range(5),
    ceilings: Mapping[str, float] | None = None,
    statuses: Mapping[tuple[str, int], str] | None = None,
    epochs: int = 8,
    meta: Mapping[str, Any] | None = None,
    **kwargs: Any,
) -> list[str]:
    """Cross ``axes`` x datasets x seeds. The ceiling of a trial is the sum of
    ``ceilings[value]`` over its axis values (default 0) plus 0.8. ``statuses`` maps
    ``(technique value, seed)`` to "diverged"/"failed"."""
    axes = dict(axes or {"activation": ["relu", "tanh"]})
    ceilings = dict(ceilings or {})
    statuses = dict(statuses or {})
    names = list(axes)
    ids = []
    for dataset, combo, seed in itertools.product(
        list(datasets), itertools.product(*(axes[n] for n in names)), list(seeds)
    ):
        chosen = dict(zip(names, combo, strict=True))
        config = make_config(dataset=dataset, seed=seed, **chosen)
        config["budget"]["epochs"] = epochs
        labels = [v[0] if isinstance(v, tuple) else v for v in combo]
        ceiling = 0.8 + sum(ceilings.get(str(v), 0.0) for v in labels)
        status = "completed"
        for v in labels:
            status = statuses.get((str(v), seed), status)
        rows = synthetic_metrics(config, ceiling=min(ceiling, 0.999), status=status, **kwargs)
        ids.append(write_trial(out, config, rows, status=status, meta=meta))
    matrix = {"name": "synthetic", "axes": {k: [str(v) for v in vs] for k, vs in axes.items()}}
    matrix["n_trials"] = len(ids)
    ResultStore(out).write_matrix(matrix)
    return ids


def table_from_rows(rows: Iterable[Mapping[str, Any]]) -> Rows:
    """Metric rows (:func:`metric_row`) from hand-written dicts (``layer`` defaults to "")."""
    return [
        metric_row(r["step"], r["epoch"], r["split"], r["metric"], r["value"], r.get("layer", ""))
        for r in rows
    ]


def epoch_rows(
    val_acc: Iterable[float],
    *,
    steps_per_epoch: int = 10,
    seconds_per_epoch: float = 2.0,
    train_loss: Iterable[float] | None = None,
    val_loss: Iterable[float] | None = None,
    train_acc: Iterable[float] | None = None,
) -> list[dict[str, Any]]:
    """Per-epoch rows (epochs counted from 0, as Lightning does) for hand-made curves."""
    va = list(val_acc)
    n = len(va)
    tl = list(train_loss) if train_loss is not None else [0.5] * n
    vl = list(val_loss) if val_loss is not None else [1.0] * n
    ta = list(train_acc) if train_acc is not None else [1.0] * n
    rows: list[dict[str, Any]] = []
    for e in range(n):
        step = (e + 1) * steps_per_epoch
        for split, metric, v in (
            ("time", "seconds", seconds_per_epoch * (e + 1)),
            ("train", "epoch_loss", tl[e]),
            ("val", "loss", vl[e]),
            ("train", "epoch_acc", ta[e]),
            ("val", "acc", va[e]),
        ):
            rows.append({"step": step, "epoch": e, "split": split, "metric": metric, "value": v})
    return rows


def rewrite_metrics(path: str | os.PathLike[str], frame: Any) -> None:
    """Replace a stored trial's ``metrics.parquet`` on purpose (a test's deliberate edit, not
    damage): the new file's size and digest go into its ``meta.json`` (sealed again), so the
    store's integrity check accepts it."""
    import json
    from pathlib import Path

    import pyarrow as pa
    import pyarrow.parquet as pq

    from techbench.store import file_digest, seal_meta

    path = Path(path)
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), path)
    meta_path = path.parent / "meta.json"
    meta = json.loads(meta_path.read_text())
    meta["metrics_bytes"], meta["metrics_sha256"] = file_digest(path)
    meta_path.write_text(json.dumps(seal_meta(meta)))


def chromium() -> str | None:
    """Debian's headless Chromium, when installed (``scripts/install.sh --test``)."""
    import shutil

    return shutil.which("chromium") or shutil.which("chromium-browser")


def screenshot(page: Path, png: Path, width: int, height: int, timeout: float) -> None:
    """A ``width`` x ``height`` PNG of ``page`` from headless Chromium, with the flags that keep
    it off the network (this machine's closed network refuses its background connections)."""
    import subprocess
    import tempfile

    with tempfile.TemporaryDirectory() as profile:
        subprocess.run(
            [
                str(chromium()), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                "--no-first-run", "--disable-background-networking", "--disable-component-update",
                "--disable-sync", f"--user-data-dir={profile}", f"--screenshot={png}",
                f"--window-size={width},{height}", page.resolve().as_uri(),
            ],
            check=True, capture_output=True, timeout=timeout,
        )  # fmt: skip
