"""A plain-PyTorch reference training loop: one trial, written from the trial contract.

Why: the engine (:mod:`techbench.engine.population`) trains every trial in a stack with vmapped
members, buffered losses and device-side statistics; this loop is the trial contract said the
plainest way (no Lightning, no vmap, one network, a ``for`` loop), so the engine is tested
against a reference the way every technique is. It uses the shared definitions of what a trial
*is* (the config and its completion, the data splits and the network the specs build, the
task's loss and metrics) and restates the training procedure:

- seeding: ``random``/``numpy``/``torch`` with the seed before the network is built; batch
  order from ``Generator(seed)`` (one permutation per epoch, contiguous batches, a one-sample
  tail folded into the previous batch); regularizer noise from ``Generator(seed +
  NOISE_SEED_OFFSET)``; dropout masks from the module generator (``MODULE_SEED_OFFSET``);
- a step: ``transform_batch``, forward, the task's loss (or the regularizer's ``loss``) plus
  ``penalty``, backward, ``transform_gradients(model, step, generator)``, the optimizer step,
  ``after_step(model, optimizer)``, the schedule's step;
- divergence: the losses are read every ``LOSS_FLUSH_EVERY`` steps and at each epoch end; the
  first loss that is not finite or above ``DIVERGENCE_FACTOR`` x |first loss| is the diverged
  step, training stops there, and the trial's rows end at that step;
- each epoch end: train and validation metrics in eval mode; the weights with the lowest
  validation loss are kept; early stopping (``EarlyStopping`` callbacks of the regularizer)
  reads the validation metrics; at the end: test metrics at the final and best weights;
- gradient health every ``every_n_steps`` steps, each statistic computed from its definition.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

LOSS_FLUSH_EVERY = 10
DIVERGENCE_FACTOR = 1e3


@dataclass
class ReferenceRun:
    """What the loop produced: the trial's status, rows (time rows excluded) and counts."""

    trial_id: str
    status: str
    rows: list[dict[str, Any]] = field(default_factory=list)
    steps: int = 0
    epochs: int = 0
    diverged_step: int | None = None


def reference_run(config: Mapping[str, Any], registry: Any = None) -> ReferenceRun:
    """Train ``config`` with the plain loop; the run's rows in the trial schema."""
    from techbench.schema import Trial

    trial = Trial.of(config)
    cfg = trial.config
    loop = _Loop(cfg, registry)
    loop.fit()
    rows = loop.rows
    if loop.diverged_step is not None:
        rows = [r for r in rows if r["step"] <= loop.diverged_step]
    status = "diverged" if loop.diverged_step is not None else "completed"
    return ReferenceRun(trial.id, status, rows, loop.step, loop.epochs_done, loop.diverged_step)


def _dtype(cfg: Mapping[str, Any]) -> torch.dtype:
    precision = str(cfg["trainer"].get("precision", "32-true"))
    if precision.startswith("64"):
        return torch.float64
    if precision in ("bf16-true",):
        return torch.bfloat16
    if precision in ("16-true",):
        return torch.float16
    return torch.float32


