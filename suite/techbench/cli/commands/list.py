"""``techbench list [--family F] [--json] [PATTERN]``: registered techniques and broken plugins.

``--json`` rows also carry the distribution's version, the qualified name
(``<distribution>:<name>``), the hyper-parameters (name, type, default, valid range;
:meth:`techbench.techniques.spec.Param.describe`) and the declared properties at the defaults. A name that
several distributions register is listed once per distribution, by the name that reaches it, with
a warning on stderr saying who keeps the plain name.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings

from ...techniques.registry import PluginWarning, default_registry
from ...techniques.spec import FAMILIES


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("list", help="list registered techniques (and plugins that failed to load)")
    p.add_argument(
        "pattern", nargs="?", help="fnmatch filter on the name or dist:name, e.g. 'he_*', 'mypkg:*'"
    )
    p.add_argument("--family", choices=FAMILIES)
    p.add_argument("--json", action="store_true", help="print a JSON array")
    p.set_defaults(handler=main)


def main(args: argparse.Namespace) -> int:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PluginWarning)  # shown in the listing itself
        registry = default_registry()
        entries = registry.entries(args.family, args.pattern)
    rows = []
    for e in entries:
        described = e.spec.describe() if e.spec else {}
        dist = getattr(e.entry_point, "dist", None)
        rows.append(
            {
                "name": e.name,
                "qualified_name": e.full_name,
                "plain_name": registry.plain_name(e),
                "family": e.family,
                "summary": e.spec.summary if e.spec else "",
                "citation": e.spec.citation if e.spec else None,
                "distribution": e.distribution,
                "version": getattr(dist, "version", None),
                "entry_point": e.value,
                "status": e.status,
                "error": e.error,
                "params": described.get("params", []),
                "properties": described.get("properties", {}),
            }
        )
    shown = {(e.family, e.name) for e in entries}
    for key, line in registry.clashes().items():
        if key in shown:
            print(f"techbench list: warning: {line}", file=sys.stderr)
    if args.json:
        json.dump(rows, sys.stdout, indent=1)
        print()
    else:
        _print_table(rows)
    return 0


def _print_table(rows: list[dict]) -> None:
    """One line per technique under its family, by the name that reaches it."""
    names = [r["name"] if r["plain_name"] else r["qualified_name"] for r in rows]
    width = max((len(n) for n in names), default=4)
    family = None
    for name, r in zip(names, rows, strict=True):
        if r["family"] != family:
            if family is not None:
                print()
            family = r["family"]
            print(f"{family}s:")
        if r["status"] == "ok":
            print(f"  {name:<{width}}  {r['summary']}  [{r['distribution']}]")
        else:
            first = (r["error"] or "").splitlines()[0]
            print(f"  {name:<{width}}  ERROR: {first}  [{r['distribution']}]")
    broken = sum(r["status"] == "error" for r in rows)
    print(f"\n{len(rows)} registered, {broken} broken")
