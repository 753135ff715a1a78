"""Honest inputs: which stores and matrices a report covers, and why each trial stopped.

- A store that holds trials of two or more matrices is refused with a message naming them
  (``--matrix NAME`` reports one); ``techbench report A B`` reports several stores as one (e.g.
  the shards of a matrix): trials are labelled with their store and ids prefixed ``<store>/``.
  A trial id is the hash of its whole config, seed included, so the same id in two stores is
  one run, not two samples: it is counted once, from the first store given, and the report
  says how many it dropped from which store. The same store given twice (by any path) is
  refused.
- :func:`stop_reasons`: ``epochs``, ``steps``, ``time budget``, ``stopped early`` (no budget explains it), ``diverged``,
  ``failed``. A stored ``stop_reason`` wins; otherwise it is derived: a completed run that ran
  fewer epochs than its budget and fewer steps than ``max_steps`` stopped on the budget's
  ``max_seconds`` when it has one. Such runs are *cut short*: not the run the matrix asked for.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .analyze import ReportInputError
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
    return _subset(trials, metrics, trials["matrix"].fillna("?").astype(str) == matrix)


def _subset(
    trials: pd.DataFrame, metrics: pd.DataFrame, keep: pd.Series
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The trials where ``keep`` holds, and their metric rows."""
    trials = trials[keep].reset_index(drop=True)
    ids = set(trials["trial_id"].astype(str))
    metrics = metrics[metrics["trial_id"].astype(str).isin(ids)]
    if isinstance(metrics["trial_id"].dtype, pd.CategoricalDtype):
        metrics = metrics.assign(trial_id=metrics["trial_id"].cat.remove_unused_categories())
    return trials, metrics.reset_index(drop=True)


def refuse_repeated_stores(dirs: Sequence[str | os.PathLike[str]]) -> None:
    """``ReportInputError`` naming both paths when two of ``dirs`` are the same folder (a
    store given twice would count each of its runs twice)."""
    seen: dict[tuple[int, int], str] = {}
    for d in dirs:
        try:
            st = os.stat(d)
        except OSError:
            continue  # not a store: :func:`load_store` says so
        key = (st.st_dev, st.st_ino)
        if key in seen:
            raise ReportInputError(
                f"{seen[key]} and {os.fspath(d)} are the same store: give each store once"
            )
        seen[key] = os.fspath(d)


def _drop_duplicates(
    parts: list[tuple[str, pd.DataFrame, pd.DataFrame]], dirs: Sequence[str | os.PathLike[str]]
) -> tuple[list[tuple[str, pd.DataFrame, pd.DataFrame]], dict[str, str]]:
    """``parts`` with each trial id kept in the first store that holds it; ``{store label:
    what was dropped}`` (also printed, one line per store)."""
    owner: dict[str, str] = {}
    kept, dropped = [], {}
    for (label, trials, metrics), d in zip(parts, dirs, strict=True):
        if trials.empty:
            kept.append((label, trials, metrics))
            continue
        ids = trials["trial_id"].astype(str)
        first = ids.map(owner)
        if first.notna().any():
            by = first.dropna().value_counts()
            text = (
                f"{int(by.sum())} trial{'s' * (int(by.sum()) != 1)} also in "
                + (by.index[0] if len(by) == 1 else ", ".join(f"{o} ({n})" for o, n in by.items()))
                + ": the same trial id is the same run, counted once"
            )
            dropped[label] = text
            print(f"techbench report: {os.fspath(d)}: {text}", file=sys.stderr)
            trials, metrics = _subset(trials, metrics, first.isna())
        owner.update(dict.fromkeys(trials["trial_id"].astype(str), label))
        kept.append((label, trials, metrics))
    return kept, dropped


def load_stores(
    dirs: Sequence[str | os.PathLike[str]], matrix: str | None = None
) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, Any]]:
    """``(trials, metrics, matrix info)`` of one or more stores.

    ``trials`` has a ``store`` column. With several stores, ids become ``<store>/<id>``, each
    stored trial id counts once (see the module docstring; ``trials.attrs["duplicates"]`` says
    what was dropped from which store) and a store given twice raises ``ReportInputError``.
    """
    refuse_repeated_stores(dirs)
    taken: set[str] = set()
    parts = []
    for d in dirs:
        trials, metrics = load_store(d)
        label = _store_label(d, taken)
        if not trials.empty:
            trials, metrics = select_matrix(trials, metrics, os.fspath(d), matrix)
        parts.append((label, trials, metrics))
    info = load_matrix(dirs[0]) if len(dirs) == 1 else {}
    if matrix is not None and info.get("name") != matrix:
        info = {"name": matrix}
    if len(parts) == 1:
        label, trials, metrics = parts[0]
        return trials.assign(store=label) if not trials.empty else trials, metrics, info
    parts, dropped = _drop_duplicates(parts, dirs)
    frames, mframes = [], []
    for label, trials, metrics in parts:
        if trials.empty:
            continue
        frames.append(trials.assign(store=label, trial_id=label + "/" + trials["trial_id"]))
        mframes.append(metrics.assign(trial_id=label + "/" + metrics["trial_id"].astype(str)))
    if not frames:
        return pd.DataFrame(), parts[0][2], info
    names = sorted({m for f in frames for m in f["matrix"].fillna("?").astype(str)})
    info = {"name": " + ".join(label for label, t, _ in parts if not t.empty)}
    info["description"] = f"stores reported together; matrices: {', '.join(names)}"
    metrics = pd.concat(mframes, ignore_index=True)
    for col in ("trial_id", "split", "metric", "layer"):
        metrics[col] = metrics[col].astype("category")
    corrupt = {
        f"{label}/{tid}": why
        for label, t, _ in parts
        for tid, why in (t.attrs.get("corrupt") or {}).items()
    }
    trials = pd.concat(frames, ignore_index=True)
    trials.attrs.update(corrupt=corrupt, duplicates=dropped)
    return trials, metrics, info


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
