"""Batch files: a stack's members stored with their rows in one Parquet file.

Expected values come from outside the batch code: the rows each test wrote itself, the same
outcomes stored one trial per file (the layout every store had before batches), and a store laid
out by hand the way the per-trial writer lays it out (pyarrow and json, no techbench writer).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from techbench.execute.local import plan
from techbench.schema import DEFAULT_CONFIG, TrialOutcome, metric_row, trial_id
from techbench.store import ResultStore, seal_meta
from techbench.store.integrity import clean_corrupt, clean_orphan_batches, inspect_store
from techbench.store.reader import load_metrics, load_results


def _config(seed: int) -> dict:
    config = json.loads(json.dumps(DEFAULT_CONFIG))
    config["seed"] = seed
    return config


def _outcome(seed: int, status: str = "completed") -> TrialOutcome:
    config = _config(seed)
    rows = [metric_row(s, s // 3, "train", "loss", 2.0 / (s + 1) + seed) for s in range(7)]
    rows += [metric_row(s, s // 3, "health", "grad_norm", 0.1 * s, str(s % 2)) for s in range(4)]
    rows += [metric_row(3 * (e + 1), e, "val", "acc", 0.5 + 0.1 * e + seed / 100) for e in range(2)]
    if status == "failed":
        rows = []
    meta = {
        "steps": 7,
        "epochs": 2,
        "device": "cpu",
        "error": "boom" if status == "failed" else None,
    }
    return TrialOutcome.from_value(
        {
            "trial_id": trial_id(config),
            "config": config,
            "status": status,
            "metrics": rows,
            "meta": meta,
        }
    )


def _rows(outcomes: list[TrialOutcome]) -> pd.DataFrame:
    """The rows the test wrote, in the loader's columns, sorted."""
    frame = pd.DataFrame(
        [{"trial_id": o.trial_id, **r} for o in outcomes for r in o.metrics],
        columns=["trial_id", "step", "epoch", "split", "metric", "layer", "value"],
    )
    return _sorted(frame)


def _sorted(frame: pd.DataFrame) -> pd.DataFrame:
    frame = frame.astype({c: str for c in ("trial_id", "split", "metric", "layer")})
    keys = ["trial_id", "split", "metric", "layer", "step"]
    return frame.sort_values(keys).reset_index(drop=True)


def _batch_file(out) -> str:
    files = sorted(os.listdir(os.path.join(out, "batches")))
    assert len(files) == 1, files
    return os.path.join(out, "batches", files[0])


def test_batch_round_trip_equals_per_trial_storage(tmp_path):
    outcomes = [_outcome(s) for s in range(4)] + [_outcome(9, "diverged"), _outcome(8, "failed")]
    batched, alone = tmp_path / "batched", tmp_path / "alone"
    paths = ResultStore(batched).write_batch(outcomes, "m")
    for o in outcomes:
        ResultStore(alone).write(o, "m")
    assert [p.name for p in paths] == [o.trial_id for o in outcomes]
    for p in paths:  # a member's folder holds only its meta, which names the batch
        assert sorted(os.listdir(p)) == ["meta.json"]
    meta = json.loads((paths[0] / "meta.json").read_text())
    data = Path(_batch_file(batched)).read_bytes()
    assert meta["metrics_bytes"] == len(data)
    assert meta["metrics_sha256"] == hashlib.sha256(data).hexdigest()

    bt, bm = load_results(batched)
    at, am = load_results(alone)
    assert bt.attrs["corrupt"] == {} and am.attrs["corrupt"] == {}
    pd.testing.assert_frame_equal(_sorted(bm), _sorted(am))
    pd.testing.assert_frame_equal(_sorted(bm), _rows(outcomes))
    keep = [c for c in at.columns if c != "config"]
    pd.testing.assert_frame_equal(
        bt.sort_values("trial_id")[keep].reset_index(drop=True),
        at.sort_values("trial_id")[keep].reset_index(drop=True),
    )
    assert ResultStore(batched).statuses(verify=True) == ResultStore(alone).statuses(verify=True)
    # the categories follow the ids asked for; rows of a subset only
    some = [outcomes[3].trial_id, outcomes[0].trial_id]
    part = load_metrics(batched, some, keep_step_loss=False)
    assert list(part["trial_id"].cat.categories) == some
    want = _rows([outcomes[0], outcomes[3]])
    want = want[~((want["split"] == "train") & (want["metric"] == "loss"))]
    pd.testing.assert_frame_equal(_sorted(part), want.reset_index(drop=True))


