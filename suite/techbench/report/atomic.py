"""Publish a report folder all at once: a failed or killed build never leaves a half report.

The build writes every file into a hidden staging folder next to the output (same file system),
then :func:`staging` swaps it in with renames: the previous report folder is renamed aside, the
staged one renamed into place, the old one removed. A reader sees the old report, briefly none,
or the new one; never a truncated ``index.html`` or CSVs of two builds. A folder that holds files
the report did not write (no :data:`MARKER`, not empty) is never swapped away: the staged files
are moved into it one by one with :func:`os.replace` (each atomic), ``index.html`` last.
Staging folders of killed builds (their process gone) are removed by the next build.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path

from ..store.writer import pid_alive

MARKER = ".techbench-report"
"""Empty file marking a folder as a whole techbench report (safe to replace as a unit)."""


def _sweep(out: Path) -> None:
    for old in out.parent.glob(f".{out.name}.building-*"):
        try:
            pid = int(old.name.rsplit("-", 2)[-2])
        except (ValueError, IndexError):
            continue
        if pid != os.getpid() and not pid_alive(pid):
            shutil.rmtree(old, ignore_errors=True)


def _owned(out: Path) -> bool:
    return (out / MARKER).exists() or not any(out.iterdir())


def publish(stage: Path, out: Path) -> None:
    """Swap the staged folder in for ``out`` (see the module docstring)."""
    if not out.exists():
        os.replace(stage, out)
        return
    if out.is_dir() and _owned(out):
        aside = out.with_name(f".{out.name}.old-{os.getpid()}-{secrets.token_hex(4)}")
        os.replace(out, aside)
        os.replace(stage, out)
        shutil.rmtree(aside, ignore_errors=True)
        return
    names = sorted(p.name for p in stage.iterdir())
    names.sort(key=lambda n: n == "index.html")
    for name in names:
        if name != MARKER:
            os.replace(stage / name, out / name)
    shutil.rmtree(stage, ignore_errors=True)


@contextlib.contextmanager
def staging(out: Path) -> Iterator[Path]:
    """A fresh staging folder for ``out``; published on success, removed on any failure."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"{out} exists and is not a folder")
    out.parent.mkdir(parents=True, exist_ok=True)
    _sweep(out)
    stage = out.with_name(f".{out.name}.building-{os.getpid()}-{secrets.token_hex(4)}")
    stage.mkdir()
    try:
        (stage / MARKER).touch()
        yield stage
        publish(stage, out)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
