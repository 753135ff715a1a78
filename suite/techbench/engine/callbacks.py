"""The runner's per-step callback protocol, declared the way Lightning declares its hooks.

The engine (:class:`techbench.engine.population.StackedModule`) runs several optimizer steps per Lightning
batch (:data:`techbench.engine.lit.STEPS_PER_BATCH`), so Lightning's per-batch hooks see groups of
steps. A callback that needs every optimizer step subclasses :class:`StepCallback` and overrides
:meth:`~StepCallback.begin_step` / :meth:`~StepCallback.end_step`; the runner calls only the
hooks a callback overrides (:func:`step_hooks`), so an unused hook costs nothing per step.
"""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
from typing_extensions import override

BACKWARD_HOOKS = ("on_before_backward", "on_after_backward", "on_before_optimizer_step")
"""Lightning's per-optimizer-step hooks, which the runner's direct path calls itself."""

STEP_HOOKS = ("begin_step", "end_step")
"""The hooks :class:`StepCallback` adds."""


class StepCallback(pl.Callback):
    """A Lightning callback driven once per optimizer step, whatever the batch grouping.

    Per optimizer step the runner calls, in order: :meth:`begin_step` (before the forward
    pass), Lightning's ``on_before_backward(trainer, pl_module, loss)``,
    ``on_after_backward(trainer, pl_module)``, the regularizers' ``transform_gradients`` (not a
    callback hook: gradients seen after it are the ones the optimizer uses) and
    ``on_before_optimizer_step(trainer, pl_module, optimizer)`` (on plain precisions the runner calls these three itself, on every callback
    that overrides them, with the unwrapped ``torch.optim.Optimizer``; otherwise Lightning does),
    then :meth:`end_step` (after the optimizer and schedule step). A Lightning batch that is not
    a group (a ``(x, y)`` tuple rather than a list of them) is one step: then
    :meth:`on_train_batch_start` / :meth:`on_train_batch_end` call :meth:`begin_step` /
    :meth:`end_step`, so a subclass that overrides those two calls ``super()``.
    """

    def begin_step(self, step: int, epoch: int) -> None:
        """Called before the forward pass of optimizer step ``step`` (the trainer's global step,
        counted from 0) in epoch ``epoch``."""

    def end_step(self) -> None:
        """Called after the optimizer step begun by the last :meth:`begin_step` (weights,
        schedule and regularizer ``after_step`` updated)."""

    @override
    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if not isinstance(batch, list):  # a list is a group of steps the module drives itself
            self.begin_step(trainer.global_step, trainer.current_epoch)

    @override
    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        if not isinstance(batch, list):
            self.end_step()


def overrides(obj: Any, hook: str, base: type) -> bool:
    """True when ``obj``'s class overrides ``base``'s default of ``hook``."""
    impl = getattr(type(obj), hook, None)
    return impl is not None and impl is not getattr(base, hook, None)


def step_hooks(callbacks: list[pl.Callback]) -> dict[str, list[Any]]:
    """The callbacks implementing each per-step hook, in trainer order.

    :data:`STEP_HOOKS`: the :class:`StepCallback` instances that override it;
    :data:`BACKWARD_HOOKS`: every callback that overrides Lightning's default.
    """
    hooks: dict[str, list[Any]] = {
        name: [
            cb
            for cb in callbacks
            if isinstance(cb, StepCallback) and overrides(cb, name, StepCallback)
        ]
        for name in STEP_HOOKS
    }
    for name in BACKWARD_HOOKS:
        hooks[name] = [cb for cb in callbacks if overrides(cb, name, pl.Callback)]
    return hooks


def stub_trainer() -> Any:
    """What Lightning callbacks read of a Trainer during ``fit`` (``callback_metrics``,
    ``should_stop``, ``current_epoch``, ...): the stacked engine drives each member's
    regularizer callbacks (early stopping) through one, and the regularizer conformance checks
    drive callbacks through one, so both follow the same protocol."""
    from types import SimpleNamespace

    return SimpleNamespace(
        callback_metrics={},
        should_stop=False,
        current_epoch=0,
        global_step=0,
        fast_dev_run=False,
        sanity_checking=False,
        state=SimpleNamespace(fn="fit", stage="train"),
        strategy=SimpleNamespace(reduce_boolean_decision=lambda decision, all=True: decision),
        val_check_interval=1.0,
        check_val_every_n_epoch=1,
        global_rank=0,
        world_size=1,
        is_global_zero=True,
        logger=None,
        loggers=[],
    )
