"""Entry-point discovery, lazy loading, broken-plugin isolation and name lookup.

Plugins register a :class:`~techbench.techniques.spec.TechniqueSpec` under the entry-point group
``techbench.<family>s`` (``techbench.activations``, ...); the entry point's name is the public
name. Discovery reads only distribution metadata; a spec is imported the first time it is asked
for. A plugin that fails to import or is not a valid spec is recorded with its error and a
:class:`PluginWarning`, and the rest keeps working. Unknown names get "did you mean".

Every technique is reachable as ``<distribution>:<name>`` (``techbench:grad_noise``,
``mypkg:grad_noise``), so installing a package can never make a technique unreachable. The plain
name reaches the one registration of that name; when several distributions register it, the
built-in (distribution ``techbench``) keeps it, so a shipped matrix keeps working, and without a
built-in the plain name is an error naming every qualified name. :meth:`Registry.clashes` lists
them (``techbench list`` shows them as warnings).

Lookups accept ``name``, ``family/name``, ``dist:name`` or ``family/dist:name``; the API mirrors
timm's factories: :func:`list_techniques`, :func:`get_spec`, :func:`create`.
"""

from __future__ import annotations

import fnmatch
import functools
import re
import traceback
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any

from ..errors import did_you_mean
from .spec import FAMILIES, TechniqueError, TechniqueSpec

__all__ = [
    "BUILTIN_DISTRIBUTION",
    "BrokenPluginError",
    "DuplicateTechniqueError",
    "Entry",
    "PluginWarning",
    "Registry",
    "UnknownTechniqueError",
    "create",
    "default_registry",
    "get_spec",
    "group_of",
    "list_techniques",
    "normalize_distribution",
    "split_name",
]

BUILTIN_DISTRIBUTION = "techbench"


class PluginWarning(UserWarning):
    """A plugin could not be loaded; it is skipped and shown by ``techbench list``."""


class UnknownTechniqueError(TechniqueError, KeyError):
    """No technique of that name; the message suggests close names."""

    def __str__(self) -> str:
        return str(self.args[0])


class DuplicateTechniqueError(TechniqueError):
    """Several third-party distributions register the same family/name and none is built in:
    the plain name is ambiguous (each stays reachable as ``<distribution>:<name>``)."""


class BrokenPluginError(TechniqueError):
    """The plugin behind a name failed to load."""


def group_of(family: str) -> str:
    return f"techbench.{family}s"


def normalize_distribution(name: str) -> str:
    """The PEP 503 form of a distribution name, so ``My_Pkg:x`` and ``my-pkg:x`` are one name."""
    return re.sub(r"[-_.]+", "-", name).lower()


