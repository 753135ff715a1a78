"""The conformance suite: every technique against its own reference.

Use it without pytest::

    from techbench.testing import check_technique
    results = check_technique("relu")          # a list of CheckResult
    assert all(r.passed for r in results)

or from a third-party package's tests, the way scikit-learn authors use
``parametrize_with_checks``::

    from techbench.testing import parametrize_with_checks

    @parametrize_with_checks(["my_activation", "my_optimizer"])
    def test_conformance(technique, check):
        check(technique)

A check the technique is known to fail is declared with its reason,
``parametrize_with_checks([...], expected_failed_checks={"gradcheck": "why"})``, and becomes a
strict xfail.

Each family's checks live in ``techbench.testing.<family>`` and state the reference protocol
they expect. The engine itself has a reference too: ``techbench.testing.reference_loop`` trains
one trial in a plain PyTorch loop written from the trial contract.
"""

from .core import (
    Check,
    CheckFailure,
    CheckResult,
    check_technique,
    checks_for,
    failed_checks,
    parametrize_with_checks,
    single_threaded,
)

__all__ = [
    "Check",
    "CheckFailure",
    "CheckResult",
    "check_technique",
    "checks_for",
    "failed_checks",
    "parametrize_with_checks",
    "single_threaded",
]
