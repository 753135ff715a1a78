"""``techbench report RESULTS_DIR [RESULTS_DIR ...] [--out DIR] [--score final|best]
[--matrix NAME] [--wall-clock] [--min-effect DELTA] [--baseline TECHNIQUE ...]``."""

from __future__ import annotations

import argparse
import os
import sys
import time


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "report", help="build an HTML + CSV report from stored results (no re-training)"
    )
    p.add_argument(
        "results_dir",
        metavar="RESULTS_DIR",
        nargs="+",
        help="a results store (has trials/); several are reported together, each trial id "
        "counted once",
    )
    p.add_argument("--out", help="output folder (default: reports/<name of RESULTS_DIR>)")
    p.add_argument(
        "--score",
        choices=("final", "best"),
        help="score each run at its final epoch or its best-validation epoch "
        "(default: the matrix's [report] score, else final)",
    )
    p.add_argument("--matrix", metavar="NAME", help="report the trials of one matrix of a store")
    p.add_argument(
        "--wall-clock",
        action="store_true",
        help="also profile time-to-target on raw wall-clock seconds (noisy under load)",
    )
    p.add_argument(
        "--min-effect",
        type=_positive,
        metavar="DELTA",
        help="smallest score difference that matters: seeds to detect it, and 'equivalent' "
        "when the margin's interval rules it out (default: the matrix's [report] min_effect)",
    )
    p.add_argument(
        "--baseline",
        action="append",
        default=[],
        metavar="TECHNIQUE",
        help="technique to compute the probability of improvement against (repeatable)",
    )
    p.set_defaults(handler=main)


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text!r}")
    return value


def main(args: argparse.Namespace) -> int:
    from ...errors import UsageError

    stores = list(args.results_dir)
    for results in stores:
        if not os.path.isdir(os.path.join(results, "trials")):
            raise UsageError(f"{results} is not a results store (no trials/ folder)")
    from ...report.analyze import ReportInputError
    from ...report.inputs import refuse_repeated_stores

    try:
        refuse_repeated_stores(stores)
    except ReportInputError as exc:
        raise UsageError(str(exc)) from exc
    name = "-vs-".join(os.path.basename(os.path.normpath(r)) or "report" for r in stores)
    out = args.out or os.path.join("reports", name)

    from ...report import build_report
    from ..clio import writable_dir

    writable_dir(out)  # fail before loading and analysing, not after
    start = time.perf_counter()
    try:
        path = build_report(
            stores if len(stores) > 1 else stores[0],
            out,
            baselines=args.baseline,
            score=args.score,
            matrix=args.matrix,
            wall_clock=args.wall_clock,
            min_effect=args.min_effect,
        )
    except ReportInputError as exc:
        raise UsageError(str(exc)) from exc
    except OSError as exc:
        print(f"techbench report: cannot write {out}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    print(f"report: {path} ({time.perf_counter() - start:.1f} s)", file=sys.stderr)
    print(path)
    return 0
