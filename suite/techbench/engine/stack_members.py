"""The members of a stack and their lives: each trial's state, rows and how its run ends.

Why a module of its own: a stack trains K trials, but each one lives and ends as it would alone
(:mod:`techbench.engine.population`). The per-step losses of all members go to the host every
:data:`~techbench.engine.lit.LOSS_FLUSH_EVERY` steps, as in the one-by-one path; a member whose loss is
non-finite or blew up is *frozen* at that flush (its rows end where the one-by-one run's end: the
divergence step is exact, its final metrics are taken then) and the others go on; its later
computation is masked out of the objective (:attr:`MemberLives.alive`) and no regularizer hook
acts on it. Each member's regularizer callbacks (early stopping) see that member's epoch metrics
through its own :func:`techbench.engine.callbacks.stub_trainer`, as Lightning's would after the
module's epoch end; a member they stop ends then, with its test rows.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..schema import metric_row
from ..tasks import epoch_rows, rows_for_test
from .callbacks import stub_trainer
from .lit import LOSS_FLUSH_EVERY, scan_losses


@dataclass
class Member:
    """One trial of the stack: its network (a real module: the layout gradient health reads), seed,
    optimizer hyper-parameters, the regularizer and what it records."""

    model: nn.Module
    seed: int
    optimizer_params: dict[str, Any]
    regularizer: Any
    health: Any = None
    curvature: Any = None  # its curvature probe's record (techbench.engine.curvature_probe)
    regularizer_params: dict[str, Any] | None = None
    callbacks: list[Any] = field(default_factory=list)
    trainer: Any = None
    rows: list[dict[str, Any]] = field(default_factory=list)
    diverged_step: int | None = None
    frozen: bool = False
    first_loss: float | None = None
    best_val_loss: float = math.inf
    steps_done: int = 0
    epochs_done: int = 0
    train_seconds: float = 0.0


class MemberLives:
    """Which members still train, their buffered losses and the rows that end their runs."""

    def __init__(self, members: Sequence[Member], task: str) -> None:
        self.members = members
        self.task = task
        self.alive: torch.Tensor | None = None
        self._losses: list[torch.Tensor] = []
        self._loss_steps: list[tuple[int, int]] = []

    def start(self, device: torch.device, module: Any) -> None:
        """All members alive on ``device``; each member's regularizer callbacks set up with its
        own stub trainer (``module`` is the ``pl_module`` they see)."""
        self.alive = torch.ones(len(self.members), dtype=torch.bool, device=device)
        for m in self.members:
            m.callbacks = list(m.regularizer.callbacks())
            if m.callbacks:
                m.trainer = stub_trainer()
                for cb in m.callbacks:
                    cb.setup(m.trainer, module, "fit")

    def live(self) -> list[int]:
        return [k for k, m in enumerate(self.members) if not m.frozen]

    @property
    def all_ended(self) -> bool:
        return all(m.frozen for m in self.members)

    def record(self, losses: torch.Tensor, step: int, epoch: int) -> bool:
        """Buffer one step's losses ``[K]``; True when a flush is due."""
        self._losses.append(losses.detach())
        self._loss_steps.append((step, epoch))
        return len(self._losses) >= LOSS_FLUSH_EVERY

    def flush(self) -> list[int]:
        """The buffered losses to the live members' rows (one transfer); the members that
        diverged in them."""
        if not self._losses:
            return []
        values = torch.stack(self._losses).double().t().tolist()  # [K][steps]
        diverged = []
        for k, m in enumerate(self.members):
            if m.frozen:
                continue
            rows, m.first_loss, m.diverged_step = scan_losses(
                self._loss_steps, values[k], m.first_loss
            )
            m.rows += rows
            if m.diverged_step is not None:
                diverged.append(k)
        self._losses.clear()
        self._loss_steps.clear()
        return diverged

    def clock(self, ks: Sequence[int], step: int, epoch: int, seconds: float) -> None:
        """Members ``ks`` reached the end of ``epoch`` after ``step`` steps: their time row."""
        for k in ks:
            m = self.members[k]
            m.train_seconds, m.epochs_done, m.steps_done = seconds, epoch + 1, step
            m.rows.append(metric_row(step, epoch, "time", "seconds", seconds))

    def epoch_metrics(
        self, ks: Sequence[int], step: int, epoch: int, values: Sequence[Sequence[float]], m: int
    ) -> tuple[dict[int, dict[str, float]], list[int]]:
        """The epoch rows of members ``ks`` from ``values[k]`` (train's ``m`` metrics, then
        validation's): their metrics and the members whose validation loss improved."""
        improved = []
        metrics: dict[int, dict[str, float]] = {}
        for k in ks:
            member = self.members[k]
            rows, metrics[k] = epoch_rows(self.task, step, epoch, values[k][:m], values[k][m:])
            member.rows += rows
            if metrics[k]["val_loss"] < member.best_val_loss:
                member.best_val_loss = metrics[k]["val_loss"]
                improved.append(k)
        return metrics, improved

    def callbacks_stop(
        self,
        ks: Sequence[int],
        metrics: Mapping[int, dict[str, float]],
        epoch: int,
        step: int,
        module: Any,
    ) -> list[int]:
        """Run each member's regularizer callbacks on its epoch metrics: the members they stop."""
        stopped = []
        for k in ks:
            m = self.members[k]
            if not m.callbacks:
                continue
            trainer = m.trainer
            trainer.callback_metrics = {key: torch.tensor(v) for key, v in metrics[k].items()}
            trainer.current_epoch, trainer.global_step = epoch, step
            for cb in m.callbacks:
                cb.on_validation_end(trainer, module)
            for cb in m.callbacks:
                cb.on_train_epoch_end(trainer, module)
            if trainer.should_stop:
                stopped.append(k)
        return stopped

    def freeze(self, ks: Sequence[int]) -> None:
        """Members ``ks`` stop training: out of the objective and of every hook."""
        assert self.alive is not None
        for k in ks:
            self.members[k].frozen = True
            self.alive[k] = False

    def add_test_rows(
        self, ks: Sequence[int], test: Mapping[str, list[list[float]]], step: int
    ) -> None:
        """Members ``ks``' test rows from ``test["final"][k]`` and, when a validation loss was
        finite, ``test["best"][k]`` (the best-validation weights')."""
        for k in ks:
            m = self.members[k]
            best = test["best"][k] if "best" in test and math.isfinite(m.best_val_loss) else None
            epoch = max(m.epochs_done - 1, 0)
            m.rows += rows_for_test(self.task, step, epoch, test["final"][k], best)
