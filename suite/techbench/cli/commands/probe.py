"""``techbench probe``: per-layer activation and gradient statistics at initialisation.

The lecture notes' experiment (seeds 003, 004, 000): a deep MLP on unit-Gaussian input, one
forward and one backward pass, no training; see :mod:`techbench.report.probe` for the exact network
and loss. Technique lists are comma-separated and accept hyper-parameters, e.g.
``--initializer 'normal(std=0.01),he_normal'``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys

DEFAULTS = {
    "activation": "tanh,relu",
    "initializer": "small_normal,large_normal,xavier_normal,he_normal",
    "normalizer": "none",
}


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "probe",
        help="activation/gradient statistics per layer at initialisation (no training)",
        description=__doc__.splitlines()[0] if __doc__ else None,
    )
    p.add_argument("--depth", type=_positive, default=10, help="number of layers (default 10)")
    p.add_argument("--width", type=_positive, default=500, help="units per layer (default 500)")
    p.add_argument("--batch", type=_positive, default=1000, help="batch size (default 1000)")
    for name, default in DEFAULTS.items():
        p.add_argument(
            f"--{name}",
            default=default,
            metavar="T,...",
            help=f"comma-separated {name}s, NAME or NAME(key=value) (default {default})",
        )
    p.add_argument("--seed", type=int, default=0, help="input, readout and weight seed")
    p.add_argument("--json", action="store_true", help="print the per-layer records as JSON")
    p.add_argument("--out", metavar="DIR", help="also write DIR/probe.html and DIR/probe.csv")
    p.add_argument(
        "--threads",
        type=_positive,
        help="torch intra-op threads (default: torch's own; 1 is often faster on busy cores)",
    )
    p.add_argument("--bins", type=_positive, default=50, help="histogram bins for --out")
    p.set_defaults(handler=main)


def _clean(value: object) -> object:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def main(args: argparse.Namespace) -> int:
    from ...errors import UsageError
    from ...report.probe import format_table, run_probe, split_technique_list, write_report
    from ...techniques.spec import ParamError

    try:
        lists = {name: split_technique_list(getattr(args, name)) for name in DEFAULTS}
    except ParamError as exc:
        raise UsageError(str(exc)) from None
    if args.batch < 2:
        raise UsageError("--batch must be at least 2")
    if args.out:
        from ..clio import writable_dir

        writable_dir(args.out)  # fail before computing, not after
    result = run_probe(
        lists["activation"],
        lists["initializer"],
        lists["normalizer"],
        depth=args.depth,
        width=args.width,
        batch=args.batch,
        seed=args.seed,
        histograms=bool(args.out),
        bins=args.bins,
        threads=args.threads,
    )
    if args.json:
        records = [{k: _clean(v) for k, v in r.items()} for r in result.records]
        json.dump(records, sys.stdout, indent=1, allow_nan=False)
        print()
    else:
        print(format_table(result))
        print(f"{len(result.combinations)} combinations in {result.seconds:.2f} s")
    if args.out:
        path = write_report(result, args.out)
        print(f"probe report: {path}", file=sys.stderr)
    return 0
