"""``techbench run [MATRIX_FILE | NAME] [--out DIR] [--workers N] [--dry-run] [--report DIR]``.

Runs a matrix (a TOML file, or a ready-made one by name: ``techbench run --list``) into a results
store, skipping trials already stored; ``--rerun-failed`` retries failed ones. An invalid matrix
prints every problem (file, key path, what, suggestion) and exits 2, as does a matrix that cannot run here (a dataset that does not load, a missing
accelerator, a target metric the task does not record, an empty expansion: see
:mod:`techbench.plan.preflight`); Ctrl-C keeps finished trials and exits 130, SIGTERM stops the
running trials at once and exits 143 (finished trials kept, workers gone). Diverged trials are
results: exit 0. Failed trials of the matrix (new or still stored) print their error lines and
the ``--rerun-failed`` hint, and exit 1, as does a failed --report step (the results are kept).
``--filter``, ``--seeds``, ``--epochs`` and ``--accelerator`` narrow the matrix, a tuned one in
both phases; a narrowing that changes what a trial computes gets its own default store
(:mod:`techbench.plan.narrow`).
"""

from __future__ import annotations

import argparse
import signal
import sys

from ...errors import UsageError
from ...execute.ray import DEFAULT_MAX_RETRIES, EXECUTORS
from ...plan.narrow import add_arguments as add_narrow_arguments
from ...schema import Trial

SAMPLE = 5
SHOW_FAILED = 5


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "run",
        help="run a matrix of trials into a results store",
        description="Run a matrix spec (a TOML file or a ready-made matrix name).",
    )
    p.add_argument(
        "matrix", nargs="?", metavar="MATRIX_FILE|NAME", help="e.g. smoke, demo, my.toml"
    )
    p.add_argument("--out", metavar="DIR", help="results store (default: results/<matrix name>)")
    p.add_argument(
        "--workers", type=int, metavar="N", help="processes (default: CPU cores, <= trials/2)"
    )
    p.add_argument("--dry-run", action="store_true", help="print the trial count and a sample")
    p.add_argument("--rerun-failed", action="store_true", help="retry trials stored as failed")
    p.add_argument(
        "--reuse-other-versions",
        action="store_true",
        help="keep stored trials produced by other versions of their plugins' distributions "
        "(default: rerun them)",
    )
    p.add_argument("--report", metavar="DIR", help="build the report into DIR after the run")
    p.add_argument(
        "--sample", type=int, default=SAMPLE, metavar="K", help="trials shown by --dry-run"
    )
    p.add_argument("--list", action="store_true", help="list the ready-made matrices")
    p.add_argument(
        "--stack",
        default="auto",
        metavar="auto|N|off",
        help="train trials of one shape together: auto (default: up to 64 on a GPU, 16 on a "
        "CPU), at most N per stack, or off (each trial a stack of one)",
    )
    bar = p.add_mutually_exclusive_group()
    bar.add_argument("--progress", dest="progress", action="store_true", default=None)
    bar.add_argument("--no-progress", dest="progress", action="store_false")
    p.add_argument(
        "--seed-plan",
        metavar="pilot=N,max=M[,power=P]",
        help="two stages: N pilot seeds, then up to M seeds for each comparison the pilot left "
        "undecided (as [seeds] plan in the matrix)",
    )
    p.add_argument(
        "--pilot",
        metavar="STORE",
        help="with --dry-run: the seeds each headline comparison of this pilot store needs",
    )
    p.add_argument("--run-fn", default=None, help=argparse.SUPPRESS)
    add_narrow_arguments(p)
    add_scale_arguments(p)
    p.set_defaults(handler=main)


def add_scale_arguments(p: argparse.ArgumentParser) -> None:
    """The scale-out flags of ``techbench run``."""
    g = p.add_argument_group("scale out")
    g.add_argument(
        "--executor", choices=EXECUTORS, default="local", help="local process pool or a Ray cluster"
    )
    g.add_argument(
        "--address",
        metavar="auto|HOST:PORT",
        help="Ray cluster to join (default: start a local one on this machine)",
    )
    g.add_argument("--cpus-per-trial", type=float, metavar="C", help="Ray CPUs per trial (1)")
    g.add_argument(
        "--gpus-per-trial",
        type=float,
        metavar="G",
        help="Ray GPUs per trial, fractions share a GPU (default: from the matrix's [trainer])",
    )
    g.add_argument(
        "--max-retries",
        type=int,
        default=DEFAULT_MAX_RETRIES,
        metavar="R",
        help=f"re-runs of a trial whose Ray worker died (default {DEFAULT_MAX_RETRIES})",
    )
    g.add_argument(
        "--shard", metavar="K/N", help="run only the K-th of N disjoint parts (job arrays)"
    )


