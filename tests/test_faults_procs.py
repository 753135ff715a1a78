"""Fault injection on processes and counts: the parent killed (-9) or terminated (SIGTERM),
double Ctrl-C and a full disk, then what is left: worker processes, lock files, a pipe held open,
and whether the run's summary counts what the store holds.

The trials run :func:`sigterm_catching_run`, which treats SIGTERM the way Lightning's signal
connector does inside ``trainer.fit`` (it notes the signal, calls the handler that was there,
and ends the trial with a ``SystemExit`` at its next step), so a worker that only gets SIGTERM
when its parent dies outlives it. The processes of a run are found by an environment tag the
test gives the run, the expected counts from the store's files, the ids from the matrix.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from pathlib import Path

import pytest

from techbench.schema import trial_id
from techbench.store import ResultStore
from tests.test_faults import _matrix as matrix
from tests.test_faults import needs_root, tmpfs  # noqa: F401 (a fixture)

ROOT = Path(__file__).resolve().parents[1]
RUN_FN = "tests.test_faults_procs:sigterm_catching_run"
STEP = 0.05
TAG = "TB_PROCS_TAG"
GRACE = 5.0
"""Seconds after the parent's end by which none of its processes may be left."""

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
FIGURES: Counter[str] = Counter()
"""Faults tried and handled (printed at the end of the module with ``-s``)."""


@pytest.fixture(scope="module", autouse=True)
def _figures():
    yield
    print("\nprocess fault figures: " + ", ".join(f"{k}={v}" for k, v in sorted(FIGURES.items())))


def sigterm_catching_run(config: dict) -> dict:
    """TB_STEPS steps of STEP seconds; SIGTERM ends the trial with SystemExit, as in Lightning."""
    caught: list[int] = []
    previous = signal.getsignal(signal.SIGTERM)

    def on_sigterm(signum: int, frame: object) -> None:
        caught.append(signum)
        if callable(previous):
            previous(signum, frame)

    signal.signal(signal.SIGTERM, on_sigterm)
    try:
        for _ in range(int(os.environ.get("TB_STEPS", "20"))):
            if caught:
                raise SystemExit(1)
            time.sleep(STEP)
    finally:
        signal.signal(signal.SIGTERM, previous)
    return {
        "trial_id": trial_id(config),
        "config": config,
        "status": "completed",
        "metrics": [{"step": 0, "epoch": 0, "split": "val", "metric": "acc", "value": 0.5}],
        "meta": {"wall_seconds": 0.0},
    }


def start(path: str, out: Path, workers: int, tag: str, steps: int = 20) -> subprocess.Popen:
    args = ["run", path, "--out", str(out), "--workers", str(workers), "--stack", "off"]
    return subprocess.Popen(
        [sys.executable, "-m", "techbench.cli", *args, "--run-fn", RUN_FN, "--no-progress"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, TAG: tag, "TB_STEPS": str(steps)},
    )


def tagged(tag: str) -> list[int]:
    """Live processes (not zombies) whose environment holds ``TAG=tag``."""
    want = f"{TAG}={tag}".encode()
    pids = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if want in (proc / "environ").read_bytes().split(b"\0"):
                    pids.append(int(proc.name))
            except OSError:
                continue
    return pids


def left_after_grace(tag: str) -> list[int]:
    """The tagged processes still alive GRACE seconds from now (stops looking once none are)."""
    deadline = time.monotonic() + GRACE
    while (alive := tagged(tag)) and time.monotonic() < deadline:
        time.sleep(0.1)
    return alive


