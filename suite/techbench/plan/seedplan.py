"""A two-stage seed plan: run a pilot, then the seeds each undecided comparison needs, once.

``[seeds] plan = { pilot = 5, max = 40, power = 0.8 }`` (or ``--seed-plan pilot=5,max=40``)
runs in two fixed stages, never peeking after every seed:

1. **pilot**: every trial of the matrix on seeds ``0 .. pilot-1``.
2. **stage 2**: from the stored pilot results, per headline comparison (best against runner-up
   on one dataset and axis, :mod:`techbench.report.headline`), the seeds per technique it needs
   for ``power`` (:func:`techbench.report.power.power_table`, capped at ``max``). Its two
   techniques (the settings the pilot compared, in the pilot's contexts) get seeds up to
   ``max(needed, ceil(max / 2))``, capped at ``max``; other techniques get none.

   The pilot decides nothing: a verdict at the pilot (its 95 % interval excluding 0, even with a
   pilot that had the seeds its margin needs) raised the false separations of two equal
   techniques to 6.8 % in simulation (1000 studies, pilot 5, max 40). The floor keeps the
   pilot's own noise from choosing a small final sample (the source of a sample-size
   re-estimation's false separations); with both, the rate stays at the nominal 5 %
   (``tests/test_seedplan.py`` simulates it).

The report then ranks every seed stored, with the headline's rule. Stage 2 is a pure function of
the stored pilot results (the power simulation is seeded); it is written to
``OUT/seedplan.json`` before any stage-2 trial runs, and a resumed run reads it back instead of
planning again, so a killed run finishes the same plan (as ``tune.json`` does for tuning).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..errors import UsageError
from ..schema import Trial

PLAN_FILE = "seedplan.json"
PLAN_KEYS = ("pilot", "max", "power")
MAX_PLAN_SEEDS = 10_000


@dataclass(frozen=True)
class SeedPlan:
    """A validated seed plan: ``pilot`` seeds first, at most ``max`` per technique, ``power``."""

    pilot: int = 5
    max: int = 40
    power: float = 0.8

    @property
    def floor(self) -> int:
        """The fewest seeds an undecided comparison ends with (see the module doc)."""
        return max(self.pilot, math.ceil(self.max / 2))

    def seeds_for(self, needed: float) -> int:
        """Seeds per technique after stage 2 for a comparison the pilot left with ``needed``
        (:func:`techbench.report.power.seeds_needed`; inf or nan: unknown or above the cap)."""
        want = self.max if not math.isfinite(needed) else math.ceil(needed)
        return int(min(self.max, max(want, self.floor)))

    def procedure(self) -> str:
        """The sentence the report prints."""
        return (
            f"Two-stage seed plan (fixed in advance): {self.pilot} pilot seeds per trial, which "
            "decide nothing; then the two techniques of each headline comparison got seeds up "
            f"to the number the pilot said it needs for {self.power:.0%} power (at least "
            f"{self.floor}, at most {self.max}), run once; the verdicts use every seed stored."
        )


def parse_values(raw: Any) -> tuple[SeedPlan | None, list[tuple[str, str]]]:
    """``(plan, problems)`` of a ``{pilot, max, power}`` table; each problem is ``(key, what)``
    with ``key`` relative to the table (``""``: the table itself)."""
    if not isinstance(raw, Mapping):
        return None, [("", f"must be a table {{ pilot = 5, max = 40, power = 0.8 }}, got {raw!r}")]
    problems = [
        (k, f"unknown key (known: {', '.join(PLAN_KEYS)})") for k in raw if k not in PLAN_KEYS
    ]
    values: dict[str, Any] = {}
    for key in ("pilot", "max"):
        v = raw.get(key, getattr(SeedPlan, key))
        if isinstance(v, bool) or not isinstance(v, int) or not 2 <= v <= MAX_PLAN_SEEDS:
            problems.append((key, f"must be a whole number in [2, {MAX_PLAN_SEEDS}], got {v!r}"))
        values[key] = v
    p = raw.get("power", SeedPlan.power)
    if isinstance(p, bool) or not isinstance(p, int | float) or not 0.5 <= p < 1:
        problems.append(("power", f"must be a number in [0.5, 1), got {p!r}"))
    values["power"] = p
    if not problems and values["max"] <= values["pilot"]:
        problems.append(("max", f"must exceed pilot ({values['pilot']}), got {values['max']}"))
    if problems:
        return None, problems
    return SeedPlan(int(values["pilot"]), int(values["max"]), float(values["power"])), []


def parse_flag(text: str) -> SeedPlan:
    """``--seed-plan pilot=5,max=40[,power=0.8]``; UsageError naming the flag otherwise."""
    raw: dict[str, Any] = {}
    for part in text.split(","):
        key, sep, value = part.partition("=")
        try:
            raw[key.strip()] = float(value) if key.strip() == "power" else int(value)
        except ValueError:
            sep = ""
        if not sep:
            raise UsageError(f"--seed-plan {text!r}: expected pilot=N,max=M[,power=P]")
    plan, problems = parse_values(raw)
    if plan is None:
        key, what = problems[0]
        raise UsageError(f"--seed-plan {text!r}: {key} {what}")
    return plan


# -- stage 2 -----------------------------------------------------------------------------------


@dataclass
class Stage2:
    """The stored plan: one row per headline comparison and the stage-2 trials' configs."""

    plan: SeedPlan
    rows: list[dict[str, Any]] = field(default_factory=list)
    configs: list[dict[str, Any]] = field(default_factory=list)

    def trials(self) -> list[Trial]:
        return [Trial.of(c) for c in self.configs]

    def to_json(self) -> dict[str, Any]:
        return {"version": 1, "plan": asdict(self.plan), "rows": self.rows, "configs": self.configs}

    def write(self, out: str | os.PathLike[str]) -> Path:
        """Write ``OUT/seedplan.json`` atomically."""
        from ..store.writer import ResultStore

        store = ResultStore(out).ensure()
        tmp = store.scratch_path(PLAN_FILE)
        tmp.write_text(json.dumps(self.to_json(), indent=1, sort_keys=True), encoding="utf-8")
        os.replace(tmp, store.root / PLAN_FILE)
        return store.root / PLAN_FILE


