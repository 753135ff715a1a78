"""Scale out: the Ray executor (``--executor ray``) and ``--shard K/N`` for job arrays.

Ray: every trial is one Ray task that calls the local executor's per-trial function (claim the
trial's lock in the store, re-check, ``run_fn(config)``, :meth:`ResultStore.write`), so results
are identical to the local executor's by construction and the store must be a folder every node
can see (a shared filesystem). Tasks ask for ``cpus_per_trial`` CPUs and ``gpus_per_trial``
GPUs (fractions allowed: 0.25 puts four small trials on one GPU); the default GPU share comes
from the matrix's ``[trainer]``: ``accelerator = "gpu"``/``"cuda"`` asks for ``devices`` GPUs,
``"auto"`` asks for one GPU when the cluster has any, ``"cpu"`` for none.

A worker that dies mid-trial (segfault, OOM kill, a lost node) releases the trial's lock with its
process; Ray re-runs the task up to ``max_retries`` times, and after that the driver stores the
trial as ``failed`` with the reason. Finished trials were written by their worker before its task
returned, so nothing finished is ever lost. Ctrl-C: pending trials are cancelled, running ones
finish and are stored (a second Ctrl-C cancels them).

Shards: :func:`techbench.plan.shard.shard_trials` keeps the K-th of N disjoint parts of a matrix's
trials (by sorted trial id), so a SLURM array ``--array=1-N`` running
``techbench run MATRIX --shard $SLURM_ARRAY_TASK_ID/N`` covers every trial exactly once.

``ray`` is optional (``pip install 'techbench[ray]'``) and imported only when used.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import UsageError

if TYPE_CHECKING:
    from ..schema import Trial
    from .local import RunFn, RunResult

EXECUTORS = ("local", "ray")
DEFAULT_MAX_RETRIES = 2
_GPU_ACCELERATORS = ("gpu", "cuda")


def gpus_for(trainer: Mapping[str, Any] | None, cluster_gpus: float) -> float:
    """The default GPU share of a trial from the matrix's ``[trainer]`` table."""
    trainer = trainer or {}
    accelerator = str(trainer.get("accelerator", "cpu")).lower()
    devices = trainer.get("devices", 1)
    if accelerator in _GPU_ACCELERATORS:
        return float(devices) if isinstance(devices, int) else 1.0
    if accelerator == "auto" and cluster_gpus > 0:
        return float(devices) if isinstance(devices, int) else 1.0
    return 0.0


def _import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise UsageError("--executor ray needs Ray: pip install 'techbench[ray]'") from None
    return ray


def _init_ray(ray: Any, address: str | None, num_cpus: int | None) -> bool:
    """Connect (or start a local cluster); True if this call started the connection."""
    if ray.is_initialized():
        return False
    kwargs: dict[str, Any] = {
        "include_dashboard": False,
        "log_to_driver": False,
        "logging_level": "error",
        "configure_logging": True,
    }
    if address:
        kwargs["address"] = address
    else:
        # a private local instance: no token to manage; a 0-GPU task must not see the GPUs
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
        os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "1")
        if num_cpus is not None:
            kwargs["num_cpus"] = num_cpus
    try:
        ray.init(**kwargs)
    except ConnectionError as exc:
        raise UsageError(f"--address {address}: cannot connect to a Ray cluster: {exc}") from None
    return True


def _ray_task(
    trials: list[Trial],
    out: str,
    matrix_name: str | None,
    run_fn: RunFn,
    rerun_failed: bool,
    wait: bool,
    stop_path: str,
    threads: int,
) -> list[tuple[str, str]]:
    """Body of one Ray task: the local executor's unit (a stack or one trial): claim -> run ->
    store.write, ``(id, status)`` per member."""
    from .local import Job, configure_worker, run_unit

    configure_worker(threads)
    return run_unit(trials, Job(out, matrix_name, run_fn, rerun_failed), wait, stop_path)


