"""``techbench clean STORE --failed | --corrupt | --locks``: remove what a store should not keep.

``--failed`` removes trials stored as failed (a rerun then runs them, as ``--rerun-failed``
would); ``--corrupt`` removes corrupt trial folders (see ``techbench status``) and batch files
no trial points to any more; ``--locks``
removes lock files no process holds (each tested with ``flock`` first; a running trial's lock is
kept) and running markers of dead processes. Finished trials are never touched.
"""

from __future__ import annotations

import argparse
import os


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("clean", help="remove failed or corrupt trials and stale lock files")
    p.add_argument("store", metavar="STORE", help="a results store")
    p.add_argument("--failed", action="store_true", help="remove trials stored as failed")
    p.add_argument("--corrupt", action="store_true", help="remove corrupt trial folders")
    p.add_argument("--locks", action="store_true", help="remove lock files no process holds")
    p.set_defaults(handler=main)


def main(args: argparse.Namespace) -> int:
    from ...errors import UsageError
    from ...store.integrity import (
        clean_corrupt,
        clean_failed,
        clean_locks,
        clean_orphan_batches,
        is_store,
    )

    if not (args.failed or args.corrupt or args.locks):
        raise UsageError("say what to remove: --failed, --corrupt and/or --locks")
    if not os.path.isdir(args.store) or not is_store(args.store):
        raise UsageError(f"{args.store} is not a results store (no trials/ folder)")
    if args.corrupt:
        removed = clean_corrupt(args.store)
        print(f"removed {len(removed)} corrupt trial{'s' * (len(removed) != 1)}")
        orphans = clean_orphan_batches(args.store)
        if orphans:
            print(f"removed {len(orphans)} batch file{'s' * (len(orphans) != 1)} no trial uses")
    if args.failed:
        ids = clean_failed(args.store)
        print(f"removed {len(ids)} failed trial{'s' * (len(ids) != 1)}")
    if args.locks:
        gone, held = clean_locks(args.store)
        print(
            f"removed {len(gone)} stale lock file{'s' * (len(gone) != 1)}; {len(held)} held, kept"
        )
    return 0