class _Loop:
    def __init__(self, cfg: dict[str, Any], registry: Any) -> None:
        import random

        import numpy as np

        from techbench import tasks
        from techbench.engine.trial import build_model, prepare
        from techbench.techniques.families import (
            NOISE_SEED_OFFSET,
            Regularizer,
            bind_module_generator,
        )

        self.cfg = cfg
        specs, splits = prepare(cfg, registry)
        seed = int(cfg["seed"])
        random.seed(seed)
        np.random.seed(seed % (2**32))
        torch.manual_seed(seed)
        model, reg = build_model(cfg, specs, splits)
        dtype = _dtype(cfg)
        self.model, self.reg = model.to(dtype), reg
        self.task = splits.task
        self.loss_fn = tasks.loss_fn(self.task)
        self.data = {
            name: (t.to(dtype) if t.is_floating_point() else t)
            for name in ("x_train", "y_train", "x_val", "y_val", "x_test", "y_test")
            for t in [getattr(splits, name)]
        }
        budget = cfg["budget"]
        self.batch_size = int(budget["batch_size"])
        n = len(self.data["x_train"])
        bounds = [*range(0, n, self.batch_size), n]
        if len(bounds) > 2 and bounds[-1] - bounds[-2] < 2:
            del bounds[-2]
        self.bounds = bounds
        per_epoch = len(bounds) - 1
        self.max_epochs = budget.get("epochs")
        self.max_steps = budget.get("max_steps")
        horizon = [per_epoch * int(self.max_epochs)] if self.max_epochs is not None else []
        if self.max_steps is not None:
            horizon.append(int(self.max_steps))
        total = max(min(horizon), 1)
        params = {k: cfg[k]["params"] for k in ("optimizer", "schedule")}
        self.opt = specs["optimizer"].create(
            _lr_groups(self.model, specs["optimizer"].hyperparams(params["optimizer"])),
            **params["optimizer"],
        )
        self.sched = specs["schedule"].create(self.opt, total, **params["schedule"])
        self.batch_gen = torch.Generator().manual_seed(seed)
        self.noise_gen = torch.Generator().manual_seed(seed + NOISE_SEED_OFFSET)
        bind_module_generator(self.model, seed, torch.device("cpu"))
        self.hooks = {
            h: getattr(type(reg), h) is not getattr(Regularizer, h)
            for h in ("transform_batch", "loss", "penalty", "transform_gradients", "after_step")
        }
        self.stoppers = [_EarlyStop.of(cb) for cb in reg.callbacks()]
        health = cfg["health"]
        self.health = (
            _Health(self.model, specs, cfg, self.hooks["transform_gradients"])
            if health.get("enabled", True)
            else None
        )
        self.rows: list[dict[str, Any]] = []
        self.step = 0
        self.epochs_done = 0
        self.first_loss: float | None = None
        self.diverged_step: int | None = None
        self.pending: list[tuple[int, int, float]] = []
        self.best_val = math.inf
        self.best_state: dict[str, torch.Tensor] | None = None

    def fit(self) -> None:
        epoch, stop = 0, False
        while not stop and (self.max_epochs is None or epoch < int(self.max_epochs)):
            if self._steps_left() == 0:
                break
            perm = torch.randperm(len(self.data["x_train"]), generator=self.batch_gen)
            xs, ys = self.data["x_train"][perm], self.data["y_train"][perm]
            for lo, hi in zip(self.bounds, self.bounds[1:], strict=False):
                if self._steps_left() == 0:
                    break
                self._train_step(xs[lo:hi], ys[lo:hi], epoch)
                if len(self.pending) >= LOSS_FLUSH_EVERY and self._flush():
                    break
            self.epochs_done = epoch + 1
            stop = self._flush() or self._epoch_end(epoch)
            epoch += 1
        self._flush()
        self._test_rows()

    def _steps_left(self) -> int | None:
        return None if self.max_steps is None else max(int(self.max_steps) - self.step, 0)

    def _train_step(self, x: torch.Tensor, y: torch.Tensor, epoch: int) -> None:
        model, reg, hooks = self.model, self.reg, self.hooks
        if hooks["transform_batch"]:
            x, y = reg.transform_batch(x, y, self.noise_gen)
        snap = self.health is not None and self.step % self.health.every == 0
        if snap:
            assert self.health is not None
            self.health.arm()
        out = model(x)
        loss = reg.loss(out, y) if hooks["loss"] else None
        if loss is None:
            loss = self.loss_fn(out, y)
        if hooks["penalty"]:
            term = reg.penalty(model)
            if term is not None:
                loss = loss + term
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        if snap:
            assert self.health is not None
            self.health.after_backward()
        if hooks["transform_gradients"]:
            reg.transform_gradients(model, self.step, self.noise_gen)
        if snap:
            assert self.health is not None
            self.health.before_step()
        self.opt.step()
        if hooks["after_step"]:
            reg.after_step(model, self.opt)
        if snap:
            assert self.health is not None
            self.rows += self.health.after_step(self.step, epoch)
        self.sched.step()
        self.pending.append((self.step, epoch, float(loss.detach().double())))
        self.step += 1

    def _flush(self) -> bool:
        """The pending losses read; True once diverged."""
        from techbench.schema import metric_row

        for step, epoch, value in self.pending:
            if self.diverged_step is not None:
                break
            self.rows.append(metric_row(step, epoch, "train", "loss", value))
            if self.first_loss is None:
                self.first_loss = value
            if not math.isfinite(value) or value > DIVERGENCE_FACTOR * abs(self.first_loss):
                self.diverged_step = step
        self.pending.clear()
        return self.diverged_step is not None

    @torch.no_grad()
    def _evaluate(self, x: torch.Tensor, y: torch.Tensor) -> list[float]:
        from techbench import tasks

        was = self.model.training
        self.model.eval()
        chunk = tasks.eval_chunk(self.task, x, 4096)
        total = None
        for lo in range(0, max(len(x), 1), chunk):
            sums = tasks.eval_sums(self.task, self.model(x[lo : lo + chunk]), y[lo : lo + chunk])
            total = sums if total is None else total + sums
        self.model.train(was)
        assert total is not None
        return [float(v) for v in tasks.eval_metrics(self.task, total)]

    def _epoch_end(self, epoch: int) -> bool:
        """Epoch metrics, best weights, early stopping; True when training stops."""
        from techbench import tasks

        d = self.data
        train = self._evaluate(d["x_train"], d["y_train"])
        val = self._evaluate(d["x_val"], d["y_val"])
        rows, metrics = tasks.epoch_rows(self.task, self.step, epoch, train, val)
        self.rows += rows
        if metrics["val_loss"] < self.best_val:
            self.best_val = metrics["val_loss"]
            self.best_state = copy.deepcopy(self.model.state_dict())
        return any([s.update(metrics) for s in self.stoppers])

    def _test_rows(self) -> None:
        from techbench import tasks

        d = self.data
        final = self._evaluate(d["x_test"], d["y_test"])
        best = None
        if self.best_state is not None:
            current = copy.deepcopy(self.model.state_dict())
            self.model.load_state_dict(self.best_state)
            best = self._evaluate(d["x_test"], d["y_test"])
            self.model.load_state_dict(current)
        epoch = max(self.epochs_done - 1, 0)
        self.rows += tasks.rows_for_test(self.task, self.step, epoch, final, best)


