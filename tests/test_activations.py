"""Activations: built-ins against independent sources, and the checks against broken plugins."""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest
import scipy.optimize
import scipy.special
import scipy.stats
import torch
import torch.nn.functional as F
from torch import nn

from techbench.techniques.registry import get_spec, list_techniques
from techbench.techniques.spec import Param, TechniqueSpec
from techbench.testing import CheckFailure, checks_for, failed_checks, parametrize_with_checks
from techbench.testing import activation as act_checks

NAMES = [
    "identity",
    "sigmoid",
    "tanh",
    "relu",
    "leaky_relu",
    "prelu",
    "elu",
    "selu",
    "gelu",
    "silu",
    "softplus",
    "mish",
    "softsign",
]

# Published SELU constants (Klambauer et al. 2017, eq. 14), typed in independently.
SELU_LAMBDA = 1.0507009873554804934193349852946
SELU_ALPHA = 1.6732632423543772848170429916717

TORCH_FUNCTIONAL = {
    "identity": ({}, lambda x: x),
    "sigmoid": ({}, torch.sigmoid),
    "tanh": ({}, torch.tanh),
    "relu": ({}, F.relu),
    "leaky_relu": ({"alpha": 0.2}, lambda x: F.leaky_relu(x, 0.2)),
    "prelu": ({"init": 0.3}, lambda x: F.prelu(x, torch.tensor([0.3], dtype=x.dtype))),
    "elu": ({"alpha": 0.7}, lambda x: F.elu(x, 0.7)),
    "selu": ({}, F.selu),
    "gelu": ({}, F.gelu),
    "gelu_tanh": ({"approximate": "tanh"}, lambda x: F.gelu(x, approximate="tanh")),
    "silu": ({}, F.silu),
    "softplus": ({"beta": 2.0}, lambda x: F.softplus(x, beta=2.0)),
    "mish": ({}, F.mish),
    "softsign": ({}, F.softsign),
}


def _x(dtype: torch.dtype = torch.float64) -> torch.Tensor:
    x = torch.cat([torch.linspace(-12, 12, 4001), torch.tensor([-300.0, -50.0, 50.0, 300.0])])
    return x[(x.abs() > 1e-3)].to(dtype)


def test_all_builtins_registered() -> None:
    names = {s.name for s in list_techniques("activation")}
    assert set(NAMES) <= names
    for name in NAMES:
        spec = get_spec(name, "activation")
        assert spec.family == "activation"
        assert spec.citation and spec.summary and spec.reference is not None


@pytest.mark.parametrize("name", NAMES)
def test_builtin_has_every_activation_check(name: str) -> None:
    """Every check runs once, in test_builtins; here only that none is missing."""
    names = {c.name for c in checks_for(get_spec(name, "activation"))}
    assert names >= {"values", "gradient", "gradcheck", "properties"}


@pytest.mark.parametrize("key", sorted(TORCH_FUNCTIONAL))
def test_fast_and_reference_match_torch_functional(key: str) -> None:
    hp, func = TORCH_FUNCTIONAL[key]
    spec = get_spec(key.removesuffix("_tanh"), "activation")
    x32 = _x(torch.float32)
    fast = spec.create(**hp)
    torch.testing.assert_close(fast(x32), func(x32), rtol=1e-6, atol=1e-7)
    x64 = _x()
    ref = spec.load_reference()
    torch.testing.assert_close(
        ref.value(x64, **spec.hyperparams(hp)), func(x64), rtol=1e-12, atol=1e-14
    )


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("nondefault", [False, True])
def test_reference_derivative_is_autograd_of_reference_value(name: str, nondefault: bool) -> None:
    spec = get_spec(name, "activation")
    hp = spec.defaults()
    if nondefault:
        for p in spec.params:
            v = act_checks.non_default_value(p)
            if v is not None:
                hp[p.name] = v
    ref = spec.load_reference()
    kinks = [0.0, *spec.properties["kinks"]]
    if name == "softplus":
        kinks.append(hp["threshold"] / hp["beta"])
    x = torch.linspace(-15, 15, 3001, dtype=torch.float64)
    for k in kinks:
        x = x[(x - k).abs() > 1e-3]
    x.requires_grad_(True)
    (g,) = torch.autograd.grad(ref.value(x, **hp).sum(), x)
    torch.testing.assert_close(ref.derivative(x.detach(), **hp), g, rtol=1e-10, atol=1e-12)


