"""Regularizers: conformance of the built-ins, behaviour against independent sources (numpy,
torch's own optimizers and losses, the lecture notes' formulas), and broken plugins failing the
checks with a clear message."""

from __future__ import annotations

import itertools
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from techbench.techniques.families import Regularizer
from techbench.techniques.registry import get_spec, list_techniques
from techbench.techniques.spec import Param, TechniqueSpec
from techbench.testing import CheckFailure, checks_for
from techbench.testing.regularizer import drive_callbacks
from techbench_builtins import regularizers_impl as impl

NAMES = [
    "none",
    "l2",
    "weight_decay",
    "l1",
    "dropout",
    "gaussian_noise",
    "augment",
    "label_smoothing",
    "max_norm",
    "early_stopping",
    "clip_norm",
    "clip_value",
    "grad_noise",
]


def reg(name: str, **hp: Any) -> Any:
    return get_spec(name, "regularizer").create(**hp)


def test_all_builtins_registered() -> None:
    names = {s.name for s in list_techniques("regularizer")}
    assert set(NAMES) <= names
    for name in NAMES:
        spec = get_spec(name, "regularizer")
        assert spec.citation and spec.summary and "hooks" in spec.properties


# ------------------------------------------------------------------------------- penalties


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 3), nn.Tanh(), nn.Linear(3, 2)).double()


def _np_weights(model: nn.Module, include_bias: bool) -> list[np.ndarray]:
    return [p.detach().numpy().copy() for p in model.parameters() if include_bias or p.dim() >= 2]


@pytest.mark.parametrize("convention", ["lambda", "half_lambda"])
@pytest.mark.parametrize("include_bias", [False, True])
def test_l2_value_and_gradient_from_seed_003(convention: str, include_bias: bool) -> None:
    lam = 0.3
    model = _model()
    value = reg("l2", lam=lam, convention=convention, include_bias=include_bias).penalty(model)
    coef = lam if convention == "lambda" else lam / 2
    expected = coef * sum(float(np.sum(w**2)) for w in _np_weights(model, include_bias))
    assert float(value.detach()) == pytest.approx(expected, rel=1e-12)
    value.backward()
    for p in model.parameters():
        want = 2 * coef * p.detach().numpy() if include_bias or p.dim() >= 2 else 0.0
        got = p.grad.numpy() if p.grad is not None else np.zeros(p.shape)
        np.testing.assert_allclose(got, np.broadcast_to(want, p.shape), rtol=1e-12, atol=0)


def test_l2_biases_not_penalised_by_default() -> None:
    model = _model()
    r = reg("l2", lam=1.0)
    before = float(r.penalty(model).detach())
    with torch.no_grad():
        model[0].bias.add_(10.0)
    assert float(r.penalty(model).detach()) == before


def _sgd_trajectory(opt_cls: Any, regs: list[Regularizer], steps: int = 30, **opt_kw: Any) -> Any:
    torch.manual_seed(3)
    x = torch.randn(64, 5, dtype=torch.float64) * torch.tensor([0.1, 1, 3, 5, 0.5]).double()
    y = torch.randn(64, 1, dtype=torch.float64)
    model = nn.Linear(5, 1, bias=False).double()
    with torch.no_grad():
        model.weight.copy_(torch.linspace(-1, 1, 5, dtype=torch.float64))
    opt = opt_cls(model.parameters(), **opt_kw)
    for step in range(steps):
        opt.zero_grad()
        loss = F.mse_loss(model(x), y)
        for r in regs:
            pen = r.penalty(model)
            if pen is not None:
                loss = loss + pen
        loss.backward()
        for r in regs:
            r.transform_gradients(model, step)
        opt.step()
        for r in regs:
            r.after_step(model, opt)
    return model.weight.detach().clone()


@pytest.mark.parametrize(("convention", "torch_wd"), [("half_lambda", 0.05), ("lambda", 0.1)])
def test_l2_equals_torch_coupled_weight_decay(convention: str, torch_wd: float) -> None:
    # torch.optim.SGD/Adam(weight_decay=wd) adds wd*w to the gradient: lambda/2*||w||^2 with
    # lambda = wd, or lambda*||w||^2 with lambda = wd/2 (seed 003's 2*lambda*W).
    penal = [reg("l2", lam=0.05, convention=convention)]
    for cls, kw in [(torch.optim.SGD, {"lr": 0.05}), (torch.optim.Adam, {"lr": 0.05})]:
        ours = _sgd_trajectory(cls, penal, **kw)
        theirs = _sgd_trajectory(cls, [], weight_decay=torch_wd, **kw)
        torch.testing.assert_close(ours, theirs, rtol=1e-10, atol=1e-12)


