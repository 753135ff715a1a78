"""The results store: a folder of per-trial directories, atomic, resumable, concurrency-safe.

Layout::

    OUT/
      matrix.json                        the expanded matrix as run (informational)
      trials/<trial_id>/meta.json        {"trial_id", "config", "status", "matrix", **outcome.meta,
                                          "metrics_bytes", "metrics_sha256"}
      trials/<trial_id>/metrics.parquet  step:int64 epoch:int64 split:str metric:str layer:str value:float64
      .tmp/                              trial directories being written (and old ones being replaced)
      .locks/<trial_id>.lock             flock(2) claims, so two executors never run one trial twice
      .running/<trial_id>                pid of the process running it (to tell who crashed)

A trial directory is written complete under ``.tmp/<id>.<pid>.<random>/`` and then renamed to
``trials/<id>`` (atomic on POSIX), so a killed writer leaves no partial trial behind and a reader
never sees one. Replacing an existing result (``--rerun-failed``, or a race) renames the old one
aside first, renames the new one in, then deletes the old. Claims use ``flock``, which the kernel
drops when the holder dies, so a killed executor never leaves a stale claim.

Integrity: ``meta.json`` records the size and SHA-256 of its ``metrics.parquet``. A trial whose
meta is unreadable or names another trial, whose metrics file is missing, of another size, of
another digest or not valid Parquet is *corrupt*: readers never score it (the loaders leave it
out and list it in ``frame.attrs["corrupt"]``) and the executors treat it as not stored, so a rerun
runs it again. Policy: the size is checked on every status read (one ``stat``); the digest
whenever the file is read anyway (loading metrics, where hashing the bytes already in memory costs
little) and when an executor plans a run or re-checks a trial under its claim.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import secrets
import shutil
import socket
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .provenance import plugin_sources
from .schema import (
    AXIS_FAMILY,
    DEFAULT_CONFIG,
    FINISHED,
    META_FIELDS,
    METRIC_COLUMNS,
    METRIC_FIELDS,
    STATUSES,
    TrialOutcome,
)

if TYPE_CHECKING:
    import pandas as pd


def _json_default(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    return repr(value)


_HOST = "@" + socket.gethostname().replace(".", "-")
"""Tags temp names, so a store on a shared filesystem only cleans up its own host's leftovers."""


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` runs on this host (a zombie counts as dead)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def metrics_table(rows: Sequence[Mapping[str, Any]]) -> Any:
    """The metric rows as a pyarrow table with the store's fixed schema (:data:`METRIC_FIELDS`)."""
    import pyarrow as pa

    columns: dict[str, list[Any]] = {c: [] for c in METRIC_COLUMNS}
    for row in rows:
        columns["step"].append(int(row.get("step", 0) or 0))
        columns["epoch"].append(int(row.get("epoch", 0) or 0))
        columns["split"].append(str(row.get("split", "")))
        columns["metric"].append(str(row.get("metric", "")))
        columns["layer"].append(str(row.get("layer", "") or ""))
        value = row.get("value")
        columns["value"].append(float("nan") if value is None else float(value))
    return pa.table(columns, schema=_arrow_schema())


def _arrow_schema() -> Any:
    import pyarrow as pa

    return pa.schema([(name, getattr(pa, kind)()) for name, kind in METRIC_FIELDS])


METRICS_FILE = "metrics.parquet"
META_FILE = "meta.json"


def file_digest(path: str | os.PathLike[str]) -> tuple[int, str]:
    """``(size in bytes, SHA-256 hex digest)`` of a file (what ``meta.json`` records)."""
    data = Path(path).read_bytes()
    return len(data), hashlib.sha256(data).hexdigest()


def _load_meta(path: Path) -> tuple[dict[str, Any] | None, str | None]:
    """``(meta, problem)``: the parsed ``meta.json`` or why it cannot be used."""
    try:
        with open(path, encoding="utf-8") as fh:
            meta = json.load(fh)
    except FileNotFoundError:
        return None, "meta.json is missing"
    except (OSError, ValueError) as exc:
        kind = "empty" if isinstance(exc, ValueError) and path.stat().st_size == 0 else "unreadable"
        return None, f"meta.json is {kind}" + ("" if kind == "empty" else f" ({exc})")
    if not isinstance(meta, dict):
        return None, "meta.json is not a JSON object"
    return meta, None


def meta_problem(name: str, meta: Mapping[str, Any], metrics: str | os.PathLike[str]) -> str | None:
    """Why the stored trial ``name`` with ``meta`` is inconsistent (None when it looks sound).

    Checks what costs no read of the metrics file: the trial id, the status, and the metrics
    file's existence and recorded size."""
    if meta.get("trial_id") != name:
        return f"meta.json belongs to trial {meta.get('trial_id')!r}"
    if meta.get("status") not in STATUSES:
        return f"meta.json has status {meta.get('status')!r}"
    try:
        size = os.stat(metrics).st_size
    except FileNotFoundError:
        return "metrics.parquet is missing"
    except OSError as exc:
        return f"metrics.parquet is unreadable ({exc.strerror})"
    want = meta.get("metrics_bytes")
    if isinstance(want, int) and size != want:
        return f"metrics.parquet has {size} bytes, meta.json records {want}"
    return None


def digest_problem(data: bytes, meta: Mapping[str, Any]) -> str | None:
    """A mismatch between the metrics file's bytes and the digest ``meta.json`` records."""
    want = meta.get("metrics_sha256")
    if isinstance(want, str) and hashlib.sha256(data).hexdigest() != want:
        return "metrics.parquet does not match its SHA-256 in meta.json"
    return None


def _parse_metrics(data: bytes) -> tuple[Any, str | None]:
    """``(table, problem)``: the metrics bytes as a table in the store's schema."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.ParquetFile(pa.BufferReader(data)).read(use_threads=False)
        return table.select(list(METRIC_COLUMNS)).cast(_arrow_schema()), None
    except (pa.ArrowException, OSError, ValueError, KeyError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return None, f"metrics.parquet is not a valid metrics table ({first[:120]})"


class ResultStore:
    """Read and write trial results under ``out``; safe for concurrent processes."""

    def __init__(self, out: str | os.PathLike[str]) -> None:
        self.root = Path(out)
        self.trials_dir = self.root / "trials"
        self.tmp_dir = self.root / ".tmp"
        self.locks_dir = self.root / ".locks"
        self.running_dir = self.root / ".running"

    def ensure(self) -> ResultStore:
        for d in (self.trials_dir, self.tmp_dir, self.locks_dir, self.running_dir):
            d.mkdir(parents=True, exist_ok=True)
        return self

    # reading --------------------------------------------------------------------------------

    def trial_ids(self) -> list[str]:
        """Ids of every stored trial (whatever its status)."""
        if not self.trials_dir.is_dir():
            return []
        return sorted(p.name for p in self.trials_dir.iterdir() if (p / "meta.json").is_file())

    def read_meta(self, trial_id: str) -> dict[str, Any] | None:
        """The trial's meta.json, or None if it is not stored (or is being replaced right now)."""
        for _ in range(3):
            try:
                meta = json.loads((self.trials_dir / trial_id / META_FILE).read_text("utf-8"))
                return meta if isinstance(meta, dict) else None
            except FileNotFoundError:
                if not (self.trials_dir / trial_id).exists():
                    return None
                time.sleep(0.01)
            except (ValueError, OSError):  # not JSON, not UTF-8, unreadable: corrupt
                return None
        return None

    def problem(self, trial_id: str, verify: bool = True) -> str | None:
        """Why the stored trial is corrupt, or None (also None when it is not stored at all).

        ``verify`` also reads the metrics file: its digest must match the recorded one (the writer
        took it from a valid file), or, for a trial stored without one, the file must parse."""
        folder = self.trials_dir / trial_id
        if not folder.is_dir():
            return None
        meta, why = _load_meta(folder / META_FILE)
        if meta is None:
            if why == "meta.json is missing" and not folder.exists():
                return None
            return why
        why = meta_problem(trial_id, meta, folder / METRICS_FILE)
        if why is None and verify:
            try:
                data = (folder / METRICS_FILE).read_bytes()
            except OSError as exc:
                return f"metrics.parquet is unreadable ({exc.strerror})"
            if isinstance(meta.get("metrics_sha256"), str):  # the writer's digest vouches
                why = digest_problem(data, meta)
            else:
                why = _parse_metrics(data)[1]
        return why

    def status(self, trial_id: str, verify: bool = False) -> str | None:
        """``completed`` / ``diverged`` / ``failed``, or None when not stored or corrupt.

        A corrupt trial (see the module docstring) reads as not stored, so executors run it
        again; the size check is always made, the digest only with ``verify``."""
        meta = self.read_meta(trial_id)
        if meta is None:
            return None
        folder = self.trials_dir / trial_id
        if meta_problem(trial_id, meta, folder / METRICS_FILE) is not None:
            return None
        if verify and self.problem(trial_id, verify=True) is not None:
            return None
        return meta.get("status")

    def statuses(self, verify: bool = False) -> dict[str, str]:
        """Status of every sound stored trial (corrupt ones are left out; see :meth:`status`)."""
        ids = self.trial_ids()
        with ThreadPoolExecutor(max_workers=8) as pool:
            found = list(pool.map(lambda t: self.status(t, verify), ids, chunksize=64))
        return {t: s for t, s in zip(ids, found, strict=True) if s is not None}

    def corrupt(self, verify: bool = True) -> dict[str, str]:
        """``{trial_id: problem}`` of every corrupt trial folder (``verify``: digests too)."""
        if not self.trials_dir.is_dir():
            return {}
        names = sorted(p.name for p in self.trials_dir.iterdir() if p.is_dir())
        with ThreadPoolExecutor(max_workers=8) as pool:
            found = list(pool.map(lambda t: self.problem(t, verify), names, chunksize=64))
        return {t: why for t, why in zip(names, found, strict=True) if why is not None}

    def completed_ids(self) -> set[str]:
        """Trials with a finished result (completed or diverged; not failed)."""
        return {t for t, s in self.statuses().items() if s in FINISHED}

    def failed_ids(self) -> set[str]:
        return {t for t, s in self.statuses().items() if s == "failed"}

    # writing --------------------------------------------------------------------------------

    def write(
        self, outcome: TrialOutcome | Mapping[str, Any], matrix_name: str | None = None
    ) -> Path:
        """Store one outcome (a TrialOutcome, or its ``to_dict()``) atomically."""
        self.ensure()
        try:
            outcome = TrialOutcome.from_value(outcome)
        except ValueError as exc:
            tid = outcome.get("trial_id") if isinstance(outcome, Mapping) else None
            raise ValueError(f"trial {tid}: {exc}") from None
        tid = outcome.trial_id
        meta = {
            "trial_id": tid,
            "config": outcome.config,
            "status": outcome.status,
            "matrix": matrix_name,
            **outcome.meta.to_dict(),
        }
        tmp = self.tmp_dir / f"{tid}.{os.getpid()}.{_HOST}.{secrets.token_hex(4)}"
        tmp.mkdir()
        try:
            import pyarrow.parquet as pq

            try:
                pq.write_table(metrics_table(outcome.metrics), tmp / METRICS_FILE)
            except OSError as exc:
                raise _with_path(exc, self.trials_dir / tid / METRICS_FILE) from None
            meta["metrics_bytes"], meta["metrics_sha256"] = file_digest(tmp / METRICS_FILE)
            try:
                with open(tmp / META_FILE, "w", encoding="utf-8") as fh:
                    json.dump(meta, fh, indent=1, default=_json_default)
                    fh.flush()
                    os.fsync(fh.fileno())
            except OSError as exc:
                raise _with_path(exc, self.trials_dir / tid / META_FILE) from None
            self._install(tmp, self.trials_dir / tid)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return self.trials_dir / tid

    def _install(self, tmp: Path, target: Path) -> None:
        asides: list[Path] = []
        try:
            for _ in range(100):
                try:
                    os.rename(tmp, target)
                    return
                except OSError as exc:
                    if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                        raise
                aside = self.scratch_path(f"{target.name}.old")
                with contextlib.suppress(FileNotFoundError):
                    os.rename(target, aside)
                    asides.append(aside)
            raise OSError(f"could not install {tmp} as {target}")
        finally:
            for aside in asides:
                shutil.rmtree(aside, ignore_errors=True)

    def write_matrix(self, info: Mapping[str, Any]) -> None:
        """Write ``matrix.json`` atomically (temp file + replace)."""
        self.ensure()
        tmp = self.tmp_dir / f"matrix.json.{os.getpid()}.{_HOST}.{secrets.token_hex(4)}"
        tmp.write_text(json.dumps(info, indent=1, default=_json_default), encoding="utf-8")
        os.replace(tmp, self.root / "matrix.json")

    def cleanup(self) -> int:
        """Remove temp directories left by dead writers (same host); returns how many."""
        removed = 0
        if not self.tmp_dir.is_dir():
            return 0
        for p in self.tmp_dir.iterdir():
            parts = p.name.split(".")
            if any(x.startswith("@") and x != _HOST for x in parts):
                continue
            pid = next((int(x) for x in parts[1:] if x.isdigit()), None)
            if pid is not None and not pid_alive(pid):
                if p.is_dir():
                    shutil.rmtree(p, ignore_errors=True)
                else:
                    p.unlink(missing_ok=True)
                removed += 1
        if self.running_dir.is_dir():
            for marker in self.running_dir.iterdir():
                with contextlib.suppress(OSError, ValueError):
                    pid_text, _, host = marker.read_text().strip().partition("@")
                    if host and "@" + host != _HOST:
                        continue
                    pid = int(pid_text or "0")
                    if pid <= 0 or not pid_alive(pid):
                        marker.unlink()
        return removed

    def running_marker(self, trial_id: str) -> Path:
        """``.running/<id>``: ``pid@host`` of the process running the trial (crash forensics)."""
        return self.running_dir / trial_id

    def mark_running(self, trial_id: str) -> Path:
        """Write this process's ``pid@host`` into the trial's running marker; returns its path."""
        marker = self.running_marker(trial_id)
        marker.write_text(f"{os.getpid()}{_HOST}")
        return marker

    def scratch_path(self, prefix: str) -> Path:
        """A unique path under ``.tmp`` tagged with this pid and host (cleanup knows its owner)."""
        return self.tmp_dir / f"{prefix}.{os.getpid()}.{_HOST}.{secrets.token_hex(4)}"

    @contextlib.contextmanager
    def claim(self, trial_id: str, wait: bool = False) -> Iterator[bool]:
        """Hold the trial's lock while the block runs; yields False if another process holds it.

        With ``wait`` it blocks until the lock is free and always yields True.
        """
        self.ensure()
        path = self.locks_dir / f"{trial_id}.lock"
        while True:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
            except BlockingIOError:
                os.close(fd)
                yield False
                return
            if same_file(fd, path):
                break
            os.close(fd)  # ``techbench clean --locks`` removed it meanwhile: lock the new file
        try:
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
            try:
                yield True
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)


def _with_path(exc: OSError, path: Path) -> OSError:
    """``exc`` with its errno and ``path`` (pyarrow's I/O errors carry neither as attributes)."""
    if exc.filename:
        return exc
    code = exc.errno
    if code is None:
        import re

        found = re.search(r"\[Errno (\d+)\]", str(exc))
        code = int(found.group(1)) if found else None
    if code is None:
        return OSError(errno.EIO, str(exc).splitlines()[0] if str(exc) else "I/O error", str(path))
    return OSError(code, os.strerror(code), str(path))


def same_file(fd: int, path: Path) -> bool:
    """Whether the open file ``fd`` is still the file at ``path``."""
    try:
        a, b = os.fstat(fd), os.stat(path)
    except FileNotFoundError:
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


# reading in bulk ------------------------------------------------------------------------------

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
    from .spec import format_technique_arg

    config = meta.get("config") or {}
    row: dict[str, Any] = {
        "trial_id": meta.get("trial_id"),
        "status": meta.get("status", "failed"),
        "matrix": meta.get("matrix"),
    }
    for axis in AXIS_FAMILY:
        tech = config.get(axis) or {}
        if isinstance(tech, str):
            row[axis] = tech
        else:
            row[axis] = format_technique_arg(str(tech.get("name", "?")), tech.get("params") or {})
    optimizer = config.get("optimizer") or {}
    row["lr"] = (
        (optimizer.get("params") or {}).get("lr") if isinstance(optimizer, Mapping) else None
    )
    row["norm_placement"] = config.get("norm_placement", DEFAULT_CONFIG["norm_placement"])
    row["seed"] = config.get("seed", 0)
    row["data_seed"] = config.get("data_seed", 0)
    budget = config.get("budget") or {}
    for key in ("epochs", "max_steps", "batch_size"):
        row[key] = budget.get(key)
    target = {**DEFAULT_CONFIG["target"], **(config.get("target") or {})}
    for key in ("metric", "value", "mode"):
        row[f"target_{key}"] = target[key]
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


def _scan_trials(
    out: str | os.PathLike[str],
) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """``(metas of sound-looking trials, {trial_id: problem} of corrupt ones)`` (no digests)."""
    root = Path(out) / "trials"
    try:
        names = sorted(p.name for p in root.iterdir() if p.is_dir())
    except FileNotFoundError:
        return [], {}

    def scan(name: str) -> tuple[dict[str, Any] | None, str | None]:
        meta, why = _load_meta(root / name / META_FILE)
        if meta is None:
            if why == "meta.json is missing" and not (root / name).exists():
                return None, None
            return None, why
        return meta, meta_problem(name, meta, root / name / METRICS_FILE)

    with ThreadPoolExecutor(max_workers=8) as pool:
        found = list(pool.map(scan, names, chunksize=256))
    metas, corrupt = [], {}
    for name, (meta, why) in zip(names, found, strict=True):
        if why is not None:
            corrupt[name] = why
        elif meta is not None:
            metas.append(meta)
    return metas, corrupt


def _trials_frame(metas: list[dict[str, Any]], corrupt: Mapping[str, str]) -> pd.DataFrame:
    import pandas as pd

    trials = pd.DataFrame([_flatten(m) for m in metas], columns=list(TRIAL_COLUMNS))
    trials["target_metric"] = trials["target_metric"].astype(str)
    trials.attrs["corrupt"] = dict(corrupt)
    return trials


def load_trials(out: str | os.PathLike[str]) -> pd.DataFrame:
    """One row per stored trial (see :func:`load_results`).

    Trials whose meta is unreadable or inconsistent with their metrics file (by trial id or size)
    are left out and listed in ``attrs["corrupt"]`` as ``{trial_id: problem}``."""
    return _trials_frame(*_scan_trials(out))


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
    return _parse_metrics(data)


def load_metrics(
    out: str | os.PathLike[str],
    trial_ids: Iterable[str],
    *,
    keep_step_loss: bool = True,
    metas: Mapping[str, Mapping[str, Any]] | None = None,
) -> pd.DataFrame:
    """The metric rows of ``trial_ids`` with a leading ``trial_id`` column.

    String columns are pandas categoricals (dictionary-encoded once, in bulk); files are read
    whole by a small thread pool (per-file scan machinery costs more than the read for files
    this small), in batches so that transient Arrow memory stays bounded at 100,000 trials.
    ``keep_step_loss=False`` drops the per-step training loss, which no report table uses.
    ``metas`` (trial id -> its ``meta.json``) has each file checked against its recorded
    SHA-256; files that fail it or do not parse contribute no rows and are listed in
    ``attrs["corrupt"]`` as ``{trial_id: problem}``.
    """
    import numpy as np
    import pandas as pd
    import pyarrow as pa
    import pyarrow.compute as pc

    trials_dir = os.path.join(os.fspath(out), "trials")
    ids = list(trial_ids)
    corrupt: dict[str, str] = {}

    def read(tid: str) -> tuple[Any, str | None]:
        meta = metas.get(tid) if metas is not None else None
        return _read_metrics(os.path.join(trials_dir, tid, METRICS_FILE), meta)

    def batch(lo: int, pool: ThreadPoolExecutor) -> Any:
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

    with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
        parts = [batch(lo, pool) for lo in range(0, len(ids), _BATCH)]
    parts = [p for p in parts if p is not None]
    if not parts:
        frame = metrics_table([]).to_pandas()
        frame.insert(0, "trial_id", pd.Series([], dtype=object))
        frame = frame.astype(
            {"trial_id": "category", "split": "category", "metric": "category", "layer": "category"}
        )
    else:
        frame = pa.concat_tables(parts).unify_dictionaries().combine_chunks().to_pandas()
    frame.attrs["corrupt"] = corrupt
    return frame


def load_results(
    out: str | os.PathLike[str], *, keep_step_loss: bool = True
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``(trials, metrics)`` DataFrames of every sound stored trial: the one reader of a store.

    ``trials``: one row per trial: trial_id, status, matrix, one column per technique axis with
    the formatted technique (``leaky_relu(alpha=0.1)``), lr, norm_placement, seed, data_seed,
    the budget's epochs/max_steps/batch_size, target_metric/value/mode, the meta fields
    (:data:`techbench.schema.META_FIELDS`; the number of epochs run as ``epochs_run``,
    ``versions``, ``techniques`` and ``data_info`` as JSON), ``plugins`` (JSON list of the non-built-in
    "distribution version" the trial used, :func:`techbench.provenance.plugin_sources`) and
    ``config`` (the canonical JSON). ``metrics``: the long table
    (trial_id, step, epoch, split, metric, layer, value), see :func:`load_metrics`.

    Corrupt trials (unreadable or inconsistent files, see the module docstring) are in neither
    frame: ``trials.attrs["corrupt"]`` maps each one's id to its problem. Never raises for a
    damaged trial.
    """
    metas, corrupt = _scan_trials(out)
    by_id = {str(m["trial_id"]): m for m in metas}
    metrics = load_metrics(out, list(by_id), keep_step_loss=keep_step_loss, metas=by_id)
    bad = metrics.attrs.get("corrupt", {})
    if bad:
        corrupt = {**corrupt, **bad}
        metas = [m for m in metas if m["trial_id"] not in bad]
    corrupt = dict(sorted(corrupt.items()))
    metrics.attrs["corrupt"] = corrupt
    return _trials_frame(metas, corrupt), metrics


def load_matrix_info(out: str | os.PathLike[str]) -> dict[str, Any]:
    """The informational ``matrix.json`` (empty dict when absent or unreadable)."""
    return _read_json(os.path.join(os.fspath(out), "matrix.json")) or {}
