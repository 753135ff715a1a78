"""Initializers: built-ins against the formulas, torch.nn.init and the conformance checks.

Expected values are computed here from the formulas (fans by hand from the shape) or taken from
torch.nn.init itself, never from the code under test. Deliberately wrong plugins must fail the
conformance checks with a message saying what differed.
"""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats
from torch import nn

from techbench.techniques.registry import get_spec, list_techniques
from techbench.techniques.spec import Param, ParamError, TechniqueSpec
from techbench.testing import checks_for, failed_checks
from techbench.testing.initializer import ExactTarget, OrthogonalTarget, UnitVarianceTarget, mlp
from techbench_builtins import initializers_impl as impl

NAMES = [
    "zeros",
    "constant",
    "normal",
    "small_normal",
    "large_normal",
    "uniform",
    "lecun_normal",
    "lecun_uniform",
    "xavier_normal",
    "xavier_uniform",
    "he_normal",
    "he_uniform",
    "orthogonal",
    "identity",
    "lsuv",
    "small_positive",
]


def spec_of(name: str) -> TechniqueSpec:
    return get_spec(name, "initializer")


# ------------------------------------------------------------------------------------ registry


def test_every_builtin_is_registered_with_metadata() -> None:
    names = {s.name for s in list_techniques("initializer")}
    assert set(NAMES) <= names
    for name in NAMES:
        spec = spec_of(name)
        assert spec.family == "initializer"
        assert spec.citation and spec.summary
        assert isinstance(spec.properties["data_dependent"], bool)
        assert spec.properties["applies_to"] in ("weight", "bias", "any")
    assert spec_of("lsuv").properties["data_dependent"] is True
    assert spec_of("small_positive").properties["applies_to"] == "bias"
    assert "Saxe" in (spec_of("orthogonal").citation or "")
    assert "Mishkin" in (spec_of("lsuv").citation or "")


def test_spec_module_does_not_import_torch() -> None:
    code = "import sys, techbench_builtins.initializers; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_hyperparameters_are_validated() -> None:
    with pytest.raises(ParamError, match="mode"):
        spec_of("he_normal").create(mode="fan_avg")
    with pytest.raises(ParamError, match="std"):
        spec_of("normal").create(std=0.0)
    with pytest.raises(ParamError, match="tol"):
        spec_of("lsuv").create(tol=1.5)
    with pytest.raises(ValueError, match="a < b"):
        spec_of("uniform").create(a=1.0, b=0.5)


# ----------------------------------------------------------------------------------------- fans


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(1, 7), min_size=2, max_size=5))
def test_fans_match_torch(shape: list[int]) -> None:
    expected = nn.init._calculate_fan_in_and_fan_out(torch.empty(shape))
    assert impl.fans(shape) == expected


def test_fans_of_a_bias_is_its_length() -> None:
    assert impl.fans((37,)) == (37, 37)
    with pytest.raises(ValueError):
        impl.fans(())


# ------------------------------------------------------------------- variance vs the formulas

# (shape, fan_in, fan_out) with the fans written out by hand.
SHAPES = [((300, 700), 700, 300), ((40, 20, 3, 5), 20 * 15, 40 * 15)]


def _sample(name: str, shape: tuple[int, ...], seed: int = 0, **hp) -> torch.Tensor:
    torch.manual_seed(seed)
    return spec_of(name).create(**hp)(torch.empty(shape))


def _assert_variance(w: torch.Tensor, var: float) -> None:
    x = w.double().reshape(-1)
    n = x.numel()
    # 5 standard errors of the sample variance (kurtosis <= 0 for both laws here)
    assert abs(float(x.var()) / var - 1) < 5 * math.sqrt(2 / n), (float(x.var()), var)
    assert abs(float(x.mean())) < 5 * math.sqrt(var / n)


@pytest.mark.parametrize(("shape", "fan_in", "fan_out"), SHAPES)
@pytest.mark.parametrize("law", ["normal", "uniform"])
def test_variances_follow_the_formulas(shape, fan_in: int, fan_out: int, law: str) -> None:
    cases = [
        (f"lecun_{law}", {}, 1 / fan_in),
        (f"xavier_{law}", {}, 2 / (fan_in + fan_out)),
        (f"xavier_{law}", {"gain": 1.5}, 1.5**2 * 2 / (fan_in + fan_out)),
        (f"he_{law}", {}, 2 / fan_in),
        (f"he_{law}", {"mode": "fan_out"}, 2 / fan_out),
        (f"he_{law}", {"nonlinearity": "leaky_relu", "negative_slope": 0.2}, 2 / (1.04 * fan_in)),
    ]
    for name, hp, var in cases:
        w = _sample(name, shape, **hp)
        _assert_variance(w, var)
        if law == "uniform":
            assert float(w.abs().max()) <= math.sqrt(3 * var) * (1 + 1e-6)
            assert float(w.abs().max()) > 0.99 * math.sqrt(3 * var)
        else:
            assert (
                stats.kstest(w.reshape(-1).numpy(), stats.norm(0, math.sqrt(var)).cdf).pvalue > 1e-4
            )


