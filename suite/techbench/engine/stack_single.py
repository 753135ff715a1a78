"""A stack of one: the engine's one-member case, without vmap.

Why: a trial alone is a stack of one (:class:`techbench.engine.population.StackedModule`), and it must
not pay for stacking: its own network is the module's and is called directly, its own parameters
are the leaves (so a plain, even non-elementwise, optimizer and a parametrization's roles see the
network as built), regularizer hooks act on it as they are, and where the precision needs it
(mixed precision) backward and the optimizer step go through Lightning. The stacked views the
rest of the engine reads (``[1, ...]``) are made on demand.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast

import torch
from torch import nn

if TYPE_CHECKING:
    from .population import StackedModule


def init_single(m: StackedModule, model0: nn.Module) -> None:
    """K = 1: the member's own network is the module's (no vmap, no skeleton, no copies);
    its parameters are the leaves, and the ``[1, ...]`` stacked views are made on demand."""
    m.model = model0
    m._skeleton = [model0]
    m.names = [name for name, _ in model0.named_parameters()]
    m.buffer_names = [name for name, _ in model0.named_buffers()]
    m.group_slices = [slice(0, 1)]
    m.group_params = [m.members[0].optimizer_params]
    m._index = {name: j for j, name in enumerate(m.names)}
    m._group_of = [0]
    m._act_modules = list(getattr(model0, "activation_layers", []))
    m._samples = None


def step_single(m: StackedModule, x: torch.Tensor, y: torch.Tensor, epoch: int) -> None:
    """One optimizer step of a stack of one: the network called directly (no vmap), the
    steps of :meth:`_step` in the same order, the trainer's callbacks' per-step hooks
    (:class:`~techbench.engine.callbacks.StepCallback`), and Lightning's backward and optimizer
    step where the precision needs them (mixed precision)."""
    step, reg, gen = m.steps_done, m.regularizer, m._generators[0]
    trainer, hooks = m.trainer, m._cb_hooks
    for cb in hooks["begin_step"]:
        cb.begin_step(trainer.global_step, epoch)
    if m._transform_batch:
        x, y = reg.transform_batch(x, y, gen)
    health = m._health
    snap = health is not None and health.due(step)
    if snap:
        out, acts = m._capture(m.model, x)
        health.begin(step, epoch, [a.unsqueeze(0) for a in acts])
    else:
        out = m.model(x)
    loss = single_loss(m, out, y)
    raw, wrapped = trainer.optimizers[0], None
    if m._direct:
        raw.zero_grad(set_to_none=True)
        for cb in hooks["on_before_backward"]:
            cb.on_before_backward(trainer, m, loss)
        loss.backward()
        for cb in hooks["on_after_backward"]:
            cb.on_after_backward(trainer, m)
    else:
        wrapped = cast(Any, m.optimizers())
        wrapped.zero_grad(set_to_none=True)
        m.manual_backward(loss)
    if snap:
        health.after_backward()
    if m.hooks.transforms[0]:
        reg.transform_gradients(m.model, step, gen)
    if snap:
        health.before_update()
    if m._direct:
        for cb in hooks["on_before_optimizer_step"]:
            cb.on_before_optimizer_step(trainer, m, raw)
        raw.step()
        assert m._count_step is not None
        m._count_step()
    else:
        assert wrapped is not None
        wrapped.step()
    if m.hooks.after[0]:
        reg.after_step(m.model, raw)
    if snap:
        health.end([True])
    if m._curvature is not None and m._curvature.due(step):
        m._curvature.probe(step, epoch, m, [True])
    for scheduler in m._schedulers:
        scheduler.step()
    for cb in hooks["end_step"]:
        cb.end_step()
    flush = m.lives.record(loss.detach().reshape(1), step, epoch)
    m.steps_done += 1
    if flush:
        m._flush_losses()


def single_loss(m: StackedModule, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The member's loss alone: the regularizer's ``loss`` (or the task's) plus its penalty."""
    losses, reg = m.member_losses, m.regularizer
    loss = reg.loss(out, y) if losses.replaced else None
    if loss is None:
        loss = m.loss_fn(out, y)
    if losses.penalized:
        term = reg.penalty(m.model)
        if term is not None:
            loss = loss + term
    return loss
