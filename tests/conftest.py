"""Fixtures shared by the test files.

- ``one_thread``: torch and BLAS on one intra-op thread for the test (tiny tensors on a busy
  machine stall on OpenMP; results stop depending on the core count).
- ``fake_dists``: real (tiny) installed distributions under ``tmp_path``, importable in this
  process and in subprocesses, for the registry's entry-point discovery path.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from techbench.techniques.registry import Registry
from techbench.testing import single_threaded
from tests.fakedist import entry_points_in, make_dist

pytest_plugins = ["pytester"]


@pytest.fixture
def one_thread() -> Iterator[None]:
    with single_threaded():
        yield


@dataclass
class FakeDists:
    """Distributions written under ``root``; ``root`` is on ``sys.path`` for the test."""

    root: Path
    monkeypatch: pytest.MonkeyPatch
    packages: set[str] = field(default_factory=set)

    def add(
        self,
        name: str,
        entry_points: dict[str, dict[str, str]],
        modules: dict[str, str] | None = None,
    ) -> Path:
        """One distribution (see :func:`tests.fakedist.make_dist`); its packages are imported
        fresh, not from an earlier test's ``sys.modules``."""
        info = make_dist(self.root, name, entry_points, modules)
        for rel in modules or {}:
            self.packages.add(Path(rel).parts[0].removesuffix(".py"))
        for mod in [m for m in sys.modules if m.split(".")[0] in self.packages]:
            self.monkeypatch.delitem(sys.modules, mod)
        return info

    def registry(self) -> Registry:
        """A registry over exactly these distributions' entry points."""
        return Registry(entry_points_in(self.root))

    @property
    def env(self) -> dict[str, str]:
        """Environment for a subprocess that should discover them (``PYTHONPATH`` prepended)."""
        path = os.pathsep.join([str(self.root), os.environ.get("PYTHONPATH", "")])
        return {**os.environ, "PYTHONPATH": path}


@pytest.fixture
def fake_dists(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FakeDists:
    monkeypatch.syspath_prepend(str(tmp_path))
    return FakeDists(tmp_path, monkeypatch)
