"""Microbenchmarks: forward + backward of each normalizer, fast vs reference vs torch's module.

Run with ``pytest benchmarks/test_bench_normalizers.py --benchmark-enable --benchmark-only``.
One benchmark group per (normalizer, shape); float32 on CPU, one intra-op thread (so that the
ratios do not depend on what else the machine runs). The reference is the float64-ready
plain-tensor forward (autograd backward; batch norm: its hand-derived backward) run in float32.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from techbench.techniques.registry import get_spec

SHAPES = {"256x512": (256, 512), "64x32x16x16": (64, 32, 16, 16)}
NAMES = ["none", "batchnorm", "layernorm", "groupnorm", "rmsnorm", "scalenorm"]


def _torch_module(name: str, shape: tuple[int, ...]) -> nn.Module | None:
    c = shape[1]
    if name == "none":
        return nn.Identity()
    if name == "batchnorm":
        return nn.BatchNorm1d(c) if len(shape) == 2 else nn.BatchNorm2d(c)
    if name == "layernorm":
        return nn.LayerNorm(shape[1:])
    if name == "groupnorm":
        return nn.GroupNorm(get_spec("groupnorm").defaults()["num_groups"], c)
    if name == "rmsnorm":
        return nn.RMSNorm(shape[1:], eps=get_spec("rmsnorm").defaults()["eps"])
    return None


def _module_step(module: nn.Module, x: torch.Tensor, dy: torch.Tensor):
    params = list(module.parameters())

    def step():
        xg = x.detach().requires_grad_(True)
        y = module(xg)
        torch.autograd.grad(y, [xg, *params], dy)

    return step


def _reference_step(name: str, x: torch.Tensor, dy: torch.Tensor):
    spec = get_spec(f"normalizer/{name}")
    ref, hp = spec.load_reference(), spec.hyperparams()
    module = spec.create(x.shape[1])
    params = {n: p.detach().clone().requires_grad_(True) for n, p in module.named_parameters()}
    state = {n: b.clone() for n, b in module.named_buffers()}

    if hasattr(ref, "backward"):

        def step():
            _, cache = ref.forward(x, params, state, True, **hp)
            ref.backward(dy, cache)

        return step

    def step():
        xg = x.detach().requires_grad_(True)
        y, _ = ref.forward(xg, params, state, True, **hp)
        torch.autograd.grad(y, [xg, *params.values()], dy, allow_unused=True)

    return step


@pytest.mark.parametrize("shape_id", list(SHAPES))
@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("impl", ["fast", "reference", "torch"])
def test_forward_backward(benchmark, name, shape_id, impl):
    shape = SHAPES[shape_id]
    g = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=g)
    dy = torch.randn(shape, generator=g)
    benchmark.group = f"{name} {shape_id}"
    if impl == "fast":
        step = _module_step(get_spec(f"normalizer/{name}").create(shape[1]).train(), x, dy)
    elif impl == "reference":
        step = _reference_step(name, x, dy)
    else:
        module = _torch_module(name, shape)
        if module is None:
            pytest.skip(f"torch has no {name} module")
        step = _module_step(module.train(), x, dy)
    benchmark(step)