def test_references_against_scipy_and_published_numbers() -> None:
    xn = np.linspace(-30, 30, 6001)
    x = torch.from_numpy(xn)

    def ref(name: str, **hp):
        return get_spec(name, "activation").load_reference().value(x, **hp).numpy()

    def dref(name: str, **hp):
        return get_spec(name, "activation").load_reference().derivative(x, **hp).numpy()

    expit = scipy.special.expit(xn)
    np.testing.assert_allclose(ref("sigmoid"), expit, rtol=1e-13, atol=1e-300)
    np.testing.assert_allclose(dref("sigmoid"), expit * (1 - expit), rtol=1e-12, atol=1e-300)
    np.testing.assert_allclose(ref("tanh"), np.tanh(xn), rtol=1e-13, atol=1e-15)
    np.testing.assert_allclose(dref("tanh"), 1 / np.cosh(xn) ** 2, rtol=1e-9, atol=1e-15)
    np.testing.assert_allclose(ref("gelu"), xn * scipy.stats.norm.cdf(xn), rtol=1e-12, atol=1e-300)
    np.testing.assert_allclose(
        dref("gelu"),
        scipy.stats.norm.cdf(xn) + xn * scipy.stats.norm.pdf(xn),
        rtol=1e-12,
        atol=1e-15,
    )
    np.testing.assert_allclose(
        ref("softplus", threshold=1e9), np.logaddexp(0, xn), rtol=1e-13, atol=1e-300
    )
    np.testing.assert_allclose(ref("silu"), xn * expit, rtol=1e-13, atol=1e-300)
    np.testing.assert_allclose(
        ref("mish"), xn * np.tanh(np.logaddexp(0, xn)), rtol=1e-12, atol=1e-300
    )
    neg = np.where(xn > 0, xn, SELU_ALPHA * np.expm1(xn))
    np.testing.assert_allclose(ref("selu"), SELU_LAMBDA * neg, rtol=1e-13, atol=1e-15)
    # ELU' = ELU + alpha below zero (seed 000)
    elu = ref("elu", alpha=0.5)
    np.testing.assert_allclose(dref("elu", alpha=0.5), np.where(xn >= 0, 1.0, elu + 0.5))
    # a few hand values
    one = torch.tensor([1.0], dtype=torch.float64)
    gelu1 = get_spec("gelu").load_reference().value(one).item()
    assert gelu1 == pytest.approx(0.8413447460685429, rel=1e-14)  # Phi(1)
    assert get_spec("silu").load_reference().value(one).item() == pytest.approx(
        1 / (1 + math.exp(-1)), rel=1e-15
    )
    # the SELU fixed point: zero mean, unit variance under N(0, 1) input (Klambauer et al.)
    z = np.linspace(-12, 12, 200001)
    w = scipy.stats.norm.pdf(z) * (z[1] - z[0])
    s = get_spec("selu").load_reference().value(torch.from_numpy(z)).numpy()
    assert abs((s * w).sum()) < 1e-6 and abs((s**2 * w).sum() - 1) < 1e-6


def test_declared_properties_match_known_extremes() -> None:
    x = torch.linspace(-10, 10, 200001, dtype=torch.float64)
    for name, true_min in (("gelu", -0.169971), ("silu", -0.278465), ("mish", -0.308843)):
        spec = get_spec(name, "activation")
        lo = spec.properties_for()["output_range"][0]
        m = spec.load_reference().value(x).min().item()
        assert m == pytest.approx(true_min, abs=1e-5)
        assert lo <= m < lo + 1e-3
    assert get_spec("selu").properties["output_range"][0] == pytest.approx(
        -SELU_LAMBDA * SELU_ALPHA
    )


