"""The parametrization family: ``standard`` and ``mup`` (Yang et al. 2021, Tensor Programs V,
arXiv 2203.03466, Table 3) against the table's numbers, the ``mup`` package where installed,
the plain reference loop (per-multiplier param groups) and the coordinate check.
"""

from __future__ import annotations

import math

import pytest
import torch

from techbench.engine.trial import build_model, prepare, run_stack, run_trial
from techbench.plan.matrix import loads_matrix
from techbench.plan.stacking import stack_key
from techbench.schema import DEFAULT_CONFIG, Trial, complete_config
from techbench.techniques.families import ParamScale
from techbench.techniques.parametrize import LR_MULT_ATTR, lr_multiplier
from techbench.techniques.registry import get_spec
from techbench.techniques.spec import Param, TechniqueSpec
from techbench.testing import CheckFailure, check_technique
from techbench.testing.parametrization import (
    MLP_WIDTHS,
    TRANSFORMER_WIDTHS,
    assert_width_stable,
    check_coordinates,
    check_lr_multiplier,
)
from techbench_builtins.parametrizations_impl import MuP
from tests.test_population import BASE, assert_members_equal

pytestmark = pytest.mark.usefixtures("one_thread")


def _mup(**hp):
    return get_spec("mup", "parametrization").create(**hp)


# -- the rules against Table 3's numbers --------------------------------------------------------

# (role, shape, base, rule) -> (init std multiplier, lr multiplier), by hand from Table 3 with
# width ratio 4 (256 vs 64): Adam hidden/readout lr 1/4; SGD input/bias lr 4 (fan_out);
# readout variance 1/fan_in^2 over the initializer's 1/fan_in -> std 1/2; an embedding
# (vocab, d) initialised ~1/d by torch's fan_in convention -> std 2 for the table's constant.
TABLE3 = [
    ("hidden", (256, 256), (64, 64), "adaptive", 1.0, 0.25),
    ("hidden", (256, 256), (64, 64), "sgd", 1.0, 1.0),
    ("hidden", (1024, 256), (256, 64), "adaptive", 1.0, 0.25),
    ("readout", (10, 256), (10, 64), "adaptive", 0.5, 0.25),
    ("readout", (10, 256), (10, 64), "sgd", 0.5, 0.25),
    ("input", (256, 10), (64, 10), "adaptive", 1.0, 1.0),
    ("input", (256, 10), (64, 10), "sgd", 1.0, 4.0),
    ("input", (97, 256), (97, 64), "sgd", 2.0, 4.0),
    ("input", (97, 256), (97, 64), "adaptive", 2.0, 1.0),
    ("bias", (256,), (64,), "sgd", 1.0, 4.0),
    ("bias", (256,), (64,), "adaptive", 1.0, 1.0),
    ("norm", (256,), (64,), "sgd", 1.0, 4.0),
    ("bias", (10,), (10,), "sgd", 1.0, 1.0),
    ("hidden", (64, 64), (64, 64), "adaptive", 1.0, 1.0),
    # Muon: the orthogonalised hidden step has spectral norm lr (x1 for square matrices) under
    # "original" and 0.2 sqrt(max(rows, cols)) lr under "match_rms_adamw", which grows as
    # sqrt(width): the spectral condition (Yang, Simon, Bernstein 2023) wants it flat -> 1/2
    ("hidden", (256, 256), (64, 64), "orthogonalized", 1.0, 1.0),
    ("hidden", (256, 256), (64, 64), "orthogonalized_rms", 1.0, 0.5),
    ("readout", (10, 256), (10, 64), "orthogonalized_rms", 0.5, 0.25),
    ("input", (256, 10), (64, 10), "orthogonalized", 1.0, 1.0),
]


def test_muon_declares_the_rule_of_its_shape_scale():
    spec = get_spec("muon", "optimizer")
    assert spec.properties_for()["update_rule"] == "orthogonalized"
    rms = spec.properties_for({"adjust_lr": "match_rms_adamw"})["update_rule"]
    assert rms == "orthogonalized_rms"


@pytest.mark.parametrize("role,shape,base,rule,init,lr", TABLE3)
def test_mup_multipliers_are_table3(role, shape, base, rule, init, lr):
    got = _mup().scale(role, shape, base, rule)
    assert got.init == pytest.approx(init, rel=1e-12)
    assert got.lr == pytest.approx(lr, rel=1e-12)
    ref = get_spec("mup", "parametrization").load_reference()(role, shape, base, rule)
    assert ref == pytest.approx((init, lr), rel=1e-12)


