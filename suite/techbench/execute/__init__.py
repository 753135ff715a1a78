"""Executors: run planned stacks and write each outcome to the store.

``local`` (worker processes on this machine; claims trials in the store so concurrent executors
never run one twice; workers die with their parent), ``ray`` (the same on a Ray cluster),
``progress`` (the live progress line) and ``calibrate`` (step-time measurements for ``--dry-run``
estimates). Imports ``plan``, ``engine`` and ``store``. ``techbench.execute`` was a module
before 0.4; its public names are here.
"""

from .local import RunResult, default_workers, execute, plan
from .ray import execute_ray, gpus_for

__all__ = ["RunResult", "default_workers", "execute", "execute_ray", "gpus_for", "plan"]
