"""Built-in learning-rate schedules: torch schedulers and their closed forms.

Fast side: ``factory(optimizer, total_steps, **hp) -> torch.optim.lr_scheduler.LRScheduler``,
stepped once per optimizer step, so that after ``t`` calls to ``scheduler.step()`` every param
group's ``lr`` is ``reference(t, base_lr, total_steps, **hp)`` for its own ``base_lr``.
LambdaLR factors are small picklable classes, so ``state_dict`` carries their settings.

Reference side: ``lr(step, base_lr, total_steps, **hp) -> float``, the closed form.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch.optim.lr_scheduler import ExponentialLR, LambdaLR, LRScheduler, StepLR


class _Constant:
    def __call__(self, t: int) -> float:
        return 1.0


class _InverseTime:
    def __init__(self, decay: float) -> None:
        self.decay = decay

    def __call__(self, t: int) -> float:
        return 1.0 / (1.0 + self.decay * t)


class _WarmupCosine:
    def __init__(self, total_steps: int, warmup_steps: int, min_lr_ratio: float) -> None:
        self.total_steps = total_steps
        self.warmup_steps = warmup_steps
        self.min_lr_ratio = min_lr_ratio

    def __call__(self, t: int) -> float:
        return _warmup_cosine_factor(t, self.total_steps, self.warmup_steps, self.min_lr_ratio)


def _warmup_cosine_factor(t: int, total: int, warmup: int, min_ratio: float) -> float:
    if t < warmup:
        return (t + 1) / warmup
    span = max(1, total - 1 - warmup)
    progress = min(1.0, (t - warmup) / span)
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def constant(optimizer: torch.optim.Optimizer, total_steps: int) -> LRScheduler:
    return LambdaLR(optimizer, _Constant())


def step(
    optimizer: torch.optim.Optimizer, total_steps: int, *, step_size: int, gamma: float
) -> LRScheduler:
    return StepLR(optimizer, step_size=step_size, gamma=gamma)


def cosine(
    optimizer: torch.optim.Optimizer,
    total_steps: int,
    *,
    warmup_steps: int = 0,
    min_lr_ratio: float = 0.0,
) -> LRScheduler:
    return LambdaLR(optimizer, _WarmupCosine(total_steps, warmup_steps, min_lr_ratio))


def exponential(optimizer: torch.optim.Optimizer, total_steps: int, *, gamma: float) -> LRScheduler:
    return ExponentialLR(optimizer, gamma=gamma)


def inverse_time(
    optimizer: torch.optim.Optimizer, total_steps: int, *, decay: float
) -> LRScheduler:
    return LambdaLR(optimizer, _InverseTime(decay))


def constant_reference(step: int, base_lr: float, total_steps: int, **_: Any) -> float:
    """``lr_t = lr_0``."""
    return base_lr


def step_reference(
    step: int, base_lr: float, total_steps: int, *, step_size: int, gamma: float, **_: Any
) -> float:
    """``lr_t = lr_0 * gamma^floor(t / step_size)``."""
    return base_lr * gamma ** (step // step_size)


def cosine_reference(
    step: int,
    base_lr: float,
    total_steps: int,
    *,
    warmup_steps: int = 0,
    min_lr_ratio: float = 0.0,
    **_: Any,
) -> float:
    """Warm-up (Goyal et al. 2017): ``lr_t = lr_0 (t+1)/W`` for ``t < W``; then cosine
    (Loshchilov & Hutter 2017, one cycle): with ``p = min(1, (t-W)/max(1, T-1-W))``,
    ``lr_t = lr_0 (m + (1-m)(1 + cos(pi p))/2)``, ``m = min_lr_ratio``: ``lr_0`` at ``t = W`` and
    ``m lr_0`` at the last step ``t = T-1``."""
    w, t, total = warmup_steps, step, total_steps
    if t < w:
        return base_lr * (t + 1) / w
    p = min(1.0, (t - w) / max(1, total - 1 - w))
    return base_lr * (min_lr_ratio + (1 - min_lr_ratio) * (1 + math.cos(math.pi * p)) / 2)


def exponential_reference(
    step: int, base_lr: float, total_steps: int, *, gamma: float, **_: Any
) -> float:
    """``lr_t = lr_0 * gamma^t``."""
    return base_lr * gamma**step


def inverse_time_reference(
    step: int, base_lr: float, total_steps: int, *, decay: float, **_: Any
) -> float:
    """``lr_t = lr_0 / (1 + decay * t)`` (seed 002: "works well if alpha is slowly decreased")."""
    return base_lr / (1 + decay * step)