@pytest.mark.parametrize("damage", ["flip_byte", "truncate", "delete"])
def test_a_damaged_batch_makes_every_member_corrupt_and_a_rerun_redoes_them(tmp_path, damage):
    out = tmp_path / "out"
    store = ResultStore(out)
    stack = [_outcome(s) for s in range(3)]
    single = _outcome(7)
    store.write_batch(stack, "m")
    store.write(single, "m")
    path = _batch_file(out)
    data = bytearray(Path(path).read_bytes())
    if damage == "flip_byte":
        data[len(data) // 2] ^= 0x10
        Path(path).write_bytes(bytes(data))
    elif damage == "truncate":
        Path(path).write_bytes(bytes(data[: len(data) // 2]))
    else:
        os.unlink(path)
    members = {o.trial_id for o in stack}

    assert set(store.corrupt(verify=True)) == members
    assert set(inspect_store(out).corrupt) == members
    trials, metrics = load_results(out)
    assert set(trials["trial_id"]) == {single.trial_id}
    assert set(trials.attrs["corrupt"]) == members
    assert set(metrics["trial_id"].astype(str)) == {single.trial_id}
    todo, already = plan([o.config for o in [*stack, single]], store)
    assert {t.id for t in todo} == members and already == 1

    store.write_batch([_outcome(s) for s in range(3)], "m")  # the rerun
    trials, metrics = load_results(out)
    assert trials.attrs["corrupt"] == {}
    pd.testing.assert_frame_equal(_sorted(metrics), _rows([*stack, single]))
    old = [] if damage == "delete" else [os.path.basename(path)[: -len(".parquet")]]
    assert clean_orphan_batches(out) == old  # the damaged file, no longer pointed to
    assert len(os.listdir(out / "batches")) == 1
    assert clean_corrupt(out) == {}


def test_a_partly_written_stack_resumes_with_only_its_missing_members(tmp_path, monkeypatch):
    out = tmp_path / "out"
    store = ResultStore(out)
    stack = [_outcome(s) for s in range(4)]
    install = ResultStore._install_meta
    calls = []

    def killed_after_two(self, *args, **kwargs):
        if len(calls) == 2:
            raise KeyboardInterrupt  # the writer dies between members
        calls.append(1)
        return install(self, *args, **kwargs)

    monkeypatch.setattr(ResultStore, "_install_meta", killed_after_two)
    with pytest.raises(KeyboardInterrupt):
        store.write_batch(stack, "m")
    monkeypatch.setattr(ResultStore, "_install_meta", install)

    stored = {o.trial_id for o in stack[:2]}
    assert set(store.statuses(verify=True)) == stored
    assert store.corrupt() == {} and store.orphan_batches() == []
    assert os.listdir(out / ".tmp") == []
    trials, metrics = load_results(out)
    assert set(trials["trial_id"]) == stored
    pd.testing.assert_frame_equal(_sorted(metrics), _rows(stack[:2]))

    todo, already = plan([o.config for o in stack], store)
    assert [t.id for t in todo] == [o.trial_id for o in stack[2:]] and already == 2
    store.write_batch(stack[2:], "m")
    trials, metrics = load_results(out)
    assert set(trials["trial_id"]) == {o.trial_id for o in stack}
    pd.testing.assert_frame_equal(_sorted(metrics), _rows(stack))

    # a member replaced later is read from its new file only; its old rows are ignored
    again = _outcome(0)
    again.metrics = [metric_row(1, 0, "val", "acc", 0.123)]
    store.write(again, "m")
    _, metrics = load_results(out)
    pd.testing.assert_frame_equal(_sorted(metrics), _rows([again, *stack[1:]]))
    assert store.orphan_batches() == []


def _write_v1(out, outcome: TrialOutcome, digest: bool = True) -> None:
    """A trial as the per-trial writer lays it out, written with pyarrow and json only."""
    folder = out / "trials" / outcome.trial_id
    folder.mkdir(parents=True)
    columns = {c: [r[c] for r in outcome.metrics] for c in ("step", "epoch", "split", "metric")}
    columns["layer"] = [r["layer"] for r in outcome.metrics]
    columns["value"] = [float(r["value"]) for r in outcome.metrics]
    pq.write_table(pa.table(columns), folder / "metrics.parquet")
    meta = {
        "trial_id": outcome.trial_id,
        "config": outcome.config,
        "status": outcome.status,
        "matrix": "old",
        **outcome.meta.to_dict(),
    }
    if digest:
        data = (folder / "metrics.parquet").read_bytes()
        meta["metrics_bytes"] = len(data)
        meta["metrics_sha256"] = hashlib.sha256(data).hexdigest()
    (folder / "meta.json").write_text(json.dumps(meta, indent=1))


def test_an_old_per_trial_store_loads_resumes_and_mixes_with_batches(tmp_path):
    out = tmp_path / "out"
    old = [_outcome(s) for s in range(3)]
    for i, o in enumerate(old):
        _write_v1(out, o, digest=i != 2)  # the last as stores before digests were recorded
    store = ResultStore(out)
    assert store.statuses(verify=True) == {o.trial_id: "completed" for o in old}
    trials, metrics = load_results(out)
    assert trials.attrs["corrupt"] == {} and set(trials["matrix"]) == {"old"}
    pd.testing.assert_frame_equal(_sorted(metrics), _rows(old))

    new = [_outcome(s) for s in range(3, 6)]
    todo, already = plan([o.config for o in old + new], store)
    assert [t.id for t in todo] == [o.trial_id for o in new] and already == 3
    store.write_batch(new, "m")
    trials, metrics = load_results(out)
    assert len(trials) == 6 and trials.attrs["corrupt"] == {}
    pd.testing.assert_frame_equal(_sorted(metrics), _rows(old + new))
    assert store.corrupt(verify=True) == {}


def test_a_meta_naming_a_bad_batch_is_corrupt_not_followed(tmp_path):
    out = tmp_path / "out"
    store = ResultStore(out)
    store.write_batch([_outcome(0), _outcome(1)], "m")
    tid = _outcome(0).trial_id
    meta_path = out / "trials" / tid / "meta.json"
    meta = json.loads(meta_path.read_text())
    meta["batch"] = "../../etc/passwd"
    meta_path.write_text(json.dumps(seal_meta(meta)))  # as a writer would have stored it
    assert store.corrupt() == {tid: "meta.json names an invalid batch '../../etc/passwd'"}
    trials, _ = load_results(out)
    assert list(trials.attrs["corrupt"]) == [tid] and len(trials) == 1


def test_the_executor_stores_a_stack_as_one_batch(tmp_path, monkeypatch):
    import techbench.engine.trial
    import techbench.execute.calibrate
    from techbench.execute.local import execute

    by_id = {o.trial_id: o for o in (_outcome(s) for s in range(4))}
    ran: list[int] = []

    def fake_stack(configs):
        ran.append(len(configs))
        return [by_id[t.id] for t in configs]

    monkeypatch.setattr(techbench.engine.trial, "run_stack", fake_stack)
    monkeypatch.setattr(techbench.execute.calibrate, "step_seconds", lambda store, config: 0.5)
    out = tmp_path / "out"
    configs = [o.config for o in by_id.values()]
    res = execute(configs, out, workers=1, stack=4, progress=False)
    assert ran == [4] and res.counts["completed"] == 4
    assert len(os.listdir(out / "batches")) == 1
    trials, metrics = load_results(out)
    assert set(trials["trial_id"]) == set(by_id) and (trials["modelled_seconds"] == 3.5).all()
    pd.testing.assert_frame_equal(_sorted(metrics), _rows(list(by_id.values())))
    again = execute(configs, out, workers=1, stack=4, progress=False)
    assert again.already == 4 and ran == [4]


def test_status_lists_orphan_batch_files_and_clean_removes_them(tmp_path, capsys):
    """A batch file no meta names (a writer killed before its members' metas) holds no result:
    ``status`` counts it (as the store's own scan finds it) and ``clean --corrupt`` removes it."""
    import shutil

    from techbench.cli import main

    out = tmp_path / "out"
    store = ResultStore(out)
    store.write_batch([_outcome(s) for s in range(2)], "m")
    (used,) = list((out / "batches").glob("*.parquet"))
    shutil.copy(used, out / "batches" / "leftover.parquet")
    assert inspect_store(out).orphan_batches == store.orphan_batches() == ["leftover"]
    assert main(["status", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "orphan batch files (no trial names them; no result lost): 1" in printed
    assert f"techbench clean {out} --corrupt" in printed
    assert main(["clean", str(out), "--corrupt"]) == 0
    assert inspect_store(out).orphan_batches == [] and len(store.statuses()) == 2
