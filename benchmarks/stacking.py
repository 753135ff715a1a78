"""One by one vs stacked, through techbench's own runner, measured side by side in one run.

K seeds of the ``demo`` matrix's network (digits, MLP 2x64, Xavier init, Adam 3e-3, batch 128,
10 epochs, gradient health every 10 steps as the demo sets it) are trained with
:func:`techbench.trial.run_trial` one after another and with :func:`techbench.trial.run_stack`
as one stack, in alternating rounds (the order flips each round, so drift on a shared machine
hits both); prints the median wall time of each and their ratio, and the largest relative
difference between a member's final validation loss and its trial's.

    python benchmarks/stacking.py                       # 8 members, CPU, 3 rounds
    python benchmarks/stacking.py --members 64 --accelerator gpu --rounds 2
    python benchmarks/stacking.py --health off
    python benchmarks/stacking.py --dropout 0.2           # members with dropout (own masks)
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from techbench.schema import complete_config
from techbench.trial import run_stack, run_trial


def configs(
    members: int, accelerator: str, health: bool, epochs: int, dropout: float | None = None
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
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--dropout", type=float, default=None, help="dropout p (default: none)")
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    cfgs = configs(a.members, a.accelerator, a.health == "on", a.epochs, a.dropout)
    run_trial(cfgs[0])  # warm-up: imports, data, Lightning
    run_stack(cfgs[:2])
    alone_t, stack_t, worst = [], [], 0.0
    for r in range(a.rounds):
        order = ("alone", "stack") if r % 2 == 0 else ("stack", "alone")
        for what in order:
            t0 = time.perf_counter()
            if what == "alone":
                alone = [run_trial(c) for c in cfgs]
                alone_t.append(time.perf_counter() - t0)
            else:
                stacked = run_stack(cfgs)
                stack_t.append(time.perf_counter() - t0)
        for x, y in zip(alone, stacked, strict=True):
            assert x.status == y.status == "completed", (x.meta.error, y.meta.error)
            ref = final_val_loss(x)
            worst = max(worst, abs(final_val_loss(y) - ref) / abs(ref))
    ta, ts = statistics.median(alone_t), statistics.median(stack_t)
    print(
        f"{a.members} members, {a.accelerator} ({torch.get_num_threads()} threads), health "
        f"{a.health}, {a.epochs} epochs, {a.rounds} rounds"
        + (f", dropout p={a.dropout}" if a.dropout is not None else "")
    )
    print(f"one by one: median {ta:.2f} s  (rounds: {', '.join(f'{t:.2f}' for t in alone_t)})")
    print(f"stacked:    median {ts:.2f} s  (rounds: {', '.join(f'{t:.2f}' for t in stack_t)})")
    print(f"ratio stacked / one by one: {ts / ta:.3f}  (speed-up {ta / ts:.1f}x)")
    print(f"largest relative difference of a final validation loss: {worst:.1e}")


if __name__ == "__main__":
    main()
