"""Deterministic partition of a matrix's trials for job arrays (``--shard K/N``).

Why by sorted trial id and not by position: the id is a hash of the trial's canonical config, so
every array task computes the same partition from the spec alone, whatever order the expansion
yields, and ``sbatch --array=1-N`` with ``--shard $SLURM_ARRAY_TASK_ID/N`` covers each trial
exactly once. Round-robin over the sorted ids balances shard sizes to within one trial.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import TypeVar

from ..errors import UsageError
from ..schema import Trial

T = TypeVar("T")

_SHARD = re.compile(r"^\s*(\d+)\s*/\s*(\d+)\s*$")


def parse_shard(text: str) -> tuple[int, int]:
    """``"2/8"`` -> ``(2, 8)``; K is 1-based (as SLURM array task ids usually are)."""
    match = _SHARD.match(text)
    if not match:
        raise ValueError(f"--shard {text!r}: expected K/N with integers, e.g. 1/4")
    k, n = int(match.group(1)), int(match.group(2))
    if n < 1 or not 1 <= k <= n:
        raise ValueError(f"--shard {text!r}: need 1 <= K <= N")
    return k, n


def shard(items: Sequence[T], k: int, n: int, key: Callable[[T], str]) -> list[T]:
    """The K-th of N disjoint shards of ``items`` (1-based); their union is ``items``."""
    if n < 1 or not 1 <= k <= n:
        raise ValueError(f"shard {k}/{n}: need 1 <= K <= N")
    ordered = sorted(items, key=key)
    return ordered[k - 1 :: n]


def shard_trials(trials: Sequence[Trial], text: str | None) -> list[Trial]:
    """The ``--shard K/N`` part of ``trials`` (all of them for ``None``); UsageError if malformed."""
    if text is None:
        return list(trials)
    try:
        k, n = parse_shard(text)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    return shard(list(trials), k, n, key=lambda t: t.id)