def test_prelu_learnable_flag() -> None:
    spec = get_spec("prelu", "activation")
    assert all(p.requires_grad for p in spec.create().parameters())
    assert not any(p.requires_grad for p in spec.create(learnable=False).parameters())
    m = spec.create(init=0.1)
    y = m(torch.tensor([-2.0, 3.0]))
    torch.testing.assert_close(y, torch.tensor([-0.2, 3.0]))


def test_spec_module_imports_no_torch() -> None:
    code = "import sys, techbench_builtins.activations; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


# ---------------------------------------------------------------------------------------------
# Deliberately broken plugins must fail, with a message naming the input


class _Ref:
    """sigma and sigma' written out independently of the built-in reference."""

    @staticmethod
    def value(x, **hp):
        return 1 / (1 + torch.exp(-x))

    @staticmethod
    def derivative(x, **hp):
        s = 1 / (1 + torch.exp(-x))
        return s * (1 - s)


class _WrongDerivativeRef(_Ref):
    @staticmethod
    def derivative(x, **hp):
        return 1 / (1 + torch.exp(-x))  # sigma' = sigma: wrong


class _Offset(nn.Module):
    def forward(self, x):
        return torch.sigmoid(x) + 1e-3


class _BadBackward(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return torch.sigmoid(x)

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return g * torch.sigmoid(x)  # sigma instead of sigma (1 - sigma)


class _BadBackwardModule(nn.Module):
    def forward(self, x):
        return _BadBackward.apply(x)


SIGMOID_PROPS = dict(
    output_range=(0.0, 1.0),
    zero_centered=False,
    monotonic=True,
    saturation=(0.01, 0.99),
    dead_below=None,
    kinks=(),
)


_REF = _Ref()


def _sigmoid_spec(fast=nn.Sigmoid, reference=_REF, **props) -> TechniqueSpec:
    return TechniqueSpec(
        name="my_sigmoid",
        family="activation",
        summary="test",
        citation="test",
        fast=fast,
        reference=reference,
        properties={**SIGMOID_PROPS, **props},
    )


def test_correct_third_party_plugin_passes() -> None:
    assert failed_checks(_sigmoid_spec()) == {}


def test_fast_off_by_1e3_fails_values() -> None:
    failed = failed_checks(_sigmoid_spec(fast=_Offset))
    assert "values" in failed
    msg = failed["values"]
    assert "activation/my_sigmoid value (float32)" in msg
    assert "at input" in msg and "|diff| = 0.001" in msg


OFF_BY_1E3 = {  # its gradient is right: the gradient check compares gradients only
    "values": "planted: the fast side adds 1e-3",
    "properties": "planted: the output leaves (0, 1)",
}


@parametrize_with_checks([_sigmoid_spec(fast=_Offset)], expected_failed_checks=OFF_BY_1E3)
def test_expected_failed_checks_of_a_broken_plugin(technique: TechniqueSpec, check) -> None:
    """The third-party path: known failures are xfails, the other checks still run and pass."""
    check(technique)


def test_expected_failed_checks_are_marked_strict_xfail_with_the_reason() -> None:
    mark = parametrize_with_checks(
        [_sigmoid_spec(fast=_Offset)], expected_failed_checks=OFF_BY_1E3
    ).mark
    xfails = {p.id: m.kwargs for p in mark.args[1] for m in p.marks if m.name == "xfail"}
    assert xfails == {
        f"activation/my_sigmoid-{name}": {"strict": True, "reason": reason}
        for name, reason in OFF_BY_1E3.items()
    }


def test_expected_failed_checks_per_technique_and_unknown_names() -> None:
    specs = [_sigmoid_spec(), _sigmoid_spec(fast=_Offset)]
    mark = parametrize_with_checks(
        specs,
        expected_failed_checks=lambda s: OFF_BY_1E3 if s.fast is _Offset else {},
    ).mark
    assert sum(bool(p.marks) for p in mark.args[1]) == len(OFF_BY_1E3)
    with pytest.raises(ValueError, match="no check of these techniques: valeus"):
        parametrize_with_checks(specs, expected_failed_checks={"valeus": "typo"})


PASSING_PLUGIN_DECLARED_BROKEN = """
import torch
from techbench import TechniqueSpec
from techbench.testing import parametrize_with_checks


class Sigmoid:
    value = staticmethod(lambda x, **hp: 1 / (1 + torch.exp(-x)))
    derivative = staticmethod(lambda x, **hp: torch.sigmoid(x) * (1 - torch.sigmoid(x)))


SPEC = TechniqueSpec(
    name="fine", family="activation", summary="t", citation="t", fast=torch.nn.Sigmoid,
    reference=Sigmoid(), properties={PROPS},
)


@parametrize_with_checks([SPEC], expected_failed_checks={{"values": "stale entry"}})
def test_it(technique, check):
    check(technique)
"""


def test_an_expected_failure_that_passes_fails_the_suite(pytester: pytest.Pytester) -> None:
    """Strict: once the bug is fixed, the stale entry turns the run red (XPASS(strict))."""
    pytester.makepyfile(PASSING_PLUGIN_DECLARED_BROKEN.format(PROPS=repr(SIGMOID_PROPS)))
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=4, failed=1)
    result.stdout.re_match_lines(
        [r"_+ test_it\[activation/fine-values\] _+", r"\[XPASS\(strict\)\] stale entry"]
    )


