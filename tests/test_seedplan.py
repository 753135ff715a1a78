"""The two-stage seed plan: its error rates by simulation, its bookkeeping, its validation."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from techbench.cli import main
from techbench.execute.local import execute
from techbench.plan.matrix import MatrixError, loads_matrix
from techbench.plan.seedplan import PLAN_FILE, SeedPlan, read_stage2
from techbench.report import headline, power
from techbench.report.stage2 import run_planned
from techbench.report.stats import iqm

PLAN = SeedPlan(pilot=5, max=40, power=0.8)
STUDIES = 400


def _separated(a: np.ndarray, b: np.ndarray) -> bool:
    """The headline's rule: the 95% bootstrap interval of IQM(best) - IQM(runner-up) (the
    best: the higher IQM; the same resamples and seeds as :func:`headline._compare_dataset`)
    excludes 0."""
    best, other = (a, b) if iqm(a) >= iqm(b) else (b, a)
    boot_best = headline._boot_iqm(best, np.zeros(best.size), 0)
    boot_other = headline._boot_iqm(other, np.zeros(other.size), 1)
    lo, hi = headline._ci(boot_best - boot_other)
    return not (lo <= 0 <= hi)


def _study(rng: np.random.Generator, delta: float) -> tuple[bool, int]:
    """One two-stage study of normal scores (sd 1) whose means differ by ``delta``: the plan's
    decision (:meth:`SeedPlan.seeds_for` of :func:`power.comparison`'s seeds needed), then the
    verdict on every seed run."""
    a, b = rng.normal(delta, 1.0, PLAN.max), rng.normal(0.0, 1.0, PLAN.max)
    pa, pb = a[: PLAN.pilot], b[: PLAN.pilot]
    row = power.comparison({0: pa}, {0: pb}, (math.nan, math.nan), None, power=PLAN.power,
                           cap=PLAN.max)  # fmt: skip
    n = PLAN.seeds_for(float(row["seeds_needed"]))  # type: ignore[arg-type]
    return _separated(a[:n], b[:n]), n


def _rate(delta: float, seed: int) -> float:
    rng = np.random.default_rng(seed)
    return float(np.mean([_study(rng, delta)[0] for _ in range(STUDIES)]))


def test_equal_techniques_are_separated_at_most_at_the_nominal_rate() -> None:
    rate = _rate(0.0, seed=11)
    se = math.sqrt(0.05 * 0.95 / STUDIES)
    print(f"A/A false separations: {rate:.4f} over {STUDIES} two-stage studies")
    assert rate <= 0.05 + 2 * se


def test_a_known_difference_is_separated_with_the_planned_power() -> None:
    # normal scores, IQM: n = (z_.975 + z_.8)^2 * 2 * 1.195 / 0.8^2 ~ 29 seeds, under the cap
    assert power.normal_seeds(1.0, 1.0, 0.8) < PLAN.max
    rate = _rate(0.8, seed=12)
    se = math.sqrt(0.8 * 0.2 / STUDIES)
    print(f"power at a difference of 0.8 sd: {rate:.4f} over {STUDIES} two-stage studies")
    assert rate >= PLAN.power - 2 * se


def test_seeds_for_keeps_between_half_the_cap_and_the_cap() -> None:
    assert PLAN.seeds_for(4.0) == 20  # the pilot decides nothing: at least max / 2
    assert PLAN.seeds_for(31.2) == 32
    assert PLAN.seeds_for(math.inf) == 40
    assert PLAN.seeds_for(math.nan) == 40


# -- bookkeeping ---------------------------------------------------------------------------------

LOG = "TECHBENCH_SEEDPLAN_TEST_LOG"
MATRIX = """
name = "planned"
[seeds]
plan = { pilot = 5, max = 12 }
[axes]
dataset = ["moons"]
activation = ["relu", "tanh"]
"""


def fake_trial(config: dict[str, Any]) -> dict[str, Any]:
    """Equal techniques (noise only), so the pilot leaves the comparison undecided; each call
    is logged (the log file survives worker processes)."""
    with open(os.environ[LOG], "a", encoding="utf-8") as f:
        f.write(f"{config['activation']['name']} {config['seed']}\n")
    val = 0.8 + 0.01 * math.sin(7.0 * config["seed"] + len(config["activation"]["name"]))
    rows = [
        {"step": 10, "epoch": 0, "split": "val", "metric": "acc", "layer": "", "value": val},
        {"step": 10, "epoch": 0, "split": "test", "metric": "acc", "layer": "", "value": val},
    ]
    return {"status": "completed", "metrics": rows, "meta": {}}


class _Stopped:
    interrupted, missing, exit_signal = True, 0, 2


def _runs(log: Path) -> list[str]:
    return log.read_text().splitlines() if log.exists() else []


def test_a_killed_stage_two_resumes_with_the_same_plan_and_runs_only_what_is_missing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log, out = tmp_path / "log", tmp_path / "out"
    monkeypatch.setenv(LOG, str(log))
    matrix = loads_matrix(MATRIX, "m.toml")
    assert matrix.seed_plan == SeedPlan(pilot=5, max=12) and matrix.seeds == [0, 1, 2, 3, 4]
    pilot = matrix.planned()

    def killed(trials: list[Any], stage: str) -> Any:
        if stage == "pilot":
            return execute(trials, out, workers=1, run_fn=fake_trial, progress=False)
        execute(trials[:3], out, workers=1, run_fn=fake_trial, progress=False)
        return _Stopped()

    first = run_planned(matrix.seed_plan, pilot, out, killed, note=lambda s: None)
    assert first.interrupted and first.planned is not None
    [row] = first.planned.rows
    n = row["seeds"]
    assert 6 <= n <= 12  # at least half the cap
    stored_plan = (out / PLAN_FILE).read_text()
    # the stage-2 trials: both activations on seeds 5 .. n-1, expanded here independently
    full = loads_matrix(MATRIX.replace("[seeds]\nplan = { pilot = 5, max = 12 }", f"seeds = {n}"))
    expected = {t.id for t in full.planned()} - {t.id for t in pilot}
    assert {t.id for t in first.planned.trials()} == expected
    before = set(_runs(log))
    assert len(_runs(log)) == len(pilot) + 3

    def resumed(trials: list[Any], stage: str) -> Any:
        return execute(trials, out, workers=1, run_fn=fake_trial, progress=False)

    second = run_planned(matrix.seed_plan, pilot, out, resumed, note=lambda s: None)
    assert not second.interrupted and second.missing == 0
    assert (out / PLAN_FILE).read_text() == stored_plan  # planned once, read back
    new = _runs(log)[len(pilot) + 3 :]
    want = {f"{a} {s}" for a in ("relu", "tanh") for s in range(5, n)} - before
    assert sorted(new) == sorted(want) and len(new) == 2 * (n - 5) - 3


def test_the_plan_is_a_pure_function_of_the_pilot(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(LOG, str(tmp_path / "log"))
    matrix = loads_matrix(MATRIX, "m.toml")
    plans = []
    for k in range(2):
        out = tmp_path / f"out{k}"
        execute(matrix.planned(), out, workers=1, run_fn=fake_trial, progress=False)
        from techbench.report.stage2 import plan_stage2

        plans.append(json.dumps(plan_stage2(out, matrix.seed_plan, False).to_json()))
        assert read_stage2(out) is not None
    assert plans[0] == plans[1]


# -- validation -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("plan", "key"),
    [
        ("{ pilot = 1, max = 40 }", "seeds.plan.pilot"),
        ("{ pilot = 5, max = 5 }", "seeds.plan.max"),
        ("{ pilot = 5, max = 40, power = 1.5 }", "seeds.plan.power"),
        ("{ pilot = 5, maxx = 40 }", "seeds.plan.maxx"),
        ('"five"', "seeds.plan"),
    ],
)
def test_a_bad_plan_names_the_file_and_key(plan: str, key: str) -> None:
    text = MATRIX.replace("{ pilot = 5, max = 12 }", plan)
    with pytest.raises(MatrixError) as err:
        loads_matrix(text, "bad.toml")
    assert any(str(p).startswith(f"bad.toml: {key}: ") for p in err.value.problems)


def test_a_bad_plan_exits_2_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(MATRIX.replace("max = 12", "max = 0"))
    assert main(["run", str(path), "--dry-run"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and f"{path}: seeds.plan.max: " in err[1]
    good = tmp_path / "good.toml"
    good.write_text(MATRIX)
    assert main(["run", str(good), "--dry-run", "--seed-plan", "pilot=5,max=3"]) == 2
    assert "--seed-plan 'pilot=5,max=3': max must exceed pilot" in capsys.readouterr().err


def test_dry_run_pilot_prints_the_seeds_each_comparison_needs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv(LOG, str(tmp_path / "log"))
    path, pilot = tmp_path / "m.toml", tmp_path / "pilot"
    path.write_text(MATRIX)
    matrix = loads_matrix(MATRIX, "m.toml")
    execute(matrix.planned(), pilot, workers=1, run_fn=fake_trial, progress=False)
    code = main(
        ["run", str(path), "--dry-run", "--pilot", str(pilot), "--out", str(tmp_path / "o")]
    )
    assert code == 0
    text = capsys.readouterr().out
    stage = read_stage2(pilot)
    assert stage is None  # a dry run writes nothing
    assert "moons · activation: " in text and "gets " in text
    n = int(text.split("gets ")[1].split()[0])
    assert f"stage 2: {2 * (n - 5)} trials" in text
