"""The pytest plugin (entry point ``pytest11``): a report header and a registry fixture.

Loaded by every pytest run in an environment where techbench is installed, so it imports nothing
heavy. The header lists broken techbench plugins, so a third-party author sees at once when
their package failed to load rather than wondering why no check ran.
"""

from __future__ import annotations

from typing import Any

import pytest


def pytest_report_header(config: pytest.Config) -> list[str]:
    from ..techniques.registry import default_registry

    try:
        entries = default_registry().entries(load=False)
    except Exception as exc:  # never break someone else's test run
        return [f"techbench: plugin discovery failed: {exc}"]
    return [f"techbench: {len(entries)} registered techniques (load on use)"]


@pytest.fixture
def techbench_registry() -> Any:
    """The process-wide :class:`techbench.techniques.registry.Registry`."""
    from ..techniques.registry import default_registry

    return default_registry()
