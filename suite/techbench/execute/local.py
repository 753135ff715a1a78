"""The local executor: run a matrix's trials on N worker processes into a results store.

Each worker runs ``run_fn(config)`` (default :func:`techbench.engine.trial.run_trial`) and writes the
outcomes itself with :meth:`ResultStore.write_batch`, so a crash of the parent loses nothing
finished.
Workers are *spawned* (a fork after ``import torch`` can hang); each gets
``max(1, cores // workers)`` torch threads so they don't fight, ignores SIGINT (the parent
decides) and dies with the parent: Linux ``PR_SET_PDEATHSIG`` sends it SIGKILL (not SIGTERM,
which Lightning catches inside ``fit`` and turns into the end of one trial, after which the
worker would take the next), and a thread watching its parent id covers the rest. So a killed
run leaves no orphans (nor a pipe held open) and re-running it redoes only the trials in flight.

Every trial is claimed with a lock in the store before it runs and re-checked under the lock, so
two executors on the same matrix and store run each trial once; a trial held by another process
is retried at the end, waiting for its lock. A worker process that dies (segfault, OOM kill)
breaks the pool: the trials it was running are re-run one by one in a fresh process each, the
one that kills its process again is stored as ``failed`` with the exit code, and the rest go on.

A stored trial whose techniques came from other distribution versions than the installed ones
(``meta["techniques"]``, see :mod:`techbench.techniques.provenance`) is not reused as if current: it is
rerun, and the run says how many and why, unless ``reuse_other_versions`` is set.

Ctrl-C: pending trials are cancelled, running ones finish and are stored (a second Ctrl-C kills
them), and :class:`RunResult` says ``interrupted`` (the CLI exits 130). SIGTERM stops at once,
like a second Ctrl-C (the CLI exits 143). The counts a run reports are read from the store at
the end (the planned trials' stored statuses), not tallied from events, so they stay true after
an interrupt or a failed write. ``workers=1`` runs in the calling process, with the same claims
and skips.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import time
import traceback
import warnings
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import (
    FIRST_COMPLETED,
    Future,
    ProcessPoolExecutor,
    ThreadPoolExecutor,
    as_completed,
)
from concurrent.futures import wait as wait_for
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import Terminated, raise_terminated
from ..plan.stacking import GPU_ACCELERATORS, plan_units, visible_gpus
from ..schema import FINISHED, Trial, TrialOutcome, as_trial, now_iso
from ..store.writer import ResultStore
from ..techniques.provenance import other_versions, technique_sources
from .progress import NOT_STORED, Progress

DEFAULT_RUN_FN = "techbench.engine.trial:run_trial"
RunFn = Callable[[dict[str, Any]], Any] | str

_THREADS: int | None = None


def available_cores() -> int:
    """CPU cores this process may use (affinity-aware)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


@dataclass
class RunResult:
    """What an :func:`execute` call did."""

    total: int
    already: int
    counts: Counter[str] = field(default_factory=Counter)
    interrupted: bool = False
    exit_signal: int = 0
    """The signal that stopped the run (SIGINT or SIGTERM); 0 when it ran to the end."""
    seconds: float = 0.0
    summary: str = ""
    other_versions: list[tuple[str, str]] = field(default_factory=list)
    """(trial id, what changed) of stored trials produced by other plugin versions."""

    @property
    def failed(self) -> int:
        return self.counts["failed"]

    @property
    def missing(self) -> int:
        """Trials of this run without a stored result (not run, or their write failed)."""
        return self.counts[NOT_STORED]


def _resolve(run_fn: RunFn) -> Callable[[Any], Any]:
    if isinstance(run_fn, str):
        from ..techniques.spec import resolve

        return resolve(run_fn)
    return run_fn


