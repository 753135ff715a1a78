"""``techbench status [STORE] [--json]``: what a results store holds and what is wrong with it.

Counts by status, the distributions and versions the trials' techniques came from, each failed
trial's error line, corrupt trials (checked against their recorded digests), lock files no
process holds, and the matrices the trials came from; the next command to run is suggested for
each problem found.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

SHOW = 10


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("status", help="what a results store holds: counts, failures, corruption")
    p.add_argument("store", nargs="?", default=None, metavar="STORE", help="a results store")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--all", action="store_true", help="list every failed/corrupt trial")
    p.set_defaults(handler=main)


def _default_store() -> str:
    from ...store.integrity import is_store

    if is_store("."):
        return "."
    found = (
        sorted(p.path for p in os.scandir("results") if is_store(p.path))
        if os.path.isdir("results")
        else []
    )
    if len(found) == 1:
        return found[0]
    from ...errors import UsageError

    hint = ("stores here: " + ", ".join(found)) if found else "no store in . or results/"
    raise UsageError(f"give a results store ({hint})")


def main(args: argparse.Namespace) -> int:
    from ...errors import UsageError
    from ...store.integrity import inspect_store, is_store

    out = args.store or _default_store()
    if not os.path.isdir(out):
        raise UsageError(f"{out}: no such folder")
    if not is_store(out):
        raise UsageError(f"{out} is not a results store (no trials/ folder)")
    report = inspect_store(out)
    if args.json:
        json.dump(report.as_dict(), sys.stdout, indent=1)
        print()
        return 0
    limit = None if args.all else SHOW
    total = sum(report.counts.values())
    counts = ", ".join(f"{n} {s}" for s, n in report.counts.items())
    print(f"store {out}: {total} trials ({counts}), {len(report.corrupt)} corrupt")
    matrices = ", ".join(f"{m} ({n} trials)" for m, n in report.matrices.items()) or "none"
    print(
        f"  matrices: {matrices}"
        + (f"; matrix.json: {report.matrix_file}" if report.matrix_file else "")
    )
    if report.versions:
        found = ", ".join(f"{v} ({n} trials)" for v, n in report.versions.items())
        print(f"  plugin versions: {found}")
    _section("failed", report.failed, limit)
    _section("corrupt (not scored; a rerun redoes them)", report.corrupt, limit)
    print(
        f"  locks: {len(report.stale_locks)} stale (no process holds them), "
        f"{len(report.held_locks)} held by running trials"
        + (": " + ", ".join(report.held_locks[:SHOW]) if report.held_locks else "")
    )
    if report.orphan_batches:
        print(
            f"  orphan batch files (no trial names them; no result lost): "
            f"{len(report.orphan_batches)}"
        )
    hints = []
    if report.failed:
        hints.append(f"techbench clean {out} --failed")
    if report.corrupt or report.orphan_batches:
        hints.append(f"techbench clean {out} --corrupt")
    if report.stale_locks:
        hints.append(f"techbench clean {out} --locks")
    if hints:
        print("  to clean: " + "; ".join(hints))
    return 0


def _section(title: str, items: dict[str, str], limit: int | None) -> None:
    if not items:
        return
    print(f"  {title}: {len(items)}")
    shown = list(items.items())[:limit] if limit is not None else list(items.items())
    for tid, line in shown:
        print(f"    {tid}  {line}")
    if len(shown) < len(items):
        print(f"    ... and {len(items) - len(shown)} more (--all lists them)")
