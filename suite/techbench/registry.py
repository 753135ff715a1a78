"""Entry-point discovery, lazy loading, broken-plugin isolation and name lookup.

Plugins register a :class:`~techbench.spec.TechniqueSpec` under the entry-point group
``techbench.<family>s`` (``techbench.activations``, ...); the entry point's name is the public
name. Discovery reads only distribution metadata; a spec is imported the first time it is asked
for. A plugin that fails to import or is not a valid spec is recorded with its error and a
:class:`PluginWarning`, and the rest keeps working. The same name registered by two
distributions is an error naming both. Unknown names get "did you mean".

Lookups accept ``name`` or ``family/name``; the API mirrors timm's factories:
:func:`list_techniques`, :func:`get_spec`, :func:`create`.
"""

from __future__ import annotations

import fnmatch
import functools
import traceback
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any

from .errors import did_you_mean
from .spec import FAMILIES, TechniqueError, TechniqueSpec


class PluginWarning(UserWarning):
    """A plugin could not be loaded; it is skipped and shown by ``techbench list``."""


class UnknownTechniqueError(TechniqueError, KeyError):
    """No technique of that name; the message suggests close names."""

    def __str__(self) -> str:
        return str(self.args[0])


class DuplicateTechniqueError(TechniqueError):
    """Two distributions register the same family/name."""


class BrokenPluginError(TechniqueError):
    """The plugin behind a name failed to load."""


def group_of(family: str) -> str:
    return f"techbench.{family}s"


@dataclass
class Entry:
    """One registered name: where it comes from and, once loaded, its spec or its error."""

    name: str
    family: str
    value: str
    distribution: str
    entry_point: Any = field(default=None, repr=False)
    spec: TechniqueSpec | None = None
    error: str | None = None
    loaded: bool = False

    @property
    def qualified_name(self) -> str:
        return f"{self.family}/{self.name}"

    @property
    def status(self) -> str:
        return "error" if self.error else "ok"


