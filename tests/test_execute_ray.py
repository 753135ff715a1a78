"""The Ray executor on a local 2-CPU cluster: the smoke matrix gives the local executor's results,
a worker killed mid-trial is retried, one that always dies is stored as failed, nothing finished
is lost; plus the flags, the GPU share from the matrix and a GPU run (``gpu`` marker)."""

from __future__ import annotations

import os
import signal
import socket
import sys
from pathlib import Path

import pytest

from techbench.cli import main
from techbench.errors import UsageError
from techbench.execute.local import execute
from techbench.execute.ray import execute_ray, gpus_for
from techbench.plan.matrix import load_matrix, loads_matrix
from techbench.schema import trial_id
from techbench.store import ResultStore
from techbench.store.reader import load_results

RUN_FN = "tests.test_execute_ray:fake_run"


def fake_run(config: dict) -> dict:
    """A stand-in for run_trial: logs each attempt, dies by SIGKILL when the config says so."""
    if config.get("log"):
        with open(config["log"], "a") as fh:
            fh.write(f"{trial_id(config)} {os.getpid()}\n")
    crash = config.get("crash")
    if crash == "always" or (crash == "once" and not Path(config["flag"]).exists()):
        if crash == "once":
            Path(config["flag"]).write_text("x")
        os.kill(os.getpid(), signal.SIGKILL)
    metrics = [
        {
            "step": s,
            "epoch": 0,
            "split": "train",
            "metric": "loss",
            "layer": "",
            "value": 1 / (s + 1),
        }
        for s in range(3)
    ]
    meta = {"wall_seconds": 0.0, "device": "cpu", "error": None, "steps": 3, "epochs": 1}
    return {"status": "completed", "metrics": metrics, "meta": meta}


@pytest.fixture(scope="module")
def ray_cluster():
    ray = pytest.importorskip("ray")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="error")
    yield ray
    ray.shutdown()


def _attempts(log: Path) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in log.read_text().splitlines():
        tid, pid = line.split()
        out.setdefault(tid, []).append(pid)
    return out


@pytest.mark.ray
def test_smoke_matrix_through_ray_equals_local_executor(ray_cluster, tmp_path):
    """Every stored metric is bit-identical (same torch thread count), except the wall-clock
    ones (split "time")."""
    import torch

    trials = load_matrix("smoke").trials()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in a Ray task with 1 CPU: float reductions depend on it
    try:
        local = execute(trials, tmp_path / "local", matrix_name="smoke", workers=1, progress=False)
    finally:
        torch.set_num_threads(threads)
    remote = execute_ray(trials, tmp_path / "ray", matrix_name="smoke", progress=False)
    assert local.counts["completed"] == remote.counts["completed"] == len(trials) == 2
    lt, lm = load_results(tmp_path / "local")
    rt, rm = load_results(tmp_path / "ray")
    assert sorted(lt.trial_id) == sorted(rt.trial_id) == sorted(trial_id(t) for t in trials)
    assert (rt.status == "completed").all()
    keys = ["trial_id", "split", "metric", "layer", "step", "epoch"]
    assert set(lm.split) == set(rm.split) and "train" in set(lm.split)
    lm = lm[lm.split != "time"].sort_values(keys).reset_index(drop=True)
    rm = rm[rm.split != "time"].sort_values(keys).reset_index(drop=True)
    assert len(lm) == len(rm) > 0
    assert lm[keys].equals(rm[keys])
    differ = lm.value.to_numpy() != rm.value.to_numpy()
    both_nan = lm.value.isna().to_numpy() & rm.value.isna().to_numpy()
    assert not (differ & ~both_nan).any(), lm[differ & ~both_nan]
    again = execute_ray(trials, tmp_path / "ray", matrix_name="smoke", progress=False)
    assert again.already == 2 and sum(again.counts.values()) == 0


@pytest.mark.ray
def test_worker_killed_mid_trial_is_retried_and_nothing_finished_is_lost(ray_cluster, tmp_path):
    log = tmp_path / "attempts.log"
    configs = [{"i": i, "log": str(log)} for i in range(6)]
    configs[2].update(crash="once", flag=str(tmp_path / "crashed"))
    out = tmp_path / "store"
    result = execute_ray(configs, out, run_fn=RUN_FN, progress=False, max_retries=2)
    assert result.counts["completed"] == 6 and not result.interrupted
    store = ResultStore(out)
    assert {trial_id(c): "completed" for c in configs} == store.statuses()
    attempts = _attempts(log)
    crashed = trial_id(configs[2])
    assert len(attempts[crashed]) == 2 and attempts[crashed][0] != attempts[crashed][1]
    assert all(len(v) == 1 for k, v in attempts.items() if k != crashed)
    assert not any(store.running_dir.iterdir())


