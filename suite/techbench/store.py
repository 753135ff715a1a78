"""The results store: a folder of per-trial directories, atomic, resumable, concurrency-safe.

Layout::

    OUT/
      matrix.json                        the expanded matrix as run (informational)
      trials/<trial_id>/meta.json        {"trial_id", "config", "status", "matrix", **outcome.meta}
      trials/<trial_id>/metrics.parquet  step:int64 epoch:int64 split:str metric:str layer:str value:float64
      .tmp/                              trial directories being written (and old ones being replaced)
      .locks/<trial_id>.lock             flock(2) claims, so two executors never run one trial twice
      .running/<trial_id>                pid of the process running it (to tell who crashed)

A trial directory is written complete under ``.tmp/<id>.<pid>.<random>/`` and then renamed to
``trials/<id>`` (atomic on POSIX), so a killed writer leaves no partial trial behind and a reader
never sees one. Replacing an existing result (``--rerun-failed``, or a race) renames the old one
aside first, renames the new one in, then deletes the old. Claims use ``flock``, which the kernel
drops when the holder dies, so a killed executor never leaves a stale claim.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import secrets
import shutil
import socket
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd

STATUSES = ("completed", "diverged", "failed")
METRIC_COLUMNS = ("step", "epoch", "split", "metric", "layer", "value")
META_SCALARS = (
    "wall_seconds",
    "train_seconds",
    "device",
    "diverged_step",
    "error",
    "steps",
    "epochs_run",
    "num_parameters",
    "started_at",
    "finished_at",
)
FAMILY_AXES = (
    "dataset",
    "model",
    "activation",
    "initializer",
    "bias_initializer",
    "normalizer",
    "regularizer",
    "optimizer",
    "schedule",
    "preprocessor",
)


def _get(outcome: Any, key: str, default: Any = None) -> Any:
    if isinstance(outcome, Mapping):
        return outcome.get(key, default)
    return getattr(outcome, key, default)


def _json_default(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    return repr(value)


_HOST = "@" + socket.gethostname().replace(".", "-")
"""Tags temp names, so a store on a shared filesystem only cleans up its own host's leftovers."""


def _pid_alive(pid: int) -> bool:
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


def metrics_table(rows: list[Mapping[str, Any]]) -> Any:
    """The metric rows as a pyarrow table with the store's fixed schema."""
    import pyarrow as pa

    schema = pa.schema(
        [
            ("step", pa.int64()),
            ("epoch", pa.int64()),
            ("split", pa.string()),
            ("metric", pa.string()),
            ("layer", pa.string()),
            ("value", pa.float64()),
        ]
    )
    columns: dict[str, list[Any]] = {c: [] for c in METRIC_COLUMNS}
    for row in rows:
        columns["step"].append(int(row.get("step", 0) or 0))
        columns["epoch"].append(int(row.get("epoch", 0) or 0))
        columns["split"].append(str(row.get("split", "")))
        columns["metric"].append(str(row.get("metric", "")))
        columns["layer"].append(str(row.get("layer", "") or ""))
        value = row.get("value")
        columns["value"].append(float("nan") if value is None else float(value))
    return pa.table(columns, schema=schema)


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
                return json.loads((self.trials_dir / trial_id / "meta.json").read_text())
            except FileNotFoundError:
                if not (self.trials_dir / trial_id).exists():
                    return None
                time.sleep(0.01)
            except json.JSONDecodeError:
                return None
        return None

    def status(self, trial_id: str) -> str | None:
        """``completed`` / ``diverged`` / ``failed``, or None when not stored."""
        meta = self.read_meta(trial_id)
        return None if meta is None else meta.get("status")

    def statuses(self) -> dict[str, str]:
        out = {}
        for tid in self.trial_ids():
            status = self.status(tid)
            if status is not None:
                out[tid] = status
        return out

    def completed_ids(self) -> set[str]:
        """Trials with a finished result (completed or diverged; not failed)."""
        return {t for t, s in self.statuses().items() if s in ("completed", "diverged")}

    def failed_ids(self) -> set[str]:
        return {t for t, s in self.statuses().items() if s == "failed"}

    # writing --------------------------------------------------------------------------------

    def write(self, outcome: Any, matrix_name: str | None = None) -> Path:
        """Store one outcome (a TrialOutcome or a mapping with the same keys) atomically."""
        self.ensure()
        tid = str(_get(outcome, "trial_id"))
        status = _get(outcome, "status")
        if status not in STATUSES:
            raise ValueError(f"trial {tid}: status must be one of {STATUSES}, got {status!r}")
        meta = {
            "trial_id": tid,
            "config": _get(outcome, "config"),
            "status": status,
            "matrix": matrix_name,
            **dict(_get(outcome, "meta") or {}),
        }
        tmp = self.tmp_dir / f"{tid}.{os.getpid()}.{_HOST}.{secrets.token_hex(4)}"
        tmp.mkdir()
        try:
            import pyarrow.parquet as pq

            pq.write_table(
                metrics_table(list(_get(outcome, "metrics") or [])), tmp / "metrics.parquet"
            )
            with open(tmp / "meta.json", "w", encoding="utf-8") as fh:
                json.dump(meta, fh, indent=1, default=_json_default)
                fh.flush()
                os.fsync(fh.fileno())
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
            if pid is not None and not _pid_alive(pid):
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
                    if pid <= 0 or not _pid_alive(pid):
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
        fd = os.open(self.locks_dir / f"{trial_id}.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
            except BlockingIOError:
                yield False
                return
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
            try:
                yield True
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)