def test_wrong_reference_derivative_fails_gradient() -> None:
    failed = failed_checks(_sigmoid_spec(reference=_WrongDerivativeRef()))
    assert "gradient" in failed
    assert "gradient (float32): autograd vs reference.derivative" in failed["gradient"]
    assert "value (" not in failed["gradient"]
    assert "at input" in failed["gradient"]


def test_wrong_backward_fails_gradient_and_gradcheck() -> None:
    failed = failed_checks(_sigmoid_spec(fast=_BadBackwardModule))
    assert {"gradient", "gradcheck"} <= set(failed)
    assert "at input" in failed["gradient"]
    assert "gradcheck in float64 failed" in failed["gradcheck"]


def test_check_raises_checkfailure_directly() -> None:
    with pytest.raises(CheckFailure, match=r"at input -?\d"):
        act_checks.check_values(_sigmoid_spec(fast=_Offset))


@pytest.mark.parametrize(
    ("props", "needle"),
    [
        ({"output_range": (0.0, 0.5)}, "outside the declared output_range"),
        ({"zero_centered": True}, "declared zero_centered=True"),
        ({"monotonic": False}, "declared non-monotonic"),
        ({"saturation": (-0.5, 0.5)}, ">= 0.05"),
        ({"dead_below": 0.0}, "no output is <= dead_below=0.0 on [-8, 8]"),
    ],
)
def test_false_property_claims_fail(props: dict, needle: str) -> None:
    failed = failed_checks(_sigmoid_spec(**props))
    assert set(failed) == {"properties"}
    assert needle in failed["properties"]


def test_relu_like_with_leaky_gradient_is_not_dead() -> None:
    spec = TechniqueSpec(
        name="fake_relu",
        family="activation",
        summary="claims dead_below but leaks",
        citation="test",
        fast=lambda: nn.LeakyReLU(1e-4),
        reference=get_spec("leaky_relu").reference,
        params=(),
        properties={
            **get_spec("leaky_relu").properties,
            "dead_below": -1e-6,
            "zero_centered": True,
        },
    )
    failed = failed_checks(spec)
    assert "properties" in failed and "not 0" in failed["properties"]


def test_ignored_hyperparameter_fails() -> None:
    leaky = get_spec("leaky_relu", "activation")
    spec = TechniqueSpec(
        name="lazy_leaky",
        family="activation",
        summary="ignores alpha",
        citation="test",
        fast=lambda alpha: nn.LeakyReLU(0.01),
        reference=leaky.reference,
        params=(Param(name="alpha", type=float, default=0.01, low=0.0, high=1.0),),
        properties=leaky.properties,
    )
    failed = failed_checks(spec)
    assert set(failed) == {"hyperparams"}
    assert "lazy_leaky(alpha=0.5) value" in failed["hyperparams"]


