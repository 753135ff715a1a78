"""Microbenchmarks: forward + backward of each activation on a (256, 1024) float32 tensor.

``fast``: the plugin's module with autograd; ``torch``: torch's own functional with autograd;
``reference``: the float64 formula and its analytic derivative (value(x) and g * derivative(x)).
Timed with one torch thread. Run with ``pytest benchmarks --benchmark-enable --benchmark-only``; results are grouped by
activation so that the three implementations sit side by side.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F

from techbench.techniques.registry import get_spec

TORCH_OWN: dict[str, Callable[[torch.Tensor], torch.Tensor] | None] = {
    "identity": None,
    "sigmoid": torch.sigmoid,
    "tanh": torch.tanh,
    "relu": F.relu,
    "leaky_relu": lambda x: F.leaky_relu(x, 0.01),
    "prelu": lambda x: F.prelu(x, _PRELU_WEIGHT),
    "elu": F.elu,
    "selu": F.selu,
    "gelu": F.gelu,
    "silu": F.silu,
    "softplus": F.softplus,
    "mish": F.mish,
    "softsign": F.softsign,
}

SHAPE = (256, 1024)
_PRELU_WEIGHT = torch.full((1,), 0.25, requires_grad=True)  # learnable, as the plugin's


def _inputs() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(SHAPE, generator=gen) * 3
    return x, torch.randn(SHAPE, generator=gen)


def _autograd_step(func: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[], torch.Tensor]:
    x, g = _inputs()
    x.requires_grad_(True)

    def step() -> torch.Tensor:
        x.grad = None
        func(x).backward(g)
        return x.grad

    return step


@pytest.mark.parametrize("impl", ["fast", "torch", "reference"])
@pytest.mark.parametrize("name", sorted(TORCH_OWN))
def test_forward_backward(benchmark, name: str, impl: str) -> None:
    spec = get_spec(name, "activation")
    benchmark.group = f"activation/{name} fwd+bwd {SHAPE}"
    if impl == "fast":
        step = _autograd_step(spec.create())
    elif impl == "torch":
        own = TORCH_OWN[name]
        if own is None:
            pytest.skip(f"torch has no functional {name}")
        step = _autograd_step(own)
    else:
        ref = spec.load_reference()
        hp = spec.defaults()
        x, g = _inputs()
        x64, g64 = x.double(), g.double()

        def step() -> torch.Tensor:
            ref.value(x64, **hp)
            return g64 * ref.derivative(x64, **hp)

    for _ in range(3):  # warm up the allocator and kernels before timing
        step()
    out = benchmark(step)
    assert out.shape == SHAPE
