"""Gradient health: a cheap Lightning callback, on by default.

Every ``every_n_steps`` optimizer steps (and at step 0) it records, as tidy rows with split
"health" (layer "0", "1", ... = the model's ``weight_layers`` in forward order):

- per layer: ``grad_norm`` = ||dL/dW||_2 of the layer's weight, ``weight_norm`` = ||W||_2 after
  the step, ``update_ratio`` = ||W_after - W_before|| / ||W_before||, ``dist_from_init`` =
  ||W - W_0||; from a forward hook on activation ``i`` (``activation_layers[i]``):
  ``act_mean``, ``act_std``, ``dead_fraction`` and ``saturated_fraction`` with the thresholds the
  activation plugin declares (``techbench.layerstats``; a metric the activation cannot have is
  not recorded);
- globals (layer ""): ``grad_norm_global`` = sqrt(sum of squared norms of every parameter's
  gradient), ``nonfinite_grads`` = count of NaN/inf gradient entries, ``grad_ratio_first_last``
  = first layer's grad_norm / last layer's.

Cost: on steps that are not logged, three attribute checks. On logged steps every statistic is
reduced on the device and the whole step's values go to the host in one ``tolist()`` (one
sync). The hooks are registered only for the logged step's forward pass. ``seconds`` is the
time spent inside the callback (the health overhead the trial reports).
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from functools import partial
from typing import Any, cast

import pytorch_lightning as pl
import torch
from torch import nn

from .layerstats import ACTIVATION_STATS, activation_stats

LAYER_METRICS = ("grad_norm", "weight_norm", "update_ratio", "dist_from_init")
GLOBAL_METRICS = ("grad_norm_global", "nonfinite_grads", "grad_ratio_first_last")


def weight_layers_of(model: nn.Module) -> list[nn.Module]:
    """``model.weight_layers`` if declared, else every Linear / Conv module in registration order."""
    declared = getattr(model, "weight_layers", None)
    if declared is not None:
        return list(declared)
    kinds = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
    return [m for m in model.modules() if isinstance(m, kinds)]


class GradientHealth(pl.Callback):
    """Records gradient-health rows into ``self.rows`` (see the module docstring)."""

    def __init__(
        self,
        every_n_steps: int = 10,
        activation_properties: Mapping[str, Any] | None = None,
    ) -> None:
        if every_n_steps < 1:
            raise ValueError(f"every_n_steps must be >= 1, got {every_n_steps}")
        self.every_n_steps = every_n_steps
        self.properties = dict(activation_properties or {})
        self.act_metrics = [
            m
            for m in ACTIVATION_STATS
            if not (m == "dead_fraction" and self.properties.get("dead_below") is None)
            and not (m == "saturated_fraction" and self.properties.get("saturation") is None)
        ]
        self.rows: list[dict[str, Any]] = []
        self.seconds = 0.0
        self._active = False
        self._handles: list[Any] = []
        self._acts: list[torch.Tensor | None] = []
        self._pending: list[torch.Tensor] = []
        self._before: list[torch.Tensor] = []

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        model = getattr(pl_module, "model", pl_module)
        self.weights: list[torch.Tensor] = [
            cast(torch.Tensor, layer.weight) for layer in weight_layers_of(model)
        ]
        self.activations = list(getattr(model, "activation_layers", []))
        self.params = [p for p in pl_module.parameters() if p.requires_grad]
        self.init = [w.detach().clone() for w in self.weights]

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if not isinstance(batch, list):  # a list is a group of steps the module drives itself
            self.begin_step(trainer.global_step, trainer.current_epoch)

    def begin_step(self, step: int, epoch: int) -> None:
        """Before the forward pass of optimizer step ``step``: arm the hooks if it is logged."""
        self._active = step % self.every_n_steps == 0
        if not self._active:
            return
        start = time.perf_counter()
        self._step, self._epoch = step, epoch
        self._acts = [None] * len(self.activations)
        self._handles = [
            act.register_forward_hook(partial(self._forward_hook, i))
            for i, act in enumerate(self.activations)
        ]
        self.seconds += time.perf_counter() - start

    def _forward_hook(
        self, index: int, module: nn.Module, inputs: Any, output: torch.Tensor
    ) -> None:
        self._acts[index] = activation_stats(output, self.properties)

    def _remove_hooks(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: Any
    ) -> None:
        if not self._active:
            return
        start = time.perf_counter()
        self._remove_hooks()
        device = self.weights[0].device if self.weights else torch.device("cpu")
        nan = torch.full((), math.nan, device=device)
        grads = [p.grad.detach().reshape(-1) for p in self.params if p.grad is not None]
        if grads:
            flat = torch.cat(grads).float()
            global_norm = torch.linalg.vector_norm(flat, dtype=torch.float64).float()
            nonfinite = torch.isfinite(flat).logical_not().sum().float()
        else:
            global_norm = nonfinite = torch.zeros((), device=device)
        with_grad = [w.grad.detach().float() for w in self.weights if w.grad is not None]
        if len(with_grad) == len(self.weights):
            layer = list(_norms(with_grad))
        else:
            layer = [
                w.grad.detach().float().norm() if w.grad is not None else nan for w in self.weights
            ]
        ratio = layer[0] / layer[-1] if layer else nan
        self._pending = [global_norm, nonfinite, ratio, *layer]
        self._before = [w.detach().clone() for w in self.weights]
        self.seconds += time.perf_counter() - start

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

    def end_step(self) -> None:
        """After the optimizer step: weights after the update, one transfer, the rows."""
        if not self._active:
            return
        self._active = False
        start = time.perf_counter()
        self._remove_hooks()
        if not self._pending:  # no optimizer step happened on this batch
            return
        values = list(self._pending)
        if self.weights:
            ws = [w.detach().float() for w in self.weights]
            before = [b.float() for b in self._before]
            weight_norms = _norms(ws)
            updates = _norms(torch._foreach_sub(ws, before))
            before_norms = _norms(before)
            dists = _norms(torch._foreach_sub(ws, [i.float() for i in self.init]))
            for wn, un, bn, dn in zip(weight_norms, updates, before_norms, dists, strict=True):
                values += [wn, un / bn, dn]
        acts = [a if a is not None else torch.full((4,), math.nan) for a in self._acts]
        flat = torch.cat(
            [torch.stack([v.to(values[0].device) for v in values])]
            + [a.to(values[0].device) for a in acts]
        ).tolist()
        self._pending, self._before = [], []
        self._emit(flat)
        self.seconds += time.perf_counter() - start

    def _emit(self, flat: list[float]) -> None:
        step, epoch = self._step, self._epoch
        rows = self.rows
        for name, value in zip(GLOBAL_METRICS, flat[:3], strict=True):
            rows.append(_row(step, epoch, name, "", value))
        n = len(self.weights)
        grads = flat[3 : 3 + n]
        rest = flat[3 + n : 3 + n + 3 * n]
        for i in range(n):
            rows.append(_row(step, epoch, "grad_norm", str(i), grads[i]))
            rows.append(_row(step, epoch, "weight_norm", str(i), rest[3 * i]))
            rows.append(_row(step, epoch, "update_ratio", str(i), rest[3 * i + 1]))
            rows.append(_row(step, epoch, "dist_from_init", str(i), rest[3 * i + 2]))
        acts = flat[3 + 4 * n :]
        for i in range(len(self.activations)):
            stats = dict(zip(ACTIVATION_STATS, acts[4 * i : 4 * i + 4], strict=True))
            for metric in self.act_metrics:
                rows.append(_row(step, epoch, metric, str(i), stats[metric]))


def _norms(tensors: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """L2 norm of each tensor in one fused call where torch has it."""
    foreach = getattr(torch, "_foreach_norm", None)
    if foreach is not None:
        return list(foreach(tensors))
    return [t.norm() for t in tensors]


def _row(step: int, epoch: int, metric: str, layer: str, value: float) -> dict[str, Any]:
    return {
        "step": step,
        "epoch": epoch,
        "split": "health",
        "metric": metric,
        "layer": layer,
        "value": float(value),
    }
