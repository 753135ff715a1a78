"""The LightningModule and DataModule composed from plugins.

Kept separable on purpose (so that several seeds of one configuration can later train together
with stacked parameters): :func:`techbench.trial.build_model` makes the network from the trial's parts,
:class:`TechniqueModule` owns one training step, :class:`TensorDataModule` feeds in-memory
tensors, :func:`build_trainer` maps the trial's trainer options onto a ``pl.Trainer``.

Speed choices (Lightning's per-step overhead is the cost of the runner): the whole split lives on
the device; every epoch one seeded permutation shuffles it once and the batches are contiguous
slices of the shuffled tensors (no per-sample collation, no DataLoader workers); manual
optimization, and for plain precisions on one device the step calls ``loss.backward()`` and
``optimizer.step()`` itself (with the callbacks' hooks); :data:`STEPS_PER_BATCH` optimizer
steps per Lightning batch (the module loops over a group of minibatches and drives the
:class:`~techbench.callbacks.StepCallback` hooks per step), so Lightning's per-batch machinery
runs once per group; no
validation loop, progress bar, model summary, checkpointing or logger unless
asked. Epoch-end evaluation (train and validation sets, eval mode) runs in chunks under
``torch.no_grad`` and moves its numbers to the host in one transfer. The per-step losses are
buffered on the device and moved to the host every :data:`LOSS_FLUSH_EVERY` steps in one
transfer, where each is checked for divergence: the recorded step is exact, training stops at
that flush, and no step pays a synchronisation. Data are cast to the model's floating dtype
when the fit starts ("64-true" trains a float64 model on float64 data). The Lightning internals
these shortcuts rely on are confined to :mod:`techbench._lightning_compat`.
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import pytorch_lightning as pl
import torch
from torch import nn

from . import tasks
from ._lightning_compat import (
    new_trainer,
    plain_precision,
    step_counter,
    trainer_callbacks,
    unwrap_optimizer,
)
from .callbacks import overrides, step_hooks
from .families import NOISE_SEED_OFFSET, DatasetSplits, Regularizer, bind_module_generator
from .schema import metric_row

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


class TensorDataModule(pl.LightningDataModule):
    """Holds a trial's splits; moves them to the training device once, in ``setup``."""

    def __init__(
        self, splits: DatasetSplits, batch_size: int, seed: int, group: int = STEPS_PER_BATCH
    ) -> None:
        super().__init__()
        self.splits = splits
        self.batch_size = batch_size
        self.group = group
        self.generator = torch.Generator().manual_seed(seed)
        self.tensors: dict[str, torch.Tensor] = {}

    def setup(self, stage: str | None = None) -> None:
        device = (
            self.trainer.strategy.root_device if self.trainer is not None else torch.device("cpu")
        )
        s = self.splits
        for name in ("x_train", "y_train", "x_val", "y_val", "x_test", "y_test"):
            self.tensors[name] = getattr(s, name).to(device)

    def cast_floating(self, dtype: torch.dtype) -> None:
        """Floating tensors (inputs, regression targets) to ``dtype``, the model's, once a
        precision plugin has converted the model ("64-true": float64)."""
        for name, t in self.tensors.items():
            if t.is_floating_point() and t.dtype != dtype:
                self.tensors[name] = t.to(dtype)

    def train_dataloader(self) -> ShuffledBatches:
        t = self.tensors
        return ShuffledBatches(
            t["x_train"], t["y_train"], self.batch_size, self.generator, self.group
        )

    def transfer_batch_to_device(
        self, batch: Any, device: torch.device, dataloader_idx: int
    ) -> Any:
        return batch  # already on the device


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


