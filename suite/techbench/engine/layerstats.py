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


class Scratch:
    """Work buffers reused from one call to the next, one per (tag, shape, dtype, device).

    A snapshot of a wide network makes megabyte-sized temporaries (the stacked outputs, the
    centred values, masks); allocating them afresh each time costs page faults comparable to
    the arithmetic itself.
    """

    def __init__(self) -> None:
        self._buffers: dict[tuple[Any, ...], torch.Tensor] = {}

    def get(
        self, tag: str, like: torch.Tensor, dtype: Any = None, shape: Sequence[int] | None = None
    ) -> torch.Tensor:
        """A buffer of ``shape`` (default ``like``'s) and ``dtype`` on ``like``'s device."""
        import torch

        dtype = dtype or like.dtype
        size = tuple(like.shape if shape is None else shape)
        key = (tag, size, dtype, like.device)
        buffer = self._buffers.get(key)
        if buffer is None:
            buffer = self._buffers[key] = torch.empty(size, dtype=dtype, device=like.device)
        return buffer


def activation_stat_matrix(
    ys: Sequence[torch.Tensor], properties: Mapping[str, Any], scratch: Scratch | None = None
) -> tuple[torch.Tensor, list[int]]:
    """``(L, 4)`` rows ``[mean, std, dead_fraction, saturated_fraction]``, on the device.

    Row ``r`` belongs to ``ys[order[r]]``: :func:`member_stat_matrix` with one member.
    """
    return member_stat_matrix([y.detach().unsqueeze(0) for y in ys], properties, scratch)


def member_stat_matrix(
    ys: Sequence[torch.Tensor], properties: Mapping[str, Any], scratch: Scratch | None = None
) -> tuple[torch.Tensor, list[int]]:
    """The statistics of ``L`` layers of ``K`` networks at once: ``ys[i]`` is layer ``i``'s
    outputs ``[K, N, ...]``; ``(L * K, 4)`` rows ``[mean, std, dead_fraction,
    saturated_fraction]`` on the device, row ``r`` for member ``r % K`` of layer
    ``ys[order[r // K]]``.

    Outputs of the same shape (every hidden layer of an MLP) are stacked and reduced together,
    so the number of device ops grows with neither depth nor members. Dead and saturated
    fractions are NaN when the activation declares it cannot die or saturate. Callers move the
    matrix to the host with the rest of their numbers (one sync); a caller that takes
    snapshots repeatedly passes its own :class:`Scratch`.
    """
    import torch

    scratch = scratch or Scratch()
    groups: dict[tuple[Any, ...], list[int]] = {}
    for i, y in enumerate(ys):
        groups.setdefault((tuple(y.shape), y.dtype, y.device), []).append(i)
    blocks, order = [], []
    for members in groups.values():
        first = ys[members[0]].detach()
        if len(members) == 1:
            y = first
        else:
            y = torch.stack(
                [ys[i].detach() for i in members],
                out=scratch.get("stack", first, shape=(len(members), *first.shape)),
            ).flatten(0, 1)
        blocks.append(_stats_block(y, properties, scratch))
        order += members
    if not blocks:
        return torch.empty(0, 4), order
    return (blocks[0] if len(blocks) == 1 else torch.cat(blocks)), order


def _stats_block(y: torch.Tensor, properties: Mapping[str, Any], scratch: Scratch) -> torch.Tensor:
    """Statistics of ``k`` outputs of one shape stacked on dim 0: ``(k, 4)``."""
    import torch

    if y.dtype not in (torch.float32, torch.float64):
        y = y.float()
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
        mask = scratch.get("mask", flat, torch.bool)
        if lo == -hi:  # symmetric about 0 (tanh, softsign): one comparison instead of two
            torch.ge(torch.abs(flat, out=scratch.get("work", flat)), hi, out=mask)
        else:
            torch.le(flat, lo, out=mask)
            mask |= torch.ge(flat, hi, out=scratch.get("mask2", flat, torch.bool))
        saturated = torch.count_nonzero(mask, dim=1).to(y.dtype) / n
    mean = flat.mean(dim=1, keepdim=True)
    # two-pass std as ||y - mean|| / sqrt(n): torch's std over dim=1 is ~7x slower on CPU
    centred = torch.sub(flat, mean, out=scratch.get("work", flat))
    std = torch.linalg.vector_norm(centred, dim=1) / math.sqrt(n)
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
