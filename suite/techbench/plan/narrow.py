"""Narrowing a matrix from the command line: ``--filter AXIS=VALUE``, ``--seeds``, ``--epochs``,
``--accelerator``.

``--seeds``, ``--epochs`` and ``--accelerator`` change the matrix before it expands, so they
change the trials' configs and therefore their ids. ``--filter`` keeps the trials whose axis has
that value: a technique matches by name (``optimizer=adam``, or qualified
``optimizer=techbench:adam``) or by its full label
(``optimizer=adam(lr=0.003)``); filters on one axis are alternatives, filters on different axes
must all hold. A scale ladder's trials also match ``rung=K``, ``width_mult=M`` and
``depth_mult=M`` (on a tuned ladder that transfers from rung 0, a filter keeping only higher rungs
still runs rung 0's search, whose selection their finals take).

On a tuned matrix every flag narrows both phases: axis filters keep techniques in contexts
(matched on the matrix's values, before the search), ``--filter seed=S`` keeps those search and
final seeds, ``--seeds N`` keeps at most N search seeds and runs N final seeds.

A narrowing that changes what a trial computes (budget, trainer, a tuned matrix's search seeds)
writes to its own default store (:func:`default_store`), so a 1-epoch smoke run never shares the
full run's store and report.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import re
from collections.abc import Sequence
from typing import Any

from ..errors import UsageError, did_you_mean
from ..schema import AXES, Trial
from .scale import SCALE_FILTER_KEYS

FILTER_KEYS: tuple[str, ...] = (*AXES, "seed", "data_seed", *SCALE_FILTER_KEYS)


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The narrowing flags of ``techbench run``."""
    g = p.add_argument_group("narrow the matrix (changes the trials, so their ids)")
    g.add_argument(
        "--filter",
        action="append",
        default=[],
        metavar="AXIS=VALUE",
        help="keep trials with this value (repeatable; e.g. activation=relu, seed=0, rung=0)",
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


def narrow(matrix: Any, args: argparse.Namespace) -> tuple[Any, list[Trial], list[str]]:
    """``(matrix, trials, notes)``: the matrix with the flags applied, its (filtered) trials, and
    one note per flag given (what ``--dry-run`` shows). On a tuned matrix every flag narrows both
    phases: the filters pick techniques in contexts before the search, and the seed flags pick
    search and final seeds (:meth:`techbench.plan.tune.TuneSpec.with_seed_count`)."""
    from .matrix import MAX_EPOCHS, MAX_SEEDS

    notes: list[str] = []
    changes: dict[str, Any] = {}
    if args.seeds is not None:
        _check_range("--seeds", args.seeds, MAX_SEEDS)
        if matrix.tune is not None:
            changes["tune"] = matrix.tune.with_seed_count(args.seeds)
        else:
            changes["seeds"] = list(range(args.seeds))
        notes.append(f"--seeds {args.seeds}")
    if args.epochs is not None:
        _check_range("--epochs", args.epochs, MAX_EPOCHS)
        changes["budget"] = {**matrix.budget, "epochs": args.epochs}
        notes.append(f"--epochs {args.epochs}")
    if args.accelerator is not None:
        if not args.accelerator.strip():
            raise UsageError("--accelerator must not be empty")
        changes["trainer"] = {**matrix.trainer, "accelerator": args.accelerator}
        notes.append(f"--accelerator {args.accelerator}")
    if changes:
        matrix = dataclasses.replace(matrix, **changes)
    filters = parse_filters(args.filter)
    if filters:
        matrix = _filtered(matrix, filters)
        notes += [f"--filter {key}={'|'.join(wanted)}" for key, wanted in filters.items()]
    return matrix, matrix.planned(), notes


def _check_range(flag: str, value: int, high: int) -> None:
    if not 1 <= value <= high:
        raise UsageError(f"{flag} must be in [1, {high}], got {value}")


def _filtered(matrix: Any, filters: dict[str, list[str]]) -> Any:
    """The matrix keeping what ``filters`` name; UsageError for a value no trial has. On a tuned
    matrix the seed filters pick search and final seeds, the others pick base configs."""
    from .matrix import config_labels

    tuned = matrix.tune is not None
    seed_keys = ("seed", "data_seed") if tuned and matrix.data_seeds == "seed" else ("seed",)
    only = {k: v for k, v in filters.items() if not (tuned and k in seed_keys)}
    bases = matrix.unfiltered()
    for key, wanted in only.items():
        present = set().union(*(config_labels(key, c) for c in bases))
        for value in wanted:
            if value not in present:
                raise UsageError(
                    f"--filter {key}={value}: no trial of the matrix has it "
                    f"({did_you_mean(value, sorted(present))})"
                )
    for key in seed_keys if tuned else ():
        if key in filters:
            matrix = dataclasses.replace(matrix, tune=_tune_seeds(matrix.tune, key, filters[key]))
    return dataclasses.replace(matrix, only=only)


def _tune_seeds(spec: Any, key: str, wanted: list[str]) -> Any:
    """``spec`` keeping the wanted seeds in both phases; each phase must keep one."""
    search = [s for s in spec.seeds if str(s) in wanted]
    final = [s for s in spec.final_seeds if str(s) in wanted]
    for value in wanted:
        if not any(str(s) == value for s in (*search, *final)):
            have = [str(s) for s in (*spec.seeds, *spec.final_seeds)]
            raise UsageError(
                f"--filter {key}={value}: not a seed of the tuned matrix "
                f"(search seeds {list(spec.seeds)}, final seeds {list(spec.final_seeds)}; "
                f"{did_you_mean(value, have)})"
            )
    for phase, kept, had in (("search", search, spec.seeds), ("final", final, spec.final_seeds)):
        if not kept:
            raise UsageError(
                f"--filter {key}={'|'.join(wanted)}: keeps no {phase} seed of the tuned matrix "
                f"(its {phase} seeds: {list(had)}); add one, e.g. --filter {key}={had[0]}"
            )
    return spec.narrowed(search, final)


def default_store(full: Any, narrowed: Any) -> str:
    """``results/<name>``, or ``results/<name>-<what changed>`` (``demo-epochs1-cpu``) when the
    flags changed what each trial computes (its budget or trainer) or what a tuned matrix selects
    on (its search seeds): such runs are not the matrix's, so they never share its default store
    or its report. ``--filter`` and ``--seeds`` otherwise pick trials of the same cells at the
    same budget (a subset, or extra seeds), so they keep ``results/<name>`` and a later full run
    skips them."""
    parts = [
        f"{key.removeprefix('max_')}{_slug(value)}"
        for key, value in narrowed.budget.items()
        if full.budget.get(key) != value
    ]
    parts += [_slug(v) for k, v in narrowed.trainer.items() if full.trainer.get(k) != v]
    if full.tune is not None and narrowed.tune.study_seeds(0) != full.tune.study_seeds(0):
        parts.append("search" + _slug(".".join(map(str, narrowed.tune.study_seeds(0)))))
    return "results/" + "-".join([full.name, *parts])


def _slug(value: Any) -> str:
    text = re.sub(r"[^a-z0-9.]+", "", str(value).lower()).strip(".")
    if not text or len(text) > 24:
        return hashlib.sha256(str(value).encode()).hexdigest()[:8]
    return text


def phase_counts(matrix: Any) -> dict[str, int]:
    """Trials per phase: ``{"trials": n}``, or for a tuned matrix its search trials and (at
    most) its final trials."""
    if matrix.tune is None:
        return {"trials": len(matrix.planned())}
    plan = matrix.tune_plan()
    return {"search trials": len(plan.search_trials()), "final trials": plan.n_finals()}


def describe_notes(notes: Sequence[str], before: dict[str, int], after: dict[str, int]) -> str:
    """The dry-run line: ``narrowed by --seeds 2, --filter activation=relu: 50 -> 4 trials``
    (a tuned matrix: ``... 160 -> 80 search trials, 200 -> 100 final trials``)."""
    counts = ", ".join(f"{before[k]} -> {after[k]} {k}" for k in before)
    return f"narrowed by {', '.join(notes)}: {counts}"