def test_standard_is_all_ones_and_mup_is_standard_at_the_base():
    std = get_spec("standard", "parametrization").create()
    assert std.base_model_params({"width": 7}) is None
    for role, shape, _, rule, _, _ in TABLE3:
        assert std.scale(role, shape, shape, rule) == ParamScale(1.0, 1.0)
        assert _mup().scale(role, shape, shape, rule) == ParamScale(1.0, 1.0)


def test_conformance_checks_pass():
    for name in ("standard", "mup"):
        results = check_technique(name)
        assert [r.check for r in results if not r.passed] == [], [r.message for r in results]
    names = {r.check for r in check_technique("mup")}
    assert {"reference", "coordinates"} <= names


def test_mup_package_cross_check():
    """``mup.set_base_shapes`` + ``MuAdam``/``MuSGD`` group learning rates, and ``MuReadout``'s
    init rescale, give the same multipliers once its readout (Table 8: output multiplier
    a = 1/m) is mapped to Table 3's form (W_eff = a W: std * a, Adam lr * a, SGD lr * a^2)."""
    mup = pytest.importorskip("mup")
    roles = {"0.weight": "input", "2.weight": "hidden", "4.weight": "readout"}
    for opt, rule in ((mup.MuAdam, "adaptive"), (mup.MuSGD, "sgd")):
        base, model = _mlp(32, mup), _mlp(128, mup)
        mup.set_base_shapes(model, base, rescale_params=False)
        groups = opt(model.parameters(), lr=1.0).param_groups
        lr_of = {id(p): g["lr"] for g in groups for p in g["params"]}
        for name, p in model.named_parameters():
            role = roles.get(name, "bias")
            a = 1.0 / p.infshape.width_mult() if role == "readout" else 1.0
            mup_lr = lr_of[id(p)] * (a if rule == "adaptive" else a * a)
            shape = tuple(p.shape)
            base_shape = tuple(d.base_dim or d.dim for d in p.infshape)
            ours = MuP(base_width=32).scale(role, shape, base_shape, rule)
            assert ours.lr == pytest.approx(mup_lr, rel=1e-12), (name, rule)
            if role == "readout":  # MuReadout: std * sqrt(m), then * a
                assert ours.init == pytest.approx(math.sqrt(p.infshape.width_mult()) * a)


def _mlp(width, mup):
    return torch.nn.Sequential(
        torch.nn.Linear(8, width),
        torch.nn.ReLU(),
        torch.nn.Linear(width, width),
        torch.nn.ReLU(),
        mup.MuReadout(width, 3),
    )


def test_table3_readout_is_table8_output_multiplier_under_sgd():
    """The readout rule chosen (Table 3: variance 1/fan_in^2, SGD lr 1/fan_in) trains the same
    function as Table 8's (output multiplier 1/fan_in, variance 1/fan_in, SGD lr fan_in), in
    float64, step by step: the equivalence the module docstring states."""
    gen = torch.Generator().manual_seed(0)
    n, base, lr = 256, 64, 0.1
    m = n / base
    x = torch.randn(32, n, dtype=torch.float64, generator=gen)
    y = torch.randint(0, 5, (32,), generator=gen)
    w = torch.randn(5, n, dtype=torch.float64, generator=gen) / math.sqrt(n)  # SP init
    s3 = MuP(base_width=base).scale("readout", (5, n), (5, base), "sgd")
    w3 = (w * s3.init).requires_grad_()
    w8 = (w * math.sqrt(m)).requires_grad_()  # Table 8: width-independent variance
    for _ in range(5):
        loss3 = torch.nn.functional.cross_entropy(x @ w3.T, y)
        loss8 = torch.nn.functional.cross_entropy((x @ w8.T) / m, y)
        (g3,), (g8,) = torch.autograd.grad(loss3, [w3]), torch.autograd.grad(loss8, [w8])
        assert loss3.item() == pytest.approx(loss8.item(), rel=1e-12)
        with torch.no_grad():
            w3 -= lr * s3.lr * g3
            w8 -= lr * m * g8


# -- the mechanism: lr multipliers through step hooks -----------------------------------------


@pytest.mark.parametrize("name", ["sgd", "momentum", "adam", "adamw", "lion", "rmsprop"])
def test_scaled_step_equals_scaled_lr(name):
    check_lr_multiplier(get_spec(name, "optimizer"))


