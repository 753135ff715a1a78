"""``techbench report RESULTS_DIR [--out reports/NAME] [--baseline TECHNIQUE ...]``."""

from __future__ import annotations

import argparse
import os
import sys
import time


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "report", help="build an HTML + CSV report from stored results (no re-training)"
    )
    p.add_argument("results_dir", metavar="RESULTS_DIR", help="a results store (has trials/)")
    p.add_argument("--out", help="output folder (default: reports/<name of RESULTS_DIR>)")
    p.add_argument(
        "--baseline",
        action="append",
        default=[],
        metavar="TECHNIQUE",
        help="technique to compute the probability of improvement against (repeatable)",
    )
    p.set_defaults(handler=main)


def main(args: argparse.Namespace) -> int:
    from ..errors import UsageError

    results = args.results_dir
    if not os.path.isdir(os.path.join(results, "trials")):
        raise UsageError(f"{results} is not a results store (no trials/ folder)")
    name = os.path.basename(os.path.normpath(results)) or "report"
    out = args.out or os.path.join("reports", name)

    from ..clio import writable_dir
    from ..report import build_report
    from ..report.analyze import ReportInputError

    writable_dir(out)  # fail before loading and analysing, not after
    start = time.perf_counter()
    try:
        path = build_report(results, out, baselines=args.baseline)
    except ReportInputError as exc:
        raise UsageError(str(exc)) from exc
    print(f"report: {path} ({time.perf_counter() - start:.1f} s)", file=sys.stderr)
    print(path)
    return 0
