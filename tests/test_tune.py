"""Tuning: search ranges on Param, search points, [tune] validation, selection on validation only,
the all-diverged fallback, edge flags, and SIGKILL-resume of both phases (test-only trial
function: no training)."""

from __future__ import annotations

import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from techbench.plan.matrix import MatrixError, loads_matrix
from techbench.plan.search import Dimension, search_points, unit_points
from techbench.schema import trial_id
from techbench.store import ResultStore
from techbench.techniques.registry import default_registry
from techbench.techniques.spec import Param

from .report_fixtures import rewrite_metrics

if TYPE_CHECKING:
    pass
from techbench.plan.tune import read_plan, select_stored

ROOT = Path(__file__).resolve().parents[1]
RUN_FN = "tests.test_tune:fake_trial"


def fake_trial(config: dict) -> dict:
    """Validation accuracy peaks at lr = 10^-2.5 (x seed jitter); test accuracy is its mirror
    image, so a selection that looked at the test split would pick the worst lr. ``radam``
    always diverges."""
    log = os.environ.get("TB_TUNE_LOG")
    if log:
        with open(log, "a") as fh:
            fh.write(trial_id(config) + "\n")
    time.sleep(float(os.environ.get("TB_TUNE_SLEEP", "0")))
    lr = config["optimizer"]["params"]["lr"]
    val = 0.95 - 0.05 * (math.log10(lr) + 2.5) ** 2 + 0.001 * (config["seed"] % 3)
    test = 1.0 - val
    diverged = config["optimizer"]["name"] == "radam"
    rows = [
        {"step": 10 * e, "epoch": e, "split": "val", "metric": "acc", "layer": "",
         "value": val - 0.1 / (e + 1)}
        for e in range(3)
    ]  # fmt: skip
    rows.append({"step": 30, "epoch": 2, "split": "test", "metric": "acc", "layer": "",
                 "value": test})  # fmt: skip
    return {"status": "diverged" if diverged else "completed", "metrics": rows, "meta": {}}


MATRIX = """
name = "tuned"
[axes]
dataset = ["digits", "moons"]
optimizer = ["sgd", "adam", "radam"]
[tune]
budget = 6
seeds = 2
final_seeds = 3
[tune.search]
optimizer = ["lr"]
"""


# -- Param search ranges ----------------------------------------------------------------------


def test_from_unit_matches_the_scale_formulas() -> None:
    lr = Param(name="lr", type=float, default=0.1, low=0, search=(1e-5, 1.0), scale="log")
    mom = Param(name="m", type=float, default=0.9, low=0, high=1, high_open=True,
                search=(0.5, 0.999), scale="log1m")  # fmt: skip
    p = Param(name="p", type=float, default=0.5, low=0, high=1, search=(0.0, 0.7))
    k = Param(name="k", type=int, default=5, low=1, search=(1, 20), scale="log")
    for u in (0.0, 0.13, 0.5, 0.77, 1.0):
        assert lr.from_unit(u) == pytest.approx(10 ** (-5 + 5 * u), rel=1e-3)
        want = 1 - 10 ** (math.log10(0.5) + u * (math.log10(0.001) - math.log10(0.5)))
        assert 1 - mom.from_unit(u) == pytest.approx(1 - want, rel=1e-3)
        assert p.from_unit(u) == pytest.approx(0.7 * u, abs=1e-4)
        assert k.from_unit(u) == round(20**u)
        assert lr.to_unit(lr.from_unit(u)) == pytest.approx(u, abs=1e-4)
        assert mom.to_unit(mom.from_unit(u)) == pytest.approx(u, abs=1e-4)


@pytest.mark.parametrize(
    "kw",
    [
        {"type": float, "low": 0.0, "high": 1.0, "search": (0.0, 2.0)},  # leaves valid range
        {"type": float, "low": 0.0, "search": (0.0, 1.0), "scale": "log"},  # log of 0
        {"type": float, "low": 0.0, "search": (0.5, 1.0), "scale": "log1m"},  # log(1 - 1)
        {"type": float, "search": (1.0, 1.0)},  # empty
        {"type": float, "search": (0.1, 1.0), "scale": "cubic"},  # unknown scale
        {"type": str, "search": (0.1, 1.0)},  # not a number
    ],
)
def test_bad_search_declarations_fail_at_definition(kw: dict) -> None:
    default = "x" if kw["type"] is str else 0.5
    with pytest.raises(TypeError):
        Param(name="x", default=default, **kw)


