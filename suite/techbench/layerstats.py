"""Per-layer statistics shared by the gradient-health callback and ``techbench probe``.

Every function reduces on the tensor's device and returns tensors, so a caller can stack the
values of all layers and move them to the host in one transfer (one sync per logged step).
Definitions (the activation plugin declares its thresholds, see ``ActivationProperties``):

- dead fraction: share of units whose output is <= ``dead_below`` for every sample of the batch
  (a dead ReLU unit passes no gradient for any input, seed 004);
- saturated fraction: share of outputs at or beyond the ends of the ``saturation`` interval
  (where sigmoid/tanh gradients vanish, seed 001).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

ACTIVATION_STATS = ("act_mean", "act_std", "dead_fraction", "saturated_fraction")


def _units_last(y: torch.Tensor) -> torch.Tensor:
    """(N, C) stays; (N, C, *spatial) becomes (N * spatial, C): a channel is a unit."""
    if y.dim() <= 2:
        return y.reshape(y.shape[0], -1)
    return y.transpose(1, -1).reshape(-1, y.shape[1])


def activation_stat_parts(
    y: torch.Tensor, properties: Mapping[str, Any]
) -> list[torch.Tensor | None]:
    """``[mean, std, dead_fraction, saturated_fraction]`` as device scalars (None: not defined).

    The callers stack the scalars of every layer into one tensor (one transfer).
    """
    y = y.detach().float()
    dead: torch.Tensor | None = None
    dead_below = properties.get("dead_below")
    if dead_below is not None:
        # a unit is dead when its largest output is <= dead_below (NaN never counts as dead)
        dead = (_units_last(y).amax(dim=0) <= dead_below).float().mean()
    saturated: torch.Tensor | None = None
    saturation = properties.get("saturation")
    if saturation is not None:
        lo, hi = saturation
        saturated = ((y <= lo) | (y >= hi)).float().mean()
    return [y.mean(), y.std(unbiased=False), dead, saturated]


def activation_stats(y: torch.Tensor, properties: Mapping[str, Any]) -> torch.Tensor:
    """``[mean, std, dead_fraction, saturated_fraction]`` of one layer's outputs, on device.

    Dead and saturated fractions are NaN when the activation declares it cannot die or saturate.
    """
    import torch

    nan = torch.full((), float("nan"), device=y.device)
    return torch.stack([v if v is not None else nan for v in activation_stat_parts(y, properties)])
