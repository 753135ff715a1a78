"""What a task means to the stacked engine: each member's evaluation metrics, vmapped.

One definition per task lives in :mod:`techbench.tasks`; the stacked engine
(:mod:`techbench.engine.population`) calls them under ``torch.func.vmap`` over the member dimension
(directly for a stack of one): per chunk :func:`techbench.tasks.eval_sums` of each member's output (loss sum,
argmax hits, sample or token count), summed over the chunks of
:func:`techbench.tasks.eval_chunk` (the one-by-one chunks: rows for classification and
regression, about :data:`techbench.tasks.LM_EVAL_TOKENS` tokens for a language model), then
:func:`techbench.tasks.eval_metrics` per member (``loss``, ``acc``; ``bpc`` and ``ppl`` for a
language model). So member k's metrics are trial k's up to the rounding of the vmapped forward.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
from torch.func import vmap

from .. import tasks

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@torch.no_grad()
def member_metrics(
    task: str,
    forward: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    y: torch.Tensor,
    rows: int,
    loss: LossFn | None = None,
) -> torch.Tensor:
    """``[K, M]`` float64 on the device: the :func:`techbench.tasks.metric_names` metrics of
    every member over (x, y).

    ``forward(xb)`` maps a chunk shared by all members to the members' outputs ``[K, ...]``
    (the caller sets eval mode); ``rows`` is the one-by-one runner's chunk for a
    classification or regression task (:data:`techbench.engine.lit.EVAL_CHUNK`); ``loss`` defaults to
    :func:`techbench.tasks.loss_fn`.
    """
    loss = loss or tasks.loss_fn(task)
    chunk = tasks.eval_chunk(task, x, rows)
    total: torch.Tensor | None = None
    for lo in range(0, max(len(x), 1), chunk):
        xb, yb = x[lo : lo + chunk], y[lo : lo + chunk]

        def sums(out: torch.Tensor, yb: torch.Tensor = yb) -> torch.Tensor:
            return tasks.eval_sums(task, out, yb, loss)

        out = forward(xb)
        part = sums(out[0]).unsqueeze(0) if len(out) == 1 else vmap(sums)(out)
        total = part if total is None else total + part
    assert total is not None
    if len(total) == 1:
        return tasks.eval_metrics(task, total[0]).unsqueeze(0)
    return vmap(functools.partial(tasks.eval_metrics, task))(total)
