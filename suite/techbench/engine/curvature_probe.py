"""The curvature probe in training: every member's sharpness against its optimizer's stability
threshold, every ``every_n_steps`` optimizer steps (``health.curvature``, opt-in).

Why: gradient health says *that* training misbehaves; sharpness says *why* a learning rate is
too high. It rises until it reaches the optimizer's threshold and hovers there (the edge of
stability, Cohen et al. 2021, arXiv 2103.00065; adaptive methods: the preconditioned
sharpness, Cohen et al. 2022, arXiv 2207.14484).

What: at step 0 and every ``every_n_steps`` steps, after the optimizer step (the weights the
health's after-update statistics see), before the schedule steps, each live member records
(split ``"curvature"``, layer ""):

- ``sharpness``: the largest eigenvalue of the Hessian of the task's loss (the data term: a
  regularizer's penalty, replaced loss and the optimizer's weight decay are left out; an L2
  term lambda |w|^2 / 2 would shift every eigenvalue by lambda) on the member's probe batch;
- ``precond_sharpness``: that of P^{-1/2} H P^{-1/2}, when the optimizer exposes a diagonal
  preconditioner P (:func:`techbench.engine.curvature.diagonal_preconditioner`). An optimizer
  whose declared threshold is on it (Adam, RMSprop, Adagrad...) records it *instead of*
  ``sharpness`` once P exists (every probe: its first step makes P): the threshold is on this
  quantity, and computing both doubled the probe's cost past a fifth of a small MLP's training
  (``benchmarks/overhead.py --curvature``); a preconditioned optimizer without a declared
  threshold records both;
- under a parametrization with learning-rate multipliers (muP,
  :func:`techbench.techniques.parametrize.lr_multiplier`) tensor t steps at ``lr * m_t``, so
  both are of the operator the update sees: ``sharpness`` that of M^{1/2} H M^{1/2}
  (M = diag(m): lr M H has its eigenvalues, GD's threshold stays 2/lr) and
  ``precond_sharpness`` that of (P/M)^{-1/2} H (P/M)^{-1/2}; with every m = 1, H and P;
- ``threshold`` (against ``sharpness``) or ``precond_threshold`` (against
  ``precond_sharpness``): ``constant / lr`` from the optimizer's declared
  :class:`techbench.techniques.families.Stability`, ``lr`` the member's rate times the schedule's
  multiplier at this step; none when the optimizer declares none, and none at a rate of 0 (a
  schedule annealed to 0: the threshold is +inf, any curvature is stable).

The probe batch is drawn once per trial: ``batch`` examples of the training split (all of it
when smaller) by ``randperm`` with ``Generator(seed +`` :data:`CURVATURE_SEED_OFFSET` ``)``,
which then draws the first Lanczos start vector, so member i of a stack probes exactly what
trial i probes alone. The network is in training mode (normalizers use the probe batch's
statistics, as the loss the optimizer follows) with its running statistics left untouched and
sampled layers (dropout) off: a random loss has no Hessian to track.

Cost: per probe one forward and one gradient graph of the probe batch for the whole stack
(:class:`techbench.engine.curvature.StackedHessian`), then one Hessian-vector product (a
backward through that graph) per Lanczos step for the whole stack. A member's Lanczos run
stops when its top Ritz pair has converged (:data:`PROBE_TOL`), at most ``iterations`` steps;
the first probe starts from a random vector, every later one from the previous probe's top Ritz
vector, where the top eigenvector moved little, so it converges in a few steps (about
tan(angle to the eigenvector) times a factor falling geometrically per step, Kaniel-Paige-Saad).
The probe batch defaults to 64 examples: on a small MLP the probe's cost is the per-call
overhead of its Hessian-vector products more than their arithmetic, and 64 keeps it under a
fifth of the trial (``benchmarks/overhead.py --curvature``).
``seconds`` (the trial's ``curvature_overhead``) is the stack's time in the probe, including
its host reads (one per Lanczos step, the convergence test).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import nn
from torch.func import functional_call

from ..schema import metric_row
from ..techniques.families import SampledModule, Stability
from ..techniques.parametrize import lr_multiplier
from .curvature import Lanczos, StackedHessian, diagonal_preconditioner

CURVATURE_SEED_OFFSET = 0xC0F5
"""A trial's probe batch and first Lanczos vector come from ``Generator(seed + this)``: a stream
of its own, apart from batch order, noise and dropout."""


PROBE_TOL = 1e-2
"""A member's Lanczos run stops once its top Ritz pair's residual is at most this fraction of
the Ritz value (:func:`techbench.engine.curvature.lanczos_top`); ``iterations`` caps it. The
eigenvalue's error is then about residual^2 / gap: ``tests/test_curvature_probe.py`` checks the
probe's values against the exact Hessian's within 1%."""


class CurvatureRecord:
    """One trial's probe: its options (:func:`techbench.schema.curvature_options`), its
    optimizer's ``stability`` and configured ``lr``, and the rows, seconds and probe count the
    engine records for it (the probe itself runs for the whole stack, :class:`StackedCurvature`)."""

    def __init__(self, options: Mapping[str, int], stability: Stability | None, lr: float) -> None:
        self.every_n_steps = int(options["every_n_steps"])
        self.iterations = int(options["iterations"])
        self.batch = int(options["batch"])
        self.plain = bool(options.get("plain", False))
        self.stability = stability
        self.lr = float(lr)
        self.rows: list[dict[str, Any]] = []
        self.seconds = 0.0
        self.probes = 0


class StackedCurvature:
    """The probe of a whole stack; ``sinks[k]`` is member k's :class:`CurvatureRecord` and
    ``seeds[k]`` its seed. ``module`` is the engine (:class:`techbench.engine.population.StackedModule`)."""

    def __init__(self, sinks: Sequence[CurvatureRecord], seeds: Sequence[int]) -> None:
        self.sinks = list(sinks)
        self.seeds = [int(s) for s in seeds]
        first = self.sinks[0]
        self.every_n_steps, self.iterations, self.batch = (
            first.every_n_steps,
            first.iterations,
            first.batch,
        )
        self.data: tuple[torch.Tensor, ...] = ()
        self.stacked_data = False
        self.start_vectors: torch.Tensor | None = None
        self.start_precond: torch.Tensor | None = None
        self.count = 0
        rules = [sink.stability for sink in self.sinks]
        self.precond_only = not first.plain and all(
            r is not None and r.preconditioned for r in rules
        )
        self.steps = 0  # Lanczos steps taken, all members and probes (benchmarks read it)

    def due(self, step: int) -> bool:
        """Whether optimizer step ``step`` ends with a probe."""
        return step % self.every_n_steps == 0

    def start(self, x: torch.Tensor, y: torch.Tensor, num_params: int, dtype: torch.dtype) -> None:
        """Draw every member's probe batch from the training split ``(x, y)`` and its first
        Lanczos vector (``num_params`` entries)."""
        n, starts, picks = len(x), [], []
        for seed in self.seeds:
            gen = torch.Generator().manual_seed(seed + CURVATURE_SEED_OFFSET)
            picks.append(torch.randperm(n, generator=gen)[: self.batch])
            starts.append(torch.randn(num_params, generator=gen, dtype=torch.float64))
        self.start_vectors = torch.stack(starts).to(device=x.device, dtype=dtype)
        self.start_precond = self.start_vectors
        self.stacked_data = self.batch < n
        if self.stacked_data:
            index = torch.stack(picks).to(x.device)
            self.data = (x[index], y[index])
        else:  # the whole split, the same for every member
            self.data = (x, y)

    def _lanczos(
        self,
        loss: Any,
        params: dict[str, torch.Tensor],
        data: tuple[torch.Tensor, ...],
        stacked: list[bool],
        diag: dict[str, torch.Tensor] | None,
        plain_diag: dict[str, torch.Tensor] | None,
    ) -> tuple[Lanczos | None, Lanczos | None]:
        """The plain (``plain_diag``: 1/m under lr multipliers m) and (with ``diag``) the
        preconditioned Lanczos runs, on one gradient graph
        (:class:`techbench.engine.curvature.StackedHessian`), each stopping at its own
        convergence; the plain one not when :attr:`precond_only` and ``diag`` is given."""
        hessian = StackedHessian(loss, params, data, stacked)
        pre = None
        if diag is not None:
            pre = hessian.top(self.iterations, diag, start=self.start_precond, tol=PROBE_TOL)
            if self.precond_only:
                return None, pre
        plain = hessian.top(self.iterations, plain_diag, start=self.start_vectors, tol=PROBE_TOL)
        return plain, pre

    def probe(self, step: int, epoch: int, module: Any, live: Sequence[bool]) -> None:
        """Every member's sharpness now; the rows of the ``live`` ones."""
        began = time.perf_counter()
        params = {k: v.detach() for k, v in module.stacked_params().items()}
        buffers = module.stacked_buffers()
        loss = probe_loss(module.base, module.loss_fn, list(buffers))
        data = (*buffers.values(), *self.data)
        stacked = [True] * len(buffers) + [self.stacked_data] * len(self.data)
        diag, plain_diag = effective_diagonals(module, params)
        with sampling_off(module.base):
            plain, pre = self._lanczos(loss, params, data, stacked, diag, plain_diag)
        runs = [r for r in (plain, pre) if r is not None]
        if plain is not None:
            self.start_vectors = plain.vectors
        if pre is not None:
            self.start_precond = pre.vectors
        self.count += 1
        self.steps += sum(int(r.steps.sum()) for r in runs)
        rates = schedule_multipliers(module)
        values = torch.stack([r.values for r in runs]).double().tolist()  # one transfer
        sharp = values[0] if plain is not None else None
        precond = values[-1] if pre is not None else None
        spent = time.perf_counter() - began
        for k, sink in enumerate(self.sinks):
            if not live[k]:
                continue
            sink.probes += 1
            sink.seconds += spent
            if sharp is not None:
                sink.rows.append(metric_row(step, epoch, "curvature", "sharpness", sharp[k]))
            if precond is not None:
                sink.rows.append(
                    metric_row(step, epoch, "curvature", "precond_sharpness", precond[k])
                )
            rule, rate = sink.stability, sink.lr * rates[k]
            if rule is not None and rate > 0 and (pre is not None or not rule.preconditioned):
                name = "precond_threshold" if rule.preconditioned else "threshold"
                value = rule.constant / rate
                sink.rows.append(metric_row(step, epoch, "curvature", name, value))


