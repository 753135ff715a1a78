"""Cost of the store's integrity checks when loading a large store (side by side, medians).

    python benchmarks/store_integrity.py                # 10,000 trials
    python benchmarks/store_integrity.py --trials 500

Writes a synthetic store with ``benchmarks/report_scale.py``'s generator, then times, on the same
files, ``load_results`` and ``ResultStore.statuses`` on (a) the store as the generator writes it
(no recorded digests: the size and digest checks are skipped) and (b) the same store after its
``meta.json`` files record each metrics file's size and SHA-256 (what ``ResultStore.write``
records). Prints the median of ``--repeat`` runs and the ratio (b)/(a).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from report_scale import make_store

from techbench.store import ResultStore, file_digest
from techbench.store_read import load_results


def stamp(out: Path) -> None:
    for folder in (out / "trials").iterdir():
        meta_path = folder / "meta.json"
        meta = json.loads(meta_path.read_text())
        meta["metrics_bytes"], meta["metrics_sha256"] = file_digest(folder / "metrics.parquet")
        meta_path.write_text(json.dumps(meta))


def timed(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--trials", type=int, default=10_000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "store"
        n = make_store(out, args.trials, args.workers)
        store = ResultStore(out)
        cases = {
            "load_results": lambda: load_results(out, keep_step_loss=False),
            "statuses (size)": lambda: store.statuses(),
            "statuses (verify)": lambda: store.statuses(verify=True),
        }
        before = {k: timed(f, args.repeat) for k, f in cases.items()}
        stamp(out)
        trials, _ = load_results(out)
        assert len(trials) == n and not trials.attrs["corrupt"]
        after = {k: timed(f, args.repeat) for k, f in cases.items()}
        print(f"{n} trials, median of {args.repeat}")
        print(f"{'':20} {'no digests':>11} {'digests':>9} {'ratio':>6}")
        for k in cases:
            print(f"{k:20} {before[k]:10.2f}s {after[k]:8.2f}s {after[k] / before[k]:6.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
