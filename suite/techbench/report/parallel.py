"""Run the report's sections on both cores: each section (its figures, tables and CSVs) is
independent of the others and reads only the frozen :class:`.sections.ReportContext`, so for a
large store two forked processes run them, each inheriting the context (no copy, no pickling)
and writing its own CSVs; the parent gets back only the HTML blocks. At 100,000 trials the
sections cost about 30 s of one core (figure rendering, ``runs.csv``), which is what keeps the
report over a minute on the 2-core machine. Small stores, and processes that cannot fork (a
daemonic worker), run the sections in order in this process; the output is the same either way.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from .sections import ReportContext, Section

PARALLEL_RUNS = 5000
"""From this many runs on, sections run in two processes (below it, forking costs more)."""

Rendered = tuple[str, str, list[str], list[str]]
"""A section as written: (anchor, heading, blocks, names of the CSVs it wrote)."""

_JOB: tuple[ReportContext, Path, Sequence[Callable[[ReportContext], Section]]] | None = None


def _render(make: Callable[[ReportContext], Section], ctx: ReportContext, stage: Path) -> Rendered:
    section = make(ctx)
    for name, df in section.csvs.items():
        df.to_csv(stage / name, index=False)
    return section.anchor, section.heading, section.blocks, list(section.csvs)


def _render_nth(i: int) -> Rendered:
    assert _JOB is not None
    ctx, stage, makers = _JOB
    return _render(makers[i], ctx, stage)


def render_sections(
    makers: Sequence[Callable[[ReportContext], Section]], ctx: ReportContext, stage: Path
) -> list[Rendered]:
    """Each of ``makers`` rendered (CSVs written under ``stage``), in the order given."""
    global _JOB
    if len(ctx.runs) >= PARALLEL_RUNS and "fork" in multiprocessing.get_all_start_methods():
        _JOB = (ctx, stage, makers)
        try:
            with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("fork")) as pool:
                return list(pool.map(_render_nth, range(len(makers))))
        except AssertionError:  # a daemonic process may not have children
            pass
        finally:
            _JOB = None
    return [_render(make, ctx, stage) for make in makers]
