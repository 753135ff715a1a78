"""``techbench data list [--json] | fetch NAME... [--root DIR] [--mirror URL]``: dataset files.

``list`` shows every dataset plugin (source, size, licence, citation, whether its files are
present and where); ``fetch`` downloads into the cache (``$TECHBENCH_DATA``, default
``$XDG_CACHE_HOME/techbench``), resuming and verifying checksums; see :mod:`techbench.data`.
A failed fetch prints one line per dataset and exits 1; an unknown name or a bad manifest is a
usage error (exit 2).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from pathlib import Path
from typing import Any

from ...errors import UsageError, did_you_mean


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "data",
        help="list dataset plugins and fetch their files (checksummed, resumable)",
        description="List dataset plugins and fetch their files into the cache "
        "($TECHBENCH_DATA, default $XDG_CACHE_HOME/techbench or ~/.cache/techbench).",
    )
    dsub = p.add_subparsers(dest="data_command", metavar="{list,fetch}")
    manifest_help = "JSON manifest whose datasets replace the built-in entries (default: $%s)"

    lp = dsub.add_parser("list", help="every dataset plugin: source, size, licence, local copy")
    lp.add_argument("--json", action="store_true", help="print a JSON array")
    lp.add_argument(
        "--root", metavar="DIR", help="cache root to look in (default: $TECHBENCH_DATA)"
    )
    lp.add_argument("--manifest", metavar="PATH", help=manifest_help % "TECHBENCH_DATA_MANIFEST")
    lp.set_defaults(handler=main_list)

    fp = dsub.add_parser("fetch", help="download and verify datasets into the cache")
    fp.add_argument("names", nargs="+", metavar="NAME", help="datasets (see `techbench data list`)")
    fp.add_argument(
        "--root", metavar="DIR", help="cache root (default: $TECHBENCH_DATA or the XDG cache)"
    )
    fp.add_argument(
        "--mirror",
        metavar="URL",
        help="fetch URL/<dataset>/<file> instead of the original hosts "
        "(default: $TECHBENCH_DATA_MIRROR); http(s):// or file://",
    )
    fp.add_argument("--manifest", metavar="PATH", help=manifest_help % "TECHBENCH_DATA_MANIFEST")
    fp.add_argument("--timeout", type=float, default=30.0, help="seconds per connection (30)")
    fp.add_argument(
        "--retries",
        type=int,
        default=3,
        help="resume attempts in a row without new bytes before giving up (3; 0: none)",
    )
    fp.set_defaults(handler=main_fetch)
    p.set_defaults(handler=lambda args: _no_subcommand(p))


def _no_subcommand(parser: argparse.ArgumentParser) -> int:
    parser.print_help(sys.stderr)
    return 2


def _manifest(args: argparse.Namespace) -> dict[str, Any]:
    from ...data import ManifestError, load_manifest

    try:
        return load_manifest(args.manifest)
    except ManifestError as exc:
        raise UsageError(str(exc)) from None


def _size(n: int | None) -> str:
    if n is None:
        return "?"
    value = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1000 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{n} B"


def _rows(args: argparse.Namespace) -> list[dict[str, Any]]:
    from ...data import dataset_dir, missing_files
    from ...techniques.registry import PluginWarning, default_registry

    manifest = _manifest(args)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PluginWarning)
        entries = default_registry().entries("dataset")
    specs = {e.name: e.spec for e in entries if e.spec is not None}
    rows = []
    for name in sorted(set(specs) | set(manifest)):
        spec, entry = specs.get(name), manifest.get(name)
        props = dict(spec.properties) if spec is not None else {}
        source = props.get("source", "files" if entry else "?")
        env_var = props.get("env_var")
        row: dict[str, Any] = {
            "name": name,
            "plugin": spec is not None,
            "summary": spec.summary if spec is not None else (entry.title if entry else ""),
            "source": source,
            "url": entry.base_url if entry else None,
            "size": entry.size if entry else None,
            "licence": entry.licence if entry else None,
            "citation": (spec.citation if spec is not None else None)
            or (entry.citation if entry else None),
            "env_var": env_var,
            "present": source in ("bundled", "synthetic"),
            "path": None,
            "missing": [],
        }
        if source == "files" or entry is not None:
            override = os.environ.get(env_var, "") if env_var else ""
            folder = Path(override).expanduser() if override else dataset_dir(name, args.root)
            row["path"] = str(folder)
            if entry is not None:
                row["missing"] = missing_files(entry, folder)
                row["present"] = folder.is_dir() and not row["missing"]
            else:
                row["present"] = folder.is_dir() and any(folder.iterdir())
        rows.append(row)
    return rows


def main_list(args: argparse.Namespace) -> int:
    rows = _rows(args)
    if args.json:
        json.dump(rows, sys.stdout, indent=1)
        print()
        return 0
    width = max((len(r["name"]) for r in rows), default=4)
    for r in rows:
        if r["source"] in ("bundled", "synthetic"):
            where = f"{r['source']}, always available"
        elif r["present"]:
            where = f"present: {r['path']}"
        else:
            where = f"not fetched (expected in {r['path']})"
        size = _size(r["size"]) if r["url"] else "-"
        print(f"{r['name']:<{width}}  {size:>8}  {where}")
        details = [r["url"]] if r["url"] else []
        if r["licence"]:
            details.append(f"licence: {r['licence']}")
        if r["citation"]:
            details.append(f"cite: {r['citation']}")
        if not r["plugin"]:
            details.append("no dataset plugin installed for it")
        if details:
            print(f"{'':<{width}}  {'':>8}  " + "; ".join(details))
    fetched = sum(r["present"] and r["url"] is not None for r in rows)
    print(f"\n{len(rows)} datasets, {fetched} of {sum(r['url'] is not None for r in rows)} fetched")
    return 0


def main_fetch(args: argparse.Namespace) -> int:
    from ...data import DataError, DatasetFileError, cache_root, fetch

    manifest = _manifest(args)
    for name in args.names:
        if name not in manifest:
            hint = did_you_mean(name, manifest)
            raise UsageError(f"no dataset {name!r} to fetch; {hint}")
    if args.retries < 0 or args.timeout <= 0:
        raise UsageError("--retries must be >= 0 and --timeout > 0")
    failed = 0
    for name in dict.fromkeys(args.names):
        try:
            folder = fetch(
                manifest[name],
                root=args.root,
                mirror=args.mirror,
                timeout=args.timeout,
                retries=args.retries,
                say=lambda line: print(line, file=sys.stderr),
            )
        except (DataError, DatasetFileError) as exc:
            print(f"techbench data fetch: error: {exc}", file=sys.stderr)
            failed += 1
            continue
        print(f"{name}: {folder}")
    if args.root and not failed and Path(args.root).expanduser() != cache_root():
        print(
            f"note: the dataset plugins read the cache; set TECHBENCH_DATA={args.root} "
            "to use these files",
            file=sys.stderr,
        )
    return 1 if failed else 0