def test_lr_multiplier_check_fails_an_update_not_proportional_to_lr():
    """A planted optimizer stepping by lr^2 * g: scaling its step is not scaling its lr."""
    spec = TechniqueSpec(
        name="squared",
        family="optimizer",
        summary="SGD with lr squared.",
        fast=lambda params, lr: torch.optim.SGD(params, lr=lr * lr),
        params=(Param(name="lr", type=float, default=0.5),),
        properties={"update_rule": "sgd"},
    )
    with pytest.raises(CheckFailure, match="not proportional to lr"):
        check_lr_multiplier(spec)


# -- the engine -----------------------------------------------------------------------------

MUP = {"name": "mup", "params": {"base_width": 8}}


def test_standard_leaves_ids_and_networks_unchanged():
    plain = Trial.of(BASE)
    assert Trial.of({**BASE, "parametrization": "standard"}).id == plain.id
    assert Trial.of({**BASE, "parametrization": MUP}).id != plain.id
    cfg = complete_config(BASE)
    specs, splits = prepare(cfg, None)
    torch.manual_seed(0)
    model, _ = build_model(cfg, specs, splits)
    torch.manual_seed(0)
    at16 = {"name": "mup", "params": {"base_width": 16}}
    mup_cfg = complete_config({**BASE, "parametrization": at16})
    at_base, _ = build_model(mup_cfg, {**specs, "parametrization": get_spec("mup")}, splits)
    torch.manual_seed(0)
    direct = specs["model"].create(
        splits.input_shape,
        splits.num_outputs,
        _parts(cfg, specs),
        **cfg["model"]["params"],
    )
    for (name, p), q, r in zip(
        model.named_parameters(), direct.parameters(), at_base.parameters(), strict=True
    ):
        assert torch.equal(p, q), name
        assert torch.equal(p, r), name  # mup at its base width is the standard network
        assert not hasattr(p, LR_MULT_ATTR)


def _parts(cfg, specs):
    from techbench.techniques.families import ModelParts

    return ModelParts(
        activation=lambda: specs["activation"].create(),
        weight_init=specs["initializer"].create(),
        bias_init=specs["bias_initializer"].create(),
        normalizer=lambda n: specs["normalizer"].create(n),
    )


def test_mup_members_of_a_stack_equal_their_trials_alone():
    """Three mup members (own seeds and lrs, width 16 over base 8) stacked, and a trial alone,
    against the reference loop, which gives each multiplier its own param group."""
    configs = [
        complete_config({**BASE, "seed": s, "parametrization": MUP, "optimizer": opt})
        for s, opt in (
            (0, {"name": "adam", "params": {"lr": 0.01}}),
            (1, {"name": "adam", "params": {"lr": 0.03}}),
            (2, {"name": "adam", "params": {"lr": 0.01}}),
        )
    ]
    assert len({stack_key(c) for c in configs}) == 1
    assert_members_equal(configs)
    sgd = complete_config(
        {**BASE, "parametrization": MUP, "optimizer": {"name": "momentum", "params": {}}}
    )
    assert_members_equal([sgd])


def test_mup_tags_the_engine_network():
    cfg = complete_config({**BASE, "parametrization": MUP})
    specs, splits = prepare(cfg, None)
    model, _ = build_model(cfg, specs, splits)
    lrs = {name: lr_multiplier(p) for name, p in model.named_parameters()}
    assert lrs == {
        "body.0.weight": 1.0,
        "body.0.bias": 1.0,
        "body.2.weight": 0.5,
        "body.2.bias": 1.0,
        "body.4.weight": 0.5,
        "body.4.bias": 1.0,
    }


@pytest.mark.parametrize(
    "over,message",
    [
        ({"parametrization": {"name": "mup", "params": {"width_param": "size"}}}, "'size'"),
        ({"model": {"name": "transformer", "params": {"tie_weights": True}}}, "readout"),
    ],
)
def test_mup_refuses_what_it_cannot_serve(over, message):
    cfg = {**BASE, "parametrization": MUP, **over}
    if "model" in over:
        cfg["dataset"] = {"name": "markov", "params": {}}
        cfg["preprocessor"] = "none"
    outcome = run_trial(cfg)
    assert outcome.status == "failed"
    assert message in outcome.meta.error.strip().splitlines()[-1]


def test_mup_needs_an_update_rule():
    with pytest.raises(ValueError, match="update_rule"):
        _mup().scale("hidden", (4, 4), (2, 2), None)