class TechniqueModule(pl.LightningModule):
    """One training step: regularizer hooks around forward, loss, backward, update, schedule.

    ``optimizer_factory(params)`` and ``schedule_factory(optimizer, total_steps)`` come from the
    optimizer and schedule plugins. Records the per-step loss, the epoch-end train/validation
    metrics and the best-validation weights (in memory) into ``rows`` (the tidy metric rows of
    the trial schema); stops training on divergence and sets ``diverged_step``.
    """

    def __init__(
        self,
        model: nn.Module,
        task: str,
        optimizer_factory: Callable[[Any], torch.optim.Optimizer],
        schedule_factory: Callable[[torch.optim.Optimizer, int], Any] | None,
        total_steps: int,
        regularizers: Sequence[Regularizer] = (),
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.automatic_optimization = False
        self.model = model
        self.task = task
        self.loss_fn = task_loss(task)
        self.optimizer_factory = optimizer_factory
        self.schedule_factory = schedule_factory
        self.total_steps = total_steps
        self.regularizers = list(regularizers)
        self.seed = seed
        self.rows: list[dict[str, Any]] = []
        self.diverged_step: int | None = None
        self.first_loss: float | None = None
        self.best_val_loss = math.inf
        self.best_state: dict[str, torch.Tensor] | None = None
        self.steps_done = 0
        self.epochs_done = 0
        self.train_seconds = 0.0
        self.eval_seconds = 0.0
        self._losses: list[torch.Tensor] = []
        self._loss_steps: list[tuple[int, int]] = []
        self._scheduler: Any = None
        self._generator: torch.Generator | None = None
        self._fit_start = 0.0
        self._direct: bool | None = None
        self._hook_cache: tuple[tuple[int, ...], dict[str, list[Any]]] | None = None
        self._fit_objects: tuple[Any, Any, Any] | None = None  # trainer, optimizer, counter
        self._hooks = {
            name: [r for r in self.regularizers if overrides(r, name, Regularizer)]
            for name in ("transform_batch", "penalty", "loss", "transform_gradients", "after_step")
        }
        self.gradient_transforms = list(self._hooks["transform_gradients"])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def configure_optimizers(self) -> Any:
        optimizer = self.optimizer_factory(self.model.parameters())
        if self.schedule_factory is not None:
            self._scheduler = self.schedule_factory(optimizer, self.total_steps)
        return optimizer

    def on_fit_start(self) -> None:
        self._fit_objects = self._hook_cache = None
        self._direct = None
        datamodule = getattr(self.trainer, "datamodule", None)
        dtype = next((p.dtype for p in self.model.parameters() if p.is_floating_point()), None)
        if dtype is not None and isinstance(datamodule, TensorDataModule):
            datamodule.cast_floating(dtype)
        self._generator = torch.Generator(device=self.device).manual_seed(
            self.seed + NOISE_SEED_OFFSET
        )
        bind_module_generator(self.model, self.seed, self.device)
        self._fit_start = time.perf_counter()

    def __setattr__(self, name: str, value: Any) -> None:
        # Per-step and per-hook state (Lightning sets _current_fx_name about 30 times an epoch)
        # is never a parameter, buffer or submodule: skip nn.Module's slower __setattr__.
        if name in _PLAIN_STATE:
            object.__setattr__(self, name, value)
        else:
            super().__setattr__(name, value)

    def _callback_hooks(self) -> dict[str, list[Any]]:
        """The trainer's callbacks that implement each per-step hook, looked up once per fit
        (:func:`techbench.callbacks.step_hooks`)."""
        callbacks = trainer_callbacks(self.trainer)
        key = tuple(map(id, callbacks))
        if self._hook_cache is None or self._hook_cache[0] != key:
            self._hook_cache = (key, step_hooks(callbacks))
        return self._hook_cache[1]

    def training_step(self, batch: Any, batch_idx: int) -> None:
        if not isinstance(batch, list):
            self._step(*batch)
            return
        trainer = self.trainer
        hooks = self._callback_hooks()
        begin, end = hooks["begin_step"], hooks["end_step"]
        epoch, max_steps = self.current_epoch, trainer.max_steps
        for x, y in batch:
            if trainer.should_stop or 0 <= max_steps <= trainer.global_step:
                break
            for cb in begin:
                cb.begin_step(trainer.global_step, epoch)
            self._step(x, y, epoch, hooks)
            for cb in end:
                cb.end_step()

    def _step(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        epoch: int | None = None,
        hooks: dict[str, list[Any]] | None = None,
    ) -> None:
        """One optimizer step on the minibatch (x, y), with every regularizer hook.

        ``epoch`` and ``hooks`` (the current epoch, the callbacks implementing each per-step
        hook) are looked up once per group by :meth:`training_step` rather than once per step.
        """
        if epoch is None:
            epoch = self.current_epoch
        for r in self._hooks["transform_batch"]:
            x, y = r.transform_batch(x, y, self._generator)
        out = self.model(x)
        loss = None
        for r in self._hooks["loss"]:
            replaced = r.loss(out, y)
            if replaced is not None:
                loss = replaced
        if loss is None:
            loss = self.loss_fn(out, y)
        for r in self._hooks["penalty"]:
            term = r.penalty(self.model)
            if term is not None:
                loss = loss + term
        if self._direct is None:
            self._direct = plain_precision(self.trainer)
        if self._direct:
            if self._fit_objects is None:
                trainer = self.trainer
                self._fit_objects = (
                    trainer,
                    unwrap_optimizer(trainer.optimizers[0]),
                    step_counter(trainer),
                )
            trainer, raw, count_step = self._fit_objects
            raw.zero_grad(set_to_none=True)
            if hooks is None:
                hooks = self._callback_hooks()
            for cb in hooks["on_before_backward"]:
                cb.on_before_backward(trainer, self, loss)
            loss.backward()
            for cb in hooks["on_after_backward"]:
                cb.on_after_backward(trainer, self)
            self._transform_gradients()
            for cb in hooks["on_before_optimizer_step"]:
                cb.on_before_optimizer_step(trainer, self, raw)
            raw.step()
            count_step()
        else:
            opt = self.optimizers()
            assert not isinstance(opt, list), "one optimizer per trial"
            opt.zero_grad(set_to_none=True)
            self.manual_backward(loss)
            self._transform_gradients()
            opt.step()
            raw = unwrap_optimizer(opt)
        for r in self._hooks["after_step"]:
            r.after_step(self.model, raw)
        if self._scheduler is not None:
            self._scheduler.step()
        self._losses.append(loss.detach())
        self._loss_steps.append((self.steps_done, epoch))
        self.steps_done += 1
        if len(self._losses) >= LOSS_FLUSH_EVERY:
            self._flush_losses()

    def _transform_gradients(self) -> None:
        """The regularizers' gradient hooks, after backward (and the callbacks' after-backward
        hooks) and before the optimizer step, given the step count and the trial's generator."""
        for r in self.gradient_transforms:
            r.transform_gradients(self.model, self.steps_done, self._generator)

    def _flush_losses(self) -> None:
        """The buffered losses to the host in one transfer (the only synchronisation, every
        :data:`LOSS_FLUSH_EVERY` steps), then checked there, step by step: the first that is not
        finite or exceeds ``DIVERGENCE_FACTOR`` times the first step's |loss| is the exact
        ``diverged_step``. Checking the transferred values costs no device work at all (a
        per-step device-side flag costs several kernel launches per step)."""
        if not self._losses:
            return
        values = torch.stack(self._losses).double().tolist()
        if self.diverged_step is None:
            rows, self.first_loss, self.diverged_step = scan_losses(
                self._loss_steps, values, self.first_loss
            )
            self.rows += rows
        self._losses.clear()
        self._loss_steps.clear()
        if self.diverged_step is not None:
            self.trainer.should_stop = True

    @torch.no_grad()
    def evaluate(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The task's metrics (:func:`techbench.tasks.metric_names`) over (x, y) in eval mode,
        as one float64 tensor on the device."""
        was_training = self.model.training
        self.model.eval()
        chunk = tasks.eval_chunk(self.task, x, EVAL_CHUNK)
        total: torch.Tensor | None = None
        for lo in range(0, max(len(x), 1), chunk):
            xb, yb = x[lo : lo + chunk], y[lo : lo + chunk]
            sums = tasks.eval_sums(self.task, self.model(xb), yb, self.loss_fn)
            total = sums if total is None else total + sums
        self.model.train(was_training)
        assert total is not None
        return tasks.eval_metrics(self.task, total)

    def on_train_epoch_end(self) -> None:
        self._flush_losses()
        now = time.perf_counter()
        self.train_seconds = now - self._fit_start - self.eval_seconds
        self.epochs_done = self.current_epoch + 1
        step, epoch = self.steps_done, self.current_epoch
        self.rows.append(metric_row(step, epoch, "time", "seconds", self.train_seconds))
        if self.diverged_step is not None:
            return
        t = self.trainer.datamodule.tensors  # type: ignore[attr-defined]
        train = self.evaluate(t["x_train"], t["y_train"])
        val = self.evaluate(t["x_val"], t["y_val"])
        values = torch.cat([train, val]).tolist()
        rows, metrics = tasks.epoch_rows(
            self.task, step, epoch, values[: len(train)], values[len(train) :]
        )
        self.rows += rows
        val_loss = metrics["val_loss"]
        if val_loss < self.best_val_loss:
            self.best_val_loss = val_loss
            self.best_state = _copy_state(self.model.state_dict(), self.best_state)
        self._publish(metrics, step)
        self.eval_seconds += time.perf_counter() - now

    def _publish(self, metrics: dict[str, float], step: int) -> None:
        """Epoch metrics for callbacks (early stopping reads "val_loss") and the logger.

        Written straight into ``callback_metrics`` and ``logger.log_metrics``: ``self.log``
        costs milliseconds per call in Lightning's result collection.
        """
        trainer = self.trainer
        trainer.callback_metrics.update({k: torch.tensor(v) for k, v in metrics.items()})
        for logger in trainer.loggers:
            logger.log_metrics({**metrics, "epoch": self.current_epoch}, step=step)

    def on_train_end(self) -> None:
        self._flush_losses()
        self.rows += self.test_rows()

    def test_rows(self) -> list[dict[str, Any]]:
        """Test metrics of the final weights and (``best_*``) of the best-validation weights."""
        t = self.trainer.datamodule.tensors  # type: ignore[attr-defined]
        step, epoch = self.steps_done, max(self.epochs_done - 1, 0)
        final = self.evaluate(t["x_test"], t["y_test"]).tolist()
        best = None
        if self.best_state is not None:
            current = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
            self.model.load_state_dict(self.best_state)
            best = self.evaluate(t["x_test"], t["y_test"]).tolist()
            self.model.load_state_dict(current)
        return tasks.rows_for_test(self.task, step, epoch, final, best)


_PLAIN_STATE = frozenset(
    {
        "_current_fx_name",
        "steps_done",
        "epochs_done",
        "train_seconds",
        "eval_seconds",
        "first_loss",
        "diverged_step",
        "best_val_loss",
        "best_state",
        "_direct",
        "_fit_objects",
        "_hook_cache",
        "_generator",
        "_fit_start",
    }
)
"""Attributes of :class:`TechniqueModule` set with ``object.__setattr__`` (plain Python state)."""


def _copy_state(
    state: Mapping[str, torch.Tensor], into: dict[str, torch.Tensor] | None
) -> dict[str, torch.Tensor]:
    """A copy of ``state``, written into ``into``'s tensors when their keys and shapes match."""
    if (
        into is None
        or into.keys() != state.keys()
        or any(into[k].shape != v.shape or into[k].dtype != v.dtype for k, v in state.items())
    ):
        return {k: v.detach().clone() for k, v in state.items()}
    torch._foreach_copy_([into[k] for k in state], [v.detach() for v in state.values()])
    return into


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
