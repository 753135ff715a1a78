"""Honest inputs: which stores and matrices a report covers, and why each trial stopped.

- A store that holds trials of two or more matrices is refused with a message naming them
  (``--matrix NAME`` reports one); ``techbench report A B`` compares stores on purpose: trials
  are labelled with their store, ids are prefixed ``<store>/`` so they stay unique, and when the
  stores ran the same configurations ``store`` becomes a compared axis. A cell of one store
  whose runs differ in budget is refused too (:mod:`.budgets`).
- :func:`stop_reasons`: ``epochs``, ``steps``, ``time budget``, ``stopped early`` (no budget explains it), ``diverged``,
  ``failed``. A stored ``stop_reason`` wins; otherwise it is derived: a completed run that ran
  fewer epochs than its budget and fewer steps than ``max_steps`` stopped on the budget's
  ``max_seconds`` when it has one. Such runs are *cut short*: not the run the matrix asked for.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .analyze import ReportInputError
from .budgets import refuse_mixed_budgets
from .load import load_matrix, load_store

CUT_SHORT = frozenset({"time budget", "stopped early"})
"""Stop reasons that mean the run did not get the budget its matrix gave it."""


def _store_label(path: str | os.PathLike[str], taken: set[str]) -> str:
    base = Path(os.fspath(path)).resolve().name or "store"
    label, i = base, 2
    while label in taken:
        label, i = f"{base}-{i}", i + 1
    taken.add(label)
    return label


def matrices_of(trials: pd.DataFrame) -> pd.Series:
    """Trial counts per matrix name (``?`` for trials stored without one)."""
    return trials["matrix"].fillna("?").astype(str).value_counts().sort_index()


def select_matrix(
    trials: pd.DataFrame, metrics: pd.DataFrame, where: str, matrix: str | None
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Keep the trials of ``matrix``; refuse a mixed store when none is named."""
    counts = matrices_of(trials)
    if matrix is None:
        if len(counts) > 1:
            listed = ", ".join(f"{name!r} ({n} trials)" for name, n in counts.items())
            raise ReportInputError(
                f"{where} holds trials of {len(counts)} matrices: {listed}; their runs are not "
                "comparable as one matrix: pass --matrix NAME to report one"
            )
        return trials, metrics
    if matrix not in counts.index:
        raise ReportInputError(
            f"{where} has no trials of matrix {matrix!r} (it has {', '.join(counts.index)})"
        )
    keep = trials["matrix"].fillna("?").astype(str) == matrix
    trials = trials[keep].reset_index(drop=True)
    ids = set(trials["trial_id"].astype(str))
    metrics = metrics[metrics["trial_id"].astype(str).isin(ids)]
    if isinstance(metrics["trial_id"].dtype, pd.CategoricalDtype):
        metrics = metrics.assign(trial_id=metrics["trial_id"].cat.remove_unused_categories())
    return trials, metrics.reset_index(drop=True)


def load_stores(
    dirs: Sequence[str | os.PathLike[str]], matrix: str | None = None
) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, Any], bool]:
    """``(trials, metrics, matrix info, store_is_axis)`` of one or more stores.

    ``trials`` has a ``store`` column. With several stores, ids become ``<store>/<id>``;
    ``store_is_axis`` is true when some configuration ran in more than one store.
    """
    taken: set[str] = set()
    parts = []
    for d in dirs:
        trials, metrics = load_store(d)
        label = _store_label(d, taken)
        if not trials.empty:
            trials, metrics = select_matrix(trials, metrics, os.fspath(d), matrix)
            refuse_mixed_budgets(trials, os.fspath(d))
        parts.append((label, trials, metrics))
    info = load_matrix(dirs[0]) if len(dirs) == 1 else {}
    if matrix is not None and info.get("name") != matrix:
        info = {"name": matrix}
    if len(parts) == 1:
        label, trials, metrics = parts[0]
        return trials.assign(store=label) if not trials.empty else trials, metrics, info, False
    frames, mframes, seen = [], [], []
    for label, trials, metrics in parts:
        if trials.empty:
            continue
        seen.append(set(trials["trial_id"].astype(str)))
        frames.append(trials.assign(store=label, trial_id=label + "/" + trials["trial_id"]))
        mframes.append(metrics.assign(trial_id=label + "/" + metrics["trial_id"].astype(str)))
    if not frames:
        return pd.DataFrame(), parts[0][2], info, False
    overlap = any(a & b for i, a in enumerate(seen) for b in seen[i + 1 :])
    names = sorted({m for f in frames for m in f["matrix"].fillna("?").astype(str)})
    info = {"name": " vs ".join(label for label, t, _ in parts if not t.empty)}
    info["description"] = f"stores compared on purpose; matrices: {', '.join(names)}"
    metrics = pd.concat(mframes, ignore_index=True)
    for col in ("trial_id", "split", "metric", "layer"):
        metrics[col] = metrics[col].astype("category")
    return pd.concat(frames, ignore_index=True), metrics, info, overlap


def _budget(config: str, key: str) -> Any:
    try:
        return (json.loads(config).get("budget") or {}).get(key)
    except (TypeError, ValueError, AttributeError):
        return None


def stop_reasons(trials: pd.DataFrame) -> pd.Series:
    """Why each trial stopped (see the module docstring); a stored ``stop_reason`` wins."""
    n = len(trials)
    status = trials["status"].astype(str).to_numpy()
    epochs = pd.to_numeric(trials.get("epochs", pd.Series(np.nan, trials.index)), errors="coerce")
    ran = pd.to_numeric(trials.get("epochs_run", pd.Series(np.nan, trials.index)), errors="coerce")
    steps = pd.to_numeric(trials.get("steps", pd.Series(np.nan, trials.index)), errors="coerce")
    max_steps = pd.to_numeric(
        trials.get("max_steps", pd.Series(np.nan, trials.index)), errors="coerce"
    )
    out = np.full(n, "epochs", dtype=object)
    hit_steps = (max_steps.notna() & (steps >= max_steps)).to_numpy()
    short = (epochs.notna() & ran.notna() & (ran < epochs)).to_numpy() & ~hit_steps
    out[hit_steps] = "steps"
    timed = np.zeros(int(short.sum()), dtype=bool)
    if "config" in trials and timed.size:  # only runs cut short need their config parsed
        budget = trials["config"].to_numpy(object)[short]
        seconds = pd.to_numeric(pd.Series([_budget(c, "max_seconds") for c in budget]))
        timed = seconds.notna().to_numpy()
    out[short] = np.where(timed, "time budget", "stopped early")
    out[status == "diverged"] = "diverged"
    out[status == "failed"] = "failed"
    reasons = pd.Series(out, index=trials.index, name="stop_reason")
    if "stop_reason" in trials:
        stored = trials["stop_reason"]
        reasons = stored.where(stored.notna() & (stored.astype(str) != ""), reasons)
    return reasons.astype(str)
