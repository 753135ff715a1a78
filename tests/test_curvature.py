"""Curvature probes against independent sources: the exact Hessian
(``torch.autograd.functional.hessian`` + ``eigvalsh``, float64), the papers' threshold formulas
at known values, and the optimizers' update rules written out by hand."""

from __future__ import annotations

from functools import partial

import pytest
import torch
from torch import nn
from torch.func import functional_call, grad, stack_module_state, vmap

from techbench.engine.curvature import (
    adam_threshold,
    diagonal_preconditioner,
    gd_threshold,
    stacked_sharpness,
)

K = 8


def _mlp(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3)).double()


def _stack() -> tuple[nn.Module, dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
    models = [_mlp(100 + s) for s in range(K)]
    params, _ = stack_module_state(models)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(32, 4, generator=g, dtype=torch.float64)
    y = torch.randn(32, 3, generator=g, dtype=torch.float64)
    return models[0], {n: p.detach() for n, p in params.items()}, x, y


def _loss_of(skeleton: nn.Module):
    def loss(p: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return ((functional_call(skeleton, p, (x,)) - y) ** 2).mean()

    return loss


def _exact_hessian(loss, params: dict[str, torch.Tensor], k: int, x, y) -> torch.Tensor:
    names = list(params)
    shapes = [params[n].shape[1:] for n in names]
    sizes = [s.numel() for s in shapes]
    flat = torch.cat([params[n][k].flatten() for n in names])

    def f(w: torch.Tensor) -> torch.Tensor:
        parts = w.split(sizes)
        return loss({n: c.view(s) for n, c, s in zip(names, parts, shapes, strict=True)}, x, y)

    return torch.autograd.functional.hessian(f, flat)


def test_sharpness_matches_exact_hessian_per_member():
    skeleton, params, x, y = _stack()
    loss = _loss_of(skeleton)
    probe = stacked_sharpness(
        loss, params, (x, y), iterations=20, generator=torch.Generator().manual_seed(1)
    ).values
    exact = torch.stack(
        [torch.linalg.eigvalsh(_exact_hessian(loss, params, k, x, y))[-1] for k in range(K)]
    )
    rel = ((probe - exact).abs() / exact.abs()).max().item()
    print(f"max relative error over {K} members: {rel:.2e}")
    assert len(set(exact.tolist())) == K  # the members really differ
    assert rel < 0.01


def test_sharpness_with_per_member_batches():
    skeleton, params, x, y = _stack()
    loss = _loss_of(skeleton)
    xs = torch.stack([x * (1 + 0.1 * k) for k in range(K)])
    probe = stacked_sharpness(loss, params, (xs, y.expand(K, *y.shape)), batch_stacked=True).values
    for k in range(K):
        exact = torch.linalg.eigvalsh(_exact_hessian(loss, params, k, xs[k], y))[-1]
        assert abs(probe[k].item() - exact.item()) < 0.01 * abs(exact.item())


def test_preconditioned_sharpness_matches_exact():
    skeleton, params, x, y = _stack()
    loss = _loss_of(skeleton)
    g = torch.Generator().manual_seed(2)
    diag = {
        n: torch.rand(p.shape, generator=g, dtype=p.dtype) * 10 + 0.01 for n, p in params.items()
    }
    probe = stacked_sharpness(loss, params, (x, y), iterations=20, preconditioner=diag).values
    names = list(params)
    for k in range(K):
        s = torch.cat([diag[n][k].flatten() for n in names]).rsqrt()
        h = _exact_hessian(loss, params, k, x, y)
        exact = torch.linalg.eigvalsh(s[:, None] * h * s[None, :])[-1]
        plain = torch.linalg.eigvalsh(h)[-1]
        assert abs(probe[k].item() - exact.item()) < 0.01 * abs(exact.item())
        assert abs(probe[k].item() - plain.item()) > 0.05 * abs(plain.item())


def test_thresholds_from_the_papers():
    assert gd_threshold(0.01) == pytest.approx(200.0)
    assert adam_threshold(0.01, 0.9) == pytest.approx(38 / 0.01)
    assert adam_threshold(0.1, 0.0) == pytest.approx(2 / 0.1)  # no momentum: 2/lr
    with pytest.raises(ValueError, match="beta1"):
        adam_threshold(0.1, 1.0)


def _run(opt_cls, grads, **kw):
    p = nn.Parameter(torch.zeros(3, dtype=torch.float64))
    opt = opt_cls([p], **kw)
    if opt_cls is not torch.optim.Adagrad:  # Adagrad's state exists from construction
        assert diagonal_preconditioner(opt, p) is None  # before the first step
    for g in grads:
        p.grad = g.clone()
        opt.step()
    return diagonal_preconditioner(opt, p)


GRADS = [torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64) * (t + 1) for t in range(3)]


@pytest.mark.parametrize("cls", [torch.optim.Adam, torch.optim.AdamW])
def test_adam_preconditioner_by_hand(cls):
    b2, eps = 0.99, 1e-3
    v = torch.zeros(3, dtype=torch.float64)
    for g in GRADS:
        v = b2 * v + (1 - b2) * g**2
    expected = (v / (1 - b2 ** len(GRADS))).sqrt() + eps
    got = _run(cls, GRADS, lr=0.1, betas=(0.9, b2), eps=eps)
    torch.testing.assert_close(got, expected)


def test_rmsprop_and_adagrad_preconditioners_by_hand():
    alpha, eps = 0.9, 1e-3
    v = torch.zeros(3, dtype=torch.float64)
    for g in GRADS:
        v = alpha * v + (1 - alpha) * g**2
    torch.testing.assert_close(
        _run(torch.optim.RMSprop, GRADS, lr=0.1, alpha=alpha, eps=eps), v.sqrt() + eps
    )
    total = sum(g**2 for g in GRADS)
    torch.testing.assert_close(
        _run(torch.optim.Adagrad, GRADS, lr=0.1, eps=eps), total.sqrt() + eps
    )


def test_sgd_has_no_preconditioner():
    p = nn.Parameter(torch.zeros(3))
    opt = torch.optim.SGD([p], lr=0.1, momentum=0.9)
    p.grad = torch.ones(3)
    opt.step()
    assert diagonal_preconditioner(opt, p) is None


def _regression_stack(k: int) -> tuple[torch.Tensor, torch.Tensor, list[nn.Module], dict]:
    """A small tanh regression (200 x 10 -> 1, float64) and ``k`` identical MLPs stacked."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(200, 10, generator=g, dtype=torch.float64)
    y = torch.randn(200, 1, generator=g, dtype=torch.float64)
    models: list[nn.Module] = []
    for _ in range(k):
        torch.manual_seed(1)
        layers = [nn.Linear(10, 32), nn.Tanh(), nn.Linear(32, 32), nn.Tanh(), nn.Linear(32, 1)]
        models.append(nn.Sequential(*layers).double())
    stacked, _ = stack_module_state(models)
    return x, y, models, stacked


def test_gradient_descent_reaches_the_edge_of_stability():
    """Full-batch GD on a small tanh regression (Cohen et al. 2021's setting, scaled down), two
    learning rates as two members of one stack: sharpness rises from well below 2/lr to 2/lr
    and hovers there."""
    lrs = torch.tensor([0.1, 0.2], dtype=torch.float64)
    x, y, models, stacked = _regression_stack(len(lrs))
    params = {n: p.detach() for n, p in stacked.items()}

    def loss(p: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return 0.5 * ((functional_call(models[0], p, (x,)) - y) ** 2).mean()

    gradient = vmap(grad(loss), in_dims=(0, None, None))
    ratios = []
    for step in range(1501):
        if step % 100 == 0:
            sharp = stacked_sharpness(loss, params, (x, y), iterations=20).values
            ratios.append(sharp / torch.tensor([gd_threshold(a) for a in lrs.tolist()]))
        grads = gradient(params, x, y)
        params = {n: p - lrs.view(-1, *[1] * (p.dim() - 1)) * grads[n] for n, p in params.items()}
    print("sharpness * lr / 2 at the end:", ratios[-1].tolist())
    assert (ratios[0] < 0.3).all()  # starts well below the threshold
    late = torch.stack(ratios[-5:])  # steps 1100..1500
    assert ((late - 1).abs() < 0.05).all(), late


@pytest.mark.parametrize(
    ("name", "reference", "hp"),
    [
        (
            "adam",
            torch.optim.Adam,
            {"beta1": [0.9, 0.5], "beta2": [0.99, 0.9], "eps": [1e-3, 1e-1]},
        ),
        ("rmsprop", torch.optim.RMSprop, {"alpha": [0.9, 0.5], "eps": [1e-3, 1e-1]}),
        ("adagrad", torch.optim.Adagrad, {"eps": [1e-3, 1e-1]}),
        (
            "nadam",
            torch.optim.NAdam,
            {"beta1": [0.9, 0.5], "beta2": [0.99, 0.9], "eps": [1e-3, 1e-1]},
        ),
    ],
)
def test_stacked_optimizers_declare_their_preconditioner(name, reference, hp):
    """Each member's P from the stacked optimizer's hook equals the one torch.optim holds for
    that member alone (read from its state, checked by hand above)."""
    from techbench_builtins import optimizers_stacked

    factories = {
        "adam": partial(optimizers_stacked.StackedAdam, decoupled=False, bias_correction=True),
        "rmsprop": optimizers_stacked.StackedRMSprop,
        "adagrad": optimizers_stacked.StackedAdagrad,
        "nadam": optimizers_stacked.StackedNAdam,
    }
    base = {"lr": [0.1, 0.2], "weight_decay": [0.0, 0.0], "momentum": [0.0, 0.0]}
    base |= {"lr_decay": [0.0, 0.0], "initial_accumulator_value": [0.0, 0.0]}
    base |= {"momentum_decay": [0.004, 0.004]}
    cls = factories[name]
    names = getattr(cls, "func", cls).MEMBER
    member_hp = {k: v for k, v in (base | hp).items() if k in names}
    stacked = nn.Parameter(torch.zeros(2, 3, dtype=torch.float64))
    opt = cls([stacked], decay="all", eps_placement="outside", **member_hp)
    assert diagonal_preconditioner(opt, stacked) is None
    for g in GRADS:
        stacked.grad = torch.stack([g, 2 * g])
        opt.step()
    got = diagonal_preconditioner(opt, stacked)
    for k in range(2):
        kw = {"lr": member_hp["lr"][k], "eps": member_hp["eps"][k]}
        if name in ("adam", "nadam"):
            kw["betas"] = (hp["beta1"][k], hp["beta2"][k])
        if name == "rmsprop":
            kw["alpha"] = hp["alpha"][k]
        alone = _run(reference, [g * (k + 1) for g in GRADS], **kw)
        torch.testing.assert_close(got[k], alone)


def _stacked(cls, **member):
    from techbench_builtins import optimizers_stacked

    opt_cls = getattr(optimizers_stacked, cls)

    def make(params, **_):
        return opt_cls(params, decay="all", **member)

    return make


@pytest.mark.parametrize(
    "make",
    [
        partial(torch.optim.Adam, lr=0.1, betas=(0.5, 0.9), eps=1e-2),
        partial(torch.optim.RAdam, lr=0.1, betas=(0.5, 0.9), eps=1e-2),
        _stacked(
            "StackedRAdam",
            lr=[0.1, 0.2],
            beta1=[0.5, 0.6],
            beta2=[0.9, 0.8],
            eps=[1e-2] * 2,
            weight_decay=[0.0] * 2,
        ),
        _stacked(
            "StackedAdam",
            lr=[0.1, 0.2],
            beta1=[0.5, 0.6],
            beta2=[0.9, 0.8],
            eps=[1e-2] * 2,
            weight_decay=[0.0] * 2,
            decoupled=False,
            bias_correction=True,
            eps_placement="outside",
        ),
    ],
)
def test_preconditioner_is_what_the_step_divides_by(make):
    """The optimizer's own next step equals -lr * m_hat / P with P read after that step
    (m_hat = exp_avg / (1 - beta1^t)): P is the preconditioner the update really used."""
    p = nn.Parameter(torch.zeros(2, 3, dtype=torch.float64))
    opt = make([p])
    for t in range(12):  # RAdam rectifies from rho_t > 5
        before = p.detach().clone()
        p.grad = torch.stack([GRADS[t % 3], -GRADS[(t + 1) % 3]])
        opt.step()
    state, group = opt.state[p], opt.param_groups[0]
    if "member" in group:
        lr, b1 = (torch.as_tensor(group["member"][n]).view(-1, 1) for n in ("lr", "beta1"))
    else:
        lr, b1 = torch.tensor(group["lr"]), torch.tensor(group["betas"][0])
    m_hat = state["exp_avg"] / (1 - b1 ** float(state["step"]))
    expected = before - lr * m_hat / diagonal_preconditioner(opt, p)
    torch.testing.assert_close(p.detach(), expected)


def test_adam_reaches_the_adaptive_edge_of_stability():
    """Full-batch Adam (beta1 = 0.9) at lr 1e-3 and 2e-3 as one stack: the preconditioned
    sharpness, with P from the optimizer's hook, rises to (2 + 2 beta1) / ((1 - beta1) lr)
    = 38 / lr and hovers there (Cohen et al. 2022, arXiv 2207.14484)."""
    from techbench_builtins.optimizers_stacked import StackedAdam

    lrs = [1e-3, 2e-3]
    x, y, models, stacked = _regression_stack(len(lrs))
    params = {n: nn.Parameter(p.detach()) for n, p in stacked.items()}
    opt = StackedAdam(
        list(params.values()),
        decay="all",
        lr=lrs,
        beta1=[0.9] * 2,
        beta2=[0.999] * 2,
        eps=[1e-8] * 2,
        weight_decay=[0.0] * 2,
        decoupled=False,
        bias_correction=True,
        eps_placement="outside",
    )

    def loss(p: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return 0.5 * ((functional_call(models[0], p, (x,)) - y) ** 2).mean()

    gradient = vmap(grad(loss), in_dims=(0, None, None))
    thresholds = torch.tensor([adam_threshold(a, 0.9) for a in lrs])
    ratios = []
    for step in range(2001):
        grads = gradient({n: p.detach() for n, p in params.items()}, x, y)
        for n, p in params.items():
            p.grad = grads[n]
        opt.step()
        if step % 250 == 0:
            diag = {n: diagonal_preconditioner(opt, p) for n, p in params.items()}
            now = {n: p.detach() for n, p in params.items()}
            sharp = stacked_sharpness(loss, now, (x, y), iterations=20, preconditioner=diag).values
            ratios.append(sharp / thresholds)
    print("preconditioned sharpness / (38 / lr) at the end:", ratios[-1].tolist())
    assert (ratios[0] < 0.3).all()
    late = torch.stack(ratios[-3:])  # steps 1500..2000
    assert ((late - 1).abs() < 0.08).all(), late


def test_eigenvector_and_warm_start():
    """The returned vector is the exact top eigenvector; started from it after a small change
    of the weights (as between two snapshots), 3 iterations give the new top eigenvalue."""
    skeleton, params, x, y = _stack()
    loss = _loss_of(skeleton)
    first = stacked_sharpness(loss, params, (x, y), iterations=20)
    g = torch.Generator().manual_seed(3)
    moved = {
        n: p + 1e-3 * torch.randn(p.shape, generator=g, dtype=p.dtype) for n, p in params.items()
    }
    warm = stacked_sharpness(loss, moved, (x, y), iterations=3, start=first.vectors).values
    for k in range(K):
        vecs = torch.linalg.eigh(_exact_hessian(loss, params, k, x, y)).eigenvectors
        assert abs(float(vecs[:, -1] @ first.vectors[k])) > 0.999
        exact = torch.linalg.eigvalsh(_exact_hessian(loss, moved, k, x, y))[-1]
        assert abs(warm[k].item() - exact.item()) < 0.01 * abs(exact.item())
