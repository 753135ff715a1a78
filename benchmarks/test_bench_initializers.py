"""Microbenchmarks: each initializer filling a (1024, 1024) float32 weight.

``fast``: the plugin's ``init(tensor)``; ``torch``: torch.nn.init's own function with the same
law; ``reference``: sampling the reference target in float64 (scipy's ``target.rvs``; numpy's
QR of a Gaussian with sign fix for orthogonal; the exact values for identity), copied in.
LSUV's ``fit`` is timed separately on the 10-layer MLP of the conformance check. Timed with one
thread (torch and BLAS). Run with ``pytest benchmarks --benchmark-enable --benchmark-only``;
results are grouped by initializer so the three implementations sit side by side.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import torch
from torch import nn

from techbench.techniques.registry import get_spec
from techbench.testing.initializer import ExactTarget, OrthogonalTarget, UnitVarianceTarget, mlp

SHAPE = (1024, 1024)

TORCH_OWN: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "zeros": nn.init.zeros_,
    "constant": lambda t: nn.init.constant_(t, 0.0),
    "normal": lambda t: nn.init.normal_(t, 0.0, 0.01),
    "small_normal": lambda t: nn.init.normal_(t, 0.0, 0.01),
    "large_normal": lambda t: nn.init.normal_(t, 0.0, 1.0),
    "uniform": lambda t: nn.init.uniform_(t, -0.05, 0.05),
    "lecun_normal": lambda t: nn.init.kaiming_normal_(t, nonlinearity="linear"),
    "lecun_uniform": lambda t: nn.init.kaiming_uniform_(t, nonlinearity="linear"),
    "xavier_normal": nn.init.xavier_normal_,
    "xavier_uniform": nn.init.xavier_uniform_,
    "he_normal": lambda t: nn.init.kaiming_normal_(t, nonlinearity="relu"),
    "he_uniform": lambda t: nn.init.kaiming_uniform_(t, nonlinearity="relu"),
    "orthogonal": nn.init.orthogonal_,
    "identity": nn.init.eye_,
    "lsuv": nn.init.orthogonal_,
    "small_positive": lambda t: nn.init.constant_(t, 0.01),
}


def _reference_fill(name: str) -> Callable[[torch.Tensor], torch.Tensor]:
    spec = get_spec(name, "initializer")
    target = spec.load_reference()(SHAPE, **spec.defaults())
    if isinstance(target, UnitVarianceTarget):
        target = target.start
    rng = np.random.default_rng(0)
    if isinstance(target, OrthogonalTarget):

        def sample() -> np.ndarray:
            # Haar sampler (Mezzadri 2007): QR of a Gaussian matrix, signs of diag(R) fixed.
            q, r = np.linalg.qr(rng.standard_normal(SHAPE))
            return target.gain * q * np.sign(np.diag(r))

    elif isinstance(target, ExactTarget):

        def sample() -> np.ndarray:
            return np.asarray(target.values)

    else:

        def sample() -> np.ndarray:
            return target.rvs(size=SHAPE, random_state=rng)

    def fill(tensor: torch.Tensor) -> torch.Tensor:
        return tensor.copy_(torch.from_numpy(sample()))

    return fill


@pytest.mark.parametrize("impl", ["fast", "torch", "reference"])
@pytest.mark.parametrize("name", list(TORCH_OWN))
def test_initializer(benchmark, name: str, impl: str) -> None:
    benchmark.group = f"init {name} {SHAPE}"
    if impl == "fast":
        fill = get_spec(name, "initializer").create()
    elif impl == "torch":
        fill = TORCH_OWN[name]
    else:
        fill = _reference_fill(name)
    tensor = torch.empty(SHAPE)
    rounds = 5 if name in ("orthogonal", "lsuv") else 20
    benchmark.pedantic(lambda: fill(tensor), rounds=rounds, warmup_rounds=1)
    assert bool(torch.isfinite(tensor).all())


@pytest.mark.parametrize("activation", [nn.Tanh, nn.ReLU], ids=["tanh", "relu"])
def test_lsuv_fit(benchmark, activation) -> None:
    benchmark.group = "lsuv fit, 10-layer MLP (32 -> 64 x 9 -> 10), batch 256"
    init = get_spec("lsuv", "initializer").create()
    torch.manual_seed(0)
    model = mlp(activation)
    x = torch.randn(256, 32)
    records = benchmark.pedantic(lambda: init.fit(model, x), rounds=10, warmup_rounds=1)
    assert all(r.converged for r in records)