def test_presets_follow_the_notes() -> None:
    _assert_variance(_sample("small_normal", (400, 500)), 0.01**2)
    _assert_variance(_sample("large_normal", (400, 500)), 1.0)
    b = _sample("small_positive", (128,))
    assert torch.equal(b, torch.full((128,), 0.01))
    assert torch.equal(_sample("zeros", (3, 4)), torch.zeros(3, 4))
    assert torch.equal(_sample("constant", (5,), value=-2.5), torch.full((5,), -2.5))
    u = _sample("uniform", (400, 500), a=-0.3, b=0.1)
    assert float(u.min()) >= -0.3 and float(u.max()) < 0.1
    _assert_variance(u - (-0.1), 0.4**2 / 12)


def test_init_fills_a_parameter_in_place_without_history() -> None:
    layer = nn.Linear(30, 20)
    ptr = layer.weight.data_ptr()
    out = spec_of("he_normal").create()(layer.weight)
    assert out is layer.weight and out.data_ptr() == ptr
    assert layer.weight.grad_fn is None and layer.weight.requires_grad


# ---------------------------------------------------------------- equal to torch.nn.init's own

TORCH_CASES = [
    ("normal", {"mean": 0.5, "std": 0.2}, lambda t: nn.init.normal_(t, 0.5, 0.2)),
    ("small_normal", {}, lambda t: nn.init.normal_(t, 0.0, 0.01)),
    ("large_normal", {}, lambda t: nn.init.normal_(t, 0.0, 1.0)),
    ("uniform", {"a": -0.2, "b": 0.3}, lambda t: nn.init.uniform_(t, -0.2, 0.3)),
    ("zeros", {}, nn.init.zeros_),
    ("constant", {"value": 0.7}, lambda t: nn.init.constant_(t, 0.7)),
    ("small_positive", {}, lambda t: nn.init.constant_(t, 0.01)),
    ("xavier_normal", {"gain": 1.3}, lambda t: nn.init.xavier_normal_(t, gain=1.3)),
    ("xavier_uniform", {"gain": 1.3}, lambda t: nn.init.xavier_uniform_(t, gain=1.3)),
    ("he_normal", {}, lambda t: nn.init.kaiming_normal_(t, nonlinearity="relu")),
    (
        "he_uniform",
        {"mode": "fan_out", "nonlinearity": "leaky_relu", "negative_slope": 0.3},
        lambda t: nn.init.kaiming_uniform_(t, a=0.3, mode="fan_out", nonlinearity="leaky_relu"),
    ),
    ("lecun_normal", {}, lambda t: nn.init.kaiming_normal_(t, nonlinearity="linear")),
    ("lecun_uniform", {}, lambda t: nn.init.kaiming_uniform_(t, nonlinearity="linear")),
    ("orthogonal", {"gain": 2.0}, lambda t: nn.init.orthogonal_(t, gain=2.0)),
    ("lsuv", {}, nn.init.orthogonal_),
]


@pytest.mark.parametrize(("name", "hp", "torch_init"), TORCH_CASES, ids=[c[0] for c in TORCH_CASES])
@pytest.mark.parametrize("shape", [(64, 48), (16, 8, 3, 3)])
def test_same_seed_same_tensor_as_torch(name: str, hp, torch_init, shape) -> None:
    ours = _sample(name, shape, seed=3, **hp)
    torch.manual_seed(3)
    theirs = torch_init(torch.empty(shape))
    torch.testing.assert_close(ours, theirs, rtol=2e-6, atol=1e-7)


@pytest.mark.parametrize(
    "shape", [(5, 5), (3, 6), (6, 3), (4, 4, 3), (6, 4, 3, 3), (3, 5, 3, 3, 3)]
)
def test_identity_equals_torch_eye_and_dirac(shape) -> None:
    ours = _sample("identity", shape)
    expected = torch.empty(shape)
    (nn.init.eye_ if len(shape) == 2 else nn.init.dirac_)(expected)
    assert torch.equal(ours, expected)


