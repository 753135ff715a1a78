"""The engine's Lightning plumbing and constants: batches, divergence, trainer and logger.

The one training module is :class:`techbench.engine.population.StackedModule` (a trial alone is a stack
of one); this module holds what it shares with the data and the trainer.

Speed choices (Lightning's per-step overhead is the cost of the runner): the whole split lives on
the device; every epoch one seeded permutation shuffles it once and the batches are contiguous
slices of the shuffled tensors (:class:`ShuffledBatches`: no per-sample collation, no DataLoader
workers); manual optimization, and for plain precisions on one device the step calls
``loss.backward()`` and ``optimizer.step()`` itself (with the callbacks' hooks);
:data:`STEPS_PER_BATCH` optimizer steps per Lightning batch, so Lightning's per-batch machinery
runs once per group; no validation loop, progress bar, model summary, checkpointing or logger
unless asked. The per-step losses are buffered on the device and moved to the host every
:data:`LOSS_FLUSH_EVERY` steps in one transfer, where each is checked for divergence
(:func:`scan_losses`): the recorded step is exact, training stops at that flush, and no step
pays a synchronisation. The Lightning internals these shortcuts rely on are confined to
:mod:`techbench.engine._lightning_compat`.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import pytorch_lightning as pl
import torch

from .. import tasks
from ..schema import metric_row
from ._lightning_compat import (
    new_trainer,
)

LOSS_FLUSH_EVERY = 10
"""Per-step losses go to the host (and are checked for divergence) every this many steps."""

DIVERGENCE_FACTOR = 1e3
"""A training loss above this factor times the first step's loss counts as divergence."""

EVAL_CHUNK = 4096


STEPS_PER_BATCH = 16
"""Optimizer steps per Lightning batch: the loader yields lists of this many minibatches and
``training_step`` runs them in a loop, so Lightning's per-batch machinery runs once per group.
Results are identical to one minibatch per Lightning batch (same order, same steps); Lightning's
own per-batch checks (``max_time``, per-batch callback hooks) see groups."""


class ShuffledBatches:
    """Batches of in-memory tensors: one seeded permutation per epoch, contiguous slices.

    A tail of a single sample is folded into the previous batch (batch norm needs two). With
    ``group`` > 1 each item is a list of up to ``group`` consecutive (x, y) minibatches.
    """

    def __init__(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        batch_size: int,
        generator: torch.Generator,
        group: int = 1,
    ) -> None:
        self.x, self.y, self.batch_size, self.generator = x, y, batch_size, generator
        self.group = max(int(group), 1)
        n = len(x)
        bounds = [*range(0, n, batch_size), n]
        if len(bounds) > 2 and bounds[-1] - bounds[-2] < 2:
            del bounds[-2]
        self.bounds = bounds

    @property
    def num_minibatches(self) -> int:
        return len(self.bounds) - 1

    def __len__(self) -> int:
        return -(-self.num_minibatches // self.group)

    def __iter__(self) -> Iterator[Any]:
        perm = torch.randperm(len(self.x), generator=self.generator).to(self.x.device)
        xs, ys = self.x[perm], self.y[perm]
        pairs = [(xs[lo:hi], ys[lo:hi]) for lo, hi in itertools.pairwise(self.bounds)]
        if self.group == 1:
            yield from pairs
            return
        for i in range(0, len(pairs), self.group):
            yield pairs[i : i + self.group]


def task_loss(task: str) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The task's training loss (see :mod:`techbench.tasks`)."""
    return tasks.loss_fn(task)


def scan_losses(
    steps: Sequence[tuple[int, int]], values: Sequence[float], first_loss: float | None
) -> tuple[list[dict[str, Any]], float | None, int | None]:
    """Per-step training-loss rows up to the first divergence: ``(rows, first_loss,
    diverged_step)``.

    A loss that is not finite or exceeds :data:`DIVERGENCE_FACTOR` times the first step's |loss|
    is divergence; its row is the last. ``steps`` holds each value's ``(step, epoch)``.
    """
    rows = []
    for (step, epoch), value in zip(steps, values, strict=True):
        rows.append(metric_row(step, epoch, "train", "loss", value))
        if first_loss is None:
            first_loss = value
        if not math.isfinite(value) or value > DIVERGENCE_FACTOR * abs(first_loss):
            return rows, first_loss, step
    return rows, first_loss, None


def build_logger(kind: str | None, save_dir: str | None, name: str) -> Any:
    """A Lightning logger: "csv" (default when a folder is given), "tensorboard", "mlflow" or None."""
    if kind is None or kind in ("none", "false"):
        return False
    save_dir = save_dir or "lightning_logs"
    if kind == "csv":
        from pytorch_lightning.loggers import CSVLogger

        return CSVLogger(save_dir, name=name)
    if kind == "tensorboard":
        from pytorch_lightning.loggers import TensorBoardLogger

        return TensorBoardLogger(save_dir, name=name)
    if kind == "mlflow":
        from pytorch_lightning.loggers import MLFlowLogger

        return MLFlowLogger(experiment_name=name, save_dir=save_dir)
    raise ValueError(f"unknown logger {kind!r}; one of csv, tensorboard, mlflow, none")


def build_trainer(
    trainer_options: Mapping[str, Any],
    budget: Mapping[str, Any],
    callbacks: Sequence[Any] = (),
    logger: Any = False,
    **extra: Any,
) -> pl.Trainer:
    """A ``pl.Trainer`` from the trial's ``trainer`` options and ``budget``, with low overhead."""
    import datetime

    epochs = budget.get("epochs")
    max_steps = budget.get("max_steps")
    max_seconds = budget.get("max_seconds")
    options: dict[str, Any] = {
        "accelerator": trainer_options.get("accelerator", "auto"),
        "devices": trainer_options.get("devices", 1),
        "precision": trainer_options.get("precision", "32-true"),
        "deterministic": trainer_options.get("deterministic", True),
        "max_epochs": epochs if epochs is not None else -1,
        "max_steps": max_steps if max_steps is not None else -1,
        "max_time": datetime.timedelta(seconds=max_seconds) if max_seconds else None,
        "callbacks": list(callbacks),
        "logger": logger,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "enable_checkpointing": False,
        "num_sanity_val_steps": 0,
        "limit_val_batches": 0,
        "log_every_n_steps": 1,
    }
    options.update(extra)
    return new_trainer(options)
