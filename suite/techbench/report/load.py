"""Read a results store in bulk: one row per trial, plus the metric rows the report needs.

Layout (see the runner schema): ``OUT/trials/<trial_id>/meta.json`` and
``OUT/trials/<trial_id>/metrics.parquet``. The parquet files are read as one
``pyarrow.dataset`` (the trial id comes from the folder name), string columns stay
dictionary-encoded (pandas categoricals), and the per-step training loss is filtered out at
read time because no report table or figure uses it: this keeps a 10,000-trial store well
under a gigabyte.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pandas as pd

from ..spec import format_technique_arg
from ..store import FAMILY_AXES

#: Config keys holding ``{"name", "params"}`` techniques, in display order.
TECHNIQUE_AXES = FAMILY_AXES
#: Axes that may be compared (``dataset`` is the blocking factor, never a "technique").
COMPARE_AXES = (*TECHNIQUE_AXES[1:], "norm_placement", "lr")
_SCHEMA_FIELDS = (
    ("step", "int64"),
    ("epoch", "int64"),
    ("split", "string"),
    ("metric", "string"),
    ("layer", "string"),
    ("value", "float64"),
)
_BATCH = 1024
META_SCALARS = (
    "wall_seconds",
    "train_seconds",
    "device",
    "diverged_step",
    "error",
    "steps",
    "num_parameters",
    "health_overhead",
)


def _flatten(meta: dict[str, Any]) -> dict[str, Any]:
    config = meta.get("config") or {}
    row: dict[str, Any] = {
        "trial_id": meta.get("trial_id"),
        "status": meta.get("status", "failed"),
        "matrix": meta.get("matrix"),
    }
    for axis in TECHNIQUE_AXES:
        tech = config.get(axis) or {}
        if isinstance(tech, str):
            row[axis] = tech
        else:
            row[axis] = format_technique_arg(str(tech.get("name", "?")), tech.get("params") or {})
    opt_params = (config.get("optimizer") or {}).get("params") or {}
    row["lr"] = opt_params.get("lr")
    row["norm_placement"] = config.get("norm_placement", "before")
    row["seed"] = config.get("seed", 0)
    row["data_seed"] = config.get("data_seed", 0)
    budget = config.get("budget") or {}
    row["epochs"] = budget.get("epochs")
    target = config.get("target") or {}
    row["target_metric"] = target.get("metric", "val_acc")
    row["target_value"] = target.get("value")
    row["target_mode"] = target.get("mode", "max")
    for key in META_SCALARS:
        row[key] = meta.get(key)
    versions = meta.get("versions")
    row["versions"] = json.dumps(versions, sort_keys=True) if versions else None
    return row


def _read_meta(path: str) -> dict[str, Any] | None:
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except (OSError, ValueError):
        return None


def load_trials(results_dir: str | os.PathLike[str]) -> pd.DataFrame:
    """One row per stored trial: formatted technique per axis, seeds, target, meta scalars."""
    trials_dir = Path(results_dir) / "trials"
    if not trials_dir.is_dir():
        raise FileNotFoundError(f"{results_dir} has no trials/ folder: not a techbench store")
    try:
        from ..store import ResultStore

        names = ResultStore(results_dir).trial_ids()
    except ImportError:  # the store module is optional for reading
        names = sorted(os.listdir(trials_dir))
    paths = [os.path.join(trials_dir, name, "meta.json") for name in names]
    with ThreadPoolExecutor(max_workers=8) as pool:
        metas = list(pool.map(_read_meta, paths, chunksize=256))
    rows = []
    for path, meta in zip(paths, metas, strict=True):
        if meta is None:
            continue
        meta.setdefault("trial_id", os.path.basename(os.path.dirname(path)))
        rows.append(_flatten(meta))
    trials = pd.DataFrame(rows)
    if trials.empty:
        return trials
    trials["target_metric"] = trials["target_metric"].astype(str)
    trials["lr"] = trials["lr"].map(lambda v: "" if v is None or v != v else repr(v))
    return trials


def _read_parquet(path: str) -> Any:
    import pyarrow.parquet as pq

    try:
        return pq.ParquetFile(path).read(use_threads=False)
    except (OSError, ValueError):
        return None


def load_metrics(
    results_dir: str | os.PathLike[str],
    trial_ids: Iterable[str],
    *,
    keep_step_loss: bool = False,
) -> pd.DataFrame:
    """Concatenated metric rows with a ``trial_id`` column (categoricals for the strings).

    Files are read whole by a small thread pool (per-file scan machinery costs more than the
    read for files this small), then filtered and dictionary-encoded once, in bulk.
    """
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    trials_dir = os.path.join(os.fspath(results_dir), "trials")
    ids = list(trial_ids)
    schema = pa.schema([(n, getattr(pa, t)()) for n, t in _SCHEMA_FIELDS])
    columns = schema.names

    def batch(lo: int, pool: ThreadPoolExecutor) -> Any:
        names = ids[lo : lo + _BATCH]
        files = [os.path.join(trials_dir, t, "metrics.parquet") for t in names]
        tables, owners = [], []
        for i, table in enumerate(pool.map(_read_parquet, files)):
            if table is None or table.num_rows == 0:
                continue
            tables.append(table.select(columns).cast(schema))
            owners.append(np.full(table.num_rows, i, dtype=np.int32))
        if not tables:
            return None
        table = pa.concat_tables(tables).combine_chunks()
        trial = pa.DictionaryArray.from_arrays(np.concatenate(owners), pa.array(names, pa.string()))
        table = table.add_column(0, "trial_id", trial)
        if not keep_step_loss:
            split, metric = table.column("split"), table.column("metric")
            step_loss = pc.and_(pc.equal(split, "train"), pc.equal(metric, "loss"))
            table = table.filter(pc.invert(step_loss))
        for name in ("split", "metric", "layer"):
            i = table.schema.get_field_index(name)
            table = table.set_column(i, name, table.column(i).dictionary_encode())
        return table

    # Batches keep the transient arrow memory bounded; only the compact result accumulates.
    with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
        parts = [batch(lo, pool) for lo in range(0, len(ids), _BATCH)]
    parts = [p for p in parts if p is not None]
    if not parts:
        frame = pd.DataFrame({c: pd.Series(dtype="float64") for c in ["trial_id", *columns]})
        return frame.astype({"trial_id": "category", "split": "category", "metric": "category"})
    table = pa.concat_tables(parts).unify_dictionaries().combine_chunks()
    return table.to_pandas()


def load_store(results_dir: str | os.PathLike[str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``(trials, metrics)`` for the report; metrics omit the per-step training loss."""
    trials = load_trials(results_dir)
    ids = trials["trial_id"].tolist() if not trials.empty else []
    return trials, load_metrics(results_dir, ids)


def load_matrix(results_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """The informational ``matrix.json`` (empty dict when absent or unreadable)."""
    return _read_meta(os.path.join(os.fspath(results_dir), "matrix.json")) or {}
