"""Scale benchmark of the report: write a synthetic N-trial store, time ``build_report``.

    python benchmarks/report_scale.py                 # 10,000 trials (acceptance: <= 60 s, 2 GiB)
    python benchmarks/report_scale.py --trials 50     # a realistic small store

The store follows the runner schema exactly (meta.json + metrics.parquet per trial; about 525
metric rows per trial: per-step loss, health every 10 steps over 3 layers, 10 epochs). It is
written by worker processes, so the peak RSS printed (``resource.getrusage``) is that of the
process that only loads the store and builds the report.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from report_fixtures import write_store

DATASETS = ("digits", "spirals", "moons", "blobs", "xor", "teacher_student", "mnist", "cifar10")
ACTIVATIONS = (
    "relu",
    "leaky_relu",
    "elu",
    "selu",
    "gelu",
    "silu",
    "tanh",
    "sigmoid",
    "mish",
    "softplus",
)
INITIALIZERS = ("he_normal", "xavier_normal", "lecun_normal", "orthogonal")
NORMALIZERS = ("none", "batchnorm")
CEILINGS = {
    "relu": 0.1,
    "gelu": 0.12,
    "silu": 0.11,
    "sigmoid": -0.2,
    "tanh": -0.05,
    "batchnorm": 0.03,
}


def _plan(n_trials: int) -> tuple[list[str], int, dict[str, tuple[str, ...]]]:
    """Datasets, seeds and axes: small stores look like the demo matrix (activations x 2
    datasets x 5 seeds); large ones cross activation x initializer x normalizer."""
    if n_trials <= 500:
        seeds = 5
        n_act = max(1, min(len(ACTIVATIONS), round(n_trials / (2 * seeds))))
        return list(DATASETS[:2]), seeds, {"activation": ACTIVATIONS[:n_act]}
    axes = {"activation": ACTIVATIONS, "initializer": INITIALIZERS, "normalizer": NORMALIZERS}
    per_dataset = len(ACTIVATIONS) * len(INITIALIZERS) * len(NORMALIZERS)
    seeds = 5
    n_ds = max(1, min(len(DATASETS), round(n_trials / (per_dataset * seeds))))
    seeds = max(1, round(n_trials / (per_dataset * n_ds)))
    return list(DATASETS[:n_ds]), seeds, axes


def _write(args: tuple[str, str, int, dict[str, tuple[str, ...]]]) -> int:
    out, dataset, seed, axes = args
    statuses = {("sigmoid", seed): "diverged"} if seed % 7 == 3 else {}
    ids = write_store(
        out,
        axes=axes,
        datasets=[dataset],
        seeds=[seed],
        ceilings=CEILINGS,
        statuses=statuses,
        epochs=10,
        meta={"health_overhead": 0.3},
    )
    return len(ids)


def make_store(out: Path, n_trials: int, workers: int) -> int:
    datasets, seeds, axes = _plan(n_trials)
    jobs = [(str(out), ds, s, axes) for ds in datasets for s in range(seeds)]
    with ProcessPoolExecutor(workers) as pool:
        total = sum(pool.map(_write, jobs))
    info = {
        "name": f"synthetic-{total}",
        "axes": {"dataset": datasets, **{k: list(v) for k, v in axes.items()}, "seeds": seeds},
        "n_trials": total,
    }
    (out / "matrix.json").write_text(json.dumps(info))
    return total


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=10_000)
    ap.add_argument("--store", type=Path, help="reuse or create the store here")
    ap.add_argument("--out", type=Path, help="report folder (default: a temp dir)")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 2)
    args = ap.parse_args()
    store = args.store or Path(tempfile.mkdtemp(prefix="techbench-scale-"))
    existing = len(os.listdir(store / "trials")) if (store / "trials").is_dir() else 0
    if existing == 0:
        t0 = time.perf_counter()
        n = make_store(store, args.trials, args.workers)
        print(f"wrote {n} trials to {store} in {time.perf_counter() - t0:.1f} s")
    else:
        print(f"reusing {existing} trials in {store}")
    out = args.out or Path(tempfile.mkdtemp(prefix="techbench-report-"))

    from techbench.report import build_report

    t0, c0 = time.perf_counter(), time.process_time()
    path = build_report(store, out)
    wall = time.perf_counter() - t0
    cpu = time.process_time() - c0
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    size = path.stat().st_size / 1e6
    print(f"report: {path} ({size:.1f} MB)")
    print(f"build_report wall: {wall:.1f} s   CPU: {cpu:.1f} s   peak RSS: {peak_mib:.0f} MiB")
    if os.getloadavg()[0] > (os.cpu_count() or 1):
        print(f"note: load average {os.getloadavg()[0]:.1f} > cores: wall time is inflated")
    ok = wall <= 60 and peak_mib <= 2048
    print("within budget (<= 60 s, <= 2 GiB):", "yes" if ok else "NO")
    return 0


if __name__ == "__main__":
    sys.exit(main())
