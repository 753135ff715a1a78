"""Every use of Lightning internals by the runner, in one place.

Checked against pytorch-lightning 2.6.6 (the version installed on the CPU and GPU machines).
Each one is a speed-up of the per-step and per-trainer overhead; where the internal it relies on
is missing (a different Lightning), the runner falls back to Lightning's public path with the
same results: the trainer is built without the entry-point cache, and the step goes through
``manual_backward`` and the ``LightningOptimizer``.
"""

from __future__ import annotations

from collections.abc import Callable
from importlib.metadata import entry_points
from typing import Any, cast

import pytorch_lightning as pl
import torch
from pytorch_lightning.strategies import SingleDeviceStrategy
from pytorch_lightning.trainer.connectors import callback_connector

from ..plan.stacking import PLAIN_PRECISIONS

_PLAIN_PRECISIONS = PLAIN_PRECISIONS

_FACTORIES: dict[str, list[Any]] = {}


def new_trainer(options: dict[str, Any]) -> pl.Trainer:
    """``pl.Trainer(**options)`` with the entry-point scan for external callbacks cached.

    Patches ``callback_connector._load_external_callbacks`` while the trainer is built.
    """
    original = getattr(callback_connector, "_load_external_callbacks", None)
    if original is None:
        return pl.Trainer(**options)
    callback_connector._load_external_callbacks = _external_callbacks
    try:
        return pl.Trainer(**options)
    finally:
        callback_connector._load_external_callbacks = original


def _external_callbacks(group: str) -> list[Any]:
    """Lightning's ``_load_external_callbacks`` with the entry-point scan done once per process.

    Scanning the installed distributions' entry points costs ~10 ms per ``Trainer``; the
    factories are still called per trainer, so every trainer gets fresh callback objects.
    """
    factories = _FACTORIES.get(group)
    if factories is None:
        factories = _FACTORIES[group] = [ep.load() for ep in entry_points(group=group)]
    out: list[Any] = []
    for factory in factories:
        made = factory()
        out.extend(made if isinstance(made, list) else [made])
    return out


def trainer_callbacks(trainer: pl.Trainer) -> list[pl.Callback]:
    """The trainer's callbacks (set at run time; Lightning's stubs don't declare the attribute)."""
    return cast(list[pl.Callback], cast(Any, trainer).callbacks)


def plain_precision(trainer: pl.Trainer) -> bool:
    """True when backward and step need nothing from Lightning (one device, no scaler, no AMP).

    Then the step calls ``loss.backward()`` and ``optimizer.step()`` itself (with the callbacks'
    backward/optimizer hooks) and counts the step with :func:`step_counter`, skipping
    Lightning's per-step wrappers.
    """
    if _step_progress(trainer) is None:
        return False
    precision = str(getattr(trainer.precision_plugin, "precision", trainer.precision))
    return isinstance(trainer.strategy, SingleDeviceStrategy) and precision in _PLAIN_PRECISIONS


def step_counter(trainer: pl.Trainer) -> Callable[[], None]:
    """Records one optimizer step in the fit loop's progress (what ``LightningOptimizer.step``
    does under manual optimization), so ``global_step`` and ``max_steps`` work as usual."""
    progress = _step_progress(trainer)
    assert progress is not None, "plain_precision(trainer) is False on this Lightning"
    ready, completed = progress.increment_ready, progress.increment_completed

    def count() -> None:
        ready()
        completed()

    return count


def _step_progress(trainer: pl.Trainer) -> Any:
    loop = getattr(trainer.fit_loop.epoch_loop, "manual_optimization", None)
    return getattr(loop, "optim_step_progress", None)


def unwrap_optimizer(optimizer: Any) -> torch.optim.Optimizer:
    """The ``torch.optim.Optimizer`` inside a ``LightningOptimizer`` (or the optimizer itself)."""
    return cast(torch.optim.Optimizer, getattr(optimizer, "optimizer", optimizer))
