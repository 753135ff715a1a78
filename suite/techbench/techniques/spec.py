"""The technique contract: one frozen spec per technique.

A spec is light metadata (name, family, summary, citation, typed hyper-parameters, declared
properties) plus two *lazy* references: the fast implementation and the reference written from
the math. References may be objects or ``"module:attr"`` strings resolved on first use, so that
discovering and listing plugins never imports torch (a 2 s import): ``techbench list`` stays fast.

Why frozen: a spec is shared by the registry, the conformance suite and every trial; nothing may
mutate it behind their backs. Hyper-parameters are validated at creation time so that a bad value
fails with the technique, the parameter, the value and what is allowed, not deep inside torch.
"""

from __future__ import annotations

import ast
import importlib
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

__all__ = [
    "FAMILIES",
    "SCALES",
    "TECHNIQUE_FAMILIES",
    "Param",
    "ParamError",
    "TechniqueError",
    "TechniqueSpec",
    "format_technique_arg",
    "parse_technique_arg",
    "resolve",
]

FAMILIES: tuple[str, ...] = (
    "activation",
    "initializer",
    "normalizer",
    "regularizer",
    "optimizer",
    "parametrization",
    "dataset",
    "model",
    "schedule",
    "preprocessor",
)
"""Every family; the first six are the technique families, the rest the workbench."""

TECHNIQUE_FAMILIES: tuple[str, ...] = FAMILIES[:6]


class TechniqueError(Exception):
    """Base class of every error about a technique or its plugin."""


class ParamError(TechniqueError, ValueError):
    """A hyper-parameter of the wrong type, out of range, or unknown."""


def resolve(ref: Any) -> Any:
    """Resolve a ``"package.module:qualname"`` string to the object it names; pass others through."""
    if not isinstance(ref, str):
        return ref
    module_name, sep, qualname = ref.partition(":")
    if not sep or not module_name or not qualname:
        raise TechniqueError(f"reference {ref!r} is not of the form 'module:attr'")
    obj: Any = importlib.import_module(module_name)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return obj


_TYPE_NAMES = {bool: "bool", int: "int", float: "float", str: "str"}

SCALES: tuple[str, ...] = ("linear", "log", "log1m")
"""Scales of a search range: x, log x, or log(1 - x) is uniform."""


