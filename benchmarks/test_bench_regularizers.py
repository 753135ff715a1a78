"""Microbenchmarks of the regularizers.

- ``penalty-l1`` / ``penalty-l2``: penalty + backward on a ~1.05M-parameter MLP (float32):
  ``fast`` is the plugin's ``penalty`` with autograd; ``reference`` the float64 formula with its
  analytic gradient; ``torch`` the closest torch idiom (``torch._foreach_norm`` for l2,
  ``parameters_to_vector(...).abs().sum()`` for l1) with autograd.
- ``dropout``: forward + backward on a (256, 4096) float32 tensor: ``fast`` the plugin's module,
  ``torch`` ``nn.Dropout``, ``reference`` the law given a precomputed mask.
- ``label_smoothing``: loss + backward, (512, 100) logits: ``fast``, ``torch``
  (``F.cross_entropy(label_smoothing=)``), ``reference`` (float64 formula, analytic gradient).
- ``max_norm``: one projection of the MLP's weights: ``fast`` vs ``torch.renorm``.
- ``augment``: crop + flip of a (128, 3, 32, 32) batch: ``fast`` vs the per-sample reference.

Torch runs single-threaded here (``TECHBENCH_BENCH_THREADS`` overrides): on a shared 2-core
machine, intra-op thread barriers turn other processes' load into 100 ms stalls, and the ratios
between implementations are what these benchmarks are for.

Run with ``pytest benchmarks --benchmark-enable --benchmark-only``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from techbench.techniques.registry import get_spec
from techbench_builtins import regularizers_impl as impl


@pytest.fixture(autouse=True)
def _threads() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(int(os.environ.get("TECHBENCH_BENCH_THREADS", "1")))
    yield
    torch.set_num_threads(before)


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(512, 1024), nn.ReLU(), nn.Linear(1024, 512), nn.Linear(512, 10))


def _zero(model: nn.Module) -> None:
    for p in model.parameters():
        p.grad = None


def _penalty_fast(name: str) -> Callable[[], None]:
    model = _mlp()
    reg = get_spec(name, "regularizer").create(lam=1e-4)

    def run() -> None:
        _zero(model)
        reg.penalty(model).backward()

    return run


def _penalty_reference(name: str) -> Callable[[], None]:
    named = list(_mlp().named_parameters())
    ref = get_spec(name, "regularizer").load_reference()

    def run() -> None:
        ref(named, lam=1e-4)

    return run


def _penalty_torch(name: str) -> Callable[[], None]:
    model = _mlp()
    weights = [p for p in model.parameters() if p.dim() >= 2]

    def run_l2() -> None:
        _zero(model)
        norms = torch._foreach_norm(weights)
        (1e-4 * torch.stack(norms).pow(2).sum()).backward()

    def run_l1() -> None:
        _zero(model)
        (1e-4 * nn.utils.parameters_to_vector(weights).abs().sum()).backward()

    return run_l2 if name == "l2" else run_l1


@pytest.mark.parametrize("impl_name", ["fast", "reference", "torch"])
@pytest.mark.parametrize("name", ["l1", "l2"])
def test_penalty_backward(benchmark: pytest.FixtureRequest, name: str, impl_name: str) -> None:
    benchmark.group = f"penalty-{name}"
    make = {"fast": _penalty_fast, "reference": _penalty_reference, "torch": _penalty_torch}
    assert sum(p.numel() for p in _mlp().parameters()) > 1_000_000
    benchmark(make[impl_name](name))


@pytest.mark.parametrize("impl_name", ["fast", "reference", "torch"])
def test_dropout_forward_backward(benchmark: pytest.FixtureRequest, impl_name: str) -> None:
    benchmark.group = "dropout"
    p = 0.5
    x = torch.randn(256, 4096, requires_grad=True)
    g = torch.randn(256, 4096)
    if impl_name == "fast":
        module: Callable[[torch.Tensor], torch.Tensor] = impl.Dropout(p).make_module().train()
    elif impl_name == "torch":
        module = nn.Dropout(p).train()
    else:
        mask = torch.rand(256, 4096) >= p

        def module(t: torch.Tensor) -> torch.Tensor:
            return impl.dropout_reference(t, mask, p=p)

    def run() -> None:
        x.grad = None
        module(x).backward(g)

    benchmark(run)


@pytest.mark.parametrize("impl_name", ["fast", "reference", "torch"])
def test_label_smoothing(benchmark: pytest.FixtureRequest, impl_name: str) -> None:
    benchmark.group = "label_smoothing"
    z = torch.randn(512, 100, requires_grad=True)
    t = torch.randint(0, 100, (512,))
    reg = impl.LabelSmoothing(0.1)

    def fast() -> None:
        z.grad = None
        reg.loss(z, t).backward()

    def torch_own() -> None:
        z.grad = None
        F.cross_entropy(z, t, label_smoothing=0.1).backward()

    def reference() -> None:
        impl.label_smoothing_reference(z, t, epsilon=0.1)

    benchmark({"fast": fast, "torch": torch_own, "reference": reference}[impl_name])


@pytest.mark.parametrize("impl_name", ["fast", "torch"])
def test_max_norm(benchmark: pytest.FixtureRequest, impl_name: str) -> None:
    benchmark.group = "max_norm"
    model = _mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    reg = impl.MaxNorm(c=0.5)
    weights = [p for p in model.parameters() if p.dim() >= 2]

    @torch.no_grad()
    def torch_own() -> None:
        for w in weights:
            w.copy_(torch.renorm(w, 2, 0, 0.5))

    benchmark({"fast": lambda: reg.after_step(model, opt), "torch": torch_own}[impl_name])


@pytest.mark.parametrize("impl_name", ["fast", "reference"])
def test_augment(benchmark: pytest.FixtureRequest, impl_name: str) -> None:
    benchmark.group = "augment"
    x = torch.rand(128, 3, 32, 32)
    y = torch.arange(128)
    reg = impl.Augment(padding=4, flip_p=0.5)
    gen = torch.Generator().manual_seed(0)
    shifts, flips = reg.draw(128, gen)

    def fast() -> None:
        reg.transform_batch(x, y, gen)

    def reference() -> None:
        impl.augment_reference(x, shifts, flips, padding=4)

    benchmark({"fast": fast, "reference": reference}[impl_name])