def test_non_default_value() -> None:
    assert act_checks.non_default_value(Param(name="a", type=bool, default=True)) is False
    p = Param(name="m", type=str, default="none", choices=("none", "tanh"))
    assert act_checks.non_default_value(p) == "tanh"
    q = Param(name="alpha", type=float, default=1.0, low=0.0, low_open=True, high=10.0)
    v = act_checks.non_default_value(q)
    assert v != 1.0 and 0.0 < v <= 10.0


def test_reference_ignoring_hyperparameter_fails() -> None:
    leaky = get_spec("leaky_relu", "activation")

    class Ref:
        @staticmethod
        def value(x, **hp):
            return torch.where(x >= 0, x, 0.01 * x)

        @staticmethod
        def derivative(x, **hp):
            return torch.where(x >= 0, torch.ones_like(x), torch.full_like(x, 0.01))

    spec = TechniqueSpec(
        name="stubborn_leaky",
        family="activation",
        summary="fast and reference both ignore alpha",
        citation="test",
        fast=lambda alpha: nn.LeakyReLU(0.01),
        reference=Ref(),
        params=(Param(name="alpha", type=float, default=0.01, low=0.0, high=1.0),),
        properties=leaky.properties,
    )
    failed = failed_checks(spec)
    assert set(failed) == {"hyperparams"}
    assert "reference.value ignores alpha=0.5" in failed["hyperparams"]


# ---------------------------------------------------------------------------------------------
# Properties that depend on the hyper-parameters (Swish-beta: x * sigmoid(beta * x))

# min_u u*sigmoid(u), from scipy (independent of the plugin): the minimum of swish is this / beta
_U = scipy.optimize.minimize_scalar(lambda u: u * scipy.special.expit(u), bounds=(-5, 0)).x
SWISH_MIN = float(_U * scipy.special.expit(_U))


class _Swish(nn.Module):
    def __init__(self, beta: float = 1.0) -> None:
        super().__init__()
        self.beta = beta

    def forward(self, x):
        return x * torch.sigmoid(self.beta * x)


class _SwishRef:
    @staticmethod
    def value(x, beta=1.0, **_):
        return x / (1 + torch.exp(-beta * x))

    @staticmethod
    def derivative(x, beta=1.0, **_):
        s = 1 / (1 + torch.exp(-beta * x))
        return s + beta * x * s * (1 - s)


def _swish_spec(output_range) -> TechniqueSpec:
    return TechniqueSpec(
        name="swish_beta",
        family="activation",
        summary="test swish-beta",
        citation="Ramachandran et al. 2017",
        fast=_Swish,
        reference=_SwishRef(),
        params=(Param(name="beta", type=float, default=1.0, low=0.1, high=1.0),),
        properties={
            "output_range": output_range,
            "zero_centered": True,
            "monotonic": False,
            "saturation": None,
            "dead_below": None,
            "kinks": (),
        },
    )


def test_properties_for_instantiates_callable_properties() -> None:
    spec = _swish_spec(lambda beta, **_: (SWISH_MIN / beta * (1 + 1e-9), math.inf))
    assert abs(SWISH_MIN + 0.278464542761074) < 1e-9
    assert spec.properties_for(beta=0.5)["output_range"][0] == pytest.approx(2 * SWISH_MIN)
    assert spec.properties_for()["output_range"][0] == pytest.approx(SWISH_MIN)
    assert spec.properties_for(beta=0.5)["monotonic"] is False
    described = spec.describe()
    assert described["properties"]["output_range"][0] == pytest.approx(SWISH_MIN)
    assert described["param_dependent_properties"] == ["output_range"]


def test_beta_dependent_output_range_passes_and_a_fixed_one_fails() -> None:
    good = _swish_spec(lambda beta, **_: (SWISH_MIN / beta * (1 + 1e-9), math.inf))
    act_checks.check_properties(good)
    # declared at beta = 1 only: at beta = 0.55 the minimum is SWISH_MIN / 0.55 < SWISH_MIN
    fixed = _swish_spec((SWISH_MIN * (1 + 1e-9), math.inf))
    with pytest.raises(CheckFailure, match=r"swish_beta\(beta=0.55\): output .* outside"):
        act_checks.check_properties(fixed)