def test_matrix_axis():
    text = """
    name = "axis"
    [axes]
    dataset = "moons"
    parametrization = ["standard", {name = "mup", base_width = 8}]
    [budget]
    epochs = 1
    """
    trials = loads_matrix(text).planned()
    assert [t.config["parametrization"]["name"] for t in trials] == ["standard", "mup"]
    plain = loads_matrix(text.replace('parametrization = ["standard", ', "#")).planned()
    assert trials[0].id == plain[0].id
    assert stack_key(trials[0].config) != stack_key(trials[1].config)
    assert DEFAULT_CONFIG["parametrization"] == {"name": "standard", "params": {}}


# -- the coordinate check -------------------------------------------------------------------


class _PlantedReadout(MuP):
    """muP with a readout multiplier 1/sqrt(width) in place of 1/width: Table 8's output
    multiplier a = m^-1/2 on a width-independent readout is, in Table 3's form, the standard
    initial variance and an Adam learning rate m^-1/2."""

    def scale(self, role, shape, base, rule):
        scale = super().scale(role, shape, base, rule)
        if role != "readout":
            return scale
        m = math.prod(shape[1:]) / math.prod(base[1:])
        return ParamScale(0.0 if self.readout_zero_init else 1.0, m**-0.5)


def test_coordinate_check_fails_standard():
    with pytest.raises(CheckFailure, match="coordinate check"):
        check_coordinates(get_spec("standard", "parametrization"))
    standard = get_spec("standard", "parametrization").create()
    for model, widths in (("mlp", MLP_WIDTHS), ("transformer", TRANSFORMER_WIDTHS)):
        with pytest.raises(CheckFailure, match=rf"coordinate check \({model}"):
            assert_width_stable(standard, model, widths)


@pytest.mark.parametrize(
    "model,widths,zero", [("mlp", MLP_WIDTHS, False), ("transformer", TRANSFORMER_WIDTHS, True)]
)
def test_coordinate_check_fails_a_planted_readout(model, widths, zero):
    assert_width_stable(MuP(base_width=widths[0], readout_zero_init=zero), model, widths)
    with pytest.raises(CheckFailure, match="layer logits"):
        assert_width_stable(
            _PlantedReadout(base_width=widths[0], readout_zero_init=zero), model, widths
        )


def test_the_weight_decay_regularizer_decays_at_each_tensors_mup_rate():
    """Under mup, decoupled decay moves each tensor at its own (scaled) rate, as mup's MuAdamW
    does: Adam plus the ``weight_decay`` regularizer (decay of every tensor, before the step)
    trains what AdamW with its own decoupled decay of every tensor trains, stacked or alone."""
    lam = 0.3
    adam = {"name": "adam", "params": {"lr": 0.02}}
    regularizer = {"name": "weight_decay", "params": {"lam": lam, "include_bias": True}}
    adamw = {"name": "adamw", "params": {"lr": 0.02, "weight_decay": lam, "decay": "all"}}
    configs = [
        complete_config({**BASE, "seed": s, "parametrization": MUP, **over})
        for s, over in (
            (0, {"optimizer": adam, "regularizer": regularizer}),
            (0, {"optimizer": adamw}),
            (1, {"optimizer": adam, "regularizer": regularizer}),
        )
    ]
    with_regularizer = run_trial(configs[0])
    with_adamw = run_trial(configs[1])
    stacked = run_stack([configs[0], configs[2]])

    def val_losses(outcome):
        return [
            r["value"] for r in outcome.metrics if r["split"] == "val" and r["metric"] == "loss"
        ]

    assert with_regularizer.status == with_adamw.status == "completed"
    assert val_losses(with_regularizer) == pytest.approx(val_losses(with_adamw), rel=1e-5)
    assert val_losses(stacked[0]) == pytest.approx(val_losses(with_regularizer), rel=1e-5)
    assert_members_equal(configs[:1])  # the reference loop's own groups, decayed once


def test_run_refuses_a_matrix_mup_cannot_serve_before_any_trial(tmp_path, capsys):
    """A CNN (its width is ``channels``) under mup, and an optimizer without an update rule,
    are reported by ``techbench run`` in one line each, exit 2, before anything trains."""
    from techbench.cli import main

    path = tmp_path / "m.toml"
    path.write_text(
        '[budget]\nepochs = 1\n[defaults]\nmodel = { name = "cnn" }\ndataset = "digits"\n'
        '[axes]\nparametrization = ["standard", { name = "mup", base_width = 8 }]\n'
    )
    assert main(["run", str(path), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "parametrization mup with model cnn and optimizer adam:" in err
    assert "no hyper-parameter 'width'" in err
    assert not (tmp_path / "o" / "trials").exists()
