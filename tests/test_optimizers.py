"""Optimizers: the built-ins against torch.optim and hand-computed steps; broken plugins fail."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from techbench.techniques.registry import get_spec, list_techniques
from techbench.techniques.spec import ParamError, TechniqueSpec
from techbench.testing import CheckFailure
from techbench.testing import optimizer as opt_checks
from techbench_builtins import optimizers_impl as impl

NAMES = [
    "sgd",
    "momentum",
    "nesterov",
    "adagrad",
    "rmsprop",
    "adam",
    "adamw",
    "nadam",
    "radam",
    "lion",
]


pytestmark = pytest.mark.usefixtures("one_thread")


def test_all_builtins_registered() -> None:
    assert set(NAMES) <= {s.name for s in list_techniques("optimizer")}


# --- an independent problem: a small tanh MLP regression in float64 -------------------------


def _problem(seed: int = 1) -> tuple[list[torch.Tensor], Any]:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(32, 5, generator=gen, dtype=torch.float64)
    y = torch.randn(32, 2, generator=gen, dtype=torch.float64)
    params = [
        0.5 * torch.randn(8, 5, generator=gen, dtype=torch.float64),
        torch.zeros(8, dtype=torch.float64),
        0.5 * torch.randn(2, 8, generator=gen, dtype=torch.float64),
        1e-3 * torch.randn(2, generator=gen, dtype=torch.float64),
    ]

    def loss(ps: list[torch.Tensor]) -> torch.Tensor:
        w1, b1, w2, b2 = ps
        return ((torch.tanh(x @ w1.T + b1) @ w2.T + b2 - y) ** 2).mean()

    return params, loss


def _run_optimizer(make: Any, steps: int = 25) -> list[torch.Tensor]:
    init, loss = _problem()
    ps = [p.clone().requires_grad_(True) for p in init]
    opt = make(ps)
    for _ in range(steps):
        opt.zero_grad()
        loss(ps).backward()
        opt.step()
    return [p.detach() for p in ps]


def _run_reference(rule: Any, hp: dict[str, Any], steps: int = 25) -> list[torch.Tensor]:
    init, loss = _problem()
    ps = [p.clone() for p in init]
    states = [rule.init_state(p, **hp) for p in ps]
    for t in range(1, steps + 1):
        leaves = [p.clone().requires_grad_(True) for p in ps]
        grads = torch.autograd.grad(loss(leaves), leaves)
        ps = [rule.step(p, g, s, t, **hp) for p, g, s in zip(ps, grads, states, strict=True)]
    return ps


# (technique, hyper-parameter overrides, torch.optim's own equivalent)
TORCH_EQUIVALENTS: list[tuple[str, dict[str, Any], Any]] = [
    (
        "sgd",
        {"lr": 0.05, "weight_decay": 0.01, "decay": "all"},
        lambda ps: torch.optim.SGD(ps, lr=0.05, weight_decay=0.01),
    ),
    (
        "momentum",
        {"lr": 0.05, "momentum": 0.8, "dampening": 0.1, "weight_decay": 0.01, "decay": "all"},
        lambda ps: torch.optim.SGD(ps, lr=0.05, momentum=0.8, dampening=0.1, weight_decay=0.01),
    ),
    (
        "nesterov",
        {"lr": 0.05, "momentum": 0.7, "weight_decay": 0.01, "decay": "all"},
        lambda ps: torch.optim.SGD(ps, lr=0.05, momentum=0.7, nesterov=True, weight_decay=0.01),
    ),
    (
        "adagrad",
        {
            "lr": 0.1,
            "lr_decay": 0.01,
            "weight_decay": 0.01,
            "decay": "all",
            "initial_accumulator_value": 0.1,
            "eps": 1e-6,
        },
        lambda ps: torch.optim.Adagrad(
            ps, lr=0.1, lr_decay=0.01, weight_decay=0.01, initial_accumulator_value=0.1, eps=1e-6
        ),
    ),
    (
        "rmsprop",
        {"lr": 0.01, "alpha": 0.9, "eps": 1e-4, "weight_decay": 0.01, "decay": "all"},
        lambda ps: torch.optim.RMSprop(ps, lr=0.01, alpha=0.9, eps=1e-4, weight_decay=0.01),
    ),
    (
        "rmsprop",
        {"lr": 0.01, "alpha": 0.95, "momentum": 0.5},
        lambda ps: torch.optim.RMSprop(ps, lr=0.01, alpha=0.95, momentum=0.5),
    ),
    (
        "adam",
        {
            "lr": 0.01,
            "beta1": 0.8,
            "beta2": 0.99,
            "eps": 1e-4,
            "weight_decay": 0.01,
            "decay": "all",
        },
        lambda ps: torch.optim.Adam(ps, lr=0.01, betas=(0.8, 0.99), eps=1e-4, weight_decay=0.01),
    ),
    (
        "adamw",
        {"lr": 0.01, "beta1": 0.8, "beta2": 0.99, "eps": 1e-4, "weight_decay": 0.1, "decay": "all"},
        lambda ps: torch.optim.AdamW(ps, lr=0.01, betas=(0.8, 0.99), eps=1e-4, weight_decay=0.1),
    ),
    (
        "nadam",
        {
            "lr": 0.01,
            "beta1": 0.8,
            "beta2": 0.99,
            "eps": 1e-4,
            "weight_decay": 0.01,
            "decay": "all",
            "momentum_decay": 0.01,
        },
        lambda ps: torch.optim.NAdam(
            ps, lr=0.01, betas=(0.8, 0.99), eps=1e-4, weight_decay=0.01, momentum_decay=0.01
        ),
    ),
    (
        "radam",
        {"lr": 0.01, "beta1": 0.8, "beta2": 0.9, "eps": 1e-4, "weight_decay": 0.01, "decay": "all"},
        lambda ps: torch.optim.RAdam(ps, lr=0.01, betas=(0.8, 0.9), eps=1e-4, weight_decay=0.01),
    ),
]
IDS = [f"{name}-{i}" for i, (name, _, _) in enumerate(TORCH_EQUIVALENTS)]


@pytest.mark.parametrize(("name", "overrides", "make_torch"), TORCH_EQUIVALENTS, ids=IDS)
def test_fast_matches_torch_optim(name: str, overrides: dict, make_torch: Any) -> None:
    spec = get_spec(name, "optimizer")
    got = _run_optimizer(lambda ps: spec.create(ps, **overrides))
    want = _run_optimizer(make_torch)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize(("name", "overrides", "make_torch"), TORCH_EQUIVALENTS, ids=IDS)
def test_reference_matches_torch_optim(name: str, overrides: dict, make_torch: Any) -> None:
    spec = get_spec(name, "optimizer")
    got = _run_reference(spec.load_reference(), spec.hyperparams(overrides))
    want = _run_optimizer(make_torch)
    # torch's NAdam keeps prod(mu_i) as a float32 scalar: ~1e-7 relative error in that factor
    rtol, atol = (1e-6, 1e-9) if name == "nadam" else (1e-10, 1e-12)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=rtol, atol=atol)


def test_radam_runs_past_the_rectification_threshold() -> None:
    b2 = 0.9
    rho_inf = 2 / (1 - b2) - 1
    rho = [rho_inf - 2 * t * b2**t / (1 - b2**t) for t in range(1, 26)]
    assert rho[0] <= 5 < rho[-1]


def test_custom_adam_class_matches_torch_adam() -> None:
    kw = {"lr": 0.01, "eps": 1e-4, "weight_decay": 0.01}
    got = _run_optimizer(
        lambda ps: impl.AdamVariant(
            ps,
            beta1=0.8,
            beta2=0.99,
            decay="all",
            decoupled=False,
            bias_correction=True,
            eps_placement="outside",
            **kw,
        )
    )
    want = _run_optimizer(lambda ps: torch.optim.Adam(ps, betas=(0.8, 0.99), **kw))
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-12, atol=1e-14)


def test_custom_rmsprop_class_with_eps_outside_matches_torch() -> None:
    kw = {"lr": 0.01, "alpha": 0.9, "eps": 1e-3, "weight_decay": 0.01, "momentum": 0.5}
    got = _run_optimizer(
        lambda ps: impl.RMSpropVariant(ps, eps_placement="outside", decay="all", **kw)
    )
    want = _run_optimizer(lambda ps: torch.optim.RMSprop(ps, **kw))
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-12, atol=1e-14)


def test_torch_is_used_where_it_implements_the_rule() -> None:
    p = [torch.zeros(2, requires_grad=True)]
    assert type(get_spec("adam").create(p)) is torch.optim.Adam
    assert type(get_spec("rmsprop").create(p)) is torch.optim.RMSprop
    assert isinstance(get_spec("adam").create(p, eps_placement="inside"), impl.AdamVariant)
    assert isinstance(get_spec("adam").create(p, bias_correction=False), impl.AdamVariant)
    assert isinstance(get_spec("rmsprop").create(p, eps_placement="inside"), impl.RMSpropVariant)


# --- hand-computed steps -----------------------------------------------------------------


P0 = [1.0, -0.5, 2.0]
G = [0.2, -1e-3, 3.0]


def _one_step(spec_name: str, steps: int = 1, **hp: Any) -> list[float]:
    p = torch.tensor(P0, dtype=torch.float64, requires_grad=True)
    opt = get_spec(spec_name).create([p], **hp)
    for _ in range(steps):
        p.grad = torch.tensor(G, dtype=torch.float64)
        opt.step()
    return p.detach().tolist()


def test_rmsprop_eps_inside_first_step_by_hand() -> None:
    lr, alpha, eps = 0.1, 0.9, 1e-4
    inside = _one_step("rmsprop", lr=lr, alpha=alpha, eps=eps, eps_placement="inside")
    outside = _one_step("rmsprop", lr=lr, alpha=alpha, eps=eps, eps_placement="outside")
    for i, (p, g) in enumerate(zip(P0, G, strict=True)):
        v = 0.1 * g * g  # (1 - alpha) g^2, seed 002's MS_1
        assert inside[i] == pytest.approx(p - lr * g / math.sqrt(v + eps), rel=1e-14)
        assert outside[i] == pytest.approx(p - lr * g / (math.sqrt(v) + eps), rel=1e-14)
    # the tiny gradient is where the placement matters: sqrt(1e-7 + 1e-4) vs sqrt(1e-7) + 1e-4
    assert abs(inside[1] - outside[1]) > 1e-3


def test_rmsprop_matches_seed_002_slide_for_three_steps() -> None:
    lr, eps = 0.05, 1e-3
    got = _one_step("rmsprop", steps=3, lr=lr, alpha=0.9, eps=eps, eps_placement="inside")
    for i, (p, g) in enumerate(zip(P0, G, strict=True)):
        ms = 0.0
        for _ in range(3):
            ms = 0.9 * ms + 0.1 * g**2
            p = p - lr * g / math.sqrt(ms + eps)
        assert got[i] == pytest.approx(p, rel=1e-13)


def test_adam_eps_inside_first_step_by_hand() -> None:
    lr, eps = 0.01, 1e-4
    got = _one_step("adam", lr=lr, eps=eps, eps_placement="inside")
    for i, (p, g) in enumerate(zip(P0, G, strict=True)):
        # bias-corrected first moments are exactly g and g^2
        assert got[i] == pytest.approx(p - lr * g / math.sqrt(g * g + eps), rel=1e-13)


def test_adam_without_bias_correction_is_the_seed_002_slide() -> None:
    lr, eps = 0.01, 1e-6
    got = _one_step(
        "adam",
        steps=2,
        lr=lr,
        beta1=0.9,
        beta2=0.9,
        eps=eps,
        bias_correction=False,
        eps_placement="inside",
    )
    for i, (p, g) in enumerate(zip(P0, G, strict=True)):
        ms = v = 0.0
        for _ in range(2):
            ms = 0.9 * ms + 0.1 * g**2
            v = 0.9 * v + 0.1 * g
            p = p - lr * v / math.sqrt(ms + eps)
        assert got[i] == pytest.approx(p, rel=1e-13)


def test_adam_bias_correction_changes_the_early_steps() -> None:
    on = _one_step("adam", lr=0.01)
    off = _one_step("adam", lr=0.01, bias_correction=False)
    # step 1: with correction ~lr*sign(g); without, lr * 0.1 g / (sqrt(0.001) |g|) ~ 3.16 lr
    assert on[0] == pytest.approx(P0[0] - 0.01, rel=1e-6)
    assert off[0] == pytest.approx(P0[0] - 0.01 * 0.1 / math.sqrt(0.001), rel=1e-6)


def test_adamw_decay_is_decoupled_first_step_by_hand() -> None:
    lr, wd, eps = 0.01, 0.1, 1e-8
    # P0 is one 1-D tensor: it decays only with decay="all"
    decoupled = _one_step("adamw", lr=lr, weight_decay=wd, eps=eps, decay="all")
    coupled = _one_step("adam", lr=lr, weight_decay=wd, eps=eps, decay="all")
    for i, (p, g) in enumerate(zip(P0, G, strict=True)):
        # step 1: m_hat = g, v_hat = g^2; AdamW shrinks p first, Adam adds wd*p to g
        assert decoupled[i] == pytest.approx(p * (1 - lr * wd) - lr * g / (abs(g) + eps), rel=1e-12)
        gc = g + wd * p
        assert coupled[i] == pytest.approx(p - lr * gc / (abs(gc) + eps), rel=1e-12)
    assert decoupled != pytest.approx(coupled, rel=1e-6)


def test_radam_first_step_is_sgd_with_momentum_by_hand() -> None:
    # rho_1 = 2/(1-b2) - 1 - 2 b2/(1-b2) = 1 <= 5: un-adapted step lr * m_hat = lr * g
    got = _one_step("radam", lr=0.01)
    for i, (p, g) in enumerate(zip(P0, G, strict=True)):
        assert got[i] == pytest.approx(p - 0.01 * g, rel=1e-13)


def test_nadam_first_step_by_hand() -> None:
    lr, b1, eps, psi = 0.01, 0.9, 1e-8, 0.004
    got = _one_step("nadam", lr=lr, beta1=b1, eps=eps, momentum_decay=psi)
    mu1 = b1 * (1 - 0.5 * 0.96**psi)
    mu2 = b1 * (1 - 0.5 * 0.96 ** (2 * psi))
    for i, (p, g) in enumerate(zip(P0, G, strict=True)):
        direction = (1 - mu1) * g / (1 - mu1) + mu2 * (1 - b1) * g / (1 - mu1 * mu2)
        # torch keeps prod(mu_i) in float32, hence rel=1e-6
        assert got[i] == pytest.approx(p - lr * direction / (abs(g) + eps), rel=1e-6)


def test_lion_two_steps_by_hand() -> None:
    lr, b1, b2, wd = 0.1, 0.9, 0.99, 0.5
    p = torch.tensor(P0, dtype=torch.float64, requires_grad=True)
    opt = get_spec("lion").create([p], lr=lr, beta1=b1, beta2=b2, weight_decay=wd, decay="all")
    g2 = [-0.3, 0.5, 1.0]
    for g in (G, g2):
        p.grad = torch.tensor(g, dtype=torch.float64)
        opt.step()
    for i in range(3):
        w, m = P0[i], 0.0
        for g in (G[i], g2[i]):
            c = b1 * m + (1 - b1) * g
            w = w - lr * (math.copysign(1.0, c) + wd * w)
            m = b2 * m + (1 - b2) * g
        assert p[i].item() == pytest.approx(w, rel=1e-14)


def test_lion_state_dict_resumes_exactly() -> None:
    opt_checks.check_state_dict_round_trip(get_spec("lion"))


def test_out_of_range_hyperparameter_is_refused() -> None:
    with pytest.raises(ParamError, match="beta2"):
        get_spec("adam").create([torch.zeros(1, requires_grad=True)], beta2=1.0)
    with pytest.raises(ParamError, match="eps_placement"):
        get_spec("rmsprop").create([torch.zeros(1, requires_grad=True)], eps_placement="middle")


# --- deliberately broken plugins must fail with a clear message ------------------------------


def _adam_spec(fast: Any, reference: Any = impl.adam_reference) -> TechniqueSpec:
    base = get_spec("adam")
    return TechniqueSpec(
        name="broken_adam",
        family="optimizer",
        summary="broken",
        fast=fast,
        reference=reference,
        citation="test",
        params=base.params,
    )


class _BrokenAdam(impl.AdamVariant):
    """Bias correction computed with the wrong step count or the wrong power."""

    def __init__(self, params: Any, offset: int = 0, sqrt_bc2: bool = True, **kw: Any) -> None:
        super().__init__(params, **kw)
        self.offset, self.sqrt_bc2 = offset, sqrt_bc2

    @torch.no_grad()
    def step(self, closure: Any = None) -> None:  # type: ignore[override]
        for group in self.param_groups:
            lr, b1, b2, eps = group["lr"], group["beta1"], group["beta2"], group["eps"]
            for p in group["params"]:
                s = self.state[p]
                if not s:
                    s.update(step=0, m=torch.zeros_like(p), v=torch.zeros_like(p))
                s["step"] += 1
                t = s["step"] + self.offset
                s["m"].mul_(b1).add_(p.grad, alpha=1 - b1)
                s["v"].mul_(b2).addcmul_(p.grad, p.grad, value=1 - b2)
                bc2 = math.sqrt(1 - b2**t) if self.sqrt_bc2 else 1 - b2**t
                p.addcdiv_(s["m"], s["v"].sqrt() / bc2 + eps, value=-lr / (1 - b1**t))


def _adam_kwargs(hp: dict[str, Any]) -> dict[str, Any]:
    return {**hp, "decoupled": False}


def test_fast_off_by_1e3_fails_naming_step_and_parameter() -> None:
    def fast(params: Any, **hp: Any) -> torch.optim.Optimizer:
        return impl.adam(params, **{**hp, "lr": hp["lr"] * (1 + 1e-3)})

    with pytest.raises(
        CheckFailure, match=r"step 1, parameter 0 \(W.*fast \(float64\) vs reference"
    ):
        opt_checks.check_steps_match_reference(_adam_spec(fast))


def test_off_by_one_step_count_fails() -> None:
    def fast(params: Any, **hp: Any) -> torch.optim.Optimizer:
        return _BrokenAdam(params, offset=1, **_adam_kwargs(hp))

    with pytest.raises(CheckFailure, match=r"step 1, parameter \d") as err:
        opt_checks.check_steps_match_reference(_adam_spec(fast))
    assert "values differ" in str(err.value)


def test_wrong_bias_correction_fails() -> None:
    def fast(params: Any, **hp: Any) -> torch.optim.Optimizer:
        return _BrokenAdam(params, sqrt_bc2=False, **_adam_kwargs(hp))

    with pytest.raises(CheckFailure, match=r"step 1, parameter \d"):
        opt_checks.check_steps_match_reference(_adam_spec(fast))


def test_eps_in_the_wrong_place_fails() -> None:
    def fast(params: Any, **hp: Any) -> torch.optim.Optimizer:
        return impl.adam(params, **{**hp, "eps_placement": "inside"})

    with pytest.raises(
        CheckFailure, match=r"eps=0.01, .*eps_placement=.outside.\): step 1, parameter \d"
    ):
        opt_checks.check_variants_explicit(_adam_spec(fast))


def test_reference_with_eps_in_the_wrong_place_fails() -> None:
    def wrong_step(p: Any, g: Any, state: dict, t: int, **hp: Any) -> Any:
        return impl.adam_reference.step(p, g, state, t, **{**hp, "eps_placement": "inside"})

    spec = _adam_spec(impl.adam, impl.UpdateRule(impl.adam_reference.init_state, wrong_step))
    with pytest.raises(CheckFailure, match=r"step 1, parameter"):
        opt_checks.check_variants_explicit(spec)


def test_ignored_hyperparameter_fails() -> None:
    def fast(params: Any, **hp: Any) -> torch.optim.Optimizer:
        return torch.optim.SGD(params, lr=hp["lr"])

    def ref_step(p: Any, g: Any, state: dict, t: int, *, lr: float, **_: Any) -> Any:
        return p - lr * g

    spec = TechniqueSpec(
        name="lazy_sgd",
        family="optimizer",
        summary="ignores weight decay",
        fast=fast,
        reference=impl.UpdateRule(impl.sgd_reference.init_state, ref_step),
        citation="test",
        params=get_spec("sgd").params,
    )
    opt_checks.check_steps_match_reference(spec)
    with pytest.raises(CheckFailure, match=r"weight_decay=0.025.*ignored"):
        opt_checks.check_hyperparams_honoured(spec)


def test_heavy_ball_posing_as_nesterov_fails() -> None:
    base = get_spec("nesterov")
    spec = TechniqueSpec(
        name="fake_nesterov",
        family="optimizer",
        summary="heavy ball",
        fast=lambda params, **hp: impl.momentum(params, dampening=0.0, **hp),
        reference=base.reference,
        citation="test",
        params=base.params,
    )
    with pytest.raises(CheckFailure, match=r"step 1, parameter \d"):
        opt_checks.check_steps_match_reference(spec)


class _ForgetfulMomentum(torch.optim.SGD):
    """Keeps its momentum buffers outside ``self.state``: a state_dict round trip loses them."""

    def __init__(self, params: Any, lr: float, momentum: float, **_: Any) -> None:
        super().__init__(params, lr=lr)
        self.mu, self.buffers = momentum, {}

    @torch.no_grad()
    def step(self, closure: Any = None) -> None:  # type: ignore[override]
        for group in self.param_groups:
            for p in group["params"]:
                b = self.buffers.get(p)
                b = p.grad.clone() if b is None else b.mul_(self.mu).add_(p.grad)
                self.buffers[p] = b
                p.add_(b, alpha=-group["lr"])


def test_state_lost_by_state_dict_fails() -> None:
    base = get_spec("momentum")
    spec = TechniqueSpec(
        name="forgetful",
        family="optimizer",
        summary="loses state",
        fast=_ForgetfulMomentum,
        reference=base.reference,
        citation="test",
        params=base.params,
    )
    with pytest.raises(
        CheckFailure,
        match=r"state_dict saved after step 7, resumed step 8, "
        r"parameter \d .*resumed vs uninterrupted",
    ):
        opt_checks.check_state_dict_round_trip(spec)


# --- property: fast and reference agree across the declared ranges ---------------------------


_unit = st.floats(0.0, 0.99)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    lr=st.floats(1e-4, 0.1),
    beta1=_unit,
    beta2=st.floats(0.5, 0.9999),
    eps=st.floats(1e-10, 1e-1),
    weight_decay=st.floats(0.0, 0.1),
    bias_correction=st.booleans(),
    eps_placement=st.sampled_from(["outside", "inside"]),
)
def test_adam_agrees_with_reference_across_hyperparameters(**hp: Any) -> None:
    opt_checks.compare_with_reference(get_spec("adam"), hp, steps=6)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    lr=st.floats(1e-4, 0.1),
    alpha=_unit,
    eps=st.floats(1e-10, 1e-1),
    momentum=_unit,
    weight_decay=st.floats(0.0, 0.1),
    eps_placement=st.sampled_from(["outside", "inside"]),
)
def test_rmsprop_agrees_with_reference_across_hyperparameters(**hp: Any) -> None:
    opt_checks.compare_with_reference(get_spec("rmsprop"), hp, steps=6)


# --- which parameters decay ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "torch_cls", "kw"),
    [
        ("adamw", torch.optim.AdamW, {"lr": 0.01, "weight_decay": 0.1}),
        ("adam", torch.optim.Adam, {"lr": 0.01, "weight_decay": 0.1}),
        ("sgd", torch.optim.SGD, {"lr": 0.05, "weight_decay": 0.1}),
    ],
)
def test_default_decay_is_weights_only_like_the_regularizers(name, torch_cls, kw) -> None:
    """Default ``decay="weights"`` equals torch with the biases in a group of weight_decay 0
    (what l2/weight_decay do by default); ``decay="all"`` equals plain torch."""
    spec = get_spec(name, "optimizer")

    def grouped(ps: list[torch.Tensor]) -> torch.optim.Optimizer:
        weights = [p for p in ps if p.dim() >= 2]
        biases = [p for p in ps if p.dim() < 2]
        return torch_cls([{"params": weights}, {"params": biases, "weight_decay": 0.0}], **kw)

    default = _run_optimizer(lambda ps: spec.create(ps, **kw))
    for g, w in zip(default, _run_optimizer(grouped), strict=True):
        torch.testing.assert_close(g, w, rtol=1e-12, atol=1e-14)
    every = _run_optimizer(lambda ps: spec.create(ps, decay="all", **kw))
    for g, w in zip(every, _run_optimizer(lambda ps: torch_cls(ps, **kw)), strict=True):
        torch.testing.assert_close(g, w, rtol=1e-12, atol=1e-14)
    assert not torch.equal(default[1], every[1])  # the bias differs


def test_decay_choice_is_checked() -> None:
    """An optimizer that declares decay but decays its biases anyway fails variants_explicit."""

    def fast(params: Any, **hp: Any) -> torch.optim.Optimizer:
        return torch.optim.SGD(params, lr=hp["lr"], weight_decay=hp["weight_decay"])

    spec = TechniqueSpec(
        name="all_decay_sgd",
        family="optimizer",
        summary="decays biases whatever decay says",
        fast=fast,
        reference=impl.UpdateRule(
            impl.sgd_reference.init_state,
            lambda p, g, state, t, *, lr, weight_decay, **_: p - lr * (g + weight_decay * p),
        ),
        citation="test",
        params=get_spec("sgd").params,
    )
    with pytest.raises(CheckFailure, match=r"decay='weights' the 1-D parameter b"):
        opt_checks._check_decay_choice(spec)


# -- stacked implementations: per-member hyper-parameters ---------------------------------------


def test_every_builtin_declares_a_stacked_implementation() -> None:
    for name in NAMES:
        spec = get_spec(name, "optimizer")
        assert spec.load_stacked() is not None, name
        assert "stacked_hyperparams" in [c.name for c in opt_checks.checks(spec)], name


def test_stacked_members_differ_in_every_float_hyperparameter() -> None:
    """The check's draws really differ per member (else an implementation using one member's
    values for all would pass)."""
    spec = get_spec("adam", "optimizer")
    settings = opt_checks.member_settings(spec, spec.defaults())
    for p in spec.params:
        if p.type is float:
            assert len({hp[p.name] for hp in settings}) == len(settings), p.name


def _with_stacked(name: str, stacked: Any, fast: Any = None) -> TechniqueSpec:
    import dataclasses

    spec = get_spec(name, "optimizer")
    return dataclasses.replace(spec, stacked=stacked, fast=fast or spec.fast)


def test_stacked_implementation_coupling_members_fails() -> None:
    """Normalised SGD whose stacked form divides by the norm of the whole stacked gradient (a
    global norm across members) instead of each member's own."""
    from techbench_builtins.optimizers_stacked import StackedSGD

    class Normalised(torch.optim.SGD):
        @torch.no_grad()
        def step(self, closure: Any = None) -> None:  # type: ignore[override]
            for group in self.param_groups:
                for p in group["params"]:
                    p.add_(p.grad / p.grad.norm(), alpha=-group["lr"])

    class CoupledNormalised(StackedSGD):
        def update(self, p, g, state, c, c64):  # type: ignore[no-untyped-def]
            super().update(p, g / g.norm(), state, c, c64)

    def fast(params: Any, *, lr: float, **_: Any) -> Any:
        return Normalised(params, lr=lr)

    def stacked(params: Any, *, lr: Any, **_: Any) -> Any:
        return CoupledNormalised(
            params,
            lr=lr,
            weight_decay=0.0,
            momentum=0.0,
            dampening=0.0,
            nesterov=False,
            decay="all",
        )

    with pytest.raises(CheckFailure, match=r"member \d of 4 .*stacked implementation vs alone"):
        opt_checks.check_stacked_hyperparams(_with_stacked("sgd", stacked, fast))


