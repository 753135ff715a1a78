"""Check collection and execution, shared by every family.

A check is a named callable that takes a spec and raises :class:`CheckFailure` (an
``AssertionError``) with a message saying what differed, by how much and at which input. The
checks for a family come from ``techbench.testing.<family>.checks(spec)``; the contract checks
here (summary, citation, reference, valid defaults) apply to every technique.
"""

from __future__ import annotations

import contextlib
import importlib
import time
import traceback
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..techniques.spec import TechniqueSpec


class CheckFailure(AssertionError):
    """A conformance check found the fast implementation and its reference disagreeing."""


@contextlib.contextmanager
def single_threaded() -> Iterator[None]:
    """One intra-op thread for torch and BLAS, restored afterwards.

    Why every check runs this way: its tensors are tiny, and on a busy machine threads waiting for
    each other made small ops 10-100x slower (measured on a loaded 2-core box); one thread also
    makes a check's float results independent of the machine's core count.
    """
    import torch

    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # shipped with scikit-learn; without it only torch is limited
        blas: Any = contextlib.nullcontext()
    else:
        blas = threadpool_limits(1)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with blas:
            yield
    finally:
        torch.set_num_threads(threads)


@dataclass(frozen=True)
class Check:
    """A named conformance check; calling it with a spec runs it."""

    name: str
    func: Callable[[TechniqueSpec], None]

    def __call__(self, spec: TechniqueSpec | str) -> None:
        with single_threaded():
            self.func(_as_spec(spec))

    def __repr__(self) -> str:
        return f"Check({self.name})"


@dataclass(frozen=True)
class CheckResult:
    technique: str
    family: str
    check: str
    passed: bool
    message: str
    seconds: float

    def as_dict(self) -> dict[str, Any]:
        return {
            "technique": self.technique,
            "family": self.family,
            "check": self.check,
            "passed": self.passed,
            "message": self.message,
            "seconds": round(self.seconds, 4),
        }


def _as_spec(spec: TechniqueSpec | str) -> TechniqueSpec:
    if isinstance(spec, TechniqueSpec):
        return spec
    from ..techniques.registry import get_spec

    return get_spec(spec)


def _check_contract(spec: TechniqueSpec) -> None:
    problems = []
    if spec.is_technique and spec.reference is None:
        problems.append("has no reference implementation")
    if spec.is_technique and not spec.citation:
        problems.append("has no citation")
    try:
        spec.load_fast()
    except Exception as exc:
        problems.append(f"fast implementation {spec.fast!r} does not load: {exc}")
    if spec.reference is not None:
        try:
            spec.load_reference()
        except Exception as exc:
            problems.append(f"reference {spec.reference!r} does not load: {exc}")
    if spec.stacked is not None:
        try:
            spec.load_stacked()
        except Exception as exc:
            problems.append(f"stacked implementation {spec.stacked!r} does not load: {exc}")
    if problems:
        raise CheckFailure(f"{spec.qualified_name} " + "; ".join(problems))


def family_module(family: str) -> Any:
    return importlib.import_module(f"{__package__}.{family}")


def checks_for(spec: TechniqueSpec | str) -> list[Check]:
    """The contract check plus the family's conformance checks for ``spec``."""
    spec = _as_spec(spec)
    family_checks: Sequence[Check] = family_module(spec.family).checks(spec)
    return [Check("contract", _check_contract), *family_checks]


def check_technique(spec: TechniqueSpec | str) -> list[CheckResult]:
    """Run every check for ``spec`` and return one result per check; never raises for a failure."""
    spec = _as_spec(spec)
    results = []
    try:
        checks = checks_for(spec)
    except Exception as exc:
        return [
            CheckResult(spec.qualified_name, spec.family, "collect", False, _describe(exc), 0.0)
        ]
    for check in checks:
        start = time.perf_counter()
        try:
            check(spec)
        except Exception as exc:
            results.append(
                CheckResult(
                    spec.qualified_name,
                    spec.family,
                    check.name,
                    False,
                    _describe(exc),
                    time.perf_counter() - start,
                )
            )
        else:
            results.append(
                CheckResult(
                    spec.qualified_name,
                    spec.family,
                    check.name,
                    True,
                    "",
                    time.perf_counter() - start,
                )
            )
    return results


def failed_checks(spec: TechniqueSpec | str) -> dict[str, str]:
    """``{check name: message}`` for each check ``spec`` fails; empty when it passes them all.

    The one-line way to assert that a deliberately broken plugin fails the check it should,
    with the message it should (see :func:`check_technique` for the full results).
    """
    return {r.check: r.message for r in check_technique(spec) if not r.passed}


def _describe(exc: BaseException) -> str:
    if isinstance(exc, CheckFailure):
        return str(exc)
    tb = traceback.format_exception(exc)
    return f"{type(exc).__name__}: {exc}\n" + "".join(tb[-3:]).rstrip()


def _raiser(exc: Exception) -> Callable[[TechniqueSpec], None]:
    def collect(spec: TechniqueSpec) -> None:
        raise CheckFailure(
            f"{spec.qualified_name}: checks could not be collected: {_describe(exc)}"
        )

    return collect


def parametrize_with_checks(
    techniques: Iterable[TechniqueSpec | str],
    *,
    expected_failed_checks: Mapping[str, str]
    | Callable[[TechniqueSpec], Mapping[str, str]]
    | None = None,
) -> Any:
    """A ``pytest.mark.parametrize`` over (technique, check) pairs, one test per check.

    Ids read ``family/name-check``, so a failure names the technique and the check.

    ``expected_failed_checks`` maps a check name to the reason it is known to fail (a plugin
    whose technique deliberately departs from a check, or a bug not fixed yet), or is a callable
    giving that mapping per technique, as scikit-learn's ``parametrize_with_checks`` offers third
    parties. Those pairs are marked ``xfail(strict=True)`` with the reason: the test suite stays
    green while the failure is known, and turns red the day the check passes, so a stale entry
    cannot outlive its bug. A name that is no check of any given technique is a ``ValueError``
    (a typo would otherwise silently expect nothing).
    """
    import pytest

    params = []
    named: set[str] = set()
    known: set[str] = set()
    for technique in techniques:
        spec = _as_spec(technique)
        try:
            checks = checks_for(spec)
        except Exception as exc:  # report as a failing test, don't break collection
            checks = [Check("collect", _raiser(exc))]
        if callable(expected_failed_checks):
            expected = dict(expected_failed_checks(spec))
        else:
            expected = dict(expected_failed_checks or {})
        named |= expected.keys()
        for check in checks:
            known.add(check.name)
            marks = []
            if check.name in expected:
                marks.append(pytest.mark.xfail(strict=True, reason=expected[check.name]))
            params.append(
                pytest.param(spec, check, id=f"{spec.qualified_name}-{check.name}", marks=marks)
            )
    unknown = sorted(named - known)
    if unknown:
        raise ValueError(
            f"expected_failed_checks names no check of these techniques: {', '.join(unknown)}"
            f" (checks: {', '.join(sorted(known))})"
        )
    return pytest.mark.parametrize(("technique", "check"), params)