def test_every_builtin_optimizer_declares_lr_and_ranges_are_valid() -> None:
    registry = default_registry()
    for entry in registry.entries("optimizer"):
        spec = entry.spec
        assert spec.param("lr").search == (1e-5, 1.0), spec.name
        for p in spec.params:
            if p.search is not None:
                assert p.doc and "search" in p.doc, (spec.name, p.name)
                described = next(d for d in spec.describe()["params"] if d["name"] == p.name)
                assert described["search"] == list(p.search)
                assert described["scale"] == p.scale


# -- points -----------------------------------------------------------------------------------


def test_points_are_fixed_by_the_space_and_cover_it() -> None:
    spec = default_registry().get_spec("momentum", "optimizer")
    dims = [
        Dimension("optimizer", spec.param("lr")),
        Dimension("optimizer", spec.param("momentum")),
    ]
    a = search_points(dims, "sobol", 8, "optimizer=momentum")
    assert a == search_points(dims, "sobol", 8, "optimizer=momentum")
    assert a != search_points(dims, "sobol", 8, "optimizer=momentum", study=1)
    assert len(a) == 8
    for point in a:
        assert 1e-5 <= point["optimizer.lr"] <= 1.0
        assert 0.5 <= point["optimizer.momentum"] <= 0.999
    # a scrambled Sobol set of 8 has one point in each eighth of every coordinate
    u = unit_points("sobol", 8, 2, seed=123)
    for j in range(2):
        assert sorted(int(p[j] * 8) for p in u) == list(range(8))
    assert unit_points("grid", 10, 2, 0) == [(a, b) for a in (0, 0.5, 1) for b in (0, 0.5, 1)]
    assert unit_points("halton", 5, 3, 7) == unit_points("halton", 5, 3, 7)
    assert unit_points("random", 5, 3, 7) == unit_points("random", 5, 3, 7)


# -- [tune] validation ------------------------------------------------------------------------


def test_tune_section_problems_name_key_and_fix() -> None:
    bad = """
seeds = 3
[axes]
optimizer = ["sgd", "adam"]
[tune]
method = "sobel"
budget = 0
select = "last"
metric = "test_acc"
frobnicate = 1
[tune.search]
optimizer = ["lr", "gamma"]
activation = { relu = ["x"] }
"""
    with pytest.raises(MatrixError) as err:
        loads_matrix(bad, "bad.toml")
    text = str(err.value)
    for needle in (
        "bad.toml: tune.frobnicate: unknown key",
        "bad.toml: seeds: a tuned matrix takes its seeds from [tune]",
        "tune.method: must be one of sobol, halton, random, grid, got 'sobel' (did you mean 'sobol'?)",
        "tune.budget: must be >= 1",
        "tune.select: must be 'final' or 'best'",
        "tune.metric: selection uses validation only",
        "tune.search.optimizer: no technique of axis optimizer declares a search range for 'gamma'",
        "tune.search.activation.relu: activation/relu: 'x' unknown",
    ):
        assert needle in text, needle
    with pytest.raises(MatrixError, match="final_seeds: overlap the search seeds: \\[1\\]"):
        loads_matrix(MATRIX.replace("final_seeds = 3", "final_seeds = [1, 5]"), "m.toml")


def test_default_search_is_every_declared_range_and_finals_avoid_search_seeds() -> None:
    m = loads_matrix(
        '[axes]\noptimizer = ["sgd", "adam"]\n[tune]\nseeds = [0, 2]\nstudies = 2\n', "d.toml"
    )
    t = m.tune
    assert [p.name for p in t.space[("optimizer", "adam")]] == [
        "lr", "beta1", "beta2", "eps", "weight_decay"
    ]  # fmt: skip
    assert t.study_seeds(0) == [0, 2] and t.study_seeds(1) == [3, 5]
    assert t.final_seeds == (1, 4, 6, 7, 8, 9, 10, 11, 12, 13)
    plan = m.tune_plan()
    assert len(m.trials()) == 2 * 2 * 16 * 2  # techniques x studies x budget x seeds
    assert {g.technique for g in plan.groups} == {"sgd", "adam"}


# -- selection --------------------------------------------------------------------------------


