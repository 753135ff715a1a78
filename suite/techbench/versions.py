"""Library versions recorded with every stored trial (and shown in the report's header)."""

from __future__ import annotations

import functools
import platform
from importlib import metadata

_DISTRIBUTIONS = (
    ("techbench", "techbench"),
    ("torch", "torch"),
    ("pytorch_lightning", "pytorch-lightning"),
)


@functools.cache
def _cached() -> tuple[tuple[str, str], ...]:
    out = {"python": platform.python_version()}
    for key, dist in _DISTRIBUTIONS:
        try:
            out[key] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[key] = "unknown"
    return tuple(out.items())


def package_versions() -> dict[str, str]:
    """python, techbench, torch and pytorch_lightning versions; looked up once per process
    (a metadata scan costs ~5 ms, which matters per trial)."""
    return dict(_cached())
