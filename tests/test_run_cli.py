"""``techbench run``: listing, dry runs, clear errors with exit 2, --rerun-failed, SIGKILL and
resume, and the smoke matrix end to end (real training) with its report."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from techbench.cli import main
from techbench.plan.matrix import load_matrix
from techbench.schema import trial_id
from techbench.store import ResultStore
from techbench.store.reader import load_results
from tests.test_execute import interrupt_after_two_stored

ROOT = Path(__file__).resolve().parents[1]


def fast_run(config: dict) -> dict:
    """A trial function for CLI tests: sleeps TB_SLEEP seconds; fails while TB_FAIL_FLAG is absent."""
    time.sleep(float(os.environ.get("TB_SLEEP", "0")))
    flag = os.environ.get("TB_FAIL_FLAG")
    failed = bool(flag) and not Path(flag).exists()
    return {
        "trial_id": trial_id(config),
        "config": config,
        "status": "failed" if failed else "completed",
        "metrics": [
            {"step": 0, "epoch": 0, "split": "val", "metric": "acc", "layer": "", "value": 0.5}
        ],
        "meta": {"error": "flag missing" if failed else None, "wall_seconds": 0.0},
    }


def write(tmp_path: Path, text: str, name: str = "m.toml") -> str:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return str(path)


SMALL = """
    name = "small"
    seeds = 3
    [budget]
    epochs = 1
    [axes]
    activation = ["relu", "tanh"]
    """


def techbench(
    *args: str, env: dict | None = None, timeout: float = 300
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "techbench.cli", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


def test_list_shows_ready_made_matrices(capsys):
    assert main(["run", "--list"]) == 0
    out = capsys.readouterr().out
    for name in ("smoke", "demo", "activations", "optimizers", "lecture"):
        assert name in out


def test_dry_run_prints_count_and_sample(tmp_path, capsys):
    path = write(tmp_path, SMALL)
    assert main(["run", path, "--dry-run", "--out", str(tmp_path / "out"), "--sample", "3"]) == 0
    out = capsys.readouterr().out
    assert "matrix small" in out and "6 trials" in out and "0 done, 0 failed, 6 to run" in out
    sample = [line for line in out.splitlines() if line.startswith("  ") and "activation=" in line]
    assert len(sample) == 3
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_dry_run_of_a_ready_made_matrix(capsys):
    assert main(["run", "demo", "--dry-run"]) == 0
    assert "50 trials" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "[axes]\nactivation = ['rleu']",
            "axes.activation[0]: unknown activation 'rleu'; did you mean",
        ),
        ("[budget]\nepoch = 2", "budget.epoch: unknown key 'epoch' (did you mean 'epochs'?)"),
        ("name = [", "invalid TOML"),
    ],
)
def test_bad_matrix_exits_2_with_every_problem(tmp_path, capsys, text, expected):
    path = write(tmp_path, text)
    assert main(["run", path]) == 2
    err = capsys.readouterr().err
    assert expected in err and path in err and "Traceback" not in err


def test_usage_errors_exit_2(tmp_path, capsys):
    assert main(["run", "smok"]) == 2
    assert "did you mean 'smoke'" in capsys.readouterr().err
    assert main(["run", "smoke", "--workers", "0"]) == 2
    assert "--workers must be >= 1" in capsys.readouterr().err
    assert main(["run"]) == 2
    assert "smoke" in capsys.readouterr().err
    assert main(["run", str(tmp_path / "missing.toml")]) == 2
    assert "cannot read" in capsys.readouterr().err


def test_errors_in_a_subprocess_have_no_traceback(tmp_path):
    path = write(tmp_path, "nme = 1\n[axes]\nactivation = ['rleu', { name = 'elu', alhpa = 1 }]\n")
    proc = techbench("run", path, timeout=120)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    lines = [line.strip() for line in proc.stderr.splitlines()]
    assert lines[0] == "techbench run: error: 3 problems in the matrix:"
    assert lines[1] == f"{path}: nme: unknown key 'nme' (did you mean 'name'?)"
    assert "axes.activation[0]" in lines[2] and "axes.activation[1].alhpa" in lines[3]


def test_rerun_failed_retries_only_failures(tmp_path, capsys, monkeypatch):
    path = write(tmp_path, SMALL)
    out = str(tmp_path / "out")
    flag = tmp_path / "flag"
    monkeypatch.setenv("TB_FAIL_FLAG", str(flag))
    args = ["run", path, "--out", out, "--workers", "1", "--run-fn", "tests.test_run_cli:fast_run"]
    assert main(args) == 1
    captured = capsys.readouterr()
    assert "0 completed, 0 diverged, 6 failed" in captured.out
    err = captured.err.splitlines()
    assert err[0] == "techbench run: 6 trials failed:"
    assert len([ln for ln in err if ln.endswith(": flag missing")]) == 5
    assert "... and 1 more" in err[6] and err[7].endswith(f"--out {out} --rerun-failed")
    flag.write_text("ok")
    assert main(args) == 1
    captured = capsys.readouterr()
    assert "6 already stored" in captured.out and "--rerun-failed" in captured.err
    assert ResultStore(out).failed_ids() == {trial_id(t) for t in load_matrix(path).trials()}
    assert main([*args, "--rerun-failed"]) == 0
    assert "6 completed" in capsys.readouterr().out
    trials, _ = load_results(out)
    assert set(trials["status"]) == {"completed"} and len(trials) == 6
    assert (Path(out) / "matrix.json").exists()


@pytest.mark.slow
def test_sigkill_mid_matrix_then_rerun_has_every_trial_once(tmp_path):
    path = write(tmp_path, SMALL.replace("seeds = 3", "seeds = 6"))
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "techbench.cli", "run", path, "--out", str(out), "--workers", "2"]
    cmd += ["--run-fn", "tests.test_run_cli:fast_run"]
    env = {**os.environ, "TB_SLEEP": "0.5"}
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 90
    while len(ResultStore(out).trial_ids()) < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    before = {t: ResultStore(out).read_meta(t) for t in ResultStore(out).trial_ids()}
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert 3 <= len(before) < 12
    rerun = techbench(*cmd[3:], env={"TB_SLEEP": "0"})
    assert rerun.returncode == 0, rerun.stderr
    assert "12/12 trials done" in rerun.stdout
    store = ResultStore(out)
    assert sorted(store.trial_ids()) == sorted(trial_id(t) for t in load_matrix(path).trials())
    for tid in store.trial_ids():
        assert sorted(p.name for p in (out / "trials" / tid).iterdir()) == [
            "meta.json",
            "metrics.parquet",
        ]
    for tid, meta in before.items():
        assert store.read_meta(tid) == meta


@pytest.mark.slow
def test_smoke_matrix_end_to_end_with_report(tmp_path):
    out, report = tmp_path / "results", tmp_path / "report"
    proc = techbench("run", "smoke", "--out", str(out), "--report", str(report), timeout=500)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "2/2 trials done: 2 completed" in proc.stdout
    trials, metrics = load_results(out)
    assert len(trials) == 2 and set(trials["status"]) == {"completed"}
    assert set(trials["activation"]) == {"relu", "tanh"}
    assert {"train", "val", "test", "health", "time"} <= set(metrics["split"])
    val = metrics[(metrics["split"] == "val") & (metrics["metric"] == "acc")]
    assert val["value"].between(0, 1).all()
    if "report -> " in proc.stdout:
        assert (report / "index.html").exists()
    again = techbench("run", "smoke", "--out", str(out), "--dry-run", timeout=120)
    assert "2 done, 0 failed, 0 to run" in again.stdout


VALID = """name = "fuzz"
seeds = 2
[budget]
epochs = 1
[axes]
dataset = ["digits", { name = "moons", n_samples = 200 }]
activation = ["relu", "leaky_relu(alpha=0.2)"]
[[exclude]]
activation = "relu"
dataset = "moons"
"""


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    edits=st.lists(
        st.tuples(
            st.integers(0, len(VALID)), st.integers(0, 6), st.text("=[]{}\"',.# a1\n", max_size=4)
        ),
        min_size=1,
        max_size=3,
    )
)
def test_mutated_matrix_files_run_or_exit_2_without_traceback(tmp_path, capsys, edits):
    text = VALID
    for pos, cut, insert in edits:
        text = text[:pos] + insert + text[pos + cut :]
    path = tmp_path / "fuzz.toml"
    path.write_text(text)
    code = main(["run", str(path), "--dry-run", "--out", str(tmp_path / "out")])
    captured = capsys.readouterr()
    assert code in (0, 2)
    assert "Traceback" not in captured.err
    if code == 2:
        lines = captured.err.splitlines()
        assert lines[0].startswith("techbench run: error:")
        assert all(line.startswith(f"  {path}: ") for line in lines[1:])
    else:
        assert "trials" in captured.out


@pytest.mark.slow
@pytest.mark.parametrize("workers", ["1", "2"])
def test_ctrl_c_exits_130_and_keeps_finished_trials(tmp_path, workers):
    path = write(tmp_path, SMALL.replace("seeds = 3", "seeds = 6"))
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "techbench.cli", "run", path, "--out", str(out)]
    cmd += ["--workers", workers, "--run-fn", "tests.test_run_cli:fast_run"]
    env = {**os.environ, "TB_SLEEP": "0.4"}
    proc = subprocess.Popen(
        cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    n = interrupt_after_two_stored(proc, out, wait=90)
    store = ResultStore(out)
    assert 2 <= n < 12
    assert all(store.status(t) == "completed" for t in store.trial_ids())


FAST = ["--workers", "1", "--no-progress", "--run-fn", "tests.test_run_cli:fast_run"]


def _stored(out: Path) -> dict[str, dict]:
    store = ResultStore(out)
    return {tid: store.read_meta(tid)["config"] for tid in store.trial_ids()}


def test_a_narrowed_budget_never_shares_the_default_store(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = write(tmp_path, SMALL)
    assert main(["run", path, *FAST]) == 0
    full = _stored(tmp_path / "results" / "small")
    assert len(full) == 6  # 2 activations x 3 seeds
    # the README's narrowing example: 1 activation x 2 seeds, another budget
    capsys.readouterr()
    assert (
        main(["run", path, "--filter", "activation=relu", "--seeds", "2", "--epochs", "2", *FAST])
        == 0
    )
    said = capsys.readouterr().out
    assert _stored(tmp_path / "results" / "small") == full
    narrowed = _stored(tmp_path / "results" / "small-epochs2")
    assert len(narrowed) == 2 and "results/small-epochs2" in said
    assert {
        (c["activation"]["name"], c["seed"], c["budget"]["epochs"]) for c in narrowed.values()
    } == {
        ("relu", 0, 2),
        ("relu", 1, 2),
    }
    # a filter alone picks trials of the same cells at the same budget: the default store
    assert main(["run", path, "--filter", "activation=tanh", *FAST]) == 0
    assert _stored(tmp_path / "results" / "small") == full


def test_report_refuses_a_cell_pooling_two_budgets(tmp_path, capsys):
    path = write(tmp_path, SMALL)
    out = str(tmp_path / "out")
    assert main(["run", path, "--out", out, *FAST]) == 0
    ones = set(_stored(Path(out)))
    narrow = ["--epochs", "2", "--seeds", "2", "--filter", "activation=relu"]
    assert main(["run", path, "--out", out, *narrow, *FAST]) == 0
    twos = set(_stored(Path(out))) - ones
    capsys.readouterr()
    assert main(["report", out, "--out", str(tmp_path / "report")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and out in err[0] and "activation=relu" in err[0]
    assert "epochs=1 (3 trials, e.g. " in err[0] and "epochs=2 (2 trials, e.g. " in err[0]
    shown = set(re.findall(r"e\.g\. ([0-9a-f]{16})", err[0]))
    assert len(shown & ones) == 1 and len(shown & twos) == 1


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("", "axes"),
        ("# nothing\nname = 'empty'\n[budget]\nepochs = 1\n", "axes"),
        ("[axes]\n", "axes"),
        ("[budget]\nepochs = 99999999999999999999\n[axes]\nactivation = ['relu']", "budget.epochs"),
        ("[budget]\nsteps = 10000000000\n[axes]\nactivation = ['relu']", "budget.steps"),
        ("[budget]\nmax_seconds = 1e12\n[axes]\nactivation = ['relu']", "budget.max_seconds"),
        ("[budget]\nbatch_size = 10000000000\n[axes]\nactivation = ['relu']", "budget.batch_size"),
        ("seeds = 100000\n[axes]\nactivation = ['relu']", "seeds"),
        ("[axes]\noptimizer = ['sgd', 'adam']\n[tune]\nbudget = 10000000000", "tune.budget"),
    ],
)
def test_empty_matrix_and_endless_budgets_exit_2_naming_file_and_key(tmp_path, capsys, text, key):
    path = write(tmp_path, text)
    assert main(["run", path, "--dry-run"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err[0] == "techbench run: error: 1 problem in the matrix:"
    assert len(err) == 2 and err[1].strip().startswith(f"{path}: {key}: ")


def test_narrowing_flags_past_the_bounds_exit_2(capsys):
    assert main(["run", "smoke", "--dry-run", "--epochs", "99999999999999999999"]) == 2
    assert "--epochs must be in [1, 100000]" in capsys.readouterr().err
    assert main(["run", "smoke", "--dry-run", "--seeds", "10000000"]) == 2
    assert "--seeds must be in [1, 10000]" in capsys.readouterr().err
