"""What every report section sees (:class:`ReportContext`) and returns (:class:`Section`).

Its own module so that section modules (:mod:`.howsure`, :mod:`.tuning`, :mod:`.parallel`)
import the types without importing :mod:`.sections`, which imports them.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from . import analyze, scoring
from .inputs import Tuned
from .settings import AxisView

__all__ = ["ReportContext", "Section"]


@dataclass(frozen=True)
class ReportContext:
    """Everything the sections share: the loaded store, the derived tables and the options.

    ``runs`` has one row per trial, ``cells`` one per (dataset, configuration) with the
    best-configuration flags merged in, ``techs`` one per (axis, technique); ``fried`` holds
    the per-axis Friedman results, ``profiles`` the performance profiles per time measure
    ("steps", "modelled seconds", "wall-clock seconds") and axis, ``poi`` the probability of
    improvement over ``baselines`` (empty without one). ``views`` holds per axis the runs that
    compare it (techniques at their selected settings, :mod:`.settings`); ``headline``,
    ``leaderboard`` and ``summary`` are the tables of :mod:`.headline`; ``score_rule`` is the
    rule of :mod:`.scoring`. ``tuned``: for a tuned store, its search and final trials
    (:func:`.inputs.finals_only`); ``trials``/``metrics`` and every table then hold the finals of
    the selected settings only, and only the tuning section reads ``tuned``.
    """

    results_dir: str | os.PathLike[str]
    out: Path
    baselines: Sequence[str]
    trials: pd.DataFrame
    metrics: pd.DataFrame
    matrix: Mapping[str, object]
    axes: list[str]
    curves: pd.DataFrame
    runs: pd.DataFrame
    cells: pd.DataFrame
    techs: pd.DataFrame
    flags: pd.DataFrame
    fried: list[analyze.FriedmanResult]
    profiles: dict[str, dict[str, tuple[pd.DataFrame, pd.Series, int]]]
    poi: pd.DataFrame
    few: pd.DataFrame
    score_rule: str = scoring.DEFAULT_SCORE
    views: Mapping[str, AxisView] = field(default_factory=dict)
    headline: pd.DataFrame = field(default_factory=pd.DataFrame)
    leaderboard: pd.DataFrame = field(default_factory=pd.DataFrame)
    summary: pd.DataFrame = field(default_factory=pd.DataFrame)
    confounded: pd.DataFrame = field(default_factory=pd.DataFrame)
    stores: Sequence[str] = ()
    wall_clock: bool = False
    tuned: Tuned | None = None
    min_effect: float | None = None

    @property
    def higher(self) -> bool:
        """Whether a higher target metric is better for every run."""
        return bool((self.runs["target_mode"] != "min").all())


@dataclass(frozen=True)
class Section:
    """One section of the page (anchor, heading, escaped HTML blocks) and the CSVs it writes."""

    anchor: str
    heading: str
    blocks: list[str]
    csvs: dict[str, pd.DataFrame] = field(default_factory=dict)
