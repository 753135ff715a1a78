"""The results store: layout, schema, atomic replace under concurrent writers, claims, cleanup and
the DataFrame loader."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading

import pyarrow.parquet as pq
import pytest

from techbench.schema import DEFAULT_CONFIG, trial_id
from techbench.store import ResultStore
from techbench.store.reader import load_results


def outcome(status: str = "completed", n: int = 3, tag: float = 0.0, **config_changes) -> dict:
    config = json.loads(json.dumps(DEFAULT_CONFIG))
    config.update(config_changes)
    rows = [
        {
            "step": i,
            "epoch": i // 2,
            "split": "train",
            "metric": "loss",
            "layer": "",
            "value": tag + i,
        }
        for i in range(n)
    ]
    rows.append(
        {
            "step": 1,
            "epoch": 0,
            "split": "health",
            "metric": "grad_norm",
            "layer": "0",
            "value": 0.5,
        }
    )
    meta = {
        "started_at": "2026-01-01T00:00:00.000Z",
        "finished_at": "2026-01-01T00:00:02.000Z",
        "wall_seconds": 2.0,
        "train_seconds": 1.5,
        "device": "cpu",
        "versions": {"techbench": "0.1.0", "torch": "x", "pytorch_lightning": "y", "python": "3"},
        "diverged_step": 7 if status == "diverged" else None,
        "error": "Traceback ...\nRuntimeError: x" if status == "failed" else None,
        "steps": n,
        "epochs": 2,
        "num_parameters": 1234,
        "tag": tag,
    }
    return {
        "trial_id": trial_id(config),
        "config": config,
        "status": status,
        "metrics": rows,
        "meta": meta,
    }


def test_layout_meta_and_parquet_schema(tmp_path):
    store = ResultStore(tmp_path)
    o = outcome(activation={"name": "leaky_relu", "params": {"alpha": 0.1}})
    path = store.write(o, "demo")
    assert path == tmp_path / "trials" / o["trial_id"]
    assert sorted(p.name for p in path.iterdir()) == ["meta.json", "metrics.parquet"]
    meta = json.loads((path / "meta.json").read_text())
    assert meta["trial_id"] == o["trial_id"] and meta["status"] == "completed"
    assert meta["matrix"] == "demo" and meta["config"] == o["config"]
    assert meta["versions"]["techbench"] == "0.1.0" and meta["num_parameters"] == 1234
    table = pq.read_table(path / "metrics.parquet")
    assert [str(t) for t in table.schema.types] == [
        "int64",
        "int64",
        "string",
        "string",
        "string",
        "double",
    ]
    assert table.column_names == ["step", "epoch", "split", "metric", "layer", "value"]
    assert table.column("value").to_pylist()[:3] == [0.0, 1.0, 2.0]
    assert store.status(o["trial_id"]) == "completed" and store.status("nope") is None
    assert store.completed_ids() == {o["trial_id"]}
    assert not any((tmp_path / ".tmp").iterdir())


def test_statuses_and_bad_status(tmp_path):
    store = ResultStore(tmp_path)
    ok, div, bad = outcome(), outcome("diverged", seed=1), outcome("failed", seed=2)
    for o in (ok, div, bad):
        store.write(o)
    assert store.completed_ids() == {ok["trial_id"], div["trial_id"]}
    assert store.failed_ids() == {bad["trial_id"]}
    with pytest.raises(ValueError, match="status must be one of"):
        store.write({**ok, "status": "done"})


def test_rewrite_replaces_atomically_and_leaves_nothing_behind(tmp_path):
    store = ResultStore(tmp_path)
    first = outcome("failed", tag=1.0)
    store.write(first)
    second = outcome("completed", tag=2.0)
    assert second["trial_id"] == first["trial_id"]
    store.write(second)
    assert store.trial_ids() == [first["trial_id"]]
    assert store.read_meta(first["trial_id"])["tag"] == 2.0
    assert not any((tmp_path / ".tmp").iterdir())


def test_concurrent_writers_of_one_trial_never_expose_a_partial_directory(tmp_path):
    store = ResultStore(tmp_path)
    tid = outcome()["trial_id"]
    errors: list[str] = []
    stop = threading.Event()

    def reader() -> None:
        d = tmp_path / "trials" / tid
        while not stop.is_set():
            try:
                meta = json.loads((d / "meta.json").read_text())
                with open(d / "metrics.parquet", "rb") as fh:
                    table = pq.read_table(fh)
            except FileNotFoundError:
                continue  # not there yet, or between the two renames of a replacement
            except Exception as exc:
                errors.append(f"partial trial: {type(exc).__name__}: {exc}")
                continue
            if meta["trial_id"] != tid or table.num_rows != 4:
                errors.append(f"wrong content: {meta.get('trial_id')} {table.num_rows} rows")

    def writer(k: int) -> None:
        for i in range(15):
            store.write(outcome(tag=float(k * 100 + i)))

    threads = [threading.Thread(target=writer, args=(k,)) for k in range(4)]
    r = threading.Thread(target=reader)
    r.start()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stop.set()
    r.join()
    assert errors == []
    assert store.trial_ids() == [tid]
    assert store.read_meta(tid)["tag"] in {float(k * 100 + 14) for k in range(4)}
    assert not any((tmp_path / ".tmp").iterdir())


def test_concurrent_writer_processes(tmp_path):
    code = (
        f"import sys; sys.path.insert(0, {os.path.dirname(os.path.dirname(__file__))!r})\n"
        "from tests.test_store import outcome\n"
        "from techbench.store import ResultStore\n"
        f"s = ResultStore({str(tmp_path)!r})\n"
        "for i in range(10):\n"
        "    s.write(outcome(tag=float(i), seed=i % 3))\n"
    )
    procs = [subprocess.Popen([sys.executable, "-c", code]) for _ in range(3)]
    assert all(p.wait(timeout=120) == 0 for p in procs)
    store = ResultStore(tmp_path)
    assert len(store.trial_ids()) == 3
    for tid in store.trial_ids():
        assert sorted(p.name for p in (tmp_path / "trials" / tid).iterdir()) == [
            "meta.json",
            "metrics.parquet",
        ]
    assert not any((tmp_path / ".tmp").iterdir())


def test_claims_exclude_each_other_and_release(tmp_path):
    store = ResultStore(tmp_path)
    with store.claim("abc") as first:
        assert first
        with store.claim("abc") as second:
            assert not second
        with store.claim("other") as third:
            assert third
    with store.claim("abc") as again:
        assert again


def test_claim_is_released_when_the_holder_dies(tmp_path):
    code = (
        "import os, sys\n"
        "from techbench.store import ResultStore\n"
        f"cm = ResultStore({str(tmp_path)!r}).claim('abc'); assert cm.__enter__()\n"
        "print('held', flush=True); sys.stdin.readline(); os._exit(0)\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout.readline().strip() == "held"
    with ResultStore(tmp_path).claim("abc") as got:
        assert not got
    proc.kill()
    proc.wait()
    with ResultStore(tmp_path).claim("abc") as got:
        assert got


def test_cleanup_removes_only_dead_writers_leftovers(tmp_path):
    store = ResultStore(tmp_path).ensure()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = store.tmp_dir / f"abcd.{dead.pid}.0000"
    live = store.tmp_dir / f"abcd.{os.getpid()}.1111"
    stale.mkdir()
    live.mkdir()
    other_host = store.tmp_dir / f"abcd.{dead.pid}.@elsewhere.2222"
    other_host.mkdir()
    (store.running_dir / "abcd").write_text(str(dead.pid))
    (store.running_dir / "efgh").write_text(f"{dead.pid}@elsewhere")
    assert store.cleanup() == 1
    assert not stale.exists() and live.exists() and other_host.exists()
    assert not (store.running_dir / "abcd").exists()
    assert (store.running_dir / "efgh").exists()
    assert store.mark_running("ijkl").read_text().startswith(f"{os.getpid()}@")
    store.cleanup()
    assert (store.running_dir / "ijkl").exists()


def test_load_results_frames(tmp_path):
    store = ResultStore(tmp_path)
    a = outcome(activation={"name": "leaky_relu", "params": {"alpha": 0.1}}, seed=3)
    b = outcome("diverged", optimizer={"name": "sgd", "params": {"lr": 0.5}})
    store.write(a, "m")
    store.write(b, "m")
    trials, metrics = load_results(tmp_path)
    assert len(trials) == 2 and set(trials["trial_id"]) == {a["trial_id"], b["trial_id"]}
    row = trials.set_index("trial_id").loc[a["trial_id"]]
    assert row["activation"] == "leaky_relu(alpha=0.1)" and row["seed"] == 3
    assert row["optimizer"] == "adam(lr=0.001)" and row["lr"] == 0.001
    assert row["dataset"] == "digits" and row["norm_placement"] == "before"
    assert row["epochs"] == 10 and row["status"] == "completed" and row["matrix"] == "m"
    assert row["wall_seconds"] == 2.0 and row["num_parameters"] == 1234 and row["device"] == "cpu"
    assert json.loads(row["config"]) == a["config"]
    rowb = trials.set_index("trial_id").loc[b["trial_id"]]
    assert rowb["status"] == "diverged" and rowb["diverged_step"] == 7 and rowb["lr"] == 0.5
    assert list(metrics.columns) == [
        "trial_id",
        "step",
        "epoch",
        "split",
        "metric",
        "layer",
        "value",
    ]
    assert len(metrics) == 8
    assert metrics.groupby("trial_id").size().to_dict() == {a["trial_id"]: 4, b["trial_id"]: 4}
    assert str(metrics["step"].dtype) == "int64" and str(metrics["value"].dtype) == "float64"


def test_load_results_of_an_empty_store(tmp_path):
    trials, metrics = load_results(tmp_path)
    assert trials.empty and "activation" in trials.columns and "status" in trials.columns
    assert metrics.empty and list(metrics.columns)[:2] == ["trial_id", "step"]


def test_write_matrix_is_atomic_json(tmp_path):
    store = ResultStore(tmp_path)
    store.write_matrix({"name": "x", "n_trials": 3})
    assert json.loads((tmp_path / "matrix.json").read_text()) == {"name": "x", "n_trials": 3}
    assert not any((tmp_path / ".tmp").iterdir())
