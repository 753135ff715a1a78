"""Search points: where in a technique's search space the tuner looks, fixed by the spec alone.

A search space is a list of :class:`Dimension` (a technique axis, a hyper-parameter and its
:class:`~techbench.techniques.spec.Param` with a declared ``search`` range and scale). :func:`unit_points`
draws ``n`` points in the unit cube ``[0, 1]^d`` and :meth:`Dimension.value` maps a coordinate onto
the range on its scale. Methods:

- ``sobol`` / ``halton``: scrambled quasi-random sequences from :mod:`scipy.stats.qmc`; they cover
  the cube more evenly than random points at the same budget (Bergstra & Bengio 2012 section 6;
  Bousquet et al. 2017, Critical Hyper-Parameters: No Random, No Cry).
- ``random``: i.i.d. uniform points (Bergstra & Bengio 2012).
- ``grid``: ``m`` evenly spaced values per dimension with ``m = floor(n ** (1 / d))`` (at least 1),
  ends included, ``m ** d <= n`` points in all.

The scrambling/random seed is :func:`space_seed`, a hash of the space's description and the study
index: the same space gives the same points in every run and every matrix, so trial ids are stable
and stored search trials are reused.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..techniques.spec import Param

METHODS: tuple[str, ...] = ("sobol", "halton", "random", "grid")


@dataclass(frozen=True)
class Dimension:
    """One searched hyper-parameter: ``axis`` (e.g. ``optimizer``), the technique's param."""

    axis: str
    param: Param

    @property
    def key(self) -> str:
        """``optimizer.lr``: how the report and the CSVs name the dimension."""
        return f"{self.axis}.{self.param.name}"

    def value(self, u: float) -> Any:
        return self.param.from_unit(u)

    def describe(self) -> list[Any]:
        assert self.param.search is not None
        return [self.key, list(self.param.search), self.param.scale, self.param.type.__name__]


def space_seed(dims: Sequence[Dimension], technique: str, study: int = 0) -> int:
    """A 63-bit seed from the space (technique, names, ranges, scales) and the study index."""
    blob = json.dumps([technique, [d.describe() for d in dims], study], sort_keys=True)
    return int.from_bytes(hashlib.sha256(blob.encode()).digest()[:8], "big") >> 1


def unit_points(method: str, n: int, d: int, seed: int) -> list[tuple[float, ...]]:
    """``n`` points (``<= n`` for grid) in ``[0, 1]^d`` by ``method``; ``[()]`` when ``d == 0``."""
    if method not in METHODS:
        raise ValueError(f"unknown search method {method!r}; one of {', '.join(METHODS)}")
    if d == 0:
        return [()]
    if method == "grid":
        m = max(1, math.floor(n ** (1.0 / d) + 1e-9))
        axis = [0.5] if m == 1 else [i / (m - 1) for i in range(m)]
        return [tuple(p) for p in itertools.product(axis, repeat=d)]
    import numpy as np

    if method == "random":
        rows = np.random.default_rng(seed).random((n, d))
    else:
        from scipy.stats import qmc

        engine = qmc.Sobol(d, scramble=True, seed=seed) if method == "sobol" else None
        if engine is None:
            engine = qmc.Halton(d, scramble=True, seed=seed)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Sobol's balance warning for n not a power of 2
            rows = engine.random(n)
    return [tuple(float(x) for x in row) for row in rows]


def search_points(
    dims: Sequence[Dimension], method: str, n: int, technique: str, study: int = 0
) -> list[dict[str, Any]]:
    """The distinct points ``{dimension key: value}`` of one technique's search, in draw order.

    Points that round to the same values (an int range narrower than the budget) are kept once.
    """
    seed = space_seed(dims, technique, study)
    out: list[dict[str, Any]] = []
    for u in unit_points(method, n, len(dims), seed):
        point = {d.key: d.value(x) for d, x in zip(dims, u, strict=True)}
        if point not in out:
            out.append(point)
    return out