def wait_stored(out: Path, n: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while len(ResultStore(out).trial_ids()) < n and time.monotonic() < deadline:
        time.sleep(0.02)


def kill_all(pids: list[int]) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def stored_metas(out: Path) -> dict[str, dict]:
    store = ResultStore(out)
    return {tid: store.read_meta(tid) or {} for tid in store.trial_ids()}


def store_counts(out: Path, ids: set[str]) -> Counter[str]:
    """Stored statuses of ``ids`` read from the meta files, and how many have none."""
    counts: Counter[str] = Counter()
    for tid in ids:
        meta = out / "trials" / tid / "meta.json"
        counts[
            meta.read_text().split('"status": "')[1].split('"')[0] if meta.exists() else "none"
        ] += 1
    return counts


def summary_counts(stdout: str) -> Counter[str]:
    """The counts the run's summary line printed (``3 completed, ..., 5 not stored``)."""
    line = next(ln for ln in stdout.splitlines() if "trials done:" in ln)
    found = dict(
        (k, int(n)) for n, k in re.findall(r"(\d+) (completed|diverged|failed|not stored)", line)
    )
    return Counter({"none" if k == "not stored" else k: n for k, n in found.items() if n})


def resume_redoes_nothing_finished(path: str, out: Path, ids: set[str], before: dict) -> None:
    """A rerun stores every trial and leaves each one stored before it as it was."""
    proc = start(path, out, 2, uuid.uuid4().hex, steps=1)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    after = stored_metas(out)
    assert set(after) == ids
    assert {tid: after[tid] for tid in before} == before
    assert sorted(os.listdir(out / ".locks")) == []


def test_parent_killed_leaves_no_worker_and_no_pipe_open(tmp_path):
    path, ids = matrix(tmp_path)
    out, tag = tmp_path / "out", uuid.uuid4().hex
    proc = start(path, out, 2, tag)
    wait_stored(out, 1)
    proc.kill()
    proc.wait(timeout=30)
    FIGURES["parent_kills"] += 1
    left = left_after_grace(tag)
    kill_all(left)
    assert left == [], "workers outlived their killed parent"
    assert proc.stdout is not None
    assert proc.stdout.read() == ""  # EOF: no process holds the run's stdout any more
    FIGURES["parent_kills_handled"] += 1
    before = stored_metas(out)
    assert 1 <= len(before) < len(ids)
    resume_redoes_nothing_finished(path, out, ids, before)


@pytest.mark.parametrize("workers", [1, 2])
def test_sigterm_stops_the_run_at_once_with_one_line(tmp_path, workers):
    path, ids = matrix(tmp_path)
    out, tag = tmp_path / "out", uuid.uuid4().hex
    proc = start(path, out, workers, tag, steps=40)
    wait_stored(out, 1)
    proc.send_signal(signal.SIGTERM)
    stdout, err = proc.communicate(timeout=60)
    FIGURES["sigterms"] += 1
    left = left_after_grace(tag)
    kill_all(left)
    assert (proc.returncode, left) == (143, [])
    assert [ln for ln in err.splitlines() if ln.strip()] == [
        "techbench run: terminated (SIGTERM); run the same command again to resume"
    ]
    assert summary_counts(stdout) == store_counts(out, ids)
    assert os.listdir(out / ".locks") == []
    FIGURES["sigterms_handled"] += 1
    before = stored_metas(out)
    assert 1 <= len(before) < len(ids)
    resume_redoes_nothing_finished(path, out, ids, before)


def test_double_ctrl_c_kills_the_workers_and_counts_what_is_stored(tmp_path):
    path, ids = matrix(tmp_path)
    out, tag = tmp_path / "out", uuid.uuid4().hex
    proc = start(path, out, 2, tag, steps=40)
    wait_stored(out, 1)
    proc.send_signal(signal.SIGINT)
    time.sleep(0.3)
    proc.send_signal(signal.SIGINT)
    stdout, err = proc.communicate(timeout=60)
    FIGURES["double_interrupts"] += 1
    left = left_after_grace(tag)
    kill_all(left)
    assert (proc.returncode, left) == (130, []), err
    assert "Traceback" not in err, err
    assert summary_counts(stdout) == store_counts(out, ids)
    assert os.listdir(out / ".locks") == []
    FIGURES["double_interrupts_handled"] += 1


def fill(where: Path) -> None:
    """Write zeros under ``where`` until its file system is full."""
    with open(where / "fill", "wb", buffering=0) as fh, contextlib.suppress(OSError):
        while True:
            fh.write(b"\0" * 4096)


@needs_root
def test_a_full_disk_counts_what_is_stored(tmp_path, tmpfs):  # noqa: F811
    path, ids = matrix(tmp_path)
    out = tmpfs("2m") / "s"
    proc = start(path, out, 2, uuid.uuid4().hex, steps=10)
    wait_stored(out, 2)
    fill(out.parent)
    stdout, err = proc.communicate(timeout=120)
    FIGURES["full_disk_counts"] += 1
    assert proc.returncode == 1, err
    counts = store_counts(out, ids)
    assert counts["none"] > 0, "the disk did not fill: the test proves nothing"
    assert summary_counts(stdout) == counts
    FIGURES["full_disk_counts_handled"] += 1


def test_a_finished_run_leaves_no_lock_files_and_status_reports_none(tmp_path):
    path, ids = matrix(tmp_path)
    out = tmp_path / "out"
    proc = start(path, out, 2, uuid.uuid4().hex, steps=1)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert set(ResultStore(out).trial_ids()) == ids
    assert os.listdir(out / ".locks") == []
    status = subprocess.run(
        [sys.executable, "-m", "techbench.cli", "status", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "locks: 0 stale" in status and "clean" not in status, status


def lock_fds(path: Path) -> int:
    """How many of this process's descriptors are open on ``path``."""
    n = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            n += os.readlink(f"/proc/self/fd/{fd}") == str(path)
        except OSError:
            continue
    return n


def test_a_claim_waiting_on_a_removed_lock_file_never_shares_the_claim(tmp_path):
    """A holds; B opens the same lock file and waits; A ends (removing the file); B must then
    lock the path's new file, so C, trying meanwhile, cannot also hold the claim."""
    import threading

    store = ResultStore(tmp_path)
    path = store.locks_dir / "t.lock"
    a = store.claim("t")
    assert a.__enter__()
    b_holds, b_release = threading.Event(), threading.Event()

    def b() -> None:
        with store.claim("t", wait=True) as got:
            assert got
            b_holds.set()
            b_release.wait(30)

    thread = threading.Thread(target=b)
    thread.start()
    deadline = time.monotonic() + 10
    while lock_fds(path) < 2 and time.monotonic() < deadline:  # B has opened A's file
        time.sleep(0.01)
    assert lock_fds(path) == 2
    a.__exit__(None, None, None)
    assert b_holds.wait(10)
    with store.claim("t") as c:
        assert not c
    b_release.set()
    thread.join(10)
    assert os.listdir(store.locks_dir) == []


def test_status_calls_a_lock_stale_only_when_no_process_holds_it(tmp_path):
    from techbench.store.integrity import inspect_store, lock_state

    store = ResultStore(tmp_path).ensure()
    (store.locks_dir / "dead.lock").touch()  # what a killed holder leaves
    with store.claim("live"):
        report = inspect_store(tmp_path)
        assert (report.stale_locks, report.held_locks) == (["dead"], ["live"])
    assert lock_state(store.locks_dir / "live.lock") is None  # ended: its file is gone
    assert inspect_store(tmp_path).held_locks == []