def read_stage2(out: str | os.PathLike[str]) -> Stage2 | None:
    """The plan stored in ``OUT/seedplan.json``; None when there is none (or it is unreadable)."""
    try:
        data = json.loads((Path(out) / PLAN_FILE).read_text(encoding="utf-8"))
        return Stage2(SeedPlan(**data["plan"]), list(data["rows"]), list(data["configs"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def stage2_configs(
    out: str | os.PathLike[str], rows: Sequence[Mapping[str, Any]], follow: bool
) -> list[dict[str, Any]]:
    """The configs stage 2 adds: each undecided comparison's pilot runs again on the seeds
    ``pilot .. seeds-1`` (the data seed follows the seed when ``follow``), without duplicates."""
    from ..store.writer import ResultStore

    store = ResultStore(out)
    pilot_seeds: set[int] = set()
    wanted: dict[str, tuple[dict[str, Any], int]] = {}
    for row in rows:
        for tid in row["pilot_trials"]:
            meta = store.read_meta(tid) or {}
            config = meta.get("config")
            if not isinstance(config, dict):
                continue
            pilot_seeds.add(int(config["seed"]))
            base = {
                k: v
                for k, v in config.items()
                if k not in ("seed", *(("data_seed",) if follow else ()))
            }
            key = json.dumps(base, sort_keys=True)
            n = max(int(row["seeds"]), wanted.get(key, (base, 0))[1])
            wanted[key] = (base, n)
    out_configs, seen = [], set()
    for base, n in wanted.values():
        for seed in range(n):
            if seed in pilot_seeds:
                continue
            config = {**base, "seed": seed, **({"data_seed": seed} if follow else {})}
            tid = Trial.of(config).id
            if tid not in seen:
                seen.add(tid)
                out_configs.append(config)
    return out_configs


def describe(stage: Stage2) -> list[str]:
    """One line per comparison: decided, or the seeds it gets; then the stage-2 trial count."""
    lines = []
    for r in stage.rows:
        what = f"{r['dataset']} · {r['axis']}: {r['best']} vs {r['runner_up']}"
        need = r["seeds_needed"]
        if isinstance(need, float):
            need_text = f"needs {need:.0f} seeds per technique"
        elif need == "inf":
            need_text = f"needs more than {stage.plan.max} seeds per technique"
        else:
            need_text = "too few pilot seeds to estimate the seeds needed"
        lines.append(f"{what}: {need_text}, gets {r['seeds']}")
    lines.append(f"stage 2: {len(stage.configs)} trials")
    return lines
