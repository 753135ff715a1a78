"""The third-party path end to end: install the example package into a folder of its own,
see it in ``techbench list``, pass ``techbench check`` and its own three-line test; and broken
plugins (a fast side off by 1e-3, a wrong derivative) fail ``techbench check`` with a clear message.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from techbench.store import seal_meta

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "plugins" / "techbench_example"
NAMES = ["bent_identity", "trunc_normal", "mean_only_batchnorm", "elastic_net", "signum"]


def run(python: Path | str, *args: str, env: dict | None = None, timeout: int = 600):
    # this checkout's code first, whatever techbench the system site holds
    code = [str(ROOT / "suite"), str(ROOT / "plugins")]
    extra = dict(env or {})
    path = os.pathsep.join([*code, extra.pop("PYTHONPATH", os.environ.get("PYTHONPATH", ""))])
    return subprocess.run(
        [str(python), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        env={**os.environ, **extra, "PYTHONPATH": path},
    )


@pytest.fixture(scope="module")
def example_env(tmp_path_factory) -> Callable[..., subprocess.CompletedProcess]:
    """Runs ``python ARGS`` where the example package is installed: pip-installed into a fresh
    folder that joins ``PYTHONPATH`` on top of the environment running the tests, be it a venv or
    a bare interpreter (a nested ``system_site_packages`` venv sees the base interpreter, not an
    enclosing venv, so it would miss torch installed in the venv)."""
    where = tmp_path_factory.mktemp("site")
    pip = ("-m", "pip", "install", "--quiet", "--no-deps", "--target", str(where), str(EXAMPLE))
    proc = run(sys.executable, *pip)
    assert proc.returncode == 0, proc.stderr[-3000:]
    path = os.pathsep.join([str(where), os.environ.get("PYTHONPATH", "")])
    return functools.partial(run, sys.executable, env={"PYTHONPATH": path})


def test_example_is_listed_with_its_distribution(example_env):
    proc = example_env("-m", "techbench.cli", "list", "--json")
    assert proc.returncode == 0, proc.stderr
    rows = {
        r["name"]: r for r in json.loads(proc.stdout) if r["distribution"] == "techbench-example"
    }
    assert sorted(rows) == sorted(NAMES)
    assert {r["family"] for r in rows.values()} == {
        "activation",
        "initializer",
        "normalizer",
        "regularizer",
        "optimizer",
    }
    assert all(r["status"] == "ok" and r["summary"] for r in rows.values())


def test_example_is_invisible_outside_its_environment():
    proc = run(sys.executable, "-m", "techbench.cli", "list", "--json")
    assert proc.returncode == 0, proc.stderr
    assert not [r for r in json.loads(proc.stdout) if r["distribution"] == "techbench-example"]


def test_example_passes_techbench_check(example_env):
    proc = example_env("-m", "techbench.cli", "check", *NAMES)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "0 failed (5 techniques, 0 broken plugins)" in proc.stdout


def test_example_package_own_tests_pass(example_env):
    proc = example_env("-m", "pytest", "-q", "-p", "no:cacheprovider", str(EXAMPLE / "tests"))
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert " passed" in proc.stdout and "failed" not in proc.stdout


BROKEN = """
import torch
from types import SimpleNamespace
from techbench import TechniqueSpec

PROPS = {"output_range": (float("-inf"), float("inf")), "zero_centered": True,
         "monotonic": True, "saturation": None, "dead_below": None, "kinks": ()}


class Bent(torch.nn.Module):
    def forward(self, x):
        return (torch.sqrt(x * x + 1) - 1) / 2 + x


class OffBent(Bent):
    def forward(self, x):
        return super().forward(x) + 1e-3


RIGHT = SimpleNamespace(
    value=lambda x, **_: (torch.sqrt(x**2 + 1) - 1) / 2 + x,
    derivative=lambda x, **_: x / (2 * torch.sqrt(x**2 + 1)) + 1,
)
WRONG_DERIVATIVE = SimpleNamespace(
    value=RIGHT.value, derivative=lambda x, **_: x / (2 * torch.sqrt(x**2 + 1))
)

off_by = TechniqueSpec(name="off_by", family="activation", summary="Off by 1e-3.",
    citation="test", fast=OffBent, reference=RIGHT, properties=PROPS)
