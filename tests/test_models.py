"""Built-in models against hand-written float64 forward passes and closed-form parameter counts,
and the model conformance checks, including models that must fail them."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from torch import nn

from techbench.techniques.families import ModelParts
from techbench.techniques.registry import get_spec
from techbench.techniques.spec import Param, TechniqueSpec
from techbench.testing import checks_for, failed_checks
from techbench_builtins import models_impl


def _parts(**kw) -> ModelParts:
    base = dict(
        activation=nn.ReLU,
        weight_init=lambda t: nn.init.normal_(t, 0.0, 0.3),
        bias_init=lambda t: nn.init.uniform_(t, -0.1, 0.1),
    )
    return ModelParts(**{**base, **kw})


@pytest.mark.parametrize(
    ("shape", "depth", "width"),
    [((64,), 2, 128), ((1, 8, 8), 1, 7), ((20,), 10, 500), ((5,), 20, 3)],
)
def test_mlp_parameter_count_closed_form(shape, depth, width) -> None:
    model = get_spec("mlp").create(shape, 10, _parts(), depth=depth, width=width)
    d = math.prod(shape)
    # layer by layer: (fan_in + 1) * fan_out
    fans = [d] + [width] * depth + [10]
    expected = sum((a + 1) * b for a, b in itertools.pairwise(fans))
    assert sum(p.numel() for p in model.parameters()) == expected
    assert len(model.weight_layers) == depth + 1 and len(model.activation_layers) == depth


def test_mlp_forward_matches_float64_formula() -> None:
    torch.manual_seed(0)
    model = get_spec("mlp").create((6,), 3, _parts(activation=nn.Tanh), depth=3, width=5).double()
    x = torch.randn(4, 6, dtype=torch.float64)
    h = x
    for i, layer in enumerate(model.weight_layers):
        h = h @ layer.weight.T + layer.bias
        if i < 3:
            h = torch.tanh(h)
    torch.testing.assert_close(model(x), h, rtol=1e-12, atol=1e-12)


def test_mlp_norm_placement_and_dropout() -> None:
    torch.manual_seed(0)
    parts = _parts(normalizer=nn.LayerNorm, norm_placement="after", dropout=lambda: nn.Dropout(0.5))
    model = get_spec("mlp").create((4,), 2, parts, depth=1, width=3).double().eval()
    x = torch.randn(5, 4, dtype=torch.float64)
    w0, w1 = model.weight_layers
    h = torch.relu(x @ w0.weight.T + w0.bias)
    h = (h - h.mean(1, keepdim=True)) / torch.sqrt(h.var(1, unbiased=False, keepdim=True) + 1e-5)
    torch.testing.assert_close(model(x), h @ w1.weight.T + w1.bias)
    kinds = [type(m).__name__ for m in model.body]
    assert kinds == ["Linear", "ReLU", "LayerNorm", "Dropout", "Linear"]


def test_identity_normalizer_is_not_inserted() -> None:
    model = get_spec("mlp").create(
        (4,), 2, _parts(normalizer=lambda n: nn.Identity()), depth=2, width=3
    )
    assert not any(isinstance(m, nn.Identity) for m in model.modules())


def test_builtin_none_normalizer_is_left_out_of_the_network() -> None:
    none = get_spec("none", "normalizer")
    torch.manual_seed(0)
    with_none = get_spec("mlp").create(
        (4,), 2, _parts(normalizer=lambda n: none.create(n)), depth=3, width=5
    )
    torch.manual_seed(0)
    without = get_spec("mlp").create((4,), 2, _parts(), depth=3, width=5)
    assert [type(m) for m in with_none.modules()] == [type(m) for m in without.modules()]
    x = torch.randn(7, 4)
    torch.testing.assert_close(with_none(x), without(x))


@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 32, 32), (1, 8, 8)])
def test_cnn_shapes(shape) -> None:
    parts = _parts(normalizer=lambda n: nn.GroupNorm(1, n))
    model = get_spec("cnn").create(shape, 10, parts, hidden=32)
    assert model(torch.randn(2, *shape)).shape == (2, 10)
    assert [type(m).__name__ for m in model.weight_layers] == [
        "Conv2d",
        "Conv2d",
        "Linear",
        "Linear",
    ]
    assert len(model.activation_layers) == 3


def test_cnn_needs_images() -> None:
    with pytest.raises(ValueError, match=r"\(C, H, W\)"):
        get_spec("cnn").create((64,), 10, _parts())


def test_resmlp_forward_matches_formula() -> None:
    torch.manual_seed(1)
    model = get_spec("resmlp").create((6,), 2, _parts(), blocks=2, width=4).double()
    x = torch.randn(3, 6, dtype=torch.float64)
    ws = model.weight_layers
    lin = [lambda h, w=w: h @ w.weight.T + w.bias for w in ws]
    h = torch.relu(lin[0](x))
    for b in range(2):
        h = h + lin[2 + 2 * b](torch.relu(lin[1 + 2 * b](h)))
    torch.testing.assert_close(model(x), lin[-1](h))
    assert len(ws) == 6 and len(model.activation_layers) == 3


def test_deep_narrow_mlp_trains_a_step() -> None:
    model = get_spec("mlp").create((8,), 2, _parts(), depth=20, width=4)
    out = model(torch.randn(16, 8))
    out.sum().backward()
    assert all(p.grad is not None for p in model.parameters())


# ---------------------------------------------------------------- conformance


@pytest.mark.parametrize("name", ["mlp", "cnn", "resmlp"])
def test_builtin_models_have_every_model_check(name: str) -> None:
    """Every check runs once, in test_builtins; here only that none is missing."""
    assert {c.name for c in checks_for(f"model/{name}")} >= {
        "output_shape",
        "initialization_applied",
        "parts_used_in_order",
        "parameter_count",
        "scale_params",
    }


def _spec(fast, **props) -> TechniqueSpec:
    return TechniqueSpec(
        name="bad",
        family="model",
        summary="a deliberately wrong model",
        fast=fast,
        params=(Param(name="depth", type=int, default=2), Param(name="width", type=int, default=8)),
        properties={"inputs": ("vector",), **props},
    )


def _failures(fast, **props) -> dict[str, str]:
    return failed_checks(_spec(fast, **props))


def test_correct_model_passes() -> None:
    assert (
        _failures(models_impl.MLP, parameter_count="techbench_builtins.models:mlp_parameter_count")
        == {}
    )


def test_model_ignoring_the_initializer_fails() -> None:
    class NoInit(models_impl.MLP):
        def initialize(self, parts):
            pass

    assert "not filled by parts.weight_init" in _failures(NoInit)["initialization_applied"]


def test_model_with_wrong_norm_placement_fails() -> None:
    def always_before(input_shape, num_outputs, parts, **hp):
        fixed = ModelParts(
            parts.activation,
            parts.weight_init,
            parts.bias_init,
            parts.normalizer,
            "before",
            parts.dropout,
        )
        return models_impl.MLP(input_shape, num_outputs, fixed, **hp)

    message = _failures(always_before)["parts_used_in_order"]
    assert "norm_placement='after'" in message and "ran 'NADNAD'" in message


def test_model_with_own_activation_fails() -> None:
    def relu_always(input_shape, num_outputs, parts, **hp):
        fixed = ModelParts(
            nn.ReLU,
            parts.weight_init,
            parts.bias_init,
            parts.normalizer,
            parts.norm_placement,
            parts.dropout,
        )
        return models_impl.MLP(input_shape, num_outputs, fixed, **hp)

    assert "modules from parts.activation" in _failures(relu_always)["parts_used_in_order"]


def test_model_with_hidden_parameters_or_wrong_count_fails() -> None:
    class Extra(models_impl.MLP):
        def __init__(self, *a, **kw):
            super().__init__(*a, **kw)
            self.scale = nn.Parameter(torch.ones(3))

    assert "outside the declared layers" in _failures(Extra)["parameter_count"]
    wrong = _failures(
        models_impl.MLP, parameter_count="techbench_builtins.models:mlp_parameter_count"
    )
    assert wrong == {}
    off_by_one = _failures(
        lambda s, k, p, depth, width: models_impl.MLP(s, k, p, depth=depth, width=width + 1),
        parameter_count="techbench_builtins.models:mlp_parameter_count",
    )
    assert "the closed form" in off_by_one["parameter_count"]


def test_model_without_contract_lists_fails() -> None:
    def plain(input_shape, num_outputs, parts, **hp):
        return nn.Sequential(nn.Linear(input_shape[0], num_outputs))

    assert "no list attribute 'weight_layers'" in _failures(plain)["output_shape"]


def test_scale_params_must_name_a_parameter_that_grows_the_network() -> None:
    assert "scale_params" not in _failures(models_impl.MLP, scale_params={"width": "width"})
    assert (
        "not an int parameter"
        in _failures(models_impl.MLP, scale_params={"width": "widht"})["scale_params"]
    )

    class Fixed(models_impl.MLP):  # ignores its width: doubling it adds nothing
        def __init__(self, shape, outputs, parts, depth: int = 2, width: int = 8) -> None:
            super().__init__(shape, outputs, parts, depth=depth, width=8)

    assert "no more than" in _failures(Fixed, scale_params={"width": "width"})["scale_params"]