def probe_loss(base: nn.Module, loss_fn: Any, buffer_names: Sequence[str]) -> Any:
    """``loss(params, *buffers, x, y)``: one member's task loss on ``(x, y)`` through ``base``
    (``functional_call``), with copies of its buffers (running statistics a training-mode
    normalizer updates in place stay untouched, and the update happens on a tensor inside the
    transforms, which ``torch.func`` allows)."""

    def loss(params: Mapping[str, torch.Tensor], *data: torch.Tensor) -> torch.Tensor:
        *buffers, x, y = data
        copies = {n: b.clone() for n, b in zip(buffer_names, buffers, strict=True)}
        return loss_fn(functional_call(base, (dict(params), copies), (x,)), y)

    return loss


@contextlib.contextmanager
def sampling_off(model: nn.Module) -> Iterator[None]:
    """Sampled layers (:class:`techbench.techniques.families.SampledModule`, torch's dropout) in
    eval mode for the probe, the rest of ``model`` as it is."""
    layers = [
        m
        for m in model.modules()
        if m.training and isinstance(m, SampledModule | nn.modules.dropout._DropoutNd)
    ]
    for m in layers:
        m.train(False)
    try:
        yield
    finally:
        for m in layers:
            m.train(True)


def stacked_preconditioner(module: Any) -> dict[str, torch.Tensor] | None:
    """Parameter name -> ``[K, ...]``: each member's diagonal preconditioner from its group's
    optimizer, or None when any is missing (an optimizer without one)."""
    optimizers = module.trainer.optimizers
    if module.single:
        opt = optimizers[0]
        out = {}
        for name, p in module.model.named_parameters():
            diag = diagonal_preconditioner(opt, p)
            if diag is None:
                return None
            out[name] = diag.unsqueeze(0)
        return out
    n = len(module.names)
    parts: dict[str, list[torch.Tensor]] = {}
    for g in range(len(module.group_slices)):
        for j, name in enumerate(module.names):
            diag = diagonal_preconditioner(optimizers[g], module.leaves[g * n + j])
            if diag is None:
                return None
            parts.setdefault(name, []).append(diag)
    return {name: torch.cat(chunks) for name, chunks in parts.items()}