def test_stacked_implementation_using_one_members_values_fails() -> None:
    from techbench_builtins import optimizers_stacked as stacked_impl

    def first_only(params: Any, **hp: Any) -> Any:
        hp = {k: v[0].expand(len(v)) if isinstance(v, torch.Tensor) else v for k, v in hp.items()}
        return stacked_impl.adam(params, **hp)

    with pytest.raises(CheckFailure, match=r"member [1-3] of 4"):
        opt_checks.check_stacked_hyperparams(_with_stacked("adam", first_only))


def test_stacked_implementation_ignoring_the_schedule_multiplier_fails() -> None:
    from techbench_builtins.optimizers_stacked import StackedSGD

    class NoMultiplier(StackedSGD):
        def coefficients(self, hp, lr, t):  # type: ignore[no-untyped-def]
            return super().coefficients(hp, hp["lr"], t)

    def stacked(params: Any, **hp: Any) -> Any:
        return NoMultiplier(params, momentum=0.0, dampening=0.0, nesterov=False, **hp)

    with pytest.raises(CheckFailure, match="step 2,"):
        opt_checks.check_stacked_hyperparams(_with_stacked("sgd", stacked))


def test_stacked_sgd_equals_torch_sgd_for_mixed_zero_and_nonzero_momentum() -> None:
    """A member with momentum 0 is plain SGD (torch ignores dampening then), next to members
    with heavy-ball momentum, in one stacked optimizer (independent source: torch.optim.SGD)."""
    from techbench.techniques.families import STACKED_DIMS
    from techbench_builtins import optimizers_stacked as stacked_impl

    gen = torch.Generator().manual_seed(0)
    p0 = torch.randn(3, 5, 4, generator=gen, dtype=torch.float64)
    grads = [torch.randn(3, 5, 4, generator=gen, dtype=torch.float64) for _ in range(6)]
    lr, mu, damp = [0.1, 0.05, 0.2], [0.0, 0.9, 0.5], [0.5, 0.1, 0.0]
    stacked = p0.clone().requires_grad_(True)
    setattr(stacked, STACKED_DIMS, 1)
    opt = stacked_impl.momentum(
        [stacked],
        lr=torch.tensor(lr, dtype=torch.float64),
        momentum=torch.tensor(mu, dtype=torch.float64),
        dampening=torch.tensor(damp, dtype=torch.float64),
        weight_decay=torch.zeros(3, dtype=torch.float64),
        decay="weights",
    )
    alone = [p0[k].clone().requires_grad_(True) for k in range(3)]
    torch_opts = [
        torch.optim.SGD([alone[k]], lr=lr[k], momentum=mu[k], dampening=damp[k]) for k in range(3)
    ]
    for g in grads:
        stacked.grad = g.clone()
        opt.step()
        for k in range(3):
            alone[k].grad = g[k].clone()
            torch_opts[k].step()
    for k in range(3):
        torch.testing.assert_close(stacked[k].detach(), alone[k].detach(), rtol=1e-12, atol=0)