def test_identity_conv_is_the_identity_map() -> None:
    conv = nn.Conv2d(4, 4, 3, padding=1, bias=False)
    spec_of("identity").create()(conv.weight)
    x = torch.randn(2, 4, 7, 7)
    torch.testing.assert_close(conv(x), x)


@pytest.mark.parametrize("shape", [(300, 100), (100, 300), (12, 5, 3, 3)])
def test_orthogonal_rows_or_columns_are_orthonormal(shape) -> None:
    gain = 0.7
    w = _sample("orthogonal", shape, gain=gain).reshape(shape[0], -1).double()
    rows, cols = w.shape
    gram = w @ w.T if rows <= cols else w.T @ w
    eye = torch.eye(min(rows, cols), dtype=torch.float64)
    torch.testing.assert_close(gram, gain**2 * eye, rtol=0, atol=1e-5)


@pytest.mark.parametrize("name", ["orthogonal", "identity", "lsuv"])
def test_weight_only_initializers_reject_a_bias(name: str) -> None:
    with pytest.raises(ValueError, match="at least 2"):
        spec_of(name).create()(torch.empty(10))


# -------------------------------------------------------------------------------------- LSUV


def layer_output_variances(model: nn.Module, x: torch.Tensor) -> list[float]:
    """Population variance of each Linear/Conv output, recomputed here with numpy."""
    outs: list[np.ndarray] = []
    handles = [
        m.register_forward_hook(lambda mod, args, out: outs.append(out.detach().numpy()))
        for m in model.modules()
        if isinstance(m, nn.Linear | nn.Conv2d)
    ]
    with torch.no_grad():
        model(x)
    for h in handles:
        h.remove()
    return [float(np.var(o.astype(np.float64))) for o in outs]


def test_lsuv_on_a_cnn_reaches_unit_variance_per_layer() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 16, 3, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(16 * 8 * 8, 10),
    )
    x = torch.randn(32, 3, 8, 8) * 5 + 2
    init = spec_of("lsuv").create(tol=0.01)
    records = init.fit(model, x)
    assert [r.name for r in records] == ["0", "2", "5"]
    assert all(r.converged for r in records)
    for var in layer_output_variances(model, x):
        assert abs(var - 1) < 0.01


def test_lsuv_on_a_linear_chain_without_bias_is_exact_in_one_step() -> None:
    # Var(c W x) = c^2 Var(W x): one rescaling by 1/sqrt(Var) gives variance 1.
    torch.manual_seed(1)
    model = nn.Sequential(*[nn.Linear(40, 40, bias=False) for _ in range(5)])
    x = torch.randn(100, 40) * 3
    records = spec_of("lsuv").create(tol=1e-6, max_iter=3).fit(model, x)
    assert [r.iterations for r in records] == [1] * 5
    for var in layer_output_variances(model, x):
        assert abs(var - 1) < 1e-5


def test_lsuv_respects_max_iter_layers_reinit_and_leaves_bias_and_mode() -> None:
    torch.manual_seed(2)
    model = mlp(nn.Tanh, (8, 16, 16, 4))
    model.train()
    model[2].bias.data.fill_(3.0)  # a large bias: unit variance is out of reach by scaling
    x = torch.randn(64, 8)
    first = model[0].weight.detach().clone()
    records = spec_of("lsuv").create(max_iter=2).fit(model, x, layers=[model[2]], reinit=False)
    assert len(records) == 1 and records[0].iterations <= 2
    assert torch.equal(model[0].weight, first)
    assert torch.equal(model[2].bias, torch.full((16,), 3.0))
    assert model.training and model[0].training


def test_lsuv_fit_wants_the_model_not_a_list_of_layers() -> None:
    model = mlp(nn.ReLU, (4, 4, 2))
    with pytest.raises(TypeError, match="model\\(x\\)"):
        spec_of("lsuv").create().fit([model[0], model[2]], torch.randn(8, 4))


# ---------------------------------------------------------- the notes' 10-layer experiment


def _tanh_activations(name: str) -> list[torch.Tensor]:
    torch.manual_seed(0)
    init = spec_of(name).create()
    h = torch.randn(1000, 500)
    out = []
    for _ in range(10):
        w = init(torch.empty(500, 500))
        h = torch.tanh(h @ w.T)
        out.append(h)
    return out


