"""Runner overhead: a techbench trial against a hand-written PyTorch loop doing the same work.

Both sides train the same MLP (built by the same model plugin, with the same activation,
initializer, optimizer and schedule objects from the registry) on the same preprocessed data,
with the same batch size, seed and torch thread count, and both evaluate the train and validation
sets at every epoch end and the test set at the end. The raw loop shuffles with a seeded
permutation per epoch and slices contiguous batches, as the runner does. What differs is only the
loop: Lightning's fit loop, hooks and the trial's bookkeeping (per-step loss rows, divergence
checks, best-weights copy) versus a bare ``for`` loop.

The techbench side runs three ways: gradient health off, default cadence (every 10 steps) and
every step. Repeats alternate the four runs; the table shows medians and the ratio to the raw
loop for the whole trial (``wall``: ``run_trial`` from config to outcome, including its setup) and
for the training loop only (``train``: ``train_seconds``, evaluation time excluded, against the
raw loop's training time); ``cpu`` is the process CPU time of the whole trial, which other
processes competing for the cores disturb less than wall time.

    python benchmarks/overhead.py --epochs 30 --repeats 5 --threads 1
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

import torch

from techbench.families import ModelParts
from techbench.registry import get_spec
from techbench.trial import complete_config, run_trial


def raw_loop(cfg: dict[str, Any]) -> tuple[float, float, float]:
    """(wall seconds, training seconds, final test accuracy) of a plain PyTorch loop."""
    import dataclasses

    start = time.perf_counter()
    spec = lambda key, fam: get_spec(cfg[key]["name"], fam)  # noqa: E731
    hp = lambda key: cfg[key]["params"]  # noqa: E731
    splits = spec("dataset", "dataset").create(cfg["data_seed"], **hp("dataset"))
    pre = spec("preprocessor", "preprocessor").create(**hp("preprocessor"))
    pre.fit(splits.x_train)
    splits = dataclasses.replace(
        splits,
        x_train=pre.transform(splits.x_train),
        x_val=pre.transform(splits.x_val),
        x_test=pre.transform(splits.x_test),
    )
    torch.manual_seed(cfg["seed"])
    act = spec("activation", "activation")
    parts = ModelParts(
        activation=lambda: act.create(**hp("activation")),
        weight_init=spec("initializer", "initializer").create(**hp("initializer")),
        bias_init=spec("bias_initializer", "initializer").create(**hp("bias_initializer")),
    )
    model = spec("model", "model").create(
        splits.input_shape, splits.num_outputs, parts, **hp("model")
    )
    opt = spec("optimizer", "optimizer").create(model.parameters(), **hp("optimizer"))
    bs, epochs = cfg["budget"]["batch_size"], cfg["budget"]["epochs"]
    n = len(splits.x_train)
    steps = epochs * ((n + bs - 1) // bs)
    sched = spec("schedule", "schedule").create(opt, steps, **hp("schedule"))
    gen = torch.Generator().manual_seed(cfg["seed"])
    loss_fn = torch.nn.functional.cross_entropy

    @torch.no_grad()
    def evaluate(x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
        model.eval()
        out = model(x)
        model.train()
        return float(loss_fn(out, y)), float((out.argmax(1) == y).double().mean())

    train_time = 0.0
    for _ in range(epochs):
        t0 = time.perf_counter()
        perm = torch.randperm(n, generator=gen)
        xs, ys = splits.x_train[perm], splits.y_train[perm]
        for lo in range(0, n, bs):
            loss = loss_fn(model(xs[lo : lo + bs]), ys[lo : lo + bs])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        train_time += time.perf_counter() - t0
        evaluate(splits.x_train, splits.y_train)
        evaluate(splits.x_val, splits.y_val)
    acc = evaluate(splits.x_test, splits.y_test)[1]
    return time.perf_counter() - start, train_time, acc


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--depth", type=int, default=2)
    p.add_argument("--width", type=int, default=128)
    p.add_argument("--dataset", default="digits")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    base = complete_config(
        {
            "dataset": {"name": args.dataset, "params": {}},
            "model": {"name": "mlp", "params": {"depth": args.depth, "width": args.width}},
            "budget": {"epochs": args.epochs, "batch_size": args.batch_size},
        }
    )
    variants = {
        "health off": {"enabled": False, "every_n_steps": 10},
        "health default (10)": {"enabled": True, "every_n_steps": 10},
        "health every step": {"enabled": True, "every_n_steps": 1},
    }
    raw_loop(base)  # warm-up: imports, allocator, dataset cache
    run_trial(base)
    wall: dict[str, list[float]] = {"raw torch": []} | {k: [] for k in variants}
    train: dict[str, list[float]] = {k: [] for k in wall}
    cpu: dict[str, list[float]] = {k: [] for k in wall}
    accs: dict[str, float] = {}
    for _ in range(args.repeats):
        c0 = time.process_time()
        w, t, acc = raw_loop(base)
        cpu["raw torch"].append(time.process_time() - c0)
        wall["raw torch"].append(w)
        train["raw torch"].append(t)
        accs["raw torch"] = acc
        for name, health in variants.items():
            c0 = time.process_time()
            outcome = run_trial({**base, "health": health})
            cpu[name].append(time.process_time() - c0)
            if outcome.status != "completed":
                raise SystemExit(f"{name}: trial {outcome.status}: {outcome.meta['error']}")
            wall[name].append(outcome.meta["wall_seconds"])
            train[name].append(outcome.meta["train_seconds"])
            accs[name] = outcome.metric("test", "acc")[0]
    steps = args.epochs * -(
        -len(get_spec(args.dataset, "dataset").create(0).x_train) // args.batch_size
    )
    print(
        f"{args.dataset}, mlp {args.depth}x{args.width}, batch {args.batch_size}, {args.epochs} epochs "
        f"(~{steps} steps), {args.threads} thread(s), torch {torch.__version__}, "
        f"median of {args.repeats} repeats"
    )
    print(
        f"{'run':<22}{'wall s':>9}{'ratio':>8}{'cpu s':>9}{'ratio':>8}{'train s':>10}{'ratio':>8}"
        f"{'ms/step':>9}{'test acc':>10}"
    )
    raw_w, raw_t = statistics.median(wall["raw torch"]), statistics.median(train["raw torch"])
    raw_c = statistics.median(cpu["raw torch"])
    for name in wall:
        mw, mt = statistics.median(wall[name]), statistics.median(train[name])
        mc = statistics.median(cpu[name])
        print(
            f"{name:<22}{mw:>9.3f}{mw / raw_w:>8.3f}{mc:>9.3f}{mc / raw_c:>8.3f}"
            f"{mt:>10.3f}{mt / raw_t:>8.3f}{1000 * mt / steps:>9.3f}{accs[name]:>10.4f}"
        )


if __name__ == "__main__":
    main()