def split_name(text: str, family: str | None = None) -> tuple[str | None, str | None, str]:
    """``(family, distribution, name)`` of ``name``, ``family/name``, ``dist:name``,
    ``family/dist:name`` or ``dist:family/name``; a family in the text overrides ``family``."""
    dist: str | None = None
    if ":" in text:
        dist, text = text.split(":", 1)
        if "/" in dist:
            family, dist = dist.split("/", 1)
    if "/" in text:
        family, text = text.split("/", 1)
    return family, dist, text


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
        """``family/name`` (what check results and messages are labelled with)."""
        return f"{self.family}/{self.name}"

    @property
    def dist_key(self) -> str:
        return normalize_distribution(self.distribution)

    @property
    def full_name(self) -> str:
        """``<distribution>:<name>``, which reaches this entry whatever else is installed."""
        return f"{self.dist_key}:{self.name}"

    @property
    def builtin(self) -> bool:
        return self.dist_key == BUILTIN_DISTRIBUTION

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
        self._entries: dict[tuple[str, str], list[Entry]] | None = None

    def _discover(self) -> dict[tuple[str, str], list[Entry]]:
        """``{(family, name): entries}``, the built-in first, then by distribution."""
        if self._entries is not None:
            return self._entries
        groups = {group_of(f): f for f in FAMILIES}
        if self._injected is not None:
            eps: Iterable[metadata.EntryPoint] = self._injected
        else:
            eps = [ep for g in groups for ep in metadata.entry_points(group=g)]
        entries: dict[tuple[str, str], list[Entry]] = {}
        for ep in eps:
            family = groups.get(ep.group)
            if family is None:
                continue
            dist = ep.dist.name if ep.dist is not None else "<unknown>"
            new = Entry(ep.name, family, ep.value, dist, entry_point=ep)
            same = entries.setdefault((family, ep.name), [])
            if all(e.dist_key != new.dist_key for e in same):  # else: one dist found twice
                same.append(new)
        for group in entries.values():
            group.sort(key=lambda e: (not e.builtin, e.dist_key))
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
        """Registered entries, sorted by family, name, then the built-in first; ``pattern`` is
        an fnmatch filter on the plain or the ``dist:name`` form."""
        if family is not None and family not in FAMILIES:
            raise UnknownTechniqueError(_unknown("family", family, FAMILIES))
        out = [
            e
            for (fam, _), group in self._discover().items()
            for e in group
            if (family is None or fam == family)
            and (
                pattern is None
                or fnmatch.fnmatchcase(e.name, pattern)
                or fnmatch.fnmatchcase(e.full_name, pattern)
            )
        ]
        out.sort(key=lambda e: (FAMILIES.index(e.family), e.name, not e.builtin, e.dist_key))
        return [self._load(e) for e in out] if load else out

    def clashes(self) -> dict[tuple[str, str], str]:
        """``{(family, name): message}`` for each name several distributions register: who
        keeps the plain name, and the qualified names that reach each."""
        return {key: _clash_message(g) for key, g in self._discover().items() if len(g) > 1}

    def plain_name(self, entry: Entry) -> bool:
        """Whether the plain name reaches ``entry`` (it is the only one, or the built-in)."""
        group = self._discover().get((entry.family, entry.name), [])
        return group[:1] == [entry] and (len(group) == 1 or entry.builtin)

    def resolve(self, name: str, family: str | None = None) -> Entry:
        """The entry ``name`` reaches (not loaded); ``UnknownTechniqueError`` with close names,
        ``DuplicateTechniqueError`` for a plain name that several third-party packages register."""
        family, dist, short = split_name(name, family)
        if family is not None and family not in FAMILIES:
            raise UnknownTechniqueError(_unknown("family", family, FAMILIES))
        entries = self._discover()
        if family is not None:  # one dict lookup: a stack resolves every technique of each member
            groups = [entries[(family, short)]] if (family, short) in entries else []
        else:
            groups = [g for (_, n), g in entries.items() if n == short]
        if dist is not None:
            hits = [e for g in groups for e in g if e.dist_key == normalize_distribution(dist)]
            if len(hits) == 1:
                return hits[0]
            if hits:
                options = ", ".join(sorted(f"{e.family}/{e.full_name}" for e in hits))
                raise UnknownTechniqueError(f"{name!r} is ambiguous; say which: {options}")
            known = [e.full_name for (f, _), g in entries.items() if family in (None, f) for e in g]
            raise UnknownTechniqueError(_unknown(family or "technique", name, known))
        if len(groups) == 1:
            group = groups[0]
            if len(group) > 1 and not group[0].builtin:
                raise DuplicateTechniqueError(_clash_message(group))
            return group[0]
        if groups:
            options = ", ".join(sorted(g[0].qualified_name for g in groups))
            raise UnknownTechniqueError(f"{name!r} is ambiguous; say which: {options}")
        known = [n for (f, n) in entries if family in (None, f)]
        raise UnknownTechniqueError(_unknown(family or "technique", short, known))

    def entry(self, name: str, family: str | None = None) -> Entry:
        """The loaded entry ``name`` reaches; ``BrokenPluginError`` if its plugin failed."""
        entry = self._load(self.resolve(name, family))
        if entry.spec is None:
            raise BrokenPluginError(f"{entry.qualified_name} [{entry.distribution}]: {entry.error}")
        return entry

    def config_name(self, name: str, family: str | None = None) -> str:
        """The name a trial's config records for ``name``: the plain name when written plain or
        when the built-in is meant (``techbench:relu`` is ``relu``, so built-in trial ids never
        depend on the spelling), else ``<distribution>:<name>``."""
        entry = self.resolve(name, family)
        written_dist = split_name(name, family)[1]
        return entry.name if written_dist is None or entry.builtin else entry.full_name

    def get_spec(self, name: str, family: str | None = None) -> TechniqueSpec:
        """The spec for ``name`` (see :meth:`resolve`); loads its plugin on first use."""
        spec = self.entry(name, family).spec
        assert spec is not None
        return spec

    def source(self, name: str, family: str | None = None) -> dict[str, str | None]:
        """The distribution that registers ``name`` and its version (None when unknown), what a
        trial records so that a result can be traced to the plugin code that produced it."""
        entry = self.resolve(name, family)
        dist = getattr(entry.entry_point, "dist", None)
        return {"distribution": entry.distribution, "version": _version(dist)}

    def create(self, name: str, *args: Any, family: str | None = None, **overrides: Any) -> Any:
        """Build the fast implementation of ``name`` with validated hyper-parameter overrides."""
        return self.get_spec(name, family).create(*args, **overrides)

    def __iter__(self) -> Iterator[TechniqueSpec]:
        for entry in self.entries():
            if entry.spec is not None:
                yield entry.spec


def _clash_message(group: list[Entry]) -> str:
    first = group[0]
    names = " or ".join(repr(e.full_name) for e in group)
    if first.builtin:
        return (
            f"{first.family} {first.name!r} is registered by {len(group)} distributions; "
            "the plain name is the built-in's, the others are reached as "
            + ", ".join(repr(e.full_name) for e in group[1:])
        )
    return (
        f"{first.family} {first.name!r} is registered by {len(group)} distributions, "
        f"so the plain name is ambiguous; say which: {names}"
    )


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
