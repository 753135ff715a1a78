"""Reading a results store in bulk: the one loader of trials and metric rows into frames.

Why a module of its own: :mod:`techbench.store` writes one trial or one unit of work at a time
under claims, while a report reads everything at once, where the cost is files and JSON parsing
(at 100,000 trials: 100,000 ``meta.json`` files and a few thousand batch files). So the loaders
scan the trial folders in chunks (by two forked processes for large stores), keep only each
meta's flattened row and where its rows are, read and hash each batch file once for all its
members, and never score a trial whose file fails its recorded size or digest (it is listed in
``frame.attrs["corrupt"]``). The layout and the integrity policy are :mod:`techbench.store`'s.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Collection, Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from ..schema import AXIS_FAMILY, DEFAULT_CONFIG, META_FIELDS
from ..techniques.provenance import plugin_sources
from .writer import (
    BATCHES_DIR,
    META_FILE,
    METRICS_FILE,
    batch_location,
    digest_problem,
    load_meta,
    meta_problem,
    metrics_table,
    parse_metrics,
)

if TYPE_CHECKING:
    import pandas as pd


_BATCH = 1024


def _read_json(path: str) -> dict[str, Any] | None:
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _flatten(meta: Mapping[str, Any]) -> dict[str, Any]:
    """One row of the trials frame from a stored ``meta.json``."""
    from ..techniques.spec import format_technique_arg

    config = meta.get("config") or {}
    row: dict[str, Any] = {
        "trial_id": meta.get("trial_id"),
        "status": meta.get("status", "failed"),
        "matrix": meta.get("matrix"),
    }
    for axis in AXIS_FAMILY:  # an axis newer than the store's writer held its default
        tech = config.get(axis) or DEFAULT_CONFIG[axis]
        if isinstance(tech, str):
            row[axis] = tech
        else:
            row[axis] = format_technique_arg(str(tech.get("name", "?")), tech.get("params") or {})
    optimizer = config.get("optimizer") or {}
    row["lr"] = (
        (optimizer.get("params") or {}).get("lr") if isinstance(optimizer, Mapping) else None
    )
    for key in ("norm_placement", "seed", "data_seed"):  # stored configs are complete
        row[key] = config.get(key)
    budget = config.get("budget") or {}
    for key in ("epochs", "max_steps", "batch_size"):
        row[key] = budget.get(key)
    target = config.get("target") or {}
    for key in ("metric", "value", "mode"):
        row[f"target_{key}"] = target.get(key)
    for key in META_FIELDS:
        row["epochs_run" if key == "epochs" else key] = meta.get(key)
    for key in ("versions", "techniques", "data_info"):  # mappings as JSON text
        value = meta.get(key)
        row[key] = json.dumps(value, sort_keys=True) if value else None
    plugins = plugin_sources(meta)
    row["plugins"] = json.dumps(plugins) if plugins else None
    row["config"] = json.dumps(config, sort_keys=True)
    return row


TRIAL_COLUMNS: tuple[str, ...] = tuple(_flatten({"trial_id": ""}))
"""The columns of :func:`load_trials`' frame, in order."""


_LOCATION_KEYS = ("trial_id", "batch", "metrics_bytes", "metrics_sha256")
"""What the metric loaders need of a trial's meta (the rest is flattened and let go)."""


_SCAN_PROCESSES = 4096
"""From this many trials on, metas are parsed by a pool of processes (JSON parsing holds the
GIL, so threads only overlap the file reads); below it, process start-up costs more."""


def _scan_chunk(store: str, chunk: list[str]) -> list[tuple[str, Any, Any, str | None]]:
    """``(name, flattened row, location, problem)`` of each trial folder in ``chunk``."""
    root = os.path.join(store, "trials")
    sizes: dict[str, int | OSError] = {}
    found: list[tuple[str, Any, Any, str | None]] = []
    for name in chunk:
        folder = os.path.join(root, name)
        meta, why = load_meta(os.path.join(folder, META_FILE))
        if meta is None:
            if why == "meta.json is missing" and not os.path.exists(folder):
                continue
            found.append((name, None, None, why))
            continue
        path: str | None = os.path.join(folder, METRICS_FILE)
        label = METRICS_FILE
        if meta.get("batch") is not None:
            path, label = batch_location(store, meta["batch"])
        why = meta_problem(name, meta, path, label, sizes)
        if why is not None:
            found.append((name, None, None, why))
            continue
        where = {k: meta.get(k) for k in _LOCATION_KEYS}
        found.append((name, _flatten(meta), where, None))
    return found


