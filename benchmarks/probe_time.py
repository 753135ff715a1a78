"""Wall time of the default ``techbench probe`` (2 activations x 4 initializers, 10 x 500,
batch 1000): median of N runs of the whole command, and of the computation alone.

    python benchmarks/probe_time.py [--runs 3] [--threads N]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    extra = ["--threads", str(args.threads)] if args.threads else []
    whole = []
    for _ in range(args.runs):
        start = time.perf_counter()
        subprocess.run(
            [sys.executable, "-m", "techbench.cli", "probe", *extra],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        whole.append(time.perf_counter() - start)

    from techbench.report.probe import run_probe

    compute = [run_probe(threads=args.threads).seconds for _ in range(args.runs)]
    print(
        f"default probe, {args.runs} runs: whole command median {statistics.median(whole):.2f} s "
        f"(runs {', '.join(f'{w:.2f}' for w in whole)}); computation median "
        f"{statistics.median(compute):.2f} s"
    )


if __name__ == "__main__":
    main()
