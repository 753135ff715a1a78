"""The IQM of a bootstrap matrix (``report.stats._trim_mean``): one sort of each row against the
two-pivot ``np.partition`` it replaced, at the shapes a 100,000-trial report sees (a cell of
~150 runs x 2000 resamples, the headline's ~1250 x 1000, a technique's 12,500 x 320).

    python benchmarks/trim_mean.py
"""

from __future__ import annotations

import time

import numpy as np

from techbench.report.stats import _trim_mean


def _partition(a: np.ndarray) -> np.ndarray:
    n = a.shape[-1]
    k = int(0.25 * n)
    return np.partition(a, (k, n - k - 1), axis=-1)[..., k : n - k].mean(axis=-1)


def _median_s(fn, a: np.ndarray, reps: int = 7) -> float:
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn(a)
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def main() -> None:
    print(
        f"{'n':>6} {'resamples':>9} {'partition ms':>13} {'sort ms':>8} {'ratio':>6} {'max diff':>9}"
    )
    for n, r in ((150, 2000), (1250, 1000), (12500, 320)):
        x = np.random.default_rng(0).normal(size=n)
        a = x[np.random.default_rng(1).integers(0, n, size=(r, n))]
        old, new = _median_s(_partition, a), _median_s(_trim_mean, a)
        diff = float(np.abs(_partition(a) - _trim_mean(a)).max())
        print(f"{n:>6} {r:>9} {old * 1e3:>13.1f} {new * 1e3:>8.1f} {old / new:>6.2f} {diff:>9.1e}")


if __name__ == "__main__":
    main()
