"""Reports from stored results alone: ``build_report(results_dir, out_dir, baselines=())``.

Writes ``out_dir/index.html`` (self-contained) and one CSV per table. Modules, one job each:
:mod:`.load` (bulk store reading), :mod:`.tables` (tidy per-run / per-cell / per-technique
tables), :mod:`.stats` (IQM, bootstrap, rank tests, profiles), :mod:`.analyze` (applying the
statistics), :mod:`.figures` (seaborn) and :mod:`.sections` (the list of page sections, each
returning its HTML blocks and CSVs), run in order by :mod:`.build`; :mod:`techbench.report.htmlpage`
writes the page. Importing this package is cheap; the heavy modules load on first call.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

__all__ = ["build_report"]


def build_report(
    results_dir: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    out_dir: str | os.PathLike[str],
    baselines: Sequence[str] = (),
    *,
    score: str | None = None,
    matrix: str | None = None,
    wall_clock: bool = False,
    min_effect: float | None = None,
) -> Path:
    """Build the report of the store at ``results_dir`` (or of several stores, each trial id
    counted once) into ``out_dir``; returns index.html. ``score``: ``final``/``best`` (default: the
    matrix's ``[report] score``, else final); ``matrix``: one matrix of a mixed store;
    ``wall_clock``: add time-to-target profiles on raw wall-clock seconds; ``min_effect``: the
    smallest score difference that matters (default: the matrix's ``[report] min_effect``)."""
    from .build import build

    return build(
        results_dir, out_dir, baselines=baselines, score=score, matrix=matrix,
        wall_clock=wall_clock, min_effect=min_effect,
    )  # fmt: skip