def check_scale_arguments(args: argparse.Namespace) -> None:
    """UsageError for flags that make no sense together or are out of range."""
    ray_only = ("address", "cpus_per_trial", "gpus_per_trial")
    if args.executor != "ray":
        given = [f"--{a.replace('_', '-')}" for a in ray_only if getattr(args, a) is not None]
        if given:
            raise UsageError(f"{', '.join(given)} need --executor ray")
    if args.cpus_per_trial is not None and args.cpus_per_trial <= 0:
        raise UsageError(f"--cpus-per-trial must be > 0, got {args.cpus_per_trial}")
    if args.gpus_per_trial is not None and args.gpus_per_trial < 0:
        raise UsageError(f"--gpus-per-trial must be >= 0, got {args.gpus_per_trial}")
    if args.gpus_per_trial and args.gpus_per_trial > 1 and args.gpus_per_trial % 1:
        raise UsageError(f"--gpus-per-trial above 1 must be whole, got {args.gpus_per_trial}")
    if args.max_retries < 0:
        raise UsageError(f"--max-retries must be >= 0, got {args.max_retries}")
    if args.executor == "ray" and getattr(args, "reuse_other_versions", False):
        raise UsageError("--reuse-other-versions works with the local executor only, for now")


def main(args: argparse.Namespace) -> int:
    from ...plan.matrix import MatrixError, builtin_matrices, load_matrix

    if args.list:
        return _list(builtin_matrices())
    if not args.matrix:
        raise UsageError(
            "give a matrix file or a ready-made matrix: " + ", ".join(builtin_matrices())
        )
    if args.workers is not None and args.workers < 1:
        raise UsageError(f"--workers must be >= 1, got {args.workers}")
    if args.sample < 0:
        raise UsageError(f"--sample must be >= 0, got {args.sample}")
    _stack_policy(args.stack)
    try:
        matrix = load_matrix(args.matrix)
        matrix.planned()
    except MatrixError as exc:
        n = len(exc.problems)
        print(f"techbench run: error: {n} problem{'s' * (n != 1)} in the matrix:", file=sys.stderr)
        for problem in exc.problems:
            print(f"  {problem}", file=sys.stderr)
        return 2
    from ...plan.narrow import default_store, describe_notes, narrow, phase_counts
    from ...plan.preflight import preflight
    from ...plan.shard import shard_trials

    check_scale_arguments(args)
    matrix = _with_seed_plan(matrix, args)
    full = matrix
    matrix, trials, notes = narrow(full, args)
    narrowed = describe_notes(notes, phase_counts(full), phase_counts(matrix)) if notes else ""
    problems = preflight([t.config for t in trials])
    if problems:
        n = len(problems)
        print(
            f"techbench run: error: {n} problem{'s' * (n != 1)} before running {matrix.name}:",
            file=sys.stderr,
        )
        for line in problems:
            print(f"  {line}", file=sys.stderr)
        return 2
    n_matrix, trials = len(trials), shard_trials(trials, args.shard)
    out = args.out or default_store(full, matrix)
    if out != (args.out or f"results/{matrix.name}"):
        print(
            f"techbench run {matrix.name}: results go to {out}, not results/{matrix.name}: the "
            "narrowing changes the trials' budget, trainer or search seeds (--out DIR to choose)"
        )
    if args.dry_run:
        return _dry_run(matrix, trials, out, args, narrowed)
    from ..clio import writable_dir

    writable_dir(out)
    from ...execute.local import quiet_library_warnings

    quiet_library_warnings()
    if matrix.tune is not None:
        return _run_tuned(matrix, out, args, n_matrix)
    if matrix.seed_plan is not None:
        return _run_planned(matrix, trials, out, args, n_matrix)

    result = _execute(trials, out, matrix, args, n_matrix)
    print(f"techbench run {matrix.name}: {result.summary} -> {out}")
    return _finish(result, trials, out, args)