# -- the stacked contract: members' values where the engine reads them (issue 23, item 4) -------


class _PrivateSGD(torch.optim.Optimizer):
    """A third-party stacked SGD that steps each member right but keeps the members' rates in
    a private attribute: the engine cannot see them (it would read the multiplier, 1.0)."""

    def __init__(self, params: Any, *, lr: Any, **_: Any) -> None:
        super().__init__(params, {"lr": 1.0})
        self._rates = torch.as_tensor(lr, dtype=torch.float64)

    @torch.no_grad()
    def step(self, closure: Any = None) -> None:  # type: ignore[override]
        for group in self.param_groups:
            for p in group["params"]:
                rate = (self._rates * group["lr"]).to(p.dtype).view(-1, *[1] * (p.dim() - 1))
                p.sub_(p.grad * rate)


class _LyingSGD(_PrivateSGD):
    """Declares ``member_hyperparams`` but shows member 0's rate for every member."""

    def member_hyperparams(self) -> dict[str, torch.Tensor]:
        k = len(self._rates)
        return {"lr": self._rates[:1].expand(k), "weight_decay": torch.zeros(k)}


def _plain_sgd_spec(stacked: Any) -> TechniqueSpec:
    """``sgd`` without weight decay, so the private implementations step it exactly."""
    import dataclasses

    spec = get_spec("sgd", "optimizer")
    params = tuple(p for p in spec.params if p.name == "lr")

    def fast(params: Any, *, lr: float) -> Any:
        return torch.optim.SGD(params, lr=lr)

    return dataclasses.replace(spec, params=params, stacked=stacked, fast=fast)


