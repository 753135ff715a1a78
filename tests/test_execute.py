"""The local executor with a test-only trial function (no training): skips, failures, crashes,
concurrent executors, SIGKILL mid-matrix and Ctrl-C."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from techbench.execute.local import execute, plan
from techbench.execute.progress import Progress
from techbench.schema import trial_id
from techbench.store import ResultStore
from techbench.store.reader import load_results

ROOT = Path(__file__).resolve().parents[1]
RUN_FN = "tests.test_execute:fake_run"


def fake_run(config: dict) -> dict:
    """A stand-in for techbench.engine.trial.run_trial, steered by the config."""
    if config.get("log"):
        with open(config["log"], "a") as fh:
            fh.write(f"{trial_id(config)} {os.getpid()}\n")
    time.sleep(config.get("sleep", 0.0))
    mode = config.get("mode", "ok")
    if mode == "raise":
        raise RuntimeError("boom from the plugin")
    if mode == "crash":
        os.kill(os.getpid(), signal.SIGKILL)
    if mode == "fail_once":
        flag = Path(config["flag"])
        if not flag.exists():
            flag.write_text("x")
            raise RuntimeError("first attempt fails")
    status = "diverged" if mode == "diverge" else "completed"
    metrics = [
        {
            "step": s,
            "epoch": 0,
            "split": "train",
            "metric": "loss",
            "layer": "",
            "value": 1.0 / (s + 1),
        }
        for s in range(5)
    ]
    meta = {
        "started_at": "2026-01-01T00:00:00Z",
        "finished_at": "2026-01-01T00:00:01Z",
        "wall_seconds": 1.0,
        "train_seconds": 0.5,
        "device": "cpu",
        "versions": {"python": sys.version.split()[0]},
        "diverged_step": 3 if status == "diverged" else None,
        "error": None,
        "steps": 5,
        "epochs": 1,
        "num_parameters": 10,
        "pid": os.getpid(),
    }
    return {
        "trial_id": trial_id(config),
        "config": config,
        "status": status,
        "metrics": metrics,
        "meta": meta,
    }


def configs(n: int, **extra) -> list[dict]:
    return [{"k": i, **extra} for i in range(n)]


def runs_logged(log: Path) -> list[str]:
    return [line.split()[0] for line in log.read_text().splitlines()] if log.exists() else []


def assert_complete(out: Path, n: int) -> None:
    dirs = sorted(p for p in (out / "trials").iterdir())
    assert len(dirs) == n, [p.name for p in dirs]
    for d in dirs:
        assert sorted(p.name for p in d.iterdir()) == ["meta.json", "metrics.parquet"]
        assert json.loads((d / "meta.json").read_text())["trial_id"] == d.name


def test_inline_run_stores_every_trial_and_rerun_skips(tmp_path):
    log = tmp_path / "log"
    cs = [*configs(4, log=str(log)), {"k": 9, "mode": "diverge", "log": str(log)}]
    res = execute(cs, tmp_path / "out", workers=1, run_fn=fake_run, matrix_name="m", progress=False)
    assert (res.counts["completed"], res.counts["diverged"], res.already) == (4, 1, 0)
    assert_complete(tmp_path / "out", 5)
    store = ResultStore(tmp_path / "out")
    assert store.completed_ids() == {trial_id(c) for c in cs}
    assert store.status(trial_id(cs[-1])) == "diverged"
    again = execute(cs, tmp_path / "out", workers=1, run_fn=fake_run, progress=False)
    assert again.already == 5 and sum(again.counts.values()) == 0
    assert len(runs_logged(log)) == 5
    trials, metrics = load_results(tmp_path / "out")
    assert len(trials) == 5 and set(trials["matrix"]) == {"m"}
    assert len(metrics) == 25


def test_failure_is_stored_with_traceback_and_rerun_failed_retries(tmp_path):
    out = tmp_path / "out"
    cs = [*configs(2), {"k": 5, "mode": "fail_once", "flag": str(tmp_path / "flag")}]
    res = execute(cs, out, workers=1, run_fn=fake_run, progress=False)
    assert res.counts["failed"] == 1 and res.counts["completed"] == 2
    meta = ResultStore(out).read_meta(trial_id(cs[2]))
    assert meta["status"] == "failed" and "first attempt fails" in meta["error"]
    assert "Traceback" in meta["error"]
    skip = execute(cs, out, workers=1, run_fn=fake_run, progress=False)
    assert skip.already == 3 and ResultStore(out).status(trial_id(cs[2])) == "failed"
    retry = execute(cs, out, workers=1, run_fn=fake_run, rerun_failed=True, progress=False)
    assert retry.already == 2 and retry.counts["completed"] == 1
    assert ResultStore(out).status(trial_id(cs[2])) == "completed"
    assert_complete(out, 3)
    assert not any((out / ".tmp").iterdir())


def test_plan_dedupes_and_orders(tmp_path):
    cs = configs(3) + configs(3)
    todo, already = plan(cs, ResultStore(tmp_path))
    assert [t.id for t in todo] == [trial_id(c) for c in configs(3)] and already == 0


def test_pool_runs_in_workers_and_survives_a_crashing_trial(tmp_path):
    out = tmp_path / "out"
    cs = [*configs(5, sleep=0.05), {"k": 99, "mode": "crash"}, {"k": 7, "mode": "raise"}]
    res = execute(cs, out, workers=2, run_fn=RUN_FN, progress=False)
    store = ResultStore(out)
    assert res.counts["completed"] == 5 and res.counts["failed"] == 2
    crash = store.read_meta(trial_id(cs[5]))
    assert crash["status"] == "failed" and "SIGKILL" in crash["error"]
    assert "boom from the plugin" in store.read_meta(trial_id(cs[6]))["error"]
    pids = {store.read_meta(trial_id(c))["pid"] for c in cs[:5]}
    assert os.getpid() not in pids
    assert_complete(out, 7)


def _script(out: Path, cs: list[dict], workers: int) -> str:
    return textwrap.dedent(
        f"""
        import json, sys
        from techbench.execute.local import execute
        res = execute(json.loads({json.dumps(json.dumps(cs))}), {str(out)!r}, workers={workers},
                      run_fn={RUN_FN!r}, progress=False)
        print(res.summary)
        sys.exit(130 if res.interrupted else 0)
        """
    )


def _spawn(script: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", script],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.mark.slow
def test_two_executors_on_one_store_run_every_trial_once(tmp_path):
    out, log = tmp_path / "out", tmp_path / "log"
    cs = configs(10, sleep=0.3, log=str(log))
    procs = [_spawn(_script(out, cs, 2)) for _ in range(2)]
    for p in procs:
        _stdout, stderr = p.communicate(timeout=120)
        assert p.returncode == 0, stderr
    ran = runs_logged(log)
    assert sorted(ran) == sorted(trial_id(c) for c in cs)
    assert_complete(out, 10)


@pytest.mark.slow
def test_sigkill_mid_matrix_then_rerun_completes_without_duplicates(tmp_path):
    out, log = tmp_path / "out", tmp_path / "log"
    cs = configs(10, sleep=0.4, log=str(log))
    proc = _spawn(_script(out, cs, 2))
    deadline = time.monotonic() + 60
    while len(ResultStore(out).trial_ids()) < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    before = {t: ResultStore(out).read_meta(t) for t in ResultStore(out).trial_ids()}
    assert 3 <= len(before) < 10
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=30)
    time.sleep(0.5)
    res = execute(cs, out, workers=2, run_fn=RUN_FN, progress=False)
    assert res.already >= len(before)
    assert_complete(out, 10)
    store = ResultStore(out)
    for tid, meta in before.items():
        assert store.read_meta(tid) == meta
    assert not any((out / ".tmp").iterdir())


def interrupt_after_two_stored(proc: subprocess.Popen, out: Path, wait: float = 60) -> int:
    """Ctrl-C ``proc`` once two trials are stored in ``out``; assert a clean exit 130 and
    return the number of stored trials."""
    deadline = time.monotonic() + wait
    while len(ResultStore(out).trial_ids()) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert "interrupted" in stderr and "Traceback" not in stderr
    return len(ResultStore(out).trial_ids())


@pytest.mark.slow
def test_ctrl_c_keeps_finished_trials_and_exits_130(tmp_path):
    out = tmp_path / "out"
    cs = configs(12, sleep=0.4)
    n = interrupt_after_two_stored(_spawn(_script(out, cs, 2)), out)
    assert 2 <= n < 12
    assert_complete(out, n)
    res = execute(cs, out, workers=1, run_fn=fake_run, progress=False)
    assert res.already == n and res.counts["completed"] == 12 - n


def test_progress_is_quiet_without_a_terminal():
    stream = io.StringIO()
    bar = Progress(3, stream=stream)
    assert not bar.enabled
    for status in ("completed", "failed", "diverged"):
        bar.update(status)
    bar.close()
    assert stream.getvalue() == ""
    assert bar.summary().startswith("3/3 trials done: 1 completed, 1 diverged, 1 failed")


def test_progress_bar_shows_counts_when_enabled():
    stream = io.StringIO()
    with Progress(4, stream=stream, enabled=True, already=1) as bar:
        bar.update("failed")
        bar.update("diverged")
    text = stream.getvalue()
    assert "done=3/4" in text and "failed=1" in text and "diverged=1" in text


def test_default_workers_one_per_core_or_per_gpu(monkeypatch):
    import techbench.execute.local as ex

    cpu = [{"trainer": {"accelerator": "cpu"}}]
    gpu = [{"trainer": {"accelerator": "gpu"}}]
    monkeypatch.setattr(ex, "visible_gpus", lambda: ["0", "1"])
    assert ex.default_workers(cpu, 8) == (8, [])
    assert ex.default_workers(gpu, 8) == (2, ["0", "1"])
    monkeypatch.setattr(ex, "visible_gpus", lambda: [])
    assert ex.default_workers(gpu, 8) == (8, [])
