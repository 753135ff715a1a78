"""Conformance checks of an optimizer that orthogonalises hidden matrices' updates (Muon).

For optimizers declaring ``properties["orthogonalized"]`` with Muon's hyper-parameter names
(``lr``, ``momentum``, ``nesterov``, ``ns_steps``, ``adjust_lr``, ``weight_decay``), whose untagged
tensors of two or more dimensions take the Muon step (:mod:`techbench_builtins.optimizers_muon`).
Two independent sources:

``torch_muon``
    ``torch.optim.Muon`` (torch >= 2.9) on a two-layer regression network whose weights are a
    tall (8x5) and a wide (3x8) matrix, for ``TORCH_STEPS`` steps under each of :data:`TORCH_VARIANTS`
    (Nesterov or not, both shape scales, other momentum, steps and decay). Both are fed the
    gradient at torch's parameters, and before each step the optimizer's parameters are set to
    torch's, so each step is compared from the same point with the same gradients (each side
    keeps its own momentum buffer): the parameter change of every matrix must agree within
    :data:`BF16_RTOL` in relative Frobenius norm. Why not tighter: torch runs Newton-Schulz in
    bfloat16 (8-bit mantissa), which moves the update by up to 4.5% (median 1.5%) here; wrong
    quintic coefficients (a = 3.0) move it by 28%, a wrong shape scale on the tall matrix by 26%.
``polar_factor``
    the SVD: the first step from zero momentum on a gradient ``G = U diag(s) V^T`` with chosen
    singular values (tall and wide) and ``weight_decay = 0``: the direction ``D = -step / (lr
    * scale)`` must keep G's singular vectors (``U^T D V`` diagonal within 1e-6 of its largest
    entry) and map each singular value into :data:`POLAR_BAND`: G's Frobenius-normalised singular
    values lie in [6.8e-3, 0.96], inside [3e-3, 1], which five steps of Jordan's quintic map into
    [0.68, 1.21]
    (Jordan et al. 2024: "S' ~ Uniform(0.5, 1.5)"-like, not U V^T itself), so
    ``||D - U V^T||_2 <= 0.32``. The first step's direction is NS(G) whatever the momentum,
    since NS is scale invariant and B_1 is a multiple of G.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

from ..techniques.spec import TechniqueSpec
from .core import Check, CheckFailure

TORCH_STEPS = 8
BF16_RTOL = 0.08
TORCH_VARIANTS: tuple[dict[str, Any], ...] = (
    {},
    {"nesterov": False},
    {"adjust_lr": "match_rms_adamw"},
    {"momentum": 0.8, "ns_steps": 3, "weight_decay": 0.1, "lr": 0.05},
)
POLAR_BAND = (0.68, 1.21)
POLAR_SHAPES = ((8, 5), (5, 8))


def _scale(hp: Mapping[str, Any], rows: int, cols: int) -> float:
    """torch.optim.Muon's ``adjust_lr_fn`` factor (the spec's ``adjust_lr``)."""
    if hp["adjust_lr"] == "original":
        return max(1.0, rows / cols) ** 0.5
    return 0.2 * math.sqrt(max(rows, cols))


def _network(seed: int = 0) -> tuple[list[Any], Callable[[list[Any]], Any]]:
    """A tall 8x5 and a wide 3x8 weight of a tanh network regressing 32 fixed samples (float64).

    Squared error, not softmax cross-entropy: the latter's readout gradient has rank at most
    classes - 1, and bfloat16 rounding in the null direction is then amplified by the quintic
    (slope 3.4 at 0, five times) into an O(1) component: torch's own step is noise there."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(32, 5, generator=gen, dtype=torch.float64)
    y = torch.randn(32, 3, generator=gen, dtype=torch.float64)
    w1 = torch.randn(8, 5, generator=gen, dtype=torch.float64) / 5**0.5
    w2 = torch.randn(3, 8, generator=gen, dtype=torch.float64) / 8**0.5

    def loss(params: list[Any]) -> Any:
        a, b = params
        return ((torch.tanh(x @ a.T) @ b.T - y) ** 2).mean()

    return [w1, w2], loss


