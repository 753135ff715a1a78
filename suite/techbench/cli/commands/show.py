"""``techbench show NAME [--json]``: one technique's card.

Family, summary, citation, the distribution that provides it and its version, each
hyper-parameter (type, default, valid range, search range where the spec declares one), declared
properties and tags, and where the fast and reference implementations live (module, object,
file). ``family/name`` picks one when a name is in several families, ``dist:name`` one of the
distributions that register it.
"""

from __future__ import annotations

import argparse
import inspect
import json
import sys
from typing import Any


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("show", help="one technique: summary, citation, hyper-parameters, code")
    p.add_argument(
        "name", metavar="NAME", help="a technique: adam, optimizer/adam or techbench:adam"
    )
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(handler=main)


def _where(obj: Any) -> dict[str, Any] | None:
    if obj is None:
        return None
    if isinstance(obj, str):
        from ...techniques.spec import resolve

        text = obj
        try:
            obj = resolve(obj)
        except Exception:
            return {"object": text, "file": None}
    if not hasattr(obj, "__qualname__"):  # an instance (e.g. an update rule): its step function
        kind, cls = type(obj).__qualname__, type(obj)
        obj = next(
            (getattr(obj, a) for a in ("step", "forward", "__call__") if hasattr(obj, a)), obj
        )
        if not hasattr(obj, "__qualname__") or not inspect.isfunction(obj):
            obj = cls
        name = f"{kind} with {getattr(obj, '__module__', '?')}:{getattr(obj, '__qualname__', '?')}"
    else:
        name = f"{getattr(obj, '__module__', '?')}:{obj.__qualname__}"
    try:
        path = inspect.getsourcefile(obj)
        line = inspect.getsourcelines(obj)[1]
    except (TypeError, OSError):
        path, line = None, None
    return {"object": name, "file": f"{path}:{line}" if path else None}


def _param(p: Any) -> dict[str, Any]:
    search = getattr(p, "search", None)
    return {
        "name": p.name,
        "type": p.type.__name__,
        "default": p.default,
        "valid": p.allowed(),
        "search": search if search is None or isinstance(search, str) else repr(search),
        "doc": p.doc,
    }


def card(name: str) -> dict[str, Any]:
    """The technique's card as a JSON-able dict (``TechniqueError`` for an unknown, ambiguous or
    broken name, with the registry's hint)."""
    from ...techniques.registry import default_registry

    registry = default_registry()
    entry = registry.entry(name)
    spec = entry.spec
    assert spec is not None
    return {
        "name": spec.name,
        "qualified_name": entry.full_name,
        "family": spec.family,
        "summary": spec.summary,
        "citation": spec.citation,
        "distribution": entry.distribution,
        "version": registry.source(entry.full_name, entry.family)["version"],
        "entry_point": entry.value,
        "params": [_param(p) for p in spec.params],
        "properties": {k: v for k, v in spec.properties.items()},
        "tags": list(spec.tags),
        "fast": _where(spec.fast),
        "reference": _where(spec.reference),
        "stacked": _where(spec.stacked),
    }


def main(args: argparse.Namespace) -> int:
    info = card(args.name)
    if args.json:
        json.dump(info, sys.stdout, indent=1, default=repr)
        print()
        return 0
    print(f"{info['name']} ({info['family']}, {info['qualified_name']}): {info['summary']}")
    if info["citation"]:
        print(f"  citation: {info['citation']}")
    print(f"  provided by: {info['distribution']} {info['version'] or ''}".rstrip())
    if info["params"]:
        print("  hyper-parameters:")
        for p in info["params"]:
            search = f"; search {p['search']}" if p["search"] is not None else ""
            doc = f"  - {p['doc']}" if p["doc"] else ""
            print(
                f"    {p['name']}: {p['type']} = {p['default']!r}; valid {p['valid']}{search}{doc}"
            )
    else:
        print("  hyper-parameters: none")
    if info["properties"]:
        props = ", ".join(f"{k}={v!r}" for k, v in info["properties"].items())
        print(f"  properties: {props}")
    if info["tags"]:
        print(f"  tags: {', '.join(info['tags'])}")
    for side in ("fast", "reference", "stacked"):
        where = info[side]
        if where is None and side == "stacked":
            continue
        if where is None:
            print(f"  {side}: none")
        else:
            print(f"  {side}: {where['object']}" + (f" ({where['file']})" if where["file"] else ""))
    return 0