def test_decoupled_vs_l2_sgd_equal_step_for_step_adam_differ() -> None:
    # Loshchilov & Hutter 2019, Alg. 1: with SGD, W - lr*(g + lam*W) == W - lr*g - lr*lam*W
    lam_wd, lr, steps = 0.1, 0.01, 30
    l2 = [reg("l2", lam=lam_wd, convention="half_lambda")]
    l2_seed = [reg("l2", lam=lam_wd / 2, convention="lambda")]
    wd = [reg("weight_decay", lam=lam_wd)]
    sgd_none = _sgd_trajectory(torch.optim.SGD, [], steps, lr=lr)
    for k in (1, 2, 5, steps):
        sgd_l2 = _sgd_trajectory(torch.optim.SGD, l2, k, lr=lr)
        sgd_wd = _sgd_trajectory(torch.optim.SGD, wd, k, lr=lr)
        torch.testing.assert_close(sgd_wd, sgd_l2, rtol=1e-13, atol=1e-15)
    torch.testing.assert_close(
        _sgd_trajectory(torch.optim.SGD, l2_seed, steps, lr=lr), sgd_l2, rtol=1e-13, atol=1e-15
    )
    assert float((sgd_l2 - sgd_none).abs().max()) > 1e-3  # the decay did something
    adam_l2 = _sgd_trajectory(torch.optim.Adam, l2, steps, lr=lr)
    adam_wd = _sgd_trajectory(torch.optim.Adam, wd, steps, lr=lr)
    adam_none = _sgd_trajectory(torch.optim.Adam, [], steps, lr=lr)
    gap_adam = float((adam_wd - adam_l2).abs().max())
    assert gap_adam > 0.5 * float((adam_wd - adam_none).abs().max())


def test_old_post_step_decay_is_not_the_sgd_l2_trajectory() -> None:
    # the defect this replaces, (1 - lr*lam)(W - lr*g): off by lr^2*lam*g per step
    class PostStep(Regularizer):
        def after_step(self, model: nn.Module, optimizer: Any) -> None:
            with torch.no_grad():
                for p in model.parameters():
                    p.mul_(1 - optimizer.param_groups[0]["lr"] * 0.1)

    lr = 0.01
    l2 = _sgd_trajectory(torch.optim.SGD, [reg("l2", lam=0.1, convention="half_lambda")], lr=lr)
    post = _sgd_trajectory(torch.optim.SGD, [PostStep()], lr=lr)
    assert float((post - l2).abs().max()) > 1e-9


def test_weight_decay_with_adam_equals_torch_adamw() -> None:
    # torch's AdamW decays the pre-step weight: W*(1 - lr*lam) - lr*u, the same update
    lam, lr, steps = 0.1, 0.01, 30
    ours = _sgd_trajectory(torch.optim.Adam, [reg("weight_decay", lam=lam)], steps, lr=lr)
    adamw = _sgd_trajectory(torch.optim.AdamW, [], steps, lr=lr, weight_decay=lam)
    adam = _sgd_trajectory(torch.optim.Adam, [], steps, lr=lr)
    torch.testing.assert_close(ours, adamw, rtol=1e-12, atol=1e-14)
    assert float((adamw - adam).abs().max()) > 10 * steps * lr**2 * lam


def test_weight_decay_uses_current_lr_and_pre_step_weights() -> None:
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    opt.param_groups[0]["lr"] = 0.25
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    w0 = model[0].weight.detach().clone()
    b0 = model[0].bias.detach().clone()
    r = reg("weight_decay", lam=0.4)
    r.transform_gradients(model, 0)
    opt.step()
    r.after_step(model, opt)
    torch.testing.assert_close(model[0].weight.detach(), w0 - 0.25 - 0.25 * 0.4 * w0)
    torch.testing.assert_close(model[0].bias.detach(), b0 - 0.25)
    with pytest.raises(RuntimeError, match="without transform_gradients"):
        r.after_step(model, opt)


# ------------------------------------------------------------------------ gradient transforms


def _grad_model(scale: float = 1.0) -> nn.Module:
    model = _model()
    gen = torch.Generator().manual_seed(4)
    for k, p in enumerate(model.parameters()):
        p.grad = scale * (k + 1) * torch.randn(p.shape, generator=gen, dtype=torch.float64)
    return model


@pytest.mark.parametrize("max_norm", [0.01, 1.0, 1e3])
def test_clip_norm_equals_torch_clip_grad_norm(max_norm: float) -> None:
    ours, theirs = _grad_model(), _grad_model()
    reg("clip_norm", max_norm=max_norm).transform_gradients(ours, 0)
    total = torch.nn.utils.clip_grad_norm_(list(theirs.parameters()), max_norm)
    # torch divides by (norm + 1e-6): relative difference 1e-6 / norm
    rel = 2e-6 / float(total)
    for a, b in zip(ours.parameters(), theirs.parameters(), strict=True):
        torch.testing.assert_close(a.grad, b.grad, rtol=rel, atol=0)
    got = torch.cat([p.grad.reshape(-1) for p in ours.parameters()]).norm()
    assert float(got) == pytest.approx(min(max_norm, float(total)), rel=1e-12)


def test_clip_value_equals_torch_clip_grad_value() -> None:
    ours, theirs = _grad_model(), _grad_model()
    reg("clip_value", clip=0.7).transform_gradients(ours, 3)
    torch.nn.utils.clip_grad_value_(list(theirs.parameters()), 0.7)
    for a, b in zip(ours.parameters(), theirs.parameters(), strict=True):
        assert torch.equal(a.grad, b.grad)


def test_grad_noise_variance_anneals_as_in_neelakantan_2015() -> None:
    eta, gamma = 0.3, 0.55
    model = nn.Linear(200, 200).double()
    r = reg("grad_noise", eta=eta, gamma=gamma)
    gen = torch.Generator().manual_seed(0)
    for t in (0, 99, 10_000):
        for p in model.parameters():
            p.grad = torch.zeros_like(p)
        r.transform_gradients(model, t, gen)
        e = torch.cat([p.grad.reshape(-1) for p in model.parameters()])
        n = e.numel()
        var = eta / (1 + t) ** gamma  # the paper's sigma_t^2
        # sample variance of n normals: sd var*sqrt(2/n); 5 sd
        assert float(e.var()) == pytest.approx(var, rel=5 * math.sqrt(2 / n))
        assert abs(float(e.mean())) < 5 * math.sqrt(var / n)