def _flat_config(config: Mapping[str, Any]) -> dict[str, Any]:
    from .spec import format_technique_arg

    row: dict[str, Any] = {}
    for axis in FAMILY_AXES:
        value = config.get(axis)
        if isinstance(value, Mapping):
            row[axis] = format_technique_arg(value.get("name", ""), value.get("params") or {})
        else:
            row[axis] = value
    optimizer = config.get("optimizer") or {}
    row["lr"] = (
        (optimizer.get("params") or {}).get("lr") if isinstance(optimizer, Mapping) else None
    )
    row["seed"] = config.get("seed")
    row["data_seed"] = config.get("data_seed")
    row["norm_placement"] = config.get("norm_placement")
    budget = config.get("budget") or {}
    row["epochs"] = budget.get("epochs")
    row["max_steps"] = budget.get("max_steps")
    row["batch_size"] = budget.get("batch_size")
    return row


def load_results(out: str | os.PathLike[str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``(trials, metrics)`` DataFrames of every stored trial.

    ``trials``: one row per trial: trial_id, status, matrix, one column per family axis with the
    formatted technique (``leaky_relu(alpha=0.1)``), lr, seed, data_seed, norm_placement,
    epochs, max_steps, batch_size, the meta scalars (wall_seconds, train_seconds, device,
    diverged_step, error, steps, num_parameters, ...) and ``config`` (the canonical JSON).
    ``metrics``: the long table (trial_id, step, epoch, split, metric, layer, value).
    """
    import pandas as pd
    import pyarrow as pa
    import pyarrow.parquet as pq

    store = ResultStore(out)
    rows = []
    tables = []
    for tid in store.trial_ids():
        meta = store.read_meta(tid)
        if meta is None:
            continue
        config = meta.get("config") or {}
        row = {"trial_id": tid, "status": meta.get("status"), "matrix": meta.get("matrix")}
        row.update(_flat_config(config))
        for key in META_SCALARS:
            row[key] = meta.get(key)
        if "epochs" in meta and not isinstance(meta["epochs"], dict | list):
            row["epochs_run"] = meta["epochs"]
        row["config"] = json.dumps(config, sort_keys=True)
        rows.append(row)
        try:
            with open(store.trials_dir / tid / "metrics.parquet", "rb") as fh:  # one open: a
                table = pq.read_table(fh)  # concurrent replacement can't mix two versions
        except (FileNotFoundError, OSError):
            continue
        table = table.append_column("trial_id", pa.array([tid] * table.num_rows, pa.string()))
        tables.append(table.select(["trial_id", *METRIC_COLUMNS]))
    columns = ["trial_id", "status", "matrix", *_flat_config({}).keys(), *META_SCALARS, "config"]
    trials = pd.DataFrame(rows, columns=columns)
    if tables:
        metrics = pa.concat_tables(tables).to_pandas()
    else:
        metrics = metrics_table([]).to_pandas()
        metrics.insert(0, "trial_id", pd.Series([], dtype=object))
    return trials, metrics
