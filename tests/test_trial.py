"""run_trial end to end: ids, outcomes, divergence, failures, determinism, budgets, hooks.

Most tests use stand-in plugins written here straight from torch (``REGISTRY``), so they test the
runner alone; the acceptance test on digits uses the installed built-ins.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from techbench import schema
from techbench.engine.lit import DIVERGENCE_FACTOR, LOSS_FLUSH_EVERY
from techbench.engine.trial import run_trial
from techbench.schema import AXIS_FAMILY, DEFAULT_CONFIG, TrialOutcome, complete_config, trial_id
from techbench.techniques.families import Regularizer
from techbench.techniques.registry import default_registry
from techbench.techniques.spec import Param, TechniqueSpec

pytestmark = pytest.mark.usefixtures("one_thread")


# ---------------------------------------------------------------- stand-in plugins


class Standardize:
    def fit(self, x: torch.Tensor) -> Standardize:
        self.mean = x.mean(dim=0, keepdim=True)
        std = x.std(dim=0, keepdim=True)
        self.std = torch.where(std > 0, std, torch.ones_like(std))
        return self

    def transform(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


def he_normal() -> Any:
    return lambda t: nn.init.kaiming_normal_(t, nonlinearity="relu")


def normal(std: float) -> Any:
    return lambda t: nn.init.normal_(t, 0.0, std)


def zeros() -> Any:
    return nn.init.zeros_


def no_norm(num_features: int) -> nn.Module:
    return nn.Identity()


def constant_schedule(optimizer: torch.optim.Optimizer, total_steps: int) -> Any:
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)


class NoReg(Regularizer):
    pass


class Boom(Regularizer):
    def penalty(self, model: nn.Module) -> torch.Tensor | None:
        raise RuntimeError("boom: a plugin bug")


class Dropout(Regularizer):
    def __init__(self, p: float) -> None:
        self.p = p

    def make_module(self) -> nn.Module:
        return nn.Dropout(self.p)


def _spec(
    name: str, family: str, fast: Any, params: tuple[Param, ...] = (), **props: Any
) -> TechniqueSpec:
    return TechniqueSpec(
        name=name, family=family, summary=f"test {name}", fast=fast, params=params, properties=props
    )


LR = Param(name="lr", type=float, default=0.001, low=0.0, low_open=True)
SPECS = {
    ("activation", "relu"): _spec("relu", "activation", nn.ReLU, dead_below=0.0, saturation=None),
    ("activation", "sigmoid"): _spec("sigmoid", "activation", nn.Sigmoid, saturation=(0.01, 0.99)),
    ("initializer", "he_normal"): _spec("he_normal", "initializer", he_normal),
    ("initializer", "large_normal"): _spec(
        "large_normal", "initializer", normal, (Param(name="std", type=float, default=1.0),)
    ),
    ("initializer", "zeros"): _spec("zeros", "initializer", zeros),
    ("normalizer", "none"): _spec("none", "normalizer", no_norm),
    ("regularizer", "none"): _spec("none", "regularizer", NoReg),
    ("regularizer", "boom"): _spec("boom", "regularizer", Boom),
    ("regularizer", "dropout"): _spec(
        "dropout", "regularizer", Dropout, (Param(name="p", type=float, default=0.5),)
    ),
    ("optimizer", "adam"): _spec("adam", "optimizer", torch.optim.Adam, (LR,)),
    ("optimizer", "sgd"): _spec("sgd", "optimizer", torch.optim.SGD, (LR,)),
    ("schedule", "constant"): _spec("constant", "schedule", constant_schedule),
    ("preprocessor", "standardize"): _spec("standardize", "preprocessor", Standardize),
}


class DictRegistry:
    """``get_spec(name, family)`` from :data:`SPECS` (+ extras), else the installed plugins."""

    def __init__(self, extra: dict[tuple[str, str], TechniqueSpec] | None = None) -> None:
        self.specs = {**SPECS, **(extra or {})}

    def get_spec(self, name: str, family: str | None = None) -> TechniqueSpec:
        spec = self.specs.get((family or "", name))
        return spec if spec is not None else default_registry().get_spec(name, family)


REGISTRY = DictRegistry()
FAST = {
    "budget": {"epochs": 3},
    "model": {"name": "mlp", "params": {"depth": 2, "width": 32}},
    "health": {"enabled": True, "every_n_steps": 10},  # snapshots at steps 0, 10, 20
}


def _values(o: TrialOutcome) -> list[tuple]:
    return [
        (r["step"], r["epoch"], r["split"], r["metric"], r["layer"], r["value"])
        for r in o.metrics
        if r["split"] != "time"
    ]


def _skip_unless_builtins(cfg: dict) -> None:
    registry = default_registry()
    for key, family in AXIS_FAMILY.items():
        try:
            registry.get_spec(cfg[key]["name"], family)
        except Exception as exc:  # a built-in being written in parallel
            pytest.skip(f"built-in {family}/{cfg[key]['name']} unavailable: {exc}")


# ---------------------------------------------------------------- ids and configs


def test_trial_id_is_sha256_of_canonical_json() -> None:
    cfg = complete_config({})
    text = json.dumps(schema.canonical_config(cfg), sort_keys=True, separators=(",", ":"))
    assert trial_id(cfg) == hashlib.sha256(text.encode()).hexdigest()[:16]
    assert trial_id(cfg) == trial_id(json.loads(json.dumps(cfg)))
    assert trial_id(cfg) != trial_id({**cfg, "seed": 1})


def test_a_newer_key_at_its_default_stays_out_of_the_id(monkeypatch: pytest.MonkeyPatch) -> None:
    """An option added after 0.3.0 hashes only when a trial sets it (ids of old stores hold)."""
    old = schema.canonical_config(complete_config({}))
    text = json.dumps(old, sort_keys=True, separators=(",", ":"))
    old_id = hashlib.sha256(text.encode()).hexdigest()[:16]
    monkeypatch.setitem(schema.OMITTED_AT_DEFAULT, ("health", "probe"), None)
    assert trial_id({**old, "health": {**old["health"], "probe": None}}) == old_id
    assert trial_id({**old, "health": {**old["health"], "probe": {"every": 5}}}) != old_id
    assert trial_id(old) == old_id


def test_complete_config_fills_defaults() -> None:
    cfg = complete_config(
        {"optimizer": {"name": "sgd"}, "budget": {"epochs": 2}, "activation": "tanh"}
    )
    assert set(cfg) == set(DEFAULT_CONFIG)
    assert cfg["optimizer"] == {"name": "sgd", "params": {}}
    assert cfg["activation"] == {"name": "tanh", "params": {}}
    assert cfg["budget"] == {**DEFAULT_CONFIG["budget"], "epochs": 2}
    assert complete_config(cfg) == cfg
    with pytest.raises(ValueError, match="unknown trial config keys: colour"):
        complete_config({"colour": 1})


# ---------------------------------------------------------------- acceptance


def test_digits_mlp_relu_he_adam_reaches_95_percent_test_accuracy() -> None:
    cfg = complete_config({"budget": {"epochs": 20}, "health": {"enabled": False}})
    assert (cfg["activation"]["name"], cfg["initializer"]["name"], cfg["optimizer"]["name"]) == (
        "relu",
        "he_normal",
        "adam",
    )
    _skip_unless_builtins(cfg)
    o = run_trial(cfg)
    assert o.status == "completed", o.meta.error
    assert o.metric("test", "acc")[0] >= 0.95
    assert o.metric("test", "best_acc")[0] >= 0.95


def test_same_trial_twice_gives_identical_metrics() -> None:
    cfg = {**FAST, "regularizer": {"name": "dropout", "params": {"p": 0.3}}}
    a, b = run_trial(cfg, registry=REGISTRY), run_trial(cfg, registry=REGISTRY)
    assert a.status == b.status == "completed", a.meta.error
    assert a.trial_id == b.trial_id
    assert _values(a) == _values(b) and len(_values(a)) > 100
    c = run_trial({**cfg, "seed": 1}, registry=REGISTRY)
    assert _values(c) != _values(a)


def test_divergent_trial_is_diverged_with_the_step() -> None:
    cfg = {
        "dataset": {"name": "teacher_student", "params": {}},
        "activation": {"name": "sigmoid", "params": {}},
        "initializer": {"name": "large_normal", "params": {"std": 1.0}},
        "optimizer": {"name": "sgd", "params": {"lr": 10.0}},
        "budget": {"epochs": 5},
    }
    o = run_trial(cfg, registry=REGISTRY)
    assert o.status == "diverged"
    step = o.meta.diverged_step
    losses = o.metric("train", "loss")
    assert isinstance(step, int) and len(losses) == step + 1
    assert not math.isfinite(losses[-1]) or losses[-1] > DIVERGENCE_FACTOR * losses[0]
    assert all(math.isfinite(v) and v <= DIVERGENCE_FACTOR * losses[0] for v in losses[:-1])
    planned = 5 * math.ceil(2400 / 128)
    assert o.meta.steps <= step + LOSS_FLUSH_EVERY < planned
    assert o.meta.error is None


def test_nan_loss_is_diverged_at_step_zero() -> None:
    class NaNInit:
        def __call__(self, t: torch.Tensor) -> torch.Tensor:
            return t.data.fill_(float("nan"))

    registry = DictRegistry({("initializer", "nan"): _spec("nan", "initializer", NaNInit)})
    o = run_trial({**FAST, "initializer": {"name": "nan", "params": {}}}, registry=registry)
    assert o.status == "diverged" and o.meta.diverged_step == 0
    assert math.isnan(o.metric("train", "loss")[0])


def test_raising_plugin_gives_failed_with_the_traceback() -> None:
    o = run_trial({**FAST, "regularizer": {"name": "boom", "params": {}}}, registry=REGISTRY)
    assert o.status == "failed"
    assert "Traceback" in o.meta.error and "RuntimeError: boom: a plugin bug" in o.meta.error
    assert "penalty" in o.meta.error
    assert o.meta.started_at and o.meta.finished_at and o.meta.started_at <= o.meta.finished_at
    assert o.meta.wall_seconds > 0 and o.meta.versions["torch"] == torch.__version__
    assert o.meta.steps == 0 and o.meta.epochs == 0
    assert o.meta.diverged_step is None


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            {"activation": {"name": "no_such_activation", "params": {}}},
            "unknown activation 'no_such_activation'",
        ),
        ({"optimizer": {"name": "adam", "params": {"lr": -1.0}}}, "below the allowed range"),
        ({"budget": {"epochs": None, "max_steps": None}}, "budget needs epochs or max_steps"),
        ({"bogus": 1}, "unknown trial config keys"),
    ],
)
def test_bad_configs_fail_without_raising(change: dict, message: str) -> None:
    o = run_trial({**FAST, **change}, registry=REGISTRY)
    assert o.status == "failed" and message in o.meta.error


# ---------------------------------------------------------------- schema and budget


def test_outcome_rows_follow_the_schema() -> None:
    o = run_trial({**FAST, "health": {"enabled": True, "every_n_steps": 5}}, registry=REGISTRY)
    assert o.status == "completed", o.meta.error
    for r in o.metrics:
        assert set(r) == {"step", "epoch", "split", "metric", "layer", "value"}
        assert (
            isinstance(r["step"], int)
            and isinstance(r["epoch"], int)
            and isinstance(r["value"], float)
        )
    steps_per_epoch = math.ceil(1079 / 128)
    assert o.meta.steps == 3 * steps_per_epoch and o.meta.epochs == 3
    assert len(o.metric("train", "loss")) == o.meta.steps
    for split, metric in (
        ("val", "loss"),
        ("val", "acc"),
        ("train", "epoch_loss"),
        ("train", "epoch_acc"),
        ("time", "seconds"),
    ):
        assert len(o.metric(split, metric)) == 3, (split, metric)
    assert [r["step"] for r in o.metrics if r["split"] == "val" and r["metric"] == "acc"] == [
        9,
        18,
        27,
    ]
    seconds = o.metric("time", "seconds")
    assert seconds == sorted(seconds) and seconds[-1] <= o.meta.train_seconds + 1e-9
    assert {r["metric"] for r in o.metrics if r["split"] == "test"} == {
        "loss",
        "acc",
        "best_loss",
        "best_acc",
    }
    health_steps = sorted({r["step"] for r in o.metrics if r["split"] == "health"})
    assert health_steps == list(range(0, 27, 5))
    assert o.meta.num_parameters == 64 * 32 + 32 + 32 * 32 + 32 + 32 * 10 + 10
    # accelerator "auto": the GPU when there is one (the device tool's machine), else the CPU
    expected = "cuda:" if torch.cuda.is_available() else "cpu"
    assert o.meta.device.startswith(expected) and o.meta.versions["torch"] == torch.__version__
    assert 0 < o.meta.health_overhead < o.meta.train_seconds


def test_best_weights_are_the_best_validation_epoch() -> None:
    o = run_trial(
        {**FAST, "optimizer": {"name": "sgd", "params": {"lr": 3.0}}, "budget": {"epochs": 4}},
        registry=REGISTRY,
    )
    val = o.metric("val", "loss")
    if val.index(min(val)) == len(val) - 1:
        assert o.metric("test", "best_loss") == o.metric("test", "loss")
    else:
        assert o.metric("test", "best_loss") != o.metric("test", "loss")


def test_max_steps_budget_and_schedule_total_steps() -> None:
    seen: dict[str, int] = {}

    def schedule(optimizer, total_steps):
        seen["total"] = total_steps
        return torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: 1.0 - step / (total_steps + 1)
        )

    registry = DictRegistry({("schedule", "linear"): _spec("linear", "schedule", schedule)})
    o = run_trial(
        {
            **FAST,
            "schedule": {"name": "linear", "params": {}},
            "budget": {"epochs": 10, "max_steps": 13},
        },
        registry=registry,
    )
    assert o.status == "completed", o.meta.error
    assert o.meta.steps == 13 and seen["total"] == 13
    # a full epoch (9 steps), then the partial one that the budget ends is evaluated too
    assert [r["step"] for r in o.metrics if r["split"] == "val" and r["metric"] == "loss"] == [
        9,
        13,
    ]


def test_regression_trial_reports_loss_only() -> None:
    o = run_trial(
        {**FAST, "dataset": {"name": "teacher_student", "params": {"n_samples": 600}}},
        registry=REGISTRY,
    )
    assert o.status == "completed", o.meta.error
    assert o.metric("val", "acc") == [] and o.metric("test", "acc") == []
    val = o.metric("val", "loss")
    assert val[-1] < val[0]


# ---------------------------------------------------------------- regularizer hooks


class Recorder(Regularizer):
    def __init__(self) -> None:
        self.calls: dict[str, int] = {}
        self.grad_steps: list[int] = []
        Recorder.last = self

    def _count(self, name: str) -> None:
        self.calls[name] = self.calls.get(name, 0) + 1

    def transform_batch(self, x, y, generator=None):
        self._count("transform_batch")
        assert isinstance(generator, torch.Generator)
        return x + 0.01 * torch.randn(x.shape, generator=generator, device=x.device), y

    def make_module(self):
        self._count("make_module")
        return nn.Dropout(0.1)

    def penalty(self, model):
        self._count("penalty")
        return torch.tensor(5.0)

    def loss(self, logits, target):
        self._count("loss")
        return nn.functional.cross_entropy(logits, target, label_smoothing=0.1)

    def transform_gradients(self, model, step, generator=None):
        self._count("transform_gradients")
        assert isinstance(generator, torch.Generator)
        assert all(p.grad is not None for p in model.parameters())  # after backward
        self.grad_steps.append(step)
        self._pending = True

    def after_step(self, model, optimizer):
        self._count("after_step")
        assert self.__dict__.pop("_pending")  # the transform ran before this step
        assert isinstance(optimizer, torch.optim.Optimizer)

    def callbacks(self):
        from pytorch_lightning.callbacks import EarlyStopping

        return [EarlyStopping(monitor="val_loss", patience=0, min_delta=1e9)]


def test_every_regularizer_hook_is_used() -> None:
    registry = DictRegistry(
        {("regularizer", "recorder"): _spec("recorder", "regularizer", Recorder)}
    )
    o = run_trial(
        {**FAST, "regularizer": {"name": "recorder", "params": {}}, "budget": {"epochs": 5}},
        registry=registry,
    )
    assert o.status == "completed", o.meta.error
    calls = Recorder.last.calls
    steps = o.meta.steps
    assert calls["make_module"] == 2  # one per hidden activation
    for hook in ("transform_batch", "penalty", "loss", "transform_gradients", "after_step"):
        assert calls[hook] == steps, hook
    assert Recorder.last.grad_steps == list(range(steps))
    assert min(o.metric("train", "loss")) > 5.0  # the penalty is in the training loss
    assert o.meta.epochs == 2 and steps == 18  # early stopping on val_loss after patience 0


def test_data_dependent_initializer_is_fitted() -> None:
    seen = {}

    class Fitted:
        def __call__(self, t):
            return nn.init.normal_(t, 0.0, 0.1)

        def fit(self, model, x):
            seen["model"], seen["x"] = model, x

    registry = DictRegistry(
        {("initializer", "fitted"): _spec("fitted", "initializer", Fitted, data_dependent=True)}
    )
    o = run_trial({**FAST, "initializer": {"name": "fitted", "params": {}}}, registry=registry)
    assert o.status == "completed", o.meta.error
    assert hasattr(seen["model"], "weight_layers") and seen["x"].shape == (256, 64)
    assert abs(float(seen["x"].mean())) < 0.2  # preprocessed (standardized) data


def test_csv_logger(tmp_path: Path) -> None:
    o = run_trial(
        {**FAST, "budget": {"epochs": 2}}, registry=REGISTRY, logger="csv", log_dir=str(tmp_path)
    )
    assert o.status == "completed", o.meta.error
    files = list(tmp_path.rglob("metrics.csv"))
    assert files and "val_loss" in files[0].read_text()


def test_direct_step_equals_lightning_manual_optimization(monkeypatch) -> None:
    import techbench.engine._lightning_compat as compat

    direct = run_trial(FAST, registry=REGISTRY)
    monkeypatch.setattr(compat, "plain_precision", lambda trainer: False)
    wrapped = run_trial(FAST, registry=REGISTRY)
    assert direct.status == wrapped.status == "completed"
    assert _values(direct) == _values(wrapped)


def test_mixed_precision_goes_through_lightning() -> None:
    o = run_trial({**FAST, "trainer": {"precision": "bf16-mixed"}}, registry=REGISTRY)
    assert o.status == "completed", o.meta.error
    assert o.meta.steps == 27 and {r["step"] for r in o.metrics if r["split"] == "health"} == {
        0,
        10,
        20,
    }


BUILTIN_VARIANTS = [
    {"normalizer": {"name": "batchnorm", "params": {}}},
    {"normalizer": {"name": "layernorm", "params": {}}, "norm_placement": "after"},
    {"regularizer": {"name": "dropout", "params": {}}},
    {"regularizer": {"name": "early_stopping", "params": {}}},
    {"regularizer": {"name": "label_smoothing", "params": {}}},
    {"regularizer": {"name": "l2", "params": {}}},
    {"regularizer": {"name": "max_norm", "params": {}}},
    {"initializer": {"name": "lsuv", "params": {}}},
    {
        "optimizer": {"name": "sgd", "params": {"lr": 0.1}},
        "schedule": {"name": "cosine", "params": {}},
    },
    {"model": {"name": "resmlp", "params": {"blocks": 2, "width": 32}}},
    {
        "model": {"name": "cnn", "params": {}},
        "dataset": {"name": "digits", "params": {"image": True}},
    },
]


@pytest.mark.parametrize(
    "change",
    BUILTIN_VARIANTS,
    ids=lambda c: "-".join(v["name"] if isinstance(v, dict) else str(v) for v in c.values()),
)
def test_builtins_compose_into_a_trial(change: dict) -> None:
    cfg = complete_config({**FAST, "budget": {"epochs": 2}, **change})
    _skip_unless_builtins(cfg)
    o = run_trial(cfg)
    assert o.status == "completed", o.meta.error
    assert o.metric("test", "acc") and all(math.isfinite(v) for v in o.metric("val", "loss"))


def test_grouped_steps_equal_one_step_per_lightning_batch(monkeypatch) -> None:
    import techbench.engine.lit as lit

    cfg = {
        **FAST,
        "health": {"enabled": True, "every_n_steps": 4},
        "budget": {"epochs": 3, "max_steps": 22},
    }
    grouped = run_trial(cfg, registry=REGISTRY)
    monkeypatch.setattr(lit, "STEPS_PER_BATCH", 1)
    single = run_trial(cfg, registry=REGISTRY)
    assert grouped.status == single.status == "completed"
    assert grouped.meta.steps == single.meta.steps == 22
    assert _values(grouped) == _values(single)
    assert {r["step"] for r in grouped.metrics if r["split"] == "health"} == {0, 4, 8, 12, 16, 20}


def test_max_seconds_budget_stops_training() -> None:
    cfg = {**FAST, "budget": {"epochs": 10_000, "max_seconds": 1.0}}
    o = run_trial(cfg, registry=REGISTRY)
    assert o.status == "completed", o.meta.error
    assert 0 < o.meta.epochs < 10_000 and o.meta.train_seconds < 30
    assert o.metric("test", "acc")


def test_user_callback_step_hooks_run_on_every_step() -> None:
    import pytorch_lightning as pl

    class Counter(pl.Callback):
        def __init__(self) -> None:
            self.calls: dict[str, list[int]] = {"backward": [], "after": [], "optimizer": []}

        def on_before_backward(self, trainer, pl_module, loss) -> None:
            self.calls["backward"].append(trainer.global_step)

        def on_after_backward(self, trainer, pl_module) -> None:
            self.calls["after"].append(trainer.global_step)

        def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
            assert all(p.grad is not None for p in pl_module.parameters())
            self.calls["optimizer"].append(trainer.global_step)

    class OnlyAfter(pl.Callback):
        def __init__(self) -> None:
            self.count = 0

        def on_after_backward(self, trainer, pl_module) -> None:
            self.count += 1

    counter, only_after = Counter(), OnlyAfter()
    o = run_trial(FAST, registry=REGISTRY, callbacks=[counter, only_after])
    assert o.status == "completed", o.meta.error
    steps = list(range(o.meta.steps))
    assert o.meta.steps == 27
    assert counter.calls == {"backward": steps, "after": steps, "optimizer": steps}
    assert only_after.count == 27


def _hardtanh(a: float = 1.0) -> nn.Module:
    return nn.Hardtanh(-a, a)


def test_health_thresholds_use_properties_at_the_trials_hyperparameters() -> None:
    """Saturation of hardtanh(a) is at outputs +-a: declared as a function of ``a``, health
    must count with the trial's ``a`` (the same rows as a fixed declaration at that ``a``),
    not with the default's."""
    bound = (Param(name="a", type=float, default=1.0, low=0.0, low_open=True),)

    def hardtanh(saturation: Any) -> TechniqueSpec:
        return _spec("hardtanh", "activation", _hardtanh, bound, saturation=saturation)

    cfg = {**FAST, "activation": {"name": "hardtanh", "params": {"a": 0.25}}}
    cfg["budget"] = {"epochs": 1}
    rows = {}
    for kind, sat in [
        ("callable", lambda a, **_: (-a, a)),
        ("at_trial", (-0.25, 0.25)),
        ("at_default", (-1.0, 1.0)),
    ]:
        registry = DictRegistry({("activation", "hardtanh"): hardtanh(sat)})
        o = run_trial(cfg, registry=registry)
        assert o.status == "completed", o.meta.error
        rows[kind] = o.metric("health", "saturated_fraction", "0")
    assert rows["callable"] == rows["at_trial"]
    assert rows["callable"] != rows["at_default"]
    assert max(rows["callable"]) > 0