def test_l1_value_and_subgradient() -> None:
    lam = 0.2
    model = _model()
    value = reg("l1", lam=lam).penalty(model)
    expected = lam * sum(float(np.abs(w).sum()) for w in _np_weights(model, False))
    assert float(value.detach()) == pytest.approx(expected, rel=1e-12)
    value.backward()
    w = model[0].weight
    np.testing.assert_allclose(w.grad.numpy(), lam * np.sign(w.detach().numpy()), rtol=1e-12)
    assert model[0].bias.grad is None or torch.all(model[0].bias.grad == 0)


# ----------------------------------------------------------------------------------- dropout


def test_dropout_weight_scaling_rule_seed_004_exact() -> None:
    # seed 004: z = t1*x + t2*y, p = 0.5: E[z] = 1/2 (t1 x + t2 y) over the four masks.
    t1, t2, x, y, p = 0.7, -1.3, 2.0, 0.5, 0.5
    inputs = torch.tensor([x, y], dtype=torch.float64)
    theta = torch.tensor([t1, t2], dtype=torch.float64)
    plain, inverted = [], []
    for mask in itertools.product([0.0, 1.0], repeat=2):
        m = torch.tensor(mask, dtype=torch.float64)
        plain.append(float(theta @ (inputs * m)))
        inverted.append(float(theta @ impl.dropout_reference(inputs, m, p=p)))
    assert np.mean(plain) == pytest.approx(0.5 * (t1 * x + t2 * y), rel=1e-15)
    # non-inverted dropout + weights scaled by (1-p) at test time == inverted dropout + plain eval
    assert np.mean(plain) == pytest.approx(float(((1 - p) * theta) @ inputs), rel=1e-15)
    assert np.mean(inverted) == pytest.approx(float(theta @ inputs), rel=1e-15)


@pytest.mark.parametrize("p", [0.2, 0.5])
def test_dropout_weight_scaling_rule_monte_carlo(p: float) -> None:
    torch.manual_seed(0)
    layer = nn.Linear(50, 3).double()
    x = torch.rand(50, dtype=torch.float64)
    drop = reg("dropout", p=p).make_module().train()
    trials = 20000
    xs = x.repeat(trials, 1)
    inverted = layer(drop(xs)).detach()
    plain = layer(drop(xs) * (1 - p)).detach()  # non-inverted dropout: x * mask
    eval_inverted = layer(x).detach()
    scaled = nn.Linear(50, 3).double()
    with torch.no_grad():
        scaled.weight.copy_(layer.weight * (1 - p))
        scaled.bias.copy_(layer.bias)
    eval_plain = scaled(x).detach()
    se = inverted.std(0) / math.sqrt(trials)
    assert torch.all((inverted.mean(0) - eval_inverted).abs() < 5 * se)
    se_plain = plain.std(0) / math.sqrt(trials)
    assert torch.all((plain.mean(0) - eval_plain).abs() < 5 * se_plain)
    drop.eval()
    assert torch.equal(drop(x), x)


def test_dropout_matches_torch_dropout_law() -> None:
    p = 0.3
    x = torch.rand(200, 300) + 0.5
    ours = reg("dropout", p=p).make_module().train()(x)
    torch.manual_seed(1)
    theirs = nn.Dropout(p).train()(x)
    for y in (ours, theirs):
        kept = y != 0
        torch.testing.assert_close(y[kept], x[kept] / (1 - p))
        assert abs(1 - float(kept.float().mean()) - p) < 5 * math.sqrt(p * (1 - p) / x.numel())
    assert reg("dropout", p=0.0).make_module().train()(x) is x


# -------------------------------------------------------------------------------- transforms


def test_gaussian_noise_statistics_and_generator() -> None:
    x = torch.zeros(500, 200)
    y = torch.arange(500)
    r = reg("gaussian_noise", std=0.3)
    a, ya = r.transform_batch(x, y, torch.Generator().manual_seed(5))
    b, _ = r.transform_batch(x, y, torch.Generator().manual_seed(5))
    assert torch.equal(a, b) and torch.equal(ya, y) and torch.equal(x, torch.zeros(500, 200))
    arr = a.numpy().astype(np.float64).ravel()
    assert abs(arr.mean()) < 5 * 0.3 / math.sqrt(arr.size)
    assert arr.std() == pytest.approx(0.3, rel=5 * math.sqrt(0.5 / arr.size))
    assert reg("gaussian_noise", std=0.0).transform_batch(x, y)[0] is x


def _np_crop_flip(x: np.ndarray, shifts: np.ndarray, flips: np.ndarray, pad: int) -> np.ndarray:
    _, _, h, w = x.shape
    padded = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    out = np.stack(
        [padded[i, :, dy : dy + h, dx : dx + w] for i, (dy, dx) in enumerate(shifts)], axis=0
    )
    out[flips] = out[flips][..., ::-1]
    return out