class Registry:
    """The set of techniques visible to this process.

    ``entry_points`` lets tests inject entry points; by default they come from the installed
    distributions' metadata.
    """

    def __init__(self, entry_points: Iterable[metadata.EntryPoint] | None = None) -> None:
        self._injected = list(entry_points) if entry_points is not None else None
        self._entries: dict[tuple[str, str], Entry] | None = None

    def _discover(self) -> dict[tuple[str, str], Entry]:
        if self._entries is not None:
            return self._entries
        groups = {group_of(f): f for f in FAMILIES}
        if self._injected is not None:
            eps: Iterable[metadata.EntryPoint] = self._injected
        else:
            eps = [ep for g in groups for ep in metadata.entry_points(group=g)]
        entries: dict[tuple[str, str], Entry] = {}
        seen: set[tuple[str, str, str, str]] = set()
        for ep in eps:
            family = groups.get(ep.group)
            if family is None:
                continue
            dist = ep.dist.name if ep.dist is not None else "<unknown>"
            marker = (family, ep.name, ep.value, dist)
            if marker in seen:  # the same distribution found twice on sys.path
                continue
            seen.add(marker)
            key = (family, ep.name)
            new = Entry(ep.name, family, ep.value, dist, entry_point=ep)
            old = entries.get(key)
            if old is None:
                entries[key] = new
                continue
            message = (
                f"{family} {ep.name!r} is registered by two distributions: "
                f"{old.distribution!r} ({old.value}) and {dist!r} ({ep.value})"
            )
            old.error, old.loaded = message, True
            old.distribution = f"{old.distribution}, {dist}"
            warnings.warn(message, PluginWarning, stacklevel=3)
        self._entries = entries
        return entries

    def _load(self, entry: Entry) -> Entry:
        if entry.loaded:
            return entry
        entry.loaded = True
        try:
            obj = entry.entry_point.load()
        except Exception as exc:
            entry.error = f"import failed: {type(exc).__name__}: {exc}"
            entry.error += "\n" + "".join(traceback.format_exception(exc)[-3:]).rstrip()
        else:
            if not isinstance(obj, TechniqueSpec):
                entry.error = (
                    f"entry point {entry.value!r} is a {type(obj).__name__}, not a TechniqueSpec"
                )
            elif obj.family != entry.family or obj.name != entry.name:
                entry.error = (
                    f"entry point {entry.qualified_name!r} holds the spec "
                    f"{obj.qualified_name!r}; names and families must match"
                )
            else:
                entry.spec = obj
        if entry.error:
            first = entry.error.splitlines()[0]
            warnings.warn(
                f"techbench plugin {entry.qualified_name} from {entry.distribution!r} is skipped: {first}",
                PluginWarning,
                stacklevel=3,
            )
        return entry

    def entries(
        self, family: str | None = None, pattern: str | None = None, *, load: bool = True
    ) -> list[Entry]:
        """Registered entries, sorted by family then name; ``pattern`` is an fnmatch filter."""
        if family is not None and family not in FAMILIES:
            raise UnknownTechniqueError(_unknown("family", family, FAMILIES))
        out = [
            e
            for (fam, name), e in self._discover().items()
            if (family is None or fam == family)
            and (pattern is None or fnmatch.fnmatchcase(name, pattern))
        ]
        out.sort(key=lambda e: (FAMILIES.index(e.family), e.name))
        return [self._load(e) for e in out] if load else out

    def _find(self, name: str, family: str | None) -> Entry:
        if "/" in name:
            family, name = name.split("/", 1)
        if family is not None and family not in FAMILIES:
            raise UnknownTechniqueError(_unknown("family", family, FAMILIES))
        entries = self._discover()
        if family is not None:
            entry = entries.get((family, name))
            if entry is None:
                names = [n for (f, n) in entries if f == family]
                raise UnknownTechniqueError(_unknown(family, name, names))
            return entry
        matches = [e for (f, n), e in entries.items() if n == name]
        if len(matches) == 1:
            return matches[0]
        if matches:
            options = ", ".join(sorted(e.qualified_name for e in matches))
            raise UnknownTechniqueError(f"{name!r} is ambiguous; say which: {options}")
        raise UnknownTechniqueError(_unknown("technique", name, [n for (_, n) in entries]))

    def get_spec(self, name: str, family: str | None = None) -> TechniqueSpec:
        """The spec for ``name`` (or ``family/name``); loads its plugin on first use."""
        entry = self._load(self._find(name, family))
        if entry.spec is None:
            cls = (
                DuplicateTechniqueError
                if "two distributions" in (entry.error or "")
                else BrokenPluginError
            )
            raise cls(f"{entry.qualified_name}: {entry.error}")
        return entry.spec

    def source(self, name: str, family: str | None = None) -> dict[str, str | None]:
        """The distribution that registers ``name`` and its version (None when unknown), what a
        trial records so that a result can be traced to the plugin code that produced it."""
        entry = self._find(name, family)
        dist = getattr(entry.entry_point, "dist", None)
        return {"distribution": entry.distribution, "version": _version(dist)}

    def create(self, name: str, *args: Any, family: str | None = None, **overrides: Any) -> Any:
        """Build the fast implementation of ``name`` with validated hyper-parameter overrides."""
        return self.get_spec(name, family).create(*args, **overrides)

    def __iter__(self) -> Iterator[TechniqueSpec]:
        for entry in self.entries():
            if entry.spec is not None:
                yield entry.spec


@functools.cache
def _version(dist: Any) -> str | None:
    """A distribution's version, parsed from its metadata once (each read costs ~0.2 ms, and a
    stack records every technique of every member)."""
    return getattr(dist, "version", None) if dist is not None else None


def _unknown(kind: str, name: str, known: Iterable[str]) -> str:
    hint = did_you_mean(name, sorted(set(known)))
    return f"unknown {kind} {name!r}" + (f"; {hint}" if hint else "")


_default: Registry | None = None


def default_registry() -> Registry:
    """The process-wide registry over installed distributions (discovered once)."""
    global _default
    if _default is None:
        _default = Registry()
    return _default


def list_techniques(family: str | None = None, pattern: str | None = None) -> list[TechniqueSpec]:
    """Loaded specs, optionally filtered by family and an fnmatch pattern; broken ones skipped."""
    return [e.spec for e in default_registry().entries(family, pattern) if e.spec is not None]


def get_spec(name: str, family: str | None = None) -> TechniqueSpec:
    return default_registry().get_spec(name, family)


def create(name: str, *args: Any, family: str | None = None, **overrides: Any) -> Any:
    return default_registry().create(name, *args, family=family, **overrides)
