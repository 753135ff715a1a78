"""Write real (tiny) installed distributions into a folder: dist-info metadata plus modules.

Adding the folder to ``sys.path`` or ``PYTHONPATH`` makes ``importlib.metadata`` discover their
entry points exactly as it does for pip-installed packages, so the registry is tested on the
real discovery path, not a mock.
"""

from __future__ import annotations

import textwrap
from importlib import metadata
from pathlib import Path


def make_dist(
    root: Path,
    name: str,
    entry_points: dict[str, dict[str, str]],
    modules: dict[str, str] | None = None,
) -> Path:
    """Create ``root/<name>-0.1.dist-info`` and the given modules (path -> source)."""
    info = root / f"{name}-0.1.dist-info"
    info.mkdir(parents=True, exist_ok=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n")
    lines = []
    for group, eps in entry_points.items():
        lines.append(f"[{group}]")
        lines += [f"{ep} = {value}" for ep, value in eps.items()]
    (info / "entry_points.txt").write_text("\n".join(lines) + "\n")
    for rel, source in (modules or {}).items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(source))
    return info


def entry_points_in(root: Path) -> list[metadata.EntryPoint]:
    """Every entry point of the distributions under ``root`` (with their ``dist`` set)."""
    return [ep for dist in metadata.distributions(path=[str(root)]) for ep in dist.entry_points]
