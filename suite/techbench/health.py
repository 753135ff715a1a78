"""Gradient health: a cheap Lightning callback, on by default.

Every ``every_n_steps`` optimizer steps (and at step 0) it records, as tidy rows with split
"health" (layer "0", "1", ... = the model's ``weight_layers`` in forward order):

- per layer: ``grad_norm`` = ||dL/dW||_2 of the layer's weight, ``weight_norm`` = ||W||_2 after
  the step, ``update_ratio`` = ||W_after - W_before|| / ||W_before||, ``dist_from_init`` =
  ||W - W_0||; from a forward hook on activation ``i`` (``activation_layers[i]``):
  ``act_mean``, ``act_std``, ``dead_fraction`` and ``saturated_fraction`` with the thresholds the
  activation plugin declares (``techbench.layerstats``; a metric the activation cannot have is
  not recorded); a unit is a channel of (N, C, *spatial) outputs, or a feature of (N, T, C)
  outputs when the model sets ``features_last`` (token models);
- globals (layer ""): ``grad_norm_global`` = sqrt(sum of squared norms of every parameter's
  gradient), ``nonfinite_grads`` = count of NaN/inf gradient entries, ``grad_ratio_first_last``
  = first layer's grad_norm / last layer's; when a regularizer transforms gradients
  (``transform_gradients``: clipping, noise), ``grad_norm_pre_transform`` = the global norm
  straight after backward, before any transform.

Every gradient metric describes what the optimizer sees, i.e. the gradients *after* the
regularizers' ``transform_gradients`` (clipped, noised); the pre-transform global norm beside
them shows how much a transform changed (the runner calls the transforms between the
callbacks' ``on_after_backward`` and ``on_before_optimizer_step``).

Cost: on steps that are not logged, three attribute checks. On logged steps every statistic is
reduced on the device and the whole step's values go to the host in one ``tolist()`` (one
sync; a step whose gradients are not all finite costs a second one, to count them). The hooks
are registered only for the logged step's forward pass. ``seconds`` is the time spent inside
the callback and its hooks (the health overhead the trial reports). Memory: two copies of the
weight matrices (W_0 and one work buffer) plus the logged step's activation statistics buffers.

It is a :class:`~techbench.callbacks.StepCallback`: the runner calls :meth:`begin_step` and
:meth:`end_step` around every optimizer step, Lightning's ``on_before_optimizer_step`` in between.
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
from typing_extensions import override

from .callbacks import StepCallback
from .layerstats import ACTIVATION_STATS, Scratch, activation_stat_matrix
from .schema import DEFAULT_CONFIG, metric_row

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


class GradientHealth(StepCallback):
    """Records gradient-health rows into ``self.rows`` (see the module docstring)."""

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
        self._active = False
        self._handles: list[Any] = []
        self._outs: list[torch.Tensor | None] = []
        self._pending: dict[str, list[torch.Tensor]] = {}
        self._grads: list[torch.Tensor] = []
        self._stepped = False
        self._layout: tuple[tuple[bool, ...], list[int | None], int] | None = None
        self._grad_layers: list[int | None] = []
        self._row_keys: list[tuple[str, str, int]] | None = None
        self._pre_transform = False
        self._pre_norm: torch.Tensor | None = None
        self._features_last = False

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        model = getattr(pl_module, "model", pl_module)
        self.weights: list[torch.Tensor] = [
            cast(torch.Tensor, layer.weight) for layer in weight_layers_of(model)
        ]
        self.activations = list(getattr(model, "activation_layers", []))
        # token models (N, T, C): a unit is a feature over all samples and positions
        self._features_last = bool(getattr(model, "features_last", False))
        self.params = [p for p in pl_module.parameters() if p.requires_grad]
        self.init = [w.clone() for w in _as_float([w.detach() for w in self.weights])]
        self._before = [torch.empty_like(w) for w in self.init]  # also holds W - W_0 later
        self._scratch = Scratch()
        self._pre_transform = bool(getattr(pl_module, "gradient_transforms", None))
        self._row_keys = None

    @override
    def begin_step(self, step: int, epoch: int) -> None:
        """Before the forward pass of optimizer step ``step``: arm the hooks if it is logged."""
        self._active = step % self.every_n_steps == 0
        if not self._active:
            return
        start = time.perf_counter()
        self._step, self._epoch = step, epoch
        self._outs = [None] * len(self.activations)
        self._handles = [
            act.register_forward_hook(partial(self._forward_hook, i))
            for i, act in enumerate(self.activations)
        ]
        self.seconds += time.perf_counter() - start

    def _forward_hook(
        self, index: int, module: nn.Module, inputs: Any, output: torch.Tensor
    ) -> None:
        self.observe(index, output)

    def observe(self, index: int, output: torch.Tensor) -> None:
        """Record activation layer ``index``'s output of this step's forward pass (what the
        forward hook does; the stacked engine calls it with a member's slice of the stacked
        forward's outputs, so a snapshot needs no forward of its own)."""
        # reduced after the step, all layers together (layerstats.activation_stat_matrix);
        # autograd forbids in-place changes to it (the next layer saved it for backward)
        out = output.detach()
        self._outs[index] = out.reshape(-1, out.shape[-1]) if self._features_last else out

    def _remove_hooks(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    @override
    def on_after_backward(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """The global gradient norm before the regularizers' gradient transforms (device op)."""
        if not (self._active and self._pre_transform):
            return
        start = time.perf_counter()
        grads = _as_float([p.grad.detach() for p in self.params if p.grad is not None])
        self._pre_norm = (
            torch.linalg.vector_norm(torch.stack([n.to(grads[0].dtype) for n in _norms(grads)]))
            if grads
            else None
        )
        self.seconds += time.perf_counter() - start

    @override
    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: Any
    ) -> None:
        """Gradient norms and a copy of the weights before the update (device ops only)."""
        if not self._active:
            return
        start = time.perf_counter()
        self._remove_hooks()
        grads = [p.grad.detach() for p in self.params if p.grad is not None]
        self._grad_layers, extra = self._grad_layout()
        extra_grads = [cast(torch.Tensor, self.weights[i].grad).detach() for i in extra]
        torch._foreach_copy_(self._before, [w.detach() for w in self.weights])
        norms = _norms(_as_float(grads + extra_grads) + self._before)
        k = len(grads) + len(extra_grads)
        self._pending = {"grad": norms[:k], "before": norms[k:]}
        self._grads = grads
        self._stepped = True
        self.seconds += time.perf_counter() - start

    def _grad_layout(self) -> tuple[list[int | None], list[int]]:
        """Where each weight's gradient norm sits among the norms (None: no gradient, NaN).

        Parameters with a gradient come first in ``self.params`` order, then the gradients of
        weights that are not trainable parameters of the module. Cached while the set of
        parameters with a gradient stays the same (it normally never changes).
        """
        has = tuple(p.grad is not None for p in self.params)
        if self._layout is None or self._layout[0] != has:
            position = {
                id(p): k for k, p in enumerate(p for p in self.params if p.grad is not None)
            }
            layers: list[int | None] = []
            count = sum(has)
            for w in self.weights:
                k = position.get(id(w))
                if k is None and w.grad is not None:
                    k, count = count, count + 1
                layers.append(k)
            self._layout = (has, layers, sum(has))
        _, layers, num_grads = self._layout
        extra = [i for i, k in enumerate(layers) if k is not None and k >= num_grads]
        return layers, extra

    @override
    def end_step(self) -> None:
        """After the optimizer step: weights after the update, one transfer, the rows.

        Every statistic is reduced on the device (norms of gradients, weights, updates and
        distances from init in fused ``_foreach_norm`` calls; the activation statistics of all
        layers in :func:`~techbench.layerstats.activation_stat_matrix`); they go to the host in
        one ``tolist()`` and the ratios and the global norm are formed there. Non-finite
        gradient entries are counted only when the global norm is not finite (a finite sum of
        squares has none), at the cost of a second transfer on that step.
        """
        if not self._active:
            return
        self._active = False
        start = time.perf_counter()
        self._remove_hooks()
        outs, self._outs = self._outs, []
        if not self._stepped:  # no optimizer step happened on this batch
            return
        self._stepped = False
        n = len(self.weights)
        host = _HostValues()
        host.add("grad", self._pending["grad"])  # parameters', then extra weights' gradients
        host.add("before", self._pending["before"])
        if n:
            # one reused buffer per weight (health keeps two copies of the weights, W_0 and
            # this): W_before - W_after, whose norms are taken, then W_after - W_0; the norms
            # are computed before the buffer is overwritten (eager on the CPU, stream order on
            # a GPU)
            ws = _as_float([w.detach() for w in self.weights])
            torch._foreach_sub_(self._before, ws)
            after = _norms([*ws, *self._before])
            host.add("weight", after[:n])
            host.add("update", after[n:])
            for w, w0, out in zip(ws, self.init, self._before, strict=True):
                torch.sub(w, w0, out=out)
            host.add("dist", _norms(self._before))
        seen = [i for i, o in enumerate(outs) if o is not None]
        if seen:
            matrix, order = activation_stat_matrix(
                [o for o in outs if o is not None], self.properties, self._scratch
            )
            host.add("acts", matrix)
        pre, self._pre_norm = self._pre_norm, None
        if self._pre_transform:
            nan = torch.full((1,), math.nan, dtype=torch.float64)
            host.add("pre", nan if pre is None else pre.reshape(1))
        v = host.to_host()
        grads, self._grads, self._pending = self._grads, [], {}
        grad_norms = v["grad"]
        global_norm = math.sqrt(sum(x * x for x in grad_norms[: len(grads)]))
        nonfinite = 0.0 if math.isfinite(global_norm) else _count_nonfinite(grads)
        # the layout the norms were taken with: weight i's gradient norm, or None
        layer_grads = [grad_norms[j] if j is not None else math.nan for j in self._grad_layers]
        ratio = _div(layer_grads[0], layer_grads[-1]) if n else math.nan
        values: dict[str, list[float]] = {
            "grad_norm_global": [global_norm],
            "nonfinite_grads": [nonfinite],
            "grad_ratio_first_last": [ratio],
        }
        if n:
            values["grad_norm"] = layer_grads
            values["weight_norm"] = v["weight"]
            values["update_ratio"] = list(map(_div, v["update"], v["before"]))
            values["dist_from_init"] = v["dist"]
        acts = {m: [math.nan] * len(outs) for m in ACTIVATION_STATS}
        if seen:
            stats, width = v["acts"], len(ACTIVATION_STATS)  # matrix rows, flattened
            for row, j in enumerate(order):
                for col, metric in enumerate(ACTIVATION_STATS):
                    acts[metric][seen[j]] = stats[row * width + col]
        values |= acts
        if self._pre_transform:
            values[PRE_TRANSFORM_METRIC] = v["pre"]
        self._emit(values)
        self.seconds += time.perf_counter() - start

    def _emit(self, values: Mapping[str, Sequence[float]]) -> None:
        """Rows in the order of :meth:`_keys` (globals, per layer, per activation)."""
        step, epoch = self._step, self._epoch
        self.rows.extend(
            metric_row(step, epoch, "health", metric, float(values[metric][i]), layer)
            for metric, layer, i in self._keys()
        )

    def _keys(self) -> list[tuple[str, str, int]]:
        """(metric, layer, index into ``values[metric]`` of :meth:`_emit`) of every row."""
        if self._row_keys is None:
            keys = [(name, "", 0) for name in GLOBAL_METRICS]
            for i in range(len(self.weights)):
                keys += [(metric, str(i), i) for metric in LAYER_METRICS]
            for i in range(len(self.activations)):
                keys += [(m, str(i), i) for m in ACTIVATION_STATS if m in self.act_metrics]
            if self._pre_transform:
                keys.append((PRE_TRANSFORM_METRIC, "", 0))
            self._row_keys = keys
        return self._row_keys


class _HostValues:
    """Named groups of device values moved to the host together, in one ``tolist()`` (one sync).

    Groups of 0-d tensors are stacked in one op; whole tensors (flattened) follow them.
    """

    def __init__(self) -> None:
        self._scalars: list[torch.Tensor] = []
        self._tensors: list[torch.Tensor] = []
        self._scalar_groups: list[tuple[str, int]] = []
        self._tensor_groups: list[tuple[str, int]] = []

    def add(self, name: str, values: Sequence[torch.Tensor] | torch.Tensor) -> None:
        """A group: a list of 0-d tensors, or one tensor (its entries in row-major order)."""
        if isinstance(values, torch.Tensor):
            flat = values.reshape(-1)
            self._tensors.append(flat)
            self._tensor_groups.append((name, flat.numel()))
        else:
            self._scalars += values
            self._scalar_groups.append((name, len(values)))

    def to_host(self) -> dict[str, list[float]]:
        """Every group's values as Python floats, by name."""
        parts = [torch.stack(self._scalars)] if self._scalars else []
        parts += [t.to(parts[0].device) if parts else t for t in self._tensors]
        flat = (parts[0] if len(parts) == 1 else torch.cat(parts)).tolist() if parts else []
        out, at = {}, 0
        for name, size in self._scalar_groups + self._tensor_groups:
            out[name] = flat[at : at + size]
            at += size
        return out


def _div(a: float, b: float) -> float:
    """``a / b`` with IEEE semantics for the non-negative norms (x / 0 is inf, 0 / 0 NaN)."""
    if b == 0:
        return math.inf if a > 0 else math.nan
    return a / b


def _as_float(tensors: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Float32/float64 tensors as they are; lower precisions as float32 (for exact norms)."""
    keep = (torch.float32, torch.float64)
    return [t if t.dtype in keep else t.float() for t in tensors]


def _count_nonfinite(tensors: Sequence[torch.Tensor]) -> float:
    """Number of NaN/inf entries (``x * 0`` is 0 for finite x and NaN otherwise)."""
    if not tensors:
        return 0.0
    flat = torch.cat([t.reshape(-1) for t in tensors])
    return float(torch.count_nonzero(flat.mul(0)))


def _norms(tensors: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """L2 norm of each tensor in one fused call where torch has it."""
    foreach = getattr(torch, "_foreach_norm", None)
    if not tensors:
        return []
    if foreach is not None:
        return list(foreach(tensors))
    return [t.norm() for t in tensors]
