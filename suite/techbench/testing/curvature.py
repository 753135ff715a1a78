"""Conformance of the curvature probe against the exact Hessian.

Two checks, each raising ``AssertionError`` with the numbers when the probe is off by more
than ``tol`` (relative) and returning the largest relative error otherwise:

- :func:`check_sharpness`: a probe function (``stacked_sharpness``'s signature) on a stack of
  8 tiny float64 MLPs with different seeds, against ``eigvalsh`` of each member's Hessian from
  ``torch.autograd.functional.hessian``;
- :func:`check_engine_probe`: the engine's recorded step-0 ``sharpness`` of a float64 trial
  trained with a learning rate of 1e-12 (its weights stay its initial ones), against the exact
  top eigenvalue of the Hessian of the task loss at the trial's initial weights on the trial's
  probe batch (rebuilt from the seed as the probe draws it). It fails for a probe of the wrong
  loss, the wrong batch or the wrong weights. Under a ``parametrization`` whose learning-rate
  multipliers m are not 1 (muP) the exact value is that of M^{1/2} H M^{1/2}, M = diag(m): the
  operator whose top eigenvalue a per-tensor learning rate lr * m is stable under at 2/lr.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn
from torch.func import functional_call, stack_module_state

from ..engine.curvature import stacked_sharpness
from ..engine.curvature_probe import CURVATURE_SEED_OFFSET

MEMBERS = 8


def exact_top(
    loss: Callable[..., torch.Tensor],
    params: Mapping[str, torch.Tensor],
    *data: Any,
    multipliers: Mapping[str, float] | None = None,
) -> float:
    """The largest eigenvalue of the Hessian H of ``loss(params, *data)`` (one member's
    parameters, no K dimension), from the dense Hessian; with ``multipliers`` (name -> m) that
    of M^{1/2} H M^{1/2}, M the diagonal holding each parameter's m on its entries."""
    names = list(params)
    shapes = [params[n].shape for n in names]
    sizes = [s.numel() for s in shapes]
    flat = torch.cat([params[n].detach().flatten() for n in names])

    def f(w: torch.Tensor) -> torch.Tensor:
        parts = zip(names, w.split(sizes), shapes, strict=True)
        return loss({n: c.view(s) for n, c, s in parts}, *data)

    hessian = torch.autograd.functional.hessian(f, flat)
    if multipliers is not None:
        root = torch.cat(
            [
                torch.full((z,), multipliers[n] ** 0.5, dtype=hessian.dtype)
                for n, z in zip(names, sizes, strict=True)
            ]
        )
        hessian = root[:, None] * hessian * root[None, :]
    return float(torch.linalg.eigvalsh(hessian)[-1])


def _relative(
    probe: torch.Tensor | list[float], exact: list[float], tol: float, what: str
) -> float:
    values = torch.as_tensor(probe, dtype=torch.float64).flatten().tolist()
    errors = [abs(p - e) / abs(e) for p, e in zip(values, exact, strict=True)]
    worst = max(errors)
    assert worst <= tol, f"{what}: probe {values} against exact {exact}: error {worst:.2e} > {tol}"
    return worst


def check_sharpness(probe: Callable[..., Any] = stacked_sharpness, tol: float = 0.01) -> float:
    """``probe(loss, params, batch, iterations=20)`` (values first, ``[K]``) on 8 tiny tanh
    MLPs (4 -> 8 -> 3, float64, seeds 100..107) on a shared batch of 32, against the exact
    Hessian per member."""
    models = [_seeded(100 + s) for s in range(MEMBERS)]
    params, _ = stack_module_state(models)
    params = {n: p.detach() for n, p in params.items()}
    g = torch.Generator().manual_seed(0)
    x = torch.randn(32, 4, generator=g, dtype=torch.float64)
    y = torch.randn(32, 3, generator=g, dtype=torch.float64)
    skeleton = models[0]

    def loss(p: Mapping[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return ((functional_call(skeleton, dict(p), (x,)) - y) ** 2).mean()

    values = probe(loss, params, (x, y), iterations=20)[0]
    exact = [exact_top(loss, {n: v[k] for n, v in params.items()}, x, y) for k in range(MEMBERS)]
    return _relative(values, exact, tol, "stacked sharpness")


def _seeded(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3)).double()


def check_engine_probe(
    seeds: tuple[int, ...] = (0, 1),
    tol: float = 0.01,
    parametrization: Mapping[str, Any] | None = None,
    optimizer: str = "sgd",
    metric: str = "sharpness",
) -> float:
    """The engine's step-0 ``metric`` of a stack of float64 trials (moons, a 2 -> 8 -> 2 tanh
    MLP, ``optimizer`` at lr 1e-12, probe batch 64, ``parametrization``) against the exact
    top eigenvalue of the Hessian, scaled by the learning-rate multipliers."""
    from ..engine.trial import run_stack
    from ..schema import complete_config

    base = {
        "dataset": {"name": "moons", "params": {"n_samples": 400}},
        "model": {"name": "mlp", "params": {"depth": 1, "width": 8}},
        "activation": "tanh",
        "optimizer": {"name": optimizer, "params": {"lr": 1e-12}},
        "budget": {"max_steps": 1, "epochs": None, "batch_size": 32},
        "trainer": {"accelerator": "cpu", "precision": "64-true"},
        "health": {
            "enabled": False,
            "curvature": {"every_n_steps": 1, "iterations": 20, "batch": 64},
        },
    }
    if parametrization is not None:
        base["parametrization"] = parametrization
    configs = [complete_config({**base, "seed": s}) for s in seeds]
    outcomes = run_stack(configs)
    probed, exact = [], []
    for cfg, outcome in zip(configs, outcomes, strict=True):
        assert outcome.status == "completed", outcome.meta.error
        probed.append(outcome.metric("curvature", metric)[0])
        exact.append(_initial_top(cfg, 64))
    return _relative(probed, exact, tol, "engine step-0 sharpness")


def _initial_top(cfg: Mapping[str, Any], batch: int) -> float:
    """The exact top eigenvalue of M^{1/2} H M^{1/2}, H the Hessian of ``cfg``'s task loss at
    its initial weights on its probe batch (both rebuilt from its seed as the engine draws
    them), M its parameters' learning-rate multipliers."""
    from ..engine.lit import task_loss
    from ..engine.trial import build_model, prepare
    from ..techniques.parametrize import lr_multiplier

    specs, splits = prepare(cfg, None)
    torch.manual_seed(int(cfg["seed"]))  # as the engine seeds before building
    model, _ = build_model(cfg, specs, splits)
    model = model.double()
    gen = torch.Generator().manual_seed(int(cfg["seed"]) + CURVATURE_SEED_OFFSET)
    pick = torch.randperm(len(splits.x_train), generator=gen)[:batch]
    x, y = splits.x_train[pick].double(), splits.y_train[pick]
    fn = task_loss(splits.task)

    def loss(p: Mapping[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return fn(functional_call(model, dict(p), (x,)), y)

    params = dict(model.named_parameters())
    multipliers = {n: lr_multiplier(p) for n, p in params.items()}
    return exact_top(loss, params, x, y, multipliers=multipliers)
