"""Stage 2 of a seed plan (:mod:`techbench.plan.seedplan`), planned from the pilot's report.

The seed plan's values live in ``plan``; deciding stage 2 needs the report's headline and power
table, so it lives here, above both, and ``run planned`` drives pilot, plan and stage 2.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..plan.seedplan import SeedPlan, Stage2, describe, read_stage2, stage2_configs
from ..plan.tune import TwoPhases
from ..schema import Trial

__all__ = ["PlanResult", "comparisons", "plan_stage2", "run_planned"]


def comparisons(out: str | os.PathLike[str], plan: SeedPlan) -> list[dict[str, Any]]:
    """Per headline comparison of the store ``out``: its margin, whether it is separated, the
    seeds it needs (:func:`techbench.report.power.power_table` with the plan's power and cap),
    the seeds the plan gives it, and the trial ids of its two techniques' runs."""
    import tempfile

    from . import power
    from .build import load_context
    from .settings import comparison_group

    with tempfile.TemporaryDirectory() as tmp:
        ctx = load_context(out, Path(tmp))
    if ctx is None or ctx.headline.empty:
        return []
    table = power.power_table(
        ctx.views, ctx.headline, ctx.higher, None, power=plan.power, cap=plan.max
    )
    rows = []
    for r in table.itertuples(index=False):
        lo, hi = float(r.margin_ci_low), float(r.margin_ci_high)
        separated = not (math.isnan(lo) or lo <= 0 <= hi)
        runs = ctx.views[r.axis].runs
        g = comparison_group(runs[runs["dataset"] == r.dataset])
        ids = sorted(g.loc[g["_tech"].isin([r.best, r.runner_up]), "trial_id"].astype(str))
        needed = float(r.seeds_needed)
        rows.append(
            {
                "dataset": str(r.dataset), "axis": str(r.axis), "best": str(r.best),
                "runner_up": str(r.runner_up), "margin": float(r.margin),
                "margin_ci": [lo, hi], "separated": separated, "seeds_now": int(r.seeds_now),
                "seeds_needed": needed if math.isfinite(needed) else str(needed),
                "seeds": plan.seeds_for(needed), "pilot_trials": ids,
            }
        )  # fmt: skip
    return rows


def plan_stage2(out: str | os.PathLike[str], plan: SeedPlan, follow: bool) -> Stage2:
    """The stored plan when one with the same :class:`SeedPlan` is there, else a new one from
    the stored pilot results (written before it is returned)."""
    stored = read_stage2(out)
    if stored is not None and stored.plan == plan:
        return stored
    rows = comparisons(out, plan)
    stage = Stage2(plan, rows, stage2_configs(out, rows, follow))
    stage.write(out)
    return stage


@dataclass
class PlanResult(TwoPhases):
    """What :func:`run_planned` did: the pilot's and stage 2's run results."""

    pilot: Any
    stage2: Any = None
    planned: Stage2 | None = None

    def phases(self) -> tuple[Any, Any]:
        return self.pilot, self.stage2


def run_planned(
    plan: SeedPlan,
    pilot: list[Trial],
    out: str | os.PathLike[str],
    run_phase: Callable[[list[Trial], str], Any],
    follow: bool = False,
    note: Callable[[str], None] = print,
) -> PlanResult:
    """Pilot, plan, stage 2. ``run_phase(trials, stage)`` runs trials into ``out`` and returns a
    result with ``interrupted`` and ``missing`` (as :func:`techbench.plan.tune.run_tuned`'s)."""
    note(f"seed plan: pilot, {len(pilot)} trials ({plan.pilot} seeds)")
    result = PlanResult(run_phase(pilot, "pilot"))
    if result.pilot.interrupted or result.pilot.missing:
        return result  # stage 2 is planned from a complete pilot only
    stage = plan_stage2(out, plan, follow)
    result.planned = stage
    for line in describe(stage):
        note(f"seed plan: {line}")
    result.stage2 = run_phase(stage.trials(), "stage 2")
    return result
