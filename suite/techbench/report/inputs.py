"""Honest inputs: which stores and matrices a report covers, and why each trial stopped.

- A store that holds trials of two or more matrices is refused with a message naming them
  (``--matrix NAME`` reports one); ``techbench report A B`` reports several stores as one (e.g.
  the shards of a matrix): trials are labelled with their store and ids prefixed ``<store>/``.
  A trial id is the hash of its whole config, seed included, so the same id in two stores is
  one run, not two samples: it is counted once, from the first store given, and the report
  says how many it dropped from which store. The same store given twice (by any path) is
  refused. A cell of one store whose runs differ in budget is refused too (:mod:`.budgets`).
- :func:`stop_reasons`: ``epochs``, ``steps``, ``time budget``, ``stopped early`` (no budget explains it), ``diverged``,
  ``failed``. A stored ``stop_reason`` wins; otherwise it is derived: a completed run that ran
  fewer epochs than its budget and fewer steps than ``max_steps`` stopped on the budget's
  ``max_seconds`` when it has one. Such runs are *cut short*: not the run the matrix asked for.
  :func:`stop_summary` counts runs per reason for the page, each budget with its size.
- :func:`finals_only`: a tuned store (``tune.json``, :mod:`techbench.plan.tune`) is ranked on the
  finals of the selected settings alone. Its search trials are single runs of settings that
  were not chosen (or the choosing run itself, on a search seed): ranked beside the finals they
  would put unselected points in the answer and count the selecting run twice. They reach only
  the tuning section, through :class:`Tuned`. Stores without a plan pass unchanged.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..plan.tune import Selection, TunePlan, read_plan, select_stored
from ..schema import stop_reason
from .analyze import ReportInputError
from .budgets import refuse_mixed_budgets
from .load import load_matrix, load_store

CUT_SHORT = frozenset({"time budget", "stopped early"})
"""Stop reasons that mean the run did not get the budget its matrix gave it."""

STOP_WORDS = {
    "time budget": "time budget (max_seconds)",
    "stopped early": "ended before its budget, no reason recorded",
    "diverged": "divergence",
    "failed": "an error (failed)",
}
"""How the page names a stop reason; the two budgets name their size (:func:`stop_summary`)."""


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
    return _keep(trials, metrics, keep.to_numpy())


def _keep(
    trials: pd.DataFrame, metrics: pd.DataFrame, mask: np.ndarray
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The trials where ``mask`` holds and their metric rows (``attrs`` kept)."""
    attrs = dict(trials.attrs)
    trials = trials[mask].reset_index(drop=True)
    trials.attrs.update(attrs)
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
            trials, metrics = _keep(trials, metrics, first.isna().to_numpy())
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
            refuse_mixed_budgets(trials, os.fspath(d))
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


@dataclass(frozen=True)
class Tuned:
    """A tuned store as the report's input splits it (see :func:`finals_only`).

    ``trials``/``metrics``: every trial of the store, search and finals (the tuning section's
    view); ``selection``/``pending``: :func:`techbench.plan.tune.select_stored`, computed once;
    ``final_ids``: the trials everything ranked is computed from; ``n_search``: stored search
    trials; ``n_other``: stored trials that are neither (finals of a setting no longer selected).
    """

    plan: TunePlan
    selection: list[Selection]
    pending: list[tuple[str, int]]
    trials: pd.DataFrame
    metrics: pd.DataFrame
    final_ids: frozenset[str]
    n_search: int
    n_other: int

    @property
    def n_finals(self) -> int:
        """Stored finals of the selected settings."""
        return int(self.trials["trial_id"].astype(str).isin(self.final_ids).sum())

    def describe(self) -> str:
        """One sentence for the page: what is ranked and what only feeds the tuning section."""
        other = f"; {self.n_other} other stored trials are left out" if self.n_other else ""
        return (
            f"Tuned matrix: everything ranked on this page comes from the {self.n_finals} final "
            f"runs of the selected settings (fresh seeds); the {self.n_search} search trials "
            f"only feed the Tuning section{other}."
        )


def _store_plans(dirs: Sequence[str | os.PathLike[str]]) -> list[tuple[str, str, TunePlan]]:
    """``(id prefix, store, plan)`` of each tuned store, with the prefixes of :func:`load_stores`."""
    taken: set[str] = set()
    out = []
    for d in dirs:
        label = _store_label(d, taken)
        plan = read_plan(d)
        if plan is not None:
            out.append(("" if len(dirs) == 1 else label + "/", os.fspath(d), plan))
    return out