class InfAtStep(Regularizer):
    """Makes the training loss infinite at optimizer step ``k`` (its k-th batch, from 0)."""

    def __init__(self, k: int = 13) -> None:
        self.k, self.calls = k, 0

    def transform_batch(self, x, y, generator=None):
        self.calls += 1
        return (x * math.inf if self.calls - 1 == self.k else x), y


@pytest.mark.parametrize("k", [0, 13, 20])
def test_divergence_is_recorded_at_its_exact_step(k: int) -> None:
    spec = _spec("inf_at", "regularizer", InfAtStep, (Param(name="k", type=int, default=13),))
    registry = DictRegistry({("regularizer", "inf_at"): spec})
    cfg = {**FAST, "regularizer": {"name": "inf_at", "params": {"k": k}}}
    o = run_trial(cfg, registry=registry)
    assert o.status == "diverged", o.meta.error
    assert o.meta.diverged_step == k
    losses = [r for r in o.metrics if r["split"] == "train" and r["metric"] == "loss"]
    assert [r["step"] for r in losses] == list(range(k + 1))
    assert all(math.isfinite(r["value"]) for r in losses[:-1])
    assert not math.isfinite(losses[-1]["value"])
    assert max(r["step"] for r in o.metrics if r["split"] != "time") <= k
    assert k < o.meta.steps <= k + LOSS_FLUSH_EVERY  # stopped at the next read


