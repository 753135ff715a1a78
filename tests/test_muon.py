"""Muon (issue 24, item 3): the conformance checks, planted wrong Newton-Schulz coefficients
failing them, the reference against ``torch.optim.Muon``, Newton-Schulz against the SVD's polar
factor, routing by role, stacking, and a trial whose roles can't be told failing.

The spec is imported from its module (and given to the engine through a registry that adds it)
so that these tests do not depend on the installed entry points."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch

import techbench_builtins.optimizers_impl as impl
import techbench_builtins.optimizers_muon as fast
from techbench.engine.trial import run_stack, run_trial
from techbench.plan.stacking import unstackable_reason
from techbench.schema import complete_config
from techbench.techniques.families import STACKED_DIMS
from techbench.techniques.registry import default_registry
from techbench.techniques.roles import ROLE_ATTR
from techbench.techniques.spec import TechniqueSpec
from techbench.testing import optimizer as opt_checks
from techbench.testing import optimizer_muon
from techbench.testing.core import CheckFailure
from techbench.testing.reference_loop import reference_run
from techbench_builtins.optimizers import muon as MUON

pytestmark = pytest.mark.usefixtures("one_thread")

PLANTED = (3.0, -4.7750, 2.0315)


class _Registry:
    """The installed plugins plus ``muon`` and the model ``odd`` (a matrix outside its
    ``weight_layers``, so its roles can't be told)."""

    odd = TechniqueSpec(
        name="odd", family="model", summary="s", citation="c", fast=f"{__name__}:_odd_factory"
    )

    def get_spec(self, name: str, family: str | None = None) -> TechniqueSpec:
        if name == "muon" and family in (None, "optimizer"):
            return MUON
        if name == "odd" and family in (None, "model"):
            return self.odd
        return default_registry().get_spec(name, family)


class _Odd(torch.nn.Module):
    def __init__(self, inputs: int, outputs: int) -> None:
        super().__init__()
        self.a = torch.nn.Linear(inputs, 8)
        self.b = torch.nn.Linear(8, outputs)
        self.table = torch.nn.Parameter(torch.zeros(3, 4))
        self.weight_layers = [self.a, self.b]
        self.activation_layers: list[torch.nn.Module] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(torch.relu(self.a(x))) + self.table.sum()


def _odd_factory(input_shape: tuple[int, ...], num_outputs: int, parts: Any) -> torch.nn.Module:
    return _Odd(input_shape[0], num_outputs)


@pytest.mark.parametrize("check", opt_checks.checks(MUON), ids=lambda c: c.name)
def test_muon_passes_its_conformance_checks(check: Any) -> None:
    check(MUON)


def test_the_checks_include_the_torch_and_polar_checks_and_stacked() -> None:
    names = {c.name for c in opt_checks.checks(MUON)}
    assert {"torch_muon", "polar_factor", "stacked", "stacked_hyperparams"} <= names


def test_planted_wrong_coefficients_fail_reference_torch_and_polar_checks(monkeypatch) -> None:
    monkeypatch.setattr(fast, "NS_COEFFICIENTS", PLANTED)
    for check in (
        opt_checks.check_steps_match_reference,
        optimizer_muon.check_torch_muon,
        optimizer_muon.check_polar_factor,
    ):
        with pytest.raises(CheckFailure):
            check(MUON)


def test_torch_check_catches_wrong_coefficients_planted_in_the_reference_too(monkeypatch) -> None:
    # fast and reference agree on the wrong quintic: only the independent sources see it
    monkeypatch.setattr(fast, "NS_COEFFICIENTS", PLANTED)
    monkeypatch.setattr(impl, "_QUINTIC", PLANTED)
    opt_checks.check_steps_match_reference(MUON)
    with pytest.raises(CheckFailure, match=r"torch\.optim\.Muon"):
        optimizer_muon.check_torch_muon(MUON)


@pytest.mark.parametrize("variant", optimizer_muon.TORCH_VARIANTS, ids=str)
def test_reference_matches_torch_muon_step_by_step(variant: dict[str, Any]) -> None:
    """The float64 reference, fed torch's gradients from torch's parameters each step, moves
    each matrix as ``torch.optim.Muon`` does (bfloat16 Newton-Schulz: within 8%)."""
    hp = MUON.hyperparams(variant)
    initial, loss = optimizer_muon._network()
    theirs = [p.clone().requires_grad_(True) for p in initial]
    reference = optimizer_muon._torch_muon(theirs, hp)
    rule = MUON.load_reference()
    states = [rule.init_state(p.clone(), **hp) for p in initial]
    for t in range(1, 9):
        grads = torch.autograd.grad(loss(theirs), theirs)
        before = [p.detach().clone() for p in theirs]
        for p, g in zip(theirs, grads, strict=True):
            p.grad = g.clone()
        reference.step()
        for p, p0, g, state in zip(theirs, before, grads, states, strict=True):
            ours = rule.step(p0.clone(), g.clone(), state, t, **hp) - p0
            want = p.detach() - p0
            assert float((ours - want).norm() / want.norm()) < optimizer_muon.BF16_RTOL


def _with_spectrum(rows: int, cols: int, values: torch.Tensor, seed: int) -> tuple:
    gen = torch.Generator().manual_seed(seed)
    n = min(rows, cols)
    u, _ = torch.linalg.qr(torch.randn(rows, n, generator=gen, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(cols, n, generator=gen, dtype=torch.float64))
    return u @ torch.diag(values) @ v.T, u, v


@pytest.mark.parametrize("shape", [(4, 4), (16, 6), (6, 16), (32, 32)])
def test_newton_schulz_lands_in_the_quintic_band_around_the_polar_factor(shape) -> None:
    """Against the SVD: NS(G) = U f(S) V^T with f(S) in [0.68, 1.21] when G's normalised
    singular values are in [3e-3, 1] (Jordan et al. 2024), so ||NS(G) - U V^T||_2 <= 0.32."""
    rows, cols = shape
    n = min(rows, cols)
    for seed in range(3):
        gen = torch.Generator().manual_seed(seed)
        s = torch.exp(
            torch.empty(n, dtype=torch.float64).uniform_(math.log(3e-3), 0.0, generator=gen)
        )
        s[0] = 1.0  # the largest normalised singular value is at most 1
        s = (s / s.norm()).clamp(min=4e-3)  # NS divides by the Frobenius norm: keep the band
        g, u, v = _with_spectrum(rows, cols, 7.0 * s, seed)
        out = fast.newton_schulz(g[None], 5)[0]
        assert float(torch.linalg.matrix_norm(out - u @ v.T, ord=2)) <= 0.32
        mapped = torch.linalg.svdvals(out)
        assert float(mapped.min()) >= 0.68 and float(mapped.max()) <= 1.21


def test_newton_schulz_normalises_each_member_apart() -> None:
    gen = torch.Generator().manual_seed(0)
    g = torch.randn(3, 5, 7, generator=gen, dtype=torch.float64)
    g = g * torch.tensor([1e-4, 1.0, 1e4], dtype=torch.float64).view(3, 1, 1)
    together = fast.newton_schulz(g, 5)
    for k in range(3):
        torch.testing.assert_close(together[k], fast.newton_schulz(g[k : k + 1], 5)[0])


def _one_step(p: torch.Tensor, g: torch.Tensor, **hp: Any) -> torch.Tensor:
    p = p.clone().requires_grad_(True)
    if hasattr(g, ROLE_ATTR):
        setattr(p, ROLE_ATTR, getattr(g, ROLE_ATTR))
    optimizer = MUON.create([p], **hp)
    p.grad = g.clone()
    optimizer.step()
    return p.detach()


@pytest.mark.parametrize("role", ["input", "readout", "bias", "norm"])
def test_every_role_but_hidden_takes_torch_adamw_steps(role: str) -> None:
    hp = MUON.hyperparams(weight_decay=0.1, decay="all")
    gen = torch.Generator().manual_seed(1)
    shape = (5, 3) if role in ("input", "readout") else (5,)
    p0 = torch.randn(shape, generator=gen, dtype=torch.float64)
    mine = p0.clone().requires_grad_(True)
    setattr(mine, ROLE_ATTR, role)
    theirs = p0.clone().requires_grad_(True)
    ours = MUON.create([mine], **hp)
    betas = (hp["beta1"], hp["beta2"])
    adamw = torch.optim.AdamW(
        [theirs], lr=hp["adam_lr"], betas=betas, eps=hp["eps"], weight_decay=0.1
    )
    for _ in range(4):
        g = torch.randn(shape, generator=gen, dtype=torch.float64)
        mine.grad, theirs.grad = g.clone(), g.clone()
        ours.step()
        adamw.step()
    torch.testing.assert_close(mine.detach(), theirs.detach(), rtol=1e-12, atol=1e-15)


def test_a_hidden_conv_kernel_steps_as_its_matrix_out_by_in_kh_kw() -> None:
    """Jordan's convention: a kernel [out, in, kh, kw] is orthogonalised as [out, in*kh*kw];
    torch.optim.Muon on that matrix (bfloat16) is the independent source."""
    gen = torch.Generator().manual_seed(2)
    g = torch.randn(6, 2, 3, 3, generator=gen, dtype=torch.float64)
    setattr(g, ROLE_ATTR, "hidden")
    hp = MUON.hyperparams(weight_decay=0.0, adjust_lr="match_rms_adamw")
    step = _one_step(torch.zeros_like(g), g, **hp)
    flat = torch.zeros(6, 18, dtype=torch.float64, requires_grad=True)
    torch_muon = optimizer_muon._torch_muon([flat], hp)
    flat.grad = g.reshape(6, 18).clone()
    torch_muon.step()
    want = flat.detach().reshape(g.shape)
    assert float((step - want).norm() / want.norm()) < optimizer_muon.BF16_RTOL
    setattr(g, ROLE_ATTR, "input")  # an input kernel takes the AdamW step instead
    adam_step = _one_step(torch.zeros_like(g), g, **hp)
    torch.testing.assert_close(adam_step, -hp["adam_lr"] * g / (g.abs() + hp["eps"]))


def test_the_stacked_leaf_keeps_its_role_and_its_members_apart() -> None:
    """A stacked readout [K, m, n] (tagged as the engine tags leaves) takes AdamW; a stacked
    hidden matrix takes Muon per member, as each member alone."""
    hp = MUON.hyperparams()
    gen = torch.Generator().manual_seed(3)
    g = torch.randn(2, 4, 6, generator=gen, dtype=torch.float64)
    for role in ("readout", "hidden"):
        stacked = torch.zeros(2, 4, 6, dtype=torch.float64, requires_grad=True)
        setattr(stacked, STACKED_DIMS, 1)
        setattr(stacked, ROLE_ATTR, role)
        optimizer = fast.stacked([stacked], **{k: _member(MUON, k, v) for k, v in hp.items()})
        stacked.grad = g.clone()
        optimizer.step()
        for k in range(2):
            gk = g[k].clone()
            setattr(gk, ROLE_ATTR, role)
            torch.testing.assert_close(
                stacked[k].detach(), _one_step(torch.zeros(4, 6, dtype=torch.float64), gk, **hp)
            )


def _member(spec: TechniqueSpec, name: str, value: Any) -> Any:
    return (
        torch.tensor([value] * 2, dtype=torch.float64) if spec.param(name).type is float else value
    )


def _config(**over: Any) -> dict[str, Any]:
    base = {
        "dataset": {"name": "moons", "params": {"n_samples": 300}},
        "model": {"name": "mlp", "params": {"depth": 2, "width": 16}},
        "optimizer": {"name": "muon", "params": {}},
        "budget": {"epochs": 2, "batch_size": 32, "max_steps": 14},
        "trainer": {"accelerator": "cpu"},
    }
    return complete_config({**base, **over})


def _assert_members_equal_their_trials(configs: list[dict[str, Any]], registry: Any) -> None:
    """Member i of the stack of ``configs`` records what the reference loop records for trial i."""
    stacked = run_stack(configs, registry=registry)
    for config, member in zip(configs, stacked, strict=True):
        assert member.status == "completed", member.meta.error
        alone = reference_run(config, registry)
        rows = {(r["split"], r["metric"], r["step"]): r["value"] for r in alone.rows}
        got = {(r["split"], r["metric"], r["step"]): r["value"] for r in member.metrics}
        for key, value in rows.items():
            assert got[key] == pytest.approx(value, rel=1e-4, abs=1e-6), key


def test_muon_trials_stack_and_each_member_equals_its_trial() -> None:
    registry = _Registry()
    configs = [
        _config(seed=0),
        _config(seed=1, optimizer={"name": "muon", "params": {"lr": 0.05, "adam_lr": 1e-3}}),
    ]
    assert unstackable_reason(configs[0], registry) == ""
    _assert_members_equal_their_trials(configs, registry)


def test_decoupled_weight_decay_sees_each_sides_rate_in_a_stack_as_alone() -> None:
    """The ``weight_decay`` regularizer decays with each param group's rate: alone, Muon's
    groups are the hidden matrices at ``lr`` and the rest at ``adam_lr``; a stacked member must
    see the same two rates (``rate_key``), not ``lr`` for every parameter."""
    registry = _Registry()
    decay = {"regularizer": {"name": "weight_decay", "params": {"lam": 0.5}}}
    configs = [
        _config(seed=0, **decay),
        _config(
            seed=1,
            optimizer={"name": "muon", "params": {"lr": 0.05, "adam_lr": 1e-3}},
            **decay,
        ),
    ]
    _assert_members_equal_their_trials(configs, registry)


def test_a_model_whose_roles_cant_be_told_fails_a_muon_trial_only() -> None:
    registry = _Registry()
    odd = {"model": {"name": "odd", "params": {}}}
    failed = run_trial(_config(**odd), registry=registry)
    assert failed.status == "failed"
    assert "optimizer 'muon' reads parameter roles" in failed.meta.error
    assert "'table'" in failed.meta.error and "parameter_roles" in failed.meta.error
    other = run_trial(_config(**odd, optimizer={"name": "adamw", "params": {}}), registry=registry)
    assert other.status == "completed", other.meta.error