def finals_only(
    trials: pd.DataFrame, metrics: pd.DataFrame, dirs: Sequence[str | os.PathLike[str]]
) -> tuple[pd.DataFrame, pd.DataFrame, Tuned | None]:
    """``(trials, metrics)`` of :func:`load_stores` with each tuned store's trials narrowed to
    the finals of its selected settings, and the :class:`Tuned` of a single tuned store (None
    otherwise: several stores each rank their finals, and have no tuning section here)."""
    plans = _store_plans(dirs)
    if trials.empty or not plans:
        return trials, metrics, None
    ids = trials["trial_id"].astype(str)
    keep = np.ones(len(trials), dtype=bool)
    tuned = None
    for prefix, where, plan in plans:
        search = {prefix + t.id for t in plan.search_trials()}
        if not ids.isin(search).any():
            continue  # the store's trials (of this --matrix) are not the plan's
        selection, pending = select_stored(plan, where)
        finals = frozenset(prefix + t.id for t in plan.final_trials(selection))
        mine = ids.str.startswith(prefix).to_numpy() if prefix else np.ones(len(ids), bool)
        keep &= ~mine | ids.isin(finals).to_numpy()
        if len(dirs) == 1:
            n_search = int(ids.isin(search).sum())
            n_other = int(len(ids) - n_search - ids.isin(finals).sum())
            tuned = Tuned(plan, selection, pending, trials, metrics, finals, n_search, n_other)
    ranked, ranked_metrics = _keep(trials, metrics, keep)
    return ranked, ranked_metrics, tuned


def stop_reasons(trials: pd.DataFrame) -> pd.Series:
    """Why each trial stopped: the stored ``stop_reason`` (the engine writes it); for a trial of
    a store written by 0.3.0, which lacks it, :func:`techbench.schema.stop_reason` of its status,
    config, steps and epochs run."""
    stored = trials["stop_reason"] if "stop_reason" in trials else pd.Series(None, trials.index)
    missing = (stored.isna() | (stored.astype(str) == "")).to_numpy()
    reasons = stored.astype(object).copy()
    if missing.any():
        part = trials[missing]
        reasons[missing] = [
            stop_reason(
                str(row["status"]),
                _config(row),
                _int(row, "steps"),
                _int(row, "epochs_run"),
            )
            for _, row in part.iterrows()
        ]
    return reasons.rename("stop_reason").astype(str)


def _config(row: pd.Series) -> dict[str, Any]:
    """The row's config (its budget as the row's budget columns say, where it has them)."""
    try:
        config = json.loads(row.get("config"))
    except (TypeError, ValueError):
        config = {}
    budget = dict((config.get("budget") if isinstance(config, dict) else None) or {})
    for key in ("epochs", "max_steps"):
        if key in row:
            budget[key] = _int(row, key)
    return {"budget": budget}


def _int(row: pd.Series, key: str) -> int | None:
    value = pd.to_numeric(row.get(key), errors="coerce")
    return None if pd.isna(value) else int(value)


def stop_summary(runs: pd.DataFrame) -> str:
    """Why the runs stopped, most common first: "epoch budget (10 epochs): 50 runs; divergence:
    2 runs". A budget is named with its size and every count is of runs, so the number of runs
    stopped by the epoch budget never reads as a number of epochs."""
    reasons = runs["stop_reason"].astype(str)
    budgets = {"epochs": ("epochs", "epoch budget"), "steps": ("max_steps", "step budget")}
    counts: dict[str, int] = {}
    for reason, group in runs.groupby(reasons, sort=False):
        column, word = budgets.get(str(reason), ("", ""))
        if column not in group:
            counts[STOP_WORDS.get(str(reason), str(reason))] = len(group)
            continue
        sizes = pd.to_numeric(group[column], errors="coerce")
        for size, n in sizes.value_counts(dropna=False).sort_index().items():
            unit = str(reason) if size != 1 else str(reason)[:-1]
            counts[f"{word} ({size:g} {unit})" if pd.notna(size) else word] = int(n)
    ranked = sorted(counts.items(), key=lambda kv: -kv[1])
    return "; ".join(f"{what}: {n} run{'' if n == 1 else 's'}" for what, n in ranked)