bad_derivative = TechniqueSpec(name="bad_derivative", family="activation",
    summary="Derivative forgets the +1.", citation="test", fast=Bent,
    reference=WRONG_DERIVATIVE, properties=PROPS)
"""


@pytest.fixture
def broken_dist(fake_dists) -> dict:
    fake_dists.add(
        "brokenacts",
        {"techbench.activations": {n: f"brokenacts:{n}" for n in ("off_by", "bad_derivative")}},
        {"brokenacts/__init__.py": BROKEN},
    )
    return fake_dists.env


def test_fast_off_by_1e3_fails_values_with_the_input(broken_dist):
    proc = run(sys.executable, "-m", "techbench.cli", "check", "off_by", env=broken_dist)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "FAILED  activation/off_by :: values" in proc.stdout
    assert "at input" in proc.stdout and "|diff| = 0.001" in proc.stdout


def test_wrong_derivative_fails_gradient_check(broken_dist):
    proc = run(sys.executable, "-m", "techbench.cli", "check", "bad_derivative", env=broken_dist)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "FAILED  activation/bad_derivative :: gradient" in proc.stdout
    assert "values" not in [
        line.split("::")[-1].strip() for line in proc.stdout.splitlines() if "FAILED" in line
    ]


PROVENANCE_MATRIX = """name = "prov"
seeds = 1
[budget]
epochs = 1
[axes]
activation = ["bent_identity", "relu"]
"""


def _metas(store: Path) -> dict[str, tuple[Path, dict]]:
    out = {}
    for path in (store / "trials").glob("*/meta.json"):
        meta = json.loads(path.read_text())
        out[meta["config"]["activation"]["name"]] = (path, meta)
    return out


def test_provenance_in_meta_report_and_reruns(example_env, tmp_path):
    """The example package's distribution and version land in meta.json and the report
    header; a store holding a trial made by another version of it is rerun (and says so), or
    kept with --reuse-other-versions."""
    import tomllib

    version = tomllib.loads((EXAMPLE / "pyproject.toml").read_text())["project"]["version"]
    matrix, store = tmp_path / "prov.toml", tmp_path / "store"
    matrix.write_text(PROVENANCE_MATRIX)
    cmd = ("-m", "techbench.cli", "run", str(matrix), "--out", str(store), "--workers", "1")
    proc = example_env(*cmd, "--no-progress")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    metas = _metas(store)
    path, meta = metas["bent_identity"]
    assert meta["techniques"]["activation"] == {
        "technique": "activation/bent_identity",
        "distribution": "techbench-example",
        "version": version,
    }
    assert meta["techniques"]["optimizer"]["distribution"] == "techbench"
    assert metas["relu"][1]["techniques"]["activation"]["distribution"] == "techbench"

    proc = example_env("-m", "techbench.cli", "status", str(store))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"techbench-example {version} (1 trials)" in proc.stdout
    assert "techbench " in proc.stdout.split("plugin versions:")[1]  # the built-ins' version

    report = tmp_path / "report"
    proc = example_env("-m", "techbench.cli", "report", str(store), "--out", str(report))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    page = (report / "index.html").read_text()
    assert "plugins (not built in)" in page and f"techbench-example {version}" in page

    def age(path: Path) -> None:
        meta = json.loads(path.read_text())
        meta["techniques"]["activation"]["version"] = "0.0.1"
        path.write_text(json.dumps(seal_meta(meta)))  # as the older version stored it

    age(path)
    proc = example_env(*cmd, "--no-progress", "--reuse-other-versions")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "1 stored trial came from other plugin versions" in proc.stderr
    assert "kept as results" in proc.stderr and "2 already stored" in proc.stdout
    assert _metas(store)["bent_identity"][1]["techniques"]["activation"]["version"] == "0.0.1"

    proc = example_env(*cmd, "--no-progress")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (
        "activation/bent_identity: techbench-example 0.0.1, now techbench-example "
        f"{version}); rerun" in proc.stderr
    )
    after = _metas(store)
    assert after["bent_identity"][1]["techniques"]["activation"]["version"] == version
    assert after["bent_identity"][1]["started_at"] != meta["started_at"]
    assert after["relu"][1]["started_at"] == metas["relu"][1]["started_at"]  # reused
