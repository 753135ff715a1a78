"""Every registered technique: loads, carries a reference, a citation and conformance checks.

The conformance suite itself runs here once per (technique, check) through the same
``parametrize_with_checks`` that third-party authors use.
"""

from __future__ import annotations

import warnings

import pytest

from techbench.techniques.registry import PluginWarning, default_registry
from techbench.techniques.spec import TECHNIQUE_FAMILIES
from techbench.testing import checks_for, parametrize_with_checks

MINIMUM = {
    "activation": 12,
    "initializer": 12,
    "normalizer": 5,
    "regularizer": 8,
    "optimizer": 9,
    "schedule": 4,
    "preprocessor": 4,
    "dataset": 5,
    "model": 3,
}


def builtin_entries():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PluginWarning)
        return [e for e in default_registry().entries() if e.distribution == "techbench"]


BUILTINS = builtin_entries()
LOADED = [e.spec for e in BUILTINS if e.spec is not None]


@pytest.mark.parametrize("entry", BUILTINS, ids=lambda e: e.qualified_name)
def test_builtin_loads(entry):
    assert entry.status == "ok", entry.error


@pytest.mark.parametrize("family", list(MINIMUM))
def test_family_counts_meet_the_library_minimum(family):
    names = [s.name for s in LOADED if s.family == family]
    assert len(names) >= MINIMUM[family], f"{family}: only {names}"


@pytest.mark.parametrize("spec", LOADED, ids=lambda s: s.qualified_name)
def test_technique_has_reference_citation_and_checks(spec):
    if spec.family in TECHNIQUE_FAMILIES:
        assert spec.reference is not None, "no reference implementation"
        assert spec.citation, "no citation"
    names = [c.name for c in checks_for(spec)]
    assert names[0] == "contract" and len(names) >= 2, f"no conformance checks beyond {names}"


@parametrize_with_checks(LOADED)
def test_conformance(technique, check):
    check(technique)