def _run_all(out: Path, matrix_text: str = MATRIX) -> list:
    from techbench.execute.local import execute
    from techbench.plan.tune import run_tuned

    plan = loads_matrix(matrix_text, "m.toml").tune_plan()

    def phase(configs: list, name: str):
        return execute(configs, out, workers=1, run_fn=fake_trial, progress=False)

    result = run_tuned(plan, out, phase, note=lambda s: None)
    assert not result.interrupted and not result.pending
    return result.selection


def test_selection_uses_validation_only_and_flags_divergence(tmp_path: Path) -> None:
    out = tmp_path / "out"
    chosen = _run_all(out)
    plan = read_plan(out)
    assert plan is not None
    # the selected lr maximises the fake's validation score among the searched points
    by_id = {g.id: g for g in plan.groups}
    for s in chosen:
        g = by_id[s.group]
        if g.technique == "radam":
            assert s.all_diverged and s.point == {"optimizer.lr": 1e-3} and s.index is None
            continue
        lrs = [p["optimizer.lr"] for p in g.points[0]]
        assert s.point["optimizer.lr"] == min(lrs, key=lambda x: abs(math.log10(x) + 2.5))
    # radam's finals ran at its default lr (not skipped)
    store = ResultStore(out)
    radam = [g for g in plan.groups if g.technique == "radam"]
    for g in radam:
        for seed in plan.spec.final_seeds:
            assert store.status(trial_id(g.config({"optimizer.lr": 1e-3}, seed, False)))

    # rewrite every stored trial's test rows (reverse the order of their values): same selection
    import pyarrow.parquet as pq

    for tid in store.trial_ids():
        path = store.trials_dir / tid / "metrics.parquet"
        df = pq.read_table(path).to_pandas()
        test = df["split"] == "test"
        df.loc[test, "value"] = 1000.0 * (1.0 - df.loc[test, "value"])
        rewrite_metrics(path, df)
    again, pending = select_stored(plan, out)
    assert not pending
    assert [(s.group, s.point) for s in again] == [(s.group, s.point) for s in chosen]

    # ... while changing a validation row does change it (the test above can fail)
    g = next(g for g in plan.groups if g.technique == "sgd")
    worst = min(g.points[0], key=lambda p: -abs(math.log10(p["optimizer.lr"]) + 2.5))
    for seed in plan.spec.study_seeds(0):
        path = store.trials_dir / trial_id(g.config(worst, seed, False)) / "metrics.parquet"
        df = pq.read_table(path).to_pandas()
        df.loc[df["split"] == "val", "value"] = 2.0
        rewrite_metrics(path, df)
    changed, _ = select_stored(plan, out)
    assert next(s for s in changed if s.group == g.id).point == worst


def test_edge_flags() -> None:
    from techbench.plan.tune import edge_flags

    spec = default_registry().get_spec("sgd", "optimizer")
    dims = [Dimension("optimizer", spec.param("lr"))]
    assert edge_flags(dims, {"optimizer.lr": 2e-5}) == {"optimizer.lr": "low"}
    assert edge_flags(dims, {"optimizer.lr": 0.5}) == {"optimizer.lr": "high"}
    assert edge_flags(dims, {"optimizer.lr": 1e-3}) == {}


# -- resume after SIGKILL ---------------------------------------------------------------------


def _kill_after(cmd: list[str], log: Path, lines: int, env: dict) -> set[str]:
    """Start ``cmd``, SIGKILL it once ``log`` has ``lines`` lines; the ids stored at the kill."""
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if log.exists() and len(log.read_text().split()) >= lines:
            break
        if proc.poll() is not None:
            pytest.fail("the run ended before the kill")
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return set(ResultStore(Path(cmd[cmd.index("--out") + 1])).trial_ids())