def effective_diagonals(
    module: Any, params: Mapping[str, torch.Tensor]
) -> tuple[dict[str, torch.Tensor] | None, dict[str, torch.Tensor] | None]:
    """The preconditioned run's diagonal P / m and the plain run's 1/m (None when every m is
    1), m each parameter's learning-rate multiplier (shared by the stack's members): the
    update moves tensor t by lr m_t P_t^{-1} g_t, so its stability operator is H preconditioned
    by P / m."""
    if module.single:
        tensors = dict(module.model.named_parameters())
    else:
        tensors = {name: module.leaves[j] for j, name in enumerate(module.names)}
    mult = {name: lr_multiplier(t) for name, t in tensors.items()}
    diag = stacked_preconditioner(module)
    if all(m == 1.0 for m in mult.values()):
        return diag, None
    if diag is not None:
        diag = {name: d / mult[name] for name, d in diag.items()}
    plain = {name: torch.full_like(p, 1.0 / mult[name]) for name, p in params.items()}
    return diag, plain


def schedule_multipliers(module: Any) -> list[float]:
    """Member k's schedule multiplier now: its group optimizer's ``lr / initial_lr`` (a stacked
    optimizer's group ``lr`` is the multiplier itself, from 1.0; torch's schedulers record
    ``initial_lr``)."""
    groups = [opt.param_groups[0] for opt in module.trainer.optimizers]
    factors = [float(g["lr"]) / float(g.get("initial_lr", g["lr"]) or 1.0) for g in groups]
    return [factors[module._group_of[k]] for k in range(len(module.members))]


def start_probe(module: Any, probe: StackedCurvature) -> None:
    """At fit start: the probe batches from the module's training split."""
    tensors = module.trainer.datamodule.tensors
    params = module.stacked_params()
    num = sum(v[0].numel() for v in params.values())
    dtype = next(iter(params.values())).dtype
    probe.start(tensors["x_train"], tensors["y_train"], num, dtype)


__all__ = [
    "CURVATURE_SEED_OFFSET",
    "PROBE_TOL",
    "CurvatureRecord",
    "StackedCurvature",
    "start_probe",
]
