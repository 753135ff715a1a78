"""The runner's per-step protocol (``techbench.engine.callbacks.StepCallback``): every optimizer step,
grouped or not, direct or through Lightning, is framed by begin_step/end_step in order."""

from __future__ import annotations

from typing import Any

import pytest
import pytorch_lightning as pl
import torch
from torch import nn

from techbench.engine.callbacks import StepCallback, step_hooks
from techbench.engine.lit import build_trainer
from techbench.engine.population import StackedModule
from techbench.engine.stack_members import Member
from techbench.engine.stacked_data import StackedDataModule
from techbench.techniques.families import DatasetSplits, Regularizer

N, BATCH, EPOCHS = 40, 8, 2  # 5 optimizer steps per epoch


class Recorder(StepCallback):
    def __init__(self) -> None:
        self.events: list[tuple[Any, ...]] = []

    def begin_step(self, step: int, epoch: int) -> None:
        self.events.append(("begin", step, epoch))

    def on_before_optimizer_step(self, trainer: Any, pl_module: Any, optimizer: Any) -> None:
        self.events.append(("optimizer", trainer.global_step))

    def end_step(self) -> None:
        self.events.append(("end",))


class BackwardOnly(pl.Callback):
    """A plain Lightning callback: the runner's direct path must still call its hooks."""

    def __init__(self) -> None:
        self.after_backward = 0

    def on_after_backward(self, trainer: Any, pl_module: Any) -> None:
        self.after_backward += 1


def _fit(group: int, precision: str, callbacks: list[pl.Callback]) -> None:
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(N, 4, generator=g), torch.randint(0, 2, (N,), generator=g)
    splits = DatasetSplits("toy", x, y, x[:8], y[:8], x[:8], y[:8], "classification", 2)
    module = StackedModule(
        [Member(nn.Linear(4, 2), 0, {}, Regularizer())],
        "classification",
        lambda ps, hp: torch.optim.SGD(ps, lr=0.1),
        None,
        10,
    )
    trainer = build_trainer(
        {"accelerator": "cpu", "precision": precision}, {"epochs": EPOCHS}, callbacks=callbacks
    )
    trainer.fit(module, datamodule=StackedDataModule(splits, BATCH, [0], group=group))


@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed"])
@pytest.mark.parametrize("group", [1, 16])
def test_every_optimizer_step_is_framed_in_order(group: int, precision: str) -> None:
    recorder, plain = Recorder(), BackwardOnly()
    _fit(group, precision, [recorder, plain])
    per_epoch = -(-N // BATCH)
    expected = []
    for step in range(EPOCHS * per_epoch):
        expected += [("begin", step, step // per_epoch), ("optimizer", step), ("end",)]
    assert recorder.events == expected
    assert plain.after_backward == EPOCHS * per_epoch


def test_step_hooks_lists_only_overridden_hooks() -> None:
    class BeginOnly(StepCallback):
        def begin_step(self, step: int, epoch: int) -> None:
            pass

    recorder, begin_only, plain, idle = Recorder(), BeginOnly(), BackwardOnly(), StepCallback()
    hooks = step_hooks([recorder, begin_only, plain, idle])
    assert hooks == {
        "begin_step": [recorder, begin_only],
        "end_step": [recorder],
        "on_before_backward": [],
        "on_after_backward": [plain],
        "on_before_optimizer_step": [recorder],
    }
