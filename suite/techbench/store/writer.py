"""The results store: per-trial records, metric rows written one unit of work at a time;
atomic, resumable, concurrency-safe.

Layout::

    OUT/
      matrix.json                        the expanded matrix as run (informational)
      trials/<trial_id>/meta.json        {"trial_id", "config", "status", "matrix", **outcome.meta,
                                          "metrics_bytes", "metrics_sha256"[, "batch"]}
      trials/<trial_id>/metrics.parquet  a trial stored alone: step:int64 epoch:int64 split:str
                                          metric:str layer:str value:float64
      batches/<batch>.parquet            the rows of a batch's members (a stack, written at once):
                                          trial_id:str + the columns above, grouped by trial
      .tmp/                              trial directories being written (and old ones being replaced)
      .locks/<trial_id>.lock             flock(2) claims, so two executors never run one trial twice
      .running/<trial_id>                pid of the process running it (to tell who crashed)

Why batches: a stack of S members finishes at once, and at 100,000 trials one Parquet file per
trial makes loading a report cost 100,000 file opens and Parquet footers; one file per stack
cuts that by S. Per-trial ``meta.json`` stays: claims, resume, ``status``, ``clean`` and the
executors all address one trial, and its record names where its rows are (``"batch"``; a meta
without it has its own ``metrics.parquet``, the layout every store had before, which still
loads). A trial written alone (:meth:`ResultStore.write`) is a batch of one and keeps that
per-trial layout: no indirection where there is nothing to share. The JSON is parsed per trial
either way; what batching saves is files, not bytes.

A trial directory is written complete under ``.tmp/<id>.<pid>.<random>/`` and then renamed to
``trials/<id>`` (atomic on POSIX), so a killed writer leaves no partial trial behind and a reader
never sees one. A batch file gets a fresh unique name and is renamed into ``batches/`` before any
member's meta that points to it, so a member is stored exactly when its meta is; a writer killed
in between leaves some members unstored (a rerun runs them) and possibly a batch file no meta
points to (an *orphan*, removed by ``techbench clean --corrupt``). Replacing an existing result
(``--rerun-failed``, or a race) renames the old one aside first, renames the new one in, then
deletes the old; a replaced member's rows stay in its old batch file and are ignored (only the
rows of the batch its meta names count). Claims use ``flock``, which the kernel drops when the
holder dies, so a killed executor never leaves a stale claim; writers hold every member's claim
while they write.

Integrity: ``meta.json`` records the size and SHA-256 of the file holding its rows (its own
``metrics.parquet`` or its batch's file), and ``meta_sha256``, the SHA-256 of its own canonical
JSON less its config and this key (:func:`meta_digest`); its config is checked by hashing to the
trial id (:func:`techbench.schema.trial_id`). So an edit of any key that still leaves valid JSON
(an lr, a seed, a provenance entry, a score's file digest, a key added or removed) is caught. A
meta written by techbench 0.3.0 or earlier has no ``meta_sha256``: only its config is checked
(*legacy*, not corrupt). A trial whose meta is unreadable, names another trial, fails either check, or whose
metrics file is missing, of another size, of another digest or not valid Parquet is *corrupt*:
readers never score it (the loaders, :mod:`techbench.store.reader`, leave it out and list it in
``frame.attrs["corrupt"]``) and the executors treat it as not stored, so a rerun runs it again. A
damaged batch file makes every member that points to it corrupt. Policy: the size is checked on
every status read (one ``stat``); the digest whenever the file is read anyway (loading metrics,
where hashing the bytes already in memory costs little; a batch file is read and hashed once for all
its members) and when an executor plans a run or re-checks a trial under its claim.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import re
import secrets
import shutil
import socket
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from ..schema import (
    FINISHED,
    METRIC_COLUMNS,
    METRIC_FIELDS,
    STATUSES,
    TrialOutcome,
    trial_id,
)


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
BATCHES_DIR = "batches"
_BATCH_NAME = re.compile(r"[0-9A-Za-z][0-9A-Za-z_-]{0,99}")


def batch_table(outcomes: Sequence[TrialOutcome]) -> Any:
    """The rows of several trials as one table: ``trial_id`` then the store's metric columns,
    each trial's rows together in the outcomes' order (what a batch file holds)."""
    import pyarrow as pa

    tables = [metrics_table(o.metrics) for o in outcomes]
    owner = [o.trial_id for o, t in zip(outcomes, tables, strict=True) for _ in range(t.num_rows)]
    table = pa.concat_tables(tables) if tables else metrics_table([])
    return table.add_column(0, "trial_id", pa.array(owner, pa.string()))


def metrics_location(folder: Path, meta: Mapping[str, Any]) -> tuple[Path | None, str]:
    """``(path, label)`` of the file holding the rows of the trial stored in ``folder``
    (``trials/<id>``): its own ``metrics.parquet``, or the batch file its meta names. ``path``
    is None when the meta names no valid batch (a corrupt meta; ``label`` says so)."""
    batch = meta.get("batch")
    if batch is None:
        return folder / METRICS_FILE, METRICS_FILE
    path, label = batch_location(os.fspath(folder.parent.parent), batch)
    return (None if path is None else Path(path)), label


def batch_location(root: str, batch: Any) -> tuple[str | None, str]:
    """``(path, label)`` of batch ``batch`` in the store at ``root`` (strings: the bulk
    loaders call it per trial); path None for an invalid name."""
    if not isinstance(batch, str) or not _BATCH_NAME.fullmatch(batch):
        return None, f"meta.json names an invalid batch {batch!r}"
    name = f"{batch}.parquet"
    return os.path.join(root, BATCHES_DIR, name), f"{BATCHES_DIR}/{name}"


def file_digest(path: str | os.PathLike[str]) -> tuple[int, str]:
    """``(size in bytes, SHA-256 hex digest)`` of a file (what ``meta.json`` records)."""
    data = Path(path).read_bytes()
    return len(data), hashlib.sha256(data).hexdigest()


def load_meta(path: str | os.PathLike[str]) -> tuple[dict[str, Any] | None, str | None]:
    """``(meta, problem)``: the parsed ``meta.json`` or why it cannot be used."""
    try:
        with open(path, encoding="utf-8") as fh:
            meta = json.load(fh)
    except FileNotFoundError:
        return None, "meta.json is missing"
    except (OSError, ValueError) as exc:
        kind = (
            "empty" if isinstance(exc, ValueError) and os.stat(path).st_size == 0 else "unreadable"
        )
        return None, f"meta.json is {kind}" + ("" if kind == "empty" else f" ({exc})")
    if not isinstance(meta, dict):
        return None, "meta.json is not a JSON object"
    return meta, None


META_DIGEST = "meta_sha256"
"""The ``meta.json`` key of :func:`meta_digest` (absent in metas written by 0.3.0 and before)."""


def meta_digest(meta: Mapping[str, Any]) -> str:
    """SHA-256 of the canonical JSON (sorted keys, no whitespace) of ``meta`` less its
    ``config`` (which hashes to the trial id instead) and :data:`META_DIGEST`: canonical, so
    what is compared is the meta's content, not how its file is laid out."""
    rest = {k: v for k, v in meta.items() if k != "config" and k != META_DIGEST}
    text = json.dumps(rest, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def seal_meta(meta: Mapping[str, Any]) -> dict[str, Any]:
    """``meta`` as its JSON reads back, with its :data:`META_DIGEST` (what the writer stores;
    also for a test that edits a meta on purpose)."""
    plain = json.loads(json.dumps(dict(meta), default=_json_default))
    plain.pop(META_DIGEST, None)
    plain[META_DIGEST] = meta_digest(plain)
    return plain


def edit_problem(meta: Mapping[str, Any]) -> str | None:
    """Why ``meta`` is not what its writer stored (None when it is, or when it is legacy)."""
    config = meta.get("config")
    if not isinstance(config, Mapping):
        return "meta.json has no config object"
    found = trial_id(config)
    if found != meta.get("trial_id"):
        return f"meta.json's config hashes to {found}, not to its trial id (edited after storing)"
    want = meta.get(META_DIGEST)
    if want is not None and want != meta_digest(meta):
        return f"meta.json does not match its {META_DIGEST} (a key was edited, added or removed)"
    return None


def meta_problem(
    name: str,
    meta: Mapping[str, Any],
    metrics: str | os.PathLike[str] | None,
    label: str = METRICS_FILE,
    sizes: dict[str, int | OSError] | None = None,
) -> str | None:
    """Why the stored trial ``name`` with ``meta`` is inconsistent (None when it looks sound).

    Checks what costs no read of the metrics file (``metrics``, named ``label`` in messages;
    see :func:`metrics_location`): the trial id, the status, the meta's own digests
    (:func:`edit_problem`), and the metrics file's existence and recorded size. ``sizes``
    caches one ``stat`` per file for the members of a batch."""
    if meta.get("trial_id") != name:
        return f"meta.json belongs to trial {meta.get('trial_id')!r}"
    if meta.get("status") not in STATUSES:
        return f"meta.json has status {meta.get('status')!r}"
    edited = edit_problem(meta)
    if edited is not None:
        return edited
    if metrics is None:
        return label
    key = os.fspath(metrics)
    found = sizes.get(key) if sizes is not None else None
    if found is None:
        try:
            found = os.stat(key).st_size
        except OSError as exc:
            found = exc
        if sizes is not None:
            sizes[key] = found
    if isinstance(found, FileNotFoundError):
        return f"{label} is missing"
    if isinstance(found, OSError):
        return f"{label} is unreadable ({found.strerror})"
    want = meta.get("metrics_bytes")
    if isinstance(want, int) and found != want:
        return f"{label} has {found} bytes, meta.json records {want}"
    return None


def digest_problem(
    data: bytes, meta: Mapping[str, Any], label: str = METRICS_FILE, digest: str | None = None
) -> str | None:
    """A mismatch between the metrics file's bytes and the digest ``meta.json`` records
    (``digest``: the bytes' SHA-256 when already known)."""
    want = meta.get("metrics_sha256")
    if isinstance(want, str) and (digest or hashlib.sha256(data).hexdigest()) != want:
        return f"{label} does not match its SHA-256 in meta.json"
    return None


def parse_metrics(data: bytes, label: str = METRICS_FILE) -> tuple[Any, str | None]:
    """``(table, problem)``: the metrics bytes as a table in the store's schema (a batch file,
    named ``batches/...`` in ``label``, also has its ``trial_id`` column, dictionary-encoded)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    batch = label != METRICS_FILE
    try:
        if batch:
            table = pq.ParquetFile(pa.BufferReader(data), read_dictionary=_DICT_COLUMNS).read(
                use_threads=False
            )
            return table.select(["trial_id", *METRIC_COLUMNS]).cast(_batch_schema()), None
        table = pq.ParquetFile(pa.BufferReader(data)).read(use_threads=False)
        return table.select(list(METRIC_COLUMNS)).cast(_arrow_schema()), None
    except (pa.ArrowException, OSError, ValueError, KeyError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return None, f"{label} is not a valid metrics table ({first[:120]})"


_DICT_COLUMNS = ["trial_id", "split", "metric", "layer"]


def _batch_schema() -> Any:
    """A batch file's columns as read: strings dictionary-encoded (the loaders' form)."""
    import pyarrow as pa

    dictionary = pa.dictionary(pa.int32(), pa.string())
    fields = [("trial_id", dictionary)]
    for name, kind in METRIC_FIELDS:
        fields.append((name, dictionary if kind == "string" else getattr(pa, kind)()))
    return pa.schema(fields)


class _Digests:
    """File checks shared by the members of a batch within one bulk call: one ``stat`` (in
    ``sizes``) and one read-and-hash per file, whichever thread asks first."""

    def __init__(self) -> None:
        self.sizes: dict[str, int | OSError] = {}
        self._sha: dict[str, str | OSError] = {}
        self._lock = threading.Lock()
        self._locks: dict[str, threading.Lock] = {}

    def sha256(self, key: str) -> str | OSError:
        with self._lock:
            lock = self._locks.setdefault(key, threading.Lock())
        with lock:
            if key not in self._sha:
                try:
                    with open(key, "rb") as fh:
                        self._sha[key] = hashlib.file_digest(fh, "sha256").hexdigest()
                except OSError as exc:
                    self._sha[key] = exc
            return self._sha[key]

    def problem(self, path: Path, label: str, meta: Mapping[str, Any]) -> str | None:
        """The digest check of :meth:`ResultStore.problem` (a parse when none is recorded)."""
        if not isinstance(meta.get("metrics_sha256"), str):
            try:
                data = path.read_bytes()
            except OSError as exc:
                return f"{label} is unreadable ({exc.strerror})"
            return parse_metrics(data, label)[1]
        found = self.sha256(os.fspath(path))
        if isinstance(found, OSError):
            return f"{label} is unreadable ({found.strerror})"
        return digest_problem(b"", meta, label, found)


class ResultStore:
    """Read and write trial results under ``out``; safe for concurrent processes."""

    def __init__(self, out: str | os.PathLike[str]) -> None:
        self.root = Path(out)
        self.trials_dir = self.root / "trials"
        self.tmp_dir = self.root / ".tmp"
        self.locks_dir = self.root / ".locks"
        self.running_dir = self.root / ".running"
        self.batches_dir = self.root / BATCHES_DIR

    def ensure(self) -> ResultStore:
        for d in (
            self.trials_dir,
            self.tmp_dir,
            self.locks_dir,
            self.running_dir,
            self.batches_dir,
        ):
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

    def problem(
        self, trial_id: str, verify: bool = True, digests: _Digests | None = None
    ) -> str | None:
        """Why the stored trial is corrupt, or None (also None when it is not stored at all).

        ``verify`` also reads the metrics file: its digest must match the recorded one (the writer
        took it from a valid file), or, for a trial stored without one, the file must parse.
        ``digests`` shares each file's read and hash between the members of a batch (one bulk
        check, never kept across calls: a file damaged later must be hashed again)."""
        folder = self.trials_dir / trial_id
        if not folder.is_dir():
            return None
        meta, why = load_meta(folder / META_FILE)
        if meta is None:
            if why == "meta.json is missing" and not folder.exists():
                return None
            return why
        path, label = metrics_location(folder, meta)
        sizes = digests.sizes if digests is not None else None
        why = meta_problem(trial_id, meta, path, label, sizes)
        if why is None and verify and path is not None:
            digests = digests if digests is not None else _Digests()
            return digests.problem(path, label, meta)
        return why

    def status(self, trial_id: str, verify: bool = False) -> str | None:
        """``completed`` / ``diverged`` / ``failed``, or None when not stored or corrupt.

        A corrupt trial (see the module docstring) reads as not stored, so executors run it
        again; the size check is always made, the digest only with ``verify``."""
        return self._status(trial_id, verify, None)

    def _status(self, trial_id: str, verify: bool, digests: _Digests | None) -> str | None:
        meta = self.read_meta(trial_id)
        if meta is None:
            return None
        path, label = metrics_location(self.trials_dir / trial_id, meta)
        sizes = digests.sizes if digests is not None else None
        if meta_problem(trial_id, meta, path, label, sizes) is not None:
            return None
        if verify and self.problem(trial_id, verify=True, digests=digests) is not None:
            return None
        return meta.get("status")

    def statuses(self, verify: bool = False) -> dict[str, str]:
        """Status of every sound stored trial (corrupt ones are left out; see :meth:`status`)."""
        ids = self.trial_ids()
        digests = _Digests()
        with ThreadPoolExecutor(max_workers=8) as pool:
            found = list(pool.map(lambda t: self._status(t, verify, digests), ids, chunksize=64))
        return {t: s for t, s in zip(ids, found, strict=True) if s is not None}

    def corrupt(self, verify: bool = True) -> dict[str, str]:
        """``{trial_id: problem}`` of every corrupt trial folder (``verify``: digests too)."""
        if not self.trials_dir.is_dir():
            return {}
        names = sorted(p.name for p in self.trials_dir.iterdir() if p.is_dir())
        digests = _Digests()
        with ThreadPoolExecutor(max_workers=8) as pool:
            found = list(pool.map(lambda t: self.problem(t, verify, digests), names, chunksize=64))
        return {t: why for t, why in zip(names, found, strict=True) if why is not None}

    def orphan_batches(self, used: set[str] | None = None) -> list[str]:
        """Batch files no stored trial's meta points to (left by a writer killed between
        installing the batch and its members, or whose members were all replaced); ``used``:
        the batches the metas name, when the caller has read them already."""
        if not self.batches_dir.is_dir():
            return []
        files = {p.stem for p in self.batches_dir.glob("*.parquet")}
        if not files:
            return []
        if used is None:
            with ThreadPoolExecutor(max_workers=8) as pool:
                metas = pool.map(self.read_meta, self.trial_ids(), chunksize=64)
                used = {str(m["batch"]) for m in metas if m is not None and m.get("batch")}
        return sorted(files - used)

    def batch_members(self, batch: str) -> list[str]:
        """The trial ids a batch file holds rows of ([] when it is unreadable)."""
        import pyarrow as pa
        import pyarrow.compute as pc
        import pyarrow.parquet as pq

        try:
            column = pq.read_table(self.batches_dir / f"{batch}.parquet", columns=["trial_id"])
            return sorted(str(v) for v in pc.unique(column.column(0)).to_pylist())
        except (pa.ArrowException, OSError, ValueError, KeyError):
            return []

    def completed_ids(self) -> set[str]:
        """Trials with a finished result (completed or diverged; not failed)."""
        return {t for t, s in self.statuses().items() if s in FINISHED}

    def failed_ids(self) -> set[str]:
        return {t for t, s in self.statuses().items() if s == "failed"}

    # writing --------------------------------------------------------------------------------

    def write(
        self, outcome: TrialOutcome | Mapping[str, Any], matrix_name: str | None = None
    ) -> Path:
        """Store one outcome (a TrialOutcome, or its ``to_dict()``) atomically: a batch of one,
        in its own folder with its own ``metrics.parquet``."""
        return self.write_batch([outcome], matrix_name)[0]

    def write_batch(
        self, outcomes: Sequence[TrialOutcome | Mapping[str, Any]], matrix_name: str | None = None
    ) -> list[Path]:
        """Store several outcomes (a stack's members) with their rows in one batch file; returns
        each trial's folder. The caller holds every member's claim (see the module docstring
        for the order that keeps a killed writer harmless). One outcome is stored alone."""
        self.ensure()
        checked = []
        for value in outcomes:
            try:
                checked.append(TrialOutcome.from_value(value))
            except ValueError as exc:
                tid = value.get("trial_id") if isinstance(value, Mapping) else None
                raise ValueError(f"trial {tid}: {exc}") from None
        for o in checked:
            found = trial_id(o.config)
            if found != o.trial_id:
                raise ValueError(f"trial {o.trial_id}: its config hashes to {found}")
        ids = [o.trial_id for o in checked]
        if len(set(ids)) != len(ids):
            raise ValueError(f"a batch holds trial ids more than once: {ids}")
        if len(checked) == 1:
            return [self._write_alone(checked[0], matrix_name)]
        if not checked:
            return []
        import pyarrow.parquet as pq

        batch = f"{time.strftime('%Y%m%d')}-{secrets.token_hex(8)}"
        target = self.batches_dir / f"{batch}.parquet"
        tmp = self.scratch_path(f"{batch}.parquet")
        try:
            try:
                pq.write_table(batch_table(checked), tmp)
                with open(tmp, "rb") as fh:
                    os.fsync(fh.fileno())
            except OSError as exc:
                raise _with_path(exc, target) from None
            size, digest = file_digest(tmp)
            os.rename(tmp, target)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        extra = {"batch": batch, "metrics_bytes": size, "metrics_sha256": digest}
        return [self._install_meta(o, matrix_name, extra, None) for o in checked]

    def _write_alone(self, outcome: TrialOutcome, matrix_name: str | None) -> Path:
        import pyarrow.parquet as pq

        def metrics(tmp: Path) -> dict[str, Any]:
            try:
                pq.write_table(metrics_table(outcome.metrics), tmp / METRICS_FILE)
            except OSError as exc:
                raise _with_path(exc, self.trials_dir / outcome.trial_id / METRICS_FILE) from None
            size, digest = file_digest(tmp / METRICS_FILE)
            return {"metrics_bytes": size, "metrics_sha256": digest}

        return self._install_meta(outcome, matrix_name, None, metrics)

    def _install_meta(
        self,
        outcome: TrialOutcome,
        matrix_name: str | None,
        extra: Mapping[str, Any] | None,
        metrics: Any,
    ) -> Path:
        """Write the trial's folder under ``.tmp`` (its ``metrics(tmp)`` file first, when given,
        which returns the meta keys it adds) and rename it into ``trials/``."""
        tid = outcome.trial_id
        meta = {
            "trial_id": tid,
            "config": outcome.config,
            "status": outcome.status,
            "matrix": matrix_name,
            **outcome.meta.to_dict(),
        }
        meta.pop("batch", None)
        tmp = self.tmp_dir / f"{tid}.{os.getpid()}.{_HOST}.{secrets.token_hex(4)}"
        tmp.mkdir()
        try:
            meta.update((extra or {}) if metrics is None else metrics(tmp))
            meta = seal_meta(meta)
            try:
                with open(tmp / META_FILE, "w", encoding="utf-8") as fh:
                    json.dump(meta, fh, indent=1)
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

        With ``wait`` it blocks until the lock is free and always yields True. The lock file is
        removed before the lock is released, so a finished run leaves none; a process that had
        opened the removed file finds it gone once it gets the lock (the same-file check
        below) and locks the path's new file instead, so two processes never both hold a claim.
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
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
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
