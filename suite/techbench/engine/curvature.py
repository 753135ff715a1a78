"""Curvature probes: the sharpness (largest Hessian eigenvalue of the training loss) of every
member of a stack, plain or preconditioned, and the optimizers' stability thresholds.

Why: sharpness rises during training until it reaches the optimizer's stability threshold and
then hovers there (the edge of stability, Cohen et al. 2021, arXiv 2103.00065; for adaptive
optimizers the preconditioned sharpness, Cohen et al. 2022, arXiv 2207.14484). Comparing the
two tells a user why a learning rate is too high.

How: Lanczos on Hessian-vector products (``jvp`` of ``grad``, never the Hessian itself), one
``vmap``-ed HVP per iteration for the whole stack: parameters are stacked along a leading K
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
from torch.func import grad, jvp, vmap

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
    arXiv 2207.14484, section 3)."""
    if not 0.0 <= beta1 < 1.0:
        raise ValueError(f"beta1 must be in [0, 1), got {beta1}")
    return (2.0 + 2.0 * beta1) / ((1.0 - beta1) * lr)


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


def stacked_sharpness(
    loss: MemberLoss,
    params: Mapping[str, torch.Tensor],
    batch: Sequence[torch.Tensor],
    *,
    iterations: int = 20,
    preconditioner: Mapping[str, torch.Tensor] | None = None,
    batch_stacked: bool = False,
    generator: torch.Generator | None = None,
    start: torch.Tensor | None = None,
) -> Sharpness:
    """``[K]``: each member's largest eigenvalue of the Hessian of ``loss`` at its parameters
    (``params``: name -> ``[K, ...]``) on ``batch`` (shared by all members, or ``[K, ...]``
    per member when ``batch_stacked``), by ``iterations`` Lanczos steps. With
    ``preconditioner`` (name -> ``[K, ...]`` diagonal P, positive) the largest eigenvalue of
    P^{-1/2} H P^{-1/2} instead. ``start`` (``[K, n]``, e.g. the previous probe's
    ``vectors``) replaces the random first Lanczos vector: during training the top eigenvector
    moves slowly, so a warm start needs far fewer iterations."""
    names = list(params)
    shapes = [params[n].shape[1:] for n in names]
    sizes = [s.numel() for s in shapes]
    flat = torch.cat([params[n].detach().flatten(1) for n in names], dim=1)

    def unflatten(v: torch.Tensor) -> dict[str, torch.Tensor]:
        return {n: c.view(s) for n, c, s in zip(names, v.split(sizes), shapes, strict=True)}

    def member_loss(w: torch.Tensor, *data: torch.Tensor) -> torch.Tensor:
        return loss(unflatten(w), *data)

    def hvp(w: torch.Tensor, v: torch.Tensor, *data: torch.Tensor) -> torch.Tensor:
        return jvp(lambda u: grad(member_loss)(u, *data), (w,), (v,))[1]

    data_dims = (0 if batch_stacked else None,) * len(batch)
    stacked_hvp = vmap(hvp, in_dims=(0, 0, *data_dims))
    scale = None
    if preconditioner is not None:
        diag = torch.cat([preconditioner[n].flatten(1) for n in names], dim=1)
        scale = diag.to(flat.dtype).rsqrt()

    def operator(v: torch.Tensor) -> torch.Tensor:
        if scale is None:
            return stacked_hvp(flat, v, *batch)
        return scale * stacked_hvp(flat, scale * v, *batch)

    with torch.no_grad():
        return lanczos_top(
            operator, flat.shape, iterations, flat.dtype, flat.device, generator, start
        )


def lanczos_top(
    operator: Callable[[torch.Tensor], torch.Tensor],
    shape: torch.Size,
    iterations: int,
    dtype: torch.dtype,
    device: torch.device,
    generator: torch.Generator | None = None,
    start: torch.Tensor | None = None,
) -> Sharpness:
    """The largest Ritz value and its Ritz vector of each member's symmetric ``operator``
    (``[K, n]`` -> ``[K, n]``) after ``iterations`` Lanczos steps with full
    re-orthogonalisation, from ``start`` or a random vector. On breakdown
    (an invariant subspace found) a member restarts from a fresh orthogonal vector, so its
    tridiagonal matrix stays block-diagonal and every Ritz value is a true one."""
    k, n = shape
    m = min(iterations, n)
    basis = torch.zeros(k, m, n, dtype=dtype, device=device)
    alpha = torch.zeros(k, m, dtype=dtype, device=device)
    beta = torch.zeros(k, max(m - 1, 0), dtype=dtype, device=device)
    v = _random_unit(k, n, dtype, device, generator)
    if start is not None:
        v = start.to(dtype) / start.norm(dim=-1, keepdim=True).to(dtype)
    for j in range(m):
        basis[:, j] = v
        w = operator(v)
        alpha[:, j] = (w * v).sum(-1)
        w = _orthogonalise(w, basis[:, : j + 1])
        if j == m - 1:
            break
        norm = w.norm(dim=-1)
        broke = norm <= 1e-10 * alpha[:, : j + 1].abs().amax(-1).clamp_min(1e-30)
        fresh = _orthogonalise(_random_unit(k, n, dtype, device, generator), basis[:, : j + 1])
        beta[:, j] = torch.where(broke, torch.zeros_like(norm), norm)
        w = torch.where(broke[:, None], fresh, w)
        v = w / w.norm(dim=-1, keepdim=True)
    tri = torch.diag_embed(alpha) + torch.diag_embed(beta, 1) + torch.diag_embed(beta, -1)
    values, ritz = torch.linalg.eigh(tri)
    vectors = torch.einsum("kjn,kj->kn", basis, ritz[:, :, -1])
    return Sharpness(values[:, -1], vectors / vectors.norm(dim=-1, keepdim=True))


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