def _stack_policy(text: str) -> str | int:
    """``--stack``: "auto", "off" or a positive size; UsageError otherwise."""
    if text in ("auto", "off"):
        return text
    try:
        size = int(text)
    except ValueError:
        size = 0
    if size < 1:
        raise UsageError(f"--stack must be auto, off or a positive number, got {text!r}")
    return size


def _execute(trials: list[Trial], out: str, matrix, args: argparse.Namespace, n_matrix: int):
    """Run ``trials`` into ``out`` on the executor the flags chose; the executor's RunResult."""
    from ...execute.local import DEFAULT_RUN_FN, execute

    common = dict(
        matrix_name=matrix.name,
        run_fn=args.run_fn or DEFAULT_RUN_FN,
        rerun_failed=args.rerun_failed,
        progress=args.progress,
        matrix_info=matrix.describe(n_matrix),
        stack=_stack_policy(args.stack),
    )
    if args.executor == "ray":
        from ...execute.ray import execute_ray

        return execute_ray(
            trials,
            out,
            address=args.address,
            cpus_per_trial=args.cpus_per_trial,
            gpus_per_trial=args.gpus_per_trial,
            max_retries=args.max_retries,
            **common,
        )
    result = execute(
        trials,
        out,
        workers=args.workers,
        reuse_other_versions=args.reuse_other_versions,
        **common,
    )
    _say_other_versions(result.other_versions, args.reuse_other_versions)
    return result


def _run_tuned(matrix, out: str, args: argparse.Namespace, n_matrix: int) -> int:
    """Both phases of a ``[tune]`` matrix (:mod:`techbench.plan.tune`) on the chosen executor."""
    from ...plan.shard import shard_trials
    from ...plan.tune import run_tuned

    def run_phase(trials: list[Trial], phase: str):
        result = _execute(trials, out, matrix, args, n_matrix)
        print(f"techbench run {matrix.name} ({phase}): {result.summary} -> {out}")
        return result

    result = run_tuned(matrix.tune_plan(), out, run_phase, lambda c: shard_trials(c, args.shard))
    return _finish(result, shard_trials(matrix.planned(), args.shard), out, args)


def _with_seed_plan(matrix, args: argparse.Namespace):
    """The matrix with ``--seed-plan`` applied (its pilot seeds); checks ``--pilot``."""
    import dataclasses

    from ...plan.seedplan import parse_flag

    if args.pilot is not None and not args.dry_run:
        raise UsageError("--pilot STORE goes with --dry-run")
    if args.seed_plan is None:
        plan = matrix.seed_plan
    else:
        plan = parse_flag(args.seed_plan)
        if matrix.tune is not None:
            raise UsageError("--seed-plan: a tuned matrix takes its seeds from [tune]")
        matrix = dataclasses.replace(matrix, seeds=list(range(plan.pilot)), seed_plan=plan)
    if plan is not None and args.seeds is not None:
        raise UsageError("--seeds and a seed plan both choose the seeds: give one")
    return matrix


def _run_planned(matrix, trials: list[Trial], out: str, args: argparse.Namespace, n: int) -> int:
    """The two stages of a seed plan (:mod:`techbench.plan.seedplan`) on the chosen executor."""
    from ...plan.shard import shard_trials
    from ...report.stage2 import run_planned

    def run_phase(stage_trials: list[Trial], stage: str):
        if stage != "pilot":
            stage_trials = shard_trials(stage_trials, args.shard)
        result = _execute(stage_trials, out, matrix, args, n)
        print(f"techbench run {matrix.name} ({stage}): {result.summary} -> {out}")
        return result

    follow = matrix.data_seeds == "seed"
    result = run_planned(matrix.seed_plan, trials, out, run_phase, follow)
    extra = result.planned.trials() if result.planned else []
    return _finish(result, trials + shard_trials(extra, args.shard), out, args)