@pytest.mark.parametrize(("padding", "flip_p"), [(4, 0.5), (2, 1.0), (0, 0.0), (3, 0.0)])
def test_augment_equals_numpy_crop_flip(padding: int, flip_p: float) -> None:
    x = torch.rand(20, 3, 8, 7)
    y = torch.arange(20)
    r = reg("augment", padding=padding, flip_p=flip_p)
    out, yo = r.transform_batch(x, y, torch.Generator().manual_seed(8))
    shifts, flips = r.draw(20, torch.Generator().manual_seed(8))
    expected = _np_crop_flip(x.numpy(), shifts.numpy(), flips.numpy(), padding)
    np.testing.assert_array_equal(out.numpy(), expected)
    assert torch.equal(yo, y)
    if flip_p == 1.0 and padding == 0:
        assert torch.equal(out, torch.flip(x, dims=(3,)))
    if flip_p == 0.0 and padding == 0:
        assert torch.equal(out, x)


def test_augment_leaves_non_images_alone() -> None:
    x = torch.rand(10, 5)
    assert reg("augment").transform_batch(x, torch.arange(10))[0] is x


# -------------------------------------------------------------------------- label smoothing


@pytest.mark.parametrize("eps", [0.0, 0.1, 0.35])
def test_label_smoothing_equals_torch_cross_entropy(eps: float) -> None:
    torch.manual_seed(2)
    z = (4 * torch.randn(32, 10, dtype=torch.float64)).requires_grad_(True)
    t = torch.randint(0, 10, (32,))
    ours = reg("label_smoothing", epsilon=eps).loss(z, t)
    (g_ours,) = torch.autograd.grad(ours, z)
    theirs = F.cross_entropy(z, t, label_smoothing=eps)
    (g_theirs,) = torch.autograd.grad(theirs, z)
    torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(g_ours, g_theirs, rtol=1e-10, atol=1e-12)


# ---------------------------------------------------------------------------------- max-norm


def test_max_norm_projects_rows_like_torch_renorm() -> None:
    c = 1.5
    model = nn.Sequential(nn.Linear(6, 8), nn.Conv2d(2, 4, 3)).double()
    with torch.no_grad():
        model[0].weight.mul_(torch.linspace(0.1, 8, 8, dtype=torch.float64)[:, None])
        model[1].weight.mul_(torch.linspace(0.5, 5, 4, dtype=torch.float64)[:, None, None, None])
    before = [p.detach().clone() for p in model.parameters()]
    reg("max_norm", c=c).after_step(model, torch.optim.SGD(model.parameters(), lr=0.1))
    for p0, p in zip(before, model.parameters(), strict=True):
        if p.dim() < 2:
            assert torch.equal(p0, p.detach())
            continue
        rows0 = p0.reshape(p0.shape[0], -1)
        rows = p.detach().reshape(p.shape[0], -1)
        norms0 = rows0.norm(dim=1)
        assert torch.all(rows.norm(dim=1) <= c * (1 + 1e-12))
        assert torch.equal(rows[norms0 <= c], rows0[norms0 <= c])
        assert (norms0 > c).any() and (norms0 <= c).any()
        torch.testing.assert_close(rows, torch.renorm(rows0, 2, 0, c), rtol=1e-6, atol=1e-7)


# --------------------------------------------------------------------------- early stopping


def test_early_stopping_by_hand_on_stub() -> None:
    # best 0.8 at epoch 2; epochs 3, 4, 5 do not improve (0.8 is not < 0.8): stop at 5.
    history = [1.0, 0.9, 0.8, 0.81, 0.83, 0.8, 0.7, 0.6]
    assert drive_callbacks(reg("early_stopping", patience=3).callbacks(), history) == 5
    # min_delta 0.15: 0.9 does not beat 1.0 by more than 0.15, 0.8 does (epoch 2); 0.7 does not
    # beat 0.8, 0.6 does (epoch 4); 0.58, 0.57, 0.56 do not: stop at epoch 7.
    hist2 = [1.0, 0.9, 0.8, 0.7, 0.6, 0.58, 0.57, 0.56, 0.1]
    cbs = reg("early_stopping", patience=3, min_delta=0.15).callbacks()
    assert drive_callbacks(cbs, hist2) == 7
    assert drive_callbacks(reg("early_stopping", patience=2).callbacks(), [3.0, 2.0, 1.0]) is None


@pytest.mark.slow
def test_early_stopping_in_a_real_trainer() -> None:
    import pytorch_lightning as pl

    history = [1.0, 0.9, 0.8, 0.85, 0.9, 0.95, 1.0, 1.0, 1.0, 1.0]

    class Fake(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.w = nn.Parameter(torch.zeros(1))
            self.epochs_validated = 0

        def training_step(self, batch: Any, idx: int) -> torch.Tensor:
            return (self.w - 1).pow(2).sum()

        def validation_step(self, batch: Any, idx: int) -> None:
            self.log("val_loss", history[self.current_epoch])

        def on_validation_epoch_end(self) -> None:
            self.epochs_validated += 1

        def configure_optimizers(self) -> Any:
            return torch.optim.SGD(self.parameters(), lr=0.1)

    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.zeros(2, 1)))
    module = Fake()
    trainer = pl.Trainer(
        max_epochs=len(history),
        callbacks=list(reg("early_stopping", patience=3).callbacks()),
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_train_batches=1,
        limit_val_batches=1,
        accelerator="cpu",
    )
    trainer.fit(module, data, data)
    # best at epoch 2, three non-improving checks: 3, 4, 5 -> stop after epoch 5
    assert module.epochs_validated == 6


