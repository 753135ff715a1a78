"""Scale benchmark of the store and the report: synthetic stores written through the store's own
writer, then loading and ``build_report`` timed each in a fresh child process.

    python benchmarks/store_scale.py                          # 10k per trial, 10k and 100k stacked
    python benchmarks/store_scale.py --runs 100000:16         # only the acceptance store
    python benchmarks/store_scale.py --runs 2000:1,2000:16 --keep /tmp/stores

A run ``N:S`` writes N trials in units of S members (``ResultStore.write_batch``, what the
executor does with a stack; S=1 is the per-trial layout every store had before batches). Trials
and rows follow ``benchmarks/report_scale.py`` (8 datasets x 10 activations x 4 initializers x
2 normalizers x seeds; about 310 rows per trial, 10 epochs); a stack holds the members that
differ only in initializer and seed, as :mod:`techbench.plan.stacking` would group them. Each child
process prints its wall seconds, CPU seconds and peak RSS (``resource.getrusage``), so the
numbers are those of loading or reporting alone (the report's forked worker processes,
:mod:`techbench.report.parallel`, reported apart: their CPU seconds and largest peak RSS, which
counts the pages they share with the parent again). Acceptance (issue 13): 100,000 trials report
in <= 60 s and <= 4 GiB on the 2-core machine.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))
sys.path.insert(0, str(HERE))

from report_fixtures import make_config, synthetic_metrics, write_trial  # noqa: E402
from report_scale import CEILINGS, _plan  # noqa: E402

BUDGET_S, BUDGET_MIB = 60.0, 4096.0


def _outcome(config: dict, seed: int) -> tuple[dict, list, str]:
    labels = [config[a]["name"] for a in ("activation", "initializer", "normalizer")]
    ceiling = 0.8 + sum(CEILINGS.get(v, 0.0) for v in labels)
    status = "diverged" if seed % 7 == 3 and labels[0] == "sigmoid" else "completed"
    rows = synthetic_metrics(config, ceiling=min(ceiling, 0.999), status=status)
    return config, rows, status


def _write_units(args: tuple[str, str, list[str], list[int], dict, int]) -> int:
    """Write one dataset's trials for ``seeds`` (one worker's share), ``stack`` per unit."""
    from report_fixtures import TrialMeta, TrialOutcome, trial_id

    from techbench.store import ResultStore

    out, dataset, activations, seeds, axes, stack = args
    store = ResultStore(out)
    n = 0
    for act, norm in itertools.product(activations, axes["normalizer"]):
        members = [
            make_config(dataset=dataset, activation=act, normalizer=norm, initializer=init, seed=s)
            for s in seeds
            for init in axes["initializer"]
        ]
        for config in members:
            config["budget"]["epochs"] = 10
        for lo in range(0, len(members), stack):
            unit = [_outcome(c, c["seed"]) for c in members[lo : lo + stack]]
            if stack == 1:
                config, rows, status = unit[0]
                write_trial(out, config, rows, status=status, meta={"health_overhead": 0.3})
            else:
                store.write_batch(
                    [
                        TrialOutcome(
                            trial_id(c),
                            c,
                            status,  # type: ignore[arg-type]
                            rows,
                            TrialMeta.from_dict(_meta(c, rows, status)),
                        )
                        for c, rows, status in unit
                    ],
                    "synthetic",
                )
            n += len(unit)
    return n


def _meta(config: dict, rows: list, status: str) -> dict:
    """The meta :func:`report_fixtures.write_trial` records (stacked: shared wall time)."""
    return {
        "started_at": "2026-01-01T00:00:00+00:00",
        "finished_at": "2026-01-01T00:00:05+00:00",
        "wall_seconds": 5.0,
        "train_seconds": 4.5,
        "device": "cpu",
        "versions": {"techbench": "0.1.0", "torch": "2.13", "pytorch_lightning": "2.6"},
        "diverged_step": 30 if status == "diverged" else None,
        "steps": max((int(r["step"]) for r in rows), default=0),
        "epochs": 10,
        "num_parameters": 1000,
        "health_overhead": 0.3,
    }


def make_store(out: Path, n_trials: int, stack: int, workers: int) -> int:
    datasets, seeds, axes = _plan(n_trials)
    per = max(1, -(-seeds // (2 * workers)))
    chunks = [list(range(lo, min(seeds, lo + per))) for lo in range(0, seeds, per)]
    acts = list(axes["activation"])
    jobs = [
        (str(out), ds, acts[i::2], chunk, {k: list(v) for k, v in axes.items()}, stack)
        for ds in datasets
        for chunk in chunks
        for i in range(2)
    ]
    with ProcessPoolExecutor(workers) as pool:
        total = sum(pool.map(_write_units, jobs))
    info = {
        "name": f"synthetic-{total}",
        "axes": {"dataset": datasets, **{k: list(v) for k, v in axes.items()}, "seeds": seeds},
        "n_trials": total,
    }
    (out / "matrix.json").write_text(json.dumps(info))
    return total


def measure(what: str, store: str) -> dict:
    """Run in a child: load the store or build its report; wall, CPU, peak RSS."""
    t0, c0 = time.perf_counter(), time.process_time()
    if what == "load":
        from techbench.store.reader import load_results

        trials, metrics = load_results(store, keep_step_loss=False)
        extra = {"trials": len(trials), "rows": len(metrics)}
    else:
        from techbench.report import build_report

        report = build_report(store, tempfile.mkdtemp(prefix="techbench-report-"))
        extra = {"page_mb": round(report.stat().st_size / 1e6, 2)}
        shutil.rmtree(report.parent, ignore_errors=True)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return {
        "wall": time.perf_counter() - t0,
        "cpu": time.process_time() - c0,
        "peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "child_cpu": kids.ru_utime + kids.ru_stime,
        "child_peak_mib": kids.ru_maxrss / 1024,
        **extra,
    }


def _child(what: str, store: Path) -> dict:
    cmd = [sys.executable, __file__, "--measure", what, "--store", str(store)]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{what} of {store} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", default="10000:1,10000:16,100000:16", help="N:STACK,...")
    ap.add_argument("--keep", type=Path, help="write (or reuse) the stores under this folder")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--measure", choices=["load", "report"], help=argparse.SUPPRESS)
    ap.add_argument("--store", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.measure:
        print(json.dumps(measure(args.measure, args.store)))
        return 0
    base = args.keep or Path(tempfile.mkdtemp(prefix="techbench-scale-"))
    rows = []
    for spec in args.runs.split(","):
        n, stack = (int(x) for x in spec.split(":"))
        store = base / f"store-{n}-s{stack}"
        gen = float("nan")
        if not (store / "trials").is_dir():
            t0 = time.perf_counter()
            n = make_store(store, n, stack, args.workers)
            gen = time.perf_counter() - t0
        else:
            n = sum(1 for _ in os.scandir(store / "trials"))
        files = sum(1 for _ in store.rglob("*.parquet"))
        load, report = _child("load", store), _child("report", store)
        rows.append((n, stack, files, gen, load, report))
        print(
            f"{n:>7} trials, stack {stack:>2}: {files} parquet files, written in {gen:.0f} s; "
            f"load {load['wall']:.1f} s {load['peak_mib']:.0f} MiB; "
            f"report {report['wall']:.1f} s (CPU {report['cpu']:.1f} s + worker processes "
            f"{report['child_cpu']:.1f} s) {report['peak_mib']:.0f} MiB (largest worker "
            f"{report['child_peak_mib']:.0f} MiB, pages shared with the parent counted again)",
            flush=True,
        )
        if args.keep is None:
            shutil.rmtree(store, ignore_errors=True)
    print()
    print(
        f"{'trials':>8} {'stack':>5} {'files':>7} {'write s':>8} {'load s':>7} {'load MiB':>9} "
        f"{'report s':>9} {'report MiB':>11} {'ok':>3}"
    )
    for n, stack, files, gen, load, report in rows:
        ok = report["wall"] <= BUDGET_S and report["peak_mib"] <= BUDGET_MIB
        print(
            f"{n:>8} {stack:>5} {files:>7} {gen:>8.0f} {load['wall']:>7.1f} "
            f"{load['peak_mib']:>9.0f} {report['wall']:>9.1f} {report['peak_mib']:>11.0f} "
            f"{'yes' if ok else 'NO':>3}"
        )
    if len(rows) > 1:
        a, b = rows[0], rows[-1]
        print(
            f"report wall ratio {b[0]}/{b[1]} vs {a[0]}/{a[1]}: {b[5]['wall'] / a[5]['wall']:.2f}"
        )
    load_avg = os.getloadavg()[0]
    if load_avg > (os.cpu_count() or 1):
        print(f"note: load average {load_avg:.1f} > cores: wall times are inflated")
    return 0


if __name__ == "__main__":
    sys.exit(main())
