"""Every microbenchmark runs with one intra-op thread (torch and BLAS), so fast / reference /
torch's-own ratios are measured alike and stay meaningful on a shared, busy machine."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from techbench.testing.core import single_threaded


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    with single_threaded():
        yield
