"""Gradient health (a trial alone, through the engine) against an independent float64 computation of one SGD step
(autograd on a copy of the model), its cadence, its non-finite count and its host syncs."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from torch import nn

from techbench.engine.health import GradientHealth
from techbench.engine.lit import build_trainer
from techbench.engine.population import StackedModule
from techbench.engine.stack_members import Member
from techbench.engine.stacked_data import StackedDataModule
from techbench.engine.trial import quiet_lightning
from techbench.techniques.families import DatasetSplits, ModelParts, Regularizer
from techbench_builtins.models_impl import MLP

LR = 0.1
PROPS = {"dead_below": 0.0, "saturation": (0.05, 0.95)}


pytestmark = pytest.mark.usefixtures("one_thread")


def _splits(n: int = 32, nan: bool = False) -> DatasetSplits:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 5, generator=g)
    if nan:
        x[3, 2] = float("nan")
    y = torch.randint(0, 3, (n,), generator=g)
    return DatasetSplits("toy", x, y, x[:8], y[:8], x[:8], y[:8], "classification", 3)


def _model(seed: int = 0) -> MLP:
    torch.manual_seed(seed)
    parts = ModelParts(
        activation=nn.ReLU,
        weight_init=lambda t: nn.init.normal_(t, 0.0, 0.5),
        bias_init=lambda t: nn.init.uniform_(t, -4.0, 0.5),
    )
    return MLP((5,), 3, parts, depth=2, width=16)


def _fit(
    model: nn.Module,
    splits: DatasetSplits,
    batch_size: int,
    every: int,
    epochs: int = 1,
    health: bool = True,
    extra: tuple = (),
    regularizers: tuple = (),
):
    """Train ``model`` alone through the engine (a stack of one) with ``cb`` recording health."""
    cb = GradientHealth(every, PROPS) if health else None
    regularizer = regularizers[0] if regularizers else Regularizer()
    module = StackedModule(
        [Member(model, 0, {}, regularizer, cb)],
        "classification",
        lambda ps, hp: torch.optim.SGD(ps, lr=LR),
        None,
        total_steps=100,
    )
    with quiet_lightning():
        trainer = build_trainer(
            {"accelerator": "cpu", "deterministic": True}, {"epochs": epochs}, callbacks=list(extra)
        )
        trainer.fit(module, datamodule=StackedDataModule(splits, batch_size, [0]))
    return module, cb


def _series(cb: GradientHealth, step: int) -> dict[tuple[str, str], float]:
    return {(r["metric"], r["layer"]): r["value"] for r in cb.rows if r["step"] == step}


def test_full_batch_step_matches_float64_autograd() -> None:
    model = _model()
    ref = copy.deepcopy(model).double()
    splits = _splits()
    _, cb = _fit(model, splits, batch_size=32, every=1)
    got = _series(cb, 0)

    x, y = splits.x_train.double(), splits.y_train
    outs = []
    h = x
    for i, layer in enumerate(ref.weight_layers):
        h = h @ layer.weight.T + layer.bias
        if i < len(ref.weight_layers) - 1:
            h = torch.relu(h)
            outs.append(h.detach().numpy())
    nn.functional.cross_entropy(h, y).backward()
    grads = [layer.weight.grad for layer in ref.weight_layers]
    all_grads = torch.cat([p.grad.reshape(-1) for p in ref.parameters()])
    expected = {("grad_norm_global", ""): float(all_grads.norm()), ("nonfinite_grads", ""): 0.0}
    expected[("grad_ratio_first_last", "")] = float(grads[0].norm() / grads[-1].norm())
    for i, (layer, g) in enumerate(zip(ref.weight_layers, grads, strict=True)):
        w0 = layer.weight.detach()
        w1 = w0 - LR * g
        expected[("grad_norm", str(i))] = float(g.norm())
        expected[("weight_norm", str(i))] = float(w1.norm())
        expected[("update_ratio", str(i))] = float((w1 - w0).norm() / w0.norm())
        expected[("dist_from_init", str(i))] = float((w1 - w0).norm())
    for i, a in enumerate(outs):
        expected[("act_mean", str(i))] = float(a.mean())
        expected[("act_std", str(i))] = float(a.std())
        expected[("dead_fraction", str(i))] = float(np.mean(np.all(a <= 0.0, axis=0)))
        expected[("saturated_fraction", str(i))] = float(np.mean((a <= 0.05) | (a >= 0.95)))
    assert set(got) == set(expected)
    for key, value in expected.items():
        assert got[key] == pytest.approx(value, rel=2e-5, abs=1e-6), key
    assert (
        expected[("dead_fraction", "0")] + expected[("dead_fraction", "1")] > 0
    )  # biases kill some


@pytest.mark.parametrize("direct", [True, False])
def test_health_sees_clipped_gradients_and_records_the_norm_before(monkeypatch, direct) -> None:
    """Health records what the optimizer sees (the clipped gradient) and, beside it, the global
    norm before the transform; both against float64 autograd on a copy, clipped by hand."""
    import techbench.engine._lightning_compat as compat
    from techbench_builtins.regularizers_impl import ClipNorm

    if not direct:
        monkeypatch.setattr(compat, "plain_precision", lambda trainer: False)
    model = _model()
    ref = copy.deepcopy(model).double()
    splits = _splits()
    nn.functional.cross_entropy(ref(splits.x_train.double()), splits.y_train).backward()
    pre = float(torch.cat([p.grad.reshape(-1) for p in ref.parameters()]).norm())
    max_norm = 0.25 * pre
    _, cb = _fit(model, splits, batch_size=32, every=1, regularizers=(ClipNorm(max_norm),))
    got = _series(cb, 0)
    assert got[("grad_norm_pre_transform", "")] == pytest.approx(pre, rel=2e-5)
    assert got[("grad_norm_global", "")] == pytest.approx(max_norm, rel=2e-5)
    scale = max_norm / pre
    for i, layer in enumerate(ref.weight_layers):
        g = layer.weight.grad * scale
        w1 = layer.weight.detach() - LR * g
        assert got[("grad_norm", str(i))] == pytest.approx(float(g.norm()), rel=2e-5)
        assert got[("weight_norm", str(i))] == pytest.approx(float(w1.norm()), rel=2e-5)
    _, plain = _fit(_model(), splits, batch_size=32, every=1)
    assert ("grad_norm_pre_transform", "") not in _series(plain, 0)


class _WeightsBeforeStep(pl.Callback):
    """Clones of the weights just before each optimizer step."""

    def __init__(self, model: MLP) -> None:
        self.model, self.before = model, []

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        self.before.append([layer.weight.detach().clone() for layer in self.model.weight_layers])


def test_dist_from_init_accumulates_and_cadence() -> None:
    model = _model()
    init = [layer.weight.detach().clone() for layer in model.weight_layers]
    recorder = _WeightsBeforeStep(model)
    module, cb = _fit(model, _splits(40), batch_size=4, every=3, extra=(recorder,))
    steps = sorted({r["step"] for r in cb.rows})
    assert module.steps_done == 10 and steps == [0, 3, 6, 9]
    last = _series(cb, 9)
    for i, (layer, w0) in enumerate(zip(model.weight_layers, init, strict=True)):
        w, w_before = layer.weight.detach(), recorder.before[9][i]
        assert last[("dist_from_init", str(i))] == pytest.approx(float((w - w0).norm()), rel=1e-5)
        # the last step's update, not the distance from init (one buffer holds both in turn)
        assert last[("update_ratio", str(i))] == pytest.approx(
            float((w - w_before).norm() / w_before.norm()), rel=1e-4
        )
        assert last[("weight_norm", str(i))] == pytest.approx(
            float(layer.weight.detach().norm()), rel=1e-5
        )


def test_nonfinite_gradients_are_counted() -> None:
    model = _model()
    n_params = sum(p.numel() for p in model.parameters())
    module, cb = _fit(model, _splits(nan=True), batch_size=32, every=1)
    got = _series(cb, 0)
    assert got[("nonfinite_grads", "")] == n_params
    assert math.isnan(got[("grad_norm_global", "")])
    assert module.members[0].diverged_step == 0


def test_activation_metrics_the_activation_cannot_have_are_left_out() -> None:
    cb = GradientHealth(1, {"dead_below": None, "saturation": (0.01, 0.99)})
    assert cb.act_metrics == ["act_mean", "act_std", "saturated_fraction"]
    with pytest.raises(ValueError):
        GradientHealth(0)


def test_one_host_sync_per_logged_step(monkeypatch) -> None:
    counts = {"n": 0}
    for name in ("tolist", "item", "__float__", "__bool__", "__int__"):
        original = getattr(torch.Tensor, name)

        def wrapper(self, *a, _original=original, **kw):
            counts["n"] += 1
            return _original(self, *a, **kw)

        monkeypatch.setattr(torch.Tensor, name, wrapper)

    def syncs(health: bool) -> int:
        counts["n"] = 0
        _fit(_model(), _splits(40), batch_size=4, every=1, health=health)
        return counts["n"]

    without, every_step = syncs(False), syncs(True)
    assert every_step - without == 10  # 10 logged steps, one transfer each