@dataclass(frozen=True, kw_only=True)
class Param:
    """A typed hyper-parameter with its default and valid values.

    ``low``/``high`` bound numbers (inclusive unless ``low_open``/``high_open``); ``choices``
    restricts to a finite set. ``None`` is allowed only when ``optional`` is set.

    ``search = (low, high)`` is the range a tuner searches (numbers only), distinct from the valid
    range, on ``scale``: ``"linear"``, ``"log"`` (uniform in log x: learning rates, decay
    strengths) or ``"log1m"`` (uniform in log(1 - x): momenta and betas, whose effect lives in the
    averaging horizon 1 / (1 - x); Choi et al. 2019, On Empirical Comparisons of Optimizers).
    :meth:`from_unit` maps a point of [0, 1] onto it, :meth:`to_unit` back.
    """

    name: str
    type: type
    default: Any
    doc: str = ""
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    choices: tuple[Any, ...] | None = None
    optional: bool = False
    search: tuple[float, float] | None = None
    scale: str = "linear"

    def __post_init__(self) -> None:
        if self.type not in _TYPE_NAMES:
            raise TypeError(f"parameter {self.name!r}: type must be one of bool, int, float, str")
        if self.scale not in SCALES:
            raise TypeError(f"parameter {self.name!r}: scale must be one of {', '.join(SCALES)}")
        if self.search is not None:
            self._check_search()

    def _check_search(self) -> None:
        where = f"parameter {self.name!r}: search"
        if self.type not in (int, float) or self.choices is not None:
            raise TypeError(f"{where} needs an int or float parameter without choices")
        assert self.search is not None
        lo, hi = (float(x) for x in self.search)
        if not lo < hi:
            raise TypeError(f"{where} must be (low, high) with low < high, got {self.search}")
        for end in (lo, hi):
            try:
                self.validate("search", int(end) if self.type is int else end)
            except ParamError:
                raise TypeError(
                    f"{where} {self.search} leaves the valid range {self.allowed()}"
                ) from None
        if self.scale == "log" and lo <= 0:
            raise TypeError(f"{where}: a log scale needs low > 0, got {lo}")
        if self.scale == "log1m" and hi >= 1:
            raise TypeError(f"{where}: a log1m scale needs high < 1, got {hi}")
        object.__setattr__(self, "search", (lo, hi))

    def _warp(self, x: float) -> float:
        if self.scale == "log":
            return math.log(x)
        if self.scale == "log1m":
            return -math.log1p(-x)
        return x

    def _unwarp(self, y: float) -> float:
        if self.scale == "log":
            return math.exp(y)
        if self.scale == "log1m":
            return -math.expm1(-y)
        return y

    def from_unit(self, u: float, digits: int = 4) -> Any:
        """The search-range value at ``u`` in [0, 1] on the declared scale.

        Floats are rounded to ``digits`` significant digits (in 1 - x for log1m), so labels stay
        readable and equal points hash equally; ints round to the nearest integer.
        """
        if self.search is None:
            raise ParamError(f"parameter {self.name!r} declares no search range")
        a, b = (self._warp(x) for x in self.search)
        x = self._unwarp(a + min(1.0, max(0.0, u)) * (b - a))
        lo, hi = self.search
        if self.type is int:
            return int(min(hi, max(lo, round(x))))
        if self.scale == "log1m":
            x = round(1.0 - float(f"{1.0 - x:.{digits}g}"), 12)
        else:
            x = float(f"{x:.{digits}g}")
        return min(hi, max(lo, x))

    def to_unit(self, value: float) -> float:
        """Inverse of :meth:`from_unit`: where ``value`` lies in the search range, in [0, 1]."""
        if self.search is None:
            raise ParamError(f"parameter {self.name!r} declares no search range")
        a, b = (self._warp(x) for x in self.search)
        return (self._warp(float(value)) - a) / (b - a)

    def allowed(self) -> str:
        """Describe the valid values in words, for error messages and docs."""
        if self.choices is not None:
            text = "one of " + ", ".join(repr(c) for c in self.choices)
        else:
            text = _TYPE_NAMES[self.type]
            if self.low is not None or self.high is not None:
                lo = "-inf" if self.low is None else repr(self.low)
                hi = "inf" if self.high is None else repr(self.high)
                left = "(" if self.low_open or self.low is None else "["
                right = ")" if self.high_open or self.high is None else "]"
                text += f" in {left}{lo}, {hi}{right}"
        return text + (" or None" if self.optional else "")

    def describe(self) -> dict[str, Any]:
        """JSON-safe: name, type, default, the valid range (``low``/``high`` with openness,
        ``choices``, ``optional``), the same in words (``allowed``), the search range and scale
        (``[tune]``; None when not searched) and ``doc``."""
        return {
            "name": self.name,
            "type": _TYPE_NAMES[self.type],
            "default": self.default,
            "low": self.low,
            "high": self.high,
            "low_open": self.low_open,
            "high_open": self.high_open,
            "choices": list(self.choices) if self.choices is not None else None,
            "optional": self.optional,
            "allowed": self.allowed(),
            "search": list(self.search) if self.search is not None else None,
            "scale": self.scale if self.search is not None else None,
            "doc": self.doc,
        }

    def validate(self, technique: str, value: Any) -> Any:
        """Return ``value`` coerced to the declared type, or raise :class:`ParamError`."""

        def fail(why: str) -> ParamError:
            return ParamError(
                f"{technique}: parameter {self.name!r} got {value!r} ({why}); allowed: {self.allowed()}"
            )

        if value is None:
            if self.optional:
                return None
            raise fail("None is not allowed")
        if self.type is bool:
            if not isinstance(value, bool):
                raise fail(f"expected bool, got {type(value).__name__}")
        elif self.type is int:
            if isinstance(value, bool) or not isinstance(value, int):
                if isinstance(value, float) and value.is_integer():
                    value = int(value)
                else:
                    raise fail(f"expected int, got {type(value).__name__}")
        elif self.type is float:
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise fail(f"expected float, got {type(value).__name__}")
            value = float(value)
            if math.isnan(value):
                raise fail("NaN is not allowed")
        elif self.type is str and not isinstance(value, str):
            raise fail(f"expected str, got {type(value).__name__}")
        if self.choices is not None and value not in self.choices:
            raise fail("not an allowed choice")
        if self.low is not None and (value < self.low or (self.low_open and value == self.low)):
            raise fail("below the allowed range")
        if self.high is not None and (value > self.high or (self.high_open and value == self.high)):
            raise fail("above the allowed range")
        return value