def test_stacked_optimizer_keeping_members_values_privately_fails_the_checks() -> None:
    """It steps every member right, yet the engine could not read its members' rates: the
    stacked engine refuses it and the conformance check fails it."""
    from techbench.engine.member_hp import create_stacked
    from techbench.engine.stacked_hooks import MemberOptimizer
    from techbench.techniques.spec import TechniqueError

    spec = _plain_sgd_spec(_PrivateSGD)
    assert "stacked_member_values" in [c.name for c in opt_checks.checks(spec)]
    with pytest.raises(CheckFailure, match=r"without member_hyperparams\(\)"):
        opt_checks.check_stacked_member_values(spec)
    stacked = [torch.zeros(3, 2, requires_grad=True)]
    settings = [{"lr": 0.1}, {"lr": 0.2}, {"lr": 0.3}]
    with pytest.raises(TechniqueError, match="member_hyperparams"):
        create_stacked(spec, stacked, settings)
    opt = _PrivateSGD(stacked, lr=torch.tensor([0.1, 0.2, 0.3]))
    with pytest.raises(TypeError, match="member_hyperparams"):
        MemberOptimizer(opt, {}, 1, stacked=True)


def test_stacked_optimizer_showing_the_wrong_members_values_fails() -> None:
    spec = _plain_sgd_spec(_LyingSGD)
    with pytest.raises(CheckFailure, match=r"member [1-3] of 4: the engine reads lr="):
        opt_checks.check_stacked_member_values(spec)