@pytest.mark.ray
def test_worker_that_always_dies_is_stored_failed_and_the_rest_complete(ray_cluster, tmp_path):
    log = tmp_path / "attempts.log"
    configs = [{"i": i, "log": str(log)} for i in range(3)]
    configs[0]["crash"] = "always"
    out = tmp_path / "store"
    result = execute_ray(configs, out, run_fn=RUN_FN, progress=False, max_retries=1)
    assert result.counts == {"completed": 2, "failed": 1}
    bad = trial_id(configs[0])
    assert len(_attempts(log)[bad]) == 2
    meta = ResultStore(out).read_meta(bad)
    assert meta["status"] == "failed"
    error = meta.get("error") or meta.get("meta", {}).get("error")
    assert "Ray task failed" in error and "retries" in error
    rerun = execute_ray(configs, out, run_fn=RUN_FN, progress=False)
    assert rerun.already == 3


@pytest.mark.ray
def test_cli_shards_through_ray_and_local_cover_the_matrix_once(ray_cluster, tmp_path, capsys):
    path = tmp_path / "m.toml"
    path.write_text(
        'name = "m"\nseeds = 3\n[axes]\nactivation = ["relu", "tanh"]\n', encoding="utf-8"
    )
    out = str(tmp_path / "store")
    common = [str(path), "--out", out, "--no-progress", "--run-fn", RUN_FN]
    assert main(["run", *common, "--shard", "1/2", "--executor", "ray"]) == 0
    assert main(["run", *common, "--shard", "2/2"]) == 0
    assert "0 failed" in capsys.readouterr().out
    ids = {trial_id(t) for t in loads_matrix(path.read_text(), str(path)).trials()}
    assert set(ResultStore(out).statuses()) == ids and len(ids) == 6
    assert ResultStore(out).failed_ids() == set()


def test_ray_only_flags_need_the_ray_executor(capsys):
    assert main(["run", "smoke", "--gpus-per-trial", "0.5", "--dry-run"]) == 2
    assert "--gpus-per-trial need --executor ray" in capsys.readouterr().err
    assert main(["run", "smoke", "--executor", "ray", "--gpus-per-trial", "-1"]) == 2
    assert main(["run", "smoke", "--executor", "ray", "--cpus-per-trial", "0"]) == 2
    assert main(["run", "smoke", "--executor", "ray", "--max-retries", "-1"]) == 2
    assert main(["run", "smoke", "--shard", "0/2", "--dry-run"]) == 2
    assert "1 <= K <= N" in capsys.readouterr().err


def test_missing_ray_is_a_usage_error_naming_the_extra(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(UsageError, match=r"pip install 'techbench\[ray\]'"):
        execute_ray([{"i": 0}], tmp_path / "store", run_fn=RUN_FN, progress=False)


@pytest.mark.parametrize(
    ("trainer", "cluster_gpus", "expected"),
    [
        ({"accelerator": "cpu", "devices": 1}, 8, 0.0),
        ({"accelerator": "gpu", "devices": 2}, 8, 2.0),
        ({"accelerator": "cuda", "devices": "auto"}, 8, 1.0),
        ({"accelerator": "auto", "devices": 1}, 8, 1.0),
        ({"accelerator": "auto", "devices": 1}, 0, 0.0),
        (None, 4, 0.0),
    ],
)
def test_gpu_share_comes_from_the_matrix_trainer(trainer, cluster_gpus, expected):
    assert gpus_for(trainer, cluster_gpus) == expected


def _has_cuda() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


@pytest.mark.ray
@pytest.mark.gpu
@pytest.mark.skipif(not _has_cuda(), reason="needs a CUDA device")
def test_trials_share_a_gpu_with_fractional_gpus(ray_cluster, tmp_path):
    matrix = loads_matrix(
        'name = "gpu"\n[trainer]\naccelerator = "auto"\ndeterministic = false\n'
        '[budget]\nepochs = 1\n[defaults]\ndataset = { name = "moons", n_samples = 400 }\n'
        '[axes]\nactivation = ["relu", "tanh"]\n'
    )
    result = execute_ray(matrix.trials(), tmp_path / "gpu", gpus_per_trial=0.5, progress=False)
    assert result.counts["completed"] == 2
    trials, _ = load_results(tmp_path / "gpu")
    assert trials.device.str.startswith("cuda").all(), trials.device.tolist()


def test_cleanup_on_a_shared_store_leaves_other_hosts_temp_files(tmp_path):
    """Shards on other nodes write into the same tmp folder: their pids mean nothing here."""
    store = ResultStore(tmp_path / "store").ensure()
    dead = 2**22 + 12345
    other = store.tmp_dir / f"abcd.{dead}.@some-other-node.0000"
    mine = store.tmp_dir / f"abcd.{dead}.@{socket.gethostname().replace('.', '-')}.1111"
    other.mkdir()
    mine.mkdir()
    assert store.cleanup() == 1
    assert [p.name for p in store.tmp_dir.iterdir()] == [other.name]
