"""One budget per cell: a store in which one cell (the same dataset, model and techniques with
the same settings) holds runs of two budgets is refused, as a store of two matrices is
(:func:`techbench.report.inputs.select_matrix`). Pooling a 1-epoch smoke run with 10-epoch runs
would average two different experiments and count their seeds twice.
"""

from __future__ import annotations

import json

import pandas as pd

from .analyze import ReportInputError
from .load import COMPARE_AXES

CELL_COLUMNS = ("dataset", *COMPARE_AXES)
_BUDGET = '"budget": {'


def _budget_text(config: str) -> str:
    """The budget inside a trial's canonical config text (a table of scalars: it ends at the
    first ``}``); a slice, not a JSON parse, to stay cheap at 100,000 trials."""
    start = config.find(_BUDGET)
    if start < 0:
        return "{}"
    start += len(_BUDGET) - 1
    return config[start : config.find("}", start) + 1]


def refuse_mixed_budgets(trials: pd.DataFrame, where: str) -> None:
    """ReportInputError naming the first cell of ``trials`` (not failed) whose runs differ in
    budget: both budgets (the keys that differ), their trial counts and one trial id each."""
    if trials.empty or "config" not in trials:
        return
    runs = trials[trials["status"].astype(str) != "failed"]
    cols = [c for c in CELL_COLUMNS if c in runs]
    budget = [_budget_text(str(c)) for c in runs["config"].to_numpy(object)]
    frame = runs[cols].astype(str).assign(_budget=budget, _id=runs["trial_id"].astype(str))
    counts = frame.groupby(cols, sort=False)["_budget"].nunique()
    mixed = counts[counts > 1]
    if mixed.empty:
        return
    key = mixed.index[0] if len(cols) > 1 else (mixed.index[0],)
    rows = frame[(frame[cols] == pd.Series(key, index=cols)).all(axis=1)]
    (a, ra), (b, rb) = list(rows.groupby("_budget", sort=False))[:2]
    ba, bb = json.loads(a), json.loads(b)
    differ = [k for k in sorted({*ba, *bb}) if ba.get(k) != bb.get(k)]
    varying = [c for c in cols if c == "dataset" or frame[c].nunique() > 1]
    cell = " ".join(f"{c}={v}" for c, v in zip(cols, key, strict=True) if c in varying)

    def side(budget: dict, part: pd.DataFrame) -> str:
        text = ", ".join(f"{k}={budget.get(k)}" for k in differ)
        return f"{text} ({len(part)} trials, e.g. {part['_id'].iloc[0]})"

    raise ReportInputError(
        f"{where}: cell {cell} pools runs of two budgets: {side(ba, ra)} and {side(bb, rb)}; "
        "they are not one experiment: report them from separate stores (a run narrowed by "
        "--epochs writes to its own store by default, or to --out DIR)"
    )
