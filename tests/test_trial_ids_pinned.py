"""Every shipped matrix expands to the trial ids it had before the frozen ``Trial`` (issue 23).

``data/shipped_trial_ids.json`` was computed by the base commit 9a06e74 in a separate checkout
(``git archive 9a06e74 suite plugins``), so it is an independent record: a change to the
planners, the config completion or the hash that moves any id fails here. Tuned matrices pin
their search trials and the finals of a fixed selection (each study's last point).

Added later, each pinned when it was added (issue 24: ``scaling``, ``scaling-gpu`` and the
``muon`` group of ``optimizers-tuned``, whose other 160 search and 200 final ids are the base
commit's, in the same order).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from techbench.plan.matrix import builtin_matrices, load_matrix
from techbench.plan.tune import Selection

PINNED = json.loads((Path(__file__).parent / "data" / "shipped_trial_ids.json").read_text())


def test_every_shipped_matrix_is_pinned() -> None:
    assert sorted(builtin_matrices()) == sorted(PINNED)


@pytest.mark.parametrize("name", sorted(PINNED))
def test_shipped_matrix_ids_unchanged(name: str) -> None:
    m = load_matrix(name)
    assert [t.id for t in m.planned()] == PINNED[name]["trials"]
    if m.tune is None:
        assert "finals_last_point" not in PINNED[name]
        return
    plan = m.tune_plan()
    selection = [
        Selection(g.id, s, dict(g.points[s][-1]), len(g.points[s]) - 1, 0.0, len(g.points[s]), 0)
        for g in plan.groups
        for s in range(plan.spec.studies)
    ]
    assert [t.id for t in plan.final_trials(selection)] == PINNED[name]["finals_last_point"]