def _dry_run_pilot(matrix, pilot: str) -> None:
    """``--dry-run --pilot STORE``: per headline comparison of the pilot store, the seeds it
    needs (capped) and the trials a seed plan would add."""
    from pathlib import Path

    from ...plan.seedplan import SeedPlan, Stage2, describe, stage2_configs
    from ...report.analyze import ReportInputError
    from ...report.stage2 import comparisons

    if not Path(pilot).is_dir():
        raise UsageError(f"--pilot {pilot}: no such results store")
    plan = matrix.seed_plan or SeedPlan()
    try:
        rows = comparisons(pilot, plan)
    except ReportInputError as exc:
        raise UsageError(f"--pilot {pilot}: {exc}") from exc
    if not rows:
        print(f"  pilot {pilot}: no headline comparison (no two techniques share a context)")
        return
    configs = stage2_configs(pilot, rows, matrix.data_seeds == "seed")
    print(f"  pilot {pilot}, seed plan pilot={plan.pilot}, max={plan.max}, power={plan.power}:")
    for line in describe(Stage2(plan, rows, configs)):
        print(f"    {line}")


def _finish(result, trials: list[Trial], out: str, args: argparse.Namespace) -> int:
    """The exit status after a run: 130 when interrupted, 143 when terminated (SIGTERM), with
    the resume hint; 1 when trials of ``trials`` stand failed (their errors and the retry command
    printed) or have no stored result; else the ``--report`` step's (0 without one)."""
    if result.interrupted:
        signum = getattr(result, "exit_signal", 0) or signal.SIGINT
        how = "terminated (SIGTERM)" if signum == signal.SIGTERM else "interrupted"
        print(f"techbench run: {how}; run the same command again to resume", file=sys.stderr)
        return 128 + signum
    code = _failures(trials, out, args)
    if result.missing and not code:
        print(
            f"techbench run: {result.missing} trial(s) failed without a stored result "
            "(see the messages above); run the same command again to retry them",
            file=sys.stderr,
        )
        code = 1
    if args.report:
        return max(code, _report(out, args.report))
    return code


def _failures(trials: list[Trial], out: str, args: argparse.Namespace) -> int:
    """Print each failed trial's error line (up to :data:`SHOW_FAILED`) and the retry hint;
    1 when trials of this run stand failed in the store, else 0."""
    from ...plan.matrix import describe_trial
    from ...store.integrity import error_line
    from ...store.writer import ResultStore

    store = ResultStore(out)
    failed = []
    for trial in trials:
        meta = store.read_meta(trial.id)
        if meta is not None and meta.get("status") == "failed":
            failed.append((trial.id, trial.config, error_line(meta.get("error"))))
    if not failed:
        return 0
    n = len(failed)
    print(f"techbench run: {n} trial{'s' * (n != 1)} failed:", file=sys.stderr)
    for tid, config, line in failed[:SHOW_FAILED]:
        what = describe_trial(config, ["dataset", "activation", "optimizer", "seed"])
        print(f"  {tid} ({what}): {line}", file=sys.stderr)
    if n > SHOW_FAILED:
        print(f"  ... and {n - SHOW_FAILED} more: techbench status {out}", file=sys.stderr)
    print(f"  fix the cause, then retry them with: {_again(args, out)}", file=sys.stderr)
    return 1


def _again(args: argparse.Namespace, out: str) -> str:
    """The command that retries this run's failed trials (same matrix, store and narrowing)."""
    import shlex

    parts = ["techbench", "run", str(args.matrix), "--out", out]
    for text in args.filter:
        parts += ["--filter", text]
    for flag in ("seeds", "epochs", "accelerator", "shard"):
        if getattr(args, flag, None) is not None:
            parts += [f"--{flag}", str(getattr(args, flag))]
    return shlex.join([*parts, "--rerun-failed"])


def _say_other_versions(changed: list[tuple[str, str]], reused: bool) -> None:
    """One line on stderr when stored trials came from other plugin versions."""
    if not changed:
        return
    n = len(changed)
    what = "kept as results (--reuse-other-versions)" if reused else "rerun"
    print(
        f"techbench run: {n} stored trial{'s' * (n != 1)} came from other plugin versions "
        f"({changed[0][1]}{'; ...' if n > 1 else ''}); {what}",
        file=sys.stderr,
    )


def _list(names: list[str]) -> int:
    import tomllib
    from importlib import resources

    width = max((len(n) for n in names), default=4)
    for name in names:
        text = (resources.files("techbench") / "matrices" / f"{name}.toml").read_text()
        try:
            description = str(tomllib.loads(text).get("description", ""))
        except tomllib.TOMLDecodeError:
            description = "(invalid TOML)"
        print(f"{name:<{width}}  {description}")
    return 0


