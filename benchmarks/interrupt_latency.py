"""How long a run takes to end after Ctrl-C, a second Ctrl-C and SIGTERM (medians).

    python benchmarks/interrupt_latency.py              # 5 repeats of each
    python benchmarks/interrupt_latency.py --repeat 3 --steps 60

Runs ``techbench run`` on a 2-activation x 4-seed matrix with 2 workers and the test trial
function ``tests.test_faults_procs:sigterm_catching_run`` (it treats SIGTERM as Lightning does
inside ``fit``: the trial ends at its next step and the worker goes on), each trial ``--steps``
steps of 50 ms. Once a trial is stored it sends the signal(s) and times, from the last signal
sent to the process's exit: a single Ctrl-C (the running trials finish), a double Ctrl-C (0.3 s
apart; the running trials are killed) and SIGTERM. Prints each median and the ratio
double / single, which should be at most 1.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MATRIX = """
    name = "latency"
    seeds = 4
    [budget]
    epochs = 1
    [axes]
    activation = ["relu", "tanh"]
    """


def once(kind: str, steps: int, where: Path) -> float:
    """Seconds from the last signal to the run's exit."""
    out = where / f"{kind}-{time.monotonic_ns()}"
    matrix = where / "m.toml"
    matrix.write_text(textwrap.dedent(MATRIX))
    args = ["run", str(matrix), "--out", str(out), "--workers", "2", "--stack", "off"]
    args += ["--run-fn", "tests.test_faults_procs:sigterm_catching_run", "--no-progress"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "techbench.cli", *args],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "TB_STEPS": str(steps)},
    )
    while not (out / "trials").is_dir() or not any((out / "trials").iterdir()):
        time.sleep(0.02)
    if kind == "sigterm":
        proc.send_signal(signal.SIGTERM)
    else:
        proc.send_signal(signal.SIGINT)
        if kind == "double":
            time.sleep(0.3)
            proc.send_signal(signal.SIGINT)
    t0 = time.monotonic()
    proc.wait(timeout=300)
    return time.monotonic() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--steps", type=int, default=40)
    args = parser.parse_args()
    medians = {}
    with tempfile.TemporaryDirectory() as tmp:
        for kind in ("single", "double", "sigterm"):
            times = [once(kind, args.steps, Path(tmp)) for _ in range(args.repeat)]
            medians[kind] = statistics.median(times)
            print(
                f"{kind:8s} median {medians[kind]:.2f} s  ({', '.join(f'{t:.2f}' for t in times)})"
            )
    print(f"double / single: {medians['double'] / medians['single']:.2f}")


if __name__ == "__main__":
    main()