def _call(run_fn: RunFn, trial: Trial) -> TrialOutcome:
    """``run_fn``'s outcome of ``trial``: the engine gets the :class:`Trial` and returns its id;
    a custom ``run_fn`` gets the config, and its outcome is stored under the trial's id."""
    started = now_iso()
    t0 = time.monotonic()
    custom = run_fn != DEFAULT_RUN_FN
    try:
        outcome = _resolve(run_fn)(trial.config if custom else trial)
    except Exception:
        failed = TrialOutcome.failed(trial, traceback.format_exc(), started)
        failed.meta.wall_seconds = time.monotonic() - t0
        return failed
    try:
        out = TrialOutcome.from_value(outcome)
    except ValueError as exc:
        return TrialOutcome.failed(trial, f"run_fn returned an invalid outcome: {exc}", started)
    if custom:
        out.trial_id, out.config = trial.id, trial.config
    return out


def quiet_library_warnings() -> None:
    """Hide library deprecation chatter (Lightning on newer torch) from trial output."""
    warnings.filterwarnings("ignore", message=r".*LeafSpec.*", category=FutureWarning)


def default_workers(configs: Iterable[Mapping[str, Any]], cores: int) -> tuple[int, list[str]]:
    """``(workers, gpus)``: one worker per visible GPU for GPU matrices, else one per core."""
    accelerators = {str((c.get("trainer") or {}).get("accelerator", "cpu")) for c in configs}
    if accelerators & set(GPU_ACCELERATORS):
        gpus = visible_gpus()
        if gpus:
            return len(gpus), gpus
    return cores, []


def configure_worker(threads: int) -> None:
    """Set up a process that runs trials: ``threads`` torch/BLAS threads, quiet library warnings.

    Executors (local pool workers, Ray tasks) call it once per process before :func:`run_one`.
    """
    global _THREADS
    _THREADS = threads
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(threads)
    quiet_library_warnings()


def _init_worker(
    threads: int, slot: Any = None, gpus: tuple[str, ...] = (), parent: int | None = None
) -> None:
    die_with_parent(os.getppid() if parent is None else parent)
    configure_worker(threads)
    if slot is not None and len(gpus) > 1:
        with slot.get_lock():
            index = slot.value
            slot.value += 1
        os.environ["CUDA_VISIBLE_DEVICES"] = gpus[index % len(gpus)]
    signal.signal(signal.SIGINT, signal.SIG_IGN)


PARENT_POLL_SECONDS = 0.5