def _map_scan(
    store: str, chunks: list[list[str]]
) -> Iterator[list[tuple[str, Any, Any, str | None]]]:
    """:func:`_scan_chunk` over ``chunks``, in order: by two forked processes for large stores
    (threads where a process cannot fork, e.g. a daemonic worker), else by two threads."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    jobs = [store] * len(chunks)
    if (
        sum(map(len, chunks)) >= _SCAN_PROCESSES
        and "fork" in multiprocessing.get_all_start_methods()
    ):
        try:
            pool: Any = ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("fork"))
            with pool:
                yield from pool.map(_scan_chunk, jobs, chunks)
            return
        except (OSError, AssertionError):
            pass
    with ThreadPoolExecutor(max_workers=2) as threads:
        yield from threads.map(_scan_chunk, jobs, chunks)


def _scan_trials(
    out: str | os.PathLike[str],
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], dict[str, str]]:
    """``(trials-frame rows, locations, {trial_id: problem})``: each sound-looking trial's meta
    flattened (:func:`_flatten`) and its :data:`_LOCATION_KEYS`, in trial-id order; corrupt
    ones with their problem (no digests). A whole meta is kept only while it is flattened (at
    100,000 trials the parsed metas would take about a gigabyte), and the folders are read in
    chunks by two workers (:func:`_map_scan`)."""
    root = os.path.join(os.fspath(out), "trials")
    try:
        names = sorted(p.name for p in os.scandir(root) if p.is_dir())
    except FileNotFoundError:
        return [], [], {}
    chunks = [names[i : i + 512] for i in range(0, len(names), 512)]
    rows, where, corrupt = [], [], {}
    for found in _map_scan(os.fspath(out), chunks):
        for name, row, loc, why in found:
            if why is not None:
                corrupt[name] = why
            else:
                rows.append(row)
                where.append(loc)
    return rows, where, corrupt


def _trials_frame(rows: list[dict[str, Any]], corrupt: Mapping[str, str]) -> pd.DataFrame:
    import pandas as pd

    trials = pd.DataFrame(rows, columns=list(TRIAL_COLUMNS))
    trials["target_metric"] = trials["target_metric"].astype(str)
    trials.attrs["corrupt"] = dict(corrupt)
    return trials


def load_trials(out: str | os.PathLike[str]) -> pd.DataFrame:
    """One row per stored trial (see :func:`load_results`).

    Trials whose meta is unreadable or inconsistent with their metrics file (by trial id or size)
    are left out and listed in ``attrs["corrupt"]`` as ``{trial_id: problem}``."""
    rows, _, corrupt = _scan_trials(out)
    return _trials_frame(rows, corrupt)


def _read_metrics(path: str, meta: Mapping[str, Any] | None) -> tuple[Any, str | None]:
    """``(table, problem)``: one trial's metrics, checked against the digest in ``meta``."""
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except OSError as exc:
        return None, f"metrics.parquet is unreadable ({exc.strerror or exc})"
    why = digest_problem(data, meta) if meta is not None else None
    if why is not None:
        return None, why
    return parse_metrics(data)


