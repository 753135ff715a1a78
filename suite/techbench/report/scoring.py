"""What the report scores: the score rule and the test metric at the scored checkpoint.

Two rules, chosen by ``[report] score`` in the matrix or ``techbench report --score``:

- ``final`` (the default): a run's score is its validation target metric at the last epoch,
  and its test metric is that of the final weights (``test/acc``).
- ``best``: the best validation value over epochs, and the test metric of the weights saved at
  that epoch (``test/best_acc``).

Why ``final`` is the default: taking the maximum over E noisy epochs selects on noise. The
expected maximum of E draws exceeds their mean by about ``sigma * sqrt(2 ln E)``, so an unstable
run (large epoch-to-epoch sigma) gains the most: the best-epoch score rewards the instability it
should penalise (Cawley & Talbot 2010, "On over-fitting in model selection"; Bouthillier et al.
2021, "Accounting for variance in machine learning benchmarks"). The final epoch is what a user
who trains for the budget gets. ``best`` stays available for early-stopping studies.

Test metrics never rank anything: every ranking, selection and test reads ``score`` (validation);
the test column is reported beside it only.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from ..plan.matrix import SCORE_RULES
from ..schema import metric_series

DEFAULT_SCORE = "final"


def score_rule(matrix: Mapping[str, Any], override: str | None = None) -> str:
    """The rule in force: ``override`` (the CLI), else the matrix's ``[report] score``, else
    :data:`DEFAULT_SCORE`. ``ValueError`` for an unknown rule."""
    report = matrix.get("report") if isinstance(matrix.get("report"), Mapping) else {}
    rule = override or (report or {}).get("score") or DEFAULT_SCORE
    if rule not in SCORE_RULES:
        raise ValueError(f"score rule must be one of {SCORE_RULES}, got {rule!r}")
    return str(rule)


def describe(rule: str) -> str:
    """One sentence for the page header."""
    if rule == "best":
        return (
            "best validation value over epochs (score = best epoch; test metric of the weights "
            "saved at that epoch); selects on epoch-to-epoch noise"
        )
    return (
        "validation value at the final epoch (test metric of the final weights); the default, "
        "because the best epoch selects on noise"
    )


def held_out_table(metrics: pd.DataFrame) -> pd.DataFrame:
    """Per trial: the stored test metrics as columns ``test_<metric>`` (``test_acc``,
    ``test_best_acc``, ...)."""
    t = metrics[metrics["split"] == "test"]
    if t.empty:
        return pd.DataFrame(index=pd.Index([], name="trial_id"))
    t = t.assign(trial_id=t["trial_id"].astype(str), metric="test_" + t["metric"].astype(str))
    wide = t.groupby(["trial_id", "metric"], sort=False)["value"].last().unstack("metric")
    wide.columns.name = None
    return wide


def held_out_column(target_metric: str, rule: str) -> str:
    """The test column matching a target metric under a rule: ``val_acc`` -> ``test_acc``
    (final) or ``test_best_acc`` (best); a loss target gives ``test_loss`` / ``test_best_loss``."""
    try:
        _, metric = metric_series(target_metric)
    except ValueError:
        metric = "acc"
    metric = metric.removeprefix("epoch_")
    return f"test_best_{metric}" if rule == "best" else f"test_{metric}"


def held_out_scores(runs: pd.DataFrame, tests: pd.DataFrame, rule: str) -> np.ndarray:
    """Each run's test metric at the scored checkpoint (NaN when not recorded)."""
    out = np.full(len(runs), np.nan)
    ids = runs["trial_id"].astype(str)
    for metric in runs["target_metric"].astype(str).unique():
        col = held_out_column(metric, rule)
        if col not in tests:
            continue
        mask = (runs["target_metric"].astype(str) == metric).to_numpy()
        out[mask] = tests[col].reindex(ids[mask]).to_numpy(float)
    return out
