"""Parameter roles (issue 24): the built-in models' roles counted from their architecture, a
model's own declaration, the error for an untold parameter, and the engine's tags on one-trial
parameters and stacked leaves."""

from __future__ import annotations

from collections import Counter

import pytest
import torch
from torch import nn

from techbench.engine.trial import run_stack
from techbench.schema import Trial
from techbench.techniques.families import ModelParts
from techbench.techniques.registry import default_registry
from techbench.techniques.roles import RoleError, parameter_roles, role_of
from techbench.testing.core import CheckFailure
from techbench.testing.model import check_parameter_roles


def _parts(normalizer: bool = False) -> ModelParts:
    return ModelParts(
        activation=nn.ReLU,
        weight_init=lambda t: t,
        bias_init=lambda t: t,
        normalizer=(lambda n: nn.LayerNorm(n)) if normalizer else None,
        norm_placement="before",
        dropout=None,
    )


def _model(name: str, shape: tuple[int, ...], normalizer: bool = False, **hp: object) -> nn.Module:
    spec = default_registry().get_spec(name, "model")
    return spec.create(shape, 5, _parts(normalizer), **hp)


@pytest.mark.parametrize("depth", [1, 2, 4])
def test_mlp_roles_follow_its_layers(depth: int) -> None:
    roles = parameter_roles(_model("mlp", (8,), normalizer=True, depth=depth, width=16))
    # depth hidden layers: depth + 1 weight layers, first reads the data, last is the readout
    assert Counter(roles.values()) == Counter(
        input=1,
        hidden=depth - 1,
        readout=1,
        bias=depth + 1,
        norm=2 * depth,  # LayerNorm gain and shift per hidden layer
    )


def test_transformer_roles_embeddings_are_input_blocks_hidden_head_readout() -> None:
    m = _model("transformer", (12,), normalizer=True, width=16, depth=3, heads=2)
    roles = parameter_roles(m)
    assert roles["token.weight"] == roles["position.weight"] == "input"
    assert roles["head.weight"] == "readout"
    count = Counter(roles.values())
    assert count["hidden"] == 4 * 3  # qkv, attention output, W1, W2 per block
    assert count["input"] == 2 and count["readout"] == 1


def test_a_tied_transformer_head_is_its_embedding() -> None:
    m = _model("transformer", (12,), width=16, depth=1, heads=2, tie_weights=True)
    roles = parameter_roles(m)
    assert "head.weight" not in roles and roles["token.weight"] == "input"


class _Odd(nn.Module):
    def __init__(self, declare: dict[str, str] | None = None) -> None:
        super().__init__()
        self.a = nn.Linear(3, 4)
        self.b = nn.Linear(4, 2)
        self.table = nn.Parameter(torch.zeros(6, 4))
        self.weight_layers = [self.a, self.b]
        self.activation_layers: list[nn.Module] = []
        if declare is not None:
            self.parameter_roles = declare


def test_an_untold_matrix_is_an_error_naming_it_and_a_declaration_settles_it() -> None:
    with pytest.raises(RoleError, match=r"'table'.*parameter_roles"):
        parameter_roles(_Odd())
    roles = parameter_roles(_Odd({"table": "input", "b.weight": "hidden"}))
    assert roles["table"] == "input" and roles["b.weight"] == "hidden"
    with pytest.raises(RoleError, match="unknown role 'embedding'"):
        parameter_roles(_Odd({"table": "embedding"}))
    with pytest.raises(RoleError, match="names no parameter: nope"):
        parameter_roles(_Odd({"table": "input", "nope": "bias"}))


@pytest.mark.parametrize("name", ["mlp", "cnn", "resmlp", "resnet", "transformer"])
def test_every_builtin_model_passes_the_roles_check(name: str) -> None:
    check_parameter_roles(default_registry().get_spec(name, "model"))


def test_the_roles_check_fails_a_model_with_an_untold_parameter() -> None:
    from techbench.techniques.spec import TechniqueSpec

    spec = TechniqueSpec(
        name="odd",
        family="model",
        summary="s",
        citation="c",
        fast=f"{__name__}:_odd_factory",
        properties={"inputs": ("vector",)},
    )
    with pytest.raises(CheckFailure, match="'table'"):
        check_parameter_roles(spec)


def _odd_factory(input_shape: tuple[int, ...], num_outputs: int, parts: object) -> nn.Module:
    return _Odd()


def test_the_engine_tags_one_trial_parameters_and_stacked_leaves() -> None:
    from techbench.engine import population

    seen: dict[str, list[str | None]] = {}
    real = population.StackedModule.configure_optimizers

    def spy(self: population.StackedModule) -> object:
        out = real(self)
        opts = out if isinstance(out, list) else [out]
        key = "stack" if not self.single else "single"
        seen[key] = [role_of(p) for o in opts for g in o.param_groups for p in g["params"]]
        return out

    cfg = {"budget": {"epochs": 1}, "dataset": {"name": "moons", "params": {}}}
    trials = [Trial.of({**cfg, "seed": s}) for s in range(2)]
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(population.StackedModule, "configure_optimizers", spy)
        run_stack(trials[:1])
        run_stack(trials)
    # default MLP depth 2: input, bias, hidden, bias, readout, bias in parameter order
    want = ["input", "bias", "hidden", "bias", "readout", "bias"]
    assert seen["single"] == want
    assert seen["stack"] == want