def test_float64_trial_runs_end_to_end_and_tracks_float32() -> None:
    """``precision = "64-true"``: training and epoch-end evaluation see float64 data. The same
    trial in float32 starts from the same weights (float32 -> float64 is exact), so the two
    agree to float32 rounding accumulated over the run: relative 1e-5 (measured: 1e-7)."""
    cfg = {**FAST, "budget": {"epochs": 2}, "optimizer": {"name": "sgd", "params": {"lr": 0.05}}}
    single = run_trial({**cfg, "trainer": {"precision": "32-true"}}, registry=REGISTRY)
    double = run_trial({**cfg, "trainer": {"precision": "64-true"}}, registry=REGISTRY)
    assert single.status == double.status == "completed", double.meta.error
    for split, metric in [("train", "loss"), ("val", "loss"), ("test", "loss"), ("test", "acc")]:
        a, b = single.metric(split, metric), double.metric(split, metric)
        assert len(a) == len(b) > 0
        assert a == pytest.approx(b, rel=1e-5), (split, metric)
    # not the same computation: float64 rounding differs from float32's
    assert single.metric("train", "loss") != double.metric("train", "loss")


ALONE = [
    {},
    {"regularizer": {"name": "clip_norm", "params": {"max_norm": 0.05}}},
    {"regularizer": {"name": "dropout", "params": {"p": 0.2}}},
    {"regularizer": {"name": "early_stopping", "params": {"patience": 1}}, "budget": {"epochs": 6}},
    {"trainer": {"accelerator": "cpu", "precision": "64-true"}},
    {"optimizer": {"name": "sgd", "params": {"lr": 10.0}}},  # diverges
]


