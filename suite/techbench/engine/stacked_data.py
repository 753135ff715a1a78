"""The shared splits of a stack, batched per member: ``x[K, B, ...]``, ``y[K, B]``.

Why a module of its own: the stacked engine (:mod:`techbench.engine.population`) trains K trials on the
same in-memory splits, but each member must see exactly the batches its trial sees when run one
by one (batch order from ``Generator(seed)``, as :class:`techbench.engine.lit.ShuffledBatches` draws it),
so one shared data module hands every step the K members' own minibatches at once.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from typing import Any

import pytorch_lightning as pl
import torch

from . import lit
from .lit import ShuffledBatches


class StackedBatches:
    """Per-member shuffled minibatches of one in-memory split: ``x[K, B, ...]``, ``y[K, B]``.

    Member k's permutation each epoch comes from its own generator exactly as
    :class:`techbench.engine.lit.ShuffledBatches` draws it, and the batch bounds are the same (a tail
    of one sample folded into the previous batch), so member k sees trial k's batches.
    """

    def __init__(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        batch_size: int,
        generators: Sequence[torch.Generator],
        group: int | None = None,
    ) -> None:
        self.x, self.y, self.generators = x, y, list(generators)
        self.bounds = ShuffledBatches(x, y, batch_size, torch.Generator()).bounds
        self.group = max(int(lit.STEPS_PER_BATCH if group is None else group), 1)

    @property
    def num_minibatches(self) -> int:
        return len(self.bounds) - 1

    def __len__(self) -> int:
        return -(-self.num_minibatches // self.group)

    def __iter__(self) -> Iterator[list[tuple[torch.Tensor, torch.Tensor]]]:
        n = len(self.x)
        perms = torch.stack([torch.randperm(n, generator=g) for g in self.generators])
        perms = perms.to(self.x.device)
        xs, ys = self.x[perms], self.y[perms]
        pairs = [(xs[:, lo:hi], ys[:, lo:hi]) for lo, hi in itertools.pairwise(self.bounds)]
        for i in range(0, len(pairs), self.group):
            yield pairs[i : i + self.group]


class StackedDataModule(pl.LightningDataModule):
    """The shared splits on the training device, batched per member (:class:`StackedBatches`)."""

    def __init__(
        self, splits: Any, batch_size: int, seeds: Sequence[int], group: int | None = None
    ) -> None:
        super().__init__()
        self.splits = splits
        self.batch_size = batch_size
        self.group = group
        self.generators = [torch.Generator().manual_seed(int(s)) for s in seeds]
        self.tensors: dict[str, torch.Tensor] = {}

    def setup(self, stage: str | None = None) -> None:
        device = (
            self.trainer.strategy.root_device if self.trainer is not None else torch.device("cpu")
        )
        for name in ("x_train", "y_train", "x_val", "y_val", "x_test", "y_test"):
            self.tensors[name] = getattr(self.splits, name).to(device)

    def train_dataloader(self) -> StackedBatches:
        t = self.tensors
        return StackedBatches(
            t["x_train"], t["y_train"], self.batch_size, self.generators, self.group
        )

    def transfer_batch_to_device(
        self, batch: Any, device: torch.device, dataloader_idx: int
    ) -> Any:
        return batch  # already on the device
