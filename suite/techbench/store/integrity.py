"""What a results store holds and what is wrong with it; removing what is safe to remove.

:func:`inspect_store` is what ``techbench status`` prints: counts by status, each failed trial's
error line, corrupt trials (see :mod:`techbench.store`), lock files and whether a live process
holds them, and the matrices the trials came from. ``techbench clean`` calls :func:`clean_failed`,
:func:`clean_corrupt` (and :func:`clean_orphan_batches`) and :func:`clean_locks`.

A lock file is *stale* when no process holds its ``flock``; it is removed only while this process
holds the lock itself, and :meth:`techbench.store.ResultStore.claim` re-checks after locking that
the file it locked is still the one at the path, so a claim racing with the removal retries on
the new file instead of holding a lock nobody else sees.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..schema import STATUSES
from ..techniques.provenance import distribution_versions
from .writer import ResultStore, same_file

MAX_ERROR_LINE = 200


def error_line(error: str | None) -> str:
    """The line of a stored error that says what went wrong.

    For a Python traceback that is the exception line (the first line after the frames, e.g.
    ``DatasetFilesMissing: mnist: no data folder ...``), not "Traceback (most recent call last):".
    """
    lines = [ln for ln in (error or "").strip().splitlines() if ln.strip()]
    if not lines:
        return "(no error recorded)"
    line = lines[0]
    starts = [i for i, ln in enumerate(lines) if ln.startswith("Traceback (most recent call last)")]
    if starts:
        rest = lines[starts[-1] + 1 :]
        line = next((ln for ln in rest if not ln.startswith((" ", "\t"))), lines[-1])
    line = line.strip()
    return line if len(line) <= MAX_ERROR_LINE else line[: MAX_ERROR_LINE - 3] + "..."


@dataclass
class StoreReport:
    """What :func:`inspect_store` found (``as_dict`` is ``techbench status --json``)."""

    root: str
    counts: dict[str, int] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)
    corrupt: dict[str, str] = field(default_factory=dict)
    stale_locks: list[str] = field(default_factory=list)
    held_locks: list[str] = field(default_factory=list)
    matrices: dict[str, int] = field(default_factory=dict)
    matrix_file: str | None = None
    versions: dict[str, int] = field(default_factory=dict)
    """"distribution version" of the trials' techniques -> number of trials using it."""
    orphan_batches: list[str] = field(default_factory=list)
    """Batch files no trial's meta names (a writer killed between a stack's rows and its
    members' metas): they hold no result, and ``clean --corrupt`` removes them."""

    def as_dict(self) -> dict[str, Any]:
        return {
            "store": self.root,
            "trials": sum(self.counts.values()),
            "counts": self.counts,
            "failed": [{"trial_id": t, "error": e} for t, e in self.failed.items()],
            "corrupt": [{"trial_id": t, "problem": p} for t, p in self.corrupt.items()],
            "stale_locks": self.stale_locks,
            "held_locks": self.held_locks,
            "matrices": self.matrices,
            "matrix_json": self.matrix_file,
            "plugin_versions": self.versions,
            "orphan_batches": self.orphan_batches,
        }


def lock_held(path: str | os.PathLike[str]) -> bool:
    """Whether a live process holds the ``flock`` on ``path`` (False when it does not exist)."""
    return lock_state(path) == "held"


def lock_state(path: str | os.PathLike[str]) -> str | None:
    """``"held"`` (a live process holds the ``flock`` on ``path``), ``"stale"`` (nobody does:
    its holder was killed before releasing it) or None (no such file, or its holder removed it
    while we looked: a claim removes its lock file when it ends, see ``ResultStore.claim``)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return "held"
    else:
        return "stale" if same_file(fd, Path(path)) else None
    finally:
        os.close(fd)


def inspect_store(out: str | os.PathLike[str], verify: bool = True) -> StoreReport:
    """Everything ``techbench status`` shows; ``verify`` checks every metrics file's digest."""
    store = ResultStore(out)
    report = StoreReport(root=str(store.root))
    report.corrupt = store.corrupt(verify=verify)
    counts: Counter[str] = Counter({s: 0 for s in STATUSES})
    matrices: Counter[str] = Counter()
    versions: Counter[str] = Counter()
    used: set[str] = set()
    for tid in store.trial_ids():
        meta = store.read_meta(tid)
        if meta is not None and meta.get("batch"):
            used.add(str(meta["batch"]))
        if tid in report.corrupt or meta is None:
            continue
        status = str(meta.get("status"))
        counts[status] += 1
        matrices[str(meta.get("matrix") or "(none)")] += 1
        versions.update(distribution_versions(meta))
        if status == "failed":
            report.failed[tid] = error_line(meta.get("error"))
    report.counts = dict(counts)
    report.orphan_batches = store.orphan_batches(used)
    report.matrices = dict(matrices.most_common())
    report.versions = dict(sorted(versions.items()))
    if store.locks_dir.is_dir():
        for lock in sorted(store.locks_dir.glob("*.lock")):
            state = lock_state(lock)
            if state is not None:
                (report.held_locks if state == "held" else report.stale_locks).append(lock.stem)
    info = store.root / "matrix.json"
    if info.is_file():
        try:
            report.matrix_file = str(json.loads(info.read_text(encoding="utf-8")).get("name"))
        except (OSError, ValueError, AttributeError):
            report.matrix_file = "(unreadable matrix.json)"
    return report


