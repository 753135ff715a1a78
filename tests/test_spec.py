"""The technique contract: typed hyper-parameters, clear errors, safe argument parsing."""

from __future__ import annotations

import pytest

from techbench.techniques.spec import (
    Param,
    ParamError,
    TechniqueError,
    TechniqueSpec,
    format_technique_arg,
    parse_technique_arg,
    resolve,
)


def make(**kw):
    base = dict(
        name="leaky",
        family="activation",
        summary="Leaky ReLU.",
        fast=lambda alpha, inplace: ("built", alpha, inplace),
        reference=object(),
        citation="Maas et al. 2013",
        params=(
            Param(name="alpha", type=float, default=0.01, low=0.0, high=1.0),
            Param(name="inplace", type=bool, default=False),
        ),
    )
    base.update(kw)
    return TechniqueSpec(**base)


def test_create_passes_validated_defaults_and_overrides():
    spec = make()
    assert spec.create() == ("built", 0.01, False)
    assert spec.create(alpha=1) == ("built", 1.0, False)
    assert isinstance(spec.create(alpha=1)[1], float)


@pytest.mark.parametrize(
    ("overrides", "fragments"),
    [
        ({"alpha": "big"}, ["activation/leaky", "'alpha'", "'big'", "float in [0.0, 1.0]"]),
        ({"alpha": 2.0}, ["'alpha'", "2.0", "above the allowed range", "[0.0, 1.0]"]),
        ({"alpha": -0.5}, ["below the allowed range"]),
        ({"alpha": float("nan")}, ["NaN"]),
        ({"inplace": 1}, ["'inplace'", "expected bool"]),
        ({"alhpa": 0.1}, ["unknown parameter 'alhpa'", "alpha, inplace"]),
    ],
)
def test_bad_hyperparameter_names_technique_parameter_value_and_allowed(overrides, fragments):
    with pytest.raises(ParamError) as info:
        make().create(**overrides)
    for fragment in fragments:
        assert fragment in str(info.value)


def test_int_param_accepts_integral_float_rejects_fraction_and_bool():
    p = Param(name="depth", type=int, default=2, low=1)
    assert p.validate("m", 3.0) == 3
    with pytest.raises(ParamError, match="expected int"):
        p.validate("m", 2.5)
    with pytest.raises(ParamError, match="expected int"):
        p.validate("m", True)
    with pytest.raises(ParamError, match="below"):
        p.validate("m", 0)


def test_choices_and_open_bounds():
    p = Param(name="mode", type=str, default="fan_in", choices=("fan_in", "fan_out"))
    with pytest.raises(ParamError, match="one of 'fan_in', 'fan_out'"):
        p.validate("he", "fan_avg")
    q = Param(name="p", type=float, default=0.5, low=0.0, high=1.0, high_open=True)
    assert q.allowed() == "float in [0.0, 1.0)"
    with pytest.raises(ParamError):
        q.validate("dropout", 1.0)


def test_spec_is_frozen_and_properties_read_only():
    spec = make(properties={"zero_centered": False})
    with pytest.raises(AttributeError):
        spec.name = "other"  # type: ignore[misc]
    with pytest.raises(TypeError):
        spec.properties["zero_centered"] = True  # type: ignore[index]


@pytest.mark.parametrize(
    ("kw", "fragment"),
    [
        ({"family": "activations"}, "unknown family"),
        ({"name": "Bad Name"}, "must be lower case"),
        ({"summary": "two\nlines"}, "one non-empty line"),
        (
            {"params": (Param(name="a", type=float, default=5.0, high=1.0),)},
            "above the allowed range",
        ),
    ],
)
def test_invalid_specs_are_rejected(kw, fragment):
    with pytest.raises(TechniqueError, match=fragment):
        make(**kw)


def test_lazy_string_references_resolve_on_use():
    spec = make(fast="math:sqrt", params=())
    assert spec.load_fast()(9.0) == 3.0
    with pytest.raises(TechniqueError, match="module:attr"):
        resolve("no_colon_here")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("relu", ("relu", {})),
        ("normal(std=0.01)", ("normal", {"std": 0.01})),
        ("sgd( lr = 1e-3 , nesterov=True)", ("sgd", {"lr": 0.001, "nesterov": True})),
        ("gelu(approximate='tanh')", ("gelu", {"approximate": "tanh"})),
        ("normalizer/none", ("normalizer/none", {})),
    ],
)
def test_parse_technique_arg(text, expected):
    assert parse_technique_arg(text) == expected


@pytest.mark.parametrize(
    "text",
    ["normal(0.01)", "normal(std=__import__('os'))", "normal(**x)", "normal(std=", "1bad"],
)
def test_parse_technique_arg_refuses_non_literals(text):
    with pytest.raises(ParamError):
        parse_technique_arg(text)


def test_format_round_trips():
    name, params = parse_technique_arg("leaky_relu(alpha=0.1)")
    assert format_technique_arg(name, params) == "leaky_relu(alpha=0.1)"
    assert parse_technique_arg(format_technique_arg("x", {"s": "a,b"})) == ("x", {"s": "a,b"})
