"""Which code produced a trial: the distribution and version behind each of its techniques.

A trial id hashes *what* was run (the config), not *which code* ran it; a plugin release that
fixes a bug keeps the ids. So every trial's meta records, per technique key of its config, the
distribution that registered the technique and that distribution's version
(``meta["techniques"]``), and a rerun into an existing store compares them with the installed
ones: a stored trial produced by another version is not reused as if current unless asked.
Built-ins come from the ``techbench`` distribution itself.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from typing import Any

from ..schema import AXIS_FAMILY
from .registry import BUILTIN_DISTRIBUTION


def technique_sources(config: Mapping[str, Any], registry: Any = None) -> dict[str, dict[str, Any]]:
    """``{config key: {"technique": "family/name", "distribution": ..., "version": ...}}``.

    ``registry`` answers ``source(name, family)`` (default: the installed plugins); one without
    it (a test's dictionary of specs) or a name it cannot place gives None for both.
    """
    if registry is None:
        from .registry import default_registry

        registry = default_registry()
    lookup = getattr(registry, "source", None)
    out: dict[str, dict[str, Any]] = {}
    for key, family in AXIS_FAMILY.items():
        tech = config.get(key) or {}
        name = str(tech.get("name", "?")) if isinstance(tech, Mapping) else str(tech)
        src: Mapping[str, Any] = {"distribution": None, "version": None}
        if lookup is not None:
            with contextlib.suppress(Exception):
                src = lookup(name, family)
        out[key] = {
            "technique": f"{family}/{name}",
            "distribution": src.get("distribution"),
            "version": src.get("version"),
        }
    return out


def other_versions(meta: Mapping[str, Any], current: Mapping[str, Mapping[str, Any]]) -> str | None:
    """Why a stored trial was produced by other code than ``current`` would run, or None.

    Compares each technique's (distribution, version) in ``meta["techniques"]`` with
    ``current`` (from :func:`technique_sources`). A trial stored without provenance (before it
    was recorded) cannot be compared and counts as current.
    """
    stored = meta.get("techniques")
    if not isinstance(stored, Mapping):
        return None
    changes = []
    for key, now in current.items():
        then = stored.get(key)
        if not isinstance(then, Mapping):
            continue
        was = (then.get("distribution"), then.get("version"))
        is_ = (now.get("distribution"), now.get("version"))
        if was != is_:
            changes.append(f"{now.get('technique')}: {_label(*was)}, now {_label(*is_)}")
    return "; ".join(changes) or None


def distribution_versions(meta: Mapping[str, Any]) -> list[str]:
    """``["dist version", ...]`` of every distribution a stored trial's techniques came from
    (empty for a trial stored without provenance)."""
    stored = meta.get("techniques")
    if not isinstance(stored, Mapping):
        return []
    found = {
        _label(src.get("distribution"), src.get("version"))
        for src in stored.values()
        if isinstance(src, Mapping) and src.get("distribution") is not None
    }
    return sorted(found)


def plugin_sources(meta: Mapping[str, Any]) -> list[str]:
    """``["dist version", ...]`` of the non-built-in distributions a stored trial used."""
    builtin = BUILTIN_DISTRIBUTION + " "
    return [d for d in distribution_versions(meta) if not d.startswith(builtin)]


def _label(distribution: Any, version: Any) -> str:
    return f"{distribution or 'unknown'} {version or '?'}"
