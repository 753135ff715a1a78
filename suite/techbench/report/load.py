"""The report's view of a results store, read through :func:`techbench.store.load_results`.

The store is the only reader of stored results; this module adds what only the report needs:
the per-step training loss is dropped at read time (no report table or figure uses it, which keeps
a 10,000-trial store well under a gigabyte) and ``lr`` becomes a label (``repr`` of the value, ""
when the optimizer has none) for the run table; it is not compared on its own.
"""

from __future__ import annotations

import os
from typing import Any

import pandas as pd

from ..schema import AXIS_FAMILY
from ..store import load_matrix_info, load_results

#: Config keys holding ``{"name", "params"}`` techniques, in display order.
TECHNIQUE_AXES: tuple[str, ...] = tuple(AXIS_FAMILY)
#: Axes that may be compared (``dataset`` is the blocking factor, never a "technique").
COMPARE_AXES = (*TECHNIQUE_AXES[1:], "norm_placement")
"""``lr`` is not among them: a hyper-parameter value is a setting of its technique (the
optimizer label carries it), see :mod:`.settings`."""


def load_store(results_dir: str | os.PathLike[str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``(trials, metrics)`` for the report; metrics omit the per-step training loss.

    ``FileNotFoundError`` when ``results_dir`` has no ``trials/`` folder (not a store).
    """
    if not os.path.isdir(os.path.join(os.fspath(results_dir), "trials")):
        raise FileNotFoundError(f"{results_dir} has no trials/ folder: not a techbench store")
    trials, metrics = load_results(results_dir, keep_step_loss=False)
    if trials.empty:
        return pd.DataFrame(), metrics
    trials["lr"] = trials["lr"].map(lambda v: "" if v is None or v != v else repr(v))
    return trials, metrics


def load_matrix(results_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """The informational ``matrix.json`` (empty dict when absent or unreadable)."""
    return load_matrix_info(results_dir)