# ------------------------------------------------------------------------- broken plugins


def _spec(name: str, fast: Any, reference: str, hooks: tuple[str, ...], **kw: Any) -> TechniqueSpec:
    return TechniqueSpec(
        name=name,
        family="regularizer",
        summary="a deliberately broken test plugin",
        fast=fast,
        reference=f"techbench_builtins.regularizers_impl:{reference}",
        citation="test",
        properties={"hooks": hooks, **kw.pop("properties", {})},
        **kw,
    )


def _run(spec: TechniqueSpec, check_name: str) -> None:
    (check,) = [c for c in checks_for(spec) if c.name == check_name]
    check(spec)


L2_PARAMS = get_spec("regularizer/l2").params
P_PARAM = (Param(name="p", type=float, default=0.5, low=0.0, high=1.0, high_open=True),)


class L2Off(impl.L2Penalty):
    def penalty(self, model: nn.Module) -> torch.Tensor | None:
        return super().penalty(model) * (1 + 1e-3)


class L2WrongDerivative(impl.L2Penalty):
    def penalty(self, model: nn.Module) -> torch.Tensor | None:
        ps = [p for p in model.parameters() if self.include_bias or p.dim() >= 2]
        return self.coef * sum((p.detach() * p).sum() for p in ps)  # gradient c*W, not 2c*W


class PlainDropout(Regularizer):
    def __init__(self, p: float = 0.5) -> None:
        self.p = p

    def make_module(self) -> nn.Module:
        p = self.p

        class M(nn.Module):
            def forward(self, x: torch.Tensor) -> torch.Tensor:
                return x * (torch.rand_like(x) >= p) if self.training else x

        return M()


class FewDrops(PlainDropout):
    def make_module(self) -> nn.Module:
        p = self.p

        class M(nn.Module):
            def forward(self, x: torch.Tensor) -> torch.Tensor:
                return x * (torch.rand_like(x) >= 0.9 * p) / (1 - p) if self.training else x

        return M()


class ScaleOffDropout(PlainDropout):
    def make_module(self) -> nn.Module:
        p = self.p

        class M(nn.Module):
            def forward(self, x: torch.Tensor) -> torch.Tensor:
                keep = torch.rand_like(x) >= p
                return x * keep / (1 - p) * (1 + 1e-3) if self.training else x

        return M()


class DropsInEval(PlainDropout):
    def make_module(self) -> nn.Module:
        p = self.p

        class M(nn.Module):
            def forward(self, x: torch.Tensor) -> torch.Tensor:
                return x * (torch.rand_like(x) >= p) / (1 - p)

        return M()


