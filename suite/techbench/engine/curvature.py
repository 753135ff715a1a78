"""Curvature probes: the sharpness (largest Hessian eigenvalue of the training loss) of every
member of a stack, plain or preconditioned, and the optimizers' stability thresholds.

Why: sharpness rises during training until it reaches the optimizer's stability threshold and
then hovers there (the edge of stability, Cohen et al. 2021, arXiv 2103.00065; for adaptive
optimizers the preconditioned sharpness, Cohen et al. 2022, arXiv 2207.14484). Comparing the
two tells a user why a learning rate is too high.

How: Lanczos on Hessian-vector products (double backward through the gradient's graph, never
the Hessian itself, :class:`StackedHessian`), one HVP per iteration for the whole stack: parameters are stacked along a leading K
dimension, as the engine's functional model holds them (:mod:`techbench.engine.population`),
and flattened to one ``[K, n]`` vector per member. Lanczos with full re-orthogonalisation
returns the algebraically largest Ritz value (not the largest in magnitude, which power
iteration would find when a negative eigenvalue dominates) and converges in far fewer
iterations than power iteration on the extreme eigenvalue. Cost per iteration: one HVP, about
two backward passes of the probe batch.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import NamedTuple

import torch
from torch.func import vmap

from ..techniques.families import ema_stability

MemberLoss = Callable[..., torch.Tensor]
"""``loss(params, *batch) -> scalar``: one member's loss at its parameters (a name -> tensor
mapping without the K dimension) on the probe batch."""


def gd_threshold(lr: float) -> float:
    """2 / lr: gradient descent on a quadratic diverges along any direction whose curvature
    exceeds it; full-batch GD trains at the edge of stability there (Cohen et al. 2021,
    "Gradient Descent on Neural Networks Typically Occurs at the Edge of Stability",
    arXiv 2103.00065, section 2)."""
    return 2.0 / lr


def adam_threshold(lr: float, beta1: float) -> float:
    """(2 + 2 beta1) / ((1 - beta1) lr): the stability threshold of the preconditioned sharpness
    for an EMA-momentum preconditioned method (Adam, RMSprop with beta1 = 0), 38 / lr at
    beta1 = 0.9 (Cohen et al. 2022, "Adaptive Gradient Methods at the Edge of Stability",
    arXiv 2207.14484, section 3; :func:`techbench.techniques.families.ema_stability`)."""
    return ema_stability(beta1) / lr


def diagonal_preconditioner(
    optimizer: torch.optim.Optimizer, param: torch.Tensor
) -> torch.Tensor | None:
    """The diagonal P with which ``optimizer`` divides ``param``'s gradient (same shape as
    ``param``), or None when it has none (SGD, an optimizer this function does not know, or
    before its first step). An optimizer that declares the hook ``preconditioner(param) ->
    Tensor | None`` (the built-in stacked optimizers,
    :class:`techbench.techniques.families.StackedOptimizer`) answers itself; torch.optim's are
    read from their state, as their update uses it: Adam/AdamW/NAdam
    ``sqrt(exp_avg_sq / (1 - beta2^t)) + eps`` (``max_exp_avg_sq`` with amsgrad), RAdam
    :func:`_radam_diagonal`, RMSprop ``sqrt(square_avg) + eps`` (centred: minus
    ``grad_avg^2``), Adagrad ``sqrt(sum) + eps``. The preconditioned sharpness is the top
    eigenvalue of P^{-1/2} H P^{-1/2} (Cohen et al. 2022, arXiv 2207.14484)."""
    hook = getattr(optimizer, "preconditioner", None)
    if callable(hook):
        declared: torch.Tensor | None = hook(param)
        return declared
    state = optimizer.state.get(param)
    if not state:
        return None
    group = next(g for g in optimizer.param_groups if any(p is param for p in g["params"]))
    eps = float(group.get("eps", 0.0))
    if isinstance(optimizer, torch.optim.Adam | torch.optim.AdamW | torch.optim.NAdam):
        return _adam_diagonal(state, group, eps)
    if isinstance(optimizer, torch.optim.RAdam):
        return _radam_diagonal(state, group, eps)
    if isinstance(optimizer, torch.optim.RMSprop):
        avg = state["square_avg"]
        if group.get("centered"):
            avg = avg - state["grad_avg"] ** 2
        return avg.sqrt() + eps
    if isinstance(optimizer, torch.optim.Adagrad):
        return state["sum"].sqrt() + eps
    return None


def _adam_diagonal(state: Mapping[str, torch.Tensor], group: Mapping, eps: float) -> torch.Tensor:
    step = float(state["step"])
    second = state["max_exp_avg_sq"] if group.get("amsgrad") else state["exp_avg_sq"]
    return (second / (1.0 - group["betas"][1] ** step)).sqrt() + eps


def _radam_diagonal(state: Mapping[str, torch.Tensor], group: Mapping, eps: float) -> torch.Tensor:
    """RAdam (Liu et al. 2020): ``(sqrt(exp_avg_sq) + eps) / (sqrt(1 - beta2^t) r_t)`` once
    ``rho_t > 5``, else 1 (the plain momentum step)."""
    step, b2 = float(state["step"]), group["betas"][1]
    v = state["exp_avg_sq"]
    bc2 = 1.0 - b2**step
    rho_inf = 2.0 / (1.0 - b2) - 1.0
    rho = rho_inf - 2.0 * step * b2**step / bc2
    if rho <= 5.0:
        return torch.ones_like(v)
    rect = ((rho - 4) * (rho - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho)) ** 0.5
    return (v.sqrt() + eps) / (bc2**0.5 * rect)


class Sharpness(NamedTuple):
    """``values`` ``[K]``: each member's largest eigenvalue; ``vectors`` ``[K, n]``: its unit
    eigenvector estimate (the flattened parameters' order), to warm-start the next probe."""

    values: torch.Tensor
    vectors: torch.Tensor


class StackedHessian:
    """The Hessians of every member's ``loss`` at ``params`` (name -> ``[K, ...]``) on
    ``batch`` as one operator on ``[K, n]`` vectors (the flattened parameters' order).

    Why double backward: the stack's objective is the sum of the members' losses, each a
    function of its own parameters only, so its Hessian is block-diagonal with member k's
    Hessian as block k, and one Hessian-vector product of the sum is every member's at once.
    The forward (``vmap`` over members) and the gradient's graph (``create_graph``) are built
    once; each product is then one backward through that graph (Pearlmutter 1994), with none of
    the per-call tracing a ``jvp``-of-``grad`` transform pays (a few milliseconds per call, more
    than the arithmetic on a small network). ``batch``: shared, or ``[K, ...]`` per member
    where ``batch_stacked`` (a sequence says it per tensor)."""

    def __init__(
        self,
        loss: MemberLoss,
        params: Mapping[str, torch.Tensor],
        batch: Sequence[torch.Tensor],
        batch_stacked: bool | Sequence[bool] = False,
    ) -> None:
        self.names = list(params)
        shapes = [params[n].shape[1:] for n in self.names]
        sizes = [s.numel() for s in shapes]
        flat = torch.cat([params[n].detach().flatten(1) for n in self.names], dim=1)
        self.shape, self.dtype, self.device = flat.shape, flat.dtype, flat.device

        def member_loss(w: torch.Tensor, *data: torch.Tensor) -> torch.Tensor:
            parts = zip(self.names, w.split(sizes), shapes, strict=True)
            return loss({n: c.view(s) for n, c, s in parts}, *data)

        flags = [batch_stacked] * len(batch) if isinstance(batch_stacked, bool) else batch_stacked
        dims = tuple(0 if stacked else None for stacked in flags)
        with torch.enable_grad():
            self.w = flat.requires_grad_(True)
            if len(flat) == 1:  # a stack of one: no vmap (its graph is a quarter cheaper)
                one = [t[0] if d == 0 else t for t, d in zip(batch, dims, strict=True)]
                total = member_loss(self.w[0], *one)
            else:
                total = vmap(member_loss, in_dims=(0, *dims))(self.w, *batch).sum()
            (self.g,) = torch.autograd.grad(total, self.w, create_graph=True)

    def __call__(self, v: torch.Tensor) -> torch.Tensor:
        """``[K, n]``: member k's Hessian times ``v[k]``."""
        (hv,) = torch.autograd.grad(self.g, self.w, grad_outputs=v, retain_graph=True)
        return hv

    def top(
        self,
        iterations: int = 20,
        preconditioner: Mapping[str, torch.Tensor] | None = None,
        generator: torch.Generator | None = None,
        start: torch.Tensor | None = None,
        tol: float | None = None,
    ) -> Lanczos:
        """Each member's largest eigenvalue by at most ``iterations`` Lanczos steps
        (:func:`lanczos_top`, which ``tol`` may stop earlier);
        with ``preconditioner`` (name -> ``[K, ...]`` diagonal P, positive) that of
        P^{-1/2} H P^{-1/2}."""
        operator: Callable[[torch.Tensor], torch.Tensor] = self
        if preconditioner is not None:
            diag = torch.cat([preconditioner[n].flatten(1) for n in self.names], dim=1)
            scale = diag.to(self.dtype).rsqrt()

            def operator(v: torch.Tensor) -> torch.Tensor:
                return scale * self(scale * v)

        with torch.no_grad():
            return lanczos_top(
                operator, self.shape, iterations, self.dtype, self.device, generator, start, tol
            )


def stacked_sharpness(
    loss: MemberLoss,
    params: Mapping[str, torch.Tensor],
    batch: Sequence[torch.Tensor],
    *,
    iterations: int = 20,
    preconditioner: Mapping[str, torch.Tensor] | None = None,
    batch_stacked: bool | Sequence[bool] = False,
    generator: torch.Generator | None = None,
    start: torch.Tensor | None = None,
) -> Sharpness:
    """``[K]``: each member's largest eigenvalue of the Hessian of ``loss`` at its parameters
    (``params``: name -> ``[K, ...]``) on ``batch`` (shared by all members, or ``[K, ...]``
    per member when ``batch_stacked``; a sequence says it per tensor of ``batch``), by
    ``iterations`` Lanczos steps (:class:`StackedHessian`). With ``preconditioner``
    (name -> ``[K, ...]`` diagonal P, positive) the largest eigenvalue of P^{-1/2} H P^{-1/2}
    instead. ``start`` (``[K, n]``, e.g. the previous probe's ``vectors``) replaces the random
    first Lanczos vector: during training the top eigenvector moves slowly, so a warm start
    needs far fewer iterations."""
    hessian = StackedHessian(loss, params, batch, batch_stacked)
    values, vectors, _ = hessian.top(iterations, preconditioner, generator, start)
    return Sharpness(values, vectors)


class Lanczos(NamedTuple):
    """:func:`lanczos_top`'s answer: :class:`Sharpness` and ``steps`` ``[K]``, the Lanczos
    steps each member took (fewer than asked when it converged)."""

    values: torch.Tensor
    vectors: torch.Tensor
    steps: torch.Tensor


def lanczos_top(
    operator: Callable[[torch.Tensor], torch.Tensor],
    shape: torch.Size,
    iterations: int,
    dtype: torch.dtype,
    device: torch.device,
    generator: torch.Generator | None = None,
    start: torch.Tensor | None = None,
    tol: float | None = None,
) -> Lanczos:
    """The largest Ritz value and its Ritz vector of each member's symmetric ``operator``
    (``[K, n]`` -> ``[K, n]``) after at most ``iterations`` Lanczos steps with full
    re-orthogonalisation, from ``start`` or a random vector. On breakdown (an invariant
    subspace found) a member restarts from a fresh orthogonal vector, so its tridiagonal
    matrix stays block-diagonal and every Ritz value is a true one.

    ``tol``: a member stops (its value and vector kept, the others go on) once its top Ritz
    pair's residual ||A y - theta y|| = beta_j |s_j| (the next off-diagonal times the Ritz
    vector's last coordinate in the Krylov basis; Parlett, The Symmetric Eigenvalue Problem,
    13.2) is at most ``tol * |theta|``: some eigenvalue then lies within ``tol |theta|`` of
    theta, and the error of the top one is about residual^2 / gap, far smaller. A member's
    answer depends only on its own steps, so it is the same in any stack."""
    k, n = shape
    m = min(iterations, n)
    basis = torch.empty(k, m, n, dtype=dtype, device=device)  # row j written at step j
    alpha = torch.zeros(k, m, dtype=dtype, device=device)
    beta = torch.zeros(k, m, dtype=dtype, device=device)
    out = Lanczos(
        torch.full((k,), float("nan"), dtype=dtype, device=device),
        torch.zeros(k, n, dtype=dtype, device=device),
        torch.full((k,), m, dtype=torch.long, device=device),
    )
    done = torch.zeros(k, dtype=torch.bool, device=device)
    v = _random_unit(k, n, dtype, device, generator)
    if start is not None:
        v = start.to(dtype) / start.norm(dim=-1, keepdim=True).to(dtype)
    for j in range(m):
        basis[:, j] = v
        w = operator(v)
        alpha[:, j] = (w * v).sum(-1)
        w = _orthogonalise(w, basis[:, : j + 1])
        norm = w.norm(dim=-1)
        broke = norm <= 1e-10 * alpha[:, : j + 1].abs().amax(-1).clamp_min(1e-30)
        if j == m - 1 or tol is not None:
            top, ritz = _ritz(alpha[:, : j + 1], beta[:, :j])
            last = j == m - 1
            stop = ~done
            if not last and tol is not None:
                stop &= (norm * ritz[:, -1].abs() <= tol * top.abs()) & ~broke
            if last or bool(stop.any()):
                vectors = torch.einsum("kjn,kj->kn", basis[:, : j + 1], ritz)
                vectors = vectors / vectors.norm(dim=-1, keepdim=True)
                out.values[stop] = top[stop]
                out.vectors[stop] = vectors[stop]
                out.steps[stop] = j + 1
                done |= stop
            if last or bool(done.all()):
                break
        beta[:, j] = torch.where(broke, torch.zeros_like(norm), norm)
        if broke.any():  # rare: a fresh random vector only then (one host read per step)
            fresh = _orthogonalise(_random_unit(k, n, dtype, device, generator), basis[:, : j + 1])
            w = torch.where(broke[:, None], fresh, w)
        v = w / w.norm(dim=-1, keepdim=True)
    return out


def _ritz(alpha: torch.Tensor, beta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The top eigenvalue ``[K]`` and its eigenvector ``[K, j]`` of each member's Lanczos
    tridiagonal matrix (diagonal ``alpha``, off-diagonal ``beta``); NaN for a member whose
    matrix is not finite (a diverged one: eigh never sees it)."""
    tri = torch.diag_embed(alpha) + torch.diag_embed(beta, 1) + torch.diag_embed(beta, -1)
    bad = ~torch.isfinite(tri).all(-1).all(-1)
    values, vectors = torch.linalg.eigh(torch.where(bad[:, None, None], torch.zeros_like(tri), tri))
    top = torch.where(bad, torch.full_like(values[:, -1], float("nan")), values[:, -1])
    return top, vectors[:, :, -1]


def _random_unit(
    k: int, n: int, dtype: torch.dtype, device: torch.device, generator: torch.Generator | None
) -> torch.Tensor:
    v = torch.randn(k, n, dtype=dtype, device=device, generator=generator)
    return v / v.norm(dim=-1, keepdim=True)


def _orthogonalise(w: torch.Tensor, basis: torch.Tensor) -> torch.Tensor:
    """``w`` minus its projection on the rows of ``basis`` (``[K, j, n]``), twice (classical
    Gram-Schmidt loses orthogonality in one pass)."""
    for _ in range(2):
        w = w - torch.einsum("kj,kjn->kn", torch.einsum("kjn,kn->kj", basis, w), basis)
    return w
