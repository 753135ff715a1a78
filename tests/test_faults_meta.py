"""Fault injection on ``meta.json`` edits that leave valid JSON (issue 22, item 5).

Each edit changes one thing a trial's record claims (a hyper-parameter, a seed, a key added or
removed, a provenance entry, an outcome value) and must make that trial, and only it, corrupt:
``status`` names it, the loaders (the report's only reader) do not score it, ``run`` plans it
again and ``clean --corrupt`` removes it. Edits that change no value (the file's layout, a float
spelled another way) must not. Expected values come from the test's own writes: the ids it
stored and the one it edited.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
import sys
import textwrap
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from techbench.execute.local import plan
from techbench.plan.matrix import load_matrix
from techbench.schema import DEFAULT_CONFIG, TrialMeta, TrialOutcome, metric_row, trial_id
from techbench.store import META_DIGEST, ResultStore
from techbench.store.integrity import clean_corrupt, inspect_store
from techbench.store.reader import load_results

ROOT = Path(__file__).resolve().parents[1]
FIGURES: Counter[str] = Counter()
"""Edits tried and handled (printed at the end of the module with ``-s``)."""


@pytest.fixture(scope="module", autouse=True)
def _figures():
    yield
    print("\nmeta edit figures: " + ", ".join(f"{k}={v}" for k, v in sorted(FIGURES.items())))


def _config(seed: int, activation: str) -> dict[str, Any]:
    config = copy.deepcopy(DEFAULT_CONFIG)
    config["activation"] = {"name": activation, "params": {}}
    config["optimizer"] = {"name": "adam", "params": {"lr": 0.003}}
    config["seed"] = seed
    return config


def _outcome(seed: int, activation: str) -> TrialOutcome:
    config = _config(seed, activation)
    rows = [metric_row(e, e, "val", "acc", 0.5 + 0.1 * e + seed / 100) for e in range(3)]
    meta = TrialMeta(
        started_at="2026-01-01T00:00:00.000Z",
        finished_at="2026-01-01T00:00:02.000Z",
        wall_seconds=2.0,
        device="cpu",
        versions={"python": "3.11", "techbench": "0.3.0", "torch": "2.5"},
        techniques={
            "activation": {"name": activation, "distribution": "techbench", "version": "0.3.0"},
            "optimizer": {"name": "adam", "distribution": "techbench", "version": "0.3.0"},
        },
        steps=30,
        epochs=3,
        step_seconds=0.01,
        modelled_seconds=0.3,
        data_fingerprint="abc123",
    )
    return TrialOutcome(trial_id(config), config, "completed", rows, meta)


OUTCOMES = [_outcome(s, a) for a in ("relu", "tanh") for s in range(3)]
ALONE = [o.trial_id for o in OUTCOMES[:3]]
"""Stored alone (own ``metrics.parquet``); the other three as one batch (a stack)."""


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("meta-template")
    store = ResultStore(out)
    for o in OUTCOMES[:3]:
        store.write(o, "faults")
    store.write_batch(OUTCOMES[3:], "faults")
    return out


def _set(*path: str, value: Any) -> Callable[[dict], None]:
    def edit(meta: dict) -> None:
        *head, last = path
        for key in head:
            meta = meta[key]
        meta[last] = value

    return edit


def _drop(*path: str) -> Callable[[dict], None]:
    def edit(meta: dict) -> None:
        *head, last = path
        for key in head:
            meta = meta[key]
        del meta[last]

    return edit


def _both(*edits: Callable[[dict], None]) -> Callable[[dict], None]:
    def edit(meta: dict) -> None:
        for e in edits:
            e(meta)

    return edit


EDITS: dict[str, Callable[[dict], None]] = {
    # hyper-parameters and other config values
    "lr": _set("config", "optimizer", "params", "lr", value=0.005),
    "lr_as_int": _set("config", "optimizer", "params", "lr", value=1),
    "optimizer_param_added": _set("config", "optimizer", "params", "beta1", value=0.8),
    "model_width": _set("config", "model", "params", "width", value=64),
    "activation_renamed": _set("config", "activation", "name", value="elu"),
    "budget_epochs": _set("config", "budget", "epochs", value=20),
    "target_value": _set("config", "target", "value", value=0.5),
    # seeds
    "seed": _set("config", "seed", value=7),
    "data_seed": _set("config", "data_seed", value=1),
    # keys removed or added
    "config_key_removed": _drop("config", "health"),
    "config_key_added": _set("config", "note", value="x"),
    "key_removed": _drop("device"),
    "key_added": _set("note", value="hand-edited"),
    "outcome_key_removed": _drop("steps"),
    "config_removed": _drop("config"),
    # provenance
    "technique_version": _set("techniques", "activation", "version", value="0.2.0"),
    "technique_distribution": _set("techniques", "optimizer", "distribution", value="other"),
    "package_version": _set("versions", "torch", value="2.4"),
    "data_fingerprint": _set("data_fingerprint", value="def456"),
    "matrix_name": _set("matrix", value="other"),
    # outcome and score values
    "status_diverged": _set("status", value="diverged"),
    "steps": _set("steps", value=31),
    "epochs_run": _set("epochs", value=2),
    "diverged_step": _set("diverged_step", value=5),
    "modelled_seconds": _set("modelled_seconds", value=0.1),
    "wall_seconds": _set("wall_seconds", value=20.0),
    "error_added": _set("error", value="boom"),
    # the digest itself
    "digest_changed": _set(META_DIGEST, value="0" * 64),
    "digest_removed_and_lr": _both(
        _drop(META_DIGEST), _set("config", "optimizer", "params", "lr", value=0.005)
    ),
}

HARMLESS: dict[str, Callable[[Path], None]] = {
    "reindented": lambda p: p.write_text(json.dumps(json.loads(p.read_text()), indent=4)),
    "keys_sorted": lambda p: p.write_text(json.dumps(json.loads(p.read_text()), sort_keys=True)),
    "float_spelled_3e-3": lambda p: p.write_text(
        p.read_text().replace('"lr": 0.003', '"lr": 3e-3')
    ),
}


def _copy(template: Path, tmp_path: Path) -> Path:
    out = tmp_path / "s"
    shutil.copytree(template, out)
    return out


def _edit(out: Path, tid: str, edit: Callable[[dict], None]) -> None:
    path = out / "trials" / tid / "meta.json"
    meta = json.loads(path.read_text())
    before = copy.deepcopy(meta)
    edit(meta)
    assert meta != before  # the edit changed something
    path.write_text(json.dumps(meta, indent=1))


def _check(out: Path, bad: set[str]) -> None:
    """``bad`` are exactly the corrupt trials, by every reader; a rerun restores them."""
    ids = {o.trial_id for o in OUTCOMES}
    report = inspect_store(out)
    assert set(report.corrupt) == bad, report.corrupt
    assert report.counts["completed"] == len(ids - bad)
    trials, metrics = load_results(out)
    assert set(trials.attrs["corrupt"]) == bad
    assert set(trials["trial_id"]) == ids - bad
    assert set(metrics["trial_id"].astype(str)) == ids - bad
    assert set(trials["lr"]) <= {0.003}
    store = ResultStore(out)
    todo, already = plan([o.config for o in OUTCOMES], store)
    assert {t.id for t in todo} == bad and already == len(ids - bad)
    assert set(clean_corrupt(out)) == bad
    for o in OUTCOMES:
        if o.trial_id in bad:
            store.write(o, "faults")
    assert load_results(out)[0].attrs["corrupt"] == {}


@pytest.mark.parametrize("where", ["alone", "batch"])
@pytest.mark.parametrize("kind", sorted(EDITS))
def test_an_edited_meta_is_corrupt_never_scored_and_rerun(template, tmp_path, kind, where):
    out = _copy(template, tmp_path)
    tid = OUTCOMES[1 if where == "alone" else 4].trial_id
    _edit(out, tid, EDITS[kind])
    FIGURES["meta_edits_tried"] += 1
    _check(out, {tid})
    FIGURES["meta_edits_handled"] += 1


@pytest.mark.parametrize("kind", sorted(HARMLESS))
def test_a_meta_rewritten_with_the_same_values_stays_sound(template, tmp_path, kind):
    out = _copy(template, tmp_path)
    for tid in (OUTCOMES[0].trial_id, OUTCOMES[5].trial_id):
        HARMLESS[kind](out / "trials" / tid / "meta.json")
    FIGURES["harmless_rewrites"] += 1
    _check(out, set())


def test_a_meta_stored_before_digests_loads_and_its_config_is_still_checked(template, tmp_path):
    """A 0.3.0 store has no ``meta_sha256``: legacy, not corrupt; an edited config still is."""
    out = _copy(template, tmp_path)
    for o in OUTCOMES:
        _edit(out, o.trial_id, _drop(META_DIGEST))
    _check(out, set())
    _edit(out, ALONE[0], _set("config", "seed", value=9))
    _check(out, {ALONE[0]})


def test_the_writer_refuses_a_config_that_does_not_hash_to_its_id(tmp_path):
    o = _outcome(0, "relu")
    o.config["seed"] = 1
    with pytest.raises(ValueError, match=f"trial {o.trial_id}: its config hashes to"):
        ResultStore(tmp_path).write(o)
    assert not (tmp_path / "trials" / o.trial_id).exists()


# -- the issue's own steps, through the CLI ---------------------------------------------------

MATRIX = """
    name = "lr-edit"
    seeds = 2
    [budget]
    epochs = 1
    [defaults]
    optimizer = { name = "adam", lr = 0.003 }
    [axes]
    activation = ["relu", "tanh"]
    """
RUN = ["--run-fn", "tests.test_run_cli:fast_run", "--no-progress", "--workers", "1"]


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "techbench.cli", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=dict(os.environ),
        timeout=300,
    )


def test_an_lr_edited_with_sed_is_named_unscored_and_rerun(tmp_path):
    path = tmp_path / "m.toml"
    path.write_text(textwrap.dedent(MATRIX))
    ids = {trial_id(t) for t in load_matrix(path).trials()}
    out = tmp_path / "out"
    done = _cli("run", str(path), "--out", str(out), *RUN)
    assert done.returncode == 0, done.stderr
    victim = sorted(ids)[0]
    meta = out / "trials" / victim / "meta.json"
    assert '"lr": 0.003' in meta.read_text()
    subprocess.run(["sed", "-i", 's/"lr": 0.003/"lr": 0.005/', str(meta)], check=True)

    status = _cli("status", str(out))
    assert status.returncode == 0, status.stderr
    assert "3 completed" in status.stdout and "1 corrupt" in status.stdout
    assert f"{victim}  meta.json's config hashes to" in status.stdout

    report = _cli("report", str(out), "--out", str(tmp_path / "r"))
    assert report.returncode == 0, report.stderr
    assert f"1 corrupt trial in {out} left out" in report.stderr
    runs = (tmp_path / "r" / "runs.csv").read_text()
    assert "0.005" not in runs and runs.count("adam(lr=0.003)") == 3

    again = _cli("run", str(path), "--out", str(out), *RUN)
    assert again.returncode == 0, again.stderr
    assert "3 already stored" in again.stdout
    trials, _ = load_results(out)
    assert set(trials["trial_id"]) == ids and trials.attrs["corrupt"] == {}
    assert json.loads(meta.read_text())["config"]["optimizer"]["params"]["lr"] == 0.003