def test_seed_003_ten_layer_tanh_experiment() -> None:
    """Seed 003: N(0, 0.01^2) activations collapse to 0, N(0, 1) saturate, Xavier stays healthy."""
    small = _tanh_activations("small_normal")
    assert float(small[-1].std()) < 1e-6
    large = _tanh_activations("large_normal")
    assert float((large[-1].abs() > 0.99).float().mean()) > 0.9
    xavier = _tanh_activations("xavier_normal")
    assert all(0.1 < float(h.std()) < 0.9 for h in xavier)


# ----------------------------------------------------------------- broken plugins must fail


def _broken(name: str, fast, reference, *, params=(), **properties) -> TechniqueSpec:
    props = {"data_dependent": False, "applies_to": "weight", **properties}
    return TechniqueSpec(
        name=name,
        family="initializer",
        summary="deliberately wrong",
        citation="test",
        fast=fast,
        reference=reference,
        params=params,
        properties=props,
    )


class _Fill:
    def __init__(self, fill) -> None:
        self.fill = fill

    def __call__(self, tensor: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            self.fill(tensor)
        return tensor


def test_he_with_lecun_variance_fails_the_variance_test() -> None:
    spec = _broken(
        "he_wrong",
        lambda **hp: impl.LecunNormal(),
        lambda shape, **hp: impl.he_normal_target(
            shape, mode="fan_in", nonlinearity="relu", negative_slope=0.0
        ),
    )
    failures = failed_checks(spec)
    assert set(failures) == {"target"}
    assert "sample variance" in failures["target"] or "Kolmogorov" in failures["target"]
    assert "(512, 1024)" in failures["target"]


def test_variance_off_by_two_percent_fails() -> None:
    spec = _broken(
        "xavier_wrong",
        lambda **hp: impl.XavierNormal(gain=1.02),
        lambda shape, **hp: impl.xavier_normal_target(shape, gain=1.0),
    )
    message = failed_checks(spec)["target"]
    assert "sample variance" in message and "ratio 1.04" in message


def test_uniform_declared_as_normal_fails_the_ks_test() -> None:
    spec = _broken(
        "he_shape_wrong",
        lambda **hp: impl.HeUniform(),
        lambda shape, **hp: impl.he_normal_target(
            shape, mode="fan_in", nonlinearity="relu", negative_slope=0.0
        ),
    )
    assert "Kolmogorov-Smirnov" in failed_checks(spec)["target"]


def test_fans_ignoring_the_kernel_fail_on_the_conv_shape() -> None:
    def fill(t: torch.Tensor) -> None:
        t.normal_(0.0, math.sqrt(2.0 / t.shape[1]))

    spec = _broken(
        "he_conv_wrong",
        lambda **hp: _Fill(fill),
        lambda shape, **hp: impl.he_normal_target(
            shape, mode="fan_in", nonlinearity="relu", negative_slope=0.0
        ),
    )
    message = failed_checks(spec)["target"]
    assert "(96, 32, 3, 3)" in message


def test_ignoring_a_hyperparameter_fails() -> None:
    # negative_slope ignored: fine at the defaults (relu), caught by the alternative setting.
    def fast(mode, nonlinearity, negative_slope):
        return impl.HeNormal(mode=mode, nonlinearity=nonlinearity, negative_slope=0.0)

    spec = _broken(
        "he_slope_wrong", fast, impl.he_normal_target, params=spec_of("he_normal").params
    )
    message = failed_checks(spec)["target"]
    assert "negative_slope=0.5" in message


def test_non_orthogonal_orthogonal_fails() -> None:
    def fill(t: torch.Tensor) -> None:
        t.normal_(0.0, 1.0 / math.sqrt(t[0].numel()))

    spec = _broken(
        "orth_wrong", lambda **hp: _Fill(fill), lambda shape, **hp: OrthogonalTarget(1.0)
    )
    message = failed_checks(spec)["target"]
    assert "W W^T" in message or "W^T W" in message


def test_wrong_dirac_centre_fails_the_exact_check() -> None:
    def fill(t: torch.Tensor) -> None:
        t.zero_()
        for i in range(min(t.shape[0], t.shape[1])):
            t[(i, i, *([0] * (t.dim() - 2)))] = 1.0

    spec = _broken("dirac_wrong", lambda **hp: _Fill(fill), impl.identity_target)
    message = failed_checks(spec)["target"]
    assert "(5, 3, 3, 3)" in message and "differ" in message


def test_constant_off_by_1e_3_fails() -> None:
    spec = _broken(
        "const_wrong",
        lambda **hp: impl.Constant(0.011),
        impl.small_positive_target,
        applies_to="bias",
    )
    message = failed_checks(spec)["target"]
    assert "constant 0.01" in message and "0.011" in message


def test_private_generator_is_not_reproducible() -> None:
    def fill(t: torch.Tensor) -> None:
        g = torch.Generator().manual_seed(int.from_bytes(np.random.bytes(4), "little"))
        t.copy_(torch.randn(t.shape, generator=g) / math.sqrt(t.shape[1]))

    spec = _broken("rng_wrong", lambda **hp: _Fill(fill), impl.lecun_normal_target)
    assert "not reproducible" in failed_checks(spec)["reproducible"]


def test_reseeding_the_global_rng_is_caught() -> None:
    def fill(t: torch.Tensor) -> None:
        torch.manual_seed(0)
        t.normal_(0.0, 1.0 / math.sqrt(t.shape[1]))

    spec = _broken("reseed_wrong", lambda **hp: _Fill(fill), impl.lecun_normal_target)
    assert "ignores torch's global RNG" in failed_checks(spec)["reproducible"]


def test_out_of_place_and_autograd_unsafe_initializers_fail() -> None:
    def copy(tensor: torch.Tensor) -> torch.Tensor:
        return torch.randn(tensor.shape) / math.sqrt(tensor.shape[1])

    spec = _broken("copy_wrong", lambda **hp: copy, impl.lecun_normal_target)
    assert "must return the tensor it filled" in failed_checks(spec)["in_place"]

    def no_grad_missing(tensor: torch.Tensor) -> torch.Tensor:
        return tensor.normal_(0.0, 1.0 / math.sqrt(tensor.shape[1]))

    spec = _broken("grad_wrong", lambda **hp: no_grad_missing, impl.lecun_normal_target)
    assert "nn.Parameter" in failed_checks(spec)["in_place"]


def test_undeclared_properties_fail() -> None:
    spec = TechniqueSpec(
        name="props_wrong",
        family="initializer",
        summary="no properties",
        citation="test",
        fast=lambda **hp: impl.LecunNormal(),
        reference=impl.lecun_normal_target,
    )
    assert "data_dependent" in failed_checks(spec)["properties"]
    spec = _broken(
        "fit_missing",
        lambda **hp: impl.Orthogonal(),
        lambda shape, **hp: UnitVarianceTarget(OrthogonalTarget(1.0)),
        data_dependent=True,
    )
    assert "no fit()" in failed_checks(spec)["properties"]


class _LazyLSUV(impl.LSUV):
    """Orthogonal start, but forgets to rescale."""

    def fit(self, model, x, layers=None, reinit=True):
        for m in model.modules():
            if isinstance(m, nn.Linear):
                self(m.weight)
        return []


def test_lsuv_that_does_not_rescale_fails() -> None:
    params = (Param(name="tol", type=float, default=0.1, low=0.0, high=1.0, low_open=True),)
    spec = _broken(
        "lsuv_wrong",
        lambda tol: _LazyLSUV(tol=tol),
        lambda shape, tol: UnitVarianceTarget(OrthogonalTarget(1.0), 1.0, tol),
        params=params,
        data_dependent=True,
    )
    message = failed_checks(spec)["unit_output_variance"]
    assert "output variance of layer" in message and "tanh" in message


def test_targets_are_well_formed() -> None:
    assert isinstance(impl.identity_target((3, 3)), ExactTarget)
    np.testing.assert_array_equal(impl.identity_target((2, 3)).values, np.eye(2, 3))
    target = impl.he_uniform_target((10, 30), mode="fan_in", nonlinearity="relu", negative_slope=0)
    assert math.isclose(float(target.var()), 2 / 30)
    assert math.isclose(float(target.support()[1]), math.sqrt(6 / 30))


STATISTICAL = ("target", "unit_output_variance")


@pytest.mark.parametrize("name", ["he_uniform", "xavier_normal", "orthogonal", "lsuv"])
def test_statistical_checks_pass_correct_plugins_under_other_seeds(name: str, monkeypatch) -> None:
    """The verdict is not an accident of the fixed seed (false-alarm rate <= 1e-3 per check).

    Only the statistical checks: the others do not depend on the seed, and every check runs at
    the shipped seed once, in test_builtins.
    """
    from techbench.testing import initializer as checks_module

    spec = spec_of(name)
    statistical = [c for c in checks_for(spec) if c.name in STATISTICAL]
    assert statistical
    for seed in range(1, 9):
        monkeypatch.setattr(checks_module, "SEED", seed * 7919)
        for check in statistical:
            try:
                check(spec)
            except AssertionError as exc:
                raise AssertionError(f"SEED = {seed * 7919}: {exc}") from exc
