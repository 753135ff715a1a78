"""Cost of the store's integrity checks when loading a large store (side by side, medians).

    python benchmarks/store_integrity.py                # 10,000 trials
    python benchmarks/store_integrity.py --trials 500 --repeat 5

Writes a synthetic store with ``benchmarks/report_scale.py``'s generator (through
``ResultStore.write``, so every meta records its metrics file's size and SHA-256 and its own
``meta_sha256``), then times, on the same trials, ``load_results`` and ``ResultStore.statuses``
(with and without ``verify``) for four states of the metas, interleaved run by run:

- ``no digests``: no file size/digest, no meta checks (a store from before file digests);
- ``file digests``: the file checks only, meta checks switched off (what 0.3.0 checked);
- ``+ config hash``: metas without ``meta_sha256`` (a 0.3.0 store read now: legacy, the config
  is hashed to the trial id);
- ``+ meta digest``: the metas as this writer stores them (config hash and ``meta_sha256``).

Prints wall and CPU seconds (this process plus the forked scan workers; CPU is less
disturbed by other load on a shared machine), the median of ``--repeat`` runs, and each state's
ratio to ``file digests``.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from report_scale import make_store

import techbench.store
from techbench.store import META_DIGEST, ResultStore
from techbench.store.reader import load_results

STATES = ("no digests", "file digests", "+ config hash", "+ meta digest")
FILE_KEYS = ("metrics_bytes", "metrics_sha256")


def rewrite(src: Path, out: Path, state: str) -> None:
    """``out``: a copy of ``src`` whose metas are in ``state`` (see the module docstring)."""
    shutil.copytree(src, out)
    if state == "+ meta digest":
        return
    for path in (out / "trials").glob("*/meta.json"):
        meta = json.loads(path.read_text())
        if state == "no digests":
            meta = {k: v for k, v in meta.items() if k not in FILE_KEYS}
        meta.pop(META_DIGEST, None)
        path.write_text(json.dumps(meta, indent=1))


def timed(fn: Callable[[Path], object], out: Path, meta_checks: bool) -> tuple[float, float]:
    """``(wall, CPU)`` seconds of ``fn(out)``; ``meta_checks=False`` switches them off."""
    saved = techbench.store.edit_problem
    if not meta_checks:
        techbench.store.edit_problem = lambda meta: None  # type: ignore[assignment]
    try:
        kids = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0, c0 = time.perf_counter(), time.process_time()
        fn(out)
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
    finally:
        techbench.store.edit_problem = saved
    cpu += (after.ru_utime + after.ru_stime) - (kids.ru_utime + kids.ru_stime)
    return wall, cpu


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--trials", type=int, default=10_000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "store"
        n = make_store(src, args.trials, args.workers)
        stores = {s: Path(tmp) / f"s{i}" for i, s in enumerate(STATES)}
        for state, out in stores.items():
            rewrite(src, out, state)
            trials, _ = load_results(out)
            assert len(trials) == n and not trials.attrs["corrupt"], state
        cases: dict[str, Callable[[Path], object]] = {
            "load_results": lambda out: load_results(out, keep_step_loss=False),
            "statuses (size)": lambda out: ResultStore(out).statuses(),
            "statuses (verify)": lambda out: ResultStore(out).statuses(verify=True),
        }
        got: dict[tuple[str, str], list[tuple[float, float]]] = {}
        for _ in range(args.repeat):
            for case, fn in cases.items():
                for state, out in stores.items():
                    checks = state not in ("no digests", "file digests")
                    got.setdefault((case, state), []).append(timed(fn, out, checks))
        print(f"{n} trials, median of {args.repeat}: wall s / CPU s (ratio of CPU to file digests)")
        print(f"{'':18}" + "".join(f"{s:>24}" for s in STATES))
        for case in cases:
            cells = []
            base = statistics.median(c for _, c in got[(case, "file digests")])
            for state in STATES:
                wall = statistics.median(w for w, _ in got[(case, state)])
                cpu = statistics.median(c for _, c in got[(case, state)])
                cells.append(f"{wall:6.2f} / {cpu:5.2f} ({cpu / base:4.2f})")
            print(f"{case:18}" + "".join(f"{c:>24}" for c in cells))
    return 0


if __name__ == "__main__":
    sys.exit(main())
