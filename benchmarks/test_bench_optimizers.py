"""Microbenchmark: one optimizer step on a ~1M-parameter model (a 1000x1000 linear layer).

For each optimizer: the fast implementation (``spec.create``), torch.optim's own equivalent
where one exists, and the float64 reference (per-tensor ``UpdateRule.step``). Run with
``pytest benchmarks --benchmark-enable --benchmark-only``; each optimizer is its own group.
Timed with one intra-op thread, so that the numbers are stable on a shared machine.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

from techbench.techniques.registry import get_spec

# (case id, technique, hyper-parameters, torch.optim's own equivalent or None)
CASES: list[tuple[str, str, dict[str, Any], Any]] = [
    ("sgd", "sgd", {"lr": 0.01}, lambda ps: torch.optim.SGD(ps, lr=0.01)),
    (
        "momentum",
        "momentum",
        {"lr": 0.01, "momentum": 0.9},
        lambda ps: torch.optim.SGD(ps, lr=0.01, momentum=0.9),
    ),
    (
        "nesterov",
        "nesterov",
        {"lr": 0.01, "momentum": 0.9},
        lambda ps: torch.optim.SGD(ps, lr=0.01, momentum=0.9, nesterov=True),
    ),
    ("adagrad", "adagrad", {"lr": 0.01}, lambda ps: torch.optim.Adagrad(ps, lr=0.01)),
    ("rmsprop", "rmsprop", {"lr": 0.01}, lambda ps: torch.optim.RMSprop(ps, lr=0.01)),
    (
        "rmsprop_eps_inside",
        "rmsprop",
        {"lr": 0.01, "eps_placement": "inside"},
        lambda ps: torch.optim.RMSprop(ps, lr=0.01),
    ),
    ("adam", "adam", {"lr": 1e-3}, lambda ps: torch.optim.Adam(ps, lr=1e-3)),
    (
        "adam_eps_inside",
        "adam",
        {"lr": 1e-3, "eps_placement": "inside"},
        lambda ps: torch.optim.Adam(ps, lr=1e-3),
    ),
    (
        "adam_no_bias_correction",
        "adam",
        {"lr": 1e-3, "bias_correction": False},
        lambda ps: torch.optim.Adam(ps, lr=1e-3),
    ),
    ("adamw", "adamw", {"lr": 1e-3}, lambda ps: torch.optim.AdamW(ps, lr=1e-3)),
    ("nadam", "nadam", {"lr": 2e-3}, lambda ps: torch.optim.NAdam(ps, lr=2e-3)),
    ("radam", "radam", {"lr": 1e-3}, lambda ps: torch.optim.RAdam(ps, lr=1e-3)),
    ("lion", "lion", {"lr": 1e-4}, None),
]


def _model_params(dtype: torch.dtype = torch.float32) -> list[torch.Tensor]:
    torch.manual_seed(0)
    layer = torch.nn.Linear(1000, 1000).to(dtype)
    params = list(layer.parameters())
    for p in params:
        p.grad = torch.randn_like(p)
    return params


def _bench_optimizer(benchmark: Any, opt: torch.optim.Optimizer) -> None:
    opt.step()  # allocate the state outside the timed region
    benchmark(opt.step)


@pytest.mark.parametrize(("case", "name", "hp", "make_torch"), CASES, ids=[c[0] for c in CASES])
def test_fast(benchmark: Any, case: str, name: str, hp: dict, make_torch: Any) -> None:
    benchmark.group = case
    params = _model_params()
    assert sum(p.numel() for p in params) == 1_001_000
    _bench_optimizer(benchmark, get_spec(name, "optimizer").create(params, **hp))


@pytest.mark.parametrize(
    ("case", "name", "hp", "make_torch"),
    [c for c in CASES if c[3] is not None],
    ids=[c[0] for c in CASES if c[3] is not None],
)
def test_torch_own(benchmark: Any, case: str, name: str, hp: dict, make_torch: Any) -> None:
    benchmark.group = case
    _bench_optimizer(benchmark, make_torch(_model_params()))


@pytest.mark.parametrize(("case", "name", "hp", "make_torch"), CASES, ids=[c[0] for c in CASES])
def test_reference(benchmark: Any, case: str, name: str, hp: dict, make_torch: Any) -> None:
    benchmark.group = case
    spec = get_spec(name, "optimizer")
    rule, full = spec.load_reference(), spec.hyperparams(hp)
    params = [p.detach().to(torch.float64) for p in _model_params()]
    grads = [p.grad.to(torch.float64) for p in _model_params()]
    states = [rule.init_state(p, **full) for p in params]
    t = [0]

    def step() -> None:
        t[0] += 1
        for i, (g, s) in enumerate(zip(grads, states, strict=True)):
            params[i] = rule.step(params[i], g, s, t[0], **full)

    step()
    benchmark(step)