def _without(table: Any, series: Collection[tuple[str, str]]) -> Any:
    """``table`` less its rows of the ``(split, metric)`` series in ``series``: looked up once
    per dictionary word and gathered by the rows' codes (comparing the decoded strings of every
    row per series costs seconds at 100,000 trials)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    if not series or not table.num_rows:
        return table
    split, metric = (table.column(c).combine_chunks() for c in ("split", "metric"))
    if all(pa.types.is_dictionary(c.type) and not c.null_count for c in (split, metric)):
        words = [c.dictionary.to_pylist() for c in (split, metric)]
        drop = np.zeros((len(words[0]), len(words[1])), dtype=bool)
        drop[:, :] = [[(s, m) in series for m in words[1]] for s in words[0]]
        codes = [np.asarray(c.indices) for c in (split, metric)]
        return table.filter(pa.array(~drop[codes[0], codes[1]]))
    dropped = None
    for s, m in series:
        hit = pc.and_(pc.equal(split, s), pc.equal(metric, m))
        dropped = hit if dropped is None else pc.or_(dropped, hit)
    return table.filter(pc.invert(dropped))


def _read_batch(
    path: str, label: str, members: list[str], metas: Mapping[str, Mapping[str, Any] | None]
) -> tuple[Any, dict[str, str]]:
    """``(rows of members, {member: problem})`` from one batch file, read and hashed once; the
    rows of trials not in ``members`` (replaced since, or not asked for) are left out."""
    import pyarrow as pa
    import pyarrow.compute as pc

    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except OSError as exc:
        why = f"{label} is {'missing' if isinstance(exc, FileNotFoundError) else 'unreadable'}"
        return None, {m: why for m in members}
    digest = hashlib.sha256(data).hexdigest()
    bad: dict[str, str] = {}
    for m in members:
        problem = digest_problem(data, metas.get(m) or {}, label, digest)
        if problem is not None:
            bad[m] = problem
    ok = [m for m in members if m not in bad]
    if not ok:
        return None, bad
    table, parse_problem = parse_metrics(data, label)
    if parse_problem is not None:
        return None, {**bad, **{m: parse_problem for m in ok}}
    owner = table.column("trial_id").combine_chunks()
    wanted = pc.is_in(owner.dictionary, value_set=pa.array(ok, pa.string()))
    table = table.filter(pc.take(wanted, owner.indices))
    return table, bad


def _read_alone(
    out: str | os.PathLike[str],
    ids: list[str],
    metas: Mapping[str, Mapping[str, Any] | None],
    corrupt: dict[str, str],
    pool: ThreadPoolExecutor,
) -> list[Any]:
    """The rows of trials with their own ``metrics.parquet``, as tables in the loader's form,
    read whole by the pool in chunks (bounded transient Arrow memory)."""
    import numpy as np
    import pyarrow as pa

    trials_dir = os.path.join(os.fspath(out), "trials")

    def read(tid: str) -> tuple[Any, str | None]:
        return _read_metrics(os.path.join(trials_dir, tid, METRICS_FILE), metas.get(tid))

    parts = []
    for lo in range(0, len(ids), _BATCH):
        names = ids[lo : lo + _BATCH]
        tables, owners = [], []
        for i, (table, why) in enumerate(pool.map(read, names)):
            if why is not None:
                corrupt[names[i]] = why
                continue
            if table.num_rows == 0:
                continue
            tables.append(table)
            owners.append(np.full(table.num_rows, i, dtype=np.int32))
        if not tables:
            continue
        table = pa.concat_tables(tables).combine_chunks()
        trial = pa.DictionaryArray.from_arrays(np.concatenate(owners), pa.array(names, pa.string()))
        table = table.add_column(0, "trial_id", trial)
        for name in ("split", "metric", "layer"):
            i = table.schema.get_field_index(name)
            table = table.set_column(i, name, table.column(i).dictionary_encode())
        parts.append(table)
    return parts


def _frame(parts: list[Any], trial_ids: list[str]) -> pd.DataFrame:
    """The loaders' tables as one DataFrame, column by column: each string column becomes one
    categorical, its codes mapped chunk by chunk from each chunk's small dictionary (Arrow's
    own unification and conversion of thousands of dictionary chunks cost seconds); the
    ``trial_id`` categories are ``trial_ids``, in that order."""
    import numpy as np
    import pandas as pd
    import pyarrow as pa

    columns: dict[str, Any] = {}
    for name in parts[0].column_names:
        chunks = [c for p in parts for c in p.column(name).chunks]
        if not pa.types.is_dictionary(chunks[0].type):
            columns[name] = np.concatenate([c.to_numpy(zero_copy_only=False) for c in chunks])
            continue
        position: dict[str, int] = (
            {t: i for i, t in enumerate(trial_ids)} if name == "trial_id" else {}
        )
        codes = []
        for chunk in chunks:
            words = chunk.dictionary.to_pylist()
            if name != "trial_id":
                for w in words:
                    position.setdefault(w, len(position))
            lookup = np.array([position.get(w, -1) for w in words], dtype=np.int32)
            codes.append(lookup[chunk.indices.to_numpy(zero_copy_only=False)])
        categories = trial_ids if name == "trial_id" else list(position)
        columns[name] = pd.Categorical.from_codes(
            np.concatenate(codes), categories=pd.Index(categories, dtype=object)
        )
    parts.clear()
    return pd.DataFrame(columns, copy=False)


def load_metrics(
    out: str | os.PathLike[str],
    trial_ids: Iterable[str],
    *,
    keep_step_loss: bool = True,
    skip: Collection[tuple[str, str]] = (),
    metas: Mapping[str, Mapping[str, Any] | None] | None = None,
) -> pd.DataFrame:
    """The metric rows of ``trial_ids`` with a leading ``trial_id`` column.

    String columns are pandas categoricals (dictionary-encoded once, in bulk; the ``trial_id``
    categories in the order of ``trial_ids``); rows are grouped by trial. A batch file is read
    and hashed once for all the members asked for; a trial with its own file is read whole by a
    small thread pool (per-file scan machinery costs more than the read for files this small),
    in chunks so that transient Arrow memory stays bounded at 100,000 trials.
    ``keep_step_loss=False`` drops the per-step training loss, which no report table uses;
    ``skip`` drops the rows of other ``(split, metric)`` series a caller has no use for (at
    100,000 trials each per-layer health series is about 1.5 million rows).
    ``metas`` (trial id -> its ``meta.json``; read here when not given) locates each trial's
    rows and has each file checked against its recorded SHA-256; trials whose file fails it or
    does not parse contribute no rows and are listed in ``attrs["corrupt"]`` as
    ``{trial_id: problem}``.
    """
    import pandas as pd
    import pyarrow as pa

    store = os.fspath(out)
    ids = list(trial_ids)
    dropped = {*skip, *([] if keep_step_loss else [("train", "loss")])}
    if metas is None:
        metas = {t: load_meta(os.path.join(store, "trials", t, META_FILE))[0] for t in ids}
    corrupt: dict[str, str] = {}
    alone: list[str] = []
    batches: dict[str, tuple[str, list[str]]] = {}
    for tid in ids:
        meta = metas.get(tid)
        batch = None if meta is None else meta.get("batch")
        if batch is None:
            alone.append(tid)
            continue
        found = batches.get(batch)
        if found is None:
            path, label = batch_location(store, batch)
            if path is None:
                corrupt[tid] = label
                continue
            found = batches[batch] = (label, [])
        found[1].append(tid)

    def read(items: list[tuple[str, tuple[str, list[str]]]]) -> list[Any]:
        tables = []
        for batch, (label, members) in items:
            path = os.path.join(store, BATCHES_DIR, f"{batch}.parquet")
            table, bad = _read_batch(path, label, members, metas)
            corrupt.update(bad)
            if table is not None:
                tables.append(_without(table, dropped))
        if len(tables) > 1:  # one table per chunk: fewer, larger pieces for :func:`_frame`
            tables = [pa.concat_tables(tables).unify_dictionaries().combine_chunks()]
        return tables

    with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
        parts = _read_alone(out, alone, metas, corrupt, pool)
        parts = [_without(p, dropped) for p in parts]
        items = list(batches.items())
        for tables in pool.map(read, [items[i : i + 64] for i in range(0, len(items), 64)]):
            parts += tables
    parts = [p for p in parts if p is not None and p.num_rows]
    if not parts:
        frame = metrics_table([]).to_pandas()
        frame.insert(0, "trial_id", pd.Series([], dtype=object))
        frame = frame.astype(
            {"trial_id": "category", "split": "category", "metric": "category", "layer": "category"}
        )
    else:
        frame = _frame(parts, [t for t in ids if t not in corrupt])
    frame.attrs["corrupt"] = corrupt
    return frame


def load_results(
    out: str | os.PathLike[str],
    *,
    keep_step_loss: bool = True,
    skip: Collection[tuple[str, str]] = (),
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``(trials, metrics)`` DataFrames of every sound stored trial: the one reader of a store.

    ``trials``: one row per trial: trial_id, status, matrix, one column per technique axis with
    the formatted technique (``leaky_relu(alpha=0.1)``), lr, norm_placement, seed, data_seed,
    the budget's epochs/max_steps/batch_size, target_metric/value/mode, the meta fields
    (:data:`techbench.schema.META_FIELDS`; the number of epochs run as ``epochs_run``,
    ``versions``, ``techniques`` and ``data_info`` as JSON), ``plugins`` (JSON list of the non-built-in
    "distribution version" the trial used, :func:`techbench.techniques.provenance.plugin_sources`) and
    ``config`` (the canonical JSON). ``metrics``: the long table
    (trial_id, step, epoch, split, metric, layer, value), see :func:`load_metrics` (and its
    ``keep_step_loss`` and ``skip``).

    Corrupt trials (unreadable or inconsistent files, see the module docstring) are in neither
    frame: ``trials.attrs["corrupt"]`` maps each one's id to its problem. Never raises for a
    damaged trial.
    """
    rows, where, corrupt = _scan_trials(out)
    by_id = {str(m["trial_id"]): m for m in where}
    del where
    metrics = load_metrics(out, list(by_id), keep_step_loss=keep_step_loss, skip=skip, metas=by_id)
    bad = metrics.attrs.get("corrupt", {})
    if bad:
        corrupt = {**corrupt, **bad}
        rows = [r for r in rows if r["trial_id"] not in bad]
    corrupt = dict(sorted(corrupt.items()))
    metrics.attrs["corrupt"] = corrupt
    return _trials_frame(rows, corrupt), metrics


def load_matrix_info(out: str | os.PathLike[str]) -> dict[str, Any]:
    """The informational ``matrix.json`` (empty dict when absent or unreadable)."""
    return _read_json(os.path.join(os.fspath(out), "matrix.json")) or {}
