"""The report's view of a results store, read through :func:`techbench.store.reader.load_results`.

The store is the only reader of stored results; this module adds what only the report needs:
the per-step training loss and a few per-layer health series are dropped at read time (no
report table or figure uses them, which keeps a 10,000-trial store well under a gigabyte) and
``lr`` becomes a label (``repr`` of the value, "" when the optimizer has none) for the run
table; it is not compared on its own.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import pandas as pd

from ..schema import AXIS_FAMILY
from ..store.reader import load_matrix_info, load_results

#: Config keys holding ``{"name", "params"}`` techniques, in display order.
TECHNIQUE_AXES: tuple[str, ...] = tuple(AXIS_FAMILY)
#: Axes that may be compared (``dataset`` is the blocking factor, never a "technique").
COMPARE_AXES = (*TECHNIQUE_AXES[1:], "norm_placement")
"""``lr`` is not among them: a hyper-parameter value is a setting of its technique (the
optimizer label carries it), see :mod:`.settings`."""


UNUSED_SERIES: tuple[tuple[str, str], ...] = (
    ("health", "dist_from_init"),
    ("health", "update_ratio"),
    ("health", "weight_norm"),
)
"""Per-layer health series no table or figure of the report reads, dropped at read time (a
quarter of a store's rows; ``test_report_html`` checks the report is the same with them)."""


def load_store(results_dir: str | os.PathLike[str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``(trials, metrics)`` for the report; metrics omit the per-step training loss and the
    :data:`UNUSED_SERIES`.

    ``FileNotFoundError`` when ``results_dir`` has no ``trials/`` folder (not a store).
    """
    if not os.path.isdir(os.path.join(os.fspath(results_dir), "trials")):
        raise FileNotFoundError(f"{results_dir} has no trials/ folder: not a techbench store")
    trials, metrics = load_results(results_dir, keep_step_loss=False, skip=UNUSED_SERIES)
    corrupt = trials.attrs.get("corrupt") or {}
    if corrupt:
        print(corrupt_line(results_dir, corrupt), file=sys.stderr)
    if trials.empty:
        return pd.DataFrame(), metrics
    trials["lr"] = trials["lr"].map(lambda v: "" if v is None or v != v else repr(v))
    return trials, metrics


def corrupt_line(results_dir: str | os.PathLike[str], corrupt: dict[str, str]) -> str:
    """One line naming the corrupt trials left out of the report (the first five)."""
    shown = "; ".join(f"{t}: {why}" for t, why in list(corrupt.items())[:5])
    more = f"; and {len(corrupt) - 5} more" if len(corrupt) > 5 else ""
    n = len(corrupt)
    return (
        f"techbench report: warning: {n} corrupt trial{'s' * (n != 1)} in {results_dir} left out "
        f"(not scored): {shown}{more}; rerun the matrix to redo them, or: techbench clean "
        f"{results_dir} --corrupt"
    )


def load_matrix(results_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """The informational ``matrix.json`` (empty dict when absent or unreadable)."""
    return load_matrix_info(results_dir)
