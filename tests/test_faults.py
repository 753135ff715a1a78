"""Fault injection: damaged stores, kill -9 and Ctrl-C at random points, read-only and full file
systems, closed pipes. Each fault asserts the exit code, one line of error, no traceback, that no
finished trial is lost and that no damaged trial is scored.

The expected values come from outside the code under test: the metric rows a test wrote itself,
the set of trial ids of the matrix, the files the test damaged.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from techbench.execute.local import plan
from techbench.plan.matrix import load_matrix
from techbench.schema import TrialMeta, TrialOutcome, complete_config, metric_row, trial_id
from techbench.store import ResultStore
from techbench.store.integrity import inspect_store
from techbench.store.reader import load_results

ROOT = Path(__file__).resolve().parents[1]
FIGURES: Counter[str] = Counter()
"""How many faults of each kind were tried (printed at the end of the module with ``-s``)."""


@pytest.fixture(scope="module", autouse=True)
def _figures():
    yield
    print("\nfault figures: " + ", ".join(f"{k}={v}" for k, v in sorted(FIGURES.items())))


def techbench(*args: str, env: dict | None = None, **kw) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "techbench.cli", *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **(env or {})},
        **kw,
    )


def finish(proc: subprocess.Popen, timeout: float = 120) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


def assert_clean_error(err: str, lines: int = 1) -> None:
    assert "Traceback" not in err, err
    assert len([ln for ln in err.splitlines() if "error" in ln]) == lines, err


# -- stored trials --------------------------------------------------------------------------------


def _outcome(i: int) -> TrialOutcome:
    config = complete_config({"dataset": {"name": "digits", "params": {}}, "seed": i})
    rows = [metric_row(s, s, "val", "acc", 0.1 * i + 0.01 * s) for s in range(3 + i)]
    return TrialOutcome(trial_id(config), config, "completed", rows, TrialMeta(steps=3 + i))


N_TRIALS = 5


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> tuple[Path, dict[str, list[float]]]:
    out = tmp_path_factory.mktemp("template")
    store = ResultStore(out)
    expected = {}
    for i in range(N_TRIALS):
        o = _outcome(i)
        store.write(o, "faults")
        expected[o.trial_id] = [r["value"] for r in o.metrics]
    return out, expected


KINDS = (
    "truncate",
    "random_bytes",
    "flip_byte",
    "delete_metrics",
    "delete_meta",
    "empty_meta",
    "empty_metrics",
    "garbage_meta",
    "swap_metrics",
    "swap_meta",
)


def corrupt(folder: Path, other: Path, kind: str, rng: random.Random) -> set[str]:
    """Damage trial ``folder`` (and ``other`` for swaps); the ids that must read as corrupt."""
    metrics, meta = folder / "metrics.parquet", folder / "meta.json"
    size = metrics.stat().st_size
    if kind == "truncate":
        with open(metrics, "r+b") as fh:
            fh.truncate(rng.randrange(0, size))
    elif kind == "random_bytes":
        metrics.write_bytes(rng.randbytes(rng.randrange(1, 2 * size)))
    elif kind == "flip_byte":
        data = bytearray(metrics.read_bytes())
        data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
        metrics.write_bytes(bytes(data))
    elif kind == "delete_metrics":
        metrics.unlink()
    elif kind == "delete_meta":
        meta.unlink()
    elif kind == "empty_meta":
        meta.write_bytes(b"")
    elif kind == "empty_metrics":
        metrics.write_bytes(b"")
    elif kind == "garbage_meta":
        meta.write_bytes(rng.randbytes(50))
    elif kind in ("swap_metrics", "swap_meta"):
        name = "metrics.parquet" if kind == "swap_metrics" else "meta.json"
        a, b = folder / name, other / name
        tmp = folder / "swap.tmp"
        os.rename(a, tmp)
        os.rename(b, a)
        os.rename(tmp, b)
        return {folder.name, other.name}
    return {folder.name}


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    kind=st.sampled_from(KINDS),
    pick=st.integers(0, N_TRIALS - 1),
    other=st.integers(1, N_TRIALS - 1),
    seed=st.integers(0, 2**32 - 1),
)
def test_a_damaged_trial_is_never_scored_and_is_rerun(template, tmp_path, kind, pick, other, seed):
    src, expected = template
    out = tmp_path / f"s{FIGURES['corruptions']}"
    shutil.copytree(src, out)
    ids = sorted(expected)
    a, b = ids[pick], ids[(pick + other) % N_TRIALS]
    bad = corrupt(out / "trials" / a, out / "trials" / b, kind, random.Random(seed))
    FIGURES["corruptions"] += 1

    trials, metrics = load_results(out)  # never raises
    assert set(trials.attrs["corrupt"]) == bad, (kind, trials.attrs["corrupt"])
    assert set(trials["trial_id"]) == set(ids) - bad
    for tid in set(ids) - bad:  # the sound trials: every row, exactly as written
        got = metrics.loc[metrics["trial_id"] == tid, "value"].tolist()
        assert got == expected[tid]
    assert not set(metrics["trial_id"].astype(str)) & bad
    store = ResultStore(out)
    assert set(store.statuses(verify=True)) == set(ids) - bad
    configs = [_outcome(i).config for i in range(N_TRIALS)]
    todo, already = plan(configs, store)
    assert {t.id for t in todo} == bad and already == N_TRIALS - len(bad)
    report = inspect_store(out)
    assert set(report.corrupt) == bad and report.counts["completed"] == N_TRIALS - len(bad)
    for tid in bad:  # rerunning stores it again, sound
        store.write(next(_outcome(i) for i in range(N_TRIALS) if _outcome(i).trial_id == tid))
    assert load_results(out)[0].attrs["corrupt"] == {}


def test_status_lists_failed_corrupt_and_locked_trials(template, tmp_path, capsys):
    from techbench.cli import main

    src, expected = template
    out = tmp_path / "s"
    shutil.copytree(src, out)
    store = ResultStore(out)
    ids = sorted(expected)
    failed = TrialOutcome.failed(
        {"seed": 99}, "Traceback (most recent call last):\n  File x\nValueError: bad lr\n"
    )
    store.write(failed)
    (out / "trials" / ids[0] / "meta.json").write_text("")
    with store.claim(ids[1]) as held:
        assert held
        (store.locks_dir / f"{ids[2]}.lock").touch()  # as a killed holder leaves it
        report = inspect_store(out)
        assert report.failed == {failed.trial_id: "ValueError: bad lr"}
        assert report.corrupt == {ids[0]: "meta.json is empty"}
        assert report.held_locks == [ids[1]] and report.stale_locks == [ids[2]]
        assert report.counts == {"completed": N_TRIALS - 1, "diverged": 0, "failed": 1}
        assert main(["status", str(out)]) == 0
        text = capsys.readouterr().out
        assert f"{failed.trial_id}  ValueError: bad lr" in text
        assert f"{ids[0]}  meta.json is empty" in text
        assert "1 stale" in text and "1 held" in text
        assert main(["clean", str(out), "--locks", "--failed", "--corrupt"]) == 0
        assert os.path.exists(store.locks_dir / f"{ids[1]}.lock")  # held: kept
    assert not os.path.exists(store.locks_dir / f"{ids[2]}.lock")
    after = inspect_store(out)
    assert after.failed == {} and after.corrupt == {}
    assert after.counts["completed"] == N_TRIALS - 1  # finished trials untouched


# -- killed and interrupted runs --------------------------------------------------------------


SMALL = """
    name = "small"
    seeds = 4
    [budget]
    epochs = 1
    [axes]
    activation = ["relu", "tanh"]
    """


def _matrix(tmp_path: Path) -> tuple[str, set[str]]:
    path = tmp_path / "m.toml"
    path.write_text(textwrap.dedent(SMALL))
    return str(path), {trial_id(t) for t in load_matrix(path).trials()}


def _sound(out: Path, ids: set[str]) -> set[str]:
    """The trials stored sound (the store's answer checked against a direct read of the rows)."""
    trials, metrics = load_results(out)
    assert trials.attrs["corrupt"] == {}
    stored = set(trials["trial_id"])
    assert stored <= ids
    for tid in stored:
        assert metrics.loc[metrics["trial_id"] == tid, "value"].tolist() == [0.5]
    return stored


RUN = ["--run-fn", "tests.test_run_cli:fast_run", "--no-progress"]


@pytest.mark.parametrize(("sig", "workers"), [("KILL", 2), ("INT", 1), ("INT", 2)])
def test_kill_or_interrupt_at_a_random_point_loses_nothing(tmp_path, sig, workers):
    path, ids = _matrix(tmp_path)
    out = tmp_path / "out"
    rng = random.Random(f"{sig}{workers}")
    args = ["run", path, "--out", str(out), "--workers", str(workers), *RUN]
    proc = techbench(*args, env={"TB_SLEEP": "0.2"})
    deadline = time.monotonic() + 60
    while not (out / ".locks").exists() and time.monotonic() < deadline:  # the run has begun
        time.sleep(0.02)
    time.sleep(rng.uniform(0.0, 1.5))
    proc.send_signal(getattr(signal, f"SIG{sig}"))
    code, _, err = finish(proc)
    FIGURES["kills" if sig == "KILL" else "interrupts"] += 1
    before = _sound(out, ids) if (out / "trials").exists() else set()
    if sig == "INT":
        assert code == 130 and "run the same command again to resume" in err
        assert "Traceback" not in err
    else:
        assert code == -9
    code, text, err = finish(techbench(*args))
    assert code == 0, err
    assert _sound(out, ids) == ids and before <= ids
    assert f"{len(before)} already stored" in text or len(before) == 0


# -- file systems and pipes -----------------------------------------------------------------------


needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root")


@pytest.fixture
def tmpfs(tmp_path):
    mounted = []

    def mount(size: str, readonly: bool = False) -> Path:
        where = tmp_path / f"fs{len(mounted)}"
        where.mkdir()
        opts = f"size={size}" + (",ro" if readonly else "")
        if subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(where)]).returncode:
            pytest.skip("cannot mount a tmpfs here")
        mounted.append(where)
        return where

    yield mount
    for where in mounted:
        subprocess.run(["umount", "-l", str(where)], check=False)