def _dry_run(
    matrix, trials: list[Trial], out: str, args: argparse.Namespace, narrowed: str = ""
) -> int:
    from ...plan.matrix import describe_trial
    from ...schema import AXES, FINISHED
    from ...store.writer import ResultStore

    configs = [t.config for t in trials]
    varying = [k for k in (*AXES, "seed", "data_seed") if len({repr(c[k]) for c in configs}) > 1]
    stored = ResultStore(out).statuses()
    ids = [t.id for t in trials]
    done = sum(stored.get(t) in FINISHED for t in ids)
    failed = sum(stored.get(t) == "failed" for t in ids)
    todo = len(trials) - done - (0 if args.rerun_failed else failed)
    sizes = " x ".join(f"{len(v)} {k}" for k, v in matrix.axes.items() if len(v) > 1)
    print(f"matrix {matrix.name} ({matrix.source}): {len(trials)} trials")
    if matrix.description:
        print(f"  {matrix.description}")
    seeds = len(matrix.seeds)
    print(f"  axes: {sizes or 'none swept'}; {seeds} seed{'s' * (seeds != 1)}", end="")
    print(f"; {len(matrix.include)} include, {len(matrix.exclude)} exclude rules")
    budget = ", ".join(f"{k}={v}" for k, v in matrix.budget.items() if v is not None)
    print(
        f"  budget: {budget}; target: {matrix.target['metric']} {matrix.target['mode']} "
        f"{matrix.target['value']}"
    )
    if narrowed:
        print(f"  {narrowed}")
    accelerators = sorted({str(c["trainer"]["accelerator"]) for c in configs})
    print(f"  accelerator: {', '.join(accelerators)}")
    print(f"  store {out}: {done} done, {failed} failed, {todo} to run")
    if failed and not args.rerun_failed:
        print("  (failed trials are kept; add --rerun-failed to retry them)")
    from ...execute.local import plan_units
    from ...plan.stacking import describe_stacks

    pending = [t for t in trials if stored.get(t.id) is None]
    for line in describe_stacks(plan_units(pending, _stack_policy(args.stack))):
        print(f"  {line}")

    if args.pilot is not None:
        _dry_run_pilot(matrix, args.pilot)
    if matrix.tune is not None:
        t, plan = matrix.tune, matrix.tune_plan()
        searched = sum(g.source is None for g in plan.groups)  # a ladder's transfer: rung 0's
        print(
            f"  tune: {searched} techniques x contexts, {t.method} search of {t.budget} "
            f"points x {len(t.seeds)} seed(s) x {t.studies} study(ies) = {len(trials)} search "
            f"trials (counted above); then up to {plan.n_finals()} final trials on seeds "
            f"{list(t.final_seeds)}, selected on {t.metric} ({t.mode}, {t.select} epoch)"
        )
    if matrix.scale is not None:
        _dry_run_rungs(matrix, trials)
    k = min(args.sample, len(trials))
    if k:
        print(f"sample ({k} of {len(trials)}):")
        step = max(1, len(trials) // k)
        for t in trials[::step][:k]:
            print(f"  {t.id}  {describe_trial(t.config, varying or ['seed'])}")
    return 0


def _dry_run_rungs(matrix, trials: list[Trial]) -> None:
    """The scale ladder's rungs: parameters, budget, trials (a tuned one's search and finals)."""
    from collections import Counter

    from ...plan.scale import describe_rungs

    finals = None
    if matrix.tune is not None:
        per_rung = Counter(g.rung for g in matrix.tune_plan().groups if g.finals)
        n = matrix.tune.studies * len(matrix.tune.final_seeds)

        def finals(rung: int) -> int:
            return per_rung[rung] * n

    for line in describe_rungs(matrix.scale, trials, matrix.unfiltered(), finals):
        print(f"  {line}")


def _report(out: str, report_dir: str) -> int:
    try:
        from ...report import build_report
    except ImportError:
        print(
            f"techbench run: note: techbench.report is not available; no report written to "
            f"{report_dir}"
        )
        return 0
    try:
        index = build_report(out, report_dir)
    except Exception as exc:
        print(
            f"techbench run: error: the report failed: {type(exc).__name__}: {exc}", file=sys.stderr
        )
        print(
            f"  the results are kept; retry with: techbench report {out} --out {report_dir}",
            file=sys.stderr,
        )
        return 1
    print(f"techbench run: report -> {index}")
    return 0
