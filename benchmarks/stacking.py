"""One by one vs stacked, through techbench's own runner, measured side by side in one run.

K seeds of the ``demo`` matrix's network (digits, MLP 2x64, Xavier init, Adam 3e-3, batch 128,
10 epochs, gradient health every 10 steps as the demo sets it) are trained with
:func:`techbench.engine.trial.run_trial` one after another and with :func:`techbench.engine.trial.run_stack`
as one stack, in alternating rounds (the order flips each round, so drift on a shared machine
hits both); prints the median wall time of each and their ratio, and the largest relative
difference between a member's final validation loss and its trial's.

``--workload charlm``: K seeds of one ``charlm`` trial instead (character-level transformer,
width 64, 2 blocks, context 64, on 200k characters of pysource; layernorm, GELU, AdamW), cut to
one epoch of ``--steps`` steps; it also prints the training seconds (without the epoch-end and
test evaluations). On the 2-core CPU under load (median of
3 rounds, 40 steps): one by one 153 s, stacked 238 s (ratio 1.55); training only 121 s vs 159 s
(1.32): vmapped linears lose the fused bias add and CPU attention runs member by member.

    python benchmarks/stacking.py                       # 8 members, CPU, 3 rounds
    python benchmarks/stacking.py --members 64 --accelerator gpu --rounds 2
    python benchmarks/stacking.py --health off
    python benchmarks/stacking.py --distinct-lr          # 8 members, 8 learning rates
    python benchmarks/stacking.py --dropout 0.2           # members with dropout (own masks)

``--distinct-lr`` gives member k its own learning rate (log-spaced over 1e-3..1e-2, a tuning
search) and adds a third contender: the stack with one optimizer per distinct setting (the
optimizer's stacked implementation hidden, as for a plugin that declares none), next to the
stack with one stacked optimizer carrying per-member learning rates.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from techbench.engine.trial import run_stack, run_trial
from techbench.schema import complete_config


def configs(
    members: int,
    accelerator: str,
    health: bool,
    epochs: int,
    distinct_lr: bool = False,
    dropout: float | None = None,
) -> list[dict]:
    base = {
        "dataset": {"name": "digits", "params": {}},
        "model": {"name": "mlp", "params": {"depth": 2, "width": 64}},
        "initializer": {"name": "xavier_normal", "params": {}},
        "optimizer": {"name": "adam", "params": {"lr": 0.003}},
        "budget": {"epochs": epochs, "batch_size": 128},
        "trainer": {"accelerator": accelerator},
        "health": {"enabled": health, "every_n_steps": 10},
    }
    if dropout is not None:
        base["regularizer"] = {"name": "dropout", "params": {"p": dropout}}
    out = []
    for s in range(members):
        cfg = {**base, "seed": s}
        if distinct_lr:
            lr = 1e-3 * 10 ** (s / max(members - 1, 1))
            cfg["optimizer"] = {"name": "adam", "params": {"lr": float(f"{lr:.4g}")}}
        out.append(complete_config(cfg))
    return out


class WithoutStackedOptimizers:
    """The default registry with every optimizer's stacked implementation hidden: a stack of
    members with distinct settings then trains one optimizer per setting."""

    def __init__(self) -> None:
        from techbench.techniques.registry import default_registry

        self.inner = default_registry()

    def get_spec(self, name: str, family: str | None = None):
        import dataclasses

        spec = self.inner.get_spec(name, family)
        return dataclasses.replace(spec, stacked=None) if spec.family == "optimizer" else spec

    def __getattr__(self, name: str):
        return getattr(self.inner, name)


def charlm_configs(members: int, accelerator: str, health: bool, steps: int) -> list[dict]:
    from techbench.plan.matrix import load_matrix

    first = next(iter(load_matrix("charlm").trials()))
    base = {
        **first,
        "budget": {**first["budget"], "epochs": 1, "max_steps": steps},
        "trainer": {**first["trainer"], "accelerator": accelerator},
        "health": {**first["health"], "enabled": health},
    }
    return [complete_config({**base, "seed": s}) for s in range(members)]


def final_val_loss(outcome) -> float:
    return outcome.metric("val", "loss")[-1]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--members", type=int, default=8)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--accelerator", default="cpu")
    p.add_argument("--health", choices=("on", "off"), default="on")
    p.add_argument("--workload", choices=("demo", "charlm"), default="demo")
    p.add_argument("--steps", type=int, default=40, help="charlm: optimizer steps per trial")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument(
        "--distinct-lr",
        action="store_true",
        help="each member its own learning rate; also time one optimizer per setting",
    )
    p.add_argument("--dropout", type=float, default=None, help="dropout p (default: none)")
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    if a.workload == "charlm":
        cfgs = charlm_configs(a.members, a.accelerator, a.health == "on", a.steps)
    else:
        cfgs = configs(
            a.members, a.accelerator, a.health == "on", a.epochs, a.distinct_lr, a.dropout
        )
    grouped_registry = WithoutStackedOptimizers()
    runs = {
        "one by one": lambda: [run_trial(c) for c in cfgs],
        "stacked": lambda: run_stack(cfgs),
    }
    if a.distinct_lr:
        runs["stacked, one optimizer per lr"] = lambda: run_stack(cfgs, registry=grouped_registry)
    run_trial(cfgs[0])  # warm-up: imports, data, Lightning
    run_stack(cfgs[:2])
    times: dict[str, list[float]] = {name: [] for name in runs}
    worst = dict.fromkeys(runs, 0.0)
    train: dict[str, list[float]] = {name: [] for name in runs}
    for r in range(a.rounds):
        order = list(runs) if r % 2 == 0 else list(reversed(runs))
        outcomes = {}
        for what in order:
            t0 = time.perf_counter()
            outcomes[what] = runs[what]()
            times[what].append(time.perf_counter() - t0)
            seconds = [o.meta.train_seconds for o in outcomes[what]]
            train[what].append(sum(seconds) if what == "one by one" else seconds[0])
        for what, got in outcomes.items():
            for x, y in zip(outcomes["one by one"], got, strict=True):
                assert x.status == y.status == "completed", (x.meta.error, y.meta.error)
                ref = final_val_loss(x)
                worst[what] = max(worst[what], abs(final_val_loss(y) - ref) / abs(ref))
    budget = f"{a.steps} steps" if a.workload == "charlm" else f"{a.epochs} epochs"
    print(
        f"{a.workload}: {a.members} members, {a.accelerator} ({torch.get_num_threads()} "
        f"threads), health {a.health}, {budget}, {a.rounds} rounds"
        + (", distinct learning rates" if a.distinct_lr else "")
        + (f", dropout p={a.dropout}" if a.dropout is not None else "")
    )
    ta = statistics.median(times["one by one"])
    width = max(len(name) for name in runs) + 1
    for what, ts in times.items():
        med = statistics.median(ts)
        rounds = ", ".join(f"{t:.2f}" for t in ts)
        print(f"{what + ':':{width}s} median {med:6.2f} s  (rounds: {rounds})")
    for what, ts in times.items():
        if what != "one by one":
            med = statistics.median(ts)
            print(f"ratio {what} / one by one: {med / ta:.3f}  (speed-up {ta / med:.1f}x)")
            print(f"  largest relative difference of a final validation loss: {worst[what]:.1e}")
    tra = statistics.median(train["one by one"])
    for what, ts in train.items():
        if what != "one by one":
            med = statistics.median(ts)
            print(
                f"training only (no evaluation), {what}: {med:.2f} s vs one by one {tra:.2f} s, "
                f"ratio {med / tra:.3f}"
            )


if __name__ == "__main__":
    main()
