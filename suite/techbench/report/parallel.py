"""Use both cores for the report's independent pieces of work: the cell, technique and
best-configuration tables, the headline bootstraps of each (axis, dataset), and the sections
(each section's figures, tables and CSVs read only the frozen :class:`.sections.ReportContext`).
For a large store two forked processes do them, each inheriting the inputs (no copy, no
pickling of the store's frames) and sending back only small results (tables, rows, HTML blocks;
a section writes its own CSVs). At 100,000 trials these pieces cost about 50 s of one core,
which kept the report over a minute on the 2-core machine. Small stores,
and processes that cannot fork (a daemonic worker), do the work in order in this process; the
output is the same either way (every bootstrap has its own seed).
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from .context import ReportContext, Section

PARALLEL_RUNS = 5000
"""From this much work (runs) on, :func:`fork_map` uses two processes (below it, forking costs
more than it saves)."""

T = TypeVar("T")
R = TypeVar("R")

_STATE: tuple[Callable[[Any], Any], Sequence[Any]] | None = None


def _call(i: int) -> Any:
    assert _STATE is not None
    fn, items = _STATE
    return fn(items[i])


def fork_map(fn: Callable[[T], R], items: Sequence[T], work: int) -> list[R]:
    """``[fn(x) for x in items]``, by two forked processes when ``work`` (runs involved) reaches
    :data:`PARALLEL_RUNS`. ``fn`` and ``items`` are inherited, not pickled; results are."""
    global _STATE
    if (
        work >= PARALLEL_RUNS
        and len(items) > 1
        and _STATE is None
        and "fork" in multiprocessing.get_all_start_methods()
    ):
        _STATE = (fn, items)
        try:
            with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("fork")) as pool:
                return list(pool.map(_call, range(len(items))))
        except AssertionError:  # a daemonic process may not have children
            pass
        finally:
            _STATE = None
    return [fn(x) for x in items]


Rendered = tuple[str, str, list[str], list[str]]
"""A section as written: (anchor, heading, blocks, names of the CSVs it wrote)."""


def _render(make: Callable[[ReportContext], Section], ctx: ReportContext, stage: Path) -> Rendered:
    section = make(ctx)
    for name, df in section.csvs.items():
        df.to_csv(stage / name, index=False)
    return section.anchor, section.heading, section.blocks, list(section.csvs)


def render_sections(
    makers: Sequence[Callable[[ReportContext], Section]], ctx: ReportContext, stage: Path
) -> list[Rendered]:
    """Each of ``makers`` rendered (CSVs written under ``stage``), in the order given."""
    return fork_map(lambda make: _render(make, ctx, stage), makers, len(ctx.runs))