def test_engine_reads_each_members_lr_from_a_builtin_stacked_optimizer() -> None:
    """Member k's view (what ``after_step`` hooks see) holds its own rate times the schedule's
    multiplier and its own betas (the values given, an independent source)."""
    from techbench.engine.member_hp import create_stacked
    from techbench.engine.stacked_hooks import MemberOptimizer

    spec = get_spec("adamw", "optimizer")
    settings = [{"lr": 0.1, "beta1": 0.8}, {"lr": 0.02, "beta1": 0.7}]
    opt = create_stacked(spec, [torch.zeros(2, 3, requires_grad=True)], settings)
    opt.param_groups[0]["lr"] = 0.5
    for k, hp in enumerate(settings):
        seen = MemberOptimizer(opt, {}, k, stacked=True).param_groups[0]
        assert seen["lr"] == hp["lr"] * 0.5
        assert seen["beta1"] == hp["beta1"]
        assert seen["weight_decay"] == 0.01
        assert "member" not in seen


def _without_search(name: str) -> TechniqueSpec:
    import dataclasses

    spec = get_spec(name, "optimizer")
    params = tuple(dataclasses.replace(p, search=None) for p in spec.params)
    return dataclasses.replace(spec, params=params)


def test_members_differ_in_every_float_even_without_search_ranges() -> None:
    """No search ranges: each float is drawn from 0.5x to 2x its default (1e-3 to 1e-1 for a
    default of 0), distinct per member and valid."""
    spec = _without_search("momentum")
    settings = opt_checks.member_settings(spec, spec.defaults())
    for p in spec.params:
        if p.type is not float:
            continue
        values = [hp[p.name] for hp in settings]
        assert len(set(values)) == len(values), p.name
        for v in values:
            p.validate("test", v)
            if p.default:
                assert 0.5 * p.default <= v <= 2 * p.default, (p.name, v)
            else:
                assert 1e-3 <= v <= 1e-1, (p.name, v)