def _remove_trial(store: ResultStore, tid: str) -> bool:
    """Remove one trial folder under its claim (moved aside first, so readers never see half)."""
    with store.claim(tid) as claimed:
        if not claimed:
            return False
        folder = store.trials_dir / tid
        if not folder.exists():
            return False
        aside = store.scratch_path(f"{tid}.clean")
        os.rename(folder, aside)
        shutil.rmtree(aside, ignore_errors=True)
        return True


def clean_failed(out: str | os.PathLike[str]) -> list[str]:
    """Remove the trials stored as failed (a rerun then runs them); returns their ids."""
    store = ResultStore(out)
    removed = []
    for tid, status in store.statuses().items():
        if status == "failed" and _status_still(store, tid, "failed") and _remove_trial(store, tid):
            removed.append(tid)
    return removed


def _status_still(store: ResultStore, tid: str, status: str) -> bool:
    meta = store.read_meta(tid)
    return meta is not None and meta.get("status") == status


def clean_corrupt(out: str | os.PathLike[str]) -> dict[str, str]:
    """Remove corrupt trial folders (re-checked under each one's claim); ``{id: problem}``."""
    store = ResultStore(out)
    removed = {}
    for tid, why in store.corrupt(verify=True).items():
        with store.claim(tid) as claimed:
            if not claimed or store.problem(tid, verify=True) is None:
                continue
            folder = store.trials_dir / tid
            aside = store.scratch_path(f"{tid}.clean")
            os.rename(folder, aside)
            shutil.rmtree(aside, ignore_errors=True)
            removed[tid] = why
    return removed


def clean_orphan_batches(out: str | os.PathLike[str]) -> list[str]:
    """Remove batch files no stored trial points to (see :mod:`techbench.store`); their names.

    A writer holds every member's claim from before it installs a batch file until its members'
    metas are in, so a batch is removed only while this process holds all its members' claims
    and none of their metas names it."""
    store = ResultStore(out)
    removed = []
    for batch in store.orphan_batches():
        members = store.batch_members(batch)
        with contextlib.ExitStack() as held:
            if not all(held.enter_context(store.claim(m)) for m in members):
                continue
            if any((store.read_meta(m) or {}).get("batch") == batch for m in members):
                continue
            (store.batches_dir / f"{batch}.parquet").unlink(missing_ok=True)
            removed.append(batch)
    return removed


def clean_locks(out: str | os.PathLike[str]) -> tuple[list[str], list[str]]:
    """Remove lock files no process holds; ``(removed, held)`` trial ids.

    Each is unlinked while this process holds its lock, so no claim is taken in between."""
    store = ResultStore(out)
    removed: list[str] = []
    held: list[str] = []
    if not store.locks_dir.is_dir():
        return removed, held
    for lock in sorted(store.locks_dir.glob("*.lock")):
        try:
            fd = os.open(lock, os.O_RDWR)
        except FileNotFoundError:
            continue
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                held.append(lock.stem)
                continue
            if same_file(fd, lock):
                lock.unlink()
                removed.append(lock.stem)
        finally:
            os.close(fd)
    store.cleanup()
    return removed, held


def is_store(out: str | os.PathLike[str]) -> bool:
    """Whether ``out`` looks like a results store (has ``trials/`` or ``matrix.json``)."""
    root = Path(out)
    return (root / "trials").is_dir() or (root / "matrix.json").is_file()