def test_sigkill_in_either_phase_resumes_to_the_same_selection(tmp_path: Path) -> None:
    matrix = tmp_path / "m.toml"
    matrix.write_text(MATRIX)
    out, log = tmp_path / "out", tmp_path / "log"
    env = {**os.environ, "TB_TUNE_LOG": str(log), "TB_TUNE_SLEEP": "0.05",
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}  # fmt: skip
    cmd = [sys.executable, "-m", "techbench", "run", str(matrix), "--out", str(out),
           "--run-fn", RUN_FN, "--workers", "1", "--no-progress"]  # fmt: skip
    n_search = len(loads_matrix(MATRIX, "m.toml").trials())
    stored_1 = _kill_after(cmd, log, 5, env)  # in the search phase
    mark_1 = len(log.read_text().split())
    assert 0 < len(stored_1) < n_search
    stored_2 = _kill_after(cmd, log, n_search + 4, env)  # in the final phase
    mark_2 = len(log.read_text().split())
    assert n_search < len(stored_2) < n_search + 6 * 3
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    started = log.read_text().split()
    # a trial stored before a kill is never started after it; only the killed in-flight one reruns
    assert not stored_1 & set(started[mark_1:])
    assert not stored_2 & set(started[mark_2:])
    assert len(started) - len(set(started)) <= 2
    plan = read_plan(out)
    assert plan is not None
    resumed, _ = select_stored(plan, out)
    fresh = _run_all(tmp_path / "fresh")
    assert [(s.group, s.point) for s in resumed] == [(s.group, s.point) for s in fresh]
    store = ResultStore(out)
    assert len(store.trial_ids()) == n_search + 6 * 3
    assert set(store.trial_ids()) == set(started)


def test_report_tuning_section(tmp_path: Path) -> None:
    import pandas as pd

    from techbench.report import build_report

    out = tmp_path / "out"
    _run_all(out)
    index = build_report(out, tmp_path / "rep")
    page = index.read_text()
    assert 'id="tuning"' in page
    assert "every search trial diverged" in page  # radam
    sel = pd.read_csv(tmp_path / "rep" / "tuning_selection.csv")
    assert set(sel["technique"]) == {"sgd", "adam", "radam"}
    assert sel.loc[sel["technique"] == "radam", "all_diverged"].all()
    finals = pd.read_csv(tmp_path / "rep" / "tuning_finals.csv")
    # test means from the fake's rows: test = 1 - val at the chosen lr (seeds 1..3)
    plan = read_plan(out)
    assert plan is not None
    for _, row in finals[finals["technique"] != "radam"].iterrows():
        lr = float(sel[(sel.technique == row.technique) & (sel.context == row.context)]
                   ["value:optimizer.lr"].iloc[0])  # fmt: skip
        vals = [0.95 - 0.05 * (math.log10(lr) + 2.5) ** 2 + 0.001 * (s % 3) for s in (1, 2, 3)]
        assert row["test_acc"] == pytest.approx(1 - sum(vals) / 3)
        assert row["val_acc"] == pytest.approx(sum(vals) / 3 - 0.1 / 3)  # last epoch
        assert row["val_acc_ci_low"] <= row["val_acc"] <= row["val_acc_ci_high"]
    assert finals.loc[finals["technique"] == "radam", "n_diverged"].eq(3).all()
    emax = pd.read_csv(tmp_path / "rep" / "tuning_expected_max.csv")
    assert set(emax["n"]) == set(range(1, 7))
    assert (tmp_path / "rep" / "tuning_search.csv").exists()


def test_list_json_shows_search_ranges(capsys: pytest.CaptureFixture[str]) -> None:

    from techbench.cli import main

    assert main(["list", "--json", "adam"]) == 0
    rows = json.loads(capsys.readouterr().out)
    params = {p["name"]: p for p in rows[0]["params"]}
    assert params["lr"]["search"] == [1e-5, 1.0] and params["lr"]["scale"] == "log"
    assert params["beta1"]["scale"] == "log1m"
    assert params["eps_placement"]["search"] is None


def test_shipped_tuned_matrices_search_every_optimizer_and_regularizer() -> None:
    from techbench.plan.matrix import load_matrix

    opt = load_matrix("optimizers-tuned")
    names = {e.name for e in default_registry().entries("optimizer")}
    plan = opt.tune_plan()
    assert {g.technique for g in plan.groups} == names
    for g in plan.groups:
        keys = [d.key for d in g.dims]
        assert keys[0] == "optimizer.lr" and len(keys) == 2, g.technique
    assert len(opt.tune.final_seeds) == 10
    reg = load_matrix("regularizers-tuned").tune_plan()
    assert {g.technique for g in reg.groups} == {
        e.name for e in default_registry().entries("regularizer")
    } - {"augment"}


# -- narrowing a tuned matrix ------------------------------------------------------------------


def _phase_ids(out: Path, final_seeds: set[int]) -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    """Stored trial ids of each phase per dataset (a final trial runs on a final seed)."""
    search: dict[str, set[str]] = {}
    finals: dict[str, set[str]] = {}
    for tid in ResultStore(out).trial_ids():
        meta = ResultStore(out).read_meta(tid)
        assert meta is not None
        config = meta["config"]
        phase = finals if config["seed"] in final_seeds else search
        phase.setdefault(config["dataset"]["name"], set()).add(tid)
    return search, finals


