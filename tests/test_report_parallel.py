"""The report's speed-ups change no output: sections rendered by forked processes, and the
health series the report drops at read time, give the same CSVs and page as the plain path."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from techbench.report import build_report, parallel
from techbench.report import load as report_load
from techbench.store.reader import load_results

from .report_fixtures import write_store

# A critical-difference diagram's PNG differs between any two runs (scikit-posthocs' drawing),
# and the page states how long it took to build; everything else must match byte for byte.
_CD = re.compile(r'(alt="Critical-difference diagram[^"]*" src="data:image/png;base64,)[^"]+')
_BUILT = re.compile(r"built in [0-9.]+ s")


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("parallel") / "store"
    write_store(
        root,
        axes={"activation": ["relu", "tanh", "sigmoid"], "initializer": ["he_normal", "xavier"]},
        datasets=["digits", "moons"],
        seeds=range(3),
        ceilings={"relu": 0.15, "sigmoid": -0.2},
        statuses={("tanh", 1): "diverged"},
        epochs=4,
    )
    return root


def _outputs(out: Path) -> dict[str, bytes]:
    files = {p.name: p.read_bytes() for p in sorted(out.iterdir())}
    page = files.pop("index.html").decode()
    files["index.html"] = _BUILT.sub("", _CD.sub(r"\1", page)).encode()
    return files


def _build(store: Path, out: Path) -> dict[str, bytes]:
    build_report(store, out, baselines=["tanh"])
    return _outputs(out)


@pytest.fixture(scope="module")
def plain(store: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    mp = pytest.MonkeyPatch()
    mp.setattr(parallel, "PARALLEL_RUNS", 10**9)
    mp.setattr(report_load, "UNUSED_SERIES", ())
    try:
        return _build(store, tmp_path_factory.mktemp("plain") / "out")
    finally:
        mp.undo()


def test_forked_sections_write_the_same_report(
    store: Path, plain: dict[str, bytes], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(parallel, "PARALLEL_RUNS", 1)
    monkeypatch.setattr(report_load, "UNUSED_SERIES", ())
    pids = tmp_path / "pids"
    real = parallel._render

    def render(*args: object) -> object:
        with pids.open("a") as fh:
            fh.write(f"{os.getpid()}\n")
        return real(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(parallel, "_render", render)
    got = _build(store, tmp_path / "out")
    ran_in = set(pids.read_text().split())
    assert str(os.getpid()) not in ran_in and 1 <= len(ran_in) <= 2  # forked workers
    assert got.keys() == plain.keys() and len(got) > 5
    for name in plain:
        assert got[name] == plain[name], name


def test_dropped_health_series_change_nothing(
    store: Path, plain: dict[str, bytes], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(parallel, "PARALLEL_RUNS", 10**9)
    dropped = {m for _, m in report_load.UNUSED_SERIES}
    _, stored = load_results(store)
    assert dropped <= set(stored["metric"].astype(str))  # the store has them
    _, metrics = report_load.load_store(store)
    names = set(metrics["metric"].astype(str))
    assert not names & dropped
    assert {"grad_norm", "act_std", "dead_fraction"} <= names
    got = _build(store, tmp_path / "out")
    for name in plain:
        assert got[name] == plain[name], name