@dataclass
class _EarlyStop:
    """Lightning's ``EarlyStopping`` rule (mode "min"): a non-finite value stops at once; a
    value below ``best - min_delta`` resets the wait; ``patience`` waits stop."""

    monitor: str
    patience: int
    min_delta: float
    best: float = math.inf
    wait: int = 0

    @classmethod
    def of(cls, callback: Any) -> _EarlyStop:
        from pytorch_lightning.callbacks import EarlyStopping

        if not isinstance(callback, EarlyStopping) or callback.mode != "min":
            raise NotImplementedError(f"the reference loop has no rule for {callback!r}")
        return cls(callback.monitor, int(callback.patience), abs(float(callback.min_delta)))

    def update(self, metrics: Mapping[str, float]) -> bool:
        value = metrics[self.monitor]
        if not math.isfinite(value):
            return True
        if value < self.best - self.min_delta:
            self.best, self.wait = value, 0
            return False
        self.wait += 1
        return self.wait >= self.patience


class _Health:
    """Gradient-health rows of one snapshot, each statistic from its definition."""

    def __init__(self, model: nn.Module, specs: Any, cfg: Any, pre_transform: bool) -> None:
        from techbench.engine.health import weight_layers_of

        self.model = model
        self.every = int(cfg["health"]["every_n_steps"])
        self.props = specs["activation"].properties_for(cfg["activation"]["params"])
        self.weights: list[Any] = [layer.weight for layer in weight_layers_of(model)]
        self.init = [w.detach().double().clone() for w in self.weights]
        self.acts = list(getattr(model, "activation_layers", []))
        self.features_last = bool(getattr(model, "features_last", False))
        self.pre_transform = pre_transform
        self.outputs: dict[int, torch.Tensor] = {}
        self.handles: list[Any] = []

    def arm(self) -> None:
        self.outputs = {}
        self.handles = [
            act.register_forward_hook(
                lambda mod, inp, out, i=i: self.outputs.__setitem__(i, out.detach())
            )
            for i, act in enumerate(self.acts)
        ]

    def _grads(self) -> list[torch.Tensor]:
        return [p.grad for p in self.model.parameters() if p.requires_grad and p.grad is not None]

    def after_backward(self) -> None:
        self.pre = _norm(self._grads())

    def before_step(self) -> None:
        for h in self.handles:
            h.remove()
        grads = self._grads()
        self.grad_global = _norm(grads)
        self.nonfinite = float(sum(int((~torch.isfinite(g)).sum()) for g in grads))
        self.layer_grads = [
            _norm([w.grad]) if w.grad is not None else math.nan for w in self.weights
        ]
        self.before = [w.detach().double().clone() for w in self.weights]

    def after_step(self, step: int, epoch: int) -> list[dict[str, Any]]:
        from techbench.schema import metric_row

        def row(metric: str, value: float, layer: str = "") -> dict[str, Any]:
            return metric_row(step, epoch, "health", metric, float(value), layer)

        lg = self.layer_grads
        ratio = _ratio(lg[0], lg[-1]) if lg else math.nan
        nonfinite = self.nonfinite if not math.isfinite(self.grad_global) else 0.0
        rows = [
            row("grad_norm_global", self.grad_global),
            row("nonfinite_grads", nonfinite),
            row("grad_ratio_first_last", ratio),
        ]
        for i, w in enumerate(self.weights):
            after = w.detach().double()
            rows += [
                row("grad_norm", lg[i], str(i)),
                row("weight_norm", float(after.norm()), str(i)),
                row(
                    "update_ratio",
                    _ratio(float((after - self.before[i]).norm()), float(self.before[i].norm())),
                    str(i),
                ),
                row("dist_from_init", float((after - self.init[i]).norm()), str(i)),
            ]
        for i in range(len(self.acts)):
            if i in self.outputs:
                rows += [row(m, v, str(i)) for m, v in self._act_stats(self.outputs[i])]
        if self.pre_transform:
            rows.append(row("grad_norm_pre_transform", self.pre))
        return rows

    def _act_stats(self, y: torch.Tensor) -> list[tuple[str, float]]:
        y = y.double()
        if self.features_last or y.dim() <= 2:
            units = y.reshape(-1, y.shape[-1])
        else:  # (N, C, *spatial): a channel is a unit
            units = y.transpose(1, -1).reshape(-1, y.shape[1])
        out = [("act_mean", float(y.mean())), ("act_std", float(y.std(unbiased=False)))]
        dead = self.props.get("dead_below")
        if dead is not None:
            out.append(("dead_fraction", float((units.amax(dim=0) <= dead).double().mean())))
        sat = self.props.get("saturation")
        if sat is not None:
            lo, hi = sat
            out.append(("saturated_fraction", float(((y <= lo) | (y >= hi)).double().mean())))
        return out


def _norm(tensors: list[torch.Tensor]) -> float:
    return math.sqrt(sum(float(t.detach().double().pow(2).sum()) for t in tensors))


def _ratio(a: float, b: float) -> float:
    if b == 0:
        return math.inf if a > 0 else math.nan
    return a / b


def _lr_groups(model: nn.Module, hp: Mapping[str, Any]) -> Any:
    """The model's parameters, or, where a parametrization tagged learning-rate multipliers,
    one param group per multiplier with ``lr`` times it (the ``mup`` package's ``MuAdam``
    way, restated apart from the engine's step hooks)."""
    from techbench.techniques.parametrize import LR_MULT_ATTR, lr_multiplier

    params = list(model.parameters())
    if all(lr_multiplier(p) == 1.0 for p in params):
        return params
    groups: dict[float, list[torch.Tensor]] = {}
    for p in params:
        groups.setdefault(lr_multiplier(p), []).append(p)
        if hasattr(p, LR_MULT_ATTR):  # the group's lr carries it now (a regularizer reads it)
            delattr(p, LR_MULT_ATTR)
    return [{"params": ps, "lr": hp["lr"] * m} for m, ps in groups.items()]