@needs_root
def test_read_only_and_full_file_systems_are_one_line(tmp_path, tmpfs, template):
    path, ids = _matrix(tmp_path)
    ro = tmpfs("1m", readonly=True)
    src, _ = template
    cases = [
        ("run", path, "--out", str(ro / "x"), "--workers", "1", *RUN),
        ("report", str(src), "--out", str(ro / "r")),
        ("probe", "--depth", "2", "--width", "8", "--out", str(ro / "p")),
        ("run", path, "--out", str(Path(path)), "--workers", "1", *RUN),  # a file in the way
        ("report", str(src), "--out", str(Path(path))),
    ]
    for args in cases:
        code, _, err = finish(techbench(*args))
        FIGURES["io_faults"] += 1
        assert code == 1, (args, err)
        assert_clean_error(err)
        assert (
            ("read-only file system" in err)
            or ("a file is in the way" in err)
            or ("exists as a file" in err)
        ), err
    full = tmpfs("256k")
    (full / "fill").write_bytes(b"\0" * 200_000)
    out = full / "s"
    code, _, err = finish(techbench("run", path, "--out", str(out), "--workers", "1", *RUN))
    FIGURES["io_faults"] += 1
    assert code == 1, err
    assert_clean_error(err)
    assert "no space left on device" in err
    stored = _sound(out, ids) if (out / "trials").exists() else set()
    (full / "fill").unlink()
    code, _, err = finish(techbench("run", path, "--out", str(out), "--workers", "1", *RUN))
    assert code == 0, err
    assert _sound(out, ids) == ids and stored <= ids


@pytest.mark.parametrize(
    "args",
    [
        ("list",),
        ("list", "--json"),
        ("run", "--list"),
        ("run", "demo", "--dry-run"),
        ("show", "adam"),
    ],
)
def test_a_closed_pipe_exits_quietly(args):
    proc = techbench(*args)
    assert proc.stdout is not None
    proc.stdout.close()  # the reader goes away before the first write
    err = proc.stderr.read() if proc.stderr else ""
    code = proc.wait(timeout=120)
    FIGURES["broken_pipes"] += 1
    assert code in (0, 141), err
    assert err == "", err