class DecayFixedLr(impl.DecoupledWeightDecay):
    @torch.no_grad()
    def after_step(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        for p in model.parameters():
            if p.dim() >= 2 or self.include_bias:
                p.mul_(1 - 0.1 * self.lam)


class PostStepDecay(impl.DecoupledWeightDecay):
    """The old defect: (1 - lr*lam) times the stepped weight."""

    @torch.no_grad()
    def after_step(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        for group in optimizer.param_groups:
            for p in group["params"]:
                if p.dim() >= 2 or self.include_bias:
                    p.mul_(1 - group["lr"] * self.lam)


PLANTED_CLIP = """
    import torch
    from techbench_builtins.regularizers_impl import ClipNorm, GradNoise


    class PerTensorClipNorm(ClipNorm):
        \"\"\"Planted bug: each tensor clipped to max_norm on its own (no global norm).\"\"\"

        @torch.no_grad()
        def transform_gradients(self, model, step, generator=None):
            for p in model.parameters():
                if p.grad is not None:
                    torch.nn.utils.clip_grad_norm_([p], self.max_norm)


    class VarianceAsStdNoise(GradNoise):
        \"\"\"Planted bug: eta/(1+t)^gamma used as the standard deviation.\"\"\"

        @torch.no_grad()
        def transform_gradients(self, model, step, generator=None):
            std = self.eta / (1.0 + step) ** self.gamma
            for p in model.parameters():
                if p.grad is not None:
                    noise = torch.randn(p.grad.shape, generator=generator, dtype=p.grad.dtype)
                    p.grad.add_(std * noise)
"""
_planted: dict[str, Any] = {}
exec(compile(textwrap.dedent(PLANTED_CLIP), "<planted>", "exec"), _planted)
PerTensorClipNorm = _planted["PerTensorClipNorm"]
VarianceAsStdNoise = _planted["VarianceAsStdNoise"]


class UnannealedNoise(impl.GradNoise):
    def transform_gradients(self, model: nn.Module, step: int, generator: Any = None) -> None:
        super().transform_gradients(model, 0, generator)


class GlobalRngNoise(impl.GradNoise):
    def transform_gradients(self, model: nn.Module, step: int, generator: Any = None) -> None:
        super().transform_gradients(model, step, None)


class ClampMaxNorm(impl.MaxNorm):
    @torch.no_grad()
    def after_step(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        for p in model.parameters():
            if p.dim() >= 2:
                p.clamp_(-self.c, self.c)


class GlobalRngAugment(impl.Augment):
    def transform_batch(self, x: Any, y: Any, generator: Any = None) -> Any:
        return super().transform_batch(x, y, None)


class VerticalFlipAugment(impl.Augment):
    def transform_batch(self, x: Any, y: Any, generator: Any = None) -> Any:
        out, y = super().transform_batch(x, y, generator)
        return torch.flip(out, dims=(2,)), y


class LoudNoise(impl.GaussianNoise):
    def transform_batch(self, x: Any, y: Any, generator: Any = None) -> Any:
        return x + 1.1 * self.std * torch.randn(x.shape, generator=generator, dtype=x.dtype), y


class InPlaceNoise(impl.GaussianNoise):
    def transform_batch(self, x: Any, y: Any, generator: Any = None) -> Any:
        return x.add_(self.std * torch.randn(x.shape, generator=generator, dtype=x.dtype)), y


class SmoothOthersOnly(impl.LabelSmoothing):
    def loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor | None:
        k = logits.shape[1]
        q = torch.full_like(logits, self.epsilon / (k - 1))
        q[torch.arange(len(target)), target] = 1 - self.epsilon
        return -(q * torch.log_softmax(logits, 1)).sum(1).mean()


class ImpatientStop(impl.EarlyStop):
    def callbacks(self) -> Any:
        from pytorch_lightning.callbacks import EarlyStopping

        return (EarlyStopping(monitor="val_loss", patience=self.patience + 1, mode="min"),)


class GlobalRngSampledDropout(impl.Dropout):
    """Declares a sampled module but draws its mask from the global RNG, not its generator."""

    def make_module(self) -> nn.Module:
        class M(impl.InvertedDropout):
            def sample(self, shape, dtype, device, generator):  # type: ignore[no-untyped-def]
                return super().sample(shape, dtype, device, None)

        return M(self.p)


class UndeclaredPenalty(impl.Dropout):
    def penalty(self, model: nn.Module) -> torch.Tensor | None:
        return None


NOISE = (Param(name="std", type=float, default=0.1, low=0.0),)
AUG = get_spec("regularizer/augment").params
ES = get_spec("regularizer/early_stopping").params
BROKEN = [
    ("l2_off", L2Off, "l2_reference", ("penalty",), L2_PARAMS, {}, "penalty", "penalty value"),
    (
        "l2_grad",
        L2WrongDerivative,
        "l2_reference",
        ("penalty",),
        L2_PARAMS,
        {},
        "penalty",
        "penalty gradient wrt",
    ),
    (
        "plain_dropout",
        PlainDropout,
        "dropout_reference",
        ("make_module",),
        P_PARAM,
        {},
        "dropout_expectation",
        r"mean of y - x \(E\[y\] = x\)",
    ),
    (
        "plain_dropout",
        PlainDropout,
        "dropout_reference",
        ("make_module",),
        P_PARAM,
        {},
        "dropout_law",
        "training output given its keep mask",
    ),
    (
        "scale_off_dropout",
        ScaleOffDropout,
        "dropout_reference",
        ("make_module",),
        P_PARAM,
        {},
        "dropout_law",
        "training output given its keep mask",
    ),
    (
        "few_drops",
        FewDrops,
        "dropout_reference",
        ("make_module",),
        P_PARAM,
        {},
        "dropout_fraction",
        "dropped fraction",
    ),
    (
        "eval_drops",
        DropsInEval,
        "dropout_reference",
        ("make_module",),
        P_PARAM,
        {},
        "dropout_eval_identity",
        "eval-mode output",
    ),
    (
        "fixed_lr_decay",
        DecayFixedLr,
        "weight_decay_reference",
        ("transform_gradients", "after_step"),
        get_spec("regularizer/weight_decay").params,
        {},
        "after_step",
        r"after the optimizer step and after_step \(lr=0.037\)",
    ),
    (
        "post_step_decay",
        PostStepDecay,
        "weight_decay_reference",
        ("after_step",),
        get_spec("regularizer/weight_decay").params,
        {},
        "after_step",
        r"after the optimizer step and after_step",
    ),
    (
        "per_tensor_clip",
        PerTensorClipNorm,
        "clip_norm_reference",
        ("transform_gradients",),
        get_spec("regularizer/clip_norm").params,
        {"gradient_law": "deterministic"},
        "gradient_law",
        r"gradient of",
    ),
    (
        "variance_as_std",
        VarianceAsStdNoise,
        "grad_noise_reference",
        ("transform_gradients",),
        get_spec("regularizer/grad_noise").params,
        {"gradient_law": "additive_noise"},
        "gradient_noise_law",
        r"variance of the recovered N\(0,1\) draw",
    ),
    (
        "unannealed_noise",
        UnannealedNoise,
        "grad_noise_reference",
        ("transform_gradients",),
        get_spec("regularizer/grad_noise").params,
        {"gradient_law": "additive_noise"},
        "gradient_noise_law",
        r"step 10\) variance of the recovered",
    ),
    (
        "global_rng_noise",
        GlobalRngNoise,
        "grad_noise_reference",
        ("transform_gradients",),
        get_spec("regularizer/grad_noise").params,
        {"gradient_law": "additive_noise"},
        "gradient_transform_generic",
        r"two generators seeded 1234",
    ),
    (
        "clamp_max_norm",
        ClampMaxNorm,
        "max_norm_reference",
        ("after_step",),
        get_spec("regularizer/max_norm").params,
        {},
        "after_step",
        "and after_step",
    ),
    (
        "global_rng_augment",
        GlobalRngAugment,
        "augment_reference",
        ("transform_batch",),
        AUG,
        {"law": "crop_flip"},
        "transform_reproducible",
        "two generators seeded 1234",
    ),
    (
        "vflip_augment",
        VerticalFlipAugment,
        "augment_reference",
        ("transform_batch",),
        AUG,
        {"law": "crop_flip"},
        "crop_flip_law",
        "is no crop",
    ),
    (
        "loud_noise",
        LoudNoise,
        "gaussian_noise_reference",
        ("transform_batch",),
        NOISE,
        {"law": "additive_noise"},
        "noise_law",
        "variance of the recovered",
    ),
    (
        "inplace_noise",
        InPlaceNoise,
        "gaussian_noise_reference",
        ("transform_batch",),
        NOISE,
        {"law": "additive_noise"},
        "transform_inputs_untouched",
        "wrote into its input x",
    ),
    (
        "smooth_others",
        SmoothOthersOnly,
        "label_smoothing_reference",
        ("loss",),
        get_spec("regularizer/label_smoothing").params,
        {},
        "loss",
        "loss value",
    ),
    (
        "impatient",
        ImpatientStop,
        "early_stopping_reference",
        ("callbacks",),
        ES,
        {},
        "callbacks",
        "training stopped at epoch",
    ),
    (
        "global_rng_sampled",
        GlobalRngSampledDropout,
        "dropout_reference",
        ("make_module",),
        P_PARAM,
        {"stacked_module": True},
        "sampled_module",
        "generator seeded alike under another global seed",
    ),
    (
        "unsampled_stacked",
        PlainDropout,
        "dropout_reference",
        ("make_module",),
        P_PARAM,
        {"stacked_module": True},
        "sampled_module",
        "has no generator / sample / forward_with",
    ),
    (
        "undeclared",
        UndeclaredPenalty,
        "dropout_reference",
        ("make_module",),
        P_PARAM,
        {},
        "hooks",
        r"overrides hooks \['make_module', 'penalty'\] but declares",
    ),
]


@pytest.mark.parametrize(
    ("name", "fast", "ref", "hooks", "params", "props", "check", "message"),
    BROKEN,
    ids=[f"{b[0]}-{b[6]}" for b in BROKEN],
)
def test_broken_plugin_fails_clearly(
    name: str,
    fast: Any,
    ref: str,
    hooks: tuple[str, ...],
    params: tuple[Param, ...],
    props: dict[str, Any],
    check: str,
    message: str,
) -> None:
    spec = _spec(name.replace("_", "-"), fast, ref, hooks, params=params, properties=props)
    with pytest.raises(CheckFailure, match=message) as info:
        _run(spec, check)
    assert spec.qualified_name.split("/")[1] in str(info.value)


def test_planted_gradient_bugs_fail_techbench_check(tmp_path: Path) -> None:
    """The acceptance: through the real ``techbench check`` of an installed distribution, a
    per-tensor clip_norm and a grad_noise with its variance used as std each FAIL, naming the
    check (the clip also fails ``stacked_gradients``: it keeps ClipNorm's stacked hook); the
    correct built-ins pass the same checks in the same run."""
    from tests.fakedist import make_dist

    specs = """
        from techbench.techniques.spec import TechniqueSpec
        from techbench_builtins import regularizers as R

        def _planted(name, fast, base, law):
            return TechniqueSpec(
                name=name, family="regularizer", summary="a planted bug", citation="test",
                fast="planted_impl:" + fast, reference=base.reference, params=base.params,
                properties={"hooks": ("transform_gradients",), "gradient_law": law},
            )

        per_tensor_clip = _planted("per_tensor_clip", "PerTensorClipNorm", R.clip_norm, "deterministic")
        variance_as_std = _planted("variance_as_std", "VarianceAsStdNoise", R.grad_noise, "additive_noise")
    """
    make_dist(
        tmp_path,
        "planted-bugs",
        {
            "techbench.regularizers": {
                "per_tensor_clip": "planted_specs:per_tensor_clip",
                "variance_as_std": "planted_specs:variance_as_std",
            }
        },
        {"planted_specs.py": specs, "planted_impl.py": PLANTED_CLIP},
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), *sys.path])}
    names = ["per_tensor_clip", "variance_as_std", "clip_norm", "grad_noise", "clip_value"]
    proc = subprocess.run(
        [sys.executable, "-m", "techbench", "check", *names],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    out = proc.stdout
    assert proc.returncode == 1, out + proc.stderr
    assert "FAILED  regularizer/per_tensor_clip :: gradient_law" in out, out
    assert "FAILED  regularizer/variance_as_std :: gradient_noise_law" in out, out
    assert "variance of the recovered N(0,1) draw" in out
    # it rewrites transform_gradients and inherits ClipNorm's stacked implementation
    assert "FAILED  regularizer/per_tensor_clip :: stacked_gradients" in out, out
    assert "3 failed (5 techniques, 0 broken plugins)" in out, out


def test_correct_subclasses_pass_the_same_checks() -> None:
    spec = _spec("ok-l2", impl.L2Penalty, "l2_reference", ("penalty",), params=L2_PARAMS)
    _run(spec, "penalty")
    spec = _spec("ok-dropout", impl.Dropout, "dropout_reference", ("make_module",), params=P_PARAM)
    for name in ("dropout_law", "dropout_fraction", "dropout_expectation"):
        _run(spec, name)


# --------------------------------------------------------------------------- contract bits


@pytest.mark.parametrize(
    ("name", "hp"),
    [
        ("dropout", {"p": 1.0}),
        ("dropout", {"p": -0.1}),
        ("l2", {"convention": "quarter_lambda"}),
        ("l2", {"lam": -1.0}),
        ("augment", {"flip_p": 1.5}),
        ("max_norm", {"c": 0.0}),
        ("early_stopping", {"patience": 0}),
        ("label_smoothing", {"epsilon": 2.0}),
    ],
)
def test_invalid_hyperparameters_are_rejected(name: str, hp: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match=next(iter(hp))):
        reg(name, **hp)


def test_none_changes_nothing() -> None:
    r = reg("none")
    model = _model()
    x, y = torch.rand(4, 3), torch.arange(4)
    assert r.transform_batch(x, y) == (x, y)
    assert r.make_module() is None and r.penalty(model) is None
    assert r.loss(torch.rand(4, 3), y) is None and tuple(r.callbacks()) == ()
    before = [p.detach().clone() for p in model.parameters()]
    r.after_step(model, torch.optim.SGD(model.parameters(), lr=1.0))
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


# ---------------------------------------------------------------------- property-based


@settings(max_examples=40, deadline=None)
@given(
    rows=st.integers(1, 6),
    cols=st.integers(1, 6),
    c=st.floats(0.05, 5.0),
    seed=st.integers(0, 2**16),
)
def test_max_norm_property_matches_numpy(rows: int, cols: int, c: float, seed: int) -> None:
    w = np.random.default_rng(seed).normal(scale=2.0, size=(rows, cols))
    layer = nn.Linear(cols, rows).double()
    with torch.no_grad():
        layer.weight.copy_(torch.from_numpy(w))
    reg("max_norm", c=c).after_step(layer, torch.optim.SGD(layer.parameters(), lr=0.1))
    norms = np.linalg.norm(w, axis=1, keepdims=True)
    expected = np.where(norms > c, w * (c / norms), w)
    np.testing.assert_allclose(layer.weight.detach().numpy(), expected, rtol=1e-12, atol=0)
    again = layer.weight.detach().clone()
    reg("max_norm", c=c).after_step(layer, torch.optim.SGD(layer.parameters(), lr=0.1))
    torch.testing.assert_close(layer.weight.detach(), again, rtol=1e-12, atol=0)  # idempotent


@settings(max_examples=30, deadline=None)
@given(
    padding=st.integers(0, 5),
    flip_p=st.sampled_from([0.0, 0.3, 1.0]),
    h=st.integers(1, 7),
    w=st.integers(1, 7),
    seed=st.integers(0, 2**16),
)
def test_augment_property_matches_numpy(
    padding: int, flip_p: float, h: int, w: int, seed: int
) -> None:
    x = torch.rand(6, 2, h, w, generator=torch.Generator().manual_seed(seed))
    r = reg("augment", padding=padding, flip_p=flip_p)
    out, _ = r.transform_batch(x, torch.arange(6), torch.Generator().manual_seed(seed))
    shifts, flips = r.draw(6, torch.Generator().manual_seed(seed))
    np.testing.assert_array_equal(
        out.numpy(), _np_crop_flip(x.numpy(), shifts.numpy(), flips.numpy(), padding)
    )


# ------------------------------------------------- the stacked hook, declared (issue 23, item 4)


def test_stacked_transform_gradients_is_declared_with_a_default() -> None:
    """The hook is on the base class; its default means "no stacked implementation" (the
    engine runs each member's own transform_gradients) and is never to be called."""
    from techbench.engine.stacked_hooks import stacked_transform

    assert "stacked_transform_gradients" in vars(Regularizer)
    assert stacked_transform(Regularizer) is None
    assert stacked_transform(impl.GradNoise) is None
    assert stacked_transform(impl.ClipNorm) is impl.ClipNorm.stacked_transform_gradients
    with pytest.raises(NotImplementedError, match="each member's transform_gradients"):
        Regularizer.stacked_transform_gradients([], [], 0)


class HalfClipNorm(impl.ClipNorm):
    """clip_norm to half its bound, rewritten in ``transform_gradients`` only: it inherits
    ClipNorm's stacked implementation, which clips to the whole bound."""

    def transform_gradients(
        self, model: nn.Module, step: int, generator: torch.Generator | None = None
    ) -> None:
        impl.ClipNorm(self.max_norm / 2).transform_gradients(model, step, generator)


def test_a_subclass_rewriting_transform_gradients_must_rewrite_or_reset_the_stacked_hook() -> None:
    """No class-hierarchy scan decides for the engine: an inherited stacked implementation is
    used, and the check ``stacked_gradients`` fails it when it disagrees with the subclass's
    own transform; restoring the declared default makes the members loop, and pass."""
    import dataclasses

    base = get_spec("regularizer/clip_norm")
    spec = _spec(
        "half-clip",
        HalfClipNorm,
        "clip_norm_reference",
        ("transform_gradients",),
        params=base.params,
        properties={"gradient_law": "deterministic"},
    )
    with pytest.raises((CheckFailure, AssertionError), match="stacked vs alone"):
        _run(spec, "stacked_gradients")

    class HalfClipNormLooped(HalfClipNorm):
        stacked_transform_gradients = Regularizer.stacked_transform_gradients

    _run(dataclasses.replace(spec, fast=HalfClipNormLooped), "stacked_gradients")