@pytest.mark.parametrize("over", ALONE, ids=["plain", "clip", "dropout", "early", "f64", "diverge"])
def test_a_trial_alone_is_a_stack_of_one_equal_to_the_reference_loop(monkeypatch, over) -> None:
    """One engine: ``run_trial`` trains a stack of one through the engine's one-member step
    (its network called directly: no vmap), and its rows are the plain reference loop's."""
    import techbench.engine.population as population
    import techbench.engine.stack_single as stack_single
    from techbench.testing.reference_loop import reference_run

    steps = []
    single = stack_single.step_single

    def counted(*args):
        steps.append(1)
        return single(*args)

    def no_vmap(*args, **kwargs):
        raise AssertionError("a stack of one called vmap")

    monkeypatch.setattr(stack_single, "step_single", counted)
    monkeypatch.setattr(population, "vmap", no_vmap)
    config = {**FAST, "health": {"enabled": True, "every_n_steps": 4}, **over}
    got = run_trial(config, registry=REGISTRY)
    want = reference_run(config, registry=REGISTRY)
    assert got.status == want.status and got.meta.steps == want.steps == len(steps) > 0
    assert got.trial_id == want.trial_id and got.meta.stack_size == 1
    a = {
        tuple(r[k] for k in ("split", "metric", "layer", "step", "epoch")): r["value"]
        for r in got.metrics
        if r["split"] != "time"
    }
    b = {
        tuple(r[k] for k in ("split", "metric", "layer", "step", "epoch")): r["value"]
        for r in want.rows
    }
    assert a.keys() == b.keys()
    for key, value in b.items():
        assert a[key] == pytest.approx(value, rel=1e-4, abs=1e-6, nan_ok=True), key