def test_member_0s_values_for_all_fail_without_search_ranges() -> None:
    """A stacked implementation using member 0's values for every member, on an optimizer
    declaring no search ranges: the members must still differ, so the check fails it."""
    import dataclasses

    from techbench_builtins import optimizers_stacked as stacked_impl

    def first_only(params: Any, **hp: Any) -> Any:
        hp = {k: v[0].expand(len(v)) if isinstance(v, torch.Tensor) else v for k, v in hp.items()}
        return stacked_impl.sgd(params, **hp)

    spec = dataclasses.replace(_without_search("sgd"), stacked=first_only)
    with pytest.raises(CheckFailure, match=r"member [1-3] of 4"):
        opt_checks.check_stacked_hyperparams(spec)


def test_a_float_that_cannot_be_varied_fails_naming_it() -> None:
    import dataclasses

    from techbench.techniques.spec import Param

    spec = _without_search("sgd")
    pinned = Param(name="gain", type=float, default=1.0, low=1.0, high=1.0)
    spec = dataclasses.replace(spec, params=(*spec.params, pinned))
    with pytest.raises(CheckFailure, match=r"float hyper-parameter gain .*search range"):
        opt_checks.member_settings(spec, spec.defaults())


def test_builtin_optimizers_are_said_once() -> None:
    """Issue 23, item 5: the defaults are the specs' alone (no factory declares one), each
    stacked factory is a stacked class with only what its technique fixes bound, and the
    one-trial rules torch lacks are those classes (at K = 1), not second copies."""
    import functools
    import inspect

    from techbench_builtins import optimizers_stacked as stacked_impl

    for name in NAMES:
        spec = get_spec(name, "optimizer")
        fast = inspect.signature(spec.load_fast()).parameters.values()
        assert [p.name for p in fast if p.default is not p.empty] == [], name
        stacked = spec.load_stacked()
        cls = stacked.func if isinstance(stacked, functools.partial) else stacked
        assert issubclass(cls, stacked_impl.StackedOptimizer), name
        fixed = set(stacked.keywords) if isinstance(stacked, functools.partial) else set()
        assert not fixed & {p.name for p in spec.params}, (name, fixed)
    for one, many in [
        (impl.AdamVariant, stacked_impl.StackedAdam),
        (impl.RMSpropVariant, stacked_impl.StackedRMSprop),
        (impl.Lion, stacked_impl.StackedLion),
    ]:
        assert issubclass(one, many) and "update" not in vars(one), one
