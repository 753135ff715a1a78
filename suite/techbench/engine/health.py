"""Gradient health: cheap statistics of the gradients, weights and activations, on by default.

Every ``every_n_steps`` optimizer steps (and at step 0) it records, as tidy rows with split
"health" (layer "0", "1", ... = the model's ``weight_layers`` in forward order):

- per layer: ``grad_norm`` = ||dL/dW||_2 of the layer's weight, ``weight_norm`` = ||W||_2 after
  the step, ``update_ratio`` = ||W_after - W_before|| / ||W_before||, ``dist_from_init`` =
  ||W - W_0||; from a forward hook on activation ``i`` (``activation_layers[i]``):
  ``act_mean``, ``act_std``, ``dead_fraction`` and ``saturated_fraction`` with the thresholds the
  activation plugin declares (``techbench.engine.layerstats``; a metric the activation cannot have is
  not recorded); a unit is a channel of (N, C, *spatial) outputs, or a feature of (N, T, C)
  outputs when the model sets ``features_last`` (token models);
- globals (layer ""): ``grad_norm_global`` = sqrt(sum of squared norms of every parameter's
  gradient), ``nonfinite_grads`` = count of NaN/inf gradient entries, ``grad_ratio_first_last``
  = first layer's grad_norm / last layer's; when a regularizer transforms gradients
  (``transform_gradients``: clipping, noise), ``grad_norm_pre_transform`` = the global norm
  straight after backward, before any transform.

Every gradient metric describes what the optimizer sees, i.e. the gradients *after* the
regularizers' ``transform_gradients`` (clipped, noised); the pre-transform global norm beside
them shows how much a transform changed (the engine calls the transforms between the
pre-transform norm and the gradient metrics).

Cost: on steps that are not logged, three attribute checks. On logged steps every statistic is
reduced on the device and the whole step's values go to the host in one ``tolist()`` (one
sync; a step whose gradients are not all finite costs a second one, to count them). The hooks
are registered only for the logged step's forward pass. ``seconds`` is the time spent in
the statistics and their hooks (the health overhead the trial reports). Memory: two copies of the
weight matrices (W_0 and one work buffer) plus the logged step's activation statistics buffers.

Each statistic is defined once, in :class:`MemberHealth`, over a leading member dimension: a
stack of K trials (:mod:`techbench.engine.stacked_health`, a trial alone is a stack of one) reduces all
members together with one transfer per snapshot for the whole stack; each trial's
:class:`GradientHealth` holds its cadence and receives its rows.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from ..schema import DEFAULT_CONFIG, metric_row
from .layerstats import ACTIVATION_STATS, Scratch, member_stat_matrix

LAYER_METRICS = ("grad_norm", "weight_norm", "update_ratio", "dist_from_init")
GLOBAL_METRICS = ("grad_norm_global", "nonfinite_grads", "grad_ratio_first_last")
PRE_TRANSFORM_METRIC = "grad_norm_pre_transform"


def weight_layers_of(model: nn.Module) -> list[nn.Module]:
    """``model.weight_layers`` if declared, else every Linear / Conv module in registration order."""
    declared = getattr(model, "weight_layers", None)
    if declared is not None:
        return list(declared)
    kinds = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
    return [m for m in model.modules() if isinstance(m, kinds)]


class GradientHealth:
    """One trial's gradient health: its cadence, the activation metrics its activation can
    have, and the rows and seconds the engine records for it (the engine computes every
    statistic for the whole stack, :mod:`techbench.engine.stacked_health`, with :class:`MemberHealth`)."""

    def __init__(
        self,
        every_n_steps: int = DEFAULT_CONFIG["health"]["every_n_steps"],
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


class MemberHealth:
    """The statistics of K networks of one shape at once: every tensor it is given has a
    leading member dimension (``[K, ...]``), and each reduction runs over all members together.

    The one definition of every health statistic (see the module docstring): the engine
    (:mod:`techbench.engine.stacked_health`) uses it with K = the stack's size (1 for a trial alone)
    over its stacked tensors. A
    snapshot is :meth:`observe` (each activation layer's outputs), :meth:`after_backward` (only
    when gradient transforms run), :meth:`before_update` and :meth:`after_update`, which moves
    every member's values to the host in one transfer and returns them per member.
    """

    def __init__(
        self,
        num_members: int,
        num_activations: int,
        properties: Mapping[str, Any],
        features_last: bool = False,
    ) -> None:
        self.num_members = num_members
        self.properties = dict(properties)
        self.features_last = features_last
        self._outs: list[torch.Tensor | None] = [None] * num_activations
        self._scratch = Scratch()
        self._pending: dict[str, list[torch.Tensor]] = {}
        self._grads: list[torch.Tensor] = []
        self._num_global = 0
        self._layers: Sequence[int | None] = []
        self._pre: torch.Tensor | None = None

    def start(self, weights: Sequence[torch.Tensor]) -> None:
        """At fit start: a copy of the weights (``[K, ...]`` each) as ``W_0`` and a work buffer."""
        self.init = [w.clone() for w in _as_float([w.detach() for w in weights])]
        self._before = [torch.empty_like(w) for w in self.init]  # also holds W - W_0 later

    def observe(self, index: int, output: torch.Tensor) -> None:
        """Activation layer ``index``'s outputs ``[K, N, ...]`` of this step's forward pass.

        Reduced after the step, all layers and members together; autograd forbids in-place
        changes to it (the next layer saved it for backward)."""
        out = output.detach()
        if self.features_last:  # (K, N, T, C): a unit is a feature over samples and positions
            out = out.reshape(out.shape[0], -1, out.shape[-1])
        self._outs[index] = out

    def after_backward(self, grads: Sequence[torch.Tensor]) -> None:
        """Each member's global gradient norm straight after backward, before any gradient
        transform (device op). With one member, gradients may lack the member dimension."""
        grads = _as_float([g.detach() for g in grads])
        k = self.num_members
        self._pre = torch.stack(member_norms(grads, k)).norm(dim=0) if grads else None

    def before_update(
        self,
        grads: Sequence[torch.Tensor],
        layers: Sequence[int | None],
        weights: Sequence[torch.Tensor],
        num_global: int | None = None,
    ) -> None:
        """Gradient norms and a copy of the weights before the optimizer step (device ops).

        ``grads[:num_global]`` (default all) make the global norm; weight layer ``i``'s gradient
        is ``grads[layers[i]]`` (None: it has none, its norm is NaN). With one member, gradients
        may lack the member dimension (every use of them is a reduction)."""
        grads = [g.detach() for g in grads]
        torch._foreach_copy_(self._before, [w.detach() for w in weights])
        norms = member_norms(_as_float(grads) + self._before, self.num_members)
        self._pending = {"grad": norms[: len(grads)], "before": norms[len(grads) :]}
        self._grads = grads
        self._num_global = len(grads) if num_global is None else num_global
        self._layers = list(layers)

    def discard(self) -> None:
        """Forget an armed snapshot (no optimizer step happened)."""
        self._outs = [None] * len(self._outs)
        self._pending, self._grads, self._pre = {}, [], None

    def after_update(
        self, weights: Sequence[torch.Tensor], pre_transform: bool = False
    ) -> list[dict[str, list[float]]]:
        """After the optimizer step: every member's values (metric -> one per layer), moved to
        the host in one transfer.

        Every statistic is reduced on the device (norms of gradients, weights, updates and
        distances from init; the activation statistics of all layers and members in one
        :func:`~techbench.engine.layerstats.member_stat_matrix`); the ratios and the global norms
        are formed on the host. Non-finite gradient entries are counted only for members whose
        global norm is not finite (a finite sum of squares has none), at the cost of a second
        transfer on that step.
        """
        k, n = self.num_members, len(weights)
        outs, self._outs = self._outs, [None] * len(self._outs)
        host = _HostValues(k)
        host.add("grad", self._pending["grad"])
        host.add("before", self._pending["before"])
        if n:
            # one reused buffer per weight: W_before - W_after, whose norms are taken, then
            # W_after - W_0 (the norms are computed before the buffer is overwritten: eager on
            # the CPU, stream order on a GPU)
            ws = _as_float([w.detach() for w in weights])
            torch._foreach_sub_(self._before, ws)
            after = member_norms([*ws, *self._before], k)
            host.add("weight", after[:n])
            host.add("update", after[n:])
            for w, w0, buffer in zip(ws, self.init, self._before, strict=True):
                torch.sub(w, w0, out=buffer)
            host.add("dist", member_norms(self._before, k))
        seen = [i for i, o in enumerate(outs) if o is not None]
        if seen:
            observed = [o for o in outs if o is not None]
            matrix, order = member_stat_matrix(observed, self.properties, self._scratch)
            host.add("acts", matrix)
        pre, self._pre = self._pre, None
        if pre_transform:
            host.add("pre", torch.full((k,), math.nan) if pre is None else pre.reshape(k))
        v = host.to_host()
        grads, self._grads, self._pending = self._grads, [], {}
        grad_norms = v["grad"]  # [len(grads)][K]
        globals_ = [
            math.sqrt(sum(g[m] * g[m] for g in grad_norms[: self._num_global])) for m in range(k)
        ]
        bad = [m for m in range(k) if not math.isfinite(globals_[m])]
        counts = dict(zip(bad, _count_nonfinite(grads[: self._num_global], k, bad), strict=True))
        values = []
        for m in range(k):
            layer_grads = [grad_norms[j][m] if j is not None else math.nan for j in self._layers]
            out: dict[str, list[float]] = {
                "grad_norm_global": [globals_[m]],
                "nonfinite_grads": [counts.get(m, 0.0)],
                "grad_ratio_first_last": [_div(layer_grads[0], layer_grads[-1]) if n else math.nan],
            }
            if n:
                out["grad_norm"] = layer_grads
                out["weight_norm"] = [x[m] for x in v["weight"]]
                out["update_ratio"] = [
                    _div(u[m], b[m]) for u, b in zip(v["update"], v["before"], strict=True)
                ]
                out["dist_from_init"] = [x[m] for x in v["dist"]]
            acts = {metric: [math.nan] * len(outs) for metric in ACTIVATION_STATS}
            values.append(out | acts)
        if seen:
            for r, row in enumerate(v["acts"]):
                layer, m = seen[order[r // k]], r % k
                for metric, value in zip(ACTIVATION_STATS, row, strict=True):
                    values[m][metric][layer] = value
        if pre_transform:
            for m in range(k):
                values[m][PRE_TRANSFORM_METRIC] = [v["pre"][m]]
        return values


def row_keys(
    num_weights: int, num_activations: int, act_metrics: Sequence[str], pre_transform: bool
) -> list[tuple[str, str, int]]:
    """(metric, layer, index into a member's values) of every health row of one snapshot, in
    order: globals, per weight layer, per activation layer, the pre-transform norm."""
    keys = [(name, "", 0) for name in GLOBAL_METRICS]
    for i in range(num_weights):
        keys += [(metric, str(i), i) for metric in LAYER_METRICS]
    for i in range(num_activations):
        keys += [(m, str(i), i) for m in ACTIVATION_STATS if m in act_metrics]
    if pre_transform:
        keys.append((PRE_TRANSFORM_METRIC, "", 0))
    return keys


def emit_rows(
    rows: list[dict[str, Any]],
    keys: Sequence[tuple[str, str, int]],
    step: int,
    epoch: int,
    values: Mapping[str, Sequence[float]],
) -> None:
    """Append one snapshot's rows (in the order of ``keys``) of one member to ``rows``."""
    rows.extend(
        metric_row(step, epoch, "health", metric, float(values[metric][i]), layer)
        for metric, layer, i in keys
    )


class _HostValues:
    """Named device values moved to the host together, in one ``tolist()`` (one sync).

    A group is a list of per-member norms (``()`` or ``[K]`` tensors, stacked together in one
    op; it comes back as one list of K floats per tensor) or a tensor (``[n, m]`` comes back as
    n lists of m floats, ``[n]`` as one list).
    """

    def __init__(self, k: int) -> None:
        self.k = k
        self._norms: list[torch.Tensor] = []
        self._tensors: list[torch.Tensor] = []
        self._norm_groups: list[tuple[str, tuple[int, ...]]] = []
        self._tensor_groups: list[tuple[str, tuple[int, ...]]] = []

    def add(self, name: str, values: Sequence[torch.Tensor] | torch.Tensor) -> None:
        if isinstance(values, torch.Tensor):
            self._tensors.append(values.reshape(-1))
            self._tensor_groups.append((name, tuple(values.shape)))
        else:
            self._norms += values
            self._norm_groups.append((name, (len(values), self.k)))

    def to_host(self) -> dict[str, Any]:
        """Every group's values as Python floats, by name."""
        parts = [torch.stack(self._norms).reshape(-1)] if self._norms else []
        parts += self._tensors
        if not parts:
            return {}
        device = parts[0].device
        same = all(p.device == device for p in parts)
        flat = (
            parts[0]
            if len(parts) == 1
            else torch.cat(parts if same else [p.to(device) for p in parts])
        )
        values = _transfer(flat)
        out: dict[str, Any] = {}
        at = 0
        for name, shape in self._norm_groups + self._tensor_groups:
            size = math.prod(shape)
            chunk = values[at : at + size]
            if len(shape) == 2:
                chunk = [chunk[i : i + shape[1]] for i in range(0, size, shape[1])]
            out[name] = chunk
            at += size
        return out


def _transfer(values: torch.Tensor) -> list[Any]:
    """The device-to-host transfer of a snapshot (a synchronisation)."""
    return values.tolist()


def _div(a: float, b: float) -> float:
    """``a / b`` with IEEE semantics for the non-negative norms (x / 0 is inf, 0 / 0 NaN)."""
    if b == 0:
        return math.inf if a > 0 else math.nan
    return a / b


def _as_float(tensors: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Float32/float64 tensors as they are; lower precisions as float32 (for exact norms)."""
    keep = (torch.float32, torch.float64)
    return [t if t.dtype in keep else t.float() for t in tensors]


def _count_nonfinite(grads: Sequence[torch.Tensor], k: int, members: Sequence[int]) -> list[float]:
    """Number of NaN/inf entries of each of ``members`` over ``grads`` (``[K, ...]`` each;
    ``x * 0`` is 0 for finite x and NaN otherwise): one transfer, none when no member asks."""
    if not members:
        return []
    if not grads:
        return [0.0] * len(members)
    flat = torch.cat([g.reshape(k, -1) for g in grads], dim=1)[list(members)]
    return [float(c) for c in _transfer(torch.count_nonzero(flat.mul(0), dim=1))]


def member_norms(tensors: Sequence[torch.Tensor], k: int) -> list[torch.Tensor]:
    """The L2 norm of each member's slice of each tensor ``[k, ...]``: one ``[k]`` tensor per
    tensor (``()`` with one member, when the member dimension may be left out).

    One member: torch's fused ``_foreach_norm`` over the tensors; several: one reduction over
    all members per tensor (faster than norms of the members' slices, fused or not).
    """
    foreach = getattr(torch, "_foreach_norm", None)
    if k == 1:
        if foreach is not None and tensors:
            return list(foreach(list(tensors)))
        return [t.norm() for t in tensors]
    return [torch.linalg.vector_norm(t.reshape(k, -1), dim=1) for t in tensors]