def _freeze(mapping: Mapping[str, Any] | None) -> Mapping[str, Any]:
    return MappingProxyType(dict(mapping or {}))


@dataclass(frozen=True, kw_only=True)
class TechniqueSpec:
    """What every plugin provides; the entry point's object is one of these.

    ``fast`` is the implementation training uses (a factory: ``create`` calls it with the
    structural arguments and the validated hyper-parameters); ``reference`` is the version written
    from the math that the conformance suite compares it with. ``stacked`` (optional) is a fast
    implementation over the stacked state of K trials whose numeric hyper-parameters are
    per-member tensors (its signature per family is in :mod:`techbench.techniques.families`; the population
    engine uses it so that members differing in, say, ``lr`` still train as one optimizer; a
    conformance check proves member k of it equals ``fast`` with member k's values). All three
    may be ``"module:attr"`` strings. ``properties`` holds the family's declared properties (see ``techbench.techniques.families``);
    a property that depends on the hyper-parameters (Swish-beta's output range depends on beta)
    is a callable of them, ``lambda beta, **_: (-0.2785 / beta, math.inf)``: read properties
    through :meth:`properties_for`, which returns the values at given hyper-parameters.
    """

    name: str
    family: str
    summary: str
    fast: Any
    reference: Any = None
    stacked: Any = None
    citation: str | None = None
    params: tuple[Param, ...] = ()
    properties: Mapping[str, Any] = field(default_factory=dict)
    tags: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.family not in FAMILIES:
            raise TechniqueError(
                f"technique {self.name!r}: unknown family {self.family!r}; one of {', '.join(FAMILIES)}"
            )
        if not re.fullmatch(r"[a-z][a-z0-9_.\-]*", self.name):
            raise TechniqueError(
                f"technique name {self.name!r} must be lower case letters, digits, '_', '-' or '.'"
            )
        if not self.summary or "\n" in self.summary:
            raise TechniqueError(f"technique {self.name!r}: summary must be one non-empty line")
        names = [p.name for p in self.params]
        if len(set(names)) != len(names):
            raise TechniqueError(f"technique {self.name!r}: duplicate parameter names {names}")
        object.__setattr__(self, "params", tuple(self.params))
        object.__setattr__(self, "properties", _freeze(self.properties))
        for p in self.params:
            p.validate(self.qualified_name, p.default)

    @property
    def qualified_name(self) -> str:
        """``family/name``: unique across families (``none`` is both a normalizer and a regularizer)."""
        return f"{self.family}/{self.name}"

    @property
    def is_technique(self) -> bool:
        """True for the six technique families, which must carry a reference."""
        return self.family in TECHNIQUE_FAMILIES

    def param(self, name: str) -> Param:
        for p in self.params:
            if p.name == name:
                return p
        raise ParamError(
            f"{self.qualified_name}: unknown parameter {name!r}; parameters: "
            + (", ".join(p.name for p in self.params) or "none")
        )

    def defaults(self) -> dict[str, Any]:
        return {p.name: p.default for p in self.params}

    def hyperparams(
        self, overrides: Mapping[str, Any] | None = None, /, **kw: Any
    ) -> dict[str, Any]:
        """Defaults updated with validated overrides; unknown names raise with the known ones."""
        values = self.defaults()
        for key, value in {**(overrides or {}), **kw}.items():
            values[key] = self.param(key).validate(self.qualified_name, value)
        return values

    def properties_for(
        self, overrides: Mapping[str, Any] | None = None, /, **kw: Any
    ) -> dict[str, Any]:
        """The declared properties at these hyper-parameters (defaults updated with overrides).

        Why: a property may be a function of the hyper-parameters; the conformance checks and
        the gradient-health thresholds must use its value for the trial's settings, not at the
        defaults. A callable property is called with the full validated hyper-parameters as
        keyword arguments; other values are returned as declared.
        """
        hp = self.hyperparams(overrides, **kw)
        return {k: v(**hp) if callable(v) else v for k, v in self.properties.items()}

    def load_fast(self) -> Any:
        return resolve(self.fast)

    def load_reference(self) -> Any:
        return resolve(self.reference)

    def load_stacked(self) -> Any:
        """The stacked implementation (None when the technique declares none)."""
        return None if self.stacked is None else resolve(self.stacked)

    def create(self, *args: Any, **overrides: Any) -> Any:
        """Build the fast implementation: ``fast(*args, **hyperparams)``.

        ``args`` are structural (a normalizer's feature count, an optimizer's parameters);
        ``overrides`` are hyper-parameters, validated against the declared ``params``.
        """
        return self.load_fast()(*args, **self.hyperparams(overrides))

    def describe(self) -> dict[str, Any]:
        """A JSON-safe description (used by ``techbench list --json`` and the report)."""
        return {
            "name": self.name,
            "family": self.family,
            "summary": self.summary,
            "citation": self.citation,
            "params": [p.describe() for p in self.params],
            "properties": {k: _jsonable(v) for k, v in self.properties_for().items()},
            "param_dependent_properties": [k for k, v in self.properties.items() if callable(v)],
            "tags": list(self.tags),
        }


