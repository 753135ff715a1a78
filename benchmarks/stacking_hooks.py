"""Gradient and after-step regularizers stacked vs one by one, side by side in one run.

K seeds of the ``demo`` network (digits, MLP 2x64, Xavier init, Adam 3e-3, batch 128, gradient
health every 10 steps) with one regularizer whose hooks run per member in a stack
(``transform_gradients``, ``after_step``: :mod:`techbench.engine.stacked_hooks`), trained with
:func:`techbench.engine.trial.run_trial` one after another, with :func:`techbench.engine.trial.run_stack`
as one stack, and (``loop`` column) as one stack with the regularizers' stacked implementations
switched off (every member's hook called on its own views), in alternating rounds. Prints the
median wall time of each, the ratios, and the largest relative difference between a member's
final validation loss and its trial's. First, the hook alone: one gradient transform of K
members' stacked gradients of that network through the regularizer's stacked implementation vs
the per-member loop (binding each member's gradient views included).

    python benchmarks/stacking_hooks.py                            # clip_norm and weight_decay
    python benchmarks/stacking_hooks.py --regularizers grad_noise max_norm --members 8
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from techbench.engine import stacked_hooks
from techbench.engine.trial import run_stack, run_trial
from techbench.schema import complete_config


def configs(members: int, regularizer: str, epochs: int) -> list[dict]:
    base = {
        "dataset": {"name": "digits", "params": {}},
        "model": {"name": "mlp", "params": {"depth": 2, "width": 64}},
        "initializer": {"name": "xavier_normal", "params": {}},
        "optimizer": {"name": "adam", "params": {"lr": 0.003}},
        "regularizer": {"name": regularizer, "params": {}},
        "budget": {"epochs": epochs, "batch_size": 128},
        "trainer": {"accelerator": "cpu"},
        "health": {"enabled": True, "every_n_steps": 10},
    }
    return [complete_config({**base, "seed": s}) for s in range(members)]


def looped(cfgs: list[dict]) -> list:
    stacked_hooks.STACKED_IMPLEMENTATIONS = False
    try:
        return run_stack(cfgs)
    finally:
        stacked_hooks.STACKED_IMPLEMENTATIONS = True


def has_stacked_implementation(name: str) -> bool:
    from techbench.techniques.registry import default_registry

    spec = default_registry().get_spec(name, "regularizer")
    return stacked_hooks.stacked_transform(type(spec.create())) is not None


def measure(cfgs: list[dict], rounds: int) -> None:
    ways: dict[str, Callable[[], list]] = {
        "one by one": lambda: [run_trial(c) for c in cfgs],
        "stacked": lambda: run_stack(cfgs),
    }
    if has_stacked_implementation(cfgs[0]["regularizer"]["name"]):
        ways["stacked, loop"] = lambda: looped(cfgs)
    times: dict[str, list[float]] = {name: [] for name in ways}
    worst = 0.0
    for r in range(rounds):
        order = list(ways) if r % 2 == 0 else list(reversed(ways))
        out = {}
        for name in order:
            t0 = time.perf_counter()
            out[name] = ways[name]()
            times[name].append(time.perf_counter() - t0)
        for name in list(ways)[1:]:
            for x, y in zip(out["one by one"], out[name], strict=True):
                assert x.status == y.status == "completed", (x.meta.error, y.meta.error)
                ref = x.metric("val", "loss")[-1]
                worst = max(worst, abs(y.metric("val", "loss")[-1] - ref) / abs(ref))
    med = {name: statistics.median(t) for name, t in times.items()}
    for name, t in times.items():
        print(
            f"  {name:14s} median {med[name]:6.2f} s  (rounds: {', '.join(f'{v:.2f}' for v in t)})"
        )
    base = med["one by one"]
    ratios = [f"{name} / one by one {med[name] / base:.3f}" for name in list(ways)[1:]]
    print(
        f"  ratio {', '.join(ratios)}; "
        f"largest relative difference of a final validation loss {worst:.1e}"
    )


def hook_only(members: int, repeats: int = 15, steps: int = 200) -> None:
    """Microseconds per step of the stacked engine's gradient-transform call, both ways."""
    from torch import nn

    from techbench.engine.stacked_hooks import StackedHooks
    from techbench_builtins.regularizers_impl import ClipNorm, ClipValue

    def net() -> nn.Module:
        return nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 64), nn.Linear(64, 10))

    models = [net() for _ in range(members)]
    names = [n for n, _ in models[0].named_parameters()]
    leaves = {
        n: nn.Parameter(torch.stack([m.get_parameter(n).detach() for m in models])) for n in names
    }
    for leaf in leaves.values():
        leaf.grad = torch.randn_like(leaf)
    optimizer = torch.optim.SGD(list(leaves.values()), lr=0.1)
    live, group_of = list(range(members)), [0] * members
    gens = [torch.Generator() for _ in range(members)]

    def rows(lo: int, hi: int) -> list[torch.Tensor]:
        return [leaf.grad[lo:hi] for leaf in leaves.values() if leaf.grad is not None]

    for cls in (ClipNorm, ClipValue):
        hooks = StackedHooks([cls(1e9) for _ in models], models)
        hooks.bind(lambda n, k: (leaves[n], k), [optimizer], group_of)
        times: dict[bool, list[float]] = {True: [], False: []}
        for _ in range(repeats):
            for fast in (True, False):
                stacked_hooks.STACKED_IMPLEMENTATIONS = fast
                hooks._plan = None
                t0 = time.perf_counter()
                for _ in range(steps):
                    bound = hooks.needs_grads(live, group_of)
                    hooks.bind_grads(bound)
                    hooks.transform_gradients(live, group_of, 0, gens, rows)
                    hooks.release_grads(bound)
                times[fast].append((time.perf_counter() - t0) / steps * 1e6)
        stacked_hooks.STACKED_IMPLEMENTATIONS = True
        a, b = statistics.median(times[True]), statistics.median(times[False])
        print(
            f"{cls.__name__} hook, {members} members: stacked {a:.0f} us/step, per-member "
            f"loop {b:.0f} us/step (ratio {a / b:.2f})"
        )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--regularizers", nargs="+", default=["clip_norm", "weight_decay"])
    p.add_argument("--members", type=int, default=8)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--epochs", type=int, default=5)
    a = p.parse_args()
    hook_only(a.members)
    run_trial(configs(1, "none", 1)[0])  # warm-up: imports, data, Lightning
    run_stack(configs(2, "none", 1))
    print(f"{a.members} members, cpu ({torch.get_num_threads()} threads), {a.epochs} epochs")
    for name in a.regularizers:
        print(f"{name}:")
        measure(configs(a.members, name, a.epochs), a.rounds)


if __name__ == "__main__":
    main()
