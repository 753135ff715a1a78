"""Sharding for job arrays: disjoint, complete, balanced, independent of input order."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from techbench.plan.shard import parse_shard, shard


@settings(max_examples=200, deadline=None)
@given(
    ids=st.lists(st.text("0123456789abcdef", min_size=16, max_size=16), unique=True, max_size=300),
    n=st.integers(1, 40),
    seed=st.randoms(use_true_random=False),
)
def test_shards_are_disjoint_and_cover_the_matrix(ids, n, seed):
    shuffled = list(ids)
    seed.shuffle(shuffled)
    parts = [shard(ids, k, n, key=str) for k in range(1, n + 1)]
    again = [shard(shuffled, k, n, key=str) for k in range(1, n + 1)]
    assert parts == again  # the partition depends on the trials, not on their order
    flat = [t for p in parts for t in p]
    assert sorted(flat) == sorted(ids) and len(flat) == len(set(flat))
    sizes = [len(p) for p in parts]
    assert max(sizes) - min(sizes) <= 1


@pytest.mark.parametrize(("text", "expected"), [("1/4", (1, 4)), (" 3 / 3 ", (3, 3))])
def test_parse_shard(text, expected):
    assert parse_shard(text) == expected


@pytest.mark.parametrize("text", ["0/4", "5/4", "1/0", "a/b", "1-4", "-1/2"])
def test_parse_shard_rejects_bad_input(text):
    with pytest.raises(ValueError, match="--shard"):
        parse_shard(text)