def execute_ray(
    trials: Iterable[Trial | Mapping[str, Any]],
    out: str | os.PathLike[str],
    *,
    matrix_name: str | None = None,
    run_fn: RunFn | None = None,
    rerun_failed: bool = False,
    progress: bool | None = None,
    matrix_info: Mapping[str, Any] | None = None,
    stream: Any = None,
    address: str | None = None,
    num_cpus: int | None = None,
    cpus_per_trial: float | None = None,
    gpus_per_trial: float | None = None,
    max_retries: int = DEFAULT_MAX_RETRIES,
    stack: str | int = "auto",
) -> RunResult:
    """Run every trial of ``trials`` (planned :class:`Trial` values, or configs) not yet stored in ``out`` as Ray tasks.

    ``address``: an existing cluster (``"auto"`` or ``HOST:PORT``); None starts a local one with
    ``num_cpus`` CPUs, or uses the one this process is already connected to.
    ``gpus_per_trial``: None derives it from the configs' ``trainer`` (see the module docstring);
    a task trains one stack (``stack``: as :func:`techbench.execute.execute`), so the resources
    asked are per stack.
    Returns the same :class:`~techbench.execute.RunResult` as the local executor.
    """
    from ..store.writer import ResultStore
    from .local import DEFAULT_RUN_FN, RunResult, make_units, plan, stored_statuses
    from .progress import Progress

    ray = _import_ray()
    store = ResultStore(out).ensure()
    store.cleanup()
    if matrix_info is not None:
        store.write_matrix(matrix_info)
    todo, already = plan(trials, store, rerun_failed)
    bar = Progress(len(todo) + already, enabled=progress, stream=stream, already=already)
    result = RunResult(total=len(todo) + already, already=already)
    t0 = time.monotonic()
    if not todo:
        bar.close()
        result.summary = bar.summary()
        return result
    started = _init_ray(ray, address, num_cpus)
    cpus = 1.0 if cpus_per_trial is None else float(cpus_per_trial)
    cluster_gpus = float(ray.cluster_resources().get("GPU", 0))
    if gpus_per_trial is None:
        gpus_per_trial = gpus_for(todo[0].config.get("trainer"), cluster_gpus)
    if gpus_per_trial > cluster_gpus:
        why = f"each trial asks for {gpus_per_trial:g} GPU(s), the Ray cluster has {cluster_gpus:g}"
        if started and not address:
            ray.shutdown()
            bar.close()
            raise UsageError(f"{why}: use --gpus-per-trial 0 or a matrix with accelerator 'cpu'")
        bar.note(f"techbench run: warning: {why}; trials wait until the cluster has them")
    task = ray.remote(_ray_task).options(
        num_cpus=cpus,
        num_gpus=gpus_per_trial,
        max_retries=max_retries,
        retry_exceptions=False,
        name="techbench-trial",
    )
    stop_path = str(store.tmp_dir / f"stop.{os.getpid()}")
    args = (str(store.root), matrix_name, run_fn or DEFAULT_RUN_FN, rerun_failed)
    threads = max(1, int(cpus))
    try:
        units = make_units(todo, stack if (run_fn or DEFAULT_RUN_FN) == DEFAULT_RUN_FN else "off")
        result.interrupted = _drive(ray, task, units, store, args, stop_path, threads, bar)
    finally:
        bar.close()
        with contextlib.suppress(OSError):
            Path(stop_path).unlink(missing_ok=True)
        if started:
            ray.shutdown()
    result.counts = bar.settle(stored_statuses(store, [t.id for t in todo]))
    result.seconds = time.monotonic() - t0
    result.summary = bar.summary()
    return result


def _drive(
    ray: Any,
    task: Any,
    units: list[Any],
    store: Any,
    args: tuple,
    stop_path: str,
    threads: int,
    bar: Any,
) -> bool:
    """Submit, collect, resubmit busy trials (waiting for their lock); True if interrupted."""
    queue = list(units)
    while queue:
        pending = {
            task.remote(trials, *args, wait, stop_path, threads): trials for trials, wait in queue
        }
        queue = []
        try:
            _collect(ray, pending, queue, store, args[1], bar)
        except KeyboardInterrupt:
            Path(stop_path).touch()
            bar.note(
                "interrupted: pending trials are cancelled, waiting for the running ones "
                "to finish (Ctrl-C again to kill them); finished trials are kept"
            )
            try:
                _collect(ray, pending, [], store, args[1], bar)
            except KeyboardInterrupt:
                for ref in pending:
                    with contextlib.suppress(Exception):
                        ray.cancel(ref, force=True)
            return True
    return False


def _collect(
    ray: Any, pending: dict, busy: list, store: Any, matrix_name: str | None, bar: Any
) -> None:
    while pending:
        ready, _ = ray.wait(list(pending), num_returns=1)
        for ref in ready:
            trials = pending.pop(ref)
            try:
                results = ray.get(ref)
            except ray.exceptions.TaskCancelledError:
                for _ in trials:
                    bar.update("cancelled")
                continue
            except ray.exceptions.RayError as exc:
                results = [(t.id, _store_failure(store, t, matrix_name, exc, bar)) for t in trials]
            held = [t for (_, status), t in zip(results, trials, strict=True) if status == "busy"]
            for _tid, status in results:
                if status != "busy":
                    bar.update(status)
            if held:
                busy.append((held, True))


def _store_failure(
    store: Any, trial: Trial, matrix_name: str | None, exc: BaseException, bar: Any
) -> str:
    """Record a trial whose task failed for good (its worker died on every try) as failed."""
    from ..schema import FINISHED, TrialOutcome

    first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    error = f"the Ray task failed ({type(exc).__name__}) after its retries: {first}"
    bar.note(f"trial {trial.id}: {error}")
    with store.claim(trial.id, wait=True):
        store.running_marker(trial.id).unlink(missing_ok=True)
        status = store.status(trial.id)
        if status in FINISHED:
            return status
        store.write(TrialOutcome.failed(trial, f"{error}\n{exc}"), matrix_name)
    return "failed"
