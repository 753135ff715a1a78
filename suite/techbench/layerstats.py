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

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

ACTIVATION_STATS = ("act_mean", "act_std", "dead_fraction", "saturated_fraction")


def activation_stat_matrix(
    ys: Sequence[torch.Tensor], properties: Mapping[str, Any]
) -> tuple[torch.Tensor, list[int]]:
    """``(L, 4)`` rows ``[mean, std, dead_fraction, saturated_fraction]``, on the device.

    Row ``r`` belongs to ``ys[order[r]]``. Outputs of the same shape (every hidden layer of an
    MLP) are stacked and reduced together, so the number of device ops does not grow with
    depth. Dead and saturated fractions are NaN when the activation declares it cannot die or
    saturate. Callers move the matrix to the host with the rest of their numbers (one sync).
    """
    import torch

    groups: dict[tuple[Any, ...], list[int]] = {}
    for i, y in enumerate(ys):
        groups.setdefault((tuple(y.shape), y.dtype, y.device), []).append(i)
    blocks, order = [], []
    for members in groups.values():
        y = ys[members[0]] if len(members) == 1 else torch.stack([ys[i] for i in members])
        blocks.append(_stats_block(y.detach(), len(members) > 1, properties))
        order += members
    if not blocks:
        return torch.empty(0, 4), order
    return (blocks[0] if len(blocks) == 1 else torch.cat(blocks)), order


def _stats_block(y: torch.Tensor, stacked: bool, properties: Mapping[str, Any]) -> torch.Tensor:
    """Statistics of one output, or of ``k`` stacked outputs of one shape: ``(k, 4)``."""
    import torch

    if y.dtype not in (torch.float32, torch.float64):
        y = y.float()
    if not stacked:
        y = y.unsqueeze(0)
    k = y.shape[0]
    flat = y.reshape(k, -1)
    n = max(flat.shape[1], 1)
    nan = torch.full((k,), math.nan, device=y.device, dtype=y.dtype)
    dead, saturated = nan, nan
    dead_below = properties.get("dead_below")
    if dead_below is not None:
        # a unit is dead when its largest output is <= dead_below (NaN never counts as dead)
        dead = (_units_last(y).amax(dim=1) <= dead_below).to(y.dtype).mean(dim=1)
    saturation = properties.get("saturation")
    if saturation is not None:
        lo, hi = saturation
        # symmetric about 0 (tanh, softsign): one comparison instead of two
        mask = flat.abs() >= hi if lo == -hi else (flat <= lo) | (flat >= hi)
        saturated = torch.count_nonzero(mask, dim=1).to(y.dtype) / n
    mean = flat.mean(dim=1, keepdim=True)
    # two-pass std as ||y - mean|| / sqrt(n): torch's std over dim=1 is ~7x slower on CPU
    std = torch.linalg.vector_norm(flat - mean, dim=1) / math.sqrt(n)
    return torch.stack([mean.reshape(k), std, dead, saturated], dim=1)


def _units_last(y: torch.Tensor) -> torch.Tensor:
    """(k, N, C) stays; (k, N, C, *spatial) becomes (k, N * spatial, C): a channel is a unit."""
    k = y.shape[0]
    if y.dim() <= 3:
        return y.reshape(k, y.shape[1], -1)
    return y.transpose(2, -1).reshape(k, -1, y.shape[2])


def activation_stats(y: torch.Tensor, properties: Mapping[str, Any]) -> torch.Tensor:
    """``[mean, std, dead_fraction, saturated_fraction]`` of one layer's outputs, on device."""
    return activation_stat_matrix([y], properties)[0][0]
