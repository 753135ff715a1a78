"""Narrowing a matrix from the command line: ``--filter AXIS=VALUE``, ``--seeds``, ``--epochs``,
``--accelerator``.

``--seeds``, ``--epochs`` and ``--accelerator`` change the matrix before it expands, so they
change the trials' configs and therefore their ids (a 1-epoch smoke run never mixes with the full
run's results). ``--filter`` keeps the trials whose axis has that value: a technique matches by
name (``optimizer=adam``, or qualified ``optimizer=techbench:adam``) or by its full label
(``optimizer=adam(lr=0.003)``); filters on one axis are alternatives, filters on different axes
must all hold.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
from collections.abc import Sequence
from typing import Any

from .errors import UsageError, did_you_mean
from .schema import AXES, AXIS_FAMILY

FILTER_KEYS: tuple[str, ...] = (*AXES, "seed", "data_seed")


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The narrowing flags of ``techbench run``."""
    g = p.add_argument_group("narrow the matrix (changes the trials, so their ids)")
    g.add_argument(
        "--filter",
        action="append",
        default=[],
        metavar="AXIS=VALUE",
        help="keep trials with this value (repeatable; e.g. activation=relu, seed=0)",
    )
    g.add_argument("--seeds", type=int, metavar="N", help="use seeds 0..N-1")
    g.add_argument("--epochs", type=int, metavar="N", help="train every trial N epochs")
    g.add_argument("--accelerator", metavar="NAME", help="cpu, gpu, cuda, mps or auto")


def parse_filters(texts: Sequence[str]) -> dict[str, list[str]]:
    """``["activation=relu", "seed=0"]`` -> ``{"activation": ["relu"], "seed": ["0"]}``."""
    out: dict[str, list[str]] = {}
    for text in texts:
        key, sep, value = text.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not key or not value:
            raise UsageError(f"--filter {text!r}: expected AXIS=VALUE, e.g. activation=relu")
        if key not in FILTER_KEYS:
            raise UsageError(
                f"--filter {text!r}: unknown axis {key!r} ({did_you_mean(key, FILTER_KEYS)})"
            )
        out.setdefault(key, []).append(value)
    return out


def _labels(key: str, value: Any) -> set[str]:
    if key in AXIS_FAMILY:
        from .matrix import _label

        return {str(value["name"]), _label(value), *_qualified(value["name"], AXIS_FAMILY[key])}
    return {str(value)}


@functools.cache
def _qualified(name: str, family: str) -> tuple[str, ...]:
    """``dist:name`` of a technique, so ``--filter regularizer=techbench:l2`` matches ``l2``."""
    from .registry import default_registry
    from .spec import TechniqueError

    try:
        return (default_registry().resolve(name, family).full_name,)
    except TechniqueError:
        return ()


def narrow(matrix: Any, args: argparse.Namespace) -> tuple[Any, list[dict[str, Any]], list[str]]:
    """``(matrix, trials, notes)``: the matrix with the flags applied, its (filtered) trials, and
    one note per flag given (what ``--dry-run`` shows)."""
    notes: list[str] = []
    changes: dict[str, Any] = {}
    if args.seeds is not None:
        if args.seeds < 1:
            raise UsageError(f"--seeds must be >= 1, got {args.seeds}")
        changes["seeds"] = list(range(args.seeds))
        notes.append(f"--seeds {args.seeds}")
    if args.epochs is not None:
        if args.epochs < 1:
            raise UsageError(f"--epochs must be >= 1, got {args.epochs}")
        changes["budget"] = {**matrix.budget, "epochs": args.epochs}
        notes.append(f"--epochs {args.epochs}")
    if args.accelerator is not None:
        if not args.accelerator.strip():
            raise UsageError("--accelerator must not be empty")
        changes["trainer"] = {**matrix.trainer, "accelerator": args.accelerator}
        notes.append(f"--accelerator {args.accelerator}")
    if changes:
        matrix = dataclasses.replace(matrix, **changes)
    trials = matrix.trials()
    filters = parse_filters(args.filter)
    for key, wanted in filters.items():
        present: set[str] = set()
        for t in trials:
            present |= _labels(key, t[key])
        for value in wanted:
            if value not in present:
                raise UsageError(
                    f"--filter {key}={value}: no trial of the matrix has it "
                    f"({did_you_mean(value, sorted(present))})"
                )
        trials = [t for t in trials if _labels(key, t[key]) & set(wanted)]
        notes.append(f"--filter {key}={'|'.join(wanted)}")
    return matrix, trials, notes


def describe_notes(notes: Sequence[str], before: int, after: int) -> str:
    """The dry-run line: ``narrowed by --seeds 2, --filter activation=relu: 50 -> 4 trials``."""
    return f"narrowed by {', '.join(notes)}: {before} -> {after} trials"