def _torch_muon(params: list[Any], hp: Mapping[str, Any]) -> Any:
    import torch

    return torch.optim.Muon(
        params,
        lr=hp["lr"],
        weight_decay=hp["weight_decay"],
        momentum=hp["momentum"],
        nesterov=hp["nesterov"],
        ns_steps=hp["ns_steps"],
        adjust_lr_fn=hp["adjust_lr"],
    )


def check_torch_muon(spec: TechniqueSpec) -> None:
    import torch

    if not hasattr(torch.optim, "Muon"):
        raise CheckFailure("torch_muon needs torch.optim.Muon (torch >= 2.9)")
    for variant in TORCH_VARIANTS:
        hp = spec.hyperparams(variant)
        initial, loss = _network()
        theirs = [p.clone().requires_grad_(True) for p in initial]
        ours = [p.clone().requires_grad_(True) for p in initial]
        reference, optimizer = _torch_muon(theirs, hp), spec.create(ours, **hp)
        for t in range(1, TORCH_STEPS + 1):
            grads = torch.autograd.grad(loss(theirs), theirs)
            with torch.no_grad():
                for a, b in zip(ours, theirs, strict=True):
                    a.copy_(b)
            before = [p.detach().clone() for p in theirs]
            for a, b, g in zip(ours, theirs, grads, strict=True):
                a.grad, b.grad = g.clone(), g.clone()
            reference.step()
            optimizer.step()
            for i, (a, b, p0) in enumerate(zip(ours, theirs, before, strict=True)):
                want, got = b.detach() - p0, a.detach() - p0
                gap = float((got - want).norm() / want.norm())
                if not gap <= BF16_RTOL:
                    raise CheckFailure(
                        f"{spec.qualified_name}({variant}): step {t}, matrix {i} "
                        f"{tuple(p0.shape)}: the parameter change differs from torch.optim.Muon's "
                        f"by {gap:.3g} (relative Frobenius; bfloat16 allows {BF16_RTOL})"
                    )


def _gradient(rows: int, cols: int) -> tuple[Any, Any, Any]:
    """``(G, U, V)``: ``G = U diag(s) V^T``, Frobenius-normalised ``s`` log-spaced in the band."""
    import torch

    gen = torch.Generator().manual_seed(rows * 100 + cols)
    n = min(rows, cols)
    u, _ = torch.linalg.qr(torch.randn(rows, n, generator=gen, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(cols, n, generator=gen, dtype=torch.float64))
    s = torch.logspace(math.log10(5e-3), math.log10(0.7), n, dtype=torch.float64)
    return u @ torch.diag(s / s.norm()) @ v.T, u, v


def check_polar_factor(spec: TechniqueSpec) -> None:
    import torch

    hp = spec.hyperparams(weight_decay=0.0)
    lo, hi = POLAR_BAND
    for rows, cols in POLAR_SHAPES:
        g, u, v = _gradient(rows, cols)
        p = torch.zeros(rows, cols, dtype=torch.float64, requires_grad=True)
        optimizer = spec.create([p], **hp)
        p.grad = g.clone()
        optimizer.step()
        d = -p.detach() / (hp["lr"] * _scale(hp, rows, cols))
        core = u.T @ d @ v
        mapped = torch.diagonal(core)
        off = float((core - torch.diag(mapped)).abs().max())
        if off > 1e-6 * float(mapped.abs().max()):
            raise CheckFailure(
                f"{spec.qualified_name}: a {rows}x{cols} gradient's first Muon step does not keep "
                f"its singular vectors: U^T D V has off-diagonal entries up to {off:.3g}"
            )
        if not (float(mapped.min()) >= lo and float(mapped.max()) <= hi):
            raise CheckFailure(
                f"{spec.qualified_name}: a {rows}x{cols} gradient's first Muon step maps its "
                f"singular values (normalised 6.8e-3..0.96) to {float(mapped.min()):.3g}.."
                f"{float(mapped.max()):.3g}, outside [{lo}, {hi}] where Newton-Schulz with "
                "Jordan's coefficients lands them (polar factor U V^T: 1)"
            )


def checks(spec: TechniqueSpec) -> list[Check]:
    """The checks of an ``orthogonalized`` optimizer (see the module docstring)."""
    return [Check("torch_muon", check_torch_muon), Check("polar_factor", check_polar_factor)]
