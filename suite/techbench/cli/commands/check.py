"""``techbench check NAME... | --all [--family F]``: run the conformance suite, exit 1 on failure."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace

from ...errors import UsageError
from ...techniques.spec import FAMILIES


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("check", help="check techniques against their references")
    p.add_argument(
        "names", nargs="*", metavar="NAME", help="technique names (or family/name, dist:name)"
    )
    p.add_argument("--all", action="store_true", help="every registered technique")
    p.add_argument("--family", choices=FAMILIES, help="restrict --all to one family")
    p.add_argument("--json", action="store_true", help="print the results as a JSON array")
    p.add_argument("-v", "--verbose", action="store_true", help="one line per check")
    p.set_defaults(handler=main)


def main(args: argparse.Namespace) -> int:
    from ...techniques.registry import default_registry
    from ...testing import check_technique

    registry = default_registry()
    if args.all == bool(args.names):
        raise UsageError("give technique names or --all (not both)")
    if args.all:
        entries = registry.entries(args.family)
        broken = [e for e in entries if e.spec is None]
        entries = [e for e in entries if e.spec is not None]
    else:
        entries = [registry.entry(n, args.family) for n in args.names]
        broken = []
    results = [
        r if registry.plain_name(e) else replace(r, technique=f"{e.family}/{e.full_name}")
        for e in entries
        if e.spec is not None
        for r in check_technique(e.spec)
    ]
    failed = [r for r in results if not r.passed]
    if args.json:
        json.dump([r.as_dict() for r in results], sys.stdout, indent=1)
        print()
    else:
        _print_table(results, args.verbose)
        for e in broken:
            print(
                f"BROKEN  {e.qualified_name} [{e.distribution}]: {(e.error or '').splitlines()[0]}"
            )
        for r in failed:
            print(f"\nFAILED  {r.technique} :: {r.check}\n  " + r.message.replace("\n", "\n  "))
        n_tech = len(entries)
        print(
            f"\n{len(results) - len(failed)} passed, {len(failed)} failed "
            f"({n_tech} techniques, {len(broken)} broken plugins)"
        )
    return 1 if failed or broken else 0


def _print_table(results: list, verbose: bool) -> None:
    by_tech: dict[str, list] = {}
    for r in results:
        by_tech.setdefault(r.technique, []).append(r)
    width = max((len(t) for t in by_tech), default=9)
    for tech, rs in by_tech.items():
        ok = sum(r.passed for r in rs)
        status = "ok  " if ok == len(rs) else "FAIL"
        secs = sum(r.seconds for r in rs)
        print(f"{status}  {tech:<{width}}  {ok}/{len(rs)} checks  {secs:6.2f}s")
        if verbose:
            for r in rs:
                print(f"        {'pass' if r.passed else 'FAIL'}  {r.check}")