def _jsonable(value: Any) -> Any:
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return repr(value)


_CALL = re.compile(r"^\s*([A-Za-z][\w.\-/:]*)\s*(?:\((.*)\))?\s*$", re.S)


def parse_technique_arg(text: str) -> tuple[str, dict[str, Any]]:
    """Parse ``"normal(std=0.01)"`` into ``("normal", {"std": 0.01})`` without eval.

    Values are Python literals (numbers, strings, booleans, None) read with ``ast.literal_eval``.
    """
    match = _CALL.match(text)
    if not match:
        raise ParamError(f"cannot parse technique {text!r}; expected NAME or NAME(key=value, ...)")
    name, inner = match.group(1), match.group(2)
    if not inner or not inner.strip():
        return name, {}
    try:
        call = ast.parse(f"f({inner})", mode="eval").body
    except SyntaxError as exc:
        raise ParamError(f"cannot parse arguments of {text!r}: {exc.msg}") from None
    assert isinstance(call, ast.Call)
    if call.args:
        raise ParamError(f"{text!r}: arguments must be named (key=value)")
    params: dict[str, Any] = {}
    for kw in call.keywords:
        if kw.arg is None:
            raise ParamError(f"{text!r}: '**' is not allowed")
        try:
            params[kw.arg] = ast.literal_eval(kw.value)
        except ValueError:
            raise ParamError(
                f"{text!r}: value of {kw.arg!r} must be a literal (number, string, True/False/None)"
            ) from None
    return name, params


def format_technique_arg(name: str, params: Mapping[str, Any]) -> str:
    """Inverse of :func:`parse_technique_arg`: ``normal(std=0.01)``."""
    if not params:
        return name
    return f"{name}(" + ", ".join(f"{k}={v!r}" for k, v in params.items()) + ")"


Factory = Callable[..., Any]