@pytest.mark.parametrize(
    ("flags", "narrowed", "n_seeds"),
    [
        # the case: a filter alone; the same trials as the matrix written for digits only
        (["--filter", "dataset=digits"], ("digits",), (2, 3)),
        # seeds: at most 1 search seed (of 0, 1) and 1 final seed (the first of 2, 3, 4)
        (["--filter", "dataset=digits", "--seeds", "1"], ("digits",), (1, 1)),
    ],
)
def test_narrowed_tuned_run_narrows_both_phases_as_its_dry_run_says(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    flags: list[str],
    narrowed: tuple[str, ...],
    n_seeds: tuple[int, int],
) -> None:
    from techbench.cli import main

    path = tmp_path / "m.toml"
    path.write_text(MATRIX)
    out = tmp_path / "out"
    common = ["run", str(path), "--out", str(out), *flags]
    assert main([*common, "--dry-run", "--sample", "0"]) == 0
    line = next(ln for ln in capsys.readouterr().out.splitlines() if "narrowed by" in ln)
    said = [int(n) for n in re.findall(r"-> (\d+) (?:search|final) trials", line)]
    assert main([*common, "--run-fn", RUN_FN, "--workers", "1", "--no-progress"]) == 0
    n_search, n_final = n_seeds
    # brute force: the matrix written for the narrowed datasets and seeds, run the plain way
    final_seeds = [2, 3, 4][:n_final]
    text = MATRIX.replace('dataset = ["digits", "moons"]', f"dataset = {list(narrowed)!r}")
    text = text.replace("seeds = 2", f"seeds = {n_search}")
    text = text.replace("final_seeds = 3", f"final_seeds = {final_seeds}")
    _run_all(tmp_path / "brute", text)
    search, finals = _phase_ids(out, set(final_seeds))
    want_search, want_finals = _phase_ids(tmp_path / "brute", set(final_seeds))
    assert search == want_search and finals == want_finals
    # 3 optimizers x 6 points x search seeds; 3 selected settings x final seeds; digits only
    assert {k: len(v) for k, v in search.items()} == {"digits": 3 * 6 * n_search}
    assert {k: len(v) for k, v in finals.items()} == {"digits": 3 * n_final}
    assert said == [3 * 6 * n_search, 3 * n_final]
    plan = read_plan(out)
    assert plan is not None and {g.base["dataset"]["name"] for g in plan.groups} == {"digits"}


def test_seed_filters_pick_each_phases_seeds_of_a_tuned_matrix(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    from techbench.cli import main

    path = tmp_path / "m.toml"
    path.write_text(MATRIX)
    base = ["run", str(path), "--out", str(tmp_path / "out"), "--dry-run", "--sample", "0"]
    assert main([*base, "--filter", "seed=1", "--filter", "seed=3"]) == 0
    line = next(ln for ln in capsys.readouterr().out.splitlines() if "narrowed by" in ln)
    # search seed 1 of (0, 1), final seed 3 of (2, 3, 4); 2 datasets x 3 optimizers x 6 points
    assert line.endswith("72 -> 36 search trials, 18 -> 6 final trials")
    assert main([*base, "--filter", "seed=0"]) == 2
    assert "keeps no final seed" in capsys.readouterr().err
    assert main([*base, "--filter", "seed=9"]) == 2
    assert "seed=9: not a seed of the tuned matrix" in capsys.readouterr().err


def test_a_filtered_run_into_a_full_runs_store_keeps_its_plan(tmp_path: Path) -> None:
    from techbench.cli import main

    path = tmp_path / "m.toml"
    path.write_text(MATRIX)
    out = tmp_path / "out"
    full = _run_all(out)
    before = read_plan(out)
    assert before is not None and len(before.groups) == 6  # 2 datasets x 3 optimizers
    args = ["run", str(path), "--out", str(out), "--filter", "dataset=moons", "--run-fn", RUN_FN]
    assert main([*args, "--workers", "1", "--no-progress"]) == 0
    after = read_plan(out)
    assert after is not None and after.to_json() == before.to_json()
    again, pending = select_stored(after, out)
    assert not pending and [(s.group, s.point) for s in again] == [(s.group, s.point) for s in full]
