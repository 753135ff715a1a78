"""What a task means to the runner: its training loss and its evaluation metrics.

One place per task, so the runner (``techbench.engine.lit``) stays task-agnostic:

=================  ==========================================  ================================
task               training loss                               evaluation metrics
=================  ==========================================  ================================
classification     cross-entropy of the logits (N, K)          ``loss``, ``acc``
regression         mean squared error                          ``loss``
language_model     next-token cross-entropy, mean over every   ``loss`` (nats per token),
                   position of every window: logits (N, T, V)  ``acc`` (token accuracy),
                   against targets (N, T)                      ``bpc``, ``ppl``
=================  ==========================================  ================================

For a character-level model a token is a character, so bits per character is the loss in bits,
``bpc = loss / ln 2``, and perplexity is ``ppl = exp(loss)`` (Jelinek et al. 1977; the usual
character-level language-modelling metrics, e.g. Graves 2013, arXiv:1308.0850).

Evaluation is additive: :func:`eval_sums` gives ``[loss sum, correct, count]`` of one chunk (float64,
on the device), chunks are summed, and :func:`eval_metrics` turns the totals into the metrics
in :func:`metric_names` order, so the result does not depend on the chunking beyond rounding.
:func:`epoch_rows` and :func:`rows_for_test` turn those metrics into the stored rows; the one-by-one
runner (``techbench.engine.lit``) and the stacked engine (``techbench.engine.population``, which vmaps
:func:`eval_sums` and :func:`eval_metrics` over its members) both record through them.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from .schema import metric_row

if TYPE_CHECKING:
    import torch

CLASSIFICATION = "classification"
REGRESSION = "regression"
LANGUAGE_MODEL = "language_model"
TASKS = (CLASSIFICATION, REGRESSION, LANGUAGE_MODEL)

_METRICS: dict[str, tuple[str, ...]] = {
    CLASSIFICATION: ("loss", "acc"),
    REGRESSION: ("loss",),
    LANGUAGE_MODEL: ("loss", "acc", "bpc", "ppl"),
}

LM_EVAL_TOKENS = 1 << 16
"""Language models are evaluated in chunks of about this many tokens (logits are (N, T, V))."""


def _known(task: str) -> str:
    if task not in _METRICS:
        raise ValueError(f"unknown task {task!r}; one of {', '.join(TASKS)}")
    return task


def metric_names(task: str) -> tuple[str, ...]:
    """The evaluation metrics of ``task``, in the order :func:`eval_metrics` returns them."""
    return _METRICS[_known(task)]


def loss_fn(task: str) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The training loss of ``task`` (a mean over samples, or over tokens for a language model)."""
    from torch import nn

    _known(task)
    if task == CLASSIFICATION:
        return nn.functional.cross_entropy
    if task == LANGUAGE_MODEL:

        def next_token(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            return nn.functional.cross_entropy(out.reshape(-1, out.shape[-1]), y.reshape(-1))

        return next_token

    def mse(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return nn.functional.mse_loss(out.reshape(y.shape), y)

    return mse


def eval_sums(
    task: str,
    out: torch.Tensor,
    y: torch.Tensor,
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
) -> torch.Tensor:
    """``[loss * count, correct, count]`` (float64, on the device) of one evaluation chunk.

    ``count`` is the number of samples, or of tokens for a language model; ``correct`` counts
    argmax hits (0 for regression). ``loss`` defaults to :func:`loss_fn`.
    """
    import torch

    loss = loss or loss_fn(task)
    count = y.numel() if task == LANGUAGE_MODEL else len(y)
    mean = loss(out, y).double()
    if task == REGRESSION:
        correct = torch.zeros((), dtype=torch.float64, device=out.device)
    else:
        correct = (out.argmax(dim=-1) == y).sum().double()
    return torch.stack([mean * count, correct, torch.full_like(mean, float(count))])


def eval_metrics(task: str, sums: torch.Tensor) -> torch.Tensor:
    """The metrics of :func:`metric_names` from summed :func:`eval_sums` (stays on the device)."""
    import torch

    count = sums[2].clamp_min(1.0)
    loss = sums[0] / count
    if task == REGRESSION:
        return loss.reshape(1)
    acc = sums[1] / count
    if task == CLASSIFICATION:
        return torch.stack([loss, acc])
    return torch.stack([loss, acc, loss / math.log(2.0), torch.exp(loss)])


def eval_chunk(task: str, x: torch.Tensor, rows: int) -> int:
    """Rows per evaluation chunk: ``rows`` samples, or about :data:`LM_EVAL_TOKENS` tokens."""
    if task == LANGUAGE_MODEL and x.dim() > 1:
        return max(1, LM_EVAL_TOKENS // max(1, int(x.shape[1])))
    return rows


def epoch_rows(
    task: str, step: int, epoch: int, train: Sequence[float], val: Sequence[float]
) -> tuple[list[dict[str, Any]], dict[str, float]]:
    """An epoch's end: rows (train ``epoch_<name>``, val ``<name>`` per metric) and the metrics
    callbacks read (``train_<name>``, ``val_<name>``), from :func:`eval_metrics` values."""
    rows: list[dict[str, Any]] = []
    metrics: dict[str, float] = {}
    for name, train_value, val_value in zip(metric_names(task), train, val, strict=True):
        rows.append(metric_row(step, epoch, "train", f"epoch_{name}", train_value))
        rows.append(metric_row(step, epoch, "val", name, val_value))
        metrics |= {f"val_{name}": val_value, f"train_{name}": train_value}
    return rows, metrics


def rows_for_test(
    task: str, step: int, epoch: int, final: Sequence[float], best: Sequence[float] | None
) -> list[dict[str, Any]]:
    """Test rows: :func:`eval_metrics` values at the final weights and, as ``best_<name>``, at
    the best-validation weights (None: no epoch had a finite validation loss)."""
    names = metric_names(task)
    named = list(zip(names, final, strict=True))
    if best is not None:
        named += [(f"best_{n}", v) for n, v in zip(names, best, strict=True)]
    return [metric_row(step, epoch, "test", metric, value) for metric, value in named]