def die_with_parent(parent: int) -> None:
    """End this process with SIGKILL as soon as ``parent`` (its parent's pid) is gone.

    SIGKILL because a trial catches SIGTERM (Lightning's signal connector ends ``fit`` and the
    pool worker then takes its next trial). ``PR_SET_PDEATHSIG`` does it at once on Linux; a
    daemon thread polling the parent id does it elsewhere, or when the prctl is refused."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(Exception):
            import ctypes

            ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(PARENT_POLL_SECONDS)
        os.kill(os.getpid(), signal.SIGKILL)

    if os.getppid() != parent:
        os.kill(os.getpid(), signal.SIGKILL)
    threading.Thread(target=watch, name="techbench-parent-watch", daemon=True).start()


@dataclass(frozen=True)
class Job:
    """What every trial of one executor call shares: the store, the matrix name, the trial
    function (``run_fn(config) -> TrialOutcome``, or its ``"module:function"`` path) and whether
    failed trials are run again."""

    out: str
    matrix_name: str | None
    run_fn: RunFn
    rerun_failed: bool
    reuse_other_versions: bool = False


def run_one(
    trial: Trial,
    job: Job,
    wait: bool = False,
    stop_path: str | None = None,
) -> tuple[str, str]:
    """Claim, re-check, run and store one trial; returns ``(trial_id, status)``.

    The per-trial entry every executor calls in the process that runs the trial (the local
    pool's workers, the inline path, Ray tasks); ``wait`` blocks on another process's claim,
    and an existing ``stop_path`` file cancels the trial before it starts.

    Statuses beyond the outcome's: ``busy`` (another process holds the claim), ``skipped``
    (already stored when claimed), ``cancelled`` (the run is stopping).
    """
    return run_unit([trial], job, wait, stop_path)[0]


def run_unit(
    trials: list[Trial],
    job: Job,
    wait: bool = False,
    stop_path: str | None = None,
) -> list[tuple[str, str]]:
    """Run one unit of work (a stack of trials, see :mod:`techbench.plan.stacking`, or one trial);
    ``(id, status)`` per member, in order.

    Every member is claimed (a member another process holds is ``busy``, one already stored
    ``skipped``); the rest train together with :func:`techbench.engine.trial.run_stack` (one alone
    with ``job.run_fn``) and each outcome is stored as its own trial, their rows in one batch
    file (:meth:`ResultStore.write_batch`).
    """
    if stop_path is not None and os.path.exists(stop_path):
        return [(t.id, "cancelled") for t in trials]
    if _THREADS is not None and "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(_THREADS)
    store = ResultStore(job.out)
    results: dict[str, str] = {}
    with contextlib.ExitStack() as held:
        run: list[Trial] = []
        for trial in trials:
            if not held.enter_context(store.claim(trial.id, wait=wait)):
                results[trial.id] = "busy"
                continue
            if _already_done(store, trial, job):
                results[trial.id] = "skipped"
                continue
            run.append(trial)
        markers = [store.mark_running(t.id) for t in run]
        try:
            if len(run) == 1:
                outcomes = [_call(job.run_fn, run[0])]
            else:
                outcomes = _call_stack(run) if run else []
            if job.run_fn == DEFAULT_RUN_FN:
                for outcome in outcomes:
                    _add_modelled_time(store, outcome)
            store.write_batch(outcomes, job.matrix_name)
            for outcome in outcomes:
                results[outcome.trial_id] = outcome.status
        finally:
            for marker in markers:
                marker.unlink(missing_ok=True)
    return [(t.id, results[t.id]) for t in trials]


def _add_modelled_time(store: ResultStore, outcome: TrialOutcome) -> None:
    """``step_seconds`` (the configuration's calibrated step time alone, see
    :mod:`techbench.execute.calibrate`) and ``modelled_seconds`` = steps x step_seconds into the meta."""
    if outcome.status == "failed":
        return
    from .calibrate import step_seconds

    seconds = step_seconds(store, outcome.config)
    outcome.meta.step_seconds = seconds
    outcome.meta.modelled_seconds = seconds * outcome.meta.steps


def _call_stack(trials: list[Trial]) -> list[TrialOutcome]:
    """The stack's outcomes; when the stack as a whole failed, each member run alone instead.

    A stack fails as a whole when one member's plugin raises, or when the stacked engine can't
    run a network (a model ``vmap`` can't batch): running the members alone then gives each
    its own result, so stacking never costs a trial, only time; the stacked error's last line
    is kept in each member's meta (:attr:`TrialMeta.stack_error`). What is known before a run
    never gets here: :func:`techbench.plan.stacking.plan_stacks` plans such trials alone. A stack too large for the device's memory
    is halved until its parts fit (the ``--stack auto`` cap is a size, not a memory budget).
    """
    from ..engine.trial import run_stack

    started = now_iso()
    try:
        outcomes = run_stack(trials)
    except Exception:
        error = traceback.format_exc()
        outcomes = [TrialOutcome.failed(t, error, started) for t in trials]
    if any(o.status != "failed" for o in outcomes):
        return outcomes
    lines = (outcomes[0].meta.error or "").strip().splitlines()
    if len(trials) > 1 and lines and _out_of_memory(lines[-1]):
        half = (len(trials) + 1) // 2
        return _call_stack(trials[:half]) + _call_stack(trials[half:])
    alone = [_call(DEFAULT_RUN_FN, t) for t in trials]
    for outcome in alone:
        outcome.meta.stack_error = lines[-1] if lines else "unknown"
    return alone


def _out_of_memory(line: str) -> bool:
    """Whether a stack's error line is the device running out of memory (torch's CUDA/MPS
    ``OutOfMemoryError``, or an allocator's "out of memory")."""
    return "OutOfMemoryError" in line or "out of memory" in line.lower()


def _quarantine_main(trial: Trial, job: Job, threads: int) -> None:
    _init_worker(threads)
    run_one(trial, job, True, None)


def _already_done(store: ResultStore, trial: Trial, job: Job) -> bool:
    """Under the trial's claim: is its stored result to be kept? Finished by the installed
    plugin versions (or by others, with ``reuse_other_versions``), or failed without
    ``rerun_failed``."""
    status = store.status(trial.id, verify=True)
    if status in FINISHED:
        meta = store.read_meta(trial.id) or {}
        return job.reuse_other_versions or _other_versions(meta, trial.config) is None
    return status == "failed" and not job.rerun_failed


def _other_versions(meta: Mapping[str, Any], config: Mapping[str, Any]) -> str | None:
    """What differs between the code that produced a stored trial and the installed plugins."""
    if not isinstance(meta.get("techniques"), Mapping):
        return None  # stored without provenance: nothing to compare
    return other_versions(meta, technique_sources(config))


def plan(
    trials: Iterable[Trial | Mapping[str, Any]],
    store: ResultStore,
    rerun_failed: bool = False,
    *,
    reuse_other_versions: bool = False,
    changed: list[tuple[str, str]] | None = None,
) -> tuple[list[Trial], int]:
    """``(todo, n_already_stored)``: the trials still to run, in order, without duplicates
    (configs from a caller of the Python API become trials here, :func:`as_trial`).

    A completed or diverged trial produced by other versions of its techniques' distributions
    is appended to ``changed`` as ``(trial_id, what changed)`` and is to run again, unless
    ``reuse_other_versions``.
    """
    statuses = store.statuses(verify=True)
    unique: dict[str, Trial] = {}
    for value in trials:
        trial = as_trial(value)
        unique.setdefault(trial.id, trial)
    finished = [tid for tid in unique if statuses.get(tid) in FINISHED]
    with ThreadPoolExecutor(max_workers=8) as pool:
        metas = dict(zip(finished, pool.map(store.read_meta, finished, chunksize=64), strict=True))
    todo: list[Trial] = []
    already = 0
    for tid, trial in unique.items():
        status = statuses.get(tid)
        meta = metas.get(tid)
        why = None if meta is None else _other_versions(meta, trial.config)
        if why is not None:
            if changed is not None:
                changed.append((tid, why))
            if not reuse_other_versions:
                todo.append(trial)
                continue
        if status is None or (status == "failed" and rerun_failed):
            todo.append(trial)
        else:
            already += 1
    return todo, already


def execute(
    trials: Iterable[Trial | Mapping[str, Any]],
    out: str | os.PathLike[str],
    *,
    matrix_name: str | None = None,
    workers: int | None = None,
    run_fn: RunFn = DEFAULT_RUN_FN,
    rerun_failed: bool = False,
    progress: bool | None = None,
    matrix_info: Mapping[str, Any] | None = None,
    stream: Any = None,
    stack: str | int = "auto",
    reuse_other_versions: bool = False,
) -> RunResult:
    """Run every trial of ``trials`` (planned :class:`Trial` values, or configs) not yet stored
    in ``out``; see the module docstring.

    ``workers``: processes (default: the machine's cores, or one per visible GPU when a trial's
    accelerator is gpu/cuda/auto and CUDA is there, each worker pinned to its own GPU; never more
    than half the trials to run, as starting a worker costs about one trial; 1 runs in this
    process).
    ``run_fn``: ``config -> TrialOutcome`` (a callable importable by name, or ``"module:attr"``).
    ``progress``: the bar (None: only when stderr is a terminal).
    ``stack``: trials of one shape train together (:mod:`techbench.plan.stacking`): "auto" sizes stacks
    from the device (:func:`plan_units`), an int caps their size, "off" (or 1) runs one by one;
    a custom ``run_fn`` runs one by one.
    ``reuse_other_versions``: keep stored trials produced by other plugin versions as results
    (default: rerun them); either way they are listed in ``RunResult.other_versions``.
    """
    store = ResultStore(out).ensure()
    store.cleanup()
    if matrix_info is not None:
        store.write_matrix(matrix_info)
    changed: list[tuple[str, str]] = []
    todo, already = plan(
        trials, store, rerun_failed, reuse_other_versions=reuse_other_versions, changed=changed
    )
    total = len(todo) + already
    cores = available_cores()
    gpus: list[str] = []
    units = make_units(todo, stack if run_fn == DEFAULT_RUN_FN else "off")
    if workers is None and todo:
        workers, gpus = default_workers([t.config for t in todo], cores)
        workers = min(workers, max(1, len(units) // 2))  # a worker's start costs about a unit
    workers = max(1, min(workers or cores, max(1, len(units))))
    bar = Progress(total, enabled=progress, stream=stream, already=already)
    result = RunResult(total=total, already=already, other_versions=changed)
    t0 = time.monotonic()
    job = Job(str(store.root), matrix_name, run_fn, rerun_failed, reuse_other_versions)
    stop_path = store.scratch_path("stop")
    try:
        if workers == 1:
            result.exit_signal = _run_inline(units, job, bar)
        else:
            threads = max(1, cores // workers)
            result.exit_signal = _run_pool(
                units, store, job, bar, workers, threads, str(stop_path), tuple(gpus)
            )
    finally:
        bar.close()
        with contextlib.suppress(OSError):
            stop_path.unlink(missing_ok=True)
    result.interrupted = bool(result.exit_signal)
    if result.interrupted:
        store.cleanup()
        release_stale_locks(store, [t.id for t in todo])
    result.counts = bar.settle(stored_statuses(store, [t.id for t in todo]))
    result.seconds = time.monotonic() - t0
    result.summary = bar.summary()
    return result


def stored_statuses(store: ResultStore, ids: list[str]) -> dict[str, str | None]:
    """Each id's stored status (None: not stored, or corrupt), read in parallel."""
    with ThreadPoolExecutor(max_workers=8) as pool:
        return dict(zip(ids, pool.map(store.status, ids, chunksize=64), strict=True))


def release_stale_locks(store: ResultStore, ids: Iterable[str]) -> None:
    """Remove the lock files of ``ids`` that no process holds (left by killed workers); a
    claim removes its file when it ends, and one held by another process stays."""
    for tid in ids:
        if (store.locks_dir / f"{tid}.lock").exists():
            with store.claim(tid):
                pass


Unit = tuple[list[Trial], bool]
"""A unit of work: a stack's trials, and whether to wait for their claims."""


def make_units(todo: list[Trial], stack: str | int) -> list[Unit]:
    """Group pending trials into units (stacks) per the ``stack`` policy."""
    return [(list(st.trials), False) for st in plan_units(todo, stack)]


def _run_inline(units: list[Unit], job: Job, bar: Progress) -> int:
    """Run ``units`` in this process; the signal that stopped it (0: ran to the end)."""
    with _sigint_guard() as hit:
        waiting = list(units)
        while waiting:
            busy: list[Unit] = []
            for trials, wait in waiting:
                try:
                    results = run_unit(trials, job, wait, None)
                except (KeyboardInterrupt, SystemExit) as exc:
                    if isinstance(exc, SystemExit) and not hit:
                        raise
                    if hit[0] == signal.SIGINT:
                        bar.note(
                            "interrupted: the running trials are not stored; "
                            "finished trials are kept"
                        )
                    return hit[0]
                if hit:  # the trial swallowed the interrupt (Lightning's graceful exit)
                    if hit[0] == signal.SIGINT:
                        bar.note("interrupted: finished trials are kept")
                    return hit[0]
                _tally(results, trials, busy, bar)
            waiting = busy
    return 0


def _tally(results: list[tuple[str, str]], trials: list[Trial], busy: list, bar: Progress) -> None:
    """Count finished members; members another process holds go back to ``busy`` (one unit)."""
    held = {tid for tid, status in results if status == "busy"}
    for tid, status in results:
        if status != "busy":
            bar.update(status, tid)
    if held:
        busy.append(([t for t in trials if t.id in held], True))


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


@contextlib.contextmanager
def _sigint_guard() -> Any:
    """Make Ctrl-C (or SIGTERM) stop an in-process trial whatever it catches; a second one
    exits at once.

    Lightning turns a ``KeyboardInterrupt`` inside ``trainer.fit`` into ``sys.exit(1)`` after
    ignoring SIGINT; the handler records the signal, so the caller can tell that exit from a
    trial's own, and the previous handlers are restored afterwards. Yields a list that holds the
    signal once one arrived."""
    hit: list[int] = []
    if not _main_thread():
        yield hit
        return

    def on_signal(signum: int, frame: Any) -> None:
        if hit:
            sys.stderr.write("techbench: interrupted twice; stopping now\n")
            os._exit(128 + signum)
        hit.append(signum)
        raise Terminated if signum == signal.SIGTERM else KeyboardInterrupt

    with _handlers(on_signal, signal.SIGINT, signal.SIGTERM):
        yield hit


@contextlib.contextmanager
def _handlers(handler: Any, *signums: int) -> Any:
    """``handler`` for ``signums`` while the block runs (main thread only), then the previous."""
    if not _main_thread():
        yield
        return
    previous = {signum: signal.signal(signum, handler) for signum in signums}
    try:
        yield
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old if old is not None else signal.SIG_DFL)


@contextlib.contextmanager
def _sigint_deferred() -> Any:
    """Start workers with SIGINT ignored (inherited across exec: a Ctrl-C while they import
    prints no traceback; the parent decides what it does) without losing a Ctrl-C sent
    meanwhile: SIGINT is blocked too, and Linux keeps a blocked signal pending even while it
    is ignored, so it reaches this process once the block ends."""
    block = hasattr(signal, "pthread_sigmask")
    if block:
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        with _handlers(signal.SIG_IGN, signal.SIGINT):
            yield
    finally:
        if block:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


def _run_pool(
    units: list[Unit],
    store: ResultStore,
    job: Job,
    bar: Progress,
    workers: int,
    threads: int,
    stop_path: str,
    gpus: tuple[str, ...] = (),
) -> int:
    """Run ``units`` on worker processes; the signal that stopped it (0: ran to the end)."""
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    slot = ctx.Value("i", 0)
    queue = list(units)
    with _handlers(raise_terminated, signal.SIGTERM):
        while queue:
            busy: list[Unit] = []
            crashed: list[Unit] = []
            pool = ProcessPoolExecutor(
                max_workers=min(workers, len(queue)),
                mp_context=ctx,
                initializer=_init_worker,
                initargs=(threads, slot, gpus, os.getpid()),
            )
            pending: dict[Future, Unit] = {}
            try:
                with _sigint_deferred():
                    for trials, wait in queue:
                        fut = pool.submit(run_unit, trials, job, wait, stop_path)
                        pending[fut] = (trials, wait)
                for fut in as_completed(list(pending)):
                    _settle(fut, pending, crashed, busy, bar)
            except KeyboardInterrupt as exc:
                return _stop(pool, pending, bar, stop_path, exc)
            pool.shutdown(wait=True)
            crashed.extend(pending.values())
            queue = []
            try:
                if crashed:
                    queue = _recover(crashed, store, job, bar, ctx, threads)
            except KeyboardInterrupt as exc:
                return signal.SIGTERM if isinstance(exc, Terminated) else signal.SIGINT
            queue.extend(busy)
    return 0


def _stop(
    pool: ProcessPoolExecutor,
    pending: dict[Future, Unit],
    bar: Progress,
    stop_path: str,
    first: KeyboardInterrupt,
) -> int:
    """After Ctrl-C or SIGTERM: cancel the units not started; after Ctrl-C wait for the running
    ones, after SIGTERM or a second Ctrl-C kill them. Returns the signal.

    The pool's own thread cancels the queued units (``shutdown(cancel_futures=True)``): a
    future cancelled from here would make it fail on a killed worker (CPython 3.11 sets an
    exception on every pending future then, cancelled or not)."""
    procs = list((getattr(pool, "_processes", None) or {}).values())
    Path(stop_path).touch()
    pool.shutdown(wait=False, cancel_futures=True)
    if isinstance(first, Terminated):
        _kill(procs)
        return signal.SIGTERM
    running = sum(len(unit[0]) for fut, unit in pending.items() if fut.running())
    bar.note(
        f"interrupted: waiting for {running} running trial(s) to finish "
        "(Ctrl-C again to kill them); finished trials are kept"
    )
    try:
        while pending:  # the pool cancels without waking waiters: poll for what it cancelled
            for fut in [f for f in pending if f.done()]:
                _settle(fut, pending, [], [], bar)
            wait_for(list(pending), timeout=0.2, return_when=FIRST_COMPLETED)
        for proc in procs:  # they exit once the pool has no work left
            proc.join()
    except KeyboardInterrupt as again:
        _kill(procs)
        return signal.SIGTERM if isinstance(again, Terminated) else signal.SIGINT
    return signal.SIGINT


def _kill(procs: list[Any]) -> None:
    """SIGKILL worker processes and reap them: a trial catches SIGTERM (Lightning finishes the
    step and goes on), and the interpreter's exit would wait for them."""
    for proc in procs:
        with contextlib.suppress(Exception):
            proc.kill()
    for proc in procs:
        with contextlib.suppress(Exception):
            proc.join(timeout=5)


def _settle(fut: Future, pending: dict, crashed: list, busy: list, bar: Progress) -> None:
    trials, wait = pending.pop(fut)
    if fut.cancelled():  # not started when the run stopped
        return
    try:
        results = fut.result()
    except BrokenProcessPool:
        crashed.append((trials, wait))
        return
    except Exception as exc:
        ids = ", ".join(t.id for t in trials)
        bar.note(f"trials {ids}: worker error: {type(exc).__name__}: {exc}")
        results = [(t.id, "failed") for t in trials]
    _tally(results, trials, busy, bar)


def _recover(
    crashed: list[Unit],
    store: ResultStore,
    job: Job,
    bar: Progress,
    ctx: Any,
    threads: int,
) -> list[Unit]:
    """After a worker died: re-run the trials that were running, each alone; return the rest.

    The running ones are told by their ``.running`` markers (a stack's members all have one);
    when none is found, every trial of the broken pool is re-run alone, so a trial that kills
    its process can never loop.
    """
    members: list[Unit] = [([t], w) for trials, w in crashed for t in trials]
    suspects = [item for item in members if store.running_marker(item[0][0].id).exists()]
    if not suspects:
        suspects = list(members)
    rest = [item for item in members if item not in suspects]
    for (trial,), _wait in suspects:
        tid = trial.id
        store.running_marker(tid).unlink(missing_ok=True)
        proc = ctx.Process(target=_quarantine_main, args=(trial, job, threads), daemon=True)
        proc.start()
        try:
            proc.join()
        except KeyboardInterrupt:
            proc.kill()
            proc.join()
            raise
        if proc.exitcode == 0:
            bar.update(store.status(tid) or "failed")
            continue
        store.running_marker(tid).unlink(missing_ok=True)
        code = proc.exitcode
        why = (
            f"signal {-code} ({signal.Signals(-code).name})"
            if code and code < 0
            else f"exit {code}"
        )
        error = f"the worker process died ({why}) while running this trial, twice"
        bar.note(f"trial {tid}: {error}")
        with store.claim(tid, wait=True):
            if store.status(tid) not in ("completed", "diverged"):
                store.write(TrialOutcome.failed(trial, error), job.matrix_name)
        bar.update("failed")
    return rest
